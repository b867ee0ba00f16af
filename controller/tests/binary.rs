//! The `bulkhead-controller` binary end to end against the in-process fake API server (dev mode
//! on loopback, with and without leader election): it is elected, lists, compiles and serves an
//! enforcer's stream, reports ready; on SIGTERM it ends the open streams (UNAVAILABLE), releases
//! the Lease and exits 0.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};

use bulkhead_controller::testing::{FakeApiServer, PATIENCE, eventually};
use bulkhead_proto::wire::controller_message::Msg;
use bulkhead_proto::wire::policy_sync_client::PolicySyncClient;
use bulkhead_proto::wire::{EnforcerMessage, Hello, enforcer_message};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde_json::json;

fn object<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
    serde_json::from_value(v).unwrap()
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The status code of `GET path` on `addr` (None: no answer).
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// Kills the child if the test fails before it exits.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_when_elected_and_shuts_down_cleanly() {
    scenario(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_alone_and_shuts_down_cleanly() {
    scenario(false).await;
}

/// Starts the binary (with or without leader election), checks it serves, stops it.
async fn scenario(leader_election: bool) {
    let api = FakeApiServer::start().await.unwrap();
    let ns: Namespace = object(json!({"metadata": {"name": "shop",
        "labels": {"kubernetes.io/metadata.name": "shop"}}}));
    let node: Node = object(json!({"metadata": {"name": "n1"}}));
    let pod: Pod = object(json!({
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}]},
    }));
    api.apply(&ns).unwrap();
    api.apply(&node).unwrap();
    api.apply(&pod).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "bulkhead-binary-test-{}-{leader_election}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\n\
             contexts: [{{name: c, context: {{cluster: c, user: u, namespace: bulkhead}}}}]\n\
             current-context: c\n",
            api.url()
        ),
    )
    .unwrap();
    let (grpc, metrics) = (free_port(), free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_bulkhead-controller"));
    command.args(["--identity-configmap=ids", "--insecure"]);
    if leader_election {
        command.args(["--leader-election", "--lease-name=ctl"]);
    }
    let child = command
        .arg(format!("--grpc-listen={grpc}"))
        .arg(format!("--metrics={metrics}"))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "c-0")
        .env_remove("POD_NAMESPACE")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    eventually("/readyz 200", || {
        http_status(metrics, "/readyz") == Some(200)
    })
    .await;
    if leader_election {
        let lease: Lease = api.get(Some("bulkhead"), "ctl").unwrap().unwrap();
        let holder = lease.spec.and_then(|s| s.holder_identity);
        assert_eq!(holder.as_deref(), Some("c-0"));
    }
    // An enforcer's stream gets n1's snapshot with the pod.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let hello = EnforcerMessage {
        msg: Some(enforcer_message::Msg::Hello(Hello {
            node_name: "n1".into(),
            held_epoch: 0,
            held_revision: 0,
        })),
    };
    let outbound =
        futures::StreamExt::chain(futures::stream::iter([hello]), futures::stream::pending());
    let mut stream = PolicySyncClient::new(channel)
        .sync(outbound)
        .await
        .unwrap()
        .into_inner();
    let Some(Msg::Snapshot(snapshot)) = stream.message().await.unwrap().unwrap().msg else {
        panic!("expected a snapshot first");
    };
    let pods: Vec<_> = snapshot
        .workloads
        .iter()
        .map(|w| w.pod.clone().unwrap().name)
        .collect();
    assert_eq!(pods, ["web"]);
    // SIGTERM: the stream ends with UNAVAILABLE, the lease is released, the process exits 0.
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let ended = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the stream ends")
        .unwrap_err();
    assert_eq!(ended.code(), tonic::Code::Unavailable);
    let mut exit = None;
    eventually("the process exits", || {
        exit = child.0.try_wait().unwrap();
        exit.is_some()
    })
    .await;
    assert!(exit.unwrap().success(), "{exit:?}");
    if leader_election {
        let lease: Lease = api.get(Some("bulkhead"), "ctl").unwrap().unwrap();
        assert_eq!(lease.spec.and_then(|s| s.holder_identity), None);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
