//! Routes between nodes, host-gw style: every other node's pod CIDR is
//! routed via that node's address (the nodes share a link), and the whole
//! cluster CIDR is a blackhole underneath, so no pod address ever leaves
//! through a default route.
//!
//! ```text
//!  Nodes (watch) ─► desired(nodes, me) ─► ip route replace CIDR via NODE_IP proto 242
//!                                          ip route replace blackhole CLUSTER_CIDR proto 242
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

/// What the routing table should hold: destination → via (`None`: a
/// blackhole).
pub fn desired<N: std::ops::Deref<Target = Node>>(
    nodes: &[N],
    me: &str,
    cluster_cidr: &str,
) -> BTreeMap<String, Option<String>> {
    let mut routes = BTreeMap::new();
    routes.insert(cluster_cidr.to_owned(), None);
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
            routes.insert(cidr, Some(ip));
        }
    }
    routes
}

/// The agent's routes now in the table, from `ip -json route show proto 242`.
pub fn parse_current(json: &str) -> BTreeMap<String, Option<String>> {
    let routes: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    routes
        .into_iter()
        .filter_map(|r| {
            let dst = r["dst"].as_str()?.to_owned();
            let via = r["gateway"].as_str().map(str::to_owned);
            Some((dst, via))
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

/// Makes the table hold exactly `desired` among the agent's routes.
pub async fn apply(desired: &BTreeMap<String, Option<String>>) -> Result<(), RouteError> {
    let current = parse_current(&ip(&["-json", "route", "show", "proto", PROTO]).await?);
    for (dst, via) in desired {
        if current.get(dst) == Some(via) {
            continue;
        }
        match via {
            Some(via) => ip(&["route", "replace", dst, "via", via, "proto", PROTO]).await?,
            None => ip(&["route", "replace", "blackhole", dst, "proto", PROTO]).await?,
        };
    }
    for dst in current.keys().filter(|d| !desired.contains_key(*d)) {
        ip(&["route", "del", dst, "proto", PROTO]).await?;
    }
    Ok(())
}

/// Removes every route the agent made (`keelson agent --cleanup`).
pub async fn cleanup() -> Result<(), RouteError> {
    apply(&BTreeMap::new()).await
}

/// Keeps the routes in step with the nodes until `shutdown`.
pub async fn run(client: Client, me: String, cluster_cidr: String, shutdown: CancellationToken) {
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
        let want = desired(&nodes.list(), &me, &cluster_cidr);
        if want != last {
            match apply(&want).await {
                Ok(()) => {
                    tracing::info!(routes = want.len(), "pod routes to other nodes in place");
                    last = want;
                }
                Err(error) => tracing::warn!(%error, "cannot set the routes to other nodes"),
            }
        }
        tokio::select! {
            () = changed.notified() => {}
            // Also now and then: someone may have removed one.
            () = tokio::time::sleep(Duration::from_secs(30)) => last.clear(),
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
        let routes = desired(&nodes, "a", "10.42.0.0/16");
        assert_eq!(
            routes.into_iter().collect::<Vec<_>>(),
            vec![
                ("10.42.0.0/16".to_owned(), None),
                ("10.42.1.0/24".to_owned(), Some("10.99.0.3".to_owned())),
            ]
        );
    }

    #[test]
    fn the_table_is_read_from_ip_json() {
        let text = r#"[{"type":"blackhole","dst":"10.42.0.0/16","protocol":"242","flags":[]},
            {"dst":"10.42.1.0/24","gateway":"10.99.0.3","dev":"eth0","protocol":"242","flags":[]}]"#;
        let current = parse_current(text);
        assert_eq!(current.get("10.42.0.0/16"), Some(&None));
        assert_eq!(
            current.get("10.42.1.0/24"),
            Some(&Some("10.99.0.3".to_owned()))
        );
        assert!(parse_current("").is_empty());
    }
}
