//! The usage report, field for field as EMQX 4.x sends it. No personal data: no IP
//! addresses, hostnames, client ids, usernames or topics.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct License {
    pub edition: &'static str,
}

/// The JSON body of one report. Field order is the order EMQX uses.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub license: License,
    /// Other nodes of a cluster; a single node sends `[]`.
    pub nodes_uuid: Vec<String>,
    pub active_plugins: Vec<String>,
    pub active_modules: Vec<String>,
    /// The most clients connected at once since start (EMQX's `connections.max`).
    pub num_clients: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    /// The broker's version.
    pub emqx_version: String,
    pub os_name: String,
    pub os_version: String,
    /// The Rust toolchain that built this plugin (EMQX sends its Erlang/OTP release here).
    pub otp_version: String,
    /// Milliseconds since the broker started (EMQX: `erlang:statistics(wall_clock)`).
    pub up_time: u64,
    pub uuid: String,
}

/// `(os_name, os_version)` from `/etc/os-release` text: `NAME` and `VERSION` (falling back to
/// `VERSION_ID`), as EMQX reads them.
pub fn os_from_release(text: &str) -> (Option<String>, Option<String>) {
    let field = |key: &str| {
        text.lines().find_map(|line| {
            let value = line.trim().strip_prefix(key)?.strip_prefix('=')?;
            let value = value.trim().trim_matches('"').trim_matches('\'');
            (!value.is_empty()).then(|| value.to_owned())
        })
    };
    (field("NAME"), field("VERSION").or_else(|| field("VERSION_ID")))
}

/// The OS name and version of this machine; `linux` / `unknown` when `/etc/os-release` (or
/// `/usr/lib/os-release`) says nothing.
pub fn os_name_and_version() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let (name, version) = os_from_release(&text);
    (name.unwrap_or_else(|| std::env::consts::OS.to_owned()), version.unwrap_or_else(|| "unknown".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_os_release() {
        let text = "PRETTY_NAME=\"Ubuntu 16.04.6 LTS\"\nNAME=\"Ubuntu\"\nVERSION=\"16.04.6 LTS (Xenial Xerus)\"\nVERSION_ID=\"16.04\"\n";
        assert_eq!(os_from_release(text), (Some("Ubuntu".into()), Some("16.04.6 LTS (Xenial Xerus)".into())));
        assert_eq!(os_from_release("NAME=Alpine\nVERSION_ID=3.19\n"), (Some("Alpine".into()), Some("3.19".into())));
        assert_eq!(os_from_release(""), (None, None));
    }

    #[test]
    fn serializes_in_emqx_order() {
        let report = Report {
            license: License { edition: "community" },
            nodes_uuid: vec![],
            active_plugins: vec!["emqx_telemetry".into()],
            active_modules: vec![],
            num_clients: 1,
            messages_received: 2,
            messages_sent: 3,
            emqx_version: "0.1.0".into(),
            os_name: "Ubuntu".into(),
            os_version: "16.04".into(),
            otp_version: "rustc".into(),
            up_time: 5,
            uuid: "U".into(),
        };
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"license":{"edition":"community"},"nodes_uuid":[],"active_plugins":["emqx_telemetry"],"active_modules":[],"num_clients":1,"messages_received":2,"messages_sent":3,"emqx_version":"0.1.0","os_name":"Ubuntu","os_version":"16.04","otp_version":"rustc","up_time":5,"uuid":"U"}"#
        );
    }
}
