//! The REST API, in EMQX 4.x's shape: every answer is JSON, `{"code": 0, "data": ...}` on
//! success and `{"code": <http status>, "message": "..."}` on failure.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use plugin_api::{Host, HostError};
use plugin_http::dashboard_client;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Auth, Verdict};

#[derive(Debug, Clone)]
pub(crate) struct Api {
    pub(crate) host: Host,
    auth: Arc<Auth>,
    /// The dashboard's token (`plugin_http::dashboard_client`), if the store kept one: made
    /// once and never changed, so read once at start.
    dashboard_token: Option<Arc<str>>,
}

/// An API failure: status and message.
#[derive(Debug)]
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"code": self.0.as_u16(), "message": self.1}))).into_response()
    }
}

pub(crate) type ApiResult = Result<Json<Value>, ApiError>;

pub(crate) fn ok(data: Value) -> ApiResult {
    Ok(Json(json!({"code": 0, "data": data})))
}

/// The most rows a list gives when `_limit` is not set (EMQX's `max_row_limit`).
const MAX_ROW_LIMIT: usize = 10_000;

/// EMQX's paging of a list: `_page` (from 1) and `_limit` rows a page.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Page {
    #[serde(rename = "_page")]
    page: Option<usize>,
    #[serde(rename = "_limit")]
    limit: Option<usize>,
}

impl Page {
    /// The page of `all` asked for, as EMQX answers it: `{"code": 0, "data": [...], "meta":
    /// {"page", "limit", "count", "hasnext"}}`.
    pub(crate) fn of(&self, all: Vec<Value>) -> ApiResult {
        let (page, limit) = (self.page.unwrap_or(1).max(1), self.limit.unwrap_or(MAX_ROW_LIMIT).max(1));
        let count = all.len();
        let skip = (page - 1).saturating_mul(limit);
        let data: Vec<Value> = all.into_iter().skip(skip).take(limit).collect();
        let hasnext = skip.saturating_add(limit) < count;
        Ok(Json(
            json!({"code": 0, "data": data, "meta": {"page": page, "limit": limit, "count": count, "hasnext": hasnext}}),
        ))
    }
}

/// Maps a `broker ctl` error to an HTTP status.
/// The HTTP status for a failed host command, from the kind of failure the host reports
/// (never from its text).
pub(crate) fn ctl_error(error: HostError) -> ApiError {
    let status = match &error {
        HostError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        HostError::NotFound(_) => StatusCode::NOT_FOUND,
        HostError::Conflict(_) => StatusCode::CONFLICT,
        HostError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError(status, error.to_string())
}

/// Runs a ctl command off the async threads (plugin operations wait for hooks in flight).
pub(crate) async fn ctl(host: Host, args: Vec<String>) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        host.ctl(&args).map_err(ctl_error)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

pub(crate) fn router(host: Host, auth: Arc<Auth>, dashboard_token: Option<Arc<str>>) -> Router {
    let api = Api { host, auth, dashboard_token };
    Router::new()
        .route("/api/v4/brokers", get(brokers))
        .route("/api/v4/brokers/{node}", get(node_broker))
        .route("/api/v4/stats", get(stats))
        .route("/api/v4/nodes", get(nodes))
        .route("/api/v4/nodes/{node}", get(node))
        .route("/api/v4/nodes/{node}/stats", get(node_stats))
        .route("/api/v4/clients", get(clients))
        .route("/api/v4/clients/{clientid}", get(client).delete(kick_client))
        .route("/api/v4/nodes/{node}/clients", get(node_clients))
        .route("/api/v4/subscriptions", get(subscriptions))
        .route("/api/v4/subscriptions/{clientid}", get(client_subscriptions))
        .route("/api/v4/routes", get(routes))
        .route("/api/v4/sessions", get(sessions))
        .route("/api/v4/nodes/{node}/sessions", get(node_sessions))
        .route("/api/v4/sessions/{clientid}", get(session).delete(kick_session))
        .route("/api/v4/plugins", get(plugins))
        .route("/api/v4/plugins/{name}/{action}", put(plugin_action))
        .route("/api/v4/nodes/{node}/plugins", get(node_plugins))
        .route("/api/v4/nodes/{node}/plugins/{name}/{action}", put(node_plugin_action))
        .route("/api/v4/telemetry/status", get(telemetry_status).put(set_telemetry_status))
        .route("/api/v4/telemetry/data", get(telemetry_data))
        .route("/api/v4/exhooks", get(exhooks))
        .route("/api/v4/exhooks/{name}/{action}", put(exhook_action))
        .route("/api/v4/metrics", get(metrics))
        .route("/api/v4/nodes/{node}/metrics", get(node_metrics))
        .merge(crate::auth_api::routes())
        .merge(crate::pubsub_api::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::map_response(json_errors))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .with_state(api)
}

/// Lets a request with the right basic-auth credentials through; 401 otherwise, 429 with
/// `Retry-After` while the client's IP is locked out. No CORS headers are ever sent, so a
/// browser never lets another origin's page read an answer (a preflight gets 401).
/// A request the dashboard passed on counts by the browser's address it names (see
/// `plugin_http::dashboard_client`), not the dashboard's.
async fn authenticate(State(api): State<Api>, request: Request, next: Next) -> Response {
    let connection = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |ConnectInfo(addr)| addr.ip());
    let ip = dashboard_client(api.dashboard_token.as_deref(), request.headers()).unwrap_or(connection);
    match api.auth.check(ip, request.headers()).await {
        Verdict::Allowed => next.run(request).await,
        Verdict::Denied => {
            let mut response =
                ApiError(StatusCode::UNAUTHORIZED, "wrong or missing credentials (HTTP basic auth)".into())
                    .into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"emqx\""));
            response
        }
        Verdict::LockedOut(retry_after) => {
            let secs = (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1);
            let message = format!("too many failed logins from {ip}; try again in {secs} s");
            let mut response = ApiError(StatusCode::TOO_MANY_REQUESTS, message).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            response
        }
    }
}

/// The browser's address a request names when it comes from the dashboard: with the
/// dashboard's token (`plugin_http::dashboard_client`); `None` otherwise.
fn dashboard_client(token: Option<&str>, headers: &HeaderMap) -> Option<IpAddr> {
    let client: IpAddr = headers.get(dashboard_client::CLIENT_HEADER)?.to_str().ok()?.parse().ok()?;
    let given = headers.get(dashboard_client::TOKEN_HEADER)?.as_bytes();
    dashboard_client::is_token(given, token?).then_some(client)
}

/// A failure axum answered itself (a query string or a path segment that does not parse) in
/// the API's shape too: `{"code": <status>, "message": "<axum's text>"}`.
async fn json_errors(response: Response) -> Response {
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if is_json || !(response.status().is_client_error() || response.status().is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let mut answer = ApiError(parts.status, String::from_utf8_lossy(&text).into_owned()).into_response();
    for name in [header::WWW_AUTHENTICATE, header::RETRY_AFTER, header::ALLOW] {
        if let Some(value) = parts.headers.get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint".into())
}

/// `GET /api/v4/nodes`: every node of the cluster this one knows of (this one first; a node
/// alone lists itself), with EMQX's `node`, `node_status`, `version`, `sysdescr`, `uptime`
/// and `connections`.
async fn nodes(State(api): State<Api>) -> ApiResult {
    ok(Value::Array(cluster_nodes(&api).await?))
}

/// `GET /api/v4/nodes/{node}`: one node as `/api/v4/nodes` lists it.
async fn node(State(api): State<Api>, Path(node): Path<String>) -> ApiResult {
    let nodes = cluster_nodes(&api).await?;
    let found = nodes.into_iter().find(|n| n["node"] == node.as_str());
    ok(found.ok_or_else(|| unknown_node(&api, &node))?)
}

/// `GET /api/v4/brokers`: every running node as EMQX 4.x describes one (uptime in words,
/// local datetime), each answering for itself.
async fn brokers(State(api): State<Api>) -> ApiResult {
    let mut list = Vec::new();
    for node in running_nodes(&api).await? {
        list.push(parse(&on_node(&api, &node, &["broker", "--json"]).await?)?);
    }
    ok(Value::Array(list))
}

/// `GET /api/v4/brokers/{node}`: any node of the cluster.
async fn node_broker(State(api): State<Api>, Path(node): Path<String>) -> ApiResult {
    ok(parse(&on_node(&api, &node, &["broker", "--json"]).await?)?)
}

/// Every node `/api/v4/nodes` lists (EMQX 4's shape), this one first.
async fn cluster_nodes(api: &Api) -> Result<Vec<Value>, ApiError> {
    parse(&ctl(api.host, vec!["cluster".into(), "nodes".into(), "--json".into()]).await?)
}

/// The nodes of the cluster that run now, this one first (alone: this one).
async fn running_nodes(api: &Api) -> Result<Vec<String>, ApiError> {
    let nodes = cluster_nodes(api).await?;
    let running = nodes.into_iter().filter(|n| n["node_status"] == "Running");
    Ok(running.filter_map(|n| n["node"].as_str().map(str::to_owned)).collect())
}

/// Runs a `broker ctl` command on `node`: this one, or another of the cluster (`cluster call`).
async fn on_node(api: &Api, node: &str, command: &[&str]) -> Result<String, ApiError> {
    let mut args: Vec<String> = Vec::with_capacity(command.len() + 3);
    if node != api.host.node_name() {
        args.extend(["cluster".to_owned(), "call".to_owned(), node.to_owned()]);
    }
    args.extend(command.iter().map(|w| w.to_string()));
    ctl(api.host, args).await
}

/// A host command's JSON answer, read as `T` (a mismatch is the host's fault: 500).
pub(crate) fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    serde_json::from_str(text).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn unknown_node(api: &Api, node: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("unknown node {node:?}: this node is {:?}", api.host.node_name()))
}

#[derive(Deserialize)]
struct StatsQuery {
    aggregate: Option<bool>,
}

/// `GET /api/v4/stats`: the gauges per running node, `[{"node", "stats": {...}}]`, as EMQX;
/// `?aggregate=true` gives the gauges summed over the nodes as one object.
async fn stats(State(api): State<Api>, Query(query): Query<StatsQuery>) -> ApiResult {
    let per_node = every_node(&api, "stats").await?;
    if query.aggregate == Some(true) {
        let mut sum = serde_json::Map::new();
        for (_, stats) in &per_node {
            for (name, value) in stats.as_object().into_iter().flatten() {
                let total = sum.get(name).and_then(Value::as_u64).unwrap_or(0) + value.as_u64().unwrap_or(0);
                sum.insert(name.clone(), json!(total));
            }
        }
        return ok(Value::Object(sum));
    }
    ok(Value::Array(per_node.into_iter().map(|(node, stats)| json!({"node": node, "stats": stats})).collect()))
}

/// `broker stats` or `broker metrics` (`what`) of every running node, this one first.
async fn every_node(api: &Api, what: &str) -> Result<Vec<(String, Value)>, ApiError> {
    let mut per_node = Vec::new();
    for node in running_nodes(api).await? {
        let answer = parse(&on_node(api, &node, &["broker", what, "--json"]).await?)?;
        per_node.push((node, answer));
    }
    Ok(per_node)
}

/// `GET /api/v4/nodes/{node}/stats`: any node of the cluster.
async fn node_stats(State(api): State<Api>, Path(node): Path<String>) -> ApiResult {
    ok(parse(&on_node(&api, &node, &["broker", "stats", "--json"]).await?)?)
}

/// `GET /api/v4/clients`: the clients connected to every running node of the cluster.
async fn clients(State(api): State<Api>, Query(page): Query<Page>) -> ApiResult {
    page.of(listed(&api, None, &["clients", "list", "--json"]).await?)
}

/// `GET /api/v4/clients/{clientid}`: the client connected with that id, in a list of one
/// (an empty list if none is), as EMQX 4.3's `lookup_client`.
async fn client(State(api): State<Api>, Path(client_id): Path<String>) -> ApiResult {
    let all = listed(&api, None, &["clients", "list", "--json"]).await?;
    ok(json!(all.into_iter().filter(|c| c["clientid"] == client_id.as_str()).collect::<Vec<_>>()))
}

/// `DELETE /api/v4/clients/{clientid}`: kicks the client (MQTT 5: DISCONNECT 0x98) and
/// discards its session, as EMQX 4.3's `kickout_client`; 404 if there is no such session.
async fn kick_client(State(api): State<Api>, Path(client_id): Path<String>) -> ApiResult {
    ctl(api.host, vec!["sessions".into(), "kick".into(), client_id]).await?;
    Ok(Json(json!({"code": 0})))
}

/// `GET /api/v4/subscriptions`: every subscription of every running node, EMQX's `node`,
/// `clientid`, `topic`, `qos`, paged.
async fn subscriptions(State(api): State<Api>, Query(page): Query<Page>) -> ApiResult {
    page.of(listed(&api, None, &["subscriptions", "list", "--json"]).await?)
}

/// `GET /api/v4/subscriptions/{clientid}`: one client's subscriptions (an empty list if it
/// has none, or no session).
async fn client_subscriptions(State(api): State<Api>, Path(client_id): Path<String>) -> ApiResult {
    let all = listed(&api, None, &["subscriptions", "list", "--json"]).await?;
    ok(json!(all.into_iter().filter(|s| s["clientid"] == client_id.as_str()).collect::<Vec<_>>()))
}

/// `GET /api/v4/routes`: each node's routes, EMQX's `topic` and `node`, paged.
async fn routes(State(api): State<Api>, Query(page): Query<Page>) -> ApiResult {
    page.of(listed(&api, None, &["routes", "list", "--json"]).await?)
}

/// `GET /api/v4/nodes/{node}/clients`: the clients connected to one node.
async fn node_clients(State(api): State<Api>, Path(node): Path<String>, Query(page): Query<Page>) -> ApiResult {
    page.of(listed(&api, Some(&node), &["clients", "list", "--json"]).await?)
}

/// `GET /api/v4/sessions`: every session of every running node, online or not (EMQX's
/// session fields, each with its `node`; `persistent` says it is kept in the store).
async fn sessions(State(api): State<Api>, Query(page): Query<Page>) -> ApiResult {
    page.of(listed(&api, None, &["sessions", "list", "--json"]).await?)
}

/// `GET /api/v4/nodes/{node}/sessions`: one node's sessions.
async fn node_sessions(State(api): State<Api>, Path(node): Path<String>, Query(page): Query<Page>) -> ApiResult {
    page.of(listed(&api, Some(&node), &["sessions", "list", "--json"]).await?)
}

/// The JSON lists `command` gives on `node`, or on every running node (this one first),
/// each item with its `node`.
async fn listed(api: &Api, node: Option<&str>, command: &[&str]) -> Result<Vec<Value>, ApiError> {
    let nodes = match node {
        Some(node) => vec![node.to_owned()],
        None => running_nodes(api).await?,
    };
    let mut list = Vec::new();
    for node in nodes {
        let items: Vec<Value> = parse(&on_node(api, &node, command).await?)?;
        // Each item says its node, as EMQX's do.
        list.extend(items.into_iter().map(|mut item| {
            if let Value::Object(fields) = &mut item {
                fields.entry("node").or_insert_with(|| json!(node));
            }
            item
        }));
    }
    Ok(list)
}

/// `GET /api/v4/sessions/{clientid}`: one session; 404 if there is none.
async fn session(State(api): State<Api>, Path(client_id): Path<String>) -> ApiResult {
    let text = ctl(api.host, vec!["sessions".into(), "show".into(), client_id, "--json".into()]).await?;
    let one: Value = parse(&text)?;
    ok(json!([one]))
}

/// `DELETE /api/v4/sessions/{clientid}`: kicks the client and discards its session.
async fn kick_session(State(api): State<Api>, Path(client_id): Path<String>) -> ApiResult {
    ctl(api.host, vec!["sessions".into(), "kick".into(), client_id]).await?;
    Ok(Json(json!({"code": 0})))
}

/// EMQX's plugin `type`, from the name as EMQX 4.3 types its own plugins.
fn plugin_type(name: &str) -> &'static str {
    if name.starts_with("emqx_auth_") {
        "auth"
    } else if name.starts_with("emqx_bridge_") {
        "bridge"
    } else if name.starts_with("emqx_backend_") {
        "backend"
    } else if matches!(name, "emqx_sn" | "emqx_coap" | "emqx_lwm2m" | "emqx_stomp" | "emqx_exproto") {
        "protocol"
    } else {
        "feature"
    }
}

/// A node's plugins as EMQX lists them: `name`, `description`, `active`, `type`.
async fn plugin_list(api: &Api, node: &str) -> Result<Value, ApiError> {
    let plugins: Vec<plugin_api::PluginStatus> = parse(&on_node(api, node, &["plugins", "list", "--json"]).await?)?;
    let list = plugins.into_iter().map(|p| {
        let kind = plugin_type(&p.name);
        json!({"name": p.name, "description": p.description, "active": p.active, "type": kind})
    });
    Ok(Value::Array(list.collect()))
}

/// `GET /api/v4/plugins`: per running node, as EMQX (`[{"node": ..., "plugins": [...]}]`).
async fn plugins(State(api): State<Api>) -> ApiResult {
    let mut list = Vec::new();
    for node in running_nodes(&api).await? {
        list.push(json!({"node": node, "plugins": plugin_list(&api, &node).await?}));
    }
    ok(Value::Array(list))
}

/// `GET /api/v4/nodes/{node}/plugins`: any node of the cluster.
async fn node_plugins(State(api): State<Api>, Path(node): Path<String>) -> ApiResult {
    ok(plugin_list(&api, &node).await?)
}

/// `PUT /api/v4/nodes/{node}/plugins/{name}/load|unload|reload`: `{"code": 0}`, as EMQX.
async fn node_plugin_action(
    State(api): State<Api>,
    Path((node, name, action)): Path<(String, String, String)>,
) -> ApiResult {
    run_plugin_action(api, &node, name, action).await?;
    Ok(Json(json!({"code": 0})))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `PUT /api/v4/plugins/{name}/load|unload|reload` (this API's older path): `{"code": 0,
/// "message": ...}`.
async fn plugin_action(State(api): State<Api>, Path((name, action)): Path<(String, String)>) -> ApiResult {
    let node = api.host.node_name().to_owned();
    let message = run_plugin_action(api, &node, name, action).await?;
    Ok(Json(json!({"code": 0, "message": message})))
}

/// Checks and runs one plugin action on `node` (this one or another of the cluster); the ctl
/// answer.
async fn run_plugin_action(api: Api, node: &str, name: String, action: String) -> Result<String, ApiError> {
    if !matches!(action.as_str(), "load" | "unload" | "reload") {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("unknown action {action:?}: use load, unload or reload")));
    }
    if !valid_name(&name) {
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("invalid plugin name {name:?}: a name is [a-z0-9_]+")));
    }
    if name == crate::NAME && action != "load" && node == api.host.node_name() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("{name} cannot {action} itself through its own API; use `broker ctl plugins {action} {name}`"),
        ));
    }
    on_node(&api, node, &["plugins", &action, &name]).await
}

async fn telemetry_status(State(api): State<Api>) -> ApiResult {
    let status = ctl(api.host, vec!["telemetry".into(), "get".into(), "status".into()]).await.map_err(telemetry_off)?;
    ok(json!({"enabled": status.trim() == "Telemetry is enabled"}))
}

/// The body of `PUT /api/v4/telemetry/status`: EMQX's `{"enabled": bool}` (`enable` is
/// accepted too).
#[derive(Deserialize)]
struct EnableBody {
    #[serde(alias = "enable")]
    enabled: bool,
}

async fn set_telemetry_status(State(api): State<Api>, headers: HeaderMap, body: axum::body::Bytes) -> ApiResult {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let parsed: Result<EnableBody, _> = serde_json::from_slice(&body);
    let body = match (is_json, parsed) {
        (true, Ok(body)) => body,
        _ => return Err(ApiError(StatusCode::BAD_REQUEST, "expected a JSON body {\"enabled\": true|false}".into())),
    };
    let verb = if body.enabled { "enable" } else { "disable" };
    let said = ctl(api.host, vec!["telemetry".into(), verb.into()]).await.map_err(telemetry_off)?;
    // Switched on while something else keeps it off (DO_NOT_TRACK, the config): said so, as
    // `ctl` says it.
    if body.enabled && said.contains("stays off") {
        return Ok(Json(json!({"code": 0, "message": said.trim()})));
    }
    Ok(Json(json!({"code": 0})))
}

async fn telemetry_data(State(api): State<Api>) -> ApiResult {
    let data = ctl(api.host, vec!["telemetry".into(), "get".into(), "data".into()]).await.map_err(telemetry_off)?;
    ok(parse(&data)?)
}

fn telemetry_off(e: ApiError) -> ApiError {
    if e.0 == StatusCode::NOT_FOUND {
        ApiError(StatusCode::NOT_FOUND, "emqx_telemetry is not running".into())
    } else {
        e
    }
}

// --- /api/v4/exhooks: `emqx_exhook`'s servers (EMQX 5's `/exhooks` shape) ---

fn exhook_off(e: ApiError) -> ApiError {
    if e.0 == StatusCode::NOT_FOUND {
        ApiError(StatusCode::NOT_FOUND, "emqx_exhook is not running".into())
    } else {
        e
    }
}

/// `GET /api/v4/exhooks`: each server's settings, status and the hooks it asked for.
async fn exhooks(State(api): State<Api>) -> ApiResult {
    let list = ctl(api.host, vec!["exhook".into(), "list".into(), "--json".into()]).await.map_err(exhook_off)?;
    ok(parse::<Value>(&list)?)
}

/// `PUT /api/v4/exhooks/{name}/enable|disable`: `{"code": 0, "message": "ok"}`.
async fn exhook_action(State(api): State<Api>, Path((name, action)): Path<(String, String)>) -> ApiResult {
    if !matches!(action.as_str(), "enable" | "disable") {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("unknown action {action:?}: use enable or disable")));
    }
    let message = ctl(api.host, vec!["exhook".into(), action, name]).await?;
    Ok(Json(json!({"code": 0, "message": message})))
}

// --- GET /api/v4/metrics (EMQX 4.x): every counter of this node, from `Host::metrics` ---

async fn metrics(State(api): State<Api>) -> ApiResult {
    let per_node = every_node(&api, "metrics").await?;
    ok(Value::Array(per_node.into_iter().map(|(node, metrics)| json!({"node": node, "metrics": metrics})).collect()))
}

/// `GET /api/v4/nodes/{node}/metrics`: any node of the cluster.
async fn node_metrics(State(api): State<Api>, Path(node): Path<String>) -> ApiResult {
    ok(parse(&on_node(&api, &node, &["broker", "metrics", "--json"]).await?)?)
}
