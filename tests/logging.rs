//! Logs: JSON lines on request, and a log level changed while the process
//! runs through `PUT /debug/flags/v`, as Kubernetes components take it.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::Cluster;
use common::wait_until;

#[test]
fn json_logs_carry_fields_and_spans() {
    let data = tempfile::tempdir().expect("a data directory");
    let mut server = Command::new(env!("CARGO_BIN_EXE_keelson"))
        .args(["server", "--log-format", "json", "--data-dir"])
        .arg(data.path())
        .args([
            "--listen-client-urls",
            "http://127.0.0.1:0",
            "--advertise-client-urls",
            "http://127.0.0.1:0",
            "--listen-api-url",
            "https://127.0.0.1:0",
        ])
        .env("RUST_LOG", "info,keelson_control=debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("keelson server");
    let stderr = server.stderr.take().expect("stderr");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let mut serving = None;
    let mut in_span = None;
    while serving.is_none() || in_span.is_none() {
        let Ok(line) = lines.recv_timeout(Duration::from_secs(60)) else {
            let _ = server.kill();
            panic!(
                "no JSON line saying it serves, with a span:\n{}",
                seen.join("\n")
            );
        };
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if value["fields"]["message"] == "serving Kubernetes API" {
            serving = Some(value.clone());
        }
        // A controller's reconcile logs inside its span (the default
        // ServiceAccount of each system namespace is made at start).
        if value["span"]["name"] == "reconcile" {
            in_span = Some(value.clone());
        }
        seen.push(line);
    }
    let _ = server.kill();
    let _ = server.wait();
    let serving = serving.expect("serving");
    assert_eq!(serving["level"], "INFO", "{serving}");
    assert!(serving["fields"]["address"].is_string(), "{serving}");
    assert!(serving["timestamp"].is_string(), "{serving}");
    let in_span = in_span.expect("a span");
    assert!(in_span["span"]["controller"].is_string(), "{in_span}");
    assert!(in_span["span"]["key"].is_string(), "{in_span}");
}

#[test]
fn the_log_level_changes_while_the_server_runs() {
    let cluster = Cluster::start_control_plane();
    let member = cluster.member(0);
    member.kubectl_ok(&["get", "namespaces"]);
    assert!(!member.logged(" DEBUG "), "debug lines before asking");
    let body = tempfile::NamedTempFile::new().expect("a body");
    std::fs::write(body.path(), "3").expect("write");
    let path = body.path().to_str().expect("UTF-8");
    let answer = member.kubectl_ok(&["replace", "--raw", "/debug/flags/v", "-f", path]);
    assert!(
        answer.contains("successfully set the log filter to debug"),
        "{answer}"
    );
    member.kubectl_ok(&["get", "namespaces"]);
    wait_until(Duration::from_secs(10), "debug lines", || {
        member.logged(" DEBUG ")
    });
    // A malformed filter is refused with the reason, and changes nothing.
    std::fs::write(body.path(), "=bad=").expect("write");
    let refused = member.kubectl_err(&["replace", "--raw", "/debug/flags/v", "-f", path]);
    assert!(refused.contains("is not a log filter"), "{refused}");
}
