//! Which workloads a policy object's subject selects (the workloads it applies to), from the raw
//! object: NetworkPolicy `podSelector` in its namespace; SegmentationPolicy `subject` in its
//! namespace; ClusterSegmentationPolicy `subject` over every namespace. The nodes running them
//! are the nodes that must enforce the policy (`desiredNodes`).

use std::collections::BTreeMap;

use bulkhead_policy::PolicyObject;
use bulkhead_policy::model::Workload;
use bulkhead_policy::model::inventory::NAMESPACE_NAME_LABEL;
use bulkhead_policy::selector::matches;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector.is_none_or(|s| matches(s, labels))
}

fn service_account(names: Option<&Vec<String>>, w: &Workload) -> bool {
    names.is_none_or(|n| n.is_empty() || n.contains(&w.service_account))
}

/// The namespace a namespaced object applies in (None: cluster-scoped).
pub fn scope(object: &PolicyObject) -> Option<&str> {
    match object {
        PolicyObject::NetworkPolicy(o) => o.metadata.namespace.as_deref(),
        PolicyObject::Segmentation(o) => o.metadata.namespace.as_deref(),
        PolicyObject::ClusterSegmentation(_) => None,
    }
}

/// Whether `object`'s subject selects workload `w`, whose namespace has labels
/// `namespace_labels` (without the implied `kubernetes.io/metadata.name`).
pub fn selects_workload(
    object: &PolicyObject,
    namespace_labels: &BTreeMap<String, String>,
    w: &Workload,
) -> bool {
    match object {
        PolicyObject::NetworkPolicy(o) => {
            o.metadata.namespace.as_deref() == Some(w.namespace.as_str())
                && selects(
                    o.spec.as_ref().and_then(|s| s.pod_selector.as_ref()),
                    &w.labels,
                )
        }
        PolicyObject::Segmentation(o) => {
            let s = &o.spec.subject;
            o.metadata.namespace.as_deref() == Some(w.namespace.as_str())
                && selects(s.pod_selector.as_ref(), &w.labels)
                && service_account(s.service_accounts.as_ref(), w)
        }
        PolicyObject::ClusterSegmentation(o) => {
            let s = &o.spec.subject;
            let ns_selected = s.namespace_selector.as_ref().is_none_or(|sel| {
                let mut labels = namespace_labels.clone();
                labels.insert(NAMESPACE_NAME_LABEL.to_owned(), w.namespace.clone());
                matches(sel, &labels)
            });
            ns_selected
                && selects(s.pod_selector.as_ref(), &w.labels)
                && service_account(s.service_accounts.as_ref(), w)
        }
    }
}
