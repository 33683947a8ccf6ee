//! EMQX 4.3's request params: `clientid=%c,username=%u,password=%P`, each value either a
//! placeholder (replaced by the client's value) or literal text. As in EMQX's
//! `emqx_auth_http_cli:feedvar/2`, only a whole value is a placeholder (`user=%u` sends the
//! username, `user=x%u` sends `x%u`), and a value the client does not have is sent as
//! `undefined` (Erlang's atom for "none": a client without a username sends
//! `username=undefined`, as EMQX's does).

/// The text EMQX sends for a value the client does not have.
pub(crate) const UNDEFINED: &str = "undefined";

/// One placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    /// `%u` username.
    Username,
    /// `%c` client id.
    ClientId,
    /// `%a` the client's IP address.
    IpAddress,
    /// `%r` protocol (`mqtt`).
    Protocol,
    /// `%P` password (only in `auth_req` and `super_req`: EMQX's ACL check has none).
    Password,
    /// `%p` the port of the listener the client connected to (EMQX's `sockport`).
    SockPort,
    /// `%C` common name of the client's TLS certificate.
    CertCommonName,
    /// `%d` subject of the client's TLS certificate.
    CertSubject,
    /// `%A` access: 1 subscribe, 2 publish (`acl_req`).
    Access,
    /// `%t` topic (`acl_req`).
    Topic,
    /// `%m` mountpoint.
    Mountpoint,
}

impl Var {
    fn from_placeholder(text: &str) -> Option<Var> {
        Some(match text {
            "%u" => Var::Username,
            "%c" => Var::ClientId,
            "%a" => Var::IpAddress,
            "%r" => Var::Protocol,
            "%P" => Var::Password,
            "%p" => Var::SockPort,
            "%C" => Var::CertCommonName,
            "%d" => Var::CertSubject,
            "%A" => Var::Access,
            "%t" => Var::Topic,
            "%m" => Var::Mountpoint,
            _ => return None,
        })
    }
}

/// A value: a placeholder or literal text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Var(Var),
    Text(String),
}

/// A params string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParamsError {
    /// An entry without `=`.
    #[error("{0:?} is not KEY=VALUE (params are KEY=VALUE,KEY=VALUE,...)")]
    NotKeyValue(String),
    /// An entry with an empty key.
    #[error("{0:?} has no key")]
    EmptyKey(String),
    /// `%` and one letter that is not a placeholder EMQX knows.
    #[error("unknown placeholder {0} (known: %u %c %a %r %P %p %C %d %A %t %m)")]
    UnknownPlaceholder(String),
}

/// The parsed params of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Params(Vec<(String, Value)>);

/// What the placeholders are replaced with, for one client (and topic).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Vars<'a> {
    /// MQTT username; `None` when the client gave none.
    pub(crate) username: Option<&'a str>,
    /// MQTT client id.
    pub(crate) client_id: &'a str,
    /// The client's IP address.
    pub(crate) ip: Option<&'a str>,
    /// Password bytes (`client.authenticate` only); `None` when the client gave none.
    pub(crate) password: Option<&'a [u8]>,
    /// The listener's port.
    pub(crate) sockport: Option<u16>,
    /// For `acl_req`: 1 subscribe, 2 publish.
    pub(crate) access: Option<u8>,
    /// For `acl_req`: the topic or filter.
    pub(crate) topic: Option<&'a str>,
}

impl Params {
    /// Parses `KEY=VALUE,KEY=VALUE,...` (an empty string is no params).
    pub(crate) fn parse(text: &str) -> Result<Params, ParamsError> {
        let mut params = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (key, value) = entry.split_once('=').ok_or_else(|| ParamsError::NotKeyValue(entry.to_owned()))?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(ParamsError::EmptyKey(entry.to_owned()));
            }
            let value = match Var::from_placeholder(value) {
                Some(var) => Value::Var(var),
                None if value.len() == 2 && value.starts_with('%') && value.as_bytes()[1].is_ascii_alphabetic() => {
                    return Err(ParamsError::UnknownPlaceholder(value.to_owned()))
                }
                None => Value::Text(value.to_owned()),
            };
            params.push((key.to_owned(), value));
        }
        Ok(Params(params))
    }

    /// The params with their placeholders replaced, in their configured order.
    pub(crate) fn render(&self, vars: &Vars<'_>) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(key, value)| {
                let value = match value {
                    Value::Text(text) => text.clone(),
                    Value::Var(var) => render_var(*var, vars),
                };
                (key.clone(), value)
            })
            .collect()
    }
}

fn render_var(var: Var, vars: &Vars<'_>) -> String {
    let or_undefined = |v: Option<&str>| v.unwrap_or(UNDEFINED).to_owned();
    match var {
        Var::Username => or_undefined(vars.username),
        Var::ClientId => vars.client_id.to_owned(),
        Var::IpAddress => or_undefined(vars.ip),
        Var::Protocol => "mqtt".to_owned(),
        Var::Password => {
            vars.password.map_or_else(|| UNDEFINED.to_owned(), |p| String::from_utf8_lossy(p).into_owned())
        }
        Var::SockPort => vars.sockport.map_or_else(|| UNDEFINED.to_owned(), |p| p.to_string()),
        Var::Access => vars.access.map_or_else(|| UNDEFINED.to_owned(), |a| a.to_string()),
        Var::Topic => or_undefined(vars.topic),
        // No TLS client certificates and no mountpoints reach plugins (yet): EMQX sends
        // `undefined` for a client that has none.
        Var::CertCommonName | Var::CertSubject | Var::Mountpoint => UNDEFINED.to_owned(),
    }
}

/// The IP address in a peer address `ip:port` (`[v6]:port` too).
pub(crate) fn peer_ip(peer: &str) -> Option<&str> {
    let (ip, port) = peer.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let ip = ip.strip_prefix('[').and_then(|ip| ip.strip_suffix(']')).unwrap_or(ip);
    (!ip.is_empty()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(params: &[(&str, &str)]) -> Vec<(String, String)> {
        params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn placeholders_are_replaced_whole_values_only() {
        let params = Params::parse(
            "clientid=%c, username=%u,password=%P,ip=%a,proto=%r,port=%p,x=lit%u,access=%A,topic=%t,mp=%m,cn=%C",
        )
        .unwrap();
        let vars = Vars {
            username: Some("alice"),
            client_id: "c1",
            ip: Some("127.0.0.1"),
            password: Some(b"s3cret"),
            sockport: Some(1883),
            access: Some(2),
            topic: Some("a/b"),
        };
        assert_eq!(
            params.render(&vars),
            pairs(&[
                ("clientid", "c1"),
                ("username", "alice"),
                ("password", "s3cret"),
                ("ip", "127.0.0.1"),
                ("proto", "mqtt"),
                ("port", "1883"),
                ("x", "lit%u"),
                ("access", "2"),
                ("topic", "a/b"),
                ("mp", "undefined"),
                ("cn", "undefined"),
            ])
        );
    }

    #[test]
    fn what_the_client_lacks_is_undefined_as_in_emqx() {
        let params = Params::parse("u=%u,p=%P,t=%t").unwrap();
        assert_eq!(
            params.render(&Vars { client_id: "c", ..Default::default() }),
            pairs(&[("u", "undefined"), ("p", "undefined"), ("t", "undefined")])
        );
    }

    #[test]
    fn bad_params_are_named() {
        assert_eq!(Params::parse("clientid").unwrap_err(), ParamsError::NotKeyValue("clientid".into()));
        assert_eq!(Params::parse("=%c").unwrap_err(), ParamsError::EmptyKey("=%c".into()));
        assert_eq!(Params::parse("a=%z").unwrap_err(), ParamsError::UnknownPlaceholder("%z".into()));
        assert_eq!(Params::parse(" , ").unwrap(), Params(Vec::new()));
        assert_eq!(Params::parse("pct=%20").unwrap().render(&Vars::default()), pairs(&[("pct", "%20")]));
    }

    #[test]
    fn peer_ips() {
        assert_eq!(peer_ip("127.0.0.1:5000"), Some("127.0.0.1"));
        assert_eq!(peer_ip("[::1]:5000"), Some("::1"));
        assert_eq!(peer_ip("nonsense"), None);
    }
}
