//! `keelson image pull` against a real registry (Debian's
//! `docker-registry`, started per test on a port of its choosing) holding
//! the busybox image built offline and pushed through the v2 API: by tag
//! (an OCI index) and by digest, from a Docker schema 2 manifest, with
//! gzip-compressed layers, failing clearly, and behind htpasswd.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::registry::Registry;
use keelson_nodeagent::images::{Reference, Store};

fn keelson(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_keelson"))
        .args(args)
        .env_remove("KEELSON_REGISTRY_PASSWORD")
        .output()
        .expect("run keelson");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `keelson image pull` with `extra` arguments; stdout on success.
fn pull(data: &str, reference: &str, extra: &[&str]) -> Result<String, String> {
    let mut args = vec!["image", "pull", "--data-dir", data, reference];
    args.extend_from_slice(extra);
    match keelson(&args) {
        (true, out, _) => Ok(out),
        (false, _, err) => Err(err),
    }
}

/// The image's flattened root filesystem holds a working busybox.
fn assert_runs_busybox(data: &Path, reference: &str) {
    let store = Store::open(&data.join("images")).expect("open the store");
    let image = store
        .get(&Reference::parse(reference).expect("a reference"))
        .expect("read the store")
        .unwrap_or_else(|| panic!("{reference} is not in the store"));
    let rootfs = store.rootfs(&image).expect("flatten the layers");
    let busybox = rootfs.join("bin/busybox");
    let mode = std::fs::metadata(&busybox)
        .expect("bin/busybox in the rootfs")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).expect("bin/sh"),
        Path::new("busybox")
    );
    let output = Command::new(&busybox)
        .args(["echo", "pulled"])
        .output()
        .expect("run the pulled busybox");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "pulled\n");
}

#[test]
fn an_image_pulls_by_tag_lists_and_unpacks() {
    let registry = Registry::start();
    let pushed = registry.push_busybox("test/busybox", "1");
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("agent");
    let data_arg = data.to_str().expect("utf-8 path");
    let reference = format!("{}/test/busybox:1", registry.address());

    let out = pull(data_arg, &reference, &[]).unwrap_or_else(|err| panic!("{err}"));
    // The index resolves to this machine's manifest.
    assert_eq!(out, format!("pulled {reference} ({})\n", pushed.manifest));
    let (ok, out, err) = keelson(&["image", "ls", "--data-dir", data_arg]);
    assert!(ok, "{err}");
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .expect("one image")
        .split_whitespace()
        .collect();
    let name = format!("{}/test/busybox", registry.address());
    assert_eq!(&row[..2], [name.as_str(), "1"], "{out}");
    assert!(row[3].ends_with("MB") || row[3].ends_with("kB"), "{out}");
    assert_runs_busybox(&data, &reference);
    let store = Store::open(&data.join("images")).expect("open the store");
    let image = store
        .get(&Reference::parse(&reference).expect("a reference"))
        .expect("read the store")
        .expect("the image");
    assert_eq!(image.repo_digest.as_deref(), Some(pushed.index.as_str()));

    // Pulling again fetches no blob and changes nothing.
    let out = pull(data_arg, &reference, &[]).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(out, format!("pulled {reference} ({})\n", pushed.manifest));

    // A Docker schema 2 manifest (Docker's media types) pulls too.
    let docker = format!("{}/test/busybox:1-docker", registry.address());
    let out = pull(data_arg, &docker, &[]).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        out,
        format!("pulled {docker} ({})\n", pushed.docker_manifest)
    );
    assert_runs_busybox(&data, &docker);
}

#[test]
fn an_image_pulls_by_digest() {
    let registry = Registry::start();
    let pushed = registry.push_busybox("test/pinned", "2");
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("agent");
    let data_arg = data.to_str().expect("utf-8 path");

    // The index's digest, then the platform manifest's own.
    for (digest, manifest) in [
        (&pushed.index, &pushed.manifest),
        (&pushed.manifest, &pushed.manifest),
    ] {
        let reference = format!("{}/test/pinned@{digest}", registry.address());
        let out = pull(data_arg, &reference, &[]).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(out, format!("pulled {reference} ({manifest})\n"));
        assert_runs_busybox(&data, &reference);
    }

    // Listed untagged.
    let (ok, out, err) = keelson(&["image", "ls", "--data-dir", data_arg]);
    assert!(ok, "{err}");
    let name = format!("{}/test/pinned", registry.address());
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for row in rows {
        assert_eq!(&row[..2], [name.as_str(), "<none>"], "{out}");
    }

    // A digest the registry does not have.
    let absent = format!(
        "{}/test/pinned@sha256:{}",
        registry.address(),
        "0".repeat(64)
    );
    let err = pull(data_arg, &absent, &[]).expect_err("an absent digest fails");
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn a_missing_image_fails_with_a_one_line_error() {
    let registry = Registry::start();
    registry.push_busybox("test/busybox", "1");
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("agent");
    let data_arg = data.to_str().expect("utf-8 path");
    for reference in [
        format!("{}/test/busybox:nope", registry.address()),
        format!("{}/test/nothing-here:1", registry.address()),
    ] {
        let err = pull(data_arg, &reference, &[]).expect_err("a missing image fails");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("keelson: {reference}: not found")),
            "{err}"
        );
    }
    // Nothing is recorded for them.
    let (ok, out, err) = keelson(&["image", "ls", "--data-dir", data_arg]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "only the header: {out}");

    // No registry there at all.
    let [port] = common::free_local_ports();
    let err =
        pull(data_arg, &format!("127.0.0.1:{port}/test/busybox:1"), &[]).expect_err("no registry");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "keelson: cannot connect to registry 127.0.0.1:{port}"
        )),
        "{err}"
    );
    let err = pull(data_arg, "Not/A/Reference", &[]).expect_err("a bad reference");
    assert!(err.starts_with("keelson: "), "{err}");
}

#[test]
fn a_registry_behind_htpasswd_wants_credentials() {
    let registry = Registry::start_with_htpasswd("keelson", "s3cret-pw");
    let pushed = registry.push_busybox("private/busybox", "1");
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("agent");
    let data_arg = data.to_str().expect("utf-8 path");
    let reference = format!("{}/private/busybox:1", registry.address());

    let err = pull(data_arg, &reference, &[]).expect_err("anonymous is refused");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "keelson: pull access denied for {reference}, repository does not exist or may require authorization"
        )),
        "{err}"
    );
    let err = pull(
        data_arg,
        &reference,
        &["--username", "keelson", "--password", "wrong"],
    )
    .expect_err("a wrong password is refused");
    assert!(err.contains("pull access denied"), "{err}");

    let out = pull(
        data_arg,
        &reference,
        &["--username", "keelson", "--password", "s3cret-pw"],
    )
    .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(out, format!("pulled {reference} ({})\n", pushed.manifest));
    assert_runs_busybox(&data, &reference);
}
