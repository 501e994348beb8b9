//! The proxy's loop: watch Services and EndpointSlices, render, apply —
//! at most once per `min_sync_period`, and in full every `sync_period`.
//!
//! ```text
//!  Informer<Service> ──┐ on_event: count, notify
//!  Informer<EndpointSlice> ─┴──► Schedule ──due──► render(snapshot) ─┬─ full:  Iptables::apply (save, drift check, restore, jumps)
//!                                                                    ├─ changed text: Iptables::apply_changes (restore only)
//!                                                                    └─ same text: nothing
//! ```
//!
//! Nothing is synced before both caches have their first list, so a
//! restart never programs a partial view. On shutdown the rules stay, so
//! service traffic keeps flowing while the agent restarts; `cleanup` is a
//! separate, explicit step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_control::client::Client;
use keelson_control::runtime::{Informer, chain};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::iptables::{Applied, Iptables, IptablesError};
use super::render::{NodeContext, ProxyInput, Rendered, render};

/// How the proxy runs on one node.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The node, its pod range and its node-local service IPs.
    /// `random_fully` is replaced by what `iptables --version` supports.
    pub node: NodeContext,
    /// How to run the iptables tools (in which namespace).
    pub iptables: Iptables,
    /// Least time between two syncs (`--iptables-min-sync-period`, 1 s).
    pub min_sync_period: Duration,
    /// Time between full syncs, which read the kernel's tables, repair
    /// drift and re-check the jumps (`--iptables-sync-period`, 30 s).
    pub sync_period: Duration,
}

impl ProxyConfig {
    /// The defaults for `node`, in this process's network namespace.
    pub fn new(node: NodeContext) -> Self {
        Self {
            node,
            iptables: Iptables::new(),
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
        }
    }

    /// # Errors
    /// [`ConfigError`] for a missing node name or sync periods out of order.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.name.is_empty() {
            return Err(ConfigError::NoNodeName);
        }
        if self.sync_period.is_zero() || self.min_sync_period > self.sync_period {
            return Err(ConfigError::Periods {
                min_sync_period: self.min_sync_period,
                sync_period: self.sync_period,
            });
        }
        Ok(())
    }
}

/// A [`ProxyConfig`] that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the proxy needs the node's name (endpoints are local by nodeName)")]
    NoNodeName,
    #[error(
        "sync periods out of order: min {min_sync_period:?} must not exceed {sync_period:?}, which must not be zero"
    )]
    Periods {
        min_sync_period: Duration,
        sync_period: Duration,
    },
}

/// When to sync: a pure state machine over instants.
#[derive(Debug)]
pub(crate) struct Schedule {
    min: Duration,
    period: Duration,
    /// Start of the last sync attempt.
    last_sync: Option<Instant>,
    /// Start of the last successful full sync.
    last_full: Option<Instant>,
    /// Something changed since the last sync began.
    pending: bool,
    /// The last sync failed: the next is full, at `retry_at`.
    failures: u32,
    retry_at: Option<Instant>,
}

impl Schedule {
    pub(crate) fn new(min: Duration, period: Duration) -> Self {
        Self {
            min,
            period,
            last_sync: None,
            last_full: None,
            pending: false,
            failures: 0,
            retry_at: None,
        }
    }

    pub(crate) fn changed(&mut self) {
        self.pending = true;
    }

    /// When the next sync is due (possibly already).
    pub(crate) fn next(&self, now: Instant) -> Instant {
        let Some(last_full) = self.last_full else {
            // Never synced in full: as soon as allowed, then with backoff.
            return self.retry_at.unwrap_or(now);
        };
        let mut due = last_full + self.period;
        if let Some(retry) = self.retry_at {
            due = due.min(retry);
        } else if self.pending {
            let earliest = self.last_sync.map_or(now, |last| last + self.min);
            due = due.min(earliest.max(now));
        }
        due
    }

    /// A sync starts at `now`; whether it must be a full one.
    pub(crate) fn begin(&mut self, now: Instant) -> bool {
        self.pending = false;
        self.last_sync = Some(now);
        self.failures > 0 || self.last_full.is_none_or(|last| now >= last + self.period)
    }

    /// The sync that began at `started` ended.
    pub(crate) fn end(&mut self, started: Instant, full: bool, ok: bool) {
        if ok {
            self.failures = 0;
            self.retry_at = None;
            if full {
                self.last_full = Some(started);
            }
        } else {
            // min, 2·min, 4·min, … up to the full period.
            self.failures += 1;
            let backoff = self
                .min
                .max(Duration::from_millis(100))
                .saturating_mul(1 << self.failures.min(16))
                .min(self.period);
            self.retry_at = Some(started + backoff);
        }
    }
}

/// The service proxy of one node.
#[derive(Debug)]
pub struct Proxier {
    config: ProxyConfig,
    services: Informer<Service>,
    slices: Informer<EndpointSlice>,
    /// The last render applied.
    applied: Option<Rendered>,
    /// Told of every change the informers see.
    changed: Arc<Notify>,
    service_changes: Arc<AtomicU64>,
    slice_changes: Arc<AtomicU64>,
}

/// Metric names (kube-proxy's, so its dashboards work).
mod metric {
    pub(super) const DURATION: &str = "kubeproxy_sync_proxy_rules_duration_seconds";
    pub(super) const LAST_TIMESTAMP: &str = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";
    pub(super) const LAST_QUEUED: &str = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds";
    pub(super) const RULES: &str = "kubeproxy_sync_proxy_rules_iptables_total";
    pub(super) const ENDPOINT_CHANGES: &str = "kubeproxy_sync_proxy_rules_endpoint_changes_total";
    pub(super) const SERVICE_CHANGES: &str = "kubeproxy_sync_proxy_rules_service_changes_total";
    pub(super) const RESTORE_FAILURES: &str =
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total";
    pub(super) const NO_LOCAL: &str = "kubeproxy_sync_proxy_rules_no_local_endpoints_total";
}

/// Describes the proxy's metrics to the installed recorder.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        metric::DURATION,
        Unit::Seconds,
        "How long a sync of the proxy rules took"
    );
    describe_gauge!(
        metric::LAST_TIMESTAMP,
        Unit::Seconds,
        "When the proxy rules were last synced"
    );
    describe_gauge!(
        metric::LAST_QUEUED,
        Unit::Seconds,
        "When a change last asked for a sync"
    );
    describe_gauge!(metric::RULES, "Rules the proxy programs, by table");
    describe_counter!(metric::ENDPOINT_CHANGES, "EndpointSlice changes seen");
    describe_counter!(metric::SERVICE_CHANGES, "Service changes seen");
    describe_counter!(
        metric::RESTORE_FAILURES,
        "iptables-restore runs that failed"
    );
    describe_gauge!(
        metric::NO_LOCAL,
        "Local-policy service ports without a local endpoint, by traffic policy"
    );
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Proxier {
    /// Runs the proxy until `shutdown`: starts its own Service and
    /// EndpointSlice informers on `client` and syncs from them.
    ///
    /// # Errors
    /// Only an invalid `config`; failed syncs are logged, counted and
    /// retried with backoff.
    pub async fn run(
        client: Client,
        config: ProxyConfig,
        shutdown: CancellationToken,
    ) -> Result<(), ConfigError> {
        let services: Informer<Service> = Informer::new(None);
        let slices: Informer<EndpointSlice> = Informer::new(None);
        let proxier = Self::with_informers(services.clone(), slices.clone(), config)?;
        let informers = shutdown.child_token();
        let tasks = [
            tokio::spawn(services.run(client.clone(), informers.clone())),
            tokio::spawn(slices.run(client, informers.clone())),
        ];
        proxier.sync_loop(shutdown).await;
        informers.cancel();
        for task in tasks {
            let _ = task.await;
        }
        Ok(())
    }

    /// A proxy fed by informers the caller runs (to share them with, say,
    /// cluster DNS). Handlers are added to them here, before they start.
    ///
    /// # Errors
    /// An invalid `config`.
    pub fn with_informers(
        services: Informer<Service>,
        slices: Informer<EndpointSlice>,
        config: ProxyConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let changed = Arc::new(Notify::new());
        let service_changes = Arc::new(AtomicU64::new(0));
        let slice_changes = Arc::new(AtomicU64::new(0));
        let (notify, count) = (changed.clone(), service_changes.clone());
        services.on_event(move |_| {
            count.fetch_add(1, Ordering::Relaxed);
            notify.notify_one();
        });
        let (notify, count) = (changed.clone(), slice_changes.clone());
        slices.on_event(move |_| {
            count.fetch_add(1, Ordering::Relaxed);
            notify.notify_one();
        });
        Ok(Self {
            config,
            services,
            slices,
            applied: None,
            changed,
            service_changes,
            slice_changes,
        })
    }

    /// Syncs until `shutdown` (see [`Proxier::with_informers`]).
    pub async fn sync_loop(mut self, shutdown: CancellationToken) {
        let (changed, service_changes, slice_changes) = (
            self.changed.clone(),
            self.service_changes.clone(),
            self.slice_changes.clone(),
        );

        match self.config.iptables.supports_random_fully().await {
            Ok(supported) => self.config.node.random_fully = supported,
            Err(error) => {
                tracing::warn!(error = %chain(&error), "cannot tell whether MASQUERADE --random-fully works; not using it");
                self.config.node.random_fully = false;
            }
        }

        if !self.services.wait_synced(&shutdown).await || !self.slices.wait_synced(&shutdown).await
        {
            return;
        }
        tracing::info!(
            node = %self.config.node.name,
            services = self.services.len(),
            endpoint_slices = self.slices.len(),
            "proxy caches synced"
        );

        let mut schedule = Schedule::new(self.config.min_sync_period, self.config.sync_period);
        let (mut seen_services, mut seen_slices) = (0, 0);
        loop {
            let due = schedule.next(Instant::now());
            tokio::select! {
                () = changed.notified() => {
                    let services = service_changes.load(Ordering::Relaxed);
                    let slices = slice_changes.load(Ordering::Relaxed);
                    metrics::counter!(metric::SERVICE_CHANGES).increment(services - seen_services);
                    metrics::counter!(metric::ENDPOINT_CHANGES).increment(slices - seen_slices);
                    (seen_services, seen_slices) = (services, slices);
                    metrics::gauge!(metric::LAST_QUEUED).set(unix_now());
                    schedule.changed();
                    continue;
                }
                () = tokio::time::sleep_until(due) => {}
                () = shutdown.cancelled() => return,
            }
            let started = Instant::now();
            let full = schedule.begin(started);
            let result = self.sync(full).await;
            schedule.end(started, full, result.is_ok());
            if let Err(error) = result {
                if error.is_restore_failure() {
                    metrics::counter!(metric::RESTORE_FAILURES).increment(1);
                }
                tracing::warn!(full, error = %chain(&error), "syncing proxy rules failed; retrying");
            }
        }
    }

    /// Renders the caches and applies the result: in full (reading the
    /// kernel's tables and checking the jumps), or only if the text
    /// changed since the last apply.
    async fn sync(&mut self, full: bool) -> Result<(), IptablesError> {
        let started = std::time::Instant::now();
        let input = ProxyInput {
            node: self.config.node.clone(),
            services: self.services.list(),
            endpoint_slices: self.slices.list(),
        };
        let rendered = render(&input);
        let iptables = &self.config.iptables;
        let applied: Option<Applied> = match &self.applied {
            _ if full => Some(iptables.apply(&rendered).await?),
            Some(last) if last.text() == rendered.text() => None,
            Some(last) => Some(iptables.apply_changes(&rendered, last).await?),
            None => Some(iptables.apply(&rendered).await?),
        };
        let elapsed = started.elapsed();
        let stats = *rendered.stats();
        metrics::histogram!(metric::DURATION).record(elapsed.as_secs_f64());
        metrics::gauge!(metric::LAST_TIMESTAMP).set(unix_now());
        metrics::gauge!(metric::RULES, "table" => "nat").set(rendered.nat().rules() as f64);
        metrics::gauge!(metric::RULES, "table" => "filter").set(rendered.filter().rules() as f64);
        metrics::gauge!(metric::NO_LOCAL, "traffic_policy" => "internal")
            .set(stats.no_local_endpoints_internal as f64);
        metrics::gauge!(metric::NO_LOCAL, "traffic_policy" => "external")
            .set(stats.no_local_endpoints_external as f64);
        match applied {
            Some(applied) => tracing::info!(
                full,
                restored = applied.restored,
                deleted_chains = applied.deleted_chains,
                inserted_jumps = applied.inserted_jumps,
                service_ports = stats.service_ports,
                endpoints = stats.endpoints,
                rules = rendered.rules(),
                elapsed_ms = elapsed.as_millis() as u64,
                "synced proxy rules"
            ),
            None => tracing::debug!(rules = rendered.rules(), "proxy rules unchanged"),
        }
        self.applied = Some(rendered);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);
    const PERIOD: Duration = Duration::from_secs(30);

    #[test]
    fn syncs_are_rate_limited_and_resynced_in_full() {
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let mut schedule = Schedule::new(MIN, PERIOD);
        // The first sync is immediate and full.
        assert_eq!(schedule.next(t0), t0);
        assert!(schedule.begin(t0));
        schedule.end(t0, true, true);
        // Nothing changes: the next is the periodic full one.
        assert_eq!(schedule.next(s(0.5)), s(30.0));
        // A change 0.2 s after a sync waits for the min period.
        schedule.changed();
        assert_eq!(schedule.next(s(0.2)), s(1.0));
        assert!(!schedule.begin(s(1.0)), "an ordinary sync is not full");
        schedule.end(s(1.0), false, true);
        // A change long after the last sync goes at once.
        schedule.changed();
        assert_eq!(schedule.next(s(5.0)), s(5.0));
        schedule.begin(s(5.0));
        schedule.end(s(5.0), false, true);
        // At the period the sync is full again.
        assert_eq!(schedule.next(s(6.0)), s(30.0));
        assert!(schedule.begin(s(30.0)));
        schedule.end(s(30.0), true, true);
        assert_eq!(schedule.next(s(31.0)), s(60.0));
    }

    #[test]
    fn failures_back_off_and_force_a_full_sync() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(MIN, PERIOD);
        schedule.begin(t0);
        schedule.end(t0, true, false);
        assert_eq!(schedule.next(t0), t0 + 2 * MIN);
        let t1 = t0 + 2 * MIN;
        assert!(schedule.begin(t1), "a retry is full");
        schedule.end(t1, true, false);
        assert_eq!(schedule.next(t1), t1 + 4 * MIN);
        // Changes do not bring a retry forward.
        schedule.changed();
        assert_eq!(schedule.next(t1), t1 + 4 * MIN);
        let t2 = t1 + 4 * MIN;
        assert!(schedule.begin(t2));
        schedule.end(t2, true, true);
        assert_eq!(schedule.next(t2), t2 + PERIOD);
        for _ in 0..20 {
            schedule.begin(t2);
            schedule.end(t2, false, false);
        }
        assert_eq!(
            schedule.next(t2),
            t2 + PERIOD,
            "backoff is capped at the period"
        );
    }

    #[test]
    fn configs_validate() {
        let mut config = ProxyConfig::new(NodeContext {
            name: "node-1".into(),
            ..NodeContext::default()
        });
        assert!(config.validate().is_ok());
        config.min_sync_period = Duration::from_secs(60);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Periods { .. })
        ));
        assert!(matches!(
            ProxyConfig::new(NodeContext::default()).validate(),
            Err(ConfigError::NoNodeName)
        ));
    }
}
