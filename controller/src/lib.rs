//! Bulkhead controller library. [`cluster`]: the runtime pipeline (watchers -> compiler -> hub);
//! [`sync`]: the policy sync server the enforcers connect to; [`metrics`]: Prometheus metrics
//! and health endpoints; `testing` (feature `testing`): an in-process fake API server for tests.

pub mod cluster;
pub mod metrics;
pub mod sync;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
