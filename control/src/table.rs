//! Server-side printing: lists and objects answered as `meta.k8s.io/v1`
//! `Table`s, with the columns Kubernetes prints for each kind (kubectl asks
//! for them with `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`).
//! Columns of priority 1 are the ones `-o wide` adds.

use serde_json::{Value, json};

use crate::object::{age_seconds, human_age};

/// A column: its name, type, and whether only `-o wide` shows it.
type Column = (&'static str, &'static str, u8);

const NAME: Column = ("Name", "string", 0);
const AGE: Column = ("Age", "string", 0);

fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "Namespace" => vec![NAME, ("Status", "string", 0), AGE],
        "ConfigMap" => vec![NAME, ("Data", "integer", 0), AGE],
        "Secret" => vec![NAME, ("Type", "string", 0), ("Data", "integer", 0), AGE],
        "ServiceAccount" => vec![NAME, ("Secrets", "integer", 0), AGE],
        "Pod" => vec![
            NAME,
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            AGE,
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        "Service" => vec![
            NAME,
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            AGE,
            ("Selector", "string", 1),
        ],
        "Deployment" => vec![
            NAME,
            ("Ready", "string", 0),
            ("Up-to-date", "string", 0),
            ("Available", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "ReplicaSet" => vec![
            NAME,
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "StatefulSet" => vec![
            NAME,
            ("Ready", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
        ],
        "Node" => vec![
            NAME,
            ("Status", "string", 0),
            ("Roles", "string", 0),
            AGE,
            ("Version", "string", 0),
        ],
        "Lease" => vec![NAME, ("Holder", "string", 0), AGE],
        _ => vec![NAME, AGE],
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn count(v: &Value) -> usize {
    v.as_object().map_or(0, |m| m.len())
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

/// `app=web,tier=front` from a map of strings.
fn pairs(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn containers(template_spec: &Value, field: &str) -> String {
    template_spec["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| text(&c[field]))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn service_ports(spec: &Value) -> String {
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() {
        return "<none>".into();
    }
    ports
        .iter()
        .map(|p| {
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64().filter(|p| *p != 0) {
                Some(node) => format!("{}:{node}/{protocol}", int(&p["port"])),
                None => format!("{}/{protocol}", int(&p["port"])),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn pod_cells(o: &Value) -> Vec<Value> {
    let statuses = o["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|s| s["ready"] == json!(true))
        .count();
    let restarts: i64 = statuses.iter().map(|s| int(&s["restartCount"])).sum();
    let mut status = o["status"]["phase"]
        .as_str()
        .unwrap_or("Pending")
        .to_owned();
    if let Some(reason) = o["status"]["reason"].as_str() {
        status = reason.to_owned();
    }
    for s in &statuses {
        if let Some(reason) = s["state"]["waiting"]["reason"].as_str() {
            status = reason.to_owned();
        } else if let Some(reason) = s["state"]["terminated"]["reason"].as_str() {
            status = reason.to_owned();
        }
    }
    if o["metadata"]["deletionTimestamp"].is_string() {
        status = "Terminating".into();
    }
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts.to_string()),
        json!(age(o)),
        json!(or_none(text(&o["status"]["podIP"]))),
        json!(or_none(text(&o["spec"]["nodeName"]))),
        json!("<none>"),
        json!("<none>"),
    ]
}

fn age(o: &Value) -> String {
    human_age(age_seconds(o["metadata"]["creationTimestamp"].as_str()))
}

/// The cells after the name, in [`columns`] order.
fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let (spec, status) = (&o["spec"], &o["status"]);
    match kind {
        "Namespace" => vec![
            json!(status["phase"].as_str().unwrap_or("Active")),
            json!(age(o)),
        ],
        "ConfigMap" => vec![
            json!(count(&o["data"]) + count(&o["binaryData"])),
            json!(age(o)),
        ],
        "Secret" => vec![
            json!(o["type"].as_str().unwrap_or("Opaque")),
            json!(count(&o["data"])),
            json!(age(o)),
        ],
        "ServiceAccount" => vec![
            json!(o["secrets"].as_array().map_or(0, Vec::len)),
            json!(age(o)),
        ],
        "Pod" => pod_cells(o),
        "Service" => {
            let external = status["loadBalancer"]["ingress"]
                .as_array()
                .filter(|a| !a.is_empty())
                .map(|a| {
                    a.iter()
                        .map(|i| text(&i["ip"]))
                        .collect::<Vec<_>>()
                        .join(",")
                });
            let kind = spec["type"].as_str().unwrap_or("ClusterIP");
            let external = external.unwrap_or_else(|| {
                if kind == "LoadBalancer" {
                    "<pending>"
                } else {
                    "<none>"
                }
                .into()
            });
            vec![
                json!(kind),
                json!(or_none(text(&spec["clusterIP"]))),
                json!(external),
                json!(service_ports(spec)),
                json!(age(o)),
                json!(or_none(pairs(&spec["selector"]))),
            ]
        }
        "Deployment" => vec![
            json!(format!(
                "{}/{}",
                int(&status["readyReplicas"]),
                int(&spec["replicas"])
            )),
            json!(int(&status["updatedReplicas"])),
            json!(int(&status["availableReplicas"])),
            json!(age(o)),
            json!(containers(&spec["template"]["spec"], "name")),
            json!(containers(&spec["template"]["spec"], "image")),
            json!(pairs(&spec["selector"]["matchLabels"])),
        ],
        "ReplicaSet" => vec![
            json!(int(&spec["replicas"])),
            json!(int(&status["replicas"])),
            json!(int(&status["readyReplicas"])),
            json!(age(o)),
            json!(containers(&spec["template"]["spec"], "name")),
            json!(containers(&spec["template"]["spec"], "image")),
            json!(pairs(&spec["selector"]["matchLabels"])),
        ],
        "StatefulSet" => vec![
            json!(format!(
                "{}/{}",
                int(&status["readyReplicas"]),
                int(&spec["replicas"])
            )),
            json!(age(o)),
            json!(containers(&spec["template"]["spec"], "name")),
            json!(containers(&spec["template"]["spec"], "image")),
        ],
        "Node" => {
            let ready = status["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map_or("Unknown", |c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                });
            vec![
                json!(ready),
                json!("<none>"),
                json!(age(o)),
                json!(text(&status["nodeInfo"]["kubeletVersion"])),
            ]
        }
        "Lease" => vec![json!(or_none(text(&spec["holderIdentity"]))), json!(age(o))],
        _ => vec![json!(age(o))],
    }
}

fn row(kind: &str, object: &Value) -> Value {
    let mut row_cells = vec![json!(object["metadata"]["name"])];
    row_cells.extend(cells(kind, object));
    json!({
        "cells": row_cells,
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object["metadata"],
        },
    })
}

/// A `Table` of `objects` of `kind`, at `resource_version` (with the list's
/// `continue` token, if any).
pub fn table(kind: &str, objects: &[Value], resource_version: &str, next: Option<&str>) -> Value {
    let definitions: Vec<Value> = columns(kind)
        .into_iter()
        .map(|(name, kind, priority)| {
            json!({
                "name": name,
                "type": kind,
                "format": if name == "Name" { "name" } else { "" },
                "description": "",
                "priority": priority,
            })
        })
        .collect();
    let mut metadata = json!({ "resourceVersion": resource_version });
    if let Some(token) = next {
        metadata["continue"] = json!(token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": objects.iter().map(|o| row(kind, o)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_a_cell_per_column() {
        let objects = [
            (
                "Pod",
                json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}),
            ),
            (
                "Service",
                json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.43.0.10", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}}),
            ),
            (
                "Deployment",
                json!({"metadata": {"name": "d"}, "spec": {"replicas": 2}}),
            ),
            (
                "ConfigMap",
                json!({"metadata": {"name": "c"}, "data": {"a": "1"}}),
            ),
            ("Namespace", json!({"metadata": {"name": "n"}})),
            ("Secret", json!({"metadata": {"name": "s"}})),
            ("ReplicaSet", json!({"metadata": {"name": "r"}})),
            ("StatefulSet", json!({"metadata": {"name": "s"}})),
            ("Node", json!({"metadata": {"name": "n"}})),
            ("Lease", json!({"metadata": {"name": "l"}})),
            ("ServiceAccount", json!({"metadata": {"name": "sa"}})),
            ("Job", json!({"metadata": {"name": "j"}})),
        ];
        for (kind, object) in objects {
            let t = table(kind, std::slice::from_ref(&object), "7", None);
            let width = t["columnDefinitions"].as_array().unwrap().len();
            assert_eq!(
                t["rows"][0]["cells"].as_array().unwrap().len(),
                width,
                "{kind}"
            );
        }
        let svc = table(
            "Service",
            &[
                json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.43.0.10", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}}),
            ],
            "1",
            None,
        );
        assert_eq!(svc["rows"][0]["cells"][4], "80:30080/TCP");
    }
}
