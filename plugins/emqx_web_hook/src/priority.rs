//! The sending thread's scheduling priority. Web hook delivery is background work: MQTT
//! traffic comes first. The sending thread (and its runtime's helper threads) lower their own
//! priority to the nice value `sender_nice` (19 by default, the lowest), so that when the
//! broker's network threads want every core (a burst), they get it, and the events the
//! sender cannot keep up with wait in the queue and, past `queue_size`, are dropped and
//! counted. When the CPU has room (a steady rate), a thread's nice value changes nothing: it
//! runs as soon as it has work, and every event is sent.
//!
//! Only the calling thread changes: on Linux, `setpriority(PRIO_PROCESS, gettid(), nice)`
//! applies to one thread, not to the process. Raising one's own nice value needs no
//! privilege. Elsewhere this does nothing.

/// Lowers the calling thread's scheduling priority to `nice` (0 to 19; 0 changes nothing).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn lower_this_thread(nice: u8) -> std::io::Result<()> {
    if nice == 0 {
        return Ok(());
    }
    // SAFETY: gettid and setpriority take and return plain integers; no memory is shared.
    let status = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, libc::c_int::from(nice))
    };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Not Linux: a thread's priority stays the process's.
#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_this_thread(_nice: u8) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of the calling thread, from `/proc/thread-self/stat` (field 19).
    fn nice_of_this_thread() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn only_the_calling_thread_is_lowered() {
        let before = nice_of_this_thread();
        let lowered = std::thread::spawn(|| {
            lower_this_thread(19).unwrap();
            nice_of_this_thread()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, 19);
        assert_eq!(nice_of_this_thread(), before, "the other threads keep theirs");
    }
}
