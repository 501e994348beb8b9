//! The HorizontalPodAutoscaler's arithmetic, as Kubernetes' replica
//! calculator and behaviors do it: pure functions over pods, their usage
//! and the history of recommendations and scale events.

use chrono::{DateTime, Duration, Utc};

/// Changes of usage within this fraction of the target do nothing.
pub const TOLERANCE: f64 = 0.1;

/// One pod as the calculator sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodSample {
    pub name: String,
    /// The pod's request of the resource (sum over its containers), if
    /// every container has one.
    pub request: Option<i64>,
    /// Its usage (milli-cores or bytes) from the metrics API.
    pub usage: Option<i64>,
    /// Counted as not ready for this resource (Kubernetes' rules for CPU:
    /// still starting, or readiness not yet reflected in the metrics).
    pub unready: bool,
}

/// What one resource metric proposes.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    pub replicas: i32,
    /// Percentage of the request used on average (Utilization targets).
    pub utilization: Option<i32>,
    /// Average usage per pod, milli-units or bytes.
    pub average: i64,
}

/// Why no proposal could be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CalcError {
    NoMetrics,
    MissingRequest(String),
}

impl std::fmt::Display for CalcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoMetrics => f.write_str("no metrics returned from resource metrics API"),
            Self::MissingRequest(pod) => write!(f, "missing request for the resource in pod {pod}"),
        }
    }
}

/// What the target asks for: a utilization percentage of the request, or
/// an average value per pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Utilization(i32),
    AverageValue(i64),
}

/// Kubernetes' replica calculation for one resource metric
/// (`GetResourceReplicas` / `GetRawResourceReplicas`). `current`: the
/// target's current replicas.
pub fn replicas(current: i32, pods: &[PodSample], target: Target) -> Result<Proposal, CalcError> {
    let with_metrics: Vec<&PodSample> = pods.iter().filter(|p| p.usage.is_some()).collect();
    if with_metrics.is_empty() {
        return Err(CalcError::NoMetrics);
    }
    let ready: Vec<&PodSample> = with_metrics
        .iter()
        .copied()
        .filter(|p| !p.unready)
        .collect();
    let unready = with_metrics.len() - ready.len();
    let missing: Vec<&PodSample> = pods.iter().filter(|p| p.usage.is_none()).collect();
    if let Target::Utilization(_) = target
        && let Some(pod) = pods.iter().find(|p| p.request.is_none_or(|r| r <= 0))
    {
        return Err(CalcError::MissingRequest(pod.name.clone()));
    }
    // The ratio over ready pods with metrics.
    let ratio_of = |counted: &[(i64, i64)]| -> (f64, Option<i32>, i64) {
        let usage: i64 = counted.iter().map(|(u, _)| u).sum();
        let requests: i64 = counted.iter().map(|(_, r)| r).sum();
        let n = counted.len().max(1) as i64;
        match target {
            Target::Utilization(percent) => {
                let utilization = if requests > 0 {
                    usage as f64 * 100.0 / requests as f64
                } else {
                    0.0
                };
                (
                    utilization / f64::from(percent.max(1)),
                    Some(utilization as i32),
                    usage / n,
                )
            }
            Target::AverageValue(value) => {
                let average = usage as f64 / n as f64;
                (average / value.max(1) as f64, None, usage / n)
            }
        }
    };
    let counted: Vec<(i64, i64)> = ready
        .iter()
        .map(|p| (p.usage.unwrap_or(0), p.request.unwrap_or(0)))
        .collect();
    if ready.is_empty() {
        // Only unready pods report: nothing to scale on yet.
        return Ok(Proposal {
            replicas: current,
            utilization: None,
            average: 0,
        });
    }
    let (ratio, utilization, average) = ratio_of(&counted);
    if missing.is_empty() && unready == 0 {
        let replicas = if (ratio - 1.0).abs() <= TOLERANCE {
            current
        } else {
            (ratio * ready.len() as f64).ceil() as i32
        };
        return Ok(Proposal {
            replicas,
            utilization,
            average,
        });
    }
    // Missing pods count as using their whole target when scaling down and
    // nothing when scaling up; unready ones count as nothing when scaling
    // up. So neither can push the decision further than it went.
    let request_of = |p: &PodSample| p.request.unwrap_or(0);
    let mut recount = counted.clone();
    for p in &missing {
        let assumed = if ratio < 1.0 {
            match target {
                Target::Utilization(percent) => request_of(p) * i64::from(percent) / 100,
                Target::AverageValue(value) => value,
            }
        } else {
            0
        };
        recount.push((assumed, request_of(p)));
    }
    if ratio > 1.0 {
        for p in with_metrics.iter().filter(|p| p.unready) {
            recount.push((0, request_of(p)));
        }
    }
    let (new_ratio, _, _) = ratio_of(&recount);
    let replicas = if (new_ratio - 1.0).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        current
    } else {
        (new_ratio * recount.len() as f64).ceil() as i32
    };
    Ok(Proposal {
        replicas,
        utilization,
        average,
    })
}

/// One of a direction's scaling policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Pods { value: i32, period: i64 },
    Percent { value: i32, period: i64 },
}

impl Policy {
    fn period(self) -> i64 {
        match self {
            Self::Pods { period, .. } | Self::Percent { period, .. } => period,
        }
    }
}

/// How one direction may move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub stabilization_seconds: i64,
    /// `Max`, `Min` or `Disabled`.
    pub select: String,
    pub policies: Vec<Policy>,
}

impl Rules {
    /// Kubernetes' default for scaling up: at once, by 100% or 4 pods per
    /// 15 s, whichever is more.
    pub fn default_up() -> Self {
        Self {
            stabilization_seconds: 0,
            select: "Max".into(),
            policies: vec![
                Policy::Percent {
                    value: 100,
                    period: 15,
                },
                Policy::Pods {
                    value: 4,
                    period: 15,
                },
            ],
        }
    }

    /// Kubernetes' default for scaling down: the highest recommendation of
    /// the window (`stabilization_seconds`, 300 by default), then by up to
    /// 100% per 15 s.
    pub fn default_down(stabilization_seconds: i64) -> Self {
        Self {
            stabilization_seconds,
            select: "Max".into(),
            policies: vec![Policy::Percent {
                value: 100,
                period: 15,
            }],
        }
    }
}

/// A recommendation made, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recommendation {
    pub at: DateTime<Utc>,
    pub replicas: i32,
}

/// A change made to the target, and when (positive: up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleEvent {
    pub at: DateTime<Utc>,
    pub change: i32,
}

/// The recommendation after the stabilization windows: not above the
/// lowest of the up window, not below the highest of the down window.
pub fn stabilize(
    current: i32,
    desired: i32,
    history: &[Recommendation],
    up: &Rules,
    down: &Rules,
    now: DateTime<Utc>,
) -> i32 {
    let within = |seconds: i64| {
        history
            .iter()
            .filter(move |r| r.at > now - Duration::seconds(seconds))
            .map(|r| r.replicas)
    };
    let up_recommendation = within(up.stabilization_seconds)
        .chain(std::iter::once(desired))
        .min()
        .unwrap_or(desired);
    let down_recommendation = within(down.stabilization_seconds)
        .chain(std::iter::once(desired))
        .max()
        .unwrap_or(desired);
    let mut recommendation = current;
    if recommendation < up_recommendation {
        recommendation = up_recommendation;
    }
    if recommendation > down_recommendation {
        recommendation = down_recommendation;
    }
    recommendation
}

/// Limits a move from `current` towards `desired` by the policies and the
/// changes already made within their periods.
pub fn limit(
    current: i32,
    desired: i32,
    up: &Rules,
    down: &Rules,
    events: &[ScaleEvent],
    now: DateTime<Utc>,
) -> i32 {
    let changed_within = |period: i64, up: bool| -> i32 {
        events
            .iter()
            .filter(|e| e.at > now - Duration::seconds(period))
            .filter(|e| (e.change > 0) == up)
            .map(|e| e.change.abs())
            .sum()
    };
    if desired > current {
        if up.select == "Disabled" || up.policies.is_empty() {
            return current;
        }
        let limits = up.policies.iter().map(|p| {
            let start = current - changed_within(p.period(), true);
            match *p {
                Policy::Pods { value, .. } => start + value,
                Policy::Percent { value, .. } => {
                    (f64::from(start) * (1.0 + f64::from(value) / 100.0)).ceil() as i32
                }
            }
        });
        let limit = if up.select == "Min" {
            limits.min()
        } else {
            limits.max()
        }
        .unwrap_or(current);
        desired.min(limit.max(current))
    } else if desired < current {
        if down.select == "Disabled" || down.policies.is_empty() {
            return current;
        }
        let limits = down.policies.iter().map(|p| {
            let start = current + changed_within(p.period(), false);
            match *p {
                Policy::Pods { value, .. } => start - value,
                Policy::Percent { value, .. } => {
                    (f64::from(start) * (1.0 - f64::from(value) / 100.0)).ceil() as i32
                }
            }
        });
        // The policy allowing the biggest change is the lowest limit.
        let limit = if down.select == "Min" {
            limits.max()
        } else {
            limits.min()
        }
        .unwrap_or(current);
        desired.max(limit.min(current))
    } else {
        current
    }
}

/// Kubernetes' rule for whether a pod counts as unready for CPU: while
/// starting (`cpu_initialization` after its start), unless ready and the
/// metric taken after it became ready; later, only if not ready and it
/// never was since a short delay after starting.
pub fn cpu_unready(
    ready: bool,
    started: Option<DateTime<Utc>>,
    ready_since: Option<DateTime<Utc>>,
    metric_at: DateTime<Utc>,
    window: Duration,
    now: DateTime<Utc>,
) -> bool {
    const INITIALIZATION: i64 = 300;
    const INITIAL_READINESS_DELAY: i64 = 30;
    let Some(started) = started else {
        return true;
    };
    if started + Duration::seconds(INITIALIZATION) > now {
        return !ready || ready_since.is_none_or(|since| metric_at < since + window);
    }
    !ready
        && ready_since
            .is_none_or(|since| started + Duration::seconds(INITIAL_READINESS_DELAY) > since)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, request: i64, usage: Option<i64>) -> PodSample {
        PodSample {
            name: name.into(),
            request: Some(request),
            usage,
            unready: false,
        }
    }

    #[test]
    fn utilization_scales_by_the_ratio_outside_the_tolerance() {
        // 2 pods at 30% of 100m against a 10% target: ceil(2 × 3) = 6.
        let pods = [pod("a", 100, Some(30)), pod("b", 100, Some(30))];
        let p = replicas(2, &pods, Target::Utilization(10)).unwrap();
        assert_eq!((p.replicas, p.utilization), (6, Some(30)));
        // Within 10% of the target: unchanged.
        let pods = [pod("a", 100, Some(10)), pod("b", 100, Some(11))];
        assert_eq!(
            replicas(2, &pods, Target::Utilization(10))
                .unwrap()
                .replicas,
            2
        );
        // Idle: down to ceil(2 × 0.1) = 1.
        let pods = [pod("a", 100, Some(1)), pod("b", 100, Some(1))];
        assert_eq!(
            replicas(2, &pods, Target::Utilization(10))
                .unwrap()
                .replicas,
            1
        );
    }

    #[test]
    fn missing_metrics_never_push_further() {
        // Scaling up: the pod without metrics counts as idle.
        let pods = [pod("a", 100, Some(50)), pod("b", 100, None)];
        let up = replicas(2, &pods, Target::Utilization(10))
            .unwrap()
            .replicas;
        assert_eq!(up, 5, "ceil(2 × 250% / 100%) with b at 0");
        // Scaling down: they count as at their target, so the idle pod
        // alone cannot take the three down to one: (0 + 10 + 10)/300 of a
        // 10% target, × 3 → 2.
        let pods = [
            pod("a", 100, Some(0)),
            pod("b", 100, None),
            pod("c", 100, None),
        ];
        assert_eq!(
            replicas(3, &pods, Target::Utilization(10))
                .unwrap()
                .replicas,
            2
        );
    }

    #[test]
    fn unready_pods_count_as_idle_when_scaling_up() {
        let mut slow = pod("b", 100, Some(90));
        slow.unready = true;
        let pods = [pod("a", 100, Some(20)), slow];
        // a alone: 200% of a 10% target → but b counts as 0: (20+0)/200 = 10% → hold.
        assert_eq!(
            replicas(2, &pods, Target::Utilization(10))
                .unwrap()
                .replicas,
            2
        );
    }

    #[test]
    fn a_pod_without_a_request_stops_utilization() {
        let mut bare = pod("bare", 0, Some(5));
        bare.request = None;
        assert_eq!(
            replicas(1, &[bare], Target::Utilization(50)),
            Err(CalcError::MissingRequest("bare".into()))
        );
        assert_eq!(
            replicas(1, &[pod("a", 100, None)], Target::Utilization(50)),
            Err(CalcError::NoMetrics)
        );
    }

    #[test]
    fn average_values_compare_per_pod() {
        let pods = [pod("a", 0, Some(300)), pod("b", 0, Some(300))];
        assert_eq!(
            replicas(2, &pods, Target::AverageValue(100))
                .unwrap()
                .replicas,
            6
        );
    }

    #[test]
    fn down_waits_for_the_highest_recommendation_of_its_window() {
        let now = Utc::now();
        let history = [
            Recommendation {
                at: now - Duration::seconds(200),
                replicas: 5,
            },
            Recommendation {
                at: now - Duration::seconds(400),
                replicas: 9,
            },
        ];
        let (up, down) = (Rules::default_up(), Rules::default_down(300));
        assert_eq!(
            stabilize(5, 2, &history, &up, &down, now),
            5,
            "5 was asked for 200 s ago"
        );
        assert_eq!(stabilize(5, 2, &[], &up, &down, now), 2);
        assert_eq!(stabilize(2, 7, &history, &up, &down, now), 7, "up at once");
    }

    #[test]
    fn policies_limit_each_period() {
        let now = Utc::now();
        let (up, down) = (Rules::default_up(), Rules::default_down(300));
        // From 2: 100% gives 4, 4 pods gives 6; Max picks 6.
        assert_eq!(limit(2, 20, &up, &down, &[], now), 6);
        // Having just grown by 4, the period starts from 2 again.
        let events = [ScaleEvent {
            at: now - Duration::seconds(5),
            change: 4,
        }];
        assert_eq!(limit(6, 20, &up, &down, &events, now), 6);
        // Down by 100% per 15 s: anything.
        assert_eq!(limit(6, 1, &up, &down, &[], now), 1);
        let mut slow = Rules::default_down(0);
        slow.policies = vec![Policy::Pods {
            value: 1,
            period: 60,
        }];
        assert_eq!(limit(6, 1, &up, &slow, &[], now), 5);
    }

    #[test]
    fn starting_pods_are_unready_for_cpu_until_their_metrics_follow() {
        let now = Utc::now();
        let started = Some(now - Duration::seconds(60));
        let window = Duration::seconds(15);
        let ready_since = Some(now - Duration::seconds(20));
        assert!(!cpu_unready(true, started, ready_since, now, window, now));
        assert!(cpu_unready(
            true,
            started,
            ready_since,
            now - Duration::seconds(10),
            window,
            now
        ));
        assert!(cpu_unready(false, started, None, now, window, now));
        let old = Some(now - Duration::seconds(3600));
        assert!(!cpu_unready(true, old, old, now, window, now));
    }
}
