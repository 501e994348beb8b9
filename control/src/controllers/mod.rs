//! The controller manager and the scheduler, run by the one member that
//! holds the `kube-system/keelson-controller-manager` Lease.
//!
//! ```text
//!  leader::run ──won──► shared informers (pods, nodes, replicasets, deployments, …)
//!                          ├─► scheduler
//!                          ├─► replicaset, deployment controllers
//!                          └─► …
//!               ──lost──► everything above is cancelled at once
//! ```
//!
//! Every controller reads from the shared caches and writes through the
//! API with compare-and-set, so a leader that has just been deposed can
//! at worst lose a race, never corrupt what the new one does.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Endpoints, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, Service,
    ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::storage::v1::StorageClass;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::runtime::Informer;
use crate::runtime::events::Recorder;
use crate::runtime::leader::{self, LeaderConfig};
use crate::scheduler::Scheduler;

pub mod cronjob;
pub mod deployment;
pub mod endpoints;
pub mod expectations;
pub mod gc;
pub mod hpa;
pub mod job;
pub mod loadbalancer;
pub mod namespace;
pub mod node;
pub mod podgc;
pub mod pods;
pub mod replicaset;
pub mod statefulset;
pub mod volume;

/// The Lease whose holder runs the controllers.
pub const LEASE_NAME: &str = "keelson-controller-manager";
pub const LEASE_NAMESPACE: &str = "kube-system";

/// How the controller manager runs.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Who this member is in the election and in events.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub node: node::NodeConfig,
    /// Finished pods kept before the oldest are deleted.
    pub terminated_pod_gc_threshold: usize,
    /// Where LoadBalancer Services' addresses come from (none: they stay
    /// pending).
    pub load_balancer_pool: Option<loadbalancer::Pool>,
    pub hpa: hpa::HpaConfig,
}

impl ControllerConfig {
    /// Timings that let another member take over within about four seconds
    /// of the leader's death (Kubernetes' 15 s / 10 s / 2 s take ~15 s).
    /// `member`: this member's name; a random suffix keeps a restarted
    /// member from mistaking its predecessor's lease for its own.
    pub fn new(member: &str) -> Self {
        Self {
            identity: format!("{member}_{}", uuid::Uuid::new_v4()),
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(500),
            node: node::NodeConfig::default(),
            terminated_pod_gc_threshold: 12_500,
            load_balancer_pool: None,
            hpa: hpa::HpaConfig::default(),
        }
    }

    pub fn leader(&self) -> LeaderConfig {
        LeaderConfig {
            namespace: LEASE_NAMESPACE.into(),
            name: LEASE_NAME.into(),
            identity: self.identity.clone(),
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
        }
    }
}

/// Takes part in the election until `shutdown`, running the controllers
/// and the scheduler while leading.
pub async fn run(client: Client, config: ControllerConfig, shutdown: CancellationToken) {
    let leader = config.leader();
    leader::run(client.clone(), leader, shutdown, move |leading| {
        run_controllers(client.clone(), config.clone(), leading)
    })
    .await;
}

/// Every controller and the scheduler, until `shutdown`.
pub async fn run_controllers(
    client: Client,
    config: ControllerConfig,
    shutdown: CancellationToken,
) {
    {
        let mut tasks = JoinSet::new();
        let mut recorder = |component: &'static str| {
            let (recorder, writer) = Recorder::new(
                client.clone(),
                component,
                config.identity.clone(),
                shutdown.clone(),
            );
            tasks.spawn(writer);
            recorder
        };
        let pods = Informer::<Pod>::default();
        let nodes = Informer::<Node>::default();
        let replicasets = Informer::<ReplicaSet>::default();
        let deployments = Informer::<Deployment>::default();
        let statefulsets = Informer::<StatefulSet>::default();
        let revisions = Informer::<ControllerRevision>::default();
        let jobs = Informer::<Job>::default();
        let cronjobs = Informer::<CronJob>::default();
        let leases = Informer::<Lease>::default();
        let namespaces = Informer::<Namespace>::default();
        let accounts = Informer::<ServiceAccount>::default();
        let services = Informer::<Service>::default();
        let endpoints = Informer::<Endpoints>::default();
        let slices = Informer::<EndpointSlice>::default();
        let claims = Informer::<PersistentVolumeClaim>::default();
        let volumes = Informer::<PersistentVolume>::default();
        let classes = Informer::<StorageClass>::default();
        let autoscalers = Informer::<HorizontalPodAutoscaler>::default();

        let scheduler = Scheduler::new(
            client.clone(),
            &pods,
            &nodes,
            recorder("default-scheduler"),
            shutdown.clone(),
        )
        .with_storage(&claims, &volumes, &classes);
        let binder = volume::VolumeController::new(
            client.clone(),
            &claims,
            &volumes,
            &classes,
            &nodes,
            recorder("persistentvolume-controller"),
            shutdown.clone(),
        );
        let autoscaler = hpa::HpaController::new(
            client.clone(),
            &autoscalers,
            &pods,
            recorder("horizontal-pod-autoscaler"),
            config.hpa,
            shutdown.clone(),
        );
        let replicaset = replicaset::ReplicaSetController::new(
            client.clone(),
            &replicasets,
            &pods,
            recorder("replicaset-controller"),
            shutdown.clone(),
        );
        let deployment = deployment::DeploymentController::new(
            client.clone(),
            &deployments,
            &replicasets,
            &pods,
            recorder("deployment-controller"),
            shutdown.clone(),
        );

        let job = job::JobController::new(
            client.clone(),
            &jobs,
            &pods,
            recorder("job-controller"),
            shutdown.clone(),
        );
        let ttl = job::ttl::TtlAfterFinished::new(client.clone(), &jobs, shutdown.clone());
        let cronjob = cronjob::CronJobController::new(
            client.clone(),
            &cronjobs,
            &jobs,
            recorder("cronjob-controller"),
            shutdown.clone(),
        );

        let statefulset = statefulset::StatefulSetController::new(
            client.clone(),
            &statefulsets,
            &pods,
            &revisions,
            &claims,
            recorder("statefulset-controller"),
            shutdown.clone(),
        );
        let gc = gc::GarbageCollector::new(client.clone(), shutdown.clone());
        let lifecycle = node::NodeLifecycle::new(
            client.clone(),
            config.node.clone(),
            &nodes,
            &pods,
            &leases,
            recorder("node-controller"),
        );
        let namespace = namespace::NamespaceController::new(
            client.clone(),
            &namespaces,
            &accounts,
            shutdown.clone(),
        );
        let endpoint = endpoints::EndpointsController::new(
            client.clone(),
            &services,
            &pods,
            &endpoints,
            &slices,
            shutdown.clone(),
        );
        let podgc = podgc::PodGc::new(
            client.clone(),
            &pods,
            &nodes,
            config.terminated_pod_gc_threshold,
        );

        if let Some(pool) = config.load_balancer_pool {
            let lb = loadbalancer::LoadBalancerController::new(
                client.clone(),
                &services,
                pool,
                recorder("service-lb-controller"),
                shutdown.clone(),
            );
            tasks.spawn(lb.run(shutdown.clone()));
        }
        tasks.spawn(pods.run(client.clone(), shutdown.clone()));
        tasks.spawn(nodes.run(client.clone(), shutdown.clone()));
        tasks.spawn(replicasets.run(client.clone(), shutdown.clone()));
        tasks.spawn(deployments.run(client.clone(), shutdown.clone()));
        tasks.spawn(statefulsets.run(client.clone(), shutdown.clone()));
        tasks.spawn(revisions.run(client.clone(), shutdown.clone()));
        tasks.spawn(jobs.run(client.clone(), shutdown.clone()));
        tasks.spawn(cronjobs.run(client.clone(), shutdown.clone()));
        tasks.spawn(leases.run(client.clone(), shutdown.clone()));
        tasks.spawn(namespaces.run(client.clone(), shutdown.clone()));
        tasks.spawn(accounts.run(client.clone(), shutdown.clone()));
        tasks.spawn(services.run(client.clone(), shutdown.clone()));
        tasks.spawn(endpoints.run(client.clone(), shutdown.clone()));
        tasks.spawn(slices.run(client.clone(), shutdown.clone()));
        tasks.spawn(claims.run(client.clone(), shutdown.clone()));
        tasks.spawn(volumes.run(client.clone(), shutdown.clone()));
        tasks.spawn(classes.run(client.clone(), shutdown.clone()));
        tasks.spawn(binder.run(2, shutdown.clone()));
        tasks.spawn(autoscalers.run(client.clone(), shutdown.clone()));
        tasks.spawn(autoscaler.run(2, shutdown.clone()));
        tasks.spawn(scheduler.run(shutdown.clone()));
        tasks.spawn(replicaset.run(5, shutdown.clone()));
        tasks.spawn(deployment.run(5, shutdown.clone()));
        tasks.spawn(statefulset.run(5, shutdown.clone()));
        tasks.spawn(job.run(5, shutdown.clone()));
        tasks.spawn(ttl.run(2, shutdown.clone()));
        tasks.spawn(cronjob.run(2, shutdown.clone()));
        tasks.spawn(gc.run(5, shutdown.clone()));
        tasks.spawn(lifecycle.run(shutdown.clone()));
        tasks.spawn(podgc.run(shutdown.clone()));
        tasks.spawn(namespace.run(2, shutdown.clone()));
        tasks.spawn(endpoint.run(5, shutdown.clone()));
        while let Some(outcome) = tasks.join_next().await {
            if let Err(error) = outcome {
                tracing::error!(%error, "a controller task failed");
            }
        }
    }
}
