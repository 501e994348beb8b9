//! `keelson tunnel`: makes the cluster's LoadBalancer addresses reachable
//! from this machine while it runs (what `minikube tunnel` does): a route
//! for the pool via a node, whose service proxy answers on them; removed
//! when the tunnel stops.

use anyhow::Context;
use clap::Args;

/// The routing protocol number that marks the tunnel's route.
const PROTO: &str = "242";

#[derive(Debug, Args)]
pub(crate) struct TunnelArgs {
    /// A node's address, on a network this machine is directly on.
    #[arg(long)]
    via: std::net::Ipv4Addr,
    /// The LoadBalancer address range (the control plane's --load-balancer-ip-range).
    #[arg(long)]
    range: String,
}

async fn ip(args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .context("running ip (iproute2)")?;
    anyhow::ensure!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub(crate) async fn run(args: TunnelArgs) -> anyhow::Result<()> {
    keelson_control::controllers::loadbalancer::Pool::parse(&args.range)
        .with_context(|| format!("--range {:?} is not a CIDR like 10.44.0.0/24", args.range))?;
    let via = args.via.to_string();
    // Only to a node on a link of this machine's: never through a gateway.
    let path = ip(&["route", "get", &via]).await?;
    anyhow::ensure!(
        !path.contains(" via "),
        "{via} is not on a network this machine is directly on ({}); give a node's address",
        path.trim()
    );
    ip(&["route", "replace", &args.range, "via", &via, "proto", PROTO]).await?;
    println!(
        "tunnel: {} via {via}; LoadBalancer addresses answer from here until this stops (Ctrl-C)",
        args.range
    );
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::server::stop_on_signal(stop.clone()));
    stop.cancelled().await;
    ip(&["route", "del", &args.range, "via", &via, "proto", PROTO])
        .await
        .context("removing the tunnel's route")?;
    println!("tunnel: stopped, route removed");
    Ok(())
}
