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
//! - [`metrics`]: the help text of the metrics the agent records.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use keelson_control::client::{Client, ClientError};
use keelson_control::runtime::Informer;
use tokio_util::sync::CancellationToken;

pub mod hollow;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod shim;
pub mod stats;
pub mod storage;
pub mod volumes;

pub use node::{NetworkConfig, NodeConfig};
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
    #[error("cannot get a serving certificate for node {node}")]
    Certificate {
        node: String,
        #[source]
        source: ClientError,
    },
    #[error("the serving certificate the API server issued is unusable")]
    Endpoint(#[from] server::ServerError),
    #[error("stopped before the node was registered")]
    Stopped,
}

/// The agent's own HTTPS endpoint (see [`server`]).
pub struct Endpoint {
    /// Bound already: its port goes into the Node's `daemonEndpoints`.
    pub listener: tokio::net::TcpListener,
    /// The cluster CA, which signs the API server's client certificate.
    pub ca_pem: String,
    /// Certificate and key to serve (PEM); `None`: ask the API server for
    /// one signed by the cluster CA, for the node's address and name.
    pub certificate: Option<(String, String)>,
    pub metrics: Option<server::MetricsRender>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// Retries `attempt` while the control plane is unreachable or starting
/// (no answer, or 503), with a growing delay; other errors end it.
async fn retry<T, F, Fut>(
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Result<Result<T, ClientError>, AgentError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(value) => return Ok(Ok(value)),
            Err(error) if error.code().is_none() || error.code() == Some(503) => {
                tracing::info!(%error, "control plane not reachable yet; retrying");
            }
            Err(error) => return Ok(Err(error)),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Err(AgentError::Stopped),
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// A serving certificate for the node, issued by the cluster CA.
async fn serving_certificate(
    client: &Client,
    config: &NodeConfig,
    shutdown: &CancellationToken,
) -> Result<(String, String), AgentError> {
    let body = serde_json::json!({"node": config.name, "hosts": [config.ip, config.name]});
    let answer = retry(shutdown, || {
        client.request(
            hyper::Method::POST,
            "/keelson/v1/serving-certificate",
            "application/json",
            body.to_string().into_bytes(),
        )
    })
    .await?
    .map_err(|source| AgentError::Certificate {
        node: config.name.clone(),
        source,
    })?;
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    match (answer["certificate"].as_str(), answer["key"].as_str()) {
        (Some(cert), Some(key)) => Ok((cert.to_owned(), key.to_owned())),
        _ => Err(AgentError::Endpoint(server::ServerError::Pem(
            "serving certificate the API server sent",
        ))),
    }
}

/// Runs the agent until `shutdown`.
pub async fn run<R: Runtime>(
    client: Client,
    runtime: Arc<R>,
    mut config: NodeConfig,
    endpoint: Option<Endpoint>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let mut tasks = tokio::task::JoinSet::new();
    let pods = Informer::<Pod>::new(Some(format!("spec.nodeName={}", config.name)));
    if let Some(endpoint) = endpoint {
        let (cert, key) = match endpoint.certificate {
            Some(given) => given,
            None => serving_certificate(&client, &config, &shutdown).await?,
        };
        let tls = server::tls_config(&endpoint.ca_pem, &cert, &key)?;
        config.port = endpoint.listener.local_addr().ok().map(|a| a.port());
        let server = server::AgentServer::new(
            runtime.clone(),
            pods.clone(),
            config.name.clone(),
            endpoint.metrics,
        );
        tracing::info!(node = %config.name, port = ?config.port, "serving the agent endpoint");
        tasks.spawn(server.serve(endpoint.listener, tls, shutdown.clone()));
    }
    let machine = config.machine.clone().unwrap_or_else(node::Machine::read);
    let object = node::node_object(&config, &machine, &runtime.version());
    // The control plane may still be starting: keep trying.
    retry(&shutdown, || node::register(&client, &object))
        .await?
        .map_err(|source| AgentError::Register {
            node: config.name.clone(),
            source,
        })?;
    tracing::info!(node = %config.name, "registered the node");
    tasks.spawn(node::heartbeat(
        client.clone(),
        config.clone(),
        runtime.clone(),
        shutdown.clone(),
    ));
    let allocatable = pods::env::Allocatable {
        milli_cpu: (machine.cpus * 1000).saturating_sub(config.reserved_milli_cpu) as i64,
        memory: machine.memory.saturating_sub(config.reserved_memory) as i64,
    };
    let (events, writer) = keelson_control::runtime::events::Recorder::new(
        client.clone(),
        "kubelet",
        config.name.clone(),
        shutdown.clone(),
    );
    tasks.spawn(writer);
    let data_dir = config
        .data_dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("/var/lib/keelson/agent"));
    let mut volumes = volumes::Volumes::new(&data_dir, client.clone(), allocatable)
        .with_cluster_domain(&config.network.cluster_domain)
        .with_cluster_dns(config.network.cluster_dns.clone());
    if config.network.routes {
        tasks.spawn(routes::run(
            client.clone(),
            config.name.clone(),
            routes::Ranges {
                cluster_cidr: config.network.cluster_cidr.clone(),
                service_cidr: config.network.service_cidr.clone(),
                bridge: "keelson0".into(),
            },
            shutdown.clone(),
        ));
    }
    if !runtime.runs_processes() {
        volumes = volumes.hollow();
    } else {
        tasks.spawn(storage::run(
            client.clone(),
            config.name.clone(),
            data_dir.clone(),
            Duration::from_secs(5),
            shutdown.clone(),
        ));
    }
    let workers = pods::PodWorkers::new(
        client.clone(),
        runtime,
        &pods,
        Arc::new(volumes),
        pods::WorkerConfig {
            host_ip: config.ip.clone(),
            allocatable,
            sync_frequency: config.sync_frequency,
        },
        Some(events),
        shutdown.clone(),
    );
    tasks.spawn(pods.run(client.clone(), shutdown.clone()));
    tasks.spawn(workers.run(10, shutdown.clone()));
    while tasks.join_next().await.is_some() {}
    Ok(())
}
