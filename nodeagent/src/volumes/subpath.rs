//! A volumeMount's `subPath`: a path inside the volume, made if missing,
//! that must stay inside it — also against links the pod's containers may
//! place there. As the kubelet does, the path is opened one component at
//! a time without following links, and what was opened is bind-mounted
//! where the runtime takes it from, so a link swapped in afterwards
//! changes nothing.
//!
//! ```text
//!  VOLUME/a/b   (links resolved once; must stay under VOLUME)
//!     open VOLUME, then a, then b: O_PATH|O_NOFOLLOW, each through the previous one's fd
//!     mount --bind /proc/self/fd/N  PODDIR/volume-subpaths/VOLUME_NAME/CONTAINER/INDEX
//! ```

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;

use super::system;

/// Why a subPath cannot be made or opened (logged; containers are told
/// less, as the kubelet tells them).
pub(crate) type Detail = String;

/// Checks a `subPath` as the kubelet does before using it.
///
/// Errors: the kubelet's messages for an absolute path and for `..`.
pub(crate) fn validate(sub_path: &str) -> Result<(), String> {
    if sub_path.starts_with('/') {
        return Err(format!(
            "error SubPath `{sub_path}` must not be an absolute path"
        ));
    }
    if sub_path.split('/').any(|p| p == "..") {
        return Err(format!(
            "unable to provision SubPath `{sub_path}`: must not contain '..'"
        ));
    }
    Ok(())
}

/// `/proc/self/fd/N`: the file `file` has open, whatever its name now.
fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Opens `path` as a handle (`O_PATH`), without following a final link.
fn open_handle(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(path)
}

/// Opens `name` in the directory `dir` without following links; errors
/// if it is one.
fn open_child(dir: &File, name: &std::ffi::OsStr) -> Result<File, Detail> {
    let path = fd_path(dir).join(name);
    let file = open_handle(&path).map_err(|e| format!("open {}: {e}", name.to_string_lossy()))?;
    let metadata = file
        .metadata()
        .map_err(|e| format!("stat {}: {e}", name.to_string_lossy()))?;
    if metadata.file_type().is_symlink() {
        return Err(format!("{} is a symlink", name.to_string_lossy()));
    }
    Ok(file)
}

/// The volume's canonical path, opened.
fn open_volume(volume: &Path) -> Result<(PathBuf, File), Detail> {
    let base =
        std::fs::canonicalize(volume).map_err(|e| format!("resolve {}: {e}", volume.display()))?;
    let file = open_handle(&base).map_err(|e| format!("open {}: {e}", base.display()))?;
    Ok((base, file))
}

/// Makes the directories of `sub_path` in `volume` that are missing, with
/// `mode` (the volume's own), never leaving the volume.
pub(crate) fn make_dirs(volume: &Path, sub_path: &str, mode: u32) -> Result<(), Detail> {
    let (base, mut dir) = open_volume(volume)?;
    for component in Path::new(sub_path).components() {
        let Component::Normal(name) = component else {
            continue;
        };
        let path = fd_path(&dir).join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {
                let made = open_child(&dir, name)?;
                // Through the handle: the mode goes to what was made.
                std::fs::set_permissions(fd_path(&made), std::fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("chmod {}: {e}", name.to_string_lossy()))?;
                dir = made;
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                dir = match open_child(&dir, name) {
                    Ok(next) => next,
                    // A link already there: followed only if it stays inside.
                    Err(_) => {
                        let target = std::fs::canonicalize(&path)
                            .map_err(|e| format!("resolve {}: {e}", name.to_string_lossy()))?;
                        if !target.starts_with(&base) {
                            return Err(format!(
                                "{} is outside the volume {}",
                                target.display(),
                                base.display()
                            ));
                        }
                        open_handle(&target)
                            .map_err(|e| format!("open {}: {e}", target.display()))?
                    }
                };
            }
            Err(error) => return Err(format!("mkdir {}: {error}", name.to_string_lossy())),
        }
    }
    Ok(())
}

/// Opens `sub_path` of `volume` safely: its links resolved once, the
/// result inside the volume, then opened component by component without
/// following links. The handle and its canonical path.
pub(crate) fn open(volume: &Path, sub_path: &str) -> Result<(File, PathBuf), Detail> {
    let (base, mut file) = open_volume(volume)?;
    let resolved = std::fs::canonicalize(volume.join(sub_path))
        .map_err(|e| format!("resolve {sub_path}: {e}"))?;
    let relative = resolved.strip_prefix(&base).map_err(|_| {
        format!(
            "subpath {} not within volume path {}",
            resolved.display(),
            base.display()
        )
    })?;
    for component in relative.components() {
        if let Component::Normal(name) = component {
            file = open_child(&file, name)?;
        }
    }
    Ok((file, resolved))
}

/// Bind-mounts what `file` (from [`open`]) is on `target`, made for it (a
/// directory, or an empty file); kept if `target` is mounted already.
pub(crate) fn bind(file: &File, target: &Path) -> Result<PathBuf, Detail> {
    let is_dir = file
        .metadata()
        .map_err(|e| format!("stat the subpath: {e}"))?
        .is_dir();
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    }
    let made = if is_dir {
        std::fs::create_dir(target)
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(target)
            .map(drop)
    };
    match made {
        Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(format!("create {}: {error}", target.display()));
        }
        _ => {}
    }
    let target =
        std::fs::canonicalize(target).map_err(|e| format!("resolve {}: {e}", target.display()))?;
    if system::is_mount_point(&target).map_err(|e| format!("read the mounts: {e}"))? {
        return Ok(target);
    }
    system::bind(&fd_path(file), &target)
        .map_err(|e| format!("bind-mount on {}: {e}", target.display()))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_are_checked_as_the_kubelet_does() {
        let cases: &[(&str, Option<&str>)] = &[
            ("logs", None),
            ("a/b/c", None),
            ("a/..b", None),
            (
                "/etc",
                Some("error SubPath `/etc` must not be an absolute path"),
            ),
            (
                "..",
                Some("unable to provision SubPath `..`: must not contain '..'"),
            ),
            (
                "a/../../etc",
                Some("unable to provision SubPath `a/../../etc`: must not contain '..'"),
            ),
        ];
        for (sub, expected) in cases {
            assert_eq!(validate(sub).err().as_deref(), *expected, "{sub}");
        }
    }

    #[test]
    fn missing_directories_are_made_inside_the_volume() {
        let volume = tempfile::tempdir().unwrap();
        std::fs::set_permissions(volume.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        make_dirs(volume.path(), "a/b/c", 0o777).unwrap();
        let made = std::fs::metadata(volume.path().join("a/b/c")).unwrap();
        assert!(made.is_dir());
        assert_eq!(made.permissions().mode() & 0o777, 0o777);
        // Again: nothing to do.
        make_dirs(volume.path(), "a/b/c", 0o777).unwrap();
    }

    #[test]
    fn links_may_not_lead_out_of_the_volume() {
        let outside = tempfile::tempdir().unwrap();
        let volume = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), volume.path().join("escape")).unwrap();
        std::fs::create_dir(volume.path().join("real")).unwrap();
        std::fs::write(volume.path().join("real/file"), "inside").unwrap();
        std::os::unix::fs::symlink("real", volume.path().join("inside")).unwrap();

        let error = make_dirs(volume.path(), "escape/new", 0o755).unwrap_err();
        assert!(error.contains("outside the volume"), "{error}");
        assert!(!outside.path().join("new").exists());

        let error = open(volume.path(), "escape/secret").unwrap_err();
        assert!(error.contains("not within volume path"), "{error}");

        // A link that stays inside is followed, once.
        let (_, resolved) = open(volume.path(), "inside/file").unwrap();
        assert_eq!(
            resolved,
            std::fs::canonicalize(volume.path().join("real/file")).unwrap()
        );
    }
}
