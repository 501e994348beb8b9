//! What the renderer works from: Services and EndpointSlices reduced to
//! service ports and their endpoints, IPv4 only.
//!
//! ```text
//!  Service ─► one ServicePort per spec.ports[] (cluster IP, node port, LB/external IPs, policies)
//!  EndpointSlice (label kubernetes.io/service-name, IPv4) ─► endpoints per (service, port name, protocol)
//! ```
//!
//! Slices are matched to a service port by namespace, the
//! `kubernetes.io/service-name` label, the port's name and its protocol, as
//! kube-proxy does; a Service without a selector is no different.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::names;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Session affinity timeout when `sessionAffinityConfig` gives none (3 h).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// An IPv4 network, `a.b.c.d/n`, with the host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

/// A string that is not an IPv4 CIDR.
#[derive(Debug, thiserror::Error)]
#[error("{input:?} is not an IPv4 CIDR (a.b.c.d/n, n ≤ 32)")]
pub struct CidrError {
    input: String,
}

impl Ipv4Cidr {
    /// The network of `address` with a `prefix`-bit mask.
    ///
    /// # Errors
    /// [`CidrError`] if `prefix` is over 32.
    pub fn new(address: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > 32 {
            return Err(CidrError {
                input: format!("{address}/{prefix}"),
            });
        }
        Ok(Self {
            network: Ipv4Addr::from(u32::from(address) & mask(prefix)),
            prefix,
        })
    }

    /// The loopback range, `127.0.0.0/8`.
    pub const LOOPBACK: Self = Self {
        network: Ipv4Addr::new(127, 0, 0, 0),
        prefix: 8,
    };

    /// One address, `a.b.c.d/32`.
    pub const fn host(address: Ipv4Addr) -> Self {
        Self {
            network: address,
            prefix: 32,
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & mask(self.prefix) == u32::from(self.network)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    /// `a.b.c.d/n`; a bare address is a `/32`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = || CidrError {
            input: input.to_owned(),
        };
        let (address, prefix) = match input.trim().split_once('/') {
            Some((address, prefix)) => (address, prefix.parse::<u8>().map_err(|_| error())?),
            None => (input.trim(), 32),
        };
        let address = address.parse::<Ipv4Addr>().map_err(|_| error())?;
        Self::new(address, prefix).map_err(|_| error())
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The transport protocols a service port can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// From the API's spelling (`TCP`, the default when absent); `None` for
    /// anything else.
    pub fn from_api(protocol: Option<&str>) -> Option<Self> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// As iptables and kube-proxy's hashes spell it.
    pub fn lower(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// Which endpoints a service port's endpoints are looked up under.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PortKey {
    pub namespace: String,
    pub service: String,
    pub port_name: String,
    pub protocol: Protocol,
}

/// One port of one Service, with what the rules need.
#[derive(Clone, Debug)]
pub(crate) struct ServicePort {
    pub key: PortKey,
    /// `ns/name:port`, for comments and hashes.
    pub name: String,
    /// The hash suffix of the port's SVC/SVL/EXT/FW chains.
    pub hash: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<Ipv4Addr>,
    pub load_balancer_ips: Vec<Ipv4Addr>,
    pub load_balancer_source_ranges: Vec<Ipv4Cidr>,
    /// `externalTrafficPolicy: Local` on a service reachable from outside.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `sessionAffinity: ClientIP`, with its timeout in seconds.
    pub affinity_seconds: Option<u32>,
}

impl ServicePort {
    /// Node ports, external IPs or load-balancer IPs lead to it.
    pub(crate) fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    pub(crate) fn chain(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.hash)
    }
}

/// One endpoint of a service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (`nodeName` is this node's name).
    pub local: bool,
}

impl Endpoint {
    /// `ip:port`.
    pub(crate) fn address(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// Endpoints per service port, sorted by address, one per address.
pub(crate) type EndpointMap = BTreeMap<PortKey, BTreeMap<(Ipv4Addr, u16), Endpoint>>;

fn ipv4(text: &str) -> Option<Ipv4Addr> {
    text.parse().ok()
}

/// The service ports to program, sorted by namespace, name, port name and
/// protocol. Left out: ExternalName and headless Services, Services with no
/// IPv4 cluster IP, those whose cluster IP is in `node_local`, and ports of
/// an unknown protocol or out of range.
pub(crate) fn service_ports(
    services: &[Arc<Service>],
    node_local: &BTreeSet<Ipv4Addr>,
) -> Vec<ServicePort> {
    let mut ports = Vec::new();
    for service in services {
        let (Some(spec), Some(name)) = (&service.spec, &service.metadata.name) else {
            continue;
        };
        let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
        let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
        if service_type == "ExternalName" {
            continue;
        }
        // The IPv4 one of a dual-stack service's IPs.
        let cluster_ip = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .find_map(|ip| ipv4(ip));
        let Some(cluster_ip) = cluster_ip else {
            continue; // headless ("None"), unallocated or IPv6-only
        };
        if node_local.contains(&cluster_ip) {
            continue;
        }
        let has_node_ports = matches!(service_type, "NodePort" | "LoadBalancer");
        let external_ips: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ipv4(ip))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let load_balancer_ips: Vec<Ipv4Addr> = if service_type == "LoadBalancer" {
            service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                // ipMode Proxy: the load balancer proxies to the nodes and
                // expects no short-circuit for its IP.
                .filter(|ingress| ingress.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|ingress| ingress.ip.as_deref().and_then(ipv4))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        let load_balancer_source_ranges: Vec<Ipv4Cidr> = spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .filter_map(|range| range.parse().ok())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let external_local = (has_node_ports || !external_ips.is_empty())
            && spec.external_traffic_policy.as_deref() == Some("Local");
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
        for port in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::from_api(port.protocol.as_deref()) else {
                continue;
            };
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            if number == 0 {
                continue;
            }
            let node_port = if has_node_ports {
                port.node_port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
            } else {
                None
            };
            let port_name = port.name.clone().unwrap_or_default();
            let display = names::service_port_name(namespace, name, &port_name);
            ports.push(ServicePort {
                hash: names::port_hash(&display, protocol.lower()),
                name: display,
                key: PortKey {
                    namespace: namespace.to_owned(),
                    service: name.clone(),
                    port_name,
                    protocol,
                },
                cluster_ip,
                port: number,
                node_port,
                external_ips: external_ips.clone(),
                load_balancer_ips: load_balancer_ips.clone(),
                load_balancer_source_ranges: load_balancer_source_ranges.clone(),
                external_local,
                internal_local,
                affinity_seconds,
            });
        }
    }
    ports.sort_by(|a, b| a.key.cmp(&b.key));
    // Two Services cannot share a namespace and name; two ports of one
    // cannot share a name and protocol. Keep the first if input says otherwise.
    ports.dedup_by(|b, a| a.key == b.key);
    ports
}

/// The IPv4 endpoints of every service port the slices describe. Slices are
/// read in name order; an address found twice is kept once, preferring the
/// local copy, as kube-proxy does.
pub(crate) fn endpoints(slices: &[Arc<EndpointSlice>], node_name: &str) -> EndpointMap {
    let mut sorted: Vec<&EndpointSlice> = slices
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| s.address_type == "IPv4")
        .collect();
    sorted.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let mut map = EndpointMap::new();
    for slice in sorted {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
        for port in slice.ports.iter().flatten() {
            let (Some(number), Some(protocol)) = (
                port.port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0),
                Protocol::from_api(port.protocol.as_deref()),
            ) else {
                continue;
            };
            let key = PortKey {
                namespace: namespace.to_owned(),
                service: service.clone(),
                port_name: port.name.clone().unwrap_or_default(),
                protocol,
            };
            let entry = map.entry(key).or_default();
            for endpoint in &slice.endpoints {
                let Some(ip) = endpoint.addresses.first().and_then(|a| ipv4(a)) else {
                    continue;
                };
                let conditions = endpoint.conditions.as_ref();
                let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
                let local = endpoint.node_name.as_deref() == Some(node_name);
                let found = Endpoint {
                    ip,
                    port: number,
                    ready,
                    serving,
                    terminating,
                    local,
                };
                match entry.get(&(ip, number)) {
                    Some(_) if !local => {}
                    _ => {
                        entry.insert((ip, number), found);
                    }
                }
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_mask_and_contain() {
        let cidr: Ipv4Cidr = "10.244.3.7/16".parse().unwrap();
        assert_eq!(cidr.to_string(), "10.244.0.0/16");
        assert!(cidr.contains(Ipv4Addr::new(10, 244, 200, 1)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 245, 0, 1)));
        assert_eq!(
            "1.2.3.4".parse::<Ipv4Cidr>().unwrap().to_string(),
            "1.2.3.4/32"
        );
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().prefix_len(), 0);
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("fd00::/8".parse::<Ipv4Cidr>().is_err());
    }
}
