//! The proxy against real iptables, inside network namespaces these tests
//! create (and delete, even when they fail). Needs root; skipped otherwise.
//! Nothing here touches the host's own interfaces, routes or tables.

// Helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_netagent::proxy::bench::{Netns, benchmark};
use keelson_netagent::proxy::iptables::{JUMPS, SavedTable, TableName};
use keelson_netagent::proxy::{Iptables, IptablesError, NodeContext, ProxyInput, Rendered, render};
use serde_json::{Value, json};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root to make network namespaces");
            return;
        }
    };
}

fn service(namespace: &str, name: &str, spec: Value, status: Value) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"namespace": namespace, "name": name},
            "spec": spec,
            "status": status,
        }))
        .unwrap(),
    )
}

fn slice(
    namespace: &str,
    service: &str,
    ports: Value,
    endpoints: &[(&str, bool, &str)],
) -> Arc<EndpointSlice> {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready, node)| {
            json!({"addresses": [ip], "conditions": {"ready": ready}, "nodeName": node})
        })
        .collect();
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"namespace": namespace, "name": format!("{service}-x"),
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap(),
    )
}

fn node() -> NodeContext {
    NodeContext {
        name: "node-a".into(),
        ips: vec![Ipv4Addr::new(10, 251, 0, 1)],
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        random_fully: true,
        ..NodeContext::default()
    }
}

/// A cluster that uses every kind of rule the renderer writes.
fn everything() -> ProxyInput {
    let http = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
    let many: Vec<(String, bool, &str)> = (1..=12)
        .map(|i| {
            (
                format!("10.244.9.{i}"),
                true,
                if i % 2 == 0 { "node-a" } else { "node-b" },
            )
        })
        .collect();
    let many: Vec<(&str, bool, &str)> = many
        .iter()
        .map(|(ip, r, n)| (ip.as_str(), *r, *n))
        .collect();
    ProxyInput {
        node: node(),
        services: vec![
            service(
                "default",
                "web",
                json!({"clusterIP": "10.96.0.50", "ports": [{"name": "http", "port": 80}]}),
                json!({}),
            ),
            service(
                "default",
                "many",
                json!({"clusterIP": "10.96.0.51", "ports": [{"name": "http", "port": 80}],
                "sessionAffinity": "ClientIP"}),
                json!({}),
            ),
            service(
                "default",
                "local",
                json!({"type": "NodePort", "clusterIP": "10.96.0.52", "externalTrafficPolicy": "Local",
                "internalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80, "nodePort": 30052}]}),
                json!({}),
            ),
            service(
                "default",
                "remote",
                json!({"type": "NodePort", "clusterIP": "10.96.0.53", "externalTrafficPolicy": "Local",
                "ports": [{"name": "http", "port": 80, "nodePort": 30053}]}),
                json!({}),
            ),
            service(
                "default",
                "lb",
                json!({"type": "LoadBalancer", "clusterIP": "10.96.0.54", "externalIPs": ["198.51.100.7"],
                "loadBalancerSourceRanges": ["10.251.0.0/24"], "ports": [{"name": "http", "port": 80, "nodePort": 30054}]}),
                json!({"loadBalancer": {"ingress": [{"ip": "192.168.200.10"}]}}),
            ),
            service(
                "default",
                "empty",
                json!({"type": "LoadBalancer", "clusterIP": "10.96.0.55",
                "ports": [{"name": "http", "port": 80, "nodePort": 30055}]}),
                json!({"loadBalancer": {"ingress": [{"ip": "192.168.200.11"}]}}),
            ),
            service(
                "kube-system",
                "dns",
                json!({"clusterIP": "10.96.0.56", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "sctp", "port": 9999, "protocol": "SCTP"}]}),
                json!({}),
            ),
        ],
        endpoint_slices: vec![
            slice(
                "default",
                "web",
                http.clone(),
                &[
                    ("10.244.1.2", true, "node-a"),
                    ("10.244.1.3", true, "node-b"),
                    ("10.244.1.4", true, "node-b"),
                    ("10.244.1.5", false, "node-b"),
                ],
            ),
            slice("default", "many", http.clone(), &many),
            slice(
                "default",
                "local",
                http.clone(),
                &[
                    ("10.244.2.2", true, "node-a"),
                    ("10.244.2.3", true, "node-b"),
                ],
            ),
            slice(
                "default",
                "remote",
                http.clone(),
                &[("10.244.3.3", true, "node-b")],
            ),
            slice("default", "lb", http, &[("10.244.4.4", true, "node-b")]),
            slice(
                "kube-system",
                "dns",
                json!([{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "sctp", "port": 9999, "protocol": "SCTP"}]),
                &[("10.244.5.5", true, "node-b")],
            ),
        ],
    }
}

async fn saved(iptables: &Iptables) -> (SavedTable, SavedTable) {
    (
        iptables.save(TableName::Nat).await.unwrap(),
        iptables.save(TableName::Filter).await.unwrap(),
    )
}

/// Panics with the lines that differ between the kernel and the render.
fn assert_in_kernel(rendered: &Rendered, nat: &SavedTable, filter: &SavedTable) {
    for (name, table, saved) in [
        ("nat", rendered.nat(), nat),
        ("filter", rendered.filter(), filter),
    ] {
        if saved.matches(table) {
            continue;
        }
        let mut diff = String::new();
        for chain in table.chains() {
            let want = table.rules_of(chain).unwrap_or_default();
            let have = saved
                .chains
                .get(chain)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for line in want.iter().filter(|l| !have.contains(l)) {
                diff.push_str(&format!("- {line}\n"));
            }
            for line in have.iter().filter(|l| !want.contains(l)) {
                diff.push_str(&format!("+ {line}\n"));
            }
        }
        for chain in saved.chains.keys().filter(|c| !table.has_chain(c)) {
            diff.push_str(&format!("+ chain {chain}\n"));
        }
        panic!("{name} table differs from the render (- rendered, + kernel):\n{diff}");
    }
}

fn save_text(netns: &Netns, save: &str) -> String {
    let output = netns.exec(&[save]).unwrap();
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn apply_round_trips_resyncs_in_place_and_cleans_up() {
    require_root!();
    round_trip("iptables", "iptables-save", "iptables-restore").await;
}

#[tokio::test]
async fn apply_round_trips_with_legacy_iptables_too() {
    require_root!();
    let probe = Netns::create("keelson-test-probe").unwrap();
    if !probe
        .exec(&["iptables-legacy", "-t", "nat", "-S"])
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped: iptables-legacy does not work here");
        return;
    }
    drop(probe);
    round_trip(
        "iptables-legacy",
        "iptables-legacy-save",
        "iptables-legacy-restore",
    )
    .await;
}

async fn round_trip(binary: &str, save: &str, restore: &str) {
    let netns = Netns::create("keelson-test").unwrap();
    let iptables = netns.iptables().with_binaries(binary, save, restore);
    // A chain and a rule that are not the proxy's, which must survive.
    for args in [
        &[binary, "-t", "nat", "-N", "OTHER"][..],
        &[binary, "-t", "nat", "-A", "OTHER", "-j", "RETURN"],
        &[binary, "-t", "nat", "-A", "PREROUTING", "-j", "OTHER"],
    ] {
        assert!(netns.exec(args).unwrap().status.success(), "{args:?}");
    }

    let first = render(&everything());
    let applied = iptables.apply(&first).await.unwrap();
    assert!(applied.restored);
    assert_eq!(applied.inserted_jumps, JUMPS.len());
    let (nat, filter) = saved(&iptables).await;
    // What the kernel holds is, line for line, what was rendered.
    assert_in_kernel(&first, &nat, &filter);
    assert_eq!(
        nat.jumps.len(),
        3,
        "PREROUTING, OUTPUT, POSTROUTING: {:?}",
        nat.jumps
    );
    assert_eq!(filter.jumps.len(), JUMPS.len() - 3);

    // A full resync of the same render changes nothing.
    let again = iptables.apply(&first).await.unwrap();
    assert!(!again.restored, "the kernel already holds it");
    assert_eq!(again.inserted_jumps, 0);

    // A deleted jump is put back by the next full sync.
    assert!(
        netns
            .exec(&[
                binary,
                "-t",
                "nat",
                "-D",
                "PREROUTING",
                "-m",
                "comment",
                "--comment",
                "keelson service portals",
                "-j",
                "KEELSON-SERVICES"
            ])
            .unwrap()
            .status
            .success()
    );
    assert_eq!(iptables.apply(&first).await.unwrap().inserted_jumps, 1);

    // A removed service's chains go with an incremental sync.
    let mut fewer = everything();
    fewer
        .services
        .retain(|s| s.metadata.name.as_deref() != Some("web"));
    let second = render(&fewer);
    let gone: Vec<String> = first
        .nat()
        .chains()
        .filter(|c| !second.nat().has_chain(c))
        .map(str::to_owned)
        .collect();
    assert_eq!(gone.len(), 4, "SVC and three SEPs: {gone:?}");
    let applied = iptables.apply_changes(&second, &first).await.unwrap();
    assert_eq!(applied.deleted_chains, 4);
    let (nat, filter) = saved(&iptables).await;
    assert_in_kernel(&second, &nat, &filter);
    assert!(gone.iter().all(|c| !nat.chains.contains_key(c)));

    // Chains left by an earlier run are found and deleted by a full sync.
    iptables
        .restore("*nat\n:KEELSON-SVC-LEFTOVER0000000 - [0:0]\n-A KEELSON-SVC-LEFTOVER0000000 -j RETURN\nCOMMIT\n")
        .await
        .unwrap();
    let applied = iptables.apply(&second).await.unwrap();
    assert!(applied.restored);
    assert_eq!(applied.deleted_chains, 1);
    let (nat, filter) = saved(&iptables).await;
    assert_in_kernel(&second, &nat, &filter);

    // Payloads touching other chains are refused before iptables sees them.
    let refused = iptables
        .restore("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")
        .await;
    assert!(
        matches!(refused, Err(IptablesError::Refused { line: 2, .. })),
        "{refused:?}"
    );
    // A payload iptables rejects names its line.
    let rejected = iptables
        .restore("*nat\n:KEELSON-X - [0:0]\n-A KEELSON-X -j KEELSON-NOWHERE\nCOMMIT\n")
        .await;
    match rejected {
        // nf_tables fails at COMMIT (line 4), legacy at the rule (line 3).
        Err(IptablesError::Rejected { line, text, .. }) => match line {
            3 => assert_eq!(text, "-A KEELSON-X -j KEELSON-NOWHERE"),
            4 => assert_eq!(text, "COMMIT"),
            _ => panic!("line {line}: {text}"),
        },
        other => panic!("expected a rejected line, got {other:?}"),
    }

    let cleaned = iptables.cleanup().await.unwrap();
    assert_eq!(cleaned.deleted_jumps, JUMPS.len());
    let text = save_text(&netns, save);
    assert!(!text.contains("KEELSON"), "left behind:\n{text}");
    assert!(
        text.contains("-A PREROUTING -j OTHER"),
        "other rules stay:\n{text}"
    );
    assert!(text.contains("-A OTHER -j RETURN"));
    // Cleaning up twice is fine.
    assert_eq!(iptables.cleanup().await.unwrap().deleted_chains, 0);
}

/// A process in a namespace, killed when dropped.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(netns: &Netns, args: &[&str]) {
    let output = netns.exec(args).unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Connects from `netns` to `ip:port`; what the server said, or the error.
fn connect(netns: &Netns, ip: &str, port: u16) -> Result<String, String> {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns.name(),
            "busybox",
            "nc",
            "-w",
            "2",
            ip,
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() && !stdout.is_empty() {
        Ok(stdout)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// Retries `connect` until it answers (the listener may still be starting).
fn connect_eventually(netns: &Netns, ip: &str, port: u16) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connect(netns, ip, port) {
            Ok(answer) => return Ok(answer),
            Err(error) if Instant::now() > deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[tokio::test]
async fn service_traffic_reaches_a_backend_in_another_namespace() {
    require_root!();
    // Node A runs the proxy; B is a backend "pod" at 10.251.0.2:8080.
    let a = Netns::create("keelson-test-a").unwrap();
    let b = Netns::create("keelson-test-b").unwrap();
    run(
        &a,
        &[
            "ip",
            "link",
            "add",
            "veth-a",
            "type",
            "veth",
            "peer",
            "name",
            "veth-b",
            "netns",
            b.name(),
        ],
    );
    run(&a, &["ip", "addr", "add", "10.251.0.1/24", "dev", "veth-a"]);
    run(&a, &["ip", "link", "set", "veth-a", "up"]);
    run(&b, &["ip", "addr", "add", "10.251.0.2/24", "dev", "veth-b"]);
    run(&b, &["ip", "link", "set", "veth-b", "up"]);
    // The service range is routed out of A's only link (inside A only).
    run(&a, &["ip", "route", "add", "10.96.0.0/16", "dev", "veth-a"]);
    let _listener = Background(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                b.name(),
                "busybox",
                "nc",
                "-ll",
                "-p",
                "8080",
                "-e",
                "echo",
                "backend-b",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert_eq!(
        connect_eventually(&a, "10.251.0.2", 8080).as_deref(),
        Ok("backend-b"),
        "direct"
    );

    let input = ProxyInput {
        node: node(),
        services: vec![
            service(
                "default",
                "web",
                json!({"type": "NodePort", "clusterIP": "10.96.0.100",
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
                json!({}),
            ),
            service(
                "default",
                "empty",
                json!({"clusterIP": "10.96.0.101", "ports": [{"name": "http", "port": 80}]}),
                json!({}),
            ),
        ],
        endpoint_slices: vec![slice(
            "default",
            "web",
            json!([{"name": "http", "port": 8080}]),
            &[("10.251.0.2", true, "node-b")],
        )],
    };
    a.iptables().apply(&render(&input)).await.unwrap();

    assert_eq!(
        connect_eventually(&a, "10.96.0.100", 80).as_deref(),
        Ok("backend-b"),
        "cluster IP"
    );
    assert_eq!(
        connect_eventually(&a, "10.251.0.1", 30080).as_deref(),
        Ok("backend-b"),
        "node port"
    );
    let started = Instant::now();
    let refused = connect(&a, "10.96.0.101", 80);
    assert!(
        matches!(&refused, Err(e) if e.contains("refused")),
        "a service without endpoints is rejected, not left to time out: {refused:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    a.iptables().cleanup().await.unwrap();
    assert!(
        connect(&a, "10.96.0.100", 80).is_err(),
        "no rules, no service"
    );
}

/// `cargo test -p keelson-netagent --test proxy_netns -- --ignored --nocapture`
#[tokio::test]
#[ignore = "a benchmark: 1,000 services × 10 endpoints, a few seconds"]
async fn benchmark_1000_services_with_10_endpoints() {
    require_root!();
    let netns = Netns::create("keelson-bench").unwrap();
    let report = benchmark(Some(&netns.iptables()), 1000, 10).await.unwrap();
    println!("{report:#?}");
    assert!(!save_text(&netns, "iptables-save").contains("KEELSON"));
}
