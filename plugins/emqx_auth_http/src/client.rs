//! One HTTP exchange with the auth service, blocking, with EMQX's timeouts.
//!
//! `ureq` runs on the calling thread and needs no async runtime: a hook may call it from one
//! of the broker's tokio workers or from a blocking thread, and nothing here starts, enters or
//! blocks on a runtime (which would panic inside another runtime's thread). Every exchange
//! ends within `timeout` (connecting within `connect_timeout`); idle keep-alive connections
//! are kept, up to `pool_size`, for the next request.

use std::io::Read;
use std::path::Path;

use crate::settings::{Encoding, Method, Request, Settings};
use crate::tls::{self, TlsError};

/// The longest body read: enough to tell `ignore` from anything else and to drain a short
/// answer so its connection can be reused.
const MAX_BODY: u64 = 64 * 1024;

/// What the service answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// HTTP 200 with any body but `ignore`.
    Ok,
    /// HTTP 200 with the body `ignore`: no opinion.
    Ignore,
    /// Any other HTTP status.
    Status(u16),
}

/// The request got no HTTP answer; the text says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Failure(String);

/// A blocking HTTP client with the plugin's timeouts and connection pool.
#[derive(Debug)]
pub(crate) struct Client {
    agent: ureq::Agent,
    timeout: std::time::Duration,
    connect_timeout: std::time::Duration,
}

impl Client {
    /// A client for these settings (relative TLS file paths are taken from `data_dir`).
    pub(crate) fn new(settings: &Settings, data_dir: &Path) -> Result<Client, TlsError> {
        let config = ureq::Agent::config_builder()
            .tls_config(tls::config(&settings.ssl, data_dir)?)
            .timeout_global(Some(settings.timeout))
            .timeout_connect(Some(settings.connect_timeout))
            .http_status_as_error(false)
            // EMQX's ehttpc follows no redirects: a 3xx is an answer, not a hop.
            .max_redirects(0)
            .max_idle_connections_per_host(settings.pool_size)
            .max_idle_connections(settings.pool_size.max(1) * 3)
            .user_agent(concat!("emqx_auth_http/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client { agent: config.into(), timeout: settings.timeout, connect_timeout: settings.connect_timeout })
    }

    /// Sends `request` with `params` (placeholders already filled in) as EMQX 4.3's
    /// `emqx_auth_http_cli:request/7` does: GET puts them in the query string, POST in the
    /// body, form-encoded or as a JSON object of strings as `content-type` says.
    pub(crate) fn exchange(&self, request: &Request, params: &[(String, String)]) -> Result<Answer, Failure> {
        let fail = |e: ureq::Error| self.failure(e);
        let response = match request.method {
            Method::Get => {
                let mut url = request.url.clone();
                if !params.is_empty() {
                    url.query_pairs_mut().extend_pairs(params);
                }
                let mut builder = self.agent.get(url.as_str());
                for (name, value) in headers_without_body(request) {
                    builder = builder.header(name, value);
                }
                builder.call().map_err(fail)?
            }
            Method::Post => {
                let body = match request.encoding {
                    Encoding::Form => form(params),
                    Encoding::Json => json(params),
                };
                let mut builder = self.agent.post(request.url.as_str());
                for (name, value) in &request.headers {
                    builder = builder.header(name, value);
                }
                builder.send(body.as_bytes()).map_err(fail)?
            }
        };
        let status = response.status().as_u16();
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(MAX_BODY)
            .read_to_end(&mut body)
            .map_err(|e| Failure(format!("reading the answer: {e}")))?;
        Ok(match status {
            // EMQX compares the body with `ignore` exactly; surrounding whitespace (a
            // trailing newline) is forgiven here.
            200 if body.trim_ascii() == b"ignore" => Answer::Ignore,
            200 => Answer::Ok,
            other => Answer::Status(other),
        })
    }
}

impl Client {
    /// Says which of EMQX's timeouts ran out, or what else went wrong.
    fn failure(&self, error: ureq::Error) -> Failure {
        let within = |d| humantime::format_duration(d);
        Failure(match error {
            ureq::Error::Timeout(ureq::Timeout::Connect) => {
                format!("could not connect within {} (connect_timeout)", within(self.connect_timeout))
            }
            ureq::Error::Timeout(_) => format!("no answer within {} (timeout)", within(self.timeout)),
            other => other.to_string(),
        })
    }
}

/// A GET has no body, so no `content-type`.
fn headers_without_body(request: &Request) -> impl Iterator<Item = &(String, String)> {
    request.headers.iter().filter(|(name, _)| name != "content-type")
}

/// `a=1&b=2`, percent-encoded.
pub(crate) fn form(params: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish()
}

/// `{"a":"1","b":"2"}`.
fn json(params: &[(String, String)]) -> String {
    let object: serde_json::Map<String, serde_json::Value> =
        params.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    serde_json::Value::Object(object).to_string()
}

/// The parts a request's cache key is made of.
pub(crate) fn key_parts<'a>(request: &'a Request, params: &'a [(String, String)]) -> Vec<&'a [u8]> {
    let mut parts: Vec<&[u8]> = vec![request.kind.name().as_bytes(), request.url.as_str().as_bytes()];
    for (k, v) in params {
        parts.push(k.as_bytes());
        parts.push(v.as_bytes());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs() -> Vec<(String, String)> {
        vec![("username".into(), "a b&c".into()), ("password".into(), "p=ä".into())]
    }

    #[test]
    fn bodies_as_emqx_sends_them() {
        assert_eq!(form(&pairs()), "username=a+b%26c&password=p%3D%C3%A4");
        assert_eq!(json(&pairs()), r#"{"password":"p=ä","username":"a b&c"}"#);
    }
}
