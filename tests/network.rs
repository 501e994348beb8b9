//! Pod networking on a two-node cluster on this machine (as root, as CI
//! runs): each node a network namespace of its own on a bridge the test
//! makes (see `common::netns`), pods wired by the CNI plugins, routed
//! between nodes, and given the cluster DNS.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::time::Duration;

use common::cluster::{Cluster, Member};
use common::netns::{Network, in_netns};
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

/// A pod on `node` serving its own name over HTTP on port 8080.
fn web_pod(name: &str, node: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "web", "image": IMAGE,
                "command": ["sh", "-c", "busybox mkdir -p /www && hostname > /www/index.html && exec busybox httpd -f -p 8080 -h /www"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}]}})
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

#[test]
fn pods_reach_each_other_across_nodes() {
    let mut network = Network::create(2);
    let cluster_cidr = network.cluster_cidr();
    let service_cidr = network.service_cidr();
    let plane = Cluster::start_control_plane_on(
        &network.gateway.clone(),
        &[
            "--cluster-cidr",
            &cluster_cidr,
            "--service-cluster-ip-range",
            &service_cidr,
        ],
    );
    let m0 = plane.member(0);
    network.start_agent(0, &m0.kubeconfig(), &[]);
    network.start_agent(1, &m0.kubeconfig(), &[]);
    wait_until(CONVERGE, "both nodes to be Ready", || {
        let nodes = m0.kubectl_ok(&["get", "nodes"]);
        nodes.lines().filter(|l| l.contains(" Ready ")).count() == 2
    });
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
        )) && routes.contains(&format!("blackhole {cluster_cidr} proto 242")),
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
