//! Leader election through a `coordination.k8s.io` Lease, as client-go's
//! `leaderelection` does it.
//!
//! ```text
//!  candidate ──(every retry period)── lease free, expired or ours? ──yes──► write it (compare-and-set)
//!      ▲                                                                        │ won
//!      │ renew failed for a whole renew deadline: stop acting at once           ▼
//!      └──────────────────────────────────────────────────────────────── leading: renew every retry period
//! ```
//!
//! Expiry is judged by the candidate's own clock from when it last saw the
//! record change, never by the times written in it, so clock skew between
//! members does not matter. The renew deadline is shorter than the lease,
//! so a leader that cannot renew stops before anyone else may take over;
//! compare-and-set on every controller write covers what a stale leader
//! might still have in flight.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError};

/// How an election runs.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// Who this candidate is (written as the Lease's holder).
    pub identity: String,
    /// How long others wait after the last renewal they saw before taking over.
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often candidates try, and leaders renew.
    pub retry_period: Duration,
}

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum LeaderConfigError {
    #[error(
        "the lease duration ({lease:?}) must be longer than the renew deadline ({renew:?}), or two leaders could act at once"
    )]
    LeaseNotLonger { lease: Duration, renew: Duration },
    #[error("the renew deadline ({renew:?}) must be longer than the retry period ({retry:?})")]
    RenewNotLonger { renew: Duration, retry: Duration },
    #[error("durations must be at least 100ms")]
    TooShort,
}

impl LeaderConfig {
    pub fn validate(&self) -> Result<(), LeaderConfigError> {
        if self.retry_period < Duration::from_millis(100) {
            return Err(LeaderConfigError::TooShort);
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(LeaderConfigError::LeaseNotLonger {
                lease: self.lease_duration,
                renew: self.renew_deadline,
            });
        }
        if self.renew_deadline <= self.retry_period {
            return Err(LeaderConfigError::RenewNotLonger {
                renew: self.renew_deadline,
                retry: self.retry_period,
            });
        }
        Ok(())
    }
}

/// The last record seen, and when it was first seen.
#[derive(Debug, Default)]
struct Observed {
    holder: Option<String>,
    renewed: Option<MicroTime>,
    at: Option<Instant>,
}

/// One candidate.
#[derive(Debug)]
struct Candidate {
    client: Client,
    config: LeaderConfig,
    observed: Observed,
}

fn now() -> MicroTime {
    MicroTime(chrono::Utc::now())
}

impl Candidate {
    fn record(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let ours = previous
            .and_then(|p| p.holder_identity.as_deref())
            .is_some_and(|h| h == self.config.identity);
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(now())
            },
            renew_time: Some(now()),
            lease_transitions: Some(if ours || previous.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to take or keep the lease: `Ok(true)` when it is ours.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, ClientError> {
        let namespace = self.config.namespace.as_str();
        let current = match self
            .client
            .get::<Lease>(Some(namespace), &self.config.name)
            .await
        {
            Ok(lease) => lease,
            Err(error) if error.is_not_found() => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(namespace.to_owned()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.record(None)),
                };
                return match self.client.create(Some(namespace), &lease).await {
                    Ok(_) => Ok(true),
                    Err(error) if error.is_already_exists() => Ok(false),
                    Err(error) => Err(error),
                };
            }
            Err(error) => return Err(error),
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if self.observed.holder != holder
            || self.observed.renewed != spec.renew_time
            || self.observed.at.is_none()
        {
            self.observed = Observed {
                holder: holder.clone(),
                renewed: spec.renew_time.clone(),
                at: Some(Instant::now()),
            };
        }
        let duration = spec
            .lease_duration_seconds
            .map_or(self.config.lease_duration, |s| {
                Duration::from_secs(s.max(0) as u64)
            });
        let held_by_other = holder.as_deref().is_some_and(|h| h != self.config.identity);
        if held_by_other && self.observed.at.is_some_and(|at| at.elapsed() < duration) {
            return Ok(false);
        }
        let mut lease = current;
        lease.spec = Some(self.record(Some(&spec)));
        match self.client.replace(&lease).await {
            Ok(_) => Ok(true),
            Err(error) if error.is_conflict() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Gives the lease up, so the next candidate need not wait for it to expire.
    async fn release(&mut self) {
        let Ok(mut lease) = self
            .client
            .get::<Lease>(Some(&self.config.namespace), &self.config.name)
            .await
        else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        if let Err(error) = self.client.replace(&lease).await {
            tracing::debug!(%error, "could not release the lease");
        }
    }

    /// One bounded attempt: a hung request counts as a failure.
    async fn attempt(&mut self) -> bool {
        // Half the renew deadline: a leader gets at least two tries before
        // it must stop.
        let limit = (self.config.renew_deadline / 2).max(self.config.retry_period);
        match tokio::time::timeout(limit, self.try_acquire_or_renew()).await {
            Ok(Ok(ours)) => ours,
            Ok(Err(error)) => {
                tracing::debug!(%error, lease = %self.config.name, "lease attempt failed");
                false
            }
            Err(_) => false,
        }
    }
}

/// Runs `lead` whenever this candidate holds the lease, until `shutdown`.
/// `lead` gets a token cancelled the moment leadership is lost; it must
/// stop acting then, and return.
pub async fn run<F, Fut>(
    client: Client,
    config: LeaderConfig,
    shutdown: CancellationToken,
    mut lead: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let name = config.name.clone();
    let mut candidate = Candidate {
        client,
        config,
        observed: Observed::default(),
    };
    let status = metrics::gauge!("leader_election_master_status", "name" => name.clone());
    status.set(0.0);
    let retry = candidate.config.retry_period;
    loop {
        // Candidate: try until the lease is ours.
        loop {
            if candidate.attempt().await {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = shutdown.cancelled() => return,
            }
        }
        tracing::info!(lease = %name, identity = %candidate.config.identity, "became leader");
        status.set(1.0);
        let leading = shutdown.child_token();
        let acting = tokio::spawn(lead(leading.clone()));
        // Leader: renew until a whole renew deadline passes without success.
        let mut renewed = Instant::now();
        let lost = loop {
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = shutdown.cancelled() => break false,
            }
            if candidate.attempt().await {
                renewed = Instant::now();
            } else if renewed.elapsed() >= candidate.config.renew_deadline {
                break true;
            }
        };
        leading.cancel();
        status.set(0.0);
        if let Err(error) = acting.await {
            tracing::error!(%error, "the leader's work panicked");
        }
        if lost {
            tracing::warn!(lease = %name, "lost the lease; stopped acting");
            continue;
        }
        candidate.release().await;
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_outlasts_the_renew_deadline() {
        let config = |lease, renew, retry| LeaderConfig {
            namespace: "kube-system".into(),
            name: "x".into(),
            identity: "a".into(),
            lease_duration: Duration::from_millis(lease),
            renew_deadline: Duration::from_millis(renew),
            retry_period: Duration::from_millis(retry),
        };
        assert!(config(4000, 3000, 500).validate().is_ok());
        assert!(matches!(
            config(3000, 3000, 500).validate(),
            Err(LeaderConfigError::LeaseNotLonger { .. })
        ));
        assert!(matches!(
            config(4000, 500, 500).validate(),
            Err(LeaderConfigError::RenewNotLonger { .. })
        ));
        assert!(matches!(
            config(4000, 3000, 10).validate(),
            Err(LeaderConfigError::TooShort)
        ));
    }
}
