//! The agent's request handling: IPAM, endpoint registry and what to ask of
//! the datapath. Kernel I/O sits behind [`Datapath`], so this logic is
//! unit-tested with a fake and runs against the kernel in the namespace
//! tests.

pub mod ipam;
pub mod state_file;

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::Ipv4Net;
use sluice_common::{
    api::{
        AgentStatus, Allocation, Attachment, EndpointSpec, EndpointState, ErrorKind, PodRef,
        Request, Response,
    },
    endpoint::EndpointInfo,
};
use tracing::{info, warn};

use crate::{
    endpoints::ipam::{Ipam, IpamError},
    endpoints::state_file::{Entry, Snapshot, StateError, StateFile},
};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("eBPF: {0}")]
    Bpf(String),
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("interface {0} not found")]
    NoSuchLink(String),
}

/// What the agent needs from the kernel for one endpoint.
#[allow(async_fn_in_trait)]
pub trait Datapath {
    /// Make the endpoint reachable: map entry, program on its veth, host route.
    async fn install(
        &mut self,
        ep: &EndpointSpec,
        info: &EndpointInfo,
    ) -> Result<(), DatapathError>;
    /// Undo `install`; succeeds when parts are already gone.
    async fn remove(&mut self, ep: &EndpointSpec) -> Result<(), DatapathError>;
    /// Delete a host-side veth (CNI GC of a pod whose DEL never came).
    async fn delete_link(&mut self, ifname: &str) -> Result<(), DatapathError>;
    /// Whether a host-side veth of that name exists.
    async fn link_exists(&mut self, ifname: &str) -> Result<bool, DatapathError>;
    /// Removes every endpoint map entry, pod program and pod route (in
    /// `pod_cidr`) that belongs to none of `keep`.
    async fn sweep(
        &mut self,
        keep: &[EndpointSpec],
        pod_cidr: Ipv4Net,
    ) -> Result<Swept, DatapathError>;
}

/// What [`Datapath::sweep`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub map_entries: usize,
    pub links: usize,
    pub routes: usize,
}

impl Swept {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("state file is for pod CIDR {stored}, but the agent runs with {configured}; remove the state dir only after every pod of this node is gone")]
    CidrChanged {
        stored: Ipv4Net,
        configured: Ipv4Net,
    },
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub pod_cidr: Ipv4Net,
    /// Pods' MTU off the node.
    pub mtu: u32,
    /// Pods' device MTU, where more than `mtu` (see [`Allocation`]).
    pub local_mtu: Option<u32>,
}

pub struct Agent<D> {
    config: AgentConfig,
    ipam: Ipam,
    endpoints: BTreeMap<Attachment, EndpointSpec>,
    state: StateFile,
    datapath: D,
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

/// CNI container ids and interface names end up in file names and netlink
/// names; refuse anything odd instead of guessing.
fn validate_attachment(att: &Attachment) -> Result<(), String> {
    let id_ok = !att.container_id.is_empty()
        && att.container_id.len() <= 256
        && att
            .container_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !id_ok {
        return Err(format!(
            "invalid container id {:?}: want 1-256 characters of [A-Za-z0-9_.-]",
            att.container_id
        ));
    }
    let if_ok = !att.ifname.is_empty()
        && att.ifname.len() <= 15
        && att.ifname != "."
        && att.ifname != ".."
        && !att
            .ifname
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
    if !if_ok {
        return Err(format!("invalid interface name {:?}", att.ifname));
    }
    Ok(())
}

impl<D: Datapath> Agent<D> {
    /// Opens the agent over its persisted state and re-installs every
    /// registered endpoint (idempotently: maps and links survive restarts).
    pub async fn start(
        config: AgentConfig,
        state: StateFile,
        datapath: D,
    ) -> Result<Self, AgentError> {
        let mut ipam = Ipam::new(config.pod_cidr)?;
        let mut endpoints = BTreeMap::new();
        if let Some(snapshot) = state.load()? {
            if snapshot.pod_cidr != ipam.cidr() {
                return Err(AgentError::CidrChanged {
                    stored: snapshot.pod_cidr,
                    configured: ipam.cidr(),
                });
            }
            for entry in snapshot.entries {
                if !ipam.restore(entry.attachment.clone(), entry.ip) {
                    warn!(attachment = ?entry.attachment, ip = %entry.ip, "dropping conflicting entry from state file");
                    continue;
                }
                if let Some(ep) = entry.endpoint {
                    endpoints.insert(entry.attachment, ep);
                }
            }
            ipam.set_cursor(snapshot.cursor);
        }
        let mut agent = Self {
            config,
            ipam,
            endpoints,
            state,
            datapath,
        };
        agent.reinstall().await;
        Ok(agent)
    }

    async fn reinstall(&mut self) {
        let eps: Vec<EndpointSpec> = self.endpoints.values().cloned().collect();
        for ep in eps {
            let info = self.endpoint_info(&ep);
            match self.datapath.install(&ep, &info).await {
                Ok(()) => info!(attachment = ?ep.attachment, ip = %ep.ip, "endpoint restored"),
                // The pod may have gone while the agent was down; its CNI DEL
                // (or GC) still releases it.
                Err(e) => warn!(attachment = ?ep.attachment, error = %e, "cannot restore endpoint"),
            }
        }
    }

    pub fn datapath(&self) -> &D {
        &self.datapath
    }

    pub fn datapath_mut(&mut self) -> &mut D {
        &mut self.datapath
    }

    pub fn gateway(&self) -> std::net::Ipv4Addr {
        self.ipam.gateway()
    }

    fn snapshot(&self) -> Snapshot {
        let entries = self
            .ipam
            .iter()
            .map(|(attachment, ip)| Entry {
                endpoint: self.endpoints.get(attachment).cloned(),
                attachment: attachment.clone(),
                ip,
            })
            .collect();
        Snapshot::new(self.ipam.cidr(), self.ipam.cursor(), entries)
    }

    fn persist(&self) -> Result<(), StateError> {
        self.state.save(&self.snapshot())
    }

    /// The registered pods of this node: IPv4 address → endpoint id (what
    /// policy keys name).
    pub fn local_endpoints(&self) -> BTreeMap<std::net::Ipv4Addr, u32> {
        self.endpoints
            .values()
            .filter_map(|ep| match ep.ip {
                IpAddr::V4(v4) => Some((v4, self.endpoint_info(ep).id)),
                IpAddr::V6(_) => None,
            })
            .collect()
    }

    /// The Pods the registered endpoints were wired for, by address (see
    /// [`crate::policy::LocalPods`]).
    pub fn local_pods(&self) -> BTreeMap<std::net::Ipv4Addr, PodRef> {
        self.endpoints
            .values()
            .filter_map(|ep| match (ep.ip, &ep.pod) {
                (IpAddr::V4(v4), Some(pod)) => Some((v4, pod.clone())),
                _ => None,
            })
            .collect()
    }

    fn endpoint_info(&self, ep: &EndpointSpec) -> EndpointInfo {
        let id = match ep.ip {
            IpAddr::V4(v4) => u32::from(v4) - u32::from(self.ipam.cidr().network()),
            IpAddr::V6(_) => 0,
        };
        EndpointInfo {
            id,
            ifindex: ep.host_ifindex,
            pod_mac: ep.pod_mac,
            host_mac: ep.host_mac,
        }
    }

    fn allocation(&self, ip: std::net::Ipv4Addr) -> Allocation {
        Allocation {
            ip: IpAddr::V4(ip),
            cidr_prefix_len: self.ipam.cidr().prefix_len(),
            gateway: IpAddr::V4(self.ipam.gateway()),
            mtu: self.config.mtu,
            local_mtu: self.config.local_mtu,
        }
    }

    pub async fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::Allocate { attachment } => self.allocate(attachment),
            Request::Register { endpoint } => self.register(endpoint).await,
            Request::Release { attachment } => self.release(&attachment).await,
            Request::Get { attachment } => self.get(&attachment),
            Request::Gc { valid } => self.gc(valid).await,
            Request::Status => Response::Status {
                status: AgentStatus {
                    node_name: self.config.node_name.clone(),
                    pod_cidr: self.config.pod_cidr.to_string(),
                    endpoints: self.endpoints.len(),
                    free_addresses: self.ipam.free(),
                    // The node's part is the main loop's (cni_api).
                    node: Default::default(),
                },
            },
            // The node's prefilter, not an endpoint's: the API server
            // answers it (the main loop).
            Request::Prefilter { .. } => error(
                ErrorKind::Invalid,
                "the prefilter is not the endpoint registry's",
            ),
            // Policy is the reconciler's (the main loop answers it).
            Request::Explain { .. } => {
                error(ErrorKind::Invalid, "policy is not the endpoint registry's")
            }
            // Flows are the flow hub's (the main loop hands them over).
            Request::Flows { .. } => {
                error(ErrorKind::Invalid, "flows are not the endpoint registry's")
            }
        }
    }

    fn allocate(&mut self, attachment: Attachment) -> Response {
        if let Err(msg) = validate_attachment(&attachment) {
            return error(ErrorKind::Invalid, msg);
        }
        let known = self.ipam.get(&attachment).is_some();
        let ip = match self.ipam.allocate(&attachment) {
            Ok(ip) => ip,
            Err(e @ IpamError::Exhausted(_)) => return error(ErrorKind::Exhausted, e.to_string()),
            Err(e) => return error(ErrorKind::Internal, e.to_string()),
        };
        // Durable before the address is handed out.
        if let Err(e) = self.persist() {
            if !known {
                self.ipam.release(&attachment);
            }
            return error(ErrorKind::Internal, e.to_string());
        }
        info!(?attachment, %ip, "address allocated");
        Response::Allocated {
            allocation: self.allocation(ip),
        }
    }

    async fn register(&mut self, ep: EndpointSpec) -> Response {
        let attachment = ep.attachment.clone();
        if let Err(response) = self.admit(ep).await {
            return response;
        }
        self.activate(&attachment).await
    }

    /// First half of a registration: the endpoint is recorded (durably,
    /// so a crash from here on leaves nothing the next start does not
    /// know) and counts among [`Self::local_endpoints`], so policy can
    /// isolate it before [`Self::activate`] makes it reachable. Returns the
    /// answer to send instead when it is refused.
    pub async fn admit(&mut self, ep: EndpointSpec) -> Result<(), Response> {
        if let Err(msg) = validate_attachment(&ep.attachment) {
            return Err(error(ErrorKind::Invalid, msg));
        }
        let Some(ip) = self.ipam.get(&ep.attachment) else {
            return Err(error(
                ErrorKind::NotFound,
                format!("no address allocated for {}", ep.attachment),
            ));
        };
        if ep.ip != IpAddr::V4(ip) {
            return Err(error(
                ErrorKind::Invalid,
                format!("{} was allocated {ip}, not {}", ep.attachment, ep.ip),
            ));
        }
        // A retried ADD may have rewired the pod under a new ifindex.
        if let Some(old) = self.endpoints.remove(&ep.attachment) {
            if let Err(e) = self.datapath.remove(&old).await {
                warn!(attachment = ?old.attachment, error = %e, "removing the previous registration");
            }
        }
        self.endpoints.insert(ep.attachment.clone(), ep.clone());
        if let Err(e) = self.persist() {
            self.endpoints.remove(&ep.attachment);
            return Err(error(ErrorKind::Internal, e.to_string()));
        }
        Ok(())
    }

    /// Second half of a registration: map entry, programs and route. On
    /// failure the admission is undone as well.
    pub async fn activate(&mut self, attachment: &Attachment) -> Response {
        let Some(ep) = self.endpoints.get(attachment).cloned() else {
            return error(ErrorKind::NotFound, format!("{attachment} is not admitted"));
        };
        let info = self.endpoint_info(&ep);
        if let Err(e) = self.datapath.install(&ep, &info).await {
            self.abandon(attachment).await;
            return error(
                ErrorKind::Internal,
                format!("programming the datapath: {e}"),
            );
        }
        info!(attachment = ?ep.attachment, ip = %ep.ip, ifname = %ep.host_ifname, "endpoint registered");
        Response::Ok
    }

    /// Undoes a registration but keeps the address: the plugin's rollback
    /// (or kubelet's DEL) releases it.
    pub async fn abandon(&mut self, attachment: &Attachment) {
        let Some(ep) = self.endpoints.remove(attachment) else {
            return;
        };
        if let Err(undo) = self.datapath.remove(&ep).await {
            warn!(?attachment, error = %undo, "rolling back a registration");
        }
        if let Err(e) = self.persist() {
            // The next start reinstalls it; its DEL or the reclaim removes it.
            warn!(?attachment, error = %e, "recording a rolled-back registration");
        }
    }

    /// Whether the attachment is registered (admitted, at least).
    pub fn is_registered(&self, attachment: &Attachment) -> bool {
        self.endpoints.contains_key(attachment)
    }

    /// Removes what the kernel holds for endpoints the agent does not
    /// know: map entries, programs and routes left by a crash between
    /// steps, or by an agent whose state was lost. Returns what went.
    pub async fn sweep(&mut self) -> Swept {
        let keep: Vec<EndpointSpec> = self.endpoints.values().cloned().collect();
        match self.datapath.sweep(&keep, self.ipam.cidr()).await {
            Ok(swept) => {
                if !swept.is_empty() {
                    info!(
                        ?swept,
                        "removed leftovers of endpoints no longer registered"
                    );
                }
                swept
            }
            Err(e) => {
                warn!(error = %e, "sweeping leftovers of endpoints");
                Swept::default()
            }
        }
    }

    async fn release(&mut self, attachment: &Attachment) -> Response {
        if let Some(ep) = self.endpoints.get(attachment).cloned() {
            if let Err(e) = self.datapath.remove(&ep).await {
                return error(ErrorKind::Internal, format!("removing endpoint: {e}"));
            }
            self.endpoints.remove(attachment);
        }
        let freed = self.ipam.release(attachment);
        if let Err(e) = self.persist() {
            return error(ErrorKind::Internal, e.to_string());
        }
        if let Some(ip) = freed {
            info!(?attachment, %ip, "released");
        }
        Response::Ok
    }

    fn get(&self, attachment: &Attachment) -> Response {
        match self.ipam.get(attachment) {
            Some(ip) => Response::Endpoint {
                state: EndpointState {
                    allocation: self.allocation(ip),
                    endpoint: self.endpoints.get(attachment).cloned(),
                },
            },
            None => error(
                ErrorKind::NotFound,
                format!("nothing known about {attachment}"),
            ),
        }
    }

    /// Releases the endpoints whose host veth is gone: their pod went
    /// while its DEL could not reach the agent, or without any DEL (a
    /// runtime that never sends GC, such as containerd 1.6). A veth goes
    /// with its pod's namespace, so a missing one is a pod that is no
    /// more. Allocations not yet registered (an ADD in progress) are left
    /// alone, and so is every endpoint the kernel cannot be asked about.
    /// Returns the attachments released.
    pub async fn reclaim(&mut self) -> Vec<Attachment> {
        let registered: Vec<(Attachment, String)> = self
            .endpoints
            .iter()
            .map(|(a, ep)| (a.clone(), ep.host_ifname.clone()))
            .collect();
        let mut released = Vec::new();
        for (attachment, ifname) in registered {
            match self.datapath.link_exists(&ifname).await {
                Ok(false) => {}
                Ok(true) => continue,
                Err(e) => {
                    warn!(?attachment, %ifname, error = %e, "reclaim: cannot tell whether the veth exists");
                    continue;
                }
            }
            match self.release(&attachment).await {
                Response::Ok => {
                    info!(?attachment, %ifname, "reclaimed: the pod's veth is gone");
                    released.push(attachment);
                }
                other => warn!(?attachment, answer = ?other, "reclaim: releasing"),
            }
        }
        released
    }

    async fn gc(&mut self, valid: Vec<Attachment>) -> Response {
        let valid: std::collections::BTreeSet<Attachment> = valid.into_iter().collect();
        let stale: Vec<Attachment> = self
            .ipam
            .iter()
            .map(|(a, _)| a.clone())
            .filter(|a| !valid.contains(a))
            .collect();
        let mut released = Vec::new();
        for attachment in stale {
            if let Some(ep) = self.endpoints.get(&attachment) {
                let ifname = ep.host_ifname.clone();
                if let Err(e) = self.datapath.delete_link(&ifname).await {
                    warn!(?attachment, %ifname, error = %e, "GC: deleting veth");
                }
            }
            match self.release(&attachment).await {
                Response::Ok => released.push(attachment),
                other => return other,
            }
        }
        Response::Collected { released }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// Records what the agent asked of the kernel; can be told to fail.
    #[derive(Default)]
    struct FakeDatapath {
        calls: Vec<String>,
        fail_install: bool,
        /// Host veths that no longer exist.
        gone: std::collections::BTreeSet<String>,
    }

    impl Datapath for FakeDatapath {
        async fn install(
            &mut self,
            ep: &EndpointSpec,
            info: &EndpointInfo,
        ) -> Result<(), DatapathError> {
            self.calls.push(format!(
                "install {} {} id={}",
                ep.host_ifname, ep.ip, info.id
            ));
            if self.fail_install {
                return Err(DatapathError::NoSuchLink(ep.host_ifname.clone()));
            }
            Ok(())
        }

        async fn remove(&mut self, ep: &EndpointSpec) -> Result<(), DatapathError> {
            self.calls.push(format!("remove {}", ep.host_ifname));
            Ok(())
        }

        async fn delete_link(&mut self, ifname: &str) -> Result<(), DatapathError> {
            self.calls.push(format!("delete_link {ifname}"));
            Ok(())
        }

        async fn link_exists(&mut self, ifname: &str) -> Result<bool, DatapathError> {
            Ok(!self.gone.contains(ifname))
        }

        async fn sweep(
            &mut self,
            keep: &[EndpointSpec],
            _pod_cidr: Ipv4Net,
        ) -> Result<Swept, DatapathError> {
            let names: Vec<&str> = keep.iter().map(|ep| ep.host_ifname.as_str()).collect();
            self.calls
                .push(format!("sweep keeping {}", names.join(",")));
            Ok(Swept::default())
        }
    }

    fn config() -> AgentConfig {
        AgentConfig {
            node_name: "n1".into(),
            pod_cidr: "10.9.0.0/29".parse().expect("cidr"),
            mtu: 1450,
            local_mtu: Some(1500),
        }
    }

    fn att(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn spec(id: &str, ip: IpAddr) -> EndpointSpec {
        EndpointSpec {
            attachment: att(id),
            netns: format!("/run/netns/{id}"),
            host_ifname: format!("lxc{id}"),
            host_ifindex: 7,
            host_mac: [2, 0, 0, 0, 0, 1],
            pod_mac: [2, 0, 0, 0, 0, 2],
            ip,
            pod: None,
        }
    }

    async fn agent(dir: &std::path::Path, datapath: FakeDatapath) -> Agent<FakeDatapath> {
        Agent::start(config(), StateFile::new(dir), datapath)
            .await
            .expect("agent")
    }

    async fn allocate(agent: &mut Agent<FakeDatapath>, id: &str) -> Allocation {
        match agent
            .handle(Request::Allocate {
                attachment: att(id),
            })
            .await
        {
            Response::Allocated { allocation } => allocation,
            other => panic!("allocate {id}: {other:?}"),
        }
    }

    async fn register(agent: &mut Agent<FakeDatapath>, id: &str, ip: IpAddr) {
        let resp = agent
            .handle(Request::Register {
                endpoint: spec(id, ip),
            })
            .await;
        assert_eq!(resp, Response::Ok, "register {id}");
    }

    fn error_kind(response: Response) -> ErrorKind {
        match response {
            Response::Error { kind, .. } => kind,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn allocation_carries_gateway_and_mtu() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut agent = agent(dir.path(), FakeDatapath::default()).await;
        let a = allocate(&mut agent, "a").await;
        assert_eq!(a.ip, IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2)));
        assert_eq!(a.gateway, IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)));
        assert_eq!(
            (a.mtu, a.local_mtu, a.cidr_prefix_len),
            (1450, Some(1500), 29)
        );
        assert_eq!(allocate(&mut agent, "a").await, a, "idempotent");
    }

    #[tokio::test]
    async fn register_and_release_drive_the_datapath() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut agent = agent(dir.path(), FakeDatapath::default()).await;
        let a = allocate(&mut agent, "a").await;
        register(&mut agent, "a", a.ip).await;
        assert_eq!(agent.datapath().calls, vec!["install lxca 10.9.0.2 id=2"]);
        match agent
            .handle(Request::Get {
                attachment: att("a"),
            })
            .await
        {
            Response::Endpoint { state } => assert!(state.endpoint.is_some()),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            agent
                .handle(Request::Release {
                    attachment: att("a")
                })
                .await,
            Response::Ok
        );
        assert_eq!(
            agent.datapath().calls.last().map(String::as_str),
            Some("remove lxca")
        );
        // Released twice, or never known: still fine (DEL is idempotent).
        assert_eq!(
            agent
                .handle(Request::Release {
                    attachment: att("a")
                })
                .await,
            Response::Ok
        );
        assert_eq!(
            error_kind(
                agent
                    .handle(Request::Get {
                        attachment: att("a")
                    })
                    .await
            ),
            ErrorKind::NotFound
        );
    }

    #[tokio::test]
    async fn register_is_checked_against_the_allocation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut agent = agent(dir.path(), FakeDatapath::default()).await;
        let unknown = spec("x", IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2)));
        assert_eq!(
            error_kind(agent.handle(Request::Register { endpoint: unknown }).await),
            ErrorKind::NotFound
        );
        allocate(&mut agent, "a").await;
        let wrong_ip = spec("a", IpAddr::V4(Ipv4Addr::new(10, 9, 0, 6)));
        assert_eq!(
            error_kind(agent.handle(Request::Register { endpoint: wrong_ip }).await),
            ErrorKind::Invalid
        );
        assert!(agent.datapath().calls.is_empty(), "nothing installed");
    }

    #[tokio::test]
    async fn failed_install_is_rolled_back_and_not_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = FakeDatapath {
            fail_install: true,
            ..FakeDatapath::default()
        };
        let mut agent = agent(dir.path(), fake).await;
        let a = allocate(&mut agent, "a").await;
        let resp = agent
            .handle(Request::Register {
                endpoint: spec("a", a.ip),
            })
            .await;
        assert_eq!(error_kind(resp), ErrorKind::Internal);
        assert_eq!(
            agent.datapath().calls,
            vec!["install lxca 10.9.0.2 id=2", "remove lxca"]
        );
        match agent
            .handle(Request::Get {
                attachment: att("a"),
            })
            .await
        {
            Response::Endpoint { state } => assert_eq!(state.endpoint, None),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_admitted_endpoint_is_durable_before_it_is_installed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut agent = agent(dir.path(), FakeDatapath::default()).await;
        let a = allocate(&mut agent, "a").await;
        agent.admit(spec("a", a.ip)).await.expect("admitted");
        assert!(agent.datapath().calls.is_empty(), "nothing installed yet");
        assert_eq!(agent.local_endpoints().len(), 1, "policy can see it");
        // The agent dies here; the next one knows the endpoint, reinstalls
        // it, and keeps it through the sweep.
        drop(agent);
        let mut restarted = self::agent(dir.path(), FakeDatapath::default()).await;
        assert_eq!(
            restarted.datapath().calls,
            vec!["install lxca 10.9.0.2 id=2"]
        );
        assert!(restarted.sweep().await.is_empty());
        assert_eq!(
            restarted.datapath().calls.last().map(String::as_str),
            Some("sweep keeping lxca")
        );
        // Abandoned (its ADD failed): gone from the datapath and the state,
        // the address kept for the plugin's release.
        restarted.abandon(&att("a")).await;
        assert!(restarted.local_endpoints().is_empty());
        assert_eq!(
            restarted.datapath().calls.last().map(String::as_str),
            Some("remove lxca")
        );
        drop(restarted);
        let again = self::agent(dir.path(), FakeDatapath::default()).await;
        assert!(again.datapath().calls.is_empty());
        assert!(again.ipam.get(&att("a")).is_some());
    }

    #[tokio::test]
    async fn exhaustion_and_bad_names_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut agent = agent(dir.path(), FakeDatapath::default()).await;
        for i in 0..5 {
            allocate(&mut agent, &format!("c{i}")).await;
        }
        let resp = agent
            .handle(Request::Allocate {
                attachment: att("full"),
            })
            .await;
        assert_eq!(error_kind(resp), ErrorKind::Exhausted);
        for bad in ["", "a/b", "../x", "a b"] {
            let resp = agent
                .handle(Request::Allocate {
                    attachment: att(bad),
                })
                .await;
            assert_eq!(error_kind(resp), ErrorKind::Invalid, "container id {bad:?}");
        }
        let long_if = Attachment {
            container_id: "c".into(),
            ifname: "a-very-long-interface".into(),
        };
        let resp = agent
            .handle(Request::Allocate {
                attachment: long_if,
            })
            .await;
        assert_eq!(error_kind(resp), ErrorKind::Invalid);
    }

    #[tokio::test]
    async fn restart_restores_state_and_reinstalls_endpoints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = agent(dir.path(), FakeDatapath::default()).await;
        let a = allocate(&mut first, "a").await;
        register(&mut first, "a", a.ip).await;
        let b = allocate(&mut first, "b").await;
        drop(first);

        let mut second = agent(dir.path(), FakeDatapath::default()).await;
        assert_eq!(
            second.datapath().calls,
            vec!["install lxca 10.9.0.2 id=2"],
            "registered endpoint reinstalled"
        );
        assert_eq!(allocate(&mut second, "a").await, a);
        assert_eq!(allocate(&mut second, "b").await, b);
        let c = allocate(&mut second, "c").await;
        assert!(c.ip != a.ip && c.ip != b.ip, "never the same address twice");
    }

    #[tokio::test]
    async fn changed_pod_cidr_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = agent(dir.path(), FakeDatapath::default()).await;
        allocate(&mut first, "a").await;
        drop(first);
        let mut other = config();
        other.pod_cidr = "10.10.0.0/24".parse().expect("cidr");
        let result = Agent::start(other, StateFile::new(dir.path()), FakeDatapath::default()).await;
        assert!(matches!(result, Err(AgentError::CidrChanged { .. })));
    }

    #[tokio::test]
    async fn reclaim_releases_only_registered_endpoints_whose_veth_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut agent = agent(dir.path(), FakeDatapath::default()).await;
        let a = allocate(&mut agent, "a").await;
        let b = allocate(&mut agent, "b").await;
        allocate(&mut agent, "pending").await;
        register(&mut agent, "a", a.ip).await;
        register(&mut agent, "b", b.ip).await;
        assert!(agent.reclaim().await.is_empty(), "every veth is there");
        agent.datapath_mut().gone.insert("lxcb".into());
        // An ADD in progress has no veth registered yet: it stays.
        agent.datapath_mut().gone.insert("lxcpending".into());
        assert_eq!(agent.reclaim().await, vec![att("b")]);
        assert!(matches!(
            agent
                .handle(Request::Get {
                    attachment: att("b")
                })
                .await,
            Response::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ));
        assert!(matches!(
            agent
                .handle(Request::Get {
                    attachment: att("pending")
                })
                .await,
            Response::Endpoint { .. }
        ));
        // What a restarted agent reads back has forgotten it too.
        drop(agent);
        let mut again = Agent::start(
            config(),
            StateFile::new(dir.path()),
            FakeDatapath::default(),
        )
        .await
        .expect("restart");
        assert!(matches!(
            again
                .handle(Request::Get {
                    attachment: att("b")
                })
                .await,
            Response::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn gc_releases_everything_not_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut agent = agent(dir.path(), FakeDatapath::default()).await;
        let a = allocate(&mut agent, "a").await;
        let b = allocate(&mut agent, "b").await;
        allocate(&mut agent, "pending").await;
        register(&mut agent, "a", a.ip).await;
        register(&mut agent, "b", b.ip).await;
        let resp = agent
            .handle(Request::Gc {
                valid: vec![att("a")],
            })
            .await;
        assert_eq!(
            resp,
            Response::Collected {
                released: vec![att("b"), att("pending")]
            }
        );
        assert!(agent
            .datapath()
            .calls
            .contains(&"delete_link lxcb".to_string()));
        match agent.handle(Request::Status).await {
            Response::Status { status } => {
                assert_eq!(status.endpoints, 1);
                assert_eq!(status.free_addresses, 4);
            }
            other => panic!("{other:?}"),
        }
    }
}
