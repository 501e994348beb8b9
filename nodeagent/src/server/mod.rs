//! The agent's own HTTPS endpoint, as the kubelet's port 10250: what the
//! API server proxies `kubectl logs` and `kubectl exec` to.
//!
//! ```text
//!  API server ──TLS, client certificate (cluster CA, group system:masters)──► agent :10250
//!     GET  /healthz
//!     GET  /containerLogs/NS/POD/CONTAINER?follow&tailLines&sinceSeconds&sinceTime&timestamps&previous&limitBytes
//!     GET  /exec/NS/POD/CONTAINER?command=…&stdin&stdout&stderr&tty   (WebSocket, v5/v4.channel.k8s.io)
//!     GET  /metrics
//!     GET  /metrics/resource     CPU and memory of the node, its pods and containers
//!     PUT  /debug/flags/v        the log level (a verbosity, or tracing directives), while it runs
//! ```
//!
//! The serving certificate is issued by the cluster CA for the node's
//! address, so the API server verifies it like any cluster certificate.
//! Only clients in `system:masters` (the API server's own client
//! certificate, administrators) are let in: other nodes' certificates are
//! signed by the same CA but may not read this node's pods.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use k8s_openapi::api::core::v1::Pod;
use keelson_control::api::decode_component;
use keelson_control::runtime::Informer;

use crate::logs::{self, LogOptions};
use crate::runtime::{ContainerRun, ContainerState, Runtime};
use crate::stats;

mod exec;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    #[error("the {0} is not valid PEM")]
    Pem(&'static str),
    #[error("TLS client verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The TLS side of the endpoint: the cluster CA (client certificates must
/// be signed by it) and the node's serving certificate and key, as PEM.
pub fn tls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(|_| ServerError::Pem("cluster CA"))?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| ServerError::Pem("serving certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| ServerError::Pem("serving key"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // WebSocket upgrades need HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The organizations (Kubernetes groups) in a certificate issued by the
/// cluster CA: the values of the subject's `O` attributes. The CA's own
/// name carries none, so every one found is the subject's.
pub fn organizations(der: &[u8]) -> Vec<String> {
    // OID 2.5.4.10, then a UTF8String, PrintableString or T61String.
    const OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x0a];
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = der[at..].windows(OID.len()).position(|w| w == OID) {
        let value = at + offset + OID.len();
        at = value;
        let (Some(tag), Some(&len)) = (der.get(value), der.get(value + 1)) else {
            break;
        };
        if matches!(tag, 0x0c | 0x13 | 0x14)
            && len < 0x80
            && let Some(text) = der.get(value + 2..value + 2 + len as usize)
        {
            found.push(String::from_utf8_lossy(text).into_owned());
        }
    }
    found
}

/// Renders the process's metrics for `GET /metrics`.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// The endpoint's state.
pub struct AgentServer<R> {
    runtime: Arc<R>,
    /// The pods bound to this node, with the status the agent reported.
    pods: Informer<Pod>,
    node: String,
    metrics: Option<MetricsRender>,
}

/// Which container's log to read, as the kubelet chooses from the pod's
/// status: the running or terminated one, else the last terminated; with
/// `previous`, the last terminated. Its runtime id, or why there is none.
pub fn log_container(pod: &Pod, container: &str, previous: bool) -> Result<String, String> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref().and_then(|s| {
        s.container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
            .find(|c| c.name == container)
    });
    let Some(status) = status else {
        return Err(format!(
            "container {container:?} in pod {name:?} is waiting to start: ContainerCreating"
        ));
    };
    let state = status.state.clone().unwrap_or_default();
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    let id = if previous {
        last.and_then(|t| t.container_id.clone()).ok_or_else(|| {
            format!("previous terminated container {container:?} in pod {name:?} not found")
        })?
    } else if state.running.is_some() {
        status.container_id.clone().unwrap_or_default()
    } else if let Some(terminated) = state.terminated.as_ref() {
        terminated.container_id.clone().unwrap_or_default()
    } else if let Some(last) = last {
        last.container_id.clone().unwrap_or_default()
    } else {
        let reason = state
            .waiting
            .and_then(|w| w.reason)
            .unwrap_or_else(|| "ContainerCreating".into());
        let why = match reason.as_str() {
            "ErrImagePull" => "image can't be pulled".to_owned(),
            "ImagePullBackOff" => "trying and failing to pull image".to_owned(),
            _ => reason,
        };
        return Err(format!(
            "container {container:?} in pod {name:?} is waiting to start: {why}"
        ));
    };
    match id.strip_prefix("keelson://") {
        Some(id) if !id.is_empty() => Ok(id.to_owned()),
        _ => Err(format!(
            "container {container:?} in pod {name:?} has no container id yet"
        )),
    }
}

impl<R> std::fmt::Debug for AgentServer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServer")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// A Kubernetes `Status` answer.
pub(crate) fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response<Body> {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message.into(),
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(body: impl Into<Body>, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// The query's values of `name`.
pub(crate) fn query_values<'a>(query: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    query
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A boolean query parameter, as Kubernetes parses them (`true`, `1`).
pub(crate) fn query_flag(query: &[(String, String)], name: &str) -> bool {
    query_values(query, name)
        .first()
        .is_some_and(|v| matches!(*v, "true" | "1" | "True" | "TRUE"))
}

/// `a=1&b=x%20y` → pairs, decoded.
pub(crate) fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

/// What `kubectl logs` asked for, from the query.
fn log_options(query: &[(String, String)], now: DateTime<Utc>) -> Result<LogOptions, String> {
    let number = |name: &str| -> Result<Option<u64>, String> {
        query_values(query, name)
            .first()
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .map(|n| n as u64)
                    .ok_or_else(|| format!("{name} must be a non-negative integer, not {v:?}"))
            })
            .transpose()
    };
    let mut since = number("sinceSeconds")?
        .map(|s| now - chrono::Duration::seconds(s.min(i64::MAX as u64 / 1000) as i64));
    if let Some(time) = query_values(query, "sinceTime").first() {
        since = Some(
            DateTime::parse_from_rfc3339(time)
                .map_err(|_| format!("sinceTime {time:?} is not an RFC 3339 time"))?
                .with_timezone(&Utc),
        );
    }
    Ok(LogOptions {
        follow: query_flag(query, "follow"),
        tail_lines: number("tailLines")?,
        since,
        timestamps: query_flag(query, "timestamps"),
        limit_bytes: number("limitBytes")?,
    })
}

impl<R: Runtime> AgentServer<R> {
    pub fn new(
        runtime: Arc<R>,
        pods: Informer<Pod>,
        node: String,
        metrics: Option<MetricsRender>,
    ) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            pods,
            node,
            metrics,
        })
    }

    /// Serves `listener` until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let connections = tokio_util::task::TaskTracker::new();
        loop {
            let (socket, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let (acceptor, this, shutdown) = (acceptor.clone(), self.clone(), shutdown.clone());
            connections.spawn(async move {
                let Ok(tls) = acceptor.accept(socket).await else {
                    tracing::debug!(%peer, "TLS handshake refused");
                    return;
                };
                let allowed = tls.get_ref().1.peer_certificates().is_some_and(|chain| {
                    chain.first().is_some_and(|cert| {
                        organizations(cert).iter().any(|o| o == "system:masters")
                    })
                });
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(allowed, request).await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                tokio::pin!(connection);
                tokio::select! {
                    outcome = connection.as_mut() => {
                        if let Err(error) = outcome {
                            tracing::debug!(%peer, %error, "connection ended");
                        }
                    }
                    () = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        drop(tokio::time::timeout(Duration::from_secs(2), connection).await);
                    }
                }
            });
        }
        connections.close();
        drop(tokio::time::timeout(Duration::from_secs(5), connections.wait()).await);
    }

    async fn handle(&self, allowed: bool, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if !allowed {
            return status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("only the API server may use node {}'s endpoint", self.node),
            );
        }
        let query = parse_query(request.uri().query());
        if segments == ["debug", "flags", "v"] && request.method() == hyper::Method::PUT {
            let asked = match axum::body::to_bytes(Body::new(request.into_body()), 4096).await {
                Ok(body) => String::from_utf8_lossy(&body).into_owned(),
                Err(_) => {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "the body is too large",
                    );
                }
            };
            return match keelson_control::logging::change(&asked) {
                Ok(now) => {
                    tracing::info!(filter = %now, "log level changed");
                    text(
                        format!("successfully set the log filter to {now}"),
                        "text/plain",
                    )
                }
                Err(why) => status(StatusCode::BAD_REQUEST, "BadRequest", why),
            };
        }
        match segments.as_slice() {
            ["healthz"] => text("ok", "text/plain"),
            ["metrics"] => match &self.metrics {
                Some(render) => text(render(), "text/plain; version=0.0.4"),
                None => status(StatusCode::NOT_FOUND, "NotFound", "no metrics here"),
            },
            ["metrics", "resource"] => {
                text(self.resource_metrics().await, "text/plain; version=0.0.4")
            }
            ["containerLogs", namespace, pod, container] => {
                self.logs(namespace, pod, container, &query).await
            }
            ["exec", namespace, pod, container] => {
                let found = match self.find(namespace, pod, container).await {
                    Ok(found) => found,
                    Err(response) => return response,
                };
                exec::exec(self.runtime.as_ref(), &found, &query, request)
            }
            _ => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no such path {path}"),
            ),
        }
    }

    /// The newest attempt of the container `name` of the pod (its newest sandbox).
    async fn find(
        &self,
        namespace: &str,
        pod: &str,
        name: &str,
    ) -> Result<ContainerState, Response<Body>> {
        let sandboxes = self.runtime.list().await.map_err(|error| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                error.to_string(),
            )
        })?;
        let sandbox = sandboxes
            .into_iter()
            .filter(|s| s.config.namespace == namespace && s.config.name == pod)
            .max_by_key(|s| s.created)
            .ok_or_else(|| {
                status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!(
                        "pod {pod:?} in namespace {namespace:?} has no containers on node {}",
                        self.node
                    ),
                )
            })?;
        let mut attempts: Vec<ContainerState> = sandbox
            .containers
            .into_iter()
            .filter(|c| c.name == name)
            .collect();
        attempts.sort_by_key(|c| std::cmp::Reverse(c.attempt));
        attempts.into_iter().next().ok_or_else(|| {
            status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("container not found ({name:?})"),
            )
        })
    }

    /// `/metrics/resource`: the node's, its pods' and their containers' usage.
    async fn resource_metrics(&self) -> String {
        let now = Utc::now();
        let node = match (
            std::fs::read_to_string("/proc/stat"),
            std::fs::read_to_string("/proc/meminfo"),
        ) {
            (Ok(stat), Ok(meminfo)) => {
                let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                    .ok()
                    .flatten()
                    .filter(|t| *t > 0)
                    .unwrap_or(100);
                stats::node_usage(&stat, &meminfo, ticks as f64)
            }
            _ => None,
        };
        let (mut pods, mut containers) = (Vec::new(), Vec::new());
        for sandbox in self.runtime.list().await.unwrap_or_default() {
            if !sandbox.ready {
                continue;
            }
            let (namespace, pod) = (&sandbox.config.namespace, &sandbox.config.name);
            if let Some(usage) = self.runtime.pod_usage(&sandbox) {
                pods.push(stats::PodUsage {
                    namespace: namespace.clone(),
                    pod: pod.clone(),
                    usage,
                });
            }
            for container in &sandbox.containers {
                if !matches!(container.run, ContainerRun::Running { .. }) {
                    continue;
                }
                if let Some(usage) = self.runtime.container_usage(&sandbox, &container.name) {
                    containers.push(stats::ContainerUsage {
                        namespace: namespace.clone(),
                        pod: pod.clone(),
                        container: container.name.clone(),
                        usage,
                    });
                }
            }
        }
        stats::render(node, &pods, &containers, now)
    }

    async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        name: &str,
        query: &[(String, String)],
    ) -> Response<Body> {
        let options = match log_options(query, Utc::now()) {
            Ok(options) => options,
            Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", message),
        };
        let key = format!("{namespace}/{pod}");
        let previous = query_flag(query, "previous");
        // The pod's status as this agent last wrote it reaches its own
        // cache a moment after the API has it: a client that saw a restart
        // there is given a short while for the cache to follow.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let id = loop {
            let Some(object) = self.pods.get(&key) else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!(
                        "pod {pod:?} in namespace {namespace:?} is not on node {}",
                        self.node
                    ),
                );
            };
            match log_container(&object, name, previous) {
                Ok(id) => break id,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", message),
            }
        };
        let found = self.runtime.list().await.ok().and_then(|sandboxes| {
            sandboxes
                .into_iter()
                .flat_map(|s| s.containers)
                .find(|c| c.id == id)
        });
        let Some(container) = found else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("container {name:?} in pod {pod:?}: its logs are gone (id {id})"),
            );
        };
        let Some(path) = self.runtime.log_path(&container.id) else {
            return text("", "text/plain");
        };
        let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(64);
        let (runtime, id, handle) = (
            self.runtime.clone(),
            container.id.clone(),
            tokio::runtime::Handle::current(),
        );
        std::thread::spawn(move || {
            let running = || {
                handle.block_on(async {
                    runtime.list().await.is_ok_and(|sandboxes| {
                        sandboxes.iter().flat_map(|s| &s.containers).any(|c| {
                            c.id == id
                                && matches!(
                                    c.run,
                                    ContainerRun::Running { .. } | ContainerRun::Created
                                )
                        })
                    })
                })
            };
            logs::stream(&path, &options, running, &sender);
        });
        let body = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver
                .recv()
                .await
                .map(|chunk| (Ok::<_, Infallible>(chunk), receiver))
        });
        text(Body::from_stream(body), "text/plain")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_options_read_the_query() {
        let now: DateTime<Utc> = "2024-01-01T00:01:00Z".parse().unwrap();
        let query = parse_query(Some(
            "follow=true&tailLines=10&sinceSeconds=60&timestamps=1&limitBytes=100&previous=false",
        ));
        let options = log_options(&query, now).unwrap();
        assert_eq!(
            options,
            LogOptions {
                follow: true,
                tail_lines: Some(10),
                since: Some("2024-01-01T00:00:00Z".parse().unwrap()),
                timestamps: true,
                limit_bytes: Some(100),
            }
        );
        let since = log_options(
            &parse_query(Some("sinceTime=2024-01-01T00%3A00%3A30Z")),
            now,
        )
        .unwrap();
        assert_eq!(since.since, Some("2024-01-01T00:00:30Z".parse().unwrap()));
        assert!(log_options(&parse_query(Some("tailLines=-1")), now).is_err());
        assert!(log_options(&parse_query(Some("sinceTime=yesterday")), now).is_err());
    }

    #[test]
    fn logs_come_from_the_container_the_status_names() {
        let pod = |status: serde_json::Value| -> Pod {
            serde_json::from_value(
                json!({"metadata": {"name": "p"}, "status": {"containerStatuses": [status]}}),
            )
            .unwrap()
        };
        let running = pod(
            json!({"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 1,
            "containerID": "keelson://b", "state": {"running": {}},
            "lastState": {"terminated": {"exitCode": 1, "containerID": "keelson://a"}}}),
        );
        assert_eq!(log_container(&running, "c", false).unwrap(), "b");
        assert_eq!(log_container(&running, "c", true).unwrap(), "a");
        let backing_off = pod(
            json!({"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "containerID": "keelson://c"}}}),
        );
        assert_eq!(log_container(&backing_off, "c", false).unwrap(), "c");
        assert_eq!(log_container(&backing_off, "c", true).unwrap(), "c");
        let pulling = pod(
            json!({"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull"}}}),
        );
        assert_eq!(
            log_container(&pulling, "c", false).unwrap_err(),
            "container \"c\" in pod \"p\" is waiting to start: image can't be pulled"
        );
        assert_eq!(
            log_container(&pulling, "c", true).unwrap_err(),
            "previous terminated container \"c\" in pod \"p\" not found"
        );
        assert!(log_container(&pulling, "other", false).is_err());
    }

    #[test]
    fn queries_decode() {
        assert_eq!(
            parse_query(Some("command=sh&command=-c&command=echo+a%20b%3B&tty")),
            vec![
                ("command".into(), "sh".into()),
                ("command".into(), "-c".into()),
                ("command".into(), "echo a b;".into()),
                ("tty".into(), String::new()),
            ]
        );
        assert_eq!(
            parse_query(Some("a=%zz%")),
            vec![("a".into(), "%zz%".into())]
        );
    }

    #[test]
    fn groups_come_from_the_subject() {
        let ca = keelson_control::pki::ClusterCa::generate().unwrap();
        let issued = ca
            .issue_client("kube-apiserver-kubelet-client", &["system:masters"])
            .unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(organizations(&der), vec!["system:masters".to_owned()]);
        let node = ca
            .issue_client("system:node:n1", &["system:nodes"])
            .unwrap();
        let der = CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).unwrap();
        assert_eq!(organizations(&der), vec!["system:nodes".to_owned()]);
    }
}
