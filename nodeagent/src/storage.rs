//! The node's share of local-path volumes: where they live, and removing a
//! deleted volume's directory.
//!
//! ```text
//!  DATA_DIR/storage/pvc-UID_NAMESPACE_NAME/    made by the first pod that mounts it (DirectoryOrCreate)
//!  PersistentVolume deleted (reclaim Delete) ─► still held by keelson.io/local-path-cleanup
//!     pinned to this node, its path under DATA_DIR/storage? ─► directory removed ─► finalizer removed
//! ```
//!
//! A volume whose path is anywhere else is never touched: the finalizer is
//! left for an operator to look at.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use keelson_control::client::{Client, ListParams, Patch};
use keelson_control::controllers::volume::CLEANUP_FINALIZER;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The directory of this node's local-path volumes.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("storage")
}

/// Whether `volume` is pinned to `node` by its required node affinity.
fn pinned_to(volume: &PersistentVolume, node: &str) -> bool {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .is_some_and(|r| {
            r.node_selector_terms.iter().any(|t| {
                t.match_expressions.iter().flatten().any(|e| {
                    e.key == "kubernetes.io/hostname"
                        && e.operator == "In"
                        && e.values.iter().flatten().any(|v| v == node)
                })
            })
        })
}

/// The directory of a deleted volume of this node's to remove: a direct
/// child of `storage`, nothing else.
fn removable(volume: &PersistentVolume, node: &str, storage: &Path) -> Option<PathBuf> {
    if volume.metadata.deletion_timestamp.is_none()
        || !volume
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == CLEANUP_FINALIZER)
        || !pinned_to(volume, node)
    {
        return None;
    }
    let path = PathBuf::from(&volume.spec.as_ref()?.host_path.as_ref()?.path);
    (path.parent() == Some(storage) && !path.to_string_lossy().contains("..")).then_some(path)
}

/// Every `period`, removes the directories of this node's deleted
/// local-path volumes and lets their objects go.
pub async fn run(
    client: Client,
    node: String,
    data_dir: PathBuf,
    period: Duration,
    shutdown: CancellationToken,
) {
    let storage = dir(&data_dir);
    loop {
        match client
            .list::<PersistentVolume>(None, &ListParams::default())
            .await
        {
            Ok(list) => {
                for volume in &list.items {
                    if let Some(path) = removable(volume, &node, &storage) {
                        release(&client, volume, &path).await;
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "could not list PersistentVolumes"),
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn release(client: &Client, volume: &PersistentVolume, path: &Path) {
    let name = volume.metadata.name.clone().unwrap_or_default();
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(volume = %name, path = %path.display(), %error, "cannot remove a deleted volume's directory");
            return;
        }
    }
    let rest: Vec<&String> = volume
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != CLEANUP_FINALIZER)
        .collect();
    // The resourceVersion makes it a compare-and-set.
    let patch = json!({"metadata": {"finalizers": rest,
        "resourceVersion": volume.metadata.resource_version}});
    match client
        .patch::<PersistentVolume>(None, &name, None, Patch::Merge, &patch)
        .await
    {
        Ok(_) => {
            tracing::info!(volume = %name, path = %path.display(), "removed a deleted volume's directory")
        }
        Err(error) if error.is_not_found() => {}
        Err(error) => tracing::debug!(volume = %name, %error, "could not release a deleted volume"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(node: &str, path: &str, deleted: bool) -> PersistentVolume {
        let mut v = json!({"metadata": {"name": "pvc-1", "finalizers": [CLEANUP_FINALIZER]},
            "spec": {"hostPath": {"path": path},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}});
        if deleted {
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_this_nodes_deleted_volumes_under_its_storage_go() {
        let storage = Path::new("/data/storage");
        let mine = "/data/storage/pvc-1_default_www";
        assert_eq!(
            removable(&volume("a", mine, true), "a", storage),
            Some(PathBuf::from(mine))
        );
        assert_eq!(removable(&volume("a", mine, false), "a", storage), None);
        assert_eq!(removable(&volume("b", mine, true), "a", storage), None);
        assert_eq!(removable(&volume("a", "/etc", true), "a", storage), None);
        assert_eq!(
            removable(
                &volume("a", "/data/storage/x/../../etc", true),
                "a",
                storage
            ),
            None
        );
        assert_eq!(
            removable(&volume("a", "/data/storage", true), "a", storage),
            None
        );
    }
}
