//! Serving a member: its gRPC client port, its metrics port, its background
//! tasks, and their orderly shutdown.
//!
//! Start order: store and Raft (via [`Node::start`]) → background tasks
//! (leadership, lease expiry, gauges) → metrics and health endpoint → peer
//! gRPC → client gRPC. Shutdown runs in reverse: client gRPC stops accepting
//! and watch streams end, the background tasks and the peer endpoint stop,
//! then Raft.

use std::sync::Arc;
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
    #[error("cannot serve gRPC")]
    Grpc(#[from] tonic::transport::Error),
    #[error("cannot use a listening socket")]
    Listener(#[source] std::io::Error),
}

/// The sockets a member serves on, bound by the caller (port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    pub client: TcpListener,
    /// Peer traffic; a member without it can only ever be a cluster of one.
    pub peer: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

/// Runs a member until `shutdown` fires (or the member is removed from its
/// cluster). `metrics` is the process-wide Prometheus registry; `/metrics`
/// serves the store's families of it ([`crate::metrics::is_store_family`]).
pub async fn run(
    config: MemberConfig,
    listeners: Listeners,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    crate::metrics::describe();
    let node = Node::start(config).await?;
    let tasks = TaskTracker::new();

    tasks.spawn(node.clone().follow_leadership(shutdown.clone()));
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
                            .map(|handle| {
                                crate::metrics::exposition(
                                    &handle.render(),
                                    crate::metrics::is_store_family,
                                )
                            })
                            .unwrap_or_default(),
                    )
                }),
            )
            .route(
                "/health",
                get({
                    let node = node.clone();
                    move |query: axum::extract::RawQuery| health(node.clone(), query)
                }),
            );
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

    if let Some(listener) = listeners.peer {
        tracing::info!(address = %listener.local_addr().map_err(ServeError::Listener)?, "serving peer traffic");
        let routes = crate::service::peer_routes(&node);
        let stop = shutdown.clone();
        let tls = node.config().tls.clone();
        tasks.spawn(async move {
            let mut server = tonic::transport::Server::builder();
            if let Some(tls) = &tls {
                server = match server.tls_config(tls.server()) {
                    Ok(server) => server,
                    Err(error) => {
                        tracing::error!(%error, "peer TLS configuration refused");
                        return;
                    }
                };
            }
            let served = server
                .add_routes(routes)
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stop.cancelled_owned(),
                )
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "peer endpoint failed");
            }
        });
    }

    // Clients are served once the member is part of the cluster (etcd, too,
    // waits until it has joined before it answers).
    tokio::select! {
        joined = node.joined() => joined?,
        () = shutdown.cancelled() => {}
    }
    // ... and has published its name and client URLs (so `member list`
    // shows them), as etcd's members do before they are ready.
    node.clone().publish(shutdown.clone()).await;
    if node.config().promote_when_caught_up {
        tasks.spawn(crate::service::promote_when_caught_up(
            node.clone(),
            shutdown.clone(),
        ));
    }
    let address = listeners
        .client
        .local_addr()
        .map_err(ServeError::Listener)?;
    tracing::info!(%address, "serving client traffic");
    let routes = crate::service::routes(&node, &shutdown);
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &node.config().tls {
        server = server.tls_config(tls.server())?;
    }
    let served = server
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(GrpcMetricsLayer)
        .layer(crate::service::oversize_layer())
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
    node.shutdown().await;
    tracing::info!("member stopped");
    Ok(served?)
}

/// etcd's `/health` answer; a lone member is healthy while it serves.
/// How long `/health` waits for the leader to confirm a read.
const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// etcd's `/health`: healthy when the member knows a leader and (unless
/// `?serializable=true`) a linearizable read completes within a second,
/// so a member cut off from the majority reports itself unhealthy even
/// while it still believes it leads.
async fn health(
    node: Arc<Node>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> impl axum::response::IntoResponse {
    let serializable = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|pair| pair == "serializable=true"));
    let reason = if node.leader() == 0 {
        Some("RAFT NO LEADER")
    } else if serializable {
        None
    } else {
        match tokio::time::timeout(HEALTH_READ_TIMEOUT, node.linearizable_barrier()).await {
            Ok(Ok(())) => None,
            Ok(Err(_)) | Err(_) => Some("QGET ERROR"),
        }
    };
    let (status, body) = match reason {
        None => (
            axum::http::StatusCode::OK,
            r#"{"health":"true","reason":""}"#.to_owned(),
        ),
        Some(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(r#"{{"health":"false","reason":"{reason}"}}"#),
        ),
    };
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
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
