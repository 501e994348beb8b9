//! The kubelet's atomic writer: a volume's files (a ConfigMap's keys, a
//! Secret's, the Downward API's) change all at once, never one by one.
//!
//! ```text
//!  VOLUME/..2024_05_01_10_00_00.1234567/   the files of one version (0755)
//!         ..data -> ..2024_05_01_10_00_00.1234567   swapped by rename(2)
//!         key    -> ..data/key              one link per top-level name
//!         dir    -> ..data/dir
//! ```
//!
//! A write of a payload equal to what is there does nothing; otherwise the
//! new version is written beside the old one, `..data_tmp` is pointed at it
//! and renamed over `..data`, then names no longer in the payload and the
//! old version are removed. Names starting with `..` are reserved.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{SetUpError, io};

/// The link to the current version.
pub(crate) const DATA_LINK: &str = "..data";
/// The link made before it replaces [`DATA_LINK`].
const NEW_DATA_LINK: &str = "..data_tmp";
const MAX_FILE_NAME: usize = 255;
const MAX_PATH: usize = 4096;

/// One file of a payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileProjection {
    pub(crate) data: Vec<u8>,
    /// Permission bits (`defaultMode`, or an item's `mode`).
    pub(crate) mode: u32,
}

/// Relative path → file.
pub(crate) type Payload = BTreeMap<String, FileProjection>;

/// Checks a payload path as the kubelet does: relative, no `..` element,
/// not starting with `..`, names of at most 255 bytes, at most 4096 in all.
pub(crate) fn validate_path(path: &str) -> Result<(), SetUpError> {
    let invalid = |why: String| Err(SetUpError::InvalidPath(why));
    if path.is_empty() {
        return invalid(format!("invalid path: must not be empty: {path:?}"));
    }
    if path.starts_with('/') {
        return invalid(format!("invalid path: must be relative path: {path}"));
    }
    if path.len() > MAX_PATH {
        return invalid(format!(
            "invalid path: must be less than or equal to {MAX_PATH} characters"
        ));
    }
    let items: Vec<&str> = path.split('/').collect();
    for item in &items {
        if *item == ".." {
            return invalid(format!("invalid path: must not contain '..': {path}"));
        }
        if item.len() > MAX_FILE_NAME {
            return invalid(format!(
                "invalid path: filenames must be less than or equal to {MAX_FILE_NAME} characters"
            ));
        }
    }
    if items[0].starts_with("..") && items[0].len() > 2 {
        return invalid(format!("invalid path: must not start with '..': {path}"));
    }
    Ok(())
}

/// `a//b/./c/` → `a/b/c` (Go's `filepath.Clean` of a path without `..`).
pub(crate) fn clean_path(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

fn not_found(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::NotFound
}

/// Writes `payload` into `target` (an existing directory) atomically;
/// `true` if anything changed.
///
/// Errors: an invalid path ([`SetUpError::InvalidPath`], nothing written),
/// or the file system's ([`SetUpError::Io`]; the previous version stays).
pub(crate) fn write(target: &Path, payload: &Payload) -> Result<bool, SetUpError> {
    let mut clean = Payload::new();
    for (path, file) in payload {
        validate_path(path)?;
        let cleaned = clean_path(path);
        if cleaned == "." {
            return Err(SetUpError::InvalidPath(format!(
                "invalid path: must name a file: {path}"
            )));
        }
        clean.insert(cleaned, file.clone());
    }
    let data_link = target.join(DATA_LINK);
    let old = match std::fs::read_link(&data_link) {
        Ok(old) => Some(old),
        Err(error) if not_found(&error) => None,
        Err(error) => return Err(io("read the link", &data_link)(error)),
    };
    let mut remove = BTreeSet::new();
    if let Some(old) = &old {
        let old_dir = target.join(old);
        remove = paths_to_remove(&clean, &old_dir)?;
        if !should_write(&clean, &old_dir)? && remove.is_empty() {
            // Up to date; the visible links may still be missing (a crash
            // between the swap and their creation).
            create_visible(target, &clean)?;
            return Ok(false);
        }
    }
    let version = new_version_dir(target)?;
    let written = write_files(&version, &clean).and_then(|()| create_visible(target, &clean));
    if let Err(error) = written {
        drop(std::fs::remove_dir_all(&version));
        return Err(error);
    }
    let name = version.file_name().map(PathBuf::from).unwrap_or_default();
    let new_link = target.join(NEW_DATA_LINK);
    // Left over by a write that stopped halfway.
    match std::fs::remove_file(&new_link) {
        Err(error) if !not_found(&error) => return Err(io("remove", &new_link)(error)),
        _ => {}
    }
    if let Err(error) = std::os::unix::fs::symlink(&name, &new_link) {
        drop(std::fs::remove_dir_all(&version));
        return Err(io("link", &new_link)(error));
    }
    if let Err(error) = std::fs::rename(&new_link, &data_link) {
        drop(std::fs::remove_file(&new_link));
        drop(std::fs::remove_dir_all(&version));
        return Err(io("rename", &new_link)(error));
    }
    // Only the top-level names are links; what is below them went with
    // the old version.
    for path in remove.iter().filter(|p| !p.contains('/')) {
        let visible = target.join(path);
        match std::fs::remove_file(&visible) {
            Err(error) if !not_found(&error) => return Err(io("remove", &visible)(error)),
            _ => {}
        }
    }
    remove_old_versions(target, &name)?;
    Ok(true)
}

/// Paths (files and directories) of the old version that the payload no
/// longer has.
fn paths_to_remove(payload: &Payload, old_dir: &Path) -> Result<BTreeSet<String>, SetUpError> {
    let mut present = BTreeSet::new();
    let mut stack = vec![(old_dir.to_owned(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if not_found(&error) => continue,
            Err(error) => return Err(io("read", &dir)(error)),
        };
        for entry in entries {
            let entry = entry.map_err(io("read", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if entry
                .file_type()
                .map_err(io("stat", &entry.path()))?
                .is_dir()
            {
                stack.push((entry.path(), relative.clone()));
            }
            present.insert(relative);
        }
    }
    let mut wanted = BTreeSet::new();
    for path in payload.keys() {
        let mut sub = path.as_str();
        loop {
            wanted.insert(sub.to_owned());
            match sub.rsplit_once('/') {
                Some((parent, _)) => sub = parent,
                None => break,
            }
        }
    }
    Ok(present.difference(&wanted).cloned().collect())
}

/// Whether any file of the payload differs from the old version's (its
/// bytes or its mode) or is missing there.
fn should_write(payload: &Payload, old_dir: &Path) -> Result<bool, SetUpError> {
    for (path, file) in payload {
        let on_disk = old_dir.join(path);
        let metadata = match std::fs::symlink_metadata(&on_disk) {
            Ok(metadata) => metadata,
            Err(error) if not_found(&error) => return Ok(true),
            Err(error) => return Err(io("stat", &on_disk)(error)),
        };
        if !metadata.is_file() || metadata.permissions().mode() & 0o7777 != file.mode {
            return Ok(true);
        }
        if std::fs::read(&on_disk).map_err(io("read", &on_disk))? != file.data {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A new, empty version directory: `..YYYY_MM_DD_HH_MM_SS.N`, mode 0755.
fn new_version_dir(target: &Path) -> Result<PathBuf, SetUpError> {
    let stamp = chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S");
    let mut last = None;
    for _ in 0..100 {
        let random = (uuid::Uuid::new_v4().as_u128() as u32).to_string();
        let dir = target.join(format!("..{stamp}.{random}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(io("chmod", &dir))?;
                return Ok(dir);
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => last = Some(error),
            Err(error) => return Err(io("create", &dir)(error)),
        }
    }
    Err(io("create a version directory in", target)(
        last.unwrap_or_else(|| std::io::Error::other("no free name")),
    ))
}

fn write_files(dir: &Path, payload: &Payload) -> Result<(), SetUpError> {
    for (path, file) in payload {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        std::fs::write(&full, &file.data).map_err(io("write", &full))?;
        // Whatever the umask.
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(file.mode))
            .map_err(io("chmod", &full))?;
    }
    Ok(())
}

/// `NAME -> ..data/NAME` for each top-level name of the payload, if missing.
fn create_visible(target: &Path, payload: &Payload) -> Result<(), SetUpError> {
    let tops: BTreeSet<&str> = payload
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p))
        .collect();
    for top in tops {
        let visible = target.join(top);
        match std::fs::read_link(&visible) {
            Err(error) if not_found(&error) => {
                std::os::unix::fs::symlink(Path::new(DATA_LINK).join(top), &visible)
                    .map_err(io("link", &visible))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Removes every version directory but `current` (the previous one, and
/// any a crash left behind).
fn remove_old_versions(target: &Path, current: &Path) -> Result<(), SetUpError> {
    let entries = std::fs::read_dir(target).map_err(io("read", target))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let text = name.to_string_lossy();
        let is_version = text.starts_with("..")
            && text != DATA_LINK
            && text != NEW_DATA_LINK
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if is_version && Path::new(&name) != current {
            std::fs::remove_dir_all(entry.path()).map_err(io("remove", &entry.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(path, data, mode)| {
                (
                    (*path).to_owned(),
                    FileProjection {
                        data: data.as_bytes().to_vec(),
                        mode: *mode,
                    },
                )
            })
            .collect()
    }

    /// Visible names (not starting with `..`), with what reading them gives.
    fn visible(dir: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![(dir.to_owned(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if prefix.is_empty() && name.starts_with("..") {
                    continue;
                }
                let relative = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                let path = entry.path();
                if std::fs::metadata(&path).unwrap().is_dir() {
                    stack.push((path, relative));
                } else {
                    out.insert(relative, std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        out
    }

    fn versions(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..2"))
            .collect()
    }

    #[test]
    fn paths_are_checked_as_the_kubelet_does() {
        let long = "a".repeat(256);
        let cases: &[(&str, Option<&str>)] = &[
            ("key", None),
            ("dir/key", None),
            (
                "..key",
                Some("invalid path: must not start with '..': ..key"),
            ),
            ("a/..b", None),
            ("..", Some("invalid path: must not contain '..': ..")),
            (
                "a/../b",
                Some("invalid path: must not contain '..': a/../b"),
            ),
            (
                "/etc/passwd",
                Some("invalid path: must be relative path: /etc/passwd"),
            ),
            ("", Some("invalid path: must not be empty: \"\"")),
            (
                &long,
                Some("invalid path: filenames must be less than or equal to 255 characters"),
            ),
        ];
        for (path, expected) in cases {
            let got = validate_path(path).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), *expected, "{path}");
        }
        assert_eq!(clean_path("a//b/./c/"), "a/b/c");
        assert_eq!(clean_path("./"), ".");
    }

    #[test]
    fn writes_link_every_top_level_name_into_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = payload(&[("a", "1", 0o644), ("sub/b", "2", 0o400)]);
        assert!(write(dir.path(), &first).unwrap());
        assert_eq!(
            std::fs::read_link(dir.path().join("a")).unwrap(),
            Path::new("..data/a")
        );
        assert_eq!(
            std::fs::read_link(dir.path().join("sub")).unwrap(),
            Path::new("..data/sub")
        );
        let version = std::fs::read_link(dir.path().join(DATA_LINK)).unwrap();
        let name = version.to_string_lossy().into_owned();
        assert!(name.starts_with("..2") && name.contains('.'), "{name}");
        let meta = std::fs::metadata(dir.path().join(&version)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        let b = std::fs::metadata(dir.path().join("sub/b")).unwrap();
        assert_eq!(b.permissions().mode() & 0o777, 0o400);
        assert_eq!(
            visible(dir.path()),
            BTreeMap::from([("a".into(), "1".into()), ("sub/b".into(), "2".into())])
        );
    }

    #[test]
    fn updates_swap_every_file_at_once() {
        // (first payload, second payload, whether the second writes)
        let cases: Vec<(Payload, Payload, bool)> = vec![
            (
                payload(&[("a", "1", 0o644), ("b", "2", 0o644)]),
                payload(&[("a", "1", 0o644), ("b", "2", 0o644)]),
                false,
            ),
            (
                payload(&[("a", "1", 0o644)]),
                payload(&[("a", "changed", 0o644)]),
                true,
            ),
            (
                payload(&[("a", "1", 0o644), ("b", "2", 0o644)]),
                payload(&[("a", "1", 0o644)]),
                true,
            ),
            (
                payload(&[("a", "1", 0o644)]),
                payload(&[("a", "1", 0o644), ("d/e", "3", 0o644)]),
                true,
            ),
            (
                payload(&[("d/x", "1", 0o644), ("d/y", "2", 0o644)]),
                payload(&[("d/x", "1", 0o644)]),
                true,
            ),
            (
                payload(&[("a", "1", 0o644)]),
                payload(&[("a", "1", 0o600)]),
                true,
            ),
            (payload(&[("a", "1", 0o644)]), Payload::new(), true),
        ];
        for (index, (first, second, writes)) in cases.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), &first).unwrap();
            let before = std::fs::read_link(dir.path().join(DATA_LINK)).unwrap();
            assert_eq!(write(dir.path(), &second).unwrap(), writes, "case {index}");
            let after = std::fs::read_link(dir.path().join(DATA_LINK)).unwrap();
            assert_eq!(before != after, writes, "case {index}");
            let expected: BTreeMap<String, String> = second
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.data).into_owned()))
                .collect();
            assert_eq!(visible(dir.path()), expected, "case {index}");
            assert_eq!(
                versions(dir.path()).len(),
                1,
                "case {index}: old versions go"
            );
        }
    }

    #[test]
    fn an_up_to_date_volume_gets_its_missing_links_back() {
        let dir = tempfile::tempdir().unwrap();
        let files = payload(&[("a", "1", 0o644)]);
        write(dir.path(), &files).unwrap();
        std::fs::remove_file(dir.path().join("a")).unwrap();
        assert!(!write(dir.path(), &files).unwrap());
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "1");
    }

    #[test]
    fn leftovers_of_an_interrupted_write_are_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &payload(&[("a", "1", 0o644)])).unwrap();
        std::fs::create_dir(dir.path().join("..2020_01_01_00_00_00.1")).unwrap();
        std::os::unix::fs::symlink("nowhere", dir.path().join(NEW_DATA_LINK)).unwrap();
        assert!(write(dir.path(), &payload(&[("a", "2", 0o644)])).unwrap());
        assert_eq!(versions(dir.path()).len(), 1);
        assert!(!dir.path().join(NEW_DATA_LINK).exists());
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "2");
    }

    #[test]
    fn an_invalid_payload_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let error = write(
            dir.path(),
            &payload(&[("ok", "1", 0o644), ("../x", "2", 0o644)]),
        )
        .unwrap_err();
        assert!(matches!(error, SetUpError::InvalidPath(_)), "{error}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
