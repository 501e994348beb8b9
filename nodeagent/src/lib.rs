//! The node agent, Keelson's kubelet: registers its Node, renews its
//! Lease, runs the pods bound to it through a container runtime and
//! reports their status.
//!
//! ```text
//!  run(client, runtime, config, shutdown)
//!    ├─ node::register, node::heartbeat (Lease every 10 s)
//!    ├─ pods informer (spec.nodeName = this node)
//!    └─ pods::PodWorkers ─► runtime::Runtime (fake | libcontainer)
//! ```
//!
//! - [`runtime`]: the CRI-shaped boundary and its implementations.
//! - [`pods`]: pure planning (`plan`) and status (`status`), and the workers.
//! - [`node`]: the Node object and the heartbeat.
//! - [`images`]: the node's content-addressed image store and tarball import.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use keelson_control::client::{Client, ClientError};
use keelson_control::runtime::Informer;
use tokio_util::sync::CancellationToken;

pub mod images;
pub mod node;
pub mod pods;
pub mod runtime;
pub mod shim;

pub use node::NodeConfig;
use runtime::Runtime;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot register node {node}")]
    Register {
        node: String,
        #[source]
        source: ClientError,
    },
    #[error("stopped before the node was registered")]
    Stopped,
}

/// Runs the agent until `shutdown`.
pub async fn run<R: Runtime>(
    client: Client,
    runtime: Arc<R>,
    config: NodeConfig,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let machine = node::Machine::read();
    let object = node::node_object(&config, &machine, &runtime.version());
    // The control plane may still be starting: keep trying.
    let mut delay = Duration::from_millis(200);
    loop {
        match node::register(&client, &object).await {
            Ok(_) => break,
            Err(error) if error.code().is_none() || error.code() == Some(503) => {
                tracing::info!(%error, "control plane not reachable yet; retrying");
            }
            Err(source) => {
                return Err(AgentError::Register {
                    node: config.name.clone(),
                    source,
                });
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Err(AgentError::Stopped),
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    tracing::info!(node = %config.name, "registered the node");
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(node::heartbeat(
        client.clone(),
        config.clone(),
        runtime.clone(),
        shutdown.clone(),
    ));
    let pods = Informer::<Pod>::new(Some(format!("spec.nodeName={}", config.name)));
    let allocatable = pods::env::Allocatable {
        milli_cpu: (machine.cpus * 1000).saturating_sub(config.reserved_milli_cpu) as i64,
        memory: machine.memory.saturating_sub(config.reserved_memory) as i64,
    };
    let workers = pods::PodWorkers::new(
        client.clone(),
        runtime,
        &pods,
        config.ip.clone(),
        allocatable,
        shutdown.clone(),
    );
    tasks.spawn(pods.run(client.clone(), shutdown.clone()));
    tasks.spawn(workers.clone().run(10, shutdown.clone()));
    let gauges = shutdown.clone();
    tasks.spawn(async move {
        loop {
            workers.count_running().await;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
                () = gauges.cancelled() => return,
            }
        }
    });
    while tasks.join_next().await.is_some() {}
    Ok(())
}
