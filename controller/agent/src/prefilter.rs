//! The underlay prefilter's deny list as the agent keeps it: the config
//! file's `prefilter.denyCIDRs` and the CIDRs added through the API
//! (`sluice prefilter`), which persist in the state directory so they
//! survive restarts. The kernel map holds their union after every change;
//! the agent is its only writer. The agent does not re-read its config
//! file, so the API is the live path and the file the initial list.
//!
//! What a request makes of the list is pure ([`next`], [`parse_cidrs`]);
//! [`Prefilter`] applies it to the map and the state file.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use sluice_common::api::{ErrorKind, PrefilterOp, PrefilterStatus, Response};
use tracing::info;

use crate::kernel::bpf::{AttachMode, DataplaneError, DenyList};

/// The added CIDRs' file in the state directory.
pub const STATE_FILE: &str = "prefilter.json";

#[derive(Debug, thiserror::Error)]
pub enum PrefilterError {
    #[error("invalid CIDR {text:?}: {reason}")]
    Invalid { text: String, reason: String },
    #[error("{cidr} has host bits set; the network is {network}")]
    HostBits { cidr: Ipv4Net, network: Ipv4Net },
    #[error("{0} is in the config file's prefilter.denyCIDRs: remove it there")]
    FromConfig(Ipv4Net),
    #[error("{0} is not in the deny list")]
    NotDenied(Ipv4Net),
    #[error("no CIDR given")]
    Empty,
    #[error("prefilter state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("writing the deny list: {0}")]
    Dataplane(#[from] DataplaneError),
}

impl PrefilterError {
    fn kind(&self) -> ErrorKind {
        match self {
            PrefilterError::Invalid { .. }
            | PrefilterError::HostBits { .. }
            | PrefilterError::FromConfig(_)
            | PrefilterError::Empty => ErrorKind::Invalid,
            PrefilterError::NotDenied(_) => ErrorKind::NotFound,
            PrefilterError::State { .. } | PrefilterError::Dataplane(_) => ErrorKind::Internal,
        }
    }
}

/// Parses CIDRs as an operator writes them: `a.b.c.d/n`, or a bare address
/// for its /32. A network with host bits set is refused rather than
/// silently widened or narrowed.
pub fn parse_cidrs(texts: &[String]) -> Result<BTreeSet<Ipv4Net>, PrefilterError> {
    texts
        .iter()
        .map(|text| {
            let text = text.trim();
            let cidr = match text.parse::<Ipv4Net>() {
                Ok(cidr) => cidr,
                Err(e) => match text.parse::<std::net::Ipv4Addr>() {
                    Ok(addr) => Ipv4Net::from(addr),
                    Err(_) => {
                        return Err(PrefilterError::Invalid {
                            text: text.to_owned(),
                            reason: e.to_string(),
                        })
                    }
                },
            };
            if cidr.trunc() != cidr {
                return Err(PrefilterError::HostBits {
                    cidr,
                    network: cidr.trunc(),
                });
            }
            Ok(cidr)
        })
        .collect()
}

/// The added list after `op` (`List` leaves it as it is). A request that
/// fails changes nothing.
pub fn next(
    config: &BTreeSet<Ipv4Net>,
    added: &BTreeSet<Ipv4Net>,
    op: &PrefilterOp,
) -> Result<BTreeSet<Ipv4Net>, PrefilterError> {
    let nonempty = |cidrs: &[String]| {
        if cidrs.is_empty() {
            Err(PrefilterError::Empty)
        } else {
            parse_cidrs(cidrs)
        }
    };
    match op {
        PrefilterOp::List => Ok(added.clone()),
        PrefilterOp::Add { cidrs } => {
            let new = nonempty(cidrs)?;
            Ok(added.union(&new).copied().collect())
        }
        PrefilterOp::Delete { cidrs } => {
            let gone = nonempty(cidrs)?;
            for cidr in &gone {
                if !added.contains(cidr) {
                    return Err(if config.contains(cidr) {
                        PrefilterError::FromConfig(*cidr)
                    } else {
                        PrefilterError::NotDenied(*cidr)
                    });
                }
            }
            Ok(added.difference(&gone).copied().collect())
        }
        PrefilterOp::Set { cidrs } => parse_cidrs(cidrs),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StateFile {
    #[serde(rename = "addedCIDRs")]
    added_cidrs: Vec<Ipv4Net>,
}

/// The added CIDRs persisted at `path`; none when the file is missing. An
/// unreadable file is an error: starting without the operator's list would
/// let in what they meant to keep out.
pub fn read_state(path: &Path) -> Result<BTreeSet<Ipv4Net>, PrefilterError> {
    let state = |reason: String| PrefilterError::State {
        path: path.to_owned(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(state(e.to_string())),
    };
    let file: StateFile = serde_json::from_str(&text).map_err(|e| state(e.to_string()))?;
    Ok(file.added_cidrs.into_iter().collect())
}

fn write_state(path: &Path, added: &BTreeSet<Ipv4Net>) -> Result<(), PrefilterError> {
    let file = StateFile {
        added_cidrs: added.iter().copied().collect(),
    };
    let text = serde_json::to_vec_pretty(&file).unwrap_or_default();
    sluice_sys::fs::write_atomic(path, &text, 0o600).map_err(|e| PrefilterError::State {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The deny list's one writer.
pub struct Prefilter {
    map: DenyList,
    state: PathBuf,
    config: BTreeSet<Ipv4Net>,
    added: BTreeSet<Ipv4Net>,
    attached: Option<(String, AttachMode)>,
}

impl Prefilter {
    /// Reads the added CIDRs from `state_dir` and makes the map deny them
    /// and the config file's.
    pub fn start(
        map: DenyList,
        state_dir: &Path,
        config: &[Ipv4Net],
    ) -> Result<Self, PrefilterError> {
        let state = state_dir.join(STATE_FILE);
        let added = read_state(&state)?;
        let mut prefilter = Self {
            map,
            state,
            config: config.iter().copied().collect(),
            added,
            attached: None,
        };
        prefilter
            .map
            .sync(prefilter.config.union(&prefilter.added))?;
        info!(
            config = prefilter.config.len(),
            added = prefilter.added.len(),
            "prefilter deny list loaded"
        );
        Ok(prefilter)
    }

    /// Where the program runs, for the status answers.
    pub fn set_attached(&mut self, device: &str, mode: AttachMode) {
        self.attached = Some((device.to_owned(), mode));
    }

    pub fn status(&self) -> PrefilterStatus {
        PrefilterStatus {
            device: self.attached.as_ref().map(|(d, _)| d.clone()),
            mode: self.attached.as_ref().map(|(_, m)| m.to_string()),
            config_cidrs: self.config.iter().map(|c| c.to_string()).collect(),
            added_cidrs: self.added.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// Applies `op` to the map, then the state file; when either fails,
    /// both are left as they were.
    pub fn apply(&mut self, op: &PrefilterOp) -> Result<PrefilterStatus, PrefilterError> {
        let added = next(&self.config, &self.added, op)?;
        if added != self.added {
            self.map.sync(self.config.union(&added))?;
            if let Err(e) = write_state(&self.state, &added) {
                // Back to the list the file still holds.
                self.map.sync(self.config.union(&self.added))?;
                return Err(e);
            }
            info!(before = ?self.added, after = ?added, "prefilter deny list changed");
            self.added = added;
        }
        Ok(self.status())
    }

    /// The API's answer to `op`.
    pub fn handle(&mut self, op: &PrefilterOp) -> Response {
        match self.apply(op) {
            Ok(prefilter) => Response::Prefilter { prefilter },
            Err(e) => Response::Error {
                kind: e.kind(),
                message: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cidrs: &[&str]) -> BTreeSet<Ipv4Net> {
        cidrs.iter().map(|c| c.parse().expect("cidr")).collect()
    }

    fn strings(cidrs: &[&str]) -> Vec<String> {
        cidrs.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn cidrs_parse_with_bare_addresses_as_hosts_and_refuse_host_bits() {
        assert_eq!(
            parse_cidrs(&strings(&["198.18.0.0/15", " 203.0.113.7 "])).expect("valid"),
            set(&["198.18.0.0/15", "203.0.113.7/32"])
        );
        let err = parse_cidrs(&strings(&["10.0.0.0/8", "10.1.2.3/8"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "10.1.2.3/8 has host bits set; the network is 10.0.0.0/8"
        );
        for bad in ["10.0.0.0/33", "banana", "2001:db8::/32", ""] {
            let err = parse_cidrs(&strings(&[bad])).unwrap_err();
            assert!(
                matches!(err, PrefilterError::Invalid { .. }),
                "{bad}: {err}"
            );
            assert!(
                err.to_string().contains(&format!("{:?}", bad.trim())),
                "{err}"
            );
        }
    }

    #[test]
    fn requests_change_only_the_added_list_and_fail_whole() {
        let config = set(&["192.0.2.0/24"]);
        let added = set(&["198.18.0.0/15"]);
        let add = PrefilterOp::Add {
            cidrs: strings(&["203.0.113.0/24", "198.18.0.0/15"]),
        };
        assert_eq!(
            next(&config, &added, &add).expect("add"),
            set(&["198.18.0.0/15", "203.0.113.0/24"])
        );
        let bad_add = PrefilterOp::Add {
            cidrs: strings(&["203.0.113.0/24", "nope"]),
        };
        assert!(next(&config, &added, &bad_add).is_err());
        let delete = |cidrs: &[&str]| PrefilterOp::Delete {
            cidrs: strings(cidrs),
        };
        assert_eq!(
            next(&config, &added, &delete(&["198.18.0.0/15"])).expect("delete"),
            set(&[])
        );
        let err = next(&config, &added, &delete(&["192.0.2.0/24"])).unwrap_err();
        assert!(matches!(err, PrefilterError::FromConfig(_)), "{err}");
        let err = next(&config, &added, &delete(&["198.18.0.0/15", "10.0.0.0/8"])).unwrap_err();
        assert!(matches!(err, PrefilterError::NotDenied(_)), "{err}");
        assert!(matches!(
            next(&config, &added, &delete(&[])),
            Err(PrefilterError::Empty)
        ));
        let replace = PrefilterOp::Set {
            cidrs: strings(&["10.0.0.0/8"]),
        };
        assert_eq!(
            next(&config, &added, &replace).expect("set"),
            set(&["10.0.0.0/8"])
        );
        let clear = PrefilterOp::Set { cidrs: vec![] };
        assert_eq!(next(&config, &added, &clear).expect("clear"), set(&[]));
        assert_eq!(
            next(&config, &added, &PrefilterOp::List).expect("list"),
            added
        );
    }

    #[test]
    fn the_added_list_persists_and_a_corrupt_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("sluice-prefilter-{}", std::process::id()));
        let path = dir.join(STATE_FILE);
        assert_eq!(read_state(&path).expect("missing is empty"), set(&[]));
        let added = set(&["198.18.0.0/15", "203.0.113.7/32"]);
        write_state(&path, &added).expect("write");
        assert_eq!(read_state(&path).expect("read"), added);
        std::fs::write(&path, "{not json").expect("corrupt");
        let err = read_state(&path).unwrap_err();
        assert!(matches!(err, PrefilterError::State { .. }), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
