//! The CRDs (generated from the policy types, committed under charts/bulkhead/crds) and the Helm
//! chart: the committed CRDs are current and structural, the documented examples validate
//! against them and invalid policies do not, and the chart renders (real `helm template`) into
//! objects that parse as their Kubernetes types, with the privileges and wiring it documents.

use std::collections::BTreeSet;

use bulkhead_policy::PolicySet;
use bulkhead_policy::model::{ClusterSegmentationPolicy, SegmentationPolicy, crd_yaml};
use bulkhead_tests::chart::{
    CLIENT_UNEVALUABLE_RULES, NAMESPACE, cel_rule_problems, chart_dir, check_typed, crd_schema,
    render, structural_violations, validate_object, yaml_documents,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

fn committed_crds() -> Vec<CustomResourceDefinition> {
    [
        "segmentationpolicies.yaml",
        "clustersegmentationpolicies.yaml",
    ]
    .iter()
    .map(|name| {
        let path = chart_dir().join("crds").join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
    .collect()
}

fn crd_for(kind: &str) -> CustomResourceDefinition {
    committed_crds()
        .into_iter()
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
}

#[test]
fn crds_are_up_to_date() {
    for (name, generated) in crd_yaml().unwrap() {
        let path = chart_dir().join("crds").join(name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is stale: run `cargo xtask crds` and commit the result",
            path.display()
        );
    }
}

#[test]
fn crd_schemas_are_structural_with_bounds_enums_and_cel() {
    for crd in committed_crds() {
        let kind = crd.spec.names.kind.clone();
        let schema = crd_schema(&crd).unwrap();
        assert_eq!(
            structural_violations(&schema),
            Vec::<String>::new(),
            "{kind}"
        );
        assert_eq!(cel_rule_problems(&schema), Vec::<String>::new(), "{kind}");
        for rule in CLIENT_UNEVALUABLE_RULES {
            assert!(
                schema
                    .to_string()
                    .contains(&serde_json::to_string(rule).unwrap()),
                "{rule}"
            );
        }

        let spec = &schema["properties"]["spec"]["properties"];
        let rule = &spec["ingress"]["items"]["properties"];
        let port = &rule["ports"]["items"]["properties"];
        assert_eq!(spec["mode"]["enum"], json!(["Enforce", "Audit"]), "{kind}");
        assert_eq!(
            (&spec["priority"]["minimum"], &spec["priority"]["maximum"]),
            (&json!(0.0), &json!(1000.0))
        );
        assert_eq!(rule["action"]["enum"], json!(["Allow", "Deny", "Pass"]));
        assert_eq!(port["protocol"]["enum"], json!(["TCP", "UDP", "SCTP"]));
        assert_eq!(port["port"]["x-kubernetes-int-or-string"], json!(true));
        assert_eq!(port["endPort"]["maximum"], json!(65535.0));
        assert_eq!(rule["expiresAt"]["format"], "date-time");
        assert_eq!(
            rule["from"]["items"]["properties"]["cidr"]["format"],
            "cidr"
        );
        for field in ["ingress", "egress"] {
            assert!(
                spec[field]["maxItems"].is_u64(),
                "{kind}: {field} unbounded"
            );
        }

        let names = &crd.spec.names;
        let short = if kind == "SegmentationPolicy" {
            "segpol"
        } else {
            "csegpol"
        };
        assert_eq!(names.short_names, Some(vec![short.to_owned()]));
        assert_eq!(names.categories, Some(vec!["bulkhead".to_owned()]));
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        let mut expected = vec!["Mode", "Priority", "Valid", "Realized", "Desired", "Age"];
        if kind == "ClusterSegmentationPolicy" {
            expected.insert(0, "Tier");
        }
        assert_eq!(columns, expected);

        let status = &schema["properties"]["status"]["properties"];
        for field in ["observedGeneration", "desiredNodes", "realizedNodes"] {
            assert_eq!(status[field]["type"], "integer", "{kind}: status.{field}");
        }
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
        assert_eq!(
            status["conditions"]["x-kubernetes-list-map-keys"],
            json!(["type"])
        );
    }
}

#[test]
fn structural_check_rejects_non_structural_schemas() {
    let bad = json!({
        "type": "object",
        "properties": {
            "metadata": {"type": "object"},
            "a": {"description": "no type"},
            "b": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "c": {"type": "array"},
            "d": {"type": "array", "x-kubernetes-list-type": "map",
                  "x-kubernetes-list-map-keys": ["type"],
                  "items": {"type": "object", "properties": {"type": {"type": "string"}}}},
            "e": {"type": "string", "x-kubernetes-int-or-string": true},
        }
    });
    let violations = structural_violations(&bad);
    for fragment in [
        "metadata must not be specified",
        "properties.a: no type",
        "properties.b: `anyOf`",
        "properties.c: array without items",
        "list-map key \"type\" is not a required scalar",
        "properties.e: type string on an int-or-string",
    ] {
        assert!(
            violations.iter().any(|v| v.contains(fragment)),
            "{fragment:?} not in {violations:#?}"
        );
    }
    let costly = json!({
        "type": "object",
        "properties": {"xs": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}}},
        "x-kubernetes-validations": [{"rule": "self.xs.all(x, x.all(y, y.all(z, z == 'a')))"}]
    });
    assert!(!cel_rule_problems(&costly).is_empty());
}

/// The Bulkhead objects of the YAML blocks of docs/policy.md and of examples/demo/policies.
fn documented_examples() -> Vec<(String, Value)> {
    let root = chart_dir().join("../..");
    let mut out = Vec::new();
    let doc = std::fs::read_to_string(root.join("docs/policy.md")).unwrap();
    for (i, block) in doc.split("```yaml\n").skip(1).enumerate() {
        let block = block.split("```").next().unwrap();
        for value in yaml_documents(block).unwrap_or_default() {
            out.push((format!("docs/policy.md block {i}"), value));
        }
    }
    let dir = root.join("examples/demo/policies");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for value in yaml_documents(&text).unwrap() {
            out.push((path.display().to_string(), value));
        }
    }
    out.retain(|(_, v)| v["apiVersion"] == "bulkhead.dev/v1alpha1");
    out
}

#[test]
fn documented_examples_validate_against_the_crds() {
    let examples = documented_examples();
    let kinds: BTreeSet<_> = examples
        .iter()
        .map(|(_, v)| v["kind"].to_string())
        .collect();
    assert!(
        examples.len() >= 5,
        "only {} examples found",
        examples.len()
    );
    assert_eq!(kinds.len(), 2, "both kinds have examples");
    for (source, object) in examples {
        let kind = object["kind"].as_str().unwrap();
        let name = &object["metadata"]["name"];
        if let Err(errors) = validate_object(&crd_for(kind), &object) {
            panic!("{source}: {kind} {name}: {errors:#?}");
        }
        match kind {
            "SegmentationPolicy" => {
                serde_json::from_value::<SegmentationPolicy>(object.clone()).unwrap();
            }
            _ => {
                serde_json::from_value::<ClusterSegmentationPolicy>(object.clone()).unwrap();
            }
        }
    }
}

/// Invalid policies, each with a fragment of the CRD's error: the CRD (schema and CEL rules)
/// refuses each, and so does the policy library, so the two agree.
#[test]
fn crds_refuse_what_the_library_refuses() {
    let ns = |spec: &str| {
        format!(
            "apiVersion: bulkhead.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {{name: p, namespace: n}}\nspec: {spec}"
        )
    };
    let cluster = |spec: &str| {
        format!(
            "apiVersion: bulkhead.dev/v1alpha1\nkind: ClusterSegmentationPolicy\nmetadata: {{name: p}}\nspec: {spec}"
        )
    };
    let cases = [
        (ns("{priority: 1001}"), Some("above the maximum")),
        (ns("{priority: -1}"), Some("below the minimum")),
        (ns("{mode: Watch}"), Some("is not one of")),
        (
            ns("{ingress: [{action: Allow, ports: [{protocol: ICMP}]}]}"),
            Some("is not one of"),
        ),
        (ns("{ingress: [{action: Allow, ports: [{port: 0}]}]}"), None),
        (
            ns("{ingress: [{action: Allow, ports: [{port: 70000}]}]}"),
            None,
        ),
        (
            ns("{ingress: [{action: Allow, ports: [{port: ''}]}]}"),
            None,
        ),
        (
            ns("{ingress: [{action: Allow, ports: [{port: 80, endPort: 79}]}]}"),
            None,
        ),
        (
            ns("{ingress: [{action: Allow, ports: [{port: http, endPort: 90}]}]}"),
            None,
        ),
        (
            ns("{ingress: [{action: Allow, ports: [{endPort: 90}]}]}"),
            None,
        ),
        (
            ns("{ingress: [{action: Allow, ports: [{port: 1, endPort: 65536}]}]}"),
            Some("maximum"),
        ),
        (
            ns("{ingress: [{action: Pass}]}"),
            Some("Pass is only allowed"),
        ),
        (
            ns("{egress: [{action: Pass}]}"),
            Some("Pass is only allowed"),
        ),
        (
            ns("{ingress: [{action: Allow, from: []}]}"),
            Some("fewer than 1"),
        ),
        (
            ns("{ingress: [{action: Allow, from: [{}]}]}"),
            Some("a peer needs"),
        ),
        (
            ns("{ingress: [{action: Allow, from: [{cidr: 10.0.0.0/8, podSelector: {}}]}]}"),
            Some("cidr cannot be combined"),
        ),
        (
            ns("{ingress: [{action: Allow, from: [{except: [10.0.0.0/9]}]}]}"),
            Some("except needs cidr"),
        ),
        (
            ns("{ingress: [{action: Allow, from: [{cidr: 10.0.0.0/33}]}]}"),
            Some("is not a CIDR"),
        ),
        (
            ns("{ingress: [{action: Allow, to: [{cidr: 10.0.0.0/8}]}]}"),
            Some("an ingress rule has from"),
        ),
        (
            ns("{egress: [{action: Allow, from: [{cidr: 10.0.0.0/8}]}]}"),
            Some("an egress rule has to"),
        ),
        (
            ns(
                "{ingress: [{action: Allow, notBefore: '2026-11-27T18:00:00Z', expiresAt: '2026-11-27T10:00:00Z'}]}",
            ),
            Some("expiresAt must be after notBefore"),
        ),
        (
            ns(
                "{ingress: [{action: Allow, notBefore: '2026-11-27T18:00:00Z', expiresAt: '2026-11-27T18:00:00Z'}]}",
            ),
            Some("expiresAt must be after notBefore"),
        ),
        (
            ns("{ingress: [{action: Allow, expiresAt: tomorrow}]}"),
            Some("RFC 3339"),
        ),
        (
            ns("{ingress: [{action: Allow, prots: []}]}"),
            Some("unknown field"),
        ),
        (ns("{ingress: [{}]}"), Some("action: required")),
        (
            cluster("{tier: Baseline, ingress: [{action: Pass}]}"),
            Some("Pass is only allowed"),
        ),
        (cluster("{tier: Middle}"), Some("is not one of")),
    ];
    for (yaml, fragment) in &cases {
        let object: Value = serde_yaml_ng::from_str(yaml).unwrap();
        let crd = crd_for(object["kind"].as_str().unwrap());
        // None: refused by a CEL rule that only the apiserver can evaluate (see
        // CLIENT_UNEVALUABLE_RULES); checked against the library alone.
        if let Some(fragment) = fragment {
            let errors = validate_object(&crd, &object).expect_err(yaml);
            assert!(
                errors.iter().any(|e| e.contains(fragment)),
                "{yaml}: {fragment:?} not in {errors:#?}"
            );
        }
        assert!(
            PolicySet::from_yaml_str("case.yaml", yaml).is_err(),
            "the library accepts what the CRD refuses: {yaml}"
        );
    }
    // And what both accept: Pass in the Admin tier (the default tier), a named port, a window.
    for yaml in [
        cluster("{ingress: [{action: Pass}]}"),
        ns(
            "{ingress: [{action: Allow, ports: [{protocol: UDP, port: dns}, {port: 80, endPort: 80}], notBefore: '2026-11-27T10:00:00Z', expiresAt: '2026-11-27T10:00:01+00:00'}]}",
        ),
    ] {
        let object: Value = serde_yaml_ng::from_str(&yaml).unwrap();
        let crd = crd_for(object["kind"].as_str().unwrap());
        validate_object(&crd, &object).unwrap_or_else(|e| panic!("{yaml}: {e:#?}"));
        PolicySet::from_yaml_str("case.yaml", &yaml).unwrap();
    }
}

fn find<'a>(objects: &'a [Value], kind: &str, suffix: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"].as_str().unwrap().ends_with(suffix))
        .unwrap_or_else(|| panic!("no {kind} *{suffix}"))
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut kinds: Vec<_> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    kinds
}

fn containers(pod_spec: &Value) -> impl Iterator<Item = &Value> {
    let init = pod_spec["initContainers"].as_array().into_iter().flatten();
    init.chain(pod_spec["containers"].as_array().into_iter().flatten())
}

fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

/// Checks common to every rendering: typed objects, wiring between them, and the Kubernetes
/// rules that typed parsing does not catch.
fn check_rendering(objects: &[Value]) {
    for object in objects {
        let what = format!("{} {}", object["kind"], object["metadata"]["name"]);
        check_typed(object).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        if object["kind"] != "ClusterRole"
            && object["kind"] != "ClusterRoleBinding"
            && object["kind"] != "CustomResourceDefinition"
        {
            assert_eq!(object["metadata"]["namespace"], NAMESPACE, "{what}");
        }
    }
    let names = |kind: &str| -> BTreeSet<String> {
        objects
            .iter()
            .filter(|o| o["kind"] == kind)
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let certificate_secrets: BTreeSet<_> = objects
        .iter()
        .filter(|o| o["kind"] == "Certificate")
        .map(|o| o["spec"]["secretName"].as_str().unwrap().to_owned())
        .collect();
    for workload in objects
        .iter()
        .filter(|o| ["Deployment", "DaemonSet"].contains(&o["kind"].as_str().unwrap()))
    {
        let what = format!("{} {}", workload["kind"], workload["metadata"]["name"]);
        let pod = &workload["spec"]["template"];
        let spec = &pod["spec"];
        // The selector selects the pod template.
        for (k, v) in workload["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
        {
            assert_eq!(&pod["metadata"]["labels"][k], v, "{what}: selector {k}");
        }
        assert!(
            names("ServiceAccount").contains(spec["serviceAccountName"].as_str().unwrap()),
            "{what}: service account not rendered"
        );
        assert!(
            spec["hostPID"].is_null() && spec["hostNetwork"].is_null(),
            "{what}"
        );
        for volume in spec["volumes"].as_array().into_iter().flatten() {
            if let Some(secret) = volume["secret"]["secretName"].as_str() {
                assert!(
                    names("Secret").contains(secret) || certificate_secrets.contains(secret),
                    "{what}: secret {secret} is neither rendered nor issued"
                );
            }
        }
        for c in containers(spec) {
            let privileged = c["securityContext"]["privileged"] == true;
            for mount in c["volumeMounts"].as_array().into_iter().flatten() {
                // The apiserver allows Bidirectional propagation in privileged containers only.
                if mount["mountPropagation"] == "Bidirectional" {
                    assert!(
                        privileged,
                        "{what}: Bidirectional in unprivileged {}",
                        c["name"]
                    );
                }
                let volume_names: Vec<_> = spec["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| &v["name"])
                    .collect();
                assert!(
                    volume_names.contains(&&mount["name"]),
                    "{what}: mount {}",
                    mount["name"]
                );
            }
            // Probes name a declared port.
            for probe in ["readinessProbe", "livenessProbe"] {
                if c[probe].is_object() {
                    let port = &c[probe]["httpGet"]["port"];
                    assert!(
                        c["ports"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|p| &p["name"] == port),
                        "{what}: {probe} port {port}"
                    );
                    assert_eq!(c[probe]["httpGet"]["path"], "/healthz");
                }
            }
        }
    }
    // Every Service selects the pods of a rendered workload, on declared ports.
    for service in objects.iter().filter(|o| o["kind"] == "Service") {
        let selector = service["spec"]["selector"].as_object().unwrap();
        let selected = objects
            .iter()
            .filter(|o| o["kind"] == "Deployment")
            .find(|d| {
                selector
                    .iter()
                    .all(|(k, v)| &d["spec"]["template"]["metadata"]["labels"][k] == v)
            });
        let deployment = selected.expect("a Service selects no workload");
        let ports = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"];
        for port in service["spec"]["ports"].as_array().unwrap() {
            assert!(
                ports
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == port["targetPort"]),
                "Service port {port}"
            );
        }
    }
}

#[test]
fn chart_renders_typed_objects_with_default_values() {
    let objects = render(&[]).unwrap();
    check_rendering(&objects);
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "DaemonSet",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Secret",
            "Service",
            "ServiceAccount",
            "ServiceAccount",
        ]
    );
    // The chart installs exactly the committed CRDs.
    let rendered_crds: Vec<_> = objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .collect();
    for crd in committed_crds() {
        let committed = serde_json::to_value(&crd).unwrap();
        assert!(
            rendered_crds.contains(&&committed),
            "{}",
            crd.spec.names.kind
        );
    }

    // Controller: two replicas with leader election, a restricted pod.
    let deployment = find(&objects, "Deployment", "-controller");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let controller = &deployment["spec"]["template"]["spec"]["containers"][0];
    let controller_args = args(controller);
    assert!(controller_args.contains(&"--leader-election"));
    assert!(controller_args.contains(&"--lease-name=bulkhead-controller"));
    assert!(controller_args.contains(&"--tls-client-ca=/etc/bulkhead/tls/ca.crt"));
    assert_eq!(
        controller["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    let pdb = find(&objects, "PodDisruptionBudget", "-controller");
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    // Enforcer: only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; not privileged; host paths.
    let daemonset = find(&objects, "DaemonSet", "-enforcer");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert!(pod["initContainers"].is_null());
    assert_eq!(pod["automountServiceAccountToken"], false);
    let enforcer = &pod["containers"][0];
    let security = &enforcer["securityContext"];
    assert_eq!(
        security["capabilities"]["add"],
        json!(["BPF", "NET_ADMIN", "PERFMON"])
    );
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    let mounts: Vec<_> = enforcer["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap(),
                m["mountPropagation"].as_str(),
                m["readOnly"] == true,
            )
        })
        .collect();
    for expected in [
        ("/sys/fs/bpf", Some("HostToContainer"), false),
        ("/host/sys/fs/cgroup", None, true),
        ("/var/log/bulkhead", None, false),
        ("/var/lib/bulkhead", None, false),
        ("/etc/bulkhead/tls", None, true),
    ] {
        assert!(mounts.contains(&expected), "{expected:?} not in {mounts:?}");
    }
    let enforcer_args = args(enforcer);
    assert!(
        enforcer_args
            .contains(&"--controller=https://bulkhead-controller.bulkhead-system.svc:9443")
    );
    assert!(enforcer_args.contains(&"--node-name=$(NODE_NAME)"));

    // RBAC: the controller reads what it compiles and writes only status, Events, its Lease and
    // its ConfigMap; nothing is bound to the enforcer.
    let cluster_role = find(&objects, "ClusterRole", "-controller");
    for rule in cluster_role["rules"].as_array().unwrap() {
        let resources: Vec<_> = rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let verbs: Vec<_> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            !resources.contains(&"*") && !verbs.contains(&"*") && !resources.contains(&"secrets")
        );
        let writes = verbs.iter().any(|v| !["get", "list", "watch"].contains(v));
        if writes {
            assert!(
                resources
                    .iter()
                    .all(|r| r.ends_with("/status") || *r == "events"),
                "cluster-wide write on {resources:?}"
            );
        }
    }
    let role = find(&objects, "Role", "-controller");
    for rule in role["rules"].as_array().unwrap() {
        let verbs = &rule["verbs"];
        assert!(
            rule["resourceNames"].is_array() || verbs == &json!(["create"]),
            "{rule}"
        );
    }
    for binding in objects
        .iter()
        .filter(|o| o["kind"].as_str().unwrap().ends_with("Binding"))
    {
        for subject in binding["subjects"].as_array().unwrap() {
            assert_eq!(
                subject["name"], "bulkhead-controller",
                "only the controller is bound"
            );
        }
    }
}

#[test]
fn chart_renders_with_service_monitor_and_cert_manager() {
    let objects = render(&[
        "metrics.serviceMonitor.enabled=true",
        "tls.certManager.enabled=true",
    ])
    .unwrap();
    check_rendering(&objects);
    let kinds = kinds(&objects);
    for kind in ["ServiceMonitor", "PodMonitor"] {
        assert_eq!(kinds.iter().filter(|k| *k == kind).count(), 1, "{kind}");
    }
    // The self-signed CA chain, and no Secret generated by the chart.
    assert_eq!(kinds.iter().filter(|k| *k == "Certificate").count(), 3);
    assert_eq!(kinds.iter().filter(|k| *k == "Issuer").count(), 2);
    assert!(!kinds.contains(&"Secret".to_owned()));
    let server = find(&objects, "Certificate", "-controller");
    assert!(
        server["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .contains(&json!("bulkhead-controller.bulkhead-system.svc"))
    );

    // With an issuer of the operator's, only the two leaf certificates.
    let objects = render(&[
        "tls.certManager.enabled=true",
        "tls.certManager.issuerRef.name=corp-ca",
        "tls.certManager.issuerRef.kind=ClusterIssuer",
    ])
    .unwrap();
    check_rendering(&objects);
    let certificates: Vec<_> = objects
        .iter()
        .filter(|o| o["kind"] == "Certificate")
        .collect();
    assert_eq!(certificates.len(), 2);
    for certificate in certificates {
        assert_eq!(
            certificate["spec"]["issuerRef"],
            json!({"name": "corp-ca", "kind": "ClusterIssuer"})
        );
    }
    assert!(!objects.iter().any(|o| o["kind"] == "Issuer"));
}

#[test]
fn chart_renders_dev_mode_and_the_bpffs_init_container() {
    // Development mode: the controller alone, plaintext on its loopback; no enforcers (they
    // only speak mutual TLS) and no TLS material.
    let objects = render(&["tls.enabled=false"]).unwrap();
    check_rendering(&objects);
    assert!(
        !objects.iter().any(|o| o["kind"] == "Secret"
            || o["kind"] == "Certificate"
            || o["kind"] == "DaemonSet")
    );
    let deployment = find(&objects, "Deployment", "-controller");
    assert!(args(&deployment["spec"]["template"]["spec"]["containers"][0]).contains(&"--insecure"));
    assert!(deployment["spec"]["template"]["spec"]["volumes"].is_null());

    let objects = render(&["enforcer.mountBpffs.enabled=true"]).unwrap();
    check_rendering(&objects);
    let daemonset = find(&objects, "DaemonSet", "-enforcer");
    let pod = &daemonset["spec"]["template"]["spec"];
    let enforcer = &pod["containers"][0];
    assert!(!args(enforcer).contains(&"--insecure"));
    assert!(
        args(enforcer)
            .contains(&"--controller=https://bulkhead-controller.bulkhead-system.svc:9443")
    );
    assert_eq!(
        enforcer["securityContext"]["capabilities"]["add"],
        json!(["BPF", "NET_ADMIN", "PERFMON"])
    );
    let init = &pod["initContainers"][0];
    assert_eq!(init["securityContext"]["privileged"], true);
    assert_eq!(init["volumeMounts"][0]["mountPropagation"], "Bidirectional");
}
