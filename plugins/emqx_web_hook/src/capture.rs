//! What a hook keeps of an event: the fields a body needs, copied out of the borrowed
//! [`Event`] with at most two allocations (the texts in one `String`, the payload in one
//! `Vec`). The hooks run on the broker's network threads, so they only copy; the JSON body
//! is built later, on the plugin's sending thread (see `body`).

use plugin_api::{Event, Hook, SubscriptionOptions};

/// The texts a body may need, in the order they are stored.
#[derive(Debug, Clone, Copy)]
enum Text {
    ClientId,
    Username,
    Peer,
    Topic,
    Reason,
}

/// How many [`Text`]s there are.
const TEXTS: usize = 5;

/// One event, owned: what [`Event`] says that a body uses.
#[derive(Debug)]
pub(crate) struct Captured {
    pub(crate) hook: Hook,
    /// The [`Text`]s, one after the other.
    text: String,
    /// Where each [`Text`] ends in `text`.
    ends: [u32; TEXTS],
    pub(crate) payload: Vec<u8>,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    pub(crate) proto_ver: u8,
    pub(crate) keepalive: u16,
    pub(crate) return_code: u32,
    pub(crate) timestamp_ms: u64,
    pub(crate) subscription: SubscriptionOptions,
    pub(crate) subscription_is_new: bool,
}

impl Captured {
    /// Copies what a body of `event` needs: the payload of message events only, the peer of
    /// client events only.
    pub(crate) fn of(event: &Event<'_>) -> Captured {
        let message = matches!(
            event.hook,
            Hook::MessagePublish | Hook::MessageDelivered | Hook::MessageAcked | Hook::MessageDropped
        );
        let client = matches!(event.hook, Hook::ClientConnect | Hook::ClientConnack | Hook::ClientConnected);
        let peer = if client { event.peer } else { "" };
        let (text, ends) = texts([event.client_id, event.username, peer, event.topic, event.reason]);
        Captured {
            hook: event.hook,
            text,
            ends,
            payload: if message { event.payload.to_vec() } else { Vec::new() },
            qos: event.qos as u8,
            retain: event.retain,
            proto_ver: event.proto_ver,
            keepalive: event.keepalive,
            return_code: event.return_code,
            timestamp_ms: event.timestamp_ms,
            subscription: event.subscription,
            subscription_is_new: event.subscription_is_new,
        }
    }

    fn text(&self, which: Text) -> &str {
        let i = which as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..self.ends[i] as usize).unwrap_or("")
    }

    /// The event's client id.
    pub(crate) fn client_id(&self) -> &str {
        self.text(Text::ClientId)
    }

    /// The username, empty when none.
    pub(crate) fn username(&self) -> &str {
        self.text(Text::Username)
    }

    /// The peer as `ip:port` (client events only; empty for the others).
    pub(crate) fn peer(&self) -> &str {
        self.text(Text::Peer)
    }

    /// The message's topic or the subscription's filter.
    pub(crate) fn topic(&self) -> &str {
        self.text(Text::Topic)
    }

    /// Why the client disconnected, the session ended or the message was dropped.
    pub(crate) fn reason(&self) -> &str {
        self.text(Text::Reason)
    }
}

/// `parts` one after the other, and where each ends.
fn texts(parts: [&str; TEXTS]) -> (String, [u32; TEXTS]) {
    let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    let mut ends = [0u32; TEXTS];
    for (end, part) in ends.iter_mut().zip(parts) {
        text.push_str(part);
        *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
    }
    (text, ends)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_come_back_as_they_went_in() {
        let (text, ends) = texts(["alice", "", "127.0.0.1:5000", "a/é/b", "tcp_closed"]);
        let captured = Captured {
            hook: Hook::ClientConnected,
            text,
            ends,
            payload: Vec::new(),
            qos: 0,
            retain: false,
            proto_ver: 4,
            keepalive: 60,
            return_code: 0,
            timestamp_ms: 0,
            subscription: SubscriptionOptions::default(),
            subscription_is_new: false,
        };
        assert_eq!(
            (captured.client_id(), captured.username(), captured.peer(), captured.topic(), captured.reason()),
            ("alice", "", "127.0.0.1:5000", "a/é/b", "tcp_closed")
        );
    }
}
