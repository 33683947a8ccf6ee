//! EMQX 4.3's publish and subscribe over HTTP (`emqx_mgmt_api_pubsub`):
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | POST | `/api/v4/mqtt/publish` | `{"topic": "a/b"` (or `"topics": "a/b,c/d"`), `"payload": "..."`, `"encoding": "plain"` or `"base64"`, `"qos": 0`, `"retain": false}` | `{"code":0}` |
//! | POST | `/api/v4/mqtt/publish_batch` | a list of those | `{"code":0,"data":[{"topic":...,"code":0}]}` |
//! | POST | `/api/v4/mqtt/subscribe` | `{"clientid": "c1", "topic": "a/#"` (or `"topics"`), `"qos": 0}` | `{"code":0}` |
//! | POST | `/api/v4/mqtt/subscribe_batch` | a list of those | `{"code":0,"data":[{"clientid":...,"topic":...,"code":0}]}` |
//! | POST | `/api/v4/mqtt/unsubscribe` | `{"clientid": "c1", "topic": "a/#"}` | `{"code":0}` |
//! | POST | `/api/v4/mqtt/unsubscribe_batch` | a list of those | `{"code":0,"data":[{"clientid":...,"topic":...,"code":0}]}` |
//!
//! As in EMQX: a payload that is a JSON object is published as its JSON text; topics that are
//! not valid names (publish) or filters (subscribe) are left out of `topics`, and none left
//! is a bad topic; the message is published by the broker (the hooks see it as EMQX's do), and
//! a subscription is made (or removed) for a connected client as its own SUBSCRIBE (or
//! UNSUBSCRIBE) would be (retained messages follow a new one; removing a subscription the
//! client does not have is not an error, as in EMQX). Failures are this API's: 400 for a bad topic, QoS, payload or body, 404
//! for a client not connected (a batch answers each entry's `code` with that status).

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use plugin_api::{topic, Host, HostError, QoS};
use serde_json::{json, Value};

use crate::api::{ok, Api, ApiError, ApiResult};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v4/mqtt/publish", post(publish))
        .route("/api/v4/mqtt/publish_batch", post(publish_batch))
        .route("/api/v4/mqtt/subscribe", post(subscribe))
        .route("/api/v4/mqtt/subscribe_batch", post(subscribe_batch))
        .route("/api/v4/mqtt/unsubscribe", post(unsubscribe))
        .route("/api/v4/mqtt/unsubscribe_batch", post(unsubscribe_batch))
}

fn bad(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message)
}

/// The JSON body, or 400 saying why not.
fn body(body: Result<Json<Value>, JsonRejection>) -> Result<Value, ApiError> {
    body.map(|Json(v)| v).map_err(|e| bad(format!("the body is not JSON: {e}")))
}

/// `topic`, else the comma-separated `topics`, keeping those `valid` accepts.
fn topics(params: &Value, valid: fn(&str) -> bool) -> Result<Vec<String>, ApiError> {
    let given = params.get("topic").or_else(|| params.get("topics")).and_then(Value::as_str).unwrap_or_default();
    let topics: Vec<String> = given.split(',').filter(|t| valid(t)).map(str::to_owned).collect();
    if topics.is_empty() {
        return Err(bad(format!("bad topic: {given:?}")));
    }
    Ok(topics)
}

fn is_topic_name(name: &str) -> bool {
    topic::is_valid_filter(name) && !name.contains(['+', '#'])
}

fn qos(params: &Value) -> Result<QoS, ApiError> {
    match params.get("qos").map_or(Some(0), Value::as_u64) {
        Some(q @ 0..=2) => Ok(QoS::from_u8(q as u8)),
        _ => Err(bad(format!("bad qos: {} (0, 1 or 2)", params["qos"]))),
    }
}

/// The payload as bytes: a string as it is (`"encoding": "base64"` decodes it), anything else
/// (an object, say) as its JSON text.
fn payload(params: &Value) -> Result<Vec<u8>, ApiError> {
    let base64 = match params.get("encoding").and_then(Value::as_str).unwrap_or("plain") {
        "plain" => false,
        "base64" => true,
        other => return Err(bad(format!("bad encoding: {other:?} (plain or base64)"))),
    };
    match params.get("payload") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if base64 => {
            base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| bad(format!("bad base64 payload: {e}")))
        }
        Some(Value::String(text)) => Ok(text.clone().into_bytes()),
        Some(other) => Ok(other.to_string().into_bytes()),
    }
}

/// Runs `work` with the plugin's host off the async threads (a publish may wait for the store).
async fn with_host<T: Send + 'static>(
    api: &Api,
    work: impl FnOnce(Host) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let host = api.host;
    tokio::task::spawn_blocking(move || work(host))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// Publishes one request's message, to each of its topics.
fn publish_one(host: Host, params: &Value) -> Result<(), ApiError> {
    let topics = topics(params, is_topic_name)?;
    let (qos, payload) = (qos(params)?, payload(params)?);
    let retain = params.get("retain").and_then(Value::as_bool).unwrap_or(false);
    for topic in &topics {
        host.publish(topic, &payload, qos, retain)
            .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    }
    Ok(())
}

/// The request's `clientid`.
fn client_id(params: &Value) -> Result<&str, ApiError> {
    params.get("clientid").and_then(Value::as_str).ok_or_else(|| bad("bad clientid: must be a string".to_owned()))
}

/// Subscribes one request's client.
fn subscribe_one(host: Host, params: &Value) -> Result<(), ApiError> {
    let client_id = client_id(params)?;
    let filters = topics(params, topic::is_valid_filter)?;
    let qos = qos(params)?;
    for filter in &filters {
        host.subscribe(client_id, filter, qos).map_err(|e| match e {
            HostError::NotFound(why) => ApiError(StatusCode::NOT_FOUND, why),
            other => bad(other.to_string()),
        })?;
    }
    Ok(())
}

/// Removes one request's subscriptions, through `broker ctl subscriptions del`.
fn unsubscribe_one(host: Host, params: &Value) -> Result<(), ApiError> {
    let client_id = client_id(params)?;
    for filter in &topics(params, topic::is_valid_filter)? {
        host.ctl(&["subscriptions", "del", client_id, filter]).map_err(crate::api::ctl_error)?;
    }
    Ok(())
}

/// The `topic` (or `topics`) a batch answer names.
fn named_topic(params: &Value) -> Value {
    params.get("topic").or_else(|| params.get("topics")).cloned().unwrap_or(json!(""))
}

fn entries(list: Value) -> Result<Vec<Value>, ApiError> {
    match list {
        Value::Array(entries) => Ok(entries),
        _ => Err(bad("a batch is a JSON list".to_owned())),
    }
}

fn code(result: &Result<(), ApiError>) -> u16 {
    result.as_ref().err().map_or(0, |ApiError(status, _)| status.as_u16())
}

async fn publish(State(api): State<Api>, json: Result<Json<Value>, JsonRejection>) -> ApiResult {
    single(&api, json, publish_one).await
}

/// Runs `one` for a request's body, answering `{"code": 0}` or its failure.
async fn single(
    api: &Api,
    json: Result<Json<Value>, JsonRejection>,
    one: fn(Host, &Value) -> Result<(), ApiError>,
) -> ApiResult {
    let params = body(json)?;
    with_host(api, move |host| one(host, &params)).await?;
    Ok(Json(json!({"code": 0})))
}

async fn publish_batch(State(api): State<Api>, json: Result<Json<Value>, JsonRejection>) -> ApiResult {
    let entries = entries(body(json)?)?;
    let answers = with_host(&api, move |host| {
        Ok(entries.iter().map(|p| json!({"topic": named_topic(p), "code": code(&publish_one(host, p))})).collect())
    })
    .await?;
    ok(Value::Array(answers))
}

async fn subscribe(State(api): State<Api>, json: Result<Json<Value>, JsonRejection>) -> ApiResult {
    single(&api, json, subscribe_one).await
}

async fn subscribe_batch(State(api): State<Api>, json: Result<Json<Value>, JsonRejection>) -> ApiResult {
    client_batch(&api, json, subscribe_one).await
}

/// Runs `one` for each entry of a batch, answering each entry's `clientid`, `topic` and `code`.
async fn client_batch(
    api: &Api,
    json: Result<Json<Value>, JsonRejection>,
    one: fn(Host, &Value) -> Result<(), ApiError>,
) -> ApiResult {
    let entries = entries(body(json)?)?;
    let answers = with_host(api, move |host| {
        Ok(entries
            .iter()
            .map(|p| json!({"clientid": p["clientid"], "topic": named_topic(p), "code": code(&one(host, p))}))
            .collect())
    })
    .await?;
    ok(Value::Array(answers))
}

async fn unsubscribe(State(api): State<Api>, json: Result<Json<Value>, JsonRejection>) -> ApiResult {
    single(&api, json, unsubscribe_one).await
}

async fn unsubscribe_batch(State(api): State<Api>, json: Result<Json<Value>, JsonRejection>) -> ApiResult {
    client_batch(&api, json, unsubscribe_one).await
}
