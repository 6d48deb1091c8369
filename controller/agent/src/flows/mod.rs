//! Flow events (`sluice observe`): the datapath's records read from its
//! ring buffer (`kernel::flow_events`), decoded ([`decode`]), named after
//! the pods, nodes, identities and policies the agent knows
//! ([`directory`]), kept in a bounded history ([`history`]) and handed to
//! whoever asks on the local API ([`hub`], [`serve`]).
//!
//! Emission costs the datapath little while nobody listens: the agent
//! switches it on only while a client follows the stream, unless it is
//! configured to record always (`flows.record: always`, what the lab
//! does), so that `sluice observe` without `--follow` has history to show.

pub mod decode;
pub mod directory;
pub mod history;
pub mod hub;
pub mod serve;
pub mod verdict_metrics;

pub use decode::{decode, DecodeError, RawFlow};
pub use directory::Directory;
pub use history::History;
pub use hub::{FlowHub, FlowsConfig, Follower};
