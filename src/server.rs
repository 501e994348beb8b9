//! `keelson server`: flags (etcd's names where etcd has them) → member config → `run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use keelson_raftstore::node::{ClusterState, MemberConfig};
use keelson_raftstore::server::{Listeners, run as run_member};
use keelson_raftstore::store::StoreConfig;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Human-readable name of this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    name: String,
    /// Directory of this member's data (default: NAME.keelson).
    #[arg(long, env = "ETCD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// URLs to serve clients on, comma-separated (port 0 picks a free port).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    listen_client_urls: Vec<String>,
    /// Client URLs this member tells others about; a port of 0 stands for the bound port.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    advertise_client_urls: Vec<String>,
    /// URLs to serve /metrics and /health on.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", value_delimiter = ',')]
    listen_metrics_urls: Vec<String>,
    /// URLs to serve peer (Raft) traffic on. Without one the member can only be a cluster of one.
    #[arg(long, env = "ETCD_LISTEN_PEER_URLS", value_delimiter = ',')]
    listen_peer_urls: Vec<String>,
    /// Peer URLs this member advertises; a port of 0 stands for the bound peer port.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    initial_advertise_peer_urls: Vec<String>,
    /// The founding members: NAME=PEER_URL,… (default: this member alone).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER", value_delimiter = ',', value_parser = parse_member)]
    initial_cluster: Vec<(String, String)>,
    /// `new` to found a cluster, `existing` to join one (after `member add`).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    initial_cluster_state: String,
    /// Leader heartbeat period, in milliseconds.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 50)]
    heartbeat_interval: u64,
    /// Time without a heartbeat before a follower campaigns, in milliseconds
    /// (randomised up to twice this).
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 250)]
    election_timeout: u64,
    /// Applied log entries between two snapshots (the log is purged behind
    /// each); an entry carries every write that was waiting when it was
    /// proposed.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 10_000)]
    snapshot_count: u64,
    /// Deliberately broken: serve linearizable reads from this member's
    /// own state without confirming leadership (stale reads from a cut-off
    /// member). Exists only so the chaos suite can show it catches it.
    #[arg(long, hide = true)]
    unsafe_stale_reads: bool,
    /// Token that makes this cluster's IDs unique.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    initial_cluster_token: String,
    /// Largest request accepted, in bytes.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    max_request_bytes: usize,
    /// Most operations in one txn.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    max_txn_ops: usize,
    /// Interval of watch progress notifications (e.g. 10m, 1s, 500ms).
    #[arg(long, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    experimental_watch_progress_notify_interval: Duration,
    /// URL to serve the Kubernetes API on (port 0 picks a free port; `none`
    /// serves no API).
    #[arg(
        long,
        env = "KEELSON_LISTEN_API_URL",
        default_value = "https://127.0.0.1:6443"
    )]
    listen_api_url: String,
    /// The range Service ClusterIPs are taken from (the first address is the
    /// `kubernetes` Service's).
    #[arg(long, env = "KEELSON_SERVICE_CLUSTER_IP_RANGE", default_value = "10.43.0.0/16", value_parser = parse_service_range)]
    service_cluster_ip_range: keelson_control::allocate::ServiceRange,
    /// Serve only the Kubernetes API, storing objects in these etcd
    /// endpoints (`http://HOST:PORT`, comma-separated) instead of running a
    /// store member.
    #[arg(long, env = "KEELSON_ETCD_SERVERS", value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// Take part in electing the member that runs the controllers and the
    /// scheduler.
    #[arg(long, env = "KEELSON_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long other members wait after the leader's last renewal before
    /// taking over.
    #[arg(long, env = "KEELSON_LEADER_ELECT_LEASE_DURATION", default_value = "3s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal
    /// (shorter than the lease duration).
    #[arg(long, env = "KEELSON_LEADER_ELECT_RENEW_DEADLINE", default_value = "2s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often candidates try to take the lease and the leader renews it.
    #[arg(long, env = "KEELSON_LEADER_ELECT_RETRY_PERIOD", default_value = "500ms", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
    /// How long a node may go without renewing its Lease before it is
    /// marked Unknown and tainted unreachable.
    #[arg(long, env = "KEELSON_NODE_MONITOR_GRACE_PERIOD", default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
    /// The range nodes' pod CIDRs are taken from (`none`: allocate none).
    #[arg(long, env = "KEELSON_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// The prefix length of each node's pod CIDR.
    #[arg(long, env = "KEELSON_NODE_CIDR_MASK_SIZE", default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// Finished pods kept before the oldest are deleted.
    #[arg(
        long,
        env = "KEELSON_TERMINATED_POD_GC_THRESHOLD",
        default_value_t = 12_500
    )]
    terminated_pod_gc_threshold: usize,
    /// Where LoadBalancer Services' addresses come from (a CIDR, such as
    /// 10.44.0.0/24); without it they stay <pending>, as on a cluster
    /// without a load balancer.
    #[arg(long, env = "KEELSON_LOAD_BALANCER_IP_RANGE")]
    load_balancer_ip_range: Option<String>,
    /// More names and addresses the API's serving certificate is valid for
    /// (a load balancer or failover endpoint in front of the members),
    /// comma-separated.
    #[arg(long, env = "KEELSON_TLS_SAN", value_delimiter = ',')]
    tls_san: Vec<String>,
    /// How often each HorizontalPodAutoscaler is looked at.
    #[arg(long, env = "KEELSON_HPA_SYNC_PERIOD", default_value = "15s", value_parser = parse_duration)]
    horizontal_pod_autoscaler_sync_period: Duration,
    /// The scale-down stabilization window of autoscalers that set none.
    #[arg(long, env = "KEELSON_HPA_DOWNSCALE_STABILIZATION", default_value = "5m", value_parser = parse_duration)]
    horizontal_pod_autoscaler_downscale_stabilization: Duration,
    /// Seconds a pod tolerates its node being not ready, unless it says.
    #[arg(
        long,
        env = "KEELSON_DEFAULT_NOT_READY_TOLERATION_SECONDS",
        default_value_t = 300
    )]
    default_not_ready_toleration_seconds: i64,
    /// Seconds a pod tolerates its node being unreachable, unless it says.
    #[arg(
        long,
        env = "KEELSON_DEFAULT_UNREACHABLE_TOLERATION_SECONDS",
        default_value_t = 300
    )]
    default_unreachable_toleration_seconds: i64,
}

impl ServerArgs {
    /// The API server's configuration, storing objects in `store_endpoints`.
    fn api_config(
        &self,
        data_dir: PathBuf,
        store_endpoints: Vec<String>,
    ) -> anyhow::Result<keelson_control::server::ApiConfig> {
        Ok(keelson_control::server::ApiConfig {
            data_dir,
            store_endpoints,
            extra_hosts: host_name()
                .into_iter()
                .chain(self.tls_san.iter().filter(|s| !s.is_empty()).cloned())
                .collect(),
            cluster_name: "keelson".into(),
            service_range: self.service_cluster_ip_range,
            cluster_token: self.initial_cluster_token.clone(),
            controllers: self.controllers()?,
            metrics: None,
            default_tolerations: keelson_control::defaults::DefaultTolerations {
                not_ready_seconds: self.default_not_ready_toleration_seconds.max(0),
                unreachable_seconds: self.default_unreachable_toleration_seconds.max(0),
            },
        })
    }

    fn controllers(
        &self,
    ) -> anyhow::Result<Option<keelson_control::controllers::ControllerConfig>> {
        if !self.leader_elect {
            return Ok(None);
        }
        let mut config = keelson_control::controllers::ControllerConfig::new(&self.name);
        config.lease_duration = self.leader_elect_lease_duration;
        config.renew_deadline = self.leader_elect_renew_deadline;
        config.retry_period = self.leader_elect_retry_period;
        config.leader().validate().context("--leader-elect-*")?;
        config.node.grace_period = self.node_monitor_grace_period;
        config.node.cluster_cidr = match self.cluster_cidr.as_str() {
            "none" => None,
            text => Some(
                keelson_control::controllers::node::Cidr::parse(text).with_context(|| {
                    format!(
                        "--cluster-cidr {text}: expected an IPv4 CIDR like 10.42.0.0/16, or none"
                    )
                })?,
            ),
        };
        if let Some(cidr) = config.node.cluster_cidr
            && (self.node_cidr_mask_size < cidr.prefix || self.node_cidr_mask_size > 30)
        {
            bail!(
                "--node-cidr-mask-size {}: must be between the cluster CIDR's prefix ({}) and 30",
                self.node_cidr_mask_size,
                cidr.prefix
            );
        }
        config.node.node_cidr_mask = self.node_cidr_mask_size;
        config.terminated_pod_gc_threshold = self.terminated_pod_gc_threshold;
        anyhow::ensure!(
            !self.horizontal_pod_autoscaler_sync_period.is_zero(),
            "--horizontal-pod-autoscaler-sync-period must be longer than 0s"
        );
        config.hpa = keelson_control::controllers::hpa::HpaConfig {
            sync_period: self.horizontal_pod_autoscaler_sync_period,
            downscale_stabilization: self.horizontal_pod_autoscaler_downscale_stabilization,
        };
        config.load_balancer_pool = match &self.load_balancer_ip_range {
            Some(range) => Some(
                keelson_control::controllers::loadbalancer::Pool::parse(range).with_context(
                    || {
                        format!(
                            "--load-balancer-ip-range {range:?} is not a CIDR like 10.44.0.0/24"
                        )
                    },
                )?,
            ),
            None => None,
        };
        Ok(Some(config))
    }
}

fn parse_service_range(text: &str) -> Result<keelson_control::allocate::ServiceRange, String> {
    keelson_control::allocate::ServiceRange::parse(text).ok_or_else(|| {
        format!("{text:?} is not an IPv4 CIDR with a prefix of 8 to 30 bits, like 10.43.0.0/16")
    })
}

/// `https://host:port` → `host:port`; `None` for `none`.
fn api_address(url: &str) -> anyhow::Result<Option<&str>> {
    if url == "none" {
        return Ok(None);
    }
    let address = url
        .strip_prefix("https://")
        .with_context(|| format!("--listen-api-url {url}: expected https://HOST:PORT or none"))?;
    Ok(Some(address.trim_end_matches('/')))
}

/// The machine's host name, for the API serving certificate.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

/// Serves the Kubernetes API on `listener` as `config` says.
async fn run_api(
    listener: TcpListener,
    config: keelson_control::server::ApiConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    keelson_control::server::run(config, listener, shutdown)
        .await
        .context("the Kubernetes API server failed")
}

async fn bind_api(url: &str) -> anyhow::Result<Option<TcpListener>> {
    match api_address(url)? {
        None => Ok(None),
        Some(address) => Ok(Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {url}"))?,
        )),
    }
}

/// Parses Go-style durations as etcd's flags take them: `500ms`, `1s`, `10m`, `1h`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 1s, 10m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        _ => Err(format!("{text:?} has no unit of ms, s, m or h")),
    }
}

/// `NAME=URL` → `(NAME, URL)`.
fn parse_member(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, url)) if !name.is_empty() && url.starts_with("http") => {
            Ok((name.to_owned(), url.to_owned()))
        }
        _ => Err(format!("{text:?} is not NAME=http://HOST:PORT")),
    }
}

/// `http://host:port` → `host:port`.
fn listen_address(url: &str) -> anyhow::Result<&str> {
    if url.starts_with("https://") {
        bail!("{url}: TLS client URLs are not served yet; use http://");
    }
    let address = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: expected http://HOST:PORT"))?;
    Ok(address.trim_end_matches('/'))
}

async fn bind(urls: &[String]) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(urls.len());
    for url in urls {
        let address = listen_address(url)?;
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {url}"))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Replaces port 0 in advertised URLs with the port actually bound.
fn advertised(urls: &[String], bound: SocketAddr) -> Vec<String> {
    urls.iter()
        .map(|url| match url.strip_suffix(":0") {
            Some(base) => format!("{base}:{}", bound.port()),
            None => url.clone(),
        })
        .collect()
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    // etcd's buckets for disk latencies; Prometheus' defaults for RPCs.
    let disk: Vec<f64> = (0..14).map(|i| 0.001 * f64::from(1u32 << i)).collect();
    let batch: Vec<f64> = (0..10).map(|i| f64::from(1u32 << i)).collect();
    let queue: Vec<f64> = (0..10).map(|i| 1e-8 * 10f64.powi(i)).collect();
    let scheduling: Vec<f64> = (0..15).map(|i| 0.001 * f64::from(1u32 << i)).collect();
    let rpc = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("etcd_disk_backend_commit_duration_seconds".into()),
            &disk,
        )?
        .set_buckets_for_metric(
            Matcher::Full("etcd_disk_wal_fsync_duration_seconds".into()),
            &disk,
        )?
        .set_buckets_for_metric(
            Matcher::Full("etcd_network_peer_round_trip_time_seconds".into()),
            &disk,
        )?
        .set_buckets_for_metric(Matcher::Full("grpc_server_handling_seconds".into()), &rpc)?
        .set_buckets_for_metric(
            Matcher::Full("apiserver_request_duration_seconds".into()),
            &rpc,
        )?
        .set_buckets_for_metric(Matcher::Full("etcd_request_duration_seconds".into()), &disk)?
        .set_buckets_for_metric(
            Matcher::Full("keelson_raft_proposal_batch_commands".into()),
            &batch,
        )?
        // client-go's buckets for the work queues, the scheduler's for its attempts.
        .set_buckets_for_metric(Matcher::Prefix("workqueue_".into()), &queue)?
        .set_buckets_for_metric(
            Matcher::Full("scheduler_scheduling_attempt_duration_seconds".into()),
            &scheduling,
        )?
        // Every other distribution a histogram too (Kubernetes' are), never
        // a summary, whose quantiles cannot be aggregated across members.
        .set_buckets(&rpc)?
        .install_recorder()
        .context("cannot install the metrics recorder")
}

/// The API server's `/metrics`: the process's families but the store's,
/// which the member serves on its metrics port, as etcd does.
fn api_metrics(handle: PrometheusHandle) -> keelson_control::api::MetricsRender {
    keelson_control::api::MetricsRender(std::sync::Arc::new(move || {
        keelson_raftstore::metrics::exposition(&handle.render(), |name| {
            !keelson_raftstore::metrics::is_store_family(name)
        })
    }))
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.keelson", args.name)));
    let api = bind_api(&args.listen_api_url).await?;
    // Against the given etcd, or (filled in below) this member's client port.
    let mut api_config = args.api_config(data_dir.clone(), args.etcd_servers.clone())?;
    if !args.etcd_servers.is_empty() {
        let Some(api) = api else {
            bail!("--etcd-servers runs only the Kubernetes API: give it a --listen-api-url");
        };
        let handle = install_metrics()?;
        api_config.metrics = Some(api_metrics(handle));
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        return run_api(api, api_config, shutdown).await;
    }
    let mut clients = bind(&args.listen_client_urls).await?;
    if clients.len() != 1 {
        bail!(
            "--listen-client-urls takes one URL for now; got {}",
            clients.len()
        );
    }
    let client = clients.remove(0);
    let bound = client.local_addr()?;
    let peer = match args.listen_peer_urls.as_slice() {
        [] => None,
        [url] => bind(std::slice::from_ref(url)).await?.pop(),
        more => bail!(
            "--listen-peer-urls takes one URL for now; got {}",
            more.len()
        ),
    };
    let peer_port = match &peer {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };
    if args.initial_cluster.len() == 2 || args.initial_cluster.len() == 4 {
        tracing::warn!(
            members = args.initial_cluster.len(),
            "an even number of members tolerates no more failures than one member fewer"
        );
    }
    let metrics = match args.listen_metrics_urls.as_slice() {
        [] => None,
        [url] => bind(std::slice::from_ref(url)).await?.pop(),
        more => bail!(
            "--listen-metrics-urls takes one URL for now; got {}",
            more.len()
        ),
    };
    let config = MemberConfig {
        data_dir: data_dir.clone(),
        name: args.name,
        advertise_client_urls: advertised(&args.advertise_client_urls, bound),
        initial_advertise_peer_urls: match peer_port {
            Some(bound) => advertised(&args.initial_advertise_peer_urls, bound),
            None => args.initial_advertise_peer_urls,
        },
        initial_cluster: args.initial_cluster,
        initial_cluster_state: if args.initial_cluster_state == "existing" {
            ClusterState::Existing
        } else {
            ClusterState::New
        },
        heartbeat_interval: Duration::from_millis(args.heartbeat_interval),
        election_timeout: Duration::from_millis(args.election_timeout),
        snapshot_count: args.snapshot_count,
        unsafe_stale_reads: args.unsafe_stale_reads,
        initial_cluster_token: args.initial_cluster_token.clone(),
        max_request_bytes: args.max_request_bytes,
        max_txn_ops: args.max_txn_ops,
        progress_notify_interval: args.experimental_watch_progress_notify_interval,
        store: StoreConfig::default(),
        ..MemberConfig::default()
    };
    let handle = install_metrics()?;
    api_config.metrics = Some(api_metrics(handle.clone()));
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let member = async {
        let outcome = run_member(
            config,
            Listeners {
                client,
                peer,
                metrics,
            },
            Some(handle),
            shutdown.clone(),
        )
        .await;
        // The API server goes with the store it serves.
        shutdown.cancel();
        outcome.map_err(anyhow::Error::from)
    };
    let Some(api) = api else {
        return member.await;
    };
    // The API server reaches its store through this member's client port.
    let local = keelson_control::server::reachable(bound);
    api_config.store_endpoints = vec![format!("http://{local}")];
    let api = async {
        let outcome = run_api(api, api_config, shutdown.clone()).await;
        if outcome.is_err() {
            shutdown.cancel();
        }
        outcome
    };
    let (member, api) = tokio::join!(member, api);
    member.and(api)
}

pub(crate) async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_etcd_flags() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            listen_address("http://127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379"
        );
        assert!(listen_address("https://127.0.0.1:2379").is_err());
        assert!(listen_address("127.0.0.1:2379").is_err());
        let bound: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        assert_eq!(
            advertised(&["http://127.0.0.1:0".into()], bound),
            ["http://127.0.0.1:4242"]
        );
    }
}
