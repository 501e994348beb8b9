//! What the API server itself sets and checks on every object: names,
//! `uid`, timestamps, `generation`, `resourceVersion`.

use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use crate::resources::Resource;
use crate::status::{ApiError, Cause};

/// Characters Kubernetes uses for `generateName` suffixes (no vowels, no
/// look-alikes).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Now, as Kubernetes writes timestamps (seconds, UTC).
pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A 5-character random suffix for `generateName`.
pub fn name_suffix() -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| SUFFIX_ALPHABET[usize::from(*b) % SUFFIX_ALPHABET.len()] as char)
        .collect()
}

/// Whether `name` is a DNS-1123 subdomain (what most object names must be).
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label_part)
}

/// Whether `name` is a DNS-1123 label (namespaces, services).
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && is_dns_label_part(name)
}

fn is_dns_label_part(part: &str) -> bool {
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Names that must be DNS labels rather than subdomains.
fn needs_label(resource: &Resource) -> bool {
    matches!(resource.plural, "namespaces" | "services")
}

/// Checks a name as Kubernetes checks it for `resource`.
pub fn check_name(resource: &Resource, name: &str) -> Option<Cause> {
    if needs_label(resource) {
        (!is_dns_label(name)).then(|| {
            Cause::invalid(
                "metadata.name",
                name,
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
            )
        })
    } else {
        (!is_dns_subdomain(name)).then(|| {
            Cause::invalid(
                "metadata.name",
                name,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            )
        })
    }
}

/// `object.metadata`, made an object if it was missing; `object` must be
/// a JSON object (every decoded body is).
pub fn metadata(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    match &mut object["metadata"] {
        Value::Object(map) => map,
        _ => unreachable!("metadata was made an object above"),
    }
}

pub fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// Parses a request body as a JSON object of `resource`'s kind; fills in
/// `apiVersion` and `kind` when absent, refuses them when wrong.
pub fn decode(resource: &Resource, body: &[u8]) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !object.is_object() {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    }
    let api_version = resource.api_version();
    match object["apiVersion"].as_str() {
        None | Some("") => object["apiVersion"] = json!(api_version),
        Some(v) if v == api_version => {}
        // Another version of the same group: served as this one for now.
        Some(v) if resource.group.is_empty() || v.starts_with(&format!("{}/", resource.group)) => {
            object["apiVersion"] = json!(api_version)
        }
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match object["kind"].as_str() {
        None | Some("") => object["kind"] = json!(resource.kind),
        Some(k) if k == resource.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                resource.kind
            )));
        }
    }
    if !object["metadata"].is_null() && !object["metadata"].is_object() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(object)
}

/// Sets what the server owns on a new object: name (from `generateName`),
/// namespace, `uid`, `creationTimestamp`, `generation`.
pub fn prepare_create(
    resource: &Resource,
    object: &mut Value,
    namespace: Option<&str>,
) -> Result<String, ApiError> {
    let has_spec = object.get("spec").is_some();
    let meta = metadata(object);
    let mut name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() {
        match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => name = format!("{prefix}{}", name_suffix()),
            _ => {
                return Err(ApiError::invalid(
                    resource,
                    "",
                    vec![Cause::required("metadata.name")],
                ));
            }
        }
        meta.insert("name".into(), json!(name));
    }
    if resource.namespaced {
        let ns = namespace.unwrap_or("default");
        match meta.get("namespace").and_then(Value::as_str) {
            Some(given) if !given.is_empty() && given != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                meta.insert("namespace".into(), json!(ns));
            }
        }
    } else {
        meta.remove("namespace");
    }
    if let Some(cause) = check_name(resource, &name) {
        return Err(ApiError::invalid(resource, &name, vec![cause]));
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now()));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    meta.remove("deletionGracePeriodSeconds");
    if has_spec {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    Ok(name)
}

/// Carries what an update may not change from `current` into `updated`,
/// and bumps `generation` when the spec changed.
pub fn prepare_update(current: &Value, updated: &mut Value) {
    let spec_changed = current.get("spec") != updated.get("spec");
    let old = &current["metadata"];
    let meta = metadata(updated);
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "name",
    ] {
        match old.get(field) {
            Some(value) => meta.insert(field.into(), value.clone()),
            None => meta.remove(field),
        };
    }
    meta.remove("resourceVersion");
    let generation = old.get("generation").and_then(Value::as_i64);
    match generation {
        Some(g) if spec_changed => meta.insert("generation".into(), json!(g + 1)),
        Some(g) => meta.insert("generation".into(), json!(g)),
        None => meta.remove("generation"),
    };
}

/// The object as clients see it: `resourceVersion` is the store revision.
pub fn with_version(mut object: Value, revision: i64) -> Value {
    metadata(&mut object).insert("resourceVersion".into(), json!(revision.to_string()));
    object
}

/// Removes the field at `path` (`spec.template.spec.containers[0].image`).
pub fn remove_path(object: &mut Value, path: &str) {
    let mut steps: Vec<String> = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            steps.push(rest[..open].to_owned());
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                steps.push(rest[..=close].to_owned());
                rest = &rest[close + 1..];
            }
        } else {
            steps.push(rest.to_owned());
        }
    }
    let Some((last, parents)) = steps.split_last() else {
        return;
    };
    let mut at = object;
    for step in parents {
        let next = match step.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            Some(index) => index.parse::<usize>().ok().and_then(|i| at.get_mut(i)),
            None => at.get_mut(step.as_str()),
        };
        match next {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Value::Object(map) = at {
        map.remove(last.as_str());
    }
}

/// Human age as kubectl prints it (`5s`, `3m12s`, `2d4h`, `90d`).
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..600 if s % 60 != 0 => format!("{}m{}s", s / 60, s % 60),
        120..10_800 => format!("{}m", s / 60),
        10_800..28_800 if s % 3600 / 60 != 0 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        10_800..172_800 => format!("{}h", s / 3600),
        172_800..691_200 if s % 86_400 / 3600 != 0 => {
            format!("{}d{}h", s / 86_400, s % 86_400 / 3600)
        }
        172_800..63_072_000 => format!("{}d", s / 86_400),
        _ => format!("{}y", s / 31_536_000),
    }
}

/// Seconds since `timestamp` (RFC 3339), 0 if it does not parse.
pub fn age_seconds(timestamp: Option<&str>) -> i64 {
    timestamp
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| (Utc::now() - t.with_timezone(&Utc)).num_seconds())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn names_are_checked_as_kubernetes_checks_them() {
        assert!(is_dns_subdomain("web-1.example"));
        assert!(!is_dns_subdomain("Web"));
        assert!(!is_dns_subdomain("-web"));
        assert!(is_dns_label("kube-system"));
        assert!(!is_dns_label("a.b"));
        let ns = find("", "v1", "namespaces").unwrap();
        assert!(check_name(ns, "a.b").is_some());
        let cm = find("", "v1", "configmaps").unwrap();
        assert!(check_name(cm, "a.b").is_none());
    }

    #[test]
    fn create_fills_in_what_the_server_owns() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        let mut object =
            decode(deploy, br#"{"metadata":{"generateName":"web-"},"spec":{}}"#).unwrap();
        let name = prepare_create(deploy, &mut object, Some("prod")).unwrap();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        assert_eq!(object["kind"], "Deployment");
        assert_eq!(object["apiVersion"], "apps/v1");
        assert_eq!(object["metadata"]["namespace"], "prod");
        assert_eq!(object["metadata"]["generation"], 1);
        assert!(object["metadata"]["uid"].is_string());

        let mut other = decode(deploy, br#"{"metadata":{"name":"x","namespace":"dev"}}"#).unwrap();
        assert_eq!(
            prepare_create(deploy, &mut other, Some("prod"))
                .unwrap_err()
                .code,
            400
        );
        let mut nameless = decode(deploy, br#"{"metadata":{}}"#).unwrap();
        assert_eq!(
            prepare_create(deploy, &mut nameless, Some("prod"))
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(decode(deploy, br#"{"kind":"Pod"}"#).unwrap_err().code, 400);
        assert_eq!(decode(deploy, b"[1]").unwrap_err().code, 400);
        assert_eq!(decode(deploy, b"{").unwrap_err().code, 400);
    }

    #[test]
    fn generation_moves_with_the_spec_only() {
        let current = json!({"metadata": {"name": "a", "uid": "u1", "generation": 3}, "spec": {"replicas": 1}});
        let mut same = json!({"metadata": {"name": "a", "uid": "forged", "labels": {"x": "y"}}, "spec": {"replicas": 1}});
        prepare_update(&current, &mut same);
        assert_eq!(same["metadata"]["generation"], 3);
        assert_eq!(same["metadata"]["uid"], "u1");
        let mut scaled = json!({"metadata": {"name": "a"}, "spec": {"replicas": 2}});
        prepare_update(&current, &mut scaled);
        assert_eq!(scaled["metadata"]["generation"], 4);
    }

    #[test]
    fn fields_are_removed_by_path() {
        let mut object = json!({"spec": {"containers": [{"name": "a", "typo": 1}], "x": 2}});
        remove_path(&mut object, "spec.containers[0].typo");
        remove_path(&mut object, "spec.x");
        remove_path(&mut object, "spec.missing[3].y");
        assert_eq!(object, json!({"spec": {"containers": [{"name": "a"}]}}));
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        for (s, text) in [
            (5, "5s"),
            (119, "119s"),
            (192, "3m12s"),
            (600, "10m"),
            (11_000, "3h3m"),
            (90_000, "25h"),
            (180_000, "2d2h"),
            (7_776_000, "90d"),
        ] {
            assert_eq!(human_age(s), text, "{s}");
        }
    }
}
