//! Bulkhead enforcer library: the modules the `enforcer` binary is built from.

pub mod datapath;
