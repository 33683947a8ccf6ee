//! The sending thread's scheduling priority. Web hook delivery is background work: MQTT
//! traffic comes first. The sending thread (and its runtime's helper threads) lower their own
//! priority as `sender_priority` says:
//!
//! - `low` (the default): nice 19, the lowest priority of the normal policy (the thread still
//!   gets a small share of a busy core, about 1.5 % against one thread at nice 0, and keeps a
//!   core it got while others sleep);
//! - `idle`: Linux's `SCHED_IDLE`, the thread runs only when a core would otherwise have
//!   nothing to do, and gives way at once to any other thread that wakes up (on a machine
//!   kept busy by other work it gets no CPU at all: why it is not the default);
//! - `normal`: as the broker's other threads.
//!
//! So when the broker's network threads want every core (a burst), they get it, and the
//! events the sender cannot keep up with wait in the queue and, past `queue_size`, are
//! dropped and counted. When the CPU has room (a steady rate), the policy changes nothing:
//! the thread runs as soon as it has work, and every event is sent. The cost: on a machine
//! whose cores are all busy with other work for long, `idle` (and less so `low`) leaves the
//! sender almost no CPU, so events are dropped rather than sent late. And a lock the thread
//! holds when it is preempted stays held until it runs again: its calls into the broker that
//! take one are rare (the metrics report every 0.2 s, a log line at the ends of a burst or of
//! a run of failures), and it shares no lock with the hooks (their queue is lock-free).
//!
//! Only the calling thread changes: on Linux, `sched_setscheduler(0, ...)` and
//! `setpriority(PRIO_PROCESS, gettid(), ...)` apply to one thread, not to the process. Moving
//! oneself to a lower priority needs no privilege. Elsewhere this does nothing.

use serde::Deserialize;

/// How the sending thread is scheduled (`web_hook.sender_priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Priority {
    /// `SCHED_IDLE`: only when a core would otherwise idle.
    Idle,
    /// Nice 19.
    Low,
    /// As the broker's threads.
    Normal,
}

impl Priority {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Priority::Idle => "idle",
            Priority::Low => "low",
            Priority::Normal => "normal",
        }
    }
}

/// Moves the calling thread to `priority`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn lower_this_thread(priority: Priority) -> std::io::Result<()> {
    // SAFETY: sched_setscheduler reads the sched_param it is given, alive for the call;
    // gettid and setpriority take and return plain integers.
    let status = unsafe {
        match priority {
            Priority::Normal => 0,
            Priority::Idle => {
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
            }
            Priority::Low => libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19),
        }
    };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Not Linux: a thread's priority stays the process's.
#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_this_thread(_priority: Priority) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The calling thread's nice value and scheduling policy, from `/proc/thread-self/stat`
    /// (fields 19 and 41).
    fn this_thread() -> (i64, i64) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        (fields[16].parse().unwrap(), fields[38].parse().unwrap())
    }

    #[test]
    fn only_the_calling_thread_is_lowered() {
        let before = this_thread();
        let on = |priority| std::thread::spawn(move || lower_this_thread(priority).map(|()| this_thread()));
        assert_eq!(on(Priority::Low).join().unwrap().unwrap(), (19, before.1));
        assert_eq!(on(Priority::Idle).join().unwrap().unwrap().1, i64::from(libc::SCHED_IDLE));
        assert_eq!(on(Priority::Normal).join().unwrap().unwrap(), before);
        assert_eq!(this_thread(), before, "the other threads keep theirs");
    }
}
