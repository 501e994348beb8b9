//! Kubernetes' defaults, set on every write as its API server sets them
//! (`pkg/apis/*/v1/defaults.go`, plus the admission plugins every cluster
//! runs: the default service account, priority and toleration seconds).
//! Only fields the client left out are filled in.

use serde_json::{Value, json};

use crate::resources::Resource;

/// Sets `object[key]` to `value` unless it holds something already (an
/// empty string is unset, as it is to Kubernetes' defaulting).
fn default(object: &mut Value, key: &str, value: Value) {
    if object
        .get(key)
        .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
    {
        object[key] = value;
    }
}

/// A rolling update strategy's defaults: `type` RollingUpdate, and when it
/// is, `rollingUpdate` with `fields`.
fn rolling(strategy: &mut Value, fields: &[(&str, Value)]) {
    if !strategy.is_object() {
        *strategy = json!({});
    }
    default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        default(strategy, "rollingUpdate", json!({}));
        for (key, value) in fields {
            default(&mut strategy["rollingUpdate"], key, value.clone());
        }
    }
}

fn each(list: &mut Value, mut f: impl FnMut(&mut Value)) {
    if let Value::Array(items) = list {
        items.iter_mut().filter(|i| i.is_object()).for_each(&mut f);
    }
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise.
fn pull_policy(image: &str) -> &'static str {
    let name = image.rsplit('/').next().unwrap_or(image);
    let tag = name
        .split('@')
        .next()
        .unwrap_or(name)
        .split_once(':')
        .map(|(_, t)| t);
    if image.contains('@') {
        "IfNotPresent"
    } else {
        match tag {
            None | Some("latest") => "Always",
            Some(_) => "IfNotPresent",
        }
    }
}

fn container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or_default().to_owned();
    default(c, "imagePullPolicy", json!(pull_policy(&image)));
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    each(&mut c["ports"], |p| default(p, "protocol", json!("TCP")));
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if c[probe].is_object() {
            let p = &mut c[probe];
            default(p, "timeoutSeconds", json!(1));
            default(p, "periodSeconds", json!(10));
            default(p, "successThreshold", json!(1));
            default(p, "failureThreshold", json!(3));
            if p["httpGet"].is_object() {
                default(&mut p["httpGet"], "path", json!("/"));
                default(&mut p["httpGet"], "scheme", json!("HTTP"));
            }
        }
    }
}

/// Defaults of a pod spec, in a pod or a template.
pub fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        each(&mut spec[list], container);
    }
    each(&mut spec["volumes"], |v| {
        if v["configMap"].is_object() {
            default(&mut v["configMap"], "defaultMode", json!(420));
        }
        if v["secret"].is_object() {
            default(&mut v["secret"], "defaultMode", json!(420));
        }
    });
}

/// What admission adds to a new pod: its service account, its priority,
/// and five minutes' tolerance of a node that is not ready or unreachable.
/// How long pods tolerate their node being not ready or unreachable
/// before they are evicted, unless they say otherwise (Kubernetes'
/// DefaultTolerationSeconds admission, 300 s each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefaultTolerations {
    pub not_ready_seconds: i64,
    pub unreachable_seconds: i64,
}

impl Default for DefaultTolerations {
    fn default() -> Self {
        Self {
            not_ready_seconds: 300,
            unreachable_seconds: 300,
        }
    }
}

pub fn admit_pod(pod: &mut Value, tolerations_for: DefaultTolerations) {
    let spec = &mut pod["spec"];
    if !spec.is_object() {
        return;
    }
    default(spec, "serviceAccountName", json!("default"));
    let account = spec["serviceAccountName"].clone();
    default(spec, "serviceAccount", account);
    default(spec, "priority", json!(0));
    if !spec["tolerations"].is_array() {
        spec["tolerations"] = json!([]);
    }
    if let Value::Array(tolerations) = &mut spec["tolerations"] {
        for (key, seconds) in [
            (
                "node.kubernetes.io/not-ready",
                tolerations_for.not_ready_seconds,
            ),
            (
                "node.kubernetes.io/unreachable",
                tolerations_for.unreachable_seconds,
            ),
        ] {
            if !tolerations.iter().any(|t| t["key"] == key) {
                tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
            }
        }
    }
}

fn template(spec: &mut Value) {
    pod_spec(&mut spec["template"]["spec"]);
}

/// Sets `resource`'s defaults on `object`.
pub fn apply(resource: &Resource, object: &mut Value) {
    let spec = &mut object["spec"];
    match (resource.group, resource.kind) {
        ("", "Pod") => pod_spec(spec),
        ("apps", "Deployment") => {
            default(spec, "replicas", json!(1));
            rolling(
                &mut spec["strategy"],
                &[("maxUnavailable", json!("25%")), ("maxSurge", json!("25%"))],
            );
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            template(spec);
        }
        ("apps", "ReplicaSet") => {
            default(spec, "replicas", json!(1));
            template(spec);
        }
        ("apps", "StatefulSet") => {
            default(spec, "replicas", json!(1));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            rolling(&mut spec["updateStrategy"], &[("partition", json!(0))]);
            default(spec, "revisionHistoryLimit", json!(10));
            default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            each(&mut spec["volumeClaimTemplates"], |claim| {
                default(&mut claim["spec"], "volumeMode", json!("Filesystem"));
            });
            template(spec);
        }
        ("apps", "DaemonSet") => {
            rolling(
                &mut spec["updateStrategy"],
                &[("maxUnavailable", json!(1)), ("maxSurge", json!(0))],
            );
            default(spec, "revisionHistoryLimit", json!(10));
            template(spec);
        }
        ("batch", "Job") => {
            if spec.get("completions").is_none_or(Value::is_null)
                && spec.get("parallelism").is_none_or(Value::is_null)
            {
                spec["completions"] = json!(1);
                spec["parallelism"] = json!(1);
            }
            default(spec, "parallelism", json!(1));
            default(spec, "backoffLimit", json!(6));
            default(spec, "completionMode", json!("NonIndexed"));
            default(spec, "suspend", json!(false));
            default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
            template(spec);
        }
        ("batch", "CronJob") => {
            default(spec, "concurrencyPolicy", json!("Allow"));
            default(spec, "suspend", json!(false));
            default(spec, "successfulJobsHistoryLimit", json!(3));
            default(spec, "failedJobsHistoryLimit", json!(1));
            // Only the pod template: the Job created from it gets the
            // Job's defaults then, as in Kubernetes.
            template(&mut spec["jobTemplate"]["spec"]);
        }
        ("", "Service") => {
            default(spec, "type", json!("ClusterIP"));
            default(spec, "sessionAffinity", json!("None"));
            default(spec, "internalTrafficPolicy", json!("Cluster"));
            default(spec, "ipFamilies", json!(["IPv4"]));
            default(spec, "ipFamilyPolicy", json!("SingleStack"));
            let kind = spec["type"].as_str().unwrap_or("ClusterIP").to_owned();
            if kind == "NodePort" || kind == "LoadBalancer" {
                default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if kind == "LoadBalancer" {
                default(spec, "allocateLoadBalancerNodePorts", json!(true));
            }
            each(&mut spec["ports"], |p| {
                default(p, "protocol", json!("TCP"));
                let port = p["port"].clone();
                default(p, "targetPort", port);
            });
        }
        ("", "PersistentVolumeClaim") => default(spec, "volumeMode", json!("Filesystem")),
        ("", "PersistentVolume") => {
            default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            default(spec, "volumeMode", json!("Filesystem"));
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            default(spec, "minReplicas", json!(1));
            if resource.version == "v2" && spec["metrics"].as_array().is_none_or(Vec::is_empty) {
                spec["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]);
            }
        }
        _ => {}
    }
    if let Value::Object(map) = object
        && map.get("spec").is_some_and(Value::is_null)
    {
        map.remove("spec");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn deployments_get_kubernetes_defaults() {
        let mut d = json!({"spec": {"selector": {}, "template": {"spec": {"containers": [
            {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "registry:5000/app:1.2"}]}}}});
        apply(find("apps", "v1", "deployments").unwrap(), &mut d);
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(spec["revisionHistoryLimit"], 10);
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn given_values_are_kept() {
        let mut d = json!({"spec": {"replicas": 0, "strategy": {"type": "Recreate"}}});
        apply(find("apps", "v1", "deployments").unwrap(), &mut d);
        assert_eq!(d["spec"]["replicas"], 0);
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn services_and_jobs() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply(find("", "v1", "services").unwrap(), &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        let mut j =
            json!({"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": []}}}});
        apply(find("batch", "v1", "jobs").unwrap(), &mut j);
        assert_eq!(
            (
                j["spec"]["completions"].as_i64(),
                j["spec"]["backoffLimit"].as_i64()
            ),
            (Some(1), Some(6))
        );
        assert_eq!(j["spec"]["template"]["spec"]["restartPolicy"], "Never");
    }

    #[test]
    fn cronjobs_get_kubernetes_defaults() {
        let mut c = json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure", "containers": [{"name": "a", "image": "busybox"}]}}}}}});
        apply(find("batch", "v1", "cronjobs").unwrap(), &mut c);
        let spec = &c["spec"];
        assert_eq!(spec["concurrencyPolicy"], "Allow");
        assert_eq!(spec["suspend"], false);
        assert_eq!(
            (
                spec["successfulJobsHistoryLimit"].as_i64(),
                spec["failedJobsHistoryLimit"].as_i64()
            ),
            (Some(3), Some(1))
        );
        let pod = &spec["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "OnFailure");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        assert!(spec["jobTemplate"]["spec"]["backoffLimit"].is_null());
    }

    #[test]
    fn admission_adds_the_service_account_and_tolerations() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "busybox:1.36"}]}});
        admit_pod(&mut pod, DefaultTolerations::default());
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
        admit_pod(&mut pod, DefaultTolerations::default());
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
    }
}
