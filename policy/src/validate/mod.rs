//! Validation: turns a raw [`PolicyObject`] into the normalized internal policy form (`ir::Policy`), or rejects it
//! with one [`Error::Invalid`] line naming file, object and field path.

use std::str::FromStr;

use ipnet::IpNet;
use jiff::Timestamp;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::Error;

mod netpol;
use crate::ir::{self, Action, Tier};
use crate::model::{self, Kind, Mode, ObjectKey, PolicyObject};
use crate::rules::{Direction, RuleRef};
use netpol::lower_netpol;

/// Highest allowed `priority`.
pub const MAX_PRIORITY: i32 = 1000;

/// `TCP`/`UDP`/`SCTP` to the IP protocol number.
pub fn parse_protocol(p: &str) -> Option<u8> {
    match p {
        "TCP" => Some(enforcer_common::PROTO_TCP),
        "UDP" => Some(enforcer_common::PROTO_UDP),
        "SCTP" => Some(enforcer_common::PROTO_SCTP),
        _ => None,
    }
}

/// Parses a CIDR (host bits are cleared: `10.0.0.1/8` means `10.0.0.0/8`).
pub(crate) fn parse_cidr(s: &str) -> Option<IpNet> {
    IpNet::from_str(s).ok().map(|n| n.trunc())
}

struct Ctx<'a> {
    file: &'a str,
    object: String,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::invalid(self.file, &self.object, field, message)
    }

    fn selector(&self, field: &str, s: &LabelSelector) -> Result<(), Error> {
        crate::selector::check(s).map_err(|(suffix, msg)| self.err(format!("{field}{suffix}"), msg))
    }

    fn time(&self, field: &str, s: Option<&String>) -> Result<Option<Timestamp>, Error> {
        s.map(|s| {
            Timestamp::from_str(s).map_err(|_| {
                self.err(
                    field,
                    format!("{s:?} is not an RFC 3339 timestamp (e.g. 2026-11-27T10:00:00Z)"),
                )
            })
        })
        .transpose()
    }

    fn cidr(&self, field: &str, cidr: &str, except: &[String]) -> Result<ir::Peer, Error> {
        let net = self.one_cidr(field, cidr)?;
        let mut out = Vec::new();
        for (i, e) in except.iter().enumerate() {
            let f = format!(
                "{}.except[{i}]",
                field.rsplit_once('.').map_or(field, |(a, _)| a)
            );
            let en = self.one_cidr(&f, e)?;
            if !net.contains(&en) {
                return Err(self.err(&f, format!("{e} is not inside {net}")));
            }
            out.push(en);
        }
        Ok(ir::Peer::Cidr { net, except: out })
    }

    fn one_cidr(&self, field: &str, s: &str) -> Result<IpNet, Error> {
        let net = parse_cidr(s).ok_or_else(|| self.err(field, format!("{s:?} is not a CIDR")))?;
        if let IpNet::V6(n) = net
            && crate::compile::mapped_v4_range().contains(&n)
        {
            return Err(self.err(
                field,
                format!("{s} is an IPv4-mapped range: write it as an IPv4 CIDR"),
            ));
        }
        Ok(net)
    }

    /// Validates one port clause (k8s NetworkPolicyPort or Bulkhead PortSpec).
    fn port(
        &self,
        field: &str,
        protocol: Option<&String>,
        port: Option<&IntOrString>,
        end_port: Option<i32>,
    ) -> Result<ir::Port, Error> {
        let proto = match protocol {
            None => enforcer_common::PROTO_TCP,
            Some(p) => parse_protocol(p).ok_or_else(|| {
                self.err(
                    format!("{field}.protocol"),
                    format!("unknown protocol {p:?} (expected TCP, UDP or SCTP)"),
                )
            })?,
        };
        let check = |n: i32, f: &str| -> Result<u16, Error> {
            u16::try_from(n).ok().filter(|&p| p != 0).ok_or_else(|| {
                self.err(
                    format!("{field}.{f}"),
                    format!("{n} is not a port (1..=65535)"),
                )
            })
        };
        match (port, end_port) {
            (None, None) => Ok(ir::Port::Range {
                protocol: proto,
                start: 0,
                end: u16::MAX,
            }),
            (None, Some(e)) => Err(self.err(
                format!("{field}.endPort"),
                format!("{e} given without port"),
            )),
            (Some(IntOrString::String(name)), end) => {
                if let Some(e) = end {
                    return Err(self.err(
                        format!("{field}.endPort"),
                        format!(
                            "{e} given with the named port {name:?} (ranges need a numeric port)"
                        ),
                    ));
                }
                if name.is_empty() {
                    return Err(self.err(format!("{field}.port"), "empty port name"));
                }
                Ok(ir::Port::Named {
                    protocol: proto,
                    name: name.clone(),
                })
            }
            (Some(IntOrString::Int(p)), end) => {
                let start = check(*p, "port")?;
                let end = match end {
                    None => start,
                    Some(e) => {
                        let e16 = check(e, "endPort")?;
                        if e16 < start {
                            return Err(self.err(
                                format!("{field}.endPort"),
                                format!("{e} is below port {start}"),
                            ));
                        }
                        e16
                    }
                };
                Ok(ir::Port::Range {
                    protocol: proto,
                    start,
                    end,
                })
            }
        }
    }
}

/// Validates and normalizes one object read from `file`.
pub(crate) fn lower(file: &str, obj: &PolicyObject) -> Result<ir::Policy, Error> {
    let key = obj.key();
    let ctx = Ctx {
        file,
        object: key.to_string(),
    };
    if key.name.is_empty() {
        let unnamed = ObjectKey {
            name: "<unnamed>".to_owned(),
            ..key
        };
        return Err(Error::invalid(
            file,
            &unnamed.to_string(),
            "metadata.name",
            "missing",
        ));
    }
    match obj {
        PolicyObject::NetworkPolicy(np) => lower_netpol(&ctx, key, np),
        PolicyObject::Segmentation(sp) => {
            let ns = key.namespace.clone().ok_or_else(|| {
                ctx.err(
                    "metadata.namespace",
                    "missing (SegmentationPolicy is namespaced)",
                )
            })?;
            let s = &sp.spec;
            if let Some(sel) = &s.subject.pod_selector {
                ctx.selector("spec.subject.podSelector", sel)?;
            }
            let subject = ir::Subject {
                namespace: Some(ns.clone()),
                namespace_selector: None,
                pod_selector: s.subject.pod_selector.clone(),
                service_accounts: s.subject.service_accounts.clone().unwrap_or_default(),
            };
            let rules = [
                (Direction::Ingress, &s.ingress),
                (Direction::Egress, &s.egress),
            ];
            lower_crd(
                &ctx,
                key,
                Tier::Namespace,
                s.mode,
                s.priority,
                subject,
                rules,
                Some(&ns),
            )
        }
        PolicyObject::ClusterSegmentation(cp) => {
            let s = &cp.spec;
            if let Some(sel) = &s.subject.namespace_selector {
                ctx.selector("spec.subject.namespaceSelector", sel)?;
            }
            if let Some(sel) = &s.subject.pod_selector {
                ctx.selector("spec.subject.podSelector", sel)?;
            }
            let subject = ir::Subject {
                namespace: None,
                namespace_selector: s.subject.namespace_selector.clone(),
                pod_selector: s.subject.pod_selector.clone(),
                service_accounts: s.subject.service_accounts.clone().unwrap_or_default(),
            };
            let tier = match s.tier {
                model::Tier::Admin => Tier::Admin,
                model::Tier::Baseline => Tier::Baseline,
            };
            let rules = [
                (Direction::Ingress, &s.ingress),
                (Direction::Egress, &s.egress),
            ];
            lower_crd(&ctx, key, tier, s.mode, s.priority, subject, rules, None)
        }
    }
}

fn isolation(key: &ObjectKey, d: Direction) -> (RuleRef, u32) {
    let r = RuleRef {
        kind: key.kind,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        direction: d,
        index: None,
        rule_name: None,
    };
    let id = r.id();
    (r, id)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call per CRD kind, all inputs are distinct"
)]
fn lower_crd(
    ctx: &Ctx<'_>,
    key: ObjectKey,
    tier: Tier,
    mode: Mode,
    priority: i32,
    subject: ir::Subject,
    dirs: [(Direction, &Option<Vec<model::Rule>>); 2],
    own_ns: Option<&String>,
) -> Result<ir::Policy, Error> {
    if !(0..=MAX_PRIORITY).contains(&priority) {
        return Err(ctx.err(
            "spec.priority",
            format!("{priority} is outside 0..={MAX_PRIORITY}"),
        ));
    }
    let mut isolates = [None, None];
    let mut rules = Vec::new();
    for (d, list) in dirs {
        let Some(list) = list else { continue };
        if tier == Tier::Namespace {
            isolates[ir::dir_index(d)] = Some(isolation(&key, d));
        }
        for (i, r) in list.iter().enumerate() {
            let base = format!("spec.{}[{i}]", d.as_str());
            if r.action == model::Action::Pass && tier != Tier::Admin {
                let why = if key.kind == Kind::SegmentationPolicy {
                    "a namespaced policy"
                } else {
                    "the Baseline tier"
                };
                return Err(ctx.err(
                    format!("{base}.action"),
                    format!("Pass is only allowed in the Admin tier, not in {why}"),
                ));
            }
            let (peers_field, peers, other_field, other) = match d {
                Direction::Ingress => ("from", &r.from, "to", &r.to),
                Direction::Egress => ("to", &r.to, "from", &r.from),
            };
            if other.is_some() {
                return Err(ctx.err(
                    format!("{base}.{other_field}"),
                    format!("not allowed in an {} rule (use {peers_field})", d.as_str()),
                ));
            }
            if peers.as_ref().is_some_and(Vec::is_empty) {
                return Err(ctx.err(
                    format!("{base}.{peers_field}"),
                    "empty list (omit the field to match any peer)",
                ));
            }
            let peers = peers
                .as_ref()
                .map(|ps| {
                    ps.iter()
                        .enumerate()
                        .map(|(j, p)| {
                            crd_peer(ctx, &format!("{base}.{peers_field}[{j}]"), p, own_ns)
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            let ports = r
                .ports
                .as_ref()
                .filter(|p| !p.is_empty())
                .map(|ps| {
                    ps.iter()
                        .enumerate()
                        .map(|(j, p)| {
                            ctx.port(
                                &format!("{base}.ports[{j}]"),
                                p.protocol.as_ref(),
                                p.port.as_ref(),
                                p.end_port,
                            )
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            let not_before = ctx.time(&format!("{base}.notBefore"), r.not_before.as_ref())?;
            let expires_at = ctx.time(&format!("{base}.expiresAt"), r.expires_at.as_ref())?;
            if let (Some(nb), Some(ea)) = (not_before, expires_at)
                && ea <= nb
            {
                return Err(ctx.err(
                    format!("{base}.expiresAt"),
                    format!("{ea} is not after notBefore {nb}"),
                ));
            }
            let action = match r.action {
                model::Action::Allow => Action::Allow,
                model::Action::Deny => Action::Deny,
                model::Action::Pass => Action::Pass,
            };
            let rule = RuleRef {
                kind: key.kind,
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                direction: d,
                index: Some(i as u32),
                rule_name: r.name.clone(),
            };
            let rule_id = rule.id();
            rules.push(ir::Rule {
                direction: d,
                action,
                peers,
                ports,
                not_before,
                expires_at,
                rule,
                rule_id,
            });
        }
    }
    Ok(ir::Policy {
        key,
        tier,
        netpol: false,
        audit: mode == Mode::Audit,
        priority: priority as u32,
        subject,
        isolates,
        rules,
        fingerprint: 0,
    }
    .seal())
}

fn crd_peer(
    ctx: &Ctx<'_>,
    field: &str,
    p: &model::Peer,
    own_ns: Option<&String>,
) -> Result<ir::Peer, Error> {
    let workload_fields =
        p.pod_selector.is_some() || p.namespace_selector.is_some() || p.service_account.is_some();
    if let Some(cidr) = &p.cidr {
        if workload_fields {
            return Err(ctx.err(
                field,
                "cidr cannot be combined with podSelector, namespaceSelector or serviceAccount",
            ));
        }
        return ctx.cidr(
            &format!("{field}.cidr"),
            cidr,
            p.except.as_deref().unwrap_or(&[]),
        );
    }
    if p.except.is_some() {
        return Err(ctx.err(format!("{field}.except"), "given without cidr"));
    }
    if !workload_fields {
        return Err(ctx.err(
            field,
            "empty peer (give podSelector, namespaceSelector, serviceAccount or cidr)",
        ));
    }
    if let Some(s) = &p.pod_selector {
        ctx.selector(&format!("{field}.podSelector"), s)?;
    }
    if let Some(s) = &p.namespace_selector {
        ctx.selector(&format!("{field}.namespaceSelector"), s)?;
    }
    if let Some(sa) = &p.service_account
        && sa.name.is_empty()
    {
        return Err(ctx.err(format!("{field}.serviceAccount.name"), "must not be empty"));
    }
    Ok(ir::Peer::Workloads {
        namespace: if p.namespace_selector.is_none() {
            own_ns.cloned()
        } else {
            None
        },
        namespace_selector: p.namespace_selector.clone(),
        pod_selector: p.pod_selector.clone(),
        service_account: p
            .service_account
            .as_ref()
            .map(|s| (s.namespace.clone(), s.name.clone())),
    })
}
