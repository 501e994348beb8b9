//! `pods/log` and `pods/exec`: the API server checks the request against
//! the pod, then hands it to the agent of the pod's node, as kube-apiserver
//! does with the kubelet.
//!
//! ```text
//!  kubectl ─► GET pods/NAME/log?container=C&follow…  ─► agent GET /containerLogs/NS/NAME/C?…  (streamed back)
//!  kubectl ─► GET pods/NAME/exec?command=…  Upgrade: websocket
//!                 └─► agent GET /exec/NS/NAME/C?…  Upgrade: websocket ─► 101 ─► bytes spliced both ways
//!  GET nodes/NAME/proxy/PATH ─► agent GET /PATH  (/metrics, /metrics/resource, /healthz)
//! ```
//!
//! The agent's serving certificate is checked against the cluster CA for
//! the node's address; the API server presents its own client certificate
//! (`kube-apiserver-kubelet-client`, group `system:masters`).

use std::sync::Arc;

use axum::body::Body;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use super::{Api, Target};
use crate::resources;
use crate::status::ApiError;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// TLS towards node agents.
#[derive(Clone)]
pub(super) struct NodeConnector {
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for NodeConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConnector").finish_non_exhaustive()
    }
}

impl NodeConnector {
    /// Trusts `ca_pem` and presents `cert_pem`/`key_pem`.
    pub(super) fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Option<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).flatten() {
            roots.add(cert).ok()?;
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .flatten()
                .collect();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).ok()?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .ok()?;
        // Upgrades (exec) need HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Some(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// An HTTP/1.1 connection to the agent at `host:port`, upgrades allowed.
    async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> Result<hyper::client::conn::http1::SendRequest<Body>> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::internal(format!("cannot reach the node agent at {host}:{port}: {e}"))
        };
        let name = ServerName::try_from(host.to_owned()).map_err(|e| unreachable(&e))?;
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| unreachable(&e))?;
        drop(tcp.set_nodelay(true));
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(&e))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "node agent connection ended");
            }
        });
        Ok(sender)
    }
}

/// The container a log or exec request is for: the one named, or the
/// pod's only one.
fn container_of(pod: &Value, name: &str, asked: Option<&str>) -> Result<String> {
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (containers, init) = (names("containers"), names("initContainers"));
    match asked.filter(|c| !c.is_empty()) {
        Some(asked) => {
            if containers.iter().chain(&init).any(|c| c == asked) {
                Ok(asked.to_owned())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {asked} is not valid for pod {name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// The query without `container` (the path carries it).
fn forwarded_query(query: Option<&str>) -> String {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("container="))
        .collect::<Vec<_>>()
        .join("&")
}

fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

impl Api {
    /// The address and port of node `name`'s agent.
    pub(super) async fn agent_of(&self, name: &str) -> Result<(String, u16)> {
        let nodes = resources::find("", "v1", "nodes").ok_or_else(ApiError::no_such_path)?;
        let node = self
            .get(&Target {
                resource: nodes,
                namespace: None,
                name: Some(name.to_owned()),
                subresource: None,
            })
            .await?;
        agent_endpoint(&node)
    }

    /// `GET nodes/NAME/proxy/PATH`: the agent's `PATH` (its metrics,
    /// `/metrics/resource`, `/healthz`), streamed through.
    pub(super) async fn node_proxy(
        &self,
        name: &str,
        path: &str,
        query: Option<&str>,
    ) -> Result<Response<Body>> {
        let (host, port) = self.agent_of(name).await?;
        let path = match query {
            Some(q) if !q.is_empty() => format!("{path}?{q}"),
            _ => path.to_owned(),
        };
        self.agent_get(&host, port, &path).await
    }

    /// A GET to an agent, its answer streamed through.
    pub(super) async fn agent_get(
        &self,
        host: &str,
        port: u16,
        path: &str,
    ) -> Result<Response<Body>> {
        let mut sender = self.connector()?.connect(host, port).await?;
        let forwarded = Request::get(path)
            .header(header::HOST, format!("{host}:{port}"))
            .body(Body::empty())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let response = sender
            .send_request(forwarded)
            .await
            .map_err(|e| ApiError::internal(format!("node agent at {host}:{port}: {e}")))?;
        Ok(response.map(Body::new))
    }

    /// The pod, its node's agent address, and the container asked for.
    async fn agent_target(
        &self,
        target: &Target,
        query: Option<&str>,
    ) -> Result<(Value, String, u16, String)> {
        let pod = self.get(target).await?;
        let name = target.name();
        let container = container_of(&pod, name, query_value(query, "container"))?;
        let node_name = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        if node_name.is_empty() {
            return Err(ApiError::bad_request(format!(
                "pod {name} does not have a host assigned"
            )));
        }
        let (address, port) = self.agent_of(node_name).await?;
        Ok((pod, address, port, container))
    }

    fn connector(&self) -> Result<&NodeConnector> {
        self.nodes.as_ref().ok_or_else(|| {
            ApiError::internal("this API server has no client certificate for node agents")
        })
    }

    /// `GET pods/NAME/log`: the agent's answer, streamed through.
    pub(super) async fn pod_logs(
        &self,
        target: &Target,
        request: Request<Body>,
    ) -> Result<Response<Body>> {
        let query = request.uri().query();
        let (_, host, port, container) = self.agent_target(target, query).await?;
        let path = format!(
            "/containerLogs/{}/{}/{container}?{}",
            target.namespace.as_deref().unwrap_or_default(),
            target.name(),
            forwarded_query(query)
        );
        self.agent_get(&host, port, &path).await
    }

    /// `pods/NAME/exec` with a WebSocket upgrade: the agent's `101`, then
    /// the two connections spliced.
    pub(super) async fn pod_exec(
        &self,
        target: &Target,
        mut request: Request<Body>,
    ) -> Result<Response<Body>> {
        let query = request.uri().query().map(str::to_owned);
        let (pod, host, port, container) = self.agent_target(target, query.as_deref()).await?;
        if let Some(phase @ ("Succeeded" | "Failed")) = pod["status"]["phase"].as_str() {
            return Err(ApiError::bad_request(format!(
                "cannot exec into a container in a completed pod; current phase is {phase}"
            )));
        }
        let path = format!(
            "/exec/{}/{}/{container}?{}",
            target.namespace.as_deref().unwrap_or_default(),
            target.name(),
            forwarded_query(query.as_deref())
        );
        let mut forwarded = Request::get(path).header(header::HOST, format!("{host}:{port}"));
        for name in [
            header::CONNECTION,
            header::UPGRADE,
            header::SEC_WEBSOCKET_KEY,
            header::SEC_WEBSOCKET_VERSION,
            header::SEC_WEBSOCKET_PROTOCOL,
        ] {
            if let Some(value) = request.headers().get(&name) {
                forwarded = forwarded.header(name, value);
            }
        }
        let forwarded = forwarded
            .body(Body::empty())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let from_client = hyper::upgrade::on(&mut request);
        let mut sender = self.connector()?.connect(&host, port).await?;
        let mut response = sender
            .send_request(forwarded)
            .await
            .map_err(|e| ApiError::internal(format!("node agent at {host}:{port}: {e}")))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(response.map(Body::new));
        }
        let to_agent = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(agent)) = (from_client.await, to_agent.await) else {
                return;
            };
            let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
            drop(tokio::io::copy_bidirectional(&mut client, &mut agent).await);
        });
        let (parts, _) = response.into_parts();
        Ok(Response::from_parts(parts, Body::empty()))
    }
}

/// Where a Node's agent serves (its address and `daemonEndpoints` port);
/// an error naming the node when it reports none (hollow nodes serve none).
pub(super) fn agent_endpoint(node: &Value) -> Result<(String, u16)> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let addresses = node["status"]["addresses"].as_array();
    let address = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|kind| {
            addresses
                .into_iter()
                .flatten()
                .find(|a| a["type"] == *kind)
                .and_then(|a| a["address"].as_str())
        })
        .ok_or_else(|| ApiError::internal(format!("node {name} reports no address")))?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| ApiError::internal(format!("node {name} reports no agent endpoint")))?;
    Ok((address.to_owned(), port as u16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_named_or_the_only_one() {
        let one = json!({"spec": {"containers": [{"name": "web"}]}});
        assert_eq!(container_of(&one, "p", None).unwrap(), "web");
        assert_eq!(container_of(&one, "p", Some("")).unwrap(), "web");
        assert_eq!(
            container_of(&one, "p", Some("db")).unwrap_err().message,
            "container db is not valid for pod p"
        );
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(
            container_of(&two, "p", None).unwrap_err().message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(container_of(&two, "p", Some("i")).unwrap(), "i");
    }

    #[test]
    fn the_container_travels_in_the_path() {
        assert_eq!(
            forwarded_query(Some("container=c&follow=true&tailLines=3")),
            "follow=true&tailLines=3"
        );
    }
}
