//! Table-driven tests of the record index, and end-to-end tests of the
//! server over UDP and TCP on 127.0.0.1 (no API server: the index is built
//! from fixture objects and handed over directly).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{Name, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::*;

// ---------------------------------------------------------------- fixtures

fn service(namespace: &str, name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .unwrap()
}

/// An endpoint: addresses, `ready` (None: unset), hostname.
type Ep<'a> = (&'a [&'a str], Option<bool>, Option<&'a str>);

fn slice(
    namespace: &str,
    service: &str,
    name: &str,
    address_type: &str,
    ports: serde_json::Value,
    endpoints: &[Ep<'_>],
) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(addresses, ready, hostname)| {
            let mut e = json!({"addresses": addresses});
            if let Some(ready) = ready {
                e["conditions"] = json!({"ready": ready});
            }
            if let Some(hostname) = hostname {
                e["hostname"] = json!(hostname);
            }
            e
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": ports,
    }))
    .unwrap()
}

fn fixtures() -> (Vec<Service>, Vec<EndpointSlice>) {
    let services = vec![
        service(
            "default",
            "web",
            json!({"clusterIP": "10.43.0.7", "clusterIPs": ["10.43.0.7"], "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "metrics", "port": 9090, "protocol": "UDP"},
            ]}),
        ),
        service(
            "default",
            "dual",
            json!({"clusterIP": "10.43.0.8", "clusterIPs": ["10.43.0.8", "fd00:43::8"], "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ]}),
        ),
        service(
            "default",
            "plain",
            json!({"clusterIP": "10.43.0.9", "ports": [{"port": 8080}]}),
        ),
        service("default", "unallocated", json!({"ports": [{"port": 8080}]})),
        service(
            "data",
            "db",
            json!({"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"name": "pg", "port": 5432}]}),
        ),
        service(
            "data",
            "pending",
            json!({"clusterIP": "None", "publishNotReadyAddresses": true, "ports": [{"name": "pg", "port": 5432}]}),
        ),
        service(
            "data",
            "empty",
            json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}),
        ),
        service(
            "default",
            "ext",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ),
        service(
            "default",
            "alias",
            json!({"type": "ExternalName", "externalName": "web.default.svc.cluster.local."}),
        ),
    ];
    let pg = json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]);
    let slices = vec![
        slice(
            "data",
            "db",
            "db-abc",
            "IPv4",
            pg.clone(),
            &[
                (&["10.42.1.5"], Some(true), Some("db-0")),
                (&["10.42.1.6"], Some(false), Some("db-1")),
                (&["10.42.2.7"], None, None),
            ],
        ),
        // The same endpoint again while slices are rebalanced.
        slice(
            "data",
            "db",
            "db-def",
            "IPv4",
            pg.clone(),
            &[(&["10.42.1.5"], Some(true), Some("db-0"))],
        ),
        slice(
            "data",
            "db",
            "db-v6",
            "IPv6",
            pg.clone(),
            &[(&["fd00:42::7"], Some(true), None)],
        ),
        slice(
            "data",
            "db",
            "db-fqdn",
            "FQDN",
            pg.clone(),
            &[(&["db.example.com"], Some(true), None)],
        ),
        slice(
            "data",
            "pending",
            "pending-abc",
            "IPv4",
            pg.clone(),
            &[(&["10.42.3.3"], Some(false), Some("p-0"))],
        ),
        slice(
            "data",
            "empty",
            "empty-abc",
            "IPv4",
            pg,
            &[(&["10.42.4.4"], Some(false), Some("e-0"))],
        ),
        // A slice whose Service is gone.
        slice(
            "data",
            "gone",
            "gone-abc",
            "IPv4",
            json!([]),
            &[(&["10.42.5.5"], Some(true), None)],
        ),
    ];
    (services, slices)
}

fn index_with(config: &IndexConfig) -> Index {
    let (services, slices) = fixtures();
    Index::build(config, &services, &slices).unwrap()
}

fn index() -> Index {
    index_with(&IndexConfig::default())
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

/// `type rdata` of each record, sorted, lowercase.
fn render(records: &[Record]) -> Vec<String> {
    let mut lines: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data).to_ascii_lowercase())
        .collect();
    lines.sort();
    lines
}

// ------------------------------------------------------------ index tests

#[test]
fn the_index_answers_every_record_kind_of_the_specification() {
    let index = index();
    let nx = ResponseCode::NXDomain;
    let ok = ResponseCode::NoError;
    let cases: &[(&str, RecordType, ResponseCode, &[&str])] = &[
        // ClusterIP Services.
        (
            "web.default.svc.cluster.local.",
            RecordType::A,
            ok,
            &["web.default.svc.cluster.local. a 10.43.0.7"],
        ),
        ("web.default.svc.cluster.local.", RecordType::AAAA, ok, &[]),
        (
            "dual.default.svc.cluster.local.",
            RecordType::A,
            ok,
            &["dual.default.svc.cluster.local. a 10.43.0.8"],
        ),
        (
            "dual.default.svc.cluster.local.",
            RecordType::AAAA,
            ok,
            &["dual.default.svc.cluster.local. aaaa fd00:43::8"],
        ),
        (
            "unallocated.default.svc.cluster.local.",
            RecordType::A,
            nx,
            &[],
        ),
        (
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
            ok,
            &[
                "_http._tcp.web.default.svc.cluster.local. srv 0 100 80 web.default.svc.cluster.local.",
            ],
        ),
        (
            "_metrics._udp.web.default.svc.cluster.local.",
            RecordType::SRV,
            ok,
            &[
                "_metrics._udp.web.default.svc.cluster.local. srv 0 100 9090 web.default.svc.cluster.local.",
            ],
        ),
        (
            "_http._udp.web.default.svc.cluster.local.",
            RecordType::SRV,
            nx,
            &[],
        ),
        (
            "_udp.web.default.svc.cluster.local.",
            RecordType::SRV,
            ok,
            &[],
        ),
        (
            "web.default.svc.cluster.local.",
            RecordType::SRV,
            ok,
            &[
                "web.default.svc.cluster.local. srv 0 50 80 web.default.svc.cluster.local.",
                "web.default.svc.cluster.local. srv 0 50 9090 web.default.svc.cluster.local.",
            ],
        ),
        // An unnamed port: no `_port._proto` name, but the Service's SRV.
        (
            "plain.default.svc.cluster.local.",
            RecordType::SRV,
            ok,
            &["plain.default.svc.cluster.local. srv 0 100 8080 plain.default.svc.cluster.local."],
        ),
        (
            "_tcp.plain.default.svc.cluster.local.",
            RecordType::SRV,
            nx,
            &[],
        ),
        // PTR of ClusterIPs, IPv4 and IPv6.
        (
            "7.0.43.10.in-addr.arpa.",
            RecordType::PTR,
            ok,
            &["7.0.43.10.in-addr.arpa. ptr web.default.svc.cluster.local."],
        ),
        (
            "8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.4.0.0.0.0.d.f.ip6.arpa.",
            RecordType::PTR,
            ok,
            &[
                "8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.4.0.0.0.0.d.f.ip6.arpa. ptr dual.default.svc.cluster.local.",
            ],
        ),
        // Headless: ready endpoints only (nil `ready` is ready), IPv4 and IPv6.
        (
            "db.data.svc.cluster.local.",
            RecordType::A,
            ok,
            &[
                "db.data.svc.cluster.local. a 10.42.1.5",
                "db.data.svc.cluster.local. a 10.42.2.7",
            ],
        ),
        (
            "db.data.svc.cluster.local.",
            RecordType::AAAA,
            ok,
            &["db.data.svc.cluster.local. aaaa fd00:42::7"],
        ),
        (
            "db-0.db.data.svc.cluster.local.",
            RecordType::A,
            ok,
            &["db-0.db.data.svc.cluster.local. a 10.42.1.5"],
        ),
        ("db-1.db.data.svc.cluster.local.", RecordType::A, nx, &[]),
        (
            "10-42-2-7.db.data.svc.cluster.local.",
            RecordType::A,
            ok,
            &["10-42-2-7.db.data.svc.cluster.local. a 10.42.2.7"],
        ),
        (
            "fd00-42--7.db.data.svc.cluster.local.",
            RecordType::AAAA,
            ok,
            &["fd00-42--7.db.data.svc.cluster.local. aaaa fd00:42::7"],
        ),
        (
            "_pg._tcp.db.data.svc.cluster.local.",
            RecordType::SRV,
            ok,
            &[
                "_pg._tcp.db.data.svc.cluster.local. srv 0 33 5432 10-42-2-7.db.data.svc.cluster.local.",
                "_pg._tcp.db.data.svc.cluster.local. srv 0 33 5432 db-0.db.data.svc.cluster.local.",
                "_pg._tcp.db.data.svc.cluster.local. srv 0 33 5432 fd00-42--7.db.data.svc.cluster.local.",
            ],
        ),
        (
            "5.1.42.10.in-addr.arpa.",
            RecordType::PTR,
            ok,
            &["5.1.42.10.in-addr.arpa. ptr db-0.db.data.svc.cluster.local."],
        ),
        (
            "7.2.42.10.in-addr.arpa.",
            RecordType::PTR,
            ok,
            &["7.2.42.10.in-addr.arpa. ptr 10-42-2-7.db.data.svc.cluster.local."],
        ),
        ("6.1.42.10.in-addr.arpa.", RecordType::PTR, nx, &[]),
        ("5.5.42.10.in-addr.arpa.", RecordType::PTR, nx, &[]),
        // publishNotReadyAddresses; no ready endpoint at all is NXDOMAIN.
        (
            "pending.data.svc.cluster.local.",
            RecordType::A,
            ok,
            &["pending.data.svc.cluster.local. a 10.42.3.3"],
        ),
        (
            "p-0.pending.data.svc.cluster.local.",
            RecordType::A,
            ok,
            &["p-0.pending.data.svc.cluster.local. a 10.42.3.3"],
        ),
        ("empty.data.svc.cluster.local.", RecordType::A, nx, &[]),
        ("e-0.empty.data.svc.cluster.local.", RecordType::A, nx, &[]),
        // ExternalName: a CNAME for every type; followed inside the zone.
        (
            "ext.default.svc.cluster.local.",
            RecordType::A,
            ok,
            &["ext.default.svc.cluster.local. cname example.com."],
        ),
        (
            "ext.default.svc.cluster.local.",
            RecordType::CNAME,
            ok,
            &["ext.default.svc.cluster.local. cname example.com."],
        ),
        (
            "alias.default.svc.cluster.local.",
            RecordType::A,
            ok,
            &[
                "alias.default.svc.cluster.local. cname web.default.svc.cluster.local.",
                "web.default.svc.cluster.local. a 10.43.0.7",
            ],
        ),
        // Schema version, apex, empty non-terminals, names that do not exist.
        (
            "dns-version.cluster.local.",
            RecordType::TXT,
            ok,
            &["dns-version.cluster.local. txt 1.1.0"],
        ),
        ("dns-version.cluster.local.", RecordType::A, ok, &[]),
        ("default.svc.cluster.local.", RecordType::A, ok, &[]),
        ("svc.cluster.local.", RecordType::A, ok, &[]),
        ("cluster.local.", RecordType::A, ok, &[]),
        ("0.43.10.in-addr.arpa.", RecordType::PTR, ok, &[]),
        ("nope.default.svc.cluster.local.", RecordType::A, nx, &[]),
        ("web.nope.svc.cluster.local.", RecordType::A, nx, &[]),
        ("nope.cluster.local.", RecordType::A, nx, &[]),
        // Pods (the deprecated dashed form).
        (
            "10-42-9-9.default.pod.cluster.local.",
            RecordType::A,
            ok,
            &["10-42-9-9.default.pod.cluster.local. a 10.42.9.9"],
        ),
        (
            "fd00-42--9.any.pod.cluster.local.",
            RecordType::AAAA,
            ok,
            &["fd00-42--9.any.pod.cluster.local. aaaa fd00:42::9"],
        ),
        (
            "10-42-9-9.default.pod.cluster.local.",
            RecordType::AAAA,
            ok,
            &[],
        ),
        ("default.pod.cluster.local.", RecordType::A, ok, &[]),
        (
            "not-an-ip.default.pod.cluster.local.",
            RecordType::A,
            nx,
            &[],
        ),
        (
            "x.10-42-9-9.default.pod.cluster.local.",
            RecordType::A,
            nx,
            &[],
        ),
    ];
    for (qname, qtype, rcode, expected) in cases {
        let answer = index
            .lookup(&name(qname), *qtype)
            .unwrap_or_else(|| panic!("{qname} {qtype}: not in the zones"));
        assert_eq!(answer.rcode, *rcode, "{qname} {qtype}: rcode");
        assert_eq!(
            render(&answer.answers),
            *expected,
            "{qname} {qtype}: answers"
        );
        if answer.answers.is_empty() {
            let soa = render(&answer.authorities);
            assert_eq!(
                soa.len(),
                1,
                "{qname} {qtype}: a negative answer carries the SOA"
            );
            assert!(
                soa[0].contains(" soa ns.dns.cluster.local. hostmaster.cluster.local."),
                "{soa:?}"
            );
        } else {
            assert!(
                answer.authorities.is_empty(),
                "{qname} {qtype}: no SOA on a positive answer"
            );
        }
    }
}

#[test]
fn negative_answers_carry_the_zone_soa_with_the_ttl_as_minimum() {
    let index = index();
    let answer = index
        .lookup(&name("nope.default.svc.cluster.local."), RecordType::A)
        .unwrap();
    let [soa] = answer.authorities.as_slice() else {
        panic!("{:?}", answer.authorities)
    };
    assert_eq!(soa.name, name("cluster.local."));
    assert_eq!(soa.ttl, 5);
    let hickory_server::proto::rr::RData::SOA(soa) = &soa.data else {
        panic!("{soa:?}")
    };
    assert_eq!(soa.minimum, 5);
    let reverse = index
        .lookup(&name("1.1.1.10.in-addr.arpa."), RecordType::PTR)
        .unwrap();
    assert_eq!(reverse.rcode, ResponseCode::NXDomain);
    assert_eq!(reverse.zone, Zone::ReverseV4);
    assert_eq!(reverse.authorities[0].name, name("in-addr.arpa."));
    let apex = index
        .lookup(&name("cluster.local."), RecordType::SOA)
        .unwrap();
    assert_eq!(apex.answers.len(), 1);
    assert!(apex.authorities.is_empty());
}

#[test]
fn names_compare_without_case_and_with_or_without_the_trailing_dot() {
    let index = index();
    for qname in [
        "web.default.svc.cluster.local.",
        "web.default.svc.cluster.local",
        "WEB.Default.SVC.Cluster.LOCAL.",
        "Db-0.DB.data.svc.cluster.local",
    ] {
        let answer = index.lookup(&name(qname), RecordType::A).unwrap();
        assert_eq!(answer.rcode, ResponseCode::NoError, "{qname}");
        assert_eq!(answer.answers.len(), 1, "{qname}");
        // The answer's owner is the question's name, as asked.
        assert_eq!(
            answer.answers[0].name.to_ascii().trim_end_matches('.'),
            qname.trim_end_matches('.')
        );
    }
    let answer = index
        .lookup(&name("7.0.43.10.IN-ADDR.ARPA."), RecordType::PTR)
        .unwrap();
    assert_eq!(answer.answers.len(), 1);
}

#[test]
fn srv_answers_carry_the_targets_addresses() {
    let index = index();
    let answer = index
        .lookup(
            &name("_pg._tcp.db.data.svc.cluster.local."),
            RecordType::SRV,
        )
        .unwrap();
    assert_eq!(
        render(&answer.additionals),
        [
            "10-42-2-7.db.data.svc.cluster.local. a 10.42.2.7",
            "db-0.db.data.svc.cluster.local. a 10.42.1.5",
            "fd00-42--7.db.data.svc.cluster.local. aaaa fd00:42::7",
        ]
    );
    let answer = index
        .lookup(
            &name("_http._tcp.web.default.svc.cluster.local."),
            RecordType::SRV,
        )
        .unwrap();
    assert_eq!(
        render(&answer.additionals),
        ["web.default.svc.cluster.local. a 10.43.0.7"]
    );
}

#[test]
fn external_names_leave_the_zone_for_the_caller_to_follow() {
    let index = index();
    let answer = index
        .lookup(&name("ext.default.svc.cluster.local."), RecordType::A)
        .unwrap();
    assert_eq!(answer.external_target, Some(name("example.com.")));
    let answer = index
        .lookup(&name("ext.default.svc.cluster.local."), RecordType::CNAME)
        .unwrap();
    assert_eq!(
        answer.external_target, None,
        "a CNAME question is answered by the CNAME"
    );
    let answer = index
        .lookup(&name("alias.default.svc.cluster.local."), RecordType::A)
        .unwrap();
    assert_eq!(answer.external_target, None, "followed inside the zone");
}

#[test]
fn names_outside_the_zones_are_not_the_index_business() {
    let index = index();
    for qname in ["example.com.", "local.", "xcluster.local.", "arpa.", "."] {
        assert!(
            index.lookup(&name(qname), RecordType::A).is_none(),
            "{qname}"
        );
    }
    assert_eq!(
        index::zone_for("cluster.local", &name("a.b.cluster.local.")),
        Some(Zone::Cluster)
    );
    assert_eq!(
        index::zone_for("Cluster.Local.", &name("cluster.local")),
        Some(Zone::Cluster)
    );
    assert_eq!(
        index::zone_for("cluster.local", &name("x.ip6.arpa.")),
        Some(Zone::ReverseV6)
    );
    assert_eq!(
        index::zone_for("cluster.local", &name("example.com.")),
        None
    );
}

#[test]
fn the_cluster_domain_and_pod_records_are_configurable() {
    let config = IndexConfig {
        cluster_domain: "K8s.Example.".into(),
        ttl: 30,
        pod_records: PodRecords::Disabled,
        serial: 42,
    };
    let index = index_with(&config);
    assert_eq!(index.cluster_domain(), "k8s.example");
    let answer = index
        .lookup(&name("web.default.svc.k8s.example."), RecordType::A)
        .unwrap();
    assert_eq!(
        render(&answer.answers),
        ["web.default.svc.k8s.example. a 10.43.0.7"]
    );
    assert_eq!(answer.answers[0].ttl, 30);
    assert!(
        index
            .lookup(&name("web.default.svc.cluster.local."), RecordType::A)
            .is_none()
    );
    let answer = index
        .lookup(&name("10-42-9-9.default.pod.k8s.example."), RecordType::A)
        .unwrap();
    assert_eq!(answer.rcode, ResponseCode::NXDomain, "pod records are off");
    let answer = index
        .lookup(&name("7.0.43.10.in-addr.arpa."), RecordType::PTR)
        .unwrap();
    assert_eq!(
        render(&answer.answers),
        ["7.0.43.10.in-addr.arpa. ptr web.default.svc.k8s.example."]
    );

    for bad in ["", ".", "in-addr.arpa", "x.ip6.arpa", "a..b"] {
        let config = IndexConfig {
            cluster_domain: bad.into(),
            ..IndexConfig::default()
        };
        assert!(Index::build(&config, [], []).is_err(), "{bad:?}");
    }
}

/// What a stub resolver does with `search <ns>.svc.<zone> svc.<zone> <zone>`
/// and `ndots:5`: a name with fewer than five dots is tried with each
/// suffix first, then as is; the first answer with records wins.
fn resolve_with_search_list(index: &Index, namespace: &str, short: &str) -> Option<String> {
    let search = [
        format!("{namespace}.svc.cluster.local"),
        "svc.cluster.local".to_owned(),
        "cluster.local".to_owned(),
    ];
    let mut candidates: Vec<String> = search.iter().map(|s| format!("{short}.{s}.")).collect();
    candidates.push(format!("{short}."));
    candidates.into_iter().find(|candidate| {
        index
            .lookup(&name(candidate), RecordType::A)
            .is_some_and(|a| a.rcode == ResponseCode::NoError && !a.answers.is_empty())
    })
}

#[test]
fn short_names_resolve_through_the_search_list() {
    let index = index();
    for (namespace, short) in [
        ("default", "web"),
        ("data", "web.default"),
        ("data", "web.default.svc"),
        ("default", "web.default.svc.cluster.local"),
    ] {
        assert_eq!(
            resolve_with_search_list(&index, namespace, short).as_deref(),
            Some("web.default.svc.cluster.local."),
            "{short} from {namespace}"
        );
    }
    assert_eq!(
        resolve_with_search_list(&index, "data", "db-0.db").as_deref(),
        Some("db-0.db.data.svc.cluster.local.")
    );
    assert_eq!(
        resolve_with_search_list(&index, "data", "web"),
        None,
        "web is in default"
    );
}

#[test]
fn the_configuration_is_checked() {
    assert!(DnsConfig::default().validate().is_ok());
    let bad = [
        DnsConfig {
            cluster_domain: "in-addr.arpa".into(),
            ..DnsConfig::default()
        },
        DnsConfig {
            ttl: 3601,
            ..DnsConfig::default()
        },
        DnsConfig {
            listen: vec!["10.43.0.10:53".parse().unwrap()],
            upstreams: vec!["10.43.0.10:53".parse().unwrap()],
            ..DnsConfig::default()
        },
        DnsConfig {
            upstreams: vec!["127.0.0.1:5353".parse().unwrap()],
            upstream_timeout: Duration::ZERO,
            ..DnsConfig::default()
        },
    ];
    for config in bad {
        assert!(config.validate().is_err(), "{config:?}");
    }
}

// ------------------------------------------------------- end-to-end tests

/// A server on 127.0.0.1 (UDP and TCP on one port) answering from `index`.
struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), DnsError>>,
}

impl Running {
    async fn start(config: DnsConfig, index: SharedIndex) -> Self {
        let sockets = Sockets::bind(&["127.0.0.1:0".parse().unwrap()])
            .await
            .unwrap();
        let addr = sockets.udp_addrs()[0];
        assert_eq!(sockets.tcp_addrs(), [addr]);
        let shutdown = CancellationToken::new();
        let server = DnsServer::new(config, index).unwrap();
        let task = tokio::spawn(server.serve(sockets, shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}

fn question(qname: &str, qtype: RecordType, edns: bool) -> (u16, Vec<u8>) {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name(qname), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        message.set_edns(e);
    }
    (message.metadata.id, message.to_vec().unwrap())
}

async fn udp(server: SocketAddr, qname: &str, qtype: RecordType) -> Message {
    udp_with(server, qname, qtype, true).await
}

async fn udp_with(server: SocketAddr, qname: &str, qtype: RecordType, edns: bool) -> Message {
    let (id, bytes) = question(qname, qtype, edns);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&bytes, server).await.unwrap();
    let mut buffer = vec![0; 65535];
    let (n, from) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buffer))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(from, server);
    let answer = Message::from_vec(&buffer[..n]).unwrap();
    assert_eq!(answer.metadata.id, id);
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    answer
}

async fn tcp(server: SocketAddr, qname: &str, qtype: RecordType) -> Message {
    let (id, bytes) = question(qname, qtype, false);
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await.unwrap();
    let read = async {
        let length = stream.read_u16().await.unwrap();
        let mut answer = vec![0; usize::from(length)];
        stream.read_exact(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer");
    let answer = Message::from_vec(&answer).unwrap();
    assert_eq!(answer.metadata.id, id);
    answer
}

#[tokio::test]
async fn the_server_answers_over_udp_and_tcp() {
    let server = Running::start(DnsConfig::default(), SharedIndex::with(index())).await;

    let a = udp(server.addr, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative);
    assert!(
        !a.metadata.recursion_available,
        "no upstreams, no recursion"
    );
    assert_eq!(
        render(&a.answers),
        ["web.default.svc.cluster.local. a 10.43.0.7"]
    );
    assert!(a.edns.is_some(), "EDNS answered with EDNS");

    let srv = udp(
        server.addr,
        "_pg._tcp.db.data.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(srv.answers.len(), 3);
    assert_eq!(srv.additionals.len(), 3, "the targets' addresses");

    let ptr = udp(server.addr, "7.0.43.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(
        render(&ptr.answers),
        ["7.0.43.10.in-addr.arpa. ptr web.default.svc.cluster.local."]
    );

    let cname = udp(server.addr, "ext.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(cname.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        render(&cname.answers),
        ["ext.default.svc.cluster.local. cname example.com."]
    );

    let nx = udp(
        server.addr,
        "nope.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.answers.is_empty());
    assert_eq!(nx.authorities.len(), 1);
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);

    let nodata = udp(
        server.addr,
        "web.default.svc.cluster.local.",
        RecordType::AAAA,
    )
    .await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);

    let txt = udp(server.addr, "dns-version.cluster.local.", RecordType::TXT).await;
    assert_eq!(
        render(&txt.answers),
        ["dns-version.cluster.local. txt 1.1.0"]
    );

    let refused = udp(server.addr, "example.com.", RecordType::A).await;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(refused.answers.is_empty());

    let over_tcp = tcp(
        server.addr,
        "db-0.db.data.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(
        render(&over_tcp.answers),
        ["db-0.db.data.svc.cluster.local. a 10.42.1.5"]
    );

    let mixed_case = udp(server.addr, "Web.DEFAULT.svc.cluster.local.", RecordType::A).await;
    assert_eq!(mixed_case.answers.len(), 1);
    assert_eq!(
        mixed_case.queries[0].name().to_ascii(),
        "Web.DEFAULT.svc.cluster.local."
    );

    server.stop().await;
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let (mut services, mut slices) = fixtures();
    services.push(service(
        "data",
        "big",
        json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}),
    ));
    let addresses: Vec<String> = (0..100).map(|i| format!("10.42.10.{i}")).collect();
    let addresses: Vec<[&str; 1]> = addresses.iter().map(|a| [a.as_str()]).collect();
    let endpoints: Vec<Ep<'_>> = addresses
        .iter()
        .map(|a| (&a[..], Some(true), None))
        .collect();
    slices.push(slice(
        "data",
        "big",
        "big-abc",
        "IPv4",
        json!([]),
        &endpoints,
    ));
    let index = Index::build(&IndexConfig::default(), &services, &slices).unwrap();
    let server = Running::start(DnsConfig::default(), SharedIndex::with(index)).await;

    let plain = udp_with(
        server.addr,
        "big.data.svc.cluster.local.",
        RecordType::A,
        false,
    )
    .await;
    assert!(
        plain.metadata.truncation,
        "100 addresses do not fit in 512 bytes"
    );
    assert!(plain.answers.len() < 100);
    let whole = tcp(server.addr, "big.data.svc.cluster.local.", RecordType::A).await;
    assert!(!whole.metadata.truncation);
    assert_eq!(whole.answers.len(), 100);

    // Additional records that do not fit are dropped, not truncated.
    let srv = udp_with(
        server.addr,
        "_pg._tcp.db.data.svc.cluster.local.",
        RecordType::SRV,
        false,
    )
    .await;
    assert!(!srv.metadata.truncation);
    assert_eq!(srv.answers.len(), 3);

    server.stop().await;
}

#[tokio::test]
async fn the_cluster_zones_fail_until_the_first_index_then_follow_it() {
    let shared = SharedIndex::new();
    let server = Running::start(DnsConfig::default(), shared.clone()).await;
    let early = udp(server.addr, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(
        early.metadata.response_code,
        ResponseCode::ServFail,
        "not NXDOMAIN: nothing is cached"
    );
    let outside = udp(server.addr, "example.com.", RecordType::A).await;
    assert_eq!(outside.metadata.response_code, ResponseCode::Refused);

    shared.replace(index());
    let ready = udp(server.addr, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(
        render(&ready.answers),
        ["web.default.svc.cluster.local. a 10.43.0.7"]
    );

    shared.replace(Index::build(&IndexConfig::default(), [], []).unwrap());
    let gone = udp(server.addr, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);

    server.stop().await;
}

#[tokio::test]
async fn configured_upstreams_answer_outside_names_and_external_names() {
    // The "upstream" is another of these servers, on loopback, for its
    // own domain `upstream.test`.
    let upstream_config = DnsConfig {
        cluster_domain: "upstream.test".into(),
        ..DnsConfig::default()
    };
    let (services, _) = fixtures();
    let upstream_index = Index::build(&upstream_config.index_config(), &services, []).unwrap();
    let upstream = Running::start(upstream_config, SharedIndex::with(upstream_index)).await;

    let mut services = services;
    services.push(service(
        "default",
        "far",
        json!({"type": "ExternalName", "externalName": "web.default.svc.upstream.test"}),
    ));
    let index = Index::build(&IndexConfig::default(), &services, []).unwrap();
    let config = DnsConfig {
        upstreams: vec![upstream.addr],
        ..DnsConfig::default()
    };
    let server = Running::start(config, SharedIndex::with(index)).await;

    let forwarded = udp(server.addr, "web.default.svc.upstream.test.", RecordType::A).await;
    assert_eq!(forwarded.metadata.response_code, ResponseCode::NoError);
    assert!(!forwarded.metadata.authoritative);
    assert!(forwarded.metadata.recursion_available);
    assert_eq!(
        render(&forwarded.answers),
        ["web.default.svc.upstream.test. a 10.43.0.7"]
    );

    let forwarded_tcp = tcp(server.addr, "web.default.svc.upstream.test.", RecordType::A).await;
    assert_eq!(forwarded_tcp.answers.len(), 1);

    let nx = udp(server.addr, "nope.upstream.test.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);

    let chased = udp(server.addr, "far.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(
        render(&chased.answers),
        [
            "far.default.svc.cluster.local. cname web.default.svc.upstream.test.",
            "web.default.svc.upstream.test. a 10.43.0.7",
        ]
    );

    // Our own zones are still ours.
    let own = udp(
        server.addr,
        "nope.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(own.metadata.response_code, ResponseCode::NXDomain);
    assert!(own.metadata.authoritative);

    server.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn an_unanswering_upstream_is_a_servfail() {
    // A bound socket that never answers.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let config = DnsConfig {
        upstreams: vec![silent.local_addr().unwrap()],
        upstream_timeout: Duration::from_millis(200),
        ..DnsConfig::default()
    };
    let server = Running::start(config, SharedIndex::with(index())).await;
    let answer = udp(server.addr, "example.com.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    server.stop().await;
}

#[tokio::test]
async fn malformed_and_unsupported_questions_get_error_codes() {
    let server = Running::start(DnsConfig::default(), SharedIndex::with(index())).await;
    let axfr = tcp(server.addr, "cluster.local.", RecordType::AXFR).await;
    assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);

    // Two questions in one message.
    let mut message = Message::new(7, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(name("a.cluster.local."), RecordType::A));
    message.add_query(Query::query(name("b.cluster.local."), RecordType::A));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&message.to_vec().unwrap(), server.addr)
        .await
        .unwrap();
    let mut buffer = vec![0; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buffer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = Message::from_vec(&buffer[..n]).unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    server.stop().await;
}
