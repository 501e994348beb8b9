//! The official Kubernetes Python client (`kubernetes` on PyPI, installed by
//! `deploy/install-deps.sh` into a virtualenv) against a three-member
//! control plane: `tests/python/client.py` creates, reads, lists with
//! selectors, watches, patches, scales and deletes through the API.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::cluster::Cluster;

/// The virtualenv's Python: `KEELSON_PYTHON`, or where `install-deps.sh` puts it.
fn python() -> PathBuf {
    std::env::var_os("KEELSON_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/keelson/python/bin/python"))
}

#[test]
fn the_python_client_round_trips_through_any_member() {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run ./deploy/install-deps.sh (it installs the kubernetes Python client)",
        python.display()
    );
    let plane = Cluster::start_control_plane();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py");
    for member in [0, 2] {
        let output = Command::new(&python)
            .arg(script)
            .arg(plane.member(member).kubeconfig())
            .output()
            .expect("run the Python client");
        assert!(
            output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "ok",
            "through m{member}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
