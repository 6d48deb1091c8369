//! The one direction encoding, seen from the local pod, used by policy map
//! keys, the isolation map, and every counter.

/// Which way a packet or a rule goes, seen from the pod.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Entering the pod.
    Ingress = 0,
    /// Leaving the pod.
    Egress = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];
    pub const COUNT: u32 = 2;

    /// Label in metrics and output.
    pub const fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}
