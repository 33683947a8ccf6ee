//! `emqx_auth_http`: EMQX 4.3's HTTP authentication and ACL plugin. It asks an HTTP service
//! whether a client may connect (`auth_req`), whether it is a superuser (`super_req`) and
//! whether it may publish or subscribe to a topic (`acl_req`), as EMQX 4.3's
//! `emqx_auth_http` does:
//!
//! - `client.authenticate` (EMQX's `emqx_auth_http:check/3`): `auth_req` answers 200 → the
//!   client is allowed, and then `super_req` is asked: 200 (any body) → a superuser, whose
//!   publishes and subscriptions the host checks against no ACL; anything else → an ordinary
//!   client. 200 with the body `ignore` → no opinion (the next auth plugin, or the broker's
//!   `allow_anonymous`, decides). Any other status (EMQX: 400/401 bad username or password,
//!   403 not authorized, 429 banned, 503/504 and the rest server unavailable) → denied. No
//!   answer at all (refused, timed out, broken) → denied (EMQX's `server_unavailable`), or
//!   ignored with `auth_req.deny_on_error = false`.
//! - `client.check_acl` (EMQX's `emqx_acl_http:do_check_acl/5`): a username starting with
//!   `$` is not asked about (EMQX); `acl_req` answers 200 → allowed, 200 `ignore` → no
//!   opinion, any other status → denied, no answer → no opinion (EMQX logs and ignores), or
//!   denied with `acl_req.deny_on_error = true`.
//!
//! Answers are cached for a short while (see `cache`), and a failing service is logged once a
//! burst (see `health`). The requests block the hook that makes them for at most `timeout`;
//! both hooks are declared blocking, so the broker runs them off its network threads.
//!
//! Config: the `[auth_http]` table (see `settings`). Commands: `broker ctl auth_http status`
//! and `broker ctl auth_http cache clean`.
#![forbid(unsafe_code)]

mod cache;
mod client;
mod health;
mod params;
mod settings;
mod tls;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use plugin_api::{
    declare_plugin, AclAction, BoxError, Config, Event, Hook, HookMask, HookResult, Host, Plugin, PluginInfo,
    PluginKind,
};

use cache::Cache;
use client::{Answer, Client, Failure};
use health::Health;
use params::Vars;
use settings::{Kind, Method, Request, Settings};

/// What the plugin has done since it started (`broker ctl auth_http status`).
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    cache_hits: AtomicU64,
    allow: AtomicU64,
    superuser: AtomicU64,
    deny: AtomicU64,
    ignore: AtomicU64,
}

impl Counters {
    fn count(&self, result: HookResult) -> HookResult {
        let counter = match result {
            HookResult::Allow => &self.allow,
            HookResult::Superuser => &self.superuser,
            HookResult::Deny => &self.deny,
            _ => &self.ignore,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }
}

/// The plugin: its settings, its HTTP client, the answer cache and what it counted.
#[derive(Debug)]
pub struct AuthHttp {
    host: Host,
    settings: Settings,
    client: Client,
    cache: Cache<Answer>,
    health: [Health; 3],
    counters: Counters,
}

impl AuthHttp {
    fn health(&self, kind: Kind) -> &Health {
        &self.health[kind as usize]
    }

    /// Asks the service (or the cache) `request` with `vars` filled in.
    fn ask(&self, request: &Request, vars: &Vars<'_>) -> Result<Answer, Failure> {
        let params = request.params.render(vars);
        let key = cache::key(client::key_parts(request, &params));
        if let Some(answer) = self.cache.get(&key, Instant::now()) {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(answer);
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let health = self.health(request.kind);
        match self.client.exchange(request, &params) {
            Ok(answer) => {
                if let Some(failures) = health.answered() {
                    self.host.info(&format!(
                        "{} {} answers again, after {failures} failed request(s)",
                        request.kind.name(),
                        request.url
                    ));
                }
                self.cache.put(key, answer, Instant::now());
                Ok(answer)
            }
            Err(failure) => {
                if health.failed() {
                    self.host.warn(&format!(
                        "{} {} failed: {failure}; {} until it answers again (further failures are \
                         counted, not logged: broker ctl auth_http status)",
                        request.kind.name(),
                        request.url,
                        on_error(request)
                    ));
                }
                Err(failure)
            }
        }
    }

    /// `client.authenticate`, as EMQX 4.3's `emqx_auth_http:check/3`.
    fn authenticate(&self, event: &Event<'_>) -> HookResult {
        let Some(auth_req) = &self.settings.auth_req else {
            return HookResult::Continue;
        };
        let vars = client_vars(event);
        let result = match self.ask(auth_req, &vars) {
            Ok(Answer::Ignore) => HookResult::Continue,
            Ok(Answer::Ok) if self.is_superuser(&vars) => HookResult::Superuser,
            Ok(Answer::Ok) => HookResult::Allow,
            Ok(Answer::Status(status)) => {
                self.host.debug(&format!("auth_req denied client {:?}: HTTP {status}", event.client_id));
                HookResult::Deny
            }
            Err(_) if auth_req.deny_on_error => HookResult::Deny,
            Err(_) => HookResult::Continue,
        };
        self.counters.count(result)
    }

    /// EMQX 4.3's `is_superuser/2`: `super_req` answering 200 (whatever the body) makes a
    /// superuser; another status or no answer does not.
    fn is_superuser(&self, vars: &Vars<'_>) -> bool {
        let Some(super_req) = &self.settings.super_req else {
            return false;
        };
        matches!(self.ask(super_req, vars), Ok(Answer::Ok | Answer::Ignore))
    }

    /// `client.check_acl`, as EMQX 4.3's `emqx_acl_http:do_check_acl/5`.
    fn check_acl(&self, event: &Event<'_>) -> HookResult {
        let (Some(acl_req), Some(action)) = (&self.settings.acl_req, event.acl_action) else {
            return HookResult::Continue;
        };
        if event.username.starts_with('$') {
            return HookResult::Continue;
        }
        let vars = Vars {
            access: Some(match action {
                AclAction::Subscribe => 1,
                AclAction::Publish => 2,
            }),
            topic: Some(event.topic),
            password: None,
            ..client_vars(event)
        };
        let result = match self.ask(acl_req, &vars) {
            Ok(Answer::Ok) => HookResult::Allow,
            Ok(Answer::Ignore) => HookResult::Continue,
            Ok(Answer::Status(_)) => HookResult::Deny,
            Err(_) if acl_req.deny_on_error => HookResult::Deny,
            Err(_) => HookResult::Continue,
        };
        self.counters.count(result)
    }

    fn status(&self) -> String {
        let describe = |kind: Kind, request: &Option<Request>| match request {
            None => format!("{}: off", kind.name()),
            Some(r) => {
                let method = match r.method {
                    Method::Post => "POST",
                    Method::Get => "GET",
                };
                let health = self.health(kind);
                let state = if health.is_failing() { "failing" } else { "ok" };
                format!(
                    "{}: {method} {} ({}) {state}, {} failed request(s)",
                    kind.name(),
                    r.url,
                    on_error(r),
                    health.failures()
                )
            }
        };
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            describe(Kind::Auth, &self.settings.auth_req),
            describe(Kind::Super, &self.settings.super_req),
            describe(Kind::Acl, &self.settings.acl_req),
            format!(
                "answers: allow={} superuser={} deny={} ignore={}",
                n(&c.allow),
                n(&c.superuser),
                n(&c.deny),
                n(&c.ignore)
            ),
            format!("requests: {}, cache hits: {}", n(&c.requests), n(&c.cache_hits)),
            self.cache_line(),
        ]
        .join("\n")
    }

    fn cache_line(&self) -> String {
        if self.settings.cache_enabled() {
            format!(
                "cache: {} of {} answers, ttl {}",
                self.cache.len(),
                self.settings.cache_max_size,
                humantime::format_duration(self.settings.cache_ttl)
            )
        } else {
            "cache: off".to_owned()
        }
    }
}

/// What a request that gets no answer counts as.
fn on_error(request: &Request) -> &'static str {
    match (request.kind, request.deny_on_error) {
        (Kind::Super, _) => "not a superuser on error",
        (_, true) => "deny on error",
        (_, false) => "ignore on error",
    }
}

/// The client's values for the placeholders.
fn client_vars<'a>(event: &Event<'a>) -> Vars<'a> {
    Vars {
        username: Some(event.username).filter(|u| !u.is_empty()),
        client_id: event.client_id,
        ip: params::peer_ip(event.peer),
        password: Some(event.password).filter(|p| !p.is_empty()),
        sockport: event.sockport,
        access: None,
        topic: None,
    }
}

impl Plugin for AuthHttp {
    /// Both ask the HTTP service and wait up to `timeout` for it: the broker runs them off its
    /// network threads, and only the client asked about waits.
    const BLOCKING_HOOKS: HookMask = HookMask::of(&[Hook::ClientAuthenticate, Hook::ClientCheckAcl]);

    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings = Settings::from_json(config.json())?;
        let plugin = AuthHttp {
            host,
            client: Client::new(&settings, host.data_dir())?,
            cache: Cache::new(settings.cache_max_size, settings.cache_ttl),
            settings,
            health: Default::default(),
            counters: Counters::default(),
        };
        let s = &plugin.settings;
        host.info(&format!(
            "{}; timeout {}, connect_timeout {}; {}",
            [Kind::Auth, Kind::Super, Kind::Acl]
                .iter()
                .zip([&s.auth_req, &s.super_req, &s.acl_req])
                .map(|(kind, r)| match r {
                    Some(r) => format!("{} {}", kind.name(), r.url),
                    None => format!("{} off", kind.name()),
                })
                .collect::<Vec<_>>()
                .join(", "),
            humantime::format_duration(s.timeout),
            humantime::format_duration(s.connect_timeout),
            plugin.cache_line()
        ));
        Ok(plugin)
    }

    fn on_event(&self, event: &Event<'_>) -> HookResult {
        match event.hook {
            Hook::ClientAuthenticate => self.authenticate(event),
            Hook::ClientCheckAcl => self.check_acl(event),
            _ => HookResult::Continue,
        }
    }

    fn ctl(&self, args: &[String]) -> Result<String, String> {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["status"] => Ok(self.status()),
            ["cache", "clean"] => Ok(format!("Cleaned {} cached answers", self.cache.clear())),
            _ => Err("usage: broker ctl auth_http status | cache clean".to_owned()),
        }
    }
}

declare_plugin!(
    AuthHttp,
    PluginInfo {
        name: "emqx_auth_http",
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X Authentication/ACL with HTTP API",
        kind: PluginKind::Plugin,
        hooks: HookMask::of(&[Hook::ClientAuthenticate, Hook::ClientCheckAcl]),
        priority: 0,
        ctl_command: Some("auth_http"),
    }
);
