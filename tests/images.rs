//! `keelson image import` and `keelson image ls` with an image built here,
//! offline, from Debian's busybox-static (as `docker save` lays it out).

use std::path::Path;
use std::process::Command;

/// A `docker save` archive of one image, `keelson.test/busybox:1`, whose
/// only layer holds /bin/busybox and /bin/sh linked to it.
fn busybox_archive(path: &Path) {
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
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    link.set_uid(0);
    link.set_gid(0);
    layer
        .append_link(&mut link, "bin/sh", "busybox")
        .expect("layer");
    let layer = layer.into_inner().expect("layer");
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = br#"[{"Config":"config.json","RepoTags":["keelson.test/busybox:1"],"Layers":["layer/layer.tar"]}]"#;
    let mut archive = tar::Builder::new(std::fs::File::create(path).expect("create the archive"));
    for (name, contents) in [
        ("manifest.json", &manifest[..]),
        ("config.json", &config[..]),
        ("layer/layer.tar", &layer[..]),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive
            .append_data(&mut header, name, contents)
            .expect("archive");
    }
    archive.finish().expect("archive");
}

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
    busybox_archive(&archive);
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
