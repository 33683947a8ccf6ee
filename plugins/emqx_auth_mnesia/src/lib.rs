//! `emqx_auth_mnesia`: EMQX 4.3's built-in username and clientid authentication. Logins are
//! kept with salted password hashes (`password_hash`: `sha256`, EMQX's default, `pbkdf2` or
//! `bcrypt`) in the broker's store: the plugin's bucket `logins`, one key per login
//! (`username/<name>`, `clientid/<name>`; the value is its hash, superuser flag and creation
//! time as JSON). `broker ctl users ...` and `broker ctl clientid ...` (and the management
//! API) write a change to the store before they answer, for the next CONNECT.
//!
//! The logins CONNECTs are checked against are a cache in memory, loaded from the store at
//! start and kept up to date by a watch of the bucket on the plugin's own thread, so changes
//! committed elsewhere (the coming cluster backend: other nodes writing the same bucket) reach
//! it too. At the first start a `data/emqx_auth_mnesia.json` left by an older version is
//! imported and renamed `emqx_auth_mnesia.json.imported`; a damaged one is left in place with
//! a warning naming it, and the plugin starts with what the store holds.
//!
//! `client.authenticate`: a CONNECT whose client id or user name has a login is allowed
//! (as a superuser when the login says so) with the right password and denied with a wrong
//! one; one with neither is no opinion (EMQX's `ignore`), left to the next plugin and to the
//! broker's `allow_anonymous`.
//!
//! ```toml
//! [auth_mnesia]
//! password_hash = "sha256"     # sha256 | pbkdf2 | bcrypt, for passwords set from now on
//! pbkdf2_iterations = 4096
//! bcrypt_cost = 10
//! ```
#![forbid(unsafe_code)]

mod commands;
mod credentials;
mod hash;
mod store;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use plugin_api::store::{Bucket, StoreBatch, StoreWatch};
use plugin_api::{
    declare_plugin, BoxError, Config, Event, Hook, HookMask, HookResult, Host, HostError, Plugin, PluginInfo,
    PluginKind,
};
use serde::Deserialize;

use credentials::{Answer, Credentials};
use hash::{Algorithm, Hasher};
use store::Logins;

/// How long the watch thread waits for a change before it looks whether it should stop.
const WATCH_POLL: Duration = Duration::from_millis(200);

/// `[auth_mnesia]` (EMQX's `auth.mnesia.*`).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// The hash of passwords set from now on (EMQX's `auth.mnesia.password_hash`).
    password_hash: Algorithm,
    /// PBKDF2 rounds for new `pbkdf2` hashes (EMQX 5's default, 4096).
    pbkdf2_iterations: u32,
    /// bcrypt cost for new `bcrypt` hashes (EMQX 5's `salt_rounds`, 10), 4 to 31.
    bcrypt_cost: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { password_hash: Algorithm::Sha256, pbkdf2_iterations: 4096, bcrypt_cost: 10 }
    }
}

impl Settings {
    fn hasher(&self) -> Result<Hasher, String> {
        if self.pbkdf2_iterations == 0 {
            return Err("auth_mnesia.pbkdf2_iterations = 0 (must be at least 1)".to_owned());
        }
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(format!("auth_mnesia.bcrypt_cost = {} (must be 4 to 31)", self.bcrypt_cost));
        }
        Ok(Hasher {
            algorithm: self.password_hash,
            pbkdf2_iterations: self.pbkdf2_iterations,
            bcrypt_cost: self.bcrypt_cost,
        })
    }
}

/// The plugin: the logins, and the thread that applies the store's changes to them.
pub struct AuthMnesia {
    host: Host,
    credentials: Arc<Credentials>,
    stopping: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

/// Imports the old file's logins into `bucket`; says how many.
fn import(bucket: &Bucket, bytes: &[u8]) -> Result<String, String> {
    let logins = Logins::parse_file(bytes).map_err(|e| format!("not a valid credentials file: {e}"))?;
    let mut batch = StoreBatch::new();
    for (key, value) in logins.entries().map_err(|e| e.to_string())? {
        batch.put(&key, &value);
    }
    bucket.commit(&batch).map_err(|e| format!("the store refused them: {e}"))?;
    Ok(format!(
        "{} username and {} clientid logins",
        logins.of(store::Kind::Username).len(),
        logins.of(store::Kind::Clientid).len()
    ))
}

/// The logins `bucket` holds; an entry that is not a login is skipped with a warning.
fn load(host: &Host, bucket: &Bucket) -> Result<Logins, HostError> {
    let mut logins = Logins::default();
    for (key, value) in bucket.scan_prefix(b"")? {
        if let Err(e) = logins.apply(&key, Some(&value)) {
            host.warn(&format!("skipped in the store: {e}"));
        }
    }
    Ok(logins)
}

/// Applies the changes `watch` sees to `credentials` until `stopping`.
fn follow(host: Host, watch: StoreWatch, credentials: Arc<Credentials>, stopping: Arc<AtomicBool>) {
    while !stopping.load(Ordering::SeqCst) {
        match watch.next_timeout(WATCH_POLL) {
            Ok(Some(change)) => {
                if let Err(e) = credentials.apply(&change.key, change.value.as_deref()) {
                    host.warn(&format!("change in the store not applied: {e}"));
                }
            }
            Ok(None) => {}
            Err(HostError::Unavailable(_)) => return,
            Err(e) => {
                host.warn(&format!("the watch of the logins failed: {e}; changes made elsewhere are not seen"));
                return;
            }
        }
    }
}

impl Plugin for AuthMnesia {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        let hasher = settings.hasher()?;
        let bucket = host.store(store::BUCKET);
        plugin_api::store::import_file(&host, &Logins::path(host.data_dir()), |bytes| import(&bucket, bytes));
        // Watching before reading: nothing committed between the two is missed.
        let watch = bucket.watch(b"")?;
        let logins = load(&host, &bucket)?;
        let credentials = Arc::new(Credentials::new(logins, hasher, Box::new(bucket)));
        host.info(&format!(
            "{} username and {} clientid logins; new passwords hashed with {}",
            credentials.list(store::Kind::Username).len(),
            credentials.list(store::Kind::Clientid).len(),
            settings.password_hash.name()
        ));
        let stopping = Arc::new(AtomicBool::new(false));
        let watcher = std::thread::Builder::new().name("emqx_auth_mnesia".into()).spawn({
            let (credentials, stopping) = (credentials.clone(), stopping.clone());
            move || follow(host, watch, credentials, stopping)
        })?;
        Ok(AuthMnesia { host, credentials, stopping, watcher: Some(watcher) })
    }

    fn on_event(&self, event: &Event<'_>) -> HookResult {
        if event.hook != Hook::ClientAuthenticate {
            return HookResult::Continue;
        }
        match self.credentials.check(event.client_id, event.username, event.password) {
            Answer::Unknown => HookResult::Continue,
            Answer::Allow { is_superuser: true } => HookResult::Superuser,
            Answer::Allow { is_superuser: false } => HookResult::Allow,
            Answer::WrongPassword => HookResult::Deny,
        }
    }

    fn ctl_typed(&self, args: &[String]) -> Result<String, HostError> {
        commands::run(&self.credentials, args)
    }

    fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        self.host.info("stopped");
    }
}

declare_plugin!(
    AuthMnesia,
    PluginInfo {
        name: "emqx_auth_mnesia",
        version: env!("CARGO_PKG_VERSION"),
        description: "EMQ X Authentication with Mnesia",
        kind: PluginKind::Plugin,
        hooks: HookMask::of(&[Hook::ClientAuthenticate]),
        priority: 0,
        ctl_command: Some("users clientid"),
    }
);
