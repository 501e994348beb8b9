//! Root filesystems from layers: each image's layers applied in order onto
//! one directory (whiteouts deleting what lower layers put there), built
//! once per image; containers then mount it as the lower layer of an
//! overlay of their own, so they share it copy-on-write.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::{Image, ImageError, Result, Store, io};

/// A file that deletes its namesake from lower layers.
const WHITEOUT: &str = ".wh.";
/// A file that hides everything lower layers put in its directory.
const OPAQUE: &str = ".wh..wh..opq";

/// Removes `path`, whatever it is; nothing if it is not there.
fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// The entry's path, relative and without `.` or `..`; `None` if it would
/// leave the root.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(clean)
}

/// Applies one layer (a tar stream) onto `root`.
pub fn apply_layer(root: &Path, layer: impl Read) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(layer);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    // What this layer wrote, so an opaque marker hides only what lay below.
    let mut written: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let Some(path) = clean(&entry.path()?) else {
            continue;
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == OPAQUE {
            let dir = root.join(&parent);
            if let Ok(children) = std::fs::read_dir(&dir) {
                for child in children.flatten() {
                    let relative = parent.join(child.file_name());
                    if !written.contains(&relative) {
                        remove(&child.path())?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            remove(&root.join(&parent).join(hidden))?;
            continue;
        }
        // A directory replacing a file (or the reverse) replaces it whole.
        let target = root.join(&path);
        if let Ok(existing) = std::fs::symlink_metadata(&target)
            && existing.is_dir() != entry.header().entry_type().is_dir()
        {
            remove(&target)?;
        }
        entry.unpack_in(root)?;
        written.insert(path);
    }
    Ok(())
}

impl Store {
    /// The directory holding `image`'s root filesystem, built on first use.
    pub fn rootfs(&self, image: &Image) -> Result<PathBuf> {
        let dir = self
            .root
            .join("rootfs")
            .join(image.manifest.trim_start_matches("sha256:"));
        if dir.is_dir() {
            return Ok(dir);
        }
        let building = self.root.join(format!(
            "rootfs/.building-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&building).map_err(io("create", &building))?;
        let outcome = (|| {
            for (digest, media_type) in &image.layers {
                if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
                    return Err(ImageError::Format {
                        file: self.blob_path(digest),
                        reason: "gzip-compressed layers are not unpacked yet".into(),
                    });
                }
                let path = self.blob_path(digest);
                let file = std::fs::File::open(&path).map_err(io("open", &path))?;
                apply_layer(&building, std::io::BufReader::new(file))
                    .map_err(io("unpack a layer into", &building))?;
            }
            std::fs::rename(&building, &dir).map_err(io("rename", &dir))
        })();
        if outcome.is_err() {
            drop(std::fs::remove_dir_all(&building));
        }
        outcome.map(|()| dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, contents) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match contents {
                Some(text) if path.contains("..") => {
                    // The builder refuses such paths; a hostile archive would not.
                    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                    header.set_size(text.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    builder.append(&header, text.as_bytes()).unwrap();
                }
                Some(text) => {
                    header.set_size(text.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    builder
                        .append_data(&mut header, path, text.as_bytes())
                        .unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    header.set_cksum();
                    builder
                        .append_data(&mut header, path, std::io::empty())
                        .unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn files(root: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    found.push(path.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers() {
        let root = tempfile::tempdir().unwrap();
        let lower = layer(&[
            ("a/", None),
            ("a/file1", Some("1")),
            ("a/file2", Some("2")),
            ("b/", None),
            ("b/x", Some("x")),
            ("c", Some("a file")),
        ]);
        let upper = layer(&[
            ("a/.wh.file1", Some("")),
            ("b/.wh..wh..opq", Some("")),
            ("b/y", Some("y")),
            ("c/", None),
            ("c/new", Some("now a directory")),
            ("../escape", Some("never written")),
        ]);
        apply_layer(root.path(), lower.as_slice()).unwrap();
        apply_layer(root.path(), upper.as_slice()).unwrap();
        assert_eq!(files(root.path()), ["a/file2", "b/y", "c/new"]);
        assert!(!root.path().parent().unwrap().join("escape").exists());
    }
}
