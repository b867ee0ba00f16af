//! `cargo xtask bench`: the measured benchmark of the policy compiler ([`compile`]) and of the
//! kernel datapath ([`datapath`]), run by `src/bin/bulkhead-bench.rs`.
//!
//! Performance claims come only from here, and only as ratios against a baseline measured in the
//! same run (or as a comparison within the run): absolute numbers depend on the machine and on
//! whatever else it is doing. Every measurement has a warm-up and several repetitions and is
//! reported as median and best.

pub mod alloc;
pub mod compile;
pub mod datapath;
pub mod report;
pub mod stats;
pub mod worker;
