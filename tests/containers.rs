//! `keelson agent` running real containers through libcontainer (as root,
//! as CI runs), against a three-member control plane, with an image built
//! here from Debian's busybox-static and imported from a tarball.
//!
//! The node's data directory is a temporary directory; whatever the test
//! leaves running or mounted under it (shims, containers, pause processes,
//! overlays) is killed and unmounted when the test ends, pass or fail.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Member};
use common::netns::{mounts_under, processes_under};
use common::{Background, spawn_background, wait_until};

const CONVERGE: Duration = Duration::from_secs(60);
const IMAGE: &str = "keelson.test/busybox:1";

/// A real node: its data directory, and the agent while it runs.
struct Node {
    data: tempfile::TempDir,
    agent: Option<Background>,
}

impl Node {
    fn new() -> Node {
        let data = common::images::node_data_with_busybox(IMAGE);
        Node { data, agent: None }
    }

    fn start(&mut self, member: &Member) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keelson"));
        command
            .args([
                "agent",
                "--runtime",
                "libcontainer",
                "--node-name",
                "real-1",
            ])
            .args([
                "--node-lease-renew-interval",
                "1s",
                "--port",
                "0",
                "--sync-frequency",
                "2s",
                "--network",
                "none",
                "--data-dir",
            ])
            .arg(self.data.path())
            .arg("--kubeconfig")
            .arg(member.kubeconfig());
        self.agent = Some(spawn_background(command, "keelson agent real-1".into()));
    }

    /// Waits until the control plane sees the node Ready.
    fn wait_ready(&self, member: &Member) {
        wait_until(CONVERGE, "the node to be Ready", || {
            member
                .kubectl_ok(&["get", "nodes"])
                .lines()
                .any(|l| l.starts_with("real-1") && l.contains(" Ready "))
        });
    }

    /// Kills the agent with SIGKILL (its containers go on).
    fn kill_agent(&mut self) {
        drop(self.agent.take());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_agent();
        // Shims and pause processes name the data directory; containers
        // die with their pid namespace's init.
        for pid in processes_under(self.data.path()) {
            drop(Command::new("kill").args(["-9", &pid.to_string()]).status());
        }
        for mount in mounts_under(self.data.path()) {
            drop(Command::new("umount").arg("-l").arg(&mount).status());
        }
    }
}

fn phase_and_state(member: &Member, pod: &str) -> String {
    member.kubectl_ok(&["get", "pod", pod, "-o",
        "jsonpath={.status.phase} {.status.containerStatuses[0].state} {.status.containerStatuses[0].restartCount}"])
}

#[test]
fn pods_run_as_real_containers() {
    let plane = Cluster::start_control_plane();
    let m0 = plane.member(0);
    let mut node = Node::new();
    node.start(m0);
    node.wait_ready(m0);
    let runtime = m0.kubectl_ok(&[
        "get",
        "node",
        "real-1",
        "-o",
        "jsonpath={.status.nodeInfo.containerRuntimeVersion}",
    ]);
    assert!(runtime.starts_with("keelson-libcontainer://"), "{runtime}");

    // A pod that says something and fails: its exit code and output are kept.
    m0.kubectl_ok(&[
        "run",
        "hello",
        &format!("--image={IMAGE}"),
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "echo hi from $(hostname); exit 3",
    ]);
    wait_until(CONVERGE, "hello to fail with exit code 3", || {
        let state = phase_and_state(m0, "hello");
        state.starts_with("Failed ") && state.contains("\"exitCode\":3")
    });
    let logs: Vec<PathBuf> = std::fs::read_dir(node.data.path().join("runtime/containers"))
        .expect("containers")
        .flatten()
        .map(|e| e.path().join("log"))
        .collect();
    let log = std::fs::read_to_string(&logs[0]).expect("the container's log");
    assert!(
        log.contains(" stdout F hi from hello"),
        "the pod's hostname is its name: {log}"
    );

    // The environment from a ConfigMap, a Secret, the pod and its limits.
    m0.kubectl_ok(&["create", "configmap", "game", "--from-literal=lives=3"]);
    m0.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=s3cret",
    ]);
    let manifest = node.data.path().join("envy.json");
    std::fs::write(&manifest, format!(r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "envy"}},
        "spec": {{"restartPolicy": "Never", "containers": [{{"name": "envy", "image": "{IMAGE}",
          "command": ["sh", "-c", "echo $LIVES $PASSWORD $POD_NAME $MEMORY_MI $(GREETING)"],
          "resources": {{"limits": {{"memory": "64Mi"}}}},
          "env": [
            {{"name": "LIVES", "valueFrom": {{"configMapKeyRef": {{"name": "game", "key": "lives"}}}}}},
            {{"name": "PASSWORD", "valueFrom": {{"secretKeyRef": {{"name": "db", "key": "password"}}}}}},
            {{"name": "POD_NAME", "valueFrom": {{"fieldRef": {{"fieldPath": "metadata.name"}}}}}},
            {{"name": "MEMORY_MI", "valueFrom": {{"resourceFieldRef": {{"resource": "limits.memory", "divisor": "1Mi"}}}}}},
            {{"name": "GREETING", "value": "hello"}}]}}]}}}}"#)).expect("write the manifest");
    m0.kubectl_ok(&["apply", "-f", manifest.to_str().expect("utf-8")]);
    wait_until(CONVERGE, "envy to print its environment", || {
        let state = phase_and_state(m0, "envy");
        state.starts_with("Succeeded ")
    });
    let printed = std::fs::read_dir(node.data.path().join("runtime/containers"))
        .expect("containers")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("log")).ok())
        .find(|log| log.contains("s3cret"))
        .expect("envy's log");
    assert!(
        printed.contains(" stdout F 3 s3cret envy 64 hello"),
        "{printed}"
    );

    // A missing ConfigMap keeps the container waiting, saying why.
    m0.kubectl_ok(&["run", "lost", &format!("--image={IMAGE}"), "--overrides",
        &format!(r#"{{"spec":{{"containers":[{{"name":"lost","image":"{IMAGE}","command":["sleep","60"],
          "env":[{{"name":"X","valueFrom":{{"configMapKeyRef":{{"name":"nowhere","key":"x"}}}}}}]}}]}}}}"#)]);
    wait_until(
        CONVERGE,
        "lost to wait with CreateContainerConfigError",
        || phase_and_state(m0, "lost").contains(r#""reason":"CreateContainerConfigError""#),
    );
    assert!(phase_and_state(m0, "lost").contains(r#"configmap \"nowhere\" not found"#));

    // A memory hog beyond its limit is OOMKilled.
    m0.kubectl_ok(&[
        "run",
        "hog",
        &format!("--image={IMAGE}"),
        "--restart=Never",
        "--overrides",
        &format!(
            r#"{{"spec":{{"containers":[{{"name":"hog","image":"{IMAGE}",
          "command":["dd","if=/dev/zero","of=/dev/null","bs=256M","count=1"],
          "resources":{{"limits":{{"memory":"32Mi"}}}}}}]}}}}"#
        ),
    ]);
    wait_until(CONVERGE, "hog to be OOMKilled", || {
        let state = phase_and_state(m0, "hog");
        state.starts_with("Failed ") && state.contains(r#""reason":"OOMKilled""#)
    });

    // A crashing container backs off, its restarts counted.
    m0.kubectl_ok(&[
        "run",
        "crasher",
        &format!("--image={IMAGE}"),
        "--",
        "sh",
        "-c",
        "exit 1",
    ]);
    wait_until(CONVERGE, "crasher to be in CrashLoopBackOff", || {
        let state = phase_and_state(m0, "crasher");
        state.contains("CrashLoopBackOff") && !state.ends_with(" 0")
    });
    // The delays grow: 10 s after the first crash, then 20 s.
    wait_until(CONVERGE, "crasher's back-off to double", || {
        phase_and_state(m0, "crasher").contains("back-off 20s restarting failed container=crasher")
    });

    // A long-running pod survives its agent's death untouched.
    m0.kubectl_ok(&[
        "run",
        "sleeper",
        &format!("--image={IMAGE}"),
        "--",
        "sleep",
        "3600",
    ]);
    wait_until(CONVERGE, "sleeper to run", || {
        phase_and_state(m0, "sleeper").starts_with("Running ")
    });
    let id = |m: &Member| {
        m.kubectl_ok(&[
            "get",
            "pod",
            "sleeper",
            "-o",
            "jsonpath={.status.containerStatuses[0].containerID}",
        ])
    };
    let before = id(m0);
    node.kill_agent();
    node.start(m0);
    node.wait_ready(m0);
    // The new agent syncs every pod it finds; once it has finished the
    // deletion of the others (queued after them), it has seen the sleeper.
    for pod in ["hello", "crasher", "envy", "lost", "hog"] {
        m0.kubectl_ok(&["delete", "pod", pod, "--grace-period=1", "--timeout=30s"]);
    }
    assert_eq!(id(m0), before, "the same container, not a new one");
    assert!(
        phase_and_state(m0, "sleeper").ends_with(" 0"),
        "never restarted"
    );

    // Deleting it stops it within its grace period (sleep ignores SIGTERM
    // as PID 1, so this is the SIGKILL after 2 s), and leaves nothing behind.
    let started = Instant::now();
    m0.kubectl_ok(&[
        "delete",
        "pod",
        "sleeper",
        "--grace-period=2",
        "--timeout=30s",
    ]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "deletion took {took:?}");
    wait_until(
        CONVERGE,
        "every container, sandbox and mount to be gone",
        || {
            let left = |dir: &str| {
                std::fs::read_dir(node.data.path().join(dir))
                    .map(|d| d.count())
                    .unwrap_or(0)
            };
            left("runtime/containers") == 0
                && left("runtime/sandboxes") == 0
                && mounts_under(node.data.path()).is_empty()
        },
    );
}

/// Lines of a child's stdout, read on a thread, so a test can wait for
/// them with a deadline.
fn lines_of(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

#[test]
fn kubectl_logs_and_exec_reach_the_containers() {
    use std::io::Write;
    use std::process::Stdio;

    let plane = Cluster::start_control_plane();
    let m0 = plane.member(0);
    let mut node = Node::new();
    node.start(m0);
    node.wait_ready(m0);
    // A Deployment's pods run.
    m0.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        &format!("--image={IMAGE}"),
        "--replicas=2",
        "--",
        "sh",
        "-c",
        "echo serving from $(hostname); exec sleep 3600",
    ]);
    m0.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let ready = m0.kubectl_ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    assert_eq!(ready, "2");
    let said = m0.kubectl_ok(&["logs", "deployment/web"]);
    assert!(said.starts_with("serving from web-"), "{said}");

    m0.kubectl_ok(&[
        "run",
        "talker",
        &format!("--image={IMAGE}"),
        "--",
        "sh",
        "-c",
        "echo started; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done",
    ]);
    wait_until(CONVERGE, "talker to say a few things", || {
        m0.kubectl(&["logs", "talker"])
            .stdout
            .starts_with(b"started\ntick 1\ntick 2\n")
    });

    // What was written: the tail, with timestamps, cut at a byte limit.
    let tail = m0.kubectl_ok(&["logs", "talker", "--tail=2"]);
    let ticks: Vec<u64> = tail
        .lines()
        .map(|l| {
            l.strip_prefix("tick ")
                .expect("a tick")
                .parse()
                .expect("a number")
        })
        .collect();
    assert!(ticks.len() == 2 && ticks[1] == ticks[0] + 1, "{tail}");
    let stamped = m0.kubectl_ok(&["logs", "talker", "--timestamps", "--tail=1"]);
    let (stamp, text) = stamped.split_once(' ').expect("a time, then the line");
    assert!(
        chrono::DateTime::parse_from_rfc3339(stamp).is_ok() && text.starts_with("tick "),
        "{stamped}"
    );
    assert_eq!(
        m0.kubectl_ok(&["logs", "talker", "--limit-bytes=4"]),
        "star"
    );

    // Following: lines written after the request arrive as they are written.
    let mut follower = m0
        .kubectl_command(&["logs", "-f", "talker"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    let lines = lines_of(follower.stdout.take().expect("stdout"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut newest = 0;
    while newest <= ticks[1] + 5 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no new line while following; last tick {newest}"));
        if let Some(n) = line.strip_prefix("tick ").and_then(|n| n.parse().ok()) {
            newest = n;
        }
    }
    drop(follower.kill());
    drop(follower.wait());

    // exec: output, errors and the exit code come back.
    assert!(
        m0.kubectl_ok(&["exec", "talker", "--", "ls", "/"])
            .contains("bin")
    );
    assert_eq!(
        m0.kubectl_ok(&["exec", "talker", "--", "hostname"]),
        "talker\n"
    );
    let failed = m0.kubectl(&[
        "exec",
        "talker",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(failed.status.code(), Some(3), "{failed:?}");
    assert_eq!(String::from_utf8_lossy(&failed.stdout), "out\n");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("err") && stderr.contains("command terminated with exit code 3"),
        "{stderr}"
    );
    // Standard input reaches the command, and its end ends it.
    let mut cat = m0
        .kubectl_command(&["exec", "-i", "talker", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl exec -i");
    cat.stdin
        .take()
        .expect("stdin")
        .write_all(b"through stdin\n")
        .expect("write");
    let output = cat.wait_with_output().expect("kubectl exec -i");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "through stdin\n");
    // With a terminal (kubectl needs one of its own: `script` gives it a pty).
    let kubectl = "kubectl --request-timeout=20s exec -it talker -- \
                   sh -c '[ -t 0 ] && [ -t 1 ] && echo on a terminal'";
    let output = Command::new("script")
        .args(["-q", "-e", "-c", kubectl, "/dev/null"])
        .env("KUBECONFIG", m0.kubeconfig())
        .output()
        .expect("script (util-linux)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(text.contains("on a terminal"), "{text}");

    // The agent's own metrics and the resource usage, through the API.
    let usage = m0.kubectl_ok(&[
        "get",
        "--raw",
        "/api/v1/nodes/real-1/proxy/metrics/resource",
    ]);
    for sample in [
        r#"container_cpu_usage_seconds_total{container="talker",namespace="default",pod="talker"} "#,
        r#"container_memory_working_set_bytes{container="talker",namespace="default",pod="talker"} "#,
        r#"pod_cpu_usage_seconds_total{namespace="default",pod="talker"} "#,
        "node_memory_working_set_bytes ",
        "scrape_error 0",
    ] {
        assert!(usage.contains(sample), "{sample} in:\n{usage}");
    }
    wait_until(CONVERGE, "the agent to count its pod", || {
        m0.kubectl_ok(&["get", "--raw", "/api/v1/nodes/real-1/proxy/metrics"])
            .contains("kubelet_running_pods 3\n")
    });

    // --previous: the run before the current one.
    m0.kubectl_ok(&[
        "run",
        "crashy",
        &format!("--image={IMAGE}"),
        "--",
        "sh",
        "-c",
        "echo crashed once; exit 1",
    ]);
    wait_until(CONVERGE, "crashy to restart", || {
        m0.kubectl_ok(&[
            "get",
            "pod",
            "crashy",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ]) != "0"
    });
    assert_eq!(
        m0.kubectl_ok(&["logs", "crashy", "--previous"]),
        "crashed once\n"
    );
    assert_eq!(m0.kubectl_ok(&["logs", "crashy"]), "crashed once\n");

    // Wrong requests get Kubernetes' answers.
    let err = m0.kubectl_err(&["logs", "talker", "--previous"]);
    assert!(
        err.contains(r#"previous terminated container "talker" in pod "talker" not found"#),
        "{err}"
    );
    let err = m0.kubectl_err(&["logs", "talker", "-c", "other"]);
    assert!(
        err.contains("container other is not valid for pod talker"),
        "{err}"
    );
    let err = m0.kubectl_err(&["logs", "nosuch"]);
    assert!(err.contains(r#"pods "nosuch" not found"#), "{err}");
}

/// `kubectl apply` of a JSON manifest.
fn apply(member: &Member, dir: &Path, name: &str, manifest: &serde_json::Value) {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, manifest.to_string()).expect("write the manifest");
    member.kubectl_ok(&["apply", "-f", path.to_str().expect("utf-8")]);
}

fn ready(member: &Member, pod: &str) -> String {
    member.kubectl_ok(&[
        "get",
        "pod",
        pod,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ])
}

fn restarts(member: &Member, pod: &str) -> u32 {
    member
        .kubectl_ok(&[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ])
        .parse()
        .unwrap_or(0)
}

#[test]
fn probes_hooks_and_registry_pulls() {
    use serde_json::json;

    let registry = common::registry::Registry::start();
    registry.push_busybox("test/busybox", "1");
    let plane = Cluster::start_control_plane();
    let m0 = plane.member(0);
    let mut node = Node::new();
    node.start(m0);
    node.wait_ready(m0);
    let dir = node.data.path().to_owned();

    // An image from a registry, pulled as its policy says.
    let pulled = format!("{}/test/busybox:1", registry.address());
    apply(
        m0,
        &dir,
        "pulled",
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pulled"},
        "spec": {"containers": [{"name": "c", "image": pulled, "imagePullPolicy": "Always",
            "command": ["sleep", "3600"]}]}}),
    );
    wait_until(CONVERGE, "pulled to run", || {
        phase_and_state(m0, "pulled").starts_with("Running ")
    });
    let events = m0.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=pulled",
    ]);
    assert!(
        events.contains("Pulling") && events.contains("Successfully pulled image"),
        "{events}"
    );
    // One that is not there waits, backing off.
    let missing = format!("{}/test/nothing:1", registry.address());
    m0.kubectl_ok(&["run", "missing", &format!("--image={missing}")]);
    wait_until(CONVERGE, "missing to back off pulling", || {
        phase_and_state(m0, "missing").contains(r#""reason":"ImagePullBackOff""#)
    });
    let err = m0.kubectl_err(&["logs", "missing"]);
    assert!(
        err.contains("is waiting to start: trying and failing to pull image"),
        "{err}"
    );

    // Readiness: an httpGet probe on a busybox httpd; unready once the page goes.
    apply(
        m0,
        &dir,
        "web",
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "web", "image": IMAGE,
            "command": ["sh", "-c", "busybox mkdir -p /www && echo ok > /www/healthz && exec busybox httpd -f -p 8080 -h /www"],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}),
    );
    wait_until(CONVERGE, "web to be ready", || ready(m0, "web") == "True");
    m0.kubectl_ok(&["exec", "web", "--", "busybox", "rm", "/www/healthz"]);
    wait_until(CONVERGE, "web to be unready", || {
        ready(m0, "web") == "False"
    });
    let events = m0.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
    ]);
    assert!(
        events.contains("Readiness probe failed: HTTP probe failed with statuscode: 404"),
        "{events}"
    );
    m0.kubectl_ok(&["exec", "web", "--", "sh", "-c", "echo ok > /www/healthz"]);
    wait_until(CONVERGE, "web to be ready again", || {
        ready(m0, "web") == "True"
    });
    assert_eq!(
        restarts(m0, "web"),
        0,
        "the tcpSocket liveness probe passes"
    );

    // Liveness: an exec probe that starts failing restarts the container.
    // The postStart hook runs in it.
    apply(
        m0,
        &dir,
        "alive",
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "alive"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "alive", "image": IMAGE,
            "command": ["sh", "-c", "echo > /tmp/alive; exec sleep 3600"],
            "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "echo hooked > /tmp/post"]}}},
            "livenessProbe": {"exec": {"command": ["cat", "/tmp/alive"]}, "periodSeconds": 1, "failureThreshold": 2}}]}}),
    );
    wait_until(CONVERGE, "alive to run", || {
        phase_and_state(m0, "alive").starts_with("Running ")
    });
    wait_until(CONVERGE, "the postStart hook to have run", || {
        m0.kubectl(&["exec", "alive", "--", "cat", "/tmp/post"])
            .stdout
            == b"hooked\n"
    });
    m0.kubectl_ok(&["exec", "alive", "--", "busybox", "rm", "/tmp/alive"]);
    wait_until(CONVERGE, "alive to be restarted", || {
        restarts(m0, "alive") >= 1
    });
    let events = m0.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=alive",
    ]);
    assert!(
        events.contains("Container alive failed liveness probe, will be restarted"),
        "{events}"
    );
    wait_until(CONVERGE, "alive to run again", || {
        phase_and_state(m0, "alive").starts_with("Running ")
    });

    // Who a container runs as, and what it may write.
    apply(
        m0,
        &dir,
        "nobody",
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nobody"},
        "spec": {"terminationGracePeriodSeconds": 1, "securityContext": {"runAsUser": 1000, "runAsGroup": 3000},
            "containers": [{"name": "nobody", "image": IMAGE, "command": ["sleep", "3600"],
                "securityContext": {"readOnlyRootFilesystem": true}}]}}),
    );
    wait_until(CONVERGE, "nobody to run", || {
        phase_and_state(m0, "nobody").starts_with("Running ")
    });
    let id = m0.kubectl_ok(&["exec", "nobody", "--", "busybox", "id"]);
    assert!(id.starts_with("uid=1000 gid=3000"), "{id}");
    let refused = m0.kubectl(&["exec", "nobody", "--", "sh", "-c", "echo x > /tmp/x"]);
    assert!(!refused.status.success(), "a read-only root file system");
    m0.kubectl_ok(&[
        "run",
        "rooted",
        &format!("--image={IMAGE}"),
        "--overrides",
        r#"{"spec":{"securityContext":{"runAsNonRoot":true}}}"#,
        "--",
        "sleep",
        "3600",
    ]);
    wait_until(CONVERGE, "rooted to be refused", || {
        let state = phase_and_state(m0, "rooted");
        state.contains("CreateContainerConfigError")
            && state.contains("container has runAsNonRoot and image will run as root")
    });

    // preStop runs before SIGTERM: the process prints what the hook left.
    apply(
        m0,
        &dir,
        "polite",
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "polite"},
        "spec": {"terminationGracePeriodSeconds": 10, "containers": [{"name": "polite", "image": IMAGE,
            "command": ["sh", "-c", "trap 'cat /tmp/bye; exit 0' TERM; echo up; while true; do sleep 0.1; done"],
            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo said goodbye > /tmp/bye"]}}}}]}}),
    );
    wait_until(CONVERGE, "polite to be up", || {
        m0.kubectl(&["logs", "polite"]).stdout == b"up\n"
    });
    let mut follower = m0
        .kubectl_command(&["logs", "-f", "polite"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    let lines = lines_of(follower.stdout.take().expect("stdout"));
    assert_eq!(lines.recv_timeout(CONVERGE).expect("the first line"), "up");
    m0.kubectl_ok(&["delete", "pod", "polite", "--wait=false"]);
    assert_eq!(
        lines.recv_timeout(CONVERGE).expect("the last words"),
        "said goodbye"
    );
    drop(follower.kill());
    drop(follower.wait());
}

#[test]
fn volumes_show_config_maps_secrets_and_the_pod() {
    use serde_json::json;

    let plane = Cluster::start_control_plane();
    let m0 = plane.member(0);
    let mut node = Node::new();
    node.start(m0);
    node.wait_ready(m0);
    let dir = node.data.path().to_owned();
    m0.kubectl_ok(&[
        "create",
        "configmap",
        "game",
        "--from-literal=lives=3",
        "--from-literal=level=easy",
    ]);
    m0.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=s3cret",
    ]);
    let host = tempfile::tempdir().expect("a host directory");
    std::fs::write(host.path().join("motd"), "from the host\n").expect("write");
    apply(
        m0,
        &dir,
        "reader",
        &json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "reader", "labels": {"app": "reader"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "reader", "image": IMAGE,
            "command": ["sleep", "3600"],
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/game"},
                {"name": "secret", "mountPath": "/etc/db", "readOnly": true},
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "memory", "mountPath": "/fast"},
                {"name": "host", "mountPath": "/host", "readOnly": true},
                {"name": "info", "mountPath": "/etc/podinfo"}]}],
            "volumes": [
                {"name": "config", "configMap": {"name": "game"}},
                {"name": "secret", "secret": {"secretName": "db", "items": [{"key": "password", "path": "pw", "mode": 256}]}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "memory", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
                {"name": "host", "hostPath": {"path": host.path(), "type": "Directory"}},
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}),
    );
    wait_until(CONVERGE, "reader to run", || {
        phase_and_state(m0, "reader").starts_with("Running ")
    });
    let read = |path: &str| m0.kubectl_ok(&["exec", "reader", "--", "cat", path]);
    assert_eq!(read("/etc/game/lives"), "3");
    assert_eq!(read("/etc/game/level"), "easy");
    assert_eq!(read("/etc/db/pw"), "s3cret");
    assert_eq!(read("/host/motd"), "from the host\n");
    assert_eq!(read("/etc/podinfo/name"), "reader");
    assert_eq!(read("/etc/podinfo/labels"), "app=\"reader\"");
    let mounts = read("/proc/mounts");
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(" /fast tmpfs ") && l.contains("size=8192k")),
        "{mounts}"
    );
    assert!(
        mounts.lines().any(|l| l.contains(" /etc/db tmpfs ro")),
        "secrets are on tmpfs, read-only here: {mounts}"
    );
    // The container writes where it may, and only there.
    m0.kubectl_ok(&[
        "exec",
        "reader",
        "--",
        "sh",
        "-c",
        "echo kept > /scratch/note",
    ]);
    assert_eq!(read("/scratch/note"), "kept\n");
    let refused = m0.kubectl(&["exec", "reader", "--", "sh", "-c", "echo x > /etc/db/new"]);
    assert!(!refused.status.success(), "a read-only mount");

    // An updated ConfigMap reaches the file.
    m0.kubectl_ok(&[
        "patch",
        "configmap",
        "game",
        "-p",
        r#"{"data":{"lives":"9"}}"#,
    ]);
    wait_until(CONVERGE, "the new value in the file", || {
        m0.kubectl(&["exec", "reader", "--", "cat", "/etc/game/lives"])
            .stdout
            == b"9"
    });

    // A pod whose ConfigMap is missing waits, saying why.
    apply(
        m0,
        &dir,
        "lost",
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lost"},
        "spec": {"containers": [{"name": "lost", "image": IMAGE, "command": ["sleep", "3600"],
            "volumeMounts": [{"name": "config", "mountPath": "/etc/x"}]}],
            "volumes": [{"name": "config", "configMap": {"name": "nowhere"}}]}}),
    );
    wait_until(CONVERGE, "lost to wait for its volume", || {
        let events = m0.kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=lost",
        ]);
        events.contains("FailedMount") && events.contains(r#"configmap "nowhere" not found"#)
    });
    assert!(phase_and_state(m0, "lost").starts_with("Pending "));

    // Deleting the pods leaves nothing mounted.
    m0.kubectl_ok(&["delete", "pod", "reader", "lost", "--timeout=30s"]);
    wait_until(CONVERGE, "the pods' volumes to be gone", || {
        mounts_under(node.data.path()).is_empty()
            && std::fs::read_dir(node.data.path().join("pods")).map_or(true, |d| d.count() == 0)
    });
}
