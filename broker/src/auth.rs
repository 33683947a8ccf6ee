//! Who may connect when no plugin vouches for a client, and how refused clients are slowed
//! down.
//!
//! `client.authenticate` answers allow, superuser, deny or continue. When every plugin says
//! continue (or none is loaded) the client is *anonymous*, and `allow_anonymous` decides:
//! `true`, `false`, or `"loopback"` (the default: only from 127.0.0.0/8 and ::1, so a fresh
//! broker on 0.0.0.0 is not open to the network while local tools keep working).
//!
//! A refused authentication (a plugin's deny, or an anonymous client refused) is answered
//! after `auth.failure_delay`, and each counts against the peer's IP address: past
//! `auth.max_failures` within `auth.window_time`, the address is banned for `auth.ban_time`
//! and its CONNECTs are refused at once (CONNACK 0x8A Banned). The table of addresses is
//! bounded (`failures::MAX_TRACKED` addresses).

mod failures;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) use failures::Failures;

/// `allow_anonymous`: what happens to a client no authentication plugin vouched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllowAnonymous {
    /// Every anonymous client is admitted (EMQX's `allow_anonymous = true`).
    Yes,
    /// No anonymous client is admitted.
    No,
    /// Anonymous clients are admitted only from a loopback address (the default).
    #[default]
    Loopback,
}

impl AllowAnonymous {
    /// Whether an anonymous client from `peer` is admitted.
    pub(crate) fn admits(self, peer: Option<IpAddr>) -> bool {
        match self {
            AllowAnonymous::Yes => true,
            AllowAnonymous::No => false,
            AllowAnonymous::Loopback => peer.is_some_and(is_loopback),
        }
    }

    /// What the setting means for clients reaching a listener bound to `addr`, for the log at
    /// start; `None` when the listener is reachable from loopback only.
    pub(crate) fn exposure(self, addr: SocketAddr) -> Option<String> {
        if is_loopback(addr.ip()) {
            return None;
        }
        Some(match self {
            AllowAnonymous::Yes => format!(
                "listener {addr} is reachable beyond this host and allow_anonymous = true: clients that no \
                 authentication plugin knows connect from anywhere"
            ),
            AllowAnonymous::No => format!(
                "listener {addr}: allow_anonymous = false: only clients an authentication plugin accepts connect"
            ),
            AllowAnonymous::Loopback => format!(
                "listener {addr} is reachable beyond this host; allow_anonymous = \"loopback\": clients that no \
                 authentication plugin accepts connect only from this host (127.0.0.0/8, ::1); add users \
                 (emqx_auth_mnesia: broker ctl users add NAME PASSWORD) or set allow_anonymous"
            ),
        })
    }
}

impl Serialize for AllowAnonymous {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AllowAnonymous::Yes => s.serialize_bool(true),
            AllowAnonymous::No => s.serialize_bool(false),
            AllowAnonymous::Loopback => s.serialize_str("loopback"),
        }
    }
}

/// A setting written as a TOML boolean or as text (an environment variable is always text):
/// what `allow_anonymous` and the configuration's on/off settings read before they tell the
/// values apart.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum BoolOrText {
    Bool(bool),
    Text(String),
}

impl<'de> Deserialize<'de> for AllowAnonymous {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match BoolOrText::deserialize(d)? {
            BoolOrText::Bool(true) => Ok(AllowAnonymous::Yes),
            BoolOrText::Bool(false) => Ok(AllowAnonymous::No),
            BoolOrText::Text(text) => match text.trim() {
                "true" => Ok(AllowAnonymous::Yes),
                "false" => Ok(AllowAnonymous::No),
                "loopback" => Ok(AllowAnonymous::Loopback),
                other => Err(serde::de::Error::custom(format!("{other:?} is not true, false or \"loopback\""))),
            },
        }
    }
}

/// Whether `ip` is a loopback address: 127.0.0.0/8, ::1, or an IPv4-mapped 127.x address
/// (`::ffff:127.0.0.1`, what a dual-stack listener sees for an IPv4 loopback client).
pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// How refused authentications are slowed down (from `[auth]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailurePolicy {
    /// How long a refused CONNACK waits.
    pub(crate) delay: Duration,
    /// Failures from one address within `window` that ban it; 0 never bans.
    pub(crate) max_failures: u32,
    pub(crate) window: Duration,
    pub(crate) ban_time: Duration,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy { delay: Duration::ZERO, max_failures: 0, window: Duration::ZERO, ban_time: Duration::ZERO }
    }
}

/// The node's authentication policy: anonymous clients and failed attempts.
#[derive(Debug, Default)]
pub(crate) struct Auth {
    pub(crate) allow_anonymous: AllowAnonymous,
    pub(crate) failures: Failures,
}

impl Auth {
    pub(crate) fn new(allow_anonymous: AllowAnonymous, policy: FailurePolicy) -> Auth {
        Auth { allow_anonymous, failures: Failures::new(policy) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn loopback_is_127_slash_8_and_ipv6_loopback_and_their_mapped_forms() {
        for loopback in ["127.0.0.1", "127.1.2.3", "127.255.255.255", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip(loopback)), "{loopback}");
        }
        for remote in ["10.0.0.1", "192.168.1.10", "0.0.0.0", "128.0.0.1", "::", "::2", "fe80::1", "::ffff:10.0.0.1"] {
            assert!(!is_loopback(ip(remote)), "{remote}");
        }
    }

    #[test]
    fn loopback_policy_admits_anonymous_clients_only_from_loopback() {
        let policy = AllowAnonymous::Loopback;
        assert!(policy.admits(Some(ip("127.0.0.1"))));
        assert!(policy.admits(Some(ip("::1"))));
        assert!(!policy.admits(Some(ip("192.168.1.10"))));
        assert!(!policy.admits(Some(ip("2001:db8::1"))));
        assert!(!policy.admits(None));
        assert!(AllowAnonymous::Yes.admits(Some(ip("192.168.1.10"))));
        assert!(!AllowAnonymous::No.admits(Some(ip("127.0.0.1"))));
    }

    #[test]
    fn exposure_is_told_only_for_listeners_beyond_loopback() {
        assert_eq!(AllowAnonymous::Loopback.exposure("127.0.0.1:1883".parse().unwrap()), None);
        let told = AllowAnonymous::Loopback.exposure("0.0.0.0:1883".parse().unwrap()).unwrap();
        assert!(told.contains("only from this host"), "{told}");
        assert!(AllowAnonymous::Yes.exposure("[::]:1883".parse().unwrap()).unwrap().contains("from anywhere"));
    }

    #[test]
    fn the_setting_reads_booleans_and_loopback() {
        let read = |json: &str| serde_json::from_str::<AllowAnonymous>(json).map_err(|e| e.to_string());
        assert_eq!(read("true"), Ok(AllowAnonymous::Yes));
        assert_eq!(read("false"), Ok(AllowAnonymous::No));
        assert_eq!(read("\"loopback\""), Ok(AllowAnonymous::Loopback));
        assert_eq!(read("\"false\""), Ok(AllowAnonymous::No));
        assert!(read("\"lan\"").unwrap_err().contains("not true, false or \"loopback\""));
    }
}
