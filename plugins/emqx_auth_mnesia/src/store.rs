//! The credentials, by kind (`username` or `clientid`, EMQX's `{username, U}` and
//! `{clientid, C}` logins), kept in `data/emqx_auth_mnesia.json`. Every change rewrites the
//! file atomically (temporary file, fsync, rename, fsync of the directory), so a crash leaves
//! the old file or the new one, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hash::PasswordHash;

/// The file's name in the data directory.
pub const FILE: &str = "emqx_auth_mnesia.json";

/// Which kind of login a record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Matched against the CONNECT's user name (`broker ctl users`).
    Username,
    /// Matched against the CONNECT's client id (`broker ctl clientid`).
    Clientid,
}

impl Kind {
    /// `username` or `clientid`, as EMQX's JSON names the field.
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
    pub password: PasswordHash,
    #[serde(default)]
    pub is_superuser: bool,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
}

/// Every login, as the file holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    #[serde(default)]
    pub username: BTreeMap<String, Record>,
    #[serde(default)]
    pub clientid: BTreeMap<String, Record>,
}

/// The file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid credentials file: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl Store {
    /// The file's path in `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    /// Reads the file; no file is no logins.
    pub fn load(path: &Path) -> Result<Store, StoreError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Store::default()),
            Err(source) => return Err(StoreError::Read { path: path.to_owned(), source }),
        };
        serde_json::from_str(&text).map_err(|source| StoreError::Parse { path: path.to_owned(), source })
    }

    /// Writes the file atomically: a temporary file beside it, fsync, rename, fsync of the
    /// directory. Readable by the broker's user only (mode 0600), like the ctl socket.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let failed = |source| StoreError::Write { path: path.to_owned(), source };
        let tmp = path.with_extension("json.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(failed)?;
        let text = serde_json::to_vec_pretty(self).map_err(|e| failed(e.into()))?;
        file.write_all(&text).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        std::fs::rename(&tmp, path).map_err(failed)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(failed)?;
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

    #[test]
    fn a_saved_store_loads_back_and_holds_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let path = Store::path(dir.path());
        assert_eq!(Store::load(&path).unwrap(), Store::default(), "no file, no logins");
        let hasher = Hasher { algorithm: Algorithm::Sha256, pbkdf2_iterations: 1000, bcrypt_cost: 4 };
        let mut store = Store::default();
        let record = Record { password: hasher.hash(b"hunter2").unwrap(), is_superuser: true, created_at: 1 };
        store.of_mut(Kind::Username).insert("alice".to_owned(), record);
        store.save(&path).unwrap();
        assert_eq!(Store::load(&path).unwrap(), store);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!path.with_extension("json.tmp").exists(), "the temporary file was renamed");
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = Store::path(dir.path());
        std::fs::write(&path, "{not json").unwrap();
        let e = Store::load(&path).unwrap_err().to_string();
        assert!(e.contains("emqx_auth_mnesia.json") && e.contains("not a valid credentials file"), "{e}");
    }
}
