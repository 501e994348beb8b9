//! Prometheus against a local cluster, end to end, as root (as CI runs):
//! every component's `/metrics` passes `promtool check metrics`, and a real
//! Prometheus, configured by `deploy/prometheus/` (its targets made by
//! `targets.sh` from `keelson status -o json`), scrapes three members and
//! two nodes, evaluates the rules, finds every series the Grafana dashboard
//! reads, and sees the leader change when the Raft leader is killed.
//!
//! ```text
//!  keelson status -o json ─► targets.sh ─► keelson-targets.json ─┐
//!  deploy/prometheus/{prometheus,rules}.yml (1 s intervals) ─────┴► prometheus 127.0.0.1:PORT
//!        ▲ /api/v1/{targets,query,rules,label/__name__/values}          │ scrapes
//!      test (curl)                        members .2-.4 :2381 :6443, nodes .11 .12 :10250
//! ```
//!
//! Prometheus scrapes only the targets `keelson status` lists: addresses of
//! the profile's own namespaces (checked). It listens on loopback.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::profile::{IMAGE, Profile, ok};
use common::wait_until;
use serde_json::{Value, json};

/// How long the cluster and Prometheus may take to get where a step wants.
const CONVERGE: Duration = Duration::from_secs(90);
/// Members and nodes of the test's cluster.
const MEMBERS: usize = 3;
const NODES: usize = 2;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

/// `keelson status -p PROFILE -o json` (exit 7, and the same JSON, when a
/// component is down).
fn status(profile: &Profile) -> Value {
    let output = profile
        .keelson_command(&["status", "-o", "json"])
        .output()
        .expect("run keelson status");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "keelson status -o json: {e}\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// A Deployment whose pods use a readiness probe and a volume, behind a
/// Service: work that makes every family the dashboard reads appear.
fn workload(profile: &Profile) {
    profile.apply(&json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "web", "image": IMAGE,
                        "command": ["sh", "-c", "busybox mkdir -p /www && hostname > /www/index.html && exec busybox httpd -f -p 8080 -h /www"],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
                    "volumes": [{"name": "scratch", "emptyDir": {}}]}}}}));
    profile.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}));
}

/// An unused loopback port: bound, then closed (Prometheus cannot bind port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// `curl` GET of `url` with `form` URL-encoded into its query: the body,
/// when it answers 2xx.
fn get(url: &str, form: &[(&str, &str)]) -> Option<String> {
    let mut command = Command::new("curl");
    command.args(["-sS", "--fail", "--max-time", "5", "-G", url]);
    for (name, value) in form {
        command
            .arg("--data-urlencode")
            .arg(format!("{name}={value}"));
    }
    let output = command.output().expect("run curl");
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A Prometheus server of the test's own, configured from
/// `deploy/prometheus/`, killed and its directory removed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Prometheus for `profile`, scraping and evaluating every second,
    /// once it answers `/-/ready`.
    fn start(profile: &Profile) -> Self {
        let dir = tempfile::tempdir().expect("a directory for Prometheus");
        let config = std::fs::read_to_string(deploy_dir().join("prometheus.yml"))
            .expect("deploy/prometheus/prometheus.yml");
        let fast = config
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
        assert_eq!(
            fast.matches(": 1s").count(),
            2,
            "prometheus.yml sets both intervals to 15s globally"
        );
        std::fs::write(dir.path().join("prometheus.yml"), fast).expect("write prometheus.yml");
        std::fs::copy(deploy_dir().join("rules.yml"), dir.path().join("rules.yml"))
            .expect("copy rules.yml");
        let made = ok(
            "targets.sh",
            profile
                .command(
                    deploy_dir()
                        .join("targets.sh")
                        .to_str()
                        .expect("a UTF-8 path"),
                    &[&profile.name, dir.path().to_str().expect("a UTF-8 path")],
                )
                .env("KEELSON", env!("CARGO_BIN_EXE_keelson"))
                .output(),
        );
        eprintln!("{made}");
        // The whole configuration, with the files it names, is valid.
        ok(
            "promtool check config",
            Command::new("promtool")
                .args(["check", "config", "--lint=all", "--lint-fatal"])
                .arg(dir.path().join("prometheus.yml"))
                .output(),
        );

        // A port bound then closed may be taken before Prometheus binds it:
        // then it exits at once, and another is tried.
        let log_file = dir.path().join("prometheus.log");
        for _ in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(&log_file).expect("create the log");
            let mut child = Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("the log"))
                .stderr(log)
                .spawn()
                .expect("run prometheus (Debian's prometheus package; deploy/install-deps.sh installs it)");
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && child.try_wait().expect("wait").is_none() {
                if get(&format!("{url}/-/ready"), &[]).is_some() {
                    return Prometheus { child, url, dir };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "prometheus on port {port} did not start:\n{}",
                std::fs::read_to_string(&log_file).unwrap_or_default()
            );
        }
        panic!("prometheus did not start");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/PATH`'s `data`, when it answers with success.
    fn api(&self, path: &str, form: &[(&str, &str)]) -> Option<Value> {
        let body = get(&format!("{}/api/v1/{path}", self.url), form)?;
        let answer: Value = serde_json::from_str(&body).ok()?;
        (answer["status"] == "success").then(|| answer["data"].clone())
    }

    /// An instant query's series: their labels and values.
    fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let Some(data) = self.api("query", &[("query", promql)]) else {
            return Vec::new();
        };
        data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect()
    }

    /// `label` of each series `promql` returns, with its value.
    fn by(&self, promql: &str, label: &str) -> BTreeMap<String, f64> {
        self.query(promql)
            .into_iter()
            .map(|(labels, value)| (labels.get(label).cloned().unwrap_or_default(), value))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("prometheus' log:\n{}", self.log());
        }
    }
}

/// The metric names a PromQL expression reads: its identifiers less
/// functions, aggregations, keywords, label names and what is quoted,
/// in braces or brackets.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Depth in {…} and […], and whether the next (…) lists labels.
    let (mut braces, mut brackets, mut labels_next, mut in_labels) = (0, 0, false, false);
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        match c {
            '{' => braces += 1,
            '}' => braces -= 1,
            '[' => brackets += 1,
            ']' => brackets -= 1,
            '(' => {
                in_labels = labels_next;
                labels_next = false;
            }
            ')' => in_labels = false,
            _ => {}
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let before_paren = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                labels_next = true;
            } else if braces == 0
                && brackets == 0
                && !in_labels
                && !before_paren
                && !KEYWORDS.contains(&word.as_str())
            {
                names.insert(word);
            }
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            // Numbers, durations (5m) and exponents (1e-3) are not names.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    names
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (verb, le) (rate(apiserver_request_duration_seconds_bucket{profile=~"$profile", verb!~"WATCH|CONNECT"}[$__rate_interval]))) / ignoring(x) group_left (node) up offset 5m > bool 1e-3 and on(job) kubelet_running_pods"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "apiserver_request_duration_seconds_bucket",
            "kubelet_running_pods",
            "up"
        ]
    );
}

#[test]
fn the_configuration_and_rules_pass_promtool() {
    let dir = deploy_dir();
    for args in [
        &["check", "config", "--syntax-only", "prometheus.yml"][..],
        &["check", "rules", "--lint=all", "--lint-fatal", "rules.yml"],
        &["test", "rules", "rules_test.yml"],
    ] {
        ok(
            &format!("promtool {args:?}"),
            Command::new("promtool")
                .args(args)
                .current_dir(&dir)
                .output(),
        );
    }
}

/// Every expression of the Grafana dashboard: its data source is the
/// dashboard's variable, and it is at least schema 36.
fn dashboard_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy_dir().join("grafana-dashboard.json"))
        .expect("deploy/prometheus/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(
        dashboard["schemaVersion"].as_u64() >= Some(36),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let mut expressions = Vec::new();
    let mut rows = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            rows.push(panel["title"].as_str().unwrap_or_default().to_owned());
            continue;
        }
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().expect("an expression");
            expressions.push((title.clone(), expr.to_owned()));
        }
    }
    assert_eq!(rows, ["Control plane", "Nodes", "Workloads"]);
    expressions
}

#[test]
fn prometheus_scrapes_a_local_cluster_and_sees_the_leader_change() {
    let profile = Profile::up(NODES as u8, &[]);
    workload(&profile);
    let status = status(&profile);
    let nodes: BTreeSet<String> = [profile.name.clone(), format!("{}-m02", profile.name)].into();
    let members: BTreeSet<String> = (1..=MEMBERS).map(|i| format!("server-{i}")).collect();
    // The profile's own addresses: all Prometheus may be given.
    let ours: BTreeSet<String> = status["components"]
        .as_array()
        .expect("components")
        .iter()
        .flat_map(|c| c["metrics"].as_array().into_iter().flatten())
        .map(|url| {
            let url = url.as_str().expect("a URL");
            let host = url.split("://").nth(1).expect("scheme://host");
            host.split('/').next().expect("host:port").to_owned()
        })
        .collect();
    assert_eq!(ours.len(), MEMBERS * 2 + NODES, "{ours:?}");

    let prometheus = Prometheus::start(&profile);

    // Every target of the file_sd file is scraped, and is up.
    let mut last = Value::Null;
    wait_until(CONVERGE, "every target up", || {
        let Some(targets) = prometheus.api("targets", &[("state", "active")]) else {
            return false;
        };
        last = targets["activeTargets"].clone();
        let active = last.as_array().cloned().unwrap_or_default();
        active.len() == MEMBERS * 2 + NODES * 2 && active.iter().all(|t| t["health"] == "up")
    });
    let mut jobs = BTreeMap::<String, usize>::new();
    for target in last.as_array().expect("targets") {
        let address = target["discoveredLabels"]["__address__"]
            .as_str()
            .expect("an address");
        assert!(
            ours.contains(address),
            "{address} is not the profile's: {target}"
        );
        *jobs
            .entry(target["labels"]["job"].as_str().expect("a job").to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        jobs,
        BTreeMap::from([
            ("apiserver".to_owned(), MEMBERS),
            ("etcd".to_owned(), MEMBERS),
            ("kubelet".to_owned(), NODES),
            ("kubelet-resource".to_owned(), NODES),
        ])
    );

    // Three members with a leader, each API server counting requests (the
    // scrapes, at least), two nodes running pods.
    wait_until(CONVERGE, "three members with a leader", || {
        let has = prometheus.by("etcd_server_has_leader", "member");
        has.keys().cloned().collect::<BTreeSet<_>>() == members && has.values().all(|&v| v == 1.0)
    });
    wait_until(
        CONVERGE,
        "apiserver_request_total from three members",
        || {
            prometheus
                .by("sum by (member) (apiserver_request_total)", "member")
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
                == members
        },
    );
    wait_until(
        CONVERGE,
        "kubelet_running_pods from two nodes, two pods",
        || {
            let running = prometheus.by("kubelet_running_pods", "node");
            running.keys().cloned().collect::<BTreeSet<_>>() == nodes
                && running.values().sum::<f64>() >= 2.0
        },
    );

    // Every rule evaluates on the real series without an error.
    wait_until(CONVERGE, "every rule evaluated, healthy", || {
        let Some(rules) = prometheus.api("rules", &[]) else {
            return false;
        };
        let all: Vec<Value> = rules["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let unhealthy: Vec<&Value> = all.iter().filter(|r| r["health"] != "ok").collect();
        if let Some(rule) = unhealthy.iter().find(|r| r["health"] == "err") {
            panic!("a rule fails on Keelson's series: {rule}");
        }
        !all.is_empty() && unhealthy.is_empty()
    });

    // The dashboard: every expression parses, and every metric it reads is
    // one the cluster exposes.
    let expressions = dashboard_expressions();
    let wanted: BTreeSet<String> = expressions
        .iter()
        .flat_map(|(_, expr)| metric_names(expr))
        .collect();
    for name in [
        "etcd_disk_wal_fsync_duration_seconds_bucket",
        "apiserver_request_total",
        "node_memory_working_set_bytes",
    ] {
        assert!(wanted.contains(name), "{name} in {wanted:?}");
    }
    for (title, expr) in &expressions {
        let runnable = expr
            .replace("$__rate_interval", "1m")
            .replace("$profile", ".*");
        assert!(
            prometheus.api("query", &[("query", &runnable)]).is_some(),
            "panel {title:?}: {expr} does not run"
        );
    }
    let mut missing = BTreeSet::new();
    let seen = common::holds_within(CONVERGE, || {
        let exposed: BTreeSet<String> = prometheus
            .api("label/__name__/values", &[])
            .and_then(|names| serde_json::from_value(names).ok())
            .unwrap_or_default();
        missing = wanted.difference(&exposed).cloned().collect();
        missing.is_empty()
    });
    assert!(
        seen,
        "the dashboard reads series the cluster does not expose: {missing:?}"
    );

    // Kill the Raft leader: the survivors see a leader change, elect
    // another, and the member's target goes down.
    let mut leaders = Vec::new();
    wait_until(CONVERGE, "one leader", || {
        leaders = prometheus.query("etcd_server_is_leader == 1");
        leaders.len() == 1
    });
    let leader = leaders[0].0["member"].clone();
    let before = prometheus.by("etcd_server_leader_changes_seen_total", "member");
    let survivors: BTreeSet<String> = members.iter().filter(|m| **m != leader).cloned().collect();
    let pid = profile.pid(&leader);
    ok(
        "kill -9 the leader",
        Command::new("kill").args(["-9", &pid.to_string()]).output(),
    );
    eprintln!("killed the leader {leader} (pid {pid})");
    wait_until(CONVERGE, "the survivors to see the leader change", || {
        let now = prometheus.by(
            "etcd_server_leader_changes_seen_total and on(instance) up == 1",
            "member",
        );
        survivors
            .iter()
            .all(|m| now.get(m).copied().unwrap_or(0.0) > before.get(m).copied().unwrap_or(0.0))
    });
    wait_until(CONVERGE, "a new leader among the survivors", || {
        let is = prometheus.by("etcd_server_is_leader and on(instance) up == 1", "member");
        is.values().sum::<f64>() == 1.0
            && is.iter().any(|(m, &v)| v == 1.0 && survivors.contains(m))
    });
    let down = format!("up{{job=\"etcd\", member=\"{leader}\"}} == 0");
    wait_until(CONVERGE, "the killed member's target down", || {
        !prometheus.query(&down).is_empty()
    });
    // And its alert on the way (pending: `for: 1m`).
    let alert = format!("ALERTS{{alertname=\"EtcdMemberDown\", member=\"{leader}\"}}");
    wait_until(CONVERGE, "EtcdMemberDown for the killed member", || {
        !prometheus.query(&alert).is_empty()
    });
}

#[test]
fn every_component_passes_promtool_check_metrics() {
    let profile = Profile::up(NODES as u8, &[]);
    workload(&profile);
    wait_until(CONVERGE, "the webservers ready", || {
        profile
            .try_kubectl(&[
                "get",
                "deployment",
                "web",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ])
            .is_some_and(|ready| ready == "2")
    });
    let status = status(&profile);
    let tls = &status["tls"];
    let file = |name: &str| tls[name].as_str().expect("a TLS file").to_owned();
    let (ca, cert, key) = (file("caFile"), file("certFile"), file("keyFile"));
    let mut checked = 0;
    for component in status["components"].as_array().expect("components") {
        for url in component["metrics"].as_array().into_iter().flatten() {
            let url = url.as_str().expect("a URL");
            let fetched = ok(
                &format!("curl {url}"),
                Command::new("curl")
                    .args(["-sS", "--fail", "--max-time", "10"])
                    .args(["--cacert", &ca, "--cert", &cert, "--key", &key])
                    .arg(url)
                    .output(),
            );
            assert!(fetched.contains("# TYPE "), "{url}:\n{fetched}");
            // The store's families on its port, the API server's on its own.
            if url.ends_with(":2381/metrics") {
                assert!(fetched.contains("\netcd_server_has_leader "), "{url}");
                assert!(!fetched.contains("apiserver_request_total"), "{url}");
            }
            if url.ends_with(":6443/metrics") {
                assert!(fetched.contains("\napiserver_request_total{"), "{url}");
                assert!(!fetched.contains("etcd_server_has_leader"), "{url}");
            }
            let mut promtool = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run promtool (Debian's prometheus package)");
            {
                use std::io::Write;
                promtool
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(fetched.as_bytes())
                    .expect("feed promtool");
            }
            let checks = promtool.wait_with_output().expect("promtool");
            assert!(
                checks.status.success(),
                "promtool check metrics on {} ({url}): {}{}",
                component["name"],
                String::from_utf8_lossy(&checks.stdout),
                String::from_utf8_lossy(&checks.stderr)
            );
            checked += 1;
        }
    }
    assert_eq!(checked, MEMBERS * 2 + NODES * 2);
}
