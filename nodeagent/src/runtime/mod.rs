//! The runtime boundary: what the pod workers ask of a container runtime,
//! in the shape of Kubernetes' CRI (sandboxes holding containers).
//!
//! Two implementations: [`fake::FakeRuntime`] (hollow nodes: containers
//! "run" without processes) and the libcontainer runtime (real OCI
//! containers). The pod workers depend only on this trait.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub mod cni;
pub mod fake;
pub mod libcontainer;
pub mod process;

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no sandbox {0}")]
    NoSandbox(String),
    #[error("no container {0}")]
    NoContainer(String),
    #[error("image {image}: {reason}")]
    Image { image: String, reason: String },
    #[error("container {container}: {reason}")]
    Container { container: String, reason: String },
    /// The pod's network could not be set up.
    #[error("pod network")]
    Network(#[source] cni::CniError),
    /// The container's settings cannot be carried out (a user that does
    /// not exist, root under `runAsNonRoot`): `CreateContainerConfigError`.
    #[error("{reason}")]
    Config { container: String, reason: String },
}

/// What a pod's sandbox is made from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxConfig {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    /// The pod's host name (its name, or `spec.hostname`).
    pub hostname: String,
    /// Its containers' `hostPort`s.
    #[serde(default)]
    pub host_ports: Vec<HostPort>,
}

/// A container port published on the node's address (`hostPort`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostPort {
    pub host_port: u16,
    pub container_port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// What a container is made from, once the pod's spec is resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The container's name in the pod.
    pub name: String,
    /// How many times it has been started before (its restart count).
    pub attempt: u32,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub resources: Resources,
    /// Bind mounts: the pod's volumes and the files the agent keeps for
    /// the container, from [`crate::volumes::Volumes::mounts`].
    pub mounts: Vec<Mount>,
    /// Who it runs as, from its and its pod's `securityContext`.
    pub identity: process::Identity,
}

/// A node path bind-mounted into a container: a volume (see
/// [`crate::volumes`]), or a file the agent keeps for it (`/etc/hosts`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Where it is on the node.
    pub host_path: std::path::PathBuf,
    /// Where the container sees it (absolute).
    pub container_path: String,
    pub read_only: bool,
    pub propagation: Propagation,
}

/// How mounts made later below a mount reach the other side (a
/// volumeMount's `mountPropagation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    /// `None`: neither way (rprivate).
    #[default]
    Private,
    /// `HostToContainer`: the node's reach the container (rslave).
    HostToContainer,
    /// `Bidirectional`: both ways (rshared); privileged containers only.
    Bidirectional,
}

/// What the container's cgroup allows it, from its requests and limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Bytes; the kernel kills the container (OOMKilled) beyond them.
    pub memory_limit: Option<i64>,
    /// Relative CPU weight, from the CPU request (Kubernetes' 1024 per CPU, at least 2).
    pub cpu_shares: u64,
    /// Microseconds of CPU per 100 ms period, from the CPU limit.
    pub cpu_quota: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_follow_the_kubelet() {
        let of =
            |json: serde_json::Value| Resources::of(Some(&serde_json::from_value(json).unwrap()));
        let r = of(
            serde_json::json!({"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "64Mi"}}),
        );
        assert_eq!(
            r,
            Resources {
                memory_limit: Some(64 << 20),
                cpu_shares: 256,
                cpu_quota: Some(50_000)
            }
        );
        assert_eq!(
            Resources::of(None),
            Resources {
                memory_limit: None,
                cpu_shares: 2,
                cpu_quota: None
            }
        );
        assert_eq!(
            of(serde_json::json!({"limits": {"cpu": "1"}})).cpu_shares,
            1024,
            "a limit alone requests it"
        );
    }
}

/// The CFS period the CPU quota is measured against, in microseconds.
pub const CPU_PERIOD: u64 = 100_000;

impl Resources {
    /// From a container's `resources`, as the kubelet computes them.
    pub fn of(requirements: Option<&k8s_openapi::api::core::v1::ResourceRequirements>) -> Self {
        let quantity = |map: Option<
            &std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >,
                        name: &str,
                        parse: fn(&str) -> Option<i64>| {
            map.and_then(|m| m.get(name)).and_then(|q| parse(&q.0))
        };
        let limits = requirements.and_then(|r| r.limits.as_ref());
        let requests = requirements.and_then(|r| r.requests.as_ref());
        let milli = keelson_control::quantity::milli;
        let cpu_limit = quantity(limits, "cpu", milli);
        // A limit without a request requests the limit.
        let cpu_request = quantity(requests, "cpu", milli).or(cpu_limit).unwrap_or(0);
        Self {
            memory_limit: quantity(limits, "memory", keelson_control::quantity::value),
            cpu_shares: ((cpu_request.max(0) as u64) * 1024 / 1000).max(2),
            cpu_quota: cpu_limit.map(|m| (m * CPU_PERIOD as i64 / 1000).max(1000)),
        }
    }
}

/// What a container is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerRun {
    Created,
    Running {
        started: DateTime<Utc>,
    },
    Exited {
        exit_code: i32,
        /// `Completed`, `Error`, `OOMKilled`, …
        reason: String,
        started: Option<DateTime<Utc>>,
        finished: DateTime<Utc>,
    },
}

/// One container as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    pub attempt: u32,
    pub image: String,
    /// The image's content digest, when known.
    pub image_id: String,
    pub run: ContainerRun,
}

/// One pod sandbox and its containers, as the runtime sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxState {
    pub id: String,
    pub config: SandboxConfig,
    pub ready: bool,
    pub ip: Option<String>,
    pub created: DateTime<Utc>,
    pub containers: Vec<ContainerState>,
}

impl SandboxState {
    /// The latest attempt of the container named `name`.
    pub fn latest(&self, name: &str) -> Option<&ContainerState> {
        self.containers
            .iter()
            .filter(|c| c.name == name)
            .max_by_key(|c| c.attempt)
    }
}

/// A container runtime, CRI-shaped.
pub trait Runtime: Send + Sync + 'static {
    /// The runtime's name and version, as `nodeInfo.containerRuntimeVersion`.
    fn version(&self) -> String;

    /// The node's pod CIDR, once the control plane assigned it (the fake
    /// runtime hands out sandbox IPs from it; real pods get theirs from CNI).
    fn set_pod_cidr(&self, _cidr: &str) {}

    /// Makes the pod's sandbox (namespaces shared by its containers).
    fn run_sandbox(
        &self,
        config: &SandboxConfig,
    ) -> impl Future<Output = Result<SandboxState, RuntimeError>> + Send;

    /// Stops every container of the sandbox (after `grace`), then the sandbox.
    fn stop_sandbox(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes a stopped sandbox and everything in it.
    fn remove_sandbox(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Creates and starts a container in the sandbox; its id.
    fn start_container(
        &self,
        sandbox: &str,
        config: &ContainerConfig,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// Stops a container: SIGTERM, then SIGKILL after `grace`.
    fn stop_container(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes an exited container.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Every sandbox with its containers.
    fn list(&self) -> impl Future<Output = Result<Vec<SandboxState>, RuntimeError>> + Send;

    /// The id of `image` when it is on the node.
    ///
    /// Errors: `image` is not a valid reference ([`RuntimeError::Image`]).
    fn image_status(&self, image: &str) -> Result<Option<String>, RuntimeError>;

    /// Pulls `image` from its registry, trying `credentials` in order
    /// (none: anonymously); its id.
    ///
    /// Errors: [`RuntimeError::Image`] saying why, as `ErrImagePull` shows it.
    fn pull_image(
        &self,
        image: &str,
        credentials: &[crate::images::Credentials],
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// A process that runs `command` in the running container `id` when
    /// spawned, with the container's environment; its exit status is the
    /// command's. The caller sets its standard streams (with `tty`, a pty).
    ///
    /// Errors: the container does not exist or is not running.
    fn exec_command(
        &self,
        id: &str,
        command: &[String],
        tty: bool,
    ) -> Result<tokio::process::Command, RuntimeError>;

    /// The network namespace of the sandbox `id` (`/proc/PID/ns/net`), for
    /// probes and hooks that connect to the pod. `None` if it has none.
    fn network_namespace(&self, id: &str) -> Option<std::path::PathBuf>;

    /// What the container `name` of `sandbox` uses (from its cgroup);
    /// `None` when the runtime cannot tell.
    fn container_usage(&self, _sandbox: &SandboxState, _name: &str) -> Option<crate::stats::Usage> {
        None
    }

    /// What the pod of `sandbox` uses, its containers together.
    fn pod_usage(&self, _sandbox: &SandboxState) -> Option<crate::stats::Usage> {
        None
    }

    /// Whether containers are real processes (not on hollow nodes, where
    /// probes and hooks pass without running).
    fn runs_processes(&self) -> bool {
        true
    }

    /// The container's log (CRI format); rotated logs are beside it as
    /// `PATH.1` (newest) … `PATH.N`. `None` when the runtime keeps no logs.
    fn log_path(&self, id: &str) -> Option<std::path::PathBuf>;
}
