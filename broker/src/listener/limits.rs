//! How fast a listener accepts connections (`max_conn_rate`, a token bucket: over it the
//! listener waits before it accepts again, as EMQX's esockd does) and how many one address may
//! hold open at once (`max_conns_per_ip`: past it a new connection is closed at once).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lock;

/// A token bucket of `rate` connections a second, holding at most a second's worth.
#[derive(Debug)]
pub(super) struct ConnRate {
    rate: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl ConnRate {
    /// The bucket for `rate` connections a second, full; `None` for 0 (no limit).
    pub(super) fn new(rate: u32, now: Instant) -> Option<ConnRate> {
        (rate > 0).then(|| ConnRate { rate: f64::from(rate), tokens: f64::from(rate), refilled_at: now })
    }

    /// Takes a token for one accept at `now`; when there is none, how long until there is
    /// one (take again then).
    pub(super) fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Open connections by peer address.
type OpenByAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Open connections per peer address, for `max_conns_per_ip`.
#[derive(Debug, Clone)]
pub(super) struct PerAddress {
    max: usize,
    open: OpenByAddress,
}

/// A connection counted against its address until dropped.
#[derive(Debug)]
pub(super) struct AddressSlot {
    counted: Option<(OpenByAddress, IpAddr)>,
}

impl PerAddress {
    /// At most `max` connections per address; 0 for no limit (nothing is counted).
    pub(super) fn new(max: usize) -> PerAddress {
        PerAddress { max, open: Arc::default() }
    }

    /// A slot for a connection from `ip`, or `None` when that address has `max` open.
    pub(super) fn admit(&self, ip: IpAddr) -> Option<AddressSlot> {
        if self.max == 0 {
            return Some(AddressSlot { counted: None });
        }
        // An IPv4 client on an IPv6 socket counts as its IPv4 address.
        let ip = ip.to_canonical();
        let mut open = lock(&self.open);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot { counted: Some((self.open.clone(), ip)) })
    }
}

impl AddressSlot {
    /// A slot that counts nothing (the address is not known yet: see `proxy`).
    pub(super) fn uncounted() -> AddressSlot {
        AddressSlot { counted: None }
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((open, ip)) = self.counted.take() {
            let mut open = lock(&open);
            if let Some(count) = open.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_holds_a_second_and_refills_at_the_rate() {
        let t0 = Instant::now();
        assert!(ConnRate::new(0, t0).is_none(), "0 is no limit");
        let mut bucket = ConnRate::new(10, t0).unwrap();
        for _ in 0..10 {
            assert_eq!(bucket.take(t0), Ok(()));
        }
        let wait = bucket.take(t0).expect_err("empty");
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100), "{wait:?}");
        assert_eq!(bucket.take(t0 + Duration::from_millis(100)), Ok(()));
        // A long pause refills a second's worth, no more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(bucket.take(later), Ok(()));
        }
        assert!(bucket.take(later).is_err());
    }

    #[test]
    fn an_address_gets_max_slots_and_one_back_when_one_closes() {
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let limit = PerAddress::new(2);
        let first = limit.admit(a).unwrap();
        let _second = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none(), "a third from the same address");
        assert!(limit.admit(b).is_some(), "another address");
        drop(first);
        assert!(limit.admit(a).is_some(), "a slot came free");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let _third = limit.admit(a);
        assert!(limit.admit(mapped).is_none(), "IPv4-mapped counts as the IPv4 address");
        assert!(PerAddress::new(0).admit(a).is_some());
    }
}
