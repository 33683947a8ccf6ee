//! Who may call the API: HTTP basic auth against `management.username` / `password`, with
//! failed logins rate-limited per client IP ([`crate::login_limit`]) and slow hash checks
//! remembered for a while ([`crate::verified`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use base64::Engine;
use plugin_api::Host;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::login_limit::{LoginLimiter, Policy};
use crate::password::{sha256, Password};
use crate::verified::{self, VerifiedCache};

/// Slow hash checks run at once, at most: guesses sent in parallel cannot outrun the
/// lock-out by much, nor take every core.
const HASH_CHECKS_AT_ONCE: usize = 2;

/// What a request's credentials got it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Right credentials.
    Allowed,
    /// Wrong or missing credentials.
    Denied,
    /// The client's IP is locked out for this long (its credentials were not looked at).
    LockedOut(Duration),
}

/// The API's one user, the failure counts and the cache of good logins.
#[derive(Debug)]
pub(crate) struct Auth {
    host: Host,
    username: [u8; 32],
    password: Password,
    limiter: LoginLimiter,
    policy: Policy,
    verified: VerifiedCache,
    hash_checks: Semaphore,
}

impl Auth {
    pub(crate) fn new(host: Host, username: &str, password: Password, policy: Policy) -> Arc<Auth> {
        Arc::new(Auth {
            host,
            username: sha256(username.as_bytes()),
            password,
            limiter: LoginLimiter::new(policy),
            policy,
            verified: VerifiedCache::default(),
            hash_checks: Semaphore::new(HASH_CHECKS_AT_ONCE),
        })
    }

    /// Checks a request from `ip`. A request with no credentials is denied but not counted as
    /// a failure (a browser asks first without them).
    pub(crate) async fn check(self: &Arc<Self>, ip: IpAddr, headers: &HeaderMap) -> Verdict {
        if let Err(retry_after) = self.limiter.check(ip, Instant::now()) {
            return Verdict::LockedOut(retry_after);
        }
        let Some((username, password)) = basic_credentials(headers) else {
            return Verdict::Denied;
        };
        if self.verify(username, password).await {
            return Verdict::Allowed;
        }
        if let Some(lock) = self.limiter.failure(ip, Instant::now()) {
            self.host.warn(&format!(
                "management API: {} failed logins from {ip} within {}; refusing it (HTTP 429) for {}",
                self.policy.max_attempts,
                humantime::format_duration(self.policy.interval),
                humantime::format_duration(lock),
            ));
        }
        Verdict::Denied
    }

    /// Whether the pair is the API's user; a hash is checked off the async threads, and a
    /// success remembered (see [`crate::verified`] for why that is safe).
    async fn verify(self: &Arc<Self>, username: String, password: String) -> bool {
        let user_ok: bool = sha256(username.as_bytes()).ct_eq(&self.username).into();
        if !self.password.is_hashed() {
            return self.password.verify(&password) & user_ok;
        }
        let key = verified::key(&username, &password);
        if self.verified.contains(&key, Instant::now()) {
            return true;
        }
        let Ok(_slot) = self.hash_checks.acquire().await else {
            return false;
        };
        let auth = Arc::clone(self);
        let good = tokio::task::spawn_blocking(move || auth.password.verify(&password)).await.unwrap_or(false);
        let good = good & user_ok;
        if good {
            self.verified.insert(key, Instant::now());
        }
        good
    }
}

/// The `(username, password)` of an `Authorization: Basic ...` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let pair = String::from_utf8(raw).ok()?;
    let (username, password) = pair.split_once(':')?;
    Some((username.to_owned(), password.to_owned()))
}
