//! A message on its way from a publisher to its subscribers, and one delivery of it.
//!
//! A [`Message`] is built once per PUBLISH and shared by every session it is delivered to. It
//! is one allocation: its head, then its topic, payload and forwarded properties copied out
//! of the publisher's read buffer (so that a message kept in an offline queue never pins that
//! buffer). It was three allocations (the `Arc`, the topic and the payload); at hundreds of
//! thousands of messages a second, `malloc` and `free` on different threads contend for the
//! heap's lock, and the broker's CPU per message in fan-in fell by about 6 % (README,
//! "How it is built").

use std::fmt;
use std::mem::MaybeUninit;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use triomphe::{HeaderSlice, HeaderWithLength, ThinArc, UniqueArc};

/// An application message: cheap to clone (a reference count), immutable once shared.
#[derive(Clone)]
pub(crate) struct Message(ThinArc<Stored, u8>);

/// What a message carries besides its topic, payload and forwarded properties; a
/// [`Message`] derefs to it.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    /// The QoS it was published with.
    pub(crate) qos: u8,
    /// The retain flag it was published with.
    pub(crate) retain: bool,
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

#[cfg(test)]
impl Head {
    /// A head at `qos`: not retained, never expiring, the broker's (for unit tests).
    pub(crate) fn plain(qos: u8) -> Head {
        Head { qos, retain: false, expires_at: None, publisher: 0, timestamp_ms: 0, origin: None }
    }
}

/// The head and where the topic ends and the payload ends in the bytes after it.
struct Stored {
    head: Head,
    topic_len: u32,
    payload_len: u32,
}

impl Message {
    /// A message on `topic` with `payload` and `forwarded`: the MQTT 5 properties passed to
    /// subscribers unchanged (Payload Format Indicator, Content Type, Response Topic,
    /// Correlation Data, User Properties), encoded; empty when none.
    pub(crate) fn new(head: Head, topic: &str, payload: &[u8], forwarded: &[u8]) -> Message {
        let (t, p, f) = (topic.len(), payload.len(), forwarded.len());
        // A topic is at most 65,535 bytes and a packet at most 256 MiB (MQTT's own limits).
        let lens = (u32::try_from(t), u32::try_from(p));
        let (Ok(topic_len), Ok(payload_len)) = lens else { panic!("a message over 4 GiB") };
        let len = t + p + f;
        let header = HeaderWithLength::new(Stored { head, topic_len, payload_len }, len);
        let mut unique: UniqueArc<HeaderSlice<_, [MaybeUninit<u8>]>> =
            UniqueArc::from_header_and_uninit_slice(header, len);
        let dst = unique.slice.as_mut_ptr().cast::<u8>();
        // SAFETY: `dst` is `len` bytes, writable and apart from the three sources; the three
        // copies fill them end to end, so every byte is initialised before `assume_init`.
        let full = unsafe {
            std::ptr::copy_nonoverlapping(topic.as_ptr(), dst, t);
            std::ptr::copy_nonoverlapping(payload.as_ptr(), dst.add(t), p);
            std::ptr::copy_nonoverlapping(forwarded.as_ptr(), dst.add(t + p), f);
            unique.assume_init_slice_with_header()
        };
        Message(triomphe::Arc::into_thin(full.shareable()))
    }

    fn stored(&self) -> &Stored {
        &self.0.header.header
    }

    /// The topic it is published on.
    pub(crate) fn topic(&self) -> &str {
        let bytes = &self.0.slice[..self.stored().topic_len as usize];
        // SAFETY: `new` copied these bytes from a `&str`, and nothing changes them after.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// The application payload.
    pub(crate) fn payload(&self) -> &[u8] {
        let start = self.stored().topic_len as usize;
        &self.0.slice[start..start + self.stored().payload_len as usize]
    }

    /// The MQTT 5 properties passed to subscribers unchanged, encoded; empty when none.
    pub(crate) fn forwarded(&self) -> &[u8] {
        let start = self.stored().topic_len as usize + self.stored().payload_len as usize;
        &self.0.slice[start..]
    }

    /// Changes the head: in place while nothing else holds the message, else on a copy.
    pub(crate) fn edit(&mut self, change: impl FnOnce(&mut Head)) {
        let mut change = Some(change);
        self.0.with_arc_mut(|arc| {
            if let Some(unique) = triomphe::Arc::get_mut(arc) {
                if let Some(change) = change.take() {
                    change(&mut unique.header_mut().head);
                }
            }
        });
        let Some(change) = change else { return };
        let mut head = self.head().clone();
        change(&mut head);
        *self = Message::new(head, self.topic(), self.payload(), self.forwarded());
    }

    /// The same message on another topic (a copy).
    pub(crate) fn with_topic(&self, topic: &str) -> Message {
        Message::new(self.head().clone(), topic, self.payload(), self.forwarded())
    }

    /// The same message with another payload (a copy).
    pub(crate) fn with_payload(&self, payload: &[u8]) -> Message {
        Message::new(self.head().clone(), self.topic(), payload, self.forwarded())
    }

    /// Everything but its topic, payload and forwarded properties.
    pub(crate) fn head(&self) -> &Head {
        &self.stored().head
    }

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

impl Deref for Message {
    type Target = Head;

    fn deref(&self) -> &Head {
        self.head()
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic())
            .field("payload_len", &self.payload().len())
            .field("forwarded_len", &self.forwarded().len())
            .field("head", self.head())
            .finish()
    }
}

/// A message's identity across a cluster: the node that published it (random per start) and
/// its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Origin {
    pub(crate) node: u64,
    pub(crate) seq: u64,
}

/// One message on its way to one session, with what the matching subscriptions decided.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) message: Message,
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
        Delivery {
            message: Message::new(Head::plain(qos), "t", payload, &[]),
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
        Message::new(Head { expires_at, ..Head::plain(0) }, "t", b"", b"")
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
