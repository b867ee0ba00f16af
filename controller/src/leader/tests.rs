//! Leader election against a mocked API server, on tokio's paused clock (sleeps and request
//! timeouts elapse as soon as every task waits, so no test waits in real time).

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::*;
use crate::status::tests::{ApiServer, Call, mock_client};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/bulkhead/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/bulkhead/leases/bulkhead-controller";
/// Failure guard for a state change that never comes; not a performance claim.
const GUARD: Duration = Duration::from_secs(300);

fn config() -> LeaseConfig {
    LeaseConfig::new("bulkhead-controller", "bulkhead", "me")
}

/// The lease as the API server returns it; `version` is its resourceVersion and also moves
/// its renewTime, as a holder's renewal does.
fn lease(holder: Option<&str>, version: u32, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "bulkhead-controller",
            "namespace": "bulkhead",
            "resourceVersion": version.to_string(),
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "leaseTransitions": transitions,
            "acquireTime": "2026-11-28T00:00:00.000000Z",
            "renewTime": format!("2026-11-28T00:{:02}:00.000000Z", version % 60),
        },
    })
}

/// An elector running against the mock, stopped by `stop`.
struct Harness {
    server: ApiServer,
    leader: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), LeaderError>>,
}

fn start() -> Harness {
    let (client, server) = mock_client();
    let elector = LeaderElector::new(client, config()).unwrap();
    let leader = elector.subscribe();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(elector.run(async move {
        stopped.await.ok();
    }));
    Harness {
        server,
        leader,
        stop: Some(stop),
        task,
    }
}

impl Harness {
    async fn expect_get(&mut self) -> Call {
        let call = self.server.next().await;
        call.expect(Method::GET, LEASE);
        call
    }

    /// Answers the read with "absent" and returns the create that follows.
    async fn expect_create(&mut self) -> Call {
        self.expect_get()
            .await
            .respond_error(StatusCode::NOT_FOUND, "NotFound");
        let call = self.server.next().await;
        call.expect(Method::POST, &format!("{LEASES}?"));
        call
    }

    /// Answers the read with a released lease (resourceVersion 3) and returns the update
    /// taking it.
    async fn expect_takeover_of_released(&mut self) -> Call {
        self.expect_get()
            .await
            .respond(StatusCode::OK, &lease(None, 3, 1));
        let call = self.server.next().await;
        call.expect(Method::PUT, &format!("{LEASE}?"));
        assert_eq!(call.body["metadata"]["resourceVersion"], "3");
        call
    }

    /// Answers the next read with the lease held by another replica, at `version`.
    async fn show_other_holder(&mut self, version: u32) {
        self.expect_get()
            .await
            .respond(StatusCode::OK, &lease(Some("other"), version, 1));
    }

    /// Answers every read with an error until the elector steps down; returns how many.
    async fn fail_until_stepped_down(&mut self) -> usize {
        let mut failures = 0;
        loop {
            tokio::select! {
                stepped_down = self.leader.wait_for(|l| !*l) => {
                    stepped_down.expect("elector alive");
                    return failures;
                }
                call = self.server.next() => {
                    call.expect(Method::GET, LEASE);
                    failures += 1;
                    call.respond_error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable");
                }
            }
        }
    }

    /// Accepts the elector's create or update `call` at `version`; it becomes the leader.
    async fn grant(&mut self, call: Call, code: StatusCode, version: u32) {
        accept(call, code, version);
        self.wait_leader(true).await;
    }

    async fn wait_leader(&mut self, leader: bool) {
        tokio::time::timeout(GUARD, self.leader.wait_for(|l| *l == leader))
            .await
            .expect("leader state within the guard time")
            .expect("elector alive");
    }

    /// Stops the elector; when it leads, answers its release (holder `me` at `version`,
    /// `transitions`) and checks what it writes.
    async fn shut_down(mut self, releasing: Option<(u32, i32)>) {
        self.stop.take().expect("running").send(()).unwrap();
        if let Some((version, transitions)) = releasing {
            self.expect_get()
                .await
                .respond(StatusCode::OK, &lease(Some("me"), version, transitions));
            let call = self.server.next().await;
            call.expect(Method::PUT, &format!("{LEASE}?"));
            let spec = &call.body["spec"];
            assert_eq!(spec.get("holderIdentity"), None, "{spec}");
            assert_eq!(spec["leaseDurationSeconds"], 1);
            assert_eq!(spec["leaseTransitions"], transitions);
            assert_eq!(
                call.body["metadata"]["resourceVersion"],
                version.to_string()
            );
            let body = call.body.clone();
            call.respond(StatusCode::OK, &body);
        }
        self.task.await.unwrap().unwrap();
        assert!(!*self.leader.borrow());
        self.server.expect_no_more().await;
    }
}

/// Answers a create or update like the API server: the object written, at `version`.
fn accept(call: Call, code: StatusCode, version: u32) {
    let mut body = call.body.clone();
    body["metadata"]["resourceVersion"] = json!(version.to_string());
    call.respond(code, &body);
}

#[tokio::test(start_paused = true)]
async fn acquires_an_absent_lease_and_releases_it_on_shutdown() {
    let mut h = start();
    assert!(!*h.leader.borrow());
    let call = h.expect_create().await;
    assert_eq!(call.content_type.as_deref(), Some("application/json"));
    assert_eq!(call.body["metadata"]["name"], "bulkhead-controller");
    let spec = &call.body["spec"];
    assert_eq!(spec["holderIdentity"], "me");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
    assert!(spec["acquireTime"].is_string() && spec["renewTime"].is_string());
    h.grant(call, StatusCode::CREATED, 1).await;
    h.shut_down(Some((1, 0))).await;
}

#[tokio::test(start_paused = true)]
async fn does_not_acquire_a_lease_another_holder_keeps_renewing() {
    let mut h = start();
    // 12 reads 2 s apart span more than the 15 s lease, but each shows a fresh renewal.
    for version in 10..22 {
        h.expect_get()
            .await
            .respond(StatusCode::OK, &lease(Some("other"), version, 4));
    }
    assert!(!h.leader.has_changed().unwrap());
    h.shut_down(None).await;
}

#[tokio::test(start_paused = true)]
async fn takes_over_a_lease_that_stopped_being_renewed() {
    let mut h = start();
    let mut reads = 0;
    let call = loop {
        let call = h.server.next().await;
        if call.method != Method::GET {
            break call;
        }
        call.expect(Method::GET, LEASE);
        reads += 1;
        call.respond(StatusCode::OK, &lease(Some("other"), 7, 2));
    };
    assert!(reads > 1, "took over at first sight");
    call.expect(Method::PUT, &format!("{LEASE}?"));
    assert_eq!(call.body["metadata"]["resourceVersion"], "7");
    let spec = &call.body["spec"];
    assert_eq!(spec["holderIdentity"], "me");
    assert_eq!(spec["leaseTransitions"], 3);
    assert_ne!(spec["acquireTime"], "2026-11-28T00:00:00.000000Z");
    h.grant(call, StatusCode::OK, 8).await;
    h.shut_down(Some((8, 3))).await;
}

#[tokio::test(start_paused = true)]
async fn losing_the_update_race_is_not_leading() {
    let mut h = start();
    let call = h.expect_takeover_of_released().await;
    assert_eq!(call.body["spec"]["leaseTransitions"], 2);
    call.respond_error(StatusCode::CONFLICT, "Conflict");
    // The winner's lease shows up on the next read.
    h.show_other_holder(4).await;
    assert!(!h.leader.has_changed().unwrap());
    h.shut_down(None).await;
}

#[tokio::test(start_paused = true)]
async fn losing_the_create_race_is_not_leading() {
    let mut h = start();
    let call = h.expect_create().await;
    call.respond_error(StatusCode::CONFLICT, "AlreadyExists");
    h.show_other_holder(1).await;
    assert!(!h.leader.has_changed().unwrap());
    h.shut_down(None).await;
}

/// Starts an elector and makes it the leader by creating the lease (resourceVersion 1).
async fn leading() -> Harness {
    let mut h = start();
    let call = h.expect_create().await;
    h.grant(call, StatusCode::CREATED, 1).await;
    h
}

#[tokio::test(start_paused = true)]
async fn renews_while_leading_and_steps_down_when_renewals_fail() {
    let mut h = leading().await;
    for version in 1..4 {
        h.expect_get()
            .await
            .respond(StatusCode::OK, &lease(Some("me"), version, 0));
        let call = h.server.next().await;
        call.expect(Method::PUT, &format!("{LEASE}?"));
        assert_eq!(
            call.body["metadata"]["resourceVersion"],
            version.to_string()
        );
        assert_eq!(call.body["spec"]["holderIdentity"], "me");
        assert_eq!(call.body["spec"]["leaseTransitions"], 0);
        assert_eq!(
            call.body["spec"]["acquireTime"],
            "2026-11-28T00:00:00.000000Z"
        );
        accept(call, StatusCode::OK, version + 1);
        assert!(*h.leader.borrow());
    }
    // The API server fails every read until the renew deadline passes.
    let failures = h.fail_until_stepped_down().await;
    assert!(failures > 1, "stepped down at the first failure");
    // It goes on as a candidate.
    h.show_other_holder(9).await;
    assert!(!*h.leader.borrow());
    h.shut_down(None).await;
}

#[tokio::test(start_paused = true)]
async fn a_renewal_without_answer_steps_down_at_the_deadline() {
    let mut h = leading().await;
    let unanswered = h.expect_get().await;
    h.wait_leader(false).await;
    drop(unanswered);
    h.show_other_holder(2).await;
    h.shut_down(None).await;
}

#[tokio::test(start_paused = true)]
async fn stepped_down_but_still_named_it_releases_on_shutdown() {
    let mut h = leading().await;
    h.fail_until_stepped_down().await;
    h.shut_down(Some((1, 0))).await;
}

#[tokio::test(start_paused = true)]
async fn stopped_during_its_takeover_write_it_releases() {
    let mut h = start();
    let unanswered = h.expect_takeover_of_released().await;
    // The write may have landed; the release reads the lease and finds it named.
    h.shut_down(Some((4, 2))).await;
    drop(unanswered);
}

#[tokio::test(start_paused = true)]
async fn steps_down_at_once_when_another_replica_holds_the_lease() {
    let mut h = leading().await;
    h.show_other_holder(5).await;
    h.wait_leader(false).await;
    h.shut_down(None).await;
}

#[test]
fn unworkable_configurations_are_refused() {
    type Change = fn(&mut LeaseConfig);
    let cases: [(Change, &str); 4] = [
        (
            |c| c.identity.clear(),
            "lease bulkhead/bulkhead-controller: the holder identity is empty",
        ),
        (
            |c| c.lease_duration = Duration::from_millis(1500),
            "lease bulkhead/bulkhead-controller: the lease duration must be a whole number of seconds, at least 1",
        ),
        (
            |c| c.renew_deadline = c.lease_duration,
            "lease bulkhead/bulkhead-controller: the renew deadline must be shorter than the lease duration",
        ),
        (
            |c| c.retry_period = c.renew_deadline,
            "lease bulkhead/bulkhead-controller: the retry period must be positive and shorter than the renew deadline",
        ),
    ];
    for (change, message) in cases {
        let mut config = config();
        change(&mut config);
        assert_eq!(config.check().unwrap_err().to_string(), message);
    }
    assert_eq!(config().check().unwrap(), 15);
}
