//! The HTTP side: `GET /metrics` answers a scrape; anything else is 404.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use plugin_api::{Host, HostError};

use crate::exposition::CONTENT_TYPE;
use crate::render::{render, Process};

/// The exporter's routes.
pub fn router(host: Host) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(|| async { "emqx_prometheus: scrape /metrics\n" }))
        .with_state(host)
}

/// One scrape: the exposition, or a 500 with a plain text reason (also logged) when the
/// broker's metrics cannot be read. The server keeps serving either way.
async fn scrape(State(host): State<Host>) -> Response {
    match host.metrics() {
        Ok(metrics) => {
            let rendered = render(&metrics, &Process::read(host.started_at()));
            if !rendered.clashes.is_empty() {
                host.warn(&format!(
                    "not exported, their metric names are taken by others: {}",
                    rendered.clashes.join(", ")
                ));
            }
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], rendered.text).into_response()
        }
        Err(error) => {
            let (status, body) = failure(&error);
            host.error(&format!("scrape of /metrics failed: {}", body.trim_end()));
            (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
        }
    }
}

/// Status and body of the answer when the host could not give its metrics.
fn failure(error: &HostError) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("emqx_prometheus: cannot read the broker's metrics: {error}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_host_call_is_a_500_that_says_why() {
        let (status, body) = failure(&HostError::Failed("this broker does not report metrics".into()));
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, "emqx_prometheus: cannot read the broker's metrics: this broker does not report metrics\n");
        let (_, body) = failure(&HostError::BadAnswer("expected value at line 1".into()));
        assert!(body.contains("unreadable answer from the host: expected value at line 1"), "{body}");
    }
}
