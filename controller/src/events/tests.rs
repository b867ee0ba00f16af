//! Which events a policy's states call for, and their publication to a mocked API server.

use bulkhead_policy::Kind;
use http::{Method, StatusCode};
use jiff::Timestamp;
use serde_json::json;

use super::*;
use crate::status::build_status;
use crate::status::tests::{ApiServer, mock_client};

const UID: &str = "6c1ab0f7-0000-4000-8000-000000000001";

fn input(
    generation: i64,
    validation: Result<(), &str>,
    desired: u32,
    realized: u32,
) -> StatusInput {
    StatusInput {
        key: ObjectKey {
            kind: Kind::SegmentationPolicy,
            namespace: Some("shop".into()),
            name: "web".into(),
        },
        generation,
        validation: validation.map_err(str::to_owned),
        desired_nodes: desired,
        realized_nodes: realized,
    }
}

/// Feeds `states` in order to [`decide`] and returns the events of each.
fn run(states: &[StatusInput]) -> Vec<Vec<PolicyEvent>> {
    let mut seen = None;
    states
        .iter()
        .map(|state| {
            let (events, now) = decide(seen.take(), state, Some(UID), None);
            seen = Some(now);
            events
        })
        .collect()
}

fn invalid(error: &str) -> PolicyEvent {
    PolicyEvent::Invalid {
        error: error.into(),
    }
}

#[test]
fn invalid_is_announced_once_per_generation_and_error() {
    let events = run(&[
        input(1, Err("spec.priority: 2000 exceeds 1000"), 0, 0),
        input(1, Err("spec.priority: 2000 exceeds 1000"), 0, 0),
        input(2, Err("spec.priority: 2000 exceeds 1000"), 0, 0),
        input(2, Err("spec.priority: 3000 exceeds 1000"), 0, 0),
        input(2, Err("spec.priority: 3000 exceeds 1000"), 0, 0),
    ]);
    assert_eq!(
        events,
        [
            vec![invalid("spec.priority: 2000 exceeds 1000")],
            vec![],
            vec![invalid("spec.priority: 2000 exceeds 1000")],
            vec![invalid("spec.priority: 3000 exceeds 1000")],
            vec![],
        ]
    );
}

#[test]
fn valid_again_and_realized_once_per_generation() {
    let events = run(&[
        input(1, Err("bad"), 2, 0),
        input(2, Ok(()), 2, 0),
        input(2, Ok(()), 2, 1),
        input(2, Ok(()), 2, 2),
        input(2, Ok(()), 2, 2),
        // A node joins and catches up: the same generation is not announced twice.
        input(2, Ok(()), 3, 2),
        input(2, Ok(()), 3, 3),
        input(3, Ok(()), 3, 1),
        input(3, Ok(()), 3, 3),
    ]);
    let realized = |generation, nodes| PolicyEvent::Realized { generation, nodes };
    assert_eq!(
        events,
        [
            vec![invalid("bad")],
            vec![PolicyEvent::ValidAgain { generation: 2 }],
            vec![],
            vec![realized(2, 2)],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![realized(3, 3)],
        ]
    );
}

#[test]
fn nothing_to_announce_for_no_nodes_or_at_first_sight() {
    // First sight realized (e.g. after a restart without a stored status): recorded silently.
    assert_eq!(
        run(&[input(1, Ok(()), 2, 2), input(1, Ok(()), 2, 2)]),
        [vec![], vec![]]
    );
    assert_eq!(
        run(&[input(1, Ok(()), 0, 0), input(2, Ok(()), 0, 0)]),
        [vec![], vec![]]
    );
    // A valid policy never invalid gets no ValidAgain.
    assert_eq!(
        run(&[input(1, Ok(()), 1, 0), input(2, Ok(()), 1, 0)]),
        [vec![], vec![]]
    );
}

#[test]
fn a_recreated_object_starts_afresh() {
    let (_, seen) = decide(None, &input(1, Err("bad"), 0, 0), Some(UID), None);
    let (events, _) = decide(
        Some(seen),
        &input(1, Err("bad"), 0, 0),
        Some("other-uid"),
        None,
    );
    assert_eq!(events, [invalid("bad")]);
}

#[test]
fn the_stored_status_of_the_same_generation_counts_as_announced() {
    let at = Timestamp::UNIX_EPOCH;
    let invalid_state = input(4, Err("bad"), 0, 0);
    let stored = build_status(&invalid_state, None, at).unwrap();
    assert_eq!(decide(None, &invalid_state, Some(UID), Some(&stored)).0, []);
    // An older generation's status says nothing about this one.
    let newer = input(5, Err("bad"), 0, 0);
    assert_eq!(
        decide(None, &newer, Some(UID), Some(&stored)).0,
        [invalid("bad")]
    );

    let realized_state = input(4, Ok(()), 2, 2);
    let stored = build_status(&realized_state, None, at).unwrap();
    assert_eq!(
        decide(None, &realized_state, Some(UID), Some(&stored)).0,
        []
    );
    let pending = build_status(&input(4, Ok(()), 2, 1), None, at).unwrap();
    assert_eq!(
        decide(None, &realized_state, Some(UID), Some(&pending)).0,
        [PolicyEvent::Realized {
            generation: 4,
            nodes: 2
        }]
    );
}

#[test]
fn long_notes_are_cut_on_a_character_boundary() {
    let error = "é".repeat(600);
    let event = invalid(&error).to_event();
    let note = event.note.unwrap();
    assert_eq!(note.len(), 1024);
    assert!(error.starts_with(&note));
}

/// Events published to a mocked API server, as pod `bulkhead-controller-0`.
fn mock_events() -> (PolicyEvents, ApiServer) {
    let (client, server) = mock_client();
    let reporter = Reporter {
        controller: "bulkhead-controller".into(),
        instance: Some("bulkhead-controller-0".into()),
    };
    (PolicyEvents::new(client, reporter), server)
}

/// Takes the event POST the events module makes, checks its path, and echoes it back.
async fn expect_event(server: &mut ApiServer, namespace: &str) -> serde_json::Value {
    let call = server.next().await;
    call.expect(
        Method::POST,
        &format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events?"),
    );
    let body = call.body.clone();
    call.respond(StatusCode::CREATED, &body);
    body
}

type Observed = Result<Vec<PolicyEvent>, EventsError>;

/// Observes `state` twice in a task, while the test answers the mocked API server.
fn observe_twice(
    events: PolicyEvents,
    state: StatusInput,
) -> tokio::task::JoinHandle<(Observed, Observed, PolicyEvents)> {
    tokio::spawn(async move {
        let first = events.observe(&state, Some(UID), None).await;
        let second = events.observe(&state, Some(UID), None).await;
        (first, second, events)
    })
}

#[tokio::test]
async fn posts_a_warning_for_an_invalid_policy_once() {
    let (events, mut server) = mock_events();
    let state = input(3, Err("spec.ingress[0].ports[0].endPort: below port"), 0, 0);
    let task = observe_twice(events, state);
    let body = expect_event(&mut server, "shop").await;
    assert_eq!(body["type"], "Warning");
    assert_eq!(body["reason"], "InvalidPolicy");
    assert_eq!(body["action"], "Validate");
    assert_eq!(body["note"], "spec.ingress[0].ports[0].endPort: below port");
    assert_eq!(body["reportingController"], "bulkhead-controller");
    assert_eq!(body["reportingInstance"], "bulkhead-controller-0");
    assert_eq!(
        body["regarding"],
        json!({
            "apiVersion": "bulkhead.dev/v1alpha1",
            "kind": "SegmentationPolicy",
            "name": "web",
            "namespace": "shop",
            "uid": UID,
        })
    );
    assert_eq!(body["metadata"]["namespace"], "shop");
    let (first, second, _) = task.await.unwrap();
    assert_eq!(first.unwrap().len(), 1);
    assert_eq!(second.unwrap(), []);
    server.expect_no_more().await;
}

#[tokio::test]
async fn cluster_policy_events_go_to_the_default_namespace() {
    let (events, mut server) = mock_events();
    let mut pending = input(1, Ok(()), 5, 4);
    pending.key = ObjectKey {
        kind: Kind::ClusterSegmentationPolicy,
        namespace: None,
        name: "no-metadata".into(),
    };
    let mut done = pending.clone();
    done.realized_nodes = 5;
    let task = tokio::spawn(async move {
        assert_eq!(events.observe(&pending, Some(UID), None).await.unwrap(), []);
        events.observe(&done, Some(UID), None).await.unwrap()
    });
    let body = expect_event(&mut server, "default").await;
    assert_eq!(body["type"], "Normal");
    assert_eq!(body["reason"], "PolicyRealized");
    assert_eq!(
        body["note"],
        "generation 1 is enforced on all 5 of its nodes"
    );
    assert_eq!(body["regarding"]["kind"], "ClusterSegmentationPolicy");
    assert_eq!(body["regarding"].get("namespace"), None);
    assert_eq!(
        task.await.unwrap(),
        [PolicyEvent::Realized {
            generation: 1,
            nodes: 5
        }]
    );
    server.expect_no_more().await;
}

#[tokio::test]
async fn network_policy_valid_again_then_realized() {
    let (events, mut server) = mock_events();
    let mut broken = input(
        1,
        Err("spec.ingress[0].from[0].ipBlock.cidr: invalid"),
        1,
        0,
    );
    broken.key.kind = Kind::NetworkPolicy;
    let mut fixed = broken.clone();
    fixed.generation = 2;
    fixed.validation = Ok(());
    fixed.realized_nodes = 1;
    let task = tokio::spawn(async move {
        events.observe(&broken, Some(UID), None).await.unwrap();
        events.observe(&fixed, Some(UID), None).await.unwrap()
    });
    let reasons = [
        expect_event(&mut server, "shop").await,
        expect_event(&mut server, "shop").await,
        expect_event(&mut server, "shop").await,
    ]
    .map(|body| {
        assert_eq!(body["regarding"]["apiVersion"], "networking.k8s.io/v1");
        body["reason"].as_str().unwrap().to_owned()
    });
    assert_eq!(reasons, ["InvalidPolicy", "PolicyValid", "PolicyRealized"]);
    assert_eq!(task.await.unwrap().len(), 2);
    server.expect_no_more().await;
}

#[tokio::test]
async fn a_refused_event_is_an_error_and_not_repeated() {
    let (events, mut server) = mock_events();
    let state = input(1, Err("bad"), 0, 0);
    let task = observe_twice(events, state);
    let call = server.next().await;
    call.respond_error(StatusCode::FORBIDDEN, "Forbidden");
    let (error, again, events) = task.await.unwrap();
    assert_eq!(
        error.unwrap_err().to_string(),
        "SegmentationPolicy shop/web: publishing the InvalidPolicy event failed"
    );
    assert_eq!(again.unwrap(), []);
    events.forget(&input(1, Ok(()), 0, 0).key);
    // Forgotten (deleted), the same state is announced afresh.
    let task = tokio::spawn(async move {
        events
            .observe(&input(1, Err("bad"), 0, 0), Some(UID), None)
            .await
            .unwrap()
    });
    expect_event(&mut server, "shop").await;
    assert_eq!(task.await.unwrap(), [invalid("bad")]);
    server.expect_no_more().await;
}
