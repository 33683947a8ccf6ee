//! EMQX `acl.conf` rules: Erlang terms, one rule a term, ending in `.`:
//!
//! ```text
//! {allow, {user, "dashboard"}, subscribe, ["$SYS/#"]}.
//! {allow, {ipaddr, "127.0.0.1"}, pubsub, ["$SYS/#", "#"]}.
//! {deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.
//! {allow, all}.
//! ```
//!
//! Who, as EMQX 4.3 reads it: `all`, `{user, "name"}`, `{client, "id"}`, `{user, all}`,
//! `{client, all}`, `{ipaddr, "1.2.3.4"}` or `{ipaddr, "10.0.0.0/8"}` (IPv4 or IPv6),
//! `{ipaddrs, ["10.0.0.0/8", "::1"]}`, and `{'and', [Who, ...]}` / `{'or', [Who, ...]}`.
//! Access: `publish`, `subscribe`, `pubsub`. Topics: filters, or `{eq, "t"}` for an exact match.
//! `%` starts a comment. The first rule that matches decides.
//!
//! A filter level that is exactly `%c` stands for the client id and `%u` for the username, as
//! one literal level, as in EMQX: a client id of `+`, `#` or `a/b` matches no level, so it
//! cannot widen the rule, and a client without a username matches no `%u` rule. Elsewhere
//! in a level (`dev-%c`) they are plain text.

use std::net::IpAddr;

use ipnet::IpNet;
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
    /// `{user, "name"}`; `None` is `{user, all}`.
    User(Option<String>),
    /// `{client, "id"}`; `None` is `{client, all}`.
    Client(Option<String>),
    /// `{ipaddr, ...}` (one network) or `{ipaddrs, [...]}`: the client's address is in one.
    IpAddrs(Vec<IpNet>),
    /// `{'and', [...]}`: every one matches.
    And(Vec<Who>),
    /// `{'or', [...]}`: one of them matches.
    Or(Vec<Who>),
}

impl Who {
    fn matches(&self, client: &Client<'_>) -> bool {
        match self {
            Who::All | Who::User(None) | Who::Client(None) => true,
            Who::User(Some(u)) => !client.username.is_empty() && u == client.username,
            Who::Client(Some(c)) => c == client.client_id,
            Who::IpAddrs(nets) => client.ip.is_some_and(|ip| nets.iter().any(|net| net.contains(&ip))),
            Who::And(all) => all.iter().all(|who| who.matches(client)),
            Who::Or(any) => any.iter().any(|who| who.matches(client)),
        }
    }
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
    /// The rule as written (comments and layout aside), for `ctl acl list`.
    pub source: String,
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub client_id: &'a str,
    /// Empty when the client gave none.
    pub username: &'a str,
    /// IPv4 clients over an IPv6 socket (`::ffff:a.b.c.d`) as IPv4.
    pub ip: Option<IpAddr>,
}

impl Rule {
    /// `Some(permission)` if this rule applies to `client` doing `action` on `topic`.
    pub fn check(&self, client: &Client<'_>, action: Action, topic: &str) -> Option<Permission> {
        if !self.who.matches(client) || self.action.is_some_and(|a| a != action) {
            return None;
        }
        let hit = self.topics.is_empty()
            || self.topics.iter().any(|rule| match rule {
                TopicRule::Eq(t) => t == topic,
                TopicRule::Filter(f) => fed(f, client).is_some_and(|filter| topic::matches(&filter, topic)),
            });
        hit.then_some(self.permission)
    }
}

/// `filter` with its `%c` and `%u` levels replaced by the client id and the username, each as
/// one literal level; `None` (the filter matches nothing) when a value cannot be one: empty
/// (no username), a wildcard, or with a `/` (EMQX's `feed_var` puts the value in as a word of
/// its own, which no topic level equals).
fn fed(filter: &str, client: &Client<'_>) -> Option<String> {
    if !filter.split('/').any(|level| level == "%c" || level == "%u") {
        return Some(filter.to_owned());
    }
    let literal = |value: &str| (!value.is_empty() && !value.contains(['/', '+', '#'])).then_some(());
    let mut fed = String::with_capacity(filter.len() + client.client_id.len());
    for (i, level) in filter.split('/').enumerate() {
        if i > 0 {
            fed.push('/');
        }
        let value = match level {
            "%c" => client.client_id,
            "%u" => client.username,
            other => other,
        };
        if level != value {
            literal(value)?;
        }
        fed.push_str(value);
    }
    Some(fed)
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

/// Written back as Erlang writes it, for error messages.
impl std::fmt::Display for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items = |f: &mut std::fmt::Formatter<'_>, items: &[Term]| {
            items.iter().enumerate().try_for_each(|(i, t)| if i == 0 { write!(f, "{t}") } else { write!(f, ", {t}") })
        };
        match self {
            // `and` and `or` are Erlang operators: quoted as atoms.
            Term::Atom(a)
                if !matches!(a.as_str(), "and" | "or")
                    && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@') =>
            {
                f.write_str(a)
            }
            Term::Atom(a) => write!(f, "'{a}'"),
            Term::Str(s) => write!(f, "{s:?}"),
            Term::Tuple(t) => {
                f.write_str("{")?;
                items(f, t)?;
                f.write_str("}")
            }
            Term::List(l) => {
                f.write_str("[")?;
                items(f, l)?;
                f.write_str("]")
            }
        }
    }
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
                while let Some((_, c)) = self.chars.next_if(|&(_, c)| c.is_ascii_alphanumeric() || c == '_' || c == '@')
                {
                    atom.push(c);
                }
                Ok(Term::Atom(atom))
            }
            // A quoted atom: 'and', 'or'.
            Some((_, '\'')) => {
                let mut atom = String::new();
                loop {
                    match self.chars.next() {
                        Some((_, '\'')) => return Ok(Term::Atom(atom)),
                        Some((_, '\n')) | None => return Err("unterminated quoted atom".to_owned()),
                        Some((_, c)) => atom.push(c),
                    }
                }
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
        other => Err(format!("expected a string, found {other}")),
    }
}

/// Who a rule is for (see the module's doc).
fn who_from(term: &Term) -> Result<Who, String> {
    const FORMS: &str = "all, {user, _}, {client, _}, {ipaddr, _}, {ipaddrs, [...]}, {'and', [...]} or {'or', [...]}";
    let (kind, value) = match term {
        Term::Atom(a) if a == "all" => return Ok(Who::All),
        Term::Tuple(pair) if pair.len() == 2 => match &pair[0] {
            Term::Atom(kind) => (kind.as_str(), &pair[1]),
            _ => return Err(format!("who is {FORMS}, not {term}")),
        },
        _ => return Err(format!("who is {FORMS}, not {term}")),
    };
    let all = *value == Term::Atom("all".to_owned());
    Ok(match kind {
        "user" if all => Who::User(None),
        "user" => Who::User(Some(string(value)?.to_owned())),
        "client" if all => Who::Client(None),
        "client" => Who::Client(Some(string(value)?.to_owned())),
        "ipaddr" => Who::IpAddrs(vec![network(string(value)?)?]),
        "ipaddrs" => Who::IpAddrs(list(value)?.iter().map(|t| network(string(t)?)).collect::<Result<_, _>>()?),
        "and" => Who::And(list(value)?.iter().map(who_from).collect::<Result<_, _>>()?),
        "or" => Who::Or(list(value)?.iter().map(who_from).collect::<Result<_, _>>()?),
        _ => return Err(format!("who is {FORMS}, not {term}")),
    })
}

/// `"10.0.0.0/8"`, `"fd00::/8"`, or one address (`"127.0.0.1"`, `"::1"`).
fn network(text: &str) -> Result<IpNet, String> {
    match text.parse::<IpNet>() {
        Ok(net) => Ok(net),
        Err(_) => text.parse::<IpAddr>().map(IpNet::from).map_err(|_| format!("invalid address or network {text:?}")),
    }
}

fn list(term: &Term) -> Result<&[Term], String> {
    match term {
        Term::List(items) => Ok(items),
        other => Err(format!("expected a list, found {other}")),
    }
}

fn rule_from(term: Term) -> Result<Rule, String> {
    let source = format!("{term}.");
    let Term::Tuple(items) = term else {
        return Err("a rule is a tuple {Permission, Who, Access, Topics}".to_owned());
    };
    let permission = match items.first() {
        Some(Term::Atom(a)) if a == "allow" => Permission::Allow,
        Some(Term::Atom(a)) if a == "deny" => Permission::Deny,
        _ => return Err("a rule starts with allow or deny".to_owned()),
    };
    let who = match items.get(1) {
        Some(term) => who_from(term)?,
        None => return Err("a rule starts with allow or deny, then who it is for".to_owned()),
    };
    if items.len() == 2 {
        return match who {
            Who::All => Ok(Rule { permission, who, action: None, topics: Vec::new(), source }),
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
        other => return Err(format!("unknown access {other} (publish, subscribe or pubsub)")),
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
            other => Err(format!("a topic is \"filter\" or {{eq, \"topic\"}}, not {other}")),
        })
        .collect::<Result<_, _>>()?;
    Ok(Rule { permission, who, action, topics, source })
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
        let remote = Client { client_id: "c", username: "u", ip: v4(10, 0, 0, 1) };
        let local = Client { ip: v4(127, 0, 0, 1), ..remote };
        let dashboard = Client { username: "dashboard", ..remote };
        assert_eq!(first_match(&rules, &remote, Action::Subscribe, "#"), Some(Permission::Deny));
        assert_eq!(first_match(&rules, &remote, Action::Subscribe, "$SYS/x"), Some(Permission::Deny));
        assert_eq!(first_match(&rules, &remote, Action::Subscribe, "a/#"), Some(Permission::Allow));
        assert_eq!(first_match(&rules, &local, Action::Subscribe, "#"), Some(Permission::Allow));
        assert_eq!(first_match(&rules, &dashboard, Action::Subscribe, "$SYS/#"), Some(Permission::Allow));
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Option<IpAddr> {
        Some(IpAddr::from([a, b, c, d]))
    }

    #[test]
    fn substitution_and_cidr() {
        let (rules, errors) = parse(
            "{allow, all, pubsub, [\"clients/%c/#\"]}.\n{deny, all, pubsub, [\"clients/#\"]}.\n\
             {deny, {ipaddr, \"10.0.0.0/8\"}, publish, [\"#\"]}.\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let c1 = Client { client_id: "c1", username: "", ip: v4(192, 168, 1, 1) };
        assert_eq!(first_match(&rules, &c1, Action::Publish, "clients/c1/x"), Some(Permission::Allow));
        assert_eq!(first_match(&rules, &c1, Action::Publish, "clients/c2/x"), Some(Permission::Deny));
        let inside = Client { ip: v4(10, 1, 2, 3), ..c1 };
        assert_eq!(first_match(&rules, &inside, Action::Publish, "other"), Some(Permission::Deny));
        assert_eq!(first_match(&rules, &c1, Action::Publish, "other"), None);
    }

    /// `%c` and `%u` are one literal level each (EMQX's `feed_var`): a client id that is a
    /// wildcard or has a `/` matches nothing, a client without a username no `%u` rule, and
    /// the placeholders inside a level are text.
    #[test]
    fn placeholders_are_whole_literal_levels() {
        let (rules, errors) =
            parse("{allow, all, pubsub, [\"clients/%c/#\", \"users/%u/#\", \"dev-%c\"]}.\n{deny, all}.\n");
        assert!(errors.is_empty(), "{errors:?}");
        let client = |client_id, username| Client { client_id, username, ip: v4(10, 0, 0, 1) };
        let check = |c: &Client<'_>, action, topic| first_match(&rules, c, action, topic);
        for id in ["+", "#"] {
            let attacker = client(id, "");
            assert_eq!(check(&attacker, Action::Subscribe, "clients/victim/secret"), Some(Permission::Deny), "{id}");
            assert_eq!(check(&attacker, Action::Subscribe, "clients/+/secret"), Some(Permission::Deny), "{id}");
            assert_eq!(check(&attacker, Action::Publish, "clients/victim/cmd"), Some(Permission::Deny), "{id}");
        }
        assert_eq!(check(&client("a/b", ""), Action::Publish, "clients/a/b/x"), Some(Permission::Deny));
        assert_eq!(check(&client("anon", ""), Action::Publish, "users//x"), Some(Permission::Deny));
        assert_eq!(check(&client("anon", ""), Action::Publish, "users/%u/x"), Some(Permission::Deny));
        assert_eq!(check(&client("anon", ""), Action::Publish, "dev-anon"), Some(Permission::Deny));
        assert_eq!(check(&client("anon", ""), Action::Publish, "dev-%c"), Some(Permission::Allow));
        let victim = client("victim", "alice");
        assert_eq!(check(&victim, Action::Subscribe, "clients/victim/secret"), Some(Permission::Allow));
        assert_eq!(check(&victim, Action::Subscribe, "clients/victim/#"), Some(Permission::Allow));
        assert_eq!(check(&victim, Action::Subscribe, "clients/+/secret"), Some(Permission::Deny));
        assert_eq!(check(&victim, Action::Publish, "users/alice/x"), Some(Permission::Allow));
        assert_eq!(check(&victim, Action::Publish, "users/bob/x"), Some(Permission::Deny));
    }

    /// The who forms EMQX 4.3 compiles: `{user, all}`, `{client, all}`, `{ipaddrs, [...]}`,
    /// IPv6 networks, `{'and', [...]}` and `{'or', [...]}`.
    #[test]
    fn every_emqx_who_form() {
        let (rules, errors) = parse(
            "{deny, {ipaddrs, [\"10.0.0.0/8\", \"fd00::/8\"]}, subscribe, [\"secret1\"]}.\n\
             {deny, {'and', [{user, \"bob\"}, {client, \"phone\"}]}, subscribe, [\"secret2\"]}.\n\
             {deny, {'or', [{user, \"eve\"}, {ipaddr, \"::1\"}]}, subscribe, [\"secret3\"]}.\n\
             {deny, {user, all}, publish, [\"ro/#\"]}.\n\
             {allow, {client, all}, pubsub, [\"#\"]}.\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rules.len(), 5);
        let check = |client_id, username, ip: &str, action, topic| {
            let c = Client { client_id, username, ip: Some(ip.parse().unwrap()) };
            first_match(&rules, &c, action, topic)
        };
        let sub = Action::Subscribe;
        assert_eq!(check("c", "u", "10.9.9.9", sub, "secret1"), Some(Permission::Deny));
        assert_eq!(check("c", "u", "fd12::1", sub, "secret1"), Some(Permission::Deny));
        assert_eq!(check("c", "u", "192.168.0.1", sub, "secret1"), Some(Permission::Allow));
        assert_eq!(check("phone", "bob", "192.168.0.1", sub, "secret2"), Some(Permission::Deny));
        assert_eq!(check("laptop", "bob", "192.168.0.1", sub, "secret2"), Some(Permission::Allow));
        assert_eq!(check("c", "eve", "192.168.0.1", sub, "secret3"), Some(Permission::Deny));
        assert_eq!(check("c", "u", "::1", sub, "secret3"), Some(Permission::Deny));
        assert_eq!(check("c", "u", "192.168.0.1", sub, "secret3"), Some(Permission::Allow));
        assert_eq!(check("c", "", "192.168.0.1", Action::Publish, "ro/x"), Some(Permission::Deny));
        assert_eq!(
            rules[1].source,
            "{deny, {'and', [{user, \"bob\"}, {client, \"phone\"}]}, subscribe, [\"secret2\"]}."
        );
    }

    #[test]
    fn bad_rules_name_their_line_and_the_rest_still_parse() {
        let (rules, errors) =
            parse("{allow, all}.\n{maybe, all}.\n{deny, {user, \"x\"}, publish, [\"a/#/b\"]}.\n{deny, all}.\n");
        assert_eq!(rules.len(), 2);
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2, 3]);
    }
}
