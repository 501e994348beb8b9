//! The writes a plan asks for, in its order: pods (claims first),
//! claims, claim owners, identity labels, deletions, each with the event
//! Kubernetes records (`create Pod web-0 in StatefulSet web successful`).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::plan::{Step, Template, Why};
use super::sync::{Snapshot, Sync};
use super::{Result, StatefulSetError, identity, name_of};
use crate::client::{ClientError, DeleteOptions, Patch};
use crate::runtime::events::EventType;

impl Sync<'_> {
    fn record(&self, kind: EventType, reason: &'static str, message: String) {
        self.controller
            .recorder
            .record(self.set.as_ref(), kind, reason, message);
    }

    /// Kubernetes' event about a pod: `create Pod web-0 in StatefulSet web successful`.
    fn record_pod(&self, verb: &str, pod: &str, error: Option<&ClientError>) {
        let set = self.set_name();
        match error {
            None => self.record(
                EventType::Normal,
                success_reason(verb),
                format!("{verb} Pod {pod} in StatefulSet {set} successful"),
            ),
            Some(error) => self.record(
                EventType::Warning,
                failure_reason(verb),
                format!("{verb} Pod {pod} in StatefulSet {set} failed error: {error}"),
            ),
        }
    }

    /// Makes the plan's writes in order, stopping at the first failure.
    pub(super) async fn execute(&self, steps: &[Step], snapshot: &Snapshot<'_>) -> Result<()> {
        let expectations = &self.controller.expectations;
        let pod_key = |pod: &str| format!("{}/{pod}", self.namespace);
        let creates = steps
            .iter()
            .filter(|s| matches!(s, Step::Create { .. }))
            .count();
        let deletes: Vec<String> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Delete { pod, .. } => Some(pod_key(pod)),
                _ => None,
            })
            .collect();
        if creates > 0 || !deletes.is_empty() {
            expectations.expect(&self.key, creates, deletes);
        }
        for (i, step) in steps.iter().enumerate() {
            if let Err(error) = self.step(step, snapshot).await {
                // What failed or was not tried will not be seen happening.
                for rest in &steps[i..] {
                    match rest {
                        Step::Create { .. } => expectations.creation_observed(&self.key),
                        Step::Delete { pod, .. } => {
                            expectations.deletion_observed(&self.key, &pod_key(pod))
                        }
                        _ => {}
                    }
                }
                return Err(error);
            }
        }
        Ok(())
    }

    fn pod_in<'p>(&self, snapshot: &Snapshot<'p>, name: &str) -> Option<&'p Arc<Pod>> {
        snapshot
            .pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
    }

    async fn step(&self, step: &Step, snapshot: &Snapshot<'_>) -> Result<()> {
        match step {
            Step::Create { ordinal, template } => {
                let (template, revision) = match template {
                    Template::Current => (snapshot.current_template, &snapshot.history.current),
                    Template::Update => (snapshot.update_template, &snapshot.history.update),
                };
                let pod =
                    identity::new_pod(&self.set, template, *ordinal, name_of(&revision.metadata));
                self.create_pod(&pod, *ordinal, snapshot).await
            }
            Step::CreateClaims { pod } => match self.pod_in(snapshot, pod) {
                Some(p) => match identity::ordinal_of(&self.set, p) {
                    Some(ordinal) => self.create_claims(p, ordinal, snapshot).await,
                    None => Ok(()),
                },
                None => Ok(()),
            },
            Step::ClaimOwners { pod } => match self.pod_in(snapshot, pod) {
                Some(p) => self.claim_owners(p, snapshot).await,
                None => Ok(()),
            },
            Step::Relabel { pod } => match self.pod_in(snapshot, pod) {
                Some(p) => self.relabel(p).await,
                None => Ok(()),
            },
            Step::Delete { pod, why } => match self.pod_in(snapshot, pod) {
                Some(p) => self.delete_pod(p, *why).await,
                None => Ok(()),
            },
        }
    }

    /// Creates `pod`, its missing claims first.
    async fn create_pod(&self, pod: &Pod, ordinal: i32, snapshot: &Snapshot<'_>) -> Result<()> {
        let name = name_of(&pod.metadata).to_owned();
        self.create_claims(pod, ordinal, snapshot).await?;
        match self.client().create(Some(&self.namespace), pod).await {
            Ok(_) => {
                tracing::info!(pod = %name, "created a pod");
                self.record_pod("create", &name, None);
                Ok(())
            }
            // A cache that lags: the next reconcile sees it.
            Err(error) if error.is_already_exists() => {
                Err(self.failed_on("create pod", &name)(error))
            }
            Err(error) => {
                self.record_pod("create", &name, Some(&error));
                Err(self.failed_on("create pod", &name)(error))
            }
        }
    }

    /// Creates the claims of the pod of `ordinal` that do not exist, with
    /// the owners the retention policy gives them; a claim being deleted
    /// holds the pod back.
    async fn create_claims(&self, pod: &Pod, ordinal: i32, snapshot: &Snapshot<'_>) -> Result<()> {
        let pod_name = name_of(&pod.metadata).to_owned();
        let scaled_down = !identity::in_range(&self.set, ordinal);
        for mut claim in identity::claims_for(&self.set, ordinal) {
            let claim_name = name_of(&claim.metadata).to_owned();
            if let Some(existing) = snapshot.claims.get(&claim_name) {
                if existing.metadata.deletion_timestamp.is_some() {
                    return Err(StatefulSetError::ClaimDeleting {
                        set: self.key.clone(),
                        claim: claim_name,
                        pod: pod_name,
                    });
                }
                continue;
            }
            let owners = identity::claim_owners(&claim, &self.set, pod, scaled_down);
            claim.metadata.owner_references = (!owners.is_empty()).then_some(owners);
            let set = self.set_name();
            match self.client().create(Some(&self.namespace), &claim).await {
                Ok(_) => self.record(
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!(
                        "create Claim {claim_name} Pod {pod_name} in StatefulSet {set} success"
                    ),
                ),
                Err(error) if error.is_already_exists() => {}
                Err(error) => {
                    self.record(
                        EventType::Warning,
                        "FailedCreate",
                        format!(
                            "create Claim {claim_name} for Pod {pod_name} in StatefulSet {set} failed error: {error}"
                        ),
                    );
                    self.record_pod("create", &pod_name, Some(&error));
                    return Err(self.failed_on("create claim", &claim_name)(error));
                }
            }
        }
        Ok(())
    }

    /// Gives the pod's existing claims the owners the retention policy asks for.
    async fn claim_owners(&self, pod: &Pod, snapshot: &Snapshot<'_>) -> Result<()> {
        let Some(ordinal) = identity::ordinal_of(&self.set, pod) else {
            return Ok(());
        };
        let scaled_down = !identity::in_range(&self.set, ordinal);
        for template in identity::claims_for(&self.set, ordinal) {
            let claim_name = name_of(&template.metadata);
            let Some(claim) = snapshot.claims.get(claim_name) else {
                continue;
            };
            if identity::has_unexpected_controller(claim, &self.set, pod) {
                self.record(
                    EventType::Warning,
                    "ConflictingController",
                    format!(
                        "PersistentVolumeClaim {claim_name} has a conflicting OwnerReference that acts as a managing controller, the retention policy is ignored for this claim"
                    ),
                );
            }
            if identity::claim_owners_up_to_date(claim, &self.set, pod, scaled_down) {
                continue;
            }
            let owners = identity::claim_owners(claim, &self.set, pod, scaled_down);
            if let Err(error) = self.set_owners(claim.as_ref(), |refs| *refs = owners).await {
                self.record_pod("update", name_of(&pod.metadata), Some(&error));
                return Err(self.failed_on("set the owners of claim", claim_name)(error));
            }
        }
        Ok(())
    }

    /// Puts back the labels that make the pod its ordinal.
    async fn relabel(&self, pod: &Pod) -> Result<()> {
        let name = name_of(&pod.metadata).to_owned();
        let Some(ordinal) = identity::ordinal_of(&self.set, pod) else {
            return Ok(());
        };
        let patch = json!({"metadata": {
            "labels": identity::identity_labels(&name, ordinal),
            "resourceVersion": pod.metadata.resource_version,
        }});
        match self
            .client()
            .patch::<Pod>(Some(&self.namespace), &name, None, Patch::Merge, &patch)
            .await
        {
            Ok(_) => {
                self.record_pod("update", &name, None);
                Ok(())
            }
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => {
                self.record_pod("update", &name, Some(&error));
                Err(self.failed_on("relabel pod", &name)(error))
            }
        }
    }

    async fn delete_pod(&self, pod: &Pod, why: Why) -> Result<()> {
        let name = name_of(&pod.metadata).to_owned();
        let options = DeleteOptions {
            uid: pod.metadata.uid.clone(),
            ..DeleteOptions::default()
        };
        match self
            .client()
            .delete::<Pod>(Some(&self.namespace), &name, &options)
            .await
        {
            Ok(()) => {
                tracing::info!(pod = %name, ?why, "deleted a pod");
                self.record_pod("delete", &name, None);
                Ok(())
            }
            Err(error) if error.is_not_found() => {
                self.controller
                    .expectations
                    .deletion_observed(&self.key, &format!("{}/{name}", self.namespace));
                Ok(())
            }
            Err(error) => {
                self.record_pod("delete", &name, Some(&error));
                Err(self.failed_on("delete pod", &name)(error))
            }
        }
    }
}

fn success_reason(verb: &str) -> &'static str {
    match verb {
        "create" => "SuccessfulCreate",
        "delete" => "SuccessfulDelete",
        _ => "SuccessfulUpdate",
    }
}

fn failure_reason(verb: &str) -> &'static str {
    match verb {
        "create" => "FailedCreate",
        "delete" => "FailedDelete",
        _ => "FailedUpdate",
    }
}
