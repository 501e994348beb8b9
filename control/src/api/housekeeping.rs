//! The API server's periodic chores: counting objects for
//! `apiserver_storage_objects`, and compacting the store's history.

use std::sync::Arc;
use std::time::Duration;

use super::Api;
use crate::resources::RESOURCES;

impl Api {
    /// Counts the objects of every resource into `apiserver_storage_objects`,
    /// every `period`, until shutdown.
    pub async fn count_objects(self: Arc<Self>, period: Duration) {
        let mut counted: Vec<(&str, String)> = Vec::new();
        for r in RESOURCES {
            if !counted.iter().any(|(_, prefix)| *prefix == r.prefix(None)) {
                counted.push((r.plural, r.prefix(None)));
            }
        }
        loop {
            for (plural, prefix) in &counted {
                // A resource being cached is counted there, not by a scan of the store.
                let cached = RESOURCES
                    .iter()
                    .filter(|r| r.plural == *plural)
                    .find_map(|r| self.caches.started(r));
                if let Some(cache) = cached {
                    metrics::gauge!("apiserver_storage_objects", "resource" => *plural)
                        .set(cache.len() as f64);
                } else if let Ok(count) = self.store.count(prefix.as_bytes()).await {
                    metrics::gauge!("apiserver_storage_objects", "resource" => *plural)
                        .set(count as f64);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Compacts the store's history every `period`, to the revision it
    /// had one period before, as kube-apiserver does (its
    /// `--etcd-compaction-interval`, 5 minutes): the history watchers may
    /// still resume from stays, and the store's index and disk stop
    /// growing with every write ever made. Every member does it; a second
    /// compaction to the same revision is a no-op.
    pub async fn compact_history(self: Arc<Self>, period: Duration) {
        let mut previous = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = self.shutdown.cancelled() => return,
            }
            let current = match self.store.current_revision().await {
                Ok(revision) => revision,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the store's revision to compact");
                    continue;
                }
            };
            if let Some(revision) = previous.replace(current) {
                match self.store.compact(revision).await {
                    Ok(()) => tracing::debug!(revision, "compacted the store's history"),
                    Err(error) => tracing::warn!(revision, %error, "compaction failed"),
                }
            }
        }
    }
}
