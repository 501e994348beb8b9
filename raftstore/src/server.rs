//! Serving a member: its gRPC client port, its metrics port, its background
//! tasks, and their orderly shutdown.
//!
//! Start order: store and applier (via [`Node::start`]) → background tasks
//! (lease expiry, gauges) → metrics and health endpoint → gRPC. Shutdown runs
//! in reverse: gRPC stops accepting and watch streams end, the background
//! tasks stop, and the applier finishes what it holds once the last handle
//! to the node is gone. A storage failure in the applier triggers the same
//! shutdown, and `run` returns that error.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;

use crate::metrics::GrpcMetricsLayer;
use crate::node::{MemberConfig, Node};

/// How often expired leases are looked for (etcd checks every 500 ms).
const LEASE_EXPIRY_CHECK: Duration = Duration::from_millis(500);
const GAUGE_REFRESH: Duration = Duration::from_secs(5);

/// Errors that stop a member.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the store failed")]
    Store(#[from] crate::Error),
    #[error("the store's applier thread panicked")]
    ApplierPanicked,
    #[error("cannot serve gRPC")]
    Grpc(#[from] tonic::transport::Error),
    #[error("cannot use a listening socket")]
    Listener(#[source] std::io::Error),
}

/// The sockets a member serves on, bound by the caller (port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    pub client: TcpListener,
    pub metrics: Option<TcpListener>,
}

/// Runs a member until `shutdown` fires. `metrics` renders the process-wide
/// Prometheus registry for `/metrics`.
pub async fn run(
    config: MemberConfig,
    listeners: Listeners,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    crate::metrics::describe();
    let (node, applier) = Node::start(config, shutdown.clone())?;
    let tasks = TaskTracker::new();

    tasks.spawn(every(LEASE_EXPIRY_CHECK, shutdown.clone(), {
        let node = node.clone();
        move || {
            let node = node.clone();
            async move { node.revoke_expired().await }
        }
    }));
    tasks.spawn(every(GAUGE_REFRESH, shutdown.clone(), {
        let node = node.clone();
        move || {
            crate::metrics::refresh_store_gauges(&node);
            std::future::ready(())
        }
    }));

    if let Some(listener) = listeners.metrics {
        tracing::info!(address = %listener.local_addr().map_err(ServeError::Listener)?, "serving metrics");
        let router = Router::new()
            .route(
                "/metrics",
                get(move || {
                    std::future::ready(
                        metrics
                            .as_ref()
                            .map(PrometheusHandle::render)
                            .unwrap_or_default(),
                    )
                }),
            )
            .route("/health", get(health));
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "metrics endpoint failed");
            }
        });
    }

    let address = listeners
        .client
        .local_addr()
        .map_err(ServeError::Listener)?;
    tracing::info!(%address, "serving client traffic");
    let routes = crate::service::routes(&node, &shutdown);
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(GrpcMetricsLayer)
        .layer(crate::service::OversizeLayer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            // Small responses must not wait for Nagle's algorithm.
            TcpIncoming::from(listeners.client).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        )
        .await;

    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    drop(node);
    let applied = tokio::task::spawn_blocking(move || applier.join()).await;
    tracing::info!("member stopped");
    served?;
    match applied {
        Ok(Ok(outcome)) => outcome.map_err(ServeError::Store),
        // The applier panicked (or its join did): the store's state is unknown.
        Ok(Err(_)) | Err(_) => Err(ServeError::ApplierPanicked),
    }
}

/// etcd's `/health` answer; a lone member is healthy while it serves.
async fn health() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r#"{"health":"true","reason":""}"#,
    )
}

/// Calls `tick` every `period` until `shutdown` fires.
async fn every<F, Fut>(period: Duration, shutdown: CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => tick().await,
        }
    }
}
