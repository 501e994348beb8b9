//! The HorizontalPodAutoscaler controller (`autoscaling/v2`; v1 objects are
//! the same objects, converted by the API).
//!
//! ```text
//!  every sync period (15 s), per HPA:
//!    target's scale subresource ─► current replicas, pod selector
//!    pods (cache) + metrics.k8s.io PodMetrics ─► per metric: calc::replicas (Kubernetes' calculator)
//!    the largest proposal ─► stabilization windows ─► behavior policies ─► min/max
//!    ─► scale written if it changed (event SuccessfulRescale) ─► status: metrics, conditions
//! ```
//!
//! Recommendations and scale events are kept in memory by the member that
//! runs the controllers, as kube-controller-manager keeps them: a new
//! leader starts its stabilization windows afresh.

pub mod calc;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hyper::Method;
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscaler, MetricSpec};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use calc::{CalcError, Policy, Proposal, Recommendation, Rules, ScaleEvent, Target};

use crate::client::{Client, ClientError};
use crate::runtime::events::{EventType, Recorder};
use crate::runtime::{Action, Event, Informer, Queue, key_of, split_key};
use crate::selector::LabelSelector;

/// The controller's settings (kube-controller-manager's flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HpaConfig {
    /// `--horizontal-pod-autoscaler-sync-period`.
    pub sync_period: Duration,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`: the scale-down
    /// window of HPAs that do not set one.
    pub downscale_stabilization: Duration,
}

impl Default for HpaConfig {
    fn default() -> Self {
        Self {
            sync_period: Duration::from_secs(15),
            downscale_stabilization: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HpaError {
    #[error("HorizontalPodAutoscaler {hpa}: {action}")]
    Api {
        hpa: String,
        action: &'static str,
        #[source]
        source: ClientError,
    },
}

/// What was recommended and done for one HPA.
#[derive(Clone, Debug, Default)]
struct History {
    recommendations: Vec<Recommendation>,
    events: Vec<ScaleEvent>,
}

/// One pod's usage from the metrics API.
#[derive(Clone, Debug)]
struct PodUsage {
    /// By container: (milli-cores, bytes).
    containers: HashMap<String, (i64, i64)>,
    at: DateTime<Utc>,
    window: chrono::Duration,
}

/// A condition as the status carries it.
struct Condition {
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
}

#[derive(Clone, Debug)]
pub struct HpaController {
    client: Client,
    hpas: Informer<HorizontalPodAutoscaler>,
    pods: Informer<Pod>,
    queue: Queue<String>,
    recorder: Recorder,
    config: HpaConfig,
    history: Arc<Mutex<HashMap<String, History>>>,
}

/// A quantity's value in milli-units (CPU) or units (memory).
fn amount(resource: &str, quantity: &str) -> Option<i64> {
    if resource == "cpu" {
        crate::quantity::milli(quantity)
    } else {
        crate::quantity::value(quantity)
    }
}

/// The scale subresource's path for a target reference.
fn scale_path(
    namespace: &str,
    api_version: Option<&str>,
    kind: &str,
    name: &str,
) -> Option<String> {
    let (group, version) = match api_version.unwrap_or("apps/v1").split_once('/') {
        Some((group, version)) => (group.to_owned(), version.to_owned()),
        None => (String::new(), api_version.unwrap_or("v1").to_owned()),
    };
    let resource = crate::resources::RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)?;
    resource.subresources.contains(&"scale").then(|| {
        let base = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        format!(
            "{base}/namespaces/{namespace}/{}/{name}/scale",
            resource.plural
        )
    })
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The rules for one direction: the HPA's, completed from Kubernetes'
/// defaults.
fn rules(given: Option<&HPAScalingRules>, default: Rules) -> Rules {
    let Some(given) = given else {
        return default;
    };
    let policies: Vec<Policy> = given
        .policies
        .iter()
        .flatten()
        .filter_map(|p| match p.type_.as_str() {
            "Pods" => Some(Policy::Pods {
                value: p.value,
                period: i64::from(p.period_seconds),
            }),
            "Percent" => Some(Policy::Percent {
                value: p.value,
                period: i64::from(p.period_seconds),
            }),
            _ => None,
        })
        .collect();
    Rules {
        stabilization_seconds: given
            .stabilization_window_seconds
            .map_or(default.stabilization_seconds, i64::from),
        select: given.select_policy.clone().unwrap_or(default.select),
        policies: if given.policies.is_some() {
            policies
        } else {
            default.policies
        },
    }
}

/// A metric's description in events and conditions, as Kubernetes words it.
fn describe(resource: &str, target: Target) -> String {
    match target {
        Target::Utilization(_) => {
            format!("{resource} resource utilization (percentage of request)")
        }
        Target::AverageValue(_) => format!("{resource} resource"),
    }
}

impl HpaController {
    pub fn new(
        client: Client,
        hpas: &Informer<HorizontalPodAutoscaler>,
        pods: &Informer<Pod>,
        recorder: Recorder,
        config: HpaConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let controller = Self {
            client,
            hpas: hpas.clone(),
            pods: pods.clone(),
            queue: Queue::new("horizontalpodautoscaler", shutdown),
            recorder,
            config,
            history: Arc::default(),
        };
        let c = controller.clone();
        hpas.on_event(move |event| match event {
            Event::Added(h) => c.queue.add(key_of(&h.metadata)),
            // Its own status writes come back as updates: only a changed
            // spec is looked at before the next sync period.
            Event::Updated { old, new } => {
                if old.spec != new.spec {
                    c.queue.add(key_of(&new.metadata));
                }
            }
            Event::Deleted(h) => {
                let key = key_of(&h.metadata);
                c.history
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
            }
        });
        controller
    }

    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        if !self.hpas.wait_synced(&shutdown).await || !self.pods.wait_synced(&shutdown).await {
            return;
        }
        let this = self.clone();
        crate::runtime::run_workers(
            "horizontalpodautoscaler",
            self.queue.clone(),
            workers,
            move |key| {
                let this = this.clone();
                async move { this.reconcile(&key).await }
            },
        )
        .await;
    }

    fn api_error(key: &str, action: &'static str) -> impl FnOnce(ClientError) -> HpaError {
        let hpa = key.to_owned();
        move |source| HpaError::Api {
            hpa,
            action,
            source,
        }
    }

    /// Usage of the pods `selector` selects in `namespace`, by pod name.
    async fn usage(
        &self,
        namespace: &str,
        selector: &str,
    ) -> Result<HashMap<String, PodUsage>, ClientError> {
        let path = format!(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods?labelSelector={}",
            percent_encode(selector)
        );
        let bytes = self
            .client
            .request(Method::GET, &path, "", Vec::new())
            .await?;
        let list: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let mut found = HashMap::new();
        for item in list["items"].as_array().into_iter().flatten() {
            let Some(name) = item["metadata"]["name"].as_str() else {
                continue;
            };
            let at = item["timestamp"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
            let window = item["window"]
                .as_str()
                .and_then(|w| w.trim_end_matches('s').parse::<f64>().ok())
                .map_or(chrono::Duration::seconds(15), |s| {
                    chrono::Duration::milliseconds((s * 1000.0) as i64)
                });
            let containers = item["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    let usage = &c["usage"];
                    Some((
                        c["name"].as_str()?.to_owned(),
                        (
                            amount("cpu", usage["cpu"].as_str().unwrap_or("0")).unwrap_or(0),
                            amount("memory", usage["memory"].as_str().unwrap_or("0")).unwrap_or(0),
                        ),
                    ))
                })
                .collect();
            found.insert(
                name.to_owned(),
                PodUsage {
                    containers,
                    at,
                    window,
                },
            );
        }
        Ok(found)
    }

    async fn reconcile(&self, key: &str) -> Result<Action, HpaError> {
        let Some(hpa) = self.hpas.get(key) else {
            return Ok(Action::Done);
        };
        let again = Action::RequeueAfter(self.config.sync_period);
        let now = Utc::now();
        let namespace = hpa.metadata.namespace.clone().unwrap_or_default();
        let spec = hpa.spec.clone().unwrap_or_default();
        let target_ref = &spec.scale_target_ref;
        let mut conditions: Vec<Condition> = Vec::new();
        let scale = match scale_path(
            &namespace,
            target_ref.api_version.as_deref(),
            &target_ref.kind,
            &target_ref.name,
        ) {
            None => Err(format!(
                "no scale subresource for {} {}",
                target_ref.api_version.as_deref().unwrap_or_default(),
                target_ref.kind
            )),
            Some(path) => match self
                .client
                .request(Method::GET, &path, "", Vec::new())
                .await
            {
                Ok(bytes) => Ok((
                    path,
                    serde_json::from_slice::<Value>(&bytes).unwrap_or_default(),
                )),
                Err(error) => Err(error.to_string()),
            },
        };
        let (path, scale) = match scale {
            Ok(found) => found,
            Err(why) => {
                let message = format!(
                    "the HPA controller was unable to get the target's current scale: {why}"
                );
                self.recorder.record(
                    hpa.as_ref(),
                    EventType::Warning,
                    "FailedGetScale",
                    message.clone(),
                );
                conditions.push(Condition {
                    type_: "AbleToScale",
                    status: false,
                    reason: "FailedGetScale",
                    message,
                });
                self.write_status(&hpa, None, None, &[], conditions, None)
                    .await?;
                return Ok(again);
            }
        };
        let current = scale["spec"]["replicas"].as_i64().unwrap_or(0) as i32;
        let status_replicas = scale["status"]["replicas"].as_i64().unwrap_or(0) as i32;
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        if current == 0 && min != 0 {
            conditions.push(Condition {
                type_: "ScalingActive",
                status: false,
                reason: "ScalingDisabled",
                message: "scaling is disabled since the replica count of the target is zero".into(),
            });
            self.write_status(&hpa, Some(status_replicas), Some(0), &[], conditions, None)
                .await?;
            return Ok(again);
        }
        let selector_text = scale["status"]["selector"].as_str().unwrap_or_default();
        let selector = LabelSelector::parse(selector_text).unwrap_or_default();
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list_in(&namespace)
            .into_iter()
            .filter(|p| selector.matches(&json!({"metadata": {"labels": p.metadata.labels}})))
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none() && super::pods::phase(p) != Some("Failed")
            })
            .collect();
        let usage = match self.usage(&namespace, selector_text).await {
            Ok(usage) => usage,
            Err(error) => {
                tracing::debug!(hpa = key, %error, "no pod metrics");
                HashMap::new()
            }
        };
        // Kubernetes' default when no metric is given: CPU at 80%.
        let metrics: Vec<MetricSpec> = match &spec.metrics {
            Some(m) if !m.is_empty() => m.clone(),
            _ => vec![
                serde_json::from_value(json!({"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}))
                .unwrap_or_default(),
            ],
        };
        let mut proposals: Vec<(String, Proposal)> = Vec::new();
        let mut statuses: Vec<Value> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        for metric in &metrics {
            let (resource, container, target) = match metric.type_.as_str() {
                "Resource" => match &metric.resource {
                    Some(r) => (r.name.clone(), None, &r.target),
                    None => continue,
                },
                "ContainerResource" => match &metric.container_resource {
                    Some(r) => (r.name.clone(), Some(r.container.clone()), &r.target),
                    None => continue,
                },
                other => {
                    errors.push(format!(
                        "metrics of type {other} are not served by this cluster"
                    ));
                    continue;
                }
            };
            let target = match (
                target.type_.as_str(),
                target.average_utilization,
                &target.average_value,
            ) {
                ("Utilization", Some(percent), _) => Target::Utilization(percent),
                ("AverageValue", _, Some(value)) => {
                    Target::AverageValue(amount(&resource, &value.0).unwrap_or(0))
                }
                _ => {
                    errors.push(format!("invalid target for the {resource} metric"));
                    continue;
                }
            };
            let samples: Vec<calc::PodSample> = pods
                .iter()
                .map(|pod| {
                    self.sample(
                        pod,
                        &resource,
                        container.as_deref(),
                        usage.get(pod.metadata.name.as_deref().unwrap_or_default()),
                        now,
                    )
                })
                .collect();
            match calc::replicas(current, &samples, target) {
                Ok(proposal) => {
                    let mut current_value = json!({"averageValue": if resource == "cpu" {
                        format!("{}m", proposal.average)
                    } else {
                        proposal.average.to_string()
                    }});
                    if let Some(u) = proposal.utilization {
                        current_value["averageUtilization"] = json!(u);
                    }
                    statuses.push(match &container {
                        None => json!({"type": "Resource", "resource": {"name": resource, "current": current_value}}),
                        Some(c) => json!({"type": "ContainerResource", "containerResource": {"name": resource, "container": c, "current": current_value}}),
                    });
                    proposals.push((describe(&resource, target), proposal));
                }
                Err(error) => {
                    let text = match error {
                        CalcError::NoMetrics => format!(
                            "failed to get {resource} utilization: unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
                        ),
                        CalcError::MissingRequest(pod) => format!(
                            "failed to get {resource} utilization: missing request for {resource} in pod {namespace}/{pod}"
                        ),
                    };
                    errors.push(text);
                }
            }
        }
        let Some((reason, best)) = proposals
            .iter()
            .max_by_key(|(_, p)| p.replicas)
            .map(|(r, p)| (r.clone(), p.clone()))
        else {
            let first = errors.first().cloned().unwrap_or_default();
            self.recorder.record(
                hpa.as_ref(),
                EventType::Warning,
                "FailedGetResourceMetric",
                first.clone(),
            );
            self.recorder.record(
                hpa.as_ref(),
                EventType::Warning,
                "FailedComputeMetricsReplicas",
                format!(
                    "invalid metrics ({} invalid out of {}), first error is: {first}",
                    errors.len(),
                    metrics.len()
                ),
            );
            conditions.push(Condition {
                type_: "AbleToScale",
                status: true,
                reason: "SucceededGetScale",
                message: "the HPA controller was able to get the target's current scale".into(),
            });
            conditions.push(Condition {
                type_: "ScalingActive",
                status: false,
                reason: "FailedGetResourceMetric",
                message: format!("the HPA was unable to compute the replica count: {first}"),
            });
            self.write_status(
                &hpa,
                Some(status_replicas),
                Some(current),
                &statuses,
                conditions,
                None,
            )
            .await?;
            return Ok(again);
        };
        conditions.push(Condition {
            type_: "ScalingActive",
            status: true,
            reason: "ValidMetricFound",
            message: format!(
                "the HPA was able to successfully calculate a replica count from {reason}"
            ),
        });

        // Stabilization, policies, bounds.
        let behavior = spec.behavior.clone().unwrap_or_default();
        let up = rules(behavior.scale_up.as_ref(), Rules::default_up());
        let down = rules(
            behavior.scale_down.as_ref(),
            Rules::default_down(self.config.downscale_stabilization.as_secs() as i64),
        );
        let mut history = self
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
            .unwrap_or_default();
        let longest = up.stabilization_seconds.max(down.stabilization_seconds);
        history
            .recommendations
            .retain(|r| r.at > now - chrono::Duration::seconds(longest));
        let stabilized = calc::stabilize(
            current,
            best.replicas,
            &history.recommendations,
            &up,
            &down,
            now,
        );
        history.recommendations.push(Recommendation {
            at: now,
            replicas: best.replicas,
        });
        let longest_period = up
            .policies
            .iter()
            .chain(&down.policies)
            .map(|p| match *p {
                Policy::Pods { period, .. } | Policy::Percent { period, .. } => period,
            })
            .max()
            .unwrap_or(0);
        history
            .events
            .retain(|e| e.at > now - chrono::Duration::seconds(longest_period));
        let limited = calc::limit(current, stabilized, &up, &down, &history.events, now);
        let (desired, limit_condition) = if limited > max {
            (
                max,
                Condition {
                    type_: "ScalingLimited",
                    status: true,
                    reason: "TooManyReplicas",
                    message: "the desired replica count is more than the maximum replica count"
                        .into(),
                },
            )
        } else if limited < min {
            (
                min,
                Condition {
                    type_: "ScalingLimited",
                    status: true,
                    reason: "TooFewReplicas",
                    message: "the desired replica count is less than the minimum replica count"
                        .into(),
                },
            )
        } else if limited != stabilized {
            (
                limited,
                Condition {
                    type_: "ScalingLimited",
                    status: true,
                    reason: if limited < stabilized {
                        "ScaleUpLimit"
                    } else {
                        "ScaleDownLimit"
                    },
                    message: if limited < stabilized {
                        "the desired replica count is increasing faster than the maximum scale rate"
                            .into()
                    } else {
                        "the desired replica count is decreasing faster than the maximum scale rate"
                            .into()
                    },
                },
            )
        } else {
            (
                limited,
                Condition {
                    type_: "ScalingLimited",
                    status: false,
                    reason: "DesiredWithinRange",
                    message: "the desired count is within the acceptable range".into(),
                },
            )
        };
        let mut scaled_at = None;
        if desired != current {
            let patch = json!({"spec": {"replicas": desired}});
            match self
                .client
                .request(
                    Method::PATCH,
                    &path,
                    "application/merge-patch+json",
                    patch.to_string().into_bytes(),
                )
                .await
            {
                Ok(_) => {
                    let why = if desired > current {
                        format!("{reason} above target")
                    } else {
                        "All metrics below target".to_owned()
                    };
                    self.recorder.record(
                        hpa.as_ref(),
                        EventType::Normal,
                        "SuccessfulRescale",
                        format!("New size: {desired}; reason: {why}"),
                    );
                    history.events.push(ScaleEvent {
                        at: now,
                        change: desired - current,
                    });
                    scaled_at = Some(now);
                    conditions.push(Condition {
                        type_: "AbleToScale",
                        status: true,
                        reason: "SucceededRescale",
                        message: format!(
                            "the HPA controller was able to update the target scale to {desired}"
                        ),
                    });
                }
                Err(error) => {
                    let message = format!("New size: {desired}; reason: {reason}; error: {error}");
                    self.recorder.record(
                        hpa.as_ref(),
                        EventType::Warning,
                        "FailedRescale",
                        message.clone(),
                    );
                    conditions.push(Condition {
                        type_: "AbleToScale",
                        status: false,
                        reason: "FailedUpdateScale",
                        message: format!(
                            "the HPA controller was unable to update the target scale: {error}"
                        ),
                    });
                }
            }
        } else {
            conditions.push(Condition {
                type_: "AbleToScale",
                status: true,
                reason: "ReadyForNewScale",
                message: "recommended size matches current size".into(),
            });
        }
        conditions.push(limit_condition);
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), history);
        self.write_status(
            &hpa,
            Some(status_replicas),
            Some(desired),
            &statuses,
            conditions,
            scaled_at,
        )
        .await?;
        Ok(again)
    }

    /// One pod as the calculator needs it for `resource`.
    fn sample(
        &self,
        pod: &Pod,
        resource: &str,
        container: Option<&str>,
        usage: Option<&PodUsage>,
        now: DateTime<Utc>,
    ) -> calc::PodSample {
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default();
        let requests: Vec<Option<i64>> = containers
            .iter()
            .filter(|c| container.is_none_or(|name| c.name == name))
            .map(|c| {
                c.resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .and_then(|r| r.get(resource))
                    .and_then(|q| amount(resource, &q.0))
            })
            .collect();
        let request = if requests.is_empty() || requests.iter().any(Option::is_none) {
            None
        } else {
            Some(requests.iter().flatten().sum())
        };
        let used = usage.map(|u| {
            u.containers
                .iter()
                .filter(|(name, _)| container.is_none_or(|c| c == name.as_str()))
                .map(|(_, (cpu, memory))| if resource == "cpu" { *cpu } else { *memory })
                .sum()
        });
        let ready_condition = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        let unready = resource == "cpu"
            && usage.is_some_and(|u| {
                calc::cpu_unready(
                    ready_condition.is_some_and(|c| c.status == "True"),
                    pod.status
                        .as_ref()
                        .and_then(|s| s.start_time.as_ref())
                        .map(|t| t.0),
                    ready_condition
                        .and_then(|c| c.last_transition_time.as_ref())
                        .map(|t| t.0),
                    u.at,
                    u.window,
                    now,
                )
            });
        calc::PodSample {
            name: pod.metadata.name.clone().unwrap_or_default(),
            request,
            usage: used,
            unready,
        }
    }

    async fn write_status(
        &self,
        hpa: &HorizontalPodAutoscaler,
        current: Option<i32>,
        desired: Option<i32>,
        metrics: &[Value],
        conditions: Vec<Condition>,
        scaled_at: Option<DateTime<Utc>>,
    ) -> Result<(), HpaError> {
        let key = key_of(&hpa.metadata);
        let before = hpa.status.clone().unwrap_or_default();
        let now = crate::object::now();
        let conditions: Vec<Value> = conditions
            .iter()
            .map(|c| {
                let status = if c.status { "True" } else { "False" };
                // A condition keeps its transition time while its status holds.
                let since = before
                    .conditions
                    .iter()
                    .flatten()
                    .find(|b| b.type_ == c.type_ && b.status == status)
                    .and_then(|b| b.last_transition_time.clone())
                    .map_or_else(|| json!(now), |t| json!(t));
                json!({"type": c.type_, "status": status, "reason": c.reason,
                       "message": c.message, "lastTransitionTime": since})
            })
            .collect();
        let mut status = json!({
            "observedGeneration": hpa.metadata.generation,
            "currentReplicas": current.unwrap_or(before.current_replicas.unwrap_or(0)),
            "desiredReplicas": desired.unwrap_or(before.desired_replicas),
            "currentMetrics": metrics,
            "conditions": conditions,
            "lastScaleTime": before.last_scale_time,
        });
        if let Some(at) = scaled_at {
            status["lastScaleTime"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        let (namespace, name) = split_key(&key);
        let path = format!(
            "/apis/autoscaling/v2/namespaces/{}/horizontalpodautoscalers/{name}/status",
            namespace.unwrap_or("default")
        );
        let body = json!({"status": status}).to_string().into_bytes();
        match self
            .client
            .request(Method::PATCH, &path, "application/merge-patch+json", body)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.is_not_found() || error.is_conflict() => Ok(()),
            Err(error) => Err(Self::api_error(&key, "write its status")(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_paths_come_from_the_target_reference() {
        assert_eq!(
            scale_path("default", Some("apps/v1"), "Deployment", "web").as_deref(),
            Some("/apis/apps/v1/namespaces/default/deployments/web/scale")
        );
        assert_eq!(
            scale_path("db", Some("apps/v1"), "StatefulSet", "mysql").as_deref(),
            Some("/apis/apps/v1/namespaces/db/statefulsets/mysql/scale")
        );
        assert_eq!(scale_path("default", Some("v1"), "ConfigMap", "x"), None);
    }

    #[test]
    fn behaviors_fill_in_kubernetes_defaults() {
        let given: HPAScalingRules =
            serde_json::from_value(json!({"stabilizationWindowSeconds": 10})).unwrap();
        let down = rules(Some(&given), Rules::default_down(300));
        assert_eq!(down.stabilization_seconds, 10);
        assert_eq!(down.policies, Rules::default_down(300).policies);
        let given: HPAScalingRules = serde_json::from_value(
            json!({"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}], "selectPolicy": "Min"}),
        )
        .unwrap();
        let up = rules(Some(&given), Rules::default_up());
        assert_eq!(
            up.policies,
            vec![Policy::Pods {
                value: 1,
                period: 60
            }]
        );
        assert_eq!(up.select, "Min");
        assert_eq!(up.stabilization_seconds, 0);
    }

    #[test]
    fn selectors_are_sent_encoded() {
        assert_eq!(
            percent_encode("app=web,tier in (a)"),
            "app%3Dweb%2Ctier%20in%20%28a%29"
        );
    }
}
