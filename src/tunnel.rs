//! `keelson tunnel`: makes the cluster's LoadBalancer addresses reachable
//! from this machine while it runs (what `minikube tunnel` does): a route
//! for the pool via a node, whose service proxy answers on them; removed
//! when the tunnel stops.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::Context;
use clap::Args;
use k8s_openapi::api::core::v1::Service;
use keelson_control::client::{Client, ListParams, Patch};
use keelson_control::controllers::loadbalancer::{self, Decision, Pool};

/// The routing protocol number that marks the tunnel's route.
const PROTO: &str = "242";

#[derive(Debug, Args)]
pub(crate) struct TunnelArgs {
    /// A local cluster made by `keelson up`: its range, via whichever of its
    /// nodes is up (moving when that node stops).
    #[arg(short, long, conflicts_with_all = ["via", "range"])]
    profile: Option<String>,
    /// A node's address, on a network this machine is directly on.
    #[arg(long, required_unless_present = "profile", requires = "range")]
    via: Option<std::net::Ipv4Addr>,
    /// The LoadBalancer address range (the control plane's --load-balancer-ip-range).
    #[arg(long, required_unless_present = "profile")]
    range: Option<String>,
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

/// Points the range's route at `via`, a node on a link of this machine's
/// (never through a gateway).
async fn route(range: &str, via: &str) -> anyhow::Result<()> {
    let path = ip(&["route", "get", via]).await?;
    anyhow::ensure!(
        !path.contains(" via "),
        "{via} is not on a network this machine is directly on ({}); give a node's address",
        path.trim()
    );
    ip(&["route", "replace", range, "via", via, "proto", PROTO]).await?;
    Ok(())
}

/// Gives every LoadBalancer Service without an address one from `pool`
/// (the profile's range is reachable only while a tunnel runs, so its
/// addresses are handed out only then, as `minikube tunnel` does).
async fn assign(client: &Client, pool: Pool) -> anyhow::Result<()> {
    let services = client
        .list::<Service>(None, &ListParams::default())
        .await
        .context("listing Services")?
        .items;
    let mut taken: BTreeSet<Ipv4Addr> = services.iter().flat_map(loadbalancer::ingress).collect();
    for service in &services {
        if let Decision::Assign(ip) = loadbalancer::decide(service, pool, &taken) {
            let status = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}});
            patch_status(client, service, &status).await?;
            println!(
                "tunnel: {}/{} gets {ip}",
                service.metadata.namespace.as_deref().unwrap_or_default(),
                service.metadata.name.as_deref().unwrap_or_default()
            );
            taken.insert(ip);
        }
    }
    Ok(())
}

/// Takes back the addresses of `pool` the Services hold: without the
/// tunnel nothing answers on them.
async fn release(client: &Client, pool: Pool) -> anyhow::Result<()> {
    let services = client
        .list::<Service>(None, &ListParams::default())
        .await
        .context("listing Services")?
        .items;
    for service in &services {
        if loadbalancer::ingress(service)
            .iter()
            .any(|ip| pool.contains(*ip))
        {
            let status = serde_json::json!({"status": {"loadBalancer": {"ingress": null}}});
            patch_status(client, service, &status).await?;
        }
    }
    Ok(())
}

async fn patch_status(
    client: &Client,
    service: &Service,
    status: &serde_json::Value,
) -> anyhow::Result<()> {
    let name = service.metadata.name.as_deref().unwrap_or_default();
    match client
        .patch::<Service>(
            service.metadata.namespace.as_deref(),
            name,
            Some("status"),
            Patch::Merge,
            status,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if error.is_not_found() => Ok(()),
        Err(error) => Err(error).with_context(|| format!("setting Service {name}'s address")),
    }
}

/// A running node of the profile, the current one while it stays up.
fn live_node(local: &keelson_chaos::local::Local, current: Option<&str>) -> Option<String> {
    let processes = local.processes();
    let layout = local.layout();
    let up: Vec<String> = local
        .profile
        .nodes
        .iter()
        .filter(|n| processes.pid(&n.name).is_some())
        .map(|n| layout.node_ip(n.slot).to_string())
        .collect();
    match current {
        Some(current) if up.iter().any(|ip| ip == current) => Some(current.to_owned()),
        _ => up.into_iter().next(),
    }
}

pub(crate) async fn run(args: TunnelArgs) -> anyhow::Result<()> {
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::server::stop_on_signal(stop.clone()));
    let (range, mut via) = match (&args.profile, args.via, &args.range) {
        (Some(profile), _, _) => {
            let local = crate::local::open(profile)?;
            let range = local.layout().load_balancer_range();
            let via = live_node(&local, None).with_context(|| {
                format!("no node of profile {profile} is running; `keelson start -p {profile}`")
            })?;
            (range, via)
        }
        (None, Some(via), Some(range)) => (range.clone(), via.to_string()),
        _ => anyhow::bail!("give --profile, or both --via and --range"),
    };
    Pool::parse(&range)
        .with_context(|| format!("--range {range:?} is not a CIDR like 10.44.0.0/24"))?;
    route(&range, &via).await?;
    println!(
        "tunnel: {range} via {via}; LoadBalancer addresses answer from here until this stops (Ctrl-C)"
    );
    if let Some(profile) = &args.profile {
        let client = crate::local::open(profile)?.admin_client()?;
        let pool = Pool::parse(&range).with_context(|| format!("range {range}"))?;
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => {}
            }
            if let Err(error) = assign(&client, pool).await {
                eprintln!("tunnel: {error:#}");
            }
            let Ok(local) = crate::local::open(profile) else {
                continue;
            };
            if let Some(next) = live_node(&local, Some(&via))
                && next != via
            {
                route(&range, &next).await?;
                println!("tunnel: {range} now via {next}");
                via = next;
            }
        }
        if let Err(error) = release(&client, pool).await {
            eprintln!("tunnel: {error:#}");
        }
    } else {
        stop.cancelled().await;
    }
    ip(&["route", "del", &range, "proto", PROTO])
        .await
        .context("removing the tunnel's route")?;
    println!("tunnel: stopped, route removed");
    Ok(())
}
