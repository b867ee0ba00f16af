//! Which resources the fake API server serves ([`ResourceType`], [`BUILTIN`]) and how a request
//! path names one of them ([`Route`]).

use std::any::TypeId;
use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;

/// One served resource: group/version/plural as they appear in paths, the `kind` written into
/// objects (and `{kind}List` into lists), and whether objects live in a namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceType {
    /// API group, empty for the core group (`/api/v1`).
    pub group: Cow<'static, str>,
    /// API version, e.g. `v1`.
    pub version: Cow<'static, str>,
    /// Plural resource name used in paths, e.g. `pods`.
    pub plural: Cow<'static, str>,
    /// Kind written into objects, e.g. `Pod`.
    pub kind: Cow<'static, str>,
    /// Namespaced (true) or cluster-scoped (false).
    pub namespaced: bool,
}

const fn builtin(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> ResourceType {
    ResourceType {
        group: Cow::Borrowed(group),
        version: Cow::Borrowed(version),
        plural: Cow::Borrowed(plural),
        kind: Cow::Borrowed(kind),
        namespaced,
    }
}

/// The resources a new server serves: what the controller watches and writes.
pub const BUILTIN: &[ResourceType] = &[
    builtin("", "v1", "pods", "Pod", true),
    builtin("", "v1", "namespaces", "Namespace", false),
    builtin("", "v1", "serviceaccounts", "ServiceAccount", true),
    builtin("", "v1", "nodes", "Node", false),
    builtin("", "v1", "configmaps", "ConfigMap", true),
    builtin("", "v1", "events", "Event", true),
    builtin(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
    ),
    builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
    builtin("events.k8s.io", "v1", "events", "Event", true),
    builtin(
        "bulkhead.dev",
        "v1alpha1",
        "segmentationpolicies",
        "SegmentationPolicy",
        true,
    ),
    builtin(
        "bulkhead.dev",
        "v1alpha1",
        "clustersegmentationpolicies",
        "ClusterSegmentationPolicy",
        false,
    ),
];

impl ResourceType {
    /// The resource type of a kube-rs resource (k8s-openapi types and `#[derive(CustomResource)]`).
    pub fn of<K>() -> Self
    where
        K: kube::Resource<DynamicType = ()>,
        K::Scope: 'static,
    {
        Self {
            group: Cow::Owned(K::group(&()).into_owned()),
            version: Cow::Owned(K::version(&()).into_owned()),
            plural: Cow::Owned(K::plural(&()).into_owned()),
            kind: Cow::Owned(K::kind(&()).into_owned()),
            namespaced: TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>(),
        }
    }

    /// `apiVersion` of objects of this type: `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// What a request path addresses.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    /// The resource type.
    pub resource: ResourceType,
    /// The namespace in the path (`None`: cluster-scoped, or all namespaces).
    pub namespace: Option<String>,
    /// The object name (`None`: the collection).
    pub name: Option<String>,
    /// `true` for the `/status` subresource.
    pub status: bool,
}

impl Route {
    /// Parses `/api/v1/...` or `/apis/{group}/{version}/...` against the served types. `None` for
    /// a path that names no served resource (the server answers 404).
    pub fn parse(path: &str, served: &[ResourceType]) -> Option<Route> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let find = |plural: &str| {
            served
                .iter()
                .find(|r| r.group == group && r.version == version && r.plural == plural)
                .cloned()
        };
        // A namespaced path is `namespaces/{ns}/{plural}...`, except `namespaces/{name}` and
        // `namespaces/{name}/status`, which address the Namespace object itself.
        let (namespace, rest): (Option<String>, &[&str]) = match rest {
            ["namespaces", ns, plural, ..] if *plural != "status" => {
                (Some((*ns).to_string()), &rest[2..])
            }
            _ => (None, rest),
        };
        let (resource, name, status) = match rest {
            [plural] => (find(plural)?, None, false),
            [plural, name] => (find(plural)?, Some((*name).to_string()), false),
            [plural, name, "status"] => (find(plural)?, Some((*name).to_string()), true),
            _ => return None,
        };
        if namespace.is_some() && !resource.namespaced {
            return None;
        }
        // A namespaced object is only addressed with its namespace; a namespaced collection
        // without one lists all namespaces.
        if resource.namespaced && namespace.is_none() && name.is_some() {
            return None;
        }
        Some(Route {
            resource,
            namespace,
            name,
            status,
        })
    }
}
