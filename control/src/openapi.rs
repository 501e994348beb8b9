//! OpenAPI v3 documents and schema-checked request bodies.
//!
//! The schemas are `k8s-openapi`'s (its `JsonSchema` implementations carry
//! Kubernetes' own definition names and descriptions), gathered once per
//! group version into the documents `/openapi/v3/…` serves. kubectl reads
//! them for `kubectl explain`, and to learn that every write accepts
//! `fieldValidation`, which makes it leave validation to the server; the
//! same schemas then check request bodies: wrong types are refused, unknown
//! fields refused (`Strict`), warned about (`Warn`) or dropped (`Ignore`).

use std::collections::HashMap;
use std::sync::OnceLock;

use k8s_openapi::api;
use schemars::r#gen::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::resources::{RESOURCES, Resource};

const SCHEMA_PREFIX: &str = "#/components/schemas/";

/// Adds the schema of `resource`'s kind (and every schema it refers to) to
/// `generator`; false if Keelson has no schema for it.
fn add_kind(resource: &Resource, generator: &mut SchemaGenerator) -> bool {
    macro_rules! kinds {
        ($($group:literal $version:literal $kind:literal => $ty:ty,)*) => {
            match (resource.group, resource.version, resource.kind) {
                $(($group, $version, $kind) => {
                    generator.subschema_for::<$ty>();
                    true
                })*
                _ => false,
            }
        };
    }
    kinds! {
        "" "v1" "Namespace" => api::core::v1::Namespace,
        "" "v1" "Pod" => api::core::v1::Pod,
        "" "v1" "Service" => api::core::v1::Service,
        "" "v1" "Endpoints" => api::core::v1::Endpoints,
        "" "v1" "ConfigMap" => api::core::v1::ConfigMap,
        "" "v1" "Secret" => api::core::v1::Secret,
        "" "v1" "Node" => api::core::v1::Node,
        "" "v1" "Event" => api::core::v1::Event,
        "" "v1" "ServiceAccount" => api::core::v1::ServiceAccount,
        "" "v1" "PersistentVolume" => api::core::v1::PersistentVolume,
        "" "v1" "PersistentVolumeClaim" => api::core::v1::PersistentVolumeClaim,
        "apps" "v1" "Deployment" => api::apps::v1::Deployment,
        "apps" "v1" "ReplicaSet" => api::apps::v1::ReplicaSet,
        "apps" "v1" "StatefulSet" => api::apps::v1::StatefulSet,
        "apps" "v1" "DaemonSet" => api::apps::v1::DaemonSet,
        "apps" "v1" "ControllerRevision" => api::apps::v1::ControllerRevision,
        "batch" "v1" "Job" => api::batch::v1::Job,
        "batch" "v1" "CronJob" => api::batch::v1::CronJob,
        "autoscaling" "v1" "HorizontalPodAutoscaler" => api::autoscaling::v1::HorizontalPodAutoscaler,
        "autoscaling" "v2" "HorizontalPodAutoscaler" => api::autoscaling::v2::HorizontalPodAutoscaler,
        "coordination.k8s.io" "v1" "Lease" => api::coordination::v1::Lease,
        "discovery.k8s.io" "v1" "EndpointSlice" => api::discovery::v1::EndpointSlice,
        "events.k8s.io" "v1" "Event" => api::events::v1::Event,
        "storage.k8s.io" "v1" "StorageClass" => api::storage::v1::StorageClass,
    }
}

/// `io.k8s.api.core.v1.Pod`, `io.k8s.api.apps.v1.Deployment`, …: the
/// definition names Kubernetes (and `k8s-openapi`) give the kinds.
fn definition_name(resource: &Resource) -> String {
    let group = match resource.group {
        "" => "core",
        other => other.split('.').next().unwrap_or(other),
    };
    format!("io.k8s.api.{group}.{}.{}", resource.version, resource.kind)
}

/// Every schema, and each served group version's document.
#[derive(Debug)]
pub struct OpenApi {
    definitions: Map<String, Value>,
    /// `api/v1`, `apis/apps/v1`, … → (document, its hash).
    documents: HashMap<String, (Value, String)>,
}

/// Marks the lists strategic merge patches merge by key, as Kubernetes'
/// OpenAPI documents do (`x-kubernetes-patch-merge-key`): kubectl's apply
/// reads these to compute its patches, and without them replaces the lists
/// whole (and every apply would count as a change).
fn patch_metadata(definition: &str, schema: &mut Value) {
    let Some(Value::Object(properties)) = schema.get_mut("properties") else {
        return;
    };
    for (field, property) in properties.iter_mut() {
        if property["type"] != "array" {
            continue;
        }
        let key = match field.as_str() {
            "ports"
                if definition.ends_with(".Container")
                    || definition.ends_with(".EphemeralContainer") =>
            {
                Some("containerPort")
            }
            "ports" if definition.ends_with(".ServiceSpec") => Some("port"),
            "ports" => continue,
            "conditions" if !definition.ends_with("Status") => continue,
            "finalizers" if definition.ends_with(".ObjectMeta") => None,
            "finalizers" => continue,
            other => match crate::patch::merge_key(other, None) {
                Some(key) => Some(key),
                None => continue,
            },
        };
        property["x-kubernetes-patch-strategy"] = json!("merge");
        if let Some(key) = key {
            property["x-kubernetes-patch-merge-key"] = json!(key);
        }
    }
}

fn group_version_path(resource: &Resource) -> String {
    if resource.group.is_empty() {
        format!("api/{}", resource.version)
    } else {
        format!("apis/{}/{}", resource.group, resource.version)
    }
}

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(resource: &Resource, action: &str, schema: &str, body: bool) -> Value {
    let reference = json!({"$ref": format!("{SCHEMA_PREFIX}{schema}")});
    let mut parameters = vec![query(
        "pretty",
        "If 'true', then the output is pretty printed.",
    )];
    if matches!(action, "post" | "put" | "patch") {
        parameters.push(query(
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
        ));
        parameters.push(query(
            "fieldManager",
            "A name associated with the actor or entity that is making these changes.",
        ));
        parameters.push(query(
            "fieldValidation",
            "How the server handles fields of the request body that the schema does not know: Ignore, Warn or Strict.",
        ));
    }
    let mut op = json!({
        "description": format!("{action} {}", resource.kind),
        "operationId": format!("{action}{}", resource.kind),
        "parameters": parameters,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": resource.group, "version": resource.version, "kind": resource.kind},
    });
    if body {
        let content_type = if action == "patch" {
            "application/strategic-merge-patch+json"
        } else {
            "application/json"
        };
        op["requestBody"] =
            json!({"content": {content_type: {"schema": reference}}, "required": true});
    }
    op
}

impl OpenApi {
    fn build() -> Self {
        let mut settings = SchemaSettings::openapi3();
        settings.definitions_path = SCHEMA_PREFIX.to_owned();
        let mut generator = settings.into_generator();
        let mut kinds = Vec::new();
        for resource in RESOURCES {
            if add_kind(resource, &mut generator) {
                kinds.push((resource, definition_name(resource)));
            }
        }
        let mut definitions: Map<String, Value> = generator
            .take_definitions()
            .into_iter()
            .filter_map(|(name, schema)| serde_json::to_value(schema).ok().map(|s| (name, s)))
            .collect();
        for (definition, schema) in definitions.iter_mut() {
            patch_metadata(definition, schema);
        }
        for (resource, name) in &kinds {
            if let Some(Value::Object(schema)) = definitions.get_mut(name) {
                schema.insert(
                    "x-kubernetes-group-version-kind".into(),
                    json!([{"group": resource.group, "version": resource.version, "kind": resource.kind}]),
                );
            }
        }
        let mut paths: HashMap<String, Map<String, Value>> = HashMap::new();
        for (resource, name) in &kinds {
            let base = format!("/{}", group_version_path(resource));
            let collection = if resource.namespaced {
                format!("{base}/namespaces/{{namespace}}/{}", resource.plural)
            } else {
                format!("{base}/{}", resource.plural)
            };
            let entry = paths.entry(group_version_path(resource)).or_default();
            entry.insert(
                collection.clone(),
                json!({"get": operation(resource, "list", name, false), "post": operation(resource, "post", name, true)}),
            );
            entry.insert(
                format!("{collection}/{{name}}"),
                json!({
                    "get": operation(resource, "get", name, false),
                    "put": operation(resource, "put", name, true),
                    "patch": operation(resource, "patch", name, true),
                    "delete": operation(resource, "delete", name, false),
                }),
            );
        }
        let documents = paths
            .into_iter()
            .map(|(group_version, paths)| {
                let document = json!({
                    "openapi": "3.0.0",
                    "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::discovery::KUBE_MINOR)},
                    "paths": paths,
                    "components": {"schemas": definitions},
                });
                let hash = Sha256::digest(document.to_string().as_bytes());
                let hash: String = hash.iter().take(16).map(|b| format!("{b:02X}")).collect();
                (group_version, (document, hash))
            })
            .collect();
        OpenApi {
            definitions,
            documents,
        }
    }

    /// The documents, built once.
    pub fn get() -> &'static OpenApi {
        static OPENAPI: OnceLock<OpenApi> = OnceLock::new();
        OPENAPI.get_or_init(Self::build)
    }

    /// `GET /openapi/v3`: where each group version's document is.
    pub fn root(&self) -> Value {
        let mut paths = Map::new();
        for (group_version, (_, hash)) in &self.documents {
            paths.insert(
                group_version.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{group_version}?hash={hash}")}),
            );
        }
        json!({"paths": paths})
    }

    /// `GET /openapi/v3/api/v1`, `/openapi/v3/apis/apps/v1`, …
    pub fn document(&self, group_version: &str) -> Option<&Value> {
        self.documents
            .get(group_version)
            .map(|(document, _)| document)
    }

    /// The properties of definition `name`, if it is one of the served
    /// kinds' (or of what they refer to).
    pub fn properties(&self, name: &str) -> Option<&Map<String, Value>> {
        self.definitions.get(name)?.get("properties")?.as_object()
    }

    /// Checks `object` against `resource`'s schema: a value of the wrong type
    /// is an error; fields the schema does not know are returned (as paths).
    pub fn check(&self, resource: &Resource, object: &Value) -> Result<Vec<String>, String> {
        let mut unknown = Vec::new();
        let name = definition_name(resource);
        if let Some(schema) = self.definitions.get(&name) {
            self.walk(schema, object, "", &name, &mut unknown)?;
        }
        Ok(unknown)
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> (&'a Value, Option<&'a str>) {
        match schema["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix(SCHEMA_PREFIX))
        {
            Some(name) => (
                self.definitions.get(name).unwrap_or(&Value::Null),
                Some(name),
            ),
            None => (schema, None),
        }
    }

    fn walk(
        &self,
        schema: &Value,
        value: &Value,
        path: &str,
        owner: &str,
        unknown: &mut Vec<String>,
    ) -> Result<(), String> {
        let (schema, named) = self.resolve(schema);
        // `allOf: [$ref]` wraps a reference that carries a description.
        if let Some(inner) = schema["allOf"].as_array().and_then(|a| a.first()) {
            return self.walk(inner, value, path, owner, unknown);
        }
        let owner = named.unwrap_or(owner);
        if value.is_null() || schema.get("x-kubernetes-int-or-string").is_some() {
            return Ok(());
        }
        let short = |name: &str| name.rsplit('.').next().unwrap_or(name).to_owned();
        let mismatch = |expected: &str| {
            let found = match value {
                Value::String(_) => "string",
                Value::Number(_) => "number",
                Value::Bool(_) => "bool",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
                Value::Null => "null",
            };
            Err(format!(
                "json: cannot unmarshal {found} into Go struct field {}{} of type {expected}",
                short(owner),
                if path.is_empty() {
                    String::new()
                } else {
                    format!(".{path}")
                }
            ))
        };
        match schema["type"].as_str() {
            Some("object") => {
                let Value::Object(fields) = value else {
                    return mismatch(&named.map_or("map[string]interface {}".to_owned(), |n| {
                        format!("v1.{}", short(n))
                    }));
                };
                let properties = schema["properties"].as_object();
                let additional = schema.get("additionalProperties").filter(|a| a.is_object());
                for (key, child) in fields {
                    let child_path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    match (properties.and_then(|p| p.get(key)), additional) {
                        (Some(property), _) => {
                            self.walk(property, child, &child_path, owner, unknown)?
                        }
                        (None, Some(additional)) => {
                            self.walk(additional, child, &child_path, owner, unknown)?
                        }
                        // A free-form object (no properties declared) takes anything.
                        (None, None) if properties.is_none_or(Map::is_empty) => {}
                        (None, None) => unknown.push(child_path),
                    }
                }
                Ok(())
            }
            Some("array") => {
                let Value::Array(items) = value else {
                    return mismatch("[]");
                };
                for (i, item) in items.iter().enumerate() {
                    self.walk(
                        &schema["items"],
                        item,
                        &format!("{path}[{i}]"),
                        owner,
                        unknown,
                    )?;
                }
                Ok(())
            }
            // A quantity may be written as a number too (`cpu: 1`).
            Some("string")
                if named.is_some_and(|n| n.ends_with(".Quantity")) && value.is_number() =>
            {
                Ok(())
            }
            Some("string") if !value.is_string() => mismatch("string"),
            Some("integer") if !(value.is_i64() || value.is_u64()) => {
                mismatch(schema["format"].as_str().unwrap_or("int64"))
            }
            Some("number") if !value.is_number() => mismatch("float64"),
            Some("boolean") if !value.is_boolean() => mismatch("bool"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn documents_declare_field_validation_on_patch() {
        let openapi = OpenApi::get();
        let apps = openapi.document("apis/apps/v1").unwrap();
        let path =
            &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            path["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(
            path["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        let schema = &apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            schema["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(
            schema["description"]
                .as_str()
                .unwrap()
                .contains("Deployment")
        );
        let schemas = &apps["components"]["schemas"];
        let pod_spec = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"];
        assert_eq!(
            pod_spec["containers"]["x-kubernetes-patch-merge-key"],
            "name"
        );
        let container = &schemas["io.k8s.api.core.v1.Container"]["properties"];
        assert_eq!(
            container["ports"]["x-kubernetes-patch-merge-key"],
            "containerPort"
        );
        assert!(
            openapi.root()["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/api/v1?hash=")
        );
    }

    #[test]
    fn bodies_are_checked_against_the_schema() {
        let openapi = OpenApi::get();
        let deploy = find("apps", "v1", "deployments").unwrap();
        let good = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"a": "b"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "c", "image": "nginx",
                         "ports": [{"containerPort": 80}], "resources": {"limits": {"cpu": 1, "memory": "64Mi"}}}]}},
                     "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}}}});
        assert_eq!(openapi.check(deploy, &good).unwrap(), Vec::<String>::new());

        let mut typo = good.clone();
        typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = json!("Always");
        typo["spec"]["replica"] = json!(1);
        let unknown = openapi.check(deploy, &typo).unwrap();
        assert_eq!(
            unknown,
            [
                "spec.replica",
                "spec.template.spec.containers[0].imagePullPolice"
            ]
        );

        let mut wrong = good;
        wrong["spec"]["replicas"] = json!("three");
        let error = openapi.check(deploy, &wrong).unwrap_err();
        assert_eq!(
            error,
            "json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"
        );
    }
}
