//! A local cluster made by `keelson up` for a test: its own
//! `KEELSON_HOME` and kubeconfig, deleted (everything it made) when dropped.
//! Needs root, as CI runs.

#![allow(dead_code, reason = "not every test makes a local cluster")]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The image [`Profile::up`] loads: busybox (sh, httpd, nc, …).
pub(crate) const IMAGE: &str = "keelson.test/busybox:1";

/// A profile under a home of its own, and a kubeconfig of its own.
pub(crate) struct Profile {
    pub(crate) home: tempfile::TempDir,
    pub(crate) name: String,
}

impl Profile {
    /// A profile not made yet (`keelson(&["up", …])` makes it), named
    /// apart from every other of this machine's tests.
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        Self {
            home: tempfile::tempdir().expect("a home for the profile"),
            name: format!(
                "kt{}-{}",
                std::process::id() % 100_000,
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    /// `keelson up --nodes NODES FLAGS…`, and the test image loaded into
    /// every node.
    pub(crate) fn up(nodes: u8, flags: &[&str]) -> Self {
        let profile = Self::new();
        let nodes = nodes.to_string();
        let mut args = vec!["up", "--nodes", &nodes];
        args.extend(flags);
        profile.keelson(&args);
        let archive = profile.home.path().join("busybox.tar");
        super::images::busybox_archive(&archive, IMAGE);
        profile.keelson(&["image", "load", archive.to_str().expect("a UTF-8 path")]);
        profile
    }

    /// The bank scenario of the tutorial: its images built offline
    /// (`deploy/images/build.sh`), loaded into every node, and `kubectl
    /// apply -f deploy`; what kubectl said.
    pub(crate) fn apply_bank(&self) -> String {
        let repository = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let images = self.home.path().join("images");
        let built = Command::new(repository.join("deploy/images/build.sh"))
            .arg(&images)
            .output()
            .expect("deploy/images/build.sh");
        assert!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        for image in ["bank-web-1.0.tar", "mariadb-10.11.tar"] {
            let file = images.join(image);
            let loaded = self.keelson(&["image", "load", file.to_str().expect("UTF-8")]);
            assert_eq!(loaded.matches("loaded").count(), 2, "{loaded}");
        }
        self.kubectl(&[
            "apply",
            "-f",
            repository.join("deploy").to_str().expect("UTF-8"),
        ])
    }

    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.home.path().join("kubeconfig")
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.home.path().join(&self.name)
    }

    pub(crate) fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command
            .env("KEELSON_HOME", self.home.path())
            .env("KUBECONFIG", self.kubeconfig())
            .args(args);
        command
    }

    pub(crate) fn keelson_command(&self, args: &[&str]) -> Command {
        let mut command = self.command(env!("CARGO_BIN_EXE_keelson"), args);
        command.args(["-p", &self.name]);
        command
    }

    /// `keelson ARGS -p PROFILE`, which must succeed: its output.
    pub(crate) fn keelson(&self, args: &[&str]) -> String {
        ok(
            &format!("keelson {args:?}"),
            self.keelson_command(args).output(),
        )
    }

    pub(crate) fn kubectl(&self, args: &[&str]) -> String {
        ok(
            &format!("kubectl {args:?}"),
            self.command("kubectl", &["--request-timeout=20s"])
                .args(args)
                .output(),
        )
    }

    pub(crate) fn try_kubectl(&self, args: &[&str]) -> Option<String> {
        let output = self
            .command("kubectl", &["--request-timeout=10s"])
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    pub(crate) fn apply(&self, manifest: &serde_json::Value) {
        let file = self.home.path().join("manifest.json");
        std::fs::write(&file, manifest.to_string()).expect("write the manifest");
        self.kubectl(&["apply", "-f", file.to_str().expect("a UTF-8 path")]);
    }

    pub(crate) fn pid(&self, component: &str) -> i32 {
        std::fs::read_to_string(self.dir().join("run").join(format!("{component}.pid")))
            .expect("a pid file")
            .trim()
            .parse()
            .expect("a pid")
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if self.dir().exists() {
            let _ = self.keelson_command(&["delete"]).output();
        }
    }
}

pub(crate) fn ok(what: &str, output: std::io::Result<Output>) -> String {
    let output = output.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
