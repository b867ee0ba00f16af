//! The fake API server (`bulkhead_controller::testing`) against plain kube-rs: a reflector over
//! Pods follows adds, modifies and deletes, resumes after its watch is dropped and re-lists after
//! the history expired; streaming lists, selectors, create/replace conflicts, status patches by
//! server-side apply, and Events through kube's `Recorder`.

use bulkhead_controller::testing::{FakeApiServer, PATIENCE, eventually};
use bulkhead_policy::model::SegmentationPolicy;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;

fn pod(name: &str, app: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
    }))
    .expect("pod")
}

fn policy(name: &str) -> SegmentationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "bulkhead.dev/v1alpha1",
        "kind": "SegmentationPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"subject": {"podSelector": {"matchLabels": {"app": "web"}}}, "ingress": []},
    }))
    .expect("policy")
}

/// Starts a reflector over `config`'s Pods and waits until it has listed.
async fn reflect(server: &FakeApiServer, config: watcher::Config) -> Store<Pod> {
    let api: Api<Pod> = Api::all(server.client().expect("client"));
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    tokio::spawn(stream.for_each(|_| async {}));
    tokio::time::timeout(PATIENCE, reader.wait_until_ready())
        .await
        .expect("reflector ready in time")
        .expect("reflector ready");
    reader
}

fn app_of(store: &Store<Pod>, name: &str) -> Option<String> {
    store
        .state()
        .iter()
        .find(|p| p.name_any() == name)
        .and_then(|p| p.labels().get("app").cloned())
}

fn names(store: &Store<Pod>) -> Vec<String> {
    let mut names: Vec<String> = store.state().iter().map(|p| p.name_any()).collect();
    names.sort();
    names
}

/// The resourceVersion the second watch request (the first reconnect) started from.
fn resumed_from(server: &FakeApiServer) -> Option<u64> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.is_watch())
        .nth(1)?
        .query
        .get("resourceVersion")?
        .parse()
        .ok()
}

#[tokio::test]
async fn reflector_follows_adds_modifies_and_deletes() {
    let server = FakeApiServer::start().await.expect("server");
    server.apply(&pod("a", "web", "n1")).expect("a");
    let store = reflect(&server, watcher::Config::default()).await;
    assert_eq!(names(&store), ["a"]);

    server.apply(&pod("b", "db", "n1")).expect("b");
    eventually("b added", || names(&store) == ["a", "b"]).await;
    server.apply(&pod("a", "api", "n1")).expect("a relabeled");
    eventually("a modified", || {
        app_of(&store, "a").as_deref() == Some("api")
    })
    .await;
    assert!(server.delete::<Pod>(Some("shop"), "b").expect("delete"));
    eventually("b deleted", || names(&store) == ["a"]).await;

    // The stored object carries server metadata.
    let stored = server
        .get::<Pod>(Some("shop"), "a")
        .expect("get")
        .expect("a stored");
    assert!(stored.metadata.uid.is_some() && stored.metadata.creation_timestamp.is_some());
    assert_eq!(stored.metadata.generation, Some(1));
}

#[tokio::test]
async fn reflector_resumes_after_dropped_watch_without_relisting() {
    let server = FakeApiServer::start().await.expect("server");
    server.apply(&pod("a", "web", "n1")).expect("a");
    let store = reflect(&server, watcher::Config::default()).await;
    eventually("watch open", || server.open_watches() == 1).await;
    let last_seen = server.revision();

    server.drop_watches();
    server
        .apply(&pod("b", "web", "n2"))
        .expect("b while disconnected");
    eventually("b seen after reconnect", || names(&store) == ["a", "b"]).await;
    assert_eq!(server.lists_of("/api/v1/pods"), 1, "resumed, not re-listed");
    assert_eq!(resumed_from(&server), Some(last_seen));
}

#[tokio::test]
async fn reflector_relists_after_history_expired() {
    let server = FakeApiServer::start().await.expect("server");
    server.apply(&pod("a", "web", "n1")).expect("a");
    server.apply(&pod("b", "web", "n1")).expect("b");
    let store = reflect(&server, watcher::Config::default()).await;
    eventually("watch open", || server.open_watches() == 1).await;

    // While the watch is down: one pod deleted, one added, one relabeled; then the history
    // is forgotten, so the resuming watch gets 410 and the watcher re-lists.
    server.drop_watches();
    assert!(server.delete::<Pod>(Some("shop"), "b").expect("delete"));
    server.apply(&pod("c", "web", "n2")).expect("c");
    server.apply(&pod("a", "db", "n1")).expect("a relabeled");
    server.expire_history();
    eventually("state after re-list", || {
        names(&store) == ["a", "c"] && app_of(&store, "a").as_deref() == Some("db")
    })
    .await;
    assert_eq!(server.lists_of("/api/v1/pods"), 2, "re-listed once");

    // And it watches live again.
    server.apply(&pod("d", "web", "n2")).expect("d");
    eventually("d added", || names(&store) == ["a", "c", "d"]).await;
}

#[tokio::test]
async fn bookmarks_move_the_resume_point() {
    let server = FakeApiServer::start().await.expect("server");
    server.apply(&pod("a", "web", "n1")).expect("a");
    let store = reflect(&server, watcher::Config::default()).await;
    eventually("watch open", || server.open_watches() == 1).await;
    // A change to another resource, then a bookmark, then the watch ends: the events queued
    // before the end are still delivered, so the watcher resumes at the bookmark, not at pod a.
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("x".into());
    cm.metadata.namespace = Some("shop".into());
    server.apply(&cm).expect("configmap");
    server.send_bookmarks();
    let bookmarked = server.revision();
    server.drop_watches();
    server.apply(&pod("b", "web", "n1")).expect("b");
    eventually("b added", || names(&store) == ["a", "b"]).await;
    assert_eq!(resumed_from(&server), Some(bookmarked));
}

#[tokio::test]
async fn streaming_list_and_label_selector() {
    let server = FakeApiServer::start().await.expect("server");
    server.apply(&pod("a", "web", "n1")).expect("a");
    server.apply(&pod("b", "db", "n1")).expect("b");
    let config = watcher::Config::default()
        .streaming_lists()
        .labels("app=web");
    let store = reflect(&server, config).await;
    assert_eq!(names(&store), ["a"]);
    assert_eq!(
        server.lists_of("/api/v1/pods"),
        0,
        "initial state came from the watch"
    );
    // Relabeling into and out of the selector adds and removes.
    server.apply(&pod("b", "web", "n1")).expect("b in");
    eventually("b entered", || names(&store) == ["a", "b"]).await;
    server.apply(&pod("a", "db", "n1")).expect("a out");
    eventually("a left", || names(&store) == ["b"]).await;
}

#[tokio::test]
async fn writes_conflict_patch_status_and_delete() {
    let server = FakeApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");

    let created = pods
        .create(&PostParams::default(), &pod("a", "web", "n1"))
        .await
        .expect("create");
    let err = pods
        .create(&PostParams::default(), &pod("a", "web", "n1"))
        .await
        .expect_err("exists");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err}"
    );

    // Replace with the current resourceVersion succeeds, with a stale one conflicts.
    let mut relabeled = created.clone();
    relabeled.labels_mut().insert("app".into(), "api".into());
    let replaced = pods
        .replace("a", &PostParams::default(), &relabeled)
        .await
        .expect("replace");
    assert_eq!(replaced.labels()["app"], "api");
    let err = pods
        .replace("a", &PostParams::default(), &relabeled)
        .await
        .expect_err("stale");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err}"
    );

    // Merge patch of the main resource; get; delete; get 404.
    let patch = json!({"metadata": {"labels": {"tier": "front"}}});
    pods.patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("merge patch");
    assert_eq!(pods.get("a").await.expect("get").labels()["tier"], "front");
    pods.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let err = pods.get("a").await.expect_err("gone");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err}"
    );

    // Server-side apply creates the policy; its status is written through /status only.
    let policies: Api<SegmentationPolicy> = Api::namespaced(client, "shop");
    let ssa = PatchParams::apply("test").force();
    let applied = policies
        .patch("web", &ssa, &Patch::Apply(&policy("web")))
        .await
        .expect("apply");
    assert_eq!(applied.meta().generation, Some(1));
    let status = json!({
        "apiVersion": "bulkhead.dev/v1alpha1",
        "kind": "SegmentationPolicy",
        "status": {"observedGeneration": 1, "desiredNodes": 2, "realizedNodes": 1,
            "conditions": [{"type": "Valid", "status": "True", "reason": "Compiled", "message": "",
                "lastTransitionTime": "2026-11-28T00:00:00Z"}]},
    });
    let with_status = policies
        .patch_status("web", &ssa, &Patch::Apply(&status))
        .await
        .expect("patch_status");
    let written = with_status.status.expect("status written");
    assert_eq!(
        (written.desired_nodes, written.realized_nodes),
        (Some(2), Some(1))
    );
    assert_eq!(written.conditions[0].type_, "Valid");
    // A spec change bumps the generation and keeps the status.
    let mut changed = policy("web");
    changed.spec.priority = 7;
    let reapplied = policies
        .patch("web", &ssa, &Patch::Apply(&changed))
        .await
        .expect("reapply");
    assert_eq!(reapplied.meta().generation, Some(2));
    assert!(reapplied.status.is_some());
    let stored = server
        .get::<SegmentationPolicy>(Some("shop"), "web")
        .expect("get")
        .expect("stored");
    assert_eq!(stored.spec.priority, 7);
}

#[tokio::test]
async fn recorder_publishes_events() {
    let server = FakeApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let stored = server.apply(&policy("web")).expect("policy");
    let recorder = Recorder::new(client, Reporter::from("bulkhead-controller"));
    let event = Event {
        type_: EventType::Warning,
        reason: "Invalid".into(),
        note: Some("spec.ingress[0]: bad".into()),
        action: "Validate".into(),
        secondary: None,
    };
    let reference = stored.object_ref(&());
    recorder
        .publish(&event, &reference)
        .await
        .expect("first publish creates");
    recorder
        .publish(&event, &reference)
        .await
        .expect("second publish patches the series");
    let events = server
        .list::<k8s_openapi::api::events::v1::Event>()
        .expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason.as_deref(), Some("Invalid"));
    assert_eq!(events[0].series.as_ref().map(|s| s.count), Some(2));
}

#[tokio::test]
async fn other_types_are_served_once_registered() {
    use k8s_openapi::api::apps::v1::Deployment;
    let server = FakeApiServer::start().await.expect("server");
    let deployments: Api<Deployment> = Api::namespaced(server.client().expect("client"), "shop");
    let err = deployments
        .list(&Default::default())
        .await
        .expect_err("not served");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err}"
    );
    server.serve::<Deployment>();
    let mut d = Deployment::default();
    d.metadata.name = Some("web".into());
    deployments
        .create(&PostParams::default(), &d)
        .await
        .expect("create");
    let listed = deployments.list(&Default::default()).await.expect("list");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.namespace.as_deref(), Some("shop"));
}
