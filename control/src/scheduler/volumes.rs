//! What a pod's PersistentVolumeClaims ask of its node (the scheduler's
//! VolumeBinding plugin, reduced to what Keelson's volumes need).
//!
//! ```text
//!  claim missing / being deleted ─► unschedulable, said as Kubernetes says it
//!  claim bound ─► its volume's node affinity filters the nodes
//!  claim unbound, class WaitForFirstConsumer ─► any node; once one is chosen the claim is
//!                                               annotated with it before the pod is bound
//!  claim unbound, binding Immediate ─► unschedulable until the binder binds it
//! ```

use k8s_openapi::api::core::v1::{
    Node, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;

pub use crate::controllers::volume::SELECTED_NODE;
use crate::controllers::volume::admits;
use crate::runtime::Informer;

/// The caches the scheduler reads claims, volumes and classes from.
#[derive(Clone, Debug)]
pub struct Storage {
    pub claims: Informer<PersistentVolumeClaim>,
    pub volumes: Informer<PersistentVolume>,
    pub classes: Informer<StorageClass>,
}

/// What the pod's claims need of a node.
#[derive(Clone, Debug, Default)]
pub struct Needs {
    /// Volumes the pod's bound claims hold: a node must be admitted by each.
    pub pinned: Vec<PersistentVolumeSpec>,
    /// Unbound claims waiting for their first consumer: annotated with the
    /// chosen node before the pod is bound.
    pub to_select: Vec<String>,
    /// A node an unbound claim was already given to.
    pub selected: Option<String>,
}

impl Needs {
    pub fn admit(&self, node: &Node) -> bool {
        self.pinned.iter().all(|v| admits(v, node))
            && self
                .selected
                .as_ref()
                .is_none_or(|s| node.metadata.name.as_ref() == Some(s))
    }
}

/// The claims `pod` mounts.
fn claim_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone())
        .collect()
}

impl Storage {
    /// What the pod's claims need, or why no node can take the pod now.
    pub fn needs(&self, pod: &Pod) -> Result<Needs, String> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut needs = Needs::default();
        for name in claim_names(pod) {
            let Some(claim) = self.claims.get_in(Some(namespace), &name) else {
                return Err(format!("persistentvolumeclaim \"{name}\" not found"));
            };
            if claim.metadata.deletion_timestamp.is_some() {
                return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
            }
            let spec = claim.spec.clone().unwrap_or_default();
            if let Some(volume) = spec.volume_name.as_deref() {
                match self.volumes.get(volume) {
                    Some(v) => needs.pinned.push(v.spec.clone().unwrap_or_default()),
                    None => {
                        return Err(format!(
                            "persistentvolume \"{volume}\" of claim \"{name}\" not found"
                        ));
                    }
                }
                continue;
            }
            let waits = spec
                .storage_class_name
                .as_deref()
                .and_then(|class| self.classes.get(class))
                .and_then(|c| c.volume_binding_mode.clone())
                .as_deref()
                == Some("WaitForFirstConsumer");
            if !waits {
                return Err("pod has unbound immediate PersistentVolumeClaims".to_owned());
            }
            let selected = claim
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SELECTED_NODE));
            match selected {
                // Being provisioned there (or about to be): only that node.
                Some(node) => needs.selected = Some(node.clone()),
                None => needs.to_select.push(name),
            }
        }
        Ok(needs)
    }
}
