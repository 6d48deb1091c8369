//! Why a packet was forwarded or dropped: one number per cause, shared by
//! the programs (which count by it) and user space (which names it in
//! metrics, `sluice counters` and, later, flow events).
//!
//! Numbers are stable: a number is never reused for another meaning, so a
//! counter or an event keeps its meaning across versions. Retired numbers:
//! 3 (`drop_malformed`, split into the header reasons), 5
//! (`drop_redirect_failed`, split by path), 8 (`drop_no_tunnel_key`, which
//! also meant "setting the key failed").

/// Every cause the dataplane counts a packet under.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Delivered straight to a pod on this node (bpf_redirect_peer).
    ForwardLocal = 0,
    /// Handed to the host stack (pod → host, outside the cluster, ARP,
    /// expiring TTL, no direct route).
    ToStack = 1,
    /// The source address is not the sending pod's own.
    DropSpoofedSource = 2,
    /// An L3 protocol the dataplane does not carry (yet): IPv6 and others.
    DropUnsupportedL3 = 4,
    /// Sent to another node through the VXLAN tunnel.
    ForwardTunnel = 6,
    /// Sent to another node over the routed underlay.
    ForwardNative = 7,
    /// A tunnelled packet whose inner source does not belong to the node
    /// that sent it.
    DropTunnelSource = 9,
    /// The host routed a packet into the tunnel for an address no node
    /// owns.
    DropNoTunnelEndpoint = 10,
    /// The destination's ingress policy does not allow the flow.
    DropPolicyIngress = 11,
    /// The source's egress policy does not allow the flow.
    DropPolicyEgress = 12,
    /// Delivered to a pod by the host stack: the node's own traffic,
    /// traffic routed in from outside, replies of masqueraded flows.
    FromStack = 13,
    /// A frame shorter than an Ethernet header.
    DropShortFrame = 14,
    /// An IPv4 header that is not one: wrong version, header length below
    /// 20 bytes, total length beyond the frame or below the header.
    DropBadIpv4Header = 15,
    /// A first fragment whose TCP, UDP, SCTP or ICMP header is cut short,
    /// or a TCP header whose data offset is out of range.
    DropTruncatedL4 = 16,
    /// Rewriting the packet (TTL and checksum, MAC addresses) failed.
    DropRewriteFailed = 17,
    /// Marking a tunnelled packet as addressed to this host failed.
    DropPacketTypeFailed = 18,
    /// Redirecting into a local pod failed.
    DropLocalRedirectFailed = 19,
    /// Redirecting to the VXLAN device failed.
    DropTunnelRedirectFailed = 20,
    /// Redirecting to the underlay's next hop failed.
    DropNativeRedirectFailed = 21,
    /// A packet on the VXLAN device without tunnel metadata.
    DropNoTunnelKey = 22,
    /// Setting the tunnel key (the destination node) failed.
    DropSetTunnelKeyFailed = 23,
    /// A client from outside the cluster reached an external Service
    /// frontend under `externalTrafficPolicy: Local` on a node without a
    /// ready endpoint of the Service (there are some elsewhere).
    DropNoLocalBackend = 24,
    /// A later IPv4 fragment (offset above zero) of a datagram whose first
    /// fragment this node did not see (lost, reordered, expired): without
    /// its ports no policy can decide it.
    DropFragmentUntracked = 25,
    /// A later IPv4 fragment whose offset lies inside the L4 header's
    /// minimum length (TCP's 20 bytes, SCTP's 12): it would rewrite the
    /// header policy judged the first fragment by (RFC 1858).
    DropFragmentOverlap = 26,
    /// The source address is in the operator's prefilter deny list
    /// (`prefilter.denyCIDRs`, `sluice prefilter`): dropped by XDP on the
    /// underlay before the kernel allocated anything for it.
    DropDeniedSource = 27,
    /// A VXLAN packet (to the node's VXLAN port, tunnel routing) from an
    /// address that is no node of the cluster: dropped by the prefilter.
    DropVxlanNotFromNode = 28,
}

impl Reason {
    /// Every reason, in number order.
    pub const ALL: [Reason; 26] = [
        Reason::ForwardLocal,
        Reason::ToStack,
        Reason::DropSpoofedSource,
        Reason::DropUnsupportedL3,
        Reason::ForwardTunnel,
        Reason::ForwardNative,
        Reason::DropTunnelSource,
        Reason::DropNoTunnelEndpoint,
        Reason::DropPolicyIngress,
        Reason::DropPolicyEgress,
        Reason::FromStack,
        Reason::DropShortFrame,
        Reason::DropBadIpv4Header,
        Reason::DropTruncatedL4,
        Reason::DropRewriteFailed,
        Reason::DropPacketTypeFailed,
        Reason::DropLocalRedirectFailed,
        Reason::DropTunnelRedirectFailed,
        Reason::DropNativeRedirectFailed,
        Reason::DropNoTunnelKey,
        Reason::DropSetTunnelKeyFailed,
        Reason::DropNoLocalBackend,
        Reason::DropFragmentUntracked,
        Reason::DropFragmentOverlap,
        Reason::DropDeniedSource,
        Reason::DropVxlanNotFromNode,
    ];

    /// Label in metrics and output.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::ForwardLocal => "forward_local",
            Reason::ToStack => "to_stack",
            Reason::DropSpoofedSource => "drop_spoofed_source",
            Reason::DropUnsupportedL3 => "drop_unsupported_l3",
            Reason::ForwardTunnel => "forward_tunnel",
            Reason::ForwardNative => "forward_native",
            Reason::DropTunnelSource => "drop_tunnel_source",
            Reason::DropNoTunnelEndpoint => "drop_no_tunnel_endpoint",
            Reason::DropPolicyIngress => "drop_policy_ingress",
            Reason::DropPolicyEgress => "drop_policy_egress",
            Reason::FromStack => "from_stack",
            Reason::DropShortFrame => "drop_short_frame",
            Reason::DropBadIpv4Header => "drop_bad_ipv4_header",
            Reason::DropTruncatedL4 => "drop_truncated_l4",
            Reason::DropRewriteFailed => "drop_rewrite_failed",
            Reason::DropPacketTypeFailed => "drop_packet_type_failed",
            Reason::DropLocalRedirectFailed => "drop_local_redirect_failed",
            Reason::DropTunnelRedirectFailed => "drop_tunnel_redirect_failed",
            Reason::DropNativeRedirectFailed => "drop_native_redirect_failed",
            Reason::DropNoTunnelKey => "drop_no_tunnel_key",
            Reason::DropSetTunnelKeyFailed => "drop_set_tunnel_key_failed",
            Reason::DropNoLocalBackend => "drop_no_local_backend",
            Reason::DropFragmentUntracked => "drop_fragment_untracked",
            Reason::DropFragmentOverlap => "drop_fragment_overlap",
            Reason::DropDeniedSource => "drop_denied_source",
            Reason::DropVxlanNotFromNode => "drop_vxlan_not_from_node",
        }
    }

    /// Whether the packet was dropped (the rest were forwarded somewhere).
    pub const fn is_drop(self) -> bool {
        match self {
            Reason::ForwardLocal
            | Reason::ToStack
            | Reason::ForwardTunnel
            | Reason::ForwardNative
            | Reason::FromStack => false,
            Reason::DropSpoofedSource
            | Reason::DropUnsupportedL3
            | Reason::DropTunnelSource
            | Reason::DropNoTunnelEndpoint
            | Reason::DropPolicyIngress
            | Reason::DropPolicyEgress
            | Reason::DropShortFrame
            | Reason::DropBadIpv4Header
            | Reason::DropTruncatedL4
            | Reason::DropRewriteFailed
            | Reason::DropPacketTypeFailed
            | Reason::DropLocalRedirectFailed
            | Reason::DropTunnelRedirectFailed
            | Reason::DropNativeRedirectFailed
            | Reason::DropNoTunnelKey
            | Reason::DropSetTunnelKeyFailed
            | Reason::DropNoLocalBackend
            | Reason::DropFragmentUntracked
            | Reason::DropFragmentOverlap
            | Reason::DropDeniedSource
            | Reason::DropVxlanNotFromNode => true,
        }
    }

    /// The reason numbered `n`, if there is one (numbers are stable, see
    /// above).
    pub const fn from_number(n: u32) -> Option<Self> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == n {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// Whether policy refused the packet (flow events report these where
    /// policy decided, with the flow's verdict).
    pub const fn is_policy_drop(self) -> bool {
        matches!(self, Reason::DropPolicyIngress | Reason::DropPolicyEgress)
    }

    /// The drop reason of a policy denial in `direction`.
    pub const fn policy_drop(direction: crate::direction::Direction) -> Self {
        match direction {
            crate::direction::Direction::Ingress => Reason::DropPolicyIngress,
            crate::direction::Direction::Egress => Reason::DropPolicyEgress,
        }
    }
}

/// Largest reason number plus one.
pub const LIMIT: u32 = Reason::DropVxlanNotFromNode as u32 + 1;

const _: () = {
    // ALL lists every reason exactly once, in number order.
    let mut i = 1;
    while i < Reason::ALL.len() {
        assert!((Reason::ALL[i - 1] as u32) < (Reason::ALL[i] as u32));
        i += 1;
    }
    assert!(Reason::ALL[Reason::ALL.len() - 1] as u32 + 1 == LIMIT);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_retired_numbers_stay_unused() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
        for retired in [3, 5, 8] {
            assert!(Reason::ALL.iter().all(|r| *r as u32 != retired));
            assert_eq!(Reason::from_number(retired), None);
        }
        for reason in Reason::ALL {
            assert_eq!(Reason::from_number(reason as u32), Some(reason));
        }
        assert_eq!(Reason::from_number(LIMIT), None);
    }
}
