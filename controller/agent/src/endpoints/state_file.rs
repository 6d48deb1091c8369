//! The agent's persisted state: every allocation and registered endpoint,
//! written atomically (temp file, fsync, rename, fsync directory) before the
//! agent answers, so a crash or restart never hands out an address twice.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sluice_common::api::{Attachment, EndpointSpec};

const FILE_NAME: &str = "endpoints.json";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {path} has format version {found}, this agent reads {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub attachment: Attachment,
    pub ip: Ipv4Addr,
    /// Set once the CNI plugin registered the wired veth.
    pub endpoint: Option<EndpointSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub pod_cidr: Ipv4Net,
    pub cursor: u32,
    pub entries: Vec<Entry>,
}

impl Snapshot {
    pub fn new(pod_cidr: Ipv4Net, cursor: u32, entries: Vec<Entry>) -> Self {
        Self {
            version: FORMAT_VERSION,
            pod_cidr,
            cursor,
            entries,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> StateError {
        StateError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// `None` when no state was ever written.
    pub fn load(&self) -> Result<Option<Snapshot>, StateError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let snapshot: Snapshot =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        if snapshot.version != FORMAT_VERSION {
            return Err(StateError::Version {
                path: self.path.clone(),
                found: snapshot.version,
            });
        }
        Ok(Some(snapshot))
    }

    pub fn save(&self, snapshot: &Snapshot) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(snapshot).map_err(|source| StateError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        sluice_sys::fs::write_atomic(&self.path, &bytes, 0o644).map_err(|e| self.io(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateFile::new(dir.path());
        assert_eq!(file.load().expect("load empty"), None);
        let snap = Snapshot::new(
            "10.0.0.0/24".parse().expect("cidr"),
            3,
            vec![Entry {
                attachment: Attachment {
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                },
                ip: Ipv4Addr::new(10, 0, 0, 2),
                endpoint: None,
            }],
        );
        file.save(&snap).expect("save");
        file.save(&snap).expect("save again");
        assert_eq!(file.load().expect("load"), Some(snap));
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(FILE_NAME)]);
    }

    #[test]
    fn corrupt_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateFile::new(dir.path());
        fs::write(file.path(), b"{not json").expect("write");
        assert!(matches!(file.load(), Err(StateError::Corrupt { .. })));
    }
}
