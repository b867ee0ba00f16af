//! Tests of the policy status, and the mocked API server (`tower_test`, in the kube-rs
//! controller-rs `ApiServerVerifier` style) the events and leader election tests use too.

use std::time::Duration;

use bulkhead_policy::model::status::{REALIZED, VALID};
use bulkhead_policy::{Kind, ObjectKey, model::PolicyStatus};
use http::{Method, Request, Response, StatusCode};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

use super::*;

/// Failure guard for a request that never comes; not a performance claim.
const GUARD: Duration = Duration::from_secs(30);

/// The API server side of a mocked [`Client`]: each test takes the requests the code under
/// test makes, asserts them and answers them.
pub(crate) struct ApiServer(Handle<Request<Body>, Response<Body>>);

/// One request made to the [`ApiServer`].
pub(crate) struct Call {
    pub(crate) method: Method,
    /// Path and query, e.g. `/api/v1/namespaces/ns/pods?`.
    pub(crate) uri: String,
    pub(crate) content_type: Option<String>,
    /// The body as JSON (`Null` when empty).
    pub(crate) body: Value,
    send: SendResponse<Response<Body>>,
}

/// A client whose requests go to the returned [`ApiServer`].
pub(crate) fn mock_client() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer(handle))
}

impl ApiServer {
    /// The next request; panics when every client is gone first.
    pub(crate) async fn next(&mut self) -> Call {
        let (request, send) = tokio::time::timeout(GUARD, self.0.next_request())
            .await
            .expect("no request within the guard time")
            .expect("every client was dropped before the expected request");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        Call {
            method: parts.method,
            uri: parts.uri.to_string(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().expect("ascii content type").to_owned()),
            body: if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("JSON request body")
            },
            send,
        }
    }

    /// Asserts that no request comes before every client is dropped.
    pub(crate) async fn expect_no_more(mut self) {
        let next = tokio::time::timeout(GUARD, self.0.next_request())
            .await
            .expect("a client is still alive after the guard time");
        if let Some((request, _)) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

impl Call {
    /// Asserts the method and the path with query.
    pub(crate) fn expect(&self, method: Method, uri: &str) {
        assert_eq!((&self.method, self.uri.as_str()), (&method, uri));
    }

    /// Answers with `code` and `body` as JSON.
    pub(crate) fn respond(self, code: StatusCode, body: &Value) {
        self.send.send_response(
            Response::builder()
                .status(code)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(body).expect("JSON")))
                .expect("response"),
        );
    }

    /// Answers with the API server's `Status` object for an error `code`.
    pub(crate) fn respond_error(self, code: StatusCode, reason: &str) {
        let body = json!({
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": format!("mocked {reason}"),
            "reason": reason,
            "code": code.as_u16(),
        });
        self.respond(code, &body);
    }
}

fn key(kind: Kind, namespace: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: namespace.map(str::to_owned),
        name: name.to_owned(),
    }
}

fn input(validation: Result<(), String>, desired: u32, realized: u32) -> StatusInput {
    StatusInput {
        key: key(Kind::SegmentationPolicy, Some("shop"), "web"),
        generation: 3,
        validation,
        desired_nodes: desired,
        realized_nodes: realized,
    }
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).expect("valid timestamp")
}

fn condition<'a>(status: &'a PolicyStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

/// `(status, reason)` of a condition.
fn summary<'a>(status: &'a PolicyStatus, type_: &str) -> (&'a str, &'a str) {
    let c = condition(status, type_);
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn valid_and_realized_on_all_nodes() {
    let status = build_status(&input(Ok(()), 3, 3), None, at(1_000)).unwrap();
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(
        (status.desired_nodes, status.realized_nodes),
        (Some(3), Some(3))
    );
    assert_eq!(summary(&status, VALID), ("True", REASON_VALIDATED));
    assert_eq!(
        summary(&status, REALIZED),
        ("True", REASON_REALIZED_ON_ALL_NODES)
    );
    let realized = condition(&status, REALIZED);
    assert_eq!(realized.message, "enforced on 3 of 3 nodes");
    assert_eq!(realized.observed_generation, Some(3));
    assert_eq!(realized.last_transition_time, Time(at(1_000)));
}

#[test]
fn realized_follows_the_node_counts() {
    for (desired, realized, expected) in [
        (
            3,
            1,
            (
                "False",
                REASON_REALIZATION_PENDING,
                "enforced on 1 of 3 nodes",
            ),
        ),
        (
            3,
            0,
            (
                "False",
                REASON_REALIZATION_PENDING,
                "enforced on 0 of 3 nodes",
            ),
        ),
        (
            0,
            0,
            (
                "True",
                REASON_NO_NODES_SELECTED,
                "no node runs a workload the policy selects",
            ),
        ),
        (
            1,
            1,
            (
                "True",
                REASON_REALIZED_ON_ALL_NODES,
                "enforced on 1 of 1 nodes",
            ),
        ),
    ] {
        let status = build_status(&input(Ok(()), desired, realized), None, at(1_000)).unwrap();
        let c = condition(&status, REALIZED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            expected,
            "{realized} of {desired}"
        );
    }
}

#[test]
fn invalid_policy_carries_the_error_and_is_not_realized() {
    let error = "spec.ingress[0].from[0].cidr: invalid CIDR \"10.0.0.0/33\"".to_owned();
    let status = build_status(&input(Err(error.clone()), 0, 0), None, at(1_000)).unwrap();
    assert_eq!(summary(&status, VALID), ("False", REASON_VALIDATION_FAILED));
    assert_eq!(condition(&status, VALID).message, error);
    assert_eq!(summary(&status, REALIZED), ("False", REASON_POLICY_INVALID));
}

#[test]
fn more_realized_than_desired_is_refused() {
    let error = build_status(&input(Ok(()), 1, 2), None, at(1_000)).unwrap_err();
    assert!(matches!(
        error,
        StatusError::Counts {
            desired: 1,
            realized: 2,
            ..
        }
    ));
    assert_eq!(
        error.to_string(),
        format!(
            "SegmentationPolicy shop/web: realizedNodes 2 must be at most desiredNodes 1, both at most {}",
            i32::MAX
        )
    );
    let error = build_status(&input(Ok(()), u32::MAX, 0), None, at(1_000)).unwrap_err();
    assert!(matches!(error, StatusError::Counts { .. }));
}

/// `lastTransitionTime` of a condition, in seconds.
fn since(status: &PolicyStatus, type_: &str) -> i64 {
    condition(status, type_).last_transition_time.0.as_second()
}

#[test]
fn transition_time_changes_only_with_the_condition_status() {
    let first = build_status(&input(Ok(()), 3, 1), None, at(1_000)).unwrap();
    // Counts move, Realized stays False; Valid stays True: both keep their times.
    let second = build_status(&input(Ok(()), 3, 2), Some(&first), at(2_000)).unwrap();
    assert_eq!(
        (since(&second, VALID), since(&second, REALIZED)),
        (1_000, 1_000)
    );
    assert_eq!(
        condition(&second, REALIZED).message,
        "enforced on 2 of 3 nodes"
    );
    // Realized flips to True: new time; Valid keeps its own.
    let third = build_status(&input(Ok(()), 3, 3), Some(&second), at(3_000)).unwrap();
    assert_eq!(
        (since(&third, VALID), since(&third, REALIZED)),
        (1_000, 3_000)
    );
}

#[test]
fn now_is_kept_to_the_second() {
    let now = at(1_000) + jiff::SignedDuration::from_millis(750);
    let status = build_status(&input(Ok(()), 0, 0), None, now).unwrap();
    assert_eq!(
        condition(&status, VALID).last_transition_time,
        Time(at(1_000))
    );
}

#[test]
fn differs_ignores_foreign_conditions_and_order() {
    let ours = build_status(&input(Ok(()), 2, 2), None, at(1_000)).unwrap();
    assert!(status_differs(None, &ours));
    let mut stored = ours.clone();
    stored.conditions.reverse();
    stored.conditions.push(Condition {
        type_: "Audited".into(),
        status: "True".into(),
        reason: "SomeoneElse".into(),
        message: String::new(),
        observed_generation: Some(3),
        last_transition_time: Time(at(5)),
    });
    assert!(!status_differs(Some(&stored), &ours));
    let mut older = ours.clone();
    older.observed_generation = Some(2);
    assert!(status_differs(Some(&older), &ours));
    let mut fewer = ours.clone();
    fewer.realized_nodes = Some(1);
    assert!(status_differs(Some(&fewer), &ours));
    let mut other_message = ours.clone();
    other_message.conditions[0].message = "old".into();
    assert!(status_differs(Some(&other_message), &ours));
}

const NAMESPACED_STATUS: &str = "/apis/bulkhead.dev/v1alpha1/namespaces/shop/segmentationpolicies/web/status?&force=true&fieldManager=bulkhead-controller";

/// Answers a status apply like the API server: the object with the applied status.
fn answer_apply(call: Call, namespace: Option<&str>, name: &str) {
    let mut object = call.body.clone();
    object["metadata"] = json!({"name": name, "namespace": namespace, "generation": 3});
    call.respond(StatusCode::OK, &object);
}

#[tokio::test]
async fn writes_namespaced_status_by_server_side_apply() {
    let (client, mut server) = mock_client();
    let writer = StatusWriter::new(client);
    let task = tokio::spawn(async move {
        writer
            .reconcile(
                &input(Err("spec.priority: 2000 exceeds 1000".into()), 2, 0),
                None,
            )
            .await
    });
    let call = server.next().await;
    call.expect(Method::PATCH, NAMESPACED_STATUS);
    assert_eq!(
        call.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    let ltt = call.body["status"]["conditions"][0]["lastTransitionTime"].clone();
    assert!(ltt.is_string(), "lastTransitionTime {ltt}");
    assert_eq!(
        call.body,
        json!({
            "apiVersion": "bulkhead.dev/v1alpha1",
            "kind": "SegmentationPolicy",
            "status": {
                "observedGeneration": 3,
                "conditions": [
                    {
                        "type": "Valid",
                        "status": "False",
                        "reason": "ValidationFailed",
                        "message": "spec.priority: 2000 exceeds 1000",
                        "observedGeneration": 3,
                        "lastTransitionTime": ltt,
                    },
                    {
                        "type": "Realized",
                        "status": "False",
                        "reason": "PolicyInvalid",
                        "message": "the policy is invalid and not enforced",
                        "observedGeneration": 3,
                        "lastTransitionTime": ltt,
                    },
                ],
                "desiredNodes": 2,
                "realizedNodes": 0,
            },
        })
    );
    answer_apply(call, Some("shop"), "web");
    let written = task.await.unwrap().unwrap().expect("a write");
    assert_eq!(
        summary(&written, VALID),
        ("False", REASON_VALIDATION_FAILED)
    );
    server.expect_no_more().await;
}

#[tokio::test]
async fn writes_cluster_status_without_namespace() {
    let (client, mut server) = mock_client();
    let writer = StatusWriter::new(client);
    let mut cluster = input(Ok(()), 0, 0);
    cluster.key = key(Kind::ClusterSegmentationPolicy, None, "no-metadata");
    let task = tokio::spawn(async move { writer.reconcile(&cluster, None).await });
    let call = server.next().await;
    call.expect(
        Method::PATCH,
        "/apis/bulkhead.dev/v1alpha1/clustersegmentationpolicies/no-metadata/status?&force=true&fieldManager=bulkhead-controller",
    );
    assert_eq!(call.body["kind"], "ClusterSegmentationPolicy");
    assert_eq!(
        call.body["status"]["conditions"][1]["reason"],
        "NoNodesSelected"
    );
    answer_apply(call, None, "no-metadata");
    assert!(task.await.unwrap().unwrap().is_some());
    server.expect_no_more().await;
}

#[tokio::test]
async fn steady_state_writes_nothing() {
    let (client, server) = mock_client();
    let writer = StatusWriter::new(client);
    let stored = build_status(&input(Ok(()), 4, 4), None, at(1_000)).unwrap();
    let written = writer
        .reconcile(&input(Ok(()), 4, 4), Some(&stored))
        .await
        .unwrap();
    assert_eq!(written, None);
    drop(writer);
    server.expect_no_more().await;
}

#[tokio::test]
async fn count_change_preserves_transition_times() {
    let (client, mut server) = mock_client();
    let writer = StatusWriter::new(client);
    let stored = build_status(&input(Ok(()), 4, 1), None, at(1_000)).unwrap();
    let task =
        tokio::spawn(async move { writer.reconcile(&input(Ok(()), 4, 2), Some(&stored)).await });
    let call = server.next().await;
    call.expect(Method::PATCH, NAMESPACED_STATUS);
    let status: PolicyStatus = serde_json::from_value(call.body["status"].clone()).unwrap();
    assert_eq!(status.realized_nodes, Some(2));
    for type_ in [VALID, REALIZED] {
        assert_eq!(
            condition(&status, type_).last_transition_time,
            Time(at(1_000)),
            "{type_}"
        );
    }
    assert_eq!(
        call.body["status"]["conditions"][1]["lastTransitionTime"],
        "1970-01-01T00:16:40Z"
    );
    answer_apply(call, Some("shop"), "web");
    task.await.unwrap().unwrap();
    server.expect_no_more().await;
}

#[tokio::test]
async fn refused_apply_is_an_error_naming_the_policy() {
    let (client, mut server) = mock_client();
    let writer = StatusWriter::new(client);
    let task = tokio::spawn(async move { writer.reconcile(&input(Ok(()), 1, 1), None).await });
    let call = server.next().await;
    call.expect(Method::PATCH, NAMESPACED_STATUS);
    call.respond_error(StatusCode::FORBIDDEN, "Forbidden");
    let error = task.await.unwrap().unwrap_err();
    assert!(matches!(error, StatusError::Patch { .. }), "{error:?}");
    assert!(!error.is_not_found());
    assert_eq!(
        error.to_string(),
        "SegmentationPolicy shop/web: writing the status failed"
    );
    server.expect_no_more().await;
}

#[tokio::test]
async fn a_deleted_policy_is_not_found() {
    let (client, mut server) = mock_client();
    let writer = StatusWriter::new(client);
    let task = tokio::spawn(async move { writer.reconcile(&input(Ok(()), 1, 0), None).await });
    server
        .next()
        .await
        .respond_error(StatusCode::NOT_FOUND, "NotFound");
    assert!(task.await.unwrap().unwrap_err().is_not_found());
    server.expect_no_more().await;
}

#[tokio::test]
async fn network_policies_and_unnamespaced_keys_are_refused_without_a_request() {
    let (client, server) = mock_client();
    let writer = StatusWriter::new(client);
    let mut netpol = input(Ok(()), 1, 1);
    netpol.key = key(Kind::NetworkPolicy, Some("shop"), "deny-all");
    let error = writer.reconcile(&netpol, None).await.unwrap_err();
    assert!(matches!(error, StatusError::NoStatus { .. }), "{error:?}");
    let mut no_namespace = input(Ok(()), 1, 1);
    no_namespace.key.namespace = None;
    let error = writer.reconcile(&no_namespace, None).await.unwrap_err();
    assert!(
        matches!(error, StatusError::MissingNamespace { .. }),
        "{error:?}"
    );
    drop(writer);
    server.expect_no_more().await;
}
