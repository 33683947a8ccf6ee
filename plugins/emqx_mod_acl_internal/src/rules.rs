//! EMQX `acl.conf` rules: Erlang terms, one rule a term, ending in `.`:
//!
//! ```text
//! {allow, {user, "dashboard"}, subscribe, ["$SYS/#"]}.
//! {allow, {ipaddr, "127.0.0.1"}, pubsub, ["$SYS/#", "#"]}.
//! {deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.
//! {allow, all}.
//! ```
//!
//! Who: `all`, `{user, "name"}`, `{client, "id"}`, `{ipaddr, "1.2.3.4"}` or
//! `{ipaddr, "10.0.0.0/8"}`. Access: `publish`, `subscribe`, `pubsub`. Topics: filters (with
//! `%c` = client id and `%u` = username substituted), or `{eq, "t"}` for an exact match.
//! `%` starts a comment. The first rule that matches decides.

use std::net::Ipv4Addr;

use plugin_api::topic;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    All,
    User(String),
    Client(String),
    /// Address and prefix length.
    IpAddr(Ipv4Addr, u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicRule {
    Filter(String),
    Eq(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub permission: Permission,
    pub who: Who,
    /// `None` = both publish and subscribe.
    pub action: Option<Action>,
    /// Empty = every topic (the `{allow, all}.` form).
    pub topics: Vec<TopicRule>,
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub client_id: &'a str,
    pub username: &'a str,
    pub ip: Option<Ipv4Addr>,
}

impl Rule {
    /// `Some(permission)` if this rule applies to `client` doing `action` on `topic`.
    pub fn check(&self, client: &Client<'_>, action: Action, topic: &str) -> Option<Permission> {
        let who = match &self.who {
            Who::All => true,
            Who::User(u) => !client.username.is_empty() && u == client.username,
            Who::Client(c) => c == client.client_id,
            Who::IpAddr(net, bits) => client.ip.is_some_and(|ip| {
                let mask = if *bits == 0 { 0 } else { u32::MAX << (32 - u32::from(*bits)) };
                u32::from(ip) & mask == u32::from(*net) & mask
            }),
        };
        if !who || self.action.is_some_and(|a| a != action) {
            return None;
        }
        let hit = self.topics.is_empty()
            || self.topics.iter().any(|rule| match rule {
                TopicRule::Eq(t) => t == topic,
                TopicRule::Filter(f) => {
                    let filter = f.replace("%c", client.client_id).replace("%u", client.username);
                    topic::matches(&filter, topic)
                }
            });
        hit.then_some(self.permission)
    }
}

/// A rule that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct RuleError {
    pub line: usize,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Term {
    Atom(String),
    Str(String),
    Tuple(Vec<Term>),
    List(Vec<Term>),
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    text: &'a str,
}

impl Parser<'_> {
    fn line_at(&self, offset: usize) -> usize {
        self.text[..offset].matches('\n').count() + 1
    }

    fn skip_space(&mut self) {
        while let Some(&(_, c)) = self.chars.peek() {
            if c == '%' {
                while self.chars.next_if(|&(_, c)| c != '\n').is_some() {}
            } else if c.is_whitespace() {
                self.chars.next();
            } else {
                break;
            }
        }
    }

    fn expect(&mut self, want: char) -> Result<(), String> {
        self.skip_space();
        match self.chars.next() {
            Some((_, c)) if c == want => Ok(()),
            Some((_, c)) => Err(format!("expected '{want}', found '{c}'")),
            None => Err(format!("expected '{want}', found the end of the file")),
        }
    }

    fn term(&mut self) -> Result<Term, String> {
        self.skip_space();
        match self.chars.next() {
            Some((_, '{')) => Ok(Term::Tuple(self.sequence('}')?)),
            Some((_, '[')) => Ok(Term::List(self.sequence(']')?)),
            Some((_, '"')) => {
                let mut s = String::new();
                loop {
                    match self.chars.next() {
                        Some((_, '"')) => return Ok(Term::Str(s)),
                        Some((_, '\\')) => match self.chars.next() {
                            Some((_, c)) => s.push(c),
                            None => return Err("unterminated string".to_owned()),
                        },
                        Some((_, c)) => s.push(c),
                        None => return Err("unterminated string".to_owned()),
                    }
                }
            }
            Some((_, c)) if c.is_ascii_lowercase() => {
                let mut atom = c.to_string();
                while let Some((_, c)) = self.chars.next_if(|&(_, c)| c.is_ascii_alphanumeric() || c == '_') {
                    atom.push(c);
                }
                Ok(Term::Atom(atom))
            }
            Some((_, c)) => Err(format!("unexpected '{c}'")),
            None => Err("unexpected end of the file".to_owned()),
        }
    }

    fn sequence(&mut self, close: char) -> Result<Vec<Term>, String> {
        let mut items = Vec::new();
        self.skip_space();
        if self.chars.next_if(|&(_, c)| c == close).is_some() {
            return Ok(items);
        }
        loop {
            items.push(self.term()?);
            self.skip_space();
            match self.chars.next() {
                Some((_, ',')) => {}
                Some((_, c)) if c == close => return Ok(items),
                Some((_, c)) => return Err(format!("expected ',' or '{close}', found '{c}'")),
                None => return Err(format!("missing '{close}'")),
            }
        }
    }
}

fn string(term: &Term) -> Result<&str, String> {
    match term {
        Term::Str(s) => Ok(s),
        other => Err(format!("expected a string, found {other:?}")),
    }
}

fn rule_from(term: Term) -> Result<Rule, String> {
    let Term::Tuple(items) = term else {
        return Err("a rule is a tuple {Permission, Who, Access, Topics}".to_owned());
    };
    let permission = match items.first() {
        Some(Term::Atom(a)) if a == "allow" => Permission::Allow,
        Some(Term::Atom(a)) if a == "deny" => Permission::Deny,
        _ => return Err("a rule starts with allow or deny".to_owned()),
    };
    let who = match items.get(1) {
        Some(Term::Atom(a)) if a == "all" => Who::All,
        Some(Term::Tuple(pair)) if pair.len() == 2 => match &pair[0] {
            Term::Atom(a) if a == "user" => Who::User(string(&pair[1])?.to_owned()),
            Term::Atom(a) if a == "client" => Who::Client(string(&pair[1])?.to_owned()),
            Term::Atom(a) if a == "ipaddr" => {
                let text = string(&pair[1])?;
                let (ip, bits) = text.split_once('/').unwrap_or((text, "32"));
                let ip: Ipv4Addr = ip.parse().map_err(|_| format!("invalid IPv4 address {text:?}"))?;
                let bits: u8 = bits.parse().ok().filter(|b| *b <= 32).ok_or(format!("invalid prefix in {text:?}"))?;
                Who::IpAddr(ip, bits)
            }
            other => return Err(format!("unknown who {other:?} (all, user, client or ipaddr)")),
        },
        _ => return Err("the second element is all, {user, _}, {client, _} or {ipaddr, _}".to_owned()),
    };
    if items.len() == 2 {
        return match who {
            Who::All => Ok(Rule { permission, who, action: None, topics: Vec::new() }),
            _ => Err("the two-element form is {allow, all} or {deny, all}".to_owned()),
        };
    }
    if items.len() != 4 {
        return Err(format!("a rule has 2 or 4 elements, not {}", items.len()));
    }
    let action = match &items[2] {
        Term::Atom(a) if a == "publish" => Some(Action::Publish),
        Term::Atom(a) if a == "subscribe" => Some(Action::Subscribe),
        Term::Atom(a) if a == "pubsub" => None,
        other => return Err(format!("unknown access {other:?} (publish, subscribe or pubsub)")),
    };
    let Term::List(list) = &items[3] else {
        return Err("topics are a list".to_owned());
    };
    let topics = list
        .iter()
        .map(|t| match t {
            Term::Str(f) if topic::is_valid_filter(f) => Ok(TopicRule::Filter(f.clone())),
            Term::Str(f) => Err(format!("invalid topic filter {f:?}")),
            Term::Tuple(pair) if pair.len() == 2 && pair[0] == Term::Atom("eq".into()) => {
                Ok(TopicRule::Eq(string(&pair[1])?.to_owned()))
            }
            other => Err(format!("a topic is \"filter\" or {{eq, \"topic\"}}, not {other:?}")),
        })
        .collect::<Result<_, _>>()?;
    Ok(Rule { permission, who, action, topics })
}

/// Parses a whole file. Bad rules are reported with their line and skipped; parsing resumes
/// after the next `.`.
pub fn parse(text: &str) -> (Vec<Rule>, Vec<RuleError>) {
    let mut parser = Parser { chars: text.char_indices().peekable(), text };
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    loop {
        parser.skip_space();
        let Some(&(start, _)) = parser.chars.peek() else {
            break;
        };
        let line = parser.line_at(start);
        match parser.term().and_then(|t| parser.expect('.').map(|_| t)) {
            Ok(term) => match rule_from(term) {
                Ok(rule) => rules.push(rule),
                Err(problem) => errors.push(RuleError { line, problem }),
            },
            Err(problem) => {
                errors.push(RuleError { line, problem });
                // Resynchronise after the next '.' that ends a line.
                while let Some((_, c)) = parser.chars.next() {
                    if c == '.' && parser.chars.peek().is_none_or(|&(_, n)| n.is_whitespace()) {
                        break;
                    }
                }
            }
        }
    }
    (rules, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMQX_DEFAULT: &str = r##"
%% Allow "dashboard" to subscribe "$SYS/#" topics
{allow, {user, "dashboard"}, subscribe, ["$SYS/#"]}.
{allow, {ipaddr, "127.0.0.1"}, pubsub, ["$SYS/#", "#"]}.
{deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.
{allow, all}.
"##;

    fn first_match(rules: &[Rule], client: &Client<'_>, action: Action, topic: &str) -> Option<Permission> {
        rules.iter().find_map(|r| r.check(client, action, topic))
    }

    #[test]
    fn emqx_default_file() {
        let (rules, errors) = parse(EMQX_DEFAULT);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rules.len(), 4);
        let remote = Client { client_id: "c", username: "u", ip: Some(Ipv4Addr::new(10, 0, 0, 1)) };
        let local = Client { ip: Some(Ipv4Addr::LOCALHOST), ..remote };
        let dashboard = Client { username: "dashboard", ..remote };
        assert_eq!(first_match(&rules, &remote, Action::Subscribe, "#"), Some(Permission::Deny));
        assert_eq!(first_match(&rules, &remote, Action::Subscribe, "$SYS/x"), Some(Permission::Deny));
        assert_eq!(first_match(&rules, &remote, Action::Subscribe, "a/#"), Some(Permission::Allow));
        assert_eq!(first_match(&rules, &local, Action::Subscribe, "#"), Some(Permission::Allow));
        assert_eq!(first_match(&rules, &dashboard, Action::Subscribe, "$SYS/#"), Some(Permission::Allow));
    }

    #[test]
    fn substitution_and_cidr() {
        let (rules, errors) = parse(
            "{allow, all, pubsub, [\"clients/%c/#\"]}.\n{deny, all, pubsub, [\"clients/#\"]}.\n\
             {deny, {ipaddr, \"10.0.0.0/8\"}, publish, [\"#\"]}.\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let c1 = Client { client_id: "c1", username: "", ip: Some(Ipv4Addr::new(192, 168, 1, 1)) };
        assert_eq!(first_match(&rules, &c1, Action::Publish, "clients/c1/x"), Some(Permission::Allow));
        assert_eq!(first_match(&rules, &c1, Action::Publish, "clients/c2/x"), Some(Permission::Deny));
        let inside = Client { ip: Some(Ipv4Addr::new(10, 1, 2, 3)), ..c1 };
        assert_eq!(first_match(&rules, &inside, Action::Publish, "other"), Some(Permission::Deny));
        assert_eq!(first_match(&rules, &c1, Action::Publish, "other"), None);
    }

    #[test]
    fn bad_rules_name_their_line_and_the_rest_still_parse() {
        let (rules, errors) =
            parse("{allow, all}.\n{maybe, all}.\n{deny, {user, \"x\"}, publish, [\"a/#/b\"]}.\n{deny, all}.\n");
        assert_eq!(rules.len(), 2);
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2, 3]);
    }
}
