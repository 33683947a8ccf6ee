//! A message on its way from a publisher to its subscribers, and one delivery of it.
//!
//! A [`Message`] is built once per PUBLISH (its topic and payload copied out of the
//! publisher's read buffer, so that a message kept in an offline queue never pins that
//! buffer) and shared (`Arc`) by every session it is delivered to.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// An application message.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) topic: Box<str>,
    pub(crate) payload: Bytes,
    /// The QoS it was published with.
    pub(crate) qos: u8,
    /// The retain flag it was published with.
    pub(crate) retain: bool,
    /// MQTT 5 properties passed to subscribers unchanged (Payload Format Indicator, Content
    /// Type, Response Topic, Correlation Data, User Properties), encoded; empty when none.
    pub(crate) forwarded: Bytes,
    /// When the MQTT 5 Message Expiry Interval runs out.
    pub(crate) expires_at: Option<Instant>,
    /// The publisher's session ([`crate::session::Session::id`]); 0 for the broker itself.
    pub(crate) publisher: u64,
    /// When it was published, in milliseconds since the Unix epoch.
    pub(crate) timestamp_ms: u64,
    /// In a cluster: which node numbered it and its number there, the same on every node it
    /// reaches (`None` on a node alone, and for a message read back from the store). A
    /// session moving between nodes recognises by it a message that reached it twice.
    pub(crate) origin: Option<Origin>,
}

/// A message's identity across a cluster: the node that published it (random per start) and
/// its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Origin {
    pub(crate) node: u64,
    pub(crate) seq: u64,
}

impl Message {
    /// The remaining Message Expiry Interval in seconds (rounded up, never 0 while it has
    /// not expired), `Ok(None)` when it never expires, `Err(())` once it has expired.
    pub(crate) fn remaining_expiry(&self, now: Instant) -> Result<Option<u32>, ()> {
        let Some(at) = self.expires_at else {
            return Ok(None);
        };
        let left = at.checked_duration_since(now).filter(|d| !d.is_zero()).ok_or(())?;
        Ok(Some(left.as_secs().saturating_add(u64::from(left.subsec_nanos() > 0)).min(u64::from(u32::MAX)) as u32))
    }

    /// The remaining Message Expiry Interval, reading the clock only for a message that
    /// expires.
    pub(crate) fn remaining_expiry_now(&self) -> Result<Option<u32>, ()> {
        match self.expires_at {
            None => Ok(None),
            Some(_) => self.remaining_expiry(Instant::now()),
        }
    }

    /// When a message with Message Expiry Interval `seconds` (received `now`) expires.
    pub(crate) fn expiry_from(seconds: Option<u32>, now: Instant) -> Option<Instant> {
        seconds.map(|s| now + Duration::from_secs(u64::from(s)))
    }
}

/// One message on its way to one session, with what the matching subscriptions decided.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) message: Arc<Message>,
    /// The QoS it goes out with.
    pub(crate) qos: u8,
    /// The retain flag it goes out with.
    pub(crate) retain: bool,
    /// MQTT 5 Subscription Identifiers of the subscriptions it matched.
    pub(crate) subscription_ids: Box<[u32]>,
    /// Its place in a persistent session's store (see `persist`); 0 when it is not kept there.
    pub(crate) seq: u64,
    /// It may have been sent before (read back from the store after a restart: whether it went
    /// out before the broker stopped is not known), so it goes with DUP set (MQTT-3.3.1-1).
    pub(crate) maybe_sent: bool,
    /// The share group it went to as a member's message: redispatched to another member if
    /// the session ends before the client acknowledged it, or if the client refuses it.
    pub(crate) share: Option<Arc<crate::router::ShareGroup>>,
}

#[cfg(test)]
impl Delivery {
    /// A delivery of a message on `t` with `payload`, at `qos` (for unit tests).
    pub(crate) fn for_test(qos: u8, payload: &[u8]) -> Delivery {
        let message = Message {
            topic: "t".into(),
            payload: Bytes::copy_from_slice(payload),
            qos,
            retain: false,
            forwarded: Bytes::new(),
            expires_at: None,
            publisher: 0,
            timestamp_ms: 0,
            origin: None,
        };
        Delivery {
            message: Arc::new(message),
            qos,
            retain: false,
            subscription_ids: Box::new([]),
            seq: 0,
            maybe_sent: false,
            share: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(expires_at: Option<Instant>) -> Message {
        Message {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: 0,
            retain: false,
            forwarded: Bytes::new(),
            expires_at,
            publisher: 0,
            timestamp_ms: 0,
            origin: None,
        }
    }

    #[test]
    fn remaining_expiry_rounds_up_and_expires() {
        let now = Instant::now();
        assert_eq!(message(None).remaining_expiry(now), Ok(None));
        let m = message(Some(now + Duration::from_millis(1500)));
        assert_eq!(m.remaining_expiry(now), Ok(Some(2)));
        assert_eq!(m.remaining_expiry(now + Duration::from_millis(1499)), Ok(Some(1)));
        assert_eq!(m.remaining_expiry(now + Duration::from_millis(1500)), Err(()));
        assert_eq!(m.remaining_expiry(now + Duration::from_secs(9)), Err(()));
    }
}
