//! The pod failure backoff: after `n` failures in a row, a Job waits
//! 10 s × 2ⁿ⁻¹ (at most six minutes, as the Kubernetes documentation
//! gives it) from the last failure before it creates another pod.
//!
//! Kubernetes keeps this record in the controller's memory, so a new
//! leader starts without it. Here it is worked out afresh from the Job's
//! finished pods on every reconcile, so it survives a change of leader; a
//! failed pod that is deleted (by hand, or by the pod garbage collector)
//! stops delaying the next one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;

/// The delay after the first failure.
pub const BASE: Duration = Duration::from_secs(10);
/// The longest delay.
pub const MAX: Duration = Duration::from_secs(360);

/// Failures since the last success, and when the latest one happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub failures: u32,
    pub last_failure: Option<DateTime<Utc>>,
}

/// When a pod finished: its last container's exit, else when it stopped
/// being ready, else when it was deleted (less its grace period), else
/// when it was created.
pub fn finished_at(pod: &Pod) -> DateTime<Utc> {
    let status = pod.status.as_ref();
    let from_containers = status
        .and_then(|s| s.container_statuses.as_ref())
        .filter(|c| !c.is_empty())
        .and_then(|containers| {
            containers
                .iter()
                .try_fold(None, |latest: Option<DateTime<Utc>>, c| {
                    let finished = c
                        .state
                        .as_ref()?
                        .terminated
                        .as_ref()?
                        .finished_at
                        .as_ref()?
                        .0;
                    Some(Some(latest.map_or(finished, |l| l.max(finished))))
                })
        })
        .flatten();
    if let Some(at) = from_containers {
        return at;
    }
    let not_ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == "False")
        .and_then(|c| c.last_transition_time.as_ref());
    if let Some(at) = not_ready {
        return at.0;
    }
    if let Some(deleted) = &pod.metadata.deletion_timestamp {
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
        return deleted.0 - chrono::Duration::seconds(grace);
    }
    pod.metadata
        .creation_timestamp
        .as_ref()
        .map_or(DateTime::<Utc>::UNIX_EPOCH, |t| t.0)
}

/// The record that finished pods give: `(when, succeeded)` per pod, in
/// any order.
pub fn record(finished: impl IntoIterator<Item = (DateTime<Utc>, bool)>) -> Record {
    let mut finished: Vec<(DateTime<Utc>, bool)> = finished.into_iter().collect();
    finished.sort_by_key(|(at, _)| *at);
    let since_success = finished
        .iter()
        .rposition(|(_, succeeded)| *succeeded)
        .map_or(&finished[..], |last| &finished[last + 1..]);
    Record {
        failures: since_success.len() as u32,
        last_failure: since_success.last().map(|(at, _)| *at),
    }
}

/// The delay after `failures` failures in a row.
pub fn delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    BASE.saturating_mul(1 << doublings).min(MAX)
}

/// How long from `now` until another pod may be created.
pub fn remaining(record: Record, now: DateTime<Utc>) -> Duration {
    let Some(last) = record.last_failure else {
        return Duration::ZERO;
    };
    let elapsed = (now - last).to_std().unwrap_or(Duration::ZERO);
    delay(record.failures).saturating_sub(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodCondition, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(1_000_000 + seconds)
    }

    #[test]
    fn delays_double_from_ten_seconds_to_six_minutes() {
        let delays: Vec<u64> = (0..8).map(|n| delay(n).as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 320, 360]);
        assert_eq!(delay(1000), MAX);
    }

    #[test]
    fn a_success_resets_the_count() {
        assert_eq!(record([]), Record::default());
        let r = record([(at(30), false), (at(10), false), (at(20), true)]);
        assert_eq!(
            r,
            Record {
                failures: 1,
                last_failure: Some(at(30))
            }
        );
        let r = record([(at(1), false), (at(2), false), (at(3), false)]);
        assert_eq!(r.failures, 3);
        assert_eq!(record([(at(1), false), (at(5), true)]).failures, 0);
    }

    #[test]
    fn the_wait_counts_from_the_last_failure() {
        let r = Record {
            failures: 2,
            last_failure: Some(at(0)),
        };
        assert_eq!(remaining(r, at(5)), Duration::from_secs(15));
        assert_eq!(remaining(r, at(20)), Duration::ZERO);
        assert_eq!(remaining(r, at(100)), Duration::ZERO);
        assert_eq!(remaining(Record::default(), at(0)), Duration::ZERO);
    }

    #[test]
    fn finish_times_come_from_containers_then_conditions_then_deletion() {
        let terminated = |seconds| ContainerStatus {
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    finished_at: Some(Time(at(seconds))),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        };
        let mut pod = Pod {
            metadata: ObjectMeta {
                creation_timestamp: Some(Time(at(0))),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(vec![terminated(7), terminated(9)]),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    last_transition_time: Some(Time(at(8))),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        assert_eq!(finished_at(&pod), at(9));
        // A container still running: the Ready condition tells.
        if let Some(s) = pod.status.as_mut() {
            s.container_statuses = Some(vec![terminated(7), ContainerStatus::default()]);
        }
        assert_eq!(finished_at(&pod), at(8));
        pod.status = None;
        pod.metadata.deletion_timestamp = Some(Time(at(40)));
        pod.metadata.deletion_grace_period_seconds = Some(30);
        assert_eq!(finished_at(&pod), at(10));
        pod.metadata.deletion_timestamp = None;
        assert_eq!(finished_at(&pod), at(0));
    }
}
