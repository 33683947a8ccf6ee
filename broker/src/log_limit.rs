//! Keeping what clients send from flooding the log: fields a client chooses (client ids,
//! usernames, topics) are logged cut to [`MAX_LOGGED`] bytes ([`Clipped`]), and lines a client
//! can repeat at will (a banned address retrying, refused connections) go through a
//! [`Throttle`]: one line per key per window, the next one saying how many were left out.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lock;

/// Most bytes of a client-chosen field that go into a log line.
pub(crate) const MAX_LOGGED: usize = 256;

/// Most bytes of a plugin's log message (which may quote client-chosen fields).
pub(crate) const MAX_LOGGED_MESSAGE: usize = 4 * MAX_LOGGED;

/// A client-chosen text as logged: whole up to its limit ([`MAX_LOGGED`] bytes unless said),
/// else its first bytes (cut at a character boundary), an ellipsis and its length:
/// `abc…(65000 bytes)`.
#[derive(Clone, Copy)]
pub(crate) struct Clipped<'a> {
    text: &'a str,
    max: usize,
}

/// `text` as it is to be logged (see [`Clipped`]).
pub(crate) fn clipped(text: &str) -> Clipped<'_> {
    Clipped { text, max: MAX_LOGGED }
}

/// `text` as it is to be logged, cut at `max` bytes (see [`Clipped`]).
pub(crate) fn clipped_to(text: &str, max: usize) -> Clipped<'_> {
    Clipped { text, max }
}

impl<'a> Clipped<'a> {
    /// What is logged of the text, and its whole length when that is cut.
    fn parts(&self) -> (&'a str, Option<usize>) {
        let text = self.text;
        if text.len() <= self.max {
            return (text, None);
        }
        let mut end = self.max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        (&text[..end], Some(text.len()))
    }
}

/// The text as is (`%field` in `tracing`).
impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parts() {
            (text, None) => f.write_str(text),
            (head, Some(len)) => write!(f, "{head}…({len} bytes)"),
        }
    }
}

/// The text quoted, as `tracing` logs a `&str` field (`?field`): `"abc"…(65000 bytes)`.
impl fmt::Debug for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parts() {
            (text, None) => write!(f, "{text:?}"),
            (head, Some(len)) => write!(f, "{head:?}…({len} bytes)"),
        }
    }
}

/// Most keys a [`Throttle`] remembers; past it, keys whose window is over are forgotten, and
/// if all are live, all are (a flood from that many keys then logs one line per key again).
const MAX_KEYS: usize = 4096;

/// At most one log line per key (an address, say) per window.
#[derive(Debug)]
pub(crate) struct Throttle<K> {
    window: Duration,
    keys: Mutex<HashMap<K, Seen>>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When the last line for the key was let through.
    logged_at: Instant,
    /// Lines held back since.
    held_back: u64,
}

impl<K: Hash + Eq> Throttle<K> {
    pub(crate) fn new(window: Duration) -> Throttle<K> {
        Throttle { window, keys: Mutex::default() }
    }

    /// Whether a line about `key` may be logged at `now`: `Some(n)` with `n` the lines held
    /// back since the last one, `None` to hold this one back.
    pub(crate) fn check(&self, key: K, now: Instant) -> Option<u64> {
        let mut keys = lock(&self.keys);
        if keys.len() >= MAX_KEYS && !keys.contains_key(&key) {
            let window = self.window;
            keys.retain(|_, seen| now.duration_since(seen.logged_at) < window);
            if keys.len() >= MAX_KEYS {
                keys.clear();
            }
        }
        match keys.get_mut(&key) {
            Some(seen) if now.duration_since(seen.logged_at) < self.window => {
                seen.held_back += 1;
                None
            }
            Some(seen) => {
                let held_back = std::mem::take(&mut seen.held_back);
                seen.logged_at = now;
                Some(held_back)
            }
            None => {
                keys.insert(key, Seen { logged_at: now, held_back: 0 });
                Some(0)
            }
        }
    }
}

/// `" (n more since the last line)"`, or nothing when `n` is 0: what a throttled line adds.
pub(crate) fn held_back(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more like it since the last such line)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut_with_their_length_and_short_ones_kept() {
        assert_eq!(clipped("client-1").to_string(), "client-1");
        let exact = "x".repeat(MAX_LOGGED);
        assert_eq!(clipped(&exact).to_string(), exact);
        let long = "y".repeat(65_000);
        let logged = clipped(&long).to_string();
        assert_eq!(logged, format!("{}…(65000 bytes)", "y".repeat(MAX_LOGGED)));
        assert!(logged.len() < MAX_LOGGED + 32);
        // Cut at a character boundary: 'é' is two bytes, so 256 bytes end inside one.
        let accents = format!("a{}", "é".repeat(200));
        let logged = clipped(&accents).to_string();
        assert!(logged.starts_with('a') && logged.ends_with(&format!("…({} bytes)", accents.len())));
        assert_eq!(logged.split('…').next().unwrap().len(), MAX_LOGGED - 1);
        assert_eq!(clipped_to("abcdef", 3).to_string(), "abc…(6 bytes)");
        assert_eq!(format!("{:?}", clipped_to("abcdef", 3)), "\"abc\"…(6 bytes)");
        assert_eq!(format!("{:?}", clipped("a\"b")), "\"a\\\"b\"", "quoted as tracing quotes a &str");
    }

    #[test]
    fn a_throttle_lets_one_line_per_key_and_window_through_and_counts_the_rest() {
        let throttle = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(throttle.check("a", t0), Some(0));
        assert_eq!(throttle.check("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(throttle.check("a", t0 + Duration::from_secs(2)), None);
        assert_eq!(throttle.check("b", t0 + Duration::from_secs(2)), Some(0), "another key");
        assert_eq!(throttle.check("a", t0 + Duration::from_secs(61)), Some(2), "the next window says how many");
        assert_eq!(throttle.check("a", t0 + Duration::from_secs(62)), None);
    }

    #[test]
    fn a_throttle_remembers_a_bounded_number_of_keys() {
        let throttle = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for key in 0..MAX_KEYS * 3 {
            assert_eq!(throttle.check(key, t0), Some(0));
        }
        assert!(lock(&throttle.keys).len() <= MAX_KEYS);
    }
}
