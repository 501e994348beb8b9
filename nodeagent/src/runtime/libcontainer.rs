//! Real containers through youki's libcontainer, one shim process per
//! container (see [`crate::shim`]) and one pause process per pod holding
//! its network, IPC and UTS namespaces.
//!
//! ```text
//!  DATA_DIR/runtime/sandboxes/<id>/sandbox.json        config, pause pid, created
//!  DATA_DIR/runtime/containers/<id>/container.json     sandbox, name, attempt, image
//!                                   bundle/config.json  the OCI runtime spec
//!                                   bundle/{upper,work,rootfs}  overlay over the image's root filesystem
//!                                   state/{shim.json,exit.json}  written by the shim
//!                                   log                 stdout and stderr, CRI format
//! ```
//!
//! Everything the runtime knows is on disk, so a restarted agent finds its
//! pods and containers as they are.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use libcontainer::oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceType, ProcessBuilder,
    RootBuilder, Spec,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;

use super::cni::{self, Attachment, CniConfig, CniError, PortMapping};
use super::process::{self, ImageConfig};
use super::{
    ContainerConfig, ContainerRun, ContainerState, Runtime, RuntimeError, SandboxConfig,
    SandboxState,
};
use crate::images::{PullOptions, Reference, Store};
use crate::shim::{Exited, LogRotation, Started};

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How long a shim or pause process may take to report.
const STARTUP: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SandboxRecord {
    config: SandboxConfig,
    pause_pid: i32,
    created: DateTime<Utc>,
    stopped: bool,
    /// The CNI conflist the pod's interface was added with (recorded before
    /// ADD, so a crash in between still leads to a DEL).
    #[serde(default)]
    network: Option<serde_json::Value>,
    /// What CNI ADD answered.
    #[serde(default)]
    network_result: Option<serde_json::Value>,
    #[serde(default)]
    ip: Option<String>,
    /// CNI DEL has run.
    #[serde(default)]
    network_released: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ContainerRecord {
    sandbox: String,
    name: String,
    attempt: u32,
    image: String,
    image_id: String,
}

/// The libcontainer runtime of one node.
#[derive(Debug)]
pub struct LibcontainerRuntime {
    root: PathBuf,
    images: Store,
    /// This program, run as `shim` and `pause`.
    binary: PathBuf,
    log_rotation: LogRotation,
    /// Registries spoken to over plain HTTP (`HOST[:PORT]`).
    insecure_registries: Vec<String>,
    /// Pod interfaces through CNI; `None`: pods get loopback only.
    network: Option<CniConfig>,
    /// The conflist for the node's pod CIDR, once known.
    conflist: std::sync::Mutex<Option<serde_json::Value>>,
}

fn failed(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |error| RuntimeError::Container {
        container: what,
        reason: error.to_string(),
    }
}

fn alive(pid: i32) -> bool {
    pid > 0 && kill(Pid::from_raw(pid), None).is_ok()
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), RuntimeError> {
    let bytes = serde_json::to_vec(value).map_err(|e| RuntimeError::Container {
        container: path.display().to_string(),
        reason: e.to_string(),
    })?;
    std::fs::write(path, bytes).map_err(failed(path.display().to_string()))
}

impl LibcontainerRuntime {
    pub fn new(data_dir: &Path, images: Store) -> Result<Self, RuntimeError> {
        let root = data_dir.join("runtime");
        for dir in ["sandboxes", "containers"] {
            std::fs::create_dir_all(root.join(dir)).map_err(failed(root.display().to_string()))?;
        }
        let binary = std::env::current_exe().map_err(failed("this program's path"))?;
        Ok(Self {
            root,
            images,
            binary,
            log_rotation: LogRotation::default(),
            insecure_registries: Vec::new(),
            network: None,
            conflist: std::sync::Mutex::new(None),
        })
    }

    /// Gives pods interfaces through CNI, as `config` says.
    pub fn with_network(mut self, config: CniConfig) -> Self {
        self.network = Some(config);
        self
    }

    fn conflist(&self) -> Option<serde_json::Value> {
        self.conflist
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// CNI DEL for the sandbox, once; `netns` if its namespace still exists.
    async fn release_network(&self, id: &str, record: &mut SandboxRecord, netns: bool) {
        let (Some(cni), Some(list)) = (&self.network, record.network.clone()) else {
            return;
        };
        if record.network_released {
            return;
        }
        let path = netns
            .then(|| PathBuf::from(format!("/proc/{}/ns/net", record.pause_pid)))
            .filter(|_| alive(record.pause_pid));
        let mappings = port_mappings(&record.config);
        let attachment = Attachment {
            container_id: id,
            netns: path.as_deref(),
            namespace: &record.config.namespace,
            pod: &record.config.name,
            port_mappings: &mappings,
        };
        match cni
            .del(&list, &attachment, record.network_result.as_ref())
            .await
        {
            Ok(()) => record.network_released = true,
            Err(error) => {
                tracing::warn!(sandbox = %id, %error, "CNI DEL failed; it runs again at removal")
            }
        }
    }

    /// Speaks plain HTTP to these registries (`HOST[:PORT]`).
    pub fn with_insecure_registries(mut self, registries: Vec<String>) -> Self {
        self.insecure_registries = registries;
        self
    }

    /// Rotates container logs as `rotation` says.
    pub fn with_log_rotation(mut self, rotation: LogRotation) -> Self {
        self.log_rotation = rotation;
        self
    }

    /// Uses `binary` as the shim and pause program (tests run from a test harness).
    pub fn with_binary(mut self, binary: PathBuf) -> Self {
        self.binary = binary;
        self
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.root.join("sandboxes").join(id)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    fn sandbox(&self, id: &str) -> Result<SandboxRecord, RuntimeError> {
        read_json(&self.sandbox_dir(id).join("sandbox.json"))
            .ok_or_else(|| RuntimeError::NoSandbox(id.to_owned()))
    }

    fn container_state(&self, id: &str, record: &ContainerRecord) -> ContainerState {
        let state = self.container_dir(id).join("state");
        let started: Option<Started> = read_json(&state.join("shim.json"));
        let exited: Option<Exited> = read_json(&state.join("exit.json"));
        let run = match (started, exited) {
            (started, Some(exit)) => ContainerRun::Exited {
                exit_code: exit.exit_code,
                reason: exit.reason,
                started: started.map(|s| s.started),
                finished: exit.finished,
            },
            (Some(started), None) if alive(started.pid) => ContainerRun::Running {
                started: started.started,
            },
            // Its shim vanished without a word (the machine restarted).
            (Some(started), None) => ContainerRun::Exited {
                exit_code: 255,
                reason: "Unknown".into(),
                started: Some(started.started),
                finished: Utc::now(),
            },
            (None, None) => ContainerRun::Created,
        };
        ContainerState {
            id: id.to_owned(),
            name: record.name.clone(),
            attempt: record.attempt,
            image: record.image.clone(),
            image_id: record.image_id.clone(),
            run,
        }
    }

    /// The OCI runtime spec of a container in `sandbox`.
    fn spec(
        &self,
        sandbox: &SandboxRecord,
        config: &ContainerConfig,
        image: &ImageConfig,
        rootfs: &Path,
    ) -> Result<Spec, RuntimeError> {
        let spec_error = |e: libcontainer::oci_spec::OciSpecError| RuntimeError::Container {
            container: config.name.clone(),
            reason: e.to_string(),
        };
        let env = process::environment(image, &config.env);
        let args = process::arguments(image, &config.command, &config.args, &env);
        if args.is_empty() {
            return Err(RuntimeError::Container {
                container: config.name.clone(),
                reason:
                    "no command: the image has no entrypoint or cmd, and the container gives none"
                        .into(),
            });
        }
        let mut env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("HOSTNAME={}", sandbox.config.hostname));
        let etc =
            |file: &str| std::fs::read_to_string(rootfs.join("etc").join(file)).unwrap_or_default();
        let user = process::resolve_user(
            &config.identity,
            image.user.as_deref(),
            &etc("passwd"),
            &etc("group"),
        )
        .map_err(|reason| RuntimeError::Config {
            container: config.name.clone(),
            reason,
        })?;
        let mut oci_user = libcontainer::oci_spec::runtime::User::default();
        oci_user.set_uid(user.uid);
        oci_user.set_gid(user.gid);
        if !user.additional_gids.is_empty() {
            oci_user.set_additional_gids(Some(user.additional_gids));
        }
        let process = ProcessBuilder::default()
            .args(args)
            .env(env)
            .user(oci_user)
            .cwd(process::working_dir(image, config.working_dir.as_deref()))
            .terminal(false)
            .build()
            .map_err(spec_error)?;
        let mut spec = Spec::default();
        spec.set_process(Some(process));
        spec.set_root(Some(
            RootBuilder::default()
                .path(rootfs)
                .readonly(config.identity.read_only_root_filesystem)
                .build()
                .map_err(spec_error)?,
        ));
        // The pod's namespaces are the pause process's; pid and mount are the container's own.
        spec.set_hostname(None);
        if let Some(linux) = spec.linux_mut() {
            let joined = |kind: LinuxNamespaceType, name: &str| {
                let mut ns = LinuxNamespace::default();
                ns.set_typ(kind);
                ns.set_path(Some(PathBuf::from(format!(
                    "/proc/{}/ns/{name}",
                    sandbox.pause_pid
                ))));
                ns
            };
            let own = |kind: LinuxNamespaceType| {
                let mut ns = LinuxNamespace::default();
                ns.set_typ(kind);
                ns
            };
            linux.set_namespaces(Some(vec![
                own(LinuxNamespaceType::Pid),
                own(LinuxNamespaceType::Mount),
                joined(LinuxNamespaceType::Network, "net"),
                joined(LinuxNamespaceType::Ipc, "ipc"),
                joined(LinuxNamespaceType::Uts, "uts"),
            ]));
            linux.set_cgroups_path(Some(PathBuf::from(format!(
                "/keelson/pod{}/{}",
                sandbox.config.pod_uid, config.name
            ))));
            let mut resources = linux.resources().clone().unwrap_or_default();
            let mut cpu = LinuxCpuBuilder::default().shares(config.resources.cpu_shares);
            if let Some(quota) = config.resources.cpu_quota {
                cpu = cpu.quota(quota).period(super::CPU_PERIOD);
            }
            resources.set_cpu(Some(cpu.build().map_err(spec_error)?));
            if let Some(limit) = config.resources.memory_limit {
                // No swap beyond the limit, as the kubelet sets it.
                let memory = LinuxMemoryBuilder::default()
                    .limit(limit)
                    .swap(limit)
                    .build()
                    .map_err(spec_error)?;
                resources.set_memory(Some(memory));
            }
            linux.set_resources(Some(resources));
        }
        Ok(spec)
    }

    /// Mounts the container's overlay: the image's root filesystem below,
    /// the container's own writable layer above.
    fn mount_rootfs(&self, bundle: &Path, lower: &Path) -> Result<PathBuf, RuntimeError> {
        let (upper, work, merged) = (
            bundle.join("upper"),
            bundle.join("work"),
            bundle.join("rootfs"),
        );
        for dir in [&upper, &work, &merged] {
            std::fs::create_dir_all(dir).map_err(failed(dir.display().to_string()))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| RuntimeError::Container {
            container: bundle.display().to_string(),
            reason: format!("overlay mount: {e}"),
        })?;
        Ok(merged)
    }

    fn unmount(&self, bundle: &Path) {
        let merged = bundle.join("rootfs");
        // Not mounted (a failed start) is fine.
        let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
    }

    /// Waits until `state` has a `shim.json` or `exit.json`.
    async fn await_start(
        &self,
        state: &Path,
        shim: &mut tokio::process::Child,
        name: &str,
    ) -> Result<(), RuntimeError> {
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            if state.join("shim.json").is_file() || state.join("exit.json").is_file() {
                return Ok(());
            }
            if let Ok(Some(status)) = shim.try_wait() {
                let mut message = String::new();
                if let Some(mut stderr) = shim.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    drop(stderr.read_to_string(&mut message).await);
                }
                return Err(RuntimeError::Container {
                    container: name.to_owned(),
                    reason: format!("the shim exited ({status}): {}", message.trim()),
                });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(RuntimeError::Container {
                    container: name.to_owned(),
                    reason: "the shim did not start it in time".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The pod's `hostPort`s, for portmap.
fn port_mappings(config: &SandboxConfig) -> Vec<PortMapping> {
    config
        .host_ports
        .iter()
        .map(|p| PortMapping {
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: p.protocol.clone(),
        })
        .collect()
}

impl Runtime for LibcontainerRuntime {
    fn version(&self) -> String {
        format!("keelson-libcontainer://{}", env!("CARGO_PKG_VERSION"))
    }

    fn set_pod_cidr(&self, cidr: &str) {
        let Some(cni) = &self.network else { return };
        let list = cni::conflist(cni, cidr);
        // Where operators look for it (the plugins get it on stdin).
        let dir = self.root.join("cni");
        if std::fs::create_dir_all(&dir).is_ok() {
            drop(std::fs::write(
                dir.join("10-keelson.conflist"),
                list.to_string(),
            ));
        }
        *self.conflist.lock().unwrap_or_else(|p| p.into_inner()) = Some(list);
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<SandboxState, RuntimeError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.sandbox_dir(&id);
        std::fs::create_dir_all(&dir).map_err(failed(dir.display().to_string()))?;
        let mut pause = tokio::process::Command::new(&self.binary)
            .args(["pause", "--hostname", &config.hostname, "--sandbox"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(failed("the pause process"))?;
        let pid = pause.id().map_or(0, |p| p as i32);
        let stdout = pause.stdout.take();
        let ready = async {
            let mut lines = tokio::io::BufReader::new(stdout?).lines();
            lines.next_line().await.ok().flatten()
        };
        match tokio::time::timeout(STARTUP, ready).await {
            Ok(Some(line)) if line == "ready" => {}
            _ => {
                drop(pause.start_kill());
                drop(std::fs::remove_dir_all(&dir));
                return Err(RuntimeError::Container {
                    container: config.name.clone(),
                    reason: "the pause process did not start".into(),
                });
            }
        }
        let mut record = SandboxRecord {
            config: config.clone(),
            pause_pid: pid,
            created: Utc::now(),
            stopped: false,
            network: None,
            network_result: None,
            ip: None,
            network_released: false,
        };
        if let Some(cni) = &self.network {
            let Some(list) = self.conflist() else {
                drop(pause.start_kill());
                drop(std::fs::remove_dir_all(&dir));
                return Err(RuntimeError::Network(CniError::NoPodCidr));
            };
            record.network = Some(list.clone());
            write_json(&dir.join("sandbox.json"), &record)?;
            let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
            let mappings = port_mappings(config);
            let attachment = Attachment {
                container_id: &id,
                netns: Some(&netns),
                namespace: &config.namespace,
                pod: &config.name,
                port_mappings: &mappings,
            };
            match cni.add(&list, &attachment).await {
                Ok(result) => {
                    record.ip = cni::ipv4_of(&result);
                    record.network_result = Some(result);
                }
                Err(error) => {
                    drop(cni.del(&list, &attachment, None).await);
                    drop(pause.start_kill());
                    drop(std::fs::remove_dir_all(&dir));
                    return Err(RuntimeError::Network(error));
                }
            }
        }
        write_json(&dir.join("sandbox.json"), &record)?;
        Ok(SandboxState {
            id,
            config: config.clone(),
            ready: true,
            ip: record.ip.clone(),
            created: record.created,
            containers: Vec::new(),
        })
    }

    async fn stop_sandbox(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let mut record = self.sandbox(id)?;
        for sandbox in self.list().await? {
            if sandbox.id == id {
                for container in &sandbox.containers {
                    self.stop_container(&container.id, grace).await?;
                }
            }
        }
        // The interface goes while its namespace is still there.
        self.release_network(id, &mut record, true).await;
        // Gone already is fine.
        let _ = kill(Pid::from_raw(record.pause_pid), Signal::SIGKILL);
        record.stopped = true;
        write_json(&self.sandbox_dir(id).join("sandbox.json"), &record)
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        for sandbox in self.list().await? {
            if sandbox.id == id {
                for container in &sandbox.containers {
                    self.remove_container(&container.id).await?;
                }
            }
        }
        // DEL even when the sandbox was never stopped through this agent
        // (it crashed): host-local frees the address without the namespace.
        if let Ok(mut record) = self.sandbox(id)
            && !record.network_released
            && record.network.is_some()
        {
            self.release_network(id, &mut record, false).await;
            if !record.network_released {
                return Err(RuntimeError::Container {
                    container: record.config.name.clone(),
                    reason: "CNI DEL failed; the sandbox is kept until it succeeds".into(),
                });
            }
        }
        // The pod's cgroups, in every hierarchy (their containers' are gone).
        if let Ok(record) = self.sandbox(id)
            && let Ok(hierarchies) = std::fs::read_dir(CGROUP_ROOT)
        {
            for hierarchy in hierarchies.flatten() {
                let _ = std::fs::remove_dir(
                    hierarchy
                        .path()
                        .join(format!("keelson/pod{}", record.config.pod_uid)),
                );
            }
        }
        let dir = self.sandbox_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(failed(dir.display().to_string())(error))
            }
            _ => Ok(()),
        }
    }

    async fn start_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let sandbox = self.sandbox(sandbox_id)?;
        let image_error = |reason: String| RuntimeError::Image {
            image: config.image.clone(),
            reason,
        };
        let reference = Reference::parse(&config.image).map_err(|e| image_error(e.to_string()))?;
        let image = self
            .images
            .get(&reference)
            .map_err(|e| image_error(e.to_string()))?
            .ok_or_else(|| {
                image_error(format!(
                    "{reference} is not on this node (keelson image import it)"
                ))
            })?;
        let lower = self
            .images
            .rootfs(&image)
            .map_err(|e| image_error(e.to_string()))?;
        let image_config = self
            .images
            .read_blob(&image.config)
            .ok()
            .and_then(|b| ImageConfig::from_blob(&b).ok())
            .unwrap_or_default();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.container_dir(&id);
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(&bundle).map_err(failed(bundle.display().to_string()))?;
        let record = ContainerRecord {
            sandbox: sandbox_id.to_owned(),
            name: config.name.clone(),
            attempt: config.attempt,
            image: config.image.clone(),
            image_id: image.manifest.clone(),
        };
        // A container that could not be started leaves nothing behind (it
        // would otherwise be listed as created, forever).
        let started: Result<(), RuntimeError> = async {
            write_json(&dir.join("container.json"), &record)?;
            let rootfs = self.mount_rootfs(&bundle, &lower)?;
            let mut spec = self.spec(&sandbox, config, &image_config, &rootfs)?;
            let hostname = dir.join("hostname");
            std::fs::write(&hostname, format!("{}\n", sandbox.config.hostname))
                .map_err(failed(hostname.display().to_string()))?;
            add_mounts(&mut spec, &config.mounts, Some(&hostname)).map_err(|e| {
                RuntimeError::Container {
                    container: config.name.clone(),
                    reason: e.to_string(),
                }
            })?;
            spec.save(bundle.join("config.json"))
                .map_err(|e| RuntimeError::Container {
                    container: config.name.clone(),
                    reason: e.to_string(),
                })?;
            let state = dir.join("state");
            let mut shim = tokio::process::Command::new(&self.binary)
                .arg("shim")
                .arg("--id")
                .arg(format!("k-{id}"))
                .arg("--bundle")
                .arg(&bundle)
                .arg("--state")
                .arg(&state)
                .arg("--log")
                .arg(dir.join("log"))
                .arg("--log-max-size")
                .arg(self.log_rotation.max_size.to_string())
                .arg("--log-max-files")
                .arg(self.log_rotation.max_files.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(failed("the shim"))?;
            if let Err(error) = self.await_start(&state, &mut shim, &config.name).await {
                drop(shim.start_kill());
                return Err(error);
            }
            Ok(())
        }
        .await;
        if let Err(error) = started {
            self.unmount(&bundle);
            drop(std::fs::remove_dir_all(&dir));
            return Err(error);
        }
        Ok(id)
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let state = self.container_dir(id).join("state");
        if state.join("exit.json").is_file() {
            return Ok(());
        }
        let Some(started) = read_json::<Started>(&state.join("shim.json")) else {
            return Ok(());
        };
        if !alive(started.pid) {
            return Ok(());
        }
        let pid = Pid::from_raw(started.pid);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if state.join("exit.json").is_file() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = kill(pid, Signal::SIGKILL);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline && !state.join("exit.json").is_file() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.stop_container(id, Duration::ZERO).await?;
        let dir = self.container_dir(id);
        self.unmount(&dir.join("bundle"));
        match std::fs::remove_dir_all(&dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(failed(dir.display().to_string())(error))
            }
            _ => Ok(()),
        }
    }

    fn image_status(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        let failed = |reason: String| RuntimeError::Image {
            image: image.to_owned(),
            reason,
        };
        let reference = Reference::parse(image).map_err(|e| failed(e.to_string()))?;
        Ok(self
            .images
            .get(&reference)
            .map_err(|e| failed(e.to_string()))?
            .map(|i| i.manifest))
    }

    async fn pull_image(
        &self,
        image: &str,
        credentials: &[crate::images::Credentials],
    ) -> Result<String, RuntimeError> {
        let failed = |reason: String| RuntimeError::Image {
            image: image.to_owned(),
            reason,
        };
        let reference = Reference::parse(image).map_err(|e| failed(e.to_string()))?;
        let options = PullOptions {
            credentials: credentials.to_vec(),
            insecure_registries: self.insecure_registries.clone(),
        };
        let pulled = self
            .images
            .pull(&reference, &options)
            .await
            .map_err(|e| failed(keelson_control::runtime::chain(&e)))?;
        Ok(pulled.manifest)
    }

    fn exec_command(
        &self,
        id: &str,
        command: &[String],
        tty: bool,
    ) -> Result<tokio::process::Command, RuntimeError> {
        let state = self.container_dir(id).join("state");
        let running = !state.join("exit.json").exists()
            && read_json::<Started>(&state.join("shim.json")).is_some_and(|s| alive(s.pid));
        if !running {
            return Err(RuntimeError::Container {
                container: id.to_owned(),
                reason: "the container is not running".into(),
            });
        }
        let mut process = tokio::process::Command::new(&self.binary);
        process
            .arg("exec-in")
            .arg("--state")
            .arg(&state)
            .arg("--bundle")
            .arg(self.container_dir(id).join("bundle"))
            .arg("--id")
            .arg(format!("k-{id}"));
        if tty {
            process.arg("--tty");
        }
        process.arg("--").args(command).kill_on_drop(true);
        Ok(process)
    }

    fn container_usage(&self, sandbox: &SandboxState, name: &str) -> Option<crate::stats::Usage> {
        crate::stats::cgroup_usage(
            Path::new(CGROUP_ROOT),
            &format!("keelson/pod{}/{name}", sandbox.config.pod_uid),
        )
    }

    fn pod_usage(&self, sandbox: &SandboxState) -> Option<crate::stats::Usage> {
        crate::stats::cgroup_usage(
            Path::new(CGROUP_ROOT),
            &format!("keelson/pod{}", sandbox.config.pod_uid),
        )
    }

    fn network_namespace(&self, id: &str) -> Option<PathBuf> {
        let record = self.sandbox(id).ok()?;
        alive(record.pause_pid).then(|| PathBuf::from(format!("/proc/{}/ns/net", record.pause_pid)))
    }

    fn log_path(&self, id: &str) -> Option<PathBuf> {
        Some(self.container_dir(id).join("log"))
    }

    async fn list(&self) -> Result<Vec<SandboxState>, RuntimeError> {
        let mut sandboxes = Vec::new();
        let dirs =
            std::fs::read_dir(self.root.join("sandboxes")).map_err(failed("the sandboxes"))?;
        for entry in dirs.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let Ok(record) = self.sandbox(&id) else {
                continue;
            };
            sandboxes.push(SandboxState {
                id,
                ready: !record.stopped && alive(record.pause_pid),
                ip: record.ip.clone(),
                created: record.created,
                config: record.config,
                containers: Vec::new(),
            });
        }
        let dirs =
            std::fs::read_dir(self.root.join("containers")).map_err(failed("the containers"))?;
        for entry in dirs.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let Some(record) = read_json::<ContainerRecord>(&entry.path().join("container.json"))
            else {
                continue;
            };
            let state = self.container_state(&id, &record);
            if let Some(sandbox) = sandboxes.iter_mut().find(|s| s.id == record.sandbox) {
                sandbox.containers.push(state);
            }
        }
        Ok(sandboxes)
    }
}

/// Where a container sees its sandbox's host name.
const ETC_HOSTNAME: &str = "/etc/hostname";

/// Adds the container's mounts to `spec`, after the default ones (/proc,
/// /dev, …): bind mounts (`rbind`, `ro` when read-only, the propagation
/// asked for), parents before what is mounted below them. A container
/// mount replaces a default one at the same place. `hostname`, a file
/// holding the sandbox's host name, is mounted on /etc/hostname unless
/// the container mounts something there.
///
/// Errors: a mount the OCI spec cannot hold.
fn add_mounts(
    spec: &mut Spec,
    mounts: &[super::Mount],
    hostname: Option<&Path>,
) -> Result<(), libcontainer::oci_spec::OciSpecError> {
    use super::Propagation;
    let mut wanted: Vec<super::Mount> = mounts.to_vec();
    if let Some(file) = hostname
        && !mounts.iter().any(|m| m.container_path == ETC_HOSTNAME)
    {
        wanted.push(super::Mount {
            host_path: file.to_owned(),
            container_path: ETC_HOSTNAME.to_owned(),
            read_only: false,
            propagation: Propagation::Private,
        });
    }
    // Stable: mounts at the same depth keep their order.
    wanted.sort_by_key(|m| Path::new(&m.container_path).components().count());
    let mut all = spec.mounts().clone().unwrap_or_default();
    all.retain(|d| {
        !wanted
            .iter()
            .any(|m| Path::new(&m.container_path) == d.destination())
    });
    for mount in &wanted {
        let propagation = match mount.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        };
        let access = if mount.read_only { "ro" } else { "rw" };
        all.push(
            libcontainer::oci_spec::runtime::MountBuilder::default()
                .destination(&mount.container_path)
                .typ("bind")
                .source(&mount.host_path)
                .options(vec!["rbind".into(), propagation.into(), access.into()])
                .build()?,
        );
    }
    spec.set_mounts(Some(all));
    // Mounts shared both ways need the container's root shared too (it
    // is a slave of the node's otherwise, which HostToContainer needs).
    if wanted
        .iter()
        .any(|m| m.propagation == Propagation::Bidirectional)
        && let Some(linux) = spec.linux_mut()
    {
        linux.set_rootfs_propagation(Some("shared".into()));
    }
    Ok(())
}

#[cfg(test)]
mod mount_tests {
    use super::*;
    use crate::runtime::{Mount, Propagation};

    fn mount(host: &str, container: &str, read_only: bool, propagation: Propagation) -> Mount {
        Mount {
            host_path: PathBuf::from(host),
            container_path: container.to_owned(),
            read_only,
            propagation,
        }
    }

    #[test]
    fn container_mounts_follow_the_default_ones() {
        let mut spec = Spec::default();
        let defaults: Vec<PathBuf> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| m.destination().clone())
            .collect();
        assert!(defaults.contains(&PathBuf::from("/dev/shm")));
        let mounts = [
            mount("/v/logs", "/data/logs", false, Propagation::Private),
            mount("/v/data", "/data", true, Propagation::HostToContainer),
            mount("/p/etc-hosts", "/etc/hosts", false, Propagation::Private),
            mount("/v/shm", "/dev/shm", false, Propagation::Private),
        ];
        add_mounts(&mut spec, &mounts, Some(Path::new("/c/hostname"))).unwrap();
        let got: Vec<(String, Option<String>, Vec<String>)> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.destination().display().to_string(),
                    m.source().as_ref().map(|s| s.display().to_string()),
                    m.options().clone().unwrap_or_default(),
                )
            })
            .collect();
        let destinations: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        // The defaults first (but the replaced /dev/shm), then by depth.
        let kept = defaults.len() - 1;
        assert_eq!(
            &destinations[kept..],
            [
                "/data",
                "/data/logs",
                "/etc/hosts",
                "/dev/shm",
                "/etc/hostname"
            ]
        );
        assert_eq!(
            destinations.iter().filter(|d| **d == "/dev/shm").count(),
            1,
            "{destinations:?}"
        );
        let data = &got[kept];
        assert_eq!(data.1.as_deref(), Some("/v/data"));
        assert_eq!(data.2, ["rbind", "rslave", "ro"]);
        assert_eq!(got[kept + 1].2, ["rbind", "rprivate", "rw"]);
        assert_eq!(got[kept + 4].1.as_deref(), Some("/c/hostname"));
        assert!(spec.mounts().iter().flatten().all(|m| {
            !m.options().iter().flatten().any(|o| o == "rbind")
                || m.typ().as_deref() == Some("bind")
        }));
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .rootfs_propagation()
                .as_deref(),
            None
        );
    }

    #[test]
    fn bidirectional_mounts_share_the_root_and_own_hostnames_win() {
        let mut spec = Spec::default();
        let mounts = [
            mount("/v/a", "/a", false, Propagation::Bidirectional),
            mount("/mine", "/etc/hostname", true, Propagation::Private),
        ];
        add_mounts(&mut spec, &mounts, Some(Path::new("/c/hostname"))).unwrap();
        let hostnames: Vec<_> = spec
            .mounts()
            .iter()
            .flatten()
            .filter(|m| m.destination() == Path::new("/etc/hostname"))
            .map(|m| m.source().clone())
            .collect();
        assert_eq!(hostnames, [Some(PathBuf::from("/mine"))]);
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .rootfs_propagation()
                .as_deref(),
            Some("shared")
        );
    }
}
