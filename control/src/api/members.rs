//! The control plane's own membership as the API serves it: members that
//! join with the token, and the `kubernetes` Service's endpoints, which list
//! every API server that is up (node agents fail over between them).
//!
//! ```text
//!  keelson server --join URL --token T
//!     ── POST /keelson/v1/join {role: server, name, peerURLs} ──►  certificate
//!                                                                  + member added as a learner
//!                                                                  + the members to start with
//!  every API server, every 10 s:  /registry/masterleases/IP  (15 s lease)
//!     └─► Endpoints and EndpointSlice default/kubernetes = the addresses leased
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use axum::body::Body;
use hyper::{Method, Request, Response, StatusCode, header};

use super::{Api, Caller, json_response};
use crate::client::Client;
use crate::status::ApiError;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Where API servers lease their addresses, as kube-apiserver does.
const MASTER_LEASES: &str = "/registry/masterleases/";
/// How often an API server renews its address, and how long it lasts.
const LEASE_PERIOD: Duration = Duration::from_secs(10);
const LEASE_TTL: i64 = 15;

/// Where the cluster's own endpoints are (joining, certificates).
pub(super) const KEELSON_PATHS: &str = "/keelson/v1/";
/// Largest body a join or certificate request may have.
const BODY_LIMIT: usize = 64 * 1024;

impl Api {
    /// The cluster's own endpoints. The CA and the join are the two doors
    /// open to clients without a certificate; rotating a member's
    /// certificates takes `system:masters`.
    pub(super) async fn keelson_endpoint(
        &self,
        caller: Caller,
        request: Request<Body>,
    ) -> Result<Response<Body>> {
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let body = |request: Request<Body>| async move {
            axum::body::to_bytes(request.into_body(), BODY_LIMIT)
                .await
                .map_err(|_| ApiError::too_large(BODY_LIMIT))
        };
        let json = |value: Value| json_response(StatusCode::OK, &value);
        match (method, path.trim_start_matches(KEELSON_PATHS), caller) {
            (Method::GET, "cacerts", _) => {
                let mut pem = Response::new(Body::from(self.bootstrap.ca_pem().to_owned()));
                pem.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/x-pem-file"),
                );
                Ok(pem)
            }
            (Method::POST, "join", _) => self.join(&body(request).await?).await.map(json),
            (_, _, Caller::Anonymous) => Err(ApiError::unauthorized()),
            (Method::POST, "serving-certificate", _) => self
                .bootstrap
                .serving_certificate(&body(request).await?)
                .map(json),
            (Method::POST, "certificates/rotate", Caller::Admin) => match &self.rotate {
                Some(rotate) => (rotate.0)()
                    .map(json)
                    .map_err(|e| ApiError::internal(format!("cannot rotate: {e}"))),
                None => Err(ApiError::no_such_path()),
            },
            (Method::POST, "certificates/rotate", _) => Err(ApiError::forbidden(
                "rotating a member's certificates takes a client of system:masters",
            )),
            _ => Err(ApiError::no_such_path()),
        }
    }

    /// Whether the store answers a linearizable read within two seconds
    /// (`/readyz`).
    pub(super) async fn store_answers(&self) -> bool {
        let read = self.store.get(b"/registry/health");
        matches!(
            tokio::time::timeout(Duration::from_secs(2), read).await,
            Ok(Ok(_))
        )
    }

    /// Answers a join request: a certificate for a node or a member, and for
    /// a member (`role: server`) its place in the store's cluster, added as
    /// a learner that promotes itself once it has caught up.
    pub(super) async fn join(&self, body: &[u8]) -> Result<Value> {
        let mut answer = self.bootstrap.join(body)?;
        let request: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?;
        if request["role"].as_str() != Some("server") {
            return Ok(answer);
        }
        let name = request["name"].as_str().unwrap_or_default();
        let peer_urls: Vec<String> = request["peerURLs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect();
        if peer_urls.is_empty()
            || peer_urls
                .iter()
                .any(|u| !u.starts_with("http://") && !u.starts_with("https://"))
        {
            return Err(ApiError::bad_request(
                "peerURLs: at least one http(s)://HOST:PORT the other members reach this one at",
            ));
        }
        let members = self.store.members().await?;
        let same_urls = |m: &keelson_proto::etcdserverpb::Member| {
            m.peer_ur_ls.iter().collect::<BTreeSet<_>>() == peer_urls.iter().collect()
        };
        let clash = members
            .iter()
            .find(|m| m.name == name || m.peer_ur_ls.iter().any(|u| peer_urls.contains(u)));
        let id = match clash {
            // A join that failed after the member was added, tried again.
            Some(m) if m.name.is_empty() && m.is_learner && same_urls(m) => m.id,
            Some(m) => {
                let who = if m.name.is_empty() {
                    format!("{:x}", m.id)
                } else {
                    m.name.clone()
                };
                return Err(ApiError::conflict_because(format!(
                    "member {who} ({}) is already in the cluster; start it with its data directory, or, if its data is lost, remove it first (keelson member remove {who}) and join again",
                    m.peer_ur_ls.join(",")
                )));
            }
            None => {
                let added = self.store.add_learner(peer_urls.clone()).await?;
                tracing::info!(member = %format!("{:x}", added.id), %name, urls = %peer_urls.join(","), "added a member as a learner");
                added.id
            }
        };
        let mut founders: Vec<Value> = self
            .store
            .members()
            .await?
            .into_iter()
            .map(|m| {
                json!({
                    "id": format!("{:x}", m.id),
                    "name": if m.id == id { name.to_owned() } else { m.name },
                    "peerURLs": m.peer_ur_ls,
                    "isLearner": m.is_learner,
                })
            })
            .collect();
        founders.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        answer["memberID"] = json!(format!("{id:x}"));
        answer["members"] = json!(founders);
        answer["clusterToken"] = json!(self.bootstrap.cluster_token());
        Ok(answer)
    }

    /// Leases this API server's address and keeps `default/kubernetes`'s
    /// endpoints listing every address leased, until shutdown.
    pub async fn advertise(self: Arc<Self>) {
        let Ok(address) = self.address.parse::<std::net::SocketAddr>() else {
            tracing::warn!(address = %self.address, "not advertising an address that is not IP:PORT");
            return;
        };
        let client = Client::in_process(self.clone());
        loop {
            let key = format!("{MASTER_LEASES}{}", address.ip());
            let leased = self
                .store
                .put_expiring(key.as_bytes(), address.to_string().into_bytes(), LEASE_TTL)
                .await;
            match leased {
                Ok(()) => {
                    if let Err(error) = self.reconcile_endpoints(&client, address.port()).await {
                        tracing::debug!(%error, "updating the kubernetes endpoints failed; will retry");
                    }
                }
                Err(error) => tracing::debug!(%error, "leasing this API server's address failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(LEASE_PERIOD) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Makes `default/kubernetes`'s Endpoints and EndpointSlice list the
    /// leased addresses.
    async fn reconcile_endpoints(&self, client: &Client, port: u16) -> Result<(), String> {
        let leased = self
            .store
            .list(MASTER_LEASES.as_bytes(), None, 0, 0)
            .await
            .map_err(|e| e.to_string())?;
        let mut ips: Vec<String> = leased
            .items
            .iter()
            .filter_map(|kv| {
                let text = String::from_utf8_lossy(&kv.key).into_owned();
                text.strip_prefix(MASTER_LEASES).map(str::to_owned)
            })
            .collect();
        ips.sort();
        if ips.is_empty() {
            return Ok(());
        }
        let subsets = vec![EndpointSubset {
            addresses: Some(
                ips.iter()
                    .map(|ip| EndpointAddress {
                        ip: ip.clone(),
                        ..EndpointAddress::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: Some("https".into()),
                port: i32::from(port),
                protocol: Some("TCP".into()),
                ..EndpointPort::default()
            }]),
            ..EndpointSubset::default()
        }];
        let meta = |labels: &[(&str, &str)]| ObjectMeta {
            name: Some("kubernetes".into()),
            namespace: Some("default".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        };
        let endpoints = Endpoints {
            metadata: meta(&[("endpointslice.kubernetes.io/skip-mirror", "true")]),
            subsets: Some(subsets),
        };
        upsert(client, endpoints, |a, b| a.subsets == b.subsets).await?;
        let slice = EndpointSlice {
            metadata: meta(&[("kubernetes.io/service-name", "kubernetes")]),
            address_type: "IPv4".into(),
            endpoints: ips
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Endpoint::default()
                })
                .collect(),
            ports: Some(vec![SlicePort {
                name: Some("https".into()),
                port: Some(i32::from(port)),
                protocol: Some("TCP".into()),
                ..SlicePort::default()
            }]),
        };
        upsert(client, slice, |a, b| {
            a.endpoints == b.endpoints && a.ports == b.ports
        })
        .await
    }
}

/// Creates `object`, or replaces the stored one unless `same` says it
/// already is what is wanted.
async fn upsert<K>(
    client: &Client,
    mut object: K,
    same: impl Fn(&K, &K) -> bool,
) -> Result<(), String>
where
    K: k8s_openapi::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone,
{
    let name = object.metadata().name.clone().unwrap_or_default();
    match client.get::<K>(Some("default"), &name).await {
        Ok(stored) if same(&stored, &object) => Ok(()),
        Ok(stored) => {
            object.metadata_mut().resource_version = stored.metadata().resource_version.clone();
            client
                .replace(&object)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
        Err(error) if error.is_not_found() => client
            .create(Some("default"), &object)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    }
}
