//! Kernel verdict events -> verdict log records: who talked to whom (workloads by cgroup and by
//! address), and which policy and rule decided (rule ids are deterministic, and every rule id
//! ever compiled by this process or its predecessors is kept, so an event decided under an older
//! revision is still attributed).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};

use bulkhead_policy::{CompiledState, RuleRef, WorkloadRef};
use enforcer_common::{
    DIR_EGRESS, FAMILY_INET, HOOK_CONNECT, HOOK_SENDMSG, HOOK_SKB_EGRESS, HOOK_SKB_INGRESS,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP, REASON_ALLOWED_BY_RULE, REASON_DEFAULT_DENY,
    REASON_DENIED_BY_RULE, REASON_NOT_ISOLATED, REVISION_PAST_CHANGE_BIT, VERDICT_ALLOW,
    VERDICT_AUDIT, VERDICT_DENY, VerdictEvent,
};

use crate::datapath::{BootClock, TRANSIENT_REVISION_BIT};
use crate::verdict_log::{LogEndpoint, LogPolicy, VerdictRecord};

/// What the log needs to name workloads and rules.
#[derive(Default)]
pub struct Attribution {
    by_cgroup: BTreeMap<u64, WorkloadRef>,
    by_ip: HashMap<IpAddr, WorkloadRef>,
    ips: HashMap<WorkloadRef, Vec<IpAddr>>,
    rules: HashMap<u32, RuleRef>,
}

impl Attribution {
    /// Takes the workloads of the new state; adds its rules to those already known.
    pub fn update(&mut self, state: &CompiledState, by_cgroup: BTreeMap<u64, WorkloadRef>) {
        self.by_cgroup = by_cgroup;
        self.by_ip.clear();
        self.ips.clear();
        for (workload, compiled) in &state.workloads {
            for ip in &compiled.ips {
                self.by_ip.insert(*ip, workload.clone());
            }
            self.ips.insert(workload.clone(), compiled.ips.clone());
        }
        self.rules
            .extend(state.rules.iter().map(|(id, r)| (*id, r.clone())));
    }

    /// Cluster mode: the node's pods by cgroup, and the rules of the view (added to those
    /// known). The view names no remote workload by address, so peers are logged by address and
    /// identity only.
    pub fn update_local(
        &mut self,
        by_cgroup: BTreeMap<u64, WorkloadRef>,
        rules: impl IntoIterator<Item = (u32, RuleRef)>,
    ) {
        self.by_cgroup = by_cgroup;
        self.by_ip.clear();
        self.ips.clear();
        self.rules.extend(rules);
    }

    /// Rules known so far (persisted, so a restarted agent attributes older events).
    pub fn rules(&self) -> &HashMap<u32, RuleRef> {
        &self.rules
    }

    pub fn add_rules(&mut self, rules: impl IntoIterator<Item = (u32, RuleRef)>) {
        for (id, rule) in rules {
            self.rules.entry(id).or_insert(rule);
        }
    }

    /// The record for one event.
    pub fn record(&self, event: &VerdictEvent, clock: &BootClock) -> VerdictRecord {
        let egress = event.direction == DIR_EGRESS;
        let local = self.by_cgroup.get(&event.cgroup_id);
        let mut src_ip = address(event.src_addr, event.family);
        let dst_ip = address(event.dst_addr, event.family);
        // At connect/sendmsg time the kernel has not chosen the source address yet: the local
        // workload's own address of the same family stands in for it.
        if egress
            && src_ip.is_unspecified()
            && let Some(ip) = local.and_then(|w| self.ips.get(w)).and_then(|ips| {
                ips.iter()
                    .find(|ip| ip.is_ipv4() == dst_ip.is_ipv4())
                    .copied()
            })
        {
            src_ip = ip;
        }
        let (src_identity, dst_identity) = if egress {
            (event.local_identity, event.remote_identity)
        } else {
            (event.remote_identity, event.local_identity)
        };
        let name = |w: &WorkloadRef| format!("{}/{}", w.namespace, w.name);
        let (src_workload, dst_workload) = if egress {
            (local.map(name), self.by_ip.get(&dst_ip).map(name))
        } else {
            (self.by_ip.get(&src_ip).map(name), local.map(name))
        };
        let rule = self.rules.get(&event.rule_id);
        VerdictRecord {
            time: wall_time(event.timestamp_ns, clock),
            verdict: match event.verdict {
                VERDICT_ALLOW => "allow",
                VERDICT_DENY => "deny",
                VERDICT_AUDIT => "audit",
                _ => "unknown",
            },
            direction: if egress { "egress" } else { "ingress" },
            hook: match event.hook {
                HOOK_CONNECT => "connect",
                HOOK_SENDMSG => "sendmsg",
                HOOK_SKB_EGRESS => "skb-egress",
                HOOK_SKB_INGRESS => "skb-ingress",
                _ => "unknown",
            },
            protocol: match event.protocol {
                PROTO_TCP => "TCP".to_owned(),
                PROTO_UDP => "UDP".to_owned(),
                PROTO_SCTP => "SCTP".to_owned(),
                other => other.to_string(),
            },
            src: LogEndpoint {
                ip: src_ip,
                port: event.src_port,
                workload: src_workload,
                identity: src_identity,
            },
            dst: LogEndpoint {
                ip: dst_ip,
                port: event.dst_port,
                workload: dst_workload,
                identity: dst_identity,
            },
            policy: rule.map(|r| LogPolicy {
                kind: r.kind.as_str().to_owned(),
                namespace: r.namespace.clone(),
                name: r.name.clone(),
            }),
            rule: rule.and_then(|r| r.index),
            rule_name: rule.and_then(|r| r.rule_name.clone()),
            reason: match event.reason {
                REASON_ALLOWED_BY_RULE => "allowed-by-rule",
                REASON_DENIED_BY_RULE => "denied-by-rule",
                REASON_DEFAULT_DENY => "default-deny",
                REASON_NOT_ISOLATED => "not-isolated",
                _ => "unknown",
            },
            // A decision made while an apply deleted stale entries carries the transient
            // revision, one made past a window boundary the past-change bit: both belong to the
            // revision the maps hold.
            revision: event.revision & !(TRANSIENT_REVISION_BIT | REVISION_PAST_CHANGE_BIT),
            cgroup_id: event.cgroup_id,
            socket_cookie: event.socket_cookie,
        }
    }
}

/// An event address (IPv6 or IPv4-mapped) as an `IpAddr`. An IPv4-mapped address is IPv4 in
/// either family: an IPv6 socket's connection to `::ffff:a.b.c.d` (a dual-stack client) is an
/// IPv4 connection, and the inventory and the kernel's `ADDRESSES` know the peer by that address.
pub fn address(bytes: [u8; 16], family: u8) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None if family == FAMILY_INET && v6.is_unspecified() => {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        }
        None => IpAddr::V6(v6),
    }
}

/// RFC 3339 (UTC, nanoseconds) of a boot-clock instant.
pub fn wall_time(boot_ns: u64, clock: &BootClock) -> String {
    let unix = i128::from(boot_ns) + clock.offset_ns;
    jiff::Timestamp::from_nanosecond(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("boot+{boot_ns}ns"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_policy::{CompiledWorkload, Direction, Kind};
    use enforcer_common::{DIR_INGRESS, FAMILY_INET, FAMILY_INET6};

    fn mapped(ip: [u8; 4]) -> [u8; 16] {
        std::net::Ipv4Addr::from(ip).to_ipv6_mapped().octets()
    }

    fn state() -> CompiledState {
        let mut state = CompiledState::default();
        state.workloads.insert(
            WorkloadRef::new("x", "a"),
            CompiledWorkload {
                identity: 256,
                cgroup: Some("/t/x-a".into()),
                ips: vec!["10.200.1.1".parse().unwrap()],
            },
        );
        state.workloads.insert(
            WorkloadRef::new("x", "b"),
            CompiledWorkload {
                identity: 257,
                cgroup: Some("/t/x-b".into()),
                ips: vec!["10.200.1.2".parse().unwrap()],
            },
        );
        let rule = RuleRef {
            kind: Kind::NetworkPolicy,
            namespace: Some("x".into()),
            name: "allow-a".into(),
            direction: Direction::Ingress,
            index: Some(0),
            rule_name: None,
        };
        state.rules.insert(rule.id(), rule);
        state
    }

    #[test]
    fn ingress_event_names_both_workloads_and_the_rule() {
        let state = state();
        let rule_id = *state.rules.keys().next().unwrap();
        let mut attribution = Attribution::default();
        attribution.update(&state, BTreeMap::from([(77, WorkloadRef::new("x", "b"))]));
        let event = VerdictEvent {
            timestamp_ns: 1_000,
            cgroup_id: 77,
            socket_cookie: 5,
            revision: 2,
            src_addr: mapped([10, 200, 1, 1]),
            dst_addr: mapped([10, 200, 1, 2]),
            src_port: 40000,
            dst_port: 80,
            local_identity: 257,
            remote_identity: 256,
            rule_id,
            direction: DIR_INGRESS,
            hook: HOOK_SKB_INGRESS,
            protocol: PROTO_TCP,
            verdict: VERDICT_ALLOW,
            reason: REASON_ALLOWED_BY_RULE,
            family: FAMILY_INET,
            _pad: [0; 10],
        };
        let clock = BootClock {
            offset_ns: 1_700_000_000_000_000_000,
        };
        let record = attribution.record(&event, &clock);
        assert_eq!(record.src.workload.as_deref(), Some("x/a"));
        assert_eq!(record.src.identity, 256);
        assert_eq!(record.dst.workload.as_deref(), Some("x/b"));
        assert_eq!(record.dst.identity, 257);
        assert_eq!(record.dst.port, 80);
        assert_eq!(record.policy.as_ref().unwrap().name, "allow-a");
        assert_eq!(record.rule, Some(0));
        assert_eq!(record.verdict, "allow");
        assert_eq!(record.reason, "allowed-by-rule");
        assert_eq!(record.time, "2023-11-14T22:13:20.000001Z");
    }

    /// x/a's TCP connect to x/b:81, denied by default, as the connect hook reports it.
    fn denied_connect() -> VerdictEvent {
        VerdictEvent {
            timestamp_ns: 1,
            cgroup_id: 76,
            socket_cookie: 1,
            revision: 1,
            src_addr: mapped([0, 0, 0, 0]),
            dst_addr: mapped([10, 200, 1, 2]),
            src_port: 0,
            dst_port: 81,
            local_identity: 256,
            remote_identity: 257,
            rule_id: 0,
            direction: DIR_EGRESS,
            hook: HOOK_CONNECT,
            protocol: PROTO_TCP,
            verdict: VERDICT_DENY,
            reason: REASON_DEFAULT_DENY,
            family: FAMILY_INET,
            _pad: [0; 10],
        }
    }

    fn with_a_at_cgroup_76() -> Attribution {
        let mut attribution = Attribution::default();
        attribution.update(&state(), BTreeMap::from([(76, WorkloadRef::new("x", "a"))]));
        attribution
    }

    #[test]
    fn connect_event_takes_the_local_address_from_the_inventory() {
        let record = with_a_at_cgroup_76().record(&denied_connect(), &BootClock { offset_ns: 0 });
        assert_eq!(record.src.ip.to_string(), "10.200.1.1");
        assert_eq!(record.src.workload.as_deref(), Some("x/a"));
        assert_eq!(record.dst.workload.as_deref(), Some("x/b"));
        assert_eq!(record.policy, None);
        assert_eq!(record.hook, "connect");
        assert_eq!(record.reason, "default-deny");
    }

    #[test]
    fn an_ipv6_sockets_connection_to_an_ipv4_mapped_peer_is_logged_as_ipv4() {
        let event = VerdictEvent {
            revision: 3 | TRANSIENT_REVISION_BIT | REVISION_PAST_CHANGE_BIT,
            src_addr: [0; 16],
            family: FAMILY_INET6,
            ..denied_connect()
        };
        let record = with_a_at_cgroup_76().record(&event, &BootClock { offset_ns: 0 });
        assert_eq!(record.dst.ip.to_string(), "10.200.1.2");
        assert_eq!(record.dst.workload.as_deref(), Some("x/b"));
        assert_eq!(record.src.ip.to_string(), "10.200.1.1");
        assert_eq!(record.revision, 3);
    }
}
