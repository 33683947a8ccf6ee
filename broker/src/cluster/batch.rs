//! QoS 1 and 2 messages stored in a node's stream in batches.
//!
//! A QoS 1/2 message reaches the other nodes as a QoS 0 one does, on its topic's subject; what
//! its PUBACK waits for is a copy in the publishing node's JetStream stream. JetStream writes
//! every message it stores to its file store, which cost the NATS server more than anything
//! else on the forwarding path; so the messages of a run (those queued together, see
//! `Cluster::publish_forwarded`) are stored as one stream message on the node's batch subject
//! (`subject::batch_subject`), which no node subscribes to. Readers of the streams (catching
//! up, reviving a session) take each batch apart into the messages it holds ([`unpack`]), as
//! they were on their subjects.
//!
//! A batch is its messages one after the other, each a postcard [`Item`]: the subject it went
//! on, the share groups its header named (`HANDLED_HEADER`), and its envelope.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::HANDLED_HEADER;

/// One message of a batch.
#[derive(Debug, Serialize, Deserialize)]
struct Item<'a> {
    subject: &'a str,
    handled: Option<&'a str>,
    #[serde(serialize_with = "crate::bytes_whole", borrow)]
    envelope: &'a [u8],
}

/// A batch being made.
#[derive(Debug, Default)]
pub(super) struct Batch {
    bytes: Vec<u8>,
    messages: usize,
}

impl Batch {
    /// Adds a message: its subject, its `HANDLED_HEADER` if it has one, its envelope.
    pub(super) fn push(&mut self, subject: &str, handled: Option<&str>, envelope: &[u8]) {
        let item = Item { subject, handled, envelope };
        if let Ok(bytes) = postcard::to_extend(&item, std::mem::take(&mut self.bytes)) {
            self.bytes = bytes;
            self.messages += 1;
        }
    }

    /// What it would weigh with a message of `envelope` bytes on `subject` more (about).
    pub(super) fn len_with(&self, subject: &str, envelope: usize) -> usize {
        self.bytes.len() + subject.len() + envelope + 64
    }

    /// How many messages it holds.
    pub(super) fn messages(&self) -> usize {
        self.messages
    }

    /// The batch, as its stream message's payload; it starts again empty.
    pub(super) fn take(&mut self) -> Bytes {
        self.messages = 0;
        Bytes::from(std::mem::take(&mut self.bytes))
    }
}

/// The messages a batch read from a stream holds, as they were on their subjects (without
/// reply subjects); an unreadable rest is logged and left out.
pub(super) fn unpack(batch: &async_nats::Message) -> Vec<async_nats::Message> {
    let mut messages = Vec::new();
    let mut rest: &[u8] = &batch.payload;
    while !rest.is_empty() {
        let (item, after) = match postcard::take_from_bytes::<Item<'_>>(rest) {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(subject = %batch.subject, "cluster: a stored batch of messages is unreadable past {} of them: {e}", messages.len());
                break;
            }
        };
        let headers = item.handled.map(|handled| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(HANDLED_HEADER, handled);
            headers
        });
        messages.push(async_nats::Message {
            subject: item.subject.into(),
            reply: None,
            payload: batch.payload.slice_ref(item.envelope),
            headers,
            status: None,
            description: None,
            length: item.envelope.len(),
        });
        rest = after;
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_comes_apart_into_its_messages_as_they_were() {
        let mut batch = Batch::default();
        batch.push("mqtt.t.a", None, b"one");
        batch.push("mqtt.s.%24SYS.x", Some("mqtt.g.a=emqx%40n1"), b"");
        batch.push("mqtt.t.b", None, &[0u8; 300]);
        assert_eq!(batch.messages(), 3);
        let stored = async_nats::Message {
            subject: "mqtt.q.n.b".into(),
            reply: None,
            payload: batch.take(),
            headers: None,
            status: None,
            description: None,
            length: 0,
        };
        assert_eq!(batch.messages(), 0);
        let messages = unpack(&stored);
        let subjects: Vec<&str> = messages.iter().map(|m| m.subject.as_str()).collect();
        assert_eq!(subjects, ["mqtt.t.a", "mqtt.s.%24SYS.x", "mqtt.t.b"]);
        assert_eq!(&messages[0].payload[..], b"one");
        assert!(messages[0].headers.is_none());
        let handled = messages[1].headers.as_ref().and_then(|h| h.get(HANDLED_HEADER)).map(|h| h.as_str().to_owned());
        assert_eq!(handled.as_deref(), Some("mqtt.g.a=emqx%40n1"));
        assert_eq!(messages[2].payload.len(), 300);
    }

    #[test]
    fn an_unreadable_rest_is_left_out() {
        let mut batch = Batch::default();
        batch.push("mqtt.t.a", None, b"one");
        let mut bytes = batch.take().to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        let stored = async_nats::Message {
            subject: "mqtt.q.n.b".into(),
            reply: None,
            payload: Bytes::from(bytes),
            headers: None,
            status: None,
            description: None,
            length: 0,
        };
        assert_eq!(unpack(&stored).len(), 1);
    }
}
