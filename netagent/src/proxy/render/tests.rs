//! Table-driven tests of `render`: API objects in, exact rules out.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

use super::*;
use crate::proxy::names;

const NODE: &str = "node-a";

fn node() -> NodeContext {
    NodeContext {
        name: NODE.into(),
        ips: vec![Ipv4Addr::new(172, 30, 0, 2)],
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        node_local_service_ips: BTreeSet::new(),
        random_fully: true,
    }
}

fn service(namespace: &str, name: &str, spec: Value) -> Arc<Service> {
    service_with_status(namespace, name, spec, json!({}))
}

fn service_with_status(namespace: &str, name: &str, spec: Value, status: Value) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"namespace": namespace, "name": name},
            "spec": spec,
            "status": status,
        }))
        .unwrap(),
    )
}

/// An endpoint: address, ready, node.
fn ep(ip: &str, ready: bool, node: &str) -> Value {
    json!({
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": ready, "terminating": false},
        "nodeName": node,
    })
}

fn slice(
    namespace: &str,
    service: &str,
    name: &str,
    ports: Value,
    endpoints: Vec<Value>,
) -> Arc<EndpointSlice> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {
                "namespace": namespace,
                "name": name,
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap(),
    )
}

fn http_port() -> Value {
    json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
}

fn input(services: Vec<Arc<Service>>, slices: Vec<Arc<EndpointSlice>>) -> ProxyInput {
    ProxyInput {
        node: node(),
        services,
        endpoint_slices: slices,
    }
}

fn web(extra: Value) -> Arc<Service> {
    let mut spec = json!({
        "type": "ClusterIP",
        "clusterIP": "10.96.0.50",
        "clusterIPs": ["10.96.0.50"],
        "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    service("default", "web", spec)
}

fn rules(rendered: &Rendered, table: &str, chain: &str) -> Vec<String> {
    let table = if table == "nat" {
        rendered.nat()
    } else {
        rendered.filter()
    };
    table.rules_of(chain).unwrap_or_default().to_vec()
}

fn svc(port: &str) -> String {
    format!("KEELSON-SVC-{}", names::port_hash(port, "tcp"))
}
fn svl(port: &str) -> String {
    format!("KEELSON-SVL-{}", names::port_hash(port, "tcp"))
}
fn ext(port: &str) -> String {
    format!("KEELSON-EXT-{}", names::port_hash(port, "tcp"))
}
fn fw(port: &str) -> String {
    format!("KEELSON-FW-{}", names::port_hash(port, "tcp"))
}
fn sep(port: &str, endpoint: &str) -> String {
    names::endpoint_chain(port, "tcp", endpoint)
}

const WEB: &str = "default/web:http";

/// Rules of the empty ruleset: what every render has.
fn baseline() -> Rendered {
    render(&input(vec![], vec![]))
}

#[test]
fn probabilities_are_printed_as_iptables_save_prints_them() {
    assert_eq!(probability(3), "0.33333333349");
    assert_eq!(probability(2), "0.50000000000");
    assert_eq!(probability(1), "1.00000000000");
    assert_eq!(probability(4), "0.25000000000");
    assert_eq!(probability(10), "0.10000000009");
    assert_eq!(probability(7), "0.14285714272");
}

#[test]
fn the_empty_ruleset_is_exactly_the_fixed_chains() {
    let text = baseline().text().to_owned();
    assert_eq!(
        text,
        "*filter\n\
         :KEELSON-EXTERNAL-SERVICES - [0:0]\n\
         :KEELSON-FORWARD - [0:0]\n\
         :KEELSON-PROXY-FIREWALL - [0:0]\n\
         :KEELSON-SERVICES - [0:0]\n\
         -A KEELSON-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KEELSON-FORWARD -m comment --comment \"keelson forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KEELSON-FORWARD -m comment --comment \"keelson forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n\
         *nat\n\
         :KEELSON-MARK-MASQ - [0:0]\n\
         :KEELSON-NODEPORTS - [0:0]\n\
         :KEELSON-POSTROUTING - [0:0]\n\
         :KEELSON-SERVICES - [0:0]\n\
         -A KEELSON-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KEELSON-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KEELSON-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KEELSON-POSTROUTING -m comment --comment \"keelson service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KEELSON-SERVICES ! -d 127.0.0.0/8 -m comment --comment \"keelson service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KEELSON-NODEPORTS\n\
         COMMIT\n"
    );
    let mut plain = input(vec![], vec![]);
    plain.node.random_fully = false;
    assert!(render(&plain).text().contains("-j MASQUERADE\n"));
}

#[test]
fn a_cluster_ip_balances_over_ready_endpoints_only() {
    let rendered = render(&input(
        vec![web(json!({}))],
        vec![slice(
            "default",
            "web",
            "web-1",
            http_port(),
            vec![
                ep("10.244.1.3", true, "node-b"),
                ep("10.244.1.2", true, NODE),
                ep("10.244.2.9", false, "node-b"),
                ep("10.244.1.10", true, "node-c"),
            ],
        )],
    ));
    let svc = svc(WEB);
    assert_eq!(
        rules(&rendered, "nat", names::SERVICES)[0],
        format!(
            "-A KEELSON-SERVICES -d 10.96.0.50/32 -p tcp -m comment --comment \"{WEB} cluster IP\" -m tcp --dport 80 -j {svc}"
        )
    );
    // Sorted by address: .2, .3, .10; the not-ready .9 is left out.
    let (a, b, c) = (
        sep(WEB, "10.244.1.2:8080"),
        sep(WEB, "10.244.1.3:8080"),
        sep(WEB, "10.244.1.10:8080"),
    );
    assert_eq!(
        rules(&rendered, "nat", &svc),
        vec![
            format!(
                "-A {svc} ! -s 10.244.0.0/16 -d 10.96.0.50/32 -p tcp -m comment --comment \"{WEB} cluster IP\" -m tcp --dport 80 -j KEELSON-MARK-MASQ"
            ),
            format!(
                "-A {svc} -m comment --comment \"{WEB} -> 10.244.1.2:8080\" -m statistic --mode random --probability 0.33333333349 -j {a}"
            ),
            format!(
                "-A {svc} -m comment --comment \"{WEB} -> 10.244.1.3:8080\" -m statistic --mode random --probability 0.50000000000 -j {b}"
            ),
            format!("-A {svc} -m comment --comment \"{WEB} -> 10.244.1.10:8080\" -j {c}"),
        ]
    );
    // Each endpoint chain: hairpin masquerade, then DNAT.
    assert_eq!(
        rules(&rendered, "nat", &a),
        vec![
            format!("-A {a} -s 10.244.1.2/32 -m comment --comment \"{WEB}\" -j KEELSON-MARK-MASQ"),
            format!(
                "-A {a} -p tcp -m comment --comment \"{WEB}\" -j DNAT --to-destination 10.244.1.2:8080"
            ),
        ]
    );
    assert!(!rendered.text().contains("10.244.2.9"));
    assert_eq!(rendered.stats().endpoints, 4, "ready or not");
    // No filter rules beyond the fixed ones: the service has endpoints.
    assert_eq!(rendered.filter(), baseline().filter());
    // The nodeports jump stays last.
    assert!(
        rules(&rendered, "nat", names::SERVICES)
            .last()
            .unwrap()
            .ends_with("-j KEELSON-NODEPORTS")
    );
    assert_eq!(
        rendered.rules(),
        rendered
            .text()
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count()
    );
}

#[test]
fn no_pod_cidr_means_no_cluster_ip_masquerade() {
    let mut input = input(
        vec![web(json!({}))],
        vec![slice(
            "default",
            "web",
            "web-1",
            http_port(),
            vec![ep("10.244.1.2", true, NODE)],
        )],
    );
    input.node.cluster_cidr = None;
    let rendered = render(&input);
    let svc = svc(WEB);
    assert_eq!(
        rules(&rendered, "nat", &svc),
        vec![format!(
            "-A {svc} -m comment --comment \"{WEB} -> 10.244.1.2:8080\" -j {}",
            sep(WEB, "10.244.1.2:8080")
        )]
    );
}

#[test]
fn services_without_endpoints_are_rejected_in_filter() {
    let cases = [
        ("no slice", vec![]),
        (
            "only not-ready",
            vec![slice(
                "default",
                "web",
                "web-1",
                http_port(),
                vec![ep("10.244.1.2", false, NODE)],
            )],
        ),
        (
            "port name differs",
            vec![slice(
                "default",
                "web",
                "web-1",
                json!([{"name": "metrics", "port": 9090, "protocol": "TCP"}]),
                vec![ep("10.244.1.2", true, NODE)],
            )],
        ),
        (
            "protocol differs",
            vec![slice(
                "default",
                "web",
                "web-1",
                json!([{"name": "http", "port": 8080, "protocol": "UDP"}]),
                vec![ep("10.244.1.2", true, NODE)],
            )],
        ),
        (
            "other namespace",
            vec![slice(
                "other",
                "web",
                "web-1",
                http_port(),
                vec![ep("10.244.1.2", true, NODE)],
            )],
        ),
    ];
    for (case, slices) in cases {
        let rendered = render(&input(
            vec![web(
                json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]}),
            )],
            slices,
        ));
        assert_eq!(
            rules(&rendered, "filter", names::SERVICES),
            vec![format!(
                "-A KEELSON-SERVICES -d 10.96.0.50/32 -p tcp -m comment --comment \"{WEB} has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable"
            )],
            "{case}"
        );
        assert_eq!(
            rules(&rendered, "filter", names::EXTERNAL_SERVICES),
            vec![format!(
                "-A KEELSON-EXTERNAL-SERVICES -p tcp -m comment --comment \"{WEB} has no endpoints\" -m addrtype --dst-type LOCAL -m tcp --dport 30080 -j REJECT --reject-with icmp-port-unreachable"
            )],
            "{case}"
        );
        assert_eq!(rendered.nat(), baseline().nat(), "{case}: no nat rules");
    }
}

#[test]
fn a_node_port_masquerades_through_the_external_chain() {
    let rendered = render(&input(
        vec![web(
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]}),
        )],
        vec![slice(
            "default",
            "web",
            "web-1",
            http_port(),
            vec![ep("10.244.1.2", true, "node-b")],
        )],
    ));
    let (svc, ext) = (svc(WEB), ext(WEB));
    assert_eq!(
        rules(&rendered, "nat", names::NODEPORTS),
        vec![format!(
            "-A KEELSON-NODEPORTS -p tcp -m comment --comment \"{WEB}\" -m tcp --dport 30080 -j {ext}"
        )]
    );
    assert_eq!(
        rules(&rendered, "nat", &ext),
        vec![
            format!(
                "-A {ext} -m comment --comment \"masquerade traffic for {WEB} external destinations\" -j KEELSON-MARK-MASQ"
            ),
            format!("-A {ext} -j {svc}"),
        ]
    );
    assert!(rendered.nat().has_chain(&svc));
    assert!(!rendered.nat().has_chain(&svl(WEB)));
}

#[test]
fn external_traffic_policy_local_keeps_to_local_endpoints() {
    let spec = json!({"type": "NodePort", "externalTrafficPolicy": "Local",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]});
    let (svc, svl, ext) = (svc(WEB), svl(WEB), ext(WEB));
    let short_circuit = vec![
        format!(
            "-A {ext} -s 10.244.0.0/16 -m comment --comment \"pod traffic for {WEB} external destinations\" -j {svc}"
        ),
        format!(
            "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {WEB} external destinations\" -m addrtype --src-type LOCAL -j KEELSON-MARK-MASQ"
        ),
        format!(
            "-A {ext} -m comment --comment \"route LOCAL traffic for {WEB} external destinations\" -m addrtype --src-type LOCAL -j {svc}"
        ),
    ];

    // With a local endpoint: outside traffic goes only to it.
    let rendered = render(&input(
        vec![web(spec.clone())],
        vec![slice(
            "default",
            "web",
            "web-1",
            http_port(),
            vec![
                ep("10.244.1.2", true, NODE),
                ep("10.244.1.3", true, "node-b"),
            ],
        )],
    ));
    let mut expected = short_circuit.clone();
    expected.push(format!("-A {ext} -j {svl}"));
    assert_eq!(rules(&rendered, "nat", &ext), expected);
    assert_eq!(
        rules(&rendered, "nat", &svl),
        vec![format!(
            "-A {svl} -m comment --comment \"{WEB} -> 10.244.1.2:8080\" -j {}",
            sep(WEB, "10.244.1.2:8080")
        )]
    );
    assert_eq!(
        rules(&rendered, "nat", &svc).len(),
        3,
        "masquerade + two endpoints"
    );
    assert_eq!(
        rules(&rendered, "filter", names::EXTERNAL_SERVICES),
        Vec::<String>::new()
    );

    // Without one: the EXT chain only short-circuits; the rest is dropped.
    let rendered = render(&input(
        vec![web(spec)],
        vec![slice(
            "default",
            "web",
            "web-1",
            http_port(),
            vec![ep("10.244.1.3", true, "node-b")],
        )],
    ));
    assert_eq!(rules(&rendered, "nat", &ext), short_circuit);
    assert!(!rendered.nat().has_chain(&svl));
    assert_eq!(
        rules(&rendered, "filter", names::EXTERNAL_SERVICES),
        vec![format!(
            "-A KEELSON-EXTERNAL-SERVICES -p tcp -m comment --comment \"{WEB} has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp --dport 30080 -j DROP"
        )]
    );
    assert_eq!(rendered.stats().no_local_endpoints_external, 1);
    // The cluster IP still works.
    assert!(rules(&rendered, "nat", names::SERVICES)[0].ends_with(&format!("-j {svc}")));
}

#[test]
fn internal_traffic_policy_local_sends_cluster_ip_traffic_to_this_node_only() {
    let spec = json!({"internalTrafficPolicy": "Local"});
    let svl = svl(WEB);
    let rendered = render(&input(
        vec![web(spec.clone())],
        vec![slice(
            "default",
            "web",
            "web-1",
            http_port(),
            vec![
                ep("10.244.1.2", true, NODE),
                ep("10.244.1.3", true, "node-b"),
            ],
        )],
    ));
    assert!(rules(&rendered, "nat", names::SERVICES)[0].ends_with(&format!("-j {svl}")));
    assert_eq!(
        rules(&rendered, "nat", &svl),
        vec![
            format!(
                "-A {svl} ! -s 10.244.0.0/16 -d 10.96.0.50/32 -p tcp -m comment --comment \"{WEB} cluster IP\" -m tcp --dport 80 -j KEELSON-MARK-MASQ"
            ),
            format!(
                "-A {svl} -m comment --comment \"{WEB} -> 10.244.1.2:8080\" -j {}",
                sep(WEB, "10.244.1.2:8080")
            ),
        ]
    );
    assert!(
        !rendered.nat().has_chain(&svc(WEB)),
        "no cluster-wide chain"
    );
    assert!(
        !rendered.nat().has_chain(&sep(WEB, "10.244.1.3:8080")),
        "remote endpoint unreachable"
    );

    let rendered = render(&input(
        vec![web(spec)],
        vec![slice(
            "default",
            "web",
            "web-1",
            http_port(),
            vec![ep("10.244.1.3", true, "node-b")],
        )],
    ));
    assert_eq!(
        rules(&rendered, "filter", names::SERVICES),
        vec![format!(
            "-A KEELSON-SERVICES -d 10.96.0.50/32 -p tcp -m comment --comment \"{WEB} has no local endpoints\" -m tcp --dport 80 -j DROP"
        )]
    );
    assert_eq!(rendered.nat(), baseline().nat());
    assert_eq!(rendered.stats().no_local_endpoints_internal, 1);
}

#[test]
fn client_ip_affinity_checks_recent_lists_first() {
    for (config, seconds) in [
        (json!(null), 10800),
        (json!({"clientIP": {"timeoutSeconds": 60}}), 60),
    ] {
        let rendered = render(&input(
            vec![web(
                json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": config}),
            )],
            vec![slice(
                "default",
                "web",
                "web-1",
                http_port(),
                vec![ep("10.244.1.2", true, NODE), ep("10.244.1.3", true, NODE)],
            )],
        ));
        let svc = svc(WEB);
        let (a, b) = (sep(WEB, "10.244.1.2:8080"), sep(WEB, "10.244.1.3:8080"));
        let svc_rules = rules(&rendered, "nat", &svc);
        assert_eq!(
            svc_rules[1..3],
            [
                format!(
                    "-A {svc} -m comment --comment \"{WEB} -> 10.244.1.2:8080\" -m recent --rcheck --seconds {seconds} --reap --name {a} --mask 255.255.255.255 --rsource -j {a}"
                ),
                format!(
                    "-A {svc} -m comment --comment \"{WEB} -> 10.244.1.3:8080\" -m recent --rcheck --seconds {seconds} --reap --name {b} --mask 255.255.255.255 --rsource -j {b}"
                ),
            ]
        );
        assert_eq!(svc_rules.len(), 5);
        assert_eq!(
            rules(&rendered, "nat", &a)[1],
            format!(
                "-A {a} -p tcp -m comment --comment \"{WEB}\" -m recent --set --name {a} --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.244.1.2:8080"
            )
        );
    }
}

#[test]
fn headless_external_name_ipv6_and_node_local_services_get_no_rules() {
    let slices = vec![slice(
        "default",
        "web",
        "web-1",
        http_port(),
        vec![ep("10.244.1.2", true, NODE)],
    )];
    let mut node_local = input(vec![web(json!({}))], slices.clone());
    node_local
        .node
        .node_local_service_ips
        .insert(Ipv4Addr::new(10, 96, 0, 50));
    let cases = [
        (
            "headless",
            input(
                vec![web(json!({"clusterIP": "None", "clusterIPs": ["None"]}))],
                slices.clone(),
            ),
        ),
        (
            "external name",
            input(
                vec![service(
                    "default",
                    "web",
                    json!({"type": "ExternalName", "externalName": "example.org", "ports": [{"port": 80}]}),
                )],
                slices.clone(),
            ),
        ),
        (
            "ipv6",
            input(
                vec![web(
                    json!({"clusterIP": "fd00::10", "clusterIPs": ["fd00::10"], "ipFamilies": ["IPv6"]}),
                )],
                slices.clone(),
            ),
        ),
        ("node-local (kube-dns without selector)", node_local),
    ];
    for (case, input) in cases {
        assert_eq!(render(&input), baseline(), "{case}");
    }
}

#[test]
fn a_selectorless_service_uses_its_slices() {
    let dns = service(
        "kube-system",
        "kube-dns",
        json!({
            "clusterIP": "10.96.0.10",
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
        }),
    );
    let slices = vec![slice(
        "kube-system",
        "kube-dns",
        "kube-dns-manual",
        json!([
            {"name": "dns", "port": 5353, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 5353, "protocol": "TCP"},
        ]),
        vec![ep("10.244.1.7", true, "node-b")],
    )];
    let rendered = render(&input(vec![dns.clone()], slices.clone()));
    let udp = format!(
        "KEELSON-SVC-{}",
        names::port_hash("kube-system/kube-dns:dns", "udp")
    );
    assert!(rules(&rendered, "nat", names::SERVICES).contains(&format!(
        "-A KEELSON-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment \"kube-system/kube-dns:dns cluster IP\" -m udp --dport 53 -j {udp}"
    )));
    let udp_sep = names::endpoint_chain("kube-system/kube-dns:dns", "udp", "10.244.1.7:5353");
    assert_eq!(
        rules(&rendered, "nat", &udp_sep)[1],
        format!(
            "-A {udp_sep} -p udp -m comment --comment \"kube-system/kube-dns:dns\" -j DNAT --to-destination 10.244.1.7:5353"
        )
    );
    assert_eq!(rendered.stats().service_ports, 2);
}

#[test]
fn terminating_endpoints_serve_when_nothing_is_ready() {
    let terminating = json!({"addresses": ["10.244.1.5"], "nodeName": NODE,
        "conditions": {"ready": false, "serving": true, "terminating": true}});
    let gone = json!({"addresses": ["10.244.1.6"], "nodeName": NODE,
        "conditions": {"ready": false, "serving": false, "terminating": true}});
    let rendered = render(&input(
        vec![web(json!({}))],
        vec![slice(
            "default",
            "web",
            "web-1",
            http_port(),
            vec![terminating.clone(), gone],
        )],
    ));
    assert!(rendered.nat().has_chain(&sep(WEB, "10.244.1.5:8080")));
    assert!(!rendered.text().contains("10.244.1.6"));
    // A ready endpoint elsewhere wins over the terminating one.
    let rendered = render(&input(
        vec![web(json!({}))],
        vec![slice(
            "default",
            "web",
            "web-1",
            http_port(),
            vec![terminating, ep("10.244.1.9", true, "node-b")],
        )],
    ));
    assert!(!rendered.text().contains("10.244.1.5"));
}

#[test]
fn load_balancer_ips_go_through_the_external_chain_and_source_ranges() {
    let spec = json!({"type": "LoadBalancer",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]});
    let status = json!({"loadBalancer": {"ingress": [{"ip": "192.168.200.10"}, {"ip": "192.168.200.11", "ipMode": "Proxy"}, {"hostname": "lb.example"}]}});
    let slices = vec![slice(
        "default",
        "web",
        "web-1",
        http_port(),
        vec![ep("10.244.1.2", true, NODE)],
    )];
    let rendered = render(&input(
        vec![service_with_status(
            "default",
            "web",
            merged(spec.clone()),
            status.clone(),
        )],
        slices.clone(),
    ));
    let (ext, fw) = (ext(WEB), fw(WEB));
    let services = rules(&rendered, "nat", names::SERVICES);
    assert_eq!(
        services[1],
        format!(
            "-A KEELSON-SERVICES -d 192.168.200.10/32 -p tcp -m comment --comment \"{WEB} loadbalancer IP\" -m tcp --dport 80 -j {ext}"
        )
    );
    assert_eq!(
        services.len(),
        3,
        "cluster IP, one LB IP (ipMode Proxy skipped), nodeports"
    );
    assert!(rendered.nat().has_chain(&ext));

    // loadBalancerSourceRanges: LB traffic passes the FW chain first.
    let mut ranged = merged(spec.clone());
    ranged["loadBalancerSourceRanges"] = json!(["203.0.113.0/24", "172.30.0.0/16"]);
    let rendered = render(&input(
        vec![service_with_status(
            "default",
            "web",
            ranged,
            status.clone(),
        )],
        slices,
    ));
    assert!(rules(&rendered, "nat", names::SERVICES)[1].ends_with(&format!("-j {fw}")));
    assert_eq!(
        rules(&rendered, "nat", &fw),
        vec![
            format!(
                "-A {fw} -s 172.30.0.0/16 -m comment --comment \"{WEB} loadbalancer IP\" -j {ext}"
            ),
            format!(
                "-A {fw} -s 203.0.113.0/24 -m comment --comment \"{WEB} loadbalancer IP\" -j {ext}"
            ),
            // The node's own IP is in range: its traffic from the LB IP is admitted.
            format!(
                "-A {fw} -s 192.168.200.10/32 -m comment --comment \"{WEB} loadbalancer IP\" -j {ext}"
            ),
            format!(
                "-A {fw} -m comment --comment \"other traffic to {WEB} will be dropped by KEELSON-PROXY-FIREWALL\""
            ),
        ]
    );
    assert_eq!(
        rules(&rendered, "filter", names::PROXY_FIREWALL),
        vec![format!(
            "-A KEELSON-PROXY-FIREWALL -d 192.168.200.10/32 -p tcp -m comment --comment \"{WEB} traffic not accepted by {fw}\" -m tcp --dport 80 -j DROP"
        )]
    );

    // Without endpoints the LB IP is rejected like the node port.
    let rendered = render(&input(
        vec![service_with_status("default", "web", merged(spec), status)],
        vec![],
    ));
    assert!(rules(&rendered, "filter", names::EXTERNAL_SERVICES).contains(&format!(
        "-A KEELSON-EXTERNAL-SERVICES -d 192.168.200.10/32 -p tcp -m comment --comment \"{WEB} has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable"
    )));
}

fn merged(extra: Value) -> Value {
    let mut spec = json!({
        "clusterIP": "10.96.0.50",
        "selector": {"app": "web"},
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    spec
}

#[test]
fn external_ips_are_captured_like_load_balancer_ips() {
    let rendered = render(&input(
        vec![web(json!({"externalIPs": ["198.51.100.7"]}))],
        vec![slice(
            "default",
            "web",
            "web-1",
            http_port(),
            vec![ep("10.244.1.2", true, NODE)],
        )],
    ));
    assert_eq!(
        rules(&rendered, "nat", names::SERVICES)[1],
        format!(
            "-A KEELSON-SERVICES -d 198.51.100.7/32 -p tcp -m comment --comment \"{WEB} external IP\" -m tcp --dport 80 -j {}",
            ext(WEB)
        )
    );
}

#[test]
fn output_is_deterministic_whatever_the_input_order() {
    let services = vec![
        web(
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]}),
        ),
        service(
            "b",
            "api",
            json!({"clusterIP": "10.96.0.60", "ports": [{"port": 443, "protocol": "TCP"}]}),
        ),
        service(
            "a",
            "db",
            json!({"clusterIP": "10.96.0.70", "sessionAffinity": "ClientIP", "ports": [{"name": "pg", "port": 5432}]}),
        ),
    ];
    let slices = vec![
        slice(
            "default",
            "web",
            "web-2",
            http_port(),
            vec![
                ep("10.244.3.1", true, "node-b"),
                ep("10.244.1.2", true, NODE),
            ],
        ),
        slice(
            "default",
            "web",
            "web-1",
            http_port(),
            vec![ep("10.244.2.1", true, NODE), ep("10.244.1.9", false, NODE)],
        ),
        slice(
            "b",
            "api",
            "api-1",
            json!([{"port": 8443}]),
            vec![ep("10.244.5.5", true, "node-c")],
        ),
        slice(
            "a",
            "db",
            "db-1",
            json!([{"name": "pg", "port": 5432}]),
            vec![ep("10.244.6.6", true, NODE), ep("10.244.6.5", true, NODE)],
        ),
    ];
    let first = render(&input(services.clone(), slices.clone()));
    assert_eq!(
        render(&input(services.clone(), slices.clone())).text(),
        first.text()
    );
    let (mut reversed_services, mut reversed_slices) = (services.clone(), slices.clone());
    reversed_services.reverse();
    reversed_slices.reverse();
    assert_eq!(
        render(&input(reversed_services, reversed_slices)).text(),
        first.text()
    );
    // Chain declarations and rules come in name order.
    let declared: Vec<&str> = first
        .text()
        .lines()
        .filter(|l| l.starts_with(':'))
        .collect();
    let nat_start = first.filter().chains().count();
    let mut sorted = declared[nat_start..].to_vec();
    sorted.sort();
    assert_eq!(declared[nat_start..], sorted[..]);

    // Adding a service leaves the other services' chain names as they were.
    let mut more = services;
    more.push(service(
        "z",
        "new",
        json!({"clusterIP": "10.96.0.80", "ports": [{"port": 80}]}),
    ));
    let second = render(&input(more, slices));
    let before: BTreeSet<&str> = first.nat().chains().collect();
    let after: BTreeSet<&str> = second.nat().chains().collect();
    assert!(before.is_subset(&after));
    assert!(
        second
            .filter()
            .rules_of(names::SERVICES)
            .unwrap()
            .iter()
            .any(|r| r.contains("z/new has no endpoints"))
    );
}

#[test]
fn duplicate_endpoints_across_slices_are_programmed_once() {
    let rendered = render(&input(
        vec![web(json!({}))],
        vec![
            slice(
                "default",
                "web",
                "web-1",
                http_port(),
                vec![ep("10.244.1.2", true, "node-b")],
            ),
            slice(
                "default",
                "web",
                "web-2",
                http_port(),
                vec![ep("10.244.1.2", true, NODE)],
            ),
        ],
    ));
    assert_eq!(
        rules(&rendered, "nat", &svc(WEB)).len(),
        2,
        "masquerade + one endpoint"
    );
}

#[test]
fn large_clusters_drop_per_endpoint_comments() {
    let input = crate::proxy::bench::synthetic_input(101, 10);
    let rendered = render(&input);
    assert!(rendered.stats().large_cluster_mode);
    let port = "bench/svc-0:http";
    let svc = svc(port);
    let svc_rules = rules(&rendered, "nat", &svc);
    assert!(svc_rules[0].contains("cluster IP"), "service comments stay");
    assert!(svc_rules[1..].iter().all(|r| !r.contains("--comment")));
    assert!(rendered.text().len() < 101 * 10 * 400);
    let small = render(&crate::proxy::bench::synthetic_input(10, 10));
    assert!(!small.stats().large_cluster_mode);
}
