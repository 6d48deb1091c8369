//! sluice's TC programs. Entry points stay thin; each concern has a module.
#![no_std]
#![no_main]

mod forward;
mod maps;
mod metrics;
mod parse;
mod policy;
mod remote;

use aya_ebpf::{macros::classifier, programs::TcContext};

/// TC ingress of the host side of a pod's veth: every packet the pod sends.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    let verdict = forward::from_container(&ctx);
    metrics::count(
        verdict.reason,
        sluice_common::metrics::dir::EGRESS,
        ctx.len(),
    );
    verdict.action
}

/// TC ingress of the node's VXLAN device: pod traffic from other nodes.
#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    let verdict = remote::from_overlay(&ctx);
    metrics::count(
        verdict.reason,
        sluice_common::metrics::dir::INGRESS,
        ctx.len(),
    );
    verdict.action
}

/// TC egress of the node's VXLAN device: host traffic for remote pods.
#[classifier]
pub fn to_overlay(ctx: TcContext) -> i32 {
    let verdict = remote::to_overlay(&ctx);
    metrics::count(
        verdict.reason,
        sluice_common::metrics::dir::EGRESS,
        ctx.len(),
    );
    verdict.action
}

/// TC ingress of the underlay device (native routing).
#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    let verdict = remote::from_netdev(&ctx);
    metrics::count(
        verdict.reason,
        sluice_common::metrics::dir::INGRESS,
        ctx.len(),
    );
    verdict.action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
