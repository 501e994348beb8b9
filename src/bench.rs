//! `keelson bench …`: load generators that print what they measured.

use clap::{Args, Subcommand, ValueEnum};
use keelson_raftstore::bench::{BenchConfig, Workload, run as run_bench};

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Load any etcd v3 endpoint (Keelson's or etcd's) and report throughput and latency.
    Store(StoreBenchArgs),
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
    let BenchCommand::Store(args) = command;
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
