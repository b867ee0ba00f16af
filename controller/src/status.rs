//! The `status` of SegmentationPolicy and ClusterSegmentationPolicy objects: this module owns
//! what the status says ([`build_status`]) and writing it ([`StatusWriter`]) with server-side
//! apply to the `status` subresource, as field manager [`FIELD_MANAGER`]. It owns no state:
//! the caller passes the status currently stored on the object (from its reflector), and the
//! write is skipped when it would change nothing, so a steady state writes nothing.
//!
//! NetworkPolicy objects have no status subresource upstream; asking for one is
//! [`StatusError::NoStatus`].
//!
//! # Conditions
//!
//! Both follow the API conventions (`type`, `status`, CamelCase `reason`, `message`,
//! `observedGeneration`, `lastTransitionTime`); `lastTransitionTime` changes only when the
//! condition's `status` changes.
//!
//! | type | status | reason | when |
//! |---|---|---|---|
//! | `Valid` | `True` | `Validated` | the generation passed validation |
//! | `Valid` | `False` | `ValidationFailed` | it did not; `message` is the one-line error |
//! | `Realized` | `False` | `PolicyInvalid` | the generation is invalid: the controller does not compile it, so no node enforces it |
//! | `Realized` | `True` | `NoNodesSelected` | valid, and no node runs a workload it selects (`desiredNodes` = 0): nothing to enforce, so it is vacuously live everywhere |
//! | `Realized` | `True` | `RealizedOnAllNodes` | valid and `realizedNodes` = `desiredNodes` > 0 |
//! | `Realized` | `False` | `RealizationPending` | valid and `realizedNodes` < `desiredNodes` |
//!
//! `realizedNodes` counts nodes among the desired ones, so it exceeding `desiredNodes` is a
//! caller bug, reported as [`StatusError::Counts`] instead of being written.

#[cfg(test)]
pub(crate) mod tests;

use bulkhead_policy::model::status::{REALIZED, VALID};
use bulkhead_policy::{Kind, ObjectKey, model::PolicyStatus};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};

/// Field manager of every status write (server-side apply).
pub const FIELD_MANAGER: &str = "bulkhead-controller";

/// `Valid=True` reason.
pub const REASON_VALIDATED: &str = "Validated";
/// `Valid=False` reason.
pub const REASON_VALIDATION_FAILED: &str = "ValidationFailed";
/// `Realized=False` reason for an invalid generation.
pub const REASON_POLICY_INVALID: &str = "PolicyInvalid";
/// `Realized=True` reason when no node must enforce the policy.
pub const REASON_NO_NODES_SELECTED: &str = "NoNodesSelected";
/// `Realized=True` reason when every desired node enforces the policy.
pub const REASON_REALIZED_ON_ALL_NODES: &str = "RealizedOnAllNodes";
/// `Realized=False` reason while some desired nodes have not acknowledged it.
pub const REASON_REALIZATION_PENDING: &str = "RealizationPending";

/// Errors of building or writing a policy status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The object's kind has no status subresource (NetworkPolicy).
    #[error("{key}: a {} has no status subresource", key.kind)]
    NoStatus {
        /// The object.
        key: ObjectKey,
    },
    /// A namespaced kind without a namespace.
    #[error("{key}: a {} needs a namespace", key.kind)]
    MissingNamespace {
        /// The object.
        key: ObjectKey,
    },
    /// More realized than desired nodes, or a count that does not fit the status' int32.
    #[error(
        "{key}: realizedNodes {realized} must be at most desiredNodes {desired}, both at most {}",
        i32::MAX
    )]
    Counts {
        /// The object.
        key: ObjectKey,
        /// Nodes that must enforce the policy.
        desired: u32,
        /// Nodes that do.
        realized: u32,
    },
    /// The API server refused the server-side apply of the status.
    #[error("{key}: writing the status failed")]
    Patch {
        /// The object.
        key: ObjectKey,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

impl StatusError {
    /// The API server answered 404: the policy was deleted before its status was written
    /// (a race the caller usually ignores).
    pub fn is_not_found(&self) -> bool {
        matches!(self, StatusError::Patch { source: kube::Error::Api(status), .. } if status.code == 404)
    }
}

/// What the controller knows about one policy generation; the input of [`build_status`].
#[derive(Clone, Debug, PartialEq)]
pub struct StatusInput {
    /// The policy (a SegmentationPolicy or ClusterSegmentationPolicy).
    pub key: ObjectKey,
    /// Its `metadata.generation`.
    pub generation: i64,
    /// The validation result of that generation; `Err` holds the one-line error.
    pub validation: Result<(), String>,
    /// Nodes running workloads the policy selects.
    pub desired_nodes: u32,
    /// Of those, the nodes whose enforcer acknowledged a revision containing this generation.
    pub realized_nodes: u32,
}

/// The status for `input`. `stored` is the status the object has now: a condition whose
/// `status` is unchanged keeps its `lastTransitionTime`, any other gets `now` (to the second,
/// the precision the API keeps).
pub fn build_status(
    input: &StatusInput,
    stored: Option<&PolicyStatus>,
    now: Timestamp,
) -> Result<PolicyStatus, StatusError> {
    let counts_error = || StatusError::Counts {
        key: input.key.clone(),
        desired: input.desired_nodes,
        realized: input.realized_nodes,
    };
    let desired = i32::try_from(input.desired_nodes).map_err(|_| counts_error())?;
    let realized = i32::try_from(input.realized_nodes).map_err(|_| counts_error())?;
    if realized > desired {
        return Err(counts_error());
    }
    let (valid, valid_reason, valid_message) = match &input.validation {
        Ok(()) => (true, REASON_VALIDATED, "the policy is valid".to_owned()),
        Err(error) => (false, REASON_VALIDATION_FAILED, error.clone()),
    };
    let (realized_ok, realized_reason, realized_message) = if !valid {
        (
            false,
            REASON_POLICY_INVALID,
            "the policy is invalid and not enforced".to_owned(),
        )
    } else if desired == 0 {
        (
            true,
            REASON_NO_NODES_SELECTED,
            "no node runs a workload the policy selects".to_owned(),
        )
    } else if realized == desired {
        (
            true,
            REASON_REALIZED_ON_ALL_NODES,
            format!("enforced on {realized} of {desired} nodes"),
        )
    } else {
        (
            false,
            REASON_REALIZATION_PENDING,
            format!("enforced on {realized} of {desired} nodes"),
        )
    };
    let now = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let last_transition_time = stored
            .and_then(|s| find_condition(s, type_))
            .filter(|c| c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: Some(input.generation),
            last_transition_time,
        }
    };
    Ok(PolicyStatus {
        observed_generation: Some(input.generation),
        conditions: vec![
            condition(VALID, valid, valid_reason, valid_message),
            condition(REALIZED, realized_ok, realized_reason, realized_message),
        ],
        desired_nodes: Some(desired),
        realized_nodes: Some(realized),
    })
}

/// Whether writing `desired` would change what `stored` says: its generation, node counts or
/// one of its conditions (conditions of other types in `stored`, written by someone else,
/// are not ours to compare).
pub fn status_differs(stored: Option<&PolicyStatus>, desired: &PolicyStatus) -> bool {
    let Some(stored) = stored else {
        return true;
    };
    stored.observed_generation != desired.observed_generation
        || stored.desired_nodes != desired.desired_nodes
        || stored.realized_nodes != desired.realized_nodes
        || desired
            .conditions
            .iter()
            .any(|c| find_condition(stored, &c.type_) != Some(c))
}

fn find_condition<'a>(status: &'a PolicyStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Writes policy statuses by server-side apply to the `status` subresource.
///
/// The `stored` status a caller passes usually comes from a reflector, which may not yet show
/// this writer's last write; the write is then repeated (harmless), and a condition that
/// changed in that write gets a `lastTransitionTime` a few moments later than the first.
#[derive(Clone)]
pub struct StatusWriter {
    client: Client,
}

impl StatusWriter {
    /// A writer using `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Builds the status for `input` (see [`build_status`]) and applies it unless it equals
    /// `stored` (see [`status_differs`]). Returns the status written, or `None` when the write
    /// was skipped.
    pub async fn reconcile(
        &self,
        input: &StatusInput,
        stored: Option<&PolicyStatus>,
    ) -> Result<Option<PolicyStatus>, StatusError> {
        let status = build_status(input, stored, Timestamp::now())?;
        if !status_differs(stored, &status) {
            tracing::trace!(policy = %input.key, generation = input.generation, "status unchanged");
            return Ok(None);
        }
        self.apply(&input.key, &status).await?;
        tracing::debug!(
            policy = %input.key,
            generation = input.generation,
            valid = input.validation.is_ok(),
            desired_nodes = input.desired_nodes,
            realized_nodes = input.realized_nodes,
            "status written"
        );
        Ok(Some(status))
    }

    /// Applies `status` to the object `key` (force, as [`FIELD_MANAGER`]), unconditionally.
    pub async fn apply(&self, key: &ObjectKey, status: &PolicyStatus) -> Result<(), StatusError> {
        let resource = match key.kind {
            Kind::SegmentationPolicy => {
                ApiResource::erase::<bulkhead_policy::model::SegmentationPolicy>(&())
            }
            Kind::ClusterSegmentationPolicy => {
                ApiResource::erase::<bulkhead_policy::model::ClusterSegmentationPolicy>(&())
            }
            Kind::NetworkPolicy => return Err(StatusError::NoStatus { key: key.clone() }),
        };
        let api: Api<DynamicObject> = match (key.kind, &key.namespace) {
            (Kind::ClusterSegmentationPolicy, _) => Api::all_with(self.client.clone(), &resource),
            (_, Some(namespace)) => Api::namespaced_with(self.client.clone(), namespace, &resource),
            (_, None) => return Err(StatusError::MissingNamespace { key: key.clone() }),
        };
        let body = serde_json::json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "status": status,
        });
        api.patch_status(
            &key.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(|source| StatusError::Patch {
            key: key.clone(),
            source,
        })?;
        Ok(())
    }
}
