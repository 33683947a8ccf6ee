//! One HookProvider server: its connections, its state (loaded, down, disabled), the calls
//! made to it and the task that loads it again after a failure.
//!
//! States, as EMQX's manager has them:
//!
//! - **Up**: OnProviderLoaded answered; the hooks (and topic filters) it asked for are
//!   called.
//! - **Down**: not loaded yet, or a call found it unreachable or slow (no answer within
//!   `request_timeout`). While down, no call is made: a hook that decides gets
//!   `failed_action` at once, a notification is not sent. [`Server::supervise`] tries
//!   OnProviderLoaded again every `auto_reconnect` (never with `false`: then only
//!   `ctl exhook enable`). The hooks it asked for last are kept, to know which hooks
//!   `failed_action` applies to; one never loaded counts as asking for every hook that
//!   decides.
//! - **Disabled**: `enable = false`, or `ctl exhook disable`: as if not configured.
//!
//! A call that gets a gRPC error from a server that is up (it answered, with an error) fails
//! alone: `failed_action` for that call, and the server stays up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use plugin_api::Host;
use tokio::sync::{Mutex, Notify, Semaphore};

use crate::transport::{Call, Connection, Endpoint};

use crate::point::{HookSpec, Point};
use crate::proto::{self, Answer, CallError, Rpc};
use crate::request::Context;
use crate::settings::{FailedAction, ServerSettings};

/// Notifications in flight to one server at once; more wait in the queue.
pub(crate) const IN_FLIGHT: usize = 256;

/// The longest OnProviderUnloaded may take (EMQX's `SERVER_FORCE_SHUTDOWN_TIMEOUT`).
const UNLOAD_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a server is (see the module's documentation).
#[derive(Debug, Clone)]
pub(crate) enum State {
    Up(Arc<HookSpec>),
    Down {
        /// The hooks it asked for when it was last up; `None` if it never was.
        known: Option<Arc<HookSpec>>,
        /// Why, for `ctl exhook status` and the logs.
        why: String,
        /// When to try OnProviderLoaded again; `None`: not by itself.
        retry_at: Option<Instant>,
    },
    Disabled,
}

/// One configured server.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) settings: ServerSettings,
    host: Host,
    context: Arc<Context>,
    /// `pool_size` HTTP/2 connections; a client's calls go over the same one, in order.
    connections: Vec<Arc<Connection>>,
    /// The URI tonic's clients make requests from.
    origin: http::Uri,
    state: ArcSwap<State>,
    /// Wakes [`Server::supervise`]: the server went down, or was enabled or disabled.
    wake: Notify,
    /// Held while loading or unloading, so those never overlap.
    transition: Mutex<()>,
    /// Bounds the notifications in flight to it.
    pub(crate) in_flight: Arc<Semaphore>,
    /// Calls made, per [`Point`] (EMQX's `exhook.<name>.<hook>` counters).
    calls: [AtomicU64; Point::ALL.len()],
    /// Calls that got no usable answer.
    failures: AtomicU64,
}

/// A server's TLS files that cannot be used, or a URL tonic refuses.
#[derive(Debug, thiserror::Error)]
#[error("exhook server {name}: {why}")]
pub(crate) struct ServerError {
    name: String,
    why: String,
}

impl Server {
    /// The server of `settings`, its connections made lazily (the first call connects). Must
    /// run inside the plugin's runtime (the connections start tasks on it).
    pub(crate) fn new(settings: ServerSettings, host: Host, context: Arc<Context>) -> Result<Server, ServerError> {
        let error = |why: String| ServerError { name: settings.name.clone(), why };
        let tls = if settings.url.starts_with("https://") {
            Some(tls_config(&settings, host.data_dir()).map_err(error)?)
        } else {
            None
        };
        let sni = settings.ssl.server_name_indication.as_deref().filter(|n| !n.is_empty());
        let keep_alive_timeout = settings.request_timeout.max(Duration::from_secs(5));
        let endpoint =
            Endpoint::new(&settings.url, tls, sni, settings.request_timeout, keep_alive_timeout).map_err(error)?;
        let origin = endpoint.origin();
        let endpoint = Arc::new(endpoint);
        let connections = (0..settings.pool_size).map(|_| Arc::new(Connection::new(endpoint.clone()))).collect();
        let state = if settings.enable {
            State::Down { known: None, why: "not loaded yet".to_owned(), retry_at: Some(Instant::now()) }
        } else {
            State::Disabled
        };
        Ok(Server {
            settings,
            host,
            context,
            connections,
            origin,
            state: ArcSwap::from_pointee(state),
            wake: Notify::new(),
            transition: Mutex::new(()),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            failures: AtomicU64::new(0),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.settings.name
    }

    /// Logs a warning about this server.
    pub(crate) fn warn(&self, what: &str) {
        self.host.warn(&format!("exhook server {}: {what}", self.name()));
    }

    pub(crate) fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// Whether a call for `point` (about a message on `topic`) is to be made now.
    pub(crate) fn wants(&self, point: Point, topic: Option<&str>) -> bool {
        matches!(&**self.state.load(), State::Up(spec) if spec.wants(point, topic))
    }

    /// Whether `point` (on `topic`) gets `failed_action = deny` from this server now without
    /// a call: it is down, and it asked for the point when last up (or was never up).
    pub(crate) fn denies_while_down(&self, point: Point, topic: Option<&str>) -> bool {
        if self.settings.failed_action != FailedAction::Deny {
            return false;
        }
        match &**self.state.load() {
            State::Down { known: Some(spec), .. } => spec.wants(point, topic),
            State::Down { known: None, .. } => point.decides(),
            _ => false,
        }
    }

    /// The calls made per point, and the failed ones.
    pub(crate) fn counts(&self) -> (Vec<(Point, u64)>, u64) {
        let calls = Point::ALL.iter().map(|&p| (p, self.calls[p as usize].load(Ordering::Relaxed))).collect();
        (calls, self.failures.load(Ordering::Relaxed))
    }

    /// The connection for calls about `key` (a client id): always the same one.
    fn channel(&self, key: &str) -> proto::Channel {
        let hash = key.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let connection = &self.connections[(hash % self.connections.len() as u64) as usize];
        proto::Channel { call: Call(connection.clone()), origin: self.origin.clone() }
    }

    /// Calls `rpc` for `point` if the server is up, within `request_timeout`. A call that
    /// finds the server unreachable or slow takes it down (and wakes the reloading task).
    pub(crate) async fn call(&self, point: Point, key: &str, rpc: Rpc) -> Result<Answer, CallError> {
        self.calls[point as usize].fetch_add(1, Ordering::Relaxed);
        let timeout = self.settings.request_timeout;
        // Boxed: the call's state (one arm per rpc and version) is large, and the futures
        // that wait for it are moved (spawned) whole.
        let call = Box::pin(proto::call(self.channel(key), self.settings.proto, rpc, timeout));
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(timeout)),
        };
        if let Err(error) = &result {
            self.failures.fetch_add(1, Ordering::Relaxed);
            if error.is_down() {
                self.went_down(format!("{} {error}", point.name(self.settings.proto)));
            } else {
                self.host.warn(&format!(
                    "exhook server {}: {} {error}; {} for this call",
                    self.name(),
                    point.name(self.settings.proto),
                    self.settings.failed_action.name()
                ));
            }
        }
        result
    }

    /// Up → down, after a failed call: logged once, reloaded after `auto_reconnect`.
    fn went_down(&self, why: String) {
        let retry_at = self.settings.auto_reconnect.map(|d| Instant::now() + d);
        let previous = self.state.rcu(|state| match &**state {
            State::Up(spec) => Arc::new(State::Down { known: Some(spec.clone()), why: why.clone(), retry_at }),
            _ => state.clone(),
        });
        if matches!(&*previous, State::Up(_)) {
            let again = match self.settings.auto_reconnect {
                Some(d) => format!("trying again every {}", humantime::format_duration(d)),
                None => "auto_reconnect = false: `broker ctl exhook enable` loads it again".to_owned(),
            };
            self.host.warn(&format!(
                "exhook server {} ({}) is down: {why}; failed_action = {} applies while it is down; {again}",
                self.name(),
                self.settings.url,
                self.settings.failed_action.name()
            ));
            self.wake.notify_one();
        }
    }

    /// OnProviderLoaded, unless the server is up or disabled (or `force`: disabled too).
    /// `Ok` once up.
    async fn load(&self, force: bool) -> Result<(), String> {
        let _transition = self.transition.lock().await;
        let (known, last_why) = match &**self.state.load() {
            State::Up(_) => return Err("already_started".to_owned()),
            State::Disabled if !force => return Err("disabled".to_owned()),
            State::Disabled => (None, String::new()),
            State::Down { known, why, .. } => (known.clone(), why.clone()),
        };
        let stats = self.host.stats();
        let broker = proto::Broker {
            version: self.host.broker_version().to_owned(),
            sysdescr: plugin_api::emqx::SYSDESCR.to_owned(),
            uptime_ms: stats.uptime_ms,
            meta: self.context.meta.clone(),
        };
        let timeout = self.settings.request_timeout;
        let loaded = proto::load(self.channel(""), self.settings.proto, broker, timeout);
        let result = match tokio::time::timeout(timeout, loaded).await {
            Ok(Ok(hooks)) => Ok(hooks),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(CallError::Timeout(timeout).to_string()),
        };
        match result {
            Ok(hooks) => {
                let (spec, unknown) = HookSpec::resolve(hooks, self.settings.proto);
                if !unknown.is_empty() {
                    self.host.warn(&format!(
                        "exhook server {} asked for hooks {} does not have: {} (not called)",
                        self.name(),
                        self.settings.proto.name(),
                        unknown.join(", ")
                    ));
                }
                let names: Vec<&str> = spec.points().map(|p| p.name(self.settings.proto)).collect();
                self.host.info(&format!(
                    "exhook server {} ({}, {}) loaded; hooks: {}",
                    self.name(),
                    self.settings.url,
                    self.settings.proto.name(),
                    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
                ));
                // The pool's connections are opened now, not by the first calls over them:
                // calls that wait for a connection being opened can go out in any order.
                let mut opening = tokio::task::JoinSet::new();
                for connection in &self.connections {
                    let connection = connection.clone();
                    opening.spawn(async move { connection.open_now().await });
                }
                let _ = tokio::time::timeout(timeout, opening.join_all()).await;
                self.state.store(Arc::new(State::Up(Arc::new(spec))));
                Ok(())
            }
            Err(why) => {
                let retry_at = self.settings.auto_reconnect.map(|d| Instant::now() + d);
                self.state.store(Arc::new(State::Down { known, why: why.clone(), retry_at }));
                // Once per way of failing, not once per attempt.
                if force || why != last_why {
                    self.host.warn(&format!(
                        "exhook server {} ({}) could not be loaded: {why}; failed_action = {}{}",
                        self.name(),
                        self.settings.url,
                        self.settings.failed_action.name(),
                        match self.settings.auto_reconnect {
                            Some(d) => format!("; trying again every {}", humantime::format_duration(d)),
                            None => String::new(),
                        }
                    ));
                }
                Err(why)
            }
        }
    }

    /// `ctl exhook enable`: loads the server now (EMQX: `already_started` if it is up).
    pub(crate) async fn enable(&self) -> Result<(), String> {
        let result = self.load(true).await;
        self.wake.notify_one();
        result
    }

    /// `ctl exhook disable`, or the plugin's stop: OnProviderUnloaded if it is up, then
    /// disabled (EMQX: `not_running` if it already is).
    pub(crate) async fn disable(&self) -> Result<(), String> {
        let _transition = self.transition.lock().await;
        let previous = self.state.swap(Arc::new(State::Disabled));
        self.wake.notify_one();
        match &*previous {
            State::Disabled => Err("not_running".to_owned()),
            State::Up(_) => {
                let rpc =
                    Rpc::ProviderUnloaded(proto::v2::ProviderUnloadedRequest { meta: Some(self.context.meta.clone()) });
                let timeout = self.settings.request_timeout.min(UNLOAD_TIMEOUT);
                let unloaded = proto::call(self.channel(""), self.settings.proto, rpc, timeout);
                if let Ok(Err(e)) | Err(e) =
                    tokio::time::timeout(timeout, unloaded).await.map_err(|_| CallError::Timeout(timeout))
                {
                    self.host.warn(&format!("exhook server {}: OnProviderUnloaded {e}", self.name()));
                }
                self.host.info(&format!("exhook server {} unloaded", self.name()));
                Ok(())
            }
            State::Down { .. } => {
                self.host.info(&format!("exhook server {} disabled", self.name()));
                Ok(())
            }
        }
    }

    /// The task that loads the server when it is due: at start (`first` is told when that
    /// first attempt is over), then every `auto_reconnect` while it is down. Runs until the
    /// runtime stops.
    pub(crate) async fn supervise(self: Arc<Self>, first: tokio::sync::oneshot::Sender<()>) {
        let mut first = Some(first);
        loop {
            let due = match &**self.state.load() {
                State::Down { retry_at: Some(at), .. } => Some(*at),
                _ => None,
            };
            match due {
                Some(at) if at <= Instant::now() => {
                    let _ = self.load(false).await;
                }
                Some(at) => {
                    if let Some(first) = first.take() {
                        let _ = first.send(());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => {
                    if let Some(first) = first.take() {
                        let _ = first.send(());
                    }
                    self.wake.notified().await;
                }
            }
        }
    }
}

/// TLS for an `https://` server from its `ssl` files (relative to `data_dir`); with
/// `ssl.enable = false` the files are ignored.
fn tls_config(
    settings: &ServerSettings,
    data_dir: &std::path::Path,
) -> Result<tokio_rustls::rustls::ClientConfig, String> {
    let ssl = &settings.ssl;
    if ssl.enable == Some(false) {
        return crate::transport::tls_config(None, None);
    }
    let read = |key: &str, path: &Option<std::path::PathBuf>| -> Result<Option<Vec<u8>>, String> {
        match path.as_ref().filter(|p| !p.as_os_str().is_empty()) {
            None => Ok(None),
            Some(p) => {
                let file = data_dir.join(p);
                std::fs::read(&file).map(Some).map_err(|e| format!("ssl.{key}: cannot read {}: {e}", file.display()))
            }
        }
    };
    let cacert = read("cacertfile", &ssl.cacertfile)?;
    let identity = match (read("certfile", &ssl.certfile)?, read("keyfile", &ssl.keyfile)?) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((cert, key)),
        _ => return Err("ssl.certfile and ssl.keyfile go together: set both or neither".to_owned()),
    };
    crate::transport::tls_config(cacert, identity)
}
