//! `keelson agent`: flags → node config → `keelson_nodeagent::run`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use keelson_control::client::{Client, Https, Kubeconfig};
use keelson_nodeagent::NodeConfig;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum NetworkKind {
    /// Pod interfaces through the CNI plugins (bridge, host-local,
    /// portmap), routes to the other nodes' pods.
    Cni,
    /// Pods get loopback only; the node's network is left alone.
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RuntimeKind {
    /// OCI containers through youki's libcontainer (needs root).
    Libcontainer,
    /// Hollow node: pods "run" without processes (scale tests only).
    Fake,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(crate) struct AgentArgs {
    /// Settings from a YAML file whose keys are these flags' names (flags
    /// on the command line win).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Kubeconfig with the credentials to reach the API server (instead of
    /// joining with --server and --token).
    #[arg(long, env = "KUBECONFIG", conflicts_with = "server")]
    kubeconfig: Option<PathBuf>,
    /// A member's API to join the cluster through (https://HOST:6443;
    /// comma-separated or repeated for several). The agent asks for its
    /// credentials with the token once, then reaches the API through a
    /// balancer on loopback that follows every member the `kubernetes`
    /// Service lists.
    #[arg(long, env = "KEELSON_URL", value_delimiter = ',')]
    server: Vec<String>,
    /// The cluster's join token (from a member's DATA_DIR/token).
    #[arg(long, env = "KEELSON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the join token.
    #[arg(long, env = "KEELSON_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The loopback port of the balancer in front of the members (with --server).
    #[arg(long, default_value_t = 6444)]
    lb_server_port: u16,
    /// The node's name (default: the host name).
    #[arg(long, env = "KEELSON_NODE_NAME")]
    node_name: Option<String>,
    /// The node's address, as other nodes and the control plane reach it.
    #[arg(long, env = "KEELSON_NODE_IP", default_value = "127.0.0.1")]
    node_ip: String,
    /// The container runtime.
    #[arg(long, value_enum, default_value = "libcontainer")]
    runtime: RuntimeKind,
    /// Where the agent keeps images, containers and their logs.
    #[arg(
        long,
        env = "KEELSON_AGENT_DATA_DIR",
        default_value = "/var/lib/keelson/agent"
    )]
    data_dir: PathBuf,
    /// Pods the node takes at most.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Resources kept back from pods: cpu=100m,memory=256Mi.
    #[arg(long, default_value = "")]
    system_reserved: String,
    /// Labels of the node: key=value,…
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// How long the node's Lease is valid for (seconds).
    #[arg(long, default_value_t = 40)]
    node_lease_duration_seconds: i32,
    /// How often the node's Lease is renewed (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = crate::server::parse_duration)]
    node_lease_renew_interval: Duration,
    /// How pods are networked (the fake runtime never networks them).
    #[arg(long, value_enum, default_value = "cni")]
    network: NetworkKind,
    /// Where the CNI plugins are (colon-separated).
    #[arg(long, default_value = "/usr/lib/cni:/opt/cni/bin")]
    cni_bin_dir: String,
    /// The range every pod address is in (as the control plane's --cluster-cidr).
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// The range Services' cluster IPs are in (as the control plane's
    /// --service-cluster-ip-range).
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: String,
    /// The cluster DNS servers given to pods (comma-separated; empty: the node's).
    #[arg(long, value_delimiter = ',', default_value = "10.43.0.10")]
    cluster_dns: Vec<String>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Remove what the agent made: every pod sandbox under --data-dir (its
    /// containers killed, its network, mounts and cgroups released; images
    /// kept), and the routes, addresses and rules in this network
    /// namespace; then exit.
    #[arg(long)]
    cleanup: bool,
    /// How often every pod is synced again, its ConfigMap, Secret and
    /// downward API volumes brought up to date (e.g. 1m, 10s).
    #[arg(long, default_value = "1m", value_parser = crate::server::parse_duration)]
    sync_frequency: Duration,
    /// The address the agent's HTTPS endpoint (logs, exec, metrics) listens on.
    #[arg(long, default_value = "0.0.0.0")]
    address: std::net::IpAddr,
    /// Its port (0: any free port; the Node reports the one taken).
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// The endpoint's certificate (PEM); without it, the agent asks the API
    /// server for one signed by the cluster CA.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file (PEM).
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// Size a container's log grows to before it is rotated (e.g. 10Mi).
    #[arg(long, default_value = "10Mi")]
    container_log_max_size: String,
    /// A registry spoken to over plain HTTP (HOST[:PORT]; repeatable).
    /// Loopback registries always are.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
    /// Log files kept per container, the current one included.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..))]
    container_log_max_files: u32,
}

/// The node's share of the cluster network beside its pods: the service
/// proxy's rules, and the cluster DNS, answered on this node at the
/// cluster DNS address (put on loopback, labelled as the agent's).
async fn start_node_network(
    client: &Client,
    config: &NodeConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    use keelson_netagent::dns::{DnsConfig, DnsServer};
    use keelson_netagent::proxy::{NodeContext, Proxier, ProxyConfig};
    // Pods' packets are forwarded by this node, and bridged ones seen by
    // the service proxy's rules.
    for (setting, path) in [
        ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
        (
            "net.bridge.bridge-nf-call-iptables",
            "/proc/sys/net/bridge/bridge-nf-call-iptables",
        ),
    ] {
        std::fs::write(path, "1").with_context(|| format!("cannot set {setting}=1"))?;
    }
    let node_ip: std::net::Ipv4Addr = config
        .ip
        .parse()
        .with_context(|| format!("--node-ip {:?} is not an IPv4 address", config.ip))?;
    let cluster_cidr = config
        .network
        .cluster_cidr
        .parse()
        .with_context(|| format!("--cluster-cidr {:?}", config.network.cluster_cidr))?;
    let node = NodeContext {
        name: config.name.clone(),
        ips: vec![node_ip],
        cluster_cidr: Some(cluster_cidr),
        node_local_service_ips: config
            .network
            .cluster_dns
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect(),
        ..NodeContext::default()
    };
    let proxy = ProxyConfig::new(node);
    let (proxy_client, proxy_shutdown) = (client.clone(), shutdown.clone());
    tokio::spawn(async move {
        if let Err(error) = Proxier::run(proxy_client, proxy, proxy_shutdown).await {
            tracing::error!(%error, "the service proxy stopped");
        }
    });
    let mut listen = Vec::new();
    for server in &config.network.cluster_dns {
        keelson_nodeagent::routes::ensure_local_address(server)
            .await
            .with_context(|| format!("cannot put the cluster DNS address {server} on this node"))?;
        let ip: std::net::IpAddr = server
            .parse()
            .with_context(|| format!("--cluster-dns {server:?} is not an IP address"))?;
        listen.push(std::net::SocketAddr::new(ip, 53));
    }
    if !listen.is_empty() {
        let dns = DnsConfig {
            listen,
            cluster_domain: config.network.cluster_domain.clone(),
            ..DnsConfig::default()
        };
        let (client, shutdown) = (client.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(error) = DnsServer::run(client, dns, shutdown).await {
                tracing::error!(error = %keelson_control::runtime::chain(&error), "the cluster DNS stopped");
            }
        });
    }
    Ok(())
}

/// The agent's metrics recorder, with the kubelet's buckets.
fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let startup = [
        0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
        300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
    ];
    let operations = [
        0.005,
        0.0125,
        0.03125,
        0.078125,
        0.1953125,
        0.48828125,
        1.220703125,
        3.0517578125,
        7.62939453125,
        19.073486328125,
        47.6837158203125,
        119.20928955078125,
        298.0232238769531,
        745.0580596923828,
    ];
    let queue: Vec<f64> = (0..10).map(|i| 1e-8 * 10f64.powi(i)).collect();
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("kubelet_pod_start_duration_seconds".into()),
            &startup,
        )?
        .set_buckets_for_metric(
            Matcher::Full(keelson_netagent::dns::metrics::REQUEST_DURATION_SECONDS.into()),
            &keelson_netagent::dns::metrics::REQUEST_DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), &operations)?
        .set_buckets_for_metric(Matcher::Prefix("workqueue_".into()), &queue)?
        // Every other distribution a histogram too, as the kubelet's are.
        .set_buckets(&operations)?
        .install_recorder()
        .context("cannot install the metrics recorder")
}

/// `cpu=100m,memory=256Mi` → (millicores, bytes).
fn parse_reserved(text: &str) -> anyhow::Result<(u64, u64)> {
    let (mut cpu, mut memory) = (0, 0);
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('=')
            .with_context(|| format!("--system-reserved {part:?}: expected NAME=QUANTITY"))?;
        let bad = || {
            format!("--system-reserved {part:?}: {value:?} is not a quantity like 100m or 256Mi")
        };
        match name {
            "cpu" => {
                cpu = keelson_control::quantity::milli(value)
                    .with_context(bad)?
                    .max(0) as u64
            }
            "memory" => {
                memory = keelson_control::quantity::value(value)
                    .with_context(bad)?
                    .max(0) as u64
            }
            other => anyhow::bail!("--system-reserved: unknown resource {other:?} (cpu or memory)"),
        }
    }
    Ok((cpu, memory))
}

/// The libcontainer runtime over `--data-dir`, with the pod network the
/// flags ask for.
fn libcontainer_runtime(
    args: &AgentArgs,
    images: keelson_nodeagent::images::Store,
    rotation: keelson_nodeagent::shim::LogRotation,
) -> anyhow::Result<keelson_nodeagent::runtime::libcontainer::LibcontainerRuntime> {
    let mut runtime =
        keelson_nodeagent::runtime::libcontainer::LibcontainerRuntime::new(&args.data_dir, images)?
            .with_log_rotation(rotation)
            .with_insecure_registries(args.insecure_registries.clone());
    if args.network == NetworkKind::Cni {
        runtime = runtime.with_network(keelson_nodeagent::runtime::cni::CniConfig {
            bridge: "keelson0".into(),
            state_dir: args.data_dir.join("cni"),
            plugin_dirs: std::env::split_paths(&args.cni_bin_dir).collect(),
        });
    }
    Ok(runtime)
}

/// Stops and removes every pod sandbox on record under `--data-dir` (their
/// containers killed, their network released, their mounts and cgroups
/// gone), as a host shutdown would leave nothing running; images stay. The
/// number removed.
async fn remove_pods(args: &AgentArgs) -> anyhow::Result<usize> {
    use keelson_nodeagent::runtime::Runtime;
    if !matches!(args.runtime, RuntimeKind::Libcontainer) || !args.data_dir.exists() {
        return Ok(0);
    }
    let images = keelson_nodeagent::images::Store::open(&args.data_dir.join("images"))?;
    let runtime = libcontainer_runtime(args, images, Default::default())?;
    let sandboxes = runtime.list().await.context("listing the pod sandboxes")?;
    for sandbox in &sandboxes {
        runtime
            .stop_sandbox(&sandbox.id, Duration::from_secs(2))
            .await
            .with_context(|| format!("stopping sandbox {}", sandbox.id))?;
        runtime
            .remove_sandbox(&sandbox.id)
            .await
            .with_context(|| format!("removing sandbox {}", sandbox.id))?;
    }
    Ok(sandboxes.len())
}

/// An agent that joined with the token asks for a new client certificate
/// when it starts within this many days of its expiry (k3s's rule).
pub(crate) const RENEW_WITHIN_DAYS: i64 = 90;

/// Whether the client certificate in the kubeconfig at `path` is missing,
/// unreadable or expires within [`RENEW_WITHIN_DAYS`].
fn needs_credentials(path: &std::path::Path) -> bool {
    let Ok(config) = Kubeconfig::read(path) else {
        return true;
    };
    keelson_control::pki::expiry(&config.cert_pem)
        .is_none_or(|at| (at - chrono::Utc::now()).num_days() < RENEW_WITHIN_DAYS)
}

/// What the agent keeps of the members it may reach, for a restart while
/// the one it joined through is down.
const SERVERS_FILE: &str = "servers.json";
/// How often the members are looked up in the `kubernetes` Service's endpoints.
const SERVERS_REFRESH: Duration = Duration::from_secs(15);

/// `https://HOST:PORT` → its socket addresses.
async fn resolve(url: &str) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    let authority = url
        .strip_prefix("https://")
        .map(|rest| rest.trim_end_matches('/'))
        .with_context(|| format!("--server {url}: expected https://HOST:PORT"))?;
    let addresses = tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("--server {url}: cannot resolve {authority}"))?;
    Ok(addresses.collect())
}

/// The agent's way in when it joins with `--server`: a balancer on
/// loopback in front of every member, and credentials asked for with the
/// token the first time. Returns the kubeconfig (through the balancer).
async fn join_through_balancer(
    args: &AgentArgs,
    name: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Kubeconfig> {
    use keelson_control::client::balancer::{Balancer, Health};
    let servers_file = args.data_dir.join(SERVERS_FILE);
    let mut members: Vec<std::net::SocketAddr> = std::fs::read_to_string(&servers_file)
        .ok()
        .and_then(|text| serde_json::from_str::<Vec<String>>(&text).ok())
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    for url in &args.server {
        for address in resolve(url).await? {
            if !members.contains(&address) {
                members.push(address);
            }
        }
    }
    let balancer = Balancer::new(Vec::new());
    balancer.set(&members, &Health::Readyz);
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], args.lb_server_port));
    let listener = tokio::net::TcpListener::bind(local)
        .await
        .with_context(|| format!("cannot listen on {local} (--lb-server-port)"))?;
    tokio::spawn(balancer.clone().serve(listener, shutdown.clone()));
    let through = format!("https://{local}");

    let path = args.data_dir.join("kubeconfig");
    let token = crate::admin::read_token(args.token.as_ref(), args.token_file.as_ref());
    if path.exists() && needs_credentials(&path) && token.is_err() {
        tracing::warn!(kubeconfig = %path.display(), "the client certificate expires soon, and there is no token to renew it with");
    } else if needs_credentials(&path) {
        let token = token?;
        // Through the balancer: whichever member answers issues it.
        let joined = keelson_control::join::join_cluster_patiently(
            &through,
            &token,
            serde_json::json!({"name": name, "role": "agent", "version": keelson_control::join::VERSION}),
        )
        .await
        .with_context(|| format!("cannot join the cluster through {}", args.server.join(",")))?;
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
        crate::server::write_private(&path, &joined.kubeconfig("keelson", &through))?;
        tracing::info!(user = joined.field("user"), kubeconfig = %path.display(), "joined the cluster");
    }
    let kubeconfig =
        Kubeconfig::read(&path).with_context(|| format!("the agent's {}", path.display()))?;
    let client = Client::https(Https::new(&kubeconfig)?);
    tokio::spawn(follow_members(
        client,
        balancer,
        servers_file,
        shutdown.clone(),
    ));
    Ok(kubeconfig)
}

/// Keeps the balancer's members those the `kubernetes` Service's endpoints
/// list (every API server that is up), and remembers them on disk.
async fn follow_members(
    client: Client,
    balancer: Arc<keelson_control::client::balancer::Balancer>,
    file: PathBuf,
    shutdown: CancellationToken,
) {
    use k8s_openapi::api::core::v1::Endpoints;
    use keelson_control::client::balancer::Health;
    loop {
        if let Ok(endpoints) = client.get::<Endpoints>(Some("default"), "kubernetes").await {
            let mut members: Vec<std::net::SocketAddr> = Vec::new();
            for subset in endpoints.subsets.unwrap_or_default() {
                let ports: Vec<i32> = subset.ports.iter().flatten().map(|p| p.port).collect();
                for address in subset.addresses.iter().flatten() {
                    for port in &ports {
                        if let (Ok(ip), Ok(port)) =
                            (address.ip.parse::<std::net::IpAddr>(), u16::try_from(*port))
                        {
                            members.push(std::net::SocketAddr::new(ip, port));
                        }
                    }
                }
            }
            members.sort();
            let mut known = balancer.addresses();
            known.sort();
            if !members.is_empty() && members != known {
                balancer.set(&members, &Health::Readyz);
                let text: Vec<String> = members.iter().map(ToString::to_string).collect();
                if let Ok(json) = serde_json::to_string(&text)
                    && let Err(error) = crate::server::write_private(&file, &json)
                {
                    tracing::warn!(%error, "cannot remember the members");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SERVERS_REFRESH) => {}
        }
    }
}

pub(crate) async fn run(args: AgentArgs) -> anyhow::Result<()> {
    if args.cleanup {
        let pods = remove_pods(&args).await?;
        keelson_nodeagent::routes::cleanup()
            .await
            .context("removing the agent's routes")?;
        keelson_netagent::proxy::Iptables::new()
            .cleanup()
            .await
            .context("removing the service proxy's rules")?;
        println!(
            "removed {pods} pod sandbox(es), the agent's routes, loopback addresses and iptables rules"
        );
        return Ok(());
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::server::stop_on_signal(shutdown.clone()));
    let name = match args.node_name.clone() {
        Some(name) => name,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|n| n.trim().to_owned())
            .context("no --node-name, and the host name cannot be read")?,
    };
    let kubeconfig = match &args.kubeconfig {
        Some(path) => {
            Kubeconfig::read(path).with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None if !args.server.is_empty() => join_through_balancer(&args, &name, &shutdown).await?,
        None => anyhow::bail!(
            "the agent needs a way to the API: --server https://MEMBER:6443 --token TOKEN, or --kubeconfig FILE"
        ),
    };
    let client = Client::https(Https::new(&kubeconfig)?);
    let (reserved_milli_cpu, reserved_memory) = parse_reserved(&args.system_reserved)?;
    let mut labels = BTreeMap::new();
    for label in &args.node_labels {
        let (key, value) = label
            .split_once('=')
            .with_context(|| format!("--node-labels {label:?}: expected key=value"))?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    let certificate = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(cert), Some(key)) => {
            let read = |path: &PathBuf| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))
            };
            Some((read(cert)?, read(key)?))
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind((args.address, args.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{} (--address, --port)",
                args.address, args.port
            )
        })?;
    let metrics = install_metrics()?;
    keelson_nodeagent::metrics::describe();
    keelson_netagent::proxy::describe_metrics();
    let endpoint = keelson_nodeagent::Endpoint {
        listener,
        ca_pem: kubeconfig.ca_pem.clone(),
        certificate,
        // The kubelet's and kube-proxy's families, one process here.
        metrics: Some(Arc::new(move || {
            keelson_raftstore::metrics::exposition(&metrics.render(), |_| true)
        })),
    };
    let max_size = keelson_control::quantity::value(&args.container_log_max_size)
        .filter(|n| *n > 0)
        .with_context(|| {
            format!(
                "--container-log-max-size {:?} is not a size like 10Mi",
                args.container_log_max_size
            )
        })?;
    let config = NodeConfig {
        name,
        ip: args.node_ip.clone(),
        labels,
        max_pods: args.max_pods,
        reserved_milli_cpu,
        reserved_memory,
        lease_duration_seconds: args.node_lease_duration_seconds,
        renew_interval: args.node_lease_renew_interval,
        port: None,
        data_dir: Some(args.data_dir.clone()),
        sync_frequency: args.sync_frequency,
        network: keelson_nodeagent::NetworkConfig {
            routes: args.network == NetworkKind::Cni
                && matches!(args.runtime, RuntimeKind::Libcontainer),
            cluster_cidr: args.cluster_cidr.clone(),
            service_cidr: args.service_cidr.clone(),
            cluster_dns: args
                .cluster_dns
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            cluster_domain: args.cluster_domain.clone(),
        },
        machine: None,
    };
    anyhow::ensure!(
        !config.sync_frequency.is_zero(),
        "--sync-frequency must be longer than 0s"
    );
    if config.network.routes {
        start_node_network(&client, &config, &shutdown).await?;
    }
    match args.runtime {
        RuntimeKind::Libcontainer => {
            let images = keelson_nodeagent::images::Store::open(&args.data_dir.join("images"))?;
            let rotation = keelson_nodeagent::shim::LogRotation {
                max_size: max_size as u64,
                max_files: args.container_log_max_files,
            };
            let runtime = Arc::new(libcontainer_runtime(&args, images, rotation)?);
            keelson_nodeagent::run(client, runtime, config, Some(endpoint), shutdown).await?;
        }
        RuntimeKind::Fake => {
            let runtime = Arc::new(keelson_nodeagent::runtime::fake::FakeRuntime::new());
            keelson_nodeagent::run(client, runtime, config, Some(endpoint), shutdown).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_resources_parse() {
        assert_eq!(
            parse_reserved("cpu=100m,memory=256Mi").unwrap(),
            (100, 256 * 1024 * 1024)
        );
        assert_eq!(parse_reserved("").unwrap(), (0, 0));
        assert!(parse_reserved("gpu=1").is_err());
        assert!(parse_reserved("cpu=lots").is_err());
    }
}
