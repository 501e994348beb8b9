//! Where the server's index comes from: a [`SharedIndex`] the server reads
//! on every question, replaced whole by whoever keeps it current — the
//! informer-driven [`ClusterSource`] in production, a test directly.
//!
//! ```text
//!  Informer<Service> ──┐ on_event: notify
//!                      ├──────────────────► ClusterSource::run: wait synced, then
//!  Informer<EndpointSlice>┘                  loop { Index::build(lists) → SharedIndex::replace; wait notify }
//!                                                              │
//!  DnsServer (every question) ◄── SharedIndex::current() ◄─────┘
//! ```
//!
//! Events that arrive while an index is being built coalesce into one more
//! build, so a burst of changes costs at most two builds.

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_control::runtime::Informer;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::index::{Index, IndexConfig, IndexError};

/// The index the server answers from; `None` until the first one is
/// built (questions in the cluster's zones get `SERVFAIL` until then, so
/// clients retry rather than cache a false `NXDOMAIN`). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct SharedIndex {
    inner: Arc<RwLock<Option<Arc<Index>>>>,
}

impl SharedIndex {
    /// No index yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serving `index` from the start (tests, static records).
    pub fn with(index: Index) -> Self {
        let shared = Self::new();
        shared.replace(index);
        shared
    }

    /// Serves `index` from now on.
    pub fn replace(&self, index: Index) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(index));
    }

    /// The index to answer from, if there is one yet.
    pub fn current(&self) -> Option<Arc<Index>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Keeps a [`SharedIndex`] current from Service and EndpointSlice
/// informers (which the caller runs, so the service proxy can share them).
#[derive(Debug)]
pub struct ClusterSource {
    services: Informer<Service>,
    slices: Informer<EndpointSlice>,
    changed: Arc<Notify>,
}

impl ClusterSource {
    /// Listens to `services` and `slices`; call before they start so the
    /// first list is seen (it is read again after the sync anyway).
    pub fn new(services: &Informer<Service>, slices: &Informer<EndpointSlice>) -> Self {
        let changed = Arc::new(Notify::new());
        let notify = changed.clone();
        services.on_event(move |_| notify.notify_one());
        let notify = changed.clone();
        slices.on_event(move |_| notify.notify_one());
        Self {
            services: services.clone(),
            slices: slices.clone(),
            changed,
        }
    }

    /// Once both informers have synced, builds the index into `index`, and
    /// again after every change, until `shutdown`.
    ///
    /// # Errors
    ///
    /// [`IndexError`] when `config`'s cluster domain is unusable (checked
    /// by the first build, before anything is served).
    pub async fn run(
        self,
        config: IndexConfig,
        index: SharedIndex,
        shutdown: CancellationToken,
    ) -> Result<(), IndexError> {
        if !self.services.wait_synced(&shutdown).await || !self.slices.wait_synced(&shutdown).await
        {
            return Ok(());
        }
        let mut serial = 0u32;
        loop {
            // Later changes wake the wait below, even those during the build.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();

            serial = next_serial(serial);
            let services = self.services.list();
            let slices = self.slices.list();
            let config = IndexConfig {
                serial,
                ..config.clone()
            };
            let started = std::time::Instant::now();
            let built = Index::build(
                &config,
                services.iter().map(|s| s.as_ref()),
                slices.iter().map(|s| s.as_ref()),
            )?;
            tracing::debug!(
                names = built.len(),
                services = services.len(),
                slices = slices.len(),
                serial,
                elapsed_us = started.elapsed().as_micros() as u64,
                "dns index rebuilt"
            );
            index.replace(built);

            tokio::select! {
                () = changed => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

/// The SOA serial after `previous`: the Unix time in seconds, as CoreDNS
/// uses, but always growing.
fn next_serial(previous: u32) -> u32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0);
    now.max(previous.wrapping_add(1))
}
