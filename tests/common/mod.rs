//! Harness for driving a server with the real `etcdctl` (v3 API).
//!
//! [`Server::start`] launches a fresh single-member server in its own temporary
//! data directory on its own ports. By default that is Keelson; when
//! `KEELSON_TEST_AGAINST_ETCD` names an etcd binary, real etcd is started
//! instead, so the expected outputs in the tests can be checked against etcd
//! itself. The server's stderr is captured and printed if the test panics.
//!
//! Besides one-shot `etcdctl` invocations, [`Server::spawn_etcdctl`] runs a
//! long-lived `etcdctl` (`watch`, `lease keep-alive`) whose stdout lines are
//! read with a deadline. [`Json`] is a minimal JSON reader for `-w json`
//! output, so that the tests need no JSON dependency.
//!
//! [`Server::client`] connects an `etcd-client` instead, for tests written
//! against the Rust client, and [`Server::kill`] followed by
//! [`Server::restart`] crashes the server and brings it back on the same data
//! directory and ports.

use std::env;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::ops::Index;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub(crate) mod cluster;
pub(crate) mod images;
pub(crate) mod netns;
pub(crate) mod nodes;
pub(crate) mod profile;
pub(crate) mod registry;

/// Names the etcd binary to test against instead of Keelson.
const ETCD_ENV: &str = "KEELSON_TEST_AGAINST_ETCD";
/// How long a server may take to come up.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long a background `etcdctl` may take to print its next line.
const LINE_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between two checks of a polled condition.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Timeout of each `etcdctl` request.
const COMMAND_TIMEOUT: &str = "--command-timeout=5s";
/// How long an `etcd-client` request may take before it fails.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `etcd-client` may take to connect.
const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The Keelson binary under test.
fn keelson_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keelson"))
}

/// The `etcdctl` binary, `etcdctl` from `PATH` unless `ETCDCTL_BIN` says otherwise.
fn etcdctl_bin() -> OsString {
    env::var_os("ETCDCTL_BIN").unwrap_or_else(|| "etcdctl".into())
}

/// Which implementation the tests are running against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Keelson,
    Etcd,
}

/// Lines read from a child's pipe, kept for diagnostics.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<String>>);

impl Captured {
    fn push(&self, line: &str) {
        let mut text = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        text.push_str(line);
        text.push('\n');
    }

    fn contents(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Reads `reader` to its end on a thread, recording every line in `log` and
/// forwarding it to `lines` for as long as somebody listens there.
fn pump_lines(
    reader: impl Read + Send + 'static,
    log: Captured,
    lines: Option<Sender<String>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut raw = Vec::new();
        while matches!(reader.read_until(b'\n', &mut raw), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&raw);
            let line = line.strip_suffix('\n').unwrap_or(&line);
            log.push(line);
            if let Some(tx) = &lines {
                let _ = tx.send(line.to_owned());
            }
            raw.clear();
        }
    })
}

/// Receives the next line unless `deadline` passes or the sender is gone first.
fn recv_before(lines: &Receiver<String>, deadline: Instant) -> Option<String> {
    lines
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .ok()
}

/// Polls `condition` until it holds, panicking if `timeout` passes first.
pub(crate) fn wait_until(timeout: Duration, what: &str, condition: impl FnMut() -> bool) {
    assert!(
        holds_within(timeout, condition),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// Whether `condition` comes to hold before `timeout` passes (for callers
/// that explain a timeout themselves).
pub(crate) fn holds_within(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
    true
}

/// `N` distinct ports on 127.0.0.1 that were free a moment ago.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [TcpListener; N] =
        std::array::from_fn(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"));
    listeners.map(|listener| listener.local_addr().expect("local address").port())
}

/// The address logged after `address=` on a line that contains `marker`.
fn logged_address(line: &str, marker: &str) -> Option<String> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let rest = &rest[rest.find("address=")? + "address=".len()..];
    let address = rest.split_whitespace().next()?.trim_matches('"');
    Some(address.to_owned())
}

/// Standard output of a finished command, as text.
pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Standard error of a finished command, as text.
pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The command that runs Keelson on `data_dir`, serving clients on `client_url`.
fn keelson_command(data_dir: &Path, client_url: &str) -> Command {
    let mut command = Command::new(keelson_bin());
    command
        .args(["server", "--name", "default", "--data-dir"])
        .arg(data_dir)
        .args(["--listen-client-urls", client_url])
        .args(["--advertise-client-urls", client_url])
        .args(["--listen-metrics-urls", "http://127.0.0.1:0"])
        .args(["--experimental-watch-progress-notify-interval", "1s"])
        // The store alone: the Kubernetes API would write keys of its own.
        .args(["--listen-api-url", "none"]);
    command
}

/// Launches `command` with its stderr recorded in `log` and forwarded line by
/// line to the returned receiver.
fn launch(command: &mut Command, log: &Captured) -> (Child, Receiver<String>) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {command:?}: {err}"));
    let (tx, lines) = mpsc::channel();
    pump_lines(
        child.stderr.take().expect("piped stderr"),
        log.clone(),
        Some(tx),
    );
    (child, lines)
}

/// A running single-member server, killed and reaped on drop.
pub(crate) struct Server {
    target: Target,
    /// Launches the server again on the same data directory and ports.
    command: Command,
    child: Child,
    endpoint: String,
    log: Captured,
    data_dir: TempDir,
}

impl Server {
    /// Starts a fresh server and waits until it serves clients.
    pub(crate) fn start() -> Server {
        let data_dir = tempfile::tempdir().expect("create a data directory");
        match env::var_os(ETCD_ENV) {
            Some(etcd) => Server::start_etcd(PathBuf::from(etcd), data_dir),
            None => Server::start_keelson(data_dir),
        }
    }

    fn start_keelson(data_dir: TempDir) -> Server {
        let command = keelson_command(data_dir.path(), "http://127.0.0.1:0");
        let (mut server, lines) = Server::spawn(Target::Keelson, command, data_dir);
        server.endpoint = server.await_keelson(&lines);
        // A restart must come back on the port that was picked now.
        let client_url = format!("http://{}", server.endpoint);
        server.command = keelson_command(server.data_dir.path(), &client_url);
        server
    }

    /// Waits until Keelson logs its client and metrics addresses; returns the
    /// client address.
    fn await_keelson(&mut self, lines: &Receiver<String>) -> String {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let (mut client, mut metrics) = (None, None);
        while client.is_none() || metrics.is_none() {
            let Some(line) = recv_before(lines, deadline) else {
                panic!(
                    "keelson did not log its client and metrics addresses \
                     (deadline {STARTUP_DEADLINE:?}, exit status {:?})",
                    self.child.try_wait()
                );
            };
            client = client.or_else(|| logged_address(&line, "serving client traffic"));
            metrics = metrics.or_else(|| logged_address(&line, "serving metrics"));
        }
        client.expect("client address")
    }

    fn start_etcd(etcd: PathBuf, data_dir: TempDir) -> Server {
        let [client_port, peer_port] = free_ports();
        let [client_url, peer_url] =
            [client_port, peer_port].map(|port| format!("http://127.0.0.1:{port}"));
        let mut command = Command::new(etcd);
        command
            .args(["--name", "default", "--data-dir"])
            .arg(data_dir.path())
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--experimental-watch-progress-notify-interval", "1s"]);
        let (mut server, _lines) = Server::spawn(Target::Etcd, command, data_dir);
        server.endpoint = format!("127.0.0.1:{client_port}");
        server.await_etcd();
        server
    }

    /// Waits until etcd reports itself healthy.
    fn await_etcd(&mut self) {
        wait_until(STARTUP_DEADLINE, "etcd to report healthy", || {
            let exited = self.child.try_wait().expect("poll etcd");
            assert!(exited.is_none(), "etcd exited during startup: {exited:?}");
            let health = [
                "endpoint",
                "health",
                "--dial-timeout=1s",
                "--command-timeout=1s",
            ];
            self.etcdctl(&health).status.success()
        });
    }

    /// Spawns the server with its stderr captured and forwarded line by line.
    fn spawn(
        target: Target,
        mut command: Command,
        data_dir: TempDir,
    ) -> (Server, Receiver<String>) {
        let log = Captured::default();
        let (child, lines) = launch(&mut command, &log);
        let server = Server {
            target,
            command,
            child,
            endpoint: String::new(),
            log,
            data_dir,
        };
        (server, lines)
    }

    /// The implementation being tested.
    pub(crate) fn target(&self) -> Target {
        self.target
    }

    /// The client endpoint, `127.0.0.1:PORT`.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// An `etcdctl` command aimed at this server; `args` follow the global flags.
    fn etcdctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(etcdctl_bin());
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg(COMMAND_TIMEOUT)
            .args(args);
        command
    }

    /// Runs `etcdctl` with no standard input and returns what it did.
    pub(crate) fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_command(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("run etcdctl {args:?}: {err}"))
    }

    /// Runs `etcdctl` with `input` as its standard input.
    pub(crate) fn etcdctl_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .etcdctl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("spawn etcdctl {args:?}: {err}"));
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(input.as_bytes())
            .expect("write etcdctl stdin");
        drop(stdin);
        child.wait_with_output().expect("wait for etcdctl")
    }

    /// Runs `etcdctl`, asserts that it succeeded and returns its stdout.
    pub(crate) fn etcdctl_ok(&self, args: &[&str]) -> String {
        expect_success(&format!("etcdctl {args:?}"), &self.etcdctl(args))
    }

    /// Like [`Server::etcdctl_ok`], with `input` as standard input.
    pub(crate) fn etcdctl_stdin_ok(&self, args: &[&str], input: &str) -> String {
        expect_success(
            &format!("etcdctl {args:?}"),
            &self.etcdctl_stdin(args, input),
        )
    }

    /// Runs `etcdctl`, asserts that it failed and returns its stderr.
    pub(crate) fn etcdctl_err(&self, args: &[&str]) -> String {
        let output = self.etcdctl(args);
        assert!(
            !output.status.success(),
            "etcdctl {args:?} unexpectedly succeeded\nstdout:\n{}",
            stdout(&output)
        );
        stderr(&output)
    }

    /// Starts a long-running `etcdctl` whose stdout lines can be awaited.
    pub(crate) fn spawn_etcdctl(&self, args: &[&str]) -> Background {
        spawn_background(self.etcdctl_command(args), format!("etcdctl {args:?}"))
    }
}

/// Starts `command` in the background; its stdout lines can be awaited.
pub(crate) fn spawn_background(mut command: Command, description: String) -> Background {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {description}: {err}"));
    let (tx, lines) = mpsc::channel();
    let (stdout, stderr) = (Captured::default(), Captured::default());
    pump_lines(
        child.stdout.take().expect("piped stdout"),
        stdout.clone(),
        Some(tx),
    );
    let stderr_pump = pump_lines(
        child.stderr.take().expect("piped stderr"),
        stderr.clone(),
        None,
    );
    Background {
        description,
        stdin: child.stdin.take(),
        child,
        lines,
        stdout,
        stderr,
        stderr_pump: Some(stderr_pump),
    }
}

/// Not every test crate crashes servers or uses `etcd-client`.
#[allow(dead_code, reason = "each test crate uses a part of the harness")]
impl Server {
    /// Connects an `etcd-client` to the server. Each request fails after
    /// [`CLIENT_REQUEST_TIMEOUT`] rather than hanging on a dead server.
    pub(crate) async fn client(&self) -> etcd_client::Client {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(CLIENT_CONNECT_TIMEOUT)
            .with_timeout(CLIENT_REQUEST_TIMEOUT);
        etcd_client::Client::connect([self.endpoint()], Some(options))
            .await
            .unwrap_or_else(|err| panic!("connect etcd-client to {}: {err}", self.endpoint))
    }

    /// Kills the server with SIGKILL, as a crash would, and reaps it. Its data
    /// directory stays for [`Server::restart`].
    pub(crate) fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the server");
        let status = self.child.wait().expect("reap the server");
        self.log.push(&format!("----- killed: {status} -----"));
    }

    /// Starts the server again after [`Server::kill`], on the same data
    /// directory and ports, and waits until it serves clients.
    pub(crate) fn restart(&mut self) {
        let exited = self.child.try_wait().expect("poll the server");
        assert!(
            exited.is_some(),
            "restart() needs a stopped server: call kill() first"
        );
        self.log.push("----- restarting -----");
        let (child, lines) = launch(&mut self.command, &self.log);
        self.child = child;
        match self.target {
            Target::Keelson => {
                let client = self.await_keelson(&lines);
                assert_eq!(
                    client, self.endpoint,
                    "keelson came back on another address"
                );
            }
            Target::Etcd => self.await_etcd(),
        }
    }
}

fn expect_success(what: &str, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "----- {:?} server log -----\n{}",
                self.target,
                self.log.contents()
            );
        }
    }
}

/// A long-running `etcdctl`, killed and reaped on drop. Its stdin stays open
/// (interactive commands can be sent) until it is dropped.
pub(crate) struct Background {
    description: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stdout: Captured,
    stderr: Captured,
    stderr_pump: Option<JoinHandle<()>>,
}

impl Background {
    /// The next line of stdout, waiting at most [`LINE_DEADLINE`] for it.
    pub(crate) fn next_line(&self) -> String {
        recv_before(&self.lines, Instant::now() + LINE_DEADLINE).unwrap_or_else(|| {
            panic!(
                "{} printed no further line within {LINE_DEADLINE:?}",
                self.description
            )
        })
    }

    /// Asserts that the next stdout lines are exactly `expected`.
    pub(crate) fn expect_lines(&self, expected: &[&str]) {
        let actual: Vec<String> = expected.iter().map(|_| self.next_line()).collect();
        assert_eq!(actual, expected, "output of {}", self.description);
    }

    /// Writes one line to the process's standard input.
    pub(crate) fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .expect("write to etcdctl stdin");
    }

    /// Asks the process to stop (SIGTERM), as Ctrl-C or a service manager would.
    #[allow(dead_code, reason = "not every test stops a process gently")]
    pub(crate) fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.description);
    }

    /// Waits (at most [`LINE_DEADLINE`]) for the process to exit by itself;
    /// returns its exit status and everything it wrote to stderr.
    pub(crate) fn wait_for_exit(&mut self) -> (ExitStatus, String) {
        let mut status = None;
        wait_until(
            LINE_DEADLINE,
            &format!("{} to exit", self.description),
            || {
                status = self.child.try_wait().expect("poll etcdctl");
                status.is_some()
            },
        );
        if let Some(pump) = self.stderr_pump.take() {
            pump.join().expect("stderr reader thread");
        }
        (status.expect("exit status"), self.stderr.contents())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "----- {} -----\nstdout:\n{}stderr:\n{}",
                self.description,
                self.stdout.contents(),
                self.stderr.contents()
            );
        }
    }
}

/// A parsed JSON value; numbers keep their text so 64-bit IDs stay exact.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// What indexing yields for a missing member or element.
static MISSING: Json = Json::Null;

impl Json {
    /// Parses a complete JSON document, panicking on malformed input.
    pub(crate) fn parse(text: &str) -> Json {
        let mut parser = JsonParser {
            text: text.as_bytes(),
            pos: 0,
        };
        let value = parser.value();
        parser.skip_whitespace();
        assert_eq!(
            parser.pos,
            text.len(),
            "trailing data after JSON value in {text:?}"
        );
        value
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    pub(crate) fn as_i64(&self) -> i64 {
        self.number()
            .parse()
            .unwrap_or_else(|err| panic!("{self:?} as i64: {err}"))
    }

    pub(crate) fn as_u64(&self) -> u64 {
        self.number()
            .parse()
            .unwrap_or_else(|err| panic!("{self:?} as u64: {err}"))
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Json::String(text) => text,
            other => panic!("expected a JSON string, found {other:?}"),
        }
    }

    pub(crate) fn as_bool(&self) -> bool {
        match self {
            Json::Bool(value) => *value,
            other => panic!("expected a JSON boolean, found {other:?}"),
        }
    }

    pub(crate) fn as_array(&self) -> &[Json] {
        match self {
            Json::Array(items) => items,
            other => panic!("expected a JSON array, found {other:?}"),
        }
    }

    fn number(&self) -> &str {
        match self {
            Json::Number(text) => text,
            other => panic!("expected a JSON number, found {other:?}"),
        }
    }
}

impl Index<&str> for Json {
    type Output = Json;

    fn index(&self, key: &str) -> &Json {
        match self {
            Json::Object(members) => members
                .iter()
                .find(|(k, _)| k == key)
                .map_or(&MISSING, |(_, v)| v),
            _ => &MISSING,
        }
    }
}

impl Index<usize> for Json {
    type Output = Json;

    fn index(&self, index: usize) -> &Json {
        match self {
            Json::Array(items) => items.get(index).unwrap_or(&MISSING),
            _ => &MISSING,
        }
    }
}

struct JsonParser<'a> {
    text: &'a [u8],
    pos: usize,
}

impl JsonParser<'_> {
    fn skip_whitespace(&mut self) {
        while self.text.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> u8 {
        self.skip_whitespace();
        *self
            .text
            .get(self.pos)
            .unwrap_or_else(|| panic!("unexpected end of JSON"))
    }

    fn expect(&mut self, byte: u8) {
        let found = self.peek();
        assert_eq!(
            found as char, byte as char,
            "JSON syntax error at byte {}",
            self.pos
        );
        self.pos += 1;
    }

    fn literal(&mut self, word: &str, value: Json) -> Json {
        assert!(
            self.text[self.pos..].starts_with(word.as_bytes()),
            "bad JSON literal at byte {}",
            self.pos
        );
        self.pos += word.len();
        value
    }

    fn value(&mut self) -> Json {
        match self.peek() {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => Json::String(self.string()),
            b't' => self.literal("true", Json::Bool(true)),
            b'f' => self.literal("false", Json::Bool(false)),
            b'n' => self.literal("null", Json::Null),
            _ => self.number(),
        }
    }

    /// Parses the comma-separated items of an array or object up to `close`.
    fn items<T>(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let mut items = Vec::new();
        if self.peek() == close {
            self.pos += 1;
            return items;
        }
        loop {
            items.push(item(self));
            if self.peek() == close {
                self.pos += 1;
                return items;
            }
            self.expect(b',');
        }
    }

    fn object(&mut self) -> Json {
        self.expect(b'{');
        Json::Object(self.items(b'}', |parser| {
            parser.skip_whitespace();
            let key = parser.string();
            parser.expect(b':');
            (key, parser.value())
        }))
    }

    fn array(&mut self) -> Json {
        self.expect(b'[');
        Json::Array(self.items(b']', Self::value))
    }

    fn number(&mut self) -> Json {
        let start = self.pos;
        while self
            .text
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(b))
        {
            self.pos += 1;
        }
        assert!(self.pos > start, "JSON syntax error at byte {start}");
        Json::Number(String::from_utf8_lossy(&self.text[start..self.pos]).into_owned())
    }

    fn string(&mut self) -> String {
        self.expect(b'"');
        let mut bytes = Vec::new();
        loop {
            let byte = *self.text.get(self.pos).expect("unterminated JSON string");
            self.pos += 1;
            match byte {
                b'"' => return String::from_utf8_lossy(&bytes).into_owned(),
                b'\\' => {
                    let escape = self.text[self.pos];
                    self.pos += 1;
                    let decoded = match escape {
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape(),
                        other => other as char,
                    };
                    bytes.extend_from_slice(decoded.encode_utf8(&mut [0; 4]).as_bytes());
                }
                _ => bytes.push(byte),
            }
        }
    }

    /// Decodes the four hex digits of a `\u` escape (lone surrogates become U+FFFD).
    fn unicode_escape(&mut self) -> char {
        let digits = std::str::from_utf8(&self.text[self.pos..self.pos + 4]).expect("\\u escape");
        self.pos += 4;
        let code = u32::from_str_radix(digits, 16).expect("\\u escape digits");
        char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
    }
}

/// A process a test starts, its stderr captured (and printed if the test
/// panics); killed and reaped on drop.
#[allow(dead_code, reason = "each test crate uses a part of the harness")]
pub(crate) struct Spawned {
    description: String,
    child: Child,
    log: Captured,
    lines: Receiver<String>,
}

#[allow(dead_code, reason = "each test crate uses a part of the harness")]
impl Spawned {
    pub(crate) fn start(mut command: Command, description: &str) -> Spawned {
        let log = Captured::default();
        let (child, lines) = launch(&mut command, &log);
        Spawned {
            description: description.to_owned(),
            child,
            log,
            lines,
        }
    }

    /// Waits (at most [`STARTUP_DEADLINE`]) for a line of stderr containing `text`.
    pub(crate) fn await_line(&self, text: &str) -> String {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            let line = recv_before(&self.lines, deadline)
                .unwrap_or_else(|| panic!("{} did not log {text:?}", self.description));
            if line.contains(text) {
                return line;
            }
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("----- {} -----\n{}", self.description, self.log.contents());
        }
    }
}

/// Free ports on loopback, for a test to hand to processes it starts.
#[allow(dead_code, reason = "each test crate uses a part of the harness")]
pub(crate) fn free_local_ports<const N: usize>() -> [u16; N] {
    free_ports()
}
