//! The retained messages, and their file.
//!
//! File format (`emqx_retainer.dat`): the line `broker-retainer v2\n`, then one record per
//! message: topic length (u32 BE), topic, QoS (u8), stored-at milliseconds since the epoch
//! (u64 BE), payload length (u32 BE), payload, then (v2) the MQTT 5 properties' length (u32
//! BE) and bytes, and when the MQTT 5 Message Expiry runs out (u64 BE milliseconds since the
//! epoch, 0 for never). Version 1 files (without the last two) are still read. The file is
//! replaced atomically (temporary file, fsync, rename, fsync of the directory), so a crash
//! leaves the previous or the new contents, never a mix.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};

const MAGIC_V1: &[u8] = b"broker-retainer v1\n";
const MAGIC: &[u8] = b"broker-retainer v2\n";
pub const FILE_NAME: &str = "emqx_retainer.dat";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub payload: Vec<u8>,
    pub qos: u8,
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

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

pub fn encode(messages: &Messages) -> Vec<u8> {
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

/// Decodes a file's bytes. Returns what could be read and, if the file is damaged, why.
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

/// Replaces the file atomically with `messages`.
pub fn save(data_dir: &Path, messages: &Messages) -> std::io::Result<()> {
    let path = path(data_dir);
    let tmp = data_dir.join(format!(".{FILE_NAME}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&encode(messages))?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
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
        let bytes = encode(&messages);
        assert_eq!(decode(&bytes), (messages.clone(), None));
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
