//! Bulkhead controller library. [`cluster`]: the runtime pipeline (watchers -> compiler -> hub);
//! [`sync`]: the policy sync server the enforcers connect to; [`metrics`]: Prometheus metrics
//! and health endpoints.

pub mod cluster;
pub mod metrics;
pub mod sync;
