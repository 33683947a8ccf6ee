//! The logins in memory (a cache of the store's), their writes, and the check of a CONNECT
//! against them.
//!
//! A check reads under a shared lock and hashes outside it; a change is hashed first, then
//! written to the store ([`Persist`]) and swapped in under the lock, one change at a time.
//! What the store does not hold, memory does not either: a change whose write fails is not
//! applied. Changes committed elsewhere (another node of a cluster writing the same bucket)
//! come in through [`Credentials::apply`].

use std::sync::{Mutex, RwLock};

use plugin_api::HostError;

use crate::hash::{Hasher, PasswordHash};
use crate::store::{EntryError, Kind, Logins, Record};

/// Where a change of one login is written before it is applied: the store's bucket.
pub trait Persist: Send + Sync {
    /// Writes the login `name` of `kind` (`None`: deletes it); returns once it is durable.
    fn write(&self, kind: Kind, name: &str, record: Option<&Record>) -> Result<(), HostError>;
}

impl Persist for plugin_api::store::Bucket {
    fn write(&self, kind: Kind, name: &str, record: Option<&Record>) -> Result<(), HostError> {
        let key = crate::store::key(kind, name);
        match record {
            Some(record) => {
                let value = serde_json::to_vec(record).map_err(|e| HostError::Failed(e.to_string()))?;
                self.put(&key, &value)
            }
            None => self.delete(&key),
        }
    }
}

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
pub struct Credentials {
    persist: Box<dyn Persist>,
    hasher: Hasher,
    store: RwLock<Logins>,
    /// One change at a time, from its read to its write.
    writing: Mutex<()>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("hasher", &self.hasher).finish_non_exhaustive()
    }
}

/// What a login's listing shows (never its password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The user name or client id.
    pub name: String,
    /// Whether it skips ACL checks.
    pub is_superuser: bool,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Credentials {
    /// The logins `logins` (read from the store), whose changes go to `persist`.
    pub fn new(logins: Logins, hasher: Hasher, persist: Box<dyn Persist>) -> Credentials {
        Credentials { persist, hasher, store: RwLock::new(logins), writing: Mutex::new(()) }
    }

    /// Applies a change committed to the store (seen by its watch): a put of `value` under
    /// `key`, or its delete. A change this plugin made itself comes back this way too, and
    /// changes nothing more.
    pub fn apply(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), EntryError> {
        self.store.write().unwrap_or_else(|e| e.into_inner()).apply(key, value)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Logins> {
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

    /// Applies `change` to a copy of the login `name` of `kind`, writes it to the store, then
    /// makes it current.
    fn change<T>(
        &self,
        kind: Kind,
        name: &str,
        change: impl FnOnce(&mut Logins) -> Result<T, HostError>,
    ) -> Result<T, HostError> {
        let _one_at_a_time = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Logins::default();
        if let Some(record) = self.read().of(kind).get(name) {
            next.of_mut(kind).insert(name.to_owned(), record.clone());
        }
        let result = change(&mut next)?;
        let record = next.of_mut(kind).remove(name);
        self.persist.write(kind, name, record.as_ref())?;
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
        match record {
            Some(record) => store.of_mut(kind).insert(name.to_owned(), record),
            None => store.of_mut(kind).remove(name),
        };
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
        self.change(kind, name, |store| match store.of_mut(kind).entry(name.to_owned()) {
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
        self.change(kind, name, |store| {
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
        self.change(kind, name, |store| store.of_mut(kind).remove(name).map(drop).ok_or_else(|| not_found(kind, name)))
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
pub mod tests {
    use super::*;
    use crate::hash::Algorithm;
    use std::sync::Arc;

    /// A store in memory, in the bucket's layout (key, JSON value), that can be told to fail.
    #[derive(Default)]
    pub struct MemoryPersist {
        pub entries: Mutex<std::collections::BTreeMap<Vec<u8>, Vec<u8>>>,
        pub fail: std::sync::atomic::AtomicBool,
    }

    impl Persist for Arc<MemoryPersist> {
        fn write(&self, kind: Kind, name: &str, record: Option<&Record>) -> Result<(), HostError> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(HostError::Failed("the store is full".into()));
            }
            let mut entries = self.entries.lock().unwrap();
            match record {
                Some(record) => entries.insert(crate::store::key(kind, name), serde_json::to_vec(record).unwrap()),
                None => entries.remove(&crate::store::key(kind, name)),
            };
            Ok(())
        }
    }

    impl MemoryPersist {
        /// The logins its entries hold, as a scan at start reads them.
        pub fn logins(&self) -> Logins {
            let mut logins = Logins::default();
            for (key, value) in self.entries.lock().unwrap().iter() {
                logins.apply(key, Some(value)).unwrap();
            }
            logins
        }
    }

    pub fn hasher(algorithm: Algorithm) -> Hasher {
        Hasher { algorithm, pbkdf2_iterations: 1000, bcrypt_cost: 4 }
    }

    fn credentials(persist: &Arc<MemoryPersist>, algorithm: Algorithm) -> Credentials {
        Credentials::new(persist.logins(), hasher(algorithm), Box::new(persist.clone()))
    }

    #[test]
    fn unknown_logins_are_no_opinion_and_wrong_passwords_are_wrong() {
        let persist = Arc::new(MemoryPersist::default());
        let c = credentials(&persist, Algorithm::Sha256);
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
        let persist = Arc::new(MemoryPersist::default());
        credentials(&persist, Algorithm::Bcrypt).add(Kind::Username, "old", "pw1", false).unwrap();
        let c = credentials(&persist, Algorithm::Pbkdf2);
        assert_eq!(c.check("x", "old", b"pw1"), Answer::Allow { is_superuser: false }, "bcrypt record still works");
        c.update(Kind::Username, "old", "pw2", Some(true)).unwrap();
        assert_eq!(c.check("x", "old", b"pw2"), Answer::Allow { is_superuser: true });
        assert!(matches!(c.add(Kind::Username, "old", "x", false), Err(HostError::Conflict(_))));
        assert!(matches!(c.update(Kind::Username, "none", "x", None), Err(HostError::NotFound(_))));
        assert!(matches!(c.add(Kind::Username, "new", "", false), Err(HostError::InvalidArgument(_))));
        c.delete(Kind::Username, "old").unwrap();
        assert!(matches!(c.delete(Kind::Username, "old"), Err(HostError::NotFound(_))));
        assert_eq!(credentials(&persist, Algorithm::Sha256).check("x", "old", b"pw2"), Answer::Unknown);
    }

    #[test]
    fn a_change_the_store_refuses_is_not_applied() {
        let persist = Arc::new(MemoryPersist::default());
        let c = credentials(&persist, Algorithm::Sha256);
        c.add(Kind::Username, "alice", "pw", false).unwrap();
        persist.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(c.add(Kind::Username, "bob", "pw", false), Err(HostError::Failed(_))));
        assert!(matches!(c.delete(Kind::Username, "alice"), Err(HostError::Failed(_))));
        assert_eq!(c.check("x", "bob", b"pw"), Answer::Unknown);
        assert_eq!(c.check("x", "alice", b"pw"), Answer::Allow { is_superuser: false });
    }

    /// The watch path: a change committed elsewhere (another node, or a store edited while the
    /// plugin ran) reaches the logins a CONNECT is checked against.
    #[test]
    fn changes_committed_elsewhere_reach_logins() {
        let elsewhere = Arc::new(MemoryPersist::default());
        credentials(&elsewhere, Algorithm::Sha256).add(Kind::Username, "carol", "pw", true).unwrap();
        let carol = elsewhere.entries.lock().unwrap().get(&b"username/carol"[..]).cloned().unwrap();

        let c = credentials(&Arc::new(MemoryPersist::default()), Algorithm::Sha256);
        assert_eq!(c.check("x", "carol", b"pw"), Answer::Unknown);
        c.apply(b"username/carol", Some(&carol)).unwrap();
        assert_eq!(c.check("x", "carol", b"pw"), Answer::Allow { is_superuser: true });
        assert_eq!(c.list(Kind::Username).len(), 1);
        c.apply(b"username/carol", None).unwrap();
        assert_eq!(c.check("x", "carol", b"pw"), Answer::Unknown);
        assert!(c.apply(b"nonsense", None).is_err());
    }
}
