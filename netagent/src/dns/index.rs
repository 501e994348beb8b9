//! The record index: every name the cluster DNS answers for, built from
//! Services and EndpointSlices, with no I/O.
//!
//! ```text
//!  Services ──┐                         HashMap<name, [RData]>           lookup(name, type)
//!             ├─► Index::build ──► web.ns.svc.cluster.local → A 10.43.0.7  ──► Answer { rcode,
//!  Slices  ───┘                    7.0.43.10.in-addr.arpa   → PTR web…         answers, SOA,
//!                                  ns.svc.cluster.local     → (empty: exists)  additionals }
//! ```
//!
//! The records follow the Kubernetes DNS specification (schema 1.1.0):
//!
//! | name | records |
//! |---|---|
//! | `dns-version.<zone>` | TXT `"1.1.0"` |
//! | `<svc>.<ns>.svc.<zone>` | A/AAAA of the ClusterIPs; of every ready endpoint when headless; CNAME when ExternalName |
//! | `<host>.<svc>.<ns>.svc.<zone>` | A/AAAA of a headless Service's endpoint; `<host>` is its `hostname` or its address with dashes (`10-42-1-5`) |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<zone>` | SRV for each named port, to the Service name (ClusterIP) or to each endpoint's name (headless) |
//! | `<svc>.<ns>.svc.<zone>` (SRV) | SRV for every port, named or not (CoreDNS's extension) |
//! | `<d>.<c>.<b>.<a>.in-addr.arpa`, nibbles `.ip6.arpa` | PTR of ClusterIPs and headless endpoints |
//! | `<a>-<b>-<c>-<d>.<ns>.pod.<zone>` | A of that address, for any address (CoreDNS's `pods insecure`; optional) |
//!
//! A name under the zones with no record at all, and no name below it, is
//! `NXDOMAIN`; a name that exists without a record of the asked type (or
//! that only has names below it, like `<ns>.svc.<zone>`) is `NOERROR` with
//! no answer. Both carry the zone's SOA so resolvers cache the negative
//! answer for the SOA's minimum. Names compare case-insensitively, with or
//! without the trailing dot.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The version of the Kubernetes DNS schema these records follow.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The annotation older clusters used for `publishNotReadyAddresses`; the
/// specification still names it.
const TOLERATE_UNREADY: &str = "service.alpha.kubernetes.io/tolerate-unready-endpoints";

/// How many CNAMEs inside the index one answer follows.
const MAX_CNAME_CHAIN: usize = 8;

const REVERSE_V4: &str = "in-addr.arpa";
const REVERSE_V6: &str = "ip6.arpa";

/// Whether `<a>-<b>-<c>-<d>.<ns>.pod.<zone>` names are answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodRecords {
    /// No pod names: `*.pod.<zone>` is `NXDOMAIN`.
    Disabled,
    /// Any well-formed dashed address in any namespace resolves to itself,
    /// as kube-dns did and CoreDNS's `pods insecure` (the default in
    /// Kubernetes' own Corefile) does. No Pod is looked up.
    #[default]
    Insecure,
}

/// What an index is built with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    /// The cluster domain, like `cluster.local` (any case, trailing dot or not).
    pub cluster_domain: String,
    /// The TTL of every answer and the SOA's minimum (negative caching).
    pub ttl: u32,
    pub pod_records: PodRecords,
    /// The SOA serial: it should grow when the records change.
    pub serial: u32,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            ttl: 5,
            pod_records: PodRecords::Insecure,
            serial: 1,
        }
    }
}

/// Why an index cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("cluster domain {domain:?} is not a domain name")]
    ClusterDomain {
        domain: String,
        #[source]
        source: hickory_server::proto::ProtoError,
    },
    #[error(
        "cluster domain {domain:?} may not be the root, nor lie under in-addr.arpa or ip6.arpa"
    )]
    ReservedDomain { domain: String },
}

/// Which of the zones the index is authoritative for a name falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Zone {
    /// The cluster domain.
    Cluster,
    /// `in-addr.arpa`.
    ReverseV4,
    /// `ip6.arpa`.
    ReverseV6,
}

/// What the index says about one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub zone: Zone,
    /// `NoError` (with answers, or none: NODATA) or `NXDomain`.
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// The zone's SOA on a negative answer.
    pub authorities: Vec<Record>,
    /// The addresses of SRV targets.
    pub additionals: Vec<Record>,
    /// The last CNAME target when it lies outside the index's zones and
    /// the question was not for the CNAME itself: the caller may resolve
    /// it further (an ExternalName Service).
    pub external_target: Option<Name>,
}

impl Answer {
    /// No answer records, whatever the rcode.
    pub fn is_negative(&self) -> bool {
        self.answers.is_empty()
    }
}

/// The records of the cluster DNS. Immutable: a change builds a new one.
#[derive(Clone, Debug)]
pub struct Index {
    /// The cluster domain, lowercase, without the trailing dot.
    zone: String,
    /// Owner names of the SOAs.
    zone_name: Name,
    reverse_v4_name: Name,
    reverse_v6_name: Name,
    soa: SOA,
    ttl: u32,
    pod_records: PodRecords,
    /// Every name that exists, lowercase and without the trailing dot;
    /// an empty list marks a name that only has names below it.
    nodes: HashMap<String, Vec<RData>>,
}

impl Index {
    /// The records for `services` and their `slices`, under `config`.
    ///
    /// Objects that cannot be named (a Service without a name, an
    /// ExternalName that is not a domain name, an address that does not
    /// parse) are left out; they never fail the whole index.
    ///
    /// # Errors
    ///
    /// [`IndexError`] when the cluster domain is not a usable domain name.
    pub fn build<'a>(
        config: &IndexConfig,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Result<Self, IndexError> {
        let zone = normalize(&config.cluster_domain);
        if zone.is_empty() || in_zone(&zone, REVERSE_V4) || in_zone(&zone, REVERSE_V6) {
            return Err(IndexError::ReservedDomain {
                domain: config.cluster_domain.clone(),
            });
        }
        let zone_name = fqdn(&zone).map_err(|source| IndexError::ClusterDomain {
            domain: config.cluster_domain.clone(),
            source,
        })?;
        let soa = SOA::new(
            fqdn(&format!("ns.dns.{zone}")).map_err(|source| IndexError::ClusterDomain {
                domain: config.cluster_domain.clone(),
                source,
            })?,
            fqdn(&format!("hostmaster.{zone}")).map_err(|source| IndexError::ClusterDomain {
                domain: config.cluster_domain.clone(),
                source,
            })?,
            config.serial,
            7200,
            1800,
            86400,
            config.ttl,
        );
        let mut builder = Builder {
            zone: zone.clone(),
            nodes: HashMap::new(),
            seen: HashSet::new(),
        };
        builder.add(
            &format!("dns-version.{zone}"),
            RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()])),
        );

        let mut slices_of: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let labels = slice.metadata.labels.as_ref();
            let (Some(namespace), Some(service)) = (
                slice.metadata.namespace.as_deref(),
                labels.and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            slices_of
                .entry((namespace, service.as_str()))
                .or_default()
                .push(slice);
        }
        for service in services {
            let (Some(namespace), Some(name)) = (
                service.metadata.namespace.as_deref(),
                service.metadata.name.as_deref(),
            ) else {
                continue;
            };
            let slices = slices_of
                .get(&(namespace, name))
                .map(Vec::as_slice)
                .unwrap_or_default();
            builder.service(service, namespace, name, slices);
        }

        let mut nodes = builder.finish();
        // The zones' apexes always exist (they have the SOAs).
        for apex in [zone.as_str(), REVERSE_V4, REVERSE_V6] {
            nodes.entry(apex.to_owned()).or_default();
        }
        Ok(Self {
            zone,
            zone_name,
            reverse_v4_name: fqdn(REVERSE_V4).unwrap_or_else(|_| Name::root()),
            reverse_v6_name: fqdn(REVERSE_V6).unwrap_or_else(|_| Name::root()),
            soa,
            ttl: config.ttl,
            pod_records: config.pod_records,
            nodes,
        })
    }

    /// The cluster domain, lowercase, without the trailing dot.
    pub fn cluster_domain(&self) -> &str {
        &self.zone
    }

    /// How many names exist (records or names below them).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: the apex and `dns-version` always exist.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The zone `name` falls in, if the index is authoritative for it.
    pub fn zone_of(&self, name: &Name) -> Option<Zone> {
        zone_of(&self.zone, &normalize(&name.to_ascii()))
    }

    /// The answer to `name`/`qtype`, or `None` when the name lies outside
    /// the cluster domain and the reverse zones.
    pub fn lookup(&self, name: &Name, qtype: RecordType) -> Option<Answer> {
        let key = normalize(&name.to_ascii());
        let zone = zone_of(&self.zone, &key)?;
        let mut owner = name.clone();
        owner.set_fqdn(true);
        let mut answer = Answer {
            zone,
            rcode: ResponseCode::NoError,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            external_target: None,
        };

        let mut key = key;
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(rdatas) = self.records(&key) else {
                answer.rcode = ResponseCode::NXDomain;
                break;
            };
            let cname = rdatas.iter().find_map(|r| match r {
                RData::CNAME(target) => Some(target.0.clone()),
                _ => None,
            });
            match cname {
                Some(target) if !matches!(qtype, RecordType::CNAME | RecordType::ANY) => {
                    answer
                        .answers
                        .push(self.record(&owner, RData::CNAME(CNAME(target.clone()))));
                    let target_key = normalize(&target.to_ascii());
                    if zone_of(&self.zone, &target_key).is_none() {
                        answer.external_target = Some(target);
                        return Some(answer);
                    }
                    owner = target;
                    key = target_key;
                }
                _ => {
                    answer.answers.extend(
                        rdatas
                            .iter()
                            .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                            .map(|r| self.record(&owner, r.clone())),
                    );
                    if key == self.apex(zone) && matches!(qtype, RecordType::SOA | RecordType::ANY)
                    {
                        answer.answers.push(self.soa_record(zone));
                    }
                    break;
                }
            }
        }

        // NODATA, NXDOMAIN, or a CNAME to a name that does not exist.
        if answer.answers.is_empty() || answer.rcode == ResponseCode::NXDomain {
            answer.authorities.push(self.soa_record(zone));
        }
        answer.additionals = self.additionals(&answer.answers);
        Some(answer)
    }

    /// The records at `key` (possibly none), or `None` if the name does
    /// not exist.
    fn records(&self, key: &str) -> Option<std::borrow::Cow<'_, [RData]>> {
        if let Some(rdatas) = self.nodes.get(key) {
            return Some(std::borrow::Cow::Borrowed(rdatas));
        }
        if self.pod_records == PodRecords::Insecure {
            return self.pod_record(key).map(std::borrow::Cow::Owned);
        }
        None
    }

    /// `<a>-<b>-<c>-<d>.<ns>.pod.<zone>` → its address; `pod.<zone>` and
    /// `<ns>.pod.<zone>` exist with no records.
    fn pod_record(&self, key: &str) -> Option<Vec<RData>> {
        let relative = key.strip_suffix(&self.zone)?.strip_suffix('.')?;
        let mut labels = relative.rsplit('.');
        if labels.next() != Some("pod") {
            return None;
        }
        let (namespace, host) = (labels.next(), labels.next());
        if labels.next().is_some() {
            return None;
        }
        match (namespace, host) {
            (None, _) | (Some(_), None) => Some(Vec::new()),
            (Some(_), Some(host)) => match undash(host)? {
                IpAddr::V4(ip) => Some(vec![RData::A(A(ip))]),
                IpAddr::V6(ip) => Some(vec![RData::AAAA(AAAA(ip))]),
            },
        }
    }

    /// The A/AAAA records of the SRV targets among `answers` that the
    /// index holds.
    fn additionals(&self, answers: &[Record]) -> Vec<Record> {
        let mut additionals = Vec::new();
        let mut done = HashSet::new();
        for record in answers {
            let RData::SRV(srv) = &record.data else {
                continue;
            };
            let key = normalize(&srv.target.to_ascii());
            if !done.insert(key.clone()) {
                continue;
            }
            let Some(rdatas) = self.nodes.get(&key) else {
                continue;
            };
            additionals.extend(
                rdatas
                    .iter()
                    .filter(|r| matches!(r, RData::A(_) | RData::AAAA(_)))
                    .map(|r| self.record(&srv.target, r.clone())),
            );
        }
        additionals
    }

    fn record(&self, owner: &Name, rdata: RData) -> Record {
        Record::from_rdata(owner.clone(), self.ttl, rdata)
    }

    /// The apex of `zone`, normalized.
    fn apex(&self, zone: Zone) -> &str {
        match zone {
            Zone::Cluster => &self.zone,
            Zone::ReverseV4 => REVERSE_V4,
            Zone::ReverseV6 => REVERSE_V6,
        }
    }

    /// The SOA of `zone`, with the TTL negative answers are cached for.
    pub fn soa_record(&self, zone: Zone) -> Record {
        let owner = match zone {
            Zone::Cluster => &self.zone_name,
            Zone::ReverseV4 => &self.reverse_v4_name,
            Zone::ReverseV6 => &self.reverse_v6_name,
        };
        Record::from_rdata(
            owner.clone(),
            self.ttl.min(self.soa.minimum),
            RData::SOA(self.soa.clone()),
        )
    }
}

/// Collects records by name while the index is built.
struct Builder {
    zone: String,
    nodes: HashMap<String, Vec<RData>>,
    /// (name, record) pairs already added: Services may share an address,
    /// EndpointSlices may repeat an endpoint while they are rebalanced.
    seen: HashSet<(String, RData)>,
}

impl Builder {
    fn add(&mut self, key: &str, rdata: RData) {
        let key = normalize(key);
        if !self.seen.insert((key.clone(), rdata.clone())) {
            return;
        }
        self.nodes.entry(key).or_default().push(rdata);
    }

    fn service(
        &mut self,
        service: &Service,
        namespace: &str,
        name: &str,
        slices: &[&EndpointSlice],
    ) {
        let base = format!("{name}.{namespace}.svc.{}", self.zone);
        let Ok(base_name) = fqdn(&base) else {
            tracing::debug!(%namespace, %name, "service name is not a DNS name; no records");
            return;
        };
        let spec = service.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            let external = spec.external_name.as_deref().unwrap_or_default();
            match fqdn(&normalize(external)) {
                Ok(target) if !external.is_empty() => {
                    self.add(&base, RData::CNAME(CNAME(target)));
                }
                _ => {
                    tracing::debug!(%namespace, %name, %external, "externalName is not a domain name; no records")
                }
            }
            return;
        }

        let mut cluster_ips: Vec<&str> = spec
            .cluster_ips
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if cluster_ips.is_empty()
            && let Some(ip) = spec.cluster_ip.as_deref()
        {
            cluster_ips.push(ip);
        }
        let headless = cluster_ips.first().is_some_and(|ip| *ip == "None");
        if !headless {
            let ips: Vec<IpAddr> = cluster_ips
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect();
            if ips.is_empty() {
                // Not allocated yet: nothing to answer.
                return;
            }
            for ip in &ips {
                self.add(&base, address(*ip));
                self.add(&reverse_key(*ip), RData::PTR(PTR(base_name.clone())));
            }
            let ports = spec.ports.iter().flatten().filter_map(|p| {
                Some((
                    p.name.as_deref(),
                    protocol(p.protocol.as_deref()),
                    u16::try_from(p.port).ok()?,
                ))
            });
            for (port_name, proto, port) in ports {
                self.srv(&base, port_name, proto, port, &base_name);
            }
            return;
        }

        let annotated = service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TOLERATE_UNREADY))
            .is_some_and(|v| v == "true");
        let publish_not_ready = spec.publish_not_ready_addresses == Some(true) || annotated;
        let mut addresses = HashSet::new();
        for slice in slices {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let ports: Vec<(Option<&str>, &str, u16)> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some((
                        p.name.as_deref().filter(|n| !n.is_empty()),
                        protocol(p.protocol.as_deref()),
                        u16::try_from(p.port?).ok()?,
                    ))
                })
                .collect();
            for endpoint in &slice.endpoints {
                // A nil `ready` means ready (discovery/v1).
                let ready = endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                if !ready && !publish_not_ready {
                    continue;
                }
                let hostname = endpoint
                    .hostname
                    .as_deref()
                    .filter(|h| is_label(h))
                    .map(str::to_ascii_lowercase);
                for ip in endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                {
                    if !addresses.insert((ip, hostname.clone())) {
                        continue;
                    }
                    let host = hostname.clone().unwrap_or_else(|| dashed(ip));
                    let host_key = format!("{host}.{base}");
                    let Ok(host_name) = fqdn(&host_key) else {
                        continue;
                    };
                    self.add(&base, address(ip));
                    self.add(&host_key, address(ip));
                    self.add(&reverse_key(ip), RData::PTR(PTR(host_name.clone())));
                    for (port_name, proto, port) in &ports {
                        self.srv(&base, *port_name, proto, *port, &host_name);
                    }
                }
            }
        }
    }

    /// `_<port>._<proto>.<base>` (named ports) and `<base>` (every port)
    /// SRV records to `target`.
    fn srv(&mut self, base: &str, port_name: Option<&str>, proto: &str, port: u16, target: &Name) {
        // Weights are spread over the targets once all are known.
        let rdata = RData::SRV(SRV::new(0, 100, port, target.clone()));
        if let Some(port_name) = port_name.filter(|n| !n.is_empty()) {
            self.add(&format!("_{port_name}._{proto}.{base}"), rdata.clone());
        }
        self.add(base, rdata);
    }

    /// The names, with every name between a record's owner and its zone
    /// (an empty non-terminal) present, and SRV weights spread evenly.
    fn finish(self) -> HashMap<String, Vec<RData>> {
        let mut nodes = self.nodes;
        let owners: Vec<String> = nodes.keys().cloned().collect();
        for owner in owners {
            let Some(zone) = zone_of(&self.zone, &owner) else {
                continue;
            };
            let apex = match zone {
                Zone::Cluster => self.zone.as_str(),
                Zone::ReverseV4 => REVERSE_V4,
                Zone::ReverseV6 => REVERSE_V6,
            };
            let mut name = owner.as_str();
            while let Some((_, parent)) = name.split_once('.') {
                if parent.len() < apex.len() {
                    break;
                }
                nodes.entry(parent.to_owned()).or_default();
                name = parent;
            }
        }
        for rdatas in nodes.values_mut() {
            let count = rdatas.iter().filter(|r| matches!(r, RData::SRV(_))).count();
            if count > 1 {
                let weight = u16::try_from((100 / count).max(1)).unwrap_or(1);
                for rdata in rdatas.iter_mut() {
                    if let RData::SRV(srv) = rdata {
                        srv.weight = weight;
                    }
                }
            }
        }
        nodes
    }
}

/// The zone `name` falls in when the cluster domain is `cluster_domain`,
/// or `None` if the cluster DNS is not authoritative for it.
pub fn zone_for(cluster_domain: &str, name: &Name) -> Option<Zone> {
    zone_of(&normalize(cluster_domain), &normalize(&name.to_ascii()))
}

/// The zone `key` (normalized) falls in.
fn zone_of(cluster_zone: &str, key: &str) -> Option<Zone> {
    if in_zone(key, cluster_zone) {
        Some(Zone::Cluster)
    } else if in_zone(key, REVERSE_V4) {
        Some(Zone::ReverseV4)
    } else if in_zone(key, REVERSE_V6) {
        Some(Zone::ReverseV6)
    } else {
        None
    }
}

/// Whether `key` is `zone` or a name below it (both normalized).
fn in_zone(key: &str, zone: &str) -> bool {
    key == zone
        || key
            .strip_suffix(zone)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// Lowercase, without the trailing dot: how the index names things.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// An absolute name from a normalized one.
fn fqdn(name: &str) -> Result<Name, hickory_server::proto::ProtoError> {
    Name::from_ascii(format!("{name}."))
}

/// Whether `text` is a DNS label (RFC 1123) as Kubernetes validates one.
fn is_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// `TCP` → `tcp`, the SRV protocol label (`_tcp`).
fn protocol(protocol: Option<&str>) -> &'static str {
    match protocol {
        Some(p) if p.eq_ignore_ascii_case("udp") => "udp",
        Some(p) if p.eq_ignore_ascii_case("sctp") => "sctp",
        _ => "tcp",
    }
}

fn address(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(ip) => RData::A(A(ip)),
        IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
    }
}

/// `10.42.1.5` → `10-42-1-5`; `fd00::1` → `fd00--1` (CoreDNS's form).
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The address a dashed label names, if any.
fn undash(label: &str) -> Option<IpAddr> {
    if let Ok(ip) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(ip));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// `10.43.0.7` → `7.0.43.10.in-addr.arpa`; IPv6 → its 32 nibbles,
/// reversed, under `ip6.arpa`.
pub fn reverse_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, c, d] = ip.octets();
            format!("{d}.{c}.{b}.{a}.{REVERSE_V4}")
        }
        IpAddr::V6(ip) => {
            let mut key = String::with_capacity(72);
            for byte in ip.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    key.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    key.push('.');
                }
            }
            key.push_str(REVERSE_V6);
            key
        }
    }
}
