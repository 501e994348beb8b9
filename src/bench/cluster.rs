//! `keelson bench cluster`: three members started here (or a cluster
//! given by its kubeconfig), hollow nodes run in this process, and the
//! load of [`keelson_control::bench::cluster`]; prints the figures as a
//! Markdown table and appends it to a file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use keelson_control::bench::cluster::{ClusterBench, ClusterReport, Usage};
use keelson_control::client::{Client, Https, Kubeconfig};
use keelson_nodeagent::hollow::HollowNodes;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub(crate) struct ClusterBenchArgs {
    /// Hollow nodes, run in this process.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Pods to run on them, in Deployments of --pods-per-deployment.
    #[arg(long, default_value_t = 3000)]
    pods: usize,
    #[arg(long, default_value_t = 30)]
    pods_per_deployment: usize,
    /// Deployments created per second.
    #[arg(long, default_value_t = 20.0)]
    qps: f64,
    /// How long to wait for the nodes, then for every pod, in seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Then this many seconds of constant churn, memory sampled every 30 s.
    #[arg(long, default_value_t = 0)]
    churn_seconds: u64,
    /// Deployments replaced per second during the churn.
    #[arg(long, default_value_t = 1.0)]
    churn_qps: f64,
    /// A running cluster's admin kubeconfig; without it, three members are
    /// started here on loopback (and stopped at the end).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where the members keep their data (default: a new directory under
    /// the system's temporary directory, removed at the end).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Append the table to this file (`docs/benchmarks.md`).
    #[arg(long)]
    append: Option<PathBuf>,
}

/// Three members on loopback, stopped when dropped.
struct Members {
    children: Vec<(String, Child)>,
    dir: PathBuf,
    api: Vec<String>,
    remove: bool,
}

impl Drop for Members {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            drop(child.kill());
            drop(child.wait());
        }
        if self.remove {
            drop(std::fs::remove_dir_all(&self.dir));
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Members {
    fn start(dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let remove = dir.is_none();
        let dir = dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("keelson-bench-cluster-{}", std::process::id()))
        });
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        let binary = std::env::current_exe().context("the keelson binary")?;
        let mut ports = Vec::new();
        for _ in 0..3 {
            ports.push((free_port()?, free_port()?, free_port()?));
        }
        let cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer, _))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Members {
            children: Vec::new(),
            dir: dir.clone(),
            api: Vec::new(),
            remove,
        };
        for (i, (client, peer, api)) in ports.iter().enumerate() {
            let log = std::fs::File::create(dir.join(format!("m{i}.log")))?;
            let child = Command::new(&binary)
                .arg("server")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("m{i}")))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args(["--initial-cluster", &cluster.join(",")])
                .args(["--listen-api-url", &format!("https://127.0.0.1:{api}")])
                // Room for 16,384 nodes' pod CIDRs; hollow nodes route nothing.
                .args([
                    "--cluster-cidr",
                    "10.64.0.0/12",
                    "--node-cidr-mask-size",
                    "26",
                ])
                // Kubernetes' leader election timing: Keelson's 3 s default
                // is for fast takeovers on an idle machine; under a load
                // that keeps writes seconds long, the lease would change
                // hands over and over.
                .args(["--leader-elect-lease-duration", "15s"])
                .args(["--leader-elect-renew-deadline", "10s"])
                .args(["--leader-elect-retry-period", "2s"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("start a member")?;
            members.children.push((format!("m{i}"), child));
            members.api.push(format!("https://127.0.0.1:{api}"));
        }
        Ok(members)
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("m0").join("admin.kubeconfig")
    }
}

/// CPU time and memory of `pid`, from `/proc` (the kernel reports CPU in
/// USER_HZ, 100 a second on Linux).
fn usage_of(name: &str, pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is field 3.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Some(Usage {
        name: name.to_owned(),
        cpu_seconds: ticks / 100.0,
        rss_bytes: kib("VmRSS:"),
        peak_rss_bytes: kib("VmHWM:"),
    })
}

async fn wait_ready(kubeconfig: &Path, timeout: Duration) -> anyhow::Result<Kubeconfig> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(config) = Kubeconfig::read(kubeconfig) {
            let client = Client::https(Https::new(&config)?);
            if client
                .request(hyper::Method::GET, "/readyz", "text/plain", Vec::new())
                .await
                .is_ok()
            {
                return Ok(config);
            }
        }
        if Instant::now() > deadline {
            bail!("the control plane was not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn run(args: ClusterBenchArgs) -> anyhow::Result<()> {
    let members = match &args.kubeconfig {
        Some(_) => None,
        None => Some(Members::start(args.data_dir.clone())?),
    };
    let kubeconfig_path = match (&args.kubeconfig, &members) {
        (Some(path), _) => path.clone(),
        (None, Some(members)) => members.kubeconfig(),
        (None, None) => unreachable!("members are started when no kubeconfig is given"),
    };
    let kubeconfig = wait_ready(&kubeconfig_path, Duration::from_secs(60)).await?;
    let servers = members
        .as_ref()
        .map_or_else(|| vec![kubeconfig.server.clone()], |m| m.api.clone());
    let member_clients = servers
        .iter()
        .map(|server| {
            let mut config = kubeconfig.clone();
            config.server.clone_from(server);
            Ok(Client::https(Https::new(&config)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let hollow = HollowNodes {
        count: args.nodes,
        ..HollowNodes::default()
    };
    let clients = crate::hollow::clients(&kubeconfig, &servers, args.nodes, 50)?;
    let stop = CancellationToken::new();
    let nodes = {
        let stop = stop.clone();
        tokio::spawn(async move { hollow.run(&clients, stop).await })
    };
    let pids: Vec<(String, u32)> = members
        .as_ref()
        .map(|m| {
            m.children
                .iter()
                .map(|(n, c)| (n.clone(), c.id()))
                .collect()
        })
        .unwrap_or_default();
    let own = std::process::id();
    let usage = move || {
        let mut all: Vec<Usage> = pids.iter().filter_map(|(n, p)| usage_of(n, *p)).collect();
        all.extend(usage_of("bench (hollow nodes, load)", own));
        all
    };
    let bench = ClusterBench {
        nodes: args.nodes,
        pods: args.pods,
        pods_per_deployment: args.pods_per_deployment,
        qps: args.qps,
        timeout: Duration::from_secs(args.timeout),
        churn: Duration::from_secs(args.churn_seconds),
        churn_qps: args.churn_qps,
    };
    eprintln!(
        "keelson bench cluster: {} hollow nodes, {} pods in Deployments of {}, {} a second",
        args.nodes, args.pods, args.pods_per_deployment, args.qps
    );
    let client = Client::https(Https::new(&kubeconfig)?);
    // Interrupted, the members it started are still stopped (on drop).
    let interrupted = CancellationToken::new();
    tokio::spawn(crate::server::stop_on_signal(interrupted.clone()));
    let outcome = tokio::select! {
        outcome = bench.run(&client, &member_clients, &usage) => outcome,
        () = interrupted.cancelled() => bail!("interrupted; the members it started are stopped"),
    };
    stop.cancel();
    drop(tokio::time::timeout(Duration::from_secs(10), nodes).await);
    let report = outcome?;
    let table = render(&args, &report);
    println!("{table}");
    if let Some(path) = &args.append {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("--append {}", path.display()))?;
        writeln!(file, "\n{table}")?;
    }
    drop(members);
    if report.running < report.pods {
        bail!(
            "only {} of {} pods were Running within {} s",
            report.running,
            report.pods,
            args.timeout
        );
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e3)
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1 << 20) as f64)
}

/// The report as Markdown.
fn render(args: &ClusterBenchArgs, report: &ClusterReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### `keelson bench cluster --nodes {} --pods {}` ({} Deployments of {}, {}/s{})\n",
        args.nodes,
        args.pods,
        report.deployments,
        args.pods_per_deployment,
        args.qps,
        if args.churn_seconds > 0 {
            format!(
                ", then {} s of churn at {}/s",
                args.churn_seconds, args.churn_qps
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "Measured {} with keelson {} (release build).\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(out, "| measure | figure | SLO |\n|---|---|---|");
    let _ = writeln!(
        out,
        "| pods Running | {} of {} in {:.1} s ({} of the load's calls retried) | — |",
        report.running,
        report.pods,
        report.elapsed.as_secs_f64(),
        report.retries
    );
    let s = &report.startup;
    let _ = writeln!(
        out,
        "| pod startup (first seen → Running) p50 / p90 / p99 / max | {} / {} / {} / {} ms | p99 ≤ 5,000 ms |",
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max)
    );
    let b = &report.scheduling;
    let _ = writeln!(
        out,
        "| scheduling (first seen → bound) p50 / p99 | {} / {} ms | — |",
        ms(b.p50),
        ms(b.p99)
    );
    let _ = writeln!(
        out,
        "| scheduler throughput: average / busiest 5 s | {:.0} / {:.0} pods/s | ≥ 1,000 pods/s |",
        report.scheduler_rate, report.scheduler_peak
    );
    if let Some(worst) = report.mutating_p99() {
        let _ = writeln!(
            out,
            "| slowest mutating call p99 | {} {}: {:.0} ms | ≤ 1,000 ms |",
            worst.verb,
            worst.resource,
            worst.p99 * 1e3
        );
    }
    for load in &report.load {
        let _ = writeln!(
            out,
            "| {}: CPU (cores, average) / memory now / peak | {:.2} / {} MiB / {} MiB | — |",
            load.name,
            load.cpu_cores,
            mib(load.rss_bytes),
            mib(load.peak_rss_bytes)
        );
    }
    let _ = writeln!(
        out,
        "\nAPI calls during the load, all members (the API servers' own histograms):\n"
    );
    let _ = writeln!(
        out,
        "| verb | resource | calls | p50 ms | p99 ms |\n|---|---|---|---|---|"
    );
    let mut api = report.api.clone();
    api.sort_by_key(|l| std::cmp::Reverse(l.count));
    for l in api.iter().filter(|l| l.count >= 10 && l.verb != "WATCH") {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} |",
            l.verb,
            if l.resource.is_empty() {
                "—"
            } else {
                &l.resource
            },
            l.count,
            l.p50 * 1e3,
            l.p99 * 1e3
        );
    }
    if !report.churn.is_empty() {
        let _ = writeln!(
            out,
            "\nMemory during the churn ({} Deployments replaced), MiB:\n",
            report.churned
        );
        let names: Vec<&str> = report.churn[0]
            .rss_bytes
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        let _ = writeln!(out, "| minute | pods | {} |", names.join(" | "));
        let _ = writeln!(out, "|---|---|{}", "---|".repeat(names.len()));
        for sample in &report.churn {
            let row: Vec<String> = sample.rss_bytes.iter().map(|(_, b)| mib(*b)).collect();
            let _ = writeln!(
                out,
                "| {:.1} | {} | {} |",
                sample.at.as_secs_f64() / 60.0,
                sample.pods,
                row.join(" | ")
            );
        }
    }
    out
}
