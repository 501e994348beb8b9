//! Pod volumes, laid out as the kubelet lays them out: set up before the
//! pod's containers start, kept current while it runs, torn down when it
//! is gone.
//!
//! ```text
//!  DATA_DIR/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>      a directory, or a tmpfs (medium: Memory)
//!                              kubernetes.io~configmap/<name>       atomic writer's files (disk)
//!                              kubernetes.io~secret/<name>          atomic writer's files (tmpfs)
//!                              kubernetes.io~downward-api/<name>    atomic writer's files (tmpfs)
//!                              kubernetes.io~projected/<name>       atomic writer's files (tmpfs)
//!                     plugins/kubernetes.io~empty-dir/[wrapped_]<name>/ready   set up once
//!                     volume-subpaths/<volume>/<container>/<index>  subPath bind mounts
//!                     containers/<container>/<attempt, 8 hex digits>  terminationMessagePath files
//!                     etc-hosts                                      the pod's /etc/hosts
//!
//!  pod worker:  prepare(pod) ─► mounts(prepared, pod, container, …) ─► ContainerConfig.mounts
//!               update(pod) every sync and minute (ConfigMaps, Secrets, Downward API)
//!               remove(uid) once the pod is gone; sweep(live uids) at start
//! ```
//!
//! hostPath volumes and persistentVolumeClaims bound to `hostPath` or
//! `local` PersistentVolumes are not under the pod's directory: their
//! paths are bind-mounted as they are.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};
use keelson_control::client::{Client, ClientError};

use crate::pods::env::Allocatable;

mod atomic;
mod container;
mod host;
mod payload;
mod subpath;
mod system;

use atomic::Payload;

/// Why a volume cannot be set up: the text after the kubelet's
/// `MountVolume.SetUp failed for volume "NAME" : `.
#[derive(Debug, thiserror::Error)]
pub enum SetUpError {
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    #[error("configmap references non-existent config key: {0}")]
    ConfigMapKey(String),
    #[error("references non-existent secret key: {0}")]
    SecretKey(String),
    /// A file path of `items` the atomic writer refuses.
    #[error("{0}")]
    InvalidPath(String),
    #[error("unsupported fieldPath: {0}")]
    Field(String),
    #[error("{0}")]
    Resource(String),
    #[error("container {0} not found")]
    NoContainer(String),
    /// A hostPath (or hostPath PersistentVolume) that is not what its
    /// `type` says, or that has `..` in it.
    #[error("{0}")]
    HostPath(String),
    /// A persistentVolumeClaim that cannot be used (not bound, …).
    #[error("error processing PVC {namespace}/{claim}: {reason}")]
    Claim {
        namespace: String,
        claim: String,
        reason: String,
    },
    /// A volume source (or projection) this node does not implement.
    #[error("unsupported volume source: {0}")]
    Unsupported(String),
    #[error("reading {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: ClientError,
    },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Several of the above (a Downward API or projected volume's items).
    #[error("[{}]", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Many(Vec<SetUpError>),
}

impl SetUpError {
    /// `Ok` for none, the error for one, [`SetUpError::Many`] for more.
    fn all(mut errors: Vec<SetUpError>) -> Result<(), SetUpError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(SetUpError::Many(errors)),
        }
    }
}

/// Why a pod's volumes cannot be set up or mounted into one of its
/// containers. The `Display` is what the container's waiting message
/// shows; [`VolumeError::reason`] is its reason.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A volume cannot be set up (kubelet's `FailedMount`); the pod's
    /// containers cannot start.
    #[error("MountVolume.SetUp failed for volume {volume:?} : {reason}")]
    SetUp { volume: String, reason: SetUpError },
    #[error("the pod has no uid")]
    NoUid,
    /// A uid, volume or container name that is not one path component.
    #[error("{0:?} cannot name a directory")]
    InvalidName(String),
    /// `prepare` was not given this volume (the container's spec names a
    /// volume the pod does not have).
    #[error("cannot find volume {volume:?} to mount into container {container:?}")]
    NoVolume { volume: String, container: String },
    /// An absolute or `..` subPath, in the kubelet's words.
    #[error("{0}")]
    SubPath(String),
    #[error("missing value for {}", .0.join(", "))]
    SubPathExpr(Vec<String>),
    #[error(
        "failed to create subPath directory for volumeMount {mount:?} of container {container:?}"
    )]
    SubPathCreate { mount: String, container: String },
    #[error("failed to prepare subPath for volumeMount {mount:?} of container {container:?}")]
    SubPathPrepare { mount: String, container: String },
    #[error("invalid MountPropagation mode: {0:?}")]
    Propagation(String),
    #[error("Bidirectional mount propagation is available only to privileged containers")]
    Bidirectional,
    /// A file the agent keeps for the container (its /etc/hosts, its
    /// termination message file).
    #[error("cannot {action} {}: {source}", path.display())]
    ContainerFile {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pod's directory cannot be read or removed.
    #[error("cannot {action} {}: {source}", path.display())]
    PodDir {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Mounts under the pod's directory that would not come off; the
    /// directory is kept (removing it would reach through them).
    #[error("{} still mounted under {}", mounts.len(), dir.display())]
    Busy { dir: PathBuf, mounts: Vec<PathBuf> },
}

impl VolumeError {
    /// The waiting reason for the container: `FailedMount` when the pod's
    /// volumes are not there, `CreateContainerConfigError` when this
    /// container's mounts cannot be made.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SetUp { .. }
            | Self::NoUid
            | Self::InvalidName(_)
            | Self::PodDir { .. }
            | Self::Busy { .. } => "FailedMount",
            _ => "CreateContainerConfigError",
        }
    }
}

/// Where volumes read the objects they show (ConfigMaps, Secrets,
/// PersistentVolumeClaims, PersistentVolumes). The API client is one.
pub trait Objects: Send + Sync + 'static {
    /// The object `name` (in `namespace`, for namespaced kinds); `None` if
    /// there is none.
    fn fetch<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> impl Future<Output = Result<Option<K>, ClientError>> + Send
    where
        K: k8s_openapi::Resource + serde::de::DeserializeOwned + Send + 'static;
}

impl Objects for Client {
    async fn fetch<K>(&self, namespace: Option<&str>, name: &str) -> Result<Option<K>, ClientError>
    where
        K: k8s_openapi::Resource + serde::de::DeserializeOwned + Send + 'static,
    {
        match Client::get::<K>(self, namespace, name).await {
            Ok(object) => Ok(Some(object)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// A volume set up for a pod, as its containers mount it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedVolume {
    /// Where it is on the node.
    pub path: PathBuf,
    /// Mounted read-only whatever the volumeMount says (ConfigMap, Secret,
    /// Downward API and projected volumes; read-only claims).
    pub read_only: bool,
    /// The kubelet's plugin name (`kubernetes.io~configmap`, …).
    pub plugin: &'static str,
}

/// A pod's volumes, set up: what [`Volumes::mounts`] needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreparedVolumes {
    pod_uid: String,
    volumes: BTreeMap<String, PreparedVolume>,
}

impl PreparedVolumes {
    /// The volume `name`.
    pub fn get(&self, name: &str) -> Option<&PreparedVolume> {
        self.volumes.get(name)
    }

    /// Every volume, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &PreparedVolume)> {
        self.volumes.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// What a volume is made from.
enum Source<'a> {
    EmptyDir {
        memory: bool,
        size_limit: Option<i64>,
    },
    ConfigMap(&'a k8s_openapi::api::core::v1::ConfigMapVolumeSource),
    Secret(&'a k8s_openapi::api::core::v1::SecretVolumeSource),
    DownwardApi(&'a k8s_openapi::api::core::v1::DownwardAPIVolumeSource),
    Projected(&'a k8s_openapi::api::core::v1::ProjectedVolumeSource),
    HostPath(&'a k8s_openapi::api::core::v1::HostPathVolumeSource),
    Claim(&'a k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource),
    Unsupported(String),
}

const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
const CONFIG_MAP: &str = "kubernetes.io~configmap";
const SECRET: &str = "kubernetes.io~secret";
const DOWNWARD_API: &str = "kubernetes.io~downward-api";
const PROJECTED: &str = "kubernetes.io~projected";
const HOST_PATH: &str = "kubernetes.io~host-path";
const LOCAL: &str = "kubernetes.io~local-volume";

impl<'a> Source<'a> {
    fn of(volume: &'a Volume) -> Result<Self, SetUpError> {
        Ok(if let Some(e) = &volume.empty_dir {
            let memory = match e.medium.as_deref() {
                None | Some("") => false,
                Some("Memory") => true,
                Some(other) => {
                    return Err(SetUpError::Unsupported(format!(
                        "emptyDir medium {other:?}"
                    )));
                }
            };
            Source::EmptyDir {
                memory,
                size_limit: e
                    .size_limit
                    .as_ref()
                    .and_then(|q| keelson_control::quantity::value(&q.0)),
            }
        } else if let Some(s) = &volume.config_map {
            Source::ConfigMap(s)
        } else if let Some(s) = &volume.secret {
            Source::Secret(s)
        } else if let Some(s) = &volume.downward_api {
            Source::DownwardApi(s)
        } else if let Some(s) = &volume.projected {
            Source::Projected(s)
        } else if let Some(s) = &volume.host_path {
            Source::HostPath(s)
        } else if let Some(s) = &volume.persistent_volume_claim {
            Source::Claim(s)
        } else {
            // The API's default for a volume without a source is an emptyDir.
            let json = serde_json::to_value(volume).unwrap_or_default();
            match json
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
            {
                Some(kind) => Source::Unsupported(kind),
                None => Source::EmptyDir {
                    memory: false,
                    size_limit: None,
                },
            }
        })
    }

    /// Whether the atomic writer fills it, and the medium under it.
    fn contents(&self) -> Option<(&'static str, bool)> {
        match self {
            Source::ConfigMap(_) => Some((CONFIG_MAP, false)),
            Source::Secret(_) => Some((SECRET, true)),
            Source::DownwardApi(_) => Some((DOWNWARD_API, true)),
            Source::Projected(_) => Some((PROJECTED, true)),
            _ => None,
        }
    }
}

/// The pod's memory limit, as its cgroup has it: only when every
/// container declares one.
fn pod_memory_limit(pod: &Pod) -> Option<i64> {
    let spec = pod.spec.as_ref()?;
    let limit = |c: &k8s_openapi::api::core::v1::Container| {
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .and_then(|q| keelson_control::quantity::value(&q.0))
    };
    let mut sum = 0i64;
    for container in &spec.containers {
        sum = sum.saturating_add(limit(container)?);
    }
    let mut init = 0i64;
    for container in spec.init_containers.iter().flatten() {
        init = init.max(limit(container)?);
    }
    let overhead = spec
        .overhead
        .as_ref()
        .and_then(|o| o.get("memory"))
        .and_then(|q| keelson_control::quantity::value(&q.0))
        .unwrap_or(0);
    Some(sum.max(init).saturating_add(overhead))
}

/// A memory-backed volume's size, as the kubelet sizes it: the node's
/// allocatable memory, or less if the pod's limit or the volume's
/// `sizeLimit` is less.
fn tmpfs_size(node_memory: i64, pod: &Pod, size_limit: Option<i64>) -> Option<i64> {
    [Some(node_memory), pod_memory_limit(pod), size_limit]
        .into_iter()
        .flatten()
        .filter(|s| *s > 0)
        .min()
}

/// `name`, if it is one path component (not `.`, `..`, nor empty).
fn component(name: &str) -> Result<&str, VolumeError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(VolumeError::InvalidName(name.to_owned()));
    }
    Ok(name)
}

pub(super) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SetUpError {
    let path = path.to_owned();
    move |source| SetUpError::Io {
        action,
        path,
        source,
    }
}

/// The volumes of the pods of one node.
#[derive(Debug)]
pub struct Volumes<O = Client> {
    /// `DATA_DIR/pods`.
    root: PathBuf,
    objects: O,
    /// The node's, for `resourceFieldRef`s and tmpfs sizes.
    allocatable: Allocatable,
    cluster_domain: String,
    /// The cluster DNS servers pods with `dnsPolicy: ClusterFirst` use.
    cluster_dns: Vec<String>,
    /// No tmpfs and no bind mounts, and no memory-backed contents written
    /// (hollow nodes, whose containers never run).
    hollow: bool,
    /// One setup or teardown at a time per pod.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<O: Objects> Volumes<O> {
    /// The volumes of pods under `DATA_DIR/pods`, reading objects through
    /// `objects`.
    pub fn new(data_dir: &Path, objects: O, allocatable: Allocatable) -> Self {
        Self {
            root: data_dir.join("pods"),
            objects,
            allocatable,
            cluster_domain: "cluster.local".to_owned(),
            cluster_dns: Vec::new(),
            hollow: false,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Pods' `/etc/hosts` name them in `domain` (`cluster.local`).
    pub fn with_cluster_domain(mut self, domain: &str) -> Self {
        domain.clone_into(&mut self.cluster_domain);
        self
    }

    /// The cluster DNS servers (the kubelet's `--cluster-dns`) written into
    /// pods' /etc/resolv.conf.
    pub fn with_cluster_dns(mut self, servers: Vec<String>) -> Self {
        self.cluster_dns = servers;
        self
    }

    /// For hollow nodes: directories only, no mounts; memory-backed
    /// volumes (Secrets, …) are resolved, so their errors show, but not
    /// written.
    pub fn hollow(mut self) -> Self {
        self.hollow = true;
        self
    }

    /// `DATA_DIR/pods/<uid>`.
    pub fn pod_dir(&self, pod_uid: &str) -> PathBuf {
        self.root.join(pod_uid)
    }

    fn volume_dir(&self, pod_uid: &str, plugin: &str, name: &str) -> PathBuf {
        self.pod_dir(pod_uid)
            .join("volumes")
            .join(plugin)
            .join(name)
    }

    /// The kubelet's "set up once" marker of an emptyDir (`wrapped_NAME`
    /// for the emptyDir under a ConfigMap, Secret, … volume).
    fn ready_marker(&self, pod_uid: &str, name: &str, wrapped: bool) -> PathBuf {
        let dir = if wrapped {
            format!("wrapped_{name}")
        } else {
            name.to_owned()
        };
        self.pod_dir(pod_uid)
            .join("plugins")
            .join(EMPTY_DIR)
            .join(dir)
            .join("ready")
    }

    fn lock(&self, pod_uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(pod_uid.to_owned())
            .or_default()
            .clone()
    }

    /// Sets up every volume of `pod` that is not set up yet (its
    /// directory or tmpfs, its first contents); fast, without reading the
    /// API, for volumes set up before. Call it before starting the pod's
    /// containers, on every sync.
    ///
    /// Errors: the first volume that cannot be set up
    /// ([`VolumeError::SetUp`]: a missing ConfigMap or Secret or key, a
    /// hostPath of the wrong type, an unbound claim, …); the others are
    /// set up all the same.
    pub async fn prepare(&self, pod: &Pod) -> Result<PreparedVolumes, VolumeError> {
        let uid = pod.metadata.uid.clone().ok_or(VolumeError::NoUid)?;
        component(&uid)?;
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            component(&volume.name)?;
        }
        let lock = self.lock(&uid);
        let _held = lock.lock().await;
        let mut prepared = PreparedVolumes {
            pod_uid: uid.clone(),
            volumes: BTreeMap::new(),
        };
        let pod_dir = self.pod_dir(&uid);
        std::fs::create_dir_all(&pod_dir).map_err(|source| VolumeError::PodDir {
            action: "create",
            path: pod_dir.clone(),
            source,
        })?;
        let mut first = None;
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let started = Instant::now();
            let outcome = self.set_up(pod, &uid, volume).await;
            let plugin = outcome.as_ref().map_or("unknown", |v| v.plugin);
            let status = if outcome.is_ok() {
                "success"
            } else {
                "fail-unknown"
            };
            match outcome {
                Ok(ready) => {
                    prepared.volumes.insert(volume.name.clone(), ready);
                }
                Err(reason) => {
                    tracing::warn!(pod = %uid, volume = %volume.name, %reason, "cannot set up the volume");
                    first.get_or_insert(VolumeError::SetUp {
                        volume: volume.name.clone(),
                        reason,
                    });
                }
            }
            metrics::histogram!("storage_operation_duration_seconds",
                "operation_name" => "volume_mount", "volume_plugin" => plugin, "status" => status)
            .record(started.elapsed().as_secs_f64());
        }
        match first {
            Some(error) => Err(error),
            None => Ok(prepared),
        }
    }

    /// Rewrites the ConfigMap, Secret, Downward API and projected volumes
    /// of `pod` that are set up, from the objects as they are now; files
    /// change (all at once) only if their contents did. The kubelet does
    /// this about every minute and on each pod sync.
    ///
    /// Errors: the first volume whose contents cannot be read (a deleted
    /// ConfigMap, …); its files stay as they were.
    pub async fn update(&self, pod: &Pod) -> Result<(), VolumeError> {
        let uid = pod.metadata.uid.clone().ok_or(VolumeError::NoUid)?;
        component(&uid)?;
        let lock = self.lock(&uid);
        let _held = lock.lock().await;
        let mut first = None;
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            component(&volume.name)?;
            let Ok(source) = Source::of(volume) else {
                continue;
            };
            let Some((plugin, memory)) = source.contents() else {
                continue;
            };
            if !self.ready_marker(&uid, &volume.name, true).exists() {
                continue;
            }
            let dir = self.volume_dir(&uid, plugin, &volume.name);
            let outcome = async {
                let payload = self.payload(pod, &source).await?;
                if memory && self.hollow {
                    return Ok(false);
                }
                atomic::write(&dir, &payload)
            }
            .await;
            match outcome {
                Ok(true) => {
                    tracing::info!(pod = %uid, volume = %volume.name, "volume contents updated");
                    metrics::counter!("kubelet_volume_updates_total", "volume_plugin" => plugin)
                        .increment(1);
                }
                Ok(false) => {}
                Err(reason) => {
                    first.get_or_insert(VolumeError::SetUp {
                        volume: volume.name.clone(),
                        reason,
                    });
                }
            }
        }
        match first {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Sets up one volume if it is not yet.
    async fn set_up(
        &self,
        pod: &Pod,
        uid: &str,
        volume: &Volume,
    ) -> Result<PreparedVolume, SetUpError> {
        let name = &volume.name;
        let source = Source::of(volume)?;
        let node_memory = self.allocatable.memory;
        match &source {
            Source::EmptyDir { memory, size_limit } => {
                let dir = self.volume_dir(uid, EMPTY_DIR, name);
                let marker = self.ready_marker(uid, name, false);
                let size = memory
                    .then(|| tmpfs_size(node_memory, pod, *size_limit))
                    .flatten();
                self.set_up_dir(&dir, &marker, *memory, size)?;
                Ok(PreparedVolume {
                    path: dir,
                    read_only: false,
                    plugin: EMPTY_DIR,
                })
            }
            Source::ConfigMap(_)
            | Source::Secret(_)
            | Source::DownwardApi(_)
            | Source::Projected(_) => {
                let Some((plugin, memory)) = source.contents() else {
                    return Err(SetUpError::Unsupported(name.clone()));
                };
                let dir = self.volume_dir(uid, plugin, name);
                let marker = self.ready_marker(uid, name, true);
                let prepared = PreparedVolume {
                    path: dir.clone(),
                    read_only: true,
                    plugin,
                };
                if self.is_ready(&marker, &dir, memory)? {
                    return Ok(prepared);
                }
                let size = memory.then(|| tmpfs_size(node_memory, pod, None)).flatten();
                self.mount_dir(&dir, memory, size)?;
                let payload = self.payload(pod, &source).await?;
                if !(memory && self.hollow) {
                    atomic::write(&dir, &payload)?;
                }
                mark_ready(&marker)?;
                tracing::info!(pod = %uid, volume = %name, plugin, "volume set up");
                Ok(prepared)
            }
            Source::HostPath(host) => {
                host::check(&host.path, host.type_.as_deref())?;
                Ok(PreparedVolume {
                    path: PathBuf::from(&host.path),
                    read_only: false,
                    plugin: HOST_PATH,
                })
            }
            Source::Claim(claim) => {
                let namespace = pod.metadata.namespace.clone().unwrap_or_default();
                let claim_object = self
                    .objects
                    .fetch::<PersistentVolumeClaim>(Some(&namespace), &claim.claim_name)
                    .await
                    .map_err(|source| SetUpError::Api {
                        what: format!("persistentvolumeclaim {}", claim.claim_name),
                        source,
                    })?;
                let volume_name =
                    host::bound_volume(&namespace, &claim.claim_name, claim_object.as_ref())?;
                let pv = self
                    .objects
                    .fetch::<PersistentVolume>(None, &volume_name)
                    .await
                    .map_err(|source| SetUpError::Api {
                        what: format!("persistentvolume {volume_name}"),
                        source,
                    })?;
                let (path, local) = host::volume_path(
                    &namespace,
                    &claim.claim_name,
                    claim_object.as_ref(),
                    &volume_name,
                    pv.as_ref(),
                )?;
                Ok(PreparedVolume {
                    path,
                    read_only: claim.read_only == Some(true),
                    plugin: if local { LOCAL } else { HOST_PATH },
                })
            }
            Source::Unsupported(kind) => Err(SetUpError::Unsupported(kind.clone())),
        }
    }

    /// Whether a volume set up before is still there (its tmpfs too: gone
    /// after the node restarted).
    fn is_ready(&self, marker: &Path, dir: &Path, memory: bool) -> Result<bool, SetUpError> {
        if !marker.exists() || !dir.is_dir() {
            return Ok(false);
        }
        if memory && !self.hollow {
            let canonical = std::fs::canonicalize(dir).map_err(io("resolve", dir))?;
            return system::is_mount_point(&canonical).map_err(io("read the mounts for", dir));
        }
        Ok(true)
    }

    /// An emptyDir: its directory (0777), or a tmpfs of `size` on it.
    fn set_up_dir(
        &self,
        dir: &Path,
        marker: &Path,
        memory: bool,
        size: Option<i64>,
    ) -> Result<(), SetUpError> {
        if self.is_ready(marker, dir, memory)? {
            return Ok(());
        }
        self.mount_dir(dir, memory, size)?;
        mark_ready(marker)
    }

    /// Makes `dir` (mode 0777, as the kubelet makes emptyDirs) and mounts a
    /// tmpfs on it if `memory` and it has none.
    fn mount_dir(&self, dir: &Path, memory: bool, size: Option<i64>) -> Result<(), SetUpError> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
            .map_err(io("chmod", dir))?;
        if memory && !self.hollow {
            let canonical = std::fs::canonicalize(dir).map_err(io("resolve", dir))?;
            if !system::is_mount_point(&canonical).map_err(io("read the mounts for", dir))? {
                system::mount_tmpfs(&canonical, size).map_err(io("mount a tmpfs on", dir))?;
            }
        }
        Ok(())
    }

    /// The files a ConfigMap, Secret, Downward API or projected volume
    /// has now.
    async fn payload(&self, pod: &Pod, source: &Source<'_>) -> Result<Payload, SetUpError> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        match source {
            Source::ConfigMap(s) => {
                let optional = s.optional == Some(true);
                let map = self.config_map(&namespace, &s.name, optional).await?;
                payload::config_map(map.as_ref(), s.items.as_deref(), s.default_mode, optional)
            }
            Source::Secret(s) => {
                let optional = s.optional == Some(true);
                let name = s.secret_name.clone().unwrap_or_default();
                let secret = self.secret(&namespace, &name, optional).await?;
                payload::secret(
                    secret.as_ref(),
                    s.items.as_deref(),
                    s.default_mode,
                    optional,
                )
            }
            Source::DownwardApi(s) => payload::downward_api(
                s.items.as_deref().unwrap_or_default(),
                pod,
                s.default_mode,
                self.allocatable,
            ),
            Source::Projected(s) => {
                let mut files = Payload::new();
                let mut errors = Vec::new();
                for projection in s.sources.iter().flatten() {
                    let part = if let Some(c) = &projection.config_map {
                        let optional = c.optional == Some(true);
                        match self.config_map(&namespace, &c.name, optional).await {
                            Ok(map) => payload::config_map(
                                map.as_ref(),
                                c.items.as_deref(),
                                s.default_mode,
                                optional,
                            ),
                            Err(error) => Err(error),
                        }
                    } else if let Some(c) = &projection.secret {
                        let optional = c.optional == Some(true);
                        match self.secret(&namespace, &c.name, optional).await {
                            Ok(secret) => payload::secret(
                                secret.as_ref(),
                                c.items.as_deref(),
                                s.default_mode,
                                optional,
                            ),
                            Err(error) => Err(error),
                        }
                    } else if let Some(d) = &projection.downward_api {
                        payload::downward_api(
                            d.items.as_deref().unwrap_or_default(),
                            pod,
                            s.default_mode,
                            self.allocatable,
                        )
                    } else if projection.service_account_token.is_some() {
                        Err(SetUpError::Unsupported(
                            "serviceAccountToken projection (no token requests on this node yet)"
                                .into(),
                        ))
                    } else if projection.cluster_trust_bundle.is_some() {
                        Err(SetUpError::Unsupported(
                            "clusterTrustBundle projection".into(),
                        ))
                    } else {
                        Ok(Payload::new())
                    };
                    match part {
                        // Later sources win.
                        Ok(part) => files.extend(part),
                        Err(error) => errors.push(error),
                    }
                }
                SetUpError::all(errors).map(|()| files)
            }
            _ => Ok(Payload::new()),
        }
    }

    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
        optional: bool,
    ) -> Result<Option<ConfigMap>, SetUpError> {
        match self.objects.fetch::<ConfigMap>(Some(namespace), name).await {
            Ok(Some(map)) => Ok(Some(map)),
            Ok(None) if optional => Ok(None),
            Ok(None) => Err(SetUpError::ConfigMapNotFound(name.to_owned())),
            Err(source) => Err(SetUpError::Api {
                what: format!("configmap {name}"),
                source,
            }),
        }
    }

    async fn secret(
        &self,
        namespace: &str,
        name: &str,
        optional: bool,
    ) -> Result<Option<Secret>, SetUpError> {
        match self.objects.fetch::<Secret>(Some(namespace), name).await {
            Ok(Some(secret)) => Ok(Some(secret)),
            Ok(None) if optional => Ok(None),
            Ok(None) => Err(SetUpError::SecretNotFound(name.to_owned())),
            Err(source) => Err(SetUpError::Api {
                what: format!("secret {name}"),
                source,
            }),
        }
    }

    /// The mounts of `container` (its `attempt`-th start): its
    /// volumeMounts (with subPaths bind-mounted under the pod's directory),
    /// then `/etc/hosts` and its `terminationMessagePath` file, both kept
    /// under the pod's directory. `env` is the container's environment
    /// (for `subPathExpr`), `pod_ips` the sandbox's addresses once known.
    ///
    /// Errors: a volumeMount naming a volume not in `prepared`, an invalid
    /// or escaping subPath, a `subPathExpr` using unset variables,
    /// `Bidirectional` propagation in an unprivileged container, or the
    /// files that cannot be written — all `CreateContainerConfigError`.
    pub fn mounts(
        &self,
        prepared: &PreparedVolumes,
        pod: &Pod,
        container: &k8s_openapi::api::core::v1::Container,
        attempt: u32,
        env: &[(String, String)],
        pod_ips: &[String],
    ) -> Result<Vec<crate::runtime::Mount>, VolumeError> {
        component(&container.name)?;
        container::mounts(
            &container::Context {
                pod_dir: &self.pod_dir(&prepared.pod_uid),
                cluster_domain: &self.cluster_domain,
                cluster_dns: &self.cluster_dns,
                hollow: self.hollow,
            },
            prepared,
            pod,
            container,
            attempt,
            env,
            pod_ips,
        )
    }

    /// The termination message `container` wrote in its `attempt`-th run
    /// (at most 4096 bytes, as the kubelet reads it); `None` if it wrote
    /// none.
    pub fn termination_message(
        &self,
        pod_uid: &str,
        container: &str,
        attempt: u32,
    ) -> Option<String> {
        component(pod_uid).ok()?;
        component(container).ok()?;
        container::termination_message(&self.pod_dir(pod_uid), container, attempt)
    }

    /// Tears down the volumes of the pod `pod_uid` once its containers are
    /// gone: unmounts every tmpfs and subPath under its directory, then
    /// removes the directory. Nothing to do if there is none.
    ///
    /// Errors: [`VolumeError::Busy`] if mounts stay (the directory is then
    /// kept: removing it would reach into them), or the file system's.
    pub async fn remove(&self, pod_uid: &str) -> Result<(), VolumeError> {
        component(pod_uid)?;
        let lock = self.lock(pod_uid);
        let held = lock.lock().await;
        let started = Instant::now();
        let outcome = self.remove_dir(pod_uid);
        let status = if outcome.is_ok() {
            "success"
        } else {
            "fail-unknown"
        };
        metrics::histogram!("storage_operation_duration_seconds",
            "operation_name" => "volume_unmount", "volume_plugin" => "pod", "status" => status)
        .record(started.elapsed().as_secs_f64());
        drop(held);
        if outcome.is_ok() {
            self.locks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(pod_uid);
        }
        outcome
    }

    fn remove_dir(&self, pod_uid: &str) -> Result<(), VolumeError> {
        let dir = self.pod_dir(pod_uid);
        let failed = |action: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| VolumeError::PodDir {
                action,
                path,
                source,
            }
        };
        let canonical = match std::fs::canonicalize(&dir) {
            Ok(canonical) => canonical,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(failed("resolve", &dir)(error)),
        };
        let left =
            system::unmount_all(&canonical).map_err(failed("read the mounts under", &dir))?;
        if !left.is_empty() {
            return Err(VolumeError::Busy {
                dir: canonical,
                mounts: left,
            });
        }
        std::fs::remove_dir_all(&canonical).map_err(failed("remove", &dir))?;
        tracing::info!(pod = %pod_uid, "pod volumes removed");
        Ok(())
    }

    /// Removes the volumes of every pod under `DATA_DIR/pods` whose uid is
    /// not in `live` (pods deleted while the agent was down, or whose
    /// removal failed). `live` must hold every pod that may still have
    /// containers. The uids removed; failures are logged and retried at
    /// the next sweep.
    pub async fn sweep(&self, live: &HashSet<String>) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let orphans: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|uid| !live.contains(uid))
            .collect();
        let mut removed = Vec::new();
        for uid in orphans {
            match self.remove(&uid).await {
                Ok(()) => removed.push(uid),
                Err(error) => {
                    tracing::warn!(pod = %uid, %error, "cannot remove an orphaned pod's volumes");
                }
            }
        }
        removed
    }
}

fn mark_ready(marker: &Path) -> Result<(), SetUpError> {
    if let Some(parent) = marker.parent() {
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    std::fs::write(marker, b"").map_err(io("write", marker))
}

#[cfg(test)]
mod tests;
