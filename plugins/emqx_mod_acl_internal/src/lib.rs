//! `emqx_mod_acl_internal`: allows or denies publish and subscribe by the rules of an EMQX
//! `acl.conf` in the data directory (see `rules` for the format). The first matching rule
//! decides; when none matches, `nomatch` does. A denied subscribe gets a failure SUBACK (0x80)
//! for that filter; a denied publish is dropped (and still acknowledged).
//!
//! Config (`[acl_internal]`): `file` (default `acl.conf`, relative to the data directory),
//! `nomatch = "allow" | "deny"` (default `allow`). `broker ctl acl reload` re-reads the file
//! (a file with a rule it cannot read is refused whole, the rules in use kept); `broker ctl
//! acl list` prints the rules in use.
#![forbid(unsafe_code)]

mod rules;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use plugin_api::{
    declare_plugin, AclAction, BoxError, Config, Event, Hook, HookMask, HookResult, Host, Plugin, PluginInfo,
    PluginKind,
};
use rules::{Action, Client, Permission, Rule};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum NoMatch {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    file: PathBuf,
    nomatch: NoMatch,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { file: PathBuf::from("acl.conf"), nomatch: NoMatch::Allow }
    }
}

pub struct AclInternal {
    host: Host,
    path: PathBuf,
    nomatch: NoMatch,
    rules: RwLock<Arc<Vec<Rule>>>,
}

impl AclInternal {
    /// Reads the rules file; a missing file is no rules. Returns a summary line. At start, a
    /// rule that cannot be read is logged and skipped, the others used; on `reload`
    /// (`initial` false) any such rule refuses the whole file, and the rules in use stay,
    /// since dropping one deny rule would widen what clients may do.
    fn load(&self, initial: bool) -> Result<String, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        let (rules, errors) = rules::parse(&text);
        let path = self.path.display();
        if !initial && !errors.is_empty() {
            let errors: Vec<String> = errors.iter().map(|e| format!("{path}: {e}")).collect();
            return Err(format!("{}\nnot reloaded: the rules in use are unchanged", errors.join("\n")));
        }
        for error in &errors {
            self.host.error(&format!("{path}: {error}; rule skipped"));
        }
        let summary = format!(
            "{} rules loaded from {path} ({} skipped); no match means {:?}",
            rules.len(),
            errors.len(),
            self.nomatch
        );
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        Ok(summary)
    }
}

impl Plugin for AclInternal {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        let acl = AclInternal {
            host,
            path: host.data_dir().join(&settings.file),
            nomatch: settings.nomatch,
            rules: RwLock::new(Arc::new(Vec::new())),
        };
        let summary = acl.load(true)?;
        host.info(&summary);
        Ok(acl)
    }

    fn on_event(&self, event: &Event<'_>) -> HookResult {
        let action = match event.acl_action {
            Some(AclAction::Publish) => Action::Publish,
            Some(AclAction::Subscribe) => Action::Subscribe,
            None => return HookResult::Continue,
        };
        // `1.2.3.4:5678` or `[::1]:5678`.
        let ip = event.peer.parse::<SocketAddr>().ok().map(|peer| peer.ip().to_canonical());
        let client = Client { client_id: event.client_id, username: event.username, ip };
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner()).clone();
        match rules.iter().find_map(|rule| rule.check(&client, action, event.topic)) {
            Some(Permission::Allow) => HookResult::Allow,
            Some(Permission::Deny) => HookResult::Deny,
            None if self.nomatch == NoMatch::Deny => HookResult::Deny,
            None => HookResult::Continue,
        }
    }

    fn ctl(&self, args: &[String]) -> Result<String, String> {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["reload"] => self.load(false),
            ["list"] => {
                let rules = self.rules.read().unwrap_or_else(|e| e.into_inner()).clone();
                Ok(rules.iter().map(|r| r.source.as_str()).collect::<Vec<_>>().join("\n"))
            }
            _ => Err("usage: broker ctl acl reload | list".to_owned()),
        }
    }
}

declare_plugin!(
    AclInternal,
    PluginInfo {
        name: "emqx_mod_acl_internal",
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X Internal ACL Module",
        kind: PluginKind::Module,
        hooks: HookMask::of(&[Hook::ClientCheckAcl]),
        priority: 0,
        ctl_command: Some("acl"),
    }
);
