//! Simulated nodes: the node agent's part played through the API, as
//! Kubernetes' integration tests do, for testing the controllers and the
//! scheduler without containers.
//!
//! Each simulated node registers a Ready Node (4 CPUs, 8 GiB, 110 pods),
//! renews its Lease in `kube-node-lease` every 500 ms, reports the pods
//! bound to it Running and Ready, and finishes their deletion (as an agent
//! does once their containers stopped). [`SimulatedNodes::stop`] makes one
//! fall silent, as a node that died.

#![allow(dead_code, reason = "only the controller tests simulate nodes")]

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use keelson_control::client::{Client, DeleteOptions, Https, Kubeconfig, Patch};
use keelson_control::runtime::{Event, Informer, key_of, split_key};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Hands out pod IPs, one per pod started.
static ADDRESSES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Nodes played by the test through one API server.
pub(crate) struct SimulatedNodes {
    runtime: tokio::runtime::Runtime,
    client: Client,
    live: Arc<Mutex<HashSet<String>>>,
    shutdown: CancellationToken,
}

/// A client of the API server `kubeconfig` names.
pub(crate) fn api_client(kubeconfig: &Path) -> Client {
    let config = Kubeconfig::read(kubeconfig).expect("read the admin kubeconfig");
    Client::https(Https::new(&config).expect("TLS from the admin kubeconfig"))
}

fn node_object(name: &str, cpu: &str) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "status": {
            "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "conditions": [ready_condition()],
            "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}, {"type": "Hostname", "address": name}],
        },
    }))
    .expect("a Node")
}

fn ready_condition() -> serde_json::Value {
    let now = keelson_control::object::now();
    json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
           "message": "simulated node is posting ready status",
           "lastHeartbeatTime": now, "lastTransitionTime": now})
}

impl SimulatedNodes {
    /// Registers `names` through the API server `kubeconfig` points at.
    pub(crate) fn start(kubeconfig: &Path, names: &[&str]) -> SimulatedNodes {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the simulated nodes");
        let client = runtime.block_on(async { api_client(kubeconfig) });
        let nodes = SimulatedNodes {
            runtime,
            client,
            live: Arc::default(),
            shutdown: CancellationToken::new(),
        };
        for name in names {
            nodes.add(name, "4");
        }
        nodes.run();
        nodes
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers one more node with `cpu` CPUs.
    pub(crate) fn add(&self, name: &str, cpu: &str) {
        let node = node_object(name, cpu);
        let client = self.client.clone();
        self.runtime.block_on(async move {
            match client.create(None, &node).await {
                Ok(_) => {}
                Err(error) if error.is_already_exists() => {}
                Err(error) => panic!("register node {:?}: {error}", node.metadata.name),
            }
        });
        self.live().insert(name.to_owned());
    }

    /// The node stops renewing its lease and reporting its pods.
    pub(crate) fn stop(&self, name: &str) {
        self.live().remove(name);
    }

    /// The client the nodes use.
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs `future` on the nodes' runtime.
    pub(crate) fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    fn run(&self) {
        let (client, live, shutdown) = (
            self.client.clone(),
            self.live.clone(),
            self.shutdown.clone(),
        );
        self.runtime
            .spawn(renew_leases(client.clone(), live.clone(), shutdown.clone()));
        let pods = Informer::<Pod>::default();
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
        let resync = sender.clone();
        pods.on_event(move |event| {
            let pod = match event {
                Event::Added(pod) | Event::Updated { new: pod, .. } => pod,
                Event::Deleted(_) => return,
            };
            drop(sender.send(key_of(&pod.metadata)));
        });
        self.runtime
            .spawn(pods.clone().run(client.clone(), shutdown.clone()));
        // As an agent resyncs: what failed (the API was electing a leader) is
        // tried again.
        let (resync_pods, resync_shutdown) = (pods.clone(), shutdown.clone());
        self.runtime.spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = resync_shutdown.cancelled() => return,
                }
                for pod in resync_pods.list() {
                    let settled = pod.metadata.deletion_timestamp.is_none()
                        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                    if !settled {
                        drop(resync.send(key_of(&pod.metadata)));
                    }
                }
            }
        });
        self.runtime
            .spawn(run_pods(client, pods, live, receiver, shutdown));
    }
}

impl Drop for SimulatedNodes {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn renew_leases(
    client: Client,
    live: Arc<Mutex<HashSet<String>>>,
    shutdown: CancellationToken,
) {
    loop {
        let names: Vec<String> = live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        for name in names {
            renew(&client, &name).await;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Renews `name`'s lease, and says Ready again if the node controller
/// marked it otherwise while it was silent.
async fn renew(client: &Client, name: &str) {
    let now = MicroTime(chrono::Utc::now());
    let namespace = Some("kube-node-lease");
    match client.get::<Lease>(namespace, name).await {
        Ok(mut lease) => {
            if let Some(spec) = lease.spec.as_mut() {
                spec.renew_time = Some(now);
            }
            drop(client.replace(&lease).await);
        }
        Err(error) if error.is_not_found() => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: namespace.map(str::to_owned),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.to_owned()),
                    lease_duration_seconds: Some(40),
                    renew_time: Some(now),
                    ..LeaseSpec::default()
                }),
            };
            drop(client.create(namespace, &lease).await);
        }
        Err(_) => return,
    }
    if let Ok(node) = client.get::<Node>(None, name).await {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if !ready {
            let patch = json!({"status": {"conditions": [ready_condition()]}});
            drop(
                client
                    .patch::<Node>(None, name, Some("status"), Patch::Strategic, &patch)
                    .await,
            );
        }
    }
}

async fn run_pods(
    client: Client,
    pods: Informer<Pod>,
    live: Arc<Mutex<HashSet<String>>>,
    mut keys: tokio::sync::mpsc::UnboundedReceiver<String>,
    shutdown: CancellationToken,
) {
    loop {
        let key = tokio::select! {
            key = keys.recv() => key,
            () = shutdown.cancelled() => return,
        };
        let Some(key) = key else { return };
        let Some(pod) = pods.get(&key) else { continue };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if !live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&node)
        {
            continue;
        }
        let (namespace, name) = split_key(&key);
        if pod.metadata.deletion_timestamp.is_some() {
            let options = DeleteOptions {
                uid: pod.metadata.uid.clone(),
                grace_period_seconds: Some(0),
                ..DeleteOptions::default()
            };
            drop(client.delete::<Pod>(namespace, name, &options).await);
            continue;
        }
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if running {
            continue;
        }
        let now = keelson_control::object::now();
        let serial = ADDRESSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ip = format!("10.42.{}.{}", serial / 250, serial % 250 + 2);
        let containers: Vec<_> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "ready": true,
                            "restartCount": 0, "started": true, "state": {"running": {"startedAt": now}}}))
            .collect();
        let condition =
            |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now});
        let patch = json!({"status": {
            "phase": "Running",
            "startTime": now,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": "192.0.2.1",
            "conditions": [condition("Initialized"), condition("ContainersReady"), condition("Ready"), condition("PodScheduled")],
            "containerStatuses": containers,
        }});
        drop(
            client
                .patch::<Pod>(namespace, name, Some("status"), Patch::Strategic, &patch)
                .await,
        );
    }
}
