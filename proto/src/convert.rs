//! Wire <-> domain conversions. Wire -> domain checks every field and rejects the message whole
//! on the first bad one; domain -> wire cannot fail.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bulkhead_policy::{AddrPrefix, Direction, Kind, MapDiff, PolicyEntryKey, RuleRef};
use enforcer_common::{
    DIR_EGRESS, DIR_INGRESS, DefaultKey, POLICY_KEY_FIXED_BITS, POLICY_KEY_FULL_BITS, PROTO_OTHER,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyKey, PolicyValue, identity,
};

use crate::domain::{ControllerMsg, Delta, EnforcerMsg, NodeView, PodRef, SharedDiff, Snapshot};
use crate::error::{Problem, WireError};
use crate::wire;

/// A field error below the message level: (field path, problem).
type FieldResult<T> = Result<T, (String, Problem)>;

fn at<T>(prefix: &str, r: FieldResult<T>) -> FieldResult<T> {
    r.map_err(|(f, p)| (format!("{prefix}.{f}"), p))
}

fn bad<T>(field: &str, problem: Problem) -> FieldResult<T> {
    Err((field.to_owned(), problem))
}

fn required<'a, T>(v: &'a Option<T>, field: &str) -> FieldResult<&'a T> {
    v.as_ref()
        .ok_or_else(|| (field.to_owned(), Problem::Missing))
}

fn raw_direction(v: i32, field: &str) -> FieldResult<u8> {
    match wire::Direction::try_from(v) {
        Ok(wire::Direction::Ingress) => Ok(DIR_INGRESS),
        Ok(wire::Direction::Egress) => Ok(DIR_EGRESS),
        _ => bad(field, Problem::BadEnum(v)),
    }
}

fn wire_direction(raw: u8) -> i32 {
    if raw == DIR_EGRESS {
        wire::Direction::Egress as i32
    } else {
        wire::Direction::Ingress as i32
    }
}

fn local_identity(v: u32, field: &str) -> FieldResult<u32> {
    if v == identity::ANY {
        return bad(
            field,
            Problem::OutOfRange {
                value: 0,
                range: "1..",
            },
        );
    }
    Ok(v)
}

fn policy_key(k: &wire::PolicyKey) -> FieldResult<PolicyEntryKey> {
    let local = local_identity(k.local_identity, "local_identity")?;
    let direction = raw_direction(k.direction, "direction")?;
    let protocol = match u8::try_from(k.protocol) {
        Ok(p @ (PROTO_OTHER | PROTO_TCP | PROTO_UDP | PROTO_SCTP)) => p,
        _ => {
            return bad(
                "protocol",
                Problem::OutOfRange {
                    value: k.protocol.into(),
                    range: "{0, 6, 17, 132}",
                },
            );
        }
    };
    if !(POLICY_KEY_FIXED_BITS..=POLICY_KEY_FULL_BITS).contains(&k.prefix_len) {
        return bad(
            "prefix_len",
            Problem::OutOfRange {
                value: k.prefix_len.into(),
                range: "80..=96",
            },
        );
    }
    let Ok(port) = u16::try_from(k.port) else {
        return bad(
            "port",
            Problem::OutOfRange {
                value: k.port.into(),
                range: "0..=65535",
            },
        );
    };
    let port_bits = k.prefix_len - POLICY_KEY_FIXED_BITS;
    if port_bits < 16 && port & (u16::MAX >> port_bits) != 0 {
        return bad("port", Problem::HostBits);
    }
    Ok(PolicyEntryKey {
        key: PolicyKey {
            local_identity: local,
            peer_identity: k.peer_identity,
            direction,
            protocol,
            port_be: port.to_be_bytes(),
        },
        prefix_len: k.prefix_len,
    })
}

fn policy_value(v: &wire::PolicyValue) -> FieldResult<PolicyValue> {
    let verdict = match wire::Verdict::try_from(v.verdict) {
        Ok(wire::Verdict::Unspecified) | Err(_) => {
            return bad("verdict", Problem::BadEnum(v.verdict));
        }
        Ok(x) => x as u8,
    };
    let reason = match wire::Reason::try_from(v.reason) {
        Ok(wire::Reason::Unspecified) | Err(_) => return bad("reason", Problem::BadEnum(v.reason)),
        Ok(x) => x as u8,
    };
    Ok(PolicyValue {
        verdict,
        reason,
        _pad: [0; 2],
        rule_id: v.rule_id,
        not_before: v.not_before_unix_ns,
        expires_at: v.expires_at_unix_ns,
    })
}

fn policy_entry(e: &wire::PolicyEntry) -> FieldResult<(PolicyEntryKey, PolicyValue)> {
    let k = at("key", policy_key(required(&e.key, "key")?))?;
    let v = at("value", policy_value(required(&e.value, "value")?))?;
    Ok((k, v))
}

fn default_key(k: &wire::DefaultKey) -> FieldResult<DefaultKey> {
    Ok(DefaultKey {
        local_identity: local_identity(k.local_identity, "local_identity")?,
        direction: raw_direction(k.direction, "direction")?,
        _pad: [0; 3],
    })
}

fn default_entry(e: &wire::DefaultEntry) -> FieldResult<(DefaultKey, PolicyValue)> {
    let k = at("key", default_key(required(&e.key, "key")?))?;
    let v = at("value", policy_value(required(&e.value, "value")?))?;
    Ok((k, v))
}

fn addr_prefix(p: &wire::AddrPrefix) -> FieldResult<AddrPrefix> {
    let Ok(addr) = <[u8; 16]>::try_from(p.addr.as_slice()) else {
        return bad(
            "addr",
            Problem::Length {
                len: p.addr.len(),
                expected: 16,
            },
        );
    };
    if p.prefix_len > 128 {
        return bad(
            "prefix_len",
            Problem::OutOfRange {
                value: p.prefix_len.into(),
                range: "0..=128",
            },
        );
    }
    let bits = u128::from_be_bytes(addr);
    let host = u128::MAX.checked_shr(p.prefix_len).unwrap_or(0);
    if bits & host != 0 {
        return bad("addr", Problem::HostBits);
    }
    Ok(AddrPrefix {
        addr,
        prefix_len: p.prefix_len,
    })
}

fn address_entry(e: &wire::AddressEntry) -> FieldResult<(AddrPrefix, u32)> {
    let p = at("prefix", addr_prefix(required(&e.prefix, "prefix")?))?;
    Ok((p, e.identity))
}

fn pod_ref(p: &wire::PodRef) -> FieldResult<PodRef> {
    for (field, v) in [
        ("namespace", &p.namespace),
        ("name", &p.name),
        ("uid", &p.uid),
    ] {
        if v.is_empty() {
            return bad(field, Problem::Empty);
        }
    }
    Ok(PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    })
}

fn workload(w: &wire::Workload) -> FieldResult<(PodRef, u32)> {
    let pod = at("pod", pod_ref(required(&w.pod, "pod")?))?;
    if !(identity::FIRST_WORKLOAD..identity::FIRST_CIDR).contains(&w.identity) {
        return bad(
            "identity",
            Problem::OutOfRange {
                value: w.identity.into(),
                range: "256..16777216",
            },
        );
    }
    Ok((pod, w.identity))
}

fn rule(r: &wire::Rule) -> FieldResult<(u32, RuleRef)> {
    let kind = match wire::PolicyKind::try_from(r.kind) {
        Ok(wire::PolicyKind::NetworkPolicy) => Kind::NetworkPolicy,
        Ok(wire::PolicyKind::SegmentationPolicy) => Kind::SegmentationPolicy,
        Ok(wire::PolicyKind::ClusterSegmentationPolicy) => Kind::ClusterSegmentationPolicy,
        _ => return bad("kind", Problem::BadEnum(r.kind)),
    };
    let direction = if raw_direction(r.direction, "direction")? == DIR_EGRESS {
        Direction::Egress
    } else {
        Direction::Ingress
    };
    if r.name.is_empty() {
        return bad("name", Problem::Empty);
    }
    let namespaced = kind != Kind::ClusterSegmentationPolicy;
    match &r.namespace {
        None if namespaced => return bad("namespace", Problem::Missing),
        Some(ns) if ns.is_empty() => return bad("namespace", Problem::Empty),
        _ => {}
    }
    let rr = RuleRef {
        kind,
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        direction,
        index: r.index,
        rule_name: r.rule_name.clone(),
    };
    let expected = rr.id();
    if expected != r.rule_id {
        return bad("rule_id", Problem::RuleId { expected });
    }
    Ok((r.rule_id, rr))
}

/// Converts a repeated field into a map, rejecting duplicate keys.
fn collect_map<W, K: Ord, V>(
    message: &'static str,
    field: &str,
    items: &[W],
    f: impl Fn(&W) -> FieldResult<(K, V)>,
) -> Result<BTreeMap<K, V>, WireError> {
    let mut map = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let (k, v) =
            f(item).map_err(|(f, p)| WireError::new(message, format!("{field}[{i}].{f}"), p))?;
        if map.insert(k, v).is_some() {
            return Err(WireError::new(
                message,
                format!("{field}[{i}]"),
                Problem::Duplicate,
            ));
        }
    }
    Ok(map)
}

/// Converts the upserts and deletes of one map; a key may appear once.
fn diff<WU, WD, K: Ord + Clone, V>(
    fields: (&str, &str),
    upserts: &[WU],
    deletes: &[WD],
    fu: impl Fn(&WU) -> FieldResult<(K, V)>,
    fd: impl Fn(&WD) -> FieldResult<K>,
) -> Result<MapDiff<K, V>, WireError> {
    let ups = collect_map("Delta", fields.0, upserts, fu)?;
    let mut seen = BTreeSet::new();
    let mut removals = Vec::with_capacity(deletes.len());
    for (i, d) in deletes.iter().enumerate() {
        let k = fd(d).map_err(|(f, p)| {
            let field = if f.is_empty() {
                format!("{}[{i}]", fields.1)
            } else {
                format!("{}[{i}].{f}", fields.1)
            };
            WireError::new("Delta", field, p)
        })?;
        let problem = if ups.contains_key(&k) {
            Some(Problem::UpsertedAndDeleted)
        } else if !seen.insert(k.clone()) {
            Some(Problem::Duplicate)
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(WireError::new("Delta", format!("{}[{i}]", fields.1), p));
        }
        removals.push(k);
    }
    Ok(MapDiff {
        upserts: ups.into_iter().collect(),
        removals,
    })
}

impl TryFrom<&wire::Snapshot> for Snapshot {
    type Error = WireError;

    fn try_from(s: &wire::Snapshot) -> Result<Self, WireError> {
        const M: &str = "Snapshot";
        if s.revision == 0 {
            return Err(WireError::new(
                M,
                "revision",
                Problem::OutOfRange {
                    value: 0,
                    range: "1..",
                },
            ));
        }
        Ok(Snapshot {
            epoch: s.epoch,
            revision: s.revision,
            view: NodeView {
                policy: collect_map(M, "policy", &s.policy, policy_entry)?,
                defaults: collect_map(M, "defaults", &s.defaults, default_entry)?,
                addresses: collect_map(M, "addresses", &s.addresses, address_entry)?,
                workloads: collect_map(M, "workloads", &s.workloads, workload)?,
                rules: collect_map(M, "rules", &s.rules, rule)?,
            },
        })
    }
}

impl TryFrom<&wire::Delta> for Delta {
    type Error = WireError;

    fn try_from(d: &wire::Delta) -> Result<Self, WireError> {
        if d.revision <= d.previous_revision {
            return Err(WireError::new(
                "Delta",
                "revision",
                Problem::Revision {
                    got: d.revision,
                    expected: format!("> {}", d.previous_revision),
                },
            ));
        }
        Ok(Delta {
            epoch: d.epoch,
            revision: d.revision,
            previous_revision: d.previous_revision,
            policy: diff(
                ("policy_upserts", "policy_deletes"),
                &d.policy_upserts,
                &d.policy_deletes,
                policy_entry,
                policy_key,
            )?,
            defaults: diff(
                ("defaults_upserts", "defaults_deletes"),
                &d.defaults_upserts,
                &d.defaults_deletes,
                default_entry,
                default_key,
            )?,
            workloads: diff(
                ("workload_upserts", "workload_deletes"),
                &d.workload_upserts,
                &d.workload_deletes,
                workload,
                pod_ref,
            )?,
            shared: Arc::new(SharedDiff {
                addresses: diff(
                    ("address_upserts", "address_deletes"),
                    &d.address_upserts,
                    &d.address_deletes,
                    address_entry,
                    addr_prefix,
                )?,
                rules: diff(
                    ("rule_upserts", "rule_deletes"),
                    &d.rule_upserts,
                    &d.rule_deletes,
                    rule,
                    |id: &u32| Ok(*id),
                )?,
            }),
        })
    }
}

impl TryFrom<&wire::ControllerMessage> for ControllerMsg {
    type Error = WireError;

    fn try_from(m: &wire::ControllerMessage) -> Result<Self, WireError> {
        use wire::controller_message::Msg;
        match &m.msg {
            Some(Msg::Snapshot(s)) => Ok(ControllerMsg::Snapshot(s.try_into()?)),
            Some(Msg::Delta(d)) => Ok(ControllerMsg::Delta(d.try_into()?)),
            None => Err(WireError::new("ControllerMessage", "msg", Problem::Missing)),
        }
    }
}

impl TryFrom<&wire::EnforcerMessage> for EnforcerMsg {
    type Error = WireError;

    fn try_from(m: &wire::EnforcerMessage) -> Result<Self, WireError> {
        use wire::enforcer_message::Msg;
        match &m.msg {
            Some(Msg::Hello(h)) => {
                if h.node_name.is_empty() {
                    return Err(WireError::new("Hello", "node_name", Problem::Empty));
                }
                Ok(EnforcerMsg::Hello {
                    node_name: h.node_name.clone(),
                    held_epoch: h.held_epoch,
                    held_revision: h.held_revision,
                })
            }
            Some(Msg::Ack(a)) => Ok(EnforcerMsg::Ack {
                revision: a.revision,
            }),
            Some(Msg::Nack(n)) => Ok(EnforcerMsg::Nack {
                revision: n.revision,
                error: n.error.clone(),
            }),
            None => Err(WireError::new("EnforcerMessage", "msg", Problem::Missing)),
        }
    }
}

// Domain -> wire.

fn w_policy_key(k: &PolicyEntryKey) -> wire::PolicyKey {
    wire::PolicyKey {
        local_identity: k.key.local_identity,
        peer_identity: k.key.peer_identity,
        direction: wire_direction(k.key.direction),
        protocol: k.key.protocol.into(),
        port: u16::from_be_bytes(k.key.port_be).into(),
        prefix_len: k.prefix_len,
    }
}

fn w_value(v: &PolicyValue) -> wire::PolicyValue {
    wire::PolicyValue {
        verdict: v.verdict.into(),
        reason: v.reason.into(),
        rule_id: v.rule_id,
        not_before_unix_ns: v.not_before,
        expires_at_unix_ns: v.expires_at,
    }
}

fn w_policy_entry((k, v): (&PolicyEntryKey, &PolicyValue)) -> wire::PolicyEntry {
    wire::PolicyEntry {
        key: Some(w_policy_key(k)),
        value: Some(w_value(v)),
    }
}

fn w_default_key(k: &DefaultKey) -> wire::DefaultKey {
    wire::DefaultKey {
        local_identity: k.local_identity,
        direction: wire_direction(k.direction),
    }
}

fn w_default_entry((k, v): (&DefaultKey, &PolicyValue)) -> wire::DefaultEntry {
    wire::DefaultEntry {
        key: Some(w_default_key(k)),
        value: Some(w_value(v)),
    }
}

fn w_prefix(p: &AddrPrefix) -> wire::AddrPrefix {
    wire::AddrPrefix {
        addr: p.addr.to_vec(),
        prefix_len: p.prefix_len,
    }
}

fn w_address((p, id): (&AddrPrefix, &u32)) -> wire::AddressEntry {
    wire::AddressEntry {
        prefix: Some(w_prefix(p)),
        identity: *id,
    }
}

fn w_pod(p: &PodRef) -> wire::PodRef {
    wire::PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    }
}

fn w_workload((p, id): (&PodRef, &u32)) -> wire::Workload {
    wire::Workload {
        pod: Some(w_pod(p)),
        identity: *id,
    }
}

fn w_rule((id, r): (&u32, &RuleRef)) -> wire::Rule {
    wire::Rule {
        rule_id: *id,
        kind: match r.kind {
            Kind::NetworkPolicy => wire::PolicyKind::NetworkPolicy,
            Kind::SegmentationPolicy => wire::PolicyKind::SegmentationPolicy,
            Kind::ClusterSegmentationPolicy => wire::PolicyKind::ClusterSegmentationPolicy,
        } as i32,
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        direction: wire_direction(r.direction.to_raw()),
        index: r.index,
        rule_name: r.rule_name.clone(),
    }
}

impl From<&Snapshot> for wire::Snapshot {
    fn from(s: &Snapshot) -> Self {
        let v = &s.view;
        wire::Snapshot {
            epoch: s.epoch,
            revision: s.revision,
            policy: v.policy.iter().map(w_policy_entry).collect(),
            defaults: v.defaults.iter().map(w_default_entry).collect(),
            addresses: v.addresses.iter().map(w_address).collect(),
            workloads: v.workloads.iter().map(w_workload).collect(),
            rules: v.rules.iter().map(w_rule).collect(),
        }
    }
}

impl From<&Delta> for wire::Delta {
    fn from(d: &Delta) -> Self {
        wire::Delta {
            epoch: d.epoch,
            revision: d.revision,
            previous_revision: d.previous_revision,
            policy_upserts: d
                .policy
                .upserts
                .iter()
                .map(|(k, v)| w_policy_entry((k, v)))
                .collect(),
            policy_deletes: d.policy.removals.iter().map(w_policy_key).collect(),
            defaults_upserts: d
                .defaults
                .upserts
                .iter()
                .map(|(k, v)| w_default_entry((k, v)))
                .collect(),
            defaults_deletes: d.defaults.removals.iter().map(w_default_key).collect(),
            address_upserts: d
                .shared
                .addresses
                .upserts
                .iter()
                .map(|(k, v)| w_address((k, v)))
                .collect(),
            address_deletes: d.shared.addresses.removals.iter().map(w_prefix).collect(),
            workload_upserts: d
                .workloads
                .upserts
                .iter()
                .map(|(k, v)| w_workload((k, v)))
                .collect(),
            workload_deletes: d.workloads.removals.iter().map(w_pod).collect(),
            rule_upserts: d
                .shared
                .rules
                .upserts
                .iter()
                .map(|(k, v)| w_rule((k, v)))
                .collect(),
            rule_deletes: d.shared.rules.removals.clone(),
        }
    }
}

impl From<&ControllerMsg> for wire::ControllerMessage {
    fn from(m: &ControllerMsg) -> Self {
        use wire::controller_message::Msg;
        wire::ControllerMessage {
            msg: Some(match m {
                ControllerMsg::Snapshot(s) => Msg::Snapshot(s.into()),
                ControllerMsg::Delta(d) => Msg::Delta(d.into()),
            }),
        }
    }
}

impl From<&EnforcerMsg> for wire::EnforcerMessage {
    fn from(m: &EnforcerMsg) -> Self {
        use wire::enforcer_message::Msg;
        wire::EnforcerMessage {
            msg: Some(match m {
                EnforcerMsg::Hello {
                    node_name,
                    held_epoch,
                    held_revision,
                } => Msg::Hello(wire::Hello {
                    node_name: node_name.clone(),
                    held_epoch: *held_epoch,
                    held_revision: *held_revision,
                }),
                EnforcerMsg::Ack { revision } => Msg::Ack(wire::Ack {
                    revision: *revision,
                }),
                EnforcerMsg::Nack { revision, error } => Msg::Nack(wire::Nack {
                    revision: *revision,
                    error: error.clone(),
                }),
            }),
        }
    }
}
