//! The retained messages: the in-memory index (the read path), their encoding in the host's
//! store, and the reader of the file older versions kept.
//!
//! In the store (bucket [`BUCKET`]), a message is one key, its topic, whose value is
//! [`encode_value`]'s: a version byte (`1`), the QoS (u8), the stored-at and the expiry time
//! (u64 BE milliseconds since the epoch, 0 for never), the MQTT 5 properties' length (u32 BE)
//! and bytes, then the payload (the rest).
//!
//! The old file (`emqx_retainer.dat`, read only to import it): the line
//! `broker-retainer v2\n`, then one record per message: topic length (u32 BE), topic, QoS
//! (u8), stored-at milliseconds since the epoch (u64 BE), payload length (u32 BE), payload,
//! then (v2) the MQTT 5 properties' length (u32 BE) and bytes, and when the MQTT 5 Message
//! Expiry runs out (u64 BE milliseconds since the epoch, 0 for never). Version 1 files
//! (without the last two) are read too.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};

const MAGIC_V1: &[u8] = b"broker-retainer v1\n";
const MAGIC: &[u8] = b"broker-retainer v2\n";
/// The old file's name in the data directory.
pub const FILE_NAME: &str = "emqx_retainer.dat";
/// The plugin's bucket in the host's store.
pub const BUCKET: &str = "retained";
/// The version byte [`encode_value`] writes.
const VALUE_V1: u8 = 1;
/// The fixed part of a value: version, QoS, two times, the properties' length.
const VALUE_HEADER: usize = 1 + 1 + 8 + 8 + 4;

/// A value in the store that is not a retained message this version reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Shorter than its fixed part or its properties say.
    #[error("truncated value ({0} bytes)")]
    Truncated(usize),
    /// Written by a newer version.
    #[error("unknown value version {0}")]
    Version(u8),
}

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    /// Its payload (never empty: an empty one deletes).
    pub payload: Vec<u8>,
    /// The QoS it was published with.
    pub qos: u8,
    /// When it was stored, in milliseconds since the epoch.
    pub stored_at_ms: u64,
    /// The forwarded MQTT 5 properties it was published with, encoded by the broker.
    pub properties: Vec<u8>,
    /// When its MQTT 5 Message Expiry Interval runs out (ms since the epoch); 0 for never.
    pub expires_at_ms: u64,
}

/// The retained messages by topic, in topic order: the topics under a prefix are together
/// (see [`matching`]).
pub type Messages = BTreeMap<String, Retained>;

/// The messages whose topic `filter` may match, found through the index rather than by
/// looking at every message: a filter without wildcards is one lookup; one with wildcards
/// walks only the topics that start with its levels before the first wildcard (every topic
/// for `#` or `+/...`). The caller still checks each with `topic::matches`.
pub fn candidates<'a>(
    messages: &'a Messages,
    filter: &str,
) -> Box<dyn Iterator<Item = (&'a String, &'a Retained)> + 'a> {
    let wildcard = filter.split('/').position(|level| level == "+" || level == "#");
    let Some(level) = wildcard else {
        return Box::new(messages.get_key_value(filter).into_iter());
    };
    // The levels before the wildcard, without the separator: `a/b/#` also matches `a/b`.
    let prefix = filter.split('/').take(level).collect::<Vec<_>>().join("/");
    let start = Bound::Included(prefix.clone());
    Box::new(
        messages
            .range::<String, _>((start, Bound::Unbounded))
            .take_while(move |(topic, _)| topic.starts_with(prefix.as_str())),
    )
}

/// The old file's path in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// A message as the store keeps it (see the module's documentation).
pub fn encode_value(m: &Retained) -> Vec<u8> {
    let mut out = Vec::with_capacity(VALUE_HEADER + m.properties.len() + m.payload.len());
    out.push(VALUE_V1);
    out.push(m.qos);
    out.extend_from_slice(&m.stored_at_ms.to_be_bytes());
    out.extend_from_slice(&m.expires_at_ms.to_be_bytes());
    out.extend_from_slice(&(m.properties.len() as u32).to_be_bytes());
    out.extend_from_slice(&m.properties);
    out.extend_from_slice(&m.payload);
    out
}

/// Reads back what [`encode_value`] wrote.
pub fn decode_value(bytes: &[u8]) -> Result<Retained, ValueError> {
    let truncated = || ValueError::Truncated(bytes.len());
    let header = bytes.get(..VALUE_HEADER).ok_or_else(truncated)?;
    if header[0] != VALUE_V1 {
        return Err(ValueError::Version(header[0]));
    }
    let u64_at = |at: usize| u64::from_be_bytes(std::array::from_fn(|i| header[at + i]));
    let properties_len = u32::from_be_bytes(std::array::from_fn(|i| header[18 + i])) as usize;
    let rest = &bytes[VALUE_HEADER..];
    let properties = rest.get(..properties_len).ok_or_else(truncated)?;
    Ok(Retained {
        qos: header[1],
        stored_at_ms: u64_at(2),
        expires_at_ms: u64_at(10),
        properties: properties.to_vec(),
        payload: rest[properties_len..].to_vec(),
    })
}

/// The old file's bytes for `messages` (tests write old files with it).
#[cfg(test)]
pub fn encode_file(messages: &Messages) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for (topic, m) in messages {
        out.extend_from_slice(&(topic.len() as u32).to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.push(m.qos);
        out.extend_from_slice(&m.stored_at_ms.to_be_bytes());
        out.extend_from_slice(&(m.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&m.payload);
        out.extend_from_slice(&(m.properties.len() as u32).to_be_bytes());
        out.extend_from_slice(&m.properties);
        out.extend_from_slice(&m.expires_at_ms.to_be_bytes());
    }
    out
}

/// Decodes the old file's bytes. Returns what could be read and, if the file is damaged, why.
pub fn decode(bytes: &[u8]) -> (Messages, Option<String>) {
    let mut messages = Messages::new();
    let (mut rest, v2) = match (bytes.strip_prefix(MAGIC), bytes.strip_prefix(MAGIC_V1)) {
        (Some(rest), _) => (rest, true),
        (None, Some(rest)) => (rest, false),
        _ => return (messages, Some("not a retainer file (bad header)".to_owned())),
    };
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        *rest = tail;
        Some(head)
    }
    while !rest.is_empty() {
        let record = (|| {
            let topic_len = u32::from_be_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
            let topic = String::from_utf8(take(&mut rest, topic_len)?.to_vec()).ok()?;
            let qos = take(&mut rest, 1)?[0];
            let stored_at_ms = u64::from_be_bytes(take(&mut rest, 8)?.try_into().ok()?);
            let payload_len = u32::from_be_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
            let payload = take(&mut rest, payload_len)?.to_vec();
            let (properties, expires_at_ms) = if v2 {
                let len = u32::from_be_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
                let properties = take(&mut rest, len)?.to_vec();
                (properties, u64::from_be_bytes(take(&mut rest, 8)?.try_into().ok()?))
            } else {
                (Vec::new(), 0)
            };
            Some((topic, Retained { payload, qos, stored_at_ms, properties, expires_at_ms }))
        })();
        match record {
            Some((topic, message)) => {
                messages.insert(topic, message);
            }
            None => return (messages, Some("truncated record at the end".to_owned())),
        }
    }
    (messages, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_files_read_back_and_truncation_is_reported() {
        let mut messages = Messages::new();
        let retained = |payload: &[u8], qos, stored_at_ms, properties: &[u8], expires_at_ms| Retained {
            payload: payload.to_vec(),
            qos,
            stored_at_ms,
            properties: properties.to_vec(),
            expires_at_ms,
        };
        messages.insert("a/b".into(), retained(b"\x00\xffbinary", 1, 7, &[0x03, 0, 1, b'x'], 99));
        messages.insert("c".into(), retained(b"", 0, 9, b"", 0));
        let bytes = encode_file(&messages);
        assert_eq!(decode(&bytes), (messages.clone(), None));
        for m in messages.values() {
            assert_eq!(decode_value(&encode_value(m)).as_ref(), Ok(m), "the store's encoding reads back");
        }
        let value = encode_value(&messages["a/b"]);
        assert_eq!(decode_value(&value[..VALUE_HEADER + 1]), Err(ValueError::Truncated(VALUE_HEADER + 1)));
        assert_eq!(decode_value(&[2; 30]), Err(ValueError::Version(2)));
        let (partial, problem) = decode(&bytes[..bytes.len() - 3]);
        assert_eq!(partial.len(), 1);
        assert!(problem.is_some());
        assert!(decode(b"garbage").1.is_some());
    }

    #[test]
    fn candidates_are_the_exact_topic_or_the_topics_under_the_literal_prefix() {
        let retained =
            Retained { payload: b"p".to_vec(), qos: 0, stored_at_ms: 0, properties: vec![], expires_at_ms: 0 };
        let messages: Messages =
            ["a", "a/b", "a/b/c", "a/bc", "b/x", "$SYS/x"].iter().map(|t| (t.to_string(), retained.clone())).collect();
        let topics = |filter: &str| candidates(&messages, filter).map(|(t, _)| t.as_str()).collect::<Vec<_>>();
        assert_eq!(topics("a/b"), ["a/b"]);
        assert_eq!(topics("a/x"), Vec::<&str>::new());
        assert_eq!(topics("a/b/#"), ["a/b", "a/b/c", "a/bc"], "a/bc is left to topic::matches");
        assert_eq!(topics("b/+"), ["b/x"]);
        assert_eq!(topics("#").len(), messages.len());
        assert_eq!(topics("+/x").len(), messages.len());
    }

    #[test]
    fn version_1_files_are_read() {
        let mut v1 = MAGIC_V1.to_vec();
        v1.extend_from_slice(&[0, 0, 0, 1, b't', 2, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 2, b'h', b'i']);
        let (messages, problem) = decode(&v1);
        assert_eq!(problem, None);
        let m = &messages["t"];
        assert_eq!((m.payload.as_slice(), m.qos, m.stored_at_ms, m.expires_at_ms), (&b"hi"[..], 2, 5, 0));
    }
}
