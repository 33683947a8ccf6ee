//! How the dashboard tells the management API which browser a request came from.
//!
//! The dashboard passes every `/api/` request on to the management API from its own address,
//! so the API's lock-out after failed logins (by client IP) would count every dashboard user
//! as one: one user's wrong passwords would lock every other out. The dashboard therefore
//! adds the browser's address in [`CLIENT_HEADER`] and proves that it is the dashboard with
//! [`TOKEN_HEADER`]: a random token the management API puts in the store's shared bucket
//! [`BUCKET`] the first time it starts (kept across restarts, the same for every node of a
//! cluster). Plugins can read the store; HTTP clients cannot. A request that names a client
//! without the token is counted by its own address.

use plugin_api::{Host, HostError};

/// The shared bucket the token is kept in.
pub const BUCKET: &str = "shared/management";

/// The token's key in [`BUCKET`].
const KEY: &[u8] = b"dashboard_token";

/// The header with the browser's IP address, as the dashboard saw it.
pub const CLIENT_HEADER: &str = "x-dashboard-client";

/// The header with the token.
pub const TOKEN_HEADER: &str = "x-dashboard-token";

/// The token, made now if there is none yet (the management API calls this at start). Of
/// nodes starting at once, one token wins and every node uses it.
pub fn ensure_token(host: Host) -> Result<String, HostError> {
    if let Some(token) = token(host)? {
        return Ok(token);
    }
    let new = uuid::Uuid::new_v4().simple().to_string();
    // Lost a race: another node's token is there, and is the one.
    host.store(BUCKET).swap(KEY, None, Some(new.as_bytes()))?;
    token(host)?.ok_or_else(|| HostError::Failed("the dashboard token was not kept".to_owned()))
}

/// The token, if the management API has made one. It blocks on the store: call it off the
/// async threads.
pub fn token(host: Host) -> Result<Option<String>, HostError> {
    Ok(host.store(BUCKET).get(KEY)?.and_then(|value| String::from_utf8(value).ok()))
}

/// Whether `given` is the token `expected`, compared in a time that does not depend on where
/// they differ.
pub fn is_token(given: &[u8], expected: &str) -> bool {
    let expected = expected.as_bytes();
    given.len() == expected.len() && given.iter().zip(expected).fold(0, |diff, (a, b)| diff | (a ^ b)) == 0
}
