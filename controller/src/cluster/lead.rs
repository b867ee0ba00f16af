//! What a replica does: as the leader, run the pipeline ([`Controller::run`]) and the status and
//! Event reports ([`report`]); with leader election, lead only while elected and stand by
//! otherwise (the hub refuses enforcers, readiness is false, nothing is written).

use std::time::Duration;

use kube::Client;
use kube::runtime::events::Reporter;
use tokio::sync::watch;

use super::report::report;
use super::{Controller, RunError};
use crate::events::PolicyEvents;
use crate::status::StatusWriter;

/// Leads: the pipeline and the reports (every `interval`), until the pipeline stops.
pub async fn lead(
    controller: &Controller,
    client: &Client,
    reporter: &Reporter,
    interval: Duration,
) -> Result<(), RunError> {
    let writer = StatusWriter::new(client.clone());
    let events = PolicyEvents::new(client.clone(), reporter.clone());
    tokio::select! {
        r = controller.run(client.clone()) => r,
        () = report(controller.clone(), writer, events, interval) => Ok(()),
    }
}

/// Leads while `leading` says so and stands by otherwise; returns when `leading`'s sender is
/// gone (the elector stopped), or with the pipeline's error. Each term starts the pipeline from
/// scratch (the identity table is loaded again: the previous leader may have grown it).
pub async fn lead_when_elected(
    controller: &Controller,
    client: &Client,
    reporter: &Reporter,
    interval: Duration,
    mut leading: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let hub = controller.hub();
    loop {
        hub.set_serving(false);
        if leading.wait_for(|l| *l).await.is_err() {
            return Ok(());
        }
        // The hub serves again once this term's pipeline published (`Controller::run`).
        tracing::info!("elected leader");
        tokio::select! {
            r = lead(controller, client, reporter, interval) => return r,
            lost = leading.wait_for(|l| !*l) => {
                hub.set_serving(false);
                if lost.is_err() {
                    return Ok(());
                }
                tracing::warn!("lost the lease; standing by");
            }
        }
    }
}
