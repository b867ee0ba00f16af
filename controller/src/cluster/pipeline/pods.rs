//! The pipeline's pods: which are applied (addresses granted first come, first served), and
//! their compiler calls.

use bulkhead_policy::model::Workload;
use bulkhead_policy::{Inventory, StateDiff, WorkloadRef};

use super::{Flushed, Pipeline, SOURCE};
use crate::cluster::convert::PodEntry;

impl Pipeline {
    /// Grants pod `r` its workload for the initial inventory (addresses another pod holds are
    /// left out), recording it as applied; None when the pod's namespace is unknown or the
    /// workload is invalid on its own.
    pub(super) fn grant(
        &mut self,
        r: &WorkloadRef,
        inventory: &Inventory,
        out: &mut Flushed,
    ) -> Option<Workload> {
        let entry = self.pods.get(r)?.clone();
        if !self.namespaces.contains_key(&r.namespace) {
            return None;
        }
        let (granted, short) = self.granted(&entry);
        let one = Inventory {
            namespaces: inventory
                .namespaces
                .iter()
                .filter(|n| n.name == r.namespace)
                .cloned()
                .collect(),
            workloads: vec![granted.workload.clone()],
        };
        if let Err(e) = one.validate(SOURCE) {
            tracing::warn!(pod = %r, error = %e, "pod left out of the compiled state");
            out.refused += 1;
            return None;
        }
        self.set_applied(granted.clone(), short);
        Some(granted.workload)
    }

    /// The pod as it can be applied: the addresses no other applied pod holds; and whether some
    /// were held back.
    fn granted(&self, entry: &PodEntry) -> (PodEntry, bool) {
        let r = entry.reference();
        let mut granted = entry.clone();
        granted
            .workload
            .ips
            .retain(|ip| self.ip_owner.get(ip).is_none_or(|o| *o == r));
        let short = granted.workload.ips.len() != entry.workload.ips.len();
        (granted, short)
    }

    fn set_applied(&mut self, entry: PodEntry, short: bool) {
        let r = entry.reference();
        self.unset_applied(&r);
        for ip in &entry.workload.ips {
            self.ip_owner.insert(*ip, r.clone());
        }
        if short {
            self.short.insert(r.clone());
        }
        self.assignment
            .entry(entry.node.clone())
            .or_default()
            .insert(r.clone(), entry.uid.clone());
        self.applied.insert(r, entry);
    }

    /// Forgets pod `r`'s applied entry; returns whether it held addresses.
    pub(super) fn unset_applied(&mut self, r: &WorkloadRef) -> bool {
        self.short.remove(r);
        let Some(old) = self.applied.remove(r) else {
            return false;
        };
        for ip in &old.workload.ips {
            if self.ip_owner.get(ip) == Some(r) {
                self.ip_owner.remove(ip);
            }
        }
        if let Some(pods) = self.assignment.get_mut(&old.node) {
            pods.remove(r);
            if pods.is_empty() && !self.nodes.contains(&old.node) {
                self.assignment.remove(&old.node);
            }
        }
        !old.workload.ips.is_empty()
    }

    pub(super) fn flush_pods(&mut self, out: &mut Flushed) {
        let dirty = std::mem::take(&mut self.dirty_pods);
        let mut freed = false;
        let mut upserts = Vec::new();
        // Removals first: the addresses they free go to the pods waiting for them.
        for r in dirty {
            let wanted = self.pods.get(&r).is_some_and(|p| {
                self.namespaces.contains_key(&p.workload.namespace)
                    && self.compiler.as_ref().is_some_and(|c| {
                        c.inventory()
                            .namespaces
                            .iter()
                            .any(|n| n.name == p.workload.namespace)
                    })
            });
            if wanted {
                upserts.push(r);
            } else if self.applied.contains_key(&r) {
                freed |= self.remove_pod(&r, out);
            }
        }
        for r in upserts {
            freed |= self.upsert_pod(&r, out);
        }
        // Pods waiting for an address retry once something was freed.
        while freed {
            freed = false;
            for r in self.short.clone() {
                freed |= self.upsert_pod(&r, out);
            }
        }
    }

    /// Withdraws pod `r` from the compiler; returns whether it freed addresses.
    fn remove_pod(&mut self, r: &WorkloadRef, out: &mut Flushed) -> bool {
        let Some(c) = self.compiler.as_mut() else {
            return false;
        };
        out.compiler_calls += 1;
        match c.remove_workload(r) {
            Ok(diff) => {
                self.touched.add(&diff);
                // The workload and its node's pod list change.
                out.changed = true;
                self.unset_applied(r)
            }
            Err(e) => {
                tracing::error!(pod = %r, error = %e, "pod removal failed");
                out.refused += 1;
                false
            }
        }
    }

    /// Applies pod `r`'s desired workload; returns whether addresses were freed (the pod
    /// dropped some it held).
    fn upsert_pod(&mut self, r: &WorkloadRef, out: &mut Flushed) -> bool {
        let Some(entry) = self.pods.get(r).cloned() else {
            return false;
        };
        let (granted, short) = self.granted(&entry);
        let old = self.applied.get(r).cloned();
        if old.as_ref() == Some(&granted) {
            if short {
                self.short.insert(r.clone());
            }
            return false;
        }
        let Some(c) = self.compiler.as_mut() else {
            return false;
        };
        let diff: Result<StateDiff, _> = match &old {
            Some(o)
                if o.workload.ips == granted.workload.ips
                    && o.workload.ports == granted.workload.ports
                    && o.workload.service_account == granted.workload.service_account =>
            {
                if o.workload.labels == granted.workload.labels {
                    Ok(StateDiff::default())
                } else {
                    out.compiler_calls += 1;
                    c.set_workload_labels(r, granted.workload.labels.clone())
                }
            }
            _ => {
                out.compiler_calls += 1;
                c.upsert_workload(SOURCE, granted.workload.clone())
            }
        };
        match diff {
            Ok(diff) => {
                self.touched.add(&diff);
                out.changed |= !diff.is_empty();
                let freed = old.as_ref().is_some_and(|o| {
                    o.workload
                        .ips
                        .iter()
                        .any(|ip| !granted.workload.ips.contains(ip))
                });
                if old
                    .as_ref()
                    .is_none_or(|o| o.node != granted.node || o.uid != granted.uid)
                {
                    out.changed = true;
                }
                self.set_applied(granted, short);
                freed
            }
            Err(e) => {
                tracing::warn!(pod = %r, error = %e, "pod left out of the compiled state");
                out.refused += 1;
                false
            }
        }
    }
}
