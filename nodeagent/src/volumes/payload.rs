//! What the files of a ConfigMap, Secret, Downward API or projected
//! volume are: pure functions from the objects (read elsewhere) and the
//! pod to a payload for the atomic writer.
//!
//! ```text
//!  ConfigMap data + binaryData ─┐
//!  Secret data ─────────────────┼─ every key, or `items` (key → path, mode) ─► Payload
//!  pod metadata, resources ─────┘   defaultMode (0644) unless an item says
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret};

use super::SetUpError;
use super::atomic::{FileProjection, Payload};
use crate::pods::env::{self, Allocatable};

/// The API's default for `defaultMode` and items without a `mode`.
pub(crate) const DEFAULT_MODE: i32 = 0o644;

/// Permission bits of a `mode` field (the API allows 0–0777).
fn mode(mode: Option<i32>, default_mode: Option<i32>) -> u32 {
    (mode.or(default_mode).unwrap_or(DEFAULT_MODE) as u32) & 0o777
}

/// Files for `items` (or every key when there are none) of a key/value map.
/// `missing` is the error for a key that is not there (unless `optional`).
fn keyed(
    values: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
    missing: fn(String) -> SetUpError,
) -> Result<Payload, SetUpError> {
    let mut payload = Payload::new();
    match items {
        None | Some([]) => {
            for (key, data) in values {
                payload.insert(
                    key.clone(),
                    FileProjection {
                        data: data.clone(),
                        mode: mode(None, default_mode),
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                let Some(data) = values.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(missing(item.key.clone()));
                };
                payload.insert(
                    item.path.clone(),
                    FileProjection {
                        data: data.clone(),
                        mode: mode(item.mode, default_mode),
                    },
                );
            }
        }
    }
    Ok(payload)
}

/// A ConfigMap's files: `data` and `binaryData` (a missing, optional
/// ConfigMap is empty).
///
/// Errors: [`SetUpError::ConfigMapKey`] for an item naming a key it does
/// not have, unless `optional`.
pub(crate) fn config_map(
    map: Option<&ConfigMap>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Payload, SetUpError> {
    let mut values: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if let Some(map) = map {
        for (key, value) in map.data.iter().flatten() {
            values.insert(key.clone(), value.as_bytes().to_vec());
        }
        for (key, value) in map.binary_data.iter().flatten() {
            values.entry(key.clone()).or_insert_with(|| value.0.clone());
        }
    }
    keyed(
        &values,
        items,
        default_mode,
        optional,
        SetUpError::ConfigMapKey,
    )
}

/// A Secret's files (a missing, optional Secret is empty).
///
/// Errors: [`SetUpError::SecretKey`] for an item naming a key it does not
/// have, unless `optional`.
pub(crate) fn secret(
    secret: Option<&Secret>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Payload, SetUpError> {
    let values: BTreeMap<String, Vec<u8>> = secret
        .and_then(|s| s.data.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    keyed(
        &values,
        items,
        default_mode,
        optional,
        SetUpError::SecretKey,
    )
}

/// A string as Go's `%q` prints it: quoted, with `"` and `\` escaped and
/// control and other non-printing characters as escapes.
pub(crate) fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() || (c.is_whitespace() && c != ' ') => {
                if (c as u32) <= 0xffff {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Labels or annotations as the Downward API writes them: one
/// `key="value"` line per key, sorted, without a final newline.
pub(crate) fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of a Downward API volume's `fieldRef`.
///
/// Errors: [`SetUpError::Field`] for a path volumes do not offer.
pub(crate) fn field(pod: &Pod, path: &str) -> Result<String, SetUpError> {
    let unsupported = || SetUpError::Field(path.to_owned());
    match path {
        "metadata.labels" => Ok(format_map(pod.metadata.labels.as_ref())),
        "metadata.annotations" => Ok(format_map(pod.metadata.annotations.as_ref())),
        "metadata.name" | "metadata.namespace" | "metadata.uid" => {
            env::field(pod, path).map_err(|_| unsupported())
        }
        subscripted
            if (subscripted.starts_with("metadata.labels['")
                || subscripted.starts_with("metadata.annotations['"))
                && subscripted.ends_with("']") =>
        {
            env::field(pod, path).map_err(|_| unsupported())
        }
        _ => Err(unsupported()),
    }
}

/// The files of a Downward API volume (or projection).
///
/// Errors: every item that cannot be resolved (an unsupported field or
/// resource, a container the pod does not have), together.
pub(crate) fn downward_api(
    items: &[DownwardAPIVolumeFile],
    pod: &Pod,
    default_mode: Option<i32>,
    node: Allocatable,
) -> Result<Payload, SetUpError> {
    let mut payload = Payload::new();
    let mut errors = Vec::new();
    for item in items {
        let value = if let Some(r) = &item.field_ref {
            field(pod, &r.field_path)
        } else if let Some(r) = &item.resource_field_ref {
            resource(
                pod,
                r.container_name.as_deref().unwrap_or_default(),
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
                node,
            )
        } else {
            Ok(String::new())
        };
        match value {
            Ok(value) => {
                payload.insert(
                    item.path.clone(),
                    FileProjection {
                        data: value.into_bytes(),
                        mode: mode(item.mode, default_mode),
                    },
                );
            }
            Err(error) => errors.push(error),
        }
    }
    SetUpError::all(errors).map(|()| payload)
}

/// A `resourceFieldRef` of the container `container` of the pod.
fn resource(
    pod: &Pod,
    container: &str,
    name: &str,
    divisor: Option<&str>,
    node: Allocatable,
) -> Result<String, SetUpError> {
    let spec = pod.spec.as_ref();
    let found = spec
        .into_iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == container)
        .ok_or_else(|| SetUpError::NoContainer(container.to_owned()))?;
    env::resource(found, name, divisor, node).map_err(|e| SetUpError::Resource(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(payload: &Payload) -> BTreeMap<String, (String, u32)> {
        payload
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    (String::from_utf8_lossy(&v.data).into_owned(), v.mode),
                )
            })
            .collect()
    }

    fn items(json: serde_json::Value) -> Vec<KeyToPath> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn config_maps_give_every_key_or_their_items() {
        let map: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "cfg"},
            "data": {"a": "1", "b": "2"},
            "binaryData": {"bin": "AAEC"},
        }))
        .unwrap();
        struct Case {
            items: Option<Vec<KeyToPath>>,
            default_mode: Option<i32>,
            optional: bool,
            expected: Result<Vec<(&'static str, &'static str, u32)>, &'static str>,
        }
        let cases = [
            Case {
                items: None,
                default_mode: None,
                optional: false,
                expected: Ok(vec![
                    ("a", "1", 0o644),
                    ("b", "2", 0o644),
                    ("bin", "\0\u{1}\u{2}", 0o644),
                ]),
            },
            Case {
                items: Some(vec![]),
                default_mode: Some(0o400),
                optional: false,
                expected: Ok(vec![
                    ("a", "1", 0o400),
                    ("b", "2", 0o400),
                    ("bin", "\0\u{1}\u{2}", 0o400),
                ]),
            },
            Case {
                items: Some(items(json!([
                    {"key": "a", "path": "dir/first"},
                    {"key": "bin", "path": "bin", "mode": 0o600},
                ]))),
                default_mode: Some(0o440),
                optional: false,
                expected: Ok(vec![
                    ("bin", "\0\u{1}\u{2}", 0o600),
                    ("dir/first", "1", 0o440),
                ]),
            },
            Case {
                items: Some(items(json!([{"key": "nope", "path": "x"}]))),
                default_mode: None,
                optional: false,
                expected: Err("configmap references non-existent config key: nope"),
            },
            Case {
                items: Some(items(
                    json!([{"key": "nope", "path": "x"}, {"key": "a", "path": "a"}]),
                )),
                default_mode: None,
                optional: true,
                expected: Ok(vec![("a", "1", 0o644)]),
            },
        ];
        for (index, case) in cases.into_iter().enumerate() {
            let got = config_map(
                Some(&map),
                case.items.as_deref(),
                case.default_mode,
                case.optional,
            )
            .map(|p| text(&p))
            .map_err(|e| e.to_string());
            let expected = case
                .expected
                .map(|files| {
                    files
                        .into_iter()
                        .map(|(k, v, m)| (k.to_owned(), (v.to_owned(), m)))
                        .collect::<BTreeMap<_, _>>()
                })
                .map_err(str::to_owned);
            assert_eq!(got, expected, "case {index}");
        }
        assert!(config_map(None, None, None, true).unwrap().is_empty());
    }

    #[test]
    fn secrets_give_their_bytes() {
        let secret_object: Secret = serde_json::from_value(json!({
            "metadata": {"name": "s"},
            "data": {"password": "aHVudGVyMg=="},
        }))
        .unwrap();
        let all = secret(Some(&secret_object), None, Some(0o400), false).unwrap();
        assert_eq!(
            text(&all),
            BTreeMap::from([("password".into(), ("hunter2".into(), 0o400))])
        );
        let missing = secret(
            Some(&secret_object),
            Some(&items(json!([{"key": "user", "path": "user"}]))),
            None,
            false,
        )
        .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "references non-existent secret key: user"
        );
    }

    #[test]
    fn quoting_follows_go() {
        let cases = [
            ("plain", r#""plain""#),
            ("say \"hi\"", r#""say \"hi\"""#),
            ("back\\slash", r#""back\\slash""#),
            ("two\nlines\ttab", r#""two\nlines\ttab""#),
            ("bell\u{7}nul\u{0}", r#""bell\anul\x00""#),
            ("ünïcode ✓", "\"ünïcode ✓\""),
            ("nbsp\u{a0}", r#""nbsp\u00a0""#),
        ];
        for (input, expected) in cases {
            assert_eq!(go_quote(input), expected, "{input:?}");
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1",
                "labels": {"tier": "front", "app": "web"},
                "annotations": {"note": "a \"quoted\"\nvalue"}},
            "spec": {
                "initContainers": [{"name": "init", "resources": {"limits": {"memory": "32Mi"}}}],
                "containers": [{"name": "c",
                    "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "64Mi"}}}]},
        }))
        .unwrap()
    }

    #[test]
    fn downward_api_files_follow_the_kubelet() {
        let node = Allocatable {
            milli_cpu: 2000,
            memory: 1 << 30,
        };
        let cases: &[(serde_json::Value, Result<&str, &str>)] = &[
            (
                json!({"fieldRef": {"fieldPath": "metadata.name"}}),
                Ok("web-1"),
            ),
            (
                json!({"fieldRef": {"fieldPath": "metadata.namespace"}}),
                Ok("shop"),
            ),
            (
                json!({"fieldRef": {"fieldPath": "metadata.uid"}}),
                Ok("u-1"),
            ),
            (
                json!({"fieldRef": {"fieldPath": "metadata.labels"}}),
                Ok("app=\"web\"\ntier=\"front\""),
            ),
            (
                json!({"fieldRef": {"fieldPath": "metadata.annotations"}}),
                Ok(r#"note="a \"quoted\"\nvalue""#),
            ),
            (
                json!({"fieldRef": {"fieldPath": "metadata.labels['app']"}}),
                Ok("web"),
            ),
            (
                json!({"fieldRef": {"fieldPath": "metadata.labels['none']"}}),
                Ok(""),
            ),
            (
                json!({"fieldRef": {"fieldPath": "spec.nodeName"}}),
                Err("unsupported fieldPath: spec.nodeName"),
            ),
            (
                json!({"resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}}),
                Ok("64"),
            ),
            (
                json!({"resourceFieldRef": {"containerName": "c", "resource": "requests.cpu", "divisor": "1m"}}),
                Ok("250"),
            ),
            (
                json!({"resourceFieldRef": {"containerName": "c", "resource": "limits.cpu"}}),
                Ok("2"),
            ),
            (
                json!({"resourceFieldRef": {"containerName": "init", "resource": "limits.memory"}}),
                Ok("33554432"),
            ),
            (
                json!({"resourceFieldRef": {"containerName": "gone", "resource": "limits.memory"}}),
                Err("container gone not found"),
            ),
        ];
        for (item, expected) in cases {
            let mut item = item.clone();
            item["path"] = json!("f");
            let file: DownwardAPIVolumeFile = serde_json::from_value(item.clone()).unwrap();
            let got = downward_api(&[file], &pod(), None, node)
                .map(|p| String::from_utf8_lossy(&p["f"].data).into_owned())
                .map_err(|e| e.to_string());
            assert_eq!(
                got,
                expected.map(str::to_owned).map_err(str::to_owned),
                "{item}"
            );
        }
    }

    #[test]
    fn downward_api_errors_are_reported_together() {
        let files: Vec<DownwardAPIVolumeFile> = serde_json::from_value(json!([
            {"path": "a", "fieldRef": {"fieldPath": "spec.nodeName"}},
            {"path": "b", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o600},
            {"path": "c", "fieldRef": {"fieldPath": "status.podIP"}},
        ]))
        .unwrap();
        let error = downward_api(&files, &pod(), None, Allocatable::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "[unsupported fieldPath: spec.nodeName, unsupported fieldPath: status.podIP]"
        );
        let ok = downward_api(&files[1..2], &pod(), Some(0o444), Allocatable::default()).unwrap();
        assert_eq!(ok["b"].mode, 0o600);
    }
}
