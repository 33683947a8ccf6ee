//! glibc's allocator, tuned for many small long-lived connections and made to give memory back
//! when load falls.
//!
//! Three settings, all made before the broker starts a thread:
//! - one heap (`broker.malloc_arena_max`): each heap keeps the high-water mark of what was
//!   allocated in it, and the broker's tasks move between worker threads;
//! - no fastbins: they keep the small chunks each handshake frees unmerged between the
//!   long-lived ones (0.35 KiB of free heap resident per idle client);
//! - a trimmer (`broker.malloc_trim_interval`): glibc returns free memory to the system only
//!   from the top of its heap, so one long-lived allocation placed high (a table that grew, a
//!   buffer) keeps everything freed below it resident. When the bytes in use have fallen well
//!   below their peak since the last trim (clients left), `malloc_trim` hands the free pages
//!   back wherever they are.

use std::time::Duration;

use crate::config::BrokerSettings;

/// The least fall in bytes in use, from their peak since the last trim, that is worth a trim.
const LEAST_FALL: usize = 256 * 1024;

/// Limits glibc's heaps to `broker.malloc_arena_max`, unless the operator set
/// `MALLOC_ARENA_MAX`; and turns glibc's fastbins off, unless the operator tunes malloc with
/// `GLIBC_TUNABLES`. Called before the broker starts its threads.
///
/// Fastbins keep freed small chunks whole, without merging them with their free neighbours.
/// Every connection frees small short-lived allocations (its handshake's) between the long-
/// lived ones it keeps, so those chunks pile up as holes too small to reuse: a fresh broker
/// with 10,000 idle clients had 0.5 KiB of free heap resident per client beside the 1.6 KiB
/// in use (2.1 KiB a client; 1.7 without fastbins, `bench/src/bin/idle_memory.rs`). The
/// per-thread cache in front of them (tcache) still serves the hot path's small allocations.
pub(crate) fn tune(settings: &BrokerSettings) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // SAFETY: mallopt with a valid parameter, called before the broker starts its threads.
        unsafe {
            libc::mallopt(libc::M_MXFAST, 0);
        }
    }
    let arenas = settings.malloc_arena_max;
    if arenas == 0 || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt with a valid parameter, called before the broker starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas.min(i32::MAX as u32) as i32);
    }
}

/// Starts the trimmer thread: every `every`, it reads how many bytes the heaps have in use
/// and trims them once that has fallen by a sixteenth of its peak (and at least 256 KiB)
/// since the last trim. Reading costs a walk of the free lists; a trim, one `madvise` per free
/// run of pages. Neither runs on a network thread. Does nothing off glibc.
pub(crate) fn start_trimmer(every: Duration) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    std::thread::Builder::new().name("malloc-trim".to_owned()).spawn(move || {
        let mut fall = Fall::default();
        loop {
            std::thread::sleep(every);
            let before = in_use();
            if fall.worth_a_trim(before) {
                // SAFETY: malloc_trim takes a pad size and touches only the allocator's state.
                let released = unsafe { libc::malloc_trim(0) } == 1;
                let after = in_use();
                tracing::debug!(peak = fall.peak, in_use = after, released, "heap trimmed");
                fall.trimmed(after);
            }
        }
    })?;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = every;
    Ok(())
}

/// Bytes the allocator's heaps hold in use (glibc's `mallinfo2().uordblks`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn in_use() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's state and returns a plain struct.
    unsafe { libc::mallinfo2() }.uordblks
}

/// The bytes in use since the last trim: whether they have fallen far enough from their peak.
#[derive(Debug, Default)]
struct Fall {
    peak: usize,
}

impl Fall {
    /// Notes `in_use`; true once it is a sixteenth (and at least `LEAST_FALL`) below the peak.
    fn worth_a_trim(&mut self, in_use: usize) -> bool {
        self.peak = self.peak.max(in_use);
        self.peak - in_use >= LEAST_FALL.max(self.peak / 16)
    }

    /// After a trim: the peak starts again from `in_use`.
    fn trimmed(&mut self, in_use: usize) {
        self.peak = in_use;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn a_trim_follows_a_fall_from_the_peak_and_not_a_steady_load() {
        let mut fall = Fall::default();
        assert!(!fall.worth_a_trim(4 * MIB), "the first reading is the peak");
        assert!(!fall.worth_a_trim(8 * MIB), "growing");
        assert!(!fall.worth_a_trim(8 * MIB - 256 * 1024), "a sixteenth of 8 MiB is 512 KiB");
        assert!(fall.worth_a_trim(8 * MIB - 512 * 1024));
        fall.trimmed(7 * MIB);
        assert!(!fall.worth_a_trim(7 * MIB), "steady after a trim: no second trim");
        assert!(!fall.worth_a_trim(7 * MIB - 128 * 1024), "below the least fall");
        assert!(fall.worth_a_trim(7 * MIB - 448 * 1024));
    }

    #[test]
    fn a_small_heap_needs_the_least_fall() {
        let mut fall = Fall::default();
        fall.worth_a_trim(MIB);
        assert!(!fall.worth_a_trim(MIB - 255 * 1024));
        assert!(fall.worth_a_trim(MIB - 256 * 1024));
    }
}
