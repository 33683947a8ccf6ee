//! The retained messages, and their file.
//!
//! File format (`emqx_retainer.dat`): the line `broker-retainer v1\n`, then one record per
//! message: topic length (u32 BE), topic, QoS (u8), stored-at milliseconds since the epoch
//! (u64 BE), payload length (u32 BE), payload. The file is replaced atomically (temporary
//! file, fsync, rename, fsync of the directory), so a crash leaves the previous or the new
//! contents, never a mix.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"broker-retainer v1\n";
pub const FILE_NAME: &str = "emqx_retainer.dat";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub payload: Vec<u8>,
    pub qos: u8,
    pub stored_at_ms: u64,
}

pub type Messages = HashMap<String, Retained>;

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
    }
    out
}

/// Decodes a file's bytes. Returns what could be read and, if the file is damaged, why.
pub fn decode(bytes: &[u8]) -> (Messages, Option<String>) {
    let mut messages = Messages::new();
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        return (messages, Some("not a retainer file (bad header)".to_owned()));
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
            Some((topic, Retained { payload, qos, stored_at_ms }))
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
        messages.insert("a/b".into(), Retained { payload: b"\x00\xffbinary".to_vec(), qos: 1, stored_at_ms: 7 });
        messages.insert("c".into(), Retained { payload: vec![], qos: 0, stored_at_ms: 9 });
        let bytes = encode(&messages);
        assert_eq!(decode(&bytes), (messages.clone(), None));
        let (partial, problem) = decode(&bytes[..bytes.len() - 3]);
        assert_eq!(partial.len(), 1);
        assert!(problem.is_some());
        assert!(decode(b"garbage").1.is_some());
    }
}
