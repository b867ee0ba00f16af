//! Bulkhead controller library. [`sync`]: the policy sync server the enforcers connect to.
//! `testing` (feature `testing`): an in-process fake API server for tests.

pub mod sync;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
