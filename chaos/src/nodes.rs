//! Node scenarios: real pods on three nodes while agents die, nodes stop
//! and are cut off, and the control plane loses its leader; with monitors
//! that record what the cluster did and checkers over what they recorded.
//!
//! ```text
//!  workload   Deployment web (3, readiness probe) + Service web,
//!             StatefulSet db (2) + headless Service db,
//!             ConfigMaps written one after another all along
//!  monitors   every 250 ms  GET through the API endpoint      → availability
//!             every 250 ms  web's ready pods and their nodes   → time to heal
//!             every 500 ms  each node's live sandboxes (disk)  → one db-N at a time
//!             every 1 s     web's EndpointSlices vs pods       → only ready pods routed
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_control::client::{Client, ListParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::fault::{self, Fault};
use crate::local::Local;
use crate::rng::Rng;
use crate::scenario::{Options, Outcome, Scenario, ScenarioError, Window};
use crate::store::Clock;

const IMAGE: &str = "keelson.chaos/busybox:1";
const NAMESPACE: &str = "chaos";
const WEB_REPLICAS: usize = 3;
/// The longest the API may be unreachable while a majority of members is up.
pub const API_GAP_BOUND: Duration = Duration::from_secs(8);
/// How long an endpoint may stay ready after its pod stopped being ready
/// (the readiness probe's period, plus the controllers' reaction).
const ROUTING_GRACE: Duration = Duration::from_secs(5);
/// How long the cluster gets to make a workload whole again.
const HEAL_WITHIN: Duration = Duration::from_secs(120);

fn setup(what: impl std::fmt::Display) -> ScenarioError {
    ScenarioError::Setup(what.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn create<K>(
    client: &Client,
    namespace: Option<&str>,
    manifest: serde_json::Value,
) -> Result<(), ScenarioError>
where
    K: k8s_openapi::Resource + serde::Serialize + serde::de::DeserializeOwned,
{
    let object: K = serde_json::from_value(manifest).map_err(setup)?;
    client.create(namespace, &object).await.map_err(setup)?;
    Ok(())
}

fn pod_template(app: &str, version: &str) -> serde_json::Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": app,
                "image": IMAGE,
                "command": ["sh", "-c", "touch /tmp/ready; exec sleep 100000"],
                "env": [{"name": "VERSION", "value": version}],
                "readinessProbe": {
                    "exec": {"command": ["cat", "/tmp/ready"]},
                    "periodSeconds": 1
                }
            }]
        }
    })
}

/// Loads the image on every node and creates the workload.
async fn deploy(local: &Local, client: &Client) -> Result<(), ScenarioError> {
    let archive = local.dir.join("busybox.tar");
    crate::local::image::busybox_archive(&archive, IMAGE).map_err(setup)?;
    let loaded = tokio::process::Command::new(local.binary())
        .args(["image", "load", "-p", &local.profile.name])
        .arg(&archive)
        .output()
        .await
        .map_err(setup)?;
    if !loaded.status.success() {
        return Err(setup(format!(
            "keelson image load: {}",
            String::from_utf8_lossy(&loaded.stderr)
        )));
    }
    create::<Namespace>(client, None, json!({"metadata": {"name": NAMESPACE}})).await?;
    let ns = Some(NAMESPACE);
    create::<Deployment>(
        client,
        ns,
        json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": WEB_REPLICAS,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": pod_template("web", "1")
            }
        }),
    )
    .await?;
    create::<Service>(
        client,
        ns,
        json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
        }),
    )
    .await?;
    create::<Service>(
        client,
        ns,
        json!({
            "metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 3306}]}
        }),
    )
    .await?;
    create::<StatefulSet>(
        client,
        ns,
        json!({
            "metadata": {"name": "db"},
            "spec": {
                "replicas": 2,
                "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": pod_template("db", "1")
            }
        }),
    )
    .await
}

/// The web Deployment's ready pods and their nodes.
async fn ready_web_pods(client: &Client) -> Option<Vec<(String, String)>> {
    let params = ListParams {
        label_selector: Some("app=web".into()),
        ..ListParams::default()
    };
    let pods = tokio::time::timeout(
        Duration::from_secs(2),
        client.list::<Pod>(Some(NAMESPACE), &params),
    )
    .await
    .ok()?
    .ok()?;
    Some(
        pods.items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap_or_default(),
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default(),
                )
            })
            .collect(),
    )
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until web has all its replicas ready, none on `avoid`; how long it took.
async fn whole(client: &Client, avoid: Option<&str>, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(pods) = ready_web_pods(client).await
            && pods.len() >= WEB_REPLICAS
            && pods
                .iter()
                .filter(|(_, node)| Some(node.as_str()) != avoid)
                .count()
                >= WEB_REPLICAS
        {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// What the monitors recorded.
#[derive(Debug, Default)]
struct Monitors {
    /// ConfigMaps whose creation was acknowledged.
    written: Vec<String>,
    violations: Vec<String>,
}

/// Probes the API through the profile's endpoint until `stop`.
pub(crate) async fn probe_api(
    client: Client,
    clock: Clock,
    stop: CancellationToken,
) -> Vec<(u64, bool)> {
    let mut probes = Vec::new();
    while !stop.is_cancelled() {
        let at = clock.now();
        let answered = tokio::time::timeout(
            Duration::from_secs(2),
            client.get::<Namespace>(None, "default"),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        probes.push((at, answered));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    probes
}

/// The longest stretches without an answer that began while a majority
/// of members was up: one line for each longer than [`API_GAP_BOUND`].
pub(crate) fn api_gaps(probes: &[(u64, bool)], windows: &[Window]) -> (Duration, Vec<String>) {
    let majority_lost = |at: u64| {
        windows
            .iter()
            .any(|w| !w.fault.keeps_majority() && at >= w.start && at <= w.healed + 10_000_000_000)
    };
    let mut longest = Duration::ZERO;
    let mut violations = Vec::new();
    let mut since: Option<u64> = None;
    for (at, answered) in probes {
        match (answered, since) {
            (false, None) => since = Some(*at),
            (true, Some(from)) => {
                let gap = Duration::from_nanos(at - from);
                if !majority_lost(from) && !majority_lost(*at) {
                    longest = longest.max(gap);
                    if gap > API_GAP_BOUND {
                        violations.push(format!(
                            "the API did not answer for {:.1} s from {:.1} s with a majority of members up",
                            gap.as_secs_f64(),
                            from as f64 / 1e9
                        ));
                    }
                }
                since = None;
            }
            _ => {}
        }
    }
    (longest, violations)
}

async fn write_config_maps(
    client: Client,
    stop: CancellationToken,
    monitors: Arc<Mutex<Monitors>>,
) {
    let mut n = 0u64;
    while !stop.is_cancelled() {
        n += 1;
        let name = format!("cm-{n}");
        let object: ConfigMap = match serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"chaos": "writer"}},
            "data": {"n": n.to_string()}
        })) {
            Ok(object) => object,
            Err(_) => return,
        };
        let created = tokio::time::timeout(
            Duration::from_secs(5),
            client.create(Some(NAMESPACE), &object),
        )
        .await;
        if let Ok(Ok(_)) = created {
            lock(&monitors).written.push(name);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pods each node really runs now: live sandboxes in its data directory.
fn running_sandboxes(local: &Local) -> BTreeMap<String, BTreeSet<String>> {
    let mut running: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in &local.profile.nodes {
        let dir = local.node_dir(&node.name).join("runtime").join("sandboxes");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(bytes) = std::fs::read(entry.path().join("sandbox.json")) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            let pid = record["pause_pid"].as_i64().unwrap_or(0);
            let alive = pid > 1
                && !record["stopped"].as_bool().unwrap_or(false)
                && std::path::Path::new(&format!("/proc/{pid}")).exists();
            if alive {
                let pod = format!(
                    "{}/{}",
                    record["config"]["namespace"].as_str().unwrap_or(""),
                    record["config"]["name"].as_str().unwrap_or("")
                );
                running.entry(pod).or_default().insert(node.name.clone());
            }
        }
    }
    running
}

/// No StatefulSet ordinal on two nodes at once.
async fn watch_ordinals(
    local: Local,
    clock: Clock,
    stop: CancellationToken,
    monitors: Arc<Mutex<Monitors>>,
) {
    let mut reported = BTreeSet::new();
    while !stop.is_cancelled() {
        for (pod, nodes) in running_sandboxes(&local) {
            if pod.starts_with(&format!("{NAMESPACE}/db-"))
                && nodes.len() > 1
                && reported.insert(pod.clone())
            {
                lock(&monitors).violations.push(format!(
                    "{pod} ran on {} at once ({:.1} s)",
                    nodes.into_iter().collect::<Vec<_>>().join(" and "),
                    clock.now() as f64 / 1e9
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// web's EndpointSlices list as ready only pods that are ready (allowing
/// [`ROUTING_GRACE`] for the controllers to catch up).
async fn watch_routing(
    client: Client,
    clock: Clock,
    stop: CancellationToken,
    monitors: Arc<Mutex<Monitors>>,
) {
    let mut not_ready_since: HashMap<String, u64> = HashMap::new();
    let mut reported = BTreeSet::new();
    let slices_params = ListParams {
        label_selector: Some("kubernetes.io/service-name=web".into()),
        ..ListParams::default()
    };
    let pods_params = ListParams {
        label_selector: Some("app=web".into()),
        ..ListParams::default()
    };
    while !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let listed = tokio::time::timeout(Duration::from_secs(2), async {
            let slices = client
                .list::<EndpointSlice>(Some(NAMESPACE), &slices_params)
                .await?;
            let pods = client.list::<Pod>(Some(NAMESPACE), &pods_params).await?;
            Ok::<_, keelson_control::client::ClientError>((slices, pods))
        })
        .await;
        let Ok(Ok((slices, pods))) = listed else {
            continue;
        };
        let ready: BTreeSet<String> = pods
            .items
            .iter()
            .filter(|p| is_ready(p))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let now = clock.now();
        let mut routed_not_ready = BTreeSet::new();
        for slice in &slices.items {
            for endpoint in &slice.endpoints {
                let routed = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(false);
                let Some(pod) = endpoint.target_ref.as_ref().and_then(|t| t.name.clone()) else {
                    continue;
                };
                if routed && !ready.contains(&pod) {
                    routed_not_ready.insert(pod);
                }
            }
        }
        not_ready_since.retain(|pod, _| routed_not_ready.contains(pod));
        for pod in routed_not_ready {
            let since = *not_ready_since.entry(pod.clone()).or_insert(now);
            if now - since > ROUTING_GRACE.as_nanos() as u64 && reported.insert(pod.clone()) {
                lock(&monitors).violations.push(format!(
                    "Service web routed to {pod} for more than {} s after it stopped being ready (from {:.1} s)",
                    ROUTING_GRACE.as_secs(),
                    since as f64 / 1e9
                ));
            }
        }
    }
}

/// Runs a node scenario on a started cluster.
pub(crate) async fn run(
    scenario: &Scenario,
    options: &Options,
    local: &Local,
    progress: &mut dyn FnMut(&str),
) -> Result<Outcome, ScenarioError> {
    let client = local.admin_client()?;
    deploy(local, &client).await?;
    if whole(&client, None, HEAL_WITHIN).await.is_none() {
        return Err(setup("the web Deployment never became ready"));
    }
    let nodes: Vec<String> = local.profile.nodes.iter().map(|n| n.name.clone()).collect();
    progress(&format!(
        "{}: web (3) and db (2) running on {}; faults for {} s",
        scenario.name,
        nodes.join(", "),
        options.duration.as_secs()
    ));
    let clock = Clock::start();
    let stop = CancellationToken::new();
    let monitors = Arc::new(Mutex::new(Monitors::default()));
    let api = tokio::spawn(probe_api(client.clone(), clock, stop.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(write_config_maps(
        client.clone(),
        stop.clone(),
        monitors.clone(),
    ));
    tasks.spawn(watch_ordinals(
        local.clone(),
        clock,
        stop.clone(),
        monitors.clone(),
    ));
    tasks.spawn(watch_routing(
        client.clone(),
        clock,
        stop.clone(),
        monitors.clone(),
    ));

    let mut rng = Rng::new(options.seed).fork(u64::MAX);
    let mut windows = Vec::new();
    let mut heal_ms = Vec::new();
    let mut violations = Vec::new();
    let end = options.duration.as_nanos() as u64;
    let mut version = 1;
    while clock.now() < end {
        tokio::time::sleep(Duration::from_millis(rng.between(1000, 2500))).await;
        let fault = scenario.faults[rng.below(scenario.faults.len() as u64) as usize];
        if scenario.name == "rolling-update" {
            version += 1;
            roll(&client, version).await?;
        }
        let start = clock.now();
        let injected = fault::inject(local, fault, &nodes, &mut rng).await?;
        let target = injected.target.clone();
        // A node that is gone must be replaced while it is gone; the others
        // are held a few seconds.
        let replaced_while_away = matches!(fault, Fault::StopNode | Fault::PartitionNode);
        let away = if replaced_while_away {
            let took = whole(&client, Some(&target), HEAL_WITHIN).await;
            if took.is_none() {
                violations.push(format!(
                    "web was not whole again within {} s of {} {target}",
                    HEAL_WITHIN.as_secs(),
                    fault.name()
                ));
            }
            took
        } else {
            tokio::time::sleep(Duration::from_millis(rng.between(3000, 8000))).await;
            None
        };
        fault::heal(local, injected).await?;
        let healed = clock.now();
        let took = match away {
            Some(took) => Some(took),
            None => whole(&client, None, HEAL_WITHIN)
                .await
                .map(|_| Duration::from_nanos(clock.now() - start)),
        };
        match took {
            Some(took) => heal_ms.push(took.as_secs_f64() * 1000.0),
            None if !replaced_while_away => violations.push(format!(
                "web was not whole again within {} s after {} {target} was undone",
                HEAL_WITHIN.as_secs(),
                fault.name()
            )),
            None => {}
        }
        progress(&format!(
            "  {:>6.1} s  {} {target}: whole again after {}",
            start as f64 / 1e9,
            fault.name(),
            took.map_or("—".into(), |t| format!("{:.1} s", t.as_secs_f64()))
        ));
        windows.push(Window {
            fault,
            target,
            start,
            healed,
        });
        // Back to whole (every node too) before the next fault.
        let _ = whole(&client, None, HEAL_WITHIN).await;
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    let probes = api.await.unwrap_or_default();
    let monitors = std::mem::take(&mut *lock(&monitors));
    let mut outcome = Outcome {
        scenario: scenario.name.into(),
        seed: options.seed,
        heal_ms,
        ..Outcome::default()
    };
    outcome.violations.extend(violations);
    outcome.violations.extend(monitors.violations);
    let (_, gaps) = api_gaps(&probes, &windows);
    outcome.violations.extend(gaps);
    outcome.checked += probes.len();
    // Every acknowledged ConfigMap is there, once.
    let params = ListParams {
        label_selector: Some("chaos=writer".into()),
        ..ListParams::default()
    };
    let listed = client
        .list::<ConfigMap>(Some(NAMESPACE), &params)
        .await
        .map_err(setup)?;
    let mut names: Vec<String> = listed
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let count = names.len();
    names.sort();
    names.dedup();
    if names.len() != count {
        outcome.violations.push(format!(
            "the ConfigMap list has {} duplicates",
            count - names.len()
        ));
    }
    let present: BTreeSet<&String> = names.iter().collect();
    outcome.lost = monitors
        .written
        .iter()
        .filter(|n| !present.contains(n))
        .map(|n| format!("ConfigMap {NAMESPACE}/{n} was acknowledged and is gone"))
        .collect();
    outcome.checked += monitors.written.len();
    // The workload is whole, and the rolled-out version is what runs.
    let rolled = whole(&client, None, HEAL_WITHIN).await.is_some();
    if !rolled {
        outcome
            .violations
            .push("web did not return to 3 ready replicas".into());
    }
    if scenario.name == "rolling-update" {
        // The last rollout may still be under way: wait for it to finish,
        // as `kubectl rollout status` does.
        let want = Some(WEB_REPLICAS as i32);
        let started = Instant::now();
        let mut status = Default::default();
        while started.elapsed() < HEAL_WITHIN {
            if let Ok(deployment) = client.get::<Deployment>(Some(NAMESPACE), "web").await {
                let generation = deployment.metadata.generation;
                status = deployment.status.unwrap_or_default();
                if status.observed_generation >= generation
                    && status.updated_replicas == want
                    && status.ready_replicas == want
                    && status.replicas == want
                {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let status: k8s_openapi::api::apps::v1::DeploymentStatus = status;
        if status.updated_replicas != want
            || status.ready_replicas != want
            || status.replicas != want
        {
            outcome.violations.push(format!(
                "{} s after the run web has {} replicas, {} updated, {} ready (want {WEB_REPLICAS} each)",
                HEAL_WITHIN.as_secs(),
                status.replicas.unwrap_or(0),
                status.updated_replicas.unwrap_or(0),
                status.ready_replicas.unwrap_or(0)
            ));
        }
    }
    let started = Instant::now();
    let mut ready = 0;
    while started.elapsed() < HEAL_WITHIN {
        if let Ok(set) = client.get::<StatefulSet>(Some(NAMESPACE), "db").await {
            ready = set.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            if ready == 2 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if ready != 2 {
        outcome.violations.push(format!(
            "db has {ready} ready replicas {} s after the run, want 2",
            HEAL_WITHIN.as_secs()
        ));
    }
    outcome.windows = windows;
    Ok(outcome)
}

/// Starts a rolling update of web to `version`.
async fn roll(client: &Client, version: u32) -> Result<(), ScenarioError> {
    let patch = json!({"spec": {"template": pod_template("web", &version.to_string())}});
    client
        .patch::<Deployment>(
            Some(NAMESPACE),
            "web",
            None,
            keelson_control::client::Patch::Merge,
            &patch,
        )
        .await
        .map_err(setup)?;
    Ok(())
}
