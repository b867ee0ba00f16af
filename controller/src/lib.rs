//! Bulkhead controller library. [`cluster`]: the runtime pipeline (watchers -> compiler -> hub)
//! and the loop that reports policy status and Events; [`sync`]: the policy sync server the
//! enforcers connect to; [`status`], [`events`]: what a policy's status and Events say and
//! writing them; [`leader`]: leader election on a Lease; [`metrics`]: Prometheus metrics and
//! health endpoints; `testing` (feature `testing`): an in-process fake API server for tests.

pub mod cluster;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod status;
pub mod sync;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
