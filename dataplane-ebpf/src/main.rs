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
use sluice_common::metrics::dir;

/// Runs one program's decision and counts its verdict.
#[inline(always)]
fn run(ctx: &TcContext, decide: fn(&TcContext) -> forward::Verdict, direction: u32) -> i32 {
    let verdict = decide(ctx);
    metrics::count(verdict.reason, direction, ctx.len());
    verdict.action
}

/// TC ingress of the host side of a pod's veth: every packet the pod sends.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    run(&ctx, forward::from_container, dir::EGRESS)
}

/// TC egress of the host side of a pod's veth: what the host stack routes
/// to the pod, checked against its ingress policy.
#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    run(&ctx, forward::to_container, dir::INGRESS)
}

/// TC ingress of the node's VXLAN device: pod traffic from other nodes.
#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    run(&ctx, remote::from_overlay, dir::INGRESS)
}

/// TC egress of the node's VXLAN device: host traffic for remote pods.
#[classifier]
pub fn to_overlay(ctx: TcContext) -> i32 {
    run(&ctx, remote::to_overlay, dir::EGRESS)
}

/// TC ingress of the underlay device (native routing).
#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    run(&ctx, remote::from_netdev, dir::INGRESS)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
