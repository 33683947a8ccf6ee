//! What telemetry keeps: the node's uuid (made once) and whether an operator disabled
//! telemetry with `broker ctl telemetry disable`, as the key [`KEY`] (JSON) of the plugin's
//! bucket [`BUCKET`] in the broker's store. Older versions kept it in
//! `data/emqx_telemetry.json` ([`FILE_NAME`]); that file is imported at the first start.

use std::path::{Path, PathBuf};

use plugin_api::store::Bucket;
use plugin_api::{Host, HostError};
use serde::{Deserialize, Serialize};

/// The old file's name inside the data directory.
pub const FILE_NAME: &str = "emqx_telemetry.json";
/// The plugin's bucket in the store.
pub const BUCKET: &str = "state";
/// The key of the state in [`BUCKET`].
pub const KEY: &[u8] = b"telemetry";

/// The uuid and the switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Uppercase 8-4-4-4-12 hex, as EMQX's. Made once as a time-based (v1) uuid, as EMQX
    /// makes it; a uuid kept by an older version (random, v4) is kept as it is, so a node
    /// keeps its identity across an upgrade.
    pub uuid: String,
    /// False after `ctl telemetry disable`.
    pub enabled: bool,
}

/// The state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store refused a read or a write.
    #[error("telemetry state in the store: {0}")]
    Store(#[from] HostError),
    /// The stored value is not a state.
    #[error("telemetry state in the store is not valid JSON: {0}")]
    Invalid(#[from] serde_json::Error),
}

/// The old file's path in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// A time-based (v1) uuid, uppercase, as EMQX's (`...-11EA-...`). The node id is random
/// with the multicast bit set (RFC 4122, 4.5), never a MAC address.
fn new_uuid() -> String {
    let random = *uuid::Uuid::new_v4().as_bytes();
    let mut node: [u8; 6] = std::array::from_fn(|i| random[i]);
    node[0] |= 0x01;
    uuid::Uuid::now_v1(&node).hyphenated().to_string().to_uppercase()
}

/// Reads an old file's bytes.
pub fn parse_file(bytes: &[u8]) -> Result<State, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Reads the state from `bucket`, after importing an old file from the data directory; the
/// first time, makes a new uuid and saves it.
pub fn load_or_create(host: &Host, bucket: &Bucket) -> Result<State, StateError> {
    plugin_api::store::import_file(host, &path(host.data_dir()), |bytes| {
        let state = parse_file(bytes).map_err(|e| format!("not a telemetry state: {e}"))?;
        save(bucket, &state).map_err(|e| e.to_string())?;
        Ok(format!("the telemetry uuid {} (enabled: {})", state.uuid, state.enabled))
    });
    match bucket.get(KEY)? {
        Some(bytes) => Ok(serde_json::from_slice(&bytes)?),
        None => {
            let state = State { uuid: new_uuid(), enabled: true };
            save(bucket, &state)?;
            Ok(state)
        }
    }
}

/// Writes the state; returns once it is durable.
pub fn save(bucket: &Bucket, state: &State) -> Result<(), StateError> {
    Ok(bucket.put(KEY, &serde_json::to_vec(state)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_uuid_is_an_uppercase_v1() {
        let uuid = new_uuid();
        assert_eq!(uuid.len(), 36);
        assert_eq!(uuid, uuid.to_uppercase());
        assert_eq!(uuid.split('-').map(str::len).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12]);
        assert_eq!(uuid::Uuid::parse_str(&uuid).unwrap().get_version_num(), 1);
        assert_ne!(new_uuid(), uuid);
    }

    #[test]
    fn an_old_file_reads_with_its_v4_uuid() {
        let old = State { uuid: "D6138FCE-E455-41EA-A854-FD8F5F98125F".into(), enabled: false };
        let bytes = serde_json::to_vec_pretty(&old).unwrap();
        assert_eq!(parse_file(&bytes).unwrap(), old);
        assert!(parse_file(b"{not json").is_err());
    }
}
