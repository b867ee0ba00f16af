//! Bulkhead's test harness: network namespaces and cgroups for kernel tests, workload helper
//! processes, the standalone agent as a child process, and the NetworkPolicy conformance model.
pub mod agent;
pub mod bench;
pub mod bpf_query;
pub mod cgroup;
pub mod chart;
pub mod conformance;
pub mod netns;
pub mod pass_programs;
pub mod signals;
pub mod synth;
pub mod workload;
