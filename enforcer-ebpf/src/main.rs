#![cfg_attr(target_arch = "bpf", no_std, no_main)]
//! Placeholder replaced by the datapath work (issue 3).
#[cfg(not(target_arch = "bpf"))]
fn main() {}
