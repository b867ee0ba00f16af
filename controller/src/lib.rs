//! Bulkhead controller library. [`sync`]: the policy sync server the enforcers connect to.

pub mod events;
pub mod leader;
pub mod status;
pub mod sync;
