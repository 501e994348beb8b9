//! A minimal image built offline from the machine's busybox (Debian's
//! busybox-static): what tests and chaos scenarios run in their pods.

use std::path::Path;

/// The commands linked to busybox in the image.
const TOOLS: [&str; 8] = [
    "sh", "sleep", "echo", "cat", "ls", "hostname", "dd", "touch",
];

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Writes a `docker save` archive of `name` (for example
/// `keelson.test/busybox:1`) whose one layer holds /bin/busybox, links to
/// it for common commands, and a /tmp writable by all.
pub fn busybox_archive(path: &Path, name: &str) -> std::io::Result<()> {
    let busybox = std::fs::read("/bin/busybox").map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "/bin/busybox (Debian's busybox-static; deploy/install-deps.sh installs it): {e}"
            ),
        )
    })?;
    let mut layer = tar::Builder::new(Vec::new());
    let mut file = header(tar::EntryType::Regular, busybox.len() as u64, 0o755);
    layer.append_data(&mut file, "bin/busybox", busybox.as_slice())?;
    let mut tmp = header(tar::EntryType::Directory, 0, 0o1777);
    layer.append_data(&mut tmp, "tmp/", std::io::empty())?;
    for tool in TOOLS {
        let mut link = header(tar::EntryType::Symlink, 0, 0o777);
        layer.append_link(&mut link, format!("bin/{tool}"), "busybox")?;
    }
    let layer = layer.into_inner()?;
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = format!(
        r#"[{{"Config":"config.json","RepoTags":["{name}"],"Layers":["layer/layer.tar"]}}]"#
    );
    let mut archive = tar::Builder::new(std::fs::File::create(path)?);
    for (file, contents) in [
        ("manifest.json", manifest.as_bytes()),
        ("config.json", &config[..]),
        ("layer/layer.tar", &layer[..]),
    ] {
        let mut entry = header(tar::EntryType::Regular, contents.len() as u64, 0o644);
        archive.append_data(&mut entry, file, contents)?;
    }
    archive.finish()
}
