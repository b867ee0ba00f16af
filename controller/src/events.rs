//! Kubernetes Events about policies (shown by `kubectl describe`): this module owns which
//! events a policy's observed state calls for and their publication through kube's
//! [`Recorder`] (`events.k8s.io/v1`). It keeps, per policy, what it last observed and
//! announced, so the same event is not emitted again for the same generation.
//!
//! | reason | type | when |
//! |---|---|---|
//! | [`REASON_INVALID`] | Warning | a generation fails validation (note: the one-line error); again only for a new generation or a different error |
//! | [`REASON_VALID`] | Normal | a policy that was invalid is valid again |
//! | [`REASON_REALIZED`] | Normal | a valid generation becomes enforced on all of its nodes (more than zero), once per generation |
//!
//! All three policy kinds get events; a cluster-scoped policy's events live in the `default`
//! namespace (kube's [`Recorder`] convention).
//!
//! After a restart (or a change of leader) this process has seen nothing yet. It then takes
//! what the stored status says for the same generation as already announced, and otherwise
//! records the state it first sees without announcing `PolicyRealized` (an event on every
//! restart for every realized policy would be noise; an invalid policy is announced, as it
//! needs attention). Publication is at most once: a failed publish is returned as an error and
//! not retried.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Mutex;

use bulkhead_policy::model::status::{REALIZED, VALID};
use bulkhead_policy::model::{ClusterSegmentationPolicy, PolicyStatus, SegmentationPolicy};
use bulkhead_policy::{Kind, ObjectKey};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use crate::status::StatusInput;

/// Reason of the Warning for an invalid generation.
pub const REASON_INVALID: &str = "InvalidPolicy";
/// Reason of the event for a policy valid again.
pub const REASON_VALID: &str = "PolicyValid";
/// Reason of the event for a generation enforced on all its nodes.
pub const REASON_REALIZED: &str = "PolicyRealized";

/// The most an event note may hold (the API's limit is 1 kB).
const NOTE_LIMIT: usize = 1024;

/// An event about a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyEvent {
    /// The generation failed validation with this error.
    Invalid {
        /// The one-line validation error.
        error: String,
    },
    /// The policy, invalid before, is valid.
    ValidAgain {
        /// The valid generation.
        generation: i64,
    },
    /// The generation is enforced on all of its nodes.
    Realized {
        /// The generation.
        generation: i64,
        /// How many nodes enforce it.
        nodes: u32,
    },
}

impl PolicyEvent {
    /// The event's `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            PolicyEvent::Invalid { .. } => REASON_INVALID,
            PolicyEvent::ValidAgain { .. } => REASON_VALID,
            PolicyEvent::Realized { .. } => REASON_REALIZED,
        }
    }

    fn to_event(&self) -> Event {
        let (type_, action, note) = match self {
            PolicyEvent::Invalid { error } => (
                EventType::Warning,
                "Validate",
                truncate(error, NOTE_LIMIT).to_owned(),
            ),
            PolicyEvent::ValidAgain { generation } => (
                EventType::Normal,
                "Validate",
                format!("generation {generation} is valid"),
            ),
            PolicyEvent::Realized { generation, nodes } => (
                EventType::Normal,
                "Realize",
                format!("generation {generation} is enforced on all {nodes} of its nodes"),
            ),
        };
        Event {
            type_,
            reason: self.reason().to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        }
    }
}

/// The longest prefix of `text` of at most `limit` bytes that ends on a character boundary.
fn truncate(text: &str, limit: usize) -> &str {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Errors of publishing events.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The API server refused an event.
    #[error("{key}: publishing the {reason} event failed")]
    Publish {
        /// The policy.
        key: ObjectKey,
        /// The event's reason.
        reason: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// What was last observed and announced for one policy object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Seen {
    /// The object's UID: a recreated object starts afresh.
    uid: Option<String>,
    generation: i64,
    /// The validation error announced for `generation`, `None` when valid.
    invalid: Option<String>,
    /// `generation` was seen (or announced) realized on all its nodes.
    realized: bool,
}

impl Seen {
    /// What a stored status says was announced for `generation`, if it describes that one.
    fn from_status(status: &PolicyStatus, generation: i64, uid: Option<&str>) -> Option<Self> {
        if status.observed_generation != Some(generation) {
            return None;
        }
        let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
        Some(Self {
            uid: uid.map(str::to_owned),
            generation,
            invalid: condition(VALID)
                .filter(|c| c.status == "False")
                .map(|c| c.message.clone()),
            realized: condition(REALIZED).is_some_and(|c| c.status == "True"),
        })
    }
}

/// The events `input` calls for after `previous`, and what is seen afterwards.
fn decide(
    previous: Option<Seen>,
    input: &StatusInput,
    uid: Option<&str>,
    stored: Option<&PolicyStatus>,
) -> (Vec<PolicyEvent>, Seen) {
    let previous = previous
        .filter(|p| p.uid.as_deref() == uid)
        .or_else(|| stored.and_then(|s| Seen::from_status(s, input.generation, uid)));
    let same_generation = previous
        .as_ref()
        .is_some_and(|p| p.generation == input.generation);
    let mut events = Vec::new();
    match &input.validation {
        Err(error) => {
            let announced = same_generation
                && previous.as_ref().and_then(|p| p.invalid.as_ref()) == Some(error);
            if !announced {
                events.push(PolicyEvent::Invalid {
                    error: error.clone(),
                });
            }
        }
        Ok(()) => {
            if previous.as_ref().is_some_and(|p| p.invalid.is_some()) {
                events.push(PolicyEvent::ValidAgain {
                    generation: input.generation,
                });
            }
        }
    }
    let realized = input.validation.is_ok()
        && input.desired_nodes > 0
        && input.realized_nodes == input.desired_nodes;
    let announced_realized = same_generation && previous.as_ref().is_some_and(|p| p.realized);
    if realized && previous.is_some() && !announced_realized {
        events.push(PolicyEvent::Realized {
            generation: input.generation,
            nodes: input.desired_nodes,
        });
    }
    let seen = Seen {
        uid: uid.map(str::to_owned),
        generation: input.generation,
        invalid: input.validation.clone().err(),
        realized: realized || announced_realized,
    };
    (events, seen)
}

/// The reference an event about `key` is attached to.
pub fn object_reference(key: &ObjectKey, uid: Option<&str>) -> ObjectReference {
    let api_version = match key.kind {
        Kind::NetworkPolicy => NetworkPolicy::api_version(&()),
        Kind::SegmentationPolicy => SegmentationPolicy::api_version(&()),
        Kind::ClusterSegmentationPolicy => ClusterSegmentationPolicy::api_version(&()),
    };
    ObjectReference {
        api_version: Some(api_version.into_owned()),
        kind: Some(key.kind.as_str().to_owned()),
        name: Some(key.name.clone()),
        namespace: match key.kind {
            Kind::ClusterSegmentationPolicy => None,
            _ => key.namespace.clone(),
        },
        uid: uid.map(str::to_owned),
        ..ObjectReference::default()
    }
}

/// Publishes policy events, each at most once per generation (see the module docs).
pub struct PolicyEvents {
    client: Client,
    reporter: Reporter,
    seen: Mutex<HashMap<ObjectKey, Seen>>,
}

impl PolicyEvents {
    /// Events published with `client`, as `reporter` (controller name and pod name).
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes the events the policy's state `input` calls for; `uid` is the object's
    /// `metadata.uid`, `stored` its stored status (`None` for a NetworkPolicy). Returns the
    /// events published.
    pub async fn observe(
        &self,
        input: &StatusInput,
        uid: Option<&str>,
        stored: Option<&PolicyStatus>,
    ) -> Result<Vec<PolicyEvent>, EventsError> {
        let events = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let (events, now) = decide(seen.remove(&input.key), input, uid, stored);
            seen.insert(input.key.clone(), now);
            events
        };
        if events.is_empty() {
            return Ok(events);
        }
        let reference = object_reference(&input.key, uid);
        // A recorder per publication: kube's recorder folds repeats of a reason into one
        // series whatever the note says, which would hide a new generation's error; this
        // module does its own deduplication.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        for event in &events {
            recorder
                .publish(&event.to_event(), &reference)
                .await
                .map_err(|source| EventsError::Publish {
                    key: input.key.clone(),
                    reason: event.reason(),
                    source,
                })?;
            tracing::debug!(policy = %input.key, reason = event.reason(), "event published");
        }
        Ok(events)
    }

    /// Forgets a deleted policy.
    pub fn forget(&self, key: &ObjectKey) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}
