//! Test harness (being built).
pub mod bpf_query;
pub mod cgroup;
pub mod conformance;
pub mod netns;
pub mod workload;
