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
        "Job" => vec![
            NAME,
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "CronJob" => vec![
            NAME,
            ("Schedule", "string", 0),
            ("Timezone", "string", 0),
            ("Suspend", "boolean", 0),
            ("Active", "integer", 0),
            ("Last Schedule", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "DaemonSet" => vec![
            NAME,
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "HorizontalPodAutoscaler" => vec![
            NAME,
            ("Reference", "string", 0),
            ("Targets", "string", 0),
            ("MinPods", "string", 0),
            ("MaxPods", "integer", 0),
            ("Replicas", "integer", 0),
            AGE,
        ],
        "Event" => vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        "PersistentVolume" => vec![
            NAME,
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("Reclaim Policy", "string", 0),
            ("Status", "string", 0),
            ("Claim", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Reason", "string", 0),
            AGE,
        ],
        "PersistentVolumeClaim" => vec![
            NAME,
            ("Status", "string", 0),
            ("Volume", "string", 0),
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            AGE,
        ],
        "Endpoints" => vec![NAME, ("Endpoints", "string", 0), AGE],
        "EndpointSlice" => vec![
            NAME,
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            AGE,
        ],
        "StorageClass" => vec![
            NAME,
            ("Provisioner", "string", 0),
            ("ReclaimPolicy", "string", 0),
            ("VolumeBindingMode", "string", 0),
            ("AllowVolumeExpansion", "string", 0),
            AGE,
        ],
        "ControllerRevision" => vec![
            NAME,
            ("Controller", "string", 0),
            ("Revision", "integer", 0),
            AGE,
        ],
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

/// A label selector as `kubectl` prints one (`FormatLabelSelector`):
/// requirements sorted by key, `<none>` if there are none.
fn label_selector(selector: &Value) -> String {
    let mut requirements: Vec<(String, String)> = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), format!("{k}={}", v.as_str().unwrap_or_default())))
        .collect();
    for e in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = text(&e["key"]);
        let mut values: Vec<String> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        values.sort();
        let values = values.join(",");
        let requirement = match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "Exists" => key.clone(),
            _ => format!("!{key}"),
        };
        requirements.push((key, requirement));
    }
    requirements.sort();
    or_none(
        requirements
            .into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>()
            .join(","),
    )
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

fn or_unset(s: String) -> String {
    if s.is_empty() { "<unset>".into() } else { s }
}

fn access_modes(modes: &Value) -> String {
    modes
        .as_array()
        .map(|m| {
            m.iter()
                .map(|mode| match mode.as_str().unwrap_or_default() {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    _ => "",
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// `cpu: 12%/10%` (`<unknown>` before any measurement), per metric.
fn hpa_targets(o: &Value) -> String {
    let specs = o["spec"]["metrics"].as_array().cloned().unwrap_or_default();
    if specs.is_empty() {
        if let Some(target) = o["spec"]["targetCPUUtilizationPercentage"].as_i64() {
            let current = o["status"]["currentCPUUtilizationPercentage"]
                .as_i64()
                .map_or("<unknown>".to_owned(), |c| format!("{c}%"));
            return format!("cpu: {current}/{target}%");
        }
        return "<none>".into();
    }
    let current = o["status"]["currentMetrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    specs
        .iter()
        .map(|m| {
            let resource = &m["resource"];
            let name = text(&resource["name"]);
            let target = &resource["target"];
            let measured = current
                .iter()
                .find(|c| c["resource"]["name"] == resource["name"]);
            match target["type"].as_str() {
                Some("Utilization") => {
                    let now = measured
                        .and_then(|c| c["resource"]["current"]["averageUtilization"].as_i64())
                        .map_or("<unknown>".to_owned(), |v| format!("{v}%"));
                    format!("{name}: {now}/{}%", int(&target["averageUtilization"]))
                }
                _ => {
                    let now = measured
                        .and_then(|c| c["resource"]["current"]["averageValue"].as_str())
                        .unwrap_or("<unknown>")
                        .to_owned();
                    format!("{name}: {now}/{}", text(&target["averageValue"]))
                }
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
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
        "Event" => {
            // core/v1 names, else events.k8s.io/v1's.
            let subject = if o["involvedObject"].is_object() {
                &o["involvedObject"]
            } else {
                &o["regarding"]
            };
            let last = ["lastTimestamp", "eventTime", "deprecatedLastTimestamp"]
                .iter()
                .find_map(|f| o[*f].as_str())
                .or(o["metadata"]["creationTimestamp"].as_str());
            let message = o["message"]
                .as_str()
                .or(o["note"].as_str())
                .unwrap_or_default();
            vec![
                json!(human_age(age_seconds(last))),
                json!(text(&o["type"])),
                json!(text(&o["reason"])),
                json!(format!(
                    "{}/{}",
                    text(&subject["kind"]).to_lowercase(),
                    text(&subject["name"])
                )),
                json!(message),
            ]
        }
        "Job" => {
            let condition = |kind: &str| {
                status["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == kind && c["status"] == "True")
                })
            };
            // kubectl 1.32's order: a terminal condition wins, then a
            // pending deletion, then the interim conditions.
            let state = if condition("Complete") {
                "Complete"
            } else if condition("Failed") {
                "Failed"
            } else if o["metadata"]["deletionTimestamp"].is_string() {
                "Terminating"
            } else if condition("Suspended") {
                "Suspended"
            } else if condition("FailureTarget") {
                "FailureTarget"
            } else if condition("SuccessCriteriaMet") {
                "SuccessCriteriaMet"
            } else {
                "Running"
            };
            let time = |v: &Value| {
                v.as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            };
            let duration = match (time(&status["startTime"]), time(&status["completionTime"])) {
                (Some(start), Some(end)) => human_age((end - start).num_seconds()),
                (Some(_), None) => human_age(age_seconds(status["startTime"].as_str())),
                _ => String::new(),
            };
            let succeeded = int(&status["succeeded"]);
            let completions = match spec["completions"].as_i64() {
                Some(completions) => format!("{succeeded}/{completions}"),
                // A work queue: done after one success, `parallelism` at once.
                None => match spec["parallelism"].as_i64().unwrap_or(0) {
                    p if p > 1 => format!("{succeeded}/1 of {p}"),
                    _ => format!("{succeeded}/1"),
                },
            };
            vec![
                json!(state),
                json!(completions),
                json!(duration),
                json!(age(o)),
                json!(containers(&spec["template"]["spec"], "name")),
                json!(containers(&spec["template"]["spec"], "image")),
                json!(label_selector(&spec["selector"])),
            ]
        }
        "CronJob" => {
            let job = &spec["jobTemplate"]["spec"];
            vec![
                json!(text(&spec["schedule"])),
                json!(or_none(text(&spec["timeZone"]))),
                json!(match spec["suspend"].as_bool() {
                    Some(true) => "True",
                    Some(false) => "False",
                    None => "<unset>",
                }),
                json!(status["active"].as_array().map_or(0, Vec::len)),
                json!(match status["lastScheduleTime"].as_str() {
                    Some(at) => human_age(age_seconds(Some(at))),
                    None => "<none>".to_owned(),
                }),
                json!(age(o)),
                json!(containers(&job["template"]["spec"], "name")),
                json!(containers(&job["template"]["spec"], "image")),
                json!(label_selector(&job["selector"])),
            ]
        }
        "DaemonSet" => vec![
            json!(int(&status["desiredNumberScheduled"])),
            json!(int(&status["currentNumberScheduled"])),
            json!(int(&status["numberReady"])),
            json!(int(&status["updatedNumberScheduled"])),
            json!(int(&status["numberAvailable"])),
            json!(or_none(pairs(&spec["template"]["spec"]["nodeSelector"]))),
            json!(age(o)),
            json!(containers(&spec["template"]["spec"], "name")),
            json!(containers(&spec["template"]["spec"], "image")),
            json!(pairs(&spec["selector"]["matchLabels"])),
        ],
        "HorizontalPodAutoscaler" => {
            let target = &spec["scaleTargetRef"];
            vec![
                json!(format!(
                    "{}/{}",
                    text(&target["kind"]),
                    text(&target["name"])
                )),
                json!(hpa_targets(o)),
                json!(spec["minReplicas"].as_i64().unwrap_or(1).to_string()),
                json!(int(&spec["maxReplicas"])),
                json!(int(&status["currentReplicas"])),
                json!(age(o)),
            ]
        }
        "PersistentVolume" => {
            let claim = &spec["claimRef"];
            vec![
                json!(text(&spec["capacity"]["storage"])),
                json!(access_modes(&spec["accessModes"])),
                json!(text(&spec["persistentVolumeReclaimPolicy"])),
                json!(status["phase"].as_str().unwrap_or("Pending")),
                json!(if claim.is_object() {
                    format!("{}/{}", text(&claim["namespace"]), text(&claim["name"]))
                } else {
                    String::new()
                }),
                json!(text(&spec["storageClassName"])),
                json!(or_unset(text(&spec["volumeAttributesClassName"]))),
                json!(text(&status["reason"])),
                json!(age(o)),
            ]
        }
        "PersistentVolumeClaim" => vec![
            json!(status["phase"].as_str().unwrap_or("Pending")),
            json!(text(&spec["volumeName"])),
            json!(text(&status["capacity"]["storage"])),
            json!(access_modes(&status["accessModes"])),
            json!(text(&spec["storageClassName"])),
            json!(or_unset(text(&spec["volumeAttributesClassName"]))),
            json!(age(o)),
        ],
        "Endpoints" => {
            let mut endpoints = Vec::new();
            for subset in o["subsets"].as_array().into_iter().flatten() {
                for address in subset["addresses"].as_array().into_iter().flatten() {
                    for port in subset["ports"].as_array().into_iter().flatten() {
                        endpoints.push(format!("{}:{}", text(&address["ip"]), int(&port["port"])));
                    }
                }
            }
            vec![json!(or_none(endpoints.join(","))), json!(age(o))]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| int(&p["port"]).to_string())
                .collect();
            let addresses: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .map(|a| text(&a))
                .collect();
            vec![
                json!(text(&o["addressType"])),
                json!(if ports.is_empty() {
                    "<unset>".into()
                } else {
                    ports.join(",")
                }),
                json!(if addresses.is_empty() {
                    "<unset>".into()
                } else {
                    addresses.join(",")
                }),
                json!(age(o)),
            ]
        }
        "StorageClass" => vec![
            json!(text(&o["provisioner"])),
            json!(o["reclaimPolicy"].as_str().unwrap_or("Delete")),
            json!(o["volumeBindingMode"].as_str().unwrap_or("Immediate")),
            json!(
                o["allowVolumeExpansion"]
                    .as_bool()
                    .unwrap_or(false)
                    .to_string()
            ),
            json!(age(o)),
        ],
        "ControllerRevision" => {
            let owner = o["metadata"]["ownerReferences"]
                .as_array()
                .and_then(|refs| refs.iter().find(|r| r["controller"] == json!(true)))
                .map(|r| format!("{}/{}", text(&r["kind"]).to_lowercase(), text(&r["name"])))
                .unwrap_or_else(|| "<none>".into());
            vec![json!(owner), json!(int(&o["revision"])), json!(age(o))]
        }
        _ => vec![json!(age(o))],
    }
}

fn row(kind: &str, object: &Value) -> Value {
    // Every kind's first column is its name, but an Event's.
    let mut row_cells = if columns(kind).first() == Some(&NAME) {
        let name = &object["metadata"]["name"];
        // kubectl marks the default StorageClass in its name, as Kubernetes'
        // printer does.
        let default = kind == "StorageClass"
            && object["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]
                == "true";
        if default {
            vec![json!(format!("{} (default)", text(name)))]
        } else {
            vec![json!(name)]
        }
    } else {
        Vec::new()
    };
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
    fn jobs_print_as_kubectl_prints_them() {
        let cells = |job: Value| {
            let t = table("Job", &[job], "1", None);
            t["rows"][0]["cells"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        };
        let done = cells(json!({"metadata": {"name": "pi"},
            "spec": {"completions": 5, "parallelism": 2,
                "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}},
                "template": {"spec": {"containers": [{"name": "pi", "image": "perl"}]}}},
            "status": {"succeeded": 5, "startTime": "2024-01-01T00:00:00Z", "completionTime": "2024-01-01T00:02:05Z",
                "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}}));
        assert_eq!(&done[1..4], ["Complete", "5/5", "2m5s"]);
        assert_eq!(
            &done[5..],
            ["pi", "perl", "batch.kubernetes.io/controller-uid=u1"]
        );
        let queue = cells(json!({"metadata": {"name": "q"}, "spec": {"parallelism": 3}}));
        assert_eq!(&queue[1..4], ["Running", "0/1 of 3", ""]);
        assert_eq!(queue[7], "<none>");
        let one = cells(
            json!({"metadata": {"name": "q"}, "spec": {"parallelism": 1},
            "status": {"conditions": [{"type": "Suspended", "status": "True"}]}}),
        );
        assert_eq!(&one[1..3], ["Suspended", "0/1"]);
        let failing = cells(
            json!({"metadata": {"name": "f", "deletionTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"completions": 1},
            "status": {"conditions": [{"type": "FailureTarget", "status": "True"}]}}),
        );
        assert_eq!(failing[1], "Terminating");
        let failed = cells(
            json!({"metadata": {"name": "f"}, "spec": {"completions": 1},
            "status": {"conditions": [{"type": "FailureTarget", "status": "True"}, {"type": "Failed", "status": "True"}]}}),
        );
        assert_eq!(failed[1], "Failed");
        assert_eq!(
            label_selector(&json!({"matchLabels": {"b": "2", "a": "1"},
                "matchExpressions": [{"key": "c", "operator": "In", "values": ["y", "x"]}, {"key": "a0", "operator": "DoesNotExist"}]})),
            "a=1,!a0,b=2,c in (x,y)"
        );
    }

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
            ("CronJob", json!({"metadata": {"name": "cj"}})),
            ("DaemonSet", json!({"metadata": {"name": "d"}})),
            (
                "HorizontalPodAutoscaler",
                json!({"metadata": {"name": "h"}, "spec": {"metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 10}}}]}}),
            ),
            (
                "Event",
                json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "web-1"}, "reason": "Scheduled", "type": "Normal", "message": "ok"}),
            ),
            ("PersistentVolume", json!({"metadata": {"name": "pv"}})),
            (
                "PersistentVolumeClaim",
                json!({"metadata": {"name": "pvc"}}),
            ),
            ("Endpoints", json!({"metadata": {"name": "ep"}})),
            ("EndpointSlice", json!({"metadata": {"name": "es"}})),
            ("StorageClass", json!({"metadata": {"name": "sc"}})),
            ("ControllerRevision", json!({"metadata": {"name": "cr"}})),
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
        let hpa = table(
            "HorizontalPodAutoscaler",
            &[json!({"metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 10}}}]},
            "status": {"currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12}}}]}})],
            "1",
            None,
        );
        assert_eq!(hpa["rows"][0]["cells"][1], "Deployment/web");
        assert_eq!(hpa["rows"][0]["cells"][2], "cpu: 12%/10%");
        let event = table(
            "Event",
            &[
                json!({"involvedObject": {"kind": "Pod", "name": "web-1"}, "reason": "Scheduled", "type": "Normal", "message": "ok", "metadata": {"name": "e"}}),
            ],
            "1",
            None,
        );
        assert_eq!(event["rows"][0]["cells"][3], "pod/web-1");
    }
}
