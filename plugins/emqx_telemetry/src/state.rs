//! What telemetry keeps in the data directory: the node's uuid (made once) and whether an
//! operator disabled telemetry with `broker ctl telemetry disable`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name inside the data directory.
pub const FILE_NAME: &str = "emqx_telemetry.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Uppercase 8-4-4-4-12 hex, as EMQX's. Made once as a time-based (v1) uuid, as EMQX
    /// makes it; a uuid kept by an older version (random, v4) is kept as it is, so a node
    /// keeps its identity across an upgrade.
    pub uuid: String,
    /// False after `ctl telemetry disable`.
    pub enabled: bool,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// A time-based (v1) uuid, uppercase, as EMQX's (`...-11EA-...`). The node id is random
/// with the multicast bit set (RFC 4122, 4.5), never a MAC address.
fn new_uuid() -> String {
    let mut node = *uuid::Uuid::new_v4().as_bytes();
    node[0] |= 0x01;
    let node: [u8; 6] = node[..6].try_into().expect("six bytes");
    uuid::Uuid::now_v1(&node).hyphenated().to_string().to_uppercase()
}

/// Reads the state, creating (and saving) a new uuid the first time.
pub fn load_or_create(data_dir: &Path) -> std::io::Result<State> {
    let path = path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let state = State { uuid: new_uuid(), enabled: true };
            save(data_dir, &state)?;
            Ok(state)
        }
        Err(e) => Err(e),
    }
}

/// Writes the state atomically (temporary file, fsync, rename).
pub fn save(data_dir: &Path, state: &State) -> std::io::Result<()> {
    let path = path(data_dir);
    let tmp = data_dir.join(format!(".{FILE_NAME}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("telemetry-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = load_or_create(&dir).unwrap();
        assert_eq!(first.uuid.len(), 36);
        assert_eq!(first.uuid, first.uuid.to_uppercase());
        assert_eq!(first.uuid.split('-').map(str::len).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12]);
        assert_eq!(uuid::Uuid::parse_str(&first.uuid).unwrap().get_version_num(), 1);
        save(&dir, &State { enabled: false, ..first.clone() }).unwrap();
        let again = load_or_create(&dir).unwrap();
        assert_eq!((again.uuid.as_str(), again.enabled), (first.uuid.as_str(), false));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_kept_v4_uuid_stays() {
        let dir = std::env::temp_dir().join(format!("telemetry-state-v4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = State { uuid: "D6138FCE-E455-41EA-A854-FD8F5F98125F".into(), enabled: true };
        save(&dir, &old).unwrap();
        assert_eq!(load_or_create(&dir).unwrap(), old);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
