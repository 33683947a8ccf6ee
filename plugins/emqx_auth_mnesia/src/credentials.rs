//! The logins in memory, their file, and the check of a CONNECT against them.
//!
//! A check reads under a shared lock and hashes outside it; a change is hashed first, then
//! written to the file and swapped in under the lock, one change at a time. What the file
//! does not hold, memory does not either: a change whose write fails is not applied.

use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use plugin_api::HostError;

use crate::hash::{Hasher, PasswordHash};
use crate::store::{Kind, Record, Store, StoreError};

/// What the logins say about a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// No login for its client id or user name: no opinion (EMQX's `ignore`).
    Unknown,
    /// A login matched and the password is right.
    Allow { is_superuser: bool },
    /// There is a login for it, and the password is wrong.
    WrongPassword,
}

/// The logins.
#[derive(Debug)]
pub struct Credentials {
    path: PathBuf,
    hasher: Hasher,
    store: RwLock<Store>,
    /// One change at a time, from its read to its write.
    writing: Mutex<()>,
}

/// What a login's listing shows (never its password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub name: String,
    pub is_superuser: bool,
    pub created_at: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Credentials {
    /// Reads the logins from `path`.
    pub fn open(path: PathBuf, hasher: Hasher) -> Result<Credentials, StoreError> {
        let store = Store::load(&path)?;
        Ok(Credentials { path, hasher, store: RwLock::new(store), writing: Mutex::new(()) })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks a CONNECT: its client id's login and its user name's login (either may let it
    /// in, as in EMQX), against `password`.
    pub fn check(&self, clientid: &str, username: &str, password: &[u8]) -> Answer {
        let candidates: Vec<(PasswordHash, bool)> = {
            let store = self.read();
            let by_clientid = store.clientid.get(clientid);
            let by_username = (!username.is_empty()).then(|| store.username.get(username)).flatten();
            by_clientid.into_iter().chain(by_username).map(|r| (r.password.clone(), r.is_superuser)).collect()
        };
        if candidates.is_empty() {
            return Answer::Unknown;
        }
        for (hash, is_superuser) in candidates {
            if hash.verify(password) {
                return Answer::Allow { is_superuser };
            }
        }
        Answer::WrongPassword
    }

    /// Applies `change` to a copy of the logins, writes it, then makes it current.
    fn change<T>(&self, change: impl FnOnce(&mut Store) -> Result<T, HostError>) -> Result<T, HostError> {
        let _one_at_a_time = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = self.read().clone();
        let result = change(&mut next)?;
        next.save(&self.path).map_err(|e| HostError::Failed(e.to_string()))?;
        *self.store.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(result)
    }

    fn hash(&self, password: &str) -> Result<PasswordHash, HostError> {
        if password.is_empty() {
            return Err(HostError::InvalidArgument("the password is empty".to_owned()));
        }
        self.hasher.hash(password.as_bytes()).map_err(|e| HostError::Failed(e.to_string()))
    }

    /// Adds a login; a `Conflict` if it exists.
    pub fn add(&self, kind: Kind, name: &str, password: &str, is_superuser: bool) -> Result<(), HostError> {
        if name.is_empty() {
            return Err(HostError::InvalidArgument(format!("the {} is empty", kind.field())));
        }
        if self.read().of(kind).contains_key(name) {
            return Err(HostError::Conflict(format!("{} {name:?} already exists", kind.field())));
        }
        let record = Record { password: self.hash(password)?, is_superuser, created_at: now_ms() };
        self.change(|store| match store.of_mut(kind).entry(name.to_owned()) {
            std::collections::btree_map::Entry::Occupied(_) => {
                Err(HostError::Conflict(format!("{} {name:?} already exists", kind.field())))
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(record);
                Ok(())
            }
        })
    }

    /// Sets a login's password (hashed with the current `password_hash`), and its superuser
    /// flag when given; `NotFound` if there is no such login.
    pub fn update(&self, kind: Kind, name: &str, password: &str, is_superuser: Option<bool>) -> Result<(), HostError> {
        let password = self.hash(password)?;
        self.change(|store| {
            let record = store.of_mut(kind).get_mut(name).ok_or_else(|| not_found(kind, name))?;
            record.password = password;
            if let Some(is_superuser) = is_superuser {
                record.is_superuser = is_superuser;
            }
            Ok(())
        })
    }

    /// Removes a login; `NotFound` if there is no such login.
    pub fn delete(&self, kind: Kind, name: &str) -> Result<(), HostError> {
        self.change(|store| store.of_mut(kind).remove(name).map(drop).ok_or_else(|| not_found(kind, name)))
    }

    /// One login, if it exists.
    pub fn lookup(&self, kind: Kind, name: &str) -> Result<Login, HostError> {
        let store = self.read();
        let record = store.of(kind).get(name).ok_or_else(|| not_found(kind, name))?;
        Ok(Login { name: name.to_owned(), is_superuser: record.is_superuser, created_at: record.created_at })
    }

    /// Every login of a kind, newest first.
    pub fn list(&self, kind: Kind) -> Vec<Login> {
        let store = self.read();
        store
            .newest_first(kind)
            .into_iter()
            .map(|(name, r)| Login { name: name.clone(), is_superuser: r.is_superuser, created_at: r.created_at })
            .collect()
    }
}

fn not_found(kind: Kind, name: &str) -> HostError {
    HostError::NotFound(format!("no {} {name:?}", kind.field()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Algorithm;

    fn credentials(dir: &tempfile::TempDir, algorithm: Algorithm) -> Credentials {
        let hasher = Hasher { algorithm, pbkdf2_iterations: 1000, bcrypt_cost: 4 };
        Credentials::open(Store::path(dir.path()), hasher).unwrap()
    }

    #[test]
    fn unknown_logins_are_no_opinion_and_wrong_passwords_are_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let c = credentials(&dir, Algorithm::Sha256);
        assert_eq!(c.check("c1", "alice", b"pw"), Answer::Unknown);
        c.add(Kind::Username, "alice", "pw", false).unwrap();
        assert_eq!(c.check("c1", "alice", b"pw"), Answer::Allow { is_superuser: false });
        assert_eq!(c.check("c1", "alice", b"nope"), Answer::WrongPassword);
        assert_eq!(c.check("c1", "bob", b"pw"), Answer::Unknown);
        c.add(Kind::Clientid, "sensor-1", "k", true).unwrap();
        assert_eq!(c.check("sensor-1", "", b"k"), Answer::Allow { is_superuser: true });
    }

    #[test]
    fn changes_survive_a_reopen_and_a_changed_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        credentials(&dir, Algorithm::Bcrypt).add(Kind::Username, "old", "pw1", false).unwrap();
        let c = credentials(&dir, Algorithm::Pbkdf2);
        assert_eq!(c.check("x", "old", b"pw1"), Answer::Allow { is_superuser: false }, "bcrypt record still works");
        c.update(Kind::Username, "old", "pw2", Some(true)).unwrap();
        assert_eq!(c.check("x", "old", b"pw2"), Answer::Allow { is_superuser: true });
        assert!(matches!(c.add(Kind::Username, "old", "x", false), Err(HostError::Conflict(_))));
        assert!(matches!(c.update(Kind::Username, "none", "x", None), Err(HostError::NotFound(_))));
        assert!(matches!(c.add(Kind::Username, "new", "", false), Err(HostError::InvalidArgument(_))));
        c.delete(Kind::Username, "old").unwrap();
        assert!(matches!(c.delete(Kind::Username, "old"), Err(HostError::NotFound(_))));
        assert_eq!(credentials(&dir, Algorithm::Sha256).check("x", "old", b"pw2"), Answer::Unknown);
    }
}
