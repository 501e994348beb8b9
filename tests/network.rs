//! Pod networking on a two-node cluster on this machine (as root, as CI
//! runs): each node a network namespace of its own on a bridge the test
//! makes (see `common::netns`), pods wired by the CNI plugins, routed
//! between nodes, and given the cluster DNS.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::time::Duration;

use common::cluster::{Cluster, Member};
use common::netns::{Network, get_from_host, in_netns};
use common::wait_until;
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(60);
const IMAGE: &str = "keelson.test/busybox:1";

/// `kubectl apply` of a JSON manifest, through stdin.
fn apply(member: &Member, manifest: &serde_json::Value) {
    use std::io::Write;
    let mut child = member
        .kubectl_command(&["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl apply");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(manifest.to_string().as_bytes())
        .expect("write the manifest");
    let output = child.wait_with_output().expect("kubectl apply");
    assert!(output.status.success(), "{output:?}");
}

/// A pod on `node` serving its own name over HTTP on port 8080; ready
/// while /www/ready exists.
fn web_pod(name: &str, node: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "web", "image": IMAGE,
                "command": ["sh", "-c", "busybox mkdir -p /www && hostname > /www/index.html && echo ok > /www/ready && exec busybox httpd -f -p 8080 -h /www"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1}}]}})
}

fn pod_ip(member: &Member, pod: &str) -> String {
    member.kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"])
}

fn ready(member: &Member, pod: &str) -> bool {
    member.kubectl_ok(&[
        "get",
        "pod",
        pod,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]) == "True"
}

/// An HTTP GET of `/` at `host:port` from inside `pod` (busybox `nc`:
/// Debian's static busybox `wget` crashes): the body, or why not.
fn fetch(member: &Member, pod: &str, host: &str, port: u16) -> Result<String, String> {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {host} {port}");
    let output = member.kubectl(&["exec", pod, "--", "sh", "-c", &script]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if output.status.success() && head.starts_with("HTTP/1.") => {
            Ok(body.to_owned())
        }
        _ => Err(format!("{text}{}", String::from_utf8_lossy(&output.stderr))),
    }
}

/// Two nodes, a and b, each in its own namespace, and a control plane
/// whose API they reach on the bridge; both nodes Ready.
fn two_nodes() -> (Network, Cluster) {
    let mut network = Network::create(2);
    let (cluster_cidr, service_cidr) = (network.cluster_cidr(), network.service_cidr());
    let lb_range = network.lb_range();
    let plane = Cluster::start_control_plane_on(
        &network.gateway.clone(),
        &[
            "--cluster-cidr",
            &cluster_cidr,
            "--service-cluster-ip-range",
            &service_cidr,
            "--load-balancer-ip-range",
            &lb_range,
        ],
    );
    let kubeconfig = plane.member(0).kubeconfig();
    network.start_agent(0, &kubeconfig, &[]);
    network.start_agent(1, &kubeconfig, &[]);
    wait_until(CONVERGE, "both nodes to be Ready", || {
        let nodes = plane.member(0).kubectl_ok(&["get", "nodes"]);
        nodes.lines().filter(|l| l.contains(" Ready ")).count() == 2
    });
    (network, plane)
}

#[test]
fn pods_reach_each_other_across_nodes() {
    let (network, plane) = two_nodes();
    let m0 = plane.member(0);
    apply(m0, &web_pod("web-a", "a", json!({"app": "web"})));
    apply(m0, &web_pod("web-b", "b", json!({"app": "web"})));
    wait_until(CONVERGE, "both pods to be ready", || {
        ready(m0, "web-a") && ready(m0, "web-b")
    });

    // Each pod has an address on its node's pod CIDR.
    for (pod, node) in [("web-a", "a"), ("web-b", "b")] {
        let cidr = m0.kubectl_ok(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"]);
        let ip = pod_ip(m0, pod);
        let prefix = cidr.rsplit_once('.').expect("a /24").0;
        assert!(
            ip.starts_with(&format!("{prefix}.")),
            "{pod}: {ip} in {cidr}"
        );
    }
    // Across nodes, by pod IP.
    let b = pod_ip(m0, "web-b");
    assert_eq!(fetch(m0, "web-a", &b, 8080), Ok("web-b\n".into()));
    let a = pod_ip(m0, "web-a");
    assert_eq!(fetch(m0, "web-b", &a, 8080), Ok("web-a\n".into()));

    // The cluster DNS, Kubernetes' search path and the pod's own name.
    let resolv = m0.kubectl_ok(&["exec", "web-a", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {}\n", network.cluster_dns()))
            && resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && resolv.contains("options ndots:5"),
        "{resolv}"
    );
    let hosts = m0.kubectl_ok(&["exec", "web-a", "--", "cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{a}\tweb-a")), "{hosts}");

    // Node a routes b's pods via b; the rest of the range is a blackhole.
    let routes = in_netns(&network.nodes[0].netns, &["ip", "route"]).expect("routes");
    let b_cidr = m0.kubectl_ok(&["get", "node", "b", "-o", "jsonpath={.spec.podCIDR}"]);
    assert!(
        routes.contains(&format!(
            "{b_cidr} via {} dev eth0 proto 242",
            network.nodes[1].ip
        )) && routes.contains(&format!("blackhole {} proto 242", network.cluster_cidr())),
        "{routes}"
    );

    // A deleted pod gives its address back (CNI DEL ran).
    m0.kubectl_ok(&["delete", "pod", "web-b", "--timeout=30s"]);
    wait_until(CONVERGE, "b's address to be released", || {
        let dir = network.nodes[1].data.path().join("cni/keelson");
        std::fs::read_dir(&dir)
            .map(|d| !d.flatten().any(|e| e.file_name().to_string_lossy() == b))
            .unwrap_or(true)
    });
}

/// Runs `script` in `pod` with `sh -c`: stdout, or the failure.
fn sh(member: &Member, pod: &str, script: &str) -> Result<String, String> {
    let output = member.kubectl(&["exec", pod, "--", "sh", "-c", script]);
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The hosts that answered `count` GETs of `target` (`HOST PORT`) from `pod`.
fn answers(member: &Member, pod: &str, target: &str, count: u32) -> Vec<String> {
    let script = format!(
        "for i in $(busybox seq {count}); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 {target} | busybox tail -n 1; done"
    );
    sh(member, pod, &script)
        .unwrap_or_else(|e| panic!("{e}"))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What `busybox nslookup` says of `name` in `pod` (it fails when any
/// name of the search path is missing, even if another was found).
fn lookup(member: &Member, pod: &str, name: &str) -> String {
    sh(member, pod, &format!("busybox nslookup {name} 2>&1")).unwrap_or_else(|e| e)
}

#[test]
fn services_balance_resolve_and_survive_an_agent_restart() {
    let (mut network, plane) = two_nodes();
    let m0 = plane.member(0);
    // Three replicas over the two nodes, and a client pod.
    for (name, node) in [("web-1", "a"), ("web-2", "b"), ("web-3", "b")] {
        apply(m0, &web_pod(name, node, json!({"app": "web"})));
    }
    apply(
        m0,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {"nodeName": "a", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "3600"]}]}}),
    );
    apply(
        m0,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "type": "NodePort",
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    );
    apply(
        m0,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-headless"},
        "spec": {"selector": {"app": "web"}, "clusterIP": "None",
            "ports": [{"name": "http", "port": 8080}]}}),
    );
    apply(
        m0,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "elsewhere"},
        "spec": {"type": "ExternalName", "externalName": "db.example.org"}}),
    );
    wait_until(CONVERGE, "the replicas and the client to be ready", || {
        ["web-1", "web-2", "web-3", "client"]
            .iter()
            .all(|p| ready(m0, p))
    });
    let vip = m0.kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);

    // By ClusterIP: every replica answers.
    wait_until(CONVERGE, "every replica to answer on the ClusterIP", || {
        let hosts = answers(m0, "client", &format!("{vip} 80"), 60);
        ["web-1", "web-2", "web-3"]
            .iter()
            .all(|h| hosts.iter().any(|a| a == h))
    });
    let hosts = answers(m0, "client", &format!("{vip} 80"), 200);
    assert_eq!(hosts.len(), 200, "every request answered");
    for replica in ["web-1", "web-2", "web-3"] {
        assert!(
            hosts.iter().any(|h| h == replica),
            "{replica} never answered"
        );
    }
    // By name, through the search path (glibc's resolver in busybox's nc
    // honours ndots:5; busybox's nslookup only searches dotless names).
    for name in ["web", "web.default.svc.cluster.local"] {
        let found = lookup(m0, "client", name);
        assert!(
            found.contains(&format!("Address: {vip}")),
            "{name}: {found}"
        );
    }
    for name in [
        "web",
        "web.default",
        "web.default.svc",
        "web.default.svc.cluster.local",
    ] {
        let hosts = answers(m0, "client", &format!("{name} 80"), 3);
        assert_eq!(hosts.len(), 3, "{name}: {hosts:?}");
    }
    // A headless Service gives every ready pod; SRV for the named port.
    let headless = lookup(m0, "client", "web-headless.default.svc.cluster.local");
    for pod in ["web-1", "web-2", "web-3"] {
        assert!(headless.contains(&pod_ip(m0, pod)), "{pod}: {headless}");
    }
    let srv = lookup(
        m0,
        "client",
        "-type=SRV _http._tcp.web.default.svc.cluster.local",
    );
    assert!(
        srv.contains("web.default.svc.cluster.local") && srv.contains(" 80 "),
        "{srv}"
    );
    let cname = lookup(m0, "client", "elsewhere.default.svc.cluster.local");
    assert!(cname.contains("db.example.org"), "{cname}");
    let missing = lookup(m0, "client", "nothing.default.svc.cluster.local");
    assert!(
        missing.contains("NXDOMAIN") && missing.matches("Address:").count() == 1,
        "only the server's address: {missing}"
    );

    // NodePort, from the host, on both nodes' addresses.
    let node_port = m0.kubectl_ok(&[
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    for node in &network.nodes {
        let page = get_from_host(&format!("{}:{node_port}", node.ip))
            .unwrap_or_else(|e| panic!("NodePort on {}: {e}", node.name));
        assert!(page.starts_with("web-"), "{page}");
    }

    // A LoadBalancer gets an address of the pool, which answers from the
    // host while `keelson tunnel` runs.
    apply(
        m0,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-lb"},
        "spec": {"selector": {"app": "web"}, "type": "LoadBalancer",
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    );
    let mut external = String::new();
    wait_until(CONVERGE, "web-lb to get an external address", || {
        let row = m0.kubectl_ok(&["get", "svc", "web-lb", "--no-headers"]);
        external = row.split_whitespace().nth(3).unwrap_or_default().to_owned();
        external != "<pending>" && !external.is_empty()
    });
    let prefix = network
        .lb_range()
        .rsplit_once(".0/")
        .expect("a /24")
        .0
        .to_owned();
    assert!(external.starts_with(&format!("{prefix}.")), "{external}");
    let mut tunnel_command = std::process::Command::new(env!("CARGO_BIN_EXE_keelson"));
    tunnel_command.args([
        "tunnel",
        "--via",
        &network.nodes[0].ip,
        "--range",
        &network.lb_range(),
    ]);
    let mut tunnel = common::spawn_background(tunnel_command, "keelson tunnel".into());
    wait_until(
        CONVERGE,
        "the LoadBalancer address to answer from the host",
        || get_from_host(&format!("{external}:80")).is_ok_and(|page| page.starts_with("web-")),
    );
    tunnel.terminate();
    let (status, _) = tunnel.wait_for_exit();
    assert!(status.success(), "{status}");
    let route = std::process::Command::new("ip")
        .args(["route", "show", &network.lb_range()])
        .output()
        .expect("ip route");
    assert!(route.stdout.is_empty(), "the tunnel's route is gone");

    let netns_a = network.nodes[0].netns.clone();
    let rules = |netns: &str| {
        let saved = in_netns(netns, &["iptables-save"]).expect("iptables-save");
        let mut lines: Vec<String> = saved
            .lines()
            .filter(|l| l.contains("KEELSON-") && !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
            .collect();
        lines.sort();
        lines
    };

    // A replica whose readiness fails leaves the rotation (and still
    // answers, to anyone who reaches it): every Service over it drops it
    // from both nodes' rules.
    let unready = format!("--to-destination {}:", pod_ip(m0, "web-3"));
    let failed_at = std::time::Instant::now();
    sh(m0, "web-3", "busybox rm /www/ready").expect("rm");
    wait_until(CONVERGE, "web-3 to leave every node's rules", || {
        network
            .nodes
            .iter()
            .all(|node| !rules(&node.netns).iter().any(|l| l.contains(&unready)))
    });
    // A figure for the record, not a bound: the probe runs every second.
    eprintln!(
        "web-3 left the rotation {} ms after its readiness file went",
        failed_at.elapsed().as_millis()
    );
    assert!(!ready(m0, "web-3"), "web-3 reported unready");
    let hosts = answers(m0, "client", &format!("{vip} 80"), 60);
    assert!(
        hosts.len() == 60 && hosts.iter().all(|h| h == "web-1" || h == "web-2"),
        "{hosts:?}"
    );

    // A restarted agent leaves traffic flowing and its rules as they were.
    let before = rules(&netns_a);
    assert!(
        before.iter().any(|l| l.contains(&format!("-d {vip}/32"))),
        "{before:?}"
    );
    network.kill_agent(0);
    // With no agent on node a (so no exec there), from its own namespace.
    let from_node_a = || {
        in_netns(
            &netns_a,
            &[
                "sh",
                "-c",
                &format!(
                    "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 {vip} 80 | busybox tail -n 1"
                ),
            ],
        )
    };
    for _ in 0..10 {
        let page = from_node_a().expect("the Service answers while the agent is away");
        assert!(page == "web-1\n" || page == "web-2\n", "{page}");
    }
    network.start_agent(0, &m0.kubeconfig(), &[]);
    wait_until(CONVERGE, "the restarted agent's node to be Ready", || {
        m0.kubectl_ok(&["get", "node", "a"]).contains(" Ready ")
    });
    assert_eq!(answers(m0, "client", &format!("{vip} 80"), 10).len(), 10);
    // The restarted proxy renders the same rules (given time for the
    // controllers' last writes, if any, to reach it).
    let mut after = Vec::new();
    let same = common::holds_within(CONVERGE, || {
        after = rules(&netns_a);
        after == before
    });
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|l| !b.contains(l)).cloned().collect()
    };
    assert!(
        same,
        "the rules differ after the restart;\nonly before: {:#?}\nonly after: {:#?}",
        only(&before, &after),
        only(&after, &before)
    );

    // A deleted Service takes its rules with it.
    m0.kubectl_ok(&["delete", "service", "web"]);
    wait_until(CONVERGE, "the Service's rules to go", || {
        !rules(&netns_a)
            .iter()
            .any(|l| l.contains(&format!("-d {vip}/32")))
    });
}
