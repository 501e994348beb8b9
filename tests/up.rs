//! `keelson up` end to end, as root (as CI runs): a profile with three
//! members and two nodes, each in a namespace of its own, driven by the
//! tutorial's commands, and nothing of it left after `keelson delete`.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::get_from_host;
use common::profile::{Profile, ok};
use common::wait_until;

const CONVERGE: Duration = Duration::from_secs(90);

/// Pods of the webserver Deployment that are Ready, with their nodes.
fn ready_webservers(profile: &Profile) -> Vec<(String, String)> {
    let Some(text) = profile.try_kubectl(&[
        "get",
        "pods",
        "-l",
        "app=webserver",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.conditions[?(@.type==\"Ready\")].status} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [name, node, "True"] => Some((name.to_string(), node.to_string())),
                _ => None,
            }
        })
        .collect()
}

/// What a profile can leave on the machine, for the check after delete.
fn leftovers(profile: &Profile, bridge: &str) -> Vec<String> {
    let mut found = Vec::new();
    let prefix = format!("keelson-{}-", profile.name);
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            found.push(format!("namespace {name}"));
        }
    }
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    let veth = format!("kv{}-", bridge.trim_start_matches("keelson-br"));
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        if line.contains(&format!(" {bridge}:")) || line.contains(&format!(" {veth}")) {
            found.push(format!("interface {line}"));
        }
    }
    for pid in common::netns::processes_under(profile.home.path()) {
        found.push(format!("process {pid}"));
    }
    for mount in common::netns::mounts_under(profile.home.path()) {
        found.push(format!("mount {}", mount.display()));
    }
    if profile.dir().exists() {
        found.push(format!("directory {}", profile.dir().display()));
    }
    found
}

fn routes_to(range_prefix: &str) -> Vec<String> {
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .expect("ip route");
    String::from_utf8_lossy(&routes.stdout)
        .lines()
        .filter(|l| l.contains(range_prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_local_cluster_runs_the_tutorial_and_leaves_nothing() {
    let profile = Profile::new();
    let name = profile.name.clone();
    let started = Instant::now();
    // Short failure detection, so a stopped node's pods move within the test.
    let up = profile.keelson(&[
        "up",
        "--nodes",
        "2",
        "--server-flag=--node-monitor-grace-period=6s",
        "--server-flag=--default-unreachable-toleration-seconds=2",
        "--server-flag=--default-not-ready-toleration-seconds=2",
        "--agent-flag=--node-lease-renew-interval=1s",
    ]);
    eprintln!(
        "keelson up --nodes 2: {} ms\n{up}",
        started.elapsed().as_millis()
    );
    assert!(up.contains("Nodes Ready: 2/2"), "{up}");
    let profile_json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(profile.dir().join("profile.json")).expect("profile.json"),
    )
    .expect("a profile");
    let index = profile_json["index"].as_u64().expect("an index");
    let bridge = format!("keelson-br{index}");

    // minikube profile list: one row, running, two nodes, the current context.
    let list = ok(
        "keelson profile list",
        profile
            .command(env!("CARGO_BIN_EXE_keelson"), &["profile", "list"])
            .output(),
    );
    let row = list
        .lines()
        .find(|l| l.contains(&format!("| {name} ")))
        .unwrap_or_else(|| panic!("{list}"));
    for cell in ["netns", "libcontainer", "8443", "Running", " 2 ", "*"] {
        assert!(row.contains(cell), "{cell:?} in {row}");
    }
    let nodes = profile.kubectl(&["get", "nodes", "--no-headers"]);
    for node in [name.clone(), format!("{name}-m02")] {
        assert!(
            nodes
                .lines()
                .any(|l| l.starts_with(&format!("{node} ")) && l.contains(" Ready ")),
            "{nodes}"
        );
    }

    // Any one member may die: kubectl goes on through the endpoint.
    let killed = profile.pid("server-1");
    assert!(
        Command::new("kill")
            .args(["-9", &killed.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    profile.kubectl(&["create", "configmap", "kept", "--from-literal=answer=42"]);
    let status = profile
        .keelson_command(&["status"])
        .output()
        .expect("status");
    assert_eq!(
        status.status.code(),
        Some(7),
        "a member is down: {status:?}"
    );
    let start = profile.keelson(&["start"]);
    assert!(start.contains("is running"), "{start}");
    assert_ne!(profile.pid("server-1"), killed, "server-1 started again");
    profile.keelson(&["status"]);

    // The tutorial's bank scenario: its images built offline and loaded into
    // every node, then `kubectl apply -f deploy` from the repository.
    let repository = Path::new(env!("CARGO_MANIFEST_DIR"));
    let applied = profile.apply_bank();
    for object in [
        "deployment.apps/webserver-deployment",
        "service/webserver-service",
        "statefulset.apps/mysql",
        "service/mysql-service",
    ] {
        assert!(applied.contains(object), "{object}: {applied}");
    }
    wait_until(
        Duration::from_secs(180),
        "the database and two webservers to be ready",
        || ready_webservers(&profile).len() == 2,
    );
    let deployments = profile.kubectl(&["get", "deployment"]);
    assert!(
        deployments.lines().any(|l| l
            .split_whitespace()
            .take(2)
            .eq(["webserver-deployment", "2/2"])),
        "{deployments}"
    );
    let described = profile.kubectl(&["describe", "deployment", "webserver-deployment"]);
    assert!(
        described.contains("2 desired | 2 updated | 2 total | 2 available"),
        "{described}"
    );
    let node = profile.kubectl(&["describe", "node", &name]);
    assert!(node.contains("Non-terminated Pods:"), "{node}");
    let pods = profile.kubectl(&["get", "pods"]);
    assert!(
        pods.contains("mysql-0") && pods.contains("Running"),
        "{pods}"
    );
    let (pod, _) = ready_webservers(&profile).remove(0);
    wait_until(CONVERGE, "the webserver's log", || {
        profile
            .try_kubectl(&["logs", &pod])
            .is_some_and(|l| l.contains("GET /ready"))
    });
    let said = profile.kubectl(&[
        "exec",
        "-ti",
        &pod,
        "--",
        "sh",
        "-c",
        "echo from $(hostname)",
    ]);
    assert_eq!(said.trim(), format!("from {pod}"));
    let services = profile.kubectl(&["get", "service"]);
    let lb = services
        .lines()
        .find(|l| l.starts_with("webserver-service "))
        .unwrap_or_else(|| panic!("{services}"));
    assert!(
        lb.contains("LoadBalancer") && lb.contains("<pending>"),
        "{lb}"
    );
    let headless = services
        .lines()
        .find(|l| l.starts_with("mysql-service "))
        .unwrap_or_else(|| panic!("{services}"));
    assert!(headless.contains(" None "), "{headless}");
    assert!(profile.kubectl(&["events"]).contains("Scheduled"));

    // The tunnel gives the LoadBalancer an address that answers here.
    let mut tunnel = common::spawn_background(
        profile.keelson_command(&["tunnel"]),
        "keelson tunnel".into(),
    );
    let mut external = String::new();
    wait_until(CONVERGE, "an external address", || {
        external = profile
            .try_kubectl(&[
                "get",
                "service",
                "webserver-service",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ])
            .unwrap_or_default();
        !external.is_empty()
    });
    wait_until(CONVERGE, "the external address to answer", || {
        get_from_host(&format!("{external}:80"))
            .is_ok_and(|page| page.starts_with("Keelson bank, served by webserver-deployment-"))
    });

    // Scale out, then switch off a node that runs a replica: its pods are
    // replaced on the other node and the LoadBalancer keeps answering.
    profile.kubectl(&[
        "scale",
        "deployment",
        "webserver-deployment",
        "--replicas=3",
    ]);
    wait_until(CONVERGE, "three webservers to be ready", || {
        ready_webservers(&profile).len() == 3
    });
    // A node with a webserver but not the database: the database's volume
    // is on its node, so it could not move (as with a local volume).
    let database = profile
        .try_kubectl(&["get", "pod", "mysql-0", "-o", "jsonpath={.spec.nodeName}"])
        .unwrap_or_default();
    let victim = ready_webservers(&profile)
        .into_iter()
        .map(|(_, node)| node)
        .find(|node| *node != database)
        .unwrap_or_else(|| panic!("no webserver outside the database's node {database}"));
    profile.keelson(&["node", "stop", &victim]);
    wait_until(
        Duration::from_secs(120),
        "three webservers ready on the other node",
        || {
            let ready = ready_webservers(&profile);
            ready.len() == 3 && ready.iter().all(|(_, node)| *node != victim)
        },
    );
    wait_until(CONVERGE, "the external address to answer again", || {
        get_from_host(&format!("{external}:80")).is_ok_and(|page| page.contains("alice"))
    });
    profile.keelson(&["node", "start", &victim]);
    tunnel.terminate();
    let (exit, _) = tunnel.wait_for_exit();
    assert!(exit.success(), "{exit}");
    let services = profile.kubectl(&["get", "service", "webserver-service"]);
    assert!(
        services.contains("<pending>"),
        "the address is given back: {services}"
    );

    // Stop and start: the objects come back, and the workload runs again.
    profile.keelson(&["stop"]);
    assert!(
        profile
            .keelson_command(&["status"])
            .output()
            .expect("status")
            .status
            .code()
            == Some(7)
    );
    profile.keelson(&["start"]);
    assert!(
        profile.kubectl(&["get", "configmap", "kept", "-o", "jsonpath={.data.answer}"]) == "42"
    );
    wait_until(
        Duration::from_secs(180),
        "three webservers (and so the database) ready after a restart",
        || ready_webservers(&profile).len() == 3,
    );
    // The bank's data survived on the database's volume.
    let (pod, _) = ready_webservers(&profile).remove(0);
    let page = profile.kubectl(&["exec", &pod, "--", "python3", "-c",
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/').read().decode())"]);
    assert!(page.contains("alice") && page.contains("total"), "{page}");
    profile.kubectl(&[
        "delete",
        "-f",
        repository.join("deploy").to_str().expect("UTF-8"),
    ]);

    // Delete: nothing of it is left, and its context is gone.
    profile.keelson(&["delete"]);
    let left = leftovers(&profile, &bridge);
    assert!(left.is_empty(), "left behind: {left:?}");
    let base = 38 + 4 * index;
    for range in [
        format!("10.{base}."),
        format!("10.{}.", base + 1),
        format!("10.{}.", base + 2),
        format!("192.168.{}.", 48 + index),
    ] {
        let routes = routes_to(&range);
        assert!(routes.is_empty(), "{routes:?}");
    }
    let contexts = profile.kubectl(&["config", "get-contexts", "-o", "name"]);
    assert!(!contexts.lines().any(|c| c == name), "{contexts}");
    assert!(!Path::new(&profile.dir()).exists());
}
