//! What the server writes into objects besides what the client sent: the
//! status a new object starts with, a Job's selector, a Secret's data, pod
//! conditions, and the `Scale` view of scalable objects.

use base64::Engine;
use serde_json::{Value, json};

use crate::object;
use crate::resources::Resource;

/// Defaults the server sets at creation.
pub(super) fn defaults_on_create(resource: &Resource, object: &mut Value) {
    match resource.plural {
        "namespaces" => {
            object["spec"]["finalizers"] = json!(["kubernetes"]);
            object["status"] = json!({"phase": "Active"});
            let name = object::name_of(object).to_owned();
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        }
        "pods" => {
            let phase = json!({"phase": "Pending", "qosClass": "BestEffort"});
            object["status"] = phase;
        }
        "deployments"
        | "replicasets"
        | "statefulsets"
        | "daemonsets"
        | "jobs"
        | "cronjobs"
        | "horizontalpodautoscalers" => {
            object["status"] = json!({});
        }
        "services" => {
            object["status"] = json!({"loadBalancer": {}});
        }
        // Until the binder says otherwise, as Kubernetes' strategies set it.
        "persistentvolumeclaims" | "persistentvolumes" => {
            object["status"] = json!({"phase": "Pending"});
        }
        _ => {}
    }
}

/// A new Job selects its own pods by its `uid`, and labels its template so
/// (unless it asks for a selector of its own with `manualSelector`).
pub(super) fn job_selector(job: &mut Value) {
    if job["spec"]["manualSelector"] == json!(true) {
        return;
    }
    let uid = job["metadata"]["uid"].clone();
    let name = job["metadata"]["name"].clone();
    job["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let labels = &mut job["spec"]["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        labels[key] = value.clone();
    }
}

/// What Kubernetes rewrites on every write: a Secret's `stringData` is
/// merged into its `data` (base64), and its type defaults to `Opaque`.
pub(super) fn normalize(resource: &Resource, object: &mut Value) {
    if resource.plural != "secrets" {
        return;
    }
    if let Some(Value::Object(strings)) =
        object.as_object_mut().and_then(|o| o.remove("stringData"))
    {
        if !object["data"].is_object() {
            object["data"] = json!({});
        }
        for (key, value) in strings {
            let text = value.as_str().unwrap_or_default();
            object["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }
    if object["type"].as_str().is_none_or(str::is_empty) {
        object["type"] = json!("Opaque");
    }
}

/// Sets a condition of `object.status.conditions`.
pub(super) fn set_condition(
    object: &mut Value,
    kind: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) {
    let mut condition =
        json!({"type": kind, "status": status, "lastTransitionTime": object::now()});
    if let Some(reason) = reason {
        condition["reason"] = json!(reason);
    }
    if let Some(message) = message {
        condition["message"] = json!(message);
    }
    let conditions = &mut object["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    if let Value::Array(list) = conditions {
        list.retain(|c| c["type"] != kind);
        list.push(condition);
    }
}

/// The `autoscaling/v1` `Scale` of a scalable object.
pub(super) fn scale_of(object: &Value) -> Value {
    let selector = object["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let meta = &object["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": object["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}
