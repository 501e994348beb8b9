//! Routes between nodes, host-gw style: every other node's pod CIDR is
//! routed via that node's address (the nodes share a link), and the whole
//! cluster CIDR is a blackhole underneath, so no pod address ever leaves
//! through a default route.
//!
//! ```text
//!  Nodes (watch) ─► desired(nodes, me) ─► ip route replace CIDR via NODE_IP proto 242
//!                                          ip route replace blackhole CLUSTER_CIDR proto 242
//!                                          ip route replace SERVICE_CIDR dev keelson0 proto 242
//!  routes of proto 242 no longer desired ─► ip route del
//! ```
//!
//! Only routes marked with the agent's protocol number are ever changed or
//! removed; this node's own pod CIDR is reached through the pods' bridge
//! (the kernel's route for its address).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use keelson_control::client::Client;
use keelson_control::runtime::Informer;
use tokio_util::sync::CancellationToken;

/// The routing protocol number that marks the agent's routes.
pub const PROTO: &str = "242";

/// Why routes could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("running ip {args}")]
    Exec {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ip {args}: {stderr}")]
    Failed { args: String, stderr: String },
}

/// Where a route sends its packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Through a node on the same link.
    Via(String),
    /// Onto a device: the pods' bridge, for the Service range, so that the
    /// node's own connections to a Service address have a route to be
    /// rewritten from (no default route here).
    Dev(String),
    Blackhole,
}

/// The cluster's ranges as the routes need them.
#[derive(Clone, Debug)]
pub struct Ranges {
    pub cluster_cidr: String,
    pub service_cidr: String,
    /// The pods' bridge.
    pub bridge: String,
}

/// What the routing table should hold: destination → target.
pub fn desired<N: std::ops::Deref<Target = Node>>(
    nodes: &[N],
    me: &str,
    ranges: &Ranges,
) -> BTreeMap<String, Target> {
    let mut routes = BTreeMap::new();
    routes.insert(ranges.cluster_cidr.clone(), Target::Blackhole);
    routes.insert(
        ranges.service_cidr.clone(),
        Target::Dev(ranges.bridge.clone()),
    );
    for node in nodes {
        if node.metadata.name.as_deref() == Some(me) {
            continue;
        }
        let cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.clone());
        let ip = node.status.as_ref().and_then(|s| {
            s.addresses
                .iter()
                .flatten()
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone())
        });
        if let (Some(cidr), Some(ip)) = (cidr, ip)
            && ip.parse::<std::net::Ipv4Addr>().is_ok()
        {
            routes.insert(cidr, Target::Via(ip));
        }
    }
    routes
}

/// The agent's routes now in the table, from `ip -json route show proto 242`.
pub fn parse_current(json: &str) -> BTreeMap<String, Target> {
    let routes: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    routes
        .into_iter()
        .filter_map(|r| {
            let dst = r["dst"].as_str()?.to_owned();
            let target = if r["type"] == "blackhole" {
                Target::Blackhole
            } else if let Some(via) = r["gateway"].as_str() {
                Target::Via(via.to_owned())
            } else {
                Target::Dev(r["dev"].as_str()?.to_owned())
            };
            Some((dst, target))
        })
        .collect()
}

async fn ip(args: &[&str]) -> Result<String, RouteError> {
    let joined = args.join(" ");
    let output = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|source| RouteError::Exec {
            args: joined.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(RouteError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Makes the table hold exactly `desired` among the agent's routes. A
/// route through a device not there yet (the pods' bridge before the
/// first pod) is left for a later pass.
pub async fn apply(desired: &BTreeMap<String, Target>) -> Result<(), RouteError> {
    let current = parse_current(&ip(&["-json", "route", "show", "proto", PROTO]).await?);
    for (dst, target) in desired {
        if current.get(dst) == Some(target) {
            continue;
        }
        match target {
            Target::Via(via) => ip(&["route", "replace", dst, "via", via, "proto", PROTO]).await?,
            Target::Dev(dev) => {
                if ip(&["link", "show", dev]).await.is_err() {
                    continue;
                }
                ip(&["route", "replace", dst, "dev", dev, "proto", PROTO]).await?
            }
            Target::Blackhole => {
                ip(&["route", "replace", "blackhole", dst, "proto", PROTO]).await?
            }
        };
    }
    for dst in current.keys().filter(|d| !desired.contains_key(*d)) {
        ip(&["route", "del", dst, "proto", PROTO]).await?;
    }
    Ok(())
}

/// The label of the node-local service addresses the agent puts on
/// loopback (the cluster DNS address, answered by the agent itself), so
/// they can be told from anyone else's.
pub const LOCAL_LABEL: &str = "lo:keelson";

/// Puts `local` (as a /32) on loopback, labelled as the agent's.
pub async fn ensure_local_address(local: &str) -> Result<(), RouteError> {
    let address = format!("{local}/32");
    let present = ip(&["-o", "addr", "show", "dev", "lo"]).await?;
    if !present.contains(&format!(" {address} ")) {
        ip(&["addr", "add", &address, "dev", "lo", "label", LOCAL_LABEL]).await?;
    }
    Ok(())
}

/// The addresses the agent put on loopback, from `ip -o addr show dev lo`.
fn local_addresses(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.trim_end().ends_with(LOCAL_LABEL) || l.contains(&format!(" {LOCAL_LABEL}\\")))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next().map(str::to_owned)
        })
        .collect()
}

/// Removes every route the agent made, and its loopback addresses
/// (`keelson agent --cleanup`).
pub async fn cleanup() -> Result<(), RouteError> {
    apply(&BTreeMap::new()).await?;
    for address in local_addresses(&ip(&["-o", "addr", "show", "dev", "lo"]).await?) {
        ip(&["addr", "del", &address, "dev", "lo"]).await?;
    }
    Ok(())
}

/// Keeps the routes in step with the nodes until `shutdown`.
pub async fn run(client: Client, me: String, ranges: Ranges, shutdown: CancellationToken) {
    let nodes = Informer::<Node>::new(None);
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let notify = changed.clone();
    nodes.on_event(move |_| notify.notify_one());
    tokio::spawn(nodes.clone().run(client, shutdown.clone()));
    if !nodes.wait_synced(&shutdown).await {
        return;
    }
    let mut last = BTreeMap::new();
    loop {
        let want = desired(&nodes.list(), &me, &ranges);
        if want != last {
            match apply(&want).await {
                Ok(()) => {
                    tracing::debug!(routes = want.len(), "cluster routes in place");
                    last = want;
                }
                Err(error) => tracing::warn!(%error, "cannot set the cluster routes"),
            }
        }
        tokio::select! {
            () = changed.notified() => {}
            // Also now and then: a device may have come, a route gone.
            () = tokio::time::sleep(Duration::from_secs(5)) => last.clear(),
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>, ip: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}
        }))
        .unwrap()
    }

    #[test]
    fn every_other_node_is_routed_via_its_address() {
        let nodes = [
            node("a", Some("10.42.0.0/24"), "10.99.0.2"),
            node("b", Some("10.42.1.0/24"), "10.99.0.3"),
            node("c", None, "10.99.0.4"),
        ];
        let nodes: Vec<&Node> = nodes.iter().collect();
        let ranges = Ranges {
            cluster_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            bridge: "keelson0".into(),
        };
        let routes = desired(&nodes, "a", &ranges);
        assert_eq!(
            routes.into_iter().collect::<Vec<_>>(),
            vec![
                ("10.42.0.0/16".to_owned(), Target::Blackhole),
                ("10.42.1.0/24".to_owned(), Target::Via("10.99.0.3".into())),
                ("10.43.0.0/16".to_owned(), Target::Dev("keelson0".into())),
            ]
        );
    }

    #[test]
    fn only_the_agents_loopback_addresses_are_its() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
                    1: lo    inet 10.43.0.10/32 scope global lo:keelson\\       valid_lft forever preferred_lft forever\n\
                    1: lo    inet 10.9.9.9/32 scope global lo:other\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(local_addresses(text), vec!["10.43.0.10/32".to_owned()]);
    }

    #[test]
    fn the_table_is_read_from_ip_json() {
        let text = r#"[{"type":"blackhole","dst":"10.42.0.0/16","protocol":"242","flags":[]},
            {"dst":"10.42.1.0/24","gateway":"10.99.0.3","dev":"eth0","protocol":"242","flags":[]},
            {"dst":"10.43.0.0/16","dev":"keelson0","protocol":"242","scope":"link","flags":[]}]"#;
        let current = parse_current(text);
        assert_eq!(current.get("10.42.0.0/16"), Some(&Target::Blackhole));
        assert_eq!(
            current.get("10.42.1.0/24"),
            Some(&Target::Via("10.99.0.3".into()))
        );
        assert_eq!(
            current.get("10.43.0.0/16"),
            Some(&Target::Dev("keelson0".into()))
        );
        assert!(parse_current("").is_empty());
    }
}
