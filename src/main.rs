//! `keelson`: one binary, with a subcommand per role.
//!
//! Flags are parsed here and handed to the libraries' `run` functions; nothing
//! else lives in the binary.

mod admin;
mod agent;
mod bench;
mod chaos;
mod config;
mod hollow;
mod image;
mod local;
mod server;
mod tunnel;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "keelson",
    version,
    about = "Kubernetes-compatible container orchestrator with a Raft-replicated control plane"
)]
struct Cli {
    /// Log lines as text, or as JSON objects (one per line, with the
    /// fields of every span they happen in).
    #[arg(long, global = true, env = "KEELSON_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a control-plane member: the etcd-v3-compatible store over gRPC,
    /// and the Kubernetes API over HTTPS.
    Server(Box<server::ServerArgs>),
    /// Run a node agent: registers a Node and runs the pods bound to it.
    Agent(Box<agent::AgentArgs>),
    /// Run hollow nodes for scale tests: many node agents on the fake
    /// runtime in this one process (kubemark's hollow nodes).
    Hollow(hollow::HollowArgs),
    /// The node's image store: import tarballs, list images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Run one container to its end (started by the agent; not for people).
    #[command(hide = true)]
    Shim(ShimArgs),
    /// Hold a pod's namespaces (started by the agent; not for people).
    #[command(hide = true)]
    Pause {
        #[arg(long)]
        hostname: String,
        /// The sandbox's directory: names the process, for whoever cleans up.
        #[arg(long)]
        sandbox: std::path::PathBuf,
    },
    /// Run a command in a running container (started by the agent; not for people).
    #[command(hide = true)]
    ExecIn {
        /// The container's state directory (libcontainer's root is under it).
        #[arg(long)]
        state: std::path::PathBuf,
        /// The container's bundle: the command runs as its user.
        #[arg(long)]
        bundle: Option<std::path::PathBuf>,
        #[arg(long)]
        id: String,
        /// Standard input is a terminal: make it the command's controlling terminal.
        #[arg(long)]
        tty: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Start a local HA cluster: members and nodes in network namespaces of
    /// their own, kubectl configured (starts an existing profile again).
    Up(Box<local::UpArgs>),
    /// What each component of a local cluster is doing; with --data-dir or
    /// --endpoints, the control plane's members, quorum and certificates.
    Status(local::StatusArgs),
    /// Save, check and restore snapshots of the store.
    #[command(subcommand)]
    Snapshot(admin::SnapshotCommand),
    /// List the control plane's members; remove a lost one.
    #[command(subcommand)]
    Member(admin::MemberCommand),
    /// Renew a member's certificates.
    #[command(subcommand)]
    Certs(admin::CertsCommand),
    /// Local clusters.
    #[command(subcommand)]
    Profile(local::ProfileCommand),
    /// Stop a local cluster, keeping its data (`start` brings it back).
    Stop(local::ProfileArg),
    /// Start a stopped local cluster.
    Start(local::ProfileArg),
    /// Remove a local cluster and everything it made.
    #[command(alias = "down")]
    Delete(local::ProfileArg),
    /// Add, stop, start and delete a local cluster's nodes.
    #[command(subcommand)]
    Node(local::NodeCommand),
    /// A local cluster component's log.
    Logs(local::LogsArgs),
    /// Serve a local cluster's API endpoint (started by `up`; not for people).
    #[command(hide = true)]
    Endpoint(local::EndpointArgs),
    /// Make LoadBalancer addresses reachable from this machine while it runs.
    Tunnel(tunnel::TunnelArgs),
    /// Measure a component under load.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Inject faults into clusters started for the purpose while workloads
    /// run, and check what they recorded (linearizability, watches, leases,
    /// workloads); exits non-zero on any violation or lost write.
    Chaos(chaos::ChaosArgs),
}

#[derive(Debug, clap::Args)]
struct ShimArgs {
    #[arg(long)]
    id: String,
    #[arg(long)]
    bundle: std::path::PathBuf,
    #[arg(long)]
    state: std::path::PathBuf,
    #[arg(long)]
    log: std::path::PathBuf,
    /// Bytes a log file grows to before it is rotated.
    #[arg(long, default_value_t = keelson_nodeagent::shim::LogRotation::default().max_size)]
    log_max_size: u64,
    /// Log files kept, the current one included.
    #[arg(long, default_value_t = keelson_nodeagent::shim::LogRotation::default().max_files)]
    log_max_files: u32,
}

/// Logs to standard error, filtered by `RUST_LOG` (default info), as text
/// or JSON; the filter can be replaced while the process runs
/// (`PUT /debug/flags/v` on the API server and the agent).
fn init_logging(json: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, reload};
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(keelson_control::logging::directives("0")));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        let format = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr);
        registry.with(format).init();
    } else {
        let format = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal());
        registry.with(format).init();
    }
    keelson_control::logging::install(move |directives| {
        let filter = EnvFilter::try_new(directives)
            .map_err(|e| format!("{directives:?} is not a log filter: {e}"))?;
        handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log filter: {e}"))?;
        Ok(directives.to_owned())
    });
}

fn main() -> ExitCode {
    let argv = match config::expand(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(error) => {
            eprintln!("keelson: {error}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    // These fork and clone: they run before any thread exists.
    match &cli.command {
        Command::Shim(args) => {
            let paths = keelson_nodeagent::shim::ShimPaths {
                id: args.id.clone(),
                bundle: args.bundle.clone(),
                state: args.state.clone(),
                log: args.log.clone(),
                rotation: keelson_nodeagent::shim::LogRotation {
                    max_size: args.log_max_size,
                    max_files: args.log_max_files,
                },
            };
            return match keelson_nodeagent::shim::run_shim(&paths) {
                Ok(_) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("keelson shim: {}", keelson_control::runtime::chain(&error));
                    ExitCode::FAILURE
                }
            };
        }
        Command::Pause { hostname, .. } => {
            return match keelson_nodeagent::shim::run_pause(hostname) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("keelson pause: {}", keelson_control::runtime::chain(&error));
                    ExitCode::FAILURE
                }
            };
        }
        Command::ExecIn {
            state,
            bundle,
            id,
            tty,
            command,
        } => {
            return match keelson_nodeagent::shim::run_exec(
                state,
                bundle.as_deref(),
                id,
                command,
                *tty,
            ) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
                Err(error) => {
                    eprintln!("keelson exec: {}", keelson_control::runtime::chain(&error));
                    ExitCode::from(126)
                }
            };
        }
        _ => {}
    }
    init_logging(cli.log_format == "json");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keelson: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(*args).await,
            Command::Agent(args) => agent::run(*args).await,
            Command::Hollow(args) => hollow::run(args).await,
            Command::Image(command) => image::run(command),
            Command::Shim(_) | Command::Pause { .. } | Command::ExecIn { .. } => Ok(()),
            Command::Bench(command) => bench::run(command).await,
            Command::Chaos(args) => chaos::run(args).await,
            Command::Tunnel(args) => tunnel::run(args).await,
            Command::Up(args) => local::up(*args).await,
            Command::Status(args) => local::status(args).await,
            Command::Snapshot(command) => admin::snapshot(command).await,
            Command::Member(command) => admin::member(command).await,
            Command::Certs(command) => admin::certs(command).await,
            Command::Profile(command) => local::profile(command).await,
            Command::Stop(args) => local::stop(args).await,
            Command::Start(args) => local::start(args).await,
            Command::Delete(args) => local::delete(args).await,
            Command::Node(command) => local::node(command).await,
            Command::Logs(args) => local::logs(args).await,
            Command::Endpoint(args) => local::endpoint(args).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keelson: {error:#}");
            ExitCode::FAILURE
        }
    }
}
