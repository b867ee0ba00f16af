//! Cluster mode end to end on a real kernel: the controller's sync server in process (dev mode,
//! loopback), the real `enforcer run --controller --node-name` binary, pods as a kubelet lays
//! them out (systemd driver, three QoS classes, containers below the pod cgroups) with
//! workloads in network namespaces, real traffic. Needs root and BPF; elsewhere it skips with a
//! message (or fails when `BULKHEAD_REQUIRE_KERNEL_TESTS=1`).

#[path = "support/meta.rs"]
mod meta;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bulkhead_controller::sync::{NodeAssignment, SyncHub, serve};
use bulkhead_policy::{CompiledState, Compiler, Inventory, PolicySet, WorkloadRef};
use bulkhead_proto::security::Security;
use bulkhead_tests::agent::{AgentRun, InventoryWorkload, free_loopback_addr, inventory_yaml};
use bulkhead_tests::cgroup::CgroupDir;
use bulkhead_tests::netns::{TestNet, skip_kernel_tests};
use bulkhead_tests::workload::{ProbeResult, Proto, Server, Workload};
use enforcer::datapath::Datapath;

const NODE: &str = "node-1";
const UID_A: &str = "6f1c2a3b-0000-4000-8000-00000000000a";
const UID_B: &str = "6f1c2a3b-0000-4000-8000-00000000000b";
const UID_C: &str = "6f1c2a3b-0000-4000-8000-00000000000c";

/// `b` admits TCP port `port` from `a`; `c` admits nothing (isolated, no rule).
fn policies(port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {{name: b-ingress, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: b}}}}\n  \
ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: a}}}}}}]\n    ports: [{{protocol: TCP, port: {port}}}]\n\
---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {{name: c-isolated, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: c}}}}\n  \
policyTypes: [Ingress]\n"
    )
}

/// Cgroup directories removed deepest first.
struct Tree(Vec<CgroupDir>);

impl Tree {
    fn mkdir(&mut self, parent: &Path, rel: &str) -> std::path::PathBuf {
        let path = parent.join(rel);
        let dir = CgroupDir::create(
            path.parent().unwrap(),
            &path.file_name().unwrap().to_string_lossy(),
        )
        .unwrap_or_else(|e| panic!("cgroup {}: {e}", path.display()));
        self.0.push(dir);
        path
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        while let Some(dir) = self.0.pop() {
            drop(dir);
        }
    }
}

/// `w` living in the container cgroup `dir` instead of its own.
fn in_container(w: &Workload, dir: &Path) -> Workload {
    let mut moved = w.clone();
    moved.cgroup_path = dir.to_path_buf();
    moved.cgroup_id = enforcer::datapath::cgroup_id(dir).unwrap();
    moved
}

/// The controller's sync server on its own runtime: shutting the runtime down drops every
/// connection at once, as a crashed controller would.
fn start_controller(hub: &SyncHub, addr: SocketAddr) -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut bound = None;
    for _ in 0..50 {
        match rt.block_on(tokio::net::TcpListener::bind(addr)) {
            Ok(l) => {
                bound = Some(l);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let listener = bound.expect("bind the controller's port");
    let local = listener.local_addr().unwrap();
    let hub = hub.clone();
    rt.spawn(async move {
        serve(
            hub,
            listener,
            &Security::DevPlaintext,
            std::future::pending(),
        )
        .await
        .unwrap();
    });
    (rt, local)
}

/// Waits (up to 30 s) until `cond` holds.
fn wait(agent: &AgentRun, what: &str, cond: &mut dyn FnMut() -> bool) {
    assert!(
        agent.wait_until(Duration::from_secs(30), cond),
        "{what}; enforcer stderr:\n{}",
        agent.stderr()
    );
}

/// The value of an unlabelled gauge in the agent's metrics.
fn metric(agent: &AgentRun, name: &str) -> Option<i64> {
    let text = agent.scrape_metrics()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn realized(hub: &SyncHub) -> bool {
    hub.realized().contains_key(NODE) && hub.realized().get(NODE) == hub.desired().get(NODE)
}

struct Probe<'a>(&'a TestNet);

impl Probe<'_> {
    fn tcp(&self, from: &Workload, to: &Workload, port: u16) -> ProbeResult {
        self.0.probe(from, IpAddr::V4(to.ipv4), port, Proto::Tcp)
    }

    /// A short probe, for attempts expected to be dropped.
    fn dropped(&self, from: &Workload, to: &Workload, port: u16) -> bool {
        self.0.probe_with_timeout(
            from,
            IpAddr::V4(to.ipv4),
            port,
            Proto::Tcp,
            Duration::from_millis(300),
        ) == ProbeResult::Timeout
    }
}

/// Three workloads (their network namespaces; their cgroups are replaced by kubelet-layout
/// ones), on `10.200.<subnet>.1-3`.
fn three_workloads(net: &mut TestNet, subnet: u8) -> [Workload; 3] {
    ["a", "b", "c"].map(|name| {
        let last = name.as_bytes()[0] - b'a' + 1;
        net.add_workload(
            name,
            format!("10.200.{subnet}.{last}").parse().unwrap(),
            format!("fd00:200::{subnet}:{last}").parse().unwrap(),
        )
        .expect("workload")
    })
}

/// The inventory of pods x/a, x/b, x/c (labels `pod: <name>`), and their placement on `NODE`.
fn cluster(workloads: [&Workload; 3]) -> (Inventory, NodeAssignment) {
    let inventory = Inventory::from_yaml_str(
        "inventory.yaml",
        &inventory_yaml(
            &[("x", "{}")],
            &[("a", "{pod: a}"), ("b", "{pod: b}"), ("c", "{pod: c}")]
                .iter()
                .zip(workloads)
                .map(|(&(name, labels), workload)| InventoryWorkload {
                    namespace: "x",
                    name,
                    labels,
                    workload,
                })
                .collect::<Vec<_>>(),
        ),
    )
    .unwrap();
    let mut assignment = NodeAssignment::new();
    let pods = assignment.entry(NODE.into()).or_default();
    for (name, uid) in [("a", UID_A), ("b", UID_B), ("c", UID_C)] {
        pods.insert(WorkloadRef::new("x", name), uid.into());
    }
    (inventory, assignment)
}

fn compile_policies(compiler: &mut Compiler, inventory: &Inventory, port: u16) -> CompiledState {
    let set = PolicySet::from_yaml_str("policies.yaml", &policies(port)).unwrap();
    compiler
        .compile(&set, inventory, jiff::Timestamp::now())
        .unwrap()
}

/// The controller serving `hub`, the enforcer in cluster mode, and TCP servers on 80 and 81 in
/// each of `serving`.
fn start_node(
    net: &TestNet,
    hub: &SyncHub,
    serving: &[&Workload],
) -> (tokio::runtime::Runtime, SocketAddr, AgentRun, Vec<Server>) {
    let (controller, addr) = start_controller(hub, "127.0.0.1:0".parse().unwrap());
    let mut agent = AgentRun::new(net).expect("agent files");
    agent.set_metrics(free_loopback_addr().expect("metrics address"));
    agent
        .start_cluster(&format!("http://{addr}"), NODE)
        .expect("start the enforcer");
    let servers = serving
        .iter()
        .map(|w| w.serve(&[80, 81], Proto::Tcp).expect("server"))
        .collect();
    (controller, addr, agent, servers)
}

/// The snapshot of port 80 is acknowledged and enforced: b admits a on 80 only; a is not
/// isolated.
fn first_snapshot_enforced(
    agent: &AgentRun,
    hub: &SyncHub,
    probe: &Probe<'_>,
    a: &Workload,
    b: &Workload,
) {
    wait(agent, "the snapshot is never acknowledged", &mut || {
        realized(hub)
    });
    assert_eq!(probe.tcp(a, b, 80), ProbeResult::Connected);
    assert!(probe.dropped(a, b, 81), "b is isolated: 81 is not admitted");
    assert_eq!(probe.tcp(b, a, 81), ProbeResult::Connected);
}

#[test]
fn cluster_mode_enforces_the_controllers_view_through_pod_cgroups_and_outlives_the_controller() {
    if skip_kernel_tests("cluster mode") {
        return;
    }
    let mut net = TestNet::new("cluster").expect("test network");
    let [a0, b0, c0] = three_workloads(&mut net, 41);
    let root = net.cgroup_parent().to_path_buf();
    let (ua, ub, uc) = (
        UID_A.replace('-', "_"),
        UID_B.replace('-', "_"),
        UID_C.replace('-', "_"),
    );
    // The kubelet's systemd layout: a Burstable, b Guaranteed, c BestEffort (created later).
    let mut tree = Tree(Vec::new());
    tree.mkdir(&root, "kubepods.slice");
    tree.mkdir(&root, "kubepods.slice/kubepods-burstable.slice");
    tree.mkdir(&root, "kubepods.slice/kubepods-besteffort.slice");
    let pod_a = tree.mkdir(
        &root,
        &format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{ua}.slice"),
    );
    let a = in_container(&a0, &tree.mkdir(&pod_a, "cri-containerd-a.scope"));
    let pod_b = tree.mkdir(&root, &format!("kubepods.slice/kubepods-pod{ub}.slice"));
    tree.mkdir(&pod_b, "cri-containerd-pause-b.scope");
    let b = in_container(&b0, &tree.mkdir(&pod_b, "cri-containerd-b.scope"));

    let (inventory, assignment) = cluster([&a, &b, &c0]);
    let mut compiler = Compiler::default();
    let mut compile = |port| compile_policies(&mut compiler, &inventory, port);

    let hub = SyncHub::default();
    hub.update(compile(80), &assignment);
    let (controller, addr, mut agent, _servers) = start_node(&net, &hub, &[&a, &b]);
    let probe = Probe(&net);

    // 1. The first snapshot: b admits a on 80 only; a is not isolated. The metrics say the
    // sync stream is open and c (in the view, no cgroup yet) is not enforced yet.
    first_snapshot_enforced(&agent, &hub, &probe, &a, &b);
    wait(
        &agent,
        "metrics never show the open stream and c missing",
        &mut || {
            metric(&agent, "bulkhead_sync_connected") == Some(1)
                && metric(&agent, "bulkhead_pods_missing_cgroup") == Some(1)
        },
    );

    // 2. Pod c is in the view before its cgroup exists. The kubelet creates the pod cgroup,
    // then the runtime the container's (`runc create`): the enforcer maps both as they appear,
    // with c's identity. Once mapped, the container's process starts (`runc start`) and its very
    // first connection is enforced.
    let pod_c = tree.mkdir(
        &root,
        &format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uc}.slice"),
    );
    let c = in_container(&c0, &tree.mkdir(&pod_c, "cri-containerd-c.scope"));
    let pod_c_id = enforcer::datapath::cgroup_id(&pod_c).unwrap();
    let kernel = Datapath::install_or_adopt(agent.bpffs(), &root).expect("adopt the pins");
    wait(&agent, "c's cgroups never reach WORKLOADS", &mut || {
        let workloads = kernel.current().expect("read the maps").workloads;
        let identity = |id: u64| workloads.get(&id).map(|w| w.identity);
        let pod = identity(pod_c_id);
        pod.is_some() && identity(c.cgroup_id) == pod && identity(b.cgroup_id) != pod
    });
    let _server_c = c.serve(&[80], Proto::Tcp).expect("server c");
    assert!(
        probe.dropped(&a, &c, 80),
        "c's first connection is enforced"
    );
    // The kernel also finds a container's pod through its ancestors (pod cgroups two and three
    // levels below the kubelet hierarchy's root): a container whose process starts before the
    // enforcer has seen its cgroup is enforced from its first packet too.
    let level = enforcer::datapath::cgroup_level(&root).expect("cgroup level");
    assert_eq!(
        kernel.current().expect("read the maps").ancestor_levels,
        Some((level + 2, level + 3))
    );
    let c2 = in_container(&c0, &tree.mkdir(&pod_c, "cri-containerd-c2.scope"));
    let _server_c2 = c2.serve(&[81], Proto::Tcp).expect("server c2");
    assert!(
        probe.dropped(&a, &c2, 81),
        "a new container of c is enforced at once"
    );

    // 3. A changed policy arrives as a delta: 81 instead of 80.
    hub.update(compile(81), &assignment);
    wait(&agent, "the delta is never acknowledged", &mut || {
        realized(&hub)
    });
    assert_eq!(probe.tcp(&a, &b, 81), ProbeResult::Connected);
    assert!(probe.dropped(&a, &b, 80), "80 is no longer admitted");

    // 4. The controller dies: the enforcer stays up and the last state keeps enforcing.
    assert_eq!(metric(&agent, "bulkhead_pods_missing_cgroup"), Some(0));
    controller.shutdown_background();
    wait(&agent, "metrics never show the stream closed", &mut || {
        metric(&agent, "bulkhead_sync_connected") == Some(0)
    });
    assert!(agent.running(), "stderr:\n{}", agent.stderr());
    assert_eq!(probe.tcp(&a, &b, 81), ProbeResult::Connected);
    assert!(probe.dropped(&a, &b, 80));
    assert!(probe.dropped(&a, &c, 80));

    // 5. A change published while it is down reaches the node once it is back (resumed from
    // the held revision).
    let before = hub.realized()[NODE];
    hub.update(compile(80), &assignment);
    let (controller, _) = start_controller(&hub, addr);
    wait(
        &agent,
        "the resumed sync is never acknowledged",
        &mut || realized(&hub) && hub.realized()[NODE] > before,
    );
    assert_eq!(probe.tcp(&a, &b, 80), ProbeResult::Connected);
    assert!(probe.dropped(&a, &b, 81));

    // 6. Verdicts name the pods the cgroups belong to.
    wait(&agent, "no verdict record names pod x/b", &mut || {
        agent
            .log_records()
            .iter()
            .any(|r| r["direction"] == "ingress" && r["dst"]["workload"] == "x/b")
    });

    // 7. The enforcer is killed: the pinned maps keep enforcing; a new process adopts them and
    // enforces the next change.
    agent.kill();
    assert!(
        probe.dropped(&a, &b, 81),
        "enforcement outlives the process"
    );
    assert_eq!(probe.tcp(&a, &b, 80), ProbeResult::Connected);
    let before = hub.realized()[NODE];
    agent
        .start_cluster(&format!("http://{addr}"), NODE)
        .expect("restart the enforcer");
    hub.update(compile(81), &assignment);
    wait(
        &agent,
        "the restarted enforcer never acknowledges",
        &mut || realized(&hub) && hub.realized()[NODE] > before,
    );
    assert!(agent.stderr().contains("Adopted"), "{}", agent.stderr());
    assert_eq!(probe.tcp(&a, &b, 81), ProbeResult::Connected);
    assert!(probe.dropped(&a, &b, 80));
    assert!(probe.dropped(&a, &c, 80));

    // 8. An upgrade: the pins now look like another enforcer's object. The restarted enforcer
    // attaches its own generation alongside, fills it from the controller's state, swaps it in
    // and retires the old one, with no gap; one generation stays attached.
    let programs = bulkhead_tests::bpf_query::attached_count(&root).expect("BPF_PROG_QUERY");
    agent.kill();
    meta::other_object(agent.bpffs());
    let before = hub.realized()[NODE];
    agent
        .start_cluster(&format!("http://{addr}"), NODE)
        .expect("restart the enforcer (upgrade)");
    hub.update(compile(80), &assignment);
    wait(&agent, "the upgrade never finishes", &mut || {
        realized(&hub)
            && hub.realized()[NODE] > before
            && agent.stderr().contains("previous generation retired")
    });
    assert!(agent.stderr().contains("Upgrading"), "{}", agent.stderr());
    assert_eq!(
        bulkhead_tests::bpf_query::attached_count(&root).expect("BPF_PROG_QUERY"),
        programs,
        "one generation attached after the upgrade"
    );
    assert_eq!(
        meta::read_meta(agent.bpffs()),
        enforcer::datapath::object_meta()
    );
    assert_eq!(probe.tcp(&a, &b, 80), ProbeResult::Connected);
    assert!(probe.dropped(&a, &b, 81));
    assert!(probe.dropped(&a, &c, 80));

    // 9. SIGTERM: the enforcer exits, the pinned maps keep enforcing.
    agent.stop();
    assert!(!agent.running());
    assert!(
        probe.dropped(&a, &b, 81),
        "enforcement outlives the process"
    );
    assert_eq!(probe.tcp(&a, &b, 80), ProbeResult::Connected);
    controller.shutdown_background();
}

#[test]
fn bad_cluster_flags_exit_2_before_touching_the_kernel() {
    let binary = bulkhead_tests::agent::enforcer_binary().expect("enforcer binary");
    let bpffs = std::env::temp_dir().join(format!("bulkhead-badflags-{}", std::process::id()));
    let missing = bpffs.join("missing.pem");
    let missing = missing.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--controller=http://10.1.2.3:9443",
                "--node-name=n",
                "--insecure",
            ],
            "loopback",
        ),
        (
            &["--controller=https://ctl:9443", "--node-name=n"],
            "--tls-cert",
        ),
        (
            &[
                "--controller=https://ctl:9443",
                "--node-name=n",
                &format!("--tls-cert={missing}"),
                &format!("--tls-key={missing}"),
                &format!("--tls-ca={missing}"),
            ],
            "missing.pem",
        ),
        (
            &["--controller=http://127.0.0.1:1", "--insecure"],
            "--node-name",
        ),
    ];
    for (args, says) in cases {
        let out = std::process::Command::new(&binary)
            .arg("run")
            .args(args)
            .arg("--bpffs")
            .arg(&bpffs)
            .arg("--no-metrics")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} must say {says}: {stderr}");
        assert!(!bpffs.exists(), "{args:?} touched {}", bpffs.display());
    }
}

#[test]
fn cluster_mode_finds_pods_of_the_cgroupfs_driver() {
    if skip_kernel_tests("cluster mode") {
        return;
    }
    let mut net = TestNet::new("cgroupfs").expect("test network");
    let [a0, b0, c0] = three_workloads(&mut net, 42);
    let root = net.cgroup_parent().to_path_buf();
    // The kubelet's cgroupfs layout: a Guaranteed, b Burstable, c BestEffort.
    let mut tree = Tree(Vec::new());
    for dir in ["kubepods", "kubepods/burstable", "kubepods/besteffort"] {
        tree.mkdir(&root, dir);
    }
    let mut container = |pod: String, w: &Workload| {
        let pod = tree.mkdir(&root, &pod);
        in_container(w, &tree.mkdir(&pod, "0123456789abcdef"))
    };
    let a = container(format!("kubepods/pod{UID_A}"), &a0);
    let b = container(format!("kubepods/burstable/pod{UID_B}"), &b0);
    let c = container(format!("kubepods/besteffort/pod{UID_C}"), &c0);
    let (inventory, assignment) = cluster([&a, &b, &c]);
    let hub = SyncHub::default();
    hub.update(
        compile_policies(&mut Compiler::default(), &inventory, 80),
        &assignment,
    );
    let (controller, _, mut agent, _servers) = start_node(&net, &hub, &[&a, &b, &c]);
    let probe = Probe(&net);
    first_snapshot_enforced(&agent, &hub, &probe, &a, &b);
    assert!(probe.dropped(&a, &c, 80), "c is isolated");
    assert!(agent.stderr().contains("Cgroupfs"), "{}", agent.stderr());
    agent.stop();
    controller.shutdown_background();
}
