//! What an operator scrapes and runs: `/health`, `/metrics` with etcd's
//! metric names, and the store benchmark against a live member.

use keelson_proto::etcdserverpb::{PutRequest, RangeRequest, kv_client::KvClient};
use keelson_raftstore::bench::{BenchConfig, Workload, run as bench};
use metrics_exporter_prometheus::PrometheusBuilder;

mod support;
use support::{Member, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_a_benchmark_run() {
    let recorder = PrometheusBuilder::new().install_recorder().unwrap();
    let member = Member::start(|_| {}, Some(recorder)).await;

    // Healthy once it has elected itself and a read goes through.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (status, body) = loop {
        let (status, body) = http_get(member.metrics, "/health").await;
        if status == "HTTP/1.1 200 OK" || std::time::Instant::now() >= deadline {
            break (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(body, r#"{"health":"true","reason":""}"#);

    let mut kv = KvClient::new(member.channel.clone());
    kv.put(PutRequest {
        key: b"a".to_vec(),
        value: b"1".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let missing = kv.range(RangeRequest::default()).await.unwrap_err();
    assert_eq!(missing.message(), "etcdserver: key is not provided");

    for workload in [
        Workload::Put,
        Workload::Range,
        Workload::Txn,
        Workload::WatchLatency,
    ] {
        let report = bench(BenchConfig {
            endpoints: vec![member.client.to_string()],
            workload,
            clients: 4,
            conns: 2,
            total: 200,
            key_size: 16,
            value_size: 64,
            key_space: 50,
            serializable: false,
            watchers: 2,
            duration: None,
        })
        .await
        .unwrap();
        assert_eq!(report.errors, 0, "{report}");
        assert!(report.throughput() > 0.0, "{report}");
        assert!(report.quantile(0.5) <= report.quantile(0.99), "{report}");
    }

    let (status, metrics) = http_get(member.metrics, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    for expected in [
        "etcd_disk_backend_commit_duration_seconds",
        "etcd_server_proposals_committed_total",
        r#"grpc_server_started_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put"}"#,
        r#"grpc_code="InvalidArgument""#,
        r#"grpc_code="OK""#,
        "grpc_server_handling_seconds",
        "etcd_debugging_mvcc_watcher_total",
        // Raft, for a cluster of one.
        "etcd_server_has_leader 1",
        "etcd_server_is_leader 1",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_pending",
        "etcd_disk_wal_fsync_duration_seconds",
        // Store gauges are set when the member starts.
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_debugging_mvcc_keys_total",
    ] {
        assert!(
            metrics.contains(expected),
            "/metrics lacks {expected}:\n{metrics}"
        );
    }
    member.stop().await;
}
