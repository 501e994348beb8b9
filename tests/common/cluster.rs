//! Harness for a cluster of real `keelson server` processes on loopback.
//!
//! [`Cluster::start`] picks every member's client and peer port up front (by
//! binding `127.0.0.1:0` and releasing the ports, since `--initial-cluster`
//! must name the peer URLs before any member runs), gives each member its own
//! temporary data directory, launches the founders `m0`, `m1`, `m2` and waits
//! until each logs `serving client traffic address=…`. Each member's stderr
//! is drained on a thread for as long as it runs and printed if the test
//! panics; every member still running is killed and reaped on drop.
//!
//! [`Member::kill`] crashes a member (SIGKILL, then reaped) and
//! [`Member::restart`] brings it back on the same data directory and ports.
//! [`Cluster::reserve`] and [`Cluster::join`] add a member to a running
//! cluster after `etcdctl member add`.
//!
//! Members are observed from outside, as an operator would: `etcdctl endpoint
//! status -w json` ([`Member::status`], [`Cluster::leader`]) and `etcdctl
//! member list` ([`Cluster::member_list`]), plus an `etcd-client` per member
//! ([`Member::client`]).

#![allow(dead_code, reason = "only the cluster tests start clusters")]

use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{
    Background, CLIENT_CONNECT_TIMEOUT, CLIENT_REQUEST_TIMEOUT, COMMAND_TIMEOUT, Captured, Json,
    POLL_INTERVAL, STARTUP_DEADLINE, etcdctl_bin, expect_success, free_ports, keelson_bin, launch,
    logged_address, recv_before, spawn_background, stderr, wait_until,
};

/// Members that found the cluster.
pub(crate) const FOUNDERS: usize = 3;
/// Leader heartbeat period, in milliseconds (etcd's default, not Keelson's
/// 50 ms: the machine running the tests may be busy).
const HEARTBEAT_INTERVAL: &str = "100";
/// Election timeout, in milliseconds (etcd's default).
const ELECTION_TIMEOUT: &str = "1000";
/// Applied entries between snapshots: small, so that a member that was down
/// catches up by snapshot, as it does in `raftstore/tests/cluster.rs`.
const SNAPSHOT_COUNT: &str = "100";
/// How long a leader may take to be elected and known to every member.
pub(crate) const LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// `etcdctl` flags for the quick status queries made while polling.
const STATUS_TIMEOUTS: [&str; 2] = ["--dial-timeout=1s", "--command-timeout=2s"];

/// `http://127.0.0.1:PORT`.
fn local_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// An `etcdctl` command aimed at `endpoints` (comma-separated); `args` follow
/// the global flags, so they may override the default command timeout.
fn etcdctl_command(endpoints: &str, args: &[&str]) -> Command {
    let mut command = Command::new(etcdctl_bin());
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg(COMMAND_TIMEOUT)
        .args(args)
        .stdin(Stdio::null());
    command
}

/// Runs `etcdctl` against `endpoints` and returns what it did.
fn run_etcdctl(endpoints: &str, args: &[&str]) -> Output {
    etcdctl_command(endpoints, args)
        .output()
        .unwrap_or_else(|err| panic!("run etcdctl --endpoints={endpoints} {args:?}: {err}"))
}

/// A JSON number that etcdctl leaves out when it is zero (`omitempty`).
fn number_or_zero(value: &Json) -> u64 {
    if value.is_null() { 0 } else { value.as_u64() }
}

/// One member's answer to `etcdctl endpoint status -w json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) member_id: u64,
    /// The leader's ID, 0 when none is known.
    pub(crate) leader: u64,
    pub(crate) raft_term: u64,
    pub(crate) raft_index: u64,
    pub(crate) raft_applied_index: u64,
    pub(crate) is_learner: bool,
}

impl Status {
    /// Reads the status of the one endpoint in `etcdctl endpoint status -w json`.
    fn parse(text: &str) -> Status {
        let json = Json::parse(text);
        assert_eq!(json.as_array().len(), 1, "one endpoint's status: {text}");
        let status = &json[0]["Status"];
        Status {
            member_id: status["header"]["member_id"].as_u64(),
            leader: number_or_zero(&status["leader"]),
            raft_term: number_or_zero(&status["raftTerm"]),
            raft_index: number_or_zero(&status["raftIndex"]),
            raft_applied_index: number_or_zero(&status["raftAppliedIndex"]),
            is_learner: !status["isLearner"].is_null() && status["isLearner"].as_bool(),
        }
    }
}

/// One `keelson server` process of a cluster, with its ports and data directory.
pub(crate) struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// The Kubernetes API's port, if the member serves it.
    api_port: Option<u16>,
    /// The address the API listens on (127.0.0.1 unless the test needs
    /// the API reachable from network namespaces).
    api_host: String,
    /// Launches the member, again after a kill, on the same directory and ports.
    command: Option<Command>,
    /// The running process; `None` before the start and after a kill or exit.
    child: Option<Child>,
    log: Captured,
    data_dir: TempDir,
}

impl Member {
    fn new(name: String, [client_port, peer_port]: [u16; 2], api_port: Option<u16>) -> Member {
        Member {
            name,
            client_port,
            peer_port,
            api_port,
            api_host: "127.0.0.1".into(),
            command: None,
            child: None,
            log: Captured::default(),
            data_dir: tempfile::tempdir().expect("create a member's data directory"),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The client endpoint, `127.0.0.1:PORT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub(crate) fn client_url(&self) -> String {
        local_url(self.client_port)
    }

    pub(crate) fn peer_url(&self) -> String {
        local_url(self.peer_port)
    }

    /// Whether the process was started and has been neither killed nor seen to exit.
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The `keelson server` command for this member.
    fn server_command(&self, initial_cluster: &str, state: &str) -> Command {
        let (client_url, peer_url) = (self.client_url(), self.peer_url());
        let mut command = Command::new(keelson_bin());
        command
            .args(["server", "--name", &self.name, "--data-dir"])
            .arg(self.data_dir.path())
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--heartbeat-interval", HEARTBEAT_INTERVAL])
            .args(["--election-timeout", ELECTION_TIMEOUT])
            .args(["--snapshot-count", SNAPSHOT_COUNT]);
        match self.api_port {
            Some(port) => command.args([
                "--listen-api-url",
                &format!("https://{}:{port}", self.api_host),
            ]),
            None => command.args(["--listen-api-url", "none"]),
        };
        command
    }

    /// The admin kubeconfig the member writes once it serves the API.
    pub(crate) fn kubeconfig(&self) -> std::path::PathBuf {
        self.data_dir.path().join("admin.kubeconfig")
    }

    /// `kubectl ARGS` against this member, with its admin kubeconfig; a
    /// request that hangs fails after 20 s.
    pub(crate) fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.data_dir.path())
            .arg("--request-timeout=20s")
            .args(args);
        command
    }

    pub(crate) fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args)
            .output()
            .unwrap_or_else(|err| panic!("run kubectl {args:?} (is kubectl installed?): {err}"))
    }

    /// Runs `kubectl ARGS`, which must succeed; returns its stdout.
    pub(crate) fn kubectl_ok(&self, args: &[&str]) -> String {
        expect_success(&format!("kubectl {args:?}"), &self.kubectl(args))
    }

    /// Runs `kubectl ARGS`, which must fail; returns its stderr.
    pub(crate) fn kubectl_err(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            !output.status.success(),
            "kubectl {args:?} unexpectedly succeeded\nstdout:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        stderr(&output)
    }

    /// Starts a long-running `kubectl` (`get -w`) whose lines can be awaited.
    pub(crate) fn spawn_kubectl(&self, args: &[&str]) -> Background {
        spawn_background(self.kubectl_command(args), format!("kubectl {args:?}"))
    }

    /// Launches the process; [`Member::await_serving`] waits until it serves.
    fn launch(&mut self) -> Receiver<String> {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let command = self.command.as_mut().expect("the member's command is set");
        let (child, lines) = launch(command, &self.log);
        self.child = Some(child);
        lines
    }

    /// Waits (at most [`STARTUP_DEADLINE`]) until the member logs that it
    /// serves clients, and checks that it does so on its own port.
    fn await_serving(&mut self, lines: &Receiver<String>) {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let address = loop {
            let Some(line) = recv_before(lines, deadline) else {
                let exited = self.child.as_mut().map(Child::try_wait);
                panic!(
                    "{} did not log `serving client traffic` \
                     (deadline {STARTUP_DEADLINE:?}, exit status {exited:?})",
                    self.name
                );
            };
            if let Some(address) = logged_address(&line, "serving client traffic") {
                break address;
            }
        };
        assert_eq!(
            address,
            self.endpoint(),
            "{} serves clients on another address",
            self.name
        );
        if self.api_port.is_some() {
            while !recv_before(lines, deadline)
                .unwrap_or_else(|| panic!("{} did not serve the Kubernetes API", self.name))
                .contains("serving Kubernetes API")
            {}
        }
    }

    /// Whether the member has logged a line containing `text`.
    pub(crate) fn logged(&self, text: &str) -> bool {
        self.log.contents().contains(text)
    }

    /// Kills the member with SIGKILL, as a crash would, and reaps it. Its data
    /// directory and ports stay for [`Member::restart`].
    pub(crate) fn kill(&mut self) {
        let mut child = self.child.take().expect("kill() needs a running member");
        child.kill().expect("SIGKILL a member");
        let status = child.wait().expect("reap a member");
        self.log.push(&format!("----- killed: {status} -----"));
    }

    /// Starts the member again after [`Member::kill`], on the same data
    /// directory and ports, and waits until it serves clients.
    pub(crate) fn restart(&mut self) {
        self.log.push("----- restarting -----");
        let lines = self.launch();
        self.await_serving(&lines);
    }

    /// Waits (at most `timeout`) for the process to exit by itself.
    pub(crate) fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("a running member");
        let mut status = None;
        wait_until(timeout, &format!("{} to exit by itself", self.name), || {
            status = child.try_wait().expect("poll a member");
            status.is_some()
        });
        self.child = None;
        let status = status.expect("exit status");
        self.log.push(&format!("----- exited: {status} -----"));
        status
    }

    /// Runs `etcdctl` against this member alone.
    pub(crate) fn etcdctl(&self, args: &[&str]) -> Output {
        run_etcdctl(&self.endpoint(), args)
    }

    /// Runs `etcdctl` against this member, asserts that it succeeded and
    /// returns its stdout.
    pub(crate) fn etcdctl_ok(&self, args: &[&str]) -> String {
        expect_success(&format!("etcdctl {args:?}"), &self.etcdctl(args))
    }

    /// The member's `endpoint status`, `None` if it does not answer.
    pub(crate) fn status(&self) -> Option<Status> {
        let mut args = vec!["endpoint", "status", "-w", "json"];
        args.extend(STATUS_TIMEOUTS);
        let output = self.etcdctl(&args);
        output
            .status
            .success()
            .then(|| Status::parse(&String::from_utf8_lossy(&output.stdout)))
    }

    /// Waits until the member answers `endpoint status`.
    pub(crate) fn wait_status(&self) -> Status {
        eventually(
            LEADER_DEADLINE,
            &format!("{} to answer endpoint status", self.name),
            || self.status().ok_or_else(|| "no answer".to_owned()),
        )
    }

    /// Waits until the member has applied at least `index`; returns its status then.
    pub(crate) fn wait_applied(&self, index: u64, timeout: Duration) -> Status {
        eventually(
            timeout,
            &format!("{} to apply index {index}", self.name),
            || match self.status() {
                Some(status) if status.raft_applied_index >= index => Ok(status),
                other => Err(format!("{other:?}")),
            },
        )
    }

    /// An `etcd-client` connected to this member alone. It connects lazily,
    /// so a member that is down makes requests fail rather than this call;
    /// each request fails after [`CLIENT_REQUEST_TIMEOUT`].
    pub(crate) async fn client(&self) -> etcd_client::Client {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(CLIENT_CONNECT_TIMEOUT)
            .with_timeout(CLIENT_REQUEST_TIMEOUT);
        etcd_client::Client::connect([self.client_url()], Some(options))
            .await
            .unwrap_or_else(|err| panic!("connect etcd-client to {}: {err}", self.name))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log.contents());
        }
    }
}

/// Members of one cluster, `m0`, `m1`, … in the order they were added.
pub(crate) struct Cluster {
    members: Vec<Member>,
}

impl Cluster {
    /// Starts [`FOUNDERS`] members that found a new cluster, and waits until
    /// each serves clients.
    pub(crate) fn start() -> Cluster {
        Self::start_with(false, &[])
    }

    /// Starts [`FOUNDERS`] members that also serve the Kubernetes API, and
    /// waits until each serves it.
    pub(crate) fn start_control_plane() -> Cluster {
        Self::start_with(true, &[])
    }

    /// Like [`Cluster::start_control_plane`], with more `keelson server` flags.
    pub(crate) fn start_control_plane_with(flags: &[&str]) -> Cluster {
        Self::start_with(true, flags)
    }

    /// Like [`Cluster::start_control_plane_with`], the API listening on
    /// `api_host` (an address of the machine's) instead of 127.0.0.1.
    pub(crate) fn start_control_plane_on(api_host: &str, flags: &[&str]) -> Cluster {
        Self::start_on(true, api_host, flags)
    }

    fn start_with(api: bool, flags: &[&str]) -> Cluster {
        Self::start_on(api, "127.0.0.1", flags)
    }

    fn start_on(api: bool, api_host: &str, flags: &[&str]) -> Cluster {
        let ports = free_ports::<{ 3 * FOUNDERS }>();
        let members: Vec<Member> = ports
            .chunks_exact(3)
            .enumerate()
            .map(|(i, p)| {
                let mut member = Member::new(format!("m{i}"), [p[0], p[1]], api.then_some(p[2]));
                api_host.clone_into(&mut member.api_host);
                member
            })
            .collect();
        let mut cluster = Cluster { members };
        let initial_cluster = cluster.initial_cluster();
        for member in &mut cluster.members {
            let mut command = member.server_command(&initial_cluster, "new");
            command.args(flags);
            member.command = Some(command);
        }
        // All at once: a founder may wait for the others before it serves.
        let lines: Vec<Receiver<String>> = cluster.members.iter_mut().map(Member::launch).collect();
        for (member, lines) in cluster.members.iter_mut().zip(&lines) {
            member.await_serving(lines);
        }
        cluster
    }

    /// `NAME=PEER_URL,…` over every member, running or not.
    pub(crate) fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|member| format!("{}={}", member.name, member.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Picks ports and a data directory for a new member named `name`,
    /// without starting it (`etcdctl member add` needs its peer URL first).
    /// Returns its index.
    pub(crate) fn reserve(&mut self, name: &str) -> usize {
        // The running members hold their ports, so these are new ones.
        let ports = free_ports::<2>();
        self.members.push(Member::new(name.to_owned(), ports, None));
        self.members.len() - 1
    }

    /// Starts reserved member `i` with `--initial-cluster-state existing` and
    /// an `--initial-cluster` naming every member, and waits until it serves.
    pub(crate) fn join(&mut self, i: usize) {
        let initial_cluster = self.initial_cluster();
        let member = &mut self.members[i];
        member.command = Some(member.server_command(&initial_cluster, "existing"));
        let lines = member.launch();
        member.await_serving(&lines);
    }

    pub(crate) fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    pub(crate) fn member_mut(&mut self, i: usize) -> &mut Member {
        &mut self.members[i]
    }

    /// Indices of the members that run.
    pub(crate) fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_running())
            .collect()
    }

    /// The endpoints of every running member, comma-separated.
    pub(crate) fn endpoints(&self) -> String {
        self.running()
            .into_iter()
            .map(|i| self.members[i].endpoint())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs `etcdctl --endpoints=` every running member.
    pub(crate) fn etcdctl(&self, args: &[&str]) -> Output {
        run_etcdctl(&self.endpoints(), args)
    }

    /// Like [`Cluster::etcdctl`], asserting success; returns stdout.
    pub(crate) fn etcdctl_ok(&self, args: &[&str]) -> String {
        expect_success(&format!("etcdctl {args:?}"), &self.etcdctl(args))
    }

    /// The lines of `etcdctl member list` through every running member.
    pub(crate) fn member_list(&self) -> Vec<String> {
        self.etcdctl_ok(&["member", "list"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the members `among` all answer `endpoint status` with the
    /// same leader, one of them, in the same term; returns the leader's index.
    pub(crate) fn leader(&self, among: &[usize]) -> usize {
        eventually(
            LEADER_DEADLINE,
            &format!("members {among:?} to agree on a leader among them"),
            || {
                let statuses: Vec<Option<Status>> =
                    among.iter().map(|&i| self.members[i].status()).collect();
                agreed_leader(among, &statuses).ok_or_else(|| format!("statuses {statuses:#?}"))
            },
        )
    }
}

/// Polls `attempt` until it returns `Ok`, pausing [`POLL_INTERVAL`] between
/// tries; panics with the last `Err` if `timeout` passes first.
pub(crate) fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last: {last}"
            ),
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The index in `among` of the leader that every status in `statuses` (one
/// per member of `among`) names, in one term, if they all agree.
fn agreed_leader(among: &[usize], statuses: &[Option<Status>]) -> Option<usize> {
    let first = statuses.first().copied().flatten()?;
    let agreed = statuses.iter().all(|status| {
        status.is_some_and(|s| {
            s.leader != 0 && (s.leader, s.raft_term) == (first.leader, first.raft_term)
        })
    });
    if !agreed {
        return None;
    }
    let position = statuses
        .iter()
        .position(|status| status.is_some_and(|s| s.member_id == first.leader))?;
    Some(among[position])
}
