//! Checks beyond the schema, with Kubernetes' field paths and wording:
//! required fields, selectors that match their templates, the restart
//! policies a Job's pods may have, and fields that may not change.

use serde_json::Value;

use crate::object::is_dns_label;
use crate::resources::Resource;
use crate::status::Cause;

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn containers(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let list = spec["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if list.is_empty() {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    let mut seen = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let at = format!("{path}.containers[{i}]");
        let name = text(&c["name"]);
        if name.is_empty() {
            causes.push(Cause::required(format!("{at}.name")));
        } else if !is_dns_label(name) {
            causes.push(Cause::invalid(format!("{at}.name"), name, "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"));
        } else if seen.contains(&name) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                message: format!("Duplicate value: \"{name}\""),
                field: format!("{at}.name"),
            });
        }
        seen.push(name);
        if text(&c["image"]).is_empty() {
            causes.push(Cause::required(format!("{at}.image")));
        }
    }
}

/// `app=web` as Kubernetes prints a label map in messages.
fn go_map(labels: &Value) -> String {
    let pairs: Vec<String> = labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("\"{k}\":\"{}\"", text(v)))
                .collect()
        })
        .unwrap_or_default();
    format!("map[string]string{{{}}}", pairs.join(", "))
}

/// A workload's selector must be given and select its own template.
fn selector_matches_template(spec: &Value, causes: &mut Vec<Cause>) {
    let selector = &spec["selector"];
    let match_labels = selector["matchLabels"].as_object();
    let expressions = selector["matchExpressions"]
        .as_array()
        .is_some_and(|e| !e.is_empty());
    if match_labels.is_none_or(|m| m.is_empty()) && !expressions {
        causes.push(Cause::required("spec.selector"));
        return;
    }
    let labels = &spec["template"]["metadata"]["labels"];
    let selects = match_labels
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    if !selects {
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            &go_map(labels),
            "`selector` does not match template `labels`",
        ));
    }
}

/// Checks `object` of `resource` as written.
pub fn check(resource: &Resource, object: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &object["spec"];
    match (resource.group, resource.kind) {
        ("", "Pod") => containers(spec, "spec", &mut causes),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            selector_matches_template(spec, &mut causes);
            containers(&spec["template"]["spec"], "spec.template.spec", &mut causes);
            if spec["replicas"].as_i64().is_some_and(|r| r < 0) {
                causes.push(Cause::invalid(
                    "spec.replicas",
                    &spec["replicas"].to_string(),
                    "must be greater than or equal to 0",
                ));
            }
        }
        ("batch", "Job") => {
            containers(&spec["template"]["spec"], "spec.template.spec", &mut causes);
            let policy = text(&spec["template"]["spec"]["restartPolicy"]);
            if !matches!(policy, "OnFailure" | "Never") {
                causes.push(Cause {
                    reason: "FieldValueNotSupported",
                    message: format!("Unsupported value: \"{policy}\": supported values: \"OnFailure\", \"Never\""),
                    field: "spec.template.spec.restartPolicy".into(),
                });
            }
        }
        ("batch", "CronJob") => {
            let schedule = text(&spec["schedule"]);
            if schedule.is_empty() {
                causes.push(Cause::required("spec.schedule"));
            } else if schedule.contains("TZ") {
                causes.push(Cause::invalid(
                    "spec.schedule",
                    schedule,
                    "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
                ));
            } else if let Err(error) =
                schedule.parse::<crate::controllers::cronjob::schedule::Schedule>()
            {
                causes.push(Cause::invalid(
                    "spec.schedule",
                    schedule,
                    &error.to_string(),
                ));
            }
            let policy = spec["concurrencyPolicy"].as_str().unwrap_or("Allow");
            if !matches!(policy, "Allow" | "Forbid" | "Replace") {
                causes.push(Cause {
                    reason: "FieldValueNotSupported",
                    message: format!("Unsupported value: \"{policy}\": supported values: \"Allow\", \"Forbid\", \"Replace\""),
                    field: "spec.concurrencyPolicy".into(),
                });
            }
            for field in [
                "startingDeadlineSeconds",
                "successfulJobsHistoryLimit",
                "failedJobsHistoryLimit",
            ] {
                if spec[field].as_i64().is_some_and(|n| n < 0) {
                    causes.push(Cause::invalid(
                        format!("spec.{field}"),
                        &spec[field].to_string(),
                        "must be greater than or equal to 0",
                    ));
                }
            }
            let pod = &spec["jobTemplate"]["spec"]["template"]["spec"];
            containers(pod, "spec.jobTemplate.spec.template.spec", &mut causes);
            let restart = text(&pod["restartPolicy"]);
            if !matches!(restart, "OnFailure" | "Never") {
                causes.push(Cause {
                    reason: "FieldValueNotSupported",
                    message: format!("Unsupported value: \"{restart}\": supported values: \"OnFailure\", \"Never\""),
                    field: "spec.jobTemplate.spec.template.spec.restartPolicy".into(),
                });
            }
        }
        ("", "Service") => {
            let headless = spec["clusterIP"] == "None";
            let kind = text(&spec["type"]);
            if kind != "ExternalName"
                && !headless
                && spec["ports"].as_array().is_none_or(Vec::is_empty)
            {
                causes.push(Cause::required("spec.ports"));
            }
            if !matches!(
                kind,
                "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
            ) {
                causes.push(Cause {
                    reason: "FieldValueNotSupported",
                    message: format!("Unsupported value: \"{kind}\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
                    field: "spec.type".into(),
                });
            }
            if let Some(ports) = spec["ports"].as_array() {
                for (i, p) in ports.iter().enumerate() {
                    let port = p["port"].as_i64().unwrap_or(0);
                    if !(1..=65535).contains(&port) {
                        causes.push(Cause::invalid(
                            format!("spec.ports[{i}].port"),
                            &port.to_string(),
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                    if ports.len() > 1 && text(&p["name"]).is_empty() {
                        causes.push(Cause::required(format!("spec.ports[{i}].name")));
                    }
                }
            }
        }
        _ => {}
    }
    causes
}

/// Fields of `resource` that may not change from `current` to `updated`.
pub fn check_update(resource: &Resource, current: &Value, updated: &Value) -> Vec<Cause> {
    let immutable: &[&str] = match (resource.group, resource.kind) {
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => &["selector"],
        ("batch", "Job") => &["selector", "completionMode"],
        ("", "Service") => &["clusterIP"],
        ("", "PersistentVolumeClaim") => &["volumeName", "storageClassName"],
        _ => &[],
    };
    let mut causes = Vec::new();
    for field in immutable {
        let (old, new) = (&current["spec"][*field], &updated["spec"][*field]);
        // An unset value is defaulted to the current one, as Kubernetes does
        // for the ClusterIP of an update that leaves it out.
        if !old.is_null() && !new.is_null() && old != new {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: {new}: field is immutable"),
                field: format!("spec.{field}"),
            });
        }
    }
    if resource.kind == "Pod"
        && !current["spec"]["nodeName"].is_null()
        && current["spec"]["containers"] != updated["spec"]["containers"]
    {
        let images_only = current["spec"]["containers"]
            .as_array()
            .zip(updated["spec"]["containers"].as_array())
            .is_some_and(|(a, b)| {
                a.len() == b.len()
                    && a.iter().zip(b).all(|(x, y)| {
                        let (mut x, mut y) = (x.clone(), y.clone());
                        x["image"] = Value::Null;
                        y["image"] = Value::Null;
                        x == y
                    })
            });
        if !images_only {
            causes.push(Cause::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations), `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;
    use serde_json::json;

    #[test]
    fn workloads_need_a_selector_matching_their_template() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        let ok = json!({"spec": {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "a", "image": "nginx"}]}}}});
        assert!(check(deploy, &ok).is_empty());
        let mut off = ok.clone();
        off["spec"]["template"]["metadata"]["labels"]["app"] = json!("db");
        let causes = check(deploy, &off);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
        assert!(
            causes[0]
                .message
                .contains("`selector` does not match template `labels`")
        );
        let bare = json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}});
        let fields: Vec<String> = check(deploy, &bare).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            ["spec.selector", "spec.template.spec.containers[0].image"]
        );
    }

    #[test]
    fn cronjobs_need_a_schedule_that_parses() {
        let cronjob = find("batch", "v1", "cronjobs").unwrap();
        let with = |schedule: &str, policy: &str| {
            json!({"spec": {"schedule": schedule, "concurrencyPolicy": policy,
                "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "a", "image": "b"}]}}}}}})
        };
        assert!(check(cronjob, &with("*/5 * * * *", "Forbid")).is_empty());
        assert!(check(cronjob, &with("@hourly", "Replace")).is_empty());
        let causes = check(cronjob, &with("61 * * * *", "Allow"));
        assert_eq!(causes[0].field, "spec.schedule");
        assert_eq!(
            causes[0].message,
            "Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
        );
        let causes = check(cronjob, &with("TZ=UTC 0 * * * *", "Allow"));
        assert!(causes[0].message.contains("use timeZone field instead"));
        let causes = check(cronjob, &with("* * * * *", "Sometimes"));
        assert_eq!(causes[0].field, "spec.concurrencyPolicy");
    }

    #[test]
    fn jobs_refuse_restart_policy_always() {
        let job = find("batch", "v1", "jobs").unwrap();
        let always = json!({"spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "a", "image": "b"}]}}}});
        let causes = check(job, &always);
        assert_eq!(causes[0].field, "spec.template.spec.restartPolicy");
        assert_eq!(
            causes[0].message,
            "Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        );
    }

    #[test]
    fn immutable_fields_stay() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        let current = json!({"spec": {"selector": {"matchLabels": {"app": "web"}}}});
        let changed = json!({"spec": {"selector": {"matchLabels": {"app": "db"}}}});
        assert_eq!(
            check_update(deploy, &current, &changed)[0].field,
            "spec.selector"
        );
        assert!(check_update(deploy, &current, &current).is_empty());
        let svc = find("", "v1", "services").unwrap();
        let ip = json!({"spec": {"clusterIP": "10.43.0.10"}});
        assert_eq!(
            check_update(svc, &ip, &json!({"spec": {"clusterIP": "10.43.0.11"}}))[0].field,
            "spec.clusterIP"
        );
    }
}
