//! Scenarios: a fault schedule, a workload and the checkers, run against a
//! cluster made for the run and deleted after it.
//!
//! ```text
//!  keelson up machinery ─► workload starts ─► quiet · fault · hold · heal ─► … (duration)
//!                                             └─ windows: (fault, start, healed)
//!  heal everything ─► workload stops ─► reference history read ─► checkers ─► Outcome
//! ```
//!
//! Every random choice comes from the seed; a failing run prints the
//! command that runs it again.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::check::kv::check_kv;
use crate::check::watch::{self, WatchReport};
use crate::fault::{self, Fault, FaultError};
use crate::local::{Local, LocalError, Options as ProfileOptions};
use crate::rng::Rng;
use crate::store::{self, Clock, Record, Target};

/// What a scenario drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// etcd-API clients, watchers and leases on the store.
    Store,
    /// Workloads on nodes, through the Kubernetes API.
    Nodes,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub workload: Workload,
    pub faults: &'static [Fault],
    /// Part of the short seeded run CI does.
    pub smoke: bool,
}

/// Every scenario, in the order `--scenario all` runs them.
pub fn all() -> Vec<Scenario> {
    use Fault::*;
    let store = |name, about, faults, smoke| Scenario {
        name,
        about,
        workload: Workload::Store,
        faults,
        smoke,
    };
    let nodes = |name, about, faults, smoke| Scenario {
        name,
        about,
        workload: Workload::Nodes,
        faults,
        smoke,
    };
    vec![
        store(
            "kill-leader",
            "kill -9 of the Raft leader, restarted",
            &[KillLeader],
            true,
        ),
        store(
            "kill-follower",
            "kill -9 of a follower, restarted",
            &[KillFollower],
            false,
        ),
        store(
            "kill-all",
            "kill -9 of all three members at once, restarted",
            &[KillAll],
            true,
        ),
        store(
            "pause-leader",
            "SIGSTOP of the leader, SIGCONT",
            &[PauseLeader],
            false,
        ),
        store(
            "isolate-leader",
            "the leader cut off from both followers",
            &[IsolateLeader],
            true,
        ),
        store(
            "minority",
            "a follower cut off: minority against majority",
            &[IsolateFollower],
            false,
        ),
        store(
            "bridge",
            "two members cannot see each other, both see the third",
            &[Bridge],
            false,
        ),
        store(
            "packet-loss",
            "a fifth of the packets between members dropped, each way",
            &[PacketLoss],
            false,
        ),
        store(
            "delay",
            "100 ± 50 ms on every packet between members (tc netem)",
            &[Delay],
            false,
        ),
        store(
            "replace-member",
            "a follower removed, its disk wiped, added back",
            &[ReplaceFollower],
            false,
        ),
        store(
            "mixed",
            "all of the above, one after another",
            &[
                KillLeader,
                KillFollower,
                PauseLeader,
                IsolateLeader,
                IsolateFollower,
                Bridge,
                PacketLoss,
            ],
            false,
        ),
        nodes(
            "node-kill-agent",
            "kill -9 of a node agent, restarted",
            &[KillAgent],
            false,
        ),
        nodes(
            "node-stop",
            "a node stopped with its pods, started again",
            &[StopNode],
            true,
        ),
        nodes(
            "node-partition",
            "a node cut off from the control plane",
            &[PartitionNode],
            false,
        ),
        nodes(
            "rolling-update",
            "a rolling update while the leader is killed and an agent dies",
            &[KillLeader, KillAgent],
            false,
        ),
    ]
}

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// How long faults are injected for.
    pub duration: Duration,
    /// The `keelson` binary the cluster runs.
    pub binary: PathBuf,
    /// Extra flags for every member (how a deliberately broken build is made).
    pub server_flags: Vec<String>,
    /// Keep the cluster (and its logs) after the run.
    pub keep: bool,
    pub store: store::Config,
}

/// One fault as it happened.
#[derive(Clone, Debug)]
pub struct Window {
    pub fault: Fault,
    pub target: String,
    /// Nanoseconds on the run's clock.
    pub start: u64,
    pub healed: u64,
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub scenario: String,
    pub seed: u64,
    pub windows: Vec<Window>,
    /// Operations (and events) the checkers went through.
    pub checked: usize,
    pub violations: Vec<String>,
    /// Acknowledged writes (or objects) missing afterwards.
    pub lost: Vec<String>,
    /// Per fault: from the fault to the first acknowledged write after it.
    pub unavailable_ms: Vec<f64>,
    /// Per fault that takes pods away: until the workload is whole again.
    pub heal_ms: Vec<f64>,
    /// Keys the linearizability search gave up on.
    pub undecided: usize,
    /// Why the scenario could not run here.
    pub skipped: Option<String>,
    pub reproduce: String,
}

impl Outcome {
    pub fn failed(&self) -> bool {
        !self.violations.is_empty() || !self.lost.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    Fault(#[from] FaultError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Setup(String),
}

/// The command that repeats this run.
pub fn reproduce(scenario: &Scenario, options: &Options) -> String {
    let mut command = format!(
        "keelson chaos --scenario {} --seed {} --duration {}s",
        scenario.name,
        options.seed,
        options.duration.as_secs()
    );
    for flag in &options.server_flags {
        command.push_str(&format!(" --server-flag={flag}"));
    }
    command
}

/// The profile a scenario's cluster gets (a stale one from an interrupted
/// run is deleted first).
fn profile_name(scenario: &Scenario) -> String {
    format!("chaos-{}", scenario.name)
}

/// Runs one scenario from a fresh cluster to its outcome.
pub async fn run(
    scenario: &Scenario,
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Outcome, ScenarioError> {
    let name = profile_name(scenario);
    if let Ok(stale) = Local::open(&name, &options.binary) {
        stale.delete(&mut |_| {}).await?;
    }
    let nodes = match scenario.workload {
        Workload::Store => 1,
        Workload::Nodes => 3,
    };
    let mut server_flags = options.server_flags.clone();
    let mut agent_flags = Vec::new();
    if scenario.workload == Workload::Nodes {
        // Failure detection in seconds, not minutes: the run measures healing.
        server_flags.extend(
            [
                "--node-monitor-grace-period=6s",
                "--default-not-ready-toleration-seconds=2",
                "--default-unreachable-toleration-seconds=2",
            ]
            .map(String::from),
        );
        agent_flags.push("--node-lease-renew-interval=1s".to_owned());
    }
    let mut local = Local::create(
        &name,
        &ProfileOptions {
            servers: 3,
            nodes,
            server_flags,
            agent_flags,
        },
        &options.binary,
    )
    .await?;
    progress(&format!(
        "{}: starting a cluster (profile {name})",
        scenario.name
    ));
    let outcome = async {
        local.start(&mut |_| {}).await?;
        match scenario.workload {
            Workload::Store => run_store(scenario, options, &local, progress).await,
            Workload::Nodes => crate::nodes::run(scenario, options, &local, progress).await,
        }
    }
    .await;
    let failed = outcome.as_ref().map_or(true, Outcome::failed);
    if failed && !options.keep {
        // What the processes logged outlives the cluster.
        let kept = std::env::temp_dir()
            .join("keelson-chaos-logs")
            .join(format!("{}-{}", scenario.name, options.seed));
        if copy_logs(&local.dir.join("logs"), &kept).is_ok() {
            progress(&format!(
                "{}: logs kept in {}",
                scenario.name,
                kept.display()
            ));
        }
    }
    if options.keep {
        progress(&format!(
            "{}: kept; `keelson delete -p {name}` removes it",
            scenario.name
        ));
    } else {
        local.delete(&mut |_| {}).await?;
    }
    let mut outcome = outcome?;
    outcome.reproduce = reproduce(scenario, options);
    Ok(outcome)
}

fn copy_logs(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// The fault schedule: quiet, fault, hold, heal — until `duration` is up.
/// Every fault is healed before it returns, whatever happened.
pub(crate) async fn schedule(
    local: &Local,
    scenario: &Scenario,
    options: &Options,
    nodes: &[String],
    clock: Clock,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Window>, ScenarioError> {
    let mut rng = Rng::new(options.seed).fork(u64::MAX);
    let mut windows = Vec::new();
    let end = options.duration.as_nanos() as u64;
    while clock.now() < end {
        tokio::time::sleep(Duration::from_millis(rng.between(1000, 2500))).await;
        let fault = scenario.faults[rng.below(scenario.faults.len() as u64) as usize];
        let injected = fault::inject(local, fault, nodes, &mut rng).await?;
        // From the moment the fault is in place.
        let start = clock.now();
        let target = injected.target.clone();
        tokio::time::sleep(Duration::from_millis(rng.between(2000, 5000))).await;
        fault::heal(local, injected).await?;
        let healed = clock.now();
        progress(&format!(
            "  {:>6.1} s  {} {target} for {:.1} s",
            start as f64 / 1e9,
            fault.name(),
            (healed - start) as f64 / 1e9
        ));
        windows.push(Window {
            fault,
            target,
            start,
            healed,
        });
        if fault.keeps_majority() {
            continue;
        }
        // After a whole-cluster outage, wait for a leader before the next.
        fault::leader(local, Duration::from_secs(60)).await?;
    }
    Ok(windows)
}

/// Per window: from the fault to the first acknowledgement of a write sent
/// after it (`acks` are (sent, acknowledged) pairs).
pub(crate) fn unavailability(windows: &[Window], acks: &[(u64, u64)], end: u64) -> Vec<f64> {
    windows
        .iter()
        .map(|w| {
            let first = acks
                .iter()
                .filter(|(sent, _)| *sent >= w.start)
                .map(|(_, at)| *at)
                .min()
                .unwrap_or(end);
            (first.max(w.start) - w.start) as f64 / 1e6
        })
        .collect()
}

async fn run_store(
    scenario: &Scenario,
    options: &Options,
    local: &Local,
    progress: &mut dyn FnMut(&str),
) -> Result<Outcome, ScenarioError> {
    let targets: Vec<Target> = (1..=local.profile.servers)
        .map(|i| Target {
            name: Local::member_name(i),
            url: local.client_url(i),
        })
        .collect();
    let clock = Clock::start();
    let stop = CancellationToken::new();
    let workload = {
        let (targets, config, stop) = (targets.clone(), options.store.clone(), stop.clone());
        let seed = options.seed;
        tokio::spawn(async move { store::run(&targets, &config, seed, clock, stop).await })
    };
    progress(&format!(
        "{}: {} clients, {} watchers, {} leases; faults for {} s",
        scenario.name,
        options.store.clients,
        options.store.watchers,
        options.store.leasers,
        options.duration.as_secs()
    ));
    let api = tokio::spawn(crate::nodes::probe_api(
        local.admin_client()?,
        clock,
        stop.clone(),
    ));
    let scheduled = schedule(local, scenario, options, &[], clock, progress).await;
    // Whatever the schedule did, the workload stops once the cluster has a
    // leader again and a little more history has been recorded.
    let _ = fault::leader(local, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let record = workload
        .await
        .map_err(|e| ScenarioError::Setup(format!("the workload panicked: {e}")))??;
    let (windows, skipped) = match scheduled {
        Ok(windows) => (windows, None),
        Err(ScenarioError::Fault(unsupported @ FaultError::Unsupported { .. })) => {
            (Vec::new(), Some(unsupported.to_string()))
        }
        Err(error) => return Err(error),
    };
    progress(&format!(
        "{}: checking {} operations, {} acknowledged writes, {} watch streams, {} leases",
        scenario.name,
        record.ops.len(),
        record.acked.len(),
        record.watches.len(),
        record.leases.len()
    ));
    let end = clock.now();
    let mut outcome = check_store(&targets, &record, &windows, options).await?;
    outcome.scenario = scenario.name.into();
    outcome.seed = options.seed;
    outcome.unavailable_ms = unavailability(&windows, &record.ack_times(), end);
    progress(&format!(
        "{}: first write after each fault acknowledged in (ms): {}",
        scenario.name,
        outcome
            .unavailable_ms
            .iter()
            .map(|ms| format!("{ms:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let probes = api.await.unwrap_or_default();
    let (_, gaps) = crate::nodes::api_gaps(&probes, &windows);
    outcome.violations.extend(gaps);
    outcome.checked += probes.len();
    outcome.windows = windows;
    outcome.skipped = skipped;
    Ok(outcome)
}

/// Runs every store checker over `record`.
async fn check_store(
    targets: &[Target],
    record: &Record,
    windows: &[Window],
    options: &Options,
) -> Result<Outcome, ScenarioError> {
    let mut outcome = Outcome::default();
    let kv = check_kv(&record.ops, 2_000_000);
    outcome.checked += kv.operations;
    outcome.undecided = kv.unknown_keys.len();
    for violation in kv.violations {
        outcome.violations.push(format!(
            "not linearizable on {}:\n{}",
            violation.key, violation.explanation
        ));
    }
    let channels: Vec<_> = targets
        .iter()
        .map(|t| store::channel(&t.url, Duration::from_secs(10)))
        .collect::<Result<_, _>>()?;
    // The reference: one fresh watch over everything the run wrote.
    let until = record
        .acked
        .iter()
        .map(|a| a.revision)
        .chain(
            record
                .watches
                .iter()
                .filter_map(|w| w.events.last().map(|e| e.mod_revision)),
        )
        .max()
        .unwrap_or(0);
    let mut reference = None;
    for channel in channels.iter().cycle().take(3 * channels.len()) {
        if let Ok(events) = store::watch_from(
            channel,
            record.start_revision + 1,
            until,
            usize::MAX,
            Duration::from_secs(3),
        )
        .await
            && events.last().is_some_and(|e| e.mod_revision >= until)
        {
            reference = Some(events);
            break;
        }
    }
    let Some(reference) = reference else {
        outcome.violations.push(format!(
            "no member could replay the history up to revision {until} after the run"
        ));
        return Ok(outcome);
    };
    let mut report = WatchReport::default();
    watch::check_reference(&reference, &mut report);
    watch::check_watchers(&record.watches, &reference, &mut report);
    watch::check_acked(&record.acked, &reference, &mut report);
    // Watches opened after the run at sampled revisions, on every member.
    let mut rng = Rng::new(options.seed).fork(7);
    let mut samples = Vec::new();
    for n in 0..12 {
        let Some(event) = reference.get(rng.below(reference.len() as u64) as usize) else {
            break;
        };
        let channel = &channels[n % channels.len()];
        if let Ok(events) = store::watch_from(
            channel,
            event.mod_revision,
            i64::MAX,
            50,
            Duration::from_secs(2),
        )
        .await
        {
            samples.push((event.mod_revision, events));
        }
    }
    watch::check_resumed(&samples, &reference, &mut report);
    outcome.checked += report.events;
    outcome.lost = report.lost;
    outcome.violations.extend(report.violations);
    outcome
        .violations
        .extend(crate::check::lease::check(&record.leases, windows));
    outcome.checked += record.leases.len();
    Ok(outcome)
}
