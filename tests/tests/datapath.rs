//! Packets between pods, and between the node and pods, through the real
//! eBPF dataplane.

use std::{net::SocketAddr, time::Duration};

use sluice_tests::{probe, require_root, Node, Reason, TIMEOUT};

const PORT: u16 = 7001;

#[test]
fn pods_talk_tcp_udp_icmp_and_host_reaches_pods() {
    require_root!();
    let node = Node::start("dp", "10.91.0.0/24");
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let _sa = probe::EchoServer::start(&a.ns, SocketAddr::new(a.ip, PORT)).expect("server a");
    let _sb = probe::EchoServer::start(&b.ns, SocketAddr::new(b.ip, PORT)).expect("server b");
    let forwarded_before = node.counter(Reason::ForwardLocal);

    for (from, to, label) in [(&a, &b, "a->b"), (&b, &a, "b->a")] {
        let dst = SocketAddr::new(to.ip, PORT);
        assert!(probe::tcp(&from.ns, dst, TIMEOUT), "{label}: TCP");
        assert!(probe::udp(&from.ns, dst, TIMEOUT), "{label}: UDP");
        assert!(probe::icmp(&from.ns, to.ip, TIMEOUT), "{label}: ICMP");
    }
    assert!(
        node.counter(Reason::ForwardLocal) > forwarded_before,
        "pod-to-pod traffic must be redirected by eBPF (forward_local counter)"
    );

    // Host (the node netns, as kubelet probes come from) -> pod and back.
    let dst = SocketAddr::new(a.ip, PORT);
    assert!(probe::tcp(&node.ns, dst, TIMEOUT), "host->pod TCP");
    assert!(probe::udp(&node.ns, dst, TIMEOUT), "host->pod UDP");
    assert!(probe::icmp(&node.ns, a.ip, TIMEOUT), "host->pod ICMP");

    // Pod -> host: the gateway address lives on the node.
    let gateway: std::net::IpAddr = a.result["ips"][0]["gateway"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .expect("gateway in the CNI result");
    let _host_server =
        probe::EchoServer::start(&node.ns, SocketAddr::new(gateway, PORT)).expect("host server");
    assert!(
        probe::tcp(&a.ns, SocketAddr::new(gateway, PORT), TIMEOUT),
        "pod->host TCP"
    );
    assert!(probe::icmp(&a.ns, gateway, TIMEOUT), "pod->host ICMP");
    assert!(
        node.counter(Reason::ToStack) > 0,
        "pod->host goes to the stack"
    );
}

/// Pod-to-pod traffic bypasses the host's routing and netfilter entirely: a
/// FORWARD DROP policy on the node (whose netns also has IP forwarding off)
/// changes nothing.
#[test]
fn pod_to_pod_bypasses_host_netfilter_and_routing() {
    require_root!();
    let node = Node::start("nf", "10.92.0.0/24");
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let _sb = probe::EchoServer::start(&b.ns, SocketAddr::new(b.ip, PORT)).expect("server b");
    let ipt = |args: &[&str]| {
        let status = node
            .ns
            .command("iptables")
            .and_then(|mut c| c.args(args).status())
            .expect("iptables");
        assert!(status.success(), "iptables {args:?}");
    };
    ipt(&["-P", "FORWARD", "DROP"]);
    ipt(&["-I", "FORWARD", "-j", "DROP"]);
    let dst = SocketAddr::new(b.ip, PORT);
    assert!(probe::tcp(&a.ns, dst, TIMEOUT), "TCP with FORWARD DROP");
    assert!(probe::udp(&a.ns, dst, TIMEOUT), "UDP with FORWARD DROP");
    assert!(probe::icmp(&a.ns, b.ip, TIMEOUT), "ICMP with FORWARD DROP");
    let out = node
        .ns
        .command("iptables")
        .and_then(|mut c| c.args(["-L", "FORWARD", "-v", "-n", "-x"]).output())
        .expect("iptables -L");
    let text = String::from_utf8_lossy(&out.stdout);
    let dropped: u64 = text
        .lines()
        .find(|l| l.contains("DROP") && !l.starts_with("Chain"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    assert_eq!(dropped, 0, "no pod packet may reach FORWARD:\n{text}");
}

/// A pod sending from an address that is not its own is dropped and counted.
#[test]
fn spoofed_source_is_dropped_and_counted() {
    require_root!();
    let node = Node::start("sp", "10.93.0.0/24");
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let _sb = probe::EchoServer::start(&b.ns, SocketAddr::new(b.ip, PORT)).expect("server b");
    // A second address inside pod a that the agent never gave it.
    let spoofed = "10.93.0.250";
    let status =
        a.ns.command("ip")
            .and_then(|mut c| {
                c.args(["addr", "add", &format!("{spoofed}/32"), "dev", "eth0"])
                    .status()
            })
            .expect("ip addr add");
    assert!(status.success());
    let before = node.counter(Reason::DropSpoofedSource);
    let status =
        a.ns.command("ping")
            .and_then(|mut c| {
                c.args([
                    "-c",
                    "3",
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    "-I",
                    spoofed,
                    &b.ip.to_string(),
                ])
                .stdout(std::process::Stdio::null())
                .status()
            })
            .expect("ping");
    assert!(!status.success(), "spoofed ping must not be answered");
    assert!(
        node.counter(Reason::DropSpoofedSource) >= before + 3,
        "each spoofed packet is counted"
    );
    // The pod's own address still works.
    assert!(probe::icmp(&a.ns, b.ip, Duration::from_secs(1)));
}

/// A frame too short for its IPv4 header, sent raw from a pod, is dropped
/// and counted as a bad IPv4 header (BPF_PROG_TEST_RUN cannot craft this one).
#[test]
fn truncated_frame_from_a_pod_is_dropped_as_a_bad_ipv4_header() {
    require_root!();
    let node = Node::start("tr", "10.94.0.0/24");
    let a = node.add_pod("a");
    let host_mac: Vec<u8> = a.result["interfaces"][0]["mac"]
        .as_str()
        .expect("host veth MAC in the result")
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect();
    let before = node.counter(Reason::DropBadIpv4Header);
    let sent =
        a.ns.run(move || -> std::io::Result<()> {
            // SAFETY: plain socket calls on a zeroed sockaddr_ll.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_ifindex = ifindex as i32;
                addr.sll_halen = 6;
                let mut frame = host_mac.clone();
                frame.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x00]);
                frame.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6]);
                let n = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                libc::close(fd);
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
        .expect("thread in pod netns");
    sent.expect("sending the raw frame");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(node.counter(Reason::DropBadIpv4Header), before + 1);
}

/// Named namespaces live in a /run/netns that is a shared mount point of
/// its own, as `ip netns add` makes it: a runtime that bind-mounts the
/// directory over itself later (podman does, the first time) would
/// otherwise hide every namespace mounted there before, which then could
/// not be removed by path (this leaked the namespaces of every test
/// running beside the first podman call on a fresh machine).
#[test]
fn named_namespaces_sit_in_a_shared_mount_of_their_own() {
    require_root!();
    let ns = sluice_tests::Netns::create(&sluice_tests::unique("mnt")).expect("netns");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    // Field 5 of a mountinfo line is the mount point.
    let own_mount = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/run/netns"));
    let own_mount =
        own_mount.unwrap_or_else(|| panic!("/run/netns is not a mount point:\n{mountinfo}"));
    assert!(own_mount.contains(" shared:"), "not shared: {own_mount}");
    let path = ns.path().to_owned();
    ns.delete().expect("deleting the netns");
    assert!(!path.exists(), "{} left behind", path.display());
}
