//! What can go wrong in the store, told apart by variant (not by text).

use std::path::PathBuf;

/// An error from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's file is damaged: the broker must not start on it.
    #[error(
        "the store {path} is corrupt ({detail}); move it aside to start with an empty store, or restore it from a backup"
    )]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What the backend found.
        detail: String,
    },
    /// The store was written by a newer broker.
    #[error(
        "the store {path} has format version {found}, newer than this broker's {supported}: run the newer broker, or move the store aside"
    )]
    NewerVersion {
        /// The store's file.
        path: PathBuf,
        /// The format version in the file.
        found: u32,
        /// The newest format this build reads.
        supported: u32,
    },
    /// Another process holds the store open.
    #[error("the store {path} is in use by another process (is another broker running on this data directory?)")]
    InUse {
        /// The store's file.
        path: PathBuf,
    },
    /// The disk (or the store's quota) is full: nothing of the batch was written.
    #[error("the store is full: {0}")]
    Full(String),
    /// An I/O error other than a full disk.
    #[error("store i/o error: {0}")]
    Io(#[source] std::io::Error),
    /// Any other backend failure.
    #[error("store error: {0}")]
    Backend(String),
    /// A bucket name that is empty, too long, starts with `_` or has characters outside
    /// `[A-Za-z0-9_./-]`.
    #[error("invalid bucket name {0:?}: 1 to 128 characters (255 for the broker's own) of A-Z a-z 0-9 _ . / -, not starting with _")]
    InvalidBucket(String),
    /// The store was closed (the broker is stopping).
    #[error("the store is closed")]
    Closed,
    /// The store cannot decide now, but may later: a replicated backend that cannot reach the
    /// others (a shared bucket's compare-and-set while NATS is away).
    #[error("the store cannot answer now: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether this is [`StoreError::Full`]: the caller may go on without the store (e.g.
    /// answer Quota exceeded) rather than treat it as a fault.
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Full(_))
    }
}

impl StoreError {
    /// The same error again, for each caller of a group that failed together.
    pub(crate) fn copy(&self) -> StoreError {
        match self {
            StoreError::Corrupt { path, detail } => StoreError::Corrupt { path: path.clone(), detail: detail.clone() },
            StoreError::NewerVersion { path, found, supported } => {
                StoreError::NewerVersion { path: path.clone(), found: *found, supported: *supported }
            }
            StoreError::InUse { path } => StoreError::InUse { path: path.clone() },
            StoreError::Full(why) => StoreError::Full(why.clone()),
            StoreError::Io(e) => StoreError::Io(std::io::Error::new(e.kind(), e.to_string())),
            StoreError::Backend(why) => StoreError::Backend(why.clone()),
            StoreError::InvalidBucket(name) => StoreError::InvalidBucket(name.clone()),
            StoreError::Closed => StoreError::Closed,
            StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        // ENOSPC, a quota, or past the process's file size limit (RLIMIT_FSIZE: EFBIG).
        let full = matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded | std::io::ErrorKind::FileTooLarge
        );
        if full || e.raw_os_error() == Some(libc_enospc()) {
            StoreError::Full(e.to_string())
        } else {
            StoreError::Io(e)
        }
    }
}

/// `ENOSPC` on the platforms we build for.
const fn libc_enospc() -> i32 {
    28
}
