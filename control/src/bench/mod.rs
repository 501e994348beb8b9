//! `keelson bench scheduler`: scheduling throughput against a running
//! cluster, in the manner of Kubernetes' scheduler_perf.
//!
//! Registers `nodes` simulated nodes (Node objects and their Leases, kept
//! renewed: nothing runs on them), creates `pods` pods that only those
//! nodes can take, and times them from creation to binding as the pod
//! watch sees it. Everything it made is deleted afterwards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError, DeleteOptions, ListParams, WatchEvent};

pub mod cluster;

/// The label on everything the benchmark makes.
const LABEL: &str = "bench.keelson.dev/scheduler";
const NAMESPACE: &str = "bench-scheduler";

/// What to measure.
#[derive(Clone, Debug)]
pub struct SchedulerBench {
    pub nodes: usize,
    pub pods: usize,
    /// Pod creations in flight at once.
    pub concurrency: usize,
    /// How long to wait for every pod to be bound.
    pub timeout: Duration,
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct SchedulerReport {
    pub nodes: usize,
    pub pods: usize,
    pub bound: usize,
    /// From the first creation to the last binding.
    pub elapsed: Duration,
    /// Creation to binding, per pod.
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl SchedulerReport {
    /// Pods bound per second, first creation to last binding.
    pub fn throughput(&self) -> f64 {
        self.bound as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}")]
    Api {
        what: String,
        #[source]
        source: ClientError,
    },
    #[error("only {ready} of {nodes} nodes were Ready within {timeout:?}")]
    Nodes {
        ready: usize,
        nodes: usize,
        timeout: Duration,
    },
    #[error("only {bound} of {pods} pods were bound within {timeout:?}")]
    Timeout {
        bound: usize,
        pods: usize,
        timeout: Duration,
    },
}

fn failed(what: impl Into<String>) -> impl FnOnce(ClientError) -> BenchError {
    let what = what.into();
    move |source| BenchError::Api { what, source }
}

fn node(name: &str) -> Result<Node, serde_json::Error> {
    let now = crate::object::now();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {LABEL: "true", "kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "simulated by keelson bench scheduler",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        },
    }))
}

fn pod(name: &str) -> Result<Pod, serde_json::Error> {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {LABEL: "true"}},
        "spec": {
            "nodeSelector": {LABEL: "true"},
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
        },
    }))
}

/// Runs `count` calls of `call` with at most `concurrency` in flight.
async fn each<F, Fut>(count: usize, concurrency: usize, call: F) -> Result<(), BenchError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), BenchError>>,
{
    let mut stream =
        futures::stream::iter((0..count).map(call)).buffer_unordered(concurrency.max(1));
    while let Some(outcome) = stream.next().await {
        outcome?;
    }
    Ok(())
}

/// Keeps the simulated nodes' Leases fresh, so the node controller leaves them Ready.
async fn renew_leases(client: Client, names: Vec<String>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
            () = stop.cancelled() => return,
        }
        for name in &names {
            let Ok(mut lease) = client.get::<Lease>(Some("kube-node-lease"), name).await else {
                continue;
            };
            if let Some(spec) = lease.spec.as_mut() {
                spec.renew_time = Some(MicroTime(chrono::Utc::now()));
            }
            drop(client.replace(&lease).await);
        }
    }
}

impl SchedulerBench {
    pub async fn run(&self, client: &Client) -> Result<SchedulerReport, BenchError> {
        let stop = CancellationToken::new();
        let outcome = self.measure(client, &stop).await;
        stop.cancel();
        self.clean_up(client).await;
        outcome
    }

    async fn measure(
        &self,
        client: &Client,
        stop: &CancellationToken,
    ) -> Result<SchedulerReport, BenchError> {
        let names: Vec<String> = (0..self.nodes).map(|i| format!("bench-node-{i}")).collect();
        each(self.nodes, self.concurrency, |i| {
            let client = client.clone();
            let name = names[i].clone();
            async move {
                let node = node(&name).map_err(|e| BenchError::Api {
                    what: "encode a node".into(),
                    source: ClientError::Encode {
                        path: name.clone(),
                        source: e,
                    },
                })?;
                match client.create(None, &node).await {
                    Ok(_) => {}
                    Err(error) if error.is_already_exists() => {}
                    Err(error) => return Err(failed(format!("register node {name}"))(error)),
                }
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some("kube-node-lease".into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(name.clone()),
                        lease_duration_seconds: Some(40),
                        renew_time: Some(MicroTime(chrono::Utc::now())),
                        ..LeaseSpec::default()
                    }),
                };
                match client.create(Some("kube-node-lease"), &lease).await {
                    Ok(_) => Ok(()),
                    Err(error) if error.is_already_exists() => Ok(()),
                    Err(error) => Err(failed(format!("create the lease of {name}"))(error)),
                }
            }
        })
        .await?;
        tokio::spawn(renew_leases(client.clone(), names, stop.clone()));
        let bound = |pod: &Pod| {
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some()
        };
        let timed = time_pods(
            client,
            NAMESPACE,
            self.pods,
            self.concurrency,
            self.timeout,
            pod,
            bound,
        )
        .await?;
        Ok(timed.report(self.nodes))
    }

    /// Deletes the pods (at once: no agent runs them), the nodes and the namespace.
    async fn clean_up(&self, client: &Client) {
        let force = DeleteOptions {
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        };
        let params = ListParams {
            label_selector: Some(format!("{LABEL}=true")),
            ..ListParams::default()
        };
        if let Ok(pods) = client.list::<Pod>(Some(NAMESPACE), &params).await {
            let names: Vec<String> = pods
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            drop(
                each(names.len(), self.concurrency, |i| {
                    let (client, name, force) = (client.clone(), names[i].clone(), force.clone());
                    async move {
                        drop(client.delete::<Pod>(Some(NAMESPACE), &name, &force).await);
                        Ok(())
                    }
                })
                .await,
            );
        }
        drop(
            each(self.nodes, self.concurrency, |i| {
                let client = client.clone();
                async move {
                    let name = format!("bench-node-{i}");
                    drop(
                        client
                            .delete::<Node>(None, &name, &DeleteOptions::default())
                            .await,
                    );
                    drop(
                        client
                            .delete::<Lease>(
                                Some("kube-node-lease"),
                                &name,
                                &DeleteOptions::default(),
                            )
                            .await,
                    );
                    Ok(())
                }
            })
            .await,
        );
        drop(
            client
                .delete::<Namespace>(None, NAMESPACE, &DeleteOptions::default())
                .await,
        );
    }
}

/// Pod startup: pods created one after another (`concurrency` in flight)
/// onto real nodes, each timed from its creation request to the watch
/// event that shows it Running.
#[derive(Clone, Debug)]
pub struct PodStartupBench {
    pub pods: usize,
    pub image: String,
    pub concurrency: usize,
    pub timeout: Duration,
}

const STARTUP_NAMESPACE: &str = "bench-startup";

impl PodStartupBench {
    pub async fn run(&self, client: &Client) -> Result<SchedulerReport, BenchError> {
        let image = self.image.clone();
        let make = move |name: &str| -> Result<Pod, serde_json::Error> {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": STARTUP_NAMESPACE, "labels": {LABEL: "true"}},
                "spec": {"terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                                         "command": ["sleep", "3600"]}]},
            }))
        };
        let running =
            |pod: &Pod| pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let timed = time_pods(
            client,
            STARTUP_NAMESPACE,
            self.pods,
            self.concurrency,
            self.timeout,
            make,
            running,
        )
        .await;
        // The agents stop the containers once their namespace goes.
        drop(
            client
                .delete::<Namespace>(None, STARTUP_NAMESPACE, &DeleteOptions::default())
                .await,
        );
        Ok(timed?.report(0))
    }
}

/// Latencies of pods from creation to the state a benchmark waits for.
struct Timed {
    pods: usize,
    /// Sorted.
    latencies: Vec<Duration>,
    /// From the first creation to the last pod reaching the state.
    elapsed: Duration,
}

impl Timed {
    fn report(self, nodes: usize) -> SchedulerReport {
        let latencies = self.latencies;
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        SchedulerReport {
            nodes,
            pods: self.pods,
            bound: latencies.len(),
            elapsed: self.elapsed,
            p50: at(0.5),
            p99: at(0.99),
            max: latencies[latencies.len() - 1],
        }
    }
}

/// Creates `count` pods named `pod-N` in `namespace` (made by `make`),
/// `concurrency` requests at a time, and times each from its creation
/// request to the first watch event in which `done` holds.
async fn time_pods<M>(
    client: &Client,
    namespace: &'static str,
    count: usize,
    concurrency: usize,
    timeout: Duration,
    make: M,
    done: fn(&Pod) -> bool,
) -> Result<Timed, BenchError>
where
    M: Fn(&str) -> Result<Pod, serde_json::Error> + Send + Sync + 'static,
{
    let object = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match client.create(None, &object).await {
        Ok(_) => {}
        Err(error) if error.is_already_exists() => {}
        Err(error) => return Err(failed("create the namespace")(error)),
    }
    // Watch from now, so every change is seen.
    let first = ListParams {
        limit: Some(1),
        ..ListParams::default()
    };
    let listed = client
        .list::<Pod>(Some(namespace), &first)
        .await
        .map_err(failed("list pods"))?;
    let events = client
        .watch::<Pod>(
            Some(namespace),
            &ListParams::default(),
            &listed.resource_version,
            3600,
        )
        .await
        .map_err(failed("watch pods"))?;
    let created: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    let creations = {
        let (client, created, make) = (client.clone(), created.clone(), Arc::new(make));
        tokio::spawn(async move {
            each(count, concurrency, |i| {
                let (client, created, make) = (client.clone(), created.clone(), make.clone());
                async move {
                    let name = format!("pod-{i}");
                    let pod = make(&name).map_err(|source| BenchError::Api {
                        what: "encode a pod".into(),
                        source: ClientError::Encode {
                            path: name.clone(),
                            source,
                        },
                    })?;
                    created
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name.clone(), Instant::now());
                    client
                        .create(Some(namespace), &pod)
                        .await
                        .map(drop)
                        .map_err(failed(format!("create pod {name}")))
                }
            })
            .await
        })
    };
    let mut latencies: Vec<Duration> = Vec::with_capacity(count);
    let mut last = started;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline, events);
    while latencies.len() < count {
        let event = tokio::select! {
            event = events.next() => event,
            () = &mut deadline => break,
        };
        let pod = match event {
            Some(WatchEvent::Added(pod) | WatchEvent::Modified(pod)) => pod,
            Some(_) => continue,
            None => break,
        };
        if !done(&pod) {
            continue;
        }
        let name = pod.metadata.name.unwrap_or_default();
        let Some(at) = created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name)
        else {
            continue;
        };
        last = Instant::now();
        latencies.push(last.duration_since(at));
    }
    match creations.await {
        Ok(outcome) => outcome?,
        Err(error) => tracing::warn!(%error, "the pod creator failed"),
    }
    if latencies.len() < count {
        return Err(BenchError::Timeout {
            bound: latencies.len(),
            pods: count,
            timeout,
        });
    }
    latencies.sort();
    Ok(Timed {
        pods: count,
        latencies,
        elapsed: last.duration_since(started),
    })
}
