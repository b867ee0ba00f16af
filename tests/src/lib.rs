//! Test harness (being built).
pub mod bpf_query;
pub mod cgroup;
pub mod netns;
pub mod workload;
pub mod conformance;
