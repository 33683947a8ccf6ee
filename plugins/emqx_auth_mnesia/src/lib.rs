//! `emqx_auth_mnesia`: EMQX 4.3's built-in username and clientid authentication. Logins are
//! kept in `data/emqx_auth_mnesia.json` with salted password hashes (`password_hash`:
//! `sha256`, EMQX's default, `pbkdf2` or `bcrypt`); `broker ctl users ...` and
//! `broker ctl clientid ...` change them, for the next CONNECT.
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

use plugin_api::{
    declare_plugin, BoxError, Config, Event, Hook, HookMask, HookResult, Host, HostError, Plugin, PluginInfo,
    PluginKind,
};
use serde::Deserialize;

use credentials::{Answer, Credentials};
use hash::{Algorithm, Hasher};
use store::Store;

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

pub struct AuthMnesia {
    host: Host,
    credentials: Credentials,
}

impl Plugin for AuthMnesia {
    fn init(host: Host, config: Config) -> Result<Self, BoxError> {
        let settings: Settings = config.parse()?;
        let hasher = settings.hasher()?;
        let path = Store::path(host.data_dir());
        let credentials = Credentials::open(path, hasher)?;
        host.info(&format!(
            "{} username and {} clientid logins; new passwords hashed with {}",
            credentials.list(store::Kind::Username).len(),
            credentials.list(store::Kind::Clientid).len(),
            settings.password_hash.name()
        ));
        Ok(AuthMnesia { host, credentials })
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

    fn stop(self) {
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
