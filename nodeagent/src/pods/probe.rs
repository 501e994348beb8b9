//! Probes: startup, readiness and liveness, as the kubelet runs them.
//!
//! ```text
//!  a running container with probes ─► one worker per (container, kind):
//!    wait initialDelaySeconds, then every periodSeconds: run (exec | httpGet | tcpSocket, timeoutSeconds)
//!    ─► Tracker (successThreshold / failureThreshold in a row) ─► on a change: sync the pod
//!  startup  unknown until it succeeds; readiness and liveness wait for it
//!  readiness false until it succeeds: the container's `ready`, the pod's Ready condition
//!  liveness  true until it fails: then the pod worker kills the container and restarts it
//! ```
//!
//! httpGet and tcpSocket connect from inside the pod's network namespace
//! (a socket made by a thread that joined it), so they reach the pod at its
//! own address or at `127.0.0.1`, with or without a pod network.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::runtime::Runtime;

/// The three kinds of probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Readiness,
    Liveness,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Startup, Kind::Readiness, Kind::Liveness];

    /// The container's probe of this kind.
    pub fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            Kind::Startup => container.startup_probe.as_ref(),
            Kind::Readiness => container.readiness_probe.as_ref(),
            Kind::Liveness => container.liveness_probe.as_ref(),
        }
    }

    /// As events name it: `Readiness probe failed: …`.
    pub fn title(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Readiness => "Readiness",
            Kind::Liveness => "Liveness",
        }
    }

    /// The result before the first probe: readiness starts failed,
    /// liveness passed, startup unknown.
    fn initial(self) -> Option<bool> {
        match self {
            Kind::Startup => None,
            Kind::Readiness => Some(false),
            Kind::Liveness => Some(true),
        }
    }
}

/// A probe's timing, with Kubernetes' defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(probe: &Probe) -> Self {
        let seconds = |value: Option<i32>, default: i32, least: i32| {
            Duration::from_secs(value.unwrap_or(default).max(least) as u64)
        };
        let count = |value: Option<i32>, default: i32| value.unwrap_or(default).max(1) as u32;
        Self {
            initial_delay: seconds(probe.initial_delay_seconds, 0, 0),
            period: seconds(probe.period_seconds, 10, 1),
            timeout: seconds(probe.timeout_seconds, 1, 1),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// Results in a row, and the verdict they give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    pub result: Option<bool>,
    successes: u32,
    failures: u32,
}

impl Tracker {
    pub fn new(kind: Kind) -> Self {
        Self {
            result: kind.initial(),
            successes: 0,
            failures: 0,
        }
    }

    /// Counts one probe; `true` when the verdict changed.
    pub fn record(&mut self, ok: bool, timing: &Timing) -> bool {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = if ok && self.successes >= timing.success_threshold {
            Some(true)
        } else if !ok && self.failures >= timing.failure_threshold {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.result != Some(v) => {
                self.result = Some(v);
                true
            }
            _ => false,
        }
    }
}

/// The port a probe names: a number, or the name of one of the
/// container's ports.
pub fn port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(name) => match name.parse::<i64>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| i64::from(p.container_port))
                .ok_or_else(|| format!("port {name:?} is not one of the container's ports"))?,
        },
    };
    u16::try_from(number)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid port {number}"))
}

/// The outcome of one probe: passed, or why not.
pub type Outcome = Result<(), String>;

/// Connects to `address` from inside the network namespace at `netns`
/// (none: this one), within `timeout`. A thread of its own joins the
/// namespace; the socket keeps it after the thread is gone.
pub async fn connect_in(
    netns: Option<&Path>,
    address: SocketAddr,
    timeout: Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    let netns = netns.map(Path::to_owned);
    let connected = tokio::task::spawn_blocking(move || -> std::io::Result<std::net::TcpStream> {
        if let Some(path) = netns {
            // A thread of the blocking pool: it must not keep the namespace.
            return std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        let file = std::fs::File::open(&path)?;
                        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(std::io::Error::from)?;
                        std::net::TcpStream::connect_timeout(&address, timeout)
                    })
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("the probe thread failed")))
            });
        }
        std::net::TcpStream::connect_timeout(&address, timeout)
    })
    .await
    .map_err(std::io::Error::other)??;
    connected.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(connected)
}

/// An HTTP GET over `stream`; passes on 200–399, as the kubelet judges.
pub async fn http_get(
    stream: tokio::net::TcpStream,
    host: &str,
    path: &str,
    headers: &[(String, String)],
) -> Outcome {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move { drop(connection.await) });
    let mut request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "kube-probe/1.32")
        .header(hyper::header::ACCEPT, "*/*");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(axum::body::Body::empty())
        .map_err(|e| format!("bad request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let code = response.status().as_u16();
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// What a probe or a lifecycle hook does: one of these.
#[derive(Clone, Copy, Debug)]
pub struct Handler<'a> {
    pub exec: Option<&'a ExecAction>,
    pub http_get: Option<&'a HTTPGetAction>,
    pub tcp_socket: Option<&'a TCPSocketAction>,
    /// A hook that only waits (`sleep`).
    pub sleep: Option<Duration>,
}

impl<'a> Handler<'a> {
    pub fn of_probe(probe: &'a Probe) -> Self {
        Self {
            exec: probe.exec.as_ref(),
            http_get: probe.http_get.as_ref(),
            tcp_socket: probe.tcp_socket.as_ref(),
            sleep: None,
        }
    }

    pub fn of_hook(hook: &'a LifecycleHandler) -> Self {
        Self {
            exec: hook.exec.as_ref(),
            http_get: hook.http_get.as_ref(),
            tcp_socket: hook.tcp_socket.as_ref(),
            sleep: hook
                .sleep
                .as_ref()
                .map(|s| Duration::from_secs(s.seconds.max(0) as u64)),
        }
    }
}

/// Where a handler reaches the pod: its network namespace and address.
#[derive(Clone, Debug, Default)]
pub struct PodNetwork {
    pub netns: Option<std::path::PathBuf>,
    pub ip: Option<String>,
}

/// Runs `handler` for the container `container` (runtime id `id`).
/// The caller bounds it in time.
pub async fn run_handler<R: Runtime>(
    runtime: &R,
    network: &PodNetwork,
    container: &Container,
    id: &str,
    handler: Handler<'_>,
) -> Outcome {
    if !runtime.runs_processes() {
        return Ok(());
    }
    if let Some(exec) = handler.exec {
        let command = exec.command.clone().unwrap_or_default();
        let mut process = runtime
            .exec_command(id, &command, false)
            .map_err(|e| e.to_string())?;
        process
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let output = process.output().await.map_err(|e| e.to_string())?;
        if output.status.success() {
            return Ok(());
        }
        let mut said = String::from_utf8_lossy(&output.stdout).into_owned();
        said.push_str(&String::from_utf8_lossy(&output.stderr));
        said.truncate(10 * 1024);
        return Err(match output.status.code() {
            Some(code) if said.trim().is_empty() => {
                format!("command {command:?} exited with {code}")
            }
            _ => said.trim_end().to_owned(),
        });
    }
    let address = |host: Option<&String>, port: &IntOrString| -> Result<SocketAddr, String> {
        let port = self::port(port, container)?;
        let host = host
            .filter(|h| !h.is_empty())
            .cloned()
            .or_else(|| network.ip.clone())
            .unwrap_or_else(|| "127.0.0.1".into());
        let ip: std::net::IpAddr = host
            .parse()
            .map_err(|_| format!("host {host:?} is not an IP address"))?;
        Ok(SocketAddr::new(ip, port))
    };
    let timeout = Duration::from_secs(10);
    if let Some(http) = handler.http_get {
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            return Err("HTTPS probes and hooks are not supported by this agent".into());
        }
        let target = address(http.host.as_ref(), &http.port)?;
        let stream = connect_in(network.netns.as_deref(), target, timeout)
            .await
            .map_err(|e| {
                format!(
                    "Get \"http://{target}{}\": {e}",
                    http.path.as_deref().unwrap_or("/")
                )
            })?;
        let headers: Vec<(String, String)> = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        let path = http
            .path
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        return http_get(stream, &target.to_string(), &path, &headers).await;
    }
    if let Some(tcp) = handler.tcp_socket {
        let target = address(tcp.host.as_ref(), &tcp.port)?;
        return connect_in(network.netns.as_deref(), target, timeout)
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp {target}: {e}"));
    }
    if let Some(pause) = handler.sleep {
        tokio::time::sleep(pause).await;
        return Ok(());
    }
    Err("the handler has no exec, httpGet or tcpSocket (gRPC is not supported)".into())
}

/// What probing needs from the pod workers: how to run one, and where to
/// report a change.
pub trait Probing: Send + Sync + 'static {
    /// Runs `kind` of `container` (runtime id `id`) once.
    fn probe(
        &self,
        pod: &str,
        container: &Container,
        id: &str,
        kind: Kind,
    ) -> impl Future<Output = Outcome> + Send;

    /// A verdict changed (or a probe failed): sync the pod.
    fn changed(&self, pod: &str, container: &Container, kind: Kind, failure: Option<String>);
}

/// A running container to probe.
#[derive(Clone, Debug)]
pub struct Running {
    /// Its runtime id.
    pub id: String,
    pub container: Container,
    pub started: chrono::DateTime<chrono::Utc>,
    /// What the pod's status says of it already (an agent restarted).
    pub reported: Reported,
}

/// A container's `started` and `ready` in the pod's reported status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reported {
    pub started: bool,
    pub ready: bool,
}

/// Probe results per running container, and the workers making them.
#[derive(Debug, Default)]
pub struct Prober {
    results: Mutex<HashMap<(String, Kind), Option<bool>>>,
    /// Per probe: the pod (key) it belongs to, and its worker.
    workers: Mutex<HashMap<(String, Kind), (String, tokio::task::AbortHandle)>>,
}

impl Prober {
    fn results(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Kind), Option<bool>>> {
        self.results.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn workers(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, Kind), (String, tokio::task::AbortHandle)>>
    {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The verdict of `kind` for container `id`; a container without
    /// such a probe passes.
    pub fn passed(&self, id: &str, container: &Container, kind: Kind) -> bool {
        if kind.of(container).is_none() {
            return true;
        }
        self.results()
            .get(&(id.to_owned(), kind))
            .copied()
            .flatten()
            .unwrap_or(kind == Kind::Liveness)
    }

    /// Whether container `id` failed its liveness or startup probe.
    pub fn unhealthy(&self, id: &str) -> Option<Kind> {
        let results = self.results();
        [Kind::Liveness, Kind::Startup]
            .into_iter()
            .find(|kind| results.get(&(id.to_owned(), *kind)) == Some(&Some(false)))
    }

    /// Keeps one worker per probe of each running container of `pod` in
    /// `running`, and none for its others.
    pub fn sync<P: Probing>(self: &Arc<Self>, probing: &Arc<P>, pod: &str, running: &[Running]) {
        let mut workers = self.workers();
        for Running {
            id,
            container,
            started,
            reported,
        } in running
        {
            for kind in Kind::ALL {
                let Some(probe) = kind.of(container) else {
                    continue;
                };
                let key = (id.clone(), kind);
                if workers.contains_key(&key) {
                    continue;
                }
                // A container the pod's status already calls started (or
                // ready) stays so until a probe says otherwise: a restarted
                // agent does not make its pods unready.
                let initial = match kind {
                    Kind::Startup if reported.started => Some(true),
                    Kind::Readiness if reported.ready => Some(true),
                    _ => kind.initial(),
                };
                self.results().insert(key.clone(), initial);
                let worker = tokio::spawn(self.clone().work(
                    probing.clone(),
                    pod.to_owned(),
                    container.clone(),
                    id.clone(),
                    kind,
                    Timing::of(probe),
                    *started,
                    initial,
                ));
                workers.insert(key, (pod.to_owned(), worker.abort_handle()));
            }
        }
        workers.retain(|(id, kind), (owner, worker)| {
            let keep = owner != pod
                || running
                    .iter()
                    .any(|r| &r.id == id && kind.of(&r.container).is_some());
            if !keep {
                worker.abort();
                self.results().remove(&(id.clone(), *kind));
            }
            keep
        });
    }

    #[allow(clippy::too_many_arguments, reason = "one worker's whole context")]
    async fn work<P: Probing>(
        self: Arc<Self>,
        probing: Arc<P>,
        pod: String,
        container: Container,
        id: String,
        kind: Kind,
        timing: Timing,
        started: chrono::DateTime<chrono::Utc>,
        initial: Option<bool>,
    ) {
        let since_start = (chrono::Utc::now() - started).to_std().unwrap_or_default();
        tokio::time::sleep(timing.initial_delay.saturating_sub(since_start)).await;
        let mut tracker = Tracker::new(kind);
        tracker.result = initial;
        let mut ticks = tokio::time::interval(timing.period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // Readiness and liveness wait for the startup probe.
            if kind != Kind::Startup && !self.passed(&id, &container, Kind::Startup) {
                continue;
            }
            // A startup probe that passed is done.
            if kind == Kind::Startup && tracker.result == Some(true) {
                return;
            }
            let outcome = match tokio::time::timeout(
                timing.timeout,
                probing.probe(&pod, &container, &id, kind),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => Err(format!(
                    "timeout: no answer within {}s",
                    timing.timeout.as_secs()
                )),
            };
            metrics::counter!("prober_probe_total",
                "probe_type" => kind.title(),
                "result" => if outcome.is_ok() { "successful" } else { "failed" })
            .increment(1);
            let changed = tracker.record(outcome.is_ok(), &timing);
            if changed {
                self.results().insert((id.clone(), kind), tracker.result);
            }
            if changed || outcome.is_err() {
                probing.changed(&pod, &container, kind, outcome.err());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(success: u32, failure: u32) -> Timing {
        Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn defaults_are_kubernetes_own() {
        let t = Timing::of(&Probe::default());
        assert_eq!(
            t,
            Timing {
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
    }

    #[test]
    fn verdicts_need_results_in_a_row() {
        let t = timing(2, 3);
        let mut readiness = Tracker::new(Kind::Readiness);
        assert_eq!(readiness.result, Some(false));
        assert!(!readiness.record(true, &t), "one success of two");
        assert!(readiness.record(true, &t));
        assert_eq!(readiness.result, Some(true));
        assert!(!readiness.record(false, &t));
        assert!(!readiness.record(false, &t));
        assert!(!readiness.record(true, &t), "the run of failures is broken");
        assert!(!readiness.record(false, &t));
        assert!(!readiness.record(false, &t));
        assert!(readiness.record(false, &t), "three failures in a row");
        assert_eq!(readiness.result, Some(false));

        let mut liveness = Tracker::new(Kind::Liveness);
        assert_eq!(liveness.result, Some(true));
        assert!(!liveness.record(true, &timing(1, 1)));
        assert!(liveness.record(false, &timing(1, 1)));
        assert_eq!(Tracker::new(Kind::Startup).result, None);
    }

    #[test]
    fn ports_are_numbers_or_names() {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "ports": [{"name": "http", "containerPort": 8080}]
        }))
        .unwrap();
        assert_eq!(port(&IntOrString::Int(80), &container), Ok(80));
        assert_eq!(
            port(&IntOrString::String("http".into()), &container),
            Ok(8080)
        );
        assert_eq!(port(&IntOrString::String("81".into()), &container), Ok(81));
        assert!(port(&IntOrString::String("grpc".into()), &container).is_err());
        assert!(port(&IntOrString::Int(0), &container).is_err());
        assert!(port(&IntOrString::Int(70000), &container).is_err());
    }

    #[tokio::test]
    async fn http_probes_judge_by_status_code() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buffer = vec![0u8; 1024];
                let n = socket.read(&mut buffer).await.unwrap();
                let request = String::from_utf8_lossy(&buffer[..n]).into_owned();
                let code = if request.starts_with("GET /healthy ") {
                    200
                } else {
                    503
                };
                assert!(request.contains("user-agent: kube-probe/1.32"), "{request}");
                let answer = format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n");
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let connect = || connect_in(None, address, Duration::from_secs(1));
        assert_eq!(
            http_get(connect().await.unwrap(), "x", "/healthy", &[]).await,
            Ok(())
        );
        assert_eq!(
            http_get(connect().await.unwrap(), "x", "/sick", &[]).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
    }
}
