//! Test images built here, offline, from Debian's busybox-static.

#![allow(dead_code, reason = "not every test builds images")]

use std::path::Path;

/// Writes a `docker save` archive of `name` (for example
/// `keelson.test/busybox:1`) whose one layer holds /bin/busybox and links
/// to it for `sh`, `sleep`, `echo`, `cat`, `ls`, `hostname`, `dd`, and /tmp.
pub(crate) fn busybox_archive(path: &Path, name: &str) {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox (Debian's busybox-static; deploy/install-deps.sh installs it)");
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(busybox.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    layer
        .append_data(&mut header, "bin/busybox", busybox.as_slice())
        .expect("layer");
    // Every image has a /tmp, sticky and writable by all.
    let mut tmp = tar::Header::new_gnu();
    tmp.set_entry_type(tar::EntryType::Directory);
    tmp.set_size(0);
    tmp.set_mode(0o1777);
    tmp.set_uid(0);
    tmp.set_gid(0);
    layer
        .append_data(&mut tmp, "tmp/", std::io::empty())
        .expect("layer");
    for tool in ["sh", "sleep", "echo", "cat", "ls", "hostname", "dd"] {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        link.set_uid(0);
        link.set_gid(0);
        layer
            .append_link(&mut link, format!("bin/{tool}"), "busybox")
            .expect("layer");
    }
    let layer = layer.into_inner().expect("layer");
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = format!(
        r#"[{{"Config":"config.json","RepoTags":["{name}"],"Layers":["layer/layer.tar"]}}]"#
    );
    let mut archive = tar::Builder::new(std::fs::File::create(path).expect("create the archive"));
    for (file, contents) in [
        ("manifest.json", manifest.as_bytes()),
        ("config.json", &config[..]),
        ("layer/layer.tar", &layer[..]),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive
            .append_data(&mut header, file, contents)
            .expect("archive");
    }
    archive.finish().expect("archive");
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
