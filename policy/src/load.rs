//! Reading policy files: multi-document YAML (JSON is accepted too, as a YAML subset), single
//! files or directories (every `*.yaml`, `*.yml`, `*.json`, sorted by path, not recursive).
//! Each document is dispatched on `apiVersion` + `kind`; anything else is an error naming the file
//! and the document.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::Error;
use crate::model::{ClusterSegmentationPolicy, PolicyObject, SegmentationPolicy};

/// The object header used in messages before the object is known to be valid.
fn header(doc: &Value, index: usize) -> String {
    let kind = doc.get("kind").and_then(Value::as_str);
    let meta = doc.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str);
    match (kind, name, ns) {
        (Some(k), Some(n), Some(ns)) if k != "ClusterSegmentationPolicy" => format!("{k} {ns}/{n}"),
        (Some(k), Some(n), _) => format!("{k} {n}"),
        _ => format!("document {index}"),
    }
}

fn typed<T: DeserializeOwned>(file: &str, object: &str, doc: Value) -> Result<T, Error> {
    serde_yaml_ng::from_value(doc).map_err(|e| Error::Parse {
        file: file.to_owned(),
        object: object.to_owned(),
        message: e.to_string(),
    })
}

/// Parses every document of `text`; `file` names the source in errors. Empty documents are
/// skipped. Documents are numbered from 0 in messages.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<PolicyObject>, Error> {
    let mut out = Vec::new();
    for (index, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc = <Value as serde::Deserialize>::deserialize(de).map_err(|e| Error::Parse {
            file: file.to_owned(),
            object: format!("document {index}"),
            message: e.to_string(),
        })?;
        if doc.is_null() {
            continue;
        }
        let object = header(&doc, index);
        let api = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        let obj = match (api, kind) {
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                PolicyObject::NetworkPolicy(typed(file, &object, doc)?)
            }
            ("bulkhead.dev/v1alpha1", "SegmentationPolicy") => {
                PolicyObject::Segmentation(typed::<SegmentationPolicy>(file, &object, doc)?)
            }
            ("bulkhead.dev/v1alpha1", "ClusterSegmentationPolicy") => {
                PolicyObject::ClusterSegmentation(typed::<ClusterSegmentationPolicy>(
                    file, &object, doc,
                )?)
            }
            ("", _) => return Err(Error::invalid(file, &object, "apiVersion", "missing")),
            (_, "") => return Err(Error::invalid(file, &object, "kind", "missing")),
            (api, kind) => {
                return Err(Error::invalid(
                    file,
                    &object,
                    "kind",
                    format!(
                        "unsupported {api} {kind} (expected networking.k8s.io/v1 NetworkPolicy, or bulkhead.dev/v1alpha1 SegmentationPolicy or ClusterSegmentationPolicy)"
                    ),
                ));
            }
        };
        out.push(obj);
    }
    Ok(out)
}

/// Whether `p` has a policy file extension.
fn is_policy_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The files `path` stands for: itself, or the policy files of a directory, sorted.
pub fn policy_files(path: &Path) -> Result<Vec<PathBuf>, Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.is_file() && is_policy_file(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every object of a file or directory, each with its source file name.
pub fn read_path(path: &Path) -> Result<Vec<(String, PolicyObject)>, Error> {
    let mut out = Vec::new();
    for f in policy_files(path)? {
        let text = std::fs::read_to_string(&f).map_err(|source| Error::Io {
            path: f.clone(),
            source,
        })?;
        let name = f.display().to_string();
        out.extend(
            parse_documents(&name, &text)?
                .into_iter()
                .map(|o| (name.clone(), o)),
        );
    }
    Ok(out)
}
