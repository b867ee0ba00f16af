//! The offline prober: answers probes from the policy library, without a kernel.
//!
//! [`Engine::Compiled`] is what Bulkhead ships: `Compiler::compile` to the kernel map contents,
//! then `evaluate` over those entries with the kernel's lookup order. [`Engine::Reference`] is the
//! library's reference evaluator over the raw objects (its test oracle). Running the scenarios
//! through both tells a compiler bug (reference right, compiled wrong) from a semantics bug
//! (both wrong).
//!
//! Both ends of every probe are given as the pods' addresses of the probe's family, as the
//! kernel sees them: the client connects to the server's address, the server sees the client's.

use std::net::IpAddr;

use anyhow::{Context, Result};
use bulkhead_policy::model::{NamedPort, Namespace, Workload};
use bulkhead_policy::{
    AllocationTable, CompiledState, Compiler, Endpoint, Flow, Inventory, PolicySet, Verdict,
    evaluate, load, spec,
};
use jiff::Timestamp;

use super::model::{IpFamily, Model, PodId, Protocol};
use super::runner::Prober;
use super::scenario::PolicyDoc;
use super::table::TruthTable;

/// Which evaluator answers the probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Compile to map contents, evaluate the entries (the shipped path).
    Compiled,
    /// The reference evaluator over the raw objects.
    Reference,
}

/// A [`Prober`] over the policy library.
pub struct OfflineProber {
    engine: Engine,
    compiler: Compiler,
    at: Timestamp,
    state: Option<Applied>,
}

struct Applied {
    policies: PolicySet,
    inventory: Inventory,
    compiled: Option<CompiledState>,
}

impl OfflineProber {
    pub fn new(engine: Engine) -> OfflineProber {
        OfflineProber {
            engine,
            compiler: Compiler::new(AllocationTable::new()),
            // Any fixed instant: no scenario uses time windows.
            at: Timestamp::from_second(1_800_000_000).expect("a valid instant"),
            state: None,
        }
    }
}

/// The library's inventory for the model: one workload per pod, both addresses, six named ports.
pub fn inventory(model: &Model) -> Inventory {
    Inventory {
        namespaces: model
            .namespaces
            .iter()
            .map(|ns| Namespace {
                name: ns.name.to_owned(),
                labels: ns.labels.clone(),
            })
            .collect(),
        workloads: model
            .pods
            .iter()
            .map(|pod| Workload {
                namespace: pod.namespace().to_owned(),
                name: pod.name().to_owned(),
                labels: pod.labels.clone(),
                service_account: pod.service_account.to_owned(),
                ips: vec![IpAddr::V4(pod.id.ipv4()), IpAddr::V6(pod.id.ipv6())],
                ports: pod
                    .ports
                    .iter()
                    .map(|p| NamedPort {
                        name: p.name.clone(),
                        port: p.port,
                        protocol: p.protocol.to_string(),
                    })
                    .collect(),
                cgroup: None,
            })
            .collect(),
    }
}

/// The policy library's set for a step's policy documents (shared with the live prober).
pub fn policy_set(policies: &[PolicyDoc]) -> Result<PolicySet> {
    let mut objects = Vec::new();
    for doc in policies {
        let source = format!("conformance:{}/{}", doc.namespace, doc.name);
        for object in load::parse_documents(&source, &doc.yaml)? {
            objects.push((source.clone(), object));
        }
    }
    PolicySet::from_objects(objects).context("building the policy set")
}

fn library_protocol(protocol: Protocol) -> bulkhead_policy::Protocol {
    match protocol {
        Protocol::TCP => bulkhead_policy::Protocol::Tcp,
        Protocol::UDP => bulkhead_policy::Protocol::Udp,
        Protocol::SCTP => bulkhead_policy::Protocol::Sctp,
    }
}

impl Prober for OfflineProber {
    fn apply(&mut self, policies: &[PolicyDoc], model: &Model) -> Result<()> {
        let policies = policy_set(policies)?;
        let inventory = inventory(model);
        inventory
            .validate("conformance model")
            .context("the model's inventory")?;
        let compiled = match self.engine {
            Engine::Compiled => Some(
                self.compiler
                    .compile(&policies, &inventory, self.at)
                    .context("compiling the policies")?,
            ),
            Engine::Reference => None,
        };
        self.state = Some(Applied {
            policies,
            inventory,
            compiled,
        });
        Ok(())
    }

    fn probe_all(&mut self, port: u16, protocol: Protocol, family: IpFamily) -> Result<TruthTable> {
        let applied = self.state.as_ref().context("probe before apply")?;
        let flow = |from: PodId, to: PodId| Flow {
            src: Endpoint::Ip(from.address(family)),
            dst: Endpoint::Ip(to.address(family)),
            protocol: library_protocol(protocol),
            port,
            at: self.at,
        };
        Ok(TruthTable::from_fn(|from, to| {
            let flow = flow(from, to);
            let verdict = match &applied.compiled {
                Some(state) => evaluate(state, &flow).verdict,
                None => spec::evaluate(&applied.policies, &applied.inventory, &flow).verdict,
            };
            // Audit lets traffic through.
            verdict != Verdict::Deny
        }))
    }
}
