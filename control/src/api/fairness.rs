//! Fairness: how many requests run at once, per priority level and per
//! client, so that a flood from one client cannot starve the control loops
//! or the other clients — a small form of Kubernetes' API Priority and
//! Fairness, with its defaults' shape.
//!
//! ```text
//!  level      who                                           seats   per client
//!  exempt     system:masters (administrators)               —       —
//!  system     the control loops (in process), node agents   400     —
//!  workload   everyone else, by user                        200     50
//! ```
//!
//! Long-running requests (watches, exec, logs, proxying) take no seat. A
//! request that finds no seat waits its turn up to [`Limits::queue_wait`],
//! then is answered `429 TooManyRequests` with `Retry-After`, which
//! clients (client-go, kubectl) honour by trying again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use axum::body::Body;
use hyper::{Request, Response};

use super::verb;
use crate::status::ApiError;

/// Who sent a request, as its client certificate says; the TLS layer puts
/// it in the request's extensions. Requests without one come from the
/// control loops in this process.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

/// Seats per priority level.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub system: usize,
    pub workload: usize,
    /// Seats one user may hold at the workload level.
    pub per_user: usize,
    /// How long a request waits for a seat before it is refused.
    pub queue_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            system: 400,
            workload: 200,
            per_user: 50,
            queue_wait: Duration::from_secs(5),
        }
    }
}

/// A request's seat, given back when dropped.
#[derive(Debug)]
pub(super) struct Seat {
    _level: OwnedSemaphorePermit,
    _user: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
pub(super) struct Fairness {
    limits: Limits,
    system: Arc<Semaphore>,
    workload: Arc<Semaphore>,
    users: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Fairness {
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            limits,
            system: Arc::new(Semaphore::new(limits.system.max(1))),
            workload: Arc::new(Semaphore::new(limits.workload.max(1))),
            users: Mutex::default(),
        }
    }

    /// A seat for a request from `identity`, once one is free; `429` when
    /// none frees up within the queue wait.
    pub(super) async fn seat(&self, identity: Option<&Identity>) -> Result<Option<Seat>, ApiError> {
        // As in Kubernetes, administrators are never queued.
        if identity.is_some_and(|i| i.groups.iter().any(|g| g == "system:masters")) {
            return Ok(None);
        }
        let system = identity.is_none_or(|i| i.groups.iter().any(|g| g == "system:nodes"));
        let deadline = tokio::time::Instant::now() + self.limits.queue_wait;
        let level = if system { "system" } else { "workload" };
        let refused = || {
            metrics::counter!("apiserver_flowcontrol_rejected_requests_total", "priority_level" => level, "reason" => "time-out")
                .increment(1);
            ApiError::too_many_requests(format!(
                "too many requests from this client or at priority level {level}; try again"
            ))
        };
        let user = match identity {
            Some(identity) if !system => {
                let seats = self
                    .users
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(identity.user.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_user.max(1))))
                    .clone();
                let permit = tokio::time::timeout_at(deadline, seats.acquire_owned()).await;
                Some(permit.map_err(|_| refused())?.map_err(|_| refused())?)
            }
            _ => None,
        };
        let seats = if system { &self.system } else { &self.workload };
        let permit = tokio::time::timeout_at(deadline, seats.clone().acquire_owned()).await;
        Ok(Some(Seat {
            _level: permit.map_err(|_| refused())?.map_err(|_| refused())?,
            _user: user,
        }))
    }
}

impl super::Api {
    /// Routes a request once it has a seat (long-running ones need none),
    /// and answers `504` when an ordinary one runs past the request timeout.
    pub(super) async fn admit(
        &self,
        request: Request<Body>,
    ) -> (Result<Response<Body>, ApiError>, &'static str, String) {
        if long_running(&request) {
            return self.route(request).await;
        }
        let identity = request.extensions().get::<Identity>().cloned();
        let _seat = match self.fairness.seat(identity.as_ref()).await {
            Ok(seat) => seat,
            Err(error) => {
                return (
                    Err(error),
                    verb(request.method(), None, false),
                    String::new(),
                );
            }
        };
        let method = request.method().clone();
        match tokio::time::timeout(self.request_timeout, self.route(request)).await {
            Ok(answer) => answer,
            Err(_) => (
                Err(ApiError::timeout(format!(
                    "request did not complete within the allowed duration of {:?}",
                    self.request_timeout
                ))),
                verb(&method, None, false),
                String::new(),
            ),
        }
    }
}

/// Watches, exec, logs and proxying: streams that last as long as the
/// client wants, so neither a seat nor the request timeout applies.
fn long_running(request: &Request<Body>) -> bool {
    let path = request.uri().path();
    let watch = request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| matches!(p, "watch=true" | "watch=1" | "follow=true" | "follow=1"))
    });
    watch
        || path.ends_with("/exec")
        || path.ends_with("/attach")
        || path.ends_with("/portforward")
        || path.contains("/proxy")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Identity {
        Identity {
            user: name.into(),
            groups: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flooding_user_is_refused_while_others_and_the_control_loops_go_on() {
        let fairness = Fairness::new(Limits {
            system: 2,
            workload: 4,
            per_user: 2,
            queue_wait: Duration::from_secs(5),
        });
        let flood = user("flood");
        let held = [
            fairness.seat(Some(&flood)).await.unwrap(),
            fairness.seat(Some(&flood)).await.unwrap(),
        ];
        let refused = fairness.seat(Some(&flood)).await.unwrap_err();
        assert_eq!(refused.code, 429);
        // Another user, and the control loops, still find seats.
        let other = fairness.seat(Some(&user("other"))).await.unwrap();
        let control = fairness.seat(None).await.unwrap();
        let node = Identity {
            user: "system:node:n1".into(),
            groups: vec!["system:nodes".into()],
        };
        let agent = fairness.seat(Some(&node)).await.unwrap();
        let admin = Identity {
            user: "admin".into(),
            groups: vec!["system:masters".into()],
        };
        for _ in 0..10 {
            assert!(
                fairness.seat(Some(&admin)).await.unwrap().is_none(),
                "exempt"
            );
        }
        // A seat given back is taken by the next request that waits.
        let waiting = tokio::spawn({
            let fairness = Arc::new(fairness);
            let flood = flood.clone();
            async move { fairness.seat(Some(&flood)).await.map(drop) }
        });
        drop(held);
        assert!(waiting.await.unwrap().is_ok());
        drop((other, control, agent));
    }
}
