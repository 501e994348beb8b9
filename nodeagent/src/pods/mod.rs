//! Pod workers: one sync per pod at a time, driven by the watch of the
//! pods bound to this node.
//!
//! ```text
//!  pods (fieldSelector spec.nodeName=NODE) ─► queue(pod key) ─► sync:
//!     runtime.list ─► plan(pod, sandbox, backoff) ─► run the actions ─► again until nothing to do
//!     ─► status (patch if changed) ─► deleted and stopped? remove the sandbox, delete the pod (grace 0)
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use keelson_control::client::{Client, ClientError, DeleteOptions, Patch};
use keelson_control::runtime::events::{EventType, Recorder, reference};
use keelson_control::runtime::{Action as Next, Event, Informer, Queue, key_of, split_key};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::images::{Keyring, Reference};
use crate::runtime::{
    ContainerConfig, ContainerRun, Runtime, RuntimeError, SandboxConfig, SandboxState,
};
use crate::volumes::{VolumeError, Volumes};

pub mod env;
pub mod plan;
pub mod probe;
pub mod status;

use plan::{Action, Backoff};
use probe::{Handler, Kind, PodNetwork, Prober};

/// What a container killed by its pod's deletion or a failed probe gets at
/// least after its preStop hook, as the kubelet's minimum grace period.
const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);

/// Syncs in a row for one pod before its status is written.
const MAX_STEPS: usize = 16;

/// Why a pod could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("pod {pod}: runtime")]
    Runtime {
        pod: String,
        #[source]
        source: RuntimeError,
    },
    #[error("pod {pod}: {action}")]
    Api {
        pod: String,
        action: &'static str,
        #[source]
        source: ClientError,
    },
}

/// The pod workers of one node.
#[derive(Debug)]
pub struct PodWorkers<R> {
    client: Client,
    runtime: Arc<R>,
    pods: Informer<Pod>,
    queue: Queue<String>,
    backoff: Mutex<Backoff>,
    host_ip: String,
    /// What the node has, for `resourceFieldRef`s of unset limits.
    allocatable: env::Allocatable,
    prober: Arc<Prober>,
    events: Option<Recorder>,
    volumes: Arc<Volumes>,
    /// How often every pod is synced again (the kubelet's
    /// `--sync-frequency`), and its ConfigMap, Secret and downward API
    /// volumes brought up to date.
    sync_frequency: Duration,
    /// When each pod's volumes were last brought up to date (by uid).
    volumes_updated: Mutex<std::collections::HashMap<String, Instant>>,
}

/// What the pod workers are set up with, besides their collaborators.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub host_ip: String,
    /// What the node has, for `resourceFieldRef`s of unset limits.
    pub allocatable: env::Allocatable,
    pub sync_frequency: Duration,
}

fn sandbox_config(pod: &Pod) -> SandboxConfig {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    SandboxConfig {
        pod_uid: meta.uid.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        hostname: spec
            .and_then(|s| s.hostname.clone())
            .or_else(|| meta.name.clone())
            .unwrap_or_default(),
        host_ports: spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(crate::runtime::HostPort {
                    host_port: u16::try_from(p.host_port?).ok().filter(|p| *p > 0)?,
                    container_port: u16::try_from(p.container_port).ok()?,
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                })
            })
            .collect(),
    }
}

/// Kubernetes' default pull policy: `Always` for `:latest` or no tag,
/// `IfNotPresent` otherwise (the API server sets it; old objects may lack it).
fn default_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    let tag = last
        .split_once('@')
        .map_or(last, |(name, _)| name)
        .split_once(':');
    match tag {
        _ if image.contains('@') => "IfNotPresent",
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// The container `name` of `pod` (an init container if `init`).
fn container_of<'a>(pod: &'a Pod, name: &str, init: bool) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    if init {
        spec.init_containers
            .iter()
            .flatten()
            .find(|c| c.name == name)
    } else {
        spec.containers.iter().find(|c| c.name == name)
    }
}

/// The container resolved for the runtime, with its environment `env` and
/// its volumes' `mounts`.
fn container_config(
    pod: &Pod,
    container: &Container,
    attempt: u32,
    env: Vec<(String, String)>,
    mounts: Vec<crate::runtime::Mount>,
) -> ContainerConfig {
    ContainerConfig {
        name: container.name.clone(),
        attempt,
        image: container.image.clone().unwrap_or_default(),
        command: container.command.clone().unwrap_or_default(),
        args: container.args.clone().unwrap_or_default(),
        env,
        working_dir: container.working_dir.clone(),
        resources: crate::runtime::Resources::of(container.resources.as_ref()),
        mounts,
        identity: crate::runtime::process::Identity::of(
            pod.spec.as_ref().and_then(|s| s.security_context.as_ref()),
            container.security_context.as_ref(),
        ),
    }
}

impl<R: Runtime> PodWorkers<R> {
    pub fn new(
        client: Client,
        runtime: Arc<R>,
        pods: &Informer<Pod>,
        volumes: Arc<Volumes>,
        config: WorkerConfig,
        events: Option<Recorder>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let workers = Arc::new(Self {
            client,
            runtime,
            pods: pods.clone(),
            queue: Queue::new("kubelet_pod_worker", shutdown),
            backoff: Mutex::new(Backoff::default()),
            host_ip: config.host_ip,
            allocatable: config.allocatable,
            prober: Arc::new(Prober::default()),
            events,
            volumes,
            sync_frequency: config.sync_frequency,
            volumes_updated: Mutex::new(std::collections::HashMap::new()),
        });
        let queue = workers.queue.clone();
        pods.on_event(move |event| {
            let (Event::Added(pod) | Event::Updated { new: pod, .. } | Event::Deleted(pod)) = event;
            queue.add(key_of(&pod.metadata));
        });
        workers
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the volumes of pods neither bound here nor with a sandbox.
    async fn sweep_volumes(&self) {
        let mut live: std::collections::HashSet<String> = self
            .pods
            .list()
            .into_iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        match self.runtime.list().await {
            Ok(sandboxes) => live.extend(sandboxes.into_iter().map(|s| s.config.pod_uid)),
            // Without the runtime's word, nothing is known to be gone.
            Err(_) => return,
        }
        for uid in self.volumes.sweep(&live).await {
            tracing::info!(pod_uid = %uid, "removed the volumes of a pod that is gone");
        }
    }

    /// Sets up the pod's volumes, and brings those showing objects up to
    /// date once per half sync period.
    async fn volumes_ready(&self, pod: &Pod) -> Result<(), VolumeError> {
        self.volumes.prepare(pod).await?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let due = {
            let mut updated = self
                .volumes_updated
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let due = updated
                .get(&uid)
                .is_none_or(|at| at.elapsed() >= self.sync_frequency / 2);
            if due {
                updated.insert(uid, Instant::now());
            }
            due
        };
        if due {
            self.volumes.update(pod).await?;
        }
        Ok(())
    }

    /// Forgets the pod's volumes once its sandboxes are gone.
    async fn remove_volumes(&self, uid: &str) {
        self.volumes_updated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
        if let Err(error) = self.volumes.remove(uid).await {
            tracing::warn!(pod_uid = %uid, %error, "cannot remove the pod's volumes yet");
        }
    }

    /// Records an event about `pod` (or one of its containers), as the kubelet.
    fn event(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &'static str,
        message: String,
    ) {
        let Some(events) = &self.events else { return };
        let mut object = reference(pod);
        if let Some(name) = container {
            let init = pod
                .spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.name == name));
            let list = if init { "initContainers" } else { "containers" };
            object.field_path = Some(format!("spec.{list}{{{name}}}"));
        }
        events.record_for(object, kind, reason, message);
    }

    /// Where handlers reach the pod `key`: its newest sandbox's network.
    async fn network_of(&self, key: &str) -> PodNetwork {
        match self
            .sandboxes_of(key)
            .await
            .ok()
            .and_then(|s| s.into_iter().next())
        {
            Some(sandbox) => PodNetwork {
                netns: self.runtime.network_namespace(&sandbox.id),
                ip: sandbox.ip,
            },
            None => PodNetwork::default(),
        }
    }

    /// Runs the container's preStop hook, if it has one, within `grace`;
    /// returns what is left of `grace` for the container to stop.
    async fn pre_stop(
        &self,
        pod: &Pod,
        network: &PodNetwork,
        container: &Container,
        id: &str,
        grace: Duration,
    ) -> Duration {
        let Some(hook) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
        else {
            return grace;
        };
        if grace.is_zero() {
            return grace;
        }
        let started = Instant::now();
        let handler = Handler::of_hook(hook);
        let outcome = tokio::time::timeout(
            grace,
            probe::run_handler(self.runtime.as_ref(), network, container, id, handler),
        )
        .await
        .unwrap_or_else(|_| Err(format!("did not finish within {}s", grace.as_secs())));
        if let Err(why) = outcome {
            self.event(
                pod,
                Some(&container.name),
                EventType::Warning,
                "FailedPreStopHook",
                format!("PreStopHook failed: {why}"),
            );
        }
        grace
            .saturating_sub(started.elapsed())
            .max(MIN_GRACE_AFTER_HOOK)
    }

    /// Stops the pod's running containers: preStop hooks (all at once),
    /// then SIGTERM, then SIGKILL once `grace` is over; then the sandbox.
    async fn kill_pod(
        &self,
        pod: &Pod,
        sandbox: &SandboxState,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let key = key_of(&pod.metadata);
        let network = self.network_of(&key).await;
        let running: Vec<(&Container, &str)> = sandbox
            .containers
            .iter()
            .filter(|c| matches!(c.run, ContainerRun::Running { .. }))
            .filter_map(|c| {
                let spec =
                    container_of(pod, &c.name, false).or(container_of(pod, &c.name, true))?;
                Some((spec, c.id.as_str()))
            })
            .collect();
        for (container, _) in &running {
            self.event(
                pod,
                Some(&container.name),
                EventType::Normal,
                "Killing",
                format!("Stopping container {}", container.name),
            );
        }
        let left = futures::future::join_all(
            running
                .iter()
                .map(|(container, id)| self.pre_stop(pod, &network, container, id, grace)),
        )
        .await
        .into_iter()
        .min()
        .unwrap_or(grace);
        self.runtime.stop_sandbox(&sandbox.id, left).await
    }

    /// The registry credentials of the pod's `imagePullSecrets`, as a keyring.
    async fn keyring(&self, pod: &Pod) -> Keyring {
        let mut keyring = Keyring::default();
        let namespace = pod.metadata.namespace.as_deref();
        let names = pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty());
        for name in names {
            let secret = match self.client.get::<Secret>(namespace, &name).await {
                Ok(secret) => secret,
                Err(error) => {
                    // The kubelet pulls anyway, without them.
                    tracing::warn!(secret = %name, %error, "cannot read an image pull secret");
                    continue;
                }
            };
            let data = secret.data.unwrap_or_default();
            for key in [".dockerconfigjson", ".dockercfg"] {
                if let Some(config) = data.get(key)
                    && let Ok(found) = Keyring::from_docker_config(&config.0)
                {
                    keyring.extend(found);
                }
            }
        }
        keyring
    }

    /// Makes sure the container's image is on the node, as its
    /// `imagePullPolicy` says; `Some` while it is not (ErrImagePull,
    /// ImagePullBackOff, ErrImageNeverPull).
    async fn ensure_image(&self, pod: &Pod, container: &Container) -> Option<plan::Waiting> {
        let image = container.image.clone().unwrap_or_default();
        let name = container.name.clone();
        let waiting = |reason: &'static str, message: String, until| plan::Waiting {
            name: name.clone(),
            reason,
            message,
            until,
        };
        let present = match self.runtime.image_status(&image) {
            Ok(present) => present.is_some(),
            Err(error) => {
                return Some(waiting(
                    "InvalidImageName",
                    format!("Failed to apply default image tag {image:?}: {error}"),
                    Utc::now() + chrono::Duration::seconds(300),
                ));
            }
        };
        let policy = container
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| default_pull_policy(&image).into());
        match policy.as_str() {
            "Never" if !present => {
                let message =
                    format!("Container image {image:?} is not present with pull policy of Never");
                self.event(
                    pod,
                    Some(&name),
                    EventType::Warning,
                    "ErrImageNeverPull",
                    message.clone(),
                );
                return Some(waiting(
                    "ErrImageNeverPull",
                    message,
                    Utc::now() + chrono::Duration::seconds(10),
                ));
            }
            "Never" | "IfNotPresent" if present => {
                self.event(
                    pod,
                    Some(&name),
                    EventType::Normal,
                    "Pulled",
                    format!("Container image {image:?} already present on machine"),
                );
                return None;
            }
            _ => {}
        }
        let key = (pod.metadata.uid.clone().unwrap_or_default(), image.clone());
        let now = Utc::now();
        if let Some(until) = self.backoff().image_waits_until(&key, now) {
            let message = format!("Back-off pulling image {image:?}");
            self.event(
                pod,
                Some(&name),
                EventType::Normal,
                "BackOff",
                message.clone(),
            );
            return Some(waiting("ImagePullBackOff", message, until));
        }
        self.event(
            pod,
            Some(&name),
            EventType::Normal,
            "Pulling",
            format!("Pulling image {image:?}"),
        );
        let started = Instant::now();
        let credentials = match Reference::parse(&image) {
            Ok(reference) => self.keyring(pod).await.lookup(&reference),
            Err(_) => Vec::new(),
        };
        match self.runtime.pull_image(&image, &credentials).await {
            Ok(_) => {
                let took = started.elapsed().as_secs_f64();
                self.event(
                    pod,
                    Some(&name),
                    EventType::Normal,
                    "Pulled",
                    format!("Successfully pulled image {image:?} in {took:.3}s"),
                );
                self.backoff().image_pulled(&key);
                None
            }
            Err(error) => {
                let reason = match &error {
                    RuntimeError::Image { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                let message = format!("Failed to pull image {image:?}: {reason}");
                self.event(
                    pod,
                    Some(&name),
                    EventType::Warning,
                    "Failed",
                    message.clone(),
                );
                self.event(
                    pod,
                    Some(&name),
                    EventType::Warning,
                    "Failed",
                    "Error: ErrImagePull".into(),
                );
                let until = self.backoff().image_failed(key, Utc::now());
                Some(waiting("ErrImagePull", message, until))
            }
        }
    }

    /// After a container started: its events, and its postStart hook (a
    /// failing hook kills the container, which restarts as its policy says).
    async fn started(&self, pod: &Pod, sandbox: &SandboxState, container: &Container, id: &str) {
        let name = &container.name;
        self.event(
            pod,
            Some(name),
            EventType::Normal,
            "Created",
            format!("Created container {name}"),
        );
        self.event(
            pod,
            Some(name),
            EventType::Normal,
            "Started",
            format!("Started container {name}"),
        );
        let Some(hook) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
        else {
            return;
        };
        let network = PodNetwork {
            netns: self.runtime.network_namespace(&sandbox.id),
            ip: sandbox.ip.clone(),
        };
        let grace = plan::grace_period(pod);
        let outcome = tokio::time::timeout(
            grace.max(MIN_GRACE_AFTER_HOOK),
            probe::run_handler(
                self.runtime.as_ref(),
                &network,
                container,
                id,
                Handler::of_hook(hook),
            ),
        )
        .await
        .unwrap_or_else(|_| Err("did not finish in time".into()));
        if let Err(why) = outcome {
            self.event(
                pod,
                Some(name),
                EventType::Warning,
                "FailedPostStartHook",
                format!("PostStartHook failed: {why}"),
            );
            if let Err(error) = self.runtime.stop_container(id, grace).await {
                tracing::warn!(container = %id, %error, "cannot stop a container whose postStart hook failed");
            }
        }
    }

    /// Removes exited containers of the pod beyond the newest two attempts
    /// of each (the current one and the one `--previous` shows).
    async fn collect_garbage(&self, sandbox: &SandboxState) {
        let mut by_name: std::collections::HashMap<&str, Vec<&crate::runtime::ContainerState>> =
            std::collections::HashMap::new();
        for container in &sandbox.containers {
            by_name.entry(&container.name).or_default().push(container);
        }
        for attempts in by_name.values_mut() {
            attempts.sort_by_key(|c| std::cmp::Reverse(c.attempt));
            for old in attempts.iter().skip(2) {
                if matches!(old.run, ContainerRun::Exited { .. })
                    && let Err(error) = self.runtime.remove_container(&old.id).await
                {
                    tracing::warn!(container = %old.id, %error, "cannot remove an old container");
                }
            }
        }
    }

    pub async fn run(self: Arc<Self>, workers: usize, shutdown: CancellationToken) {
        if !self.pods.wait_synced(&shutdown).await {
            return;
        }
        // Sandboxes of pods that are no longer bound here (deleted while
        // the agent was away) are cleaned up once.
        if let Ok(sandboxes) = self.runtime.list().await {
            for sandbox in sandboxes {
                self.queue.add(format!(
                    "{}/{}",
                    sandbox.config.namespace, sandbox.config.name
                ));
            }
        }
        // Every pod again every sync period (volumes brought up to date),
        // and the volumes of pods that are gone swept away.
        let resync = self.clone();
        let resync_shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                resync.sweep_volumes().await;
                tokio::select! {
                    () = tokio::time::sleep(resync.sync_frequency) => {}
                    () = resync_shutdown.cancelled() => return,
                }
                for pod in resync.pods.list() {
                    resync.queue.add(key_of(&pod.metadata));
                }
            }
        });
        // What the runtime reports changes without the API knowing (a
        // container exits): relist every second, and sync the pods whose
        // containers changed, as the kubelet's PLEG does.
        let relister = self.clone();
        let relist_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut seen: std::collections::HashMap<String, String> =
                std::collections::HashMap::new();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = relist_shutdown.cancelled() => return,
                }
                let Ok(sandboxes) = relister.runtime.list().await else {
                    continue;
                };
                count_running(&sandboxes);
                let mut now = std::collections::HashMap::new();
                for sandbox in sandboxes {
                    let key = format!("{}/{}", sandbox.config.namespace, sandbox.config.name);
                    let print = format!(
                        "{}{:?}",
                        sandbox.ready,
                        sandbox
                            .containers
                            .iter()
                            .map(|c| (&c.id, &c.run))
                            .collect::<Vec<_>>()
                    );
                    if seen.get(&key) != Some(&print) {
                        relister.queue.add(key.clone());
                    }
                    now.insert(key, print);
                }
                seen = now;
            }
        });
        let this = self.clone();
        keelson_control::runtime::run_workers(
            "kubelet_pod_worker",
            self.queue.clone(),
            workers,
            move |key| {
                let this = this.clone();
                async move { this.sync(&key).await }
            },
        )
        .await;
    }

    fn runtime_failed(pod: &str) -> impl FnOnce(RuntimeError) -> SyncError {
        let pod = pod.to_owned();
        move |source| SyncError::Runtime { pod, source }
    }

    /// The sandboxes of the pod `key`, newest first.
    async fn sandboxes_of(&self, key: &str) -> Result<Vec<SandboxState>, SyncError> {
        let (namespace, name) = split_key(key);
        let mut sandboxes: Vec<SandboxState> = self
            .runtime
            .list()
            .await
            .map_err(Self::runtime_failed(key))?
            .into_iter()
            .filter(|s| Some(s.config.namespace.as_str()) == namespace && s.config.name == name)
            .collect();
        sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created));
        Ok(sandboxes)
    }

    async fn sync(self: &Arc<Self>, key: &str) -> Result<Next, SyncError> {
        let started = Instant::now();
        let pod = self.pods.get(key);
        let mut sandboxes = self.sandboxes_of(key).await?;
        let uid = pod.as_ref().and_then(|p| p.metadata.uid.clone());
        // Sandboxes of another pod of the same name (or of none): stop and remove.
        for stale in sandboxes
            .iter()
            .filter(|s| Some(&s.config.pod_uid) != uid.as_ref())
        {
            self.runtime
                .stop_sandbox(&stale.id, Duration::ZERO)
                .await
                .map_err(Self::runtime_failed(key))?;
            self.runtime
                .remove_sandbox(&stale.id)
                .await
                .map_err(Self::runtime_failed(key))?;
            self.backoff().forget(&stale.config.pod_uid);
            self.remove_volumes(&stale.config.pod_uid).await;
        }
        sandboxes.retain(|s| Some(&s.config.pod_uid) == uid.as_ref());
        let Some(pod) = pod else {
            self.prober.sync(self, key, &[]);
            return Ok(Next::Done);
        };
        let mut sandbox = sandboxes.into_iter().next();
        let mut waiting = Vec::new();
        // No container starts before the pod's volumes are there.
        let volumes = if pod.metadata.deletion_timestamp.is_none() {
            self.volumes_ready(&pod).await.err()
        } else {
            None
        };
        if let Some(error) = &volumes {
            self.event(
                &pod,
                None,
                EventType::Warning,
                error.reason(),
                error.to_string(),
            );
        }
        for _ in 0..MAX_STEPS {
            let unhealthy: Vec<String> = sandbox
                .iter()
                .flat_map(|s| &s.containers)
                .filter(|c| matches!(c.run, ContainerRun::Running { .. }))
                .filter(|c| self.prober.unhealthy(&c.id).is_some())
                .map(|c| c.id.clone())
                .collect();
            let mut plan = plan::plan(
                &pod,
                sandbox.as_ref(),
                &self.backoff(),
                &unhealthy,
                Utc::now(),
            );
            if let Some(error) = &volumes {
                plan.actions.retain(|a| !matches!(a, Action::Start { .. }));
                for action in
                    plan::plan(&pod, sandbox.as_ref(), &Backoff::default(), &[], Utc::now()).actions
                {
                    if let Action::Start { name, .. } = action {
                        plan.waiting.push(plan::Waiting {
                            name,
                            reason: "ContainerCreating",
                            message: error.to_string(),
                            until: Utc::now() + chrono::Duration::seconds(5),
                        });
                    }
                }
            }
            waiting = plan.waiting;
            if plan.actions.is_empty() {
                break;
            }
            let mut blocked = false;
            for action in plan.actions {
                if let Some(why) = self
                    .act(&pod, sandbox.as_ref(), action)
                    .await
                    .map_err(Self::runtime_failed(key))?
                {
                    waiting.push(why);
                    blocked = true;
                }
            }
            if blocked {
                break;
            }
            sandbox = self.sandboxes_of(key).await?.into_iter().next();
        }
        if let Some(s) = &sandbox {
            self.collect_garbage(s).await;
        }
        let deleting = pod.metadata.deletion_timestamp.is_some();
        // Probe the running containers (none once the pod is going).
        let reported = |id: &str| {
            let status = pod
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .find(|c| c.container_id.as_deref() == Some(status::container_id(id).as_str()));
            probe::Reported {
                started: status.is_some_and(|c| c.started == Some(true)),
                ready: status.is_some_and(|c| c.ready),
            }
        };
        let probed: Vec<probe::Running> = match &sandbox {
            Some(s) if !deleting => pod
                .spec
                .iter()
                .flat_map(|spec| &spec.containers)
                .filter_map(|c| {
                    let latest = s.latest(&c.name)?;
                    match latest.run {
                        ContainerRun::Running { started } => Some(probe::Running {
                            id: latest.id.clone(),
                            container: c.clone(),
                            started,
                            reported: reported(&latest.id),
                        }),
                        _ => None,
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        self.prober.sync(self, key, &probed);
        let prober = self.prober.clone();
        let health = move |id: &str, container: &Container| {
            let started = prober.passed(id, container, Kind::Startup);
            (
                started,
                started && prober.passed(id, container, Kind::Readiness),
            )
        };
        let status = status::pod_status(
            &pod,
            sandbox.as_ref(),
            &waiting,
            &health,
            &self.host_ip,
            Utc::now(),
        );

        let stopped = sandbox.as_ref().is_none_or(|s| {
            !s.ready
                && s.containers
                    .iter()
                    .all(|c| matches!(c.run, ContainerRun::Exited { .. }))
        });
        if deleting && stopped {
            if let Some(s) = &sandbox {
                self.runtime
                    .remove_sandbox(&s.id)
                    .await
                    .map_err(Self::runtime_failed(key))?;
            }
            self.backoff().forget(uid.as_deref().unwrap_or_default());
            self.remove_volumes(uid.as_deref().unwrap_or_default())
                .await;
            let (namespace, name) = split_key(key);
            let options = DeleteOptions {
                uid: uid.clone(),
                grace_period_seconds: Some(0),
                ..DeleteOptions::default()
            };
            return match self.client.delete::<Pod>(namespace, name, &options).await {
                Ok(()) => Ok(Next::Done),
                Err(error) if error.is_not_found() || error.is_conflict() => Ok(Next::Done),
                Err(source) => Err(SyncError::Api {
                    pod: key.to_owned(),
                    action: "delete",
                    source,
                }),
            };
        }
        let current = pod.status.clone().unwrap_or_default();
        if serde_json::to_value(&current).ok() != serde_json::to_value(&status).ok() {
            let first_run = current.phase.as_deref() != Some("Running")
                && status.phase.as_deref() == Some("Running");
            let (namespace, name) = split_key(key);
            match self
                .client
                .patch::<Pod>(
                    namespace,
                    name,
                    Some("status"),
                    Patch::Merge,
                    &json!({"status": status}),
                )
                .await
            {
                Ok(_) => {}
                Err(error) if error.is_not_found() => return Ok(Next::Done),
                Err(source) => {
                    return Err(SyncError::Api {
                        pod: key.to_owned(),
                        action: "report status",
                        source,
                    });
                }
            }
            if first_run && let Some(created) = pod.metadata.creation_timestamp.as_ref() {
                let seconds = (Utc::now() - created.0).num_milliseconds() as f64 / 1000.0;
                metrics::histogram!("kubelet_pod_start_duration_seconds").record(seconds.max(0.0));
            }
        }
        metrics::histogram!("kubelet_pod_worker_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        // Come back when a backoff ends.
        let now = Utc::now();
        Ok(waiting
            .iter()
            .map(|w| (w.until - now).to_std().unwrap_or(Duration::ZERO))
            .min()
            .map_or(Next::Done, |d| {
                Next::RequeueAfter(d + Duration::from_millis(50))
            }))
    }

    /// Carries out one action; `Some` when a container cannot start for a
    /// reason its status should show (its configuration, its image).
    async fn act(
        &self,
        pod: &Pod,
        sandbox: Option<&SandboxState>,
        action: Action,
    ) -> Result<Option<plan::Waiting>, RuntimeError> {
        let operation = match &action {
            Action::CreateSandbox => "run_sandbox",
            Action::KillPod { .. } => "stop_sandbox",
            Action::KillContainer { .. } => "stop_container",
            Action::Start { .. } => "start_container",
        };
        metrics::counter!("kubelet_runtime_operations_total", "operation_type" => operation)
            .increment(1);
        let outcome = match action {
            Action::CreateSandbox => self
                .runtime
                .run_sandbox(&sandbox_config(pod))
                .await
                .map(drop),
            Action::KillPod { grace } => match sandbox {
                Some(s) => self.kill_pod(pod, s, grace).await,
                None => Ok(()),
            },
            Action::KillContainer { id, name, grace } => {
                let Some(container) = container_of(pod, &name, false) else {
                    return Ok(None);
                };
                let kind = self.prober.unhealthy(&id).unwrap_or(Kind::Liveness);
                self.event(
                    pod,
                    Some(&name),
                    EventType::Normal,
                    "Killing",
                    format!(
                        "Container {name} failed {} probe, will be restarted",
                        kind.title().to_lowercase()
                    ),
                );
                let network = self.network_of(&key_of(&pod.metadata)).await;
                let left = self.pre_stop(pod, &network, container, &id, grace).await;
                self.runtime.stop_container(&id, left).await
            }
            Action::Start {
                name,
                init,
                attempt,
            } => {
                let (Some(sandbox), Some(container)) = (sandbox, container_of(pod, &name, init))
                else {
                    return Ok(None);
                };
                let retry = Utc::now() + chrono::Duration::seconds(2);
                if let Some(waiting) = self.ensure_image(pod, container).await {
                    return Ok(Some(waiting));
                }
                let env = match env::resolve(&self.client, pod, container, self.allocatable).await {
                    Ok(env) => env,
                    Err(error) => {
                        return Ok(Some(plan::Waiting {
                            name,
                            reason: "CreateContainerConfigError",
                            message: error.to_string(),
                            until: retry,
                        }));
                    }
                };
                let mounts = match self.volumes.prepare(pod).await.and_then(|prepared| {
                    self.volumes.mounts(
                        &prepared,
                        pod,
                        container,
                        attempt,
                        &env,
                        sandbox.ip.as_slice(),
                    )
                }) {
                    Ok(mounts) => mounts,
                    Err(error) => {
                        return Ok(Some(plan::Waiting {
                            name,
                            reason: error.reason(),
                            message: error.to_string(),
                            until: retry,
                        }));
                    }
                };
                let config = container_config(pod, container, attempt, env, mounts);
                if attempt > 0
                    && let Some(ContainerRun::Exited {
                        started, finished, ..
                    }) = sandbox.latest(&name).map(|c| c.run.clone())
                {
                    self.backoff()
                        .restarted(&sandbox.config.pod_uid, &name, started, finished);
                }
                match self.runtime.start_container(&sandbox.id, &config).await {
                    Ok(id) => {
                        self.started(pod, sandbox, container, &id).await;
                        Ok(())
                    }
                    Err(RuntimeError::Config { reason, .. }) => {
                        metrics::counter!("kubelet_runtime_operations_errors_total", "operation_type" => operation).increment(1);
                        return Ok(Some(plan::Waiting {
                            name,
                            reason: "CreateContainerConfigError",
                            message: reason,
                            until: retry,
                        }));
                    }
                    Err(RuntimeError::Image { image, reason }) => {
                        metrics::counter!("kubelet_runtime_operations_errors_total", "operation_type" => operation).increment(1);
                        return Ok(Some(plan::Waiting {
                            name,
                            reason: "CreateContainerError",
                            message: format!("image {image:?}: {reason}"),
                            until: retry,
                        }));
                    }
                    other => other.map(drop),
                }
            }
        };
        if outcome.is_err() {
            metrics::counter!("kubelet_runtime_operations_errors_total", "operation_type" => operation).increment(1);
        }
        outcome.map(|()| None)
    }
}

/// Sets the kubelet's gauges of the pods and containers running here.
fn count_running(sandboxes: &[SandboxState]) {
    let pods = sandboxes.iter().filter(|s| s.ready).count();
    let containers = sandboxes
        .iter()
        .flat_map(|s| &s.containers)
        .filter(|c| matches!(c.run, ContainerRun::Running { .. }))
        .count();
    metrics::gauge!("kubelet_running_pods").set(pods as f64);
    metrics::gauge!("kubelet_running_containers", "container_state" => "running")
        .set(containers as f64);
}

impl<R: Runtime> probe::Probing for PodWorkers<R> {
    async fn probe(
        &self,
        pod: &str,
        container: &Container,
        id: &str,
        kind: Kind,
    ) -> probe::Outcome {
        let Some(spec) = kind.of(container) else {
            return Ok(());
        };
        let network = self.network_of(pod).await;
        probe::run_handler(
            self.runtime.as_ref(),
            &network,
            container,
            id,
            Handler::of_probe(spec),
        )
        .await
    }

    fn changed(&self, key: &str, container: &Container, kind: Kind, failure: Option<String>) {
        if let (Some(why), Some(pod)) = (failure, self.pods.get(key)) {
            self.event(
                &pod,
                Some(&container.name),
                EventType::Warning,
                "Unhealthy",
                format!("{} probe failed: {why}", kind.title()),
            );
        }
        self.queue.add(key.to_owned());
    }
}
