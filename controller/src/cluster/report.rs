//! Reports each policy's state to the API: its `status` (server-side apply, through
//! [`StatusWriter`]) and its Events (through [`PolicyEvents`]), from the pipeline's
//! [`PolicyProgress`], once per interval. Writes happen only when
//! something changed (the status writer compares with the stored status), so a steady state
//! writes nothing. NetworkPolicy objects get Events only (they have no status subresource).

use std::collections::BTreeSet;
use std::time::Duration;

use bulkhead_policy::{Kind, ObjectKey};
use futures::StreamExt;

use super::Controller;
use super::progress::PolicyProgress;
use crate::events::PolicyEvents;
use crate::status::{StatusInput, StatusWriter};

/// Status writes and event publications in flight at once.
const CONCURRENCY: usize = 8;

/// The status writer's input for one policy.
pub fn status_input(p: &PolicyProgress) -> StatusInput {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    StatusInput {
        key: p.key.clone(),
        generation: p.generation,
        validation: p.valid.clone(),
        desired_nodes: count(p.desired_nodes.len()),
        realized_nodes: count(p.realized_nodes.len()),
    }
}

/// Writes statuses and events every `interval`, forever (the caller stops it by dropping it).
pub async fn report(
    controller: Controller,
    writer: StatusWriter,
    events: PolicyEvents,
    interval: Duration,
) {
    let mut known: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let progress = controller.policy_progress();
        let now: BTreeSet<ObjectKey> = progress.iter().map(|p| p.key.clone()).collect();
        for gone in known.difference(&now) {
            events.forget(gone);
        }
        known = now;
        let (writer, events, controller) = (&writer, &events, &controller);
        futures::stream::iter(progress)
            .for_each_concurrent(CONCURRENCY, |p| async move {
                let input = status_input(&p);
                if p.key.kind != Kind::NetworkPolicy {
                    match writer.reconcile(&input, p.stored_status.as_ref()).await {
                        Ok(_) => {}
                        // Deleted meanwhile: its deletion event follows.
                        Err(e) if e.is_not_found() => {}
                        Err(e) => {
                            tracing::warn!(policy = %p.key, error = %e, "status write failed");
                            controller.metrics().error("status");
                        }
                    }
                }
                if let Err(e) = events
                    .observe(&input, p.uid.as_deref(), p.stored_status.as_ref())
                    .await
                {
                    tracing::warn!(policy = %p.key, error = %e, "event publication failed");
                    controller.metrics().error("event");
                }
            })
            .await;
    }
}
