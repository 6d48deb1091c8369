//! The underlay prefilter in a lab: XDP on each node's underlay veth (the
//! lab's fabric), in native mode where asked, generic by default (`auto`
//! on veth); its deny list changed live through
//! `sluice lab prefilter`, kept across an agent restart; VXLAN from a host
//! that is not a node dropped before the tunnel sees it.

use std::net::IpAddr;

use sluice_tests::{probe, require_root, Netns, Reason, TestLab, TIMEOUT};

/// The lab's external host: routed through the fabric, not a node.
const EXT_IP: &str = "203.0.113.10";

fn node_ip(lab: &TestLab, node: &str) -> IpAddr {
    let state = lab.lab().state().clone();
    let node = state
        .nodes
        .iter()
        .find(|n| n.name == node)
        .unwrap_or_else(|| panic!("no {node} in the lab"));
    IpAddr::V4(node.ip)
}

fn agent_pid(lab: &TestLab, node: &str) -> Option<u32> {
    let state = lab.lab().state().clone();
    state
        .nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.agent_pid)
}

/// `ip -d link show eth0` in a node: its underlay with the XDP mode.
fn underlay_link(lab: &TestLab, node: &str) -> String {
    let out = lab
        .node_netns(node)
        .command("ip")
        .and_then(|mut c| c.args(["-d", "link", "show", "eth0"]).output());
    String::from_utf8_lossy(&out.expect("ip link").stdout).into_owned()
}

fn ip(ns: &Netns, args: &str) {
    ns.ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// By default (`auto`) the prefilter runs generic on a veth underlay, where
/// native XDP would take GSO from the peer, and still drops what it must.
#[test]
fn the_default_prefilter_is_generic_on_a_veth_underlay() {
    require_root!();
    let lab = TestLab::up("pfa", 1, "tunnel");
    let list = lab.sluice_ok(&["prefilter", "node1", "list"]);
    assert!(list.contains("attached  eth0 (generic XDP)"), "{list}");
    let link = underlay_link(&lab, "node1");
    assert!(
        link.contains("xdpgeneric"),
        "eth0 of node1 carries generic XDP:\n{link}"
    );
    let ext = lab.lab().ext_netns();
    let node1 = node_ip(&lab, "node1");
    assert!(probe::icmp(&ext, node1, TIMEOUT), "ext reaches node1");
    lab.sluice_ok(&["prefilter", "node1", "add", "203.0.113.0/24"]);
    let before = lab.counter("node1", Reason::DropDeniedSource);
    assert!(
        !probe::icmp(&ext, node1, TIMEOUT),
        "the denied CIDR is dropped"
    );
    assert!(
        lab.counter("node1", Reason::DropDeniedSource) > before,
        "and counted"
    );
}

/// `sluice lab prefilter add` stops traffic from the CIDR to that node at
/// once, and only to it; `delete` lets it in again; no agent restarts for
/// either. The list survives a restart, and the mode is reported.
#[test]
fn prefilter_deny_list_applies_live_and_survives_restarts() {
    require_root!();
    let lab = TestLab::new("pf");
    lab.sluice_ok(&[
        "up",
        "--nodes",
        "2",
        "--routing",
        "tunnel",
        "--prefilter-mode",
        "native",
    ]);
    let ext = lab.lab().ext_netns();
    let (node1, node2) = (node_ip(&lab, "node1"), node_ip(&lab, "node2"));
    assert!(probe::icmp(&ext, node1, TIMEOUT), "ext reaches node1");
    let list = lab.sluice_ok(&["prefilter", "node1", "list"]);
    assert!(
        list.contains("attached  eth0 (native XDP)") && list.contains("denied    nothing"),
        "{list}"
    );
    let link = underlay_link(&lab, "node1");
    assert!(
        link.contains("xdp") && !link.contains("xdpgeneric"),
        "eth0 of node1 carries native XDP:\n{link}"
    );
    let pid = agent_pid(&lab, "node1");

    let bad = lab.sluice(&[
        "prefilter",
        "node1",
        "add",
        "203.0.113.0/24",
        "203.0.113.10/16",
    ]);
    assert!(!bad.status.success(), "a CIDR with host bits is refused");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("203.0.113.10/16 has host bits set; the network is 203.0.0.0/16"),
        "{stderr}"
    );
    let list = lab.sluice_ok(&["prefilter", "node1", "list"]);
    assert!(
        list.contains("denied    nothing"),
        "a refused request changes nothing:\n{list}"
    );

    let before = lab.counter("node1", Reason::DropDeniedSource);
    let added = lab.sluice_ok(&["prefilter", "node1", "add", "203.0.113.0/24"]);
    assert!(added.contains("added     203.0.113.0/24"), "{added}");
    assert!(
        !probe::icmp(&ext, node1, TIMEOUT),
        "{EXT_IP} is denied on node1"
    );
    assert!(probe::icmp(&ext, node2, TIMEOUT), "node2 denies nothing");
    let after = lab.counter("node1", Reason::DropDeniedSource);
    assert!(
        after > before,
        "node1 counted drop_denied_source ({before} -> {after})"
    );
    // The nodes still reach each other (the tunnel, the agents' traffic).
    assert!(probe::icmp(&lab.node_netns("node2"), node1, TIMEOUT));

    let mut handle = lab.lab();
    handle
        .restart_agent("node1")
        .expect("restarting node1's agent");
    let list = lab.sluice_ok(&["prefilter", "node1", "list"]);
    assert!(
        list.contains("added     203.0.113.0/24") && list.contains("(native XDP)"),
        "the list and the link survive a restart:\n{list}"
    );
    assert!(
        !probe::icmp(&ext, node1, TIMEOUT),
        "still denied after the restart"
    );
    let pid = agent_pid(&lab, "node1").filter(|p| Some(*p) != pid);
    assert!(pid.is_some(), "the agent was restarted");

    let err = lab.sluice(&["prefilter", "node1", "delete", "198.18.0.0/15"]);
    assert!(
        !err.status.success(),
        "deleting what is not denied is an error"
    );
    let deleted = lab.sluice_ok(&["prefilter", "node1", "delete", "203.0.113.0/24"]);
    assert!(deleted.contains("denied    nothing"), "{deleted}");
    assert!(probe::icmp(&ext, node1, TIMEOUT), "{EXT_IP} passes again");
    assert_eq!(
        agent_pid(&lab, "node1"),
        pid,
        "no restart for add or delete"
    );
}

/// A host that is not a node sends VXLAN to node1 (claiming to carry a pod
/// of node2): the prefilter drops it on the underlay, so the tunnel never
/// sees it (the overlay's own source check is not reached).
#[test]
fn prefilter_drops_vxlan_from_hosts_that_are_not_nodes() {
    require_root!();
    let lab = TestLab::up("pv", 2, "tunnel");
    let victim = lab.pod_add("x/a", "node1");
    let ext = lab.lab().ext_netns();
    let node1 = node_ip(&lab, "node1");
    ip(
        &ext,
        &format!("link add vxspoof type vxlan id 0 remote {node1} dstport 4789 dev eth0"),
    );
    ip(&ext, "addr add 10.244.2.250/16 dev vxspoof");
    ip(&ext, "link set vxspoof up");
    ip(
        &ext,
        &format!(
            "neigh add {} lladdr 02:00:00:00:00:01 dev vxspoof nud permanent",
            victim.ip
        ),
    );
    let before = lab.counter("node1", Reason::DropVxlanNotFromNode);
    let tunnel_before = lab.counter("node1", Reason::DropTunnelSource);
    assert!(
        !probe::icmp(&ext, victim.ip, TIMEOUT),
        "spoofed VXLAN got through"
    );
    let after = lab.counter("node1", Reason::DropVxlanNotFromNode);
    assert!(
        after > before,
        "node1 did not count drop_vxlan_not_from_node ({before} -> {after})\n{}",
        lab.agent_logs()
    );
    assert_eq!(
        lab.counter("node1", Reason::DropTunnelSource),
        tunnel_before,
        "the packet reached the tunnel"
    );
}
