//! `keelson image import` and `keelson image ls` with an image built here,
//! offline, from Debian's busybox-static (as `docker save` lays it out).

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::process::Command;

fn keelson(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_keelson"))
        .args(args)
        .output()
        .expect("run keelson");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_image_tarball_imports_and_lists() {
    let dir = tempfile::tempdir().expect("temp dir");
    let archive = dir.path().join("busybox.tar");
    common::images::busybox_archive(&archive, "keelson.test/busybox:1");
    let data = dir.path().join("agent");
    let data = data.to_str().expect("utf-8 path");
    let archive = archive.to_str().expect("utf-8 path");

    let (ok, out, err) = keelson(&["image", "import", "--data-dir", data, archive]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("imported keelson.test/busybox:1 (sha256:"),
        "{out}"
    );
    let (ok, out, err) = keelson(&["image", "ls", "--data-dir", data]);
    assert!(ok, "{err}");
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .expect("one image")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..2], ["keelson.test/busybox", "1"], "{out}");
    assert!(row[3].ends_with("MB"), "about 2 MB: {out}");

    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"not a tarball at all").expect("write");
    let (ok, _, err) = keelson(&[
        "image",
        "import",
        "--data-dir",
        data,
        junk.to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert!(err.starts_with("keelson: importing"), "{err}");
}
