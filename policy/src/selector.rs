//! Kubernetes label selectors: validation and matching (`matchLabels` plus the four
//! `matchExpressions` operators; `NotIn` and `DoesNotExist` match objects without the key).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector` (an empty selector matches everything).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &selector.match_labels
        && !ml.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    selector.match_expressions.iter().flatten().all(|req| {
        let values = req.values.as_deref().unwrap_or(&[]);
        match req.operator.as_str() {
            "In" => labels.get(&req.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&req.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&req.key),
            "DoesNotExist" => !labels.contains_key(&req.key),
            // Rejected by validation; an unknown operator matches nothing.
            _ => false,
        }
    })
}

/// Checks a selector; on error returns `(field suffix, message)` where the suffix is relative
/// to the selector's own path (e.g. `.matchExpressions[0].operator`).
pub fn check(selector: &LabelSelector) -> Result<(), (String, String)> {
    for (k, _) in selector.match_labels.iter().flatten() {
        if k.is_empty() {
            return Err((".matchLabels".to_owned(), "empty label key".to_owned()));
        }
    }
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let values = req.values.as_deref().unwrap_or(&[]);
        if req.key.is_empty() {
            return Err((
                format!(".matchExpressions[{i}].key"),
                "must not be empty".to_owned(),
            ));
        }
        match req.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    return Err((
                        format!(".matchExpressions[{i}].values"),
                        format!("operator {} needs at least one value", req.operator),
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    return Err((
                        format!(".matchExpressions[{i}].values"),
                        format!("operator {} takes no values", req.operator),
                    ));
                }
            }
            other => {
                return Err((
                    format!(".matchExpressions[{i}].operator"),
                    format!(
                        "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A canonical string for a selector (cache key): equal selectors give equal strings.
pub(crate) fn canonical(selector: &LabelSelector) -> String {
    let mut exprs: Vec<(String, String, Vec<String>)> = selector
        .match_expressions
        .iter()
        .flatten()
        .map(|r| {
            let mut v = r.values.clone().unwrap_or_default();
            v.sort();
            v.dedup();
            (r.key.clone(), r.operator.clone(), v)
        })
        .collect();
    exprs.sort();
    exprs.dedup();
    let labels = selector.match_labels.clone().unwrap_or_default();
    serde_json::to_string(&(labels, exprs)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
            }]),
        }
    }

    #[test]
    fn operators() {
        let with = labels(&[("env", "prod")]);
        let other = labels(&[("env", "dev")]);
        let without = labels(&[]);
        let s = expr("env", "In", Some(&["prod"]));
        assert!(matches(&s, &with) && !matches(&s, &other) && !matches(&s, &without));
        let s = expr("env", "NotIn", Some(&["prod"]));
        assert!(!matches(&s, &with) && matches(&s, &other) && matches(&s, &without));
        let s = expr("env", "Exists", None);
        assert!(matches(&s, &with) && !matches(&s, &without));
        let s = expr("env", "DoesNotExist", None);
        assert!(!matches(&s, &with) && matches(&s, &without));
        assert!(matches(&LabelSelector::default(), &without));
        let ml = LabelSelector {
            match_labels: Some(labels(&[("env", "prod")])),
            match_expressions: None,
        };
        assert!(matches(&ml, &with) && !matches(&ml, &other));
    }

    #[test]
    fn checks() {
        assert_eq!(
            check(&expr("env", "Exists", Some(&["x"]))).unwrap_err().1,
            "operator Exists takes no values"
        );
        assert_eq!(
            check(&expr("env", "In", Some(&[]))).unwrap_err().1,
            "operator In needs at least one value"
        );
        assert_eq!(
            check(&expr("env", "Has", None)).unwrap_err().0,
            ".matchExpressions[0].operator"
        );
        assert!(check(&expr("env", "NotIn", Some(&["a"]))).is_ok());
    }
}
