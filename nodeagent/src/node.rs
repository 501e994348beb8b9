//! The agent's Node: registration with what the machine has, and the
//! heartbeat (its Lease in `kube-node-lease`, and its status).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use keelson_control::client::{Client, ClientError, Patch};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::runtime::Runtime;

/// The Kubernetes version the agent reports as its kubelet's.
pub const KUBELET_VERSION: &str = "v1.32.0-keelson";

/// How the node presents itself.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    /// The address other nodes and the control plane reach it at.
    pub ip: String,
    pub labels: BTreeMap<String, String>,
    pub max_pods: u32,
    /// CPU (millicores) and memory (bytes) kept back from pods.
    pub reserved_milli_cpu: u64,
    pub reserved_memory: u64,
    pub lease_duration_seconds: i32,
    /// How often the Lease is renewed (Kubernetes: 10 s).
    pub renew_interval: Duration,
    /// The port of the agent's HTTPS endpoint, when it serves one.
    pub port: Option<u16>,
    /// Where the agent keeps its data: its file system's free space is
    /// the node's disk pressure.
    pub data_dir: Option<std::path::PathBuf>,
    /// How often every pod is synced again (Kubernetes: 1 minute).
    pub sync_frequency: Duration,
    /// The cluster's networking as this node takes part in it.
    pub network: NetworkConfig,
    /// What the node reports it has; `None`: this machine, read from
    /// `/proc`. Hollow nodes report a simulated machine, and no pressure.
    pub machine: Option<Machine>,
}

/// The cluster network as the node sees it.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Routes to other nodes' pod CIDRs (and a blackhole for the rest of
    /// the cluster CIDR) are kept in this node's routing table.
    pub routes: bool,
    /// Every pod's address is in it (Kubernetes' `--cluster-cidr`).
    pub cluster_cidr: String,
    /// Every Service's cluster IP is in it.
    pub service_cidr: String,
    /// The cluster DNS servers pods are given (the kubelet's `--cluster-dns`).
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            routes: false,
            cluster_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// What the machine has.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub cpus: u64,
    pub memory: u64,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl Machine {
    /// Reads /proc and /etc.
    pub fn read() -> Self {
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|rest| {
                        rest.trim()
                            .trim_end_matches("kB")
                            .trim()
                            .parse::<u64>()
                            .ok()
                    })
            })
            .map_or(0, |kib| kib * 1024);
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| "Linux".into());
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            memory,
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            os_image,
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        }
    }
}

fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The conditions of a healthy node, with Kubernetes' reasons.
/// What the node is short of, judged by the kubelet's hard eviction
/// thresholds: memory available under 100Mi, the data directory's file
/// system under 10% free (or 5% of inodes), processes over 90% of pid_max.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

/// Memory under this is pressure (the kubelet's `memory.available<100Mi`).
const MEMORY_AVAILABLE_MIN: u64 = 100 << 20;

impl Pressure {
    /// Judges the figures read from the machine.
    pub fn judge(
        memory_available: Option<u64>,
        disk: Option<(u64, u64, u64, u64)>,
        processes: Option<(u64, u64)>,
    ) -> Self {
        Self {
            memory: memory_available.is_some_and(|a| a < MEMORY_AVAILABLE_MIN),
            // (free blocks, blocks, free inodes, inodes)
            disk: disk.is_some_and(|(free, total, ifree, itotal)| {
                (total > 0 && free * 10 < total) || (itotal > 0 && ifree * 20 < itotal)
            }),
            pid: processes.is_some_and(|(running, max)| max > 0 && running * 10 > max * 9),
        }
    }

    /// Reads the machine: /proc/meminfo, the file system of `data_dir`,
    /// /proc/loadavg's process count and the kernel's pid_max.
    pub fn read(data_dir: Option<&std::path::Path>) -> Self {
        let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            m.lines().find_map(|l| {
                let kib: u64 = l
                    .strip_prefix("MemAvailable:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
                Some(kib * 1024)
            })
        });
        let disk = data_dir
            .and_then(|d| nix::sys::statvfs::statvfs(d).ok())
            .map(|v| {
                (
                    v.blocks_available(),
                    v.blocks(),
                    v.files_available(),
                    v.files(),
                )
            });
        let processes = std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| {
            let total = l
                .split_whitespace()
                .nth(3)?
                .split_once('/')?
                .1
                .parse()
                .ok()?;
            let max = read_trimmed("/proc/sys/kernel/pid_max").parse().ok()?;
            Some((total, max))
        });
        Self::judge(available, disk, processes)
    }
}

fn conditions(
    now: Time,
    previous: Option<&[NodeCondition]>,
    pressure: Pressure,
) -> Vec<NodeCondition> {
    let flag = |on: bool| if on { "True" } else { "False" };
    [
        if pressure.memory {
            (
                "MemoryPressure",
                "True",
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            (
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        },
        if pressure.disk {
            (
                "DiskPressure",
                flag(true),
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
            )
        } else {
            (
                "DiskPressure",
                flag(false),
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            )
        },
        if pressure.pid {
            (
                "PIDPressure",
                "True",
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            )
        } else {
            (
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            )
        },
        (
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ]
    .into_iter()
    .map(|(kind, status, reason, message)| {
        let since = previous
            .and_then(|p| p.iter().find(|c| c.type_ == kind && c.status == status))
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        NodeCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(since),
        }
    })
    .collect()
}

/// The Node this agent registers.
pub fn node_object(config: &NodeConfig, machine: &Machine, runtime_version: &str) -> Node {
    let now = Time(Utc::now());
    let quantity = |q: String| Quantity(q);
    let capacity: BTreeMap<String, Quantity> = [
        ("cpu".to_owned(), quantity(machine.cpus.to_string())),
        (
            "memory".to_owned(),
            quantity(format!("{}Ki", machine.memory / 1024)),
        ),
        ("pods".to_owned(), quantity(config.max_pods.to_string())),
        ("ephemeral-storage".to_owned(), quantity("0".into())),
    ]
    .into();
    let allocatable: BTreeMap<String, Quantity> = [
        (
            "cpu".to_owned(),
            quantity(format!(
                "{}m",
                (machine.cpus * 1000).saturating_sub(config.reserved_milli_cpu)
            )),
        ),
        (
            "memory".to_owned(),
            quantity(format!(
                "{}Ki",
                machine.memory.saturating_sub(config.reserved_memory) / 1024
            )),
        ),
        ("pods".to_owned(), quantity(config.max_pods.to_string())),
        ("ephemeral-storage".to_owned(), quantity("0".into())),
    ]
    .into();
    let mut labels = config.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), config.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), architecture().into());
    labels.insert("beta.kubernetes.io/os".into(), "linux".into());
    labels.insert("beta.kubernetes.io/arch".into(), architecture().into());
    // Where the local-path provisioner puts this node's volumes.
    let annotations = config.data_dir.as_ref().map(|dir| {
        BTreeMap::from([(
            keelson_control::controllers::volume::LOCAL_PATH_DIR.to_owned(),
            crate::storage::dir(dir).to_string_lossy().into_owned(),
        )])
    });
    Node {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            labels: Some(labels),
            annotations,
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            capacity: Some(capacity),
            allocatable: Some(allocatable),
            conditions: Some(conditions(
                now,
                None,
                Pressure::read(config.data_dir.as_deref()),
            )),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: config.ip.clone(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: config.name.clone(),
                },
            ]),
            daemon_endpoints: config.port.map(|port| NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(port),
                }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: architecture().into(),
                boot_id: machine.boot_id.clone(),
                container_runtime_version: runtime_version.to_owned(),
                kernel_version: machine.kernel.clone(),
                kube_proxy_version: String::new(),
                kubelet_version: KUBELET_VERSION.into(),
                machine_id: machine.machine_id.clone(),
                operating_system: "linux".into(),
                os_image: machine.os_image.clone(),
                system_uuid: machine.machine_id.clone(),
            }),
            ..NodeStatus::default()
        }),
    }
}

/// Registers the node: creates it, or takes over the one of that name
/// (a restarted agent) with fresh status.
pub async fn register(client: &Client, node: &Node) -> Result<Node, ClientError> {
    match client.create(None, node).await {
        Ok(created) => Ok(created),
        Err(error) if error.is_already_exists() => {
            let name = node.metadata.name.clone().unwrap_or_default();
            let labels = json!({"metadata": {"labels": node.metadata.labels,
                "annotations": node.metadata.annotations}});
            client
                .patch::<Node>(None, &name, None, Patch::Merge, &labels)
                .await?;
            let status = json!({"status": node.status});
            client
                .patch::<Node>(None, &name, Some("status"), Patch::Merge, &status)
                .await
        }
        Err(error) => Err(error),
    }
}

/// Renews the node's Lease (made owned by the Node, so it goes with it).
/// Renews the node's Lease. As kubelet does, the Lease last written is
/// kept and replaced directly; it is read again only when that fails (a
/// conflict, or no Lease yet), so a renewal costs one write.
async fn renew(
    client: &Client,
    config: &NodeConfig,
    node_uid: &str,
    last: &mut Option<Lease>,
) -> Result<(), ClientError> {
    let namespace = Some("kube-node-lease");
    let now = MicroTime(Utc::now());
    let refresh = |lease: &mut Lease| {
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.renew_time = Some(now.clone());
        spec.holder_identity = Some(config.name.clone());
        spec.lease_duration_seconds = Some(config.lease_duration_seconds);
    };
    if let Some(mut lease) = last.take() {
        refresh(&mut lease);
        match client.replace(&lease).await {
            Ok(written) => {
                *last = Some(written);
                return Ok(());
            }
            Err(error) if error.is_conflict() || error.is_not_found() => {}
            Err(error) => return Err(error),
        }
    }
    match client.get::<Lease>(namespace, &config.name).await {
        Ok(mut lease) => {
            refresh(&mut lease);
            *last = Some(client.replace(&lease).await?);
            Ok(())
        }
        Err(error) if error.is_not_found() => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: namespace.map(str::to_owned),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: config.name.clone(),
                        uid: node_uid.to_owned(),
                        ..OwnerReference::default()
                    }]),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(config.name.clone()),
                    lease_duration_seconds: Some(config.lease_duration_seconds),
                    renew_time: Some(now),
                    ..LeaseSpec::default()
                }),
            };
            match client.create(namespace, &lease).await {
                Ok(created) => {
                    *last = Some(created);
                    Ok(())
                }
                Err(error) if error.is_already_exists() => Ok(()),
                Err(error) => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}

/// Renews the Lease every renew interval and reports the node's
/// conditions (Ready again if the node controller marked it Unknown while
/// the agent was away); tells the runtime the node's pod CIDR once known.
pub async fn heartbeat<R: Runtime>(
    client: Client,
    config: NodeConfig,
    runtime: Arc<R>,
    shutdown: CancellationToken,
) {
    let mut node_uid = String::new();
    let mut cidr_known = false;
    let mut lease = None;
    // As kubelet reads it: from the API server's cache.
    let node_path = format!(
        "{}?resourceVersion=0",
        keelson_control::client::object_path::<Node>(None, &config.name)
    );
    loop {
        match client.get_at::<Node>(&node_path).await {
            Ok(node) => {
                node_uid = node.metadata.uid.clone().unwrap_or_default();
                if !cidr_known
                    && let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref())
                {
                    runtime.set_pod_cidr(cidr);
                    cidr_known = true;
                }
                let previous = node.status.as_ref().and_then(|s| s.conditions.as_deref());
                let now = conditions(
                    Time(Utc::now()),
                    previous,
                    if config.machine.is_some() {
                        Pressure::default()
                    } else {
                        Pressure::read(config.data_dir.as_deref())
                    },
                );
                // Written when a condition changed (Ready again after the node
                // controller marked it Unknown, pressure coming or going).
                let same = previous.is_some_and(|before| {
                    now.iter().all(|c| {
                        before
                            .iter()
                            .any(|b| b.type_ == c.type_ && b.status == c.status)
                    })
                });
                if !same {
                    let patch = json!({"status": {"conditions": now}});
                    if let Err(error) = client
                        .patch::<Node>(None, &config.name, Some("status"), Patch::Strategic, &patch)
                        .await
                    {
                        tracing::warn!(%error, "could not report the node Ready");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, node = %config.name, "could not read the node"),
        }
        if let Err(error) = renew(&client, &config, &node_uid, &mut lease).await {
            tracing::warn!(%error, node = %config.name, "could not renew the node lease");
        }
        // Until the control plane has given the node its pod CIDR, look
        // again every second.
        let pause = if cidr_known {
            config.renew_interval
        } else {
            config.renew_interval.min(Duration::from_secs(1))
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_follows_the_eviction_thresholds() {
        assert_eq!(Pressure::judge(None, None, None), Pressure::default());
        let plenty = Pressure::judge(
            Some(1 << 30),
            Some((50, 100, 50, 100)),
            Some((100, 4_194_304)),
        );
        assert_eq!(plenty, Pressure::default());
        assert!(Pressure::judge(Some(99 << 20), None, None).memory);
        assert!(Pressure::judge(None, Some((9, 100, 50, 100)), None).disk);
        assert!(
            Pressure::judge(None, Some((50, 100, 4, 100)), None).disk,
            "inodes"
        );
        assert!(Pressure::judge(None, None, Some((950, 1000))).pid);
        let now = Time(Utc::now());
        let tight = conditions(
            now,
            None,
            Pressure {
                memory: true,
                disk: false,
                pid: false,
            },
        );
        let memory = tight.iter().find(|c| c.type_ == "MemoryPressure").unwrap();
        assert_eq!(
            (memory.status.as_str(), memory.reason.as_deref()),
            ("True", Some("KubeletHasInsufficientMemory"))
        );
    }
}
