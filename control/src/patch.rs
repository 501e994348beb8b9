//! The three patch types kubectl sends: JSON patch (RFC 6902), JSON merge
//! patch (RFC 7386) and Kubernetes' strategic merge patch, which merges
//! lists of objects by their merge key (containers by `name`, ports by
//! `containerPort` or `port`, volume mounts by `mountPath`, …) instead of
//! replacing them, and understands the `$patch`, `$setElementOrder` and
//! `$deleteFromPrimitiveList` directives.

use serde_json::{Map, Value};

use crate::status::ApiError;

/// The patch types, by their `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            _ => None,
        }
    }
}

/// Applies `body` (a patch of `kind`) to `target`.
pub fn apply(kind: PatchType, target: &mut Value, body: &[u8]) -> Result<(), ApiError> {
    let bad = |e: serde_json::Error| ApiError::bad_request(format!("invalid patch body: {e}"));
    match kind {
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body).map_err(bad)?;
            json_patch::patch(target, &patch)
                .map_err(|e| ApiError::invalid_patch(format!("the JSON patch failed: {e}")))
        }
        PatchType::Merge => {
            let patch: Value = serde_json::from_slice(body).map_err(bad)?;
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(target, &patch);
            Ok(())
        }
        PatchType::Strategic => {
            let patch: Value = serde_json::from_slice(body).map_err(bad)?;
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            }
            strategic_merge(target, &patch);
            Ok(())
        }
    }
}

/// The merge key of list field `field` whose items look like `sample`, if
/// Kubernetes merges that list by key.
pub fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        "ports" => {
            // Container ports merge by containerPort, service ports by port.
            if sample.is_some_and(|s| s.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Lists of scalars that Kubernetes merges as sets.
fn merges_as_set(field: &str) -> bool {
    field == "finalizers"
}

/// A strategic merge of `patch` into `target`.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        replacement.remove("$patch");
        *target = Value::Object(replacement);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else {
        return;
    };
    for (key, value) in patch {
        if key == "$patch" || key.starts_with("$setElementOrder/") || key == "$retainKeys" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (map.get_mut(field), value.as_array())
            {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Array(items) => {
                let sample = items.iter().find(|i| i.is_object());
                match (merge_key(key, sample), map.get_mut(key)) {
                    (Some(merge), Some(Value::Array(existing))) => {
                        merge_list(existing, items, merge)
                    }
                    (None, Some(Value::Array(existing))) if merges_as_set(key) => {
                        for item in items {
                            if !existing.contains(item) {
                                existing.push(item.clone());
                            }
                        }
                    }
                    _ => {
                        let cleaned: Vec<Value> = items
                            .iter()
                            .filter(|i| i.get("$patch").is_none())
                            .cloned()
                            .collect();
                        map.insert(key.clone(), Value::Array(cleaned));
                    }
                }
            }
            Value::Object(_) => {
                let slot = map.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(slot, value);
            }
            scalar => {
                map.insert(key.clone(), scalar.clone());
            }
        }
    }
}

fn merge_list(existing: &mut Vec<Value>, patch: &[Value], key: &str) {
    for item in patch {
        let id = item.get(key);
        let at = id.and_then(|id| existing.iter().position(|e| e.get(key) == Some(id)));
        let directive = item.get("$patch").and_then(Value::as_str);
        match (at, directive) {
            (Some(i), Some("delete")) => {
                existing.remove(i);
            }
            (None, Some("delete")) => {}
            (Some(i), Some("replace")) => {
                let mut replacement = item.clone();
                if let Value::Object(m) = &mut replacement {
                    m.remove("$patch");
                }
                existing[i] = replacement;
            }
            (Some(i), _) => strategic_merge(&mut existing[i], item),
            (None, _) => {
                let mut added = Value::Null;
                strategic_merge(&mut added, item);
                existing.push(added);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
               "spec": {"replicas": 1, "template": {"spec": {"containers": [
                   {"name": "nginx", "image": "nginx:1.25", "ports": [{"containerPort": 80}],
                    "env": [{"name": "A", "value": "1"}]},
                   {"name": "sidecar", "image": "busybox"}]}}}})
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut d = deployment();
        strategic_merge(
            &mut d,
            &json!({"spec": {"template": {"spec": {"containers": [
                {"name": "nginx", "image": "nginx:1.27", "env": [{"name": "B", "value": "2"}]}]}}}}),
        );
        let containers = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().unwrap().len(), 2, "the sidecar stays");
        assert_eq!(containers[0]["image"], "nginx:1.27");
        assert_eq!(containers[0]["ports"][0]["containerPort"], 80);
        assert_eq!(containers[0]["env"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn strategic_merge_directives() {
        let mut d = deployment();
        strategic_merge(
            &mut d,
            &json!({"metadata": {"labels": {"app": null, "tier": "front"}, "finalizers": ["b"]},
                    "spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}}),
        );
        assert_eq!(d["metadata"]["labels"], json!({"tier": "front"}));
        assert_eq!(d["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        strategic_merge(
            &mut d,
            &json!({"$deleteFromPrimitiveList/finalizers": ["a"], "metadata": {}}),
        );
        strategic_merge(
            &mut d,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(d["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn the_three_patch_types_by_content_type() {
        let mut d = deployment();
        let json_patch = br#"[{"op":"replace","path":"/spec/replicas","value":3}]"#;
        apply(PatchType::Json, &mut d, json_patch).unwrap();
        assert_eq!(d["spec"]["replicas"], 3);
        apply(PatchType::Merge, &mut d, br#"{"spec":{"replicas":4}}"#).unwrap();
        assert_eq!(d["spec"]["replicas"], 4);
        // A merge patch replaces lists whole.
        apply(
            PatchType::Merge,
            &mut d,
            br#"{"spec":{"template":{"spec":{"containers":[{"name":"only"}]}}}}"#,
        )
        .unwrap();
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert!(
            apply(
                PatchType::Json,
                &mut d,
                br#"[{"op":"remove","path":"/nope"}]"#
            )
            .is_err()
        );
        assert!(apply(PatchType::Merge, &mut d, b"[1]").is_err());
        assert!(apply(PatchType::Strategic, &mut d, b"{").is_err());
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json; charset=utf-8"),
            Some(PatchType::Strategic)
        );
    }
}

/// Decoders fed garbage and near-misses: errors, never panics.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::resources::RESOURCES;
    use crate::selector::{FieldSelector, LabelSelector};
    use serde_json::json;

    /// A seeded xorshift generator: the same inputs on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const SEEDS: &[&[u8]] = &[
        br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","labels":{"a":"b"}},"spec":{"replicas":2,"template":{"spec":{"containers":[{"name":"c","image":"i","ports":[{"containerPort":80}]}]}}}}"#,
        br#"[{"op":"replace","path":"/spec/replicas","value":3},{"op":"remove","path":"/metadata/labels/a"}]"#,
        br#"{"spec":{"template":{"spec":{"containers":[{"name":"c","$patch":"delete"}]}}},"$setElementOrder/x":[1]}"#,
        br#"{"metadata":{"$deleteFromPrimitiveList/finalizers":["a"],"finalizers":null}}"#,
    ];
    const ALPHABET: &[u8] = br#"{}[]:,"\0$/-_.a1 null true"#;

    fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
        let mut bytes = seed.to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(3) {
                0 if at < bytes.len() => {
                    bytes.remove(at);
                }
                1 => bytes.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
                _ => bytes.truncate(at),
            }
        }
        bytes
    }

    #[test]
    fn bodies_patches_and_selectors_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let target = json!({"metadata": {"name": "web", "finalizers": ["a"]}, "spec": {"replicas": 1,
            "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        for round in 0..3000 {
            let seed = SEEDS[round % SEEDS.len()];
            let input = if round % 7 == 0 {
                (0..rng.below(64)).map(|_| rng.next() as u8).collect()
            } else {
                mutate(&mut rng, seed)
            };
            let resource = &RESOURCES[rng.below(RESOURCES.len())];
            if let Ok(mut object) = crate::object::decode(resource, &input) {
                drop(crate::object::prepare_create(
                    resource,
                    &mut object,
                    Some("default"),
                ));
                drop(crate::openapi::OpenApi::get().check(resource, &object));
                crate::defaults::apply(resource, &mut object);
                drop(crate::validation::check(resource, &object));
            }
            for kind in [PatchType::Json, PatchType::Merge, PatchType::Strategic] {
                drop(apply(kind, &mut target.clone(), &input));
            }
            let text = String::from_utf8_lossy(&input);
            drop(LabelSelector::parse(&text));
            drop(FieldSelector::parse(&text));
        }
    }
}
