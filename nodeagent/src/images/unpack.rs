//! Root filesystems from layers: each image's layers applied in order onto
//! one directory (whiteouts deleting what lower layers put there), built
//! once per image; containers then mount it as the lower layer of an
//! overlay of their own, so they share it copy-on-write.
//!
//! Layers are plain or gzip-compressed tars (by media type, or by their
//! first bytes whatever the type says); zstd-compressed ones are refused.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use super::{Image, ImageError, Result, Store, io};

/// A file that deletes its namesake from lower layers.
const WHITEOUT: &str = ".wh.";
/// A file that hides everything lower layers put in its directory.
const OPAQUE: &str = ".wh..wh..opq";

/// The first bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The tar stream of the layer blob at `path` (of type `media_type`),
/// decompressed as it is read.
///
/// # Errors
/// [`ImageError::Io`] if it cannot be read; [`ImageError::Format`] if it is
/// zstd-compressed.
pub fn layer_reader(path: &Path, media_type: &str) -> Result<Box<dyn Read + Send>> {
    let file = std::fs::File::open(path).map_err(io("open", path))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let head = reader.fill_buf().map_err(io("read", path))?;
    if media_type.ends_with("+zstd") || head.starts_with(&ZSTD_MAGIC) {
        return Err(ImageError::Format {
            file: path.to_owned(),
            reason: format!(
                "zstd-compressed layers ({media_type}) are not supported; push the image with gzip-compressed layers"
            ),
        });
    }
    let gzip = media_type.ends_with("+gzip") || media_type.ends_with(".gzip");
    if gzip || head.starts_with(&GZIP_MAGIC) {
        // Several gzip members may follow one another (pigz, appended layers).
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

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
                let layer = layer_reader(&self.blob_path(digest), media_type)?;
                apply_layer(&building, layer).map_err(io("unpack a layer into", &building))?;
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
    fn gzip_layers_unpack_and_zstd_layers_are_refused() {
        use std::io::Write;
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let plain = layer(&[("etc/", None), ("etc/motd", Some("hello"))]);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&plain).unwrap();
        let gzipped = encoder.finish().unwrap();
        let second = layer(&[("etc/issue", Some("keelson"))]);
        let gzip_digest = store.put_blob(&gzipped, None).unwrap();
        let second_digest = store.put_blob(&second, None).unwrap();
        let image = |layers: Vec<(String, String)>| Image {
            name: "keelson.test/layers:1".into(),
            manifest: crate::images::digest_of(format!("{layers:?}").as_bytes()),
            config: String::new(),
            layers,
            size: 0,
            repo_digest: None,
        };
        // Docker's gzip type; then a plain tar labelled as one.
        let pulled = image(vec![
            (
                gzip_digest.clone(),
                "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
            ),
            (
                second_digest,
                "application/vnd.oci.image.layer.v1.tar".into(),
            ),
        ]);
        let rootfs = store.rootfs(&pulled).unwrap();
        assert_eq!(files(&rootfs), ["etc/issue", "etc/motd"]);
        // gzip found by its magic bytes, whatever the type says.
        let mislabelled = image(vec![(
            gzip_digest,
            "application/vnd.oci.image.layer.v1.tar".into(),
        )]);
        assert_eq!(files(&store.rootfs(&mislabelled).unwrap()), ["etc/motd"]);

        let zstd_digest = store
            .put_blob(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0], None)
            .unwrap();
        for media_type in [
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar",
        ] {
            let error = store
                .rootfs(&image(vec![(zstd_digest.clone(), media_type.into())]))
                .unwrap_err();
            assert!(
                error.to_string().contains("zstd-compressed layers"),
                "{error}"
            );
        }
        // Nothing half-built is left behind.
        let building: Vec<_> = std::fs::read_dir(root.path().join("rootfs"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".building"))
            .collect();
        assert!(building.is_empty());
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
