//! Bulkhead enforcer library: the modules the `enforcer` binary is built from.

pub mod agent;
pub mod cluster;
pub mod datapath;
pub mod metrics;
pub mod trace;
pub mod verdict_log;
