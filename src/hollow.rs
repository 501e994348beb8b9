//! `keelson hollow`: hollow nodes (kubemark's) for scale tests — many
//! fake-runtime node agents in this one process.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use keelson_control::client::{Client, Https, Kubeconfig};
use keelson_nodeagent::hollow::HollowNodes;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub(crate) struct HollowArgs {
    /// A kubeconfig of the cluster (its credentials are every node's).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// API servers to spread the nodes' connections over (default: the
    /// kubeconfig's server).
    #[arg(long, value_delimiter = ',')]
    server: Vec<String>,
    /// Hollow nodes to run.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Node names: this and a number.
    #[arg(long, default_value = "hollow-")]
    prefix: String,
    /// Nodes sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 50)]
    nodes_per_connection: usize,
    /// CPUs each node reports.
    #[arg(long, default_value_t = 4)]
    cpus: u64,
    /// Memory each node reports, in GiB.
    #[arg(long, default_value_t = 16)]
    memory_gib: u64,
    /// Pods each node takes at most.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Nodes started per second.
    #[arg(long, default_value_t = 200)]
    start_rate: u32,
}

impl HollowArgs {
    pub(crate) fn nodes(&self) -> HollowNodes {
        HollowNodes {
            count: self.nodes,
            prefix: self.prefix.clone(),
            cpus: self.cpus,
            memory: self.memory_gib << 30,
            max_pods: self.max_pods,
            start_rate: self.start_rate,
            ..HollowNodes::default()
        }
    }
}

/// Clients for `nodes` nodes, `per_connection` to a connection, the
/// connections spread over `servers` (the kubeconfig's server if empty).
pub(crate) fn clients(
    kubeconfig: &Kubeconfig,
    servers: &[String],
    nodes: usize,
    per_connection: usize,
) -> anyhow::Result<Vec<Client>> {
    let servers = if servers.is_empty() {
        std::slice::from_ref(&kubeconfig.server)
    } else {
        servers
    };
    let connections = nodes.div_ceil(per_connection.max(1)).max(1);
    (0..connections)
        .map(|i| {
            let mut config = kubeconfig.clone();
            config.server.clone_from(&servers[i % servers.len()]);
            Ok(Client::https(Https::new(&config)?))
        })
        .collect()
}

pub(crate) async fn run(args: HollowArgs) -> anyhow::Result<()> {
    let kubeconfig = Kubeconfig::read(&args.kubeconfig)
        .with_context(|| format!("--kubeconfig {}", args.kubeconfig.display()))?;
    let clients = clients(
        &kubeconfig,
        &args.server,
        args.nodes,
        args.nodes_per_connection,
    )?;
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::server::stop_on_signal(shutdown.clone()));
    let nodes = args.nodes();
    eprintln!(
        "keelson hollow: starting {} nodes ({}00000…) over {} connections; Ctrl-C stops them",
        nodes.count,
        nodes.prefix,
        clients.len()
    );
    nodes.run(&clients, shutdown.clone()).await;
    // What the nodes leave behind (their Node objects) stays: the node
    // controller marks them NotReady, as it would real nodes.
    drop(tokio::time::timeout(Duration::from_secs(1), shutdown.cancelled()).await);
    Ok(())
}
