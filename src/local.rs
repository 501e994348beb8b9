//! `keelson up`, `status`, `profile`, `stop`, `start`, `delete`, `node`,
//! `logs`: local clusters on this machine (the machinery is
//! `keelson_chaos::local`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use keelson_chaos::local::{self, Kind, Local, Options, prereq};

const DEFAULT_PROFILE: &str = "keelson";

#[derive(Debug, Args)]
pub(crate) struct ProfileArg {
    /// The local cluster's name.
    #[arg(short, long, env = "KEELSON_PROFILE", default_value = DEFAULT_PROFILE)]
    pub(crate) profile: String,
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    profile: ProfileArg,
    /// Nodes (agents) to run, each in a network namespace of its own.
    #[arg(long, default_value_t = 1)]
    nodes: u8,
    /// Control-plane members (three tolerate the loss of one).
    #[arg(long, default_value_t = 3)]
    servers: u8,
    /// Install missing Debian packages (apt-get) instead of stopping.
    #[arg(long)]
    install_deps: bool,
    /// An extra flag for every `keelson server` (repeatable), e.g.
    /// --server-flag=--node-monitor-grace-period=20s.
    #[arg(long = "server-flag", allow_hyphen_values = true)]
    server_flags: Vec<String>,
    /// An extra flag for every `keelson agent` (repeatable).
    #[arg(long = "agent-flag", allow_hyphen_values = true)]
    agent_flags: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProfileCommand {
    /// Every local cluster, as a table.
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Add a node and start it.
    Add(ProfileArg),
    /// Stop a node (its agent, pods and network: a machine switched off).
    Stop(NodeArgs),
    /// Start a stopped node.
    Start(NodeArgs),
    /// Stop a node, remove its Node object and its data.
    Delete(NodeArgs),
    /// The profile's nodes.
    List(ProfileArg),
}

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// The node's name (`keelson node list`).
    name: String,
    #[command(flatten)]
    profile: ProfileArg,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// server-1…, endpoint, or a node's name.
    component: String,
    #[command(flatten)]
    profile: ProfileArg,
    /// Keep printing what is written.
    #[arg(short, long)]
    follow: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EndpointArgs {
    /// The profile's directory (names the process, for whoever cleans up).
    #[arg(long)]
    profile_dir: PathBuf,
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// A member: API_ADDRESS=HEALTH_ADDRESS (repeatable).
    #[arg(long = "member", required = true)]
    members: Vec<String>,
}

fn binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the keelson binary's own path")
}

pub(crate) fn open(profile: &str) -> anyhow::Result<Local> {
    Ok(Local::open(profile, &binary()?)?)
}

/// Prints each step as it begins.
fn progress() -> impl FnMut(&str) {
    |step: &str| {
        println!("* {step}");
        let _ = std::io::stdout().flush();
    }
}

/// Stops with what is missing and what to do, after installing the Debian
/// packages that provide it when `install` says so.
async fn ensure_prerequisites(install: bool) -> anyhow::Result<()> {
    let mut missing = prereq::check();
    let packages: Vec<&str> = missing.iter().filter_map(|m| m.package).collect();
    if install && !packages.is_empty() {
        println!("* Installing {}", packages.join(" "));
        prereq::install(&missing).await?;
        missing = prereq::check();
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.iter().map(|m| format!("  - {m}")).collect();
    let hint = if missing.iter().all(|m| m.package.is_some()) {
        "\n`keelson up --install-deps` installs them"
    } else {
        ""
    };
    bail!("this machine is missing:\n{}{hint}", list.join("\n"))
}

pub(crate) async fn up(args: UpArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let name = &args.profile.profile;
    println!(
        "* keelson {} on this machine, profile {name:?}",
        env!("CARGO_PKG_VERSION")
    );
    ensure_prerequisites(args.install_deps).await?;
    let mut local = match Local::open(name, &binary()?) {
        Ok(local) => {
            println!(
                "* Profile {name:?} exists ({} members, {} nodes): starting it",
                local.profile.servers,
                local.profile.nodes.len()
            );
            local
        }
        Err(_) => {
            let options = Options {
                servers: args.servers,
                nodes: args.nodes,
                server_flags: args.server_flags,
                agent_flags: args.agent_flags,
            };
            Local::create(name, &options, &binary()?).await?
        }
    };
    let mut step = progress();
    if let Err(error) = local.start(&mut step).await {
        bail!(
            "{error}\nthe logs are in {}; `keelson delete -p {name}` removes what was made",
            local.dir.join("logs").display()
        );
    }
    let kubeconfig = local.configure_kubectl().await?;
    println!(
        "* Ready in {:.1} s. kubectl is now configured to use {name:?} ({})",
        started.elapsed().as_secs_f64(),
        kubeconfig.display()
    );
    println!();
    println!("Try:");
    println!("  kubectl get nodes");
    println!("  keelson profile list");
    println!("  keelson tunnel -p {name}     # LoadBalancer addresses, from this machine");
    println!("  keelson delete -p {name}     # remove everything it made");
    Ok(())
}

pub(crate) async fn start(profile: ProfileArg) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut local = open(&profile.profile)?;
    ensure_prerequisites(false).await?;
    local.start(&mut progress()).await?;
    local.configure_kubectl().await?;
    println!(
        "* {} is running ({:.1} s)",
        profile.profile,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(crate) async fn stop(profile: ProfileArg) -> anyhow::Result<()> {
    let local = open(&profile.profile)?;
    local.stop(&mut progress()).await?;
    println!(
        "* {} stopped; `keelson start -p {}` brings it back",
        profile.profile, profile.profile
    );
    Ok(())
}

pub(crate) async fn delete(profile: ProfileArg) -> anyhow::Result<()> {
    let local = open(&profile.profile)?;
    local.delete(&mut progress()).await?;
    println!("* {} deleted", profile.profile);
    Ok(())
}

/// Writes `lines` to standard output; a reader that went away (`| head`)
/// is not an error.
fn emit(lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn state(running: bool) -> &'static str {
    if running { "Running" } else { "Stopped" }
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    profile: ProfileArg,
    /// `json`: every component with its state, memory and metrics URLs
    /// (Prometheus' scrape targets).
    #[arg(short, long, value_parser = ["text", "json"], default_value = "text")]
    output: String,
    /// A member's cluster instead of a local one: by its client URL
    /// (--endpoints) or its data directory on this machine (--data-dir).
    #[command(flatten)]
    member: crate::admin::MemberTarget,
}

/// The status as JSON: what a scrape configuration is generated from.
fn status_json(local: &Local, all: &[local::ComponentStatus]) -> serde_json::Value {
    let pki = local.dir.join("pki");
    let components: Vec<serde_json::Value> = all
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "kind": match c.kind {
                    Kind::Member => "member",
                    Kind::Endpoint => "endpoint",
                    Kind::Node => "node",
                },
                "address": c.address,
                "running": c.running,
                "ready": c.ready,
                "rssBytes": c.rss_bytes,
                "metrics": c.metrics,
            })
        })
        .collect();
    serde_json::json!({
        "profile": local.profile.name,
        "server": local.server_url(),
        "version": local.profile.version,
        "tls": {
            "caFile": pki.join("ca.crt"),
            "certFile": pki.join("admin.crt"),
            "keyFile": pki.join("admin.key"),
        },
        "components": components,
    })
}

pub(crate) async fn status(args: StatusArgs) -> anyhow::Result<()> {
    if args.member.is_given() {
        return crate::admin::status(&args.member).await;
    }
    let profile = args.profile;
    let local = open(&profile.profile)?;
    let all = local.status().await;
    if args.output == "json" {
        let text = serde_json::to_string_pretty(&status_json(&local, &all))?;
        emit(&[text]);
        if all.iter().any(|c| !c.running) {
            std::process::exit(7);
        }
        return Ok(());
    }
    let mut out: Vec<String> = Vec::new();
    let mut down = 0;
    for component in &all {
        out.push(component.name.clone());
        match component.kind {
            Kind::Member => {
                out.push("type: Control Plane member".to_owned());
                out.push(format!("apiserver: {}", state(component.running)));
                out.push(format!("etcd: {}", state(component.running)));
            }
            Kind::Endpoint => {
                out.push("type: API endpoint (fails over between members)".to_owned());
                out.push(format!("endpoint: {}", state(component.running)));
            }
            Kind::Node => {
                out.push("type: Worker".to_owned());
                out.push(format!("kubelet: {}", state(component.running)));
                let ready = match component.ready {
                    Some(true) => "Ready",
                    Some(false) => "NotReady",
                    None => "Unknown",
                };
                out.push(format!("node: {ready}"));
            }
        }
        out.push(format!("address: {}", component.address));
        if let Some(rss) = component.rss_bytes {
            out.push(format!("memory: {:.1} MiB", rss as f64 / 1048576.0));
        }
        out.push(String::new());
        if !component.running {
            down += 1;
        }
    }
    let kubeconfig = if local::kubeconfig::current().await.as_deref() == Some(&profile.profile) {
        "Configured (current context)"
    } else {
        "Configured"
    };
    out.push(format!("kubeconfig: {kubeconfig}"));
    emit(&out);
    if down > 0 {
        // minikube's convention: non-zero when something is not running.
        std::process::exit(7);
    }
    Ok(())
}

pub(crate) async fn profile(command: ProfileCommand) -> anyhow::Result<()> {
    let ProfileCommand::List = command;
    let profiles = local::profiles();
    if profiles.is_empty() {
        emit(&["No profiles: `keelson up --nodes 2 -p NAME` makes one".to_owned()]);
        return Ok(());
    }
    let current = local::kubeconfig::current().await;
    let header = [
        "Profile",
        "VM Driver",
        "Runtime",
        "IP",
        "Port",
        "Version",
        "Status",
        "Nodes",
        "Active",
    ];
    let mut rows: Vec<[String; 9]> = Vec::new();
    let mut out: Vec<String> = Vec::new();
    for profile in profiles {
        let local = open(&profile.name)?;
        let processes = local.processes();
        let components: Vec<String> = (1..=profile.servers)
            .map(Local::member_name)
            .chain(std::iter::once(local::ENDPOINT.to_owned()))
            .chain(profile.nodes.iter().map(|n| n.name.clone()))
            .collect();
        let running = components
            .iter()
            .filter(|c| processes.pid(c).is_some())
            .count();
        let status = match running {
            0 => "Stopped",
            n if n == components.len() => "Running",
            _ => "Degraded",
        };
        rows.push([
            profile.name.clone(),
            "netns".into(),
            "libcontainer".into(),
            local.layout().host_ip().to_string(),
            local::API_PORT.to_string(),
            profile.version.clone(),
            status.into(),
            profile.nodes.len().to_string(),
            if current.as_deref() == Some(&profile.name) {
                "*".into()
            } else {
                String::new()
            },
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain(std::iter::once(header[i].len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
    out.push(format!("|{}|", rule.join("|")));
    let cells: Vec<String> = header
        .iter()
        .zip(&widths)
        .map(|(h, w)| format!(" {h:^w$} "))
        .collect();
    out.push(format!("|{}|", cells.join("|")));
    out.push(format!("|{}|", rule.join("|")));
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!(" {c:<w$} "))
            .collect();
        out.push(format!("|{}|", cells.join("|")));
    }
    out.push(format!("|{}|", rule.join("|")));
    emit(&out);
    Ok(())
}

pub(crate) async fn node(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Add(profile) => {
            let mut local = open(&profile.profile)?;
            let name = local.add_node(&mut progress()).await?;
            println!("* node {name} added");
        }
        NodeCommand::Stop(args) => {
            open(&args.profile.profile)?.stop_node(&args.name).await?;
            println!("* node {} stopped", args.name);
        }
        NodeCommand::Start(args) => {
            open(&args.profile.profile)?
                .start_node(&args.name, &mut progress())
                .await?;
            println!("* node {} started", args.name);
        }
        NodeCommand::Delete(args) => {
            open(&args.profile.profile)?.delete_node(&args.name).await?;
            println!("* node {} deleted", args.name);
        }
        NodeCommand::List(profile) => {
            let local = open(&profile.profile)?;
            for node in &local.profile.nodes {
                println!("{}\t{}", node.name, local.layout().node_ip(node.slot));
            }
        }
    }
    Ok(())
}

pub(crate) async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let local = open(&args.profile.profile)?;
    let path = local.processes().log(&args.component);
    let mut file = std::fs::File::open(&path).with_context(|| {
        format!(
            "no log for {:?} in profile {} ({}); components: server-1…, endpoint, or a node's name",
            args.component,
            args.profile.profile,
            path.display()
        )
    })?;
    let mut stdout = std::io::stdout();
    loop {
        std::io::copy(&mut file, &mut stdout)?;
        stdout.flush()?;
        if !args.follow {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// `keelson image load FILE -p PROFILE`: the tarball into every node's
/// image store.
pub(crate) fn load_image(files: &[PathBuf], profile: &str) -> anyhow::Result<()> {
    let local = open(profile)?;
    for node in &local.profile.nodes {
        let root = local.node_dir(&node.name).join("images");
        let store = keelson_nodeagent::images::Store::open(&root)
            .with_context(|| format!("the image store of node {}", node.name))?;
        for file in files {
            let images = store
                .import(file)
                .with_context(|| format!("importing {} into {}", file.display(), node.name))?;
            for image in images {
                println!("{}: loaded {}", node.name, image.name);
            }
        }
    }
    Ok(())
}

pub(crate) async fn endpoint(args: EndpointArgs) -> anyhow::Result<()> {
    use keelson_control::client::balancer::{Backend, Balancer, Health};
    let mut backends = Vec::new();
    for member in &args.members {
        let (api, health) = member
            .split_once('=')
            .with_context(|| format!("--member {member:?}: expected API_ADDRESS=HEALTH_ADDRESS"))?;
        backends.push(Backend::new(
            api.parse()
                .with_context(|| format!("--member {member:?}"))?,
            Health::Store(
                health
                    .parse()
                    .with_context(|| format!("--member {member:?}"))?,
            ),
        ));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(address = %args.listen, profile = %args.profile_dir.display(), "serving the API endpoint");
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::server::stop_on_signal(shutdown.clone()));
    Balancer::new(backends).serve(listener, shutdown).await;
    Ok(())
}
