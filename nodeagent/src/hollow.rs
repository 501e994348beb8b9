//! Hollow nodes: many node agents in one process on the fake runtime, as
//! Kubernetes' kubemark runs them. Each registers its own Node, renews its
//! own Lease, watches its own pods and reports their status, through the
//! same code as a real agent ([`crate::run`]); no container runs and no
//! endpoint is served. For scale tests only.
//!
//! ```text
//!  HollowNodes::run ─┬─ node 00000: crate::run(client 0, FakeRuntime) ─ Node, Lease, pods watch, status
//!                    ├─ node 00001: crate::run(client 1, FakeRuntime)
//!                    └─ …          (clients: HTTP/2 connections, shared round robin)
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keelson_control::client::Client;
use tokio_util::sync::CancellationToken;

use crate::node::{Machine, NetworkConfig, NodeConfig};
use crate::runtime::fake::FakeRuntime;

/// The label every hollow node carries.
pub const LABEL: &str = "node.keelson.dev/hollow";

/// What to simulate.
#[derive(Clone, Debug)]
pub struct HollowNodes {
    pub count: usize,
    /// Node names are this and a number: `hollow-00042`.
    pub prefix: String,
    /// What each node reports it has.
    pub cpus: u64,
    pub memory: u64,
    pub max_pods: u32,
    /// Nodes started per second, so that registering is not a stampede.
    pub start_rate: u32,
    /// Lease renewal (Kubernetes: 10 s, lease 40 s).
    pub renew_interval: Duration,
    pub lease_duration_seconds: i32,
    /// How often each pod is synced again (Kubernetes: 1 minute).
    pub sync_frequency: Duration,
}

impl Default for HollowNodes {
    fn default() -> Self {
        Self {
            count: 100,
            prefix: "hollow-".into(),
            cpus: 4,
            memory: 16 << 30,
            max_pods: 110,
            start_rate: 200,
            renew_interval: Duration::from_secs(10),
            lease_duration_seconds: 40,
            sync_frequency: Duration::from_secs(60),
        }
    }
}

impl HollowNodes {
    /// The name of node `index`.
    pub fn name(&self, index: usize) -> String {
        format!("{}{index:05}", self.prefix)
    }

    /// Node `index`'s configuration. Its address is a label only: nothing
    /// connects to a hollow node.
    pub fn config(&self, index: usize) -> NodeConfig {
        NodeConfig {
            name: self.name(index),
            ip: format!("100.64.{}.{}", index / 250, index % 250 + 1),
            labels: BTreeMap::from([(LABEL.to_owned(), "true".to_owned())]),
            max_pods: self.max_pods,
            reserved_milli_cpu: 0,
            reserved_memory: 0,
            lease_duration_seconds: self.lease_duration_seconds,
            renew_interval: self.renew_interval,
            port: None,
            data_dir: None,
            sync_frequency: self.sync_frequency,
            network: NetworkConfig {
                routes: false,
                cluster_cidr: String::new(),
                service_cidr: String::new(),
                cluster_dns: Vec::new(),
                cluster_domain: "cluster.local".into(),
            },
            machine: Some(Machine {
                cpus: self.cpus,
                memory: self.memory,
                kernel: "hollow".into(),
                os_image: "Keelson hollow node".into(),
                machine_id: format!("hollow{index:026}"),
                boot_id: format!("hollow{index:026}"),
            }),
        }
    }

    /// Runs every node until `shutdown`, node `i` talking through
    /// `clients[i % clients.len()]`.
    pub async fn run(&self, clients: &[Client], shutdown: CancellationToken) {
        if clients.is_empty() {
            return;
        }
        let mut nodes = tokio::task::JoinSet::new();
        let pace = Duration::from_secs(1) / self.start_rate.max(1);
        let mut ticker = tokio::time::interval(pace);
        for index in 0..self.count {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => break,
            }
            let client = clients[index % clients.len()].clone();
            let config = self.config(index);
            let shutdown = shutdown.clone();
            nodes.spawn(async move {
                let name = config.name.clone();
                let runtime = Arc::new(FakeRuntime::new());
                if let Err(error) = crate::run(client, runtime, config, None, shutdown).await {
                    tracing::warn!(node = name, %error, "a hollow node stopped");
                }
            });
        }
        tracing::info!(nodes = nodes.len(), "every hollow node started");
        while nodes.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_have_distinct_names_and_addresses() {
        let hollow = HollowNodes::default();
        let (a, b) = (hollow.config(0), hollow.config(4999));
        assert_eq!(a.name, "hollow-00000");
        assert_eq!(b.name, "hollow-04999");
        assert_eq!(b.ip, "100.64.19.250");
        assert_ne!(a.ip, hollow.config(250).ip);
        assert_eq!(a.machine.map(|m| m.cpus), Some(4));
    }
}
