//! The fake runtime of hollow nodes: sandboxes and containers are records,
//! and containers "run" until stopped, without any process. Used by
//! `keelson agent --runtime fake` for scale tests, never for workloads.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;

use super::{
    ContainerConfig, ContainerRun, ContainerState, Runtime, RuntimeError, SandboxConfig,
    SandboxState,
};

/// Sandboxes and containers held in memory.
#[derive(Debug)]
pub struct FakeRuntime {
    state: Mutex<State>,
    /// Where sandbox IPs come from (a node's pod CIDR), if set.
    addresses: Mutex<Option<(Ipv4Addr, u32)>>,
}

#[derive(Debug, Default)]
struct State {
    sandboxes: HashMap<String, SandboxState>,
    /// Container id → sandbox id.
    owners: HashMap<String, String>,
    next_address: u32,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            addresses: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands out sandbox IPs from `cidr` (`10.42.3.0/24`).
    fn use_pod_cidr(&self, cidr: &str) {
        let parsed = cidr.split_once('/').and_then(|(ip, prefix)| {
            let ip: Ipv4Addr = ip.parse().ok()?;
            let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 30)?;
            Some((ip, 1u32 << (32 - prefix)))
        });
        *self.addresses.lock().unwrap_or_else(|p| p.into_inner()) = parsed;
    }

    fn next_ip(&self, state: &mut State) -> Option<String> {
        let (base, size) = (*self.addresses.lock().unwrap_or_else(|p| p.into_inner()))?;
        // .1 is the gateway's; hand out .2 and up, wrapping.
        let offset = 2 + state.next_address % size.saturating_sub(3).max(1);
        state.next_address += 1;
        Some(Ipv4Addr::from(u32::from(base) + offset).to_string())
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Runtime for FakeRuntime {
    fn version(&self) -> String {
        format!("fake://{}", env!("CARGO_PKG_VERSION"))
    }

    fn set_pod_cidr(&self, cidr: &str) {
        self.use_pod_cidr(cidr);
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<SandboxState, RuntimeError> {
        let mut state = self.lock();
        // As a real node waits for its network: no sandbox before the
        // control plane has given the node its pod CIDR.
        let ip = self
            .next_ip(&mut state)
            .ok_or_else(|| RuntimeError::Container {
                container: config.name.clone(),
                reason: "the node has no pod CIDR yet".into(),
            })?;
        let ip = Some(ip);
        let sandbox = SandboxState {
            id: new_id(),
            config: config.clone(),
            ready: true,
            ip,
            created: Utc::now(),
            containers: Vec::new(),
        };
        state.sandboxes.insert(sandbox.id.clone(), sandbox.clone());
        Ok(sandbox)
    }

    async fn stop_sandbox(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        let sandbox = state
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NoSandbox(id.to_owned()))?;
        let now = Utc::now();
        for container in &mut sandbox.containers {
            if let ContainerRun::Running { started } = container.run {
                container.run = ContainerRun::Exited {
                    exit_code: 0,
                    reason: "Completed".into(),
                    started: Some(started),
                    finished: now,
                };
            }
        }
        sandbox.ready = false;
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        if let Some(sandbox) = state.sandboxes.remove(id) {
            for container in sandbox.containers {
                state.owners.remove(&container.id);
            }
        }
        Ok(())
    }

    async fn start_container(
        &self,
        sandbox: &str,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let mut state = self.lock();
        let id = new_id();
        let owned = state
            .sandboxes
            .get_mut(sandbox)
            .ok_or_else(|| RuntimeError::NoSandbox(sandbox.to_owned()))?;
        owned.containers.push(ContainerState {
            id: id.clone(),
            name: config.name.clone(),
            attempt: config.attempt,
            image: config.image.clone(),
            image_id: String::new(),
            run: ContainerRun::Running {
                started: Utc::now(),
            },
        });
        state.owners.insert(id.clone(), sandbox.to_owned());
        Ok(id)
    }

    async fn stop_container(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        let sandbox = state
            .owners
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NoContainer(id.to_owned()))?;
        if let Some(container) = state
            .sandboxes
            .get_mut(&sandbox)
            .and_then(|s| s.containers.iter_mut().find(|c| c.id == id))
            && let ContainerRun::Running { started } = container.run
        {
            container.run = ContainerRun::Exited {
                exit_code: 137,
                reason: "Error".into(),
                started: Some(started),
                finished: Utc::now(),
            };
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        if let Some(sandbox) = state.owners.remove(id)
            && let Some(s) = state.sandboxes.get_mut(&sandbox)
        {
            s.containers.retain(|c| c.id != id);
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<SandboxState>, RuntimeError> {
        Ok(self.lock().sandboxes.values().cloned().collect())
    }

    fn image_status(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        // Every image is there on a hollow node.
        Ok(Some(format!("fake://{image}")))
    }

    async fn pull_image(
        &self,
        image: &str,
        _credentials: &[crate::images::Credentials],
    ) -> Result<String, RuntimeError> {
        Ok(format!("fake://{image}"))
    }

    fn exec_command(
        &self,
        id: &str,
        _command: &[String],
        _tty: bool,
    ) -> Result<tokio::process::Command, RuntimeError> {
        Err(RuntimeError::Container {
            container: id.to_owned(),
            reason: "this is a hollow node: its containers have no processes to exec into".into(),
        })
    }

    fn log_path(&self, _id: &str) -> Option<std::path::PathBuf> {
        None
    }

    fn network_namespace(&self, _id: &str) -> Option<std::path::PathBuf> {
        None
    }

    fn runs_processes(&self) -> bool {
        false
    }
}
