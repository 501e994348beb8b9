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
#[command(args_override_self = true)]
pub(crate) struct ServerArgs {
    /// Settings from a YAML file whose keys are these flags' names (flags
    /// on the command line win).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Human-readable name of this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub(crate) name: String,
    /// Directory of this member's data (default: NAME.keelson).
    #[arg(long, env = "ETCD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Found a new cluster with this member as its first: a cluster token
    /// is made, and the join token others use is printed and kept in
    /// DATA_DIR/token. Ignored once the member has data.
    #[arg(long, env = "KEELSON_CLUSTER_INIT", conflicts_with_all = ["join", "initial_cluster"])]
    cluster_init: bool,
    /// Join the cluster whose API a member serves at this URL
    /// (https://HOST:6443): added as a learner, promoted once caught up.
    /// Ignored once the member has data: it then finds its peers itself.
    #[arg(
        long,
        env = "KEELSON_JOIN",
        value_name = "URL",
        conflicts_with = "initial_cluster"
    )]
    join: Option<String>,
    /// The cluster's join token (from a member's DATA_DIR/token).
    #[arg(long, env = "KEELSON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the join token.
    #[arg(long, env = "KEELSON_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Make this (stopped) member's data a one-member cluster's, keeping
    /// every object, then exit: the way back after the other members are
    /// lost for good. Start it again without this flag; the others join it
    /// anew with empty data directories.
    #[arg(long)]
    cluster_reset: bool,
    /// How often this member saves a snapshot of the store (0s: never).
    #[arg(long, env = "KEELSON_SNAPSHOT_INTERVAL", default_value = "12h", value_parser = parse_duration)]
    snapshot_interval: Duration,
    /// Scheduled snapshots kept; the oldest beyond it are deleted.
    #[arg(long, env = "KEELSON_SNAPSHOT_RETENTION", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    snapshot_retention: u32,
    /// Where scheduled snapshots go (default DATA_DIR/snapshots).
    #[arg(long, env = "KEELSON_SNAPSHOT_DIR")]
    snapshot_dir: Option<PathBuf>,
    /// The address other machines reach this member at: the URLs not given
    /// explicitly are derived from it (clients IP:2379, peers IP:2380,
    /// metrics IP:2381, API IP:6443).
    #[arg(long, env = "KEELSON_ADVERTISE_ADDRESS")]
    advertise_address: Option<std::net::IpAddr>,
    /// URLs to serve clients on, comma-separated (port 0 picks a free port;
    /// default http://localhost:2379).
    #[arg(long, env = "ETCD_LISTEN_CLIENT_URLS", value_delimiter = ',')]
    listen_client_urls: Option<Vec<String>>,
    /// Client URLs this member tells others about; a port of 0 stands for
    /// the bound port (default: the listen URLs).
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS", value_delimiter = ',')]
    advertise_client_urls: Option<Vec<String>>,
    /// URLs to serve /metrics and /health on.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", value_delimiter = ',')]
    listen_metrics_urls: Option<Vec<String>>,
    /// URLs to serve peer (Raft) traffic on. Without one the member can only be a cluster of one.
    #[arg(long, env = "ETCD_LISTEN_PEER_URLS", value_delimiter = ',')]
    listen_peer_urls: Option<Vec<String>>,
    /// Peer URLs this member advertises; a port of 0 stands for the bound
    /// peer port (default: the listen URLs, else http://localhost:2380).
    #[arg(long, env = "ETCD_INITIAL_ADVERTISE_PEER_URLS", value_delimiter = ',')]
    initial_advertise_peer_urls: Option<Vec<String>>,
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
    /// serves no API; default https://127.0.0.1:6443).
    #[arg(long, env = "KEELSON_LISTEN_API_URL")]
    listen_api_url: Option<String>,
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
    /// How often the API server compacts the store's history, keeping one
    /// interval of it (kube-apiserver's flag and default; 0s: never).
    #[arg(long, env = "KEELSON_ETCD_COMPACTION_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    etcd_compaction_interval: Duration,
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
    pub(crate) tls_san: Vec<String>,
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
            store_tls: None,
            initial_ca: None,
            extra_hosts: host_name()
                .into_iter()
                .chain(self.tls_san.iter().filter(|s| !s.is_empty()).cloned())
                .collect(),
            cluster_name: "keelson".into(),
            service_range: self.service_cluster_ip_range,
            cluster_token: self.initial_cluster_token.clone(),
            join_secret: None,
            controllers: self.controllers()?,
            metrics: None,
            compaction_interval: self.etcd_compaction_interval,
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
    let address = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .with_context(|| format!("{url}: expected http(s)://HOST:PORT"))?;
    Ok(address.trim_end_matches('/'))
}

/// Store URLs are `https://` exactly when the member has certificates (it
/// was founded with `--cluster-init` or joined with `--join`).
fn check_schemes(urls: &Urls, secure: bool) -> anyhow::Result<()> {
    for url in urls
        .client
        .iter()
        .chain(&urls.peer)
        .chain(&urls.advertise_peer)
    {
        match (secure, url.starts_with("https://")) {
            (true, false) => bail!(
                "{url}: a member founded with --cluster-init or joined with --join serves its store over TLS; use https://"
            ),
            (false, true) => bail!(
                "{url}: only members founded with --cluster-init or joined with --join have store certificates; use http://"
            ),
            _ => {}
        }
    }
    Ok(())
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
    // Kubernetes' own, finer below 5 ms: the SLO figures are read from them.
    let requests = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0,
        4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
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
            &requests,
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

/// The URLs a member serves and advertises: the flags, or what
/// `--advertise-address` implies, or etcd's local defaults.
#[derive(Debug)]
struct Urls {
    client: Vec<String>,
    advertise_client: Vec<String>,
    metrics: Vec<String>,
    peer: Vec<String>,
    advertise_peer: Vec<String>,
    api: String,
}

impl ServerArgs {
    /// The URLs; the store's are `https://` for a `secure` member.
    fn urls(&self, secure: bool) -> Urls {
        let at = |scheme: &str, port: u16| {
            self.advertise_address
                .map(|ip| format!("{scheme}://{}", SocketAddr::new(ip, port)))
        };
        let store = if secure { "https" } else { "http" };
        let client = self.listen_client_urls.clone().unwrap_or_else(|| {
            vec![at(store, 2379).unwrap_or_else(|| format!("{store}://localhost:2379"))]
        });
        let peer = self
            .listen_peer_urls
            .clone()
            .unwrap_or_else(|| at(store, 2380).into_iter().collect());
        Urls {
            advertise_client: self
                .advertise_client_urls
                .clone()
                .unwrap_or_else(|| client.clone()),
            client,
            metrics: self
                .listen_metrics_urls
                .clone()
                .unwrap_or_else(|| at("http", 2381).into_iter().collect()),
            advertise_peer: self.initial_advertise_peer_urls.clone().unwrap_or_else(|| {
                if peer.is_empty() {
                    vec![format!("{store}://localhost:2380")]
                } else {
                    peer.clone()
                }
            }),
            peer,
            api: self.listen_api_url.clone().unwrap_or_else(|| {
                at("https", 6443).unwrap_or_else(|| "https://127.0.0.1:6443".into())
            }),
        }
    }
}

/// How this member takes its place in a cluster.
#[derive(Debug)]
struct Placement {
    initial_cluster: Vec<(String, String)>,
    state: ClusterState,
    cluster_token: String,
    /// A learner that promotes itself once it has caught up.
    promote: bool,
    /// Founded just now: print the join token once the API has made it.
    print_token: bool,
}

/// The file beside the store in which a member founded with
/// `--cluster-init` or joined with `--join` keeps its cluster token and
/// the members it started with, so it restarts without asking anyone.
pub(crate) const CLUSTER_FILE: &str = "cluster.json";

/// A new random cluster token: it seals the key Secrets are encrypted with.
fn random_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The cluster CA's key beside the member's store certificates.
const CA_KEY_FILE: &str = "pki/ca.key";

/// Keeps the cluster CA in `DATA_DIR/pki`, which the member's store
/// certificates are issued from.
pub(crate) fn write_ca(
    data_dir: &std::path::Path,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<()> {
    write_private(&data_dir.join(keelson_raftstore::tls::CA_FILE), cert_pem)?;
    write_private(&data_dir.join(CA_KEY_FILE), key_pem)
}

/// The member's store certificates: issued from the CA in `DATA_DIR/pki`
/// when missing or within 90 days of expiry, for `hosts` (its advertised
/// addresses, loopback and the host name).
fn member_tls(
    data_dir: &std::path::Path,
    name: &str,
    hosts: &[String],
) -> anyhow::Result<(
    keelson_raftstore::tls::MemberTls,
    keelson_control::pki::ClusterCa,
)> {
    use keelson_raftstore::tls::{CA_FILE, CERT_FILE, KEY_FILE, MemberTls};
    let read = |file: &str| {
        std::fs::read_to_string(data_dir.join(file)).with_context(|| {
            format!(
                "no cluster CA in {} (a member founded with --cluster-init or joined with --join keeps it there)",
                data_dir.join(file).display()
            )
        })
    };
    let ca = keelson_control::pki::ClusterCa {
        cert_pem: read(CA_FILE)?,
        key_pem: read(CA_KEY_FILE)?,
    };
    let current = MemberTls::read(data_dir).ok().flatten().filter(|tls| {
        keelson_control::pki::expiry(&tls.cert_pem)
            .is_some_and(|at| (at - chrono::Utc::now()).num_days() >= 90)
    });
    if let Some(tls) = current {
        return Ok((tls, ca));
    }
    let issued = ca
        .issue_member(name, hosts)
        .context("cannot issue this member's store certificate")?;
    write_private(&data_dir.join(CERT_FILE), &issued.cert_pem)?;
    write_private(&data_dir.join(KEY_FILE), &issued.key_pem)?;
    tracing::info!("issued this member's store certificate");
    Ok((
        MemberTls {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        },
        ca,
    ))
}

/// The names a member's store certificate is for: the hosts of its
/// advertised URLs, loopback and the host name.
fn member_hosts(urls: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = urls
        .iter()
        .filter_map(|url| {
            let authority = url.split("://").nth(1)?.trim_end_matches('/');
            let host = match authority.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() => host,
                _ => authority,
            };
            Some(host.trim_matches(['[', ']']).to_owned())
        })
        .chain(["127.0.0.1".to_owned(), "localhost".to_owned()])
        .chain(host_name())
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Where `--cluster-init` or `--join` puts this member: as recorded on an
/// earlier start, or founded, or joined through `--join`'s API now.
async fn placement(
    args: &ServerArgs,
    data_dir: &std::path::Path,
    advertise_peer: &[String],
) -> anyhow::Result<Placement> {
    let path = data_dir.join(CLUSTER_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let saved: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let joined = saved["joined"].as_bool().unwrap_or(false);
        return Ok(Placement {
            initial_cluster: saved["initialCluster"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| Some((m[0].as_str()?.to_owned(), m[1].as_str()?.to_owned())))
                .collect(),
            state: if joined {
                ClusterState::Existing
            } else {
                ClusterState::New
            },
            cluster_token: saved["clusterToken"]
                .as_str()
                .with_context(|| format!("{} has no clusterToken", path.display()))?
                .to_owned(),
            promote: joined,
            print_token: false,
        });
    }
    let save = |token: &str, initial: &[(String, String)], joined: bool| {
        let text = serde_json::json!({
            "clusterToken": token,
            "initialCluster": initial,
            "joined": joined,
        });
        write_private(&path, &format!("{text:#}\n"))
    };
    if args.cluster_init {
        let token = random_token()?;
        if !data_dir.join(CA_KEY_FILE).exists() {
            let ca = keelson_control::pki::ClusterCa::generate()?;
            write_ca(data_dir, &ca.cert_pem, &ca.key_pem)?;
        }
        save(&token, &[], false)?;
        return Ok(Placement {
            initial_cluster: Vec::new(),
            state: ClusterState::New,
            cluster_token: token,
            promote: false,
            print_token: true,
        });
    }
    let Some(server) = &args.join else {
        bail!("neither --cluster-init nor --join");
    };
    if args.listen_peer_urls.is_none() && args.advertise_address.is_none() {
        bail!(
            "a member that joins needs an address the others reach it at: --advertise-address IP (or --listen-peer-urls)"
        );
    }
    let token = crate::admin::read_token(args.token.as_ref(), args.token_file.as_ref())?;
    tracing::info!(%server, "joining the cluster");
    let joined = keelson_control::join::join_cluster_patiently(
        server,
        &token,
        serde_json::json!({
            "name": args.name,
            "role": "server",
            "peerURLs": advertise_peer,
            "version": keelson_control::join::VERSION,
        }),
    )
    .await
    .with_context(|| format!("cannot join the cluster at {server}"))?;
    let initial: Vec<(String, String)> = joined.answer["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let name = m["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .or(m["id"].as_str())?;
            Some((name.to_owned(), m["peerURLs"][0].as_str()?.to_owned()))
        })
        .collect();
    let cluster_token = joined.field("clusterToken").to_owned();
    if cluster_token.is_empty() || initial.is_empty() {
        bail!(
            "{server} answered the join without the cluster's members: is it a Keelson member of this version?"
        );
    }
    let ca_key = joined.field("caKey");
    if ca_key.is_empty() {
        bail!(
            "{server} answered the join without the cluster CA's key: is it a Keelson member of this version?"
        );
    }
    write_ca(data_dir, &joined.ca_pem, ca_key)?;
    save(&cluster_token, &initial, true)?;
    tracing::info!(
        member = joined.field("memberID"),
        members = initial.len(),
        "added to the cluster as a learner"
    );
    Ok(Placement {
        initial_cluster: initial,
        state: ClusterState::Existing,
        cluster_token,
        promote: true,
        print_token: false,
    })
}

/// Prints the join token once the API server has written it (at
/// `--cluster-init`), with the commands that use it.
async fn print_token(data_dir: PathBuf, api_url: String, shutdown: CancellationToken) {
    let path = data_dir.join("token");
    let token = loop {
        if let Ok(token) = std::fs::read_to_string(&path) {
            break token.trim().to_owned();
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    };
    println!(
        "Cluster founded. Its join token (kept in {}):\n\n  {token}\n\nJoin a member:  keelson server --join {api_url} --token-file TOKEN_FILE --advertise-address IP\nJoin a node:    keelson agent --server {api_url} --token-file TOKEN_FILE",
        path.display()
    );
}

/// `--cluster-reset`: the stopped member's data becomes a one-member
/// cluster's.
fn cluster_reset(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use keelson_raftstore::admin;
    let (restored, kept) = admin::reset_to_single_member(data_dir).with_context(|| {
        format!(
            "cannot reset {} (is the member still running? stop it first)",
            data_dir.display()
        )
    })?;
    let path = data_dir.join(CLUSTER_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut saved: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        saved["joined"] = serde_json::json!(false);
        saved["initialCluster"] = serde_json::json!([]);
        write_private(&path, &format!("{saved:#}\n"))?;
    }
    println!(
        "{} is now the data of a one-member cluster: {} keys at revision {} (the previous store is kept in {}).\nStart the member again without --cluster-reset. Other members join it anew, each with an empty data directory (keelson server --join …).",
        data_dir.display(),
        restored.keys,
        restored.revision,
        kept.display()
    );
    Ok(())
}

/// The file in which a running member says where it serves, for the
/// commands that operate on it (`keelson status`, `snapshot save`,
/// `member` with `--data-dir`).
pub(crate) const MEMBER_FILE: &str = "member.json";

/// Saves a snapshot of the store at `endpoint` into `dir` every
/// `interval`, keeping the newest `retention`.
async fn scheduled_snapshots(
    endpoint: String,
    tls: Option<keelson_raftstore::tls::MemberTls>,
    dir: PathBuf,
    name: String,
    interval: Duration,
    retention: usize,
    shutdown: CancellationToken,
) {
    let prefix = format!("keelson-snapshot-{name}-");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(error) = std::fs::create_dir_all(&dir) {
            tracing::warn!(%error, dir = %dir.display(), "cannot create the snapshot directory");
            continue;
        }
        let file = dir.join(format!(
            "{prefix}{}.db",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ));
        match keelson_raftstore::admin::save_snapshot(&endpoint, tls.as_ref(), &file).await {
            Ok(info) => {
                metrics::counter!("keelson_snapshot_save_total", "result" => "success")
                    .increment(1);
                tracing::info!(file = %file.display(), bytes = info.bytes, revision = info.revision, sha256 = %info.sha256, "saved a scheduled snapshot");
            }
            Err(error) => {
                metrics::counter!("keelson_snapshot_save_total", "result" => "failure")
                    .increment(1);
                tracing::warn!(%error, "a scheduled snapshot failed");
                continue;
            }
        }
        let mut saved: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".db"))
            })
            .collect();
        saved.sort();
        let excess = saved.len().saturating_sub(retention);
        for old in &saved[..excess] {
            match std::fs::remove_file(old) {
                Ok(()) => {
                    tracing::info!(file = %old.display(), "deleted a snapshot beyond the retention")
                }
                Err(error) => {
                    tracing::warn!(%error, file = %old.display(), "cannot delete an old snapshot")
                }
            }
        }
    }
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.keelson", args.name)));
    if args.cluster_reset {
        return cluster_reset(&data_dir);
    }
    let secure = args.cluster_init || args.join.is_some() || data_dir.join(CLUSTER_FILE).exists();
    let urls = args.urls(secure && args.etcd_servers.is_empty());
    let api = bind_api(&urls.api).await?;
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
    check_schemes(&urls, secure)?;
    let mut clients = bind(&urls.client).await?;
    if clients.len() != 1 {
        bail!(
            "--listen-client-urls takes one URL for now; got {}",
            clients.len()
        );
    }
    let client = clients.remove(0);
    let bound = client.local_addr()?;
    let peer = match urls.peer.as_slice() {
        [] => None,
        [url] => bind(std::slice::from_ref(url)).await?.pop(),
        more => bail!(
            "--listen-peer-urls takes one URL for now; got {}",
            more.len()
        ),
    };
    let advertise_peer = match &peer {
        Some(listener) => advertised(&urls.advertise_peer, listener.local_addr()?),
        None => urls.advertise_peer.clone(),
    };
    let placement = if secure {
        placement(&args, &data_dir, &advertise_peer).await?
    } else {
        if args.initial_cluster.len().is_multiple_of(2) && !args.initial_cluster.is_empty() {
            tracing::warn!(
                members = args.initial_cluster.len(),
                "an even number of members tolerates no more failures than one member fewer"
            );
        }
        Placement {
            initial_cluster: args.initial_cluster.clone(),
            state: if args.initial_cluster_state == "existing" {
                ClusterState::Existing
            } else {
                ClusterState::New
            },
            cluster_token: args.initial_cluster_token.clone(),
            promote: false,
            print_token: false,
        }
    };
    let metrics = match urls.metrics.as_slice() {
        [] => None,
        [url] => bind(std::slice::from_ref(url)).await?.pop(),
        more => bail!(
            "--listen-metrics-urls takes one URL for now; got {}",
            more.len()
        ),
    };
    api_config.cluster_token = placement.cluster_token.clone();
    if args.cluster_init || args.join.is_some() {
        api_config.join_secret = Some(placement.cluster_token.clone());
    }
    let advertise_client = advertised(&urls.advertise_client, bound);
    let local = keelson_control::server::reachable(bound);
    let store_scheme = if secure { "https" } else { "http" };
    let local_url = format!("{store_scheme}://{local}");
    let tls = if secure {
        let hosts = member_hosts(
            &advertise_client
                .iter()
                .chain(&advertise_peer)
                .cloned()
                .collect::<Vec<_>>(),
        );
        let (tls, ca) = member_tls(&data_dir, &args.name, &hosts)?;
        api_config.store_tls = Some(tls.client());
        api_config.initial_ca = Some(ca);
        Some(tls)
    } else {
        None
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    write_private(
        &data_dir.join(MEMBER_FILE),
        &format!(
            "{:#}\n",
            serde_json::json!({
                "name": args.name,
                "clientURL": local_url,
                "advertiseClientURLs": advertise_client,
                "apiURL": urls.api,
            })
        ),
    )?;
    let config = MemberConfig {
        data_dir: data_dir.clone(),
        name: args.name,
        advertise_client_urls: advertise_client,
        initial_advertise_peer_urls: advertise_peer,
        initial_cluster: placement.initial_cluster,
        initial_cluster_state: placement.state,
        promote_when_caught_up: placement.promote,
        heartbeat_interval: Duration::from_millis(args.heartbeat_interval),
        election_timeout: Duration::from_millis(args.election_timeout),
        snapshot_count: args.snapshot_count,
        unsafe_stale_reads: args.unsafe_stale_reads,
        initial_cluster_token: placement.cluster_token,
        tls: tls.clone(),
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
    if !args.snapshot_interval.is_zero() {
        tokio::spawn(scheduled_snapshots(
            local_url.clone(),
            tls.clone(),
            args.snapshot_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("snapshots")),
            config.name.clone(),
            args.snapshot_interval,
            args.snapshot_retention as usize,
            shutdown.clone(),
        ));
    }
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
    if placement.print_token {
        let url = match api.local_addr() {
            Ok(address) if !address.ip().is_unspecified() => format!("https://{address}"),
            _ => urls.api.clone(),
        };
        tokio::spawn(print_token(data_dir.clone(), url, shutdown.clone()));
    }
    // The API server reaches its store through this member's client port.
    api_config.store_endpoints = vec![local_url];
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
        assert_eq!(
            listen_address("https://127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379"
        );
        assert!(listen_address("127.0.0.1:2379").is_err());
        let bound: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        assert_eq!(
            advertised(&["http://127.0.0.1:0".into()], bound),
            ["http://127.0.0.1:4242"]
        );
    }

    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        server: ServerArgs,
    }

    fn urls_of(args: &[&str], secure: bool) -> Urls {
        use clap::Parser;
        let mut argv = vec!["server"];
        argv.extend_from_slice(args);
        Command::parse_from(argv).server.urls(secure)
    }

    #[test]
    fn the_advertise_address_fills_in_the_urls_not_given() {
        let local = urls_of(&[], false);
        assert_eq!(local.client, ["http://localhost:2379"]);
        assert!(local.peer.is_empty() && local.metrics.is_empty());
        assert_eq!(local.api, "https://127.0.0.1:6443");
        let machine = urls_of(
            &[
                "--advertise-address",
                "10.0.0.2",
                "--listen-client-urls",
                "https://127.0.0.1:2379",
            ],
            true,
        );
        assert_eq!(machine.client, ["https://127.0.0.1:2379"]);
        assert_eq!(machine.peer, ["https://10.0.0.2:2380"]);
        assert_eq!(machine.advertise_peer, ["https://10.0.0.2:2380"]);
        assert_eq!(machine.metrics, ["http://10.0.0.2:2381"]);
        assert_eq!(machine.api, "https://10.0.0.2:6443");
        assert!(check_schemes(&machine, true).is_ok());
        assert!(check_schemes(&machine, false).is_err());
        assert!(check_schemes(&local, true).is_err());
    }
}
