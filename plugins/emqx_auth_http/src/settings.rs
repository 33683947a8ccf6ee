//! The `[auth_http]` table (env: `BROKER_AUTH_HTTP__<KEY>`, `BROKER_AUTH_HTTP__AUTH_REQ__URL`, ...),
//! with EMQX 4.3's `emqx_auth_http.conf` names and defaults: `auth_req`, `super_req` and
//! `acl_req`, each with `url`, `method`, `headers` and `params`; `timeout`,
//! `connect_timeout`, `pool_size`, `ssl.cacertfile` / `ssl.certfile` / `ssl.keyfile`. Added
//! here: each request's `deny_on_error`, and the answer cache (`cache_max_size`,
//! `cache_ttl`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::params::{Params, ParamsError};

/// The three requests EMQX's plugin makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// `auth_req`: may this client connect?
    Auth,
    /// `super_req`: is this (authenticated) client a superuser?
    Super,
    /// `acl_req`: may this client publish / subscribe to this topic?
    Acl,
}

impl Kind {
    /// The config name, `auth_req`, `super_req` or `acl_req`.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Kind::Auth => "auth_req",
            Kind::Super => "super_req",
            Kind::Acl => "acl_req",
        }
    }

    /// EMQX 4.3's default URL.
    const fn default_url(self) -> &'static str {
        match self {
            Kind::Auth => "http://127.0.0.1:80/mqtt/auth",
            Kind::Super => "http://127.0.0.1:80/mqtt/superuser",
            Kind::Acl => "http://127.0.0.1:80/mqtt/acl",
        }
    }

    /// EMQX 4.3's default params.
    const fn default_params(self) -> &'static str {
        match self {
            Kind::Auth => "clientid=%c,username=%u,password=%P",
            Kind::Super => "clientid=%c,username=%u",
            Kind::Acl => "access=%A,username=%u,clientid=%c,ipaddr=%a,topic=%t,mountpoint=%m",
        }
    }

    /// What a request that got no HTTP answer counts as, by default. EMQX 4.3's
    /// `emqx_auth_http:check/3` refuses the client (`server_unavailable`) when the auth
    /// request fails, and `emqx_acl_http:do_check_acl/5` ignores (returns `ok`) when the ACL
    /// request fails; a failed superuser request is "not a superuser" whatever is set.
    const fn default_deny_on_error(self) -> bool {
        matches!(self, Kind::Auth)
    }
}

/// HTTP method of a request. EMQX 4.3 offers `post` and `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Method {
    /// The params go in the body, encoded as the `content-type` header says (EMQX).
    Post,
    /// The params go in the query string (EMQX).
    Get,
}

/// One request's table as written (`[auth_http.auth_req]`); every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRequest {
    url: Option<String>,
    method: Option<Method>,
    headers: BTreeMap<String, String>,
    params: Option<String>,
    deny_on_error: Option<bool>,
}

/// EMQX 4.3's `auth.http.ssl.*`, for `https://` URLs: PEM files, relative to the data
/// directory unless absolute. Without `cacertfile` the service's certificate is checked
/// against the public web PKI roots (Mozilla's, built in).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Ssl {
    /// The CA certificates the service's certificate must chain to.
    pub(crate) cacertfile: Option<PathBuf>,
    /// The client certificate (chain) shown to the service.
    pub(crate) certfile: Option<PathBuf>,
    /// The client certificate's private key.
    pub(crate) keyfile: Option<PathBuf>,
}

/// The table as written.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawSettings {
    auth_req: RawRequest,
    super_req: RawRequest,
    acl_req: RawRequest,
    #[serde(deserialize_with = "plugin_api::duration::deserialize")]
    timeout: Duration,
    #[serde(deserialize_with = "plugin_api::duration::deserialize")]
    connect_timeout: Duration,
    pool_size: usize,
    cache_max_size: usize,
    #[serde(deserialize_with = "plugin_api::duration::deserialize")]
    cache_ttl: Duration,
    ssl: Ssl,
}

impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            auth_req: RawRequest::default(),
            super_req: RawRequest::default(),
            acl_req: RawRequest::default(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            pool_size: 32,
            cache_max_size: 1024,
            cache_ttl: Duration::from_secs(10),
            ssl: Ssl::default(),
        }
    }
}

/// How the body of a POST is encoded: EMQX 4.3 takes it from the `content-type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `application/x-www-form-urlencoded` (EMQX's default).
    Form,
    /// `application/json`: an object of strings.
    Json,
}

/// One configured request, checked.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// Which request it is.
    pub(crate) kind: Kind,
    /// Where it goes (`http://` or `https://`).
    pub(crate) url: url::Url,
    /// GET or POST.
    pub(crate) method: Method,
    /// Headers sent, lowercase names, `content-type` among them.
    pub(crate) headers: Vec<(String, String)>,
    /// How a POST body is encoded.
    pub(crate) encoding: Encoding,
    /// What is sent, with placeholders.
    pub(crate) params: Params,
    /// A request that gets no HTTP answer (refused, timed out, broken) counts as a deny
    /// (`true`) or as "ignore" (`false`, the next plugin decides).
    pub(crate) deny_on_error: bool,
}

/// Every setting, checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `auth_req`; `None` when its `url` is empty (no authentication by HTTP).
    pub(crate) auth_req: Option<Request>,
    /// `super_req`; `None` when its `url` is empty (nobody is a superuser).
    pub(crate) super_req: Option<Request>,
    /// `acl_req`; `None` when its `url` is empty (no ACL by HTTP).
    pub(crate) acl_req: Option<Request>,
    /// The longest one request may take, connecting included (EMQX's `timeout`).
    pub(crate) timeout: Duration,
    /// The longest connecting may take (EMQX's `connect_timeout`).
    pub(crate) connect_timeout: Duration,
    /// Idle keep-alive connections kept to the service (EMQX's `pool_size`).
    pub(crate) pool_size: usize,
    /// Answers kept in the cache; 0 turns it off.
    pub(crate) cache_max_size: usize,
    /// How long an answer is kept; 0 turns the cache off.
    pub(crate) cache_ttl: Duration,
    /// TLS files for `https://`.
    pub(crate) ssl: Ssl,
}

/// The table is wrong; the message names the key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SettingsError {
    /// Not the right shape (unknown key, wrong type, bad duration or method), at the key it names.
    #[error(transparent)]
    Shape(#[from] plugin_api::TableError),
    /// A URL that does not parse or is not http(s).
    #[error("auth_http.{kind}.url: {why}: {url:?}")]
    Url { kind: &'static str, url: String, why: String },
    /// A params string that does not parse.
    #[error("auth_http.{kind}.params: {source}")]
    Params {
        kind: &'static str,
        #[source]
        source: ParamsError,
    },
    /// A header name or value that HTTP does not allow, or a content type EMQX does not know.
    #[error("auth_http.{kind}.headers: {why}")]
    Header { kind: &'static str, why: String },
    /// A zero `timeout` or `connect_timeout`.
    #[error("auth_http.{0} must be more than 0")]
    Zero(&'static str),
}

impl Settings {
    /// Reads and checks the plugin's config table (`null` or `{}` gives EMQX's defaults).
    pub(crate) fn from_json(value: &serde_json::Value) -> Result<Settings, SettingsError> {
        let raw: RawSettings = plugin_api::parse_table(value, "auth_http")?;
        if raw.timeout.is_zero() {
            return Err(SettingsError::Zero("timeout"));
        }
        if raw.connect_timeout.is_zero() {
            return Err(SettingsError::Zero("connect_timeout"));
        }
        Ok(Settings {
            auth_req: request(Kind::Auth, raw.auth_req)?,
            super_req: request(Kind::Super, raw.super_req)?,
            acl_req: request(Kind::Acl, raw.acl_req)?,
            timeout: raw.timeout,
            connect_timeout: raw.connect_timeout,
            pool_size: raw.pool_size,
            cache_max_size: raw.cache_max_size,
            cache_ttl: raw.cache_ttl,
            ssl: raw.ssl,
        })
    }

    /// Whether answers are cached.
    pub(crate) fn cache_enabled(&self) -> bool {
        self.cache_max_size > 0 && !self.cache_ttl.is_zero()
    }
}

fn request(kind: Kind, raw: RawRequest) -> Result<Option<Request>, SettingsError> {
    let url = raw.url.unwrap_or_else(|| kind.default_url().to_owned());
    if url.trim().is_empty() {
        return Ok(None);
    }
    let bad_url = |why: String| SettingsError::Url { kind: kind.name(), url: url.clone(), why };
    let parsed = url::Url::parse(url.trim()).map_err(|e| bad_url(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad_url(format!("the scheme must be http or https, not {}", parsed.scheme())));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad_url("no host".to_owned()));
    }
    let params = Params::parse(raw.params.as_deref().unwrap_or(kind.default_params()))
        .map_err(|source| SettingsError::Params { kind: kind.name(), source })?;
    let bad_header = |why: String| SettingsError::Header { kind: kind.name(), why };
    // EMQX's default header; names are case-insensitive, and an environment variable cannot
    // spell `-`, so `content_type` means `content-type`.
    let mut headers = vec![("content-type".to_owned(), "application/x-www-form-urlencoded".to_owned())];
    for (name, value) in raw.headers {
        let name = name.trim().to_ascii_lowercase().replace('_', "-");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-!#$%&'*+.^`|~".contains(&b)) {
            return Err(bad_header(format!("{name:?} is not a valid header name")));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(bad_header(format!("the value of {name} has a line break or NUL")));
        }
        headers.retain(|(n, _)| *n != name);
        headers.push((name, value));
    }
    let content_type = headers.iter().find(|(n, _)| n == "content-type").map(|(_, v)| v.as_str()).unwrap_or_default();
    let encoding = match content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase().as_str() {
        "application/x-www-form-urlencoded" => Encoding::Form,
        "application/json" => Encoding::Json,
        other => {
            return Err(bad_header(format!(
                "content-type {other:?}: EMQX sends application/x-www-form-urlencoded or application/json"
            )))
        }
    };
    Ok(Some(Request {
        kind,
        url: parsed,
        method: raw.method.unwrap_or(Method::Post),
        headers,
        encoding,
        params,
        deny_on_error: raw.deny_on_error.unwrap_or(kind.default_deny_on_error()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_emqx_4_3s() {
        let s = Settings::from_json(&serde_json::Value::Null).unwrap();
        let auth = s.auth_req.as_ref().unwrap();
        assert_eq!(auth.url.as_str(), "http://127.0.0.1/mqtt/auth");
        assert_eq!(auth.method, Method::Post);
        assert_eq!(auth.encoding, Encoding::Form);
        assert!(auth.deny_on_error);
        assert!(!s.acl_req.as_ref().unwrap().deny_on_error);
        assert_eq!(s.super_req.as_ref().unwrap().url.path(), "/mqtt/superuser");
        assert_eq!((s.timeout, s.connect_timeout, s.pool_size), (Duration::from_secs(5), Duration::from_secs(5), 32));
        assert!(s.cache_enabled());
    }

    #[test]
    fn an_empty_url_turns_a_request_off() {
        let s = Settings::from_json(&json!({"acl_req": {"url": ""}, "super_req": {"url": " "}})).unwrap();
        assert!(s.acl_req.is_none() && s.super_req.is_none() && s.auth_req.is_some());
    }

    #[test]
    fn headers_and_methods() {
        let s = Settings::from_json(&json!({
            "auth_req": {"method": "get", "headers": {"Content_Type": "application/json; charset=utf-8", "accept": "*/*"}},
            "timeout": "250ms", "cache_ttl": 0
        }))
        .unwrap();
        let auth = s.auth_req.as_ref().unwrap();
        assert_eq!(auth.method, Method::Get);
        assert_eq!(auth.encoding, Encoding::Json);
        assert_eq!(
            auth.headers,
            vec![
                ("content-type".to_owned(), "application/json; charset=utf-8".to_owned()),
                ("accept".to_owned(), "*/*".to_owned())
            ]
        );
        assert_eq!(s.timeout, Duration::from_millis(250));
        assert!(!s.cache_enabled());
    }

    #[test]
    fn bad_input_is_named_precisely() {
        let cases = [
            (json!({"auth_req": {"url": "ftp://x/y"}}), "auth_http.auth_req.url: the scheme must be http or https"),
            (json!({"acl_req": {"url": "not a url"}}), "auth_http.acl_req.url: relative URL without a base"),
            (json!({"auth_req": {"method": "delete"}}), "auth_http.auth_req.method: unknown variant `delete`"),
            (json!({"auth_req": {"params": "clientid"}}), "auth_http.auth_req.params"),
            (json!({"auth_req": {"headers": {"content-type": "text/plain"}}}), "content-type \"text/plain\""),
            (json!({"auth_req": {"headers": {"x": "a\r\nb"}}}), "line break"),
            (json!({"timeout": "soon"}), "auth_http.timeout: invalid duration \"soon\""),
            (json!({"timeout": 0}), "auth_http.timeout must be more than 0"),
            (json!({"tmieout": "5s"}), "auth_http.tmieout: unknown field `tmieout`"),
        ];
        for (value, expected) in cases {
            let error = Settings::from_json(&value).unwrap_err().to_string();
            assert!(error.contains(expected), "{value}: {error}");
        }
    }
}
