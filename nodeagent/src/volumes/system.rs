//! The mounts the volumes need on the node: tmpfs for memory-backed
//! volumes, bind mounts pinning subPaths, and finding and undoing them
//! all under a pod's directory.
//!
//! ```text
//!  /proc/self/mountinfo ─► mount points under DIR ─► umount2(MNT_DETACH), deepest first
//!  tmpfs  ─► mount("tmpfs", DIR, "tmpfs", "size=BYTES")
//!  bind   ─► mount("/proc/self/fd/N", TARGET, MS_BIND)   N: the subPath opened without following links
//! ```

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// Undoes the escapes of a mountinfo field (`\040` for a space, …).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(digits) => {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points listed in a mountinfo text, in its order.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect()
}

/// This process's mount points.
pub(crate) fn mount_points() -> std::io::Result<Vec<PathBuf>> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|text| parse_mountinfo(&text))
}

/// Whether `path` (canonical) is a mount point.
pub(crate) fn is_mount_point(path: &Path) -> std::io::Result<bool> {
    Ok(mount_points()?.iter().any(|m| m == path))
}

/// Mount points at or below `dir` (canonical), deepest first.
pub(crate) fn mounts_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    Ok(found)
}

/// Detaches every mount at or below `dir` (stacked ones too); what is
/// still mounted afterwards.
pub(crate) fn unmount_all(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut previous = usize::MAX;
    loop {
        let mounts = mounts_under(dir)?;
        // Done, or stuck: nothing came off in the last round.
        if mounts.is_empty() || mounts.len() >= previous {
            return Ok(mounts);
        }
        previous = mounts.len();
        for mount in &mounts {
            if let Err(error) = nix::mount::umount2(mount, MntFlags::MNT_DETACH) {
                tracing::warn!(mount = %mount.display(), %error, "cannot unmount");
            }
        }
    }
}

/// Mounts a tmpfs of `size` bytes (the kernel's default, half the
/// memory, when `None`) on `dir`.
pub(crate) fn mount_tmpfs(dir: &Path, size: Option<i64>) -> std::io::Result<()> {
    let options = size.filter(|s| *s > 0).map(|s| format!("size={s}"));
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::empty(),
        options.as_deref(),
    )
    .map_err(std::io::Error::from)
}

/// Bind-mounts `source` (a `/proc/self/fd/N` path, or any path) on `target`.
pub(crate) fn bind(source: &Path, target: &Path) -> std::io::Result<()> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_gives_mount_points_unescaped() {
        let text = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
144 27 0:86 / /var/lib/keelson/pods/u\\040one/volumes rw,relatime - tmpfs tmpfs rw,size=1024k
145 27 0:87 / /tab\\011and\\134slash rw - tmpfs tmpfs rw
";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                PathBuf::from("/proc"),
                PathBuf::from("/var/lib/keelson/pods/u one/volumes"),
                PathBuf::from("/tab\tand\\slash"),
            ]
        );
        assert_eq!(unescape("no\\escape\\9"), "no\\escape\\9");
    }
}
