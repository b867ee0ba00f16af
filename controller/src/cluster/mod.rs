//! The controller's runtime pipeline: Kubernetes objects -> the incremental policy compiler ->
//! the [`SyncHub`](crate::sync::SyncHub) the enforcers sync from. Data flows one way.
//!
//! - [`convert`]: pods, namespaces and policy objects as the policy library's inputs (which pods
//!   are workloads);
//! - [`pipeline`]: the observed objects and the compiler, one compiler call per changed object;
//! - [`watch`]: watch events as pipeline changes (re-lists included);
//! - [`identities`]: the identity allocation table persisted in a ConfigMap;
//! - [`progress`]: per-policy realization (desired and realized nodes) for the status writer;
//! - [`run`](mod@run): the watchers and the loop that compiles, stores identities and publishes;
//! - [`report`]: the loop that writes each policy's status and Events from its progress;
//! - [`lead`]: leading (pipeline and reports) while elected, standing by otherwise.
//!
//! Entry point: [`run()`] (or [`Controller`] for access to progress and readiness).

pub mod convert;
pub mod identities;
pub mod lead;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod run;
pub mod subject;
pub mod watch;

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;

pub use progress::PolicyProgress;
pub use run::{Config, Controller, RunError, run};
