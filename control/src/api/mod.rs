//! The REST API: paths to resources, verbs to handlers.
//!
//! ```text
//!  request ─► authenticated? ─► route(path) ─► discovery │ get │ list │ watch │ create │ update │ patch │ delete
//!                                                           └──────── Store (etcd API, compare-and-set) ──┘
//! ```
//!
//! Objects are handled as JSON values: the server sets what it owns
//! ([`crate::object`]), and every write is a transaction guarded on the
//! object's revision, so concurrent writers get `409 Conflict`, never a
//! lost update.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::allocate::{self, ServiceRange};
use crate::convert;
use crate::discovery;
use crate::join::Bootstrap;
use crate::object::{self, metadata, with_version};
use crate::openapi::OpenApi;
use crate::patch::{self, PatchType};
use crate::resources::{self, Resource};
use crate::secrets::Sealer;
use crate::status::ApiError;
use crate::storage::{Store, Stored, Written};
use crate::table;
use crate::{defaults, validation};

mod cache;
mod fairness;
mod housekeeping;
mod list;
mod members;
mod proxy;
mod request;
mod resource_metrics;
mod shape;
mod system;
mod watch;

use members::KEELSON_PATHS;

pub use fairness::{Identity, Limits};
pub use request::decode_component;
use request::{Query, Validation};
use shape::{defaults_on_create, job_selector, normalize, scale_of, set_condition};

/// The largest request body accepted (Kubernetes' own limit is 3 MiB per object).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// The content type of Kubernetes' protobuf encoding.
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
/// How long a request other than a watch, exec, log or proxy may take
/// (kube-apiserver's `--request-timeout`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Patches retried this many times when the object moves underneath them.
const PATCH_ATTEMPTS: usize = 5;

/// Namespaces every cluster has.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// `PUT /debug/flags/v` with a verbosity (`3`) or `tracing` directives
/// (`debug,openraft=warn`) as the body: the process's log level, changed
/// while it runs.
async fn set_log_level(request: Request<Body>) -> Result<Response<Body>> {
    let body = axum::body::to_bytes(request.into_body(), 4096)
        .await
        .map_err(|_| ApiError::too_large(4096))?;
    let asked = String::from_utf8_lossy(&body).into_owned();
    let now = crate::logging::change(&asked).map_err(ApiError::bad_request)?;
    tracing::info!(filter = %now, "log level changed");
    let mut answer = Response::new(Body::from(format!(
        "successfully set the log filter to {now}"
    )));
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    Ok(answer)
}

/// Renders the process's metrics in Prometheus' text format.
#[derive(Clone)]
pub struct MetricsRender(pub Arc<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for MetricsRender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsRender")
    }
}

/// The API server's shared state.
#[derive(Debug)]
pub struct Api {
    store: Store,
    codec: Codec,
    /// Watches and lists are served from here.
    caches: cache::Caches,
    fairness: fairness::Fairness,
    request_timeout: Duration,
    /// Answers joiners.
    bootstrap: Bootstrap,
    /// Where Service ClusterIPs come from.
    services: ServiceRange,
    /// `host:port` clients reach this server at.
    address: String,
    /// Ends open watches when the server stops.
    shutdown: CancellationToken,
    /// What pods tolerate of their node's failures unless they say.
    tolerations: defaults::DefaultTolerations,
    metrics: Option<MetricsRender>,
    rotate: Option<RotateCertificates>,
    /// TLS towards node agents (logs, exec).
    nodes: Option<proxy::NodeConnector>,
    /// Nodes' and pods' CPU and memory, for `metrics.k8s.io`.
    resource_metrics: resource_metrics::ResourceMetrics,
}

/// Where a request points.
#[derive(Debug)]
struct Target {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn key(&self) -> Result<String> {
        let name = self.name.as_deref().ok_or_else(ApiError::no_such_path)?;
        Ok(self.resource.key(self.namespace.as_deref(), name))
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    json_bytes(code, value.to_string().into_bytes())
}

/// A response of JSON already encoded.
fn json_bytes(code: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(error: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &error.to_status(),
    )
}

fn wants_table(request: &Request<Body>) -> bool {
    request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("as=Table"))
}

/// Objects to and from their stored bytes: JSON, and for Secrets sealed
/// (see [`crate::secrets`]).
#[derive(Clone, Debug)]
struct Codec {
    sealer: Sealer,
}

impl Codec {
    /// The stored bytes of an object, as the object clients of `resource`
    /// (its API version) see.
    fn decode(&self, resource: &Resource, stored: &Stored) -> Result<Value> {
        let key = || String::from_utf8_lossy(&stored.key).into_owned();
        let bytes = self
            .sealer
            .open(&stored.value)
            .map_err(|e| ApiError::internal(format!("object at {}: {e}", key())))?;
        let object: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::internal(format!("object at {} does not decode: {e}", key())))?;
        Ok(with_version(
            convert::from_storage(resource, object),
            stored.mod_revision,
        ))
    }

    /// What is stored for `object` of `resource`.
    fn encode(&self, resource: &Resource, object: &Value) -> Vec<u8> {
        let bytes = encode(&convert::to_storage(resource, object.clone()));
        if resource.plural == "secrets" {
            self.sealer.seal(&bytes)
        } else {
            bytes
        }
    }
}

fn encode(object: &Value) -> Vec<u8> {
    let mut stored = object.clone();
    metadata(&mut stored).remove("resourceVersion");
    stored.to_string().into_bytes()
}

/// The verb a request performs, for metrics and logs.
fn verb(method: &Method, target: Option<&Target>, watch: bool) -> &'static str {
    let named = target.is_some_and(|t| t.name.is_some());
    match *method {
        Method::GET if watch => "WATCH",
        Method::GET if named => "GET",
        Method::GET => "LIST",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE if named => "DELETE",
        Method::DELETE => "DELETECOLLECTION",
        _ => "OTHER",
    }
}

/// How the API server behaves, apart from where its data lives.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where Service ClusterIPs come from.
    pub services: ServiceRange,
    /// `host:port` clients reach this server at.
    pub address: String,
    /// What pods tolerate of their node's failures unless they say.
    pub tolerations: defaults::DefaultTolerations,
    /// Renders the process's metrics for `GET /metrics`.
    pub metrics: Option<MetricsRender>,
    /// Issues the member's own certificates again and serves the new ones.
    pub rotate: Option<RotateCertificates>,
    /// Requests in flight per priority level and per client.
    pub limits: Limits,
    /// How long an ordinary request may take before it is answered `504`.
    pub request_timeout: Duration,
}

/// Who sent a request, as its client certificate says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No certificate: only the join and health endpoints answer.
    Anonymous,
    /// A certificate of the cluster CA.
    User,
    /// A certificate of the cluster CA in `system:masters`.
    Admin,
}

impl Caller {
    /// The caller that presented `certificate` (DER), already verified
    /// against the cluster CA by the TLS layer.
    pub fn of(certificate: Option<&[u8]>) -> Self {
        match certificate {
            None => Caller::Anonymous,
            Some(der)
                if crate::pki::groups(der)
                    .iter()
                    .any(|g| g == "system:masters") =>
            {
                Caller::Admin
            }
            Some(_) => Caller::User,
        }
    }
}

/// Issues a member's certificates again (`POST
/// /keelson/v1/certificates/rotate`); their expiry dates.
#[derive(Clone)]
pub struct RotateCertificates(
    pub Arc<dyn Fn() -> std::result::Result<Value, String> + Send + Sync>,
);

impl std::fmt::Debug for RotateCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RotateCertificates")
    }
}

impl Api {
    pub fn new(
        store: Store,
        sealer: Sealer,
        bootstrap: Bootstrap,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let nodes = match bootstrap.kubelet_client() {
            Ok((ca, client)) => proxy::NodeConnector::new(&ca, &client.cert_pem, &client.key_pem),
            Err(error) => {
                tracing::warn!(%error, "no client certificate for node agents: no logs or exec");
                None
            }
        };
        let codec = Codec { sealer };
        Arc::new(Self {
            nodes,
            resource_metrics: resource_metrics::ResourceMetrics::default(),
            caches: cache::Caches::new(store.clone(), codec.clone(), shutdown.clone()),
            fairness: fairness::Fairness::new(settings.limits),
            request_timeout: settings.request_timeout,
            store,
            codec,
            bootstrap,
            services: settings.services,
            address: settings.address,
            shutdown,
            tolerations: settings.tolerations,
            metrics: settings.metrics,
            rotate: settings.rotate,
        })
    }

    /// Answers one request from `caller`.
    /// A client that is not anonymous presented a
    /// certificate the cluster CA signed.
    pub async fn serve(self: Arc<Self>, caller: Caller, request: Request<Body>) -> Response<Body> {
        let authenticated = caller != Caller::Anonymous;
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let (response, verb, resource) = match (request.method(), path.as_str()) {
            (method, path) if path.starts_with(KEELSON_PATHS) => {
                let verb = if method == Method::GET { "GET" } else { "POST" };
                (
                    self.keelson_endpoint(caller, request).await,
                    verb,
                    String::new(),
                )
            }
            // What Kubernetes shows anyone (system:public-info-viewer).
            (&Method::GET, "/healthz" | "/livez" | "/readyz" | "/version") if !authenticated => {
                self.route(request).await
            }
            _ if authenticated => {
                // Every log line of the request carries what it was.
                let span = tracing::debug_span!("request", %method, %path);
                tracing::Instrument::instrument(self.admit(request), span).await
            }
            _ => (Err(ApiError::unauthorized()), "OTHER", String::new()),
        };
        let mut response = response.unwrap_or_else(|error| error_response(&error));
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        let code = response.status().as_u16().to_string();
        let elapsed = started.elapsed();
        metrics::counter!("apiserver_request_total", "verb" => verb, "resource" => resource.clone(), "code" => code.clone()).increment(1);
        if verb != "WATCH" {
            metrics::histogram!("apiserver_request_duration_seconds", "verb" => verb, "resource" => resource.clone())
                .record(elapsed.as_secs_f64());
        }
        tracing::debug!(%method, %path, verb, resource, code, elapsed_ms = elapsed.as_millis() as u64, "request");
        response
    }

    async fn route(
        &self,
        request: Request<Body>,
    ) -> (Result<Response<Body>>, &'static str, String) {
        let path = request.uri().path().to_owned();
        if path == "/metrics"
            && request.method() == Method::GET
            && let Some(render) = &self.metrics
        {
            let mut text = Response::new(Body::from((render.0)()));
            text.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return (Ok(text), "GET", String::new());
        }
        if path == "/debug/flags/v" && request.method() == Method::PUT {
            return (set_log_level(request).await, "UPDATE", String::new());
        }
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let document = match segments.as_slice() {
            ["version"] => Some(Ok(discovery::version())),
            ["api"] => Some(Ok(discovery::core_versions(&self.address))),
            ["apis"] => Some(Ok(discovery::groups())),
            ["apis", group] => Some(discovery::group(group).ok_or_else(ApiError::no_such_path)),
            ["api", "v1"] => {
                Some(discovery::resource_list("", "v1").ok_or_else(ApiError::no_such_path))
            }
            ["apis", group, version] => {
                Some(discovery::resource_list(group, version).ok_or_else(ApiError::no_such_path))
            }
            ["openapi", "v3"] => Some(Ok(OpenApi::get().root())),
            ["openapi", "v3", rest @ ..] => Some(
                OpenApi::get()
                    .document(&rest.join("/"))
                    .cloned()
                    .ok_or_else(ApiError::no_such_path),
            ),
            _ => None,
        };
        if let Some(document) = document {
            return (
                document.map(|d| json_response(StatusCode::OK, &d)),
                "GET",
                String::new(),
            );
        }
        if matches!(segments.as_slice(), ["healthz" | "livez" | "readyz"]) {
            // Ready only while the store answers a linearizable read: an
            // API server cut off from the store's majority is not.
            if segments[0] != "livez" && !self.store_answers().await {
                return (
                    Err(ApiError::unavailable(
                        "etcd check failed: the store does not answer",
                    )),
                    "GET",
                    String::new(),
                );
            }
            let mut ok = Response::new(Body::from("ok"));
            ok.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain"),
            );
            return (Ok(ok), "GET", String::new());
        }
        if let ["apis", "metrics.k8s.io", "v1beta1", rest @ ..] = segments.as_slice()
            && request.method() == Method::GET
        {
            let resource = if rest.contains(&"nodes") {
                "nodes"
            } else {
                "pods"
            };
            let verb = if rest.len() % 2 == 0 { "GET" } else { "LIST" };
            let answer = self.metrics_api(rest, request.uri().query()).await;
            return (
                answer.map(|v| json_response(StatusCode::OK, &v)),
                verb,
                resource.into(),
            );
        }
        if let ["api", "v1", "nodes", node, "proxy", rest @ ..] = segments.as_slice()
            && request.method() == Method::GET
        {
            let path = format!("/{}", rest.join("/"));
            return (
                self.node_proxy(node, &path, request.uri().query()).await,
                "CONNECT",
                "nodes".into(),
            );
        }
        let target = match segments.as_slice() {
            ["api", "v1", rest @ ..] => parse_target("", "v1", rest),
            ["apis", group, version, rest @ ..] => parse_target(group, version, rest),
            _ => None,
        };
        let Some(target) = target else {
            return (Err(ApiError::no_such_path()), "OTHER", String::new());
        };
        if target.resource.plural == "pods" && target.name.is_some() {
            match target.subresource.as_deref() {
                Some("log") if request.method() == Method::GET => {
                    return (self.pod_logs(&target, request).await, "GET", "pods".into());
                }
                Some("exec") if matches!(*request.method(), Method::GET | Method::POST) => {
                    return (
                        self.pod_exec(&target, request).await,
                        "CONNECT",
                        "pods".into(),
                    );
                }
                _ => {}
            }
        }
        let query = Query::parse(request.uri().query());
        let watch = query.flag("watch");
        let verb = verb(request.method(), Some(&target), watch);
        let resource = target.resource.plural.to_owned();
        (self.handle(target, query, request).await, verb, resource)
    }

    async fn handle(
        &self,
        target: Target,
        query: Query,
        request: Request<Body>,
    ) -> Result<Response<Body>> {
        let table = wants_table(&request);
        let method = request.method().clone();
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let mut body = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| ApiError::too_large(MAX_BODY_BYTES))?;
        let mut content_type = content_type;
        // client-go's typed clients send protobuf; the handlers read JSON.
        if content_type.starts_with(PROTOBUF) {
            let object = crate::protobuf::to_json(&body).map_err(|e| {
                ApiError::bad_request(format!("the protobuf body does not decode: {e}"))
            })?;
            body = object.to_string().into();
            content_type = "application/json".into();
        }
        let sub = target.subresource.clone();
        let named = target.name.is_some();
        if target.resource.namespaced
            && target.namespace.is_none()
            && (named || method != Method::GET)
        {
            return Err(ApiError::no_such_path());
        }
        if let Some(sub) = sub.as_deref()
            && !target.resource.has(sub)
        {
            return Err(ApiError::no_such_path());
        }
        let mut warnings = Vec::new();
        let validation = Validation::from_query(&query)?;
        let (code, value) = match (method, named, sub.as_deref()) {
            (Method::GET, false, None) if query.flag("watch") => {
                return self.watch(&target, &query, table).await;
            }
            (Method::GET, false, None) => return self.list(&target, &query, table).await,
            (Method::GET, true, Some("scale")) => {
                (StatusCode::OK, scale_of(&self.get(&target).await?))
            }
            (Method::GET, true, None | Some("status")) => {
                let object = self.get_at(&target, &query).await?;
                if table {
                    let rv = object["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    (
                        StatusCode::OK,
                        table::table(target.resource.kind, &[object], &rv, None),
                    )
                } else {
                    (StatusCode::OK, object)
                }
            }
            (Method::POST, false, None) => {
                let created = self
                    .create(
                        &target,
                        &query,
                        &content_type,
                        &body,
                        (validation, &mut warnings),
                    )
                    .await?;
                (StatusCode::CREATED, created)
            }
            (Method::POST, true, Some("binding")) => {
                (StatusCode::CREATED, self.bind(&target, &body).await?)
            }
            (Method::POST, true, Some("eviction")) => {
                self.delete(&target, &[]).await?;
                (StatusCode::CREATED, success())
            }
            (Method::PUT, true, sub) => (
                StatusCode::OK,
                self.update(&target, sub, &body, (validation, &mut warnings))
                    .await?,
            ),
            (Method::PATCH, true, sub) => {
                let kind = PatchType::from_content_type(&content_type)
                    .ok_or_else(|| ApiError::unsupported_media_type(&content_type))?;
                (
                    StatusCode::OK,
                    self.patch(&target, sub, kind, &body, (validation, &mut warnings))
                        .await?,
                )
            }
            (Method::DELETE, true, None) => (StatusCode::OK, self.delete(&target, &body).await?),
            (Method::DELETE, false, None) => (
                StatusCode::OK,
                self.delete_collection(&target, &query).await?,
            ),
            (method, _, _) => {
                return Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource ({method})"
                )));
            }
        };
        let mut response = json_response(code, &value);
        for warning in warnings {
            let text = format!("299 - {}", Value::String(warning));
            if let Ok(value) = header::HeaderValue::from_str(&text) {
                response.headers_mut().append(header::WARNING, value);
            }
        }
        Ok(response)
    }

    async fn get(&self, target: &Target) -> Result<Value> {
        Ok(self.current(target).await?.1)
    }

    /// A GET: from the store, or with `resourceVersion=0` (what node agents
    /// ask for their Node) from the watch cache, as Kubernetes serves it.
    async fn get_at(&self, target: &Target, query: &Query) -> Result<Value> {
        if query.get("resourceVersion") == Some("0") {
            let cache = self.cache_at(target.resource, watch::ReadAt::Any).await?;
            let cached = cache
                .get(target.key()?.as_bytes())
                .ok_or_else(|| ApiError::not_found(target.resource, target.name()))?;
            return Ok(cached.object());
        }
        self.get(target).await
    }

    /// The object `target` names, as stored (for its revision) and as its
    /// clients see it; `404` if there is none.
    async fn current(&self, target: &Target) -> Result<(Stored, Value)> {
        let stored = self
            .store
            .get(target.key()?.as_bytes())
            .await?
            .ok_or_else(|| ApiError::not_found(target.resource, target.name()))?;
        let object = self.codec.decode(target.resource, &stored)?;
        Ok((stored, object))
    }

    async fn require_namespace(&self, namespace: &str) -> Result<()> {
        let namespaces =
            resources::find("", "v1", "namespaces").ok_or_else(ApiError::no_such_path)?;
        let stored = self
            .store
            .get(namespaces.key(None, namespace).as_bytes())
            .await?
            .ok_or_else(|| ApiError::not_found(namespaces, namespace))?;
        let object = self.codec.decode(namespaces, &stored)?;
        if object["metadata"]["deletionTimestamp"].is_string() {
            return Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {namespace} because it is being terminated"
            )));
        }
        Ok(())
    }

    async fn create(
        &self,
        target: &Target,
        query: &Query,
        content_type: &str,
        body: &[u8],
        (validation, warnings): (Validation, &mut Vec<String>),
    ) -> Result<Value> {
        if !content_type.starts_with("application/json") && !content_type.is_empty() {
            return Err(ApiError::unsupported_media_type(content_type));
        }
        let resource = target.resource;
        let mut object = object::decode(resource, body)?;
        validation.check(resource, &mut object, warnings)?;
        if let Some(namespace) = target.namespace.as_deref() {
            self.require_namespace(namespace).await?;
        }
        let name = object::prepare_create(resource, &mut object, target.namespace.as_deref())?;
        defaults_on_create(resource, &mut object);
        defaults::apply(resource, &mut object);
        match resource.plural {
            "pods" => defaults::admit_pod(&mut object, self.tolerations),
            "jobs" => job_selector(&mut object),
            _ => {}
        }
        normalize(resource, &mut object);
        let causes = validation::check(resource, &object);
        if !causes.is_empty() {
            return Err(ApiError::invalid(resource, &name, causes));
        }
        if query.get("dryRun").is_some() {
            return Ok(object);
        }
        let taken = self.allocate(resource, &mut object, None).await?;
        let key = resource.key(target.namespace.as_deref(), &name);
        match self
            .store
            .create(key.as_bytes(), self.codec.encode(resource, &object))
            .await
        {
            Ok(Written::Ok(revision)) => Ok(with_version(object, revision)),
            Ok(Written::Conflict(_)) => {
                self.release(resource, &taken).await;
                Err(ApiError::already_exists(resource, &name))
            }
            Err(error) => {
                self.release(resource, &taken).await;
                Err(error.into())
            }
        }
    }

    /// A Service's ClusterIP and NodePorts; what was newly taken.
    async fn allocate(
        &self,
        resource: &Resource,
        object: &mut Value,
        current: Option<&Value>,
    ) -> Result<Value> {
        if resource.plural != "services" {
            return Ok(Value::Null);
        }
        allocate::service(&self.store, self.services, object, current).await
    }

    /// Gives back what a Service held (or what a failed write had taken).
    async fn release(&self, resource: &Resource, service: &Value) {
        if resource.plural == "services"
            && let Err(error) = allocate::release(&self.store, service).await
        {
            tracing::warn!(%error, "could not release a Service's addresses");
        }
    }

    /// Replaces the object (or its status, or its scale).
    async fn update(
        &self,
        target: &Target,
        sub: Option<&str>,
        body: &[u8],
        (validation, warnings): (Validation, &mut Vec<String>),
    ) -> Result<Value> {
        let resource = target.resource;
        let mut given = match sub {
            Some("scale") => {
                let scale: Value = serde_json::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
                })?;
                return self.rescale(target, &scale).await;
            }
            _ => object::decode(resource, body)?,
        };
        validation.check(resource, &mut given, warnings)?;
        let name = object::name_of(&given);
        if !name.is_empty() && name != target.name() {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                target.name()
            )));
        }
        let precondition = given["metadata"]["resourceVersion"]
            .as_str()
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))
            })
            .transpose()?;
        // Without a resourceVersion the update is unconditional: one that
        // loses a race with another writer tries again on the new state.
        let attempts = if precondition.is_some() {
            1
        } else {
            PATCH_ATTEMPTS
        };
        for _ in 0..attempts {
            let (current, current_object) = self.current(target).await?;
            if precondition.is_some_and(|rv| rv != current.mod_revision) {
                return Err(ApiError::conflict(resource, target.name()));
            }
            let updated = merge_update(resource, sub, &current_object, given.clone());
            match self
                .write_update(target, &current_object, updated, current.mod_revision)
                .await
            {
                Err(error) if error.reason == "Conflict" && precondition.is_none() => continue,
                outcome => return outcome,
            }
        }
        Err(ApiError::conflict(resource, target.name()))
    }

    /// Writes `updated` over `current` (at `revision`); completes a deletion
    /// whose last finalizer is gone.
    async fn write_update(
        &self,
        target: &Target,
        current: &Value,
        mut updated: Value,
        revision: i64,
    ) -> Result<Value> {
        let resource = target.resource;
        object::prepare_update(current, &mut updated);
        defaults::apply(resource, &mut updated);
        normalize(resource, &mut updated);
        let mut causes = validation::check(resource, &updated);
        causes.extend(validation::check_update(resource, current, &updated));
        if !causes.is_empty() {
            return Err(ApiError::invalid(resource, target.name(), causes));
        }
        let taken = self.allocate(resource, &mut updated, Some(current)).await?;
        let key = target.key()?;
        // A namespace also waits for the finalizers in its spec (`kubernetes`:
        // the namespace controller empties it first).
        let finalized = updated["metadata"]["deletionTimestamp"].is_string()
            && updated["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty)
            && (resource.plural != "namespaces"
                || updated["spec"]["finalizers"]
                    .as_array()
                    .is_none_or(Vec::is_empty));
        let written = if finalized {
            self.store.delete(key.as_bytes(), revision).await
        } else {
            self.store
                .update(
                    key.as_bytes(),
                    self.codec.encode(resource, &updated),
                    revision,
                )
                .await
        };
        match written {
            Ok(Written::Ok(revision)) => {
                if finalized {
                    self.release(resource, &updated).await;
                }
                Ok(with_version(updated, revision))
            }
            failed => {
                self.release(resource, &taken).await;
                match failed? {
                    Written::Conflict(None) => Err(ApiError::not_found(resource, target.name())),
                    _ => Err(ApiError::conflict(resource, target.name())),
                }
            }
        }
    }

    async fn patch(
        &self,
        target: &Target,
        sub: Option<&str>,
        kind: PatchType,
        body: &[u8],
        (validation, warnings): (Validation, &mut Vec<String>),
    ) -> Result<Value> {
        let resource = target.resource;
        for _ in 0..PATCH_ATTEMPTS {
            let (current, current_object) = self.current(target).await?;
            if sub == Some("scale") {
                let mut scale = scale_of(&current_object);
                patch::apply(kind, &mut scale, body)?;
                match self.rescale(target, &scale).await {
                    Err(error) if error.reason == "Conflict" => continue,
                    outcome => return outcome,
                }
            }
            let mut patched = current_object.clone();
            patch::apply(kind, &mut patched, body)?;
            warnings.clear();
            validation.check(resource, &mut patched, warnings)?;
            let precondition = patched["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_owned);
            if precondition.is_some_and(|rv| rv != current.mod_revision.to_string()) {
                return Err(ApiError::conflict(resource, target.name()));
            }
            let updated = merge_update(resource, sub, &current_object, patched);
            match self
                .write_update(target, &current_object, updated, current.mod_revision)
                .await
            {
                Err(error) if error.reason == "Conflict" => continue,
                outcome => return outcome,
            }
        }
        Err(ApiError::conflict(resource, target.name()))
    }

    /// Sets the replicas of a scalable object from a `Scale`.
    async fn rescale(&self, target: &Target, scale: &Value) -> Result<Value> {
        let replicas = scale["spec"]["replicas"]
            .as_i64()
            .filter(|r| *r >= 0)
            .ok_or_else(|| {
                ApiError::invalid(
                    target.resource,
                    target.name(),
                    vec![crate::status::Cause::invalid(
                        "spec.replicas",
                        &scale["spec"]["replicas"].to_string(),
                        "must be greater than or equal to 0",
                    )],
                )
            })?;
        let precondition = scale["metadata"]["resourceVersion"]
            .as_str()
            .filter(|v| !v.is_empty());
        let attempts = if precondition.is_some() {
            1
        } else {
            PATCH_ATTEMPTS
        };
        for _ in 0..attempts {
            let (current, current_object) = self.current(target).await?;
            if precondition.is_some_and(|rv| rv != current.mod_revision.to_string()) {
                return Err(ApiError::conflict(target.resource, target.name()));
            }
            let mut updated = current_object.clone();
            updated["spec"]["replicas"] = json!(replicas);
            match self
                .write_update(target, &current_object, updated, current.mod_revision)
                .await
            {
                Ok(written) => return Ok(scale_of(&written)),
                Err(error) if error.reason == "Conflict" && precondition.is_none() => continue,
                Err(error) => return Err(error),
            }
        }
        Err(ApiError::conflict(target.resource, target.name()))
    }

    /// `pods/binding`: assigns an unassigned pod to a node.
    async fn bind(&self, target: &Target, body: &[u8]) -> Result<Value> {
        let binding: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?;
        let node = binding["target"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    target.resource,
                    target.name(),
                    vec![crate::status::Cause::required("target.name")],
                )
            })?;
        let (current, pod) = self.current(target).await?;
        if let Some(assigned) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict_because(format!(
                "Operation cannot be fulfilled on pods/binding \"{}\": pod {} is already assigned to node \"{assigned}\"",
                target.name(),
                target.name()
            )));
        }
        let mut bound = pod.clone();
        bound["spec"]["nodeName"] = json!(node);
        set_condition(&mut bound, "PodScheduled", "True", None, None);
        self.write_update(target, &pod, bound, current.mod_revision)
            .await?;
        Ok(success())
    }

    async fn delete(&self, target: &Target, body: &[u8]) -> Result<Value> {
        let resource = target.resource;
        let options: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
            })?
        };
        if resource.plural == "namespaces"
            && ["default", "kube-system", "kube-public"].contains(&target.name())
        {
            return Err(ApiError::forbidden(format!(
                "namespaces {:?} is forbidden: this namespace may not be deleted",
                target.name()
            )));
        }
        // Without preconditions of its own, a delete that loses a race with
        // another writer (a controller updating status) tries again.
        let precondition = options["preconditions"].is_object();
        for _ in 0..PATCH_ATTEMPTS {
            match self.delete_once(target, &options).await {
                Err(error) if error.reason == "Conflict" && !precondition => continue,
                outcome => return outcome,
            }
        }
        Err(ApiError::conflict(resource, target.name()))
    }

    async fn delete_once(&self, target: &Target, options: &Value) -> Result<Value> {
        let resource = target.resource;
        let key = target.key()?;
        let (current, object) = self.current(target).await?;
        let preconditions = &options["preconditions"];
        if preconditions["uid"]
            .as_str()
            .is_some_and(|uid| object["metadata"]["uid"] != json!(uid))
            || preconditions["resourceVersion"]
                .as_str()
                .is_some_and(|rv| rv != current.mod_revision.to_string())
        {
            return Err(ApiError::conflict(resource, target.name()));
        }
        let mut finalizers: Vec<Value> = object["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // The garbage collector finishes what these finalizers start:
        // dependents deleted first, or set free.
        let policy = match (&options["propagationPolicy"], &options["orphanDependents"]) {
            (Value::String(policy), _) => Some(policy.as_str()),
            (_, Value::Bool(true)) => Some("Orphan"),
            _ => None,
        };
        let finalizer = match policy {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            Some("Background") | None => None,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "unsupported propagationPolicy {other:?}: use Foreground, Background or Orphan"
                )));
            }
        };
        if let Some(finalizer) = finalizer
            && !finalizers.contains(&json!(finalizer))
            && object["metadata"]["deletionTimestamp"].is_null()
        {
            finalizers.push(json!(finalizer));
        }
        let graceful = resource.plural == "pods"
            && object["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            && options["gracePeriodSeconds"].as_i64() != Some(0);
        let namespace_waits = resource.plural == "namespaces"
            && object["spec"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
        if namespace_waits || !finalizers.is_empty() || graceful {
            if object["metadata"]["deletionTimestamp"].is_string() {
                return Ok(object);
            }
            let mut marked = object.clone();
            let grace = options["gracePeriodSeconds"]
                .as_i64()
                .or_else(|| object["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(0);
            let meta = metadata(&mut marked);
            meta.insert("deletionTimestamp".into(), json!(object::now()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            if !finalizers.is_empty() {
                meta.insert("finalizers".into(), json!(finalizers));
            }
            if resource.plural == "namespaces" {
                marked["status"]["phase"] = json!("Terminating");
            }
            let written = match self
                .store
                .update(
                    key.as_bytes(),
                    self.codec.encode(resource, &marked),
                    current.mod_revision,
                )
                .await?
            {
                Written::Ok(revision) => with_version(marked, revision),
                Written::Conflict(_) => return Err(ApiError::conflict(resource, target.name())),
            };
            return Ok(written);
        }
        match self
            .store
            .delete(key.as_bytes(), current.mod_revision)
            .await?
        {
            Written::Ok(_) => {
                self.release(resource, &object).await;
                Ok(object)
            }
            Written::Conflict(None) => Err(ApiError::not_found(resource, target.name())),
            Written::Conflict(Some(_)) => Err(ApiError::conflict(resource, target.name())),
        }
    }

    async fn delete_collection(&self, target: &Target, query: &Query) -> Result<Value> {
        let listed = self.list_from_store(target, query, false).await?;
        let mut deleted = Vec::new();
        for item in listed["items"].as_array().into_iter().flatten() {
            let one = Target {
                resource: target.resource,
                namespace: item["metadata"]["namespace"].as_str().map(str::to_owned),
                name: Some(object::name_of(item).to_owned()),
                subresource: None,
            };
            match self.delete(&one, &[]).await {
                Ok(object) => deleted.push(object),
                Err(error) if error.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
        Ok(json!({
            "kind": format!("{}List", target.resource.kind),
            "apiVersion": target.resource.api_version(),
            "metadata": {"resourceVersion": listed["metadata"]["resourceVersion"]},
            "items": deleted,
        }))
    }
}

/// `{"kind": "Status", "status": "Success"}`.
fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

/// The target a path below `/api/v1` or `/apis/GROUP/VERSION` names.
fn parse_target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let owned = |s: Option<&&str>| s.map(|s| (*s).to_owned());
    if let ["namespaces", namespace, plural, tail @ ..] = rest
        && let Some(resource) = resources::find(group, version, plural)
        && resource.namespaced
        && tail.len() <= 2
    {
        return Some(Target {
            resource,
            namespace: Some((*namespace).to_owned()),
            name: owned(tail.first()),
            subresource: owned(tail.get(1)),
        });
    }
    let (plural, tail) = rest.split_first()?;
    let resource = resources::find(group, version, plural)?;
    if tail.len() > 2 || (resource.namespaced && !tail.is_empty()) {
        return None;
    }
    Some(Target {
        resource,
        namespace: None,
        name: owned(tail.first()),
        subresource: owned(tail.get(1)),
    })
}

/// What an update of `resource` (or of its `sub`resource) keeps from
/// `current`: the main resource keeps the status, `status` keeps the rest.
fn merge_update(resource: &Resource, sub: Option<&str>, current: &Value, given: Value) -> Value {
    match sub {
        // A namespace's `finalize` changes only its finalizers.
        Some("finalize") => {
            let mut updated = current.clone();
            updated["spec"]["finalizers"] = given["spec"]["finalizers"].clone();
            updated
        }
        Some("status") => {
            let mut updated = current.clone();
            updated["status"] = given["status"].clone();
            updated
        }
        _ if resource.has("status") && resource.plural != "namespaces" => {
            let mut updated = given;
            match current.get("status") {
                Some(status) => updated["status"] = status.clone(),
                None => {
                    if let Value::Object(map) = &mut updated {
                        map.remove("status");
                    }
                }
            }
            updated
        }
        _ => given,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_targets() {
        let t = parse_target(
            "",
            "v1",
            &["namespaces", "default", "pods", "web", "status"],
        )
        .unwrap();
        assert_eq!(
            (
                t.resource.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            ("pods", Some("default"), Some("web"), Some("status"))
        );
        let ns = parse_target("", "v1", &["namespaces", "default"]).unwrap();
        assert_eq!(
            (ns.resource.plural, ns.name.as_deref()),
            ("namespaces", Some("default"))
        );
        let all = parse_target("apps", "v1", &["deployments"]).unwrap();
        assert_eq!((all.resource.plural, all.namespace), ("deployments", None));
        assert!(
            parse_target("", "v1", &["pods", "web"]).is_none(),
            "a namespaced object needs its namespace"
        );
        assert!(parse_target("", "v1", &["nope"]).is_none());
        let node = parse_target("", "v1", &["nodes", "n1", "status"]).unwrap();
        assert_eq!(node.subresource.as_deref(), Some("status"));
    }

    #[test]
    fn updates_touch_only_their_part() {
        let deploy = resources::find("apps", "v1", "deployments").unwrap();
        let current = json!({"spec": {"replicas": 1}, "status": {"replicas": 1}});
        let given = json!({"spec": {"replicas": 2}, "status": {"replicas": 9}});
        let main = merge_update(deploy, None, &current, given.clone());
        assert_eq!(
            (
                main["spec"]["replicas"].as_i64(),
                main["status"]["replicas"].as_i64()
            ),
            (Some(2), Some(1))
        );
        let status = merge_update(deploy, Some("status"), &current, given);
        assert_eq!(
            (
                status["spec"]["replicas"].as_i64(),
                status["status"]["replicas"].as_i64()
            ),
            (Some(1), Some(9))
        );
    }
}
