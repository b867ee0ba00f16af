//! Bulkhead's kernel programs: thin entry points that call the `try_*` functions of the
//! sibling modules and turn their result into the constant the verifier demands (pitfall 1).
//!
//! - `connect4`/`connect6` (cgroup/connect*): egress decision for TCP and connected UDP, EPERM on
//!   deny, decision cached in the socket's storage.
//! - `sendmsg4`/`sendmsg6` (cgroup/sendmsg*): unconnected UDP, one decision and event per flow.
//! - `egress`/`ingress` (cgroup_skb): every packet; see `skb.rs` for the orientation rules.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod decide;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod skb;
#[cfg(target_arch = "bpf")]
mod sock_addr;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        macros::{cgroup_skb, cgroup_sock_addr},
        programs::{SkBuffContext, SockAddrContext},
    };
    use enforcer_common::{DIR_EGRESS, DIR_INGRESS};

    use crate::{skb, sock_addr};

    /// Verdict of a cgroup hook: 1 lets the operation or packet through, 0 refuses it.
    const PASS: i32 = 1;
    const REFUSE: i32 = 0;

    #[cgroup_sock_addr(connect4)]
    pub fn connect4(ctx: SockAddrContext) -> i32 {
        match sock_addr::try_connect(&ctx, false) {
            Ok(true) => PASS,
            _ => REFUSE,
        }
    }

    #[cgroup_sock_addr(connect6)]
    pub fn connect6(ctx: SockAddrContext) -> i32 {
        match sock_addr::try_connect(&ctx, true) {
            Ok(true) => PASS,
            _ => REFUSE,
        }
    }

    #[cgroup_sock_addr(sendmsg4)]
    pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
        match sock_addr::try_sendmsg(&ctx, false) {
            Ok(true) => PASS,
            _ => REFUSE,
        }
    }

    #[cgroup_sock_addr(sendmsg6)]
    pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
        match sock_addr::try_sendmsg(&ctx, true) {
            Ok(true) => PASS,
            _ => REFUSE,
        }
    }

    #[cgroup_skb(egress)]
    pub fn egress(ctx: SkBuffContext) -> i32 {
        match skb::try_skb(&ctx, DIR_EGRESS) {
            Ok(true) => PASS,
            _ => REFUSE,
        }
    }

    #[cgroup_skb(ingress)]
    pub fn ingress(ctx: SkBuffContext) -> i32 {
        match skb::try_skb(&ctx, DIR_INGRESS) {
            Ok(true) => PASS,
            _ => REFUSE,
        }
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Host builds (e.g. `cargo build --workspace` without a bpf target) get an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
