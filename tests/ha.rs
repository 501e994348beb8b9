//! A production-style HA cluster on "machines" that are network
//! namespaces (each its own address, data directory and processes; as
//! root, as CI runs): three members built by `--cluster-init` and two
//! `--join`s from configuration files, two agents that join with the token,
//! and kubectl through a load balancer in front of the members. Then the
//! operations of docs/operations.md, one after another:
//!
//! 1. a rolling restart of all three members while kubectl is sampled
//!    continuously, then a full outage after which the two members that
//!    joined come back without the first;
//! 2. a snapshot saved under write load, every member's data destroyed,
//!    the snapshot restored and the others joined again: every object
//!    written before the snapshot is back and the workload runs again;
//! 3. one member's data deleted and the member replaced while writes go on;
//! 4. two members destroyed, the cluster recovered from the third.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::Network;
use common::{Background, spawn_background, wait_until};
use serde_json::json;

const MEMBERS: usize = 3;
const NODES: [usize; 2] = [3, 4];
const IMAGE: &str = "keelson.test/busybox:1";
const CONVERGE: Duration = Duration::from_secs(90);
/// The longest kubectl may go without a successful request while a
/// majority of members is up (the chaos suite's bound).
const API_GAP: Duration = Duration::from_secs(8);

struct Machines {
    net: Network,
    members: Vec<Option<Background>>,
    _balancer: Background,
    balancer_address: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

impl Machines {
    fn member_ip(&self, i: usize) -> &str {
        &self.net.nodes[i].ip
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.net.nodes[i].data.path().join("server")
    }

    /// How `keelson member`, `snapshot` and `status` reach member `i`: its
    /// data directory (where it notes its client URL, and keeps the
    /// certificates its TLS needs), or its plain client URL for a release
    /// that notes nothing.
    fn member_flags(&self, i: usize) -> [String; 2] {
        let dir = self.data_dir(i);
        if dir.join("member.json").exists() {
            ["--data-dir".into(), dir.display().to_string()]
        } else {
            [
                "--endpoints".into(),
                format!("http://{}:2379", self.member_ip(i)),
            ]
        }
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// Member `i`'s configuration file: the first founds the cluster, the
    /// others join it through the first's API.
    fn config(&self, i: usize) -> PathBuf {
        let path = self.dir.path().join(format!("server-{i}.yaml"));
        let mut text = format!(
            "name: server-{i}\ndata-dir: {}\nadvertise-address: {}\ntls-san: [{}]\ncluster-cidr: {}\nservice-cluster-ip-range: {}\nnode-monitor-grace-period: 20s\n",
            self.data_dir(i).display(),
            self.member_ip(i),
            self.net.gateway,
            self.net.cluster_cidr(),
            self.net.service_cidr(),
        );
        if i == 0 {
            text.push_str("cluster-init: true\n");
        } else {
            text.push_str(&format!(
                "join: https://{}:6443\ntoken-file: {}\n",
                self.member_ip(0),
                self.token_file().display()
            ));
        }
        std::fs::write(&path, text).expect("write the member's configuration");
        path
    }

    fn start_member(&mut self, i: usize, extra: &[&str]) {
        let config = self.config(i);
        let mut args: Vec<&OsStr> =
            vec!["server".as_ref(), "--config".as_ref(), config.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        let command = self.net.keelson_in(i, &args);
        self.members[i] = Some(spawn_background(command, format!("member server-{i}")));
    }

    /// SIGTERM, as a service manager stops it, and waits for the exit.
    fn stop_member(&mut self, i: usize) {
        if let Some(mut member) = self.members[i].take() {
            member.terminate();
            let (status, _) = member.wait_for_exit();
            assert!(status.success(), "server-{i} stopped with {status}");
        }
    }

    /// kill -9, and its data gone: the machine's disk is lost.
    fn destroy_member(&mut self, i: usize) {
        drop(self.members[i].take());
        let dir = self.data_dir(i);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove the member's data");
        }
    }

    fn keelson(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_keelson"))
            .args(args)
            .output()
            .expect("run keelson")
    }

    fn keelson_ok(&self, args: &[&str]) -> String {
        let output = self.keelson(args);
        assert!(
            output.status.success(),
            "keelson {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Whether member `i` lists `voters` started voting members and no learner.
    fn has_voters(&self, i: usize, voters: usize) -> bool {
        let [flag, value] = self.member_flags(i);
        let output = self.keelson(&["member", "list", &flag, &value]);
        let text = String::from_utf8_lossy(&output.stdout);
        output.status.success()
            && text.lines().filter(|l| l.contains(" started ")).count() == voters
            && !text.contains("learner")
    }

    fn wait_for_voters(&self, i: usize, voters: usize) {
        wait_until(
            CONVERGE,
            &format!("server-{i} to list {voters} started voting members"),
            || self.has_voters(i, voters),
        );
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--request-timeout=5s")
            .args(args)
            .output()
            .expect("run kubectl")
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn ready_replicas(&self, deployment: &str) -> String {
        let output = self.kubectl(&[
            "get",
            "deployment",
            deployment,
            "-o",
            "jsonpath={.status.readyReplicas}",
        ]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn wait_for_ready_replicas(&self, deployment: &str, replicas: usize) {
        wait_until(
            CONVERGE,
            &format!("{deployment} to have {replicas} ready pods"),
            || self.ready_replicas(deployment) == replicas.to_string(),
        );
    }

    fn configmaps(&self) -> Vec<String> {
        self.kubectl_ok(&["get", "configmaps", "-o", "name"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A kubectl run over and over in the background until stopped: what was
/// acknowledged, and the longest stretch without a success.
struct Sampler {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<(Instant, String)>>>,
    thread: std::thread::JoinHandle<(Duration, usize)>,
}

impl Sampler {
    /// Creates ConfigMaps PREFIX-N (with `write`) or reads the namespace.
    fn start(kubeconfig: &Path, prefix: &str, write: bool) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let (kubeconfig, prefix) = (kubeconfig.to_owned(), prefix.to_owned());
        let thread = {
            let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                let mut last_success = Instant::now();
                let (mut longest, mut failures) = (Duration::ZERO, 0);
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let name = format!("{prefix}-{n}");
                    let mut command = Command::new("kubectl");
                    command
                        .arg("--kubeconfig")
                        .arg(&kubeconfig)
                        .arg("--request-timeout=5s");
                    if write {
                        command.args(["create", "configmap", &name, "--from-literal=n=1"]);
                    } else {
                        command.args(["get", "namespace", "default", "-o", "name"]);
                    }
                    let ok = command.output().is_ok_and(|o| o.status.success());
                    let now = Instant::now();
                    longest = longest.max(now - last_success);
                    if ok {
                        acknowledged
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((now, format!("configmap/{name}")));
                        last_success = now;
                        n += 1;
                    } else {
                        failures += 1;
                        // A create whose answer was lost may have happened.
                        n += usize::from(write);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                (longest, failures)
            })
        };
        Sampler {
            stop,
            acknowledged,
            thread,
        }
    }

    fn acknowledged_before(&self, at: Instant) -> Vec<String> {
        self.acknowledged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(when, _)| *when < at)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// Waits until `more` further requests have succeeded.
    fn wait_for_more(&self, more: usize, while_: &str) {
        let target = self.count() + more;
        wait_until(
            CONVERGE,
            &format!("{more} more successful kubectl requests while {while_}"),
            || self.count() >= target,
        );
    }

    fn count(&self) -> usize {
        self.acknowledged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Stops: the longest stretch without a success (the end included),
    /// the failures, and the successes.
    fn finish(self) -> (Duration, usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let answered = self.acknowledged.clone();
        let (gap, failures) = self.thread.join().expect("the sampler thread");
        let answered = answered.lock().unwrap_or_else(|p| p.into_inner()).len();
        (gap, failures, answered)
    }
}

/// The machines, and a balancer on the host in front of the members' APIs.
fn machines() -> Machines {
    let net = Network::create(MEMBERS + NODES.len());
    let dir = tempfile::tempdir().expect("the test's directory");
    let listener = std::net::TcpListener::bind((net.gateway.as_str(), 0)).expect("a port");
    let balancer_address = listener.local_addr().expect("address");
    drop(listener);
    let mut balancer = Command::new(env!("CARGO_BIN_EXE_keelson"));
    balancer
        .args(["endpoint", "--profile-dir"])
        .arg(dir.path())
        .args(["--listen", &balancer_address.to_string()]);
    for i in 0..MEMBERS {
        let ip = &net.nodes[i].ip;
        balancer.args(["--member", &format!("{ip}:6443={ip}:2381")]);
    }
    let balancer = spawn_background(balancer, "the load balancer".into());
    Machines {
        net,
        members: (0..MEMBERS).map(|_| None).collect(),
        _balancer: balancer,
        balancer_address,
        dir,
    }
}

impl Machines {
    /// The admin's credentials from member `i`, through the balancer.
    fn write_kubeconfig(&self, i: usize) {
        let admin =
            keelson_control::client::Kubeconfig::read(&self.data_dir(i).join("admin.kubeconfig"))
                .expect("the admin kubeconfig");
        let text = keelson_control::pki::kubeconfig(
            "ha",
            &format!("https://{}", self.balancer_address),
            &admin.ca_pem,
            "kubernetes-admin",
            &keelson_control::pki::Issued {
                cert_pem: admin.cert_pem,
                key_pem: admin.key_pem,
            },
        );
        std::fs::write(self.kubeconfig(), text).expect("write the kubeconfig");
    }

    fn wait_for_nodes(&self) {
        wait_until(CONVERGE, "both nodes Ready", || {
            let output = self.kubectl(&["get", "nodes", "--no-headers"]);
            let text = String::from_utf8_lossy(&output.stdout);
            text.lines().filter(|l| l.contains(" Ready ")).count() == NODES.len()
        });
    }
}

/// The first member, then two joins, two agents that join with the token,
/// and a balancer in front of the members' APIs for kubectl.
fn build() -> Machines {
    let mut machines = machines();
    machines.start_member(0, &[]);
    let token = machines.data_dir(0).join("token");
    wait_until(CONVERGE, "the first member's join token", || token.exists());
    std::fs::copy(&token, machines.token_file()).expect("keep the token");
    for i in 1..MEMBERS {
        machines.start_member(i, &[]);
    }
    machines.wait_for_voters(0, MEMBERS);

    machines.write_kubeconfig(0);

    let server = format!("https://{}:6443", machines.member_ip(0));
    let token_file = machines.token_file();
    for i in NODES {
        machines.net.start_agent_with(
            i,
            &[
                "--server".as_ref(),
                server.as_ref(),
                "--token-file".as_ref(),
                token_file.as_os_str(),
            ],
            &[],
        );
    }
    machines.wait_for_nodes();
    machines
}

fn deploy(machines: &Machines) {
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "web",
                    "image": IMAGE, "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"]}]}}}});
    let file = machines.dir.path().join("web.json");
    std::fs::write(&file, deployment.to_string()).expect("write the manifest");
    machines.kubectl_ok(&["apply", "-f", file.to_str().expect("utf-8 path")]);
    machines.wait_for_ready_replicas("web", 2);
}

#[test]
fn an_ha_cluster_on_three_machines_is_restarted_restored_replaced_and_recovered() {
    let mut machines = build();
    let status = machines.keelson_ok(&[
        "status",
        "--data-dir",
        machines.data_dir(0).to_str().expect("utf-8 path"),
    ]);
    assert!(status.contains("It tolerates 1 member(s) down"), "{status}");
    assert!(
        status.contains("cluster CA") && status.contains("expires"),
        "{status}"
    );
    // The store's ports speak TLS and want a certificate of the cluster CA.
    let pki = machines.data_dir(0).join("pki");
    let etcdctl = |certificates: bool| {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints=https://{}:2379",
                machines.member_ip(0)
            ))
            .arg("--command-timeout=3s");
        if certificates {
            command
                .arg(format!("--cacert={}", pki.join("ca.crt").display()))
                .arg(format!("--cert={}", pki.join("member.crt").display()))
                .arg(format!("--key={}", pki.join("member.key").display()));
        } else {
            command.arg("--insecure-skip-tls-verify");
        }
        command
            .args(["get", "/registry/namespaces/default", "--keys-only"])
            .output()
            .expect("run etcdctl")
    };
    let refused = etcdctl(false);
    assert!(
        !refused.status.success(),
        "a client without a certificate was served"
    );
    let served = etcdctl(true);
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );

    // Certificates renewed while the member runs: the new ones on disk,
    // the API answering throughout.
    let serving = machines.data_dir(0).join("pki/apiserver.crt");
    let before = std::fs::read_to_string(&serving).expect("the serving certificate");
    let rotated = machines.keelson_ok(&[
        "certs",
        "rotate",
        "--data-dir",
        machines.data_dir(0).to_str().expect("utf-8 path"),
    ]);
    assert!(rotated.contains("Rotated"), "{rotated}");
    assert_ne!(
        std::fs::read_to_string(&serving).expect("the serving certificate"),
        before
    );
    deploy(&machines);

    // 1. A rolling restart, one member at a time, kubectl sampled throughout.
    let sampler = Sampler::start(&machines.kubeconfig(), "", false);
    sampler.wait_for_more(1, "all members run");
    for i in 0..MEMBERS {
        machines.stop_member(i);
        sampler.wait_for_more(3, &format!("server-{i} is stopped"));
        machines.start_member(i, &[]);
        machines.wait_for_voters(i, MEMBERS);
        sampler.wait_for_more(3, &format!("server-{i} is back"));
    }
    let (gap, failures, reads) = sampler.finish();
    eprintln!("rolling restart: {reads} reads answered, {failures} failed, longest gap {gap:?}");
    assert!(
        gap <= API_GAP,
        "kubectl went {gap:?} without an answer during the rolling restart ({failures} failed, {reads} answered)"
    );

    // A full outage, and every member back but the one the others joined
    // through: they form a quorum and serve without it.
    for i in 0..MEMBERS {
        machines.stop_member(i);
    }
    machines.start_member(1, &[]);
    machines.start_member(2, &[]);
    machines.wait_for_voters(1, MEMBERS - 1);
    wait_until(CONVERGE, "the API without the first member", || {
        machines
            .kubectl(&["get", "deployment", "web"])
            .status
            .success()
    });
    machines.start_member(0, &[]);
    machines.wait_for_voters(0, MEMBERS);

    // 2. A snapshot under write load; every member's data destroyed; the
    //    snapshot restored on the first machine, the others joined again.
    let writer = Sampler::start(&machines.kubeconfig(), "before", true);
    wait_until(CONVERGE, "writes to be acknowledged", || {
        writer.count() >= 10
    });
    let snapshot = machines.dir.path().join("backup.db");
    let saving = Instant::now();
    let [flag, value] = machines.member_flags(1);
    let saved = machines.keelson_ok(&[
        "snapshot",
        "save",
        snapshot.to_str().expect("utf-8 path"),
        &flag,
        &value,
    ]);
    assert!(saved.contains("Snapshot saved"), "{saved}");
    wait_until(CONVERGE, "writes after the snapshot", || {
        writer.acknowledged_before(Instant::now()).len() > writer.acknowledged_before(saving).len()
    });
    let expected = writer.acknowledged_before(saving);
    eprintln!(
        "snapshot: {} writes acknowledged before it was taken",
        expected.len()
    );
    let _ = writer.finish();
    machines.keelson_ok(&["snapshot", "check", snapshot.to_str().expect("utf-8 path")]);
    for i in 0..MEMBERS {
        machines.destroy_member(i);
    }
    let restored = machines.keelson_ok(&[
        "snapshot",
        "restore",
        snapshot.to_str().expect("utf-8 path"),
        "--data-dir",
        machines.data_dir(0).to_str().expect("utf-8 path"),
        "--token-file",
        machines.token_file().to_str().expect("utf-8 path"),
    ]);
    assert!(restored.contains("Restored"), "{restored}");
    for i in 0..MEMBERS {
        machines.start_member(i, &[]);
    }
    machines.wait_for_voters(0, MEMBERS);
    wait_until(CONVERGE, "the API through the balancer", || {
        machines.kubectl(&["get", "configmaps"]).status.success()
    });
    let present = machines.configmaps();
    let lost: Vec<&String> = expected.iter().filter(|c| !present.contains(c)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} objects written before the snapshot are missing after the restore: {lost:?}",
        lost.len(),
        expected.len()
    );
    machines.wait_for_ready_replicas("web", 2);
    machines.kubectl_ok(&["scale", "deployment", "web", "--replicas=3"]);
    machines.wait_for_ready_replicas("web", 3);

    // 3. One member's disk lost and the member replaced, writes going on.
    let writer = Sampler::start(&machines.kubeconfig(), "replace", true);
    wait_until(CONVERGE, "writes to be acknowledged", || {
        writer.count() >= 5
    });
    machines.destroy_member(2);
    writer.wait_for_more(3, "server-2 is lost");
    let [flag, value] = machines.member_flags(0);
    machines.keelson_ok(&["member", "remove", "server-2", &flag, &value]);
    writer.wait_for_more(3, "server-2 is removed");
    machines.start_member(2, &[]);
    machines.wait_for_voters(0, MEMBERS);
    writer.wait_for_more(3, "server-2 is replaced");
    let (gap, failures, writes) = writer.finish();
    eprintln!(
        "member replaced: {writes} writes acknowledged, {failures} failed, longest gap {gap:?}"
    );
    assert!(
        gap <= API_GAP,
        "writes went {gap:?} without an acknowledgement while a member was replaced ({failures} failed, {writes} acknowledged)"
    );

    // 4. Two members lost for good: the cluster recovered from the third.
    let before = machines.configmaps();
    machines.destroy_member(1);
    machines.destroy_member(2);
    let lost = machines.keelson(&[
        "status",
        "--data-dir",
        machines.data_dir(0).to_str().expect("utf-8 path"),
    ]);
    let text = String::from_utf8_lossy(&lost.stdout);
    assert_eq!(lost.status.code(), Some(7), "{text}");
    assert!(text.contains("QUORUM LOST"), "{text}");
    machines.stop_member(0);
    let config = machines.config(0);
    let reset = machines.keelson_ok(&[
        "server",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--cluster-reset",
    ]);
    assert!(reset.contains("one-member cluster"), "{reset}");
    machines.start_member(0, &[]);
    machines.wait_for_voters(0, 1);
    wait_until(CONVERGE, "the API after the reset", || {
        machines.kubectl(&["get", "configmaps"]).status.success()
    });
    assert_eq!(machines.configmaps(), before, "objects after the reset");
    for i in 1..MEMBERS {
        machines.start_member(i, &[]);
    }
    machines.wait_for_voters(0, MEMBERS);
    machines.wait_for_ready_replicas("web", 3);
}

/// Member `i`'s flags in etcd's style, which every release takes.
fn founding_flags(machines: &Machines, i: usize) -> Vec<String> {
    let ip = machines.member_ip(i);
    let cluster: Vec<String> = (0..MEMBERS)
        .map(|j| format!("server-{j}=http://{}:2380", machines.member_ip(j)))
        .collect();
    let mut flags: Vec<String> = vec!["server".into(), "--name".into(), format!("server-{i}")];
    for (flag, value) in [
        ("--data-dir", machines.data_dir(i).display().to_string()),
        ("--listen-client-urls", format!("http://{ip}:2379")),
        ("--advertise-client-urls", format!("http://{ip}:2379")),
        ("--listen-peer-urls", format!("http://{ip}:2380")),
        ("--initial-advertise-peer-urls", format!("http://{ip}:2380")),
        ("--listen-metrics-urls", format!("http://{ip}:2381")),
        ("--initial-cluster", cluster.join(",")),
        ("--initial-cluster-token", "upgrade-test".into()),
        ("--listen-api-url", format!("https://{ip}:6443")),
        ("--tls-san", machines.net.gateway.clone()),
        ("--cluster-cidr", machines.net.cluster_cidr()),
        ("--service-cluster-ip-range", machines.net.service_cidr()),
    ] {
        flags.push(flag.into());
        flags.push(value);
    }
    flags
}

/// A cluster of the previous release (`KEELSON_PREVIOUS_BIN`, built by
/// `deploy/upgrade-check.sh`) upgraded to this one member by member, then
/// agent by agent, while kubectl is sampled: members and agents of the two
/// releases work together throughout. Without that binary there is nothing
/// to upgrade from: the test says so and passes.
#[test]
fn a_rolling_upgrade_from_the_previous_release_keeps_the_api() {
    let Some(previous) = std::env::var_os("KEELSON_PREVIOUS_BIN").map(PathBuf::from) else {
        eprintln!(
            "no KEELSON_PREVIOUS_BIN: nothing to upgrade from (deploy/upgrade-check.sh builds one)"
        );
        return;
    };
    let mut machines = machines();
    for i in 0..MEMBERS {
        let flags = founding_flags(&machines, i);
        let args: Vec<&OsStr> = flags.iter().map(OsStr::new).collect();
        let command = machines.net.binary_in(&previous, i, &args);
        machines.members[i] = Some(spawn_background(command, format!("previous server-{i}")));
    }
    machines.wait_for_voters(0, MEMBERS);
    wait_until(CONVERGE, "the admin kubeconfig and the token", || {
        machines.data_dir(0).join("admin.kubeconfig").exists()
            && machines.data_dir(0).join("token").exists()
    });
    machines.write_kubeconfig(0);
    // Agents of the previous release, with credentials from the join
    // endpoint both releases serve.
    let token = std::fs::read_to_string(machines.data_dir(0).join("token"))
        .expect("the join token")
        .trim()
        .to_owned();
    let server = format!("https://{}:6443", machines.member_ip(0));
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    for i in NODES {
        let name = machines.net.nodes[i].name.clone();
        let joined = runtime
            .block_on(keelson_control::join::join_cluster(
                &server,
                &token,
                json!({"name": name, "role": "agent"}),
            ))
            .expect("credentials for the agent");
        let path = machines.dir.path().join(format!("agent-{i}.kubeconfig"));
        std::fs::write(&path, joined.kubeconfig("ha", &server)).expect("write");
        machines.net.start_agent_of(
            &previous,
            i,
            &["--kubeconfig".as_ref(), path.as_os_str()],
            &[],
        );
    }
    machines.wait_for_nodes();
    deploy(&machines);

    let sampler = Sampler::start(&machines.kubeconfig(), "", false);
    sampler.wait_for_more(1, "the previous release runs");
    for i in 0..MEMBERS {
        machines.stop_member(i);
        let flags = founding_flags(&machines, i);
        let args: Vec<&OsStr> = flags.iter().map(OsStr::new).collect();
        let command = machines.net.keelson_in(i, &args);
        machines.members[i] = Some(spawn_background(command, format!("upgraded server-{i}")));
        machines.wait_for_voters(i, MEMBERS);
        sampler.wait_for_more(3, &format!("server-{i} runs this release"));
    }
    for i in NODES {
        machines.net.kill_agent(i);
        let path = machines.dir.path().join(format!("agent-{i}.kubeconfig"));
        machines
            .net
            .start_agent_with(i, &["--kubeconfig".as_ref(), path.as_os_str()], &[]);
        sampler.wait_for_more(3, "an agent is upgraded");
    }
    machines.wait_for_nodes();
    machines.kubectl_ok(&["scale", "deployment", "web", "--replicas=3"]);
    machines.wait_for_ready_replicas("web", 3);
    let (gap, failures, reads) = sampler.finish();
    eprintln!("rolling upgrade: {reads} reads answered, {failures} failed, longest gap {gap:?}");
    assert!(
        gap <= API_GAP,
        "kubectl went {gap:?} without an answer during the upgrade ({failures} failed)"
    );
}
