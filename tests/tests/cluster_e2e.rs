//! Cluster end-to-end tests, against a real cluster where the chart is installed
//! (`helm install bulkhead charts/bulkhead ...`, see README "Deploy on Kubernetes"). They are
//! `#[ignore]`d and skip with a message unless `KUBECONFIG` is set:
//!
//! ```sh
//! KUBECONFIG=~/.kube/config cargo test -p bulkhead-tests --test cluster_e2e -- --ignored --nocapture
//! ```
//!
//! Each test works in a namespace of its own (`bulkhead-e2e-...`), deleted at the end: an
//! invalid SegmentationPolicy gets `Valid=False` with the validation error, `Realized=False`
//! (`PolicyInvalid`) and a Warning Event `InvalidPolicy`; a valid one gets
//! `Valid=True` and `Realized=True` with `realizedNodes == desiredNodes`, and is enforced: a
//! client it allows connects to the selected server, another client is refused.
//!
//! The manifests used are checked offline (not ignored) against the committed CRDs and the
//! policy library, so that a cluster run fails only on the cluster's behaviour.

use std::time::Duration;

use bulkhead_policy::PolicySet;
use bulkhead_policy::model::SegmentationPolicy;
use bulkhead_policy::model::status::{REALIZED, VALID};
use bulkhead_tests::chart::{chart_dir, validate_object};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// Failure guard for what the cluster does asynchronously (scheduling, image pulls, the
/// controller and the enforcers); not a performance claim.
const PATIENCE: Duration = Duration::from_secs(300);
const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.47";
const SERVER_PORT: u16 = 8080;

/// The invalid policy: schema-valid (the apiserver stores it) but refused by the policy library
/// (unknown selector operator), so only the controller can report it.
fn invalid_policy(namespace: &str) -> Value {
    json!({
        "apiVersion": "bulkhead.dev/v1alpha1",
        "kind": "SegmentationPolicy",
        "metadata": {"name": "e2e-invalid", "namespace": namespace},
        "spec": {
            "subject": {"podSelector": {"matchExpressions": [
                {"key": "app", "operator": "Matches", "values": ["server"]}
            ]}},
            "ingress": [],
        },
    })
}

/// Field path of the invalid policy's error, as the library names it.
const INVALID_FIELD: &str = "matchExpressions[0].operator";

/// The valid policy: `app=server` accepts only `app=client` on the server port.
fn valid_policy(namespace: &str) -> Value {
    json!({
        "apiVersion": "bulkhead.dev/v1alpha1",
        "kind": "SegmentationPolicy",
        "metadata": {"name": "e2e-server", "namespace": namespace},
        "spec": {
            "subject": {"podSelector": {"matchLabels": {"app": "server"}}},
            "ingress": [{
                "action": "Allow",
                "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                "ports": [{"protocol": "TCP", "port": SERVER_PORT}],
            }],
        },
    })
}

fn committed_crd() -> CustomResourceDefinition {
    let path = chart_dir().join("crds/segmentationpolicies.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn e2e_policies_pass_the_crd_and_only_the_valid_one_passes_the_library() {
    let crd = committed_crd();
    for policy in [invalid_policy("e2e"), valid_policy("e2e")] {
        validate_object(&crd, &policy).unwrap_or_else(|e| panic!("{policy}: {e:#?}"));
        serde_json::from_value::<SegmentationPolicy>(policy.clone())
            .unwrap_or_else(|e| panic!("{policy}: {e}"));
    }
    let yaml = |v: &Value| serde_yaml_ng::to_string(v).expect("yaml");
    PolicySet::from_yaml_str("valid.yaml", &yaml(&valid_policy("e2e"))).expect("valid policy");
    let error = PolicySet::from_yaml_str("invalid.yaml", &yaml(&invalid_policy("e2e")))
        .expect_err("invalid policy")
        .to_string();
    assert!(error.contains(INVALID_FIELD), "{error}");
}

/// A test namespace, deleted when dropped (also when the test fails).
struct TestNamespace {
    client: Client,
    name: String,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let name = self.name.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
                    eprintln!("cluster e2e: could not delete namespace {name}: {e}");
                }
            });
        });
    }
}

/// The cluster from `KUBECONFIG` and a fresh namespace, or `None` (test skipped) without it.
async fn cluster(test: &str) -> Option<TestNamespace> {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!(
            "cluster e2e {test}: skipped, KUBECONFIG is not set (point it at a cluster with the \
             bulkhead chart installed; see README, Deploy on Kubernetes)"
        );
        return None;
    }
    let client = Client::try_default()
        .await
        .expect("kube client from KUBECONFIG");
    let policies: Api<SegmentationPolicy> = Api::all(client.clone());
    if let Err(e) = policies.list(&Default::default()).await {
        panic!(
            "cluster e2e: cannot list SegmentationPolicies ({e}); is the bulkhead chart installed?"
        );
    }
    let stamp = jiff::Timestamp::now().as_millisecond();
    let name = format!("bulkhead-e2e-{test}-{stamp}");
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    eprintln!("cluster e2e {test}: namespace {name}");
    Some(TestNamespace { client, name })
}

/// Polls `probe` every second until it returns `Some`; panics after [`PATIENCE`] with `what`
/// and the last state seen.
async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (Option<T>, String)>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (done, seen) = probe().await;
        if let Some(done) = done {
            return done;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last seen: {seen}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn apply_policy(ns: &TestNamespace, policy: &Value) -> Api<SegmentationPolicy> {
    let api: Api<SegmentationPolicy> = Api::namespaced(ns.client.clone(), &ns.name);
    let name = policy["metadata"]["name"].as_str().expect("name");
    api.patch(
        name,
        &PatchParams::apply("bulkhead-e2e").force(),
        &Patch::Apply(policy),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
    api
}

fn condition<'a>(policy: &'a SegmentationPolicy, kind: &str) -> Option<&'a Condition> {
    policy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
}

/// The policy once its status describes its current generation and `done` holds.
async fn wait_for_status(
    api: &Api<SegmentationPolicy>,
    name: &str,
    what: &str,
    done: impl Fn(&SegmentationPolicy) -> bool,
) -> SegmentationPolicy {
    wait_for(what, || async {
        match api.get(name).await {
            Ok(p) => {
                let current =
                    p.status.as_ref().and_then(|s| s.observed_generation) == p.metadata.generation;
                let seen = format!("{:?}", p.status);
                ((current && done(&p)).then_some(p), seen)
            }
            Err(e) => (None, e.to_string()),
        }
    })
    .await
}

fn pod(name: &str, app: &str, restart: &str, args: &[&str]) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "agnhost", "image": AGNHOST, "args": args}],
        },
    }))
    .expect("pod")
}

/// The pod's phase once `done` accepts it.
async fn wait_for_pod(pods: &Api<Pod>, name: &str, done: impl Fn(&str) -> bool) -> Pod {
    wait_for(&format!("pod {name}"), || async {
        match pods.get(name).await {
            Ok(p) => {
                let phase = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                (done(&phase).then_some(p), phase)
            }
            Err(e) => (None, e.to_string()),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with the chart installed: set KUBECONFIG, run with --ignored"]
async fn invalid_policy_reports_valid_false_with_the_error() {
    let Some(ns) = cluster("invalid").await else {
        return;
    };
    let api = apply_policy(&ns, &invalid_policy(&ns.name)).await;
    let policy = wait_for_status(&api, "e2e-invalid", "Valid=False on e2e-invalid", |p| {
        condition(p, VALID).is_some_and(|c| c.status == "False")
    })
    .await;
    let valid = condition(&policy, VALID).expect("Valid condition");
    assert!(
        valid.message.contains(INVALID_FIELD),
        "message names the field: {valid:?}"
    );
    let realized = condition(&policy, REALIZED).expect("Realized condition");
    assert_eq!(
        (realized.status.as_str(), realized.reason.as_str()),
        ("False", "PolicyInvalid")
    );
    // And a Warning Event about it, next to the policy.
    let events: Api<K8sEvent> = Api::namespaced(ns.client.clone(), &ns.name);
    wait_for("the InvalidPolicy event about e2e-invalid", || async {
        match events.list(&Default::default()).await {
            Ok(list) => {
                let seen: Vec<String> = list
                    .items
                    .iter()
                    .map(|e| {
                        format!(
                            "{:?} {:?}",
                            e.reason,
                            e.regarding.as_ref().and_then(|r| r.name.clone())
                        )
                    })
                    .collect();
                let found = list.items.iter().any(|e| {
                    e.reason.as_deref() == Some("InvalidPolicy")
                        && e.type_.as_deref() == Some("Warning")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some("e2e-invalid")
                });
                (found.then_some(()), seen.join(", "))
            }
            Err(e) => (None, e.to_string()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with the chart installed: set KUBECONFIG, run with --ignored"]
async fn valid_policy_is_realized_on_every_node_and_enforced() {
    let Some(ns) = cluster("valid").await else {
        return;
    };
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let port = format!("--http-port={SERVER_PORT}");
    pods.create(
        &PostParams::default(),
        &pod("server", "server", "Always", &["netexec", &port]),
    )
    .await
    .expect("server pod");
    let server = wait_for_pod(&pods, "server", |phase| phase == "Running").await;
    let ip = server.status.and_then(|s| s.pod_ip).expect("server pod IP");

    let api = apply_policy(&ns, &valid_policy(&ns.name)).await;
    let policy = wait_for_status(
        &api,
        "e2e-server",
        "Valid=True and Realized=True on e2e-server",
        |p| {
            condition(p, VALID).is_some_and(|c| c.status == "True")
                && condition(p, REALIZED).is_some_and(|c| c.status == "True")
        },
    )
    .await;
    let status = policy.status.expect("status");
    assert!(
        status.desired_nodes.is_some_and(|n| n >= 1),
        "the server's node must enforce: {status:?}"
    );
    assert_eq!(status.realized_nodes, status.desired_nodes, "{status:?}");

    // The allowed client retries (restartPolicy OnFailure) until its identity has reached the
    // server's node; the other client's single attempt must be refused.
    let target = format!("{ip}:{SERVER_PORT}");
    let connect = ["connect", target.as_str(), "--timeout=5s"];
    pods.create(
        &PostParams::default(),
        &pod("allowed", "client", "OnFailure", &connect),
    )
    .await
    .expect("allowed client");
    pods.create(
        &PostParams::default(),
        &pod("denied", "other", "Never", &connect),
    )
    .await
    .expect("denied client");
    wait_for_pod(&pods, "allowed", |phase| phase == "Succeeded").await;
    let denied = wait_for_pod(&pods, "denied", |phase| {
        phase == "Succeeded" || phase == "Failed"
    })
    .await;
    let phase = denied
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    assert_eq!(
        phase,
        "Failed",
        "app=other must not reach app=server ({})",
        denied.name_any()
    );
}
