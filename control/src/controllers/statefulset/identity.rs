//! A StatefulSet pod's identity, as pure functions: its name and ordinal,
//! the pod a template makes for an ordinal (hostname, subdomain, labels,
//! claims mounted in place of the templates' volumes), its
//! PersistentVolumeClaims, and the owner references the claims carry under
//! `persistentVolumeClaimRetentionPolicy`.
//!
//! ```text
//!  set "web", ordinal 1 ─► pod "web-1" (hostname web-1, subdomain = serviceName,
//!                                       labels: template + pod-name + pod-index + revision)
//!                       └► claim "www-web-1" per volumeClaimTemplate "www",
//!                          labelled with the set's selector, mounted as volume "www"
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::runtime::controller_reference;

/// The label naming a pod after itself, which a Service can select.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label holding a pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// The label naming the ControllerRevision a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// The set's name and the ordinal in a pod's name: `web-3` → `("web", 3)`.
///
/// Kubernetes matches `(.*)-([0-9]+)$`; here the ordinal must also be
/// written as the controller writes it (`web-01` has none), so that two pods
/// can never claim one ordinal.
pub fn parent_and_ordinal(name: &str) -> Option<(&str, i32)> {
    let (parent, digits) = name.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ordinal: i32 = digits.parse().ok()?;
    (ordinal.to_string() == digits).then_some((parent, ordinal))
}

/// The ordinal of one of `set`'s pods (`None` if the pod's name is not
/// `SET-ORDINAL`).
pub fn ordinal_of(set: &StatefulSet, pod: &Pod) -> Option<i32> {
    let (parent, ordinal) = parent_and_ordinal(name_of(&pod.metadata))?;
    (parent == name_of(&set.metadata)).then_some(ordinal)
}

/// Whether `pod`'s name makes it one of `set`'s (the filter claims apply).
pub fn is_member(set: &StatefulSet, pod: &Pod) -> bool {
    parent_and_ordinal(name_of(&pod.metadata))
        .is_some_and(|(parent, _)| parent == name_of(&set.metadata))
}

pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", name_of(&set.metadata))
}

/// `TEMPLATE-SET-ORDINAL`, as `www-web-0`.
pub fn claim_name(set: &StatefulSet, template: &PersistentVolumeClaim, ordinal: i32) -> String {
    format!(
        "{}-{}-{ordinal}",
        name_of(&template.metadata),
        name_of(&set.metadata)
    )
}

/// The first ordinal (`spec.ordinals.start`, 0 by default).
pub fn start_ordinal(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
}

pub fn replicas(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0)
}

/// Whether `ordinal` is one the set should have now.
pub fn in_range(set: &StatefulSet, ordinal: i32) -> bool {
    let start = start_ordinal(set);
    ordinal >= start && ordinal < start.saturating_add(replicas(set))
}

fn claim_templates(set: &StatefulSet) -> &[PersistentVolumeClaim] {
    set.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_deref())
        .unwrap_or_default()
}

/// The claims the pod of `ordinal` mounts, with the template each comes
/// from: named for the pod, labelled with the template's labels and the
/// set's selector labels (which win).
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let selector = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    claim_templates(set)
        .iter()
        .map(|template| {
            let mut labels = template.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector.clone());
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(set, template, ordinal)),
                    namespace: set.metadata.namespace.clone(),
                    labels: (!labels.is_empty()).then_some(labels),
                    annotations: template.metadata.annotations.clone(),
                    finalizers: template.metadata.finalizers.clone(),
                    ..ObjectMeta::default()
                },
                spec: template.spec.clone(),
                status: None,
            }
        })
        .collect()
}

/// The pod of `ordinal` made from `template` (the template of revision
/// `revision`), owned by `set`.
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    let name = pod_name(set, ordinal);
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.into());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    let service = set
        .spec
        .as_ref()
        .map(|s| s.service_name.clone())
        .unwrap_or_default();
    spec.subdomain = (!service.is_empty()).then_some(service);
    // The claims take the place of the template's volumes of the same name.
    let templates = claim_templates(set);
    let mut volumes: Vec<Volume> = templates
        .iter()
        .map(|t| Volume {
            name: name_of(&t.metadata).to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(set, t, ordinal),
                read_only: None,
            }),
            ..Volume::default()
        })
        .collect();
    volumes.extend(
        spec.volumes
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| !templates.iter().any(|t| name_of(&t.metadata) == v.name)),
    );
    spec.volumes = (!volumes.is_empty()).then_some(volumes);
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_reference(set)]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The identity labels `pod` should carry (pod-name, pod-index).
pub fn identity_labels(pod_name: &str, ordinal: i32) -> BTreeMap<String, String> {
    [
        (POD_NAME_LABEL.to_owned(), pod_name.to_owned()),
        (POD_INDEX_LABEL.to_owned(), ordinal.to_string()),
    ]
    .into()
}

/// Whether `pod` carries the identity of its ordinal in `set`.
pub fn identity_matches(set: &StatefulSet, pod: &Pod) -> bool {
    let Some(ordinal) = ordinal_of(set, pod) else {
        return false;
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    pod.metadata.namespace == set.metadata.namespace
        && identity_labels(name_of(&pod.metadata), ordinal)
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
}

/// The revision a pod was made from.
pub fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

/// What happens to a claim in one of the retention policy's two cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Retain,
    Delete,
}

/// `persistentVolumeClaimRetentionPolicy`: Retain in both cases by
/// default, and for any value but `Delete`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub when_deleted: Policy,
    pub when_scaled: Policy,
}

pub fn retention(set: &StatefulSet) -> Retention {
    let policy = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let parse = |value: Option<&String>| match value.map(String::as_str) {
        Some("Delete") => Policy::Delete,
        _ => Policy::Retain,
    };
    Retention {
        when_deleted: parse(policy.and_then(|p| p.when_deleted.as_ref())),
        when_scaled: parse(policy.and_then(|p| p.when_scaled.as_ref())),
    }
}

/// Who an owner reference may point at: the set or one of its pods.
struct Owner<'a> {
    api_version: &'a str,
    kind: &'a str,
    name: &'a str,
    /// Empty for a pod not created yet.
    uid: &'a str,
}

impl<'a> Owner<'a> {
    fn set(set: &'a StatefulSet) -> Self {
        Owner {
            api_version: "apps/v1",
            kind: "StatefulSet",
            name: name_of(&set.metadata),
            uid: set.metadata.uid.as_deref().unwrap_or_default(),
        }
    }

    fn pod(pod: &'a Pod) -> Self {
        Owner {
            api_version: "v1",
            kind: "Pod",
            name: name_of(&pod.metadata),
            uid: pod.metadata.uid.as_deref().unwrap_or_default(),
        }
    }

    /// The reference names this owner (whatever its uid).
    fn named_by(&self, r: &OwnerReference) -> bool {
        r.api_version == self.api_version && r.kind == self.kind && r.name == self.name
    }

    fn referenced_by(&self, refs: &[OwnerReference]) -> bool {
        refs.iter().any(|r| r.uid == self.uid)
    }

    /// A reference by name to an earlier object of the same name: the
    /// claim belongs to something gone, and is left to the garbage collector.
    fn stale_in(&self, refs: &[OwnerReference]) -> bool {
        refs.iter()
            .find(|r| self.named_by(r))
            .is_some_and(|r| r.uid != self.uid)
    }

    fn controller_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: self.api_version.into(),
            kind: self.kind.into(),
            name: self.name.into(),
            uid: self.uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }
}

fn refs_of(claim: &PersistentVolumeClaim) -> &[OwnerReference] {
    claim
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
}

/// Another controller than the set or the pod manages the claim (only a
/// concern when some policy is Delete).
pub fn has_unexpected_controller(
    claim: &PersistentVolumeClaim,
    set: &StatefulSet,
    pod: &Pod,
) -> bool {
    let policy = retention(set);
    if policy.when_deleted == Policy::Retain && policy.when_scaled == Policy::Retain {
        return false;
    }
    let (set, pod) = (Owner::set(set), Owner::pod(pod));
    refs_of(claim).iter().any(|r| {
        if set.named_by(r) {
            r.uid != set.uid
        } else if pod.named_by(r) {
            r.uid != pod.uid
        } else {
            r.controller == Some(true)
        }
    })
}

/// Whether `claim`'s owner references are what the retention policy asks
/// for the claim of `pod` (`scaled_down`: the pod's ordinal is out of
/// range):
///
/// | whenScaled / whenDeleted | owners                                         |
/// |--------------------------|------------------------------------------------|
/// | Retain / Retain          | none                                           |
/// | Retain / Delete          | the set                                        |
/// | Delete / Retain          | the pod, once scaled down                      |
/// | Delete / Delete          | the set; the pod instead once scaled down      |
///
/// A claim whose references point at an earlier set or pod of the same
/// name, or at another controller, is left alone.
pub fn claim_owners_up_to_date(
    claim: &PersistentVolumeClaim,
    set: &StatefulSet,
    pod: &Pod,
    scaled_down: bool,
) -> bool {
    let refs = refs_of(claim);
    let (set_owner, pod_owner) = (Owner::set(set), Owner::pod(pod));
    if set_owner.stale_in(refs) || pod_owner.stale_in(refs) {
        return true;
    }
    let has_set = set_owner.referenced_by(refs);
    let has_pod = pod_owner.referenced_by(refs);
    if has_unexpected_controller(claim, set, pod) {
        // Our references go; nothing is added on top of another controller.
        return !has_set && !has_pod;
    }
    let non_controller = refs
        .iter()
        .any(|r| (r.uid == set_owner.uid || r.uid == pod_owner.uid) && r.controller != Some(true));
    if non_controller {
        return false;
    }
    let (want_set, want_pod) = wanted_owners(retention(set), scaled_down);
    has_set == want_set && has_pod == want_pod
}

/// Whether the claim should be owned by the set, and by the pod.
fn wanted_owners(policy: Retention, scaled_down: bool) -> (bool, bool) {
    match (policy.when_scaled, policy.when_deleted) {
        (Policy::Retain, Policy::Retain) => (false, false),
        (Policy::Retain, Policy::Delete) => (true, false),
        (Policy::Delete, Policy::Retain) => (false, scaled_down),
        (Policy::Delete, Policy::Delete) => (!scaled_down, scaled_down),
    }
}

/// The owner references `claim` should have under the retention policy
/// (see [`claim_owners_up_to_date`]): references to the set and the pod are
/// replaced, others kept.
pub fn claim_owners(
    claim: &PersistentVolumeClaim,
    set: &StatefulSet,
    pod: &Pod,
    scaled_down: bool,
) -> Vec<OwnerReference> {
    let unexpected = has_unexpected_controller(claim, set, pod);
    let (set_owner, pod_owner) = (Owner::set(set), Owner::pod(pod));
    let mut refs: Vec<OwnerReference> = refs_of(claim)
        .iter()
        .filter(|r| !set_owner.named_by(r) && !pod_owner.named_by(r))
        .cloned()
        .collect();
    if unexpected {
        return refs;
    }
    let (want_set, want_pod) = wanted_owners(retention(set), scaled_down);
    if want_set {
        refs.push(set_owner.controller_reference());
    }
    // A pod not created yet cannot own anything.
    if want_pod && !pod_owner.uid.is_empty() {
        refs.push(pod_owner.controller_reference());
    }
    refs
}

/// A claim left by an earlier pod of the same name that is to be deleted
/// with it (whenScaled: Delete): the new pod must wait for it to go rather
/// than mount it.
pub fn claim_is_stale(claim: &PersistentVolumeClaim, set: &StatefulSet, pod_name: &str) -> bool {
    if retention(set).when_scaled == Policy::Retain {
        return false;
    }
    let owner = Owner {
        api_version: "v1",
        kind: "Pod",
        name: pod_name,
        uid: "",
    };
    owner.stale_in(refs_of(claim))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(policy: Option<(&str, &str)>) -> StatefulSet {
        let mut set = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web", "namespace": "default", "uid": "set-uid"},
            "spec": {
                "replicas": 2, "serviceName": "web",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}],
                        "volumes": [{"name": "www", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "www", "labels": {"app": "other", "tier": "data"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}]
            }
        });
        if let Some((scaled, deleted)) = policy {
            set["spec"]["persistentVolumeClaimRetentionPolicy"] =
                json!({"whenScaled": scaled, "whenDeleted": deleted});
        }
        serde_json::from_value(set).unwrap()
    }

    fn pod(name: &str, uid: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "uid": uid}})).unwrap()
    }

    #[test]
    fn ordinals_come_from_canonical_names() {
        assert_eq!(parent_and_ordinal("web-0"), Some(("web", 0)));
        assert_eq!(parent_and_ordinal("web-12"), Some(("web", 12)));
        assert_eq!(parent_and_ordinal("my-web-1-2"), Some(("my-web-1", 2)));
        assert_eq!(parent_and_ordinal("web--1"), Some(("web-", 1)));
        for name in [
            "web",
            "web-",
            "web-01",
            "web-a",
            "web-1a",
            "web-99999999999",
        ] {
            assert_eq!(parent_and_ordinal(name), None, "{name}");
        }
        let s = set(None);
        assert_eq!(ordinal_of(&s, &pod("web-3", "u")), Some(3));
        assert_eq!(ordinal_of(&s, &pod("webs-3", "u")), None);
        assert!(is_member(&s, &pod("web-3", "u")));
        assert!(!is_member(&s, &pod("web-x", "u")));
        assert_eq!(pod_name(&s, 4), "web-4");
        assert_eq!(claim_name(&s, &claim_templates(&s)[0], 1), "www-web-1");
        assert!(in_range(&s, 1) && !in_range(&s, 2) && !in_range(&s, -1));
    }

    #[test]
    fn a_pod_has_its_ordinals_identity_and_claims() {
        let s = set(None);
        let template = s.spec.as_ref().unwrap().template.clone();
        let p = new_pod(&s, &template, 1, "web-abc");
        assert_eq!(p.metadata.name.as_deref(), Some("web-1"));
        let labels = p.metadata.labels.clone().unwrap();
        assert_eq!(labels[POD_NAME_LABEL], "web-1");
        assert_eq!(labels[POD_INDEX_LABEL], "1");
        assert_eq!(labels[REVISION_LABEL], "web-abc");
        assert_eq!(labels["app"], "web");
        let spec = p.spec.clone().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-1"));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
        let volumes = spec.volumes.unwrap();
        assert_eq!(volumes.len(), 2, "the claim replaces the template's www");
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "www-web-1"
        );
        assert_eq!(volumes[1].name, "tmp");
        let owner = &p.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("StatefulSet", "set-uid", Some(true))
        );
        assert!(identity_matches(&s, &p));
        let mut relabelled = p.clone();
        relabelled.metadata.labels = Some([("app".into(), "web".into())].into());
        assert!(!identity_matches(&s, &relabelled));

        let claims = claims_for(&s, 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("www-web-1"));
        let labels = claims[0].metadata.labels.clone().unwrap();
        assert_eq!(labels["app"], "web", "the selector's labels win");
        assert_eq!(labels["tier"], "data");
    }

    fn claim(refs: Vec<OwnerReference>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("www-web-1".into()),
                owner_references: Some(refs),
                ..ObjectMeta::default()
            },
            ..PersistentVolumeClaim::default()
        }
    }

    fn owners(refs: &[OwnerReference]) -> Vec<&str> {
        refs.iter().map(|r| r.kind.as_str()).collect()
    }

    #[test]
    fn claims_are_owned_as_the_retention_policy_says() {
        let p = pod("web-1", "pod-uid");
        // (whenScaled, whenDeleted), scaled down, the owners' kinds.
        type Case<'a> = (Option<(&'a str, &'a str)>, bool, &'a [&'a str]);
        let cases: [Case; 8] = [
            (None, false, &[]),
            (None, true, &[]),
            (Some(("Retain", "Delete")), false, &["StatefulSet"]),
            (Some(("Retain", "Delete")), true, &["StatefulSet"]),
            (Some(("Delete", "Retain")), false, &[]),
            (Some(("Delete", "Retain")), true, &["Pod"]),
            (Some(("Delete", "Delete")), false, &["StatefulSet"]),
            (Some(("Delete", "Delete")), true, &["Pod"]),
        ];
        for (policy, scaled_down, expected) in cases {
            let s = set(policy);
            let bare = claim(vec![]);
            let refs = claim_owners(&bare, &s, &p, scaled_down);
            assert_eq!(owners(&refs), expected, "{policy:?} {scaled_down}");
            assert_eq!(
                claim_owners_up_to_date(&bare, &s, &p, scaled_down),
                expected.is_empty()
            );
            assert!(claim_owners_up_to_date(&claim(refs), &s, &p, scaled_down));
        }
    }

    #[test]
    fn claims_of_others_and_of_earlier_pods_are_left_alone() {
        let s = set(Some(("Delete", "Delete")));
        let p = pod("web-1", "pod-uid");
        let earlier = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: "web-1".into(),
            uid: "old-uid".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let stale = claim(vec![earlier.clone()]);
        assert!(claim_owners_up_to_date(&stale, &s, &p, false));
        assert!(claim_is_stale(&stale, &s, "web-1"));
        assert!(!claim_is_stale(&stale, &set(None), "web-1"));
        let other = OwnerReference {
            kind: "Thing".into(),
            name: "x".into(),
            uid: "x-uid".into(),
            ..earlier
        };
        let foreign = claim(vec![other]);
        assert!(has_unexpected_controller(&foreign, &s, &p));
        assert!(claim_owners_up_to_date(&foreign, &s, &p, false));
        assert_eq!(owners(&claim_owners(&foreign, &s, &p, false)), ["Thing"]);
    }

    #[test]
    fn retention_defaults_to_retain() {
        let policy = retention(&set(None));
        assert_eq!(policy.when_deleted, Policy::Retain);
        assert_eq!(policy.when_scaled, Policy::Retain);
        let policy = retention(&set(Some(("Delete", "Bogus"))));
        assert_eq!(
            (policy.when_scaled, policy.when_deleted),
            (Policy::Delete, Policy::Retain)
        );
    }
}
