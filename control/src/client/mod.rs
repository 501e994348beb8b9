//! A typed client of the Kubernetes API, for the controllers, the scheduler
//! and the tools that drive a cluster.
//!
//! ```text
//!  Client::get/list/watch/create/replace/patch/delete::<K>()
//!     └─ path from K (group, version, plural, scope) ─► Transport
//!                                                        ├─ InProcess: Api::serve on this member
//!                                                        └─ Https: TLS + client certificate (kubeconfig)
//! ```
//!
//! The controllers of a member reach the store the way every client does:
//! through the API server's handlers (validation, defaulting, admission,
//! compare-and-set on `resourceVersion`). In the member's own process they
//! call the handlers directly instead of going through a socket and TLS.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use hyper::{Method, Request, Response, StatusCode, header};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::Api;

pub mod balancer;
mod https;

pub use https::{Https, Kubeconfig, KubeconfigError};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API server answered with a `Status`.
    #[error("{code} {reason}: {message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("cannot reach the API server at {server}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with the API server at {server}")]
    Tls {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP with the API server")]
    Http(#[from] hyper::Error),
    /// A request this client could not even build (a path that is not a URI).
    #[error("cannot make a request for {path}")]
    Request {
        path: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("reading the answer")]
    Body(#[source] axum::Error),
    #[error("the answer to {path} does not decode")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the request to {path} does not encode")]
    Encode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP code of an API error.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    /// A compare-and-set lost: the object moved since it was read.
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409) && !self.is_already_exists()
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, Self::Api { reason, .. } if reason == "AlreadyExists")
    }

    /// The resource version a list or watch asked for is compacted.
    pub fn is_gone(&self) -> bool {
        self.code() == Some(410)
    }

    fn from_status(code: StatusCode, body: &[u8]) -> Self {
        let status: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        Self::Api {
            code: code.as_u16(),
            reason: status["reason"].as_str().unwrap_or_default().to_owned(),
            message: status["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How requests reach an API server.
#[derive(Clone, Debug)]
enum Transport {
    /// The API server of this process, called without a socket.
    InProcess(Arc<Api>),
    Https(Https),
}

/// A client of one API server. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    transport: Transport,
}

/// Options of a list.
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<u32>,
    pub continue_token: Option<String>,
}

impl ListParams {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(s) = &self.label_selector {
            query.push(("labelSelector", s.clone()));
        }
        if let Some(s) = &self.field_selector {
            query.push(("fieldSelector", s.clone()));
        }
        if let Some(limit) = self.limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(token) = &self.continue_token {
            query.push(("continue", token.clone()));
        }
        query
    }
}

/// One page of a list.
#[derive(Debug)]
pub struct List<K> {
    pub items: Vec<K>,
    pub resource_version: String,
    pub continue_token: Option<String>,
}

/// What a watch reports.
#[derive(Debug)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
    /// Everything up to this resource version has been sent.
    Bookmark(String),
    /// The server ended the watch with this error (`410` when the version
    /// it started from is compacted).
    Error(ClientError),
}

/// The kinds of patch the API takes.
#[derive(Clone, Copy, Debug)]
pub enum Patch {
    Merge,
    Strategic,
    Json,
}

impl Patch {
    fn content_type(self) -> &'static str {
        match self {
            Self::Merge => "application/merge-patch+json",
            Self::Strategic => "application/strategic-merge-patch+json",
            Self::Json => "application/json-patch+json",
        }
    }
}

/// The path of `K`'s collection in `namespace` (all namespaces if `None`).
pub fn collection_path<K: Resource>(namespace: Option<&str>) -> String {
    let mut path = if K::GROUP.is_empty() {
        format!("/api/{}", K::VERSION)
    } else {
        format!("/apis/{}/{}", K::GROUP, K::VERSION)
    };
    if let Some(namespace) = namespace {
        path.push_str("/namespaces/");
        path.push_str(namespace);
    }
    path.push('/');
    path.push_str(K::URL_PATH_SEGMENT);
    path
}

/// The path of one object of `K`.
pub fn object_path<K: Resource>(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", collection_path::<K>(namespace))
}

fn with_query(path: &str, query: &[(&str, String)]) -> String {
    if query.is_empty() {
        return path.to_owned();
    }
    let encoded: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect();
    format!("{path}?{}", encoded.join("&"))
}

fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Client {
    /// A client of the API server in this process.
    pub fn in_process(api: Arc<Api>) -> Self {
        Self {
            transport: Transport::InProcess(api),
        }
    }

    /// A client of the API server a kubeconfig names.
    pub fn https(https: Https) -> Self {
        Self {
            transport: Transport::Https(https),
        }
    }

    /// Sends one request.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Body>> {
        match &self.transport {
            // The member's own controllers.
            Transport::InProcess(api) => {
                Ok(api.clone().serve(crate::api::Caller::Admin, request).await)
            }
            Transport::Https(https) => https.send(request).await,
        }
    }

    /// Sends a request and reads the whole answer; an error `Status` as a
    /// [`ClientError::Api`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Bytes> {
        let mut request = Request::builder().method(method).uri(path);
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request
            .header(header::ACCEPT, "application/json")
            .body(Body::from(body))
            .map_err(|source| ClientError::Request {
                path: path.to_owned(),
                source,
            })?;
        let response = self.send(request).await?;
        let code = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .map_err(ClientError::Body)?;
        if !code.is_success() {
            return Err(ClientError::from_status(code, &bytes));
        }
        Ok(bytes)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<T> {
        let bytes = self.request(method, path, content_type, body).await?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            path: path.to_owned(),
            source,
        })
    }

    fn encode(path: &str, value: &impl Serialize) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|source| ClientError::Encode {
            path: path.to_owned(),
            source,
        })
    }

    pub async fn get<K: Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<K> {
        self.get_at(&object_path::<K>(namespace, name)).await
    }

    /// The object at `path`.
    pub async fn get_at<K: DeserializeOwned>(&self, path: &str) -> Result<K> {
        self.json(Method::GET, path, "", Vec::new()).await
    }

    /// One page of `K`s (every object when `params.limit` is unset).
    pub async fn list<K: Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        params: &ListParams,
    ) -> Result<List<K>> {
        self.list_at(&collection_path::<K>(namespace), params).await
    }

    /// One page of the collection at `path`.
    pub async fn list_at<K: DeserializeOwned>(
        &self,
        collection: &str,
        params: &ListParams,
    ) -> Result<List<K>> {
        let path = with_query(collection, &params.query());
        let list: Value = self.json(Method::GET, &path, "", Vec::new()).await?;
        let decode = |source| ClientError::Decode {
            path: path.clone(),
            source,
        };
        let items = match list.get("items") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| serde_json::from_value(item.clone()).map_err(decode))
                .collect::<Result<Vec<K>>>()?,
            _ => Vec::new(),
        };
        Ok(List {
            items,
            resource_version: list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            continue_token: list["metadata"]["continue"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        })
    }

    /// Changes to `K`s after `resource_version`, as a stream that ends when
    /// the server ends the watch (after `timeout_seconds`).
    pub async fn watch<K: Resource + DeserializeOwned + Send + 'static>(
        &self,
        namespace: Option<&str>,
        params: &ListParams,
        resource_version: &str,
        timeout_seconds: u32,
    ) -> Result<impl Stream<Item = WatchEvent<K>> + Send + use<K>> {
        self.watch_at(
            &collection_path::<K>(namespace),
            params,
            resource_version,
            timeout_seconds,
        )
        .await
    }

    /// Changes to the collection at `path`.
    pub async fn watch_at<K: DeserializeOwned + Send + 'static>(
        &self,
        collection: &str,
        params: &ListParams,
        resource_version: &str,
        timeout_seconds: u32,
    ) -> Result<impl Stream<Item = WatchEvent<K>> + Send + use<K>> {
        let mut query = params.query();
        query.push(("watch", "true".into()));
        query.push(("allowWatchBookmarks", "true".into()));
        query.push(("resourceVersion", resource_version.to_owned()));
        query.push(("timeoutSeconds", timeout_seconds.to_string()));
        let path = with_query(collection, &query);
        let request = Request::get(&path)
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .map_err(|source| ClientError::Request {
                path: path.to_owned(),
                source,
            })?;
        let response = self.send(request).await?;
        let code = response.status();
        if !code.is_success() {
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .map_err(ClientError::Body)?;
            return Err(ClientError::from_status(code, &bytes));
        }
        Ok(lines(response.into_body()).map(move |line| match line {
            Ok(line) => parse_event(&path, &line),
            Err(error) => WatchEvent::Error(error),
        }))
    }

    pub async fn create<K: Resource + Serialize + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        object: &K,
    ) -> Result<K> {
        let path = collection_path::<K>(namespace);
        let body = Self::encode(&path, object)?;
        self.json(Method::POST, &path, "application/json", body)
            .await
    }

    /// Replaces the object, if its `resourceVersion` is still current
    /// (`409 Conflict` otherwise).
    pub async fn replace<K: Resource + Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned>(
        &self,
        object: &K,
    ) -> Result<K> {
        let meta = object.metadata();
        let path = object_path::<K>(
            meta.namespace.as_deref(),
            meta.name.as_deref().unwrap_or_default(),
        );
        let body = Self::encode(&path, object)?;
        self.json(Method::PUT, &path, "application/json", body)
            .await
    }

    /// Replaces the object's status, if its `resourceVersion` is still current.
    pub async fn replace_status<
        K: Resource + Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned,
    >(
        &self,
        object: &K,
    ) -> Result<K> {
        let meta = object.metadata();
        let path = format!(
            "{}/status",
            object_path::<K>(
                meta.namespace.as_deref(),
                meta.name.as_deref().unwrap_or_default()
            )
        );
        let body = Self::encode(&path, object)?;
        self.json(Method::PUT, &path, "application/json", body)
            .await
    }

    /// Patches the object (or a subresource of it, such as `status`).
    pub async fn patch<K: Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        kind: Patch,
        patch: &Value,
    ) -> Result<K> {
        let mut path = object_path::<K>(namespace, name);
        if let Some(sub) = subresource {
            path.push('/');
            path.push_str(sub);
        }
        let body = Self::encode(&path, patch)?;
        self.json(Method::PATCH, &path, kind.content_type(), body)
            .await
    }

    /// Patches the object at `path`.
    pub async fn patch_at<K: DeserializeOwned>(
        &self,
        path: &str,
        kind: Patch,
        patch: &Value,
    ) -> Result<K> {
        let body = Self::encode(path, patch)?;
        self.json(Method::PATCH, path, kind.content_type(), body)
            .await
    }

    /// Deletes the object at `path`.
    pub async fn delete_at(&self, path: &str, options: &DeleteOptions) -> Result<()> {
        let body = Self::encode(path, &options.to_json())?;
        self.request(Method::DELETE, path, "application/json", body)
            .await
            .map(drop)
    }

    /// Deletes the object. `preconditions`: the uid and resource version it
    /// must still have; `propagation`: `Background`, `Foreground` or `Orphan`.
    pub async fn delete<K: Resource>(
        &self,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<()> {
        let path = object_path::<K>(namespace, name);
        let body = Self::encode(&path, &options.to_json())?;
        self.request(Method::DELETE, &path, "application/json", body)
            .await
            .map(drop)
    }

    /// Assigns `pod` to `node` (`pods/binding`).
    pub async fn bind(&self, namespace: &str, pod: &str, node: &str) -> Result<()> {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}/binding");
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": pod, "namespace": namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let body = Self::encode(&path, &binding)?;
        self.request(Method::POST, &path, "application/json", body)
            .await
            .map(drop)
    }
}

/// How a delete goes.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub propagation: Option<&'static str>,
    pub grace_period_seconds: Option<i64>,
}

impl DeleteOptions {
    fn to_json(&self) -> Value {
        let mut options = json!({"apiVersion": "v1", "kind": "DeleteOptions"});
        if self.uid.is_some() || self.resource_version.is_some() {
            options["preconditions"] =
                json!({"uid": self.uid, "resourceVersion": self.resource_version});
        }
        if let Some(policy) = self.propagation {
            options["propagationPolicy"] = json!(policy);
        }
        if let Some(seconds) = self.grace_period_seconds {
            options["gracePeriodSeconds"] = json!(seconds);
        }
        options
    }
}

/// The lines of a streamed body.
fn lines(body: Body) -> impl Stream<Item = Result<Vec<u8>>> + Send {
    futures::stream::unfold(
        (body.into_data_stream(), Vec::<u8>::new(), false),
        |(mut stream, mut buffer, mut ended)| async move {
            loop {
                if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    return Some((Ok(line), (stream, buffer, ended)));
                }
                if ended {
                    return None;
                }
                match stream.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                    Some(Err(error)) => {
                        ended = true;
                        buffer.clear();
                        return Some((Err(ClientError::Body(error)), (stream, buffer, ended)));
                    }
                    None => {
                        ended = true;
                        if !buffer.is_empty() {
                            buffer.push(b'\n');
                        }
                    }
                }
            }
        },
    )
}

fn parse_event<K: DeserializeOwned>(path: &str, line: &[u8]) -> WatchEvent<K> {
    let decode = |source| {
        WatchEvent::Error(ClientError::Decode {
            path: path.to_owned(),
            source,
        })
    };
    let mut event: Value = match serde_json::from_slice(line) {
        Ok(event) => event,
        Err(error) => return decode(error),
    };
    let object = event["object"].take();
    let typed = |object: Value| serde_json::from_value::<K>(object);
    match event["type"].as_str().unwrap_or_default() {
        "BOOKMARK" => WatchEvent::Bookmark(
            object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
        "ERROR" => WatchEvent::Error(ClientError::Api {
            code: object["code"].as_u64().unwrap_or(500) as u16,
            reason: object["reason"].as_str().unwrap_or_default().to_owned(),
            message: object["message"].as_str().unwrap_or_default().to_owned(),
        }),
        kind => match typed(object) {
            Ok(object) => match kind {
                "ADDED" => WatchEvent::Added(object),
                "DELETED" => WatchEvent::Deleted(object),
                _ => WatchEvent::Modified(object),
            },
            Err(error) => decode(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Node, Pod};

    #[test]
    fn paths_follow_group_version_and_scope() {
        assert_eq!(
            collection_path::<Pod>(Some("ns")),
            "/api/v1/namespaces/ns/pods"
        );
        assert_eq!(collection_path::<Pod>(None), "/api/v1/pods");
        assert_eq!(object_path::<Node>(None, "n1"), "/api/v1/nodes/n1");
        assert_eq!(
            object_path::<Deployment>(Some("default"), "web"),
            "/apis/apps/v1/namespaces/default/deployments/web"
        );
        assert_eq!(
            with_query("/p", &[("labelSelector", "app in (a,b)".into())]),
            "/p?labelSelector=app%20in%20%28a%2Cb%29"
        );
    }

    #[tokio::test]
    async fn watch_lines_split_across_chunks() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(
                b"{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"a\"}}}\n{\"type\":",
            )),
            Ok(Bytes::from_static(
                b"\"BOOKMARK\",\"object\":{\"metadata\":{\"resourceVersion\":\"7\"}}}\n",
            )),
            Ok(Bytes::from_static(
                b"{\"type\":\"ERROR\",\"object\":{\"code\":410,\"reason\":\"Expired\"}}",
            )),
        ];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let events: Vec<WatchEvent<Pod>> = lines(body)
            .map(|l| parse_event("/p", &l.unwrap()))
            .collect()
            .await;
        assert!(
            matches!(&events[0], WatchEvent::Added(p) if p.metadata.name.as_deref() == Some("a"))
        );
        assert!(matches!(&events[1], WatchEvent::Bookmark(rv) if rv == "7"));
        assert!(matches!(&events[2], WatchEvent::Error(e) if e.is_gone()));
        assert_eq!(events.len(), 3);
    }
}
