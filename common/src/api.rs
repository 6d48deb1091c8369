//! The agent's local API, spoken by `sluice-cni` over the agent's unix socket.
//!
//! One JSON request per line, one JSON response per line, one exchange per
//! connection. Both sides use these types, so the wire format has exactly one
//! definition.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::explain::{ExplainQuery, Explanation};

/// Default path of the agent socket.
pub const DEFAULT_SOCKET: &str = "/var/run/sluice/sluice.sock";

/// One network attachment of a container, as CNI names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl std::fmt::Display for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// What the CNI plugin tells the agent once the veth is wired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub attachment: Attachment,
    pub netns: String,
    /// Host side of the veth.
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    /// The pod's interface.
    pub pod_mac: [u8; 6],
    pub ip: IpAddr,
    /// The Pod the runtime wired it for (kubelet's `K8S_POD_*` in
    /// `CNI_ARGS`); `None` from runtimes that do not say, and from agents'
    /// state written before it existed.
    #[serde(default)]
    pub pod: Option<PodRef>,
}

/// A Pod by name, as kubelet names it to CNI plugins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// `K8S_POD_UID`, when given.
    #[serde(default)]
    pub uid: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Reserve an address for the attachment (idempotent: the same attachment
    /// gets the same address back).
    Allocate { attachment: Attachment },
    /// Program the dataplane for a wired endpoint.
    Register { endpoint: EndpointSpec },
    /// Remove the endpoint and free its address. Succeeds when either is
    /// already gone.
    Release { attachment: Attachment },
    /// Report what the agent holds for an attachment.
    Get { attachment: Attachment },
    /// Release every attachment not in `valid` (CNI GC).
    Gc { valid: Vec<Attachment> },
    /// Is the agent ready to wire pods?
    Status,
    /// Read or change the underlay prefilter's deny list (`sluice
    /// prefilter`).
    Prefilter { prefilter: PrefilterOp },
    /// Explain the policy verdict of a flow (`sluice policy explain`).
    Explain { query: ExplainQuery },
    /// Flow events (`sluice observe`): the recorded ones that match, each
    /// a [`Response::Flow`] line, then [`Response::FlowsEnd`]; with
    /// `follow`, live ones after it as they come, until the client goes.
    Flows {
        #[serde(default)]
        filter: crate::observe::FlowFilter,
        #[serde(default)]
        follow: bool,
    },
}

/// What `sluice prefilter` asks of the deny list. CIDRs travel as text so
/// the agent, which owns the list, names whatever it refuses; a request
/// with one bad CIDR changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum PrefilterOp {
    List,
    /// Deny these too (already denied ones are no error).
    Add {
        cidrs: Vec<String>,
    },
    /// Stop denying these (each must have been added; the config file's
    /// own stay until the file changes).
    Delete {
        cidrs: Vec<String>,
    },
    /// Make the added list exactly this (the config file's stay).
    Set {
        cidrs: Vec<String>,
    },
}

/// The deny list and where the prefilter runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefilterStatus {
    /// The underlay device it is attached to; `None` without one (no
    /// datastore, so no underlay is known).
    pub device: Option<String>,
    /// `native` (in the driver) or `generic` (after the skb is built).
    pub mode: Option<String>,
    /// From the config file's `prefilter.denyCIDRs`.
    pub config_cidrs: Vec<String>,
    /// Added through the API; kept in the agent's state directory.
    pub added_cidrs: Vec<String>,
}

/// Address configuration handed to a new pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub ip: IpAddr,
    /// Prefix length of the node's pod CIDR (the pod itself gets a host route).
    pub cidr_prefix_len: u8,
    pub gateway: IpAddr,
    /// The MTU of traffic that leaves the node (room left for the tunnel's
    /// header); the pod's device MTU unless `local_mtu` says more.
    pub mtu: u32,
    /// The MTU of the pod's device and of its route to the pods of its own
    /// node, where it is more than `mtu` (tunnel mode: same-node traffic is
    /// not encapsulated). Absent from agents that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_mtu: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointState {
    pub allocation: Allocation,
    /// `None` while allocated but not yet registered.
    pub endpoint: Option<EndpointSpec>,
}

/// What `Status` answers: IPAM (what the CNI plugin's STATUS needs), and
/// what an operator's `sluice status` shows of the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node_name: String,
    pub pod_cidr: String,
    pub endpoints: usize,
    pub free_addresses: u64,
    /// Absent from agents that predate it.
    #[serde(default)]
    pub node: NodeReport,
}

/// The agent's view of its node and the cluster, for operators.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// As `GET /readyz`: the cluster state in the maps, the programs
    /// attached.
    pub ready: bool,
    /// `tunnel` or `native`.
    pub routing: String,
    pub kube_proxy_replacement: bool,
    /// `kubernetes`, `dir:PATH` or `none`.
    pub datastore: String,
    /// Cluster objects known, by kind (`pod`, `networkpolicy`, ...).
    pub objects: std::collections::BTreeMap<String, usize>,
    /// Security identities allocated (label sets and ipBlock regions).
    pub identities: usize,
    /// Service frontends programmed, and their backend slots.
    pub service_frontends: usize,
    pub service_backends: usize,
    /// The maps the agent fills from the cluster.
    pub maps: Vec<MapFill>,
    /// Milliseconds since the maps last matched the known cluster state
    /// (`None`: not yet).
    pub last_sync_ms_ago: Option<u64>,
    /// Milliseconds since the last cluster object change arrived.
    pub last_event_ms_ago: Option<u64>,
    /// Objects skipped or rules that allow nothing, in words.
    pub problems: Vec<String>,
    /// The maps hold every change that has arrived: nothing is waiting to
    /// be applied or retried. With `objects`, the signal that a burst of
    /// changes is in the kernel (the benchmarks wait on it).
    #[serde(default)]
    pub in_sync: bool,
    /// Cluster object changes taken in since the agent started: objects
    /// added, changed or removed (a full list counts each of its objects).
    #[serde(default)]
    pub changes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    pub name: String,
    /// Entries the agent wants in it.
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is wrong (bad name, address outside the pod CIDR...).
    Invalid,
    /// The pod CIDR has no free address.
    Exhausted,
    /// Nothing is known about the attachment.
    NotFound,
    /// The agent failed; retrying may help.
    Internal,
    /// The endpoint's Pod is not (yet) known to the agent, so its policy
    /// cannot be enforced: the ADD fails and kubelet retries it.
    Unidentified,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Allocated {
        allocation: Allocation,
    },
    Endpoint {
        state: EndpointState,
    },
    Collected {
        released: Vec<Attachment>,
    },
    Status {
        status: AgentStatus,
    },
    Prefilter {
        prefilter: PrefilterStatus,
    },
    /// One flow of a [`Request::Flows`] answer.
    Flow {
        flow: Box<crate::observe::Flow>,
    },
    /// The end of the recorded flows. `recorded`: how
    /// many the agent holds (the newest, up to its history size); what
    /// the datapath could not send is counted in the agent's metrics.
    FlowsEnd {
        recorded: usize,
    },
    Explained {
        explanation: Box<Explanation>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

impl Request {
    pub fn to_line(&self) -> String {
        // Serialising these plain types cannot fail.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

impl Response {
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// Why a call to the agent failed.
#[derive(Debug)]
pub enum CallError {
    /// Nobody listens on the socket (missing, refused, timed out connecting):
    /// the agent is not running or not ready; retry later.
    Unreachable(std::io::Error),
    /// The exchange broke off midway.
    Io(std::io::Error),
    /// The agent answered something that is not a response.
    Decode(serde_json::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(e) => write!(f, "agent unreachable: {e}"),
            Self::Io(e) => write!(f, "talking to the agent: {e}"),
            Self::Decode(e) => write!(f, "undecodable agent response: {e}"),
        }
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unreachable(e) | Self::Io(e) => Some(e),
            Self::Decode(e) => Some(e),
        }
    }
}

/// Longest response line accepted: a GC answer lists released attachments,
/// which stays far below this even for a full node.
const MAX_RESPONSE: u64 = 16 << 20;

/// One request/response exchange with the agent at `socket`, each step
/// bounded by `timeout`.
pub fn call(
    socket: &std::path::Path,
    request: &Request,
    timeout: std::time::Duration,
) -> Result<Response, CallError> {
    use std::io::{BufRead as _, ErrorKind, Read as _, Write as _};
    // connect(2) on a unix socket does not wait for the peer to accept, so
    // it fails at once when the file is missing or nobody listens.
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(CallError::Unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(CallError::Io)?;
    (&stream)
        .write_all(request.to_line().as_bytes())
        .map_err(CallError::Io)?;
    let mut line = String::new();
    std::io::BufReader::new((&stream).take(MAX_RESPONSE))
        .read_line(&mut line)
        .map_err(|e| {
            // A read timeout shows up as WouldBlock on Linux; say what it is.
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                CallError::Io(std::io::Error::new(
                    ErrorKind::TimedOut,
                    format!("no response within {timeout:?}"),
                ))
            } else {
                CallError::Io(e)
            }
        })?;
    if !line.ends_with('\n') {
        return Err(CallError::Io(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "connection closed before a complete response",
        )));
    }
    serde_json::from_str(line.trim_end()).map_err(CallError::Decode)
}

/// A streaming exchange: sends `request`, then hands each response line
/// to `each` until it returns `false`, the agent closes the connection, or
/// (with `idle`) nothing arrives for that long. Connecting and the first
/// write are bounded by `timeout`.
pub fn stream(
    socket: &std::path::Path,
    request: &Request,
    timeout: std::time::Duration,
    idle: Option<std::time::Duration>,
    mut each: impl FnMut(Response) -> bool,
) -> Result<(), CallError> {
    use std::io::{BufRead as _, ErrorKind, Write as _};
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(CallError::Unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .and_then(|()| stream.set_read_timeout(idle))
        .map_err(CallError::Io)?;
    (&stream)
        .write_all(request.to_line().as_bytes())
        .map_err(CallError::Io)?;
    let mut reader = std::io::BufReader::new(&stream);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(())
            }
            Err(e) => return Err(CallError::Io(e)),
        }
        if line.len() as u64 > MAX_RESPONSE {
            return Err(CallError::Io(std::io::Error::new(
                ErrorKind::InvalidData,
                "response line too long",
            )));
        }
        let response = serde_json::from_str(line.trim_end()).map_err(CallError::Decode)?;
        if !each(response) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_as_one_line() {
        let req = Request::Release {
            attachment: Attachment {
                container_id: "abc".into(),
                ifname: "eth0".into(),
            },
        };
        let line = req.to_line();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let back: Request = serde_json::from_str(line.trim_end()).expect("decode");
        assert_eq!(back, req);
    }

    #[test]
    fn error_response_is_tagged() {
        let resp = Response::Error {
            kind: ErrorKind::Exhausted,
            message: "no address".into(),
        };
        let text = resp.to_line();
        assert!(text.contains("\"result\":\"error\""), "{text}");
        assert!(text.contains("\"kind\":\"exhausted\""), "{text}");
    }
}
