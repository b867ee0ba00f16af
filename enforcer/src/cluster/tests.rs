//! Policy sync end to end, in process over loopback: the controller's hub and service, this
//! client; a scripted fake controller for bad messages; mTLS with test-time certificates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_controller::sync::{NodeAssignment, SyncHub, serve};
use bulkhead_policy::{CompiledState, Compiler, Inventory, PolicySet, WorkloadRef};
use bulkhead_proto::security::{Security, SecurityError, TlsFiles};
use bulkhead_proto::wire::controller_message::Msg;
use bulkhead_proto::wire::policy_sync_server::{PolicySync, PolicySyncServer};
use bulkhead_proto::wire::{self, ControllerMessage, EnforcerMessage};
use bulkhead_proto::{EnforcerMsg, Snapshot};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use super::*;

const INVENTORY: &str = "namespaces: [{name: x}]
workloads:
- {namespace: x, name: a, labels: {app: a}, ips: [10.0.0.1]}
- {namespace: x, name: b, labels: {app: b}, ips: [10.0.0.2]}
";

fn compile(c: &mut Compiler, port: u16) -> CompiledState {
    let inv = Inventory::from_yaml_str("inv.yaml", INVENTORY).unwrap();
    let p = PolicySet::from_yaml_str(
        "p.yaml",
        &format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np, namespace: x}}\nspec: {{podSelector: {{matchLabels: {{app: a}}}}, ingress: [{{ports: [{{port: {port}}}]}}]}}\n"
        ),
    )
    .unwrap();
    c.compile(&p, &inv, "2026-11-27T12:00:00Z".parse().unwrap())
        .unwrap()
}

fn nodes() -> NodeAssignment {
    let mut a: NodeAssignment = BTreeMap::new();
    a.entry("n1".into())
        .or_default()
        .insert(WorkloadRef::new("x", "a"), "uid-a".into());
    a.entry("n2".into())
        .or_default()
        .insert(WorkloadRef::new("x", "b"), "uid-b".into());
    a
}

/// Records what the client enforced.
struct Recorder(mpsc::UnboundedSender<(Applied, Held)>);

impl Enforce for Recorder {
    fn enforce(&mut self, held: &Held, how: Applied) -> Result<(), String> {
        let _ = self.0.send((how, held.clone()));
        Ok(())
    }
}

async fn listen(addr: &str) -> TcpListener {
    TcpListener::bind(addr).await.unwrap()
}

fn start_controller(hub: &SyncHub, listener: TcpListener, security: Security) -> JoinHandle<()> {
    let hub = hub.clone();
    tokio::spawn(async move {
        serve(hub, listener, &security, std::future::pending())
            .await
            .unwrap();
    })
}

fn dev_config(addr: SocketAddr) -> ClientConfig {
    ClientConfig {
        url: format!("http://{addr}"),
        node_name: "n1".into(),
        security: Security::DevPlaintext,
        server_name: None,
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
    }
}

fn start_client(
    config: ClientConfig,
) -> (JoinHandle<()>, mpsc::UnboundedReceiver<(Applied, Held)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut rec = Recorder(tx);
        run(&config, Held::default(), &mut rec).await.unwrap();
    });
    (task, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(Applied, Held)>) -> (Applied, Held) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("enforced within 10 s")
        .unwrap()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn same(held: &Held, hub: &SyncHub, node: &str) {
    let view: Snapshot = hub.view(node).unwrap();
    assert_eq!((held.epoch, held.revision), (view.epoch, view.revision));
    assert_eq!(held.view, view.view);
}

#[tokio::test]
async fn snapshot_then_deltas_with_monotonic_revisions_and_acks_realize() {
    let mut c = Compiler::default();
    let hub = SyncHub::default();
    hub.update(compile(&mut c, 80), &nodes());
    let listener = listen("127.0.0.1:0").await;
    let addr = listener.local_addr().unwrap();
    let server = start_controller(&hub, listener, Security::DevPlaintext);
    let (client, mut rx) = start_client(dev_config(addr));
    let (how, held) = next(&mut rx).await;
    assert_eq!((how, held.revision), (Applied::Snapshot, 1));
    same(&held, &hub, "n1");
    let mut last = 1;
    for port in [81, 82, 83] {
        let r = hub.update(compile(&mut c, port), &nodes());
        let (how, held) = next(&mut rx).await;
        assert_eq!(how, Applied::Delta);
        assert!(held.revision > last);
        assert_eq!(held.revision, r);
        last = held.revision;
        same(&held, &hub, "n1");
    }
    until("n1 realized at the last revision", || {
        hub.realized().get("n1") == Some(&last)
    })
    .await;
    assert_eq!(hub.desired()["n1"], last);
    assert_eq!(hub.connected(), BTreeMap::from([("n1".to_owned(), 1)]));
    assert!(!hub.realized().contains_key("n2"), "n2 never connected");
    // The enforced state translates to maps: the pod's cgroup, times on the boot clock.
    struct Cg;
    impl PodCgroups for Cg {
        fn cgroup_ids(&self, uid: &str) -> Vec<u64> {
            if uid == "uid-a" {
                vec![4242, 4243]
            } else {
                Vec::new()
            }
        }
    }
    let held = {
        let view = hub.view("n1").unwrap();
        Held {
            epoch: view.epoch,
            revision: view.revision,
            view: view.view,
        }
    };
    let Desired {
        maps,
        by_cgroup,
        missing,
    } = held.desired(&Cg, &crate::datapath::BootClock { offset_ns: 0 });
    assert!(missing.is_empty());
    assert_eq!(maps.revision, last);
    // Every cgroup of the pod (its own and its containers') carries the pod's identity.
    let (pod, identity) = held.view.workloads.iter().next().unwrap();
    for cgroup in [4242, 4243] {
        assert_eq!(maps.workloads[&cgroup].identity, *identity);
        assert_eq!(&by_cgroup[&cgroup], pod);
    }
    assert_eq!(maps.workloads.len(), 2);
    assert_eq!(maps.policy.len(), held.view.policy.len());
    client.abort();
    server.abort();
}

/// A TCP proxy to `target`; aborting its task drops every connection through it (a lost
/// connection, as the enforcer sees it).
fn proxy(listener: TcpListener, target: SocketAddr) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            conns.spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

/// Connects a client to `old` through a proxy, takes its snapshot, cuts the connection,
/// publishes one revision per port of `while_down` on `hub`, reconnects the client (same
/// address) to `hub`, and returns what the client enforced until it reached `hub`'s view.
async fn reconnect_after(
    old: &SyncHub,
    hub: &SyncHub,
    c: &mut Compiler,
    while_down: &[u16],
) -> Vec<(Applied, Held)> {
    old.update(compile(c, 80), &nodes());
    let (l_old, l_new) = (listen("127.0.0.1:0").await, listen("127.0.0.1:0").await);
    let (a_old, a_new) = (l_old.local_addr().unwrap(), l_new.local_addr().unwrap());
    let s_old = start_controller(old, l_old, Security::DevPlaintext);
    let s_new = start_controller(hub, l_new, Security::DevPlaintext);
    let front = listen("127.0.0.1:0").await;
    let addr = front.local_addr().unwrap();
    let p = proxy(front, a_old);
    let (client, mut rx) = start_client(dev_config(addr));
    assert_eq!(next(&mut rx).await.0, Applied::Snapshot);
    until("the ack", || old.realized().get("n1") == Some(&1)).await;
    p.abort();
    let _ = p.await;
    until("the stream to close", || old.connected().is_empty()).await;
    for port in while_down {
        hub.update(compile(c, *port), &nodes());
    }
    let p = proxy(listen(&addr.to_string()).await, a_new);
    let mut got = vec![];
    loop {
        let (how, held) = next(&mut rx).await;
        let done = held.revision == hub.desired()["n1"] && held.epoch == hub.epoch();
        got.push((how, held));
        if done {
            break;
        }
    }
    same(&got.last().unwrap().1, hub, "n1");
    until("the ack", || {
        hub.realized().get("n1") == hub.desired().get("n1")
    })
    .await;
    for t in [client, p, s_old, s_new] {
        t.abort();
    }
    got
}

#[tokio::test]
async fn reconnect_resumes_from_the_held_revision_with_deltas() {
    let mut c = Compiler::default();
    let hub = SyncHub::default();
    let got = reconnect_after(&hub, &hub, &mut c, &[81, 82]).await;
    let kinds: Vec<_> = got.iter().map(|(h, held)| (*h, held.revision)).collect();
    assert_eq!(kinds, [(Applied::Delta, 2), (Applied::Delta, 3)]);
}

#[tokio::test]
async fn reconnect_older_than_the_history_gets_a_snapshot() {
    let mut c = Compiler::default();
    let hub = SyncHub::new(1);
    let got = reconnect_after(&hub, &hub, &mut c, &[81, 82, 83]).await;
    let kinds: Vec<_> = got.iter().map(|(h, held)| (*h, held.revision)).collect();
    assert_eq!(kinds, [(Applied::Snapshot, 4)]);
}

#[tokio::test]
async fn a_revision_of_another_controller_epoch_gets_a_snapshot() {
    let mut c = Compiler::default();
    let old = SyncHub::default();
    let new = SyncHub::default();
    // The new controller reaches revision 1 too: same number, other epoch, other content.
    let mut c2 = Compiler::default();
    new.update(compile(&mut c2, 99), &nodes());
    let got = reconnect_after(&old, &new, &mut c, &[]).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, Applied::Snapshot);
    assert_eq!(got[0].1.epoch, new.epoch());
}

/// A fake controller that sends scripted messages and reports what the enforcer answers.
struct Scripted {
    script: Vec<ControllerMessage>,
    replies: mpsc::UnboundedSender<EnforcerMsg>,
}

#[tonic::async_trait]
impl PolicySync for Scripted {
    type SyncStream = ReceiverStream<Result<ControllerMessage, Status>>;

    async fn sync(
        &self,
        request: Request<Streaming<EnforcerMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let script = self.script.clone();
        let replies = self.replies.clone();
        tokio::spawn(async move {
            let _hello = inbound.message().await;
            for m in script {
                tx.send(Ok(m)).await.unwrap();
                let reply = inbound.message().await.unwrap().unwrap();
                replies
                    .send(EnforcerMsg::try_from(&reply).unwrap())
                    .unwrap();
            }
            std::future::pending::<()>().await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tokio::test]
async fn bad_controller_messages_are_nacked_and_nothing_is_applied() {
    let mut c = Compiler::default();
    let hub = SyncHub::default();
    hub.update(compile(&mut c, 80), &nodes());
    let epoch = hub.epoch();
    let snap = wire::Snapshot::from(&hub.view("n1").unwrap());
    hub.update(compile(&mut c, 81), &nodes());
    let good = hub.view("n1").unwrap();
    // A delta 1 -> 2 built from the hub's state, then broken in three ways.
    let mut held = Held::default();
    held.apply(bulkhead_proto::ControllerMsg::Snapshot(
        Snapshot::try_from(&snap).unwrap(),
    ))
    .unwrap();
    let delta = {
        let mut d = wire::Delta {
            epoch,
            revision: 2,
            previous_revision: 1,
            ..wire::Delta::default()
        };
        let new = wire::Snapshot::from(&good);
        let old_keys: Vec<_> = snap.policy.iter().map(|e| e.key).collect();
        d.policy_upserts = new.policy.clone();
        d.policy_deletes = old_keys
            .into_iter()
            .flatten()
            .filter(|k| !new.policy.iter().any(|e| e.key.as_ref() == Some(k)))
            .collect();
        d
    };
    assert!(!delta.policy_upserts.is_empty());
    let mut bad_prefix = delta.clone();
    bad_prefix.policy_upserts[0]
        .key
        .as_mut()
        .unwrap()
        .prefix_len = 120;
    let mut gap = delta.clone();
    gap.previous_revision = 5;
    gap.revision = 6;
    let mut not_held = delta.clone();
    not_held.address_deletes.push(wire::AddrPrefix {
        addr: vec![0; 16],
        prefix_len: 8,
    });
    let msg = |m| ControllerMessage { msg: Some(m) };
    let script = vec![
        msg(Msg::Snapshot(snap.clone())),
        msg(Msg::Delta(bad_prefix)),
        msg(Msg::Delta(gap)),
        msg(Msg::Delta(not_held)),
        ControllerMessage { msg: None },
        msg(Msg::Delta(delta)),
    ];
    let (replies_tx, mut replies) = mpsc::unbounded_channel();
    let listener = listen("127.0.0.1:0").await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        Server::builder()
            .add_service(PolicySyncServer::new(Scripted {
                script,
                replies: replies_tx,
            }))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let (client, mut rx) = start_client(dev_config(addr));
    let mut answers = vec![];
    for _ in 0..6 {
        answers.push(
            tokio::time::timeout(Duration::from_secs(10), replies.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let nack = |revision: u64, error: &str| EnforcerMsg::Nack {
        revision,
        error: error.into(),
    };
    assert_eq!(
        answers,
        [
            EnforcerMsg::Ack { revision: 1 },
            nack(
                2,
                "Delta.policy_upserts[0].key.prefix_len: 120 is not in 80..=96"
            ),
            nack(
                6,
                "Delta.previous_revision: 5, expected = 1 (the held revision)"
            ),
            nack(
                2,
                "Delta.address_deletes[0]: deletes a key that is not held"
            ),
            nack(0, "ControllerMessage.msg: missing"),
            EnforcerMsg::Ack { revision: 2 },
        ]
    );
    // Only the snapshot and the good delta were enforced; the good delta reaches the hub's view.
    assert_eq!(next(&mut rx).await.0, Applied::Snapshot);
    let (how, enforced) = next(&mut rx).await;
    assert_eq!(how, Applied::Delta);
    assert_eq!(enforced.view.policy, good.view.policy);
    assert!(rx.try_recv().is_err());
    client.abort();
    server.abort();
}

async fn raw_stream(
    addr: SocketAddr,
    msgs: Vec<EnforcerMessage>,
) -> Result<Streaming<ControllerMessage>, Status> {
    let mut client = connect(&dev_config(addr)).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    for m in msgs {
        tx.send(m).await.unwrap();
    }
    // Keep the request stream open while the test reads.
    tokio::spawn(async move {
        tx.closed().await;
    });
    Ok(client.sync(ReceiverStream::new(rx)).await?.into_inner())
}

#[tokio::test]
async fn bad_enforcer_messages_are_rejected_and_nothing_is_realized() {
    let mut c = Compiler::default();
    let hub = SyncHub::default();
    hub.update(compile(&mut c, 80), &nodes());
    let listener = listen("127.0.0.1:0").await;
    let addr = listener.local_addr().unwrap();
    let server = start_controller(&hub, listener, Security::DevPlaintext);
    let hello = |name: &str| {
        EnforcerMessage::from(&EnforcerMsg::Hello {
            node_name: name.into(),
            held_epoch: 0,
            held_revision: 0,
        })
    };
    let ack = |revision| EnforcerMessage::from(&EnforcerMsg::Ack { revision });
    // Rejected before any stream: an empty node name; an Ack before the Hello.
    let e = raw_stream(addr, vec![hello("")]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.message(), "Hello.node_name: empty");
    let e = raw_stream(addr, vec![ack(1)]).await.unwrap_err();
    assert_eq!(e.message(), "EnforcerMessage.msg: expected Hello first");
    // An Ack of a revision never sent ends the stream with the error, and is not counted.
    let mut s = raw_stream(addr, vec![hello("n1"), ack(7)]).await.unwrap();
    let first = s.message().await.unwrap().unwrap();
    assert!(matches!(first.msg, Some(Msg::Snapshot(ref snap)) if snap.revision == 1));
    let e = s.message().await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "Ack.revision: 7, expected 1..=1 (sent on this stream)"
    );
    assert!(hub.realized().is_empty());
    // A message with no content.
    let mut s = raw_stream(addr, vec![hello("n1"), EnforcerMessage { msg: None }])
        .await
        .unwrap();
    s.message().await.unwrap().unwrap();
    assert_eq!(
        s.message().await.unwrap_err().message(),
        "EnforcerMessage.msg: missing"
    );
    assert!(hub.realized().is_empty());
    server.abort();
}

#[tokio::test]
async fn a_nacked_delta_gets_a_snapshot_and_the_rejection_is_visible_until_a_later_ack() {
    let mut c = Compiler::default();
    let hub = SyncHub::default();
    hub.update(compile(&mut c, 80), &nodes());
    let listener = listen("127.0.0.1:0").await;
    let addr = listener.local_addr().unwrap();
    let server = start_controller(&hub, listener, Security::DevPlaintext);
    let mut client = connect(&dev_config(addr)).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    let send = |m: EnforcerMsg| {
        let tx = tx.clone();
        async move { tx.send(EnforcerMessage::from(&m)).await.unwrap() }
    };
    send(EnforcerMsg::Hello {
        node_name: "n1".into(),
        held_epoch: 0,
        held_revision: 0,
    })
    .await;
    let mut s = client
        .sync(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let revision = |m: ControllerMessage| match m.msg {
        Some(Msg::Snapshot(s)) => ("snapshot", s.revision),
        Some(Msg::Delta(d)) => ("delta", d.revision),
        None => ("none", 0),
    };
    assert_eq!(
        revision(s.message().await.unwrap().unwrap()),
        ("snapshot", 1)
    );
    send(EnforcerMsg::Ack { revision: 1 }).await;
    hub.update(compile(&mut c, 81), &nodes());
    assert_eq!(revision(s.message().await.unwrap().unwrap()), ("delta", 2));
    send(EnforcerMsg::Nack {
        revision: 2,
        error: "map full".into(),
    })
    .await;
    assert_eq!(
        revision(s.message().await.unwrap().unwrap()),
        ("snapshot", 2)
    );
    until("the rejection", || !hub.rejected().is_empty()).await;
    assert_eq!(hub.rejected()["n1"], (2, "map full".to_owned()));
    assert_eq!(hub.realized()["n1"], 1);
    // The snapshot is rejected too: no snapshot loop; the next revision is a delta from it.
    send(EnforcerMsg::Nack {
        revision: 2,
        error: "still full".into(),
    })
    .await;
    hub.update(compile(&mut c, 82), &nodes());
    assert_eq!(revision(s.message().await.unwrap().unwrap()), ("delta", 3));
    send(EnforcerMsg::Ack { revision: 3 }).await;
    until("realized 3", || hub.realized().get("n1") == Some(&3)).await;
    assert!(hub.rejected().is_empty());
    server.abort();
}

/// Test PKI in a temporary directory: a CA, a controller certificate for `controller.bulkhead`,
/// an enforcer client certificate.
struct Pki {
    dir: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_pki(dir: &Path, ca_name: &str) -> (TlsFiles, TlsFiles) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut files = vec![];
    for (who, san) in [
        ("controller", "controller.bulkhead"),
        ("enforcer", "n1.enforcer.bulkhead"),
    ] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![san.to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let (c, k, a) = (
            dir.join(format!("{who}.crt")),
            dir.join(format!("{who}.key")),
            dir.join("ca.crt"),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::write(&a, ca.pem()).unwrap();
        files.push(TlsFiles {
            ca: a,
            cert: c,
            key: k,
        });
    }
    let enforcer = files.pop().unwrap();
    (files.pop().unwrap(), enforcer)
}

fn pki() -> (Pki, TlsFiles, TlsFiles, TlsFiles) {
    let dir = std::env::temp_dir().join(format!(
        "bulkhead-sync-pki-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let (server, client) = write_pki(&dir.join("good"), "bulkhead test CA");
    let (_, other) = write_pki(&dir.join("other"), "another CA");
    (Pki { dir }, server, client, other)
}

/// An error with its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

async fn first_message(config: &ClientConfig) -> Result<ControllerMessage, String> {
    let fut = async {
        let mut client = connect(config).await.map_err(|e| chain(&e))?;
        let (tx, rx) = mpsc::channel(1);
        tx.send(EnforcerMessage::from(&EnforcerMsg::Hello {
            node_name: "n1".into(),
            held_epoch: 0,
            held_revision: 0,
        }))
        .await
        .unwrap();
        let mut s = client
            .sync(ReceiverStream::new(rx))
            .await
            .map_err(|e| chain(&e))?
            .into_inner();
        let m = s.message().await.map_err(|e| chain(&e))?;
        drop(tx);
        m.ok_or_else(|| "no message".to_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timeout".to_owned())?
}

#[tokio::test]
async fn mtls_succeeds_with_the_right_ca_and_fails_with_a_wrong_one() {
    let (_pki, server_files, client_files, other_files) = pki();
    let mut c = Compiler::default();
    let hub = SyncHub::default();
    hub.update(compile(&mut c, 80), &nodes());
    let listener = listen("127.0.0.1:0").await;
    let addr = listener.local_addr().unwrap();
    let server = start_controller(&hub, listener, Security::Tls(server_files));
    let config = |files: &TlsFiles, name: &str| ClientConfig {
        url: format!("https://{addr}"),
        security: Security::Tls(files.clone()),
        server_name: Some(name.to_owned()),
        ..dev_config(addr)
    };
    let m = first_message(&config(&client_files, "controller.bulkhead"))
        .await
        .unwrap();
    assert!(matches!(m.msg, Some(Msg::Snapshot(_))));
    let fails = |e: String, expected: &str| {
        eprintln!("expected failure: {e}");
        assert!(e.contains(expected), "{e}");
    };
    // A client of another CA: it does not trust the controller.
    let e = first_message(&config(&other_files, "controller.bulkhead")).await;
    fails(e.unwrap_err(), "UnknownIssuer");
    // The right CA but the other CA's client certificate: the controller refuses it.
    let mixed = TlsFiles {
        ca: client_files.ca.clone(),
        ..other_files.clone()
    };
    let e = first_message(&config(&mixed, "controller.bulkhead")).await;
    fails(e.unwrap_err(), "UnknownCA");
    // The right certificates, but the controller is expected under another name.
    let e = first_message(&config(&client_files, "elsewhere.bulkhead")).await;
    fails(
        e.unwrap_err(),
        "certificate not valid for name \"elsewhere.bulkhead\"",
    );
    // Plaintext to a TLS controller does not work either.
    first_message(&dev_config(addr)).await.unwrap_err();
    server.abort();
}

#[tokio::test]
async fn dev_mode_refuses_non_loopback_addresses() {
    let listener = listen("0.0.0.0:0").await;
    let err = serve(
        SyncHub::default(),
        listener,
        &Security::DevPlaintext,
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("dev mode (plaintext) only binds"),
        "{err}"
    );
    let config = ClientConfig {
        url: "http://10.1.2.3:7000".into(),
        ..dev_config("127.0.0.1:1".parse().unwrap())
    };
    let err = run(
        &config,
        Held::default(),
        &mut Recorder(mpsc::unbounded_channel().0),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ClientError::Security(SecurityError::NotLoopback { ref addr }) if addr == "10.1.2.3"),
        "{err}"
    );
    // Loopback names and addresses are fine.
    for host in ["localhost", "127.0.0.1", "[::1]"] {
        bulkhead_proto::security::dev_connect_check(host).unwrap();
    }
}

#[test]
fn backoff_grows_is_capped_and_jittered() {
    let b = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
    for attempt in 0..40 {
        let d = b.delay(attempt);
        let full = Duration::from_millis(100)
            .saturating_mul(1 << attempt.min(20))
            .min(Duration::from_secs(5));
        assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
    }
    let samples: std::collections::BTreeSet<_> = (0..20).map(|_| b.delay(10)).collect();
    assert!(samples.len() > 1, "jitter");
}

#[test]
fn a_delta_must_follow_the_held_revision_and_epoch() {
    let mut held = Held {
        epoch: 5,
        revision: 3,
        ..Held::default()
    };
    let delta = |epoch, previous| {
        bulkhead_proto::ControllerMsg::Delta(bulkhead_proto::Delta {
            epoch,
            revision: 9,
            previous_revision: previous,
            policy: Default::default(),
            defaults: Default::default(),
            workloads: Default::default(),
            shared: Arc::default(),
        })
    };
    let before = held.clone();
    assert_eq!(
        held.apply(delta(5, 2)).unwrap_err().to_string(),
        "Delta.previous_revision: 2, expected = 3 (the held revision)"
    );
    assert_eq!(
        held.apply(delta(6, 3)).unwrap_err().to_string(),
        "Delta.epoch: 6, expected = 5 (the held epoch)"
    );
    assert_eq!(held, before);
    assert_eq!(held.apply(delta(5, 3)).unwrap(), Applied::Delta);
    assert_eq!(held.revision, 9);
}
