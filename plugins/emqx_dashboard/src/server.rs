//! The page, its assets, and the `/api/` pass-through to the management API.
//!
//! Every answer carries [`SECURITY_HEADERS`]: the page may load and call only its own origin
//! (and open WebSocket connections, for the MQTT page), may not be framed, and sends no
//! referrer. No CORS headers are sent, so another origin's page cannot read any answer.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use plugin_api::Host;
use plugin_http::dashboard_client;
use serde_json::json;

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/app.js");
const WEBSOCKET: &str = include_str!("../assets/websocket.js");
const STYLE: &str = include_str!("../assets/app.css");

/// Sent with every answer. `connect-src` allows `ws:` / `wss:` for the WebSocket MQTT page
/// (the broker's listener is on another port, so another origin), nothing else.
pub(crate) const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "content-security-policy",
        "default-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; \
         form-action 'self'; object-src 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
];

/// Adds [`SECURITY_HEADERS`] to an answer.
async fn security_headers(mut response: Response) -> Response {
    for (name, value) in SECURITY_HEADERS {
        response.headers_mut().insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Largest request body passed to the API.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone)]
struct Proxy {
    api: String,
    client: reqwest::Client,
    host: Host,
    /// The management API's token (`plugin_http::dashboard_client`) once the store has one:
    /// it is made once and never changed, so it is read until found, then kept.
    token: Arc<OnceLock<String>>,
}

pub fn router(api: String, host: Host) -> Result<Router, reqwest::Error> {
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
    Ok(Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT) }))
        .route(
            "/websocket.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], WEBSOCKET) }),
        )
        .route("/app.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }))
        .route("/api/{*rest}", any(pass_through))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(Proxy { api, client, host, token: Arc::default() }))
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"code": status.as_u16(), "message": message}))).into_response()
}

/// Whether a request would stop the dashboard serving this very page.
fn stops_the_dashboard(method: &Method, path: &str) -> bool {
    method == Method::PUT
        && matches!(path, "/api/v4/plugins/emqx_dashboard/unload" | "/api/v4/plugins/emqx_dashboard/reload")
}

/// The management API's token, read from the store until it is there (off the async
/// thread: the store may block).
async fn token(proxy: &Proxy) -> Option<String> {
    if let Some(token) = proxy.token.get() {
        return Some(token.clone());
    }
    let host = proxy.host;
    let token = tokio::task::spawn_blocking(move || dashboard_client::token(host)).await.ok()?.ok()??;
    Some(proxy.token.get_or_init(|| token).clone())
}

/// Passes a request on to the management API, naming the browser's address with the
/// dashboard's token (`plugin_http::dashboard_client`): the API's lock-out after failed
/// logins then counts each browser, not the dashboard.
async fn pass_through(
    State(proxy): State<Proxy>,
    ConnectInfo(browser): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if stops_the_dashboard(&method, &path) {
        return error(
            StatusCode::BAD_REQUEST,
            "The dashboard cannot be stopped from its own page: it would cut off this page. \
             Use `broker ctl plugins unload emqx_dashboard`."
                .into(),
        );
    }
    let url = match request.uri().query() {
        Some(query) => format!("{}{path}?{query}", proxy.api),
        None => format!("{}{path}", proxy.api),
    };
    let mut outgoing = proxy.client.request(method, &url);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(value) = request.headers().get(&name) {
            outgoing = outgoing.header(name, value.clone());
        }
    }
    if let Some(token) = token(&proxy).await {
        outgoing = outgoing
            .header(dashboard_client::TOKEN_HEADER, token)
            .header(dashboard_client::CLIENT_HEADER, browser.ip().to_string());
    }
    let body: Bytes = match axum::body::to_bytes(request.into_body(), MAX_BODY).await {
        Ok(body) => body,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {MAX_BODY} bytes")),
    };
    let answer = match outgoing.body(body).send().await {
        Ok(answer) => answer,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!("the management API at {} is not reachable (is emqx_management loaded?): {e}", proxy.api),
            )
        }
    };
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let retry_after = answer.headers().get(header::RETRY_AFTER).cloned();
    let bytes = answer.bytes().await.unwrap_or_default();
    // No WWW-Authenticate: the page has its own login form, the browser's dialog must not
    // pop up.
    let mut response = (status, bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type.unwrap_or(HeaderValue::from_static("application/json")));
    // A lock-out after failed logins (429) says when to try again.
    if let Some(retry_after) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, retry_after);
    }
    response
}
