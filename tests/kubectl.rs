//! The real `kubectl` against a three-member Keelson control plane.
//!
//! Each test starts three `keelson server` processes that serve both the
//! store and the Kubernetes API (each on its own ports, in its own data
//! directory) and drives them with `kubectl`, using the admin kubeconfig each
//! member writes. Nothing sleeps: every wait is on a condition or a line of
//! output, with a deadline.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::Cluster;
use common::wait_until;

/// Manifests of every kind the tutorial uses, in `tests/manifests/`.
const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/manifests");

/// Collapses runs of spaces, so table headers compare whatever the widths.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn kubectl_applies_reads_changes_and_deletes_through_any_member() {
    let plane = Cluster::start_control_plane();
    let (m0, m1, m2) = (plane.member(0), plane.member(1), plane.member(2));

    let namespaces = m0.kubectl_ok(&["get", "namespaces", "-o", "name"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            namespaces.contains(&format!("namespace/{ns}\n")),
            "{namespaces}"
        );
    }

    let applied = m0.kubectl_ok(&["apply", "-f", MANIFESTS]);
    for created in [
        "configmap/game-config created",
        "deployment.apps/web created",
        "horizontalpodautoscaler.autoscaling/web created",
        "job.batch/pi created",
        "namespace/staging created",
        "secret/db-credentials created",
        "service/web created",
        "service/web-nodeport created",
        "service/web-lb created",
        "service/db created",
        "statefulset.apps/db created",
    ] {
        assert!(applied.contains(created), "{created} in:\n{applied}");
    }
    let again = m1.kubectl_ok(&["apply", "-f", MANIFESTS]);
    assert!(again.contains("deployment.apps/web unchanged"), "{again}");

    // Written through one member, read through the others.
    let replicas = [
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.replicas}/{.metadata.generation}",
    ];
    assert_eq!(m1.kubectl_ok(&replicas), "3/1");
    assert_eq!(
        m2.kubectl_ok(&[
            "get",
            "secret",
            "db-credentials",
            "-o",
            "jsonpath={.data.password}"
        ]),
        "czNjcjN0",
        "stringData is stored as data"
    );
    // In the store, the Secret is ciphertext.
    let raw = m1.etcdctl(&[
        "get",
        "/registry/secrets/default/db-credentials",
        "--print-value-only",
    ]);
    let raw = String::from_utf8_lossy(&raw.stdout);
    assert!(raw.starts_with("k8s:enc:aesgcm:v1:keelson:"), "{raw}");
    let ca = m2.etcdctl(&["get", "/keelson/pki/ca", "--print-value-only"]);
    let ca = String::from_utf8_lossy(&ca.stdout);
    assert!(
        ca.starts_with("k8s:enc:aesgcm:v1:keelson:") && !ca.contains("PRIVATE KEY"),
        "the CA is sealed"
    );
    assert!(
        !raw.contains("czNjcjN0") && !raw.contains("YWRtaW4=") && !raw.contains("db-credentials")
    );

    // Kubernetes' defaults, and addresses from the service range.
    let strategy = m0.kubectl_ok(&["get", "deployment", "web", "-o", "jsonpath={.spec.strategy.rollingUpdate.maxSurge} {.spec.template.spec.restartPolicy} {.spec.template.spec.containers[0].imagePullPolicy}"]);
    assert_eq!(strategy, "25% Always IfNotPresent");
    let ip = m1.kubectl_ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(ip.starts_with("10.43.") && ip != "10.43.0.1", "{ip}");
    let node_port: u16 = m2
        .kubectl_ok(&[
            "get",
            "service",
            "web-nodeport",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ])
        .parse()
        .expect("a node port");
    assert!((30000..=32767).contains(&node_port), "{node_port}");
    assert_eq!(
        m0.kubectl_ok(&["get", "service", "db", "-o", "jsonpath={.spec.clusterIP}"]),
        "None"
    );
    assert_eq!(
        m0.kubectl_ok(&[
            "get",
            "service",
            "kubernetes",
            "-o",
            "jsonpath={.spec.clusterIP}"
        ]),
        "10.43.0.1"
    );

    // Columns as Kubernetes prints them.
    let described = m1.kubectl_ok(&["describe", "deployment", "web"]);
    for line in [
        "Name:                   web",
        "Replicas:               3 desired",
        "StrategyType:           RollingUpdate",
        "Image:        nginx:1.25",
    ] {
        assert!(
            squeeze(&described).contains(&squeeze(line)),
            "{line} in:\n{described}"
        );
    }
    let json = m2.kubectl_ok(&["get", "configmap", "game-config", "-o", "json"]);
    assert!(
        json.contains(r#""kind": "ConfigMap""#) && json.contains(r#""lives": "3""#),
        "{json}"
    );
    let deployments = m2.kubectl_ok(&["get", "deployments"]);
    assert!(
        squeeze(&deployments).starts_with("NAME READY UP-TO-DATE AVAILABLE AGE web 0/3 "),
        "{deployments}"
    );
    let wide = m0.kubectl_ok(&["get", "deployments", "-o", "wide"]);
    assert!(
        squeeze(&wide).contains("CONTAINERS IMAGES SELECTOR"),
        "{wide}"
    );
    assert!(
        squeeze(&wide).contains("nginx nginx:1.25 app=web"),
        "{wide}"
    );
    let configmaps = m0.kubectl_ok(&["get", "configmaps", "game-config"]);
    assert!(
        squeeze(&configmaps).starts_with("NAME DATA AGE game-config 2 "),
        "{configmaps}"
    );
    let services = m1.kubectl_ok(&["get", "services"]);
    assert!(
        squeeze(&services).starts_with("NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE"),
        "{services}"
    );

    // Labels, annotations and selectors.
    m0.kubectl_ok(&["label", "deployment", "web", "tier=front"]);
    m1.kubectl_ok(&["annotate", "deployment", "web", "owner=team-a"]);
    assert_eq!(
        m2.kubectl_ok(&["get", "deployments", "-l", "tier=front", "-o", "name"]),
        "deployment.apps/web\n"
    );
    assert_eq!(
        m2.kubectl_ok(&["get", "deployments", "-l", "tier!=front", "-o", "name"]),
        ""
    );
    assert!(
        m0.kubectl_ok(&["get", "deployment", "web", "--show-labels"])
            .contains("app=web,tier=front")
    );
    assert_eq!(
        m0.kubectl_ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.metadata.annotations.owner}"
        ]),
        "team-a"
    );

    // Scale, and the three patch types; each spec change bumps the generation.
    m1.kubectl_ok(&["scale", "deployment", "web", "--replicas=5"]);
    assert_eq!(m0.kubectl_ok(&replicas), "5/2");
    m0.kubectl_ok(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.27"}]}}}}"#,
    ]);
    let image = [
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}",
    ];
    assert_eq!(
        m2.kubectl_ok(&image),
        "nginx:1.27 80",
        "a strategic merge keeps the container's ports"
    );
    m1.kubectl_ok(&[
        "patch",
        "deployment",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":2}}"#,
    ]);
    m2.kubectl_ok(&[
        "patch",
        "deployment",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
    ]);
    assert_eq!(m0.kubectl_ok(&replicas), "4/5");

    // Edit with a scripted editor, and replace from a file.
    let edited = m0
        .kubectl_command(&["edit", "configmap", "game-config"])
        .env("KUBE_EDITOR", "sed -i s/lives:.*/lives:\\ \\\"9\\\"/")
        .output()
        .expect("run kubectl edit");
    assert!(
        edited.status.success(),
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    assert_eq!(
        m1.kubectl_ok(&[
            "get",
            "configmap",
            "game-config",
            "-o",
            "jsonpath={.data.lives}"
        ]),
        "9"
    );
    let yaml = m2.kubectl_ok(&["get", "configmap", "game-config", "-o", "yaml"]);
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), yaml.replace("lives: \"9\"", "lives: \"7\""))
        .expect("write manifest");
    let path = file.path().to_str().expect("utf-8 path");
    assert!(
        m0.kubectl_ok(&["replace", "-f", path])
            .contains("configmap/game-config replaced")
    );
    assert_eq!(
        m2.kubectl_ok(&[
            "get",
            "configmap",
            "game-config",
            "-o",
            "jsonpath={.data.lives}"
        ]),
        "7"
    );
    // The file still names the old resourceVersion: a second replace is stale.
    assert!(
        m1.kubectl_err(&["replace", "-f", path])
            .contains("the object has been modified")
    );

    // Discovery and OpenAPI.
    let resources = m0.kubectl_ok(&["api-resources"]);
    assert!(
        squeeze(&resources).contains("deployments deploy apps/v1 true Deployment"),
        "{resources}"
    );
    assert!(
        m1.kubectl_ok(&["api-versions"])
            .contains("autoscaling/v2\n")
    );
    let explained = m2.kubectl_ok(&["explain", "deployment.spec.replicas"]);
    assert!(
        explained.contains("FIELD: replicas <integer>"),
        "{explained}"
    );

    // A manifest with a misspelt field is refused, naming the field.
    let bad = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        bad.path(),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\ndatta:\n  a: b\n",
    )
    .expect("write manifest");
    let refused = m0.kubectl_err(&["apply", "-f", bad.path().to_str().expect("utf-8 path")]);
    assert!(refused.contains(r#"unknown field "datta""#), "{refused}");
    // So is a selector that does not select the template, and a changed one.
    let deployment =
        std::fs::read_to_string(format!("{MANIFESTS}/deployment.yaml")).expect("read manifest");
    std::fs::write(
        bad.path(),
        deployment
            .replace("name: web", "name: web2")
            .replacen("app: web", "app: other", 2),
    )
    .expect("write manifest");
    let refused = m0.kubectl_err(&["apply", "-f", bad.path().to_str().expect("utf-8 path")]);
    assert!(
        refused.contains("`selector` does not match template `labels`"),
        "{refused}"
    );
    let refused = m1.kubectl_err(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"selector":{"matchLabels":{"app":"x"}}}}"#,
    ]);
    assert!(refused.contains("field is immutable"), "{refused}");

    // A 10 MiB object is refused whole, and nothing is stored.
    let huge = tempfile::NamedTempFile::new().expect("temp file");
    let blob = "x".repeat(10 * 1024 * 1024);
    std::fs::write(
        huge.path(),
        format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"huge"}},"data":{{"blob":"{blob}"}}}}"#),
    )
    .expect("write manifest");
    let refused = m0.kubectl_err(&["create", "-f", huge.path().to_str().expect("utf-8 path")]);
    assert!(refused.contains("RequestEntityTooLarge"), "{refused}");
    assert!(
        m1.kubectl_err(&["get", "configmap", "huge"])
            .contains("not found")
    );

    // Deleting the namespace deletes what is in it.
    m0.kubectl_ok(&[
        "create",
        "-n",
        "staging",
        "-f",
        &format!("{MANIFESTS}/configmap.yaml"),
    ]);
    m1.kubectl_ok(&["delete", "namespace", "staging", "--wait"]);
    assert!(
        m2.kubectl_err(&["get", "namespace", "staging"])
            .contains("not found")
    );
    assert_eq!(
        m2.kubectl_ok(&["get", "configmaps", "-n", "staging", "-o", "name"]),
        ""
    );

    let deleted = m2.kubectl_ok(&["delete", "-f", MANIFESTS, "--wait", "--ignore-not-found"]);
    assert!(
        deleted.contains("deployment.apps \"web\" deleted"),
        "{deleted}"
    );
    assert!(
        m0.kubectl_err(&["get", "deployment", "web"])
            .contains("deployments.apps \"web\" not found")
    );
}

#[test]
fn kubectl_create_generators_send_protobuf_and_are_understood() {
    let plane = Cluster::start_control_plane();
    let (m0, m1) = (plane.member(0), plane.member(1));
    for args in [
        &["create", "namespace", "shop"][..],
        &[
            "create",
            "configmap",
            "demo",
            "-n",
            "shop",
            "--from-literal=lives=3",
        ],
        &[
            "create",
            "secret",
            "generic",
            "pw",
            "-n",
            "shop",
            "--from-literal=password=s3cr3t",
        ],
        &[
            "create",
            "deployment",
            "web",
            "-n",
            "shop",
            "--image=nginx:1.25",
            "--replicas=2",
            "--port=80",
        ],
        &[
            "create",
            "service",
            "nodeport",
            "web",
            "-n",
            "shop",
            "--tcp=80:8080",
        ],
        &[
            "create",
            "job",
            "pi",
            "-n",
            "shop",
            "--image=busybox",
            "--",
            "echo",
            "3.14",
        ],
        &[
            "expose",
            "deployment",
            "web",
            "-n",
            "shop",
            "--name=web-internal",
            "--port=80",
        ],
    ] {
        m0.kubectl_ok(args);
    }
    let get = |what: &str, path: &str| {
        m1.kubectl_ok(&["get", what, "-n", "shop", "-o", &format!("jsonpath={path}")])
    };
    assert_eq!(get("configmap/demo", "{.data.lives}"), "3");
    assert_eq!(get("secret/pw", "{.data.password}"), "czNjcjN0");
    assert_eq!(
        get(
            "deployment/web",
            "{.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}/{.spec.template.spec.containers[0].ports[0].protocol} {.spec.strategy.type}"
        ),
        "2 nginx:1.25 80/TCP RollingUpdate"
    );
    let node_port: u16 = get("service/web", "{.spec.ports[0].nodePort}")
        .parse()
        .expect("a node port");
    assert!((30000..=32767).contains(&node_port));
    assert_eq!(get("service/web", "{.spec.ports[0].targetPort}"), "8080");
    assert_eq!(
        get("job/pi", "{.spec.template.spec.containers[0].command}"),
        r#"["echo","3.14"]"#
    );
    assert_eq!(get("service/web-internal", "{.spec.selector.app}"), "web");
}

#[test]
fn a_watch_through_one_member_sees_changes_made_through_another() {
    let plane = Cluster::start_control_plane();
    let watch =
        plane
            .member(0)
            .spawn_kubectl(&["get", "configmaps", "-w", "--output-watch-events"]);
    plane
        .member(1)
        .kubectl_ok(&["create", "-f", &format!("{MANIFESTS}/configmap.yaml")]);
    let mut seen = String::new();
    while !seen.contains("ADDED") {
        seen = squeeze(&watch.next_line());
    }
    assert!(seen.contains("game-config 2"), "{seen}");
    plane.member(2).kubectl_ok(&[
        "patch",
        "configmap",
        "game-config",
        "-p",
        r#"{"data":{"more":"1"}}"#,
    ]);
    assert!(squeeze(&watch.next_line()).starts_with("MODIFIED game-config 3"));
    plane
        .member(1)
        .kubectl_ok(&["delete", "configmap", "game-config"]);
    assert!(squeeze(&watch.next_line()).starts_with("DELETED game-config"));
}

/// A kubeconfig for the member's API that presents `user` (or no credentials).
fn kubeconfig_like(
    member_kubeconfig: &Path,
    user: Option<(&str, &str)>,
) -> tempfile::NamedTempFile {
    let admin = std::fs::read_to_string(member_kubeconfig).expect("read the admin kubeconfig");
    let line = |key: &str| {
        admin
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
            .expect("kubeconfig field")
            .to_owned()
    };
    let (server, ca) = (line("server:"), line("certificate-authority-data:"));
    // Without a certificate, a token the server does not take (kubectl
    // would prompt for a password if given nothing at all).
    let credentials = match user {
        Some((cert, key)) => {
            format!("    client-certificate-data: {cert}\n    client-key-data: {key}\n")
        }
        None => "    token: not-a-credential\n".to_owned(),
    };
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n{credentials}contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"
    );
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), config).expect("write kubeconfig");
    file
}

#[test]
fn clients_without_a_certificate_of_the_cluster_are_refused() {
    use base64::Engine;
    let plane = Cluster::start_control_plane();
    let member = plane.member(0);

    let anonymous = kubeconfig_like(&member.kubeconfig(), None);
    let refused = member
        .kubectl_command(&["get", "namespaces"])
        .env("KUBECONFIG", anonymous.path())
        .output()
        .expect("run kubectl");
    assert!(!refused.status.success());
    // kubectl's words for a 401.
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("You must be logged in to the server"),
        "{refused:?}"
    );

    // A certificate from another CA does not get through the handshake.
    let foreign = keelson_control::pki::ClusterCa::generate().expect("make a CA");
    let client = foreign
        .issue_client("kubernetes-admin", &["system:masters"])
        .expect("issue a certificate");
    let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    let forged = kubeconfig_like(
        &member.kubeconfig(),
        Some((&b64(&client.cert_pem), &b64(&client.key_pem))),
    );
    let refused = member
        .kubectl_command(&["get", "namespaces"])
        .env("KUBECONFIG", forged.path())
        .output()
        .expect("run kubectl");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("tls") || stderr.contains("certificate"),
        "{stderr}"
    );
}

#[test]
fn kubectl_keeps_working_when_a_member_dies() {
    let mut plane = Cluster::start_control_plane();
    plane
        .member(0)
        .kubectl_ok(&["create", "-f", &format!("{MANIFESTS}/configmap.yaml")]);
    let leader = plane.leader(&[0, 1, 2]);
    plane.member_mut(leader).kill();
    let survivor = (leader + 1) % 3;
    // Reads, and writes once the survivors have a leader.
    let member = plane.member(survivor);
    assert!(
        member
            .kubectl_ok(&["get", "configmap", "game-config", "-o", "name"])
            .contains("game-config")
    );
    wait_until(
        Duration::from_secs(30),
        "a write through a survivor",
        || {
            member
                .kubectl(&["label", "configmap", "game-config", "after=failover"])
                .status
                .success()
        },
    );
    let other = plane.member((leader + 2) % 3);
    assert_eq!(
        other.kubectl_ok(&[
            "get",
            "configmap",
            "game-config",
            "-o",
            "jsonpath={.metadata.labels.after}"
        ]),
        "failover"
    );
}

#[test]
fn the_api_server_runs_against_a_real_etcd() {
    use common::{Spawned, free_local_ports};
    use std::process::Command;

    let etcd = std::env::var_os("KEELSON_ETCD_BIN").unwrap_or_else(|| "/usr/bin/etcd".into());
    assert!(
        Path::new(&etcd).exists(),
        "{etcd:?} is missing: ./deploy/install-deps.sh installs Debian's etcd-server"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let [client, peer, api] = free_local_ports();
    let mut command = Command::new(&etcd);
    command
        .args(["--name", "e0", "--data-dir"])
        .arg(dir.path().join("etcd"))
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
        ])
        .args([
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client}"),
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args(["--initial-cluster", &format!("e0=http://127.0.0.1:{peer}")]);
    let etcd = Spawned::start(command, "etcd");
    etcd.await_line("ready to serve client requests");

    let mut command = Command::new(env!("CARGO_BIN_EXE_keelson"));
    command
        .args(["server", "--data-dir"])
        .arg(dir.path().join("api"))
        .args(["--etcd-servers", &format!("http://127.0.0.1:{client}")])
        .args(["--listen-api-url", &format!("https://127.0.0.1:{api}")])
        .args(["--etcd-compaction-interval", "1s"]);
    let server = Spawned::start(command, "keelson server --etcd-servers");
    server.await_line("serving Kubernetes API");

    let kubectl = |args: &[&str]| {
        let output = Command::new("kubectl")
            .env("KUBECONFIG", dir.path().join("api/admin.kubeconfig"))
            .env("HOME", dir.path())
            .arg("--request-timeout=20s")
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            output.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(kubectl(&["apply", "-f", MANIFESTS]).contains("deployment.apps/web created"));
    assert_eq!(
        kubectl(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "3"
    );
    kubectl(&["scale", "deployment", "web", "--replicas=1"]);
    kubectl(&[
        "create",
        "configmap",
        "from-generator",
        "--from-literal=a=b",
    ]);
    // The objects are etcd's keys, where Kubernetes keeps them.
    let keys = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &format!("127.0.0.1:{client}"),
            "get",
            "--prefix",
            "/registry/",
            "--keys-only",
        ])
        .output()
        .expect("run etcdctl");
    let keys = String::from_utf8_lossy(&keys.stdout);
    for key in [
        "/registry/deployments/default/web",
        "/registry/configmaps/default/from-generator",
        "/registry/namespaces/kube-system",
    ] {
        assert!(keys.contains(key), "{key} in:\n{keys}");
    }
    // The API server compacts etcd's history, one interval behind, as
    // kube-apiserver does: revision 2 goes.
    common::wait_until(
        Duration::from_secs(30),
        "etcd's history compacted by the API server",
        || {
            let old = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &format!("127.0.0.1:{client}")])
                .args(["get", "--prefix", "/registry/", "--rev", "2", "--keys-only"])
                .output()
                .expect("run etcdctl");
            String::from_utf8_lossy(&old.stderr).contains("compacted")
        },
    );
}

#[test]
fn an_agent_joins_with_the_token_and_gets_a_certificate() {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    use std::process::Command;

    let plane = Cluster::start_control_plane();
    // Any member's token; another member answers the join.
    let token_file = plane.member(0).kubeconfig().with_file_name("token");
    let token = std::fs::read_to_string(&token_file).expect("the member writes its join token");
    let token = token.trim();
    let member = plane.member(2);
    let admin = std::fs::read_to_string(member.kubeconfig()).expect("read kubeconfig");
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("server in kubeconfig")
        .to_owned();
    let curl = |args: &[&str]| {
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(args)
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    // The CA a joiner fetches before it trusts anything is the one the token pins.
    let ca = curl(&["-k", &format!("{server}/keelson/v1/cacerts")]);
    let hash: String = Sha256::digest(ca.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        token.starts_with(&format!("K10{hash}::keelson:")),
        "{token}"
    );
    let ca_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(ca_file.path(), &ca).expect("write CA");
    let ca_path = ca_file.path().to_str().expect("utf-8 path");

    let join = |token: &str| {
        curl(&[
            "--cacert",
            ca_path,
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/json",
            "-d",
            &format!(r#"{{"token":"{token}","name":"node-1","role":"agent"}}"#),
            &format!("{server}/keelson/v1/join"),
        ])
    };
    assert!(join("not-the-token").ends_with("\n401"));
    let answer = join(token);
    let (body, code) = answer.rsplit_once('\n').expect("a status code");
    assert_eq!(code, "200", "{body}");
    let answer = common::Json::parse(body);
    assert_eq!(answer["user"].as_str(), "system:node:node-1");

    // The certificate is the agent's way in.
    let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    let config = kubeconfig_like(
        &member.kubeconfig(),
        Some((
            &b64(answer["certificate"].as_str()),
            &b64(answer["key"].as_str()),
        )),
    );
    let listed = member
        .kubectl_command(&["get", "namespaces", "-o", "name"])
        .env("KUBECONFIG", config.path())
        .output()
        .expect("run kubectl");
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("namespace/kube-node-lease"),
        "{listed:?}"
    );
}

#[test]
fn lists_page_through_selections_with_continue_tokens() {
    let plane = Cluster::start_control_plane();
    let m0 = plane.member(0);
    for i in 0..6 {
        let tier = if i % 2 == 0 { "a" } else { "b" };
        m0.kubectl_ok(&[
            "create",
            "configmap",
            &format!("c{i}"),
            "--from-literal=i=1",
        ]);
        m0.kubectl_ok(&[
            "label",
            "configmap",
            &format!("c{i}"),
            &format!("tier={tier}"),
        ]);
    }
    // kubectl follows the continue tokens, one object per page.
    let names = plane.member(1).kubectl_ok(&[
        "get",
        "configmaps",
        "-l",
        "tier=a",
        "--chunk-size=1",
        "-o",
        "name",
    ]);
    assert_eq!(names, "configmap/c0\nconfigmap/c2\nconfigmap/c4\n");
    // A page holds at most `limit` objects, and says where the rest are.
    let page = common::Json::parse(&m0.kubectl_ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?limit=2&labelSelector=tier%3Db",
    ]));
    assert_eq!(page["items"].as_array().len(), 2);
    let token = page["metadata"]["continue"].as_str().to_owned();
    let rest = common::Json::parse(&m0.kubectl_ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/default/configmaps?limit=2&labelSelector=tier%3Db&continue={token}"
        ),
    ]));
    assert_eq!(rest["items"].as_array().len(), 1);
    assert_eq!(rest["items"][0]["metadata"]["name"].as_str(), "c5");
    assert!(rest["metadata"]["continue"].is_null());
}
