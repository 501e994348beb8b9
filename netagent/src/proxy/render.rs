//! The pure half of the proxy: Services and EndpointSlices in, one
//! `iptables-restore` payload out.
//!
//! ```text
//!  PREROUTING/OUTPUT ─► KEELSON-SERVICES ─┬─ -d VIP:port ─────────────► SVC (or SVL: internalTrafficPolicy Local)
//!                                        ├─ -d LB/external IP:port ─► [FW ─►] EXT
//!                                        └─ dst-type LOCAL (last) ───► KEELSON-NODEPORTS ─ --dport NP ─► EXT
//!  EXT ─► masquerade (Cluster) or short-circuit pod/host traffic (Local) ─► SVC | SVL
//!  SVC/SVL ─ statistic 1/n, 1/(n-1), … ─► SEP ─► DNAT ip:port   (hairpin: -s ip ─► KEELSON-MARK-MASQ)
//!  POSTROUTING ─► KEELSON-POSTROUTING ─ marked 0x4000 ─► MASQUERADE
//!  filter: KEELSON-SERVICES / KEELSON-EXTERNAL-SERVICES reject what has no endpoints
//! ```
//!
//! The output is deterministic: chains are declared and their rules
//! written in name order, services in namespace/name/port order, endpoints
//! in address order. Each rule is written the way `iptables-save` prints it
//! back (`-d 10.0.0.1/32 -p tcp -m comment … -m tcp --dport 80`, the
//! probability rounded to the kernel's 2⁻³¹ step and printed with 11
//! digits), so what is in the kernel can be compared with what was rendered.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::model::{self, Endpoint, Ipv4Cidr, Protocol, ServicePort};
use super::names::{self, MASQ_MARK};

#[cfg(test)]
mod tests;

/// Above this many endpoints in all, per-endpoint comments are left out
/// (they can make up 40 % of the payload), as kube-proxy does.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// What the proxy knows about the node it programs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// The node's name: endpoints whose `nodeName` is this are local.
    pub name: String,
    /// The node's IPv4 addresses (a `loadBalancerSourceRanges` entry that
    /// covers one of them also admits the node's own traffic to the LB IP).
    pub ips: Vec<Ipv4Addr>,
    /// The pod range. Traffic to a cluster IP from outside it is
    /// masqueraded; without it, none is.
    pub cluster_cidr: Option<Ipv4Cidr>,
    /// Service IPs the node agent serves itself on every node (cluster DNS
    /// at kube-dns's cluster IP): no rules at all for Services with these
    /// cluster IPs.
    pub node_local_service_ips: BTreeSet<Ipv4Addr>,
    /// `MASQUERADE --random-fully` (iptables ≥ 1.6.2).
    pub random_fully: bool,
}

/// Everything a render depends on.
#[derive(Clone, Debug, Default)]
pub struct ProxyInput {
    pub node: NodeContext,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
}

/// The proxy's chains of one table and their rules, each rule as its
/// `-A CHAIN …` line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    chains: BTreeMap<String, Vec<String>>,
}

impl Table {
    /// The chains, in name order.
    pub fn chains(&self) -> impl Iterator<Item = &str> {
        self.chains.keys().map(String::as_str)
    }

    pub fn has_chain(&self, chain: &str) -> bool {
        self.chains.contains_key(chain)
    }

    /// The rules of `chain`, in order.
    pub fn rules_of(&self, chain: &str) -> Option<&[String]> {
        self.chains.get(chain).map(Vec::as_slice)
    }

    /// How many rules in all.
    pub fn rules(&self) -> usize {
        self.chains.values().map(Vec::len).sum()
    }

    fn declare(&mut self, chain: &str) {
        if !self.chains.contains_key(chain) {
            self.chains.insert(chain.to_owned(), Vec::new());
        }
    }

    fn push(&mut self, chain: &str, rule: &Rule<'_>) {
        let line = rule.line(chain);
        match self.chains.get_mut(chain) {
            Some(rules) => rules.push(line),
            None => {
                self.chains.insert(chain.to_owned(), vec![line]);
            }
        }
    }

    fn write(&self, name: &str, out: &mut String) {
        out.push('*');
        out.push_str(name);
        out.push('\n');
        for chain in self.chains.keys() {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for rules in self.chains.values() {
            for rule in rules {
                out.push_str(rule);
                out.push('\n');
            }
        }
        out.push_str("COMMIT\n");
    }
}

/// Counts from one render.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenderStats {
    /// Service ports programmed.
    pub service_ports: usize,
    /// Endpoints of those ports, ready or not.
    pub endpoints: usize,
    /// Ports with `internalTrafficPolicy: Local` and no endpoint here.
    pub no_local_endpoints_internal: usize,
    /// Ports with `externalTrafficPolicy: Local` and no endpoint here.
    pub no_local_endpoints_external: usize,
    /// Per-endpoint comments were left out (over [`LARGE_CLUSTER_ENDPOINTS`]).
    pub large_cluster_mode: bool,
}

/// A rendered ruleset: the `iptables-restore` payload and its parts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    text: String,
    nat: Table,
    filter: Table,
    stats: RenderStats,
}

impl Rendered {
    /// The payload: `*filter … COMMIT`, `*nat … COMMIT`, every chain of the
    /// proxy declared (`:CHAIN - [0:0]`, which flushes it under
    /// `--noflush`) and then filled.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn nat(&self) -> &Table {
        &self.nat
    }

    pub fn filter(&self) -> &Table {
        &self.filter
    }

    /// Rules in both tables.
    pub fn rules(&self) -> usize {
        self.nat.rules() + self.filter.rules()
    }

    pub fn stats(&self) -> &RenderStats {
        &self.stats
    }
}

/// An address match: `[!] -s|-d a.b.c.d/n`.
#[derive(Clone, Copy)]
struct Addr {
    negate: bool,
    cidr: Ipv4Cidr,
}

impl Addr {
    fn is(ip: Ipv4Addr) -> Option<Self> {
        Some(Self {
            negate: false,
            cidr: Ipv4Cidr::host(ip),
        })
    }

    fn within(cidr: Ipv4Cidr) -> Option<Self> {
        Some(Self {
            negate: false,
            cidr,
        })
    }

    fn not_within(cidr: Ipv4Cidr) -> Option<Self> {
        Some(Self { negate: true, cidr })
    }
}

/// One rule, written in `iptables-save`'s order: source, destination,
/// protocol, then the matches as given, then the target.
#[derive(Default)]
struct Rule<'a> {
    src: Option<Addr>,
    dst: Option<Addr>,
    proto: Option<Protocol>,
    comment: Option<&'a str>,
    matches: Vec<String>,
    target: Option<String>,
}

impl<'a> Rule<'a> {
    fn new() -> Self {
        Self::default()
    }

    fn src(mut self, addr: Option<Addr>) -> Self {
        self.src = addr;
        self
    }

    fn dst(mut self, addr: Option<Addr>) -> Self {
        self.dst = addr;
        self
    }

    fn proto(mut self, proto: Protocol) -> Self {
        self.proto = Some(proto);
        self
    }

    fn comment(mut self, comment: Option<&'a str>) -> Self {
        self.comment = comment;
        self
    }

    fn m(mut self, text: String) -> Self {
        self.matches.push(text);
        self
    }

    /// `-m tcp --dport N` (the protocol must be set).
    fn dport(self, proto: Protocol, port: u16) -> Self {
        self.proto(proto)
            .m(format!("-m {} --dport {port}", proto.lower()))
    }

    fn jump(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    fn line(&self, chain: &str) -> String {
        let mut line = String::with_capacity(128);
        line.push_str("-A ");
        line.push_str(chain);
        for (flag, addr) in [("-s", self.src), ("-d", self.dst)] {
            if let Some(addr) = addr {
                let _ = write!(
                    line,
                    " {}{flag} {}",
                    if addr.negate { "! " } else { "" },
                    addr.cidr
                );
            }
        }
        if let Some(proto) = self.proto {
            let _ = write!(line, " -p {}", proto.lower());
        }
        if let Some(comment) = self.comment {
            let _ = write!(line, " -m comment --comment \"{comment}\"");
        }
        for m in &self.matches {
            line.push(' ');
            line.push_str(m);
        }
        if let Some(target) = &self.target {
            line.push_str(" -j ");
            line.push_str(target);
        }
        line
    }
}

const REJECT: &str = "REJECT --reject-with icmp-port-unreachable";

/// `1/n` as the statistic match stores it (a 31-bit fraction, rounded)
/// and `iptables-save` prints it (11 decimals): `1/3` is `0.33333333349`.
pub fn probability(n: usize) -> String {
    const SCALE: u128 = 1 << 31;
    const DIGITS: u128 = 100_000_000_000; // 10^11
    let n = n.max(1) as u128;
    // round(2^31 / n), as libxt_statistic's lround(0x80000000 * p).
    let fraction = (2 * SCALE + n) / (2 * n);
    // fraction / 2^31 to 11 decimals, ties to even (printf's rounding).
    let scaled = fraction * DIGITS;
    let (mut digits, rest) = (scaled / SCALE, scaled % SCALE);
    if rest * 2 > SCALE || (rest * 2 == SCALE && digits % 2 == 1) {
        digits += 1;
    }
    format!("{}.{:011}", digits / DIGITS, digits % DIGITS)
}

/// Endpoints sorted into what each traffic policy uses, as kube-proxy's
/// `CategorizeEndpoints` (without topology hints).
struct Categorized<'a> {
    cluster: Vec<&'a Endpoint>,
    local: Vec<&'a Endpoint>,
    /// Every endpoint some chain of this port sends to.
    reachable: Vec<&'a Endpoint>,
    /// Any usable endpoint anywhere in the cluster.
    any: bool,
}

fn categorize<'a>(port: &ServicePort, endpoints: &[&'a Endpoint]) -> Categorized<'a> {
    let uses_cluster = !port.internal_local || port.externally_accessible();
    let uses_local = port.internal_local || port.external_local;
    let serving_terminating = |e: &&&Endpoint| e.serving && e.terminating;
    let mut cluster = Vec::new();
    let mut any = false;
    if uses_cluster {
        cluster = endpoints.iter().copied().filter(|e| e.ready).collect();
        if cluster.is_empty() {
            // Nothing ready anywhere: fall back to terminating endpoints
            // that still serve, so connections drain instead of failing.
            cluster = endpoints
                .iter()
                .filter(serving_terminating)
                .copied()
                .collect();
        }
        any = !cluster.is_empty();
    }
    let mut local = Vec::new();
    if uses_local {
        any |= endpoints
            .iter()
            .any(|e| e.ready || (e.serving && e.terminating));
        local = endpoints
            .iter()
            .copied()
            .filter(|e| e.local && e.ready)
            .collect();
        if local.is_empty() {
            local = endpoints
                .iter()
                .filter(|e| e.local)
                .filter(serving_terminating)
                .copied()
                .collect();
        }
    }
    let reachable = match (uses_cluster, uses_local) {
        (true, false) => cluster.clone(),
        (false, _) => local.clone(),
        (true, true) => {
            let mut all: BTreeMap<(Ipv4Addr, u16), &Endpoint> = BTreeMap::new();
            for e in cluster.iter().chain(local.iter()) {
                all.insert((e.ip, e.port), e);
            }
            all.into_values().collect()
        }
    };
    Categorized {
        cluster,
        local,
        reachable,
        any,
    }
}

/// Renders the whole ruleset for `input`. Pure: the same input (in any
/// order) gives byte-identical output.
pub fn render(input: &ProxyInput) -> Rendered {
    let node = &input.node;
    let ports = model::service_ports(&input.services, &node.node_local_service_ips);
    let endpoint_map = model::endpoints(&input.endpoint_slices, &node.name);
    let no_endpoints = BTreeMap::new();
    let endpoints_of = |port: &ServicePort| -> Vec<&Endpoint> {
        endpoint_map
            .get(&port.key)
            .unwrap_or(&no_endpoints)
            .values()
            .collect()
    };
    let total_endpoints: usize = ports.iter().map(|p| endpoints_of(p).len()).sum();
    let mut stats = RenderStats {
        service_ports: ports.len(),
        endpoints: total_endpoints,
        large_cluster_mode: total_endpoints > LARGE_CLUSTER_ENDPOINTS,
        ..RenderStats::default()
    };

    let mut nat = Table::default();
    let mut filter = Table::default();
    for chain in [
        names::SERVICES,
        names::EXTERNAL_SERVICES,
        names::FORWARD,
        names::PROXY_FIREWALL,
    ] {
        filter.declare(chain);
    }
    for chain in [
        names::SERVICES,
        names::NODEPORTS,
        names::POSTROUTING,
        names::MARK_MASQ,
    ] {
        nat.declare(chain);
    }

    let mark = format!("{MASQ_MARK:#x}/{MASQ_MARK:#x}");
    nat.push(
        names::POSTROUTING,
        &Rule::new()
            .m(format!("-m mark ! --mark {mark}"))
            .jump("RETURN"),
    );
    // Clear the mark, so a packet that passes through again is not
    // masqueraded twice.
    nat.push(
        names::POSTROUTING,
        &Rule::new().jump(format!("MARK --set-xmark {MASQ_MARK:#x}/0x0")),
    );
    nat.push(
        names::POSTROUTING,
        &Rule::new()
            .comment(Some("keelson service traffic requiring SNAT"))
            .jump(if node.random_fully {
                "MASQUERADE --random-fully"
            } else {
                "MASQUERADE"
            }),
    );
    nat.push(
        names::MARK_MASQ,
        &Rule::new().jump(format!("MARK --set-xmark {mark}")),
    );

    for port in &ports {
        let endpoints = endpoints_of(port);
        render_port(
            &mut Tables {
                nat: &mut nat,
                filter: &mut filter,
            },
            node,
            port,
            &endpoints,
            &mut stats,
        );
    }

    // Traffic to any local address goes on to the node ports. This must
    // stay the last rule of KEELSON-SERVICES.
    nat.push(
        names::SERVICES,
        &Rule::new()
            .dst(Addr::not_within(Ipv4Cidr::LOOPBACK))
            .comment(Some(
                "keelson service nodeports; NOTE: this must be the last rule in this chain",
            ))
            .m("-m addrtype --dst-type LOCAL".into())
            .jump(names::NODEPORTS),
    );

    filter.push(
        names::FORWARD,
        &Rule::new()
            .m("-m conntrack --ctstate INVALID".into())
            .jump("DROP"),
    );
    filter.push(
        names::FORWARD,
        &Rule::new()
            .comment(Some("keelson forwarding rules"))
            .m(format!("-m mark --mark {mark}"))
            .jump("ACCEPT"),
    );
    filter.push(
        names::FORWARD,
        &Rule::new()
            .comment(Some("keelson forwarding conntrack rule"))
            .m("-m conntrack --ctstate RELATED,ESTABLISHED".into())
            .jump("ACCEPT"),
    );

    let mut text = String::with_capacity(
        64 * (nat.rules() + filter.rules()) + 48 * (nat.chains.len() + filter.chains.len()),
    );
    filter.write("filter", &mut text);
    nat.write("nat", &mut text);
    Rendered {
        text,
        nat,
        filter,
        stats,
    }
}

struct Tables<'t> {
    nat: &'t mut Table,
    filter: &'t mut Table,
}

/// The rules of one service port (kube-proxy's loop body in `syncProxyRules`).
fn render_port(
    t: &mut Tables<'_>,
    node: &NodeContext,
    port: &ServicePort,
    endpoints: &[&Endpoint],
    stats: &mut RenderStats,
) {
    let c = categorize(port, endpoints);
    let name = port.name.as_str();
    let proto = port.key.protocol;
    let svc_chain = port.chain(names::SVC_PREFIX);
    let svl_chain = port.chain(names::SVL_PREFIX);
    let ext_chain = port.chain(names::EXT_PREFIX);
    let fw_chain = port.chain(names::FW_PREFIX);

    let uses_cluster = !port.internal_local || port.externally_accessible();
    let uses_svc = !c.cluster.is_empty() && uses_cluster;
    let uses_svl = !c.local.is_empty() && (port.internal_local || port.external_local);

    let (internal_chain, has_internal) = if port.internal_local {
        (&svl_chain, c.any && !c.local.is_empty())
    } else {
        (&svc_chain, c.any)
    };
    let (external_policy_chain, has_external) = if port.external_local {
        (&svl_chain, c.any && !c.local.is_empty())
    } else {
        (&svc_chain, c.any)
    };
    let uses_ext = c.any && port.externally_accessible();
    let uses_fw =
        c.any && !port.load_balancer_ips.is_empty() && !port.load_balancer_source_ranges.is_empty();
    let lb_chain = if uses_fw { &fw_chain } else { &ext_chain };

    let no_endpoints = format!("{name} has no endpoints");
    let no_local = format!("{name} has no local endpoints");
    let (internal_filter, external_filter) = if !c.any {
        (
            Some((REJECT, no_endpoints.as_str())),
            Some((REJECT, no_endpoints.as_str())),
        )
    } else {
        if !has_internal {
            stats.no_local_endpoints_internal += 1;
        }
        if !has_external {
            stats.no_local_endpoints_external += 1;
        }
        (
            (!has_internal).then_some(("DROP", no_local.as_str())),
            (!has_external).then_some(("DROP", no_local.as_str())),
        )
    };

    // The cluster IP.
    let cluster_ip_comment = format!("{name} cluster IP");
    let to_cluster_ip = || {
        Rule::new()
            .dst(Addr::is(port.cluster_ip))
            .comment(Some(cluster_ip_comment.as_str()))
            .dport(proto, port.port)
    };
    match internal_filter {
        None => t
            .nat
            .push(names::SERVICES, &to_cluster_ip().jump(internal_chain)),
        Some((target, comment)) => t.filter.push(
            names::SERVICES,
            &Rule::new()
                .dst(Addr::is(port.cluster_ip))
                .comment(Some(comment))
                .dport(proto, port.port)
                .jump(target),
        ),
    }

    // External IPs.
    let external_ip_comment = format!("{name} external IP");
    for ip in &port.external_ips {
        if c.any {
            t.nat.push(
                names::SERVICES,
                &Rule::new()
                    .dst(Addr::is(*ip))
                    .comment(Some(&external_ip_comment))
                    .dport(proto, port.port)
                    .jump(&ext_chain),
            );
        }
        if let Some((target, comment)) = external_filter {
            t.filter.push(
                names::EXTERNAL_SERVICES,
                &Rule::new()
                    .dst(Addr::is(*ip))
                    .comment(Some(comment))
                    .dport(proto, port.port)
                    .jump(target),
            );
        }
    }

    // Load-balancer IPs.
    let lb_comment = format!("{name} loadbalancer IP");
    let not_accepted = format!("{name} traffic not accepted by {fw_chain}");
    for ip in &port.load_balancer_ips {
        if c.any {
            t.nat.push(
                names::SERVICES,
                &Rule::new()
                    .dst(Addr::is(*ip))
                    .comment(Some(&lb_comment))
                    .dport(proto, port.port)
                    .jump(lb_chain),
            );
        }
        if uses_fw {
            t.filter.push(
                names::PROXY_FIREWALL,
                &Rule::new()
                    .dst(Addr::is(*ip))
                    .comment(Some(&not_accepted))
                    .dport(proto, port.port)
                    .jump("DROP"),
            );
        }
    }
    if let Some((target, comment)) = external_filter {
        for ip in &port.load_balancer_ips {
            t.filter.push(
                names::EXTERNAL_SERVICES,
                &Rule::new()
                    .dst(Addr::is(*ip))
                    .comment(Some(comment))
                    .dport(proto, port.port)
                    .jump(target),
            );
        }
    }

    // The node port, on every local address.
    if let Some(node_port) = port.node_port {
        if c.any {
            t.nat.push(
                names::NODEPORTS,
                &Rule::new()
                    .comment(Some(name))
                    .dport(proto, node_port)
                    .jump(&ext_chain),
            );
        }
        if let Some((target, comment)) = external_filter {
            t.filter.push(
                names::EXTERNAL_SERVICES,
                &Rule::new()
                    .proto(proto)
                    .comment(Some(comment))
                    .m("-m addrtype --dst-type LOCAL".into())
                    .m(format!("-m {} --dport {node_port}", proto.lower()))
                    .jump(target),
            );
        }
    }

    // Masquerade traffic to the cluster IP from outside the pod range: it
    // may be routed here from elsewhere and must come back the same way.
    if has_internal && let Some(cidr) = node.cluster_cidr {
        t.nat.push(
            internal_chain,
            &to_cluster_ip()
                .src(Addr::not_within(cidr))
                .jump(names::MARK_MASQ),
        );
    }

    if uses_ext {
        t.nat.declare(&ext_chain);
        if !port.external_local {
            // The endpoint may be on another node: masquerade so replies
            // come back through this one.
            t.nat.push(
                &ext_chain,
                &Rule::new()
                    .comment(Some(&format!(
                        "masquerade traffic for {name} external destinations"
                    )))
                    .jump(names::MARK_MASQ),
            );
        } else {
            // Local policy keeps the client's address. Pods and the node
            // itself are short-circuited to all endpoints, as if they had
            // gone out to the load balancer and back.
            if let Some(cidr) = node.cluster_cidr {
                t.nat.push(
                    &ext_chain,
                    &Rule::new()
                        .src(Addr::within(cidr))
                        .comment(Some(&format!(
                            "pod traffic for {name} external destinations"
                        )))
                        .jump(&svc_chain),
                );
            }
            t.nat.push(
                &ext_chain,
                &Rule::new()
                    .comment(Some(&format!(
                        "masquerade LOCAL traffic for {name} external destinations"
                    )))
                    .m("-m addrtype --src-type LOCAL".into())
                    .jump(names::MARK_MASQ),
            );
            t.nat.push(
                &ext_chain,
                &Rule::new()
                    .comment(Some(&format!(
                        "route LOCAL traffic for {name} external destinations"
                    )))
                    .m("-m addrtype --src-type LOCAL".into())
                    .jump(&svc_chain),
            );
        }
        if has_external {
            t.nat
                .push(&ext_chain, &Rule::new().jump(external_policy_chain));
        }
    }

    if uses_fw {
        t.nat.declare(&fw_chain);
        let mut from_node = false;
        for range in &port.load_balancer_source_ranges {
            t.nat.push(
                &fw_chain,
                &Rule::new()
                    .src(Addr::within(*range))
                    .comment(Some(&lb_comment))
                    .jump(&ext_chain),
            );
            from_node |= node.ips.iter().any(|ip| range.contains(*ip));
        }
        // A VIP-style LB address is often local to the node: the node's
        // own requests to it then come from the LB IP itself.
        if from_node {
            for ip in &port.load_balancer_ips {
                t.nat.push(
                    &fw_chain,
                    &Rule::new()
                        .src(Addr::is(*ip))
                        .comment(Some(&lb_comment))
                        .jump(&ext_chain),
                );
            }
        }
        // What gets here is not DNATed and is dropped by KEELSON-PROXY-FIREWALL.
        t.nat.push(
            &fw_chain,
            &Rule::new().comment(Some(&format!(
                "other traffic to {name} will be dropped by {}",
                names::PROXY_FIREWALL
            ))),
        );
    }

    let comments = !stats.large_cluster_mode;
    // Each endpoint's address and chain name, hashed once.
    let targets: BTreeMap<(Ipv4Addr, u16), (String, String)> = c
        .reachable
        .iter()
        .map(|e| {
            let address = e.address();
            let chain = names::endpoint_chain(name, proto.lower(), &address);
            ((e.ip, e.port), (address, chain))
        })
        .collect();
    if uses_svc {
        t.nat.declare(&svc_chain);
        service_to_endpoints(t.nat, port, &svc_chain, &c.cluster, &targets, comments);
    }
    if uses_svl {
        t.nat.declare(&svl_chain);
        service_to_endpoints(t.nat, port, &svl_chain, &c.local, &targets, comments);
    }

    for endpoint in &c.reachable {
        let Some((address, chain)) = targets.get(&(endpoint.ip, endpoint.port)) else {
            continue;
        };
        let comment = comments.then_some(name);
        // Hairpin: a pod reaching itself through the service must see the
        // reply come from the service, so masquerade it.
        t.nat.push(
            chain,
            &Rule::new()
                .src(Addr::is(endpoint.ip))
                .comment(comment)
                .jump(names::MARK_MASQ),
        );
        let mut dnat = Rule::new().proto(proto).comment(comment);
        if port.affinity_seconds.is_some() {
            dnat = dnat.m(format!(
                "-m recent --set --name {chain} --mask 255.255.255.255 --rsource"
            ));
        }
        t.nat.push(
            chain,
            &dnat.jump(format!("DNAT --to-destination {address}")),
        );
    }
}

/// The SVC/SVL rules: first the affinity checks, then one rule per
/// endpoint, each taking its share of what is left (`1/n`, `1/(n-1)`, …,
/// the last one everything).
fn service_to_endpoints(
    nat: &mut Table,
    port: &ServicePort,
    chain: &str,
    endpoints: &[&Endpoint],
    chains: &BTreeMap<(Ipv4Addr, u16), (String, String)>,
    comments: bool,
) {
    let targets: Vec<(Option<String>, &str)> = endpoints
        .iter()
        .filter_map(|e| chains.get(&(e.ip, e.port)))
        .map(|(address, sep)| {
            let comment = comments.then(|| format!("{} -> {address}", port.name));
            (comment, sep.as_str())
        })
        .collect();
    if let Some(seconds) = port.affinity_seconds {
        for (comment, sep) in &targets {
            nat.push(
                chain,
                &Rule::new()
                    .comment(comment.as_deref())
                    .m(format!(
                        "-m recent --rcheck --seconds {seconds} --reap --name {sep} --mask 255.255.255.255 --rsource"
                    ))
                    .jump(*sep),
            );
        }
    }
    let n = targets.len();
    for (i, (comment, sep)) in targets.iter().enumerate() {
        let mut rule = Rule::new().comment(comment.as_deref());
        if i + 1 < n {
            rule = rule.m(format!(
                "-m statistic --mode random --probability {}",
                probability(n - i)
            ));
        }
        nat.push(chain, &rule.jump(*sep));
    }
}
