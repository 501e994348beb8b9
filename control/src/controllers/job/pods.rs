//! How the Job controller changes pods: claims them (adopting orphans
//! with the tracking finalizer, releasing strays), creates them in
//! slow-start batches, deletes them, and removes the tracking finalizer.

use std::sync::Arc;

use futures::future::join_all;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::json;

use super::state::{self, has_tracking_finalizer};
use super::{JobController, JobError};
use crate::client::{ClientError, DeleteOptions, Patch};
use crate::controllers::pods;
use crate::runtime::events::EventType;
use crate::runtime::{controller_of, controller_reference, key_of, selects, split_key};

impl JobController {
    /// Removes the tracking finalizer, leaving any others (a strategic
    /// merge directive: no read-modify-write race with other writers).
    /// A pod already gone has nothing to remove.
    pub(super) async fn remove_finalizer(&self, pod: &Pod) -> Result<(), JobError> {
        let key = key_of(&pod.metadata);
        let (namespace, name) = split_key(&key);
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [state::TRACKING_FINALIZER]}});
        match self
            .client
            .patch::<Pod>(namespace, name, None, Patch::Strategic, &patch)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(source) => Err(JobError::Finalizer { pod: key, source }),
        }
    }

    /// All of the Job's pods, active or not: those it owns and its selector
    /// still matches, and orphans it adopts (with the tracking finalizer).
    /// Owned pods its selector no longer matches are released.
    pub(super) async fn claim(&self, key: &str, job: &Arc<Job>) -> Result<Vec<Arc<Pod>>, JobError> {
        let namespace = job.metadata.namespace.as_deref().unwrap_or_default();
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let selector = job.spec.as_ref().and_then(|s| s.selector.clone());
        let deleting = job.metadata.deletion_timestamp.is_some();
        let mut owned = Vec::new();
        for pod in self.pods.list_in(namespace) {
            // Without a selector (never, once the API has defaulted it)
            // nothing is adopted and nothing released.
            let matches = selector
                .as_ref()
                .is_none_or(|s| selects(s, pod.metadata.labels.as_ref()));
            match controller_of(&pod.metadata) {
                Some(reference) if reference.uid == uid => {
                    if matches {
                        owned.push(pod);
                    } else if !deleting {
                        self.set_owners(&pod, false, |refs| refs.retain(|r| r.uid != uid))
                            .await
                            .map_err(Self::failed(key, "release a pod"))?;
                    }
                }
                Some(_) => {}
                None if selector.is_some()
                    && matches
                    && !deleting
                    && pod.metadata.deletion_timestamp.is_none() =>
                {
                    let reference = controller_reference(job.as_ref());
                    match self
                        .set_owners(&pod, true, |refs| refs.push(reference))
                        .await
                    {
                        Ok(Some(adopted)) => owned.push(Arc::new(adopted)),
                        Ok(None) => {}
                        Err(error) => return Err(Self::failed(key, "adopt a pod")(error)),
                    }
                }
                None => {}
            }
        }
        Ok(owned)
    }

    /// Rewrites a pod's owner references, adding (`track`) or removing the
    /// tracking finalizer with them, if the pod has not changed since read.
    async fn set_owners(
        &self,
        pod: &Pod,
        track: bool,
        change: impl FnOnce(&mut Vec<OwnerReference>),
    ) -> Result<Option<Pod>, ClientError> {
        let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
        change(&mut refs);
        let mut finalizers = pod.metadata.finalizers.clone().unwrap_or_default();
        finalizers.retain(|f| f != state::TRACKING_FINALIZER);
        if track {
            finalizers.push(state::TRACKING_FINALIZER.to_owned());
        }
        let metadata = json!({"ownerReferences": refs, "finalizers": finalizers});
        crate::controllers::pods::patch_metadata(&self.client, pod, metadata).await
    }

    /// Creates pods, in slow-start batches (1, 2, 4, …) so that a template
    /// the API refuses fails once rather than for every pod. How many were
    /// created, and the first failure.
    pub(super) async fn create_pods(
        &self,
        key: &str,
        job: &Arc<Job>,
        indexes: Vec<Option<u32>>,
    ) -> (i32, Option<JobError>) {
        let namespace = job.metadata.namespace.clone().unwrap_or_default();
        self.expectations.expect_creations(key, indexes.len());
        let pods = indexes
            .into_iter()
            .map(|index| state::new_pod(job, index))
            .collect();
        let creator = crate::controllers::pods::Creator {
            client: &self.client,
            recorder: &self.recorder,
            expectations: &self.expectations,
            key,
        };
        let (created, failed) =
            crate::controllers::pods::create_in_batches(creator, job.as_ref(), &namespace, pods)
                .await;
        (
            i32::try_from(created).unwrap_or(i32::MAX),
            failed.map(|error| Self::failed(key, "create pods")(error)),
        )
    }

    /// Deletes pods the Job no longer wants (too many, or suspended): their
    /// finalizer goes first, as they are not to be counted. How many were
    /// deleted, how many of those were ready, and the first failure.
    pub(super) async fn delete_pods(
        &self,
        key: &str,
        job: &Arc<Job>,
        doomed: &[Arc<Pod>],
    ) -> (i32, i32, Option<JobError>) {
        self.expectations
            .expect_deletions(key, doomed.iter().map(|p| key_of(&p.metadata)));
        let deletions = doomed.iter().map(|pod| async move {
            if has_tracking_finalizer(pod)
                && let Err(error) = self.remove_finalizer(pod).await
            {
                return Err(error);
            }
            self.delete_pod(key, job, pod).await
        });
        let mut outcome = (0, 0, None);
        for (pod, result) in doomed.iter().zip(join_all(deletions).await) {
            match result {
                Ok(()) => {
                    outcome.0 += 1;
                    outcome.1 += i32::from(pods::is_ready(pod));
                }
                Err(error) => {
                    self.expectations
                        .deletion_observed(key, &key_of(&pod.metadata));
                    outcome.2 = Some(error);
                }
            }
        }
        outcome
    }

    /// Deletes the active pods of a Job that is finishing, keeping their
    /// finalizers so that they are counted as failed.
    pub(super) async fn delete_active(
        &self,
        job: &Arc<Job>,
        active: &[Arc<Pod>],
    ) -> (i32, i32, Option<JobError>) {
        let key = key_of(&job.metadata);
        let deletions = active.iter().map(|pod| self.delete_pod(&key, job, pod));
        let mut outcome = (0, 0, None);
        for (pod, result) in active.iter().zip(join_all(deletions).await) {
            match result {
                Ok(()) => {
                    outcome.0 += 1;
                    outcome.1 += i32::from(pods::is_ready(pod));
                }
                Err(error) => outcome.2 = Some(error),
            }
        }
        outcome
    }

    async fn delete_pod(&self, key: &str, job: &Arc<Job>, pod: &Pod) -> Result<(), JobError> {
        let namespace = pod.metadata.namespace.as_deref();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let options = DeleteOptions {
            uid: pod.metadata.uid.clone(),
            ..DeleteOptions::default()
        };
        match self.client.delete::<Pod>(namespace, &name, &options).await {
            Ok(()) => {
                self.recorder.record(
                    job.as_ref(),
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted pod: {name}"),
                );
                Ok(())
            }
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => {
                self.recorder.record(
                    job.as_ref(),
                    EventType::Warning,
                    "FailedDelete",
                    format!("Error deleting: {error}"),
                );
                Err(Self::failed(key, "delete pods")(error))
            }
        }
    }
}
