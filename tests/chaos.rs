//! `keelson chaos` end to end (as root, as CI runs): the short seeded smoke
//! of store scenarios and a node failure passes with its figures written;
//! and a member built to serve stale reads (`--unsafe-stale-reads`) is
//! caught by the linearizability checker, with the command that repeats it.
//!
//! One test, so the scenarios run one after another: each makes its own
//! cluster (`chaos-SCENARIO`) under a home of its own and deletes it.

use std::process::{Command, Output};

fn chaos(home: &std::path::Path, args: &[&str]) -> (Output, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_keelson"))
        .arg("chaos")
        .args(args)
        .env("KEELSON_HOME", home)
        .output()
        .expect("run keelson chaos");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, text)
}

/// Everything a run made is gone: profiles, namespaces, processes.
fn nothing_left(home: &std::path::Path) {
    let profiles: Vec<_> = std::fs::read_dir(home)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(profiles.is_empty(), "profiles left: {profiles:?}");
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    assert!(
        !namespaces.contains("keelson-chaos-"),
        "namespaces left:\n{namespaces}"
    );
    let left = keelson_chaos::local::Processes::under(home);
    assert!(left.is_empty(), "processes left: {left:?}");
}

#[test]
fn the_smoke_passes_and_a_stale_read_bug_is_caught() {
    let home = tempfile::tempdir().unwrap();
    let report = home.path().join("reliability.md");
    std::fs::write(
        &report,
        "# Reliability\n\n<!-- chaos:begin -->\n<!-- chaos:end -->\n\nAfter.\n",
    )
    .unwrap();
    let profiles = home.path().join("profiles");

    let (output, text) = chaos(
        &profiles,
        &[
            "--scenario",
            "smoke",
            "--seed",
            "11",
            "--duration",
            "12s",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{text}");
    for scenario in ["kill-leader", "kill-all", "isolate-leader", "node-stop"] {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| {scenario} |")))
            .unwrap_or_else(|| panic!("no row for {scenario}:\n{text}"));
        assert!(row.ends_with("| ok |"), "{row}");
    }
    let written = std::fs::read_to_string(&report).unwrap();
    assert!(written.contains("| kill-all |"), "{written}");
    assert!(written.contains("(seed 11)"), "{written}");
    assert!(
        written.ends_with("<!-- chaos:end -->\n\nAfter.\n"),
        "{written}"
    );
    nothing_left(&profiles);

    // Reads served from a member's own state, leader or not: the isolated
    // old leader (and any lagging follower) answers with stale values.
    let (output, text) = chaos(
        &profiles,
        &[
            "--scenario",
            "isolate-leader",
            "--seed",
            "12",
            "--duration",
            "12s",
            "--server-flag=--unsafe-stale-reads",
        ],
    );
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("not linearizable on /chaos/reg/"), "{text}");
    assert!(text.contains("Stuck:"), "{text}");
    assert!(
        text.contains(
            "reproduce: keelson chaos --scenario isolate-leader --seed 12 --duration 12s \
             --server-flag=--unsafe-stale-reads"
        ),
        "{text}"
    );
    nothing_left(&profiles);
}
