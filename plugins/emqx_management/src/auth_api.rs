//! EMQX 4.3's `emqx_auth_mnesia` REST API, answered by that plugin's `users` and `clientid`
//! commands through `Host::ctl` (so it works while `emqx_auth_mnesia` runs; otherwise 404):
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/api/v4/auth_username` (`?_page=1&_limit=10`) | `{"code":0,"data":[{"username":...,"is_superuser":...,"created_at":...}],"meta":{"page","limit","count"}}`, newest first |
//! | POST | `/api/v4/auth_username` | body `{"username","password"}` (and `"is_superuser"`); `{"code":0}`; exists: 409 |
//! | GET | `/api/v4/auth_username/{username}` | `{"code":0,"data":{"username":...,"is_superuser":...,"created_at":...}}`; none: 404 |
//! | PUT | `/api/v4/auth_username/{username}` | body `{"password"}` (and `"is_superuser"`); `{"code":0}`; none: 404 |
//! | DELETE | `/api/v4/auth_username/{username}` | `{"code":0}`; none: 404 |
//!
//! `/api/v4/auth_clientid` likewise with `clientid`. A password (or its hash) is never
//! returned.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::api::{ctl, ok, parse, Api, ApiError, ApiResult, Page};

/// Which logins a path is about: its `ctl` command and its JSON field.
#[derive(Debug, Clone, Copy)]
struct Kind {
    command: &'static str,
    field: &'static str,
}

const USERNAME: Kind = Kind { command: "users", field: "username" };
const CLIENTID: Kind = Kind { command: "clientid", field: "clientid" };

/// The routes of both kinds.
pub(crate) fn routes() -> Router<Api> {
    let mut router = Router::new();
    for (path, kind) in [("/api/v4/auth_username", USERNAME), ("/api/v4/auth_clientid", CLIENTID)] {
        router = router
            .route(
                path,
                get(move |state, query| list(state, query, kind)).post(move |state, body| add(state, body, kind)),
            )
            .route(
                &format!("{path}/{{name}}"),
                get(move |state, name| lookup(state, name, kind))
                    .put(move |state, name, body| update(state, name, body, kind))
                    .delete(move |state, name| delete(state, name, kind)),
            );
    }
    router
}

/// A JSON body, or 400 saying what was expected.
fn body(body: Result<Json<Value>, axum::extract::rejection::JsonRejection>, expected: &str) -> Result<Value, ApiError> {
    body.map(|Json(v)| v)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("expected a JSON body {expected}: {e}")))
}

/// A required string field of a body, or 400.
fn field<'a>(body: &'a Value, name: &str, expected: &str) -> Result<&'a str, ApiError> {
    body.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, format!("{name} is missing or empty; expected {expected}")))
}

/// The optional `is_superuser` of a body, as the command's last word.
fn superuser(body: &Value) -> Result<Option<String>, ApiError> {
    match body.get("is_superuser") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(other) => {
            Err(ApiError(StatusCode::BAD_REQUEST, format!("is_superuser must be true or false, not {other}")))
        }
    }
}

async fn list(State(api): State<Api>, Query(page): Query<Page>, kind: Kind) -> ApiResult {
    let all: Vec<Value> = parse(&ctl(api.host, vec![kind.command.into(), "list".into(), "--json".into()]).await?)?;
    page.of(all)
}

async fn add(
    State(api): State<Api>,
    json: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
    kind: Kind,
) -> ApiResult {
    let expected = format!("{{\"{}\": ..., \"password\": ...}}", kind.field);
    let body = body(json, &expected)?;
    let mut args = vec![kind.command.to_owned(), "add".to_owned()];
    args.push(field(&body, kind.field, &expected)?.to_owned());
    args.push(field(&body, "password", &expected)?.to_owned());
    args.extend(superuser(&body)?);
    ctl(api.host, args).await?;
    Ok(Json(json!({"code": 0})))
}

async fn lookup(State(api): State<Api>, Path(name): Path<String>, kind: Kind) -> ApiResult {
    ok(parse::<Value>(&ctl(api.host, vec![kind.command.into(), "show".into(), name]).await?)?)
}

async fn update(
    State(api): State<Api>,
    Path(name): Path<String>,
    json: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
    kind: Kind,
) -> ApiResult {
    let expected = "{\"password\": ...}";
    let body = body(json, expected)?;
    let mut args = vec![kind.command.to_owned(), "update".to_owned(), name];
    args.push(field(&body, "password", expected)?.to_owned());
    args.extend(superuser(&body)?);
    ctl(api.host, args).await?;
    Ok(Json(json!({"code": 0})))
}

async fn delete(State(api): State<Api>, Path(name): Path<String>, kind: Kind) -> ApiResult {
    ctl(api.host, vec![kind.command.into(), "del".into(), name]).await?;
    Ok(Json(json!({"code": 0})))
}
