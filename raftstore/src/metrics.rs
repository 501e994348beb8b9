//! Prometheus metrics, named as etcd names them so existing dashboards work.
//!
//! - store gauges, refreshed periodically ([`refresh_store_gauges`]);
//! - `etcd_disk_backend_commit_duration_seconds`, recorded on each synced write;
//! - gRPC counters and latencies with go-grpc-prometheus's names
//!   (`grpc_server_started_total`, `grpc_server_handled_total`,
//!   `grpc_server_handling_seconds`), recorded by [`GrpcMetricsLayer`];
//! - [`exposition`]: what each `/metrics` endpoint serves of the process's
//!   registry — the store's families on the store's port
//!   ([`is_store_family`]), the rest on the API server's, as etcd and
//!   kube-apiserver serve them apart.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use tonic::codegen::http;

use crate::node::Node;

/// Registers the help text of every metric the store exports.
pub fn describe() {
    describe_gauge!(
        "etcd_server_has_leader",
        "Whether a leader exists (1) or not (0)."
    );
    describe_gauge!(
        "etcd_server_is_leader",
        "Whether this member is the leader (1) or not (0)."
    );
    describe_counter!(
        "etcd_server_leader_changes_seen_total",
        "Leader changes this member has seen."
    );
    describe_histogram!(
        "etcd_disk_wal_fsync_duration_seconds",
        Unit::Seconds,
        "Latency of synced Raft log appends."
    );
    describe_counter!(
        "etcd_server_proposals_committed_total",
        "Consensus proposals committed."
    );
    describe_gauge!(
        "etcd_server_proposals_pending",
        "Proposals waiting to be committed."
    );
    describe_histogram!(
        "etcd_network_peer_round_trip_time_seconds",
        Unit::Seconds,
        "Round trip of Raft appends to each peer."
    );
    describe_histogram!(
        "keelson_raft_proposal_batch_commands",
        "Client writes proposed together as one log entry."
    );
    describe_counter!(
        "etcd_server_proposals_applied_total",
        "Consensus proposals applied."
    );
    describe_counter!(
        "etcd_server_proposals_failed_total",
        "Proposals whose command failed."
    );
    describe_gauge!(
        "etcd_mvcc_db_total_size_in_bytes",
        Unit::Bytes,
        "Size of the store's database on disk."
    );
    describe_gauge!(
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        Unit::Bytes,
        "Live data in the store's database."
    );
    describe_gauge!(
        "etcd_debugging_mvcc_keys_total",
        "Keys with history in the index."
    );
    describe_gauge!(
        "etcd_debugging_mvcc_current_revision",
        "The store's current revision."
    );
    describe_gauge!(
        "etcd_debugging_mvcc_compact_revision",
        "The revision of the last compaction."
    );
    describe_gauge!(
        "etcd_debugging_mvcc_watcher_total",
        "Watchers open on this member."
    );
    describe_histogram!(
        "etcd_disk_backend_commit_duration_seconds",
        Unit::Seconds,
        "Latency of synced writes to the database."
    );
    describe_counter!("grpc_server_started_total", "RPCs started on the server.");
    describe_counter!(
        "grpc_server_handled_total",
        "RPCs completed on the server, by status code."
    );
    describe_histogram!(
        "grpc_server_handling_seconds",
        Unit::Seconds,
        "Latency of unary RPCs until the response is ready."
    );
}

/// Sets the store gauges from the node's current state.
pub fn refresh_store_gauges(node: &Node) {
    let store = node.store();
    let (size, in_use) = store.db_size();
    gauge!("etcd_mvcc_db_total_size_in_bytes").set(size as f64);
    gauge!("etcd_mvcc_db_total_size_in_use_in_bytes").set(in_use as f64);
    gauge!("etcd_debugging_mvcc_keys_total").set(store.key_count() as f64);
    gauge!("etcd_debugging_mvcc_current_revision").set(store.revision() as f64);
    gauge!("etcd_debugging_mvcc_compact_revision").set(store.compacted_revision() as f64);
}

/// The streaming methods of the etcd API; everything else is unary.
fn grpc_type(method: &str) -> &'static str {
    match method {
        "Watch" | "LeaseKeepAlive" => "bidi_stream",
        "Snapshot" => "server_stream",
        _ => "unary",
    }
}

/// A tower layer counting and timing gRPC calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around the gRPC routes.
#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Paths are "/etcdserverpb.KV/Range".
        let path = request.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let (service, method) = (service.to_owned(), method.to_owned());
        let kind = grpc_type(&method);
        let labels = [
            ("grpc_type", kind.to_owned()),
            ("grpc_service", service),
            ("grpc_method", method),
        ];
        counter!("grpc_server_started_total", &labels).increment(1);
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            if kind == "unary" {
                // Errors come back "trailers-only", with the status in the headers;
                // a response without one is a success whose OK is in the trailers.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32);
                let mut labels = labels.to_vec();
                histogram!("grpc_server_handling_seconds", &labels)
                    .record(started.elapsed().as_secs_f64());
                let code = if code == tonic::Code::Ok {
                    "OK".to_owned()
                } else {
                    format!("{code:?}")
                };
                labels.push(("grpc_code", code));
                counter!("grpc_server_handled_total", &labels).increment(1);
            }
            Ok(response)
        })
    }
}

/// Whether a metric family is the store's, served on its metrics port (etcd's
/// `:2381/metrics`) rather than by the API server living in the same
/// process. `etcd_request_duration_seconds` is the API server's: Kubernetes
/// names its storage client's latency so.
pub fn is_store_family(name: &str) -> bool {
    (name.starts_with("etcd_") && !name.starts_with("etcd_request_"))
        || name.starts_with("grpc_server_")
        || name.starts_with("keelson_raft_")
}

/// The families of the exposition `text` that `keep` accepts, by name.
///
/// Gauges that etcd and Kubernetes named with a `_total` suffix
/// (`etcd_debugging_mvcc_keys_total`, `etcd_debugging_mvcc_watcher_total`,
/// `kubeproxy_sync_proxy_rules_iptables_total`, …) keep their names, so
/// existing dashboards find them, and are typed `untyped`: Prometheus stores
/// them just the same, and `promtool check metrics` accepts `_total` only
/// on counters and untyped series.
pub fn exposition(text: &str, keep: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    // The family the lines belong to, and whether it is kept.
    let mut family = String::new();
    let mut kept = false;
    for line in text.lines() {
        if let Some(rest) = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            let name = rest.split(' ').next().unwrap_or_default();
            if name != family {
                family = name.to_owned();
                kept = keep(name);
            }
        } else if !line.is_empty() && !line.starts_with('#') {
            // A sample, `name{labels} value`; a histogram's or a summary's
            // `_bucket`, `_sum` and `_count` are its family's.
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let of_family = name
                .strip_prefix(family.as_str())
                .is_some_and(|suffix| matches!(suffix, "" | "_bucket" | "_sum" | "_count"));
            if !of_family {
                family = name.to_owned();
                kept = keep(name);
            }
        }
        if !kept {
            continue;
        }
        match line
            .strip_prefix("# TYPE ")
            .and_then(|t| t.strip_suffix(" gauge"))
        {
            Some(gauge) if gauge.ends_with("_total") => {
                out.push_str("# TYPE ");
                out.push_str(gauge);
                out.push_str(" untyped");
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP etcd_server_has_leader Whether a leader exists (1) or not (0).
# TYPE etcd_server_has_leader gauge
etcd_server_has_leader 1

# TYPE etcd_debugging_mvcc_keys_total gauge
etcd_debugging_mvcc_keys_total 12

# HELP apiserver_request_total Requests.
# TYPE apiserver_request_total counter
apiserver_request_total{verb=\"GET\",resource=\"pods\",code=\"200\"} 3

# TYPE etcd_request_duration_seconds histogram
etcd_request_duration_seconds_bucket{le=\"0.1\"} 1
etcd_request_duration_seconds_bucket{le=\"+Inf\"} 1
etcd_request_duration_seconds_sum 0.01
etcd_request_duration_seconds_count 1

# TYPE grpc_server_handling_seconds histogram
grpc_server_handling_seconds_bucket{le=\"+Inf\"} 2
grpc_server_handling_seconds_sum 0.2
grpc_server_handling_seconds_count 2

";

    fn names(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect()
    }

    #[test]
    fn the_store_port_serves_the_store_families_and_the_api_the_rest() {
        let store = exposition(TEXT, is_store_family);
        assert_eq!(
            names(&store),
            [
                "etcd_server_has_leader gauge",
                "etcd_debugging_mvcc_keys_total untyped",
                "grpc_server_handling_seconds histogram",
            ]
        );
        assert!(store.contains("grpc_server_handling_seconds_count 2\n"));
        assert!(!store.contains("etcd_request_duration_seconds"));

        let api = exposition(TEXT, |name| !is_store_family(name));
        assert_eq!(
            names(&api),
            [
                "apiserver_request_total counter",
                "etcd_request_duration_seconds histogram",
            ]
        );
        assert!(api.contains("etcd_request_duration_seconds_sum 0.01\n"));
        assert!(!api.contains("etcd_server_has_leader"));
    }

    #[test]
    fn everything_kept_is_unchanged_but_for_total_gauges() {
        let all = exposition(TEXT, |_| true);
        assert_eq!(
            all,
            TEXT.replace(
                "etcd_debugging_mvcc_keys_total gauge",
                "etcd_debugging_mvcc_keys_total untyped"
            )
        );
    }
}
