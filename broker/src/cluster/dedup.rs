//! Which forwarded messages a node has routed already: a message matching two of the node's
//! NATS subscriptions arrives twice, and only the first copy is routed.
//!
//! Every node numbers what it forwards (1, 2, ...), and NATS keeps one publisher's order on
//! each subscription, so copies of one message arrive close together. Per origin node, a
//! window of the last [`WINDOW`] numbers says which were seen; a number older than the
//! window is taken as new (a duplicate is better than a loss: QoS 0 and 1 allow it).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Numbers remembered per origin node.
const WINDOW: u64 = 1 << 16;
/// An origin not heard from for this long is forgotten (a node gets a new id each start, so
/// the ids of past runs would otherwise pile up, 8 KiB each).
const FORGET_AFTER: Duration = Duration::from_secs(600);
const WORDS: usize = (WINDOW / 64) as usize;

/// The numbers seen from each origin node.
#[derive(Debug, Default)]
pub(super) struct Seen {
    origins: HashMap<u64, Window>,
}

#[derive(Debug)]
struct Window {
    /// The lowest number the window covers (a multiple of 64).
    base: u64,
    bits: Box<[u64; WORDS]>,
    last_heard: Instant,
}

impl Seen {
    /// Whether message `seq` of node `origin` comes for the first time (and remembers it).
    pub(super) fn first_time(&mut self, origin: u64, seq: u64) -> bool {
        self.first_time_at(origin, seq, Instant::now())
    }

    fn first_time_at(&mut self, origin: u64, seq: u64, now: Instant) -> bool {
        if !self.origins.contains_key(&origin) {
            self.origins.retain(|_, w| now.duration_since(w.last_heard) < FORGET_AFTER);
        }
        let window = self.origins.entry(origin).or_insert_with(|| Window {
            base: seq & !63,
            bits: Box::new([0; WORDS]),
            last_heard: now,
        });
        window.last_heard = now;
        window.first_time(seq)
    }
}

impl Window {
    fn first_time(&mut self, seq: u64) -> bool {
        if seq < self.base {
            return true;
        }
        if seq >= self.base + WINDOW {
            // Slide forward, forgetting the words that fall out.
            let new_base = (seq - WINDOW + 64) & !63;
            let shift = ((new_base - self.base) / 64) as usize;
            if shift >= WORDS {
                self.bits.fill(0);
            } else {
                self.bits.copy_within(shift.., 0);
                self.bits[WORDS - shift..].fill(0);
            }
            self.base = new_base;
        }
        let offset = seq - self.base;
        let (word, bit) = ((offset / 64) as usize, offset % 64);
        let was = self.bits[word] & (1 << bit) != 0;
        self.bits[word] |= 1 << bit;
        !was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_number_is_new_once_per_origin_even_out_of_order() {
        let mut seen = Seen::default();
        assert!(seen.first_time(1, 10));
        assert!(!seen.first_time(1, 10));
        assert!(seen.first_time(2, 10), "another origin");
        assert!(seen.first_time(1, 12));
        assert!(seen.first_time(1, 11), "late, not seen");
        assert!(!seen.first_time(1, 11));
    }

    #[test]
    fn origins_not_heard_from_for_a_while_are_forgotten() {
        let mut seen = Seen::default();
        let start = Instant::now();
        assert!(seen.first_time_at(1, 5, start));
        assert!(seen.first_time_at(2, 5, start + FORGET_AFTER / 2));
        // A new origin after FORGET_AFTER: origin 1 goes, origin 2 (heard since) stays.
        assert!(seen.first_time_at(3, 5, start + FORGET_AFTER + Duration::from_secs(1)));
        assert_eq!(seen.origins.len(), 2);
        assert!(!seen.first_time_at(2, 5, start + FORGET_AFTER + Duration::from_secs(2)));
    }

    #[test]
    fn the_window_slides_and_keeps_what_is_recent() {
        let mut seen = Seen::default();
        for seq in 1..=3 * WINDOW {
            assert!(seen.first_time(9, seq), "{seq}");
            if seq > 100 {
                assert!(!seen.first_time(9, seq - 100), "{seq}: a copy 100 behind");
            }
        }
        assert!(seen.first_time(9, 1), "too old to know: taken as new");
        assert!(seen.first_time(9, 10 * WINDOW), "a jump far ahead");
        assert!(!seen.first_time(9, 10 * WINDOW));
        assert!(seen.first_time(9, 10 * WINDOW - 5));
    }
}
