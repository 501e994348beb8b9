//! A StatefulSet's history, as pure functions: ControllerRevisions named
//! `SET-HASH` holding the pod template as the strategic merge patch
//! Kubernetes stores (`{"spec":{"template":{…,"$patch":"replace"}}}`), so
//! that `kubectl rollout history --revision` and `rollout undo` can apply
//! them; their order; which one the current template is; which to prune.
//!
//! ```text
//!  template ─► data ─► FNV-1 (+ collisionCount) ─► "web-" + safe digits
//!                └─ equal to the newest revision?   keep it
//!                   equal to an older one?          bump it to the next number (a rollback)
//!                   neither?                        create revision max+1
//! ```
//!
//! The hash is Kubernetes' (32-bit FNV-1 of the data's JSON with sorted
//! keys and Go's escaping, then the collision count in decimal, spelled in
//! the alphabet `bcdfghjklmnpqrstvwxz2456789`); the JSON of a template is
//! this API server's, so names match Kubernetes' in form, not digit for
//! digit.

use std::collections::HashSet;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde_json::{Value, json};

use crate::runtime::controller_reference;

/// The label holding a revision's hash.
pub const HASH_LABEL: &str = "controller.kubernetes.io/hash";

/// What a revision of `template` holds.
pub fn data_of(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_default();
    if !template.is_object() {
        template = json!({});
    }
    template["$patch"] = json!("replace");
    json!({"spec": {"template": template}})
}

/// JSON as Go's `encoding/json` writes a map: keys sorted, `<`, `>`, `&`,
/// U+2028 and U+2029 escaped.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_string(key, out);
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        Value::String(s) => go_string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

fn go_string(s: &str, out: &mut String) {
    let quoted = Value::String(s.to_owned()).to_string();
    for c in quoted.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
}

/// 32-bit FNV-1 (multiply, then xor), as Go's `hash/fnv.New32`.
fn fnv1(bytes: &[u8], mut hash: u32) -> u32 {
    for b in bytes {
        hash = hash.wrapping_mul(0x0100_0193);
        hash ^= u32::from(*b);
    }
    hash
}

const FNV_OFFSET: u32 = 0x811c_9dc5;

/// Digits spelled so that no word can form (Kubernetes' `SafeEncodeString`).
fn safe_encode(digits: &str) -> String {
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    digits
        .bytes()
        .map(|b| SAFE[usize::from(b) % SAFE.len()] as char)
        .collect()
}

/// The hash of revision `data` after `collisions` name collisions.
pub fn hash(data: &Value, collisions: i32) -> String {
    let mut text = String::new();
    canonical(data, &mut text);
    let hash = fnv1(text.as_bytes(), FNV_OFFSET);
    let hash = fnv1(collisions.to_string().as_bytes(), hash);
    safe_encode(&hash.to_string())
}

/// `SET-HASH`, the set's name cut to 223 bytes so the whole fits in 253.
pub fn name(set: &str, hash: &str) -> String {
    let mut end = set.len().min(223);
    while !set.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}-{hash}", &set[..end])
}

/// A new revision `number` of `set`'s template: labelled with the
/// template's labels and its hash, annotated as the set is, owned by it.
pub fn new_revision(
    set: &StatefulSet,
    data: Value,
    number: i64,
    collisions: i32,
) -> ControllerRevision {
    let hash = hash(&data, collisions);
    let mut labels = set
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.clone());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name(
                set.metadata.name.as_deref().unwrap_or_default(),
                &hash,
            )),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: set.metadata.annotations.clone(),
            owner_references: Some(vec![controller_reference(set)]),
            ..ObjectMeta::default()
        },
        data: Some(RawExtension(data)),
        revision: number,
    }
}

/// Oldest first: by number, then creation, then name.
pub fn sort(revisions: &mut [ControllerRevision]) {
    revisions.sort_by(|a, b| {
        let created = |r: &ControllerRevision| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
        a.revision
            .cmp(&b.revision)
            .then_with(|| created(a).cmp(&created(b)))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

/// Whether two revisions hold the same state.
pub fn same_data(revision: &ControllerRevision, data: &Value) -> bool {
    revision.data.as_ref().map(|d| &d.0) == Some(data)
}

/// Which revision the set's current template is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// The newest (at this index): nothing changed.
    Latest(usize),
    /// An older one (at this index): a rollback, which renumbers it as the
    /// newest.
    Earlier(usize),
    /// None: a new revision is made.
    New,
}

/// Finds `data` among `revisions` (sorted oldest first).
pub fn find(revisions: &[ControllerRevision], data: &Value) -> Found {
    match revisions.iter().rposition(|r| same_data(r, data)) {
        Some(i) if i + 1 == revisions.len() => Found::Latest(i),
        Some(i) => Found::Earlier(i),
        None => Found::New,
    }
}

/// The number a new (or renumbered) revision gets.
pub fn next_number(revisions: &[ControllerRevision]) -> i64 {
    revisions.iter().map(|r| r.revision).max().unwrap_or(0) + 1
}

/// The template revision `revision` restores on `set`: its patch applied
/// as `kubectl rollout undo` applies it.
pub fn template_of(
    set: &StatefulSet,
    revision: &ControllerRevision,
) -> Result<PodTemplateSpec, serde_json::Error> {
    let mut value = serde_json::to_value(set)?;
    if let Some(data) = &revision.data {
        crate::patch::strategic_merge(&mut value, &data.0);
    }
    let restored: StatefulSet = serde_json::from_value(value)?;
    Ok(restored.spec.map(|s| s.template).unwrap_or_default())
}

/// The revisions to delete to keep `limit` that no one uses: oldest first,
/// never one in `live` (the current and update revisions, and those of
/// pods). `revisions` are sorted oldest first.
pub fn to_prune<'a>(
    revisions: &'a [ControllerRevision],
    live: &HashSet<&str>,
    limit: i32,
) -> Vec<&'a ControllerRevision> {
    let history: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| !live.contains(r.metadata.name.as_deref().unwrap_or_default()))
        .collect();
    let Ok(limit) = usize::try_from(limit) else {
        // A negative limit keeps everything, as Kubernetes does.
        return Vec::new();
    };
    let excess = history.len().saturating_sub(limit);
    history.into_iter().take(excess).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": image}]}}))
        .unwrap()
    }

    fn revision(name: &str, number: i64, image: &str) -> ControllerRevision {
        ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: Some(RawExtension(data_of(&template(image)))),
            revision: number,
        }
    }

    #[test]
    fn data_is_the_patch_kubectl_applies() {
        let data = data_of(&template("a"));
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        assert_eq!(
            data["spec"]["template"]["spec"]["containers"][0]["image"],
            "a"
        );
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {}, "serviceName": "web",
                "template": {"metadata": {"labels": {"app": "web", "extra": "x"}},
                    "spec": {"containers": [{"name": "c", "image": "b"}, {"name": "d", "image": "d"}]}}}}))
        .unwrap();
        let restored = template_of(&set, &revision("web-1", 1, "a")).unwrap();
        assert_eq!(restored, template("a"), "the template is replaced whole");
    }

    #[test]
    fn hashes_are_fnv1_in_safe_digits() {
        // Go's fnv.New32 of "a".
        assert_eq!(fnv1(b"a", FNV_OFFSET), 0x050c_5d7e);
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
        let data = data_of(&template("a"));
        let h = hash(&data, 0);
        assert_eq!(h, hash(&data, 0), "stable");
        assert_ne!(h, hash(&data, 1), "a collision changes it");
        assert_ne!(h, hash(&data_of(&template("b")), 0));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        let mut text = String::new();
        canonical(&json!({"b": 1, "a": ["<&>"]}), &mut text);
        assert_eq!(text, r#"{"a":["\u003c\u0026\u003e"],"b":1}"#);
        assert_eq!(name("web", "abc"), "web-abc");
        assert_eq!(name(&"x".repeat(300), "abc").len(), 227);
    }

    #[test]
    fn a_revision_is_labelled_annotated_and_owned() {
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u",
                "annotations": {"kubernetes.io/change-cause": "v2"}},
            "spec": {"selector": {}, "serviceName": "web",
                "template": {"metadata": {"labels": {"app": "web"}}}}}))
        .unwrap();
        let data = data_of(&set.spec.as_ref().unwrap().template);
        let r = new_revision(&set, data.clone(), 3, 0);
        let h = hash(&data, 0);
        assert_eq!(r.metadata.name, Some(format!("web-{h}")));
        let labels = r.metadata.labels.unwrap();
        assert_eq!((labels["app"].as_str(), &labels[HASH_LABEL]), ("web", &h));
        assert_eq!(
            r.metadata.annotations.unwrap()["kubernetes.io/change-cause"],
            "v2"
        );
        assert_eq!(r.metadata.owner_references.unwrap()[0].uid, "u");
        assert_eq!(r.revision, 3);
    }

    #[test]
    fn the_current_template_is_found_in_history() {
        let mut revisions = vec![
            revision("web-c", 3, "c"),
            revision("web-a", 1, "a"),
            revision("web-b", 2, "b"),
        ];
        sort(&mut revisions);
        let names: Vec<_> = revisions
            .iter()
            .map(|r| r.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["web-a", "web-b", "web-c"]);
        assert_eq!(find(&revisions, &data_of(&template("c"))), Found::Latest(2));
        assert_eq!(
            find(&revisions, &data_of(&template("a"))),
            Found::Earlier(0)
        );
        assert_eq!(find(&revisions, &data_of(&template("d"))), Found::New);
        assert_eq!(find(&[], &data_of(&template("d"))), Found::New);
        assert_eq!(next_number(&revisions), 4);
        assert_eq!(next_number(&[]), 1);
    }

    #[test]
    fn pruning_keeps_the_limit_and_everything_live() {
        let revisions: Vec<ControllerRevision> = (1..=6)
            .map(|i| revision(&format!("web-{i}"), i, &i.to_string()))
            .collect();
        let live: HashSet<&str> = ["web-1", "web-6"].into();
        let pruned: Vec<&str> = to_prune(&revisions, &live, 2)
            .iter()
            .map(|r| r.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(pruned, ["web-2", "web-3"]);
        assert!(to_prune(&revisions, &live, 10).is_empty());
        assert!(to_prune(&revisions, &live, -1).is_empty());
        assert_eq!(to_prune(&revisions, &live, 0).len(), 4);
    }
}
