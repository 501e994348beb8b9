//! Label and field selectors, parsed once and matched against objects.
//!
//! Labels take Kubernetes' full syntax: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//! `k notin (a,b)`, `k`, `!k`, joined by commas. Fields take `path=v`,
//! `path==v` and `path!=v`, where the path is a dotted field of the object
//! (`metadata.name`, `spec.nodeName`, `status.phase`, `involvedObject.kind`).

use std::collections::BTreeSet;

use serde_json::Value;

/// A selector that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0:?}")]
pub struct SelectorError(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Equals(String),
    NotEquals(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::Equals(v), Some(actual)) => v == actual,
            (Op::Equals(_), None) => false,
            (Op::NotEquals(v), actual) => actual != Some(v.as_str()),
            (Op::In(set), Some(actual)) => set.contains(actual),
            (Op::In(_), None) => false,
            (Op::NotIn(set), actual) => actual.is_none_or(|a| !set.contains(a)),
            (Op::Exists, actual) => actual.is_some(),
            (Op::DoesNotExist, actual) => actual.is_none(),
        }
    }
}

/// Splits on commas outside parentheses.
fn split_top(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn set(text: &str, whole: &str) -> Result<BTreeSet<String>, SelectorError> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| SelectorError(whole.to_owned()))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect())
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn parse_requirement(part: &str) -> Result<Requirement, SelectorError> {
    let bad = || SelectorError(part.to_owned());
    let text = part.trim();
    if let Some(key) = text.strip_prefix('!') {
        let key = key.trim();
        return valid_key(key)
            .then(|| Requirement {
                key: key.to_owned(),
                op: Op::DoesNotExist,
            })
            .ok_or_else(bad);
    }
    for (token, make) in [
        ("!=", Op::NotEquals as fn(String) -> Op),
        ("==", Op::Equals),
        ("=", Op::Equals),
    ] {
        if let Some((key, value)) = text.split_once(token) {
            let (key, value) = (key.trim(), value.trim());
            if !valid_key(key) || value.contains(['=', '!', '(', ')', ' ']) {
                return Err(bad());
            }
            return Ok(Requirement {
                key: key.to_owned(),
                op: make(value.to_owned()),
            });
        }
    }
    if let Some((key, rest)) = text.split_once(" notin ") {
        return Ok(Requirement {
            key: key.trim().to_owned(),
            op: Op::NotIn(set(rest, part)?),
        });
    }
    if let Some((key, rest)) = text.split_once(" in ") {
        return Ok(Requirement {
            key: key.trim().to_owned(),
            op: Op::In(set(rest, part)?),
        });
    }
    valid_key(text)
        .then(|| Requirement {
            key: text.to_owned(),
            op: Op::Exists,
        })
        .ok_or_else(bad)
}

/// A parsed label selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        split_top(text)
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `object`'s `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        self.matches_labels(&object["metadata"]["labels"])
    }

    /// Whether an object with `labels` (its `metadata.labels`) matches.
    pub fn matches_labels(&self, labels: &Value) -> bool {
        self.0
            .iter()
            .all(|r| r.matches(labels.get(&r.key).and_then(Value::as_str)))
    }
}

/// A parsed field selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<Requirement>);

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut requirements = Vec::new();
        for part in split_top(text) {
            let requirement = parse_requirement(part)?;
            if !matches!(requirement.op, Op::Equals(_) | Op::NotEquals(_)) {
                return Err(SelectorError(part.to_owned()));
            }
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    /// The fields it tests (`spec.nodeName`).
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|r| r.key.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name this selector pins (`metadata.name=x`), if any: lets a list
    /// read one key instead of all.
    pub fn name(&self) -> Option<&str> {
        self.pinned("metadata.name")
    }

    /// The value this selector requires `field` to equal, if it does
    /// (`spec.nodeName=n1`): lets a cache answer from an index.
    pub fn pinned(&self, field: &str) -> Option<&str> {
        self.0.iter().find_map(|r| match &r.op {
            Op::Equals(v) if r.key == field => Some(v.as_str()),
            _ => None,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|r| {
            let mut at = object;
            for step in r.key.split('.') {
                at = &at[step];
            }
            let text: std::borrow::Cow<'_, str> = match at {
                Value::String(s) => s.as_str().into(),
                // An absent field compares as the empty string, as in Kubernetes.
                Value::Null => "".into(),
                other => other.to_string().into(),
            };
            r.matches(Some(&text))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "web-1", "namespace": "default", "labels": labels},
               "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_selectors_match_as_kubernetes_documents() {
        let web = pod(json!({"app": "web", "tier": "front"}));
        let db = pod(json!({"app": "db"}));
        for (text, on_web, on_db) in [
            ("", true, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("app in (web, db)", true, true),
            ("app notin (web)", false, true),
            ("tier", true, false),
            ("!tier", false, true),
            ("app=web,tier=front", true, false),
            ("app in (web,db),!tier", false, true),
            ("missing!=x", true, true),
        ] {
            let selector = LabelSelector::parse(text).unwrap();
            assert_eq!(selector.matches(&web), on_web, "{text} on web");
            assert_eq!(selector.matches(&db), on_db, "{text} on db");
        }
    }

    #[test]
    fn bad_selectors_are_errors() {
        for text in ["a=b=c", "in (x)", "app in web", "=x", "a b"] {
            assert!(LabelSelector::parse(text).is_err(), "{text}");
        }
        assert!(FieldSelector::parse("metadata.name in (a)").is_err());
    }

    #[test]
    fn field_selectors_read_dotted_fields() {
        let p = pod(json!({}));
        for (text, expected) in [
            ("metadata.name=web-1", true),
            ("spec.nodeName=n2", false),
            ("status.phase!=Pending", true),
            ("spec.nodeName=", false),
            ("spec.missing=", true),
        ] {
            assert_eq!(
                FieldSelector::parse(text).unwrap().matches(&p),
                expected,
                "{text}"
            );
        }
        assert_eq!(
            FieldSelector::parse("metadata.name=web-1").unwrap().name(),
            Some("web-1")
        );
    }
}
