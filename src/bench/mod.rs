//! `keelson bench …`: load generators that print what they measured.

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use keelson_raftstore::bench::{BenchConfig, Workload, run as run_bench};

mod cluster;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Load any etcd v3 endpoint (Keelson's or etcd's) and report throughput and latency.
    Store(StoreBenchArgs),
    /// Scheduling throughput: simulated nodes, pods created as fast as the
    /// API takes them, each timed from creation to binding.
    Scheduler(SchedulerBenchArgs),
    /// A whole cluster under load: hollow nodes, Deployments created at a
    /// steady rate; API latency, pod startup, scheduler throughput, and the
    /// members' CPU and memory (three members are started unless given).
    Cluster(Box<cluster::ClusterBenchArgs>),
    /// Pod startup: pods created onto the cluster's real nodes, each timed
    /// from creation to Running (the image must be on the nodes).
    Pods(PodsBenchArgs),
    /// The service proxy: render a synthetic cluster's rules, and (as root)
    /// apply, change and clean them up in a network namespace of its own.
    Proxy(ProxyBenchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ProxyBenchArgs {
    /// Services in the synthetic cluster.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Ready endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Times to run it, side by side figures printed per round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Render only: no namespace, no iptables (needs no root).
    #[arg(long)]
    render_only: bool,
}

async fn proxy(args: ProxyBenchArgs) -> anyhow::Result<()> {
    use keelson_netagent::proxy::bench::{Netns, benchmark};
    let ms = |d: Option<std::time::Duration>| {
        d.map_or_else(
            || "-".to_owned(),
            |d| format!("{:.1}", d.as_secs_f64() * 1000.0),
        )
    };
    println!(
        "proxy  {} services x {} endpoints",
        args.services, args.endpoints
    );
    println!(
        "round  rules  bytes  render ms  first apply ms  one change ms  resync ms  cleanup ms"
    );
    for round in 1..=args.rounds.max(1) {
        // A namespace of its own, gone when the round ends.
        let netns = if args.render_only {
            None
        } else {
            Some(
                Netns::create("keelson-bench-proxy")
                    .context("a network namespace (run as root)")?,
            )
        };
        let iptables = netns.as_ref().map(Netns::iptables);
        let report = benchmark(iptables.as_ref(), args.services, args.endpoints).await?;
        println!(
            "{round:>5}  {:>5}  {:>5}  {:>9}  {:>14}  {:>13}  {:>9}  {:>10}",
            report.rules,
            report.bytes,
            ms(Some(report.render)),
            ms(report.first_apply),
            ms(report.incremental_apply),
            ms(report.full_resync_in_place),
            ms(report.cleanup),
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct PodsBenchArgs {
    /// The cluster's admin kubeconfig.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: std::path::PathBuf,
    /// Pods to start.
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Their image (present on the nodes: imagePullPolicy Never).
    #[arg(long)]
    image: String,
    /// Pod creations in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// How long to wait for them all, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Debug, Args)]
pub(crate) struct SchedulerBenchArgs {
    /// The cluster's admin kubeconfig.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: std::path::PathBuf,
    /// Simulated nodes to register (nothing runs on them).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Pods to schedule onto them.
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long to wait for every pod to be bound, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WorkloadArg {
    Put,
    Range,
    Txn,
    WatchLatency,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Consistency {
    /// Linearizable reads.
    L,
    /// Serializable reads.
    S,
}

#[derive(Debug, Args)]
pub(crate) struct StoreBenchArgs {
    /// Workloads to run, one after another.
    #[arg(value_enum, required = true)]
    workloads: Vec<WorkloadArg>,
    /// Endpoints, comma-separated (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Concurrent callers.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// gRPC connections the callers share.
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// Operations per workload.
    #[arg(long, default_value_t = 10_000)]
    total: usize,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long = "val-size", default_value_t = 256)]
    value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    key_space: usize,
    /// Read consistency for range.
    #[arg(long, value_enum, default_value = "l")]
    consistency: Consistency,
    /// Watchers for watch-latency.
    #[arg(long, default_value_t = 8)]
    watchers: usize,
    /// Run each workload for this many seconds instead of --total operations.
    #[arg(long)]
    duration: Option<f64>,
}

pub(crate) async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Store(args) => store(args).await,
        BenchCommand::Cluster(args) => cluster::run(*args).await,
        BenchCommand::Scheduler(args) => scheduler(args).await,
        BenchCommand::Pods(args) => pods(args).await,
        BenchCommand::Proxy(args) => proxy(args).await,
    }
}

async fn pods(args: PodsBenchArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use keelson_control::client::{Client, Https, Kubeconfig};
    let config = Kubeconfig::read(&args.kubeconfig)
        .with_context(|| format!("--kubeconfig {}", args.kubeconfig.display()))?;
    let client = Client::https(Https::new(&config)?);
    let bench = keelson_control::bench::PodStartupBench {
        pods: args.pods,
        image: args.image,
        concurrency: args.concurrency,
        timeout: std::time::Duration::from_secs(args.timeout),
    };
    let report = bench.run(&client).await?;
    println!(
        "pods  started {} of {} in {:.2} s  create->Running p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        report.bound,
        report.pods,
        report.elapsed.as_secs_f64(),
        report.p50.as_secs_f64() * 1e3,
        report.p99.as_secs_f64() * 1e3,
        report.max.as_secs_f64() * 1e3,
    );
    Ok(())
}

async fn scheduler(args: SchedulerBenchArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use keelson_control::client::{Client, Https, Kubeconfig};
    let config = Kubeconfig::read(&args.kubeconfig)
        .with_context(|| format!("--kubeconfig {}", args.kubeconfig.display()))?;
    let client = Client::https(Https::new(&config)?);
    let bench = keelson_control::bench::SchedulerBench {
        nodes: args.nodes,
        pods: args.pods,
        concurrency: args.concurrency,
        timeout: std::time::Duration::from_secs(args.timeout),
    };
    let report = bench.run(&client).await?;
    println!(
        "scheduler  nodes {}  pods {}  bound {} in {:.2} s  {:.0} pods/s  create->bound p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        report.nodes,
        report.pods,
        report.bound,
        report.elapsed.as_secs_f64(),
        report.throughput(),
        report.p50.as_secs_f64() * 1e3,
        report.p99.as_secs_f64() * 1e3,
        report.max.as_secs_f64() * 1e3,
    );
    Ok(())
}

async fn store(args: StoreBenchArgs) -> anyhow::Result<()> {
    println!(
        "endpoints {}  clients {}  conns {}  key {} B  value {} B  key space {}",
        args.endpoints.join(","),
        args.clients,
        args.conns,
        args.key_size,
        args.value_size,
        args.key_space
    );
    for workload in &args.workloads {
        let workload = match workload {
            WorkloadArg::Put => Workload::Put,
            WorkloadArg::Range => Workload::Range,
            WorkloadArg::Txn => Workload::Txn,
            WorkloadArg::WatchLatency => Workload::WatchLatency,
        };
        let config = BenchConfig {
            endpoints: args.endpoints.clone(),
            workload,
            clients: args.clients,
            conns: args.conns,
            total: args.total,
            key_size: args.key_size,
            value_size: args.value_size,
            key_space: args.key_space,
            serializable: matches!(args.consistency, Consistency::S),
            watchers: args.watchers,
            duration: args.duration.map(std::time::Duration::from_secs_f64),
        };
        println!("{}", run_bench(config).await?);
    }
    Ok(())
}
