//! Bulkhead's pure policy library: the input model (NetworkPolicy, SegmentationPolicy,
//! ClusterSegmentationPolicy, workload inventory), loading and validation, identities, the
//! compiler to kernel map contents, the evaluator over those contents, and a reference evaluator
//! over the raw objects used as the test oracle. No Kubernetes client, no aya.
//!
//! Typical use:
//! ```no_run
//! use bulkhead_policy::{Compiler, AllocationTable, Inventory, PolicySet, evaluate, Flow};
//! # fn main() -> Result<(), bulkhead_policy::Error> {
//! let policies = PolicySet::load(std::path::Path::new("policies/"))?;
//! let inventory = Inventory::load(std::path::Path::new("inventory.yaml"))?;
//! let mut compiler = Compiler::new(AllocationTable::new());
//! let state = compiler.compile(&policies, &inventory, jiff::Timestamp::now())?;
//! # Ok(()) }
//! ```

pub mod compile;
mod error;
pub mod evaluate;
pub mod identity;
mod ir;
pub mod load;
pub mod model;
mod policyset;
pub mod rules;
pub mod selector;
pub mod spec;
pub mod validate;

pub use compile::{
    AddrPrefix, CompiledState, CompiledWorkload, Compiler, Incremental, MapDiff, PolicyEntryKey,
    StateDiff,
};
pub use error::Error;
pub use evaluate::{Decision, Endpoint, Flow, Protocol, Reason, SideDecision, Verdict, evaluate};
pub use identity::{AllocationTable, IdentityInfo};
pub use model::{Inventory, Kind, ObjectKey, PolicyObject, WorkloadRef};
pub use policyset::PolicySet;
pub use rules::{Direction, RuleRef};
