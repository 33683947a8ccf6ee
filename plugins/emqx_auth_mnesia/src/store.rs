//! The logins, by kind (`username` or `clientid`, EMQX's `{username, U}` and `{clientid, C}`
//! logins), and how the broker's store keeps them: one key per login in the plugin's bucket
//! [`BUCKET`], `username/<name>` or `clientid/<name>` ([`key`]), whose value is the login's
//! [`Record`] as JSON (its salted hash, never a password). The file older versions kept
//! (`data/emqx_auth_mnesia.json`, [`FILE`]) is read only to import it ([`Logins::parse_file`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hash::PasswordHash;

/// The old file's name in the data directory.
pub const FILE: &str = "emqx_auth_mnesia.json";
/// The plugin's bucket in the store.
pub const BUCKET: &str = "logins";

/// Which kind of login a record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Matched against the CONNECT's user name (`broker ctl users`).
    Username,
    /// Matched against the CONNECT's client id (`broker ctl clientid`).
    Clientid,
}

impl Kind {
    /// `username` or `clientid`, as EMQX's JSON names the field (and the store's key prefix).
    pub fn field(self) -> &'static str {
        match self {
            Kind::Username => "username",
            Kind::Clientid => "clientid",
        }
    }
}

/// One login's credentials. The password is only ever kept as its salted hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The salted hash, with its algorithm.
    pub password: PasswordHash,
    /// Whether the login skips ACL checks.
    #[serde(default)]
    pub is_superuser: bool,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
}

/// Every login (the old file's shape too).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logins {
    /// By user name.
    #[serde(default)]
    pub username: BTreeMap<String, Record>,
    /// By client id.
    #[serde(default)]
    pub clientid: BTreeMap<String, Record>,
}

/// A key or value of the bucket that is not a login.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The key is not `username/<name>` or `clientid/<name>`.
    #[error("key {0:?} is not username/<name> or clientid/<name>")]
    Key(String),
    /// The value is not a login's JSON.
    #[error("the value of {key:?} is not a login: {source}")]
    Value {
        /// The key.
        key: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// The store's key of a login.
pub fn key(kind: Kind, name: &str) -> Vec<u8> {
    format!("{}/{name}", kind.field()).into_bytes()
}

/// The kind and name a store key is for.
pub fn parse_key(key: &[u8]) -> Result<(Kind, String), EntryError> {
    let text = String::from_utf8_lossy(key);
    let (kind, name) = match text.split_once('/') {
        Some(("username", name)) => (Kind::Username, name),
        Some(("clientid", name)) => (Kind::Clientid, name),
        _ => return Err(EntryError::Key(text.into_owned())),
    };
    if name.is_empty() {
        return Err(EntryError::Key(text.into_owned()));
    }
    Ok((kind, name.to_owned()))
}

impl Logins {
    /// The old file's path in `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    /// Reads the old file's bytes.
    pub fn parse_file(bytes: &[u8]) -> Result<Logins, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Every login with its store key and value.
    pub fn entries(&self) -> Result<Vec<plugin_api::store::Entry>, serde_json::Error> {
        let mut entries = Vec::new();
        for kind in [Kind::Username, Kind::Clientid] {
            for (name, record) in self.of(kind) {
                entries.push((key(kind, name), serde_json::to_vec(record)?));
            }
        }
        Ok(entries)
    }

    /// Applies one change of the store (a put, or a delete when `value` is `None`): how the
    /// logins follow changes committed elsewhere, and how they are built from a scan.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), EntryError> {
        let (kind, name) = parse_key(key)?;
        match value {
            Some(value) => {
                let record = serde_json::from_slice(value)
                    .map_err(|source| EntryError::Value { key: String::from_utf8_lossy(key).into_owned(), source })?;
                self.of_mut(kind).insert(name, record);
            }
            None => {
                self.of_mut(kind).remove(&name);
            }
        }
        Ok(())
    }

    /// The records of one kind.
    pub fn of(&self, kind: Kind) -> &BTreeMap<String, Record> {
        match kind {
            Kind::Username => &self.username,
            Kind::Clientid => &self.clientid,
        }
    }

    /// The records of one kind, to change.
    pub fn of_mut(&mut self, kind: Kind) -> &mut BTreeMap<String, Record> {
        match kind {
            Kind::Username => &mut self.username,
            Kind::Clientid => &mut self.clientid,
        }
    }

    /// The names of one kind, newest first (as EMQX lists them), then by name.
    pub fn newest_first(&self, kind: Kind) -> Vec<(&String, &Record)> {
        let mut list: Vec<_> = self.of(kind).iter().collect();
        list.sort_by(|a, b| b.1.created_at.cmp(&a.1.created_at).then_with(|| a.0.cmp(b.0)));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{Algorithm, Hasher};

    fn record(password: &[u8], is_superuser: bool) -> Record {
        let hasher = Hasher { algorithm: Algorithm::Sha256, pbkdf2_iterations: 1000, bcrypt_cost: 4 };
        Record { password: hasher.hash(password).unwrap(), is_superuser, created_at: 1 }
    }

    #[test]
    fn changes_from_the_store_are_applied_in_order() {
        let mut logins = Logins::default();
        let alice = serde_json::to_vec(&record(b"hunter2", true)).unwrap();
        assert!(!String::from_utf8_lossy(&alice).contains("hunter2"), "no plaintext in the value");
        logins.apply(b"username/alice", Some(&alice)).unwrap();
        logins.apply(b"clientid/a/b", Some(&alice)).unwrap();
        assert!(logins.username["alice"].is_superuser);
        assert!(logins.clientid.contains_key("a/b"), "a name may hold a slash");
        logins.apply(b"username/alice", None).unwrap();
        logins.apply(b"username/nobody", None).unwrap();
        assert!(logins.username.is_empty());
        assert!(matches!(logins.apply(b"group/x", Some(&alice)), Err(EntryError::Key(_))));
        assert!(matches!(logins.apply(b"username/", None), Err(EntryError::Key(_))));
        assert!(matches!(logins.apply(b"username/bob", Some(b"{")), Err(EntryError::Value { .. })));
        assert!(!logins.username.contains_key("bob"), "a bad value changes nothing");
    }

    #[test]
    fn entries_rebuild_the_same_logins_and_old_files_read() {
        let mut logins = Logins::default();
        logins.of_mut(Kind::Username).insert("alice".into(), record(b"pw", false));
        logins.of_mut(Kind::Clientid).insert("sensor-1".into(), record(b"k", true));
        let mut rebuilt = Logins::default();
        for (key, value) in logins.entries().unwrap() {
            rebuilt.apply(&key, Some(&value)).unwrap();
        }
        assert_eq!(rebuilt, logins);
        let file = serde_json::to_vec_pretty(&logins).unwrap();
        assert_eq!(Logins::parse_file(&file).unwrap(), logins);
        assert!(Logins::parse_file(b"{not json").is_err());
    }
}
