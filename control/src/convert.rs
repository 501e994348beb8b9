//! Versions that share one stored form, converted at the edge as
//! Kubernetes converts them: HorizontalPodAutoscalers are stored as
//! `autoscaling/v2` and served as `v1` too; Events are stored as core `v1`
//! and served as `events.k8s.io/v1` too. Handlers see objects as the
//! request's version spells them.

use serde_json::{Value, json};

use crate::resources::Resource;

/// core/v1 Event field ↔ events.k8s.io/v1 Event field.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn rename(object: &mut Value, pairs: impl Iterator<Item = (&'static str, &'static str)>) {
    if let Value::Object(map) = object {
        for (from, to) in pairs {
            if let Some(value) = map.remove(from) {
                map.insert(to.to_owned(), value);
            }
        }
    }
}

/// A v1 HPA's CPU target as a v2 metric.
fn hpa_v1_to_v2(mut hpa: Value) -> Value {
    if let Some(Value::Object(spec)) = hpa.get_mut("spec")
        && let Some(target) = spec.remove("targetCPUUtilizationPercentage")
    {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}}}]),
        );
    }
    if let Some(Value::Object(status)) = hpa.get_mut("status")
        && let Some(current) = status.remove("currentCPUUtilizationPercentage")
    {
        status.insert(
            "currentMetrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": current}}}]),
        );
    }
    hpa["apiVersion"] = json!("autoscaling/v2");
    hpa
}

fn cpu_utilization(metrics: &Value, side: &str) -> Option<Value> {
    metrics.as_array()?.iter().find_map(|m| {
        (m["type"] == "Resource" && m["resource"]["name"] == "cpu")
            .then(|| m["resource"][side]["averageUtilization"].clone())
            .filter(|v| !v.is_null())
    })
}

/// A v2 HPA as v1 shows it: its CPU utilization target, if it has one.
fn hpa_v2_to_v1(mut hpa: Value) -> Value {
    if let Some(Value::Object(spec)) = hpa.get_mut("spec") {
        let target = spec
            .remove("metrics")
            .and_then(|m| cpu_utilization(&m, "target"));
        spec.remove("behavior");
        if let Some(target) = target {
            spec.insert("targetCPUUtilizationPercentage".into(), target);
        }
    }
    if let Some(Value::Object(status)) = hpa.get_mut("status") {
        let current = status
            .remove("currentMetrics")
            .and_then(|m| cpu_utilization(&m, "current"));
        status.remove("conditions");
        if let Some(current) = current {
            status.insert("currentCPUUtilizationPercentage".into(), current);
        }
    }
    hpa["apiVersion"] = json!("autoscaling/v1");
    hpa
}

fn is(resource: &Resource, group: &str, version: &str, kind: &str) -> bool {
    resource.group == group && resource.version == version && resource.kind == kind
}

/// An object as `resource`'s clients wrote it, in its stored form.
pub fn to_storage(resource: &Resource, mut object: Value) -> Value {
    if is(resource, "autoscaling", "v1", "HorizontalPodAutoscaler") {
        return hpa_v1_to_v2(object);
    }
    if is(resource, "events.k8s.io", "v1", "Event") {
        rename(
            &mut object,
            EVENT_FIELDS.iter().map(|(core, events)| (*events, *core)),
        );
        object["apiVersion"] = json!("v1");
    }
    object
}

/// A stored object as `resource`'s clients see it.
pub fn from_storage(resource: &Resource, mut object: Value) -> Value {
    if is(resource, "autoscaling", "v1", "HorizontalPodAutoscaler") {
        return hpa_v2_to_v1(object);
    }
    if is(resource, "events.k8s.io", "v1", "Event") {
        rename(&mut object, EVENT_FIELDS.iter().copied());
        object["apiVersion"] = json!("events.k8s.io/v1");
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn hpas_round_trip_between_v1_and_v2() {
        let v1 = find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let written = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5, "targetCPUUtilizationPercentage": 10},
            "status": {"currentCPUUtilizationPercentage": 12, "currentReplicas": 2}});
        let stored = to_storage(v1, written.clone());
        assert_eq!(stored["apiVersion"], "autoscaling/v2");
        assert_eq!(
            stored["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            10
        );
        assert_eq!(
            stored["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"],
            12
        );
        assert_eq!(from_storage(v1, stored.clone()), written);
        let v2 = find("autoscaling", "v2", "horizontalpodautoscalers").unwrap();
        assert_eq!(from_storage(v2, stored.clone()), stored);
    }

    #[test]
    fn events_read_in_either_group() {
        let core = find("", "v1", "events").unwrap();
        let events = find("events.k8s.io", "v1", "events").unwrap();
        let stored = json!({"apiVersion": "v1", "kind": "Event", "involvedObject": {"kind": "Pod", "name": "p"},
            "message": "Pulled", "count": 2, "reason": "Pulled"});
        let seen = from_storage(events, stored.clone());
        assert_eq!(seen["apiVersion"], "events.k8s.io/v1");
        assert_eq!(seen["regarding"]["name"], "p");
        assert_eq!(seen["note"], "Pulled");
        assert!(seen.get("involvedObject").is_none());
        assert_eq!(to_storage(events, seen), stored);
        assert_eq!(from_storage(core, stored.clone()), stored);
    }
}
