//! Test images built here, offline, from Debian's busybox-static.

#![allow(dead_code, reason = "not every test builds images")]

use std::path::Path;

/// Writes a `docker save` archive of `name` (busybox and links to it).
pub(crate) fn busybox_archive(path: &Path, name: &str) {
    keelson_chaos::local::image::busybox_archive(path, name).expect("the busybox image archive");
}

/// A node's data directory (temporary) with the busybox image imported as
/// `name` through `keelson image import`.
pub(crate) fn node_data_with_busybox(name: &str) -> tempfile::TempDir {
    let data = tempfile::tempdir().expect("the node's data directory");
    let archive = data.path().join("busybox.tar");
    busybox_archive(&archive, name);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keelson"))
        .args(["image", "import", "--data-dir"])
        .arg(data.path())
        .arg(&archive)
        .output()
        .expect("run keelson image import");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    data
}
