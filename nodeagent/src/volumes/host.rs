//! Volumes that are paths of the node: `hostPath`, and claims bound to
//! `hostPath` or `local` PersistentVolumes.
//!
//! ```text
//!  hostPath {path, type} ─► type check (make it for …OrCreate) ─► bind-mounted as it is
//!  persistentVolumeClaim ─► claim Bound? ─► its PersistentVolume, bound back to it?
//!                           ─► spec.hostPath.path (type-checked) | spec.local.path
//! ```

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};

use super::SetUpError;

fn failed(message: String) -> SetUpError {
    SetUpError::HostPath(message)
}

/// What is at a path, as the kubelet tells file types apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Missing,
    Directory,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

fn kind(path: &Path) -> Kind {
    match std::fs::metadata(path) {
        Err(_) => Kind::Missing,
        Ok(m) if m.is_dir() => Kind::Directory,
        Ok(m) if m.file_type().is_socket() => Kind::Socket,
        Ok(m) if m.file_type().is_char_device() => Kind::CharDevice,
        Ok(m) if m.file_type().is_block_device() => Kind::BlockDevice,
        Ok(_) => Kind::File,
    }
}

/// Checks a hostPath against its `type` as the kubelet does, making it
/// for `DirectoryOrCreate` (0755, with its parents) and `FileOrCreate`
/// (0644, not its parents). Without a type, a missing path is made a
/// directory, as container runtimes do for binds.
///
/// Errors: `..` in the path, a path that is not what the type says, an
/// unknown type, or what making it failed with.
pub(crate) fn check(path: &str, type_: Option<&str>) -> Result<(), SetUpError> {
    if path.split('/').any(|p| p == "..") {
        return Err(failed(format!(
            "invalid HostPath `{path}`: must not contain '..'"
        )));
    }
    let at = Path::new(path);
    let made = |error: std::io::Error| SetUpError::Io {
        action: "create",
        path: at.to_owned(),
        source: error,
    };
    let is_not = |what: &str| {
        Err(failed(format!(
            "hostPath type check failed: {path} is not {what}"
        )))
    };
    let found = kind(at);
    match type_.unwrap_or_default() {
        "" => {
            if found == Kind::Missing {
                std::fs::create_dir_all(at).map_err(made)?;
            }
            Ok(())
        }
        "DirectoryOrCreate" if found == Kind::Missing => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(at)
            .map_err(made),
        "DirectoryOrCreate" | "Directory" if found != Kind::Directory => is_not("a directory"),
        "FileOrCreate" if found == Kind::Missing => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(at)
            .map(drop)
            .map_err(made),
        "FileOrCreate" | "File" if found != Kind::File => is_not("a file"),
        "Socket" if found != Kind::Socket => is_not("a socket file"),
        "CharDevice" if found != Kind::CharDevice => is_not("a character device"),
        "BlockDevice" if found != Kind::BlockDevice => is_not("a block device"),
        "DirectoryOrCreate" | "Directory" | "FileOrCreate" | "File" | "Socket" | "CharDevice"
        | "BlockDevice" => Ok(()),
        other => Err(failed(format!("{other} is an invalid volume type"))),
    }
}

fn claim_error(namespace: &str, claim: &str, reason: String) -> SetUpError {
    SetUpError::Claim {
        namespace: namespace.to_owned(),
        claim: claim.to_owned(),
        reason,
    }
}

/// The PersistentVolume a claim is bound to.
///
/// Errors: as the kubelet's: no such claim, a claim being deleted, not
/// bound, or bound to no volume.
pub(crate) fn bound_volume(
    namespace: &str,
    name: &str,
    claim: Option<&PersistentVolumeClaim>,
) -> Result<String, SetUpError> {
    let error = |reason: &str| claim_error(namespace, name, reason.to_owned());
    let Some(claim) = claim else {
        return Err(error(&format!(
            "failed to fetch PVC from API server: persistentvolumeclaims {name:?} not found"
        )));
    };
    if claim.metadata.deletion_timestamp.is_some() {
        return Err(error("PVC is being deleted"));
    }
    if claim.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        return Err(error("PVC is not bound"));
    }
    match claim.spec.as_ref().and_then(|s| s.volume_name.clone()) {
        Some(volume) if !volume.is_empty() => Ok(volume),
        _ => Err(error("PVC has empty pvc.Spec.VolumeName")),
    }
}

/// The node path of the PersistentVolume `name` a claim is bound to, and
/// whether it is a `local` one (else `hostPath`, type-checked).
///
/// Errors: no such volume, a volume not bound back to the claim, a volume
/// of another kind (unsupported here), or the hostPath checks'.
pub(crate) fn volume_path(
    namespace: &str,
    claim_name: &str,
    claim: Option<&PersistentVolumeClaim>,
    name: &str,
    volume: Option<&PersistentVolume>,
) -> Result<(PathBuf, bool), SetUpError> {
    let error = |reason: String| claim_error(namespace, claim_name, reason);
    let Some(volume) = volume else {
        return Err(error(format!(
            "failed to fetch PV {name} from API server: persistentvolumes {name:?} not found"
        )));
    };
    let spec = volume.spec.clone().unwrap_or_default();
    let Some(claim_ref) = &spec.claim_ref else {
        return Err(error(format!(
            "found PV object {name} but it has a nil pv.Spec.ClaimRef indicating it is not yet bound to the claim"
        )));
    };
    let claim_uid = claim
        .and_then(|c| c.metadata.uid.clone())
        .unwrap_or_default();
    let bound_uid = claim_ref.uid.clone().unwrap_or_default();
    if bound_uid != claim_uid {
        return Err(error(format!(
            "found PV object {name} but its pv.Spec.ClaimRef.UID {bound_uid} does not point to claim.UID {claim_uid}"
        )));
    }
    if spec.volume_mode.as_deref() == Some("Block") {
        return Err(SetUpError::Unsupported(format!(
            "PersistentVolume {name} has volumeMode Block"
        )));
    }
    if let Some(host) = &spec.host_path {
        check(&host.path, host.type_.as_deref())?;
        return Ok((PathBuf::from(&host.path), false));
    }
    if let Some(local) = &spec.local {
        if !Path::new(&local.path).exists() {
            return Err(failed(format!(
                "local volume {name}: path {:?} does not exist",
                local.path
            )));
        }
        return Ok((PathBuf::from(&local.path), true));
    }
    let json = serde_json::to_value(&spec).unwrap_or_default();
    let kind = json
        .as_object()
        .and_then(|o| {
            o.keys()
                .find(|k| {
                    !matches!(
                        k.as_str(),
                        "accessModes"
                            | "capacity"
                            | "claimRef"
                            | "mountOptions"
                            | "nodeAffinity"
                            | "persistentVolumeReclaimPolicy"
                            | "storageClassName"
                            | "volumeMode"
                            | "volumeAttributesClassName"
                    )
                })
                .cloned()
        })
        .unwrap_or_else(|| "none".to_owned());
    Err(SetUpError::Unsupported(format!(
        "PersistentVolume {name} is {kind}, not hostPath or local"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_paths_are_checked_against_their_type() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_string_lossy().into_owned();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let socket = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let cases: Vec<(String, Option<&str>, Result<(), String>)> = vec![
            (d.clone(), None, Ok(())),
            (d.clone(), Some(""), Ok(())),
            (d.clone(), Some("Directory"), Ok(())),
            (format!("{d}/file"), Some("File"), Ok(())),
            (format!("{d}/sock"), Some("Socket"), Ok(())),
            ("/dev/null".into(), Some("CharDevice"), Ok(())),
            (
                format!("{d}/file"),
                Some("Directory"),
                Err(format!(
                    "hostPath type check failed: {d}/file is not a directory"
                )),
            ),
            (
                format!("{d}/none"),
                Some("Directory"),
                Err(format!(
                    "hostPath type check failed: {d}/none is not a directory"
                )),
            ),
            (
                d.clone(),
                Some("File"),
                Err(format!("hostPath type check failed: {d} is not a file")),
            ),
            (
                format!("{d}/file"),
                Some("Socket"),
                Err(format!(
                    "hostPath type check failed: {d}/file is not a socket file"
                )),
            ),
            (
                format!("{d}/file"),
                Some("CharDevice"),
                Err(format!(
                    "hostPath type check failed: {d}/file is not a character device"
                )),
            ),
            (
                "/dev/null".into(),
                Some("BlockDevice"),
                Err("hostPath type check failed: /dev/null is not a block device".into()),
            ),
            (
                format!("{d}/file"),
                Some("DirectoryOrCreate"),
                Err(format!(
                    "hostPath type check failed: {d}/file is not a directory"
                )),
            ),
            (
                d.clone(),
                Some("FileOrCreate"),
                Err(format!("hostPath type check failed: {d} is not a file")),
            ),
            (
                d.clone(),
                Some("Fancy"),
                Err("Fancy is an invalid volume type".into()),
            ),
            (
                format!("{d}/../etc"),
                None,
                Err(format!(
                    "invalid HostPath `{d}/../etc`: must not contain '..'"
                )),
            ),
        ];
        for (path, type_, expected) in cases {
            let got = check(&path, type_).map_err(|e| e.to_string());
            assert_eq!(got, expected, "{path} {type_:?}");
        }
    }

    #[test]
    fn or_create_types_make_what_is_missing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("a/b");
        check(&made.to_string_lossy(), Some("DirectoryOrCreate")).unwrap();
        let meta = std::fs::metadata(&made).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o755 & !umask());
        let file = dir.path().join("a/f");
        check(&file.to_string_lossy(), Some("FileOrCreate")).unwrap();
        assert!(std::fs::metadata(&file).unwrap().is_file());
        // Not its parents.
        let orphan = dir.path().join("none/f");
        assert!(check(&orphan.to_string_lossy(), Some("FileOrCreate")).is_err());
        // Without a type: a directory, as runtimes make them.
        let untyped = dir.path().join("untyped");
        check(&untyped.to_string_lossy(), None).unwrap();
        assert!(untyped.is_dir());
    }

    fn umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).unwrap()
    }

    #[test]
    fn claims_resolve_to_their_bound_volume_path() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_string_lossy().into_owned();
        let claim = |phase: &str, volume: &str| -> PersistentVolumeClaim {
            serde_json::from_value(json!({
                "metadata": {"name": "data", "namespace": "ns", "uid": "claim-uid"},
                "spec": {"volumeName": volume},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        let bound = claim("Bound", "pv-1");
        assert_eq!(bound_volume("ns", "data", Some(&bound)).unwrap(), "pv-1");
        let cases = [
            (
                None,
                "error processing PVC ns/data: failed to fetch PVC from API server: persistentvolumeclaims \"data\" not found",
            ),
            (
                Some(claim("Pending", "")),
                "error processing PVC ns/data: PVC is not bound",
            ),
            (
                Some(claim("Bound", "")),
                "error processing PVC ns/data: PVC has empty pvc.Spec.VolumeName",
            ),
        ];
        for (claim, expected) in cases {
            assert_eq!(
                bound_volume("ns", "data", claim.as_ref())
                    .unwrap_err()
                    .to_string(),
                expected
            );
        }
        let volume = |spec: serde_json::Value| -> PersistentVolume {
            serde_json::from_value(json!({"metadata": {"name": "pv-1"}, "spec": spec})).unwrap()
        };
        let claimed = json!({"uid": "claim-uid", "name": "data", "namespace": "ns"});
        let path = |pv: Option<PersistentVolume>| {
            volume_path("ns", "data", Some(&bound), "pv-1", pv.as_ref()).map_err(|e| e.to_string())
        };
        assert_eq!(
            path(Some(volume(
                json!({"claimRef": claimed, "hostPath": {"path": d}})
            ))),
            Ok((PathBuf::from(&d), false))
        );
        assert_eq!(
            path(Some(volume(
                json!({"claimRef": claimed, "local": {"path": d}})
            ))),
            Ok((PathBuf::from(&d), true))
        );
        assert_eq!(
            path(Some(volume(
                json!({"claimRef": claimed, "local": {"path": format!("{d}/gone")}})
            ))),
            Err(format!(
                "local volume pv-1: path \"{d}/gone\" does not exist"
            ))
        );
        assert_eq!(
            path(Some(volume(
                json!({"claimRef": claimed, "nfs": {"server": "s", "path": "/x"}, "capacity": {"storage": "1Gi"}})
            ))),
            Err(
                "unsupported volume source: PersistentVolume pv-1 is nfs, not hostPath or local"
                    .into()
            )
        );
        assert_eq!(
            path(Some(volume(json!({"hostPath": {"path": d}})))),
            Err("error processing PVC ns/data: found PV object pv-1 but it has a nil pv.Spec.ClaimRef indicating it is not yet bound to the claim".into())
        );
        assert_eq!(
            path(Some(volume(json!({"claimRef": {"uid": "other"}, "hostPath": {"path": d}})))),
            Err("error processing PVC ns/data: found PV object pv-1 but its pv.Spec.ClaimRef.UID other does not point to claim.UID claim-uid".into())
        );
        assert_eq!(
            path(None),
            Err("error processing PVC ns/data: failed to fetch PV pv-1 from API server: persistentvolumes \"pv-1\" not found".into())
        );
    }
}
