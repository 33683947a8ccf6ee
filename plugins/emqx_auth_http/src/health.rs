//! Whether a request's service answers, so a failure burst is logged once, not once per
//! request: the first failure after an answer is logged (with what it counts as), the ones
//! after it are only counted, and the first answer after them is logged with their number.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Failure and answer counts of one request kind.
#[derive(Debug, Default)]
pub(crate) struct Health {
    failing: AtomicBool,
    in_burst: AtomicU64,
    failures: AtomicU64,
}

impl Health {
    /// Counts a failure; `true` if it starts a burst (log it).
    pub(crate) fn failed(&self) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.in_burst.fetch_add(1, Ordering::Relaxed);
        !self.failing.swap(true, Ordering::AcqRel)
    }

    /// Notes an answer; the number of failures in the burst it ends, if it ends one (log it).
    pub(crate) fn answered(&self) -> Option<u64> {
        if !self.failing.load(Ordering::Acquire) || !self.failing.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(self.in_burst.swap(0, Ordering::AcqRel))
    }

    /// Whether the last request failed.
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Failures since the plugin started.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_reported_once_at_each_end() {
        let health = Health::default();
        assert_eq!(health.answered(), None, "answers while healthy say nothing");
        assert!(health.failed(), "the first failure starts a burst");
        assert!(!health.failed() && !health.failed(), "the rest of the burst is quiet");
        assert!(health.is_failing());
        assert_eq!(health.answered(), Some(3), "the first answer ends it");
        assert_eq!(health.answered(), None);
        assert!(health.failed(), "a new burst is reported again");
        assert_eq!(health.failures(), 4);
    }
}
