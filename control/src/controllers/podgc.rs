//! Pod garbage collection: pods that no agent will ever finish.
//!
//! - pods bound to a node that no longer exists (checked through the API,
//!   not only the cache) are deleted at once;
//! - pods being deleted that were never scheduled are deleted at once;
//! - finished pods (Succeeded or Failed) beyond the threshold are deleted,
//!   oldest first.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use tokio_util::sync::CancellationToken;

use super::pods::{node_of, phase};
use crate::client::{Client, DeleteOptions};
use crate::runtime::{Informer, key_of, split_key};

/// How often pods are collected.
const PERIOD: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct PodGc {
    client: Client,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    /// Finished pods kept (Kubernetes' `--terminated-pod-gc-threshold`).
    threshold: usize,
}

impl PodGc {
    pub fn new(
        client: Client,
        pods: &Informer<Pod>,
        nodes: &Informer<Node>,
        threshold: usize,
    ) -> Self {
        Self {
            client,
            pods: pods.clone(),
            nodes: nodes.clone(),
            threshold,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        if !self.pods.wait_synced(&shutdown).await || !self.nodes.wait_synced(&shutdown).await {
            return;
        }
        loop {
            self.collect().await;
            tokio::select! {
                () = tokio::time::sleep(PERIOD) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn force_delete(&self, pod: &Pod, why: &str) {
        let key = key_of(&pod.metadata);
        let (namespace, name) = split_key(&key);
        let options = DeleteOptions {
            uid: pod.metadata.uid.clone(),
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        };
        match self.client.delete::<Pod>(namespace, name, &options).await {
            Ok(()) => tracing::info!(pod = %key, why, "collected a pod"),
            Err(error) if error.is_not_found() => {}
            Err(error) => tracing::debug!(pod = %key, %error, "could not collect a pod"),
        }
    }

    async fn collect(&self) {
        let pods = self.pods.list();
        for pod in &pods {
            match node_of(pod) {
                Some(node) if self.nodes.get(node).is_none() => {
                    // The cache may lag: ask before deleting.
                    match self.client.get::<Node>(None, node).await {
                        Err(error) if error.is_not_found() => {
                            self.force_delete(pod, "its node is gone").await;
                        }
                        _ => {}
                    }
                }
                None if pod.metadata.deletion_timestamp.is_some() => {
                    self.force_delete(pod, "deleted before it was scheduled")
                        .await;
                }
                _ => {}
            }
        }
        let mut finished: Vec<&Arc<Pod>> = pods
            .iter()
            .filter(|p| matches!(phase(p), Some("Succeeded" | "Failed")))
            .collect();
        if finished.len() <= self.threshold {
            return;
        }
        finished.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let excess = finished.len() - self.threshold;
        for pod in finished.into_iter().take(excess) {
            self.force_delete(pod, "too many finished pods").await;
        }
    }
}
