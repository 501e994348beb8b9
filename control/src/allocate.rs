//! Service ClusterIPs and NodePorts, allocated without conflicts between
//! members: each one taken is a key created only if absent, as Kubernetes'
//! IPAddress objects are, so two members can never hand out the same one.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::status::{ApiError, Cause};
use crate::storage::{Store, StoreError, Written};

const IP_PREFIX: &str = "/registry/keelson/clusterips/";
const PORT_PREFIX: &str = "/registry/keelson/nodeports/";

/// The NodePort range (Kubernetes' default).
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// The service IP range, `10.43.0.0/16` by default (k3s's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceRange {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Default for ServiceRange {
    fn default() -> Self {
        ServiceRange {
            base: Ipv4Addr::new(10, 43, 0, 0),
            prefix: 16,
        }
    }
}

impl ServiceRange {
    /// Parses `10.43.0.0/16`.
    pub fn parse(cidr: &str) -> Option<Self> {
        let (ip, prefix) = cidr.split_once('/')?;
        let base: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| (8..=30).contains(p))?;
        let mask = u32::MAX << (32 - prefix);
        Some(ServiceRange {
            base: Ipv4Addr::from(u32::from(base) & mask),
            prefix,
        })
    }

    fn size(self) -> u32 {
        1 << (32 - self.prefix)
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(u32::from(self.base)) < self.size()
    }

    /// The first usable address: the `kubernetes` Service's.
    pub fn first(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    /// The cluster DNS address, the tenth (k3s's `10.43.0.10`): the
    /// `kube-dns` Service's, served by every node's agent.
    pub fn dns(self) -> Ipv4Addr {
        self.nth(10)
    }

    fn nth(self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + offset)
    }
}

/// A starting point for a search, so members do not all try the same one.
fn random(bound: u32) -> u32 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) % bound.max(1)
}

async fn take(store: &Store, key: String, owner: &str) -> Result<bool, StoreError> {
    Ok(matches!(
        store
            .create(key.as_bytes(), owner.as_bytes().to_vec())
            .await?,
        Written::Ok(_)
    ))
}

/// Takes `wanted` (or any free address) for the Service `owner`.
pub async fn cluster_ip(
    store: &Store,
    range: ServiceRange,
    wanted: Option<Ipv4Addr>,
    owner: &str,
) -> Result<Ipv4Addr, ApiError> {
    if let Some(ip) = wanted {
        let refuse = |why: &str| {
            vec![Cause::invalid(
                "spec.clusterIPs",
                &format!("[\"{ip}\"]"),
                &format!("failed to allocate IP {ip}: {why}"),
            )]
        };
        if !range.contains(ip) {
            return Err(invalid_service(
                owner,
                refuse(&format!(
                    "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}/{}",
                    range.base, range.prefix
                )),
            ));
        }
        if !take(store, format!("{IP_PREFIX}{ip}"), owner).await? {
            return Err(invalid_service(
                owner,
                refuse("provided IP is already allocated"),
            ));
        }
        return Ok(ip);
    }
    // Neither the network address, nor .1 (the `kubernetes` Service), nor broadcast.
    let usable = range.size() - 3;
    let start = random(usable);
    for step in 0..usable {
        let ip = range.nth(2 + (start + step) % usable);
        if take(store, format!("{IP_PREFIX}{ip}"), owner).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::internal(format!(
        "no ClusterIP is left in {}/{}",
        range.base, range.prefix
    )))
}

/// Takes `wanted` (or any free port) of [`NODE_PORTS`] for `owner`.
pub async fn node_port(
    store: &Store,
    wanted: Option<u16>,
    owner: &str,
    field: &str,
) -> Result<u16, ApiError> {
    if let Some(port) = wanted {
        let refuse = |why: String| {
            invalid_service(owner, vec![Cause::invalid(field, &port.to_string(), &why)])
        };
        if !NODE_PORTS.contains(&port) {
            return Err(refuse(format!(
                "provided port is not in the valid range. The range of valid ports is {}-{}",
                NODE_PORTS.start(),
                NODE_PORTS.end()
            )));
        }
        if !take(store, format!("{PORT_PREFIX}{port}"), owner).await? {
            return Err(refuse("provided port is already allocated".into()));
        }
        return Ok(port);
    }
    let count = u32::from(NODE_PORTS.end() - NODE_PORTS.start()) + 1;
    let start = random(count);
    for step in 0..count {
        let port = NODE_PORTS.start() + ((start + step) % count) as u16;
        if take(store, format!("{PORT_PREFIX}{port}"), owner).await? {
            return Ok(port);
        }
    }
    Err(ApiError::internal("no NodePort is left"))
}

fn invalid_service(owner: &str, causes: Vec<Cause>) -> ApiError {
    let name = owner.rsplit('/').next().unwrap_or(owner);
    match crate::resources::find("", "v1", "services") {
        Some(services) => ApiError::invalid(services, name, causes),
        None => ApiError::internal("services are not served"),
    }
}

/// Gives back what a deleted Service held.
pub async fn release(store: &Store, service: &Value) -> Result<(), StoreError> {
    if let Some(ip) = service["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| ip.parse::<Ipv4Addr>().is_ok())
    {
        store.remove(format!("{IP_PREFIX}{ip}").as_bytes()).await?;
    }
    for port in service["spec"]["ports"].as_array().into_iter().flatten() {
        if let Some(node_port) = port["nodePort"].as_u64() {
            store
                .remove(format!("{PORT_PREFIX}{node_port}").as_bytes())
                .await?;
        }
    }
    Ok(())
}

/// Fills in a Service's ClusterIP and NodePorts: carried over from
/// `current` (an update) where the client left them out, allocated where
/// new. Returns what was newly taken, for [`release`] should the write fail.
pub async fn service(
    store: &Store,
    range: ServiceRange,
    service: &mut Value,
    current: Option<&Value>,
) -> Result<Value, ApiError> {
    let owner = format!(
        "{}/{}",
        service["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default(),
        service["metadata"]["name"].as_str().unwrap_or_default()
    );
    let mut taken = json!({"spec": {"ports": []}});
    let kind = service["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_owned();
    if kind == "ExternalName" {
        return Ok(taken);
    }
    if let Some(current) = current
        && service["spec"]["clusterIP"]
            .as_str()
            .is_none_or(str::is_empty)
    {
        service["spec"]["clusterIP"] = current["spec"]["clusterIP"].clone();
        service["spec"]["clusterIPs"] = current["spec"]["clusterIPs"].clone();
    }
    match service["spec"]["clusterIP"].as_str() {
        Some("None") => service["spec"]["clusterIPs"] = json!(["None"]),
        Some(ip) if current.is_some_and(|c| c["spec"]["clusterIP"] == ip) => {}
        given => {
            let wanted = match given.filter(|ip| !ip.is_empty()) {
                Some(text) => Some(text.parse::<Ipv4Addr>().map_err(|_| {
                    invalid_service(
                        &owner,
                        vec![Cause::invalid(
                            "spec.clusterIP",
                            text,
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        )],
                    )
                })?),
                None => None,
            };
            let ip = cluster_ip(store, range, wanted, &owner).await?;
            service["spec"]["clusterIP"] = json!(ip.to_string());
            service["spec"]["clusterIPs"] = json!([ip.to_string()]);
            taken["spec"]["clusterIP"] = json!(ip.to_string());
        }
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        let old_ports = current
            .map(|c| c["spec"]["ports"].clone())
            .unwrap_or(Value::Null);
        let count = service["spec"]["ports"].as_array().map_or(0, Vec::len);
        for i in 0..count {
            let port = &service["spec"]["ports"][i];
            let previous = old_ports
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["port"] == port["port"] && p["protocol"] == port["protocol"]);
            // 0 is what a client that wants any port sends.
            let wanted = port["nodePort"]
                .as_u64()
                .filter(|p| *p != 0)
                .map(|p| p as u16);
            let kept = previous
                .and_then(|p| p["nodePort"].as_u64())
                .map(|p| p as u16);
            let node_port = match (wanted, kept) {
                (Some(w), Some(k)) if w == k => w,
                (None, Some(k)) => k,
                (wanted, _) => {
                    let port =
                        node_port(store, wanted, &owner, &format!("spec.ports[{i}].nodePort"))
                            .await?;
                    if let Value::Array(list) = &mut taken["spec"]["ports"] {
                        list.push(json!({"nodePort": port}));
                    }
                    port
                }
            };
            service["spec"]["ports"][i]["nodePort"] = json!(node_port);
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_contain() {
        let range = ServiceRange::parse("10.96.5.7/12").unwrap();
        assert_eq!(range.base, Ipv4Addr::new(10, 96, 0, 0));
        assert!(range.contains(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!range.contains(Ipv4Addr::new(10, 112, 0, 0)));
        assert_eq!(ServiceRange::default().first(), Ipv4Addr::new(10, 43, 0, 1));
        assert!(ServiceRange::parse("10.0.0.0/33").is_none());
        assert!(ServiceRange::parse("nonsense").is_none());
    }
}
