//! `labelSelector` and `fieldSelector` query parameters: parsed once per list or watch, matched
//! against stored objects. Label selectors take the whole Kubernetes grammar (`k=v`, `k==v`,
//! `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`); field selectors take `path=v`, `path==v`
//! and `path!=v` for any dotted path into the object (the real apiserver allows only a few paths
//! per resource; this one allows all of them).

use serde_json::Value;

/// A parsed label and field selector (empty: matches everything).
#[derive(Clone, Debug, Default)]
pub struct Selector {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

#[derive(Clone, Debug)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

#[derive(Clone, Debug)]
struct FieldReq {
    path: Vec<String>,
    value: String,
    equal: bool,
}

impl Selector {
    /// Parses both selectors; the error is the message of a 400 answer.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, String> {
        let labels = split_top_level(labels.unwrap_or(""))
            .into_iter()
            .map(|r| parse_label_req(&r))
            .collect::<Result<_, _>>()?;
        let fields = split_top_level(fields.unwrap_or(""))
            .into_iter()
            .map(|r| parse_field_req(&r))
            .collect::<Result<_, _>>()?;
        Ok(Self { labels, fields })
    }

    /// Whether `obj` satisfies every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::In(k, vs) => label(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|v| vs.iter().all(|x| x != v)),
        });
        labels_ok
            && self.fields.iter().all(|req| {
                let found = req
                    .path
                    .iter()
                    .try_fold(obj, |v, seg| v.get(seg))
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_default();
                (found == req.value) == req.equal
            })
    }
}

/// Splits on commas outside parentheses, dropping empty pieces.
fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_label_req(req: &str) -> Result<LabelReq, String> {
    if let Some(key) = req.strip_prefix('!') {
        return Ok(LabelReq::NotExists(key.trim().to_string()));
    }
    if let Some((key, value)) = req.split_once("!=") {
        return Ok(LabelReq::NotIn(
            key.trim().into(),
            vec![value.trim().into()],
        ));
    }
    if let Some((key, value)) = req.split_once("==").or_else(|| req.split_once('=')) {
        return Ok(LabelReq::In(key.trim().into(), vec![value.trim().into()]));
    }
    let words: Vec<&str> = req.splitn(3, ' ').collect();
    match words.as_slice() {
        [key] => Ok(LabelReq::Exists((*key).to_string())),
        [key, op, set] => {
            let values = set
                .trim()
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| format!("labelSelector {req:?}: expected a (value,...) set"))?
                .split(',')
                .map(|v| v.trim().to_string())
                .collect();
            match *op {
                "in" => Ok(LabelReq::In((*key).to_string(), values)),
                "notin" => Ok(LabelReq::NotIn((*key).to_string(), values)),
                _ => Err(format!("labelSelector {req:?}: unknown operator {op:?}")),
            }
        }
        _ => Err(format!("labelSelector {req:?}: not a requirement")),
    }
}

fn parse_field_req(req: &str) -> Result<FieldReq, String> {
    let (path, value, equal) = if let Some((p, v)) = req.split_once("!=") {
        (p, v, false)
    } else if let Some((p, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
        (p, v, true)
    } else {
        return Err(format!(
            "fieldSelector {req:?}: expected path=value or path!=value"
        ));
    };
    Ok(FieldReq {
        path: path.trim().split('.').map(str::to_string).collect(),
        value: value.trim().to_string(),
        equal,
    })
}
