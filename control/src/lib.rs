//! The Kubernetes control plane: the API server (controllers and the
//! scheduler follow; see `docs/architecture.md`).
//!
//! ```text
//!  kubectl ──HTTPS (client cert)──► server ──► api::Api ──► storage::Store ──etcd gRPC──► Raft store
//!                                                │
//!                          discovery · object · patch · selector · table · status
//! ```
//!
//! - [`server`]: certificates, TLS and connections; `run(config, listener, shutdown)`.
//! - [`api`]: paths to resources, verbs to handlers; watch streams.
//! - [`storage`]: objects under `/registry/…` through the etcd API.
//! - [`resources`]: what is served, and where it is stored.
//! - [`object`], [`defaults`], [`validation`], [`patch`], [`selector`],
//!   [`table`], [`status`]: the Kubernetes semantics the handlers share.
//! - [`convert`]: HPAs served as autoscaling/v1 and v2, Events as core and events.k8s.io.
//! - [`allocate`]: Service ClusterIPs and NodePorts, conflict-free across members.
//! - [`openapi`]: OpenAPI v3 documents, and request bodies checked against them.
//! - [`protobuf`]: protobuf request bodies (client-go's typed clients) read as JSON.
//! - [`secrets`]: Secrets encrypted at rest (AES-256-GCM).
//! - [`join`]: the join token, and certificates for agents and members that present it.
//! - [`pki`]: the cluster CA and the certificates it issues.
//! - [`metrics`]: the help text of the metrics the control plane records.

pub mod allocate;
pub mod api;
pub mod bench;
pub mod client;
pub mod controllers;
pub mod convert;
pub mod defaults;
pub mod discovery;
pub mod join;
pub mod logging;
pub mod metrics;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod protobuf;
pub mod quantity;
pub mod resources;
pub mod runtime;
pub mod scheduler;
pub mod secrets;
pub mod selector;
pub mod server;
pub mod status;
pub mod storage;
pub mod table;
pub mod validation;
