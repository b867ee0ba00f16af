//! The standalone agent end to end: the real `enforcer run` binary, policy files and an inventory
//! on disk, workloads in network namespaces and cgroups, real traffic, the verdict log.
//! Needs root and BPF; elsewhere it skips with a message (or fails when
//! `BULKHEAD_REQUIRE_KERNEL_TESTS=1`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bulkhead_tests::agent::{
    AgentRun, InventoryWorkload, free_loopback_addr, inventory_yaml, scrape,
};
use bulkhead_tests::bpf_query::attached_count;
use bulkhead_tests::netns::TestNet;
use bulkhead_tests::workload::{ProbeResult, Proto, Server, Workload};
use serde_json::Value;

fn skip() -> bool {
    bulkhead_tests::netns::skip_kernel_tests("agent")
}

/// `b` admits TCP and UDP port 80 from `a`; `b` is therefore isolated for ingress.
const ALLOW_80: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: b-ingress, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  \
ingress:\n  - from: [{podSelector: {matchLabels: {pod: a}}}]\n    \
ports: [{protocol: TCP, port: 80}, {protocol: UDP, port: 80}]\n";

/// The same policy (same name) changed to admit port 81 only.
const ALLOW_81: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: b-ingress, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  \
ingress:\n  - from: [{podSelector: {matchLabels: {pod: a}}}]\n    \
ports: [{protocol: TCP, port: 81}]\n";

/// Two workloads x/a and x/b (both serving TCP and UDP on 80 and 81) and an agent enforcing
/// `policy`. Field order is drop order: the agent (and its pins) go before the network.
struct Fixture {
    agent: AgentRun,
    /// a's TCP and UDP servers, then b's.
    servers: Vec<Server>,
    a: Workload,
    b: Workload,
    net: TestNet,
}

impl Fixture {
    fn new(name: &str, policy: &str) -> Self {
        let mut net = TestNet::new(name).expect("test network");
        let a = net
            .add_workload(
                "a",
                "10.200.9.1".parse().unwrap(),
                "fd00:200::9:1".parse().unwrap(),
            )
            .expect("workload a");
        let b = net
            .add_workload(
                "b",
                "10.200.9.2".parse().unwrap(),
                "fd00:200::9:2".parse().unwrap(),
            )
            .expect("workload b");
        let mut servers = Vec::new();
        for w in [&a, &b] {
            servers.push(w.serve(&[80, 81], Proto::Tcp).expect("tcp server"));
            servers.push(w.serve(&[80, 81], Proto::Udp).expect("udp server"));
        }
        let mut agent = AgentRun::new(&net).expect("agent files");
        agent
            .write_inventory(&inventory_yaml(
                &[("x", "{}")],
                &[
                    InventoryWorkload {
                        namespace: "x",
                        name: "a",
                        labels: "{pod: a}",
                        workload: &a,
                    },
                    InventoryWorkload {
                        namespace: "x",
                        name: "b",
                        labels: "{pod: b}",
                        workload: &b,
                    },
                ],
            ))
            .expect("inventory");
        agent.write_policy("policy.yaml", policy).expect("policy");
        agent.start().expect("start the agent");
        let fixture = Self {
            agent,
            servers,
            a,
            b,
            net,
        };
        // Enforcing once b's isolation drops what the policy does not admit.
        let ready = fixture.agent.wait_until(Duration::from_secs(20), || {
            // Port 81 is served but not admitted. (A port nobody serves is answered by the
            // kernel itself, with no socket and so no hook: `Refused` either way.)
            fixture.probe_short(&fixture.a, &fixture.b, 81, Proto::Tcp) == ProbeResult::Timeout
        });
        assert!(
            ready,
            "agent never enforced; stderr:\n{}",
            fixture.agent.stderr()
        );
        fixture
    }

    fn probe(&self, from: &Workload, to: &Workload, port: u16, proto: Proto) -> ProbeResult {
        self.net.probe(from, IpAddr::V4(to.ipv4), port, proto)
    }

    fn probe_short(&self, from: &Workload, to: &Workload, port: u16, proto: Proto) -> ProbeResult {
        self.net.probe_with_timeout(
            from,
            IpAddr::V4(to.ipv4),
            port,
            proto,
            Duration::from_millis(300),
        )
    }

    /// Log records after the first `skip`, once at least `count` exist (waits up to 5 s, then
    /// 300 ms more to catch any extra record).
    fn records_after(&self, skip: usize, count: usize) -> Vec<Value> {
        self.agent.wait_until(Duration::from_secs(5), || {
            self.agent.log_records().len() >= skip + count
        });
        std::thread::sleep(Duration::from_millis(300));
        self.agent.log_records().split_off(skip)
    }
}

fn find<'a>(records: &'a [Value], direction: &str, proto: &str, port: u64) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| {
            r["direction"] == direction && r["protocol"] == proto && r["dst"]["port"] == port
        })
        .collect()
}

#[test]
fn verdict_log_has_one_record_per_attempt_per_enforcement_point() {
    if skip() {
        return;
    }
    let f = Fixture::new("log", ALLOW_80);
    let before = f.records_after(0, 0).len();
    assert_eq!(f.probe(&f.a, &f.b, 80, Proto::Tcp), ProbeResult::Connected);
    assert_eq!(f.probe(&f.a, &f.b, 81, Proto::Tcp), ProbeResult::Timeout);
    assert_eq!(f.probe(&f.a, &f.b, 80, Proto::Udp), ProbeResult::Connected);
    assert_eq!(f.probe(&f.a, &f.b, 81, Proto::Udp), ProbeResult::Timeout);
    let records = f.records_after(before, 8);
    assert_eq!(
        records.len(),
        8,
        "4 attempts x 2 enforcement points, exactly:\n{}",
        serde_json::to_string_pretty(&records).unwrap()
    );
    for (proto, port, verdict) in [
        ("TCP", 80, "allow"),
        ("TCP", 81, "deny"),
        ("UDP", 80, "allow"),
        ("UDP", 81, "deny"),
    ] {
        let egress = find(&records, "egress", proto, port);
        let ingress = find(&records, "ingress", proto, port);
        assert_eq!(
            (egress.len(), ingress.len()),
            (1, 1),
            "{proto}/{port}: {records:?}"
        );
        let (egress, ingress) = (egress[0], ingress[0]);
        // The client's side: a is not isolated for egress.
        assert_eq!(egress["verdict"], "allow");
        assert_eq!(egress["reason"], "not-isolated");
        assert_eq!(egress["policy"], Value::Null);
        assert_eq!(
            egress["hook"],
            if proto == "TCP" { "connect" } else { "sendmsg" }
        );
        // The server's side decides.
        assert_eq!(ingress["verdict"], verdict, "{proto}/{port}");
        assert_eq!(ingress["hook"], "skb-ingress");
        assert_eq!(ingress["policy"]["kind"], "NetworkPolicy");
        assert_eq!(ingress["policy"]["namespace"], "x");
        assert_eq!(ingress["policy"]["name"], "b-ingress");
        if verdict == "allow" {
            assert_eq!(ingress["reason"], "allowed-by-rule");
            assert_eq!(ingress["rule"], 0);
        } else {
            assert_eq!(ingress["reason"], "default-deny");
            assert_eq!(ingress["rule"], Value::Null);
        }
        for r in [egress, ingress] {
            assert_eq!(r["src"]["workload"], "x/a", "{r}");
            assert_eq!(r["src"]["ip"], "10.200.9.1", "{r}");
            assert_eq!(r["dst"]["workload"], "x/b", "{r}");
            assert_eq!(r["dst"]["ip"], "10.200.9.2", "{r}");
            assert!(r["src"]["identity"].as_u64().unwrap() >= 256, "{r}");
            assert!(r["dst"]["identity"].as_u64().unwrap() >= 256, "{r}");
            assert_ne!(r["src"]["identity"], r["dst"]["identity"], "{r}");
            assert!(r["revision"].as_u64().unwrap() >= 1, "{r}");
            assert!(
                r["time"]
                    .as_str()
                    .unwrap()
                    .parse::<jiff::Timestamp>()
                    .is_ok(),
                "{r}"
            );
        }
        assert!(ingress["src"]["port"].as_u64().unwrap() > 0);
    }
}

#[test]
fn policy_changes_apply_within_a_second() {
    if skip() {
        return;
    }
    let f = Fixture::new("change", ALLOW_80);
    assert_eq!(f.probe(&f.a, &f.b, 80, Proto::Tcp), ProbeResult::Connected);
    assert_eq!(
        f.probe_short(&f.a, &f.b, 81, Proto::Tcp),
        ProbeResult::Timeout
    );

    // Update by the same name replaces the policy.
    f.agent.write_policy("policy.yaml", ALLOW_81).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(f.probe(&f.a, &f.b, 81, Proto::Tcp), ProbeResult::Connected);
    assert_eq!(
        f.probe_short(&f.a, &f.b, 80, Proto::Tcp),
        ProbeResult::Timeout
    );

    // Deleting the only isolating policy opens b again.
    f.agent.remove_policy("policy.yaml").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(f.probe(&f.a, &f.b, 80, Proto::Tcp), ProbeResult::Connected);
    assert_eq!(f.probe(&f.a, &f.b, 82, Proto::Tcp), ProbeResult::Refused);
}

/// A restarted systemd service or container gets a new cgroup at the same path, so a new cgroup
/// id: the agent notices within a second and enforces the new cgroup as the workload.
#[test]
fn a_workload_cgroup_made_anew_is_enforced_again() {
    if skip() {
        return;
    }
    let mut f = Fixture::new("recreate", ALLOW_80);
    // Stop b's servers (its cgroup is then empty), remove its cgroup and make it again.
    f.servers.truncate(2);
    let old_id = f.b.cgroup_id;
    let removed = f.agent.wait_until(Duration::from_secs(5), || {
        std::fs::remove_dir(&f.b.cgroup_path).is_ok()
    });
    assert!(removed, "b's cgroup stayed busy");
    std::fs::create_dir(&f.b.cgroup_path).expect("make b's cgroup again");
    let new_id = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(&f.b.cgroup_path).expect("b's new cgroup"),
    );
    assert_ne!(new_id, old_id);
    f.servers
        .push(f.b.serve(&[80, 81], Proto::Tcp).expect("tcp server"));

    let skip = f.agent.log_records().len();
    let enforced = f.agent.wait_until(Duration::from_secs(5), || {
        f.probe_short(&f.a, &f.b, 81, Proto::Tcp) == ProbeResult::Timeout
    });
    assert!(
        enforced,
        "b's new cgroup is not enforced; stderr:\n{}",
        f.agent.stderr()
    );
    assert_eq!(f.probe(&f.a, &f.b, 80, Proto::Tcp), ProbeResult::Connected);
    // The log names b for its new cgroup.
    let records = f.records_after(skip, 1);
    let denied = find(&records, "ingress", "TCP", 81);
    assert!(!denied.is_empty(), "{records:#?}");
    for r in denied {
        assert_eq!(r["dst"]["workload"], "x/b", "{r:#}");
        assert_eq!(r["verdict"], "deny", "{r:#}");
    }
    assert!(
        f.agent.stderr().contains("workload cgroup changed"),
        "{}",
        f.agent.stderr()
    );
}

#[test]
fn invalid_input_is_reported_and_the_last_good_state_keeps_enforcing() {
    if skip() {
        return;
    }
    let mut f = Fixture::new("invalid", ALLOW_80);
    let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
        metadata: {name: broken, namespace: x}\nspec:\n  podSelector: {}\n  \
        ingress:\n  - ports: [{protocol: TCP, port: 90, endPort: 85}]\n";
    f.agent.write_policy("broken.yaml", bad).unwrap();
    let reported = f.agent.wait_until(Duration::from_secs(3), || {
        f.agent.stderr().contains("broken.yaml")
    });
    let stderr = f.agent.stderr();
    assert!(reported, "the bad file is reported; stderr:\n{stderr}");
    let line = stderr.lines().find(|l| l.contains("broken.yaml")).unwrap();
    assert!(
        line.contains("endPort"),
        "the error names the field: {line}"
    );
    assert!(
        line.contains("x/broken"),
        "the error names the object: {line}"
    );
    assert!(f.agent.running(), "a bad file does not stop the agent");
    // Nothing of the broken set was applied: the previous policy still decides.
    assert_eq!(f.probe(&f.a, &f.b, 80, Proto::Tcp), ProbeResult::Connected);
    assert_eq!(
        f.probe_short(&f.a, &f.b, 81, Proto::Tcp),
        ProbeResult::Timeout
    );

    // A bad inventory likewise (with the policies valid again).
    f.agent.remove_policy("broken.yaml").unwrap();
    let inventory = std::fs::read_to_string(f.agent.inventory_path()).unwrap();
    f.agent
        .write_inventory(&inventory.replace("10.200.9.2,", "10.200.9.300,"))
        .unwrap();
    let reported = f.agent.wait_until(Duration::from_secs(3), || {
        f.agent
            .stderr()
            .contains("inventory.yaml: Inventory: workloads[1].ips[0]")
    });
    assert!(
        reported,
        "bad inventory reported; stderr:\n{}",
        f.agent.stderr()
    );
    assert_eq!(f.probe(&f.a, &f.b, 80, Proto::Tcp), ProbeResult::Connected);
    assert_eq!(
        f.probe_short(&f.a, &f.b, 81, Proto::Tcp),
        ProbeResult::Timeout
    );

    // Mending the inventory and changing the policy applies the new set.
    f.agent.write_inventory(&inventory).unwrap();
    f.agent.write_policy("policy.yaml", ALLOW_81).unwrap();
    let applied = f.agent.wait_until(Duration::from_secs(3), || {
        f.probe_short(&f.a, &f.b, 81, Proto::Tcp) == ProbeResult::Connected
    });
    assert!(
        applied,
        "the mended set applies; stderr:\n{}",
        f.agent.stderr()
    );
    f.agent.stop();
}

#[test]
fn sigkill_leaves_the_kernel_enforcing_and_a_restart_adopts_without_a_log_gap() {
    if skip() {
        return;
    }
    let mut f = Fixture::new("sigkill", ALLOW_80);
    let (mut session, first) =
        f.a.open_session(IpAddr::V4(f.b.ipv4), 80, Duration::from_secs(1))
            .expect("session");
    assert_eq!(first, ProbeResult::Connected);
    let programs = attached_count(f.net.cgroup_parent()).expect("query attached programs");
    assert!(programs > 0);

    f.agent.kill();
    let killed_at = jiff::Timestamp::now();
    // While no agent runs, the pinned programs keep deciding, both ways.
    assert_eq!(
        session.exchange().unwrap(),
        ProbeResult::Connected,
        "established flow stays allowed"
    );
    assert_eq!(f.probe(&f.a, &f.b, 80, Proto::Tcp), ProbeResult::Connected);
    assert_eq!(
        f.probe_short(&f.a, &f.b, 81, Proto::Tcp),
        ProbeResult::Timeout
    );
    assert_eq!(
        f.probe_short(&f.a, &f.b, 81, Proto::Udp),
        ProbeResult::Timeout
    );

    let restarted = Instant::now();
    f.agent.start().unwrap();
    // The new agent adopts the pins: nothing attached twice.
    let settled = f.agent.wait_until(Duration::from_secs(10), || {
        f.agent.stderr().matches("policy enforced").count() >= 2
    });
    assert!(
        settled,
        "restarted agent enforces; stderr:\n{}",
        f.agent.stderr()
    );
    assert_eq!(attached_count(f.net.cgroup_parent()).unwrap(), programs);
    assert!(f.agent.stderr().contains("Adopted"), "{}", f.agent.stderr());
    assert_eq!(session.exchange().unwrap(), ProbeResult::Connected);
    assert_eq!(
        f.probe_short(&f.a, &f.b, 81, Proto::Tcp),
        ProbeResult::Timeout
    );

    // Verdicts made while no agent ran were kept in the pinned ring buffer and logged after
    // the restart: no gap.
    let logged = f.agent.wait_until(Duration::from_secs(5), || {
        f.agent.log_records().iter().any(|r| {
            r["direction"] == "ingress"
                && r["protocol"] == "UDP"
                && r["dst"]["port"] == 81
                && r["verdict"] == "deny"
                && r["time"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .is_some_and(|t| t > killed_at)
        })
    });
    assert!(
        logged,
        "the UDP/81 denial made while the agent was down is in the log (restart took {:?})",
        restarted.elapsed()
    );
}

#[test]
fn invalid_input_at_start_changes_nothing_and_exits_2() {
    if skip() {
        return;
    }
    let (net, a, agent) = one_workload("badstart");
    agent
        .write_inventory(&inventory_yaml(
            &[("x", "{}")],
            &[InventoryWorkload {
                namespace: "x",
                name: "a",
                labels: "{pod: a}",
                workload: &a,
            }],
        ))
        .unwrap();
    agent
        .write_policy(
            "bad.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n\
             spec:\n  podSelector: {matchExpressions: [{key: pod, operator: Near}]}\n",
        )
        .unwrap();
    let error = run_refused(&agent, &net);
    assert!(error.contains("bad.yaml"), "{error}");
    assert!(error.contains("x/p"), "{error}");
    assert!(error.contains("operator"), "{error}");
}

/// Two workloads naming one cgroup, spelled differently (full path with and without a trailing
/// `/`), pass the inventory's own check; the agent refuses them before installing anything.
#[test]
fn one_cgroup_claimed_twice_is_refused_at_start() {
    if skip() {
        return;
    }
    let (net, a, agent) = one_workload("samecg");
    let dir = a.cgroup_path.display();
    agent
        .write_inventory(&format!(
            "namespaces: [{{name: x}}]\nworkloads:\n\
             - {{namespace: x, name: a, cgroup: \"{dir}\"}}\n\
             - {{namespace: x, name: b, cgroup: \"{dir}/\"}}\n"
        ))
        .unwrap();
    let error = run_refused(&agent, &net);
    assert!(error.contains("inventory"), "{error}");
    assert!(error.contains("x/b"), "{error}");
    assert!(error.contains("workloads[1].cgroup"), "{error}");
    assert!(error.contains("x/a"), "{error}");
}

/// A test network with workload `a` and an agent's files (no agent running).
fn one_workload(name: &str) -> (TestNet, Workload, AgentRun) {
    let mut net = TestNet::new(name).unwrap();
    let a = net
        .add_workload(
            "a",
            "10.200.9.1".parse().unwrap(),
            "fd00:200::9:1".parse().unwrap(),
        )
        .unwrap();
    let agent = AgentRun::new(&net).unwrap();
    (net, a, agent)
}

/// Runs `enforcer run` once; asserts it exits 2 (within 20 s: an agent that accepted the input
/// would run on) with one error line, having installed nothing, and returns that line.
fn run_refused(agent: &AgentRun, net: &TestNet) -> String {
    let mut child = std::process::Command::new(bulkhead_tests::agent::enforcer_binary().unwrap())
        .arg("run")
        .arg("--policies")
        .arg(agent.policies_dir())
        .arg("--inventory")
        .arg(agent.inventory_path())
        .arg("--log")
        .arg(agent.log_path())
        .arg("--bpffs")
        .arg(agent.bpffs())
        .arg("--cgroup")
        .arg(net.cgroup_parent())
        .arg("--no-metrics")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the agent accepted the input and ran on:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "one clear line: {stderr}");
    assert!(!agent.bpffs().exists(), "nothing was installed");
    assert_eq!(attached_count(net.cgroup_parent()).unwrap(), 0);
    error_lines[0].to_owned()
}

#[test]
fn metrics_count_verdicts_by_policy_and_report_map_fill() {
    if skip() {
        return;
    }
    let addr = free_loopback_addr().unwrap();
    let mut f = Fixture::new("metrics", ALLOW_80);
    f.agent.stop();
    f.agent.set_metrics(addr);
    f.agent.start().unwrap();
    let up = f
        .agent
        .wait_until(Duration::from_secs(10), || scrape(addr).is_some());
    assert!(up, "metrics endpoint up; stderr:\n{}", f.agent.stderr());
    assert_eq!(
        f.probe_short(&f.a, &f.b, 81, Proto::Tcp),
        ProbeResult::Timeout
    );
    let deny = r#"bulkhead_verdicts_total{direction="ingress",verdict="deny",policy="NetworkPolicy/x/b-ingress"}"#;
    let counted = f.agent.wait_until(Duration::from_secs(5), || {
        scrape(addr).is_some_and(|text| text.lines().any(|l| l.starts_with(deny)))
    });
    let text = scrape(addr).unwrap_or_default();
    assert!(counted, "{text}");
    assert!(
        text.contains(r#"bulkhead_map_entries{map="POLICY"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"bulkhead_map_entries{map="WORKLOADS"} 2"#),
        "{text}"
    );
    assert!(
        text.contains("bulkhead_map_capacity{map=\"POLICY\"}"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("bulkhead_policy_revision ")),
        "{text}"
    );
    assert!(text.contains("bulkhead_events_lost_total 0"), "{text}");
}
