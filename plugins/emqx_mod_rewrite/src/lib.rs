//! `emqx_mod_rewrite`: topic rewrite, as EMQX 4.x's module. Each rule names the action it
//! applies to, a topic filter (`source`) that picks the topics it applies to, a regular
//! expression (`re`) and the new topic (`dest`, with `$1`, `$2`, ... for the expression's
//! capture groups):
//!
//! ```toml
//! [rewrite]
//! rules = [
//!   { action = "publish", source = "x/#", re = "^x/y/(.+)$", dest = "z/y/$1" },
//!   { action = "subscribe", source = "y/+/z/#", re = "^y/(.+)/z/(.+)$", dest = "y/z/$2" },
//! ]
//! ```
//!
//! As in EMQX, a topic is rewritten by the first rule whose `source` matches it: if that
//! rule's `re` matches too, the topic becomes `dest` with the captures put in; if not, the
//! topic stays as it is (later rules are not tried). `action` is `publish` (messages, in
//! `message.publish`), `subscribe` (filters in SUBSCRIBE and UNSUBSCRIBE, in
//! `client.subscribe` / `client.unsubscribe`) or `all`. A shared subscription's filter is
//! rewritten without its `$share/<group>/` (or `$queue/`) prefix, which is kept.
//!
//! The broker checks the ACL of a publish on the topic the client used, and of a subscribe
//! on the rewritten filter, as EMQX does. The module runs before other plugins on
//! `message.publish` (priority 1000), so `emqx_retainer` keeps a message under its new topic.
//!
//! Expressions are Rust's `regex` syntax, which is PCRE's (EMQX's) without look-around and
//! back-references; a rule that does not compile stops the module from starting, naming it.

use plugin_api::topic::{is_valid_filter, matches};
use plugin_api::{
    declare_plugin, BoxError, Config, Event, Hook, HookMask, HookResult, Host, Plugin, PluginInfo, PluginKind,
};
use regex::Regex;
use serde::Deserialize;

/// Which events a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    /// Messages (`message.publish`). EMQX's `pub` is accepted too.
    #[serde(alias = "pub")]
    Publish,
    /// Subscriptions (`client.subscribe`, `client.unsubscribe`). EMQX's `sub` is accepted too.
    #[serde(alias = "sub")]
    Subscribe,
    /// Both.
    All,
}

/// One rule as the config writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSetting {
    action: Action,
    source: String,
    re: String,
    dest: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    rules: Vec<RuleSetting>,
}

/// A compiled rule.
#[derive(Debug)]
struct Rule {
    source: String,
    re: Regex,
    dest: String,
}

impl Rule {
    /// `topic` rewritten by this rule (its `source` already matched): `dest` with `$1`, `$2`,
    /// ... replaced by the captures, as EMQX replaces them (each `$N` in turn, every
    /// occurrence; a group that did not take part is empty). `None` when `re` does not match.
    fn rewrite(&self, topic: &str) -> Option<String> {
        let captures = self.re.captures(topic)?;
        let mut dest = self.dest.clone();
        for i in 1..captures.len() {
            let value = captures.get(i).map_or("", |m| m.as_str());
            dest = dest.replace(&format!("${i}"), value);
        }
        Some(dest)
    }
}

/// The first rule whose source matches `topic` decides: its rewrite, or no change.
fn rewrite(rules: &[Rule], topic: &str) -> Option<String> {
    let rule = rules.iter().find(|rule| matches(&rule.source, topic))?;
    rule.rewrite(topic).filter(|new| new != topic)
}

/// A shared subscription's `$share/<group>/` or `$queue/` prefix, and the filter after it.
fn split_share(filter: &str) -> (&str, &str) {
    if let Some(rest) = filter.strip_prefix("$queue/") {
        return filter.split_at(filter.len() - rest.len());
    }
    if let Some(rest) = filter.strip_prefix("$share/") {
        if let Some((_group, path)) = rest.split_once('/') {
            return filter.split_at(filter.len() - path.len());
        }
    }
    ("", filter)
}

/// The running module.
pub struct Rewrite {
    publish: Vec<Rule>,
    subscribe: Vec<Rule>,
}

impl Rewrite {
    fn compile(settings: Settings) -> Result<Rewrite, BoxError> {
        let mut rewrite = Rewrite { publish: Vec::new(), subscribe: Vec::new() };
        for (i, RuleSetting { action, source, re, dest }) in settings.rules.into_iter().enumerate() {
            let n = i + 1;
            if !is_valid_filter(&source) {
                return Err(format!("rewrite.rules[{n}]: source {source:?} is not a topic filter").into());
            }
            let re = Regex::new(&re).map_err(|e| format!("rewrite.rules[{n}]: re {re:?}: {e}"))?;
            if dest.is_empty() {
                return Err(format!("rewrite.rules[{n}]: dest is empty").into());
            }
            if matches!(action, Action::Publish | Action::All) {
                rewrite.publish.push(Rule { source: source.clone(), re: re.clone(), dest: dest.clone() });
            }
            if matches!(action, Action::Subscribe | Action::All) {
                rewrite.subscribe.push(Rule { source, re, dest });
            }
        }
        Ok(rewrite)
    }
}

impl Plugin for Rewrite {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let rewrite = Rewrite::compile(config.parse()?)?;
        host.info(&format!(
            "{} publish and {} subscribe rewrite rules",
            rewrite.publish.len(),
            rewrite.subscribe.len()
        ));
        Ok(rewrite)
    }

    fn on_event(&self, event: &Event<'_>) -> HookResult {
        let new = match event.hook {
            Hook::MessagePublish => rewrite(&self.publish, event.topic),
            Hook::ClientSubscribe | Hook::ClientUnsubscribe => {
                let (share, filter) = split_share(event.topic);
                rewrite(&self.subscribe, filter).map(|new| format!("{share}{new}"))
            }
            _ => None,
        };
        match new {
            Some(topic) => event.replace_topic(&topic),
            None => HookResult::Continue,
        }
    }
}

declare_plugin!(
    Rewrite,
    PluginInfo {
        name: "emqx_mod_rewrite",
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X Topic Rewrite Module",
        kind: PluginKind::Module,
        hooks: HookMask::of(&[Hook::MessagePublish, Hook::ClientSubscribe, Hook::ClientUnsubscribe]),
        // Before every other plugin, so that they see the rewritten topic (in EMQX modules
        // hook in before plugins start).
        priority: 1000,
        ctl_command: None,
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(rules: &[(&str, &str, &str)]) -> Vec<Rule> {
        rules
            .iter()
            .map(|&(source, re, dest)| Rule { source: source.into(), re: Regex::new(re).unwrap(), dest: dest.into() })
            .collect()
    }

    #[test]
    fn the_first_matching_source_decides() {
        let rules = compiled(&[("x/#", "^x/y/(.+)$", "z/y/$1"), ("x/y/#", "^x/(.+)$", "never/$1")]);
        assert_eq!(rewrite(&rules, "x/y/1").as_deref(), Some("z/y/1"));
        // `x/#` matches but its expression does not: unchanged, the second rule is not tried.
        assert_eq!(rewrite(&rules, "x/q/1"), None);
        assert_eq!(rewrite(&rules, "other"), None);
    }

    #[test]
    fn captures_are_put_in_as_emqx_does() {
        let rules = compiled(&[("#", "^a/(.+)/b/(.+)$", "$2/$1/$2")]);
        assert_eq!(rewrite(&rules, "a/1/b/2").as_deref(), Some("2/1/2"));
        let optional = compiled(&[("#", "^(o)?p/(.+)$", "[$1]$2")]);
        assert_eq!(rewrite(&optional, "p/q").as_deref(), Some("[]q"));
    }

    #[test]
    fn a_share_prefix_is_kept_out_of_the_rule() {
        assert_eq!(split_share("$share/g/x/y"), ("$share/g/", "x/y"));
        assert_eq!(split_share("$queue/x/y"), ("$queue/", "x/y"));
        assert_eq!(split_share("x/y"), ("", "x/y"));
    }

    #[test]
    fn a_bad_rule_is_named() {
        let bad = |re: &str, source: &str| {
            let settings = Settings {
                rules: vec![RuleSetting {
                    action: Action::All,
                    source: source.into(),
                    re: re.into(),
                    dest: "d".into(),
                }],
            };
            Rewrite::compile(settings).err().unwrap().to_string()
        };
        assert!(bad("(", "x/#").starts_with("rewrite.rules[1]: re \"(\""), "{}", bad("(", "x/#"));
        assert!(bad("x", "x/#/y").contains("is not a topic filter"));
    }
}
