//! NetworkPolicy lowering: upstream defaulting (policyTypes, missing protocol = TCP, peers with
//! only a podSelector in the policy's own namespace) and validation.

use super::*;

pub(super) fn lower_netpol(
    ctx: &Ctx<'_>,
    key: ObjectKey,
    np: &NetworkPolicy,
) -> Result<ir::Policy, Error> {
    let ns = key.namespace.clone().ok_or_else(|| {
        ctx.err(
            "metadata.namespace",
            "missing (NetworkPolicy is namespaced)",
        )
    })?;
    let spec = np.spec.as_ref().ok_or_else(|| ctx.err("spec", "missing"))?;
    if let Some(s) = &spec.pod_selector {
        ctx.selector("spec.podSelector", s)?;
    }
    let mut types = [false, false];
    match spec.policy_types.as_deref() {
        Some(list) if !list.is_empty() => {
            for (i, t) in list.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => types[0] = true,
                    "Egress" => types[1] = true,
                    other => {
                        return Err(ctx.err(
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?} (expected Ingress or Egress)"),
                        ));
                    }
                }
            }
        }
        _ => {
            // Upstream SetDefaults_NetworkPolicy adds Egress only when `len(spec.Egress) != 0`:
            // `egress: []` without policyTypes isolates ingress only.
            types[0] = true;
            types[1] = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
    }
    let mut isolates = [None, None];
    let mut rules = Vec::new();
    let ingress = spec.ingress.iter().flatten().map(|r| (&r.from, &r.ports));
    let egress = spec.egress.iter().flatten().map(|r| (&r.to, &r.ports));
    let dirs: [(Direction, Vec<_>); 2] = [
        (Direction::Ingress, ingress.collect()),
        (Direction::Egress, egress.collect()),
    ];
    for (d, list) in dirs {
        let (peer_name, applies) = match d {
            Direction::Ingress => ("from", types[0]),
            Direction::Egress => ("to", types[1]),
        };
        for (i, (peers, ports)) in list.into_iter().enumerate() {
            let base = format!("spec.{}[{i}]", d.as_str());
            let peers = netpol_peers(ctx, &base, peer_name, peers.as_deref(), &ns)?;
            let ports = netpol_ports(ctx, &base, ports.as_deref())?;
            if !applies {
                continue; // rules of a direction outside policyTypes are ignored, as upstream
            }
            let rule = RuleRef {
                kind: Kind::NetworkPolicy,
                namespace: Some(ns.clone()),
                name: key.name.clone(),
                direction: d,
                index: Some(i as u32),
                rule_name: None,
            };
            let rule_id = rule.id();
            rules.push(ir::Rule {
                direction: d,
                action: Action::Allow,
                peers,
                ports,
                not_before: None,
                expires_at: None,
                rule,
                rule_id,
            });
        }
        if applies {
            isolates[ir::dir_index(d)] = Some(isolation(&key, d));
        }
    }
    Ok(ir::Policy {
        key,
        tier: Tier::Namespace,
        netpol: true,
        audit: false,
        priority: 0,
        subject: ir::Subject {
            namespace: Some(ns),
            namespace_selector: None,
            pod_selector: spec.pod_selector.clone(),
            service_accounts: Vec::new(),
        },
        isolates,
        rules,
        fingerprint: 0,
    }
    .seal())
}

fn netpol_peers(
    ctx: &Ctx<'_>,
    base: &str,
    name: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ns: &str,
) -> Result<Option<Vec<ir::Peer>>, Error> {
    let Some(peers) = peers.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (j, p) in peers.iter().enumerate() {
        let field = format!("{base}.{name}[{j}]");
        if let Some(b) = &p.ip_block {
            if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                return Err(ctx.err(
                    &field,
                    "ipBlock cannot be combined with podSelector or namespaceSelector",
                ));
            }
            out.push(ctx.cidr(
                &format!("{field}.ipBlock.cidr"),
                &b.cidr,
                b.except.as_deref().unwrap_or(&[]),
            )?);
            continue;
        }
        if p.pod_selector.is_none() && p.namespace_selector.is_none() {
            return Err(ctx.err(
                &field,
                "empty peer (give podSelector, namespaceSelector or ipBlock)",
            ));
        }
        if let Some(s) = &p.pod_selector {
            ctx.selector(&format!("{field}.podSelector"), s)?;
        }
        if let Some(s) = &p.namespace_selector {
            ctx.selector(&format!("{field}.namespaceSelector"), s)?;
        }
        out.push(ir::Peer::Workloads {
            namespace: if p.namespace_selector.is_none() {
                Some(ns.to_owned())
            } else {
                None
            },
            namespace_selector: p.namespace_selector.clone(),
            pod_selector: p.pod_selector.clone(),
            service_account: None,
        });
    }
    Ok(Some(out))
}

fn netpol_ports(
    ctx: &Ctx<'_>,
    base: &str,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<Option<Vec<ir::Port>>, Error> {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    ports
        .iter()
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
        .map(Some)
}
