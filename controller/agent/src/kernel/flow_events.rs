//! Reading the datapath's flow events: the ring buffer, woken by epoll
//! through tokio's `AsyncFd`, each record decoded and handed to the
//! [`FlowHub`]; and the switch, written whenever the hub's wish changes
//! (someone follows, or nobody does any more).

use aya::maps::{MapData, RingBuf};
use sluice_common::flow::EventConfig;
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};

use crate::{
    flows::{decode, FlowHub},
    kernel::bpf::{FlowMaps, FlowSwitch},
};

/// Records read before the reader lets the rest of the agent run: a flood
/// of events never holds the main loop (the agent runs on one thread) for
/// longer than this many records take.
const BATCH: usize = 256;

/// Runs until the hub is stopped; then turns emission off.
pub async fn run(maps: FlowMaps, hub: FlowHub) {
    let FlowMaps { ring, mut switch } = maps;
    let mut wanted = hub.wanted();
    let config = hub.config();
    // SAFETY: the ring buffer owns its map fd, which stays open and the
    // same until the RingBuf (moved into the AsyncFd) is dropped with it.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(error) => {
            warn!(%error, "polling the flow event ring buffer; no flow events");
            return;
        }
    };
    let mut on = *wanted.borrow_and_update();
    set(&mut switch, on, config.rate, config.burst);
    loop {
        tokio::select! {
            changed = wanted.changed() => {
                if changed.is_err() || hub.stopped() {
                    break;
                }
                let now = *wanted.borrow_and_update();
                if now != on {
                    on = now;
                    set(&mut switch, on, config.rate, config.burst);
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(guard) => guard,
                    Err(error) => {
                        warn!(%error, "polling the flow event ring buffer; no flow events");
                        break;
                    }
                };
                if drain(guard.get_inner_mut(), &hub) < BATCH {
                    guard.clear_ready();
                } else {
                    // More may wait: let the main loop run first.
                    tokio::task::yield_now().await;
                }
            }
        }
    }
    set(&mut switch, false, config.rate, config.burst);
}

/// Reads up to [`BATCH`] records; returns how many.
fn drain(ring: &mut RingBuf<MapData>, hub: &FlowHub) -> usize {
    let mut n = 0;
    while n < BATCH {
        let Some(item) = ring.next() else { break };
        n += 1;
        match decode(&item) {
            Ok(raw) => hub.ingest(&raw),
            Err(error) => {
                hub.undecodable();
                debug!(%error, "skipping a flow event record");
            }
        }
    }
    n
}

fn set(switch: &mut FlowSwitch, on: bool, rate: u32, burst: u32) {
    let config = EventConfig {
        enabled: on.into(),
        rate,
        burst,
        _pad: 0,
    };
    match switch.set(config) {
        Ok(()) => info!(on, rate, burst, "flow event emission"),
        Err(error) => warn!(%error, on, "switching flow event emission"),
    }
}
