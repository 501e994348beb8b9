//! The per-container shim and the sandbox holder: small, single-threaded
//! processes the agent starts, so that containers outlive the agent.
//!
//! ```text
//!  agent ──spawn──► keelson shim --id ID --bundle DIR --state DIR --log FILE   (new session)
//!                     libcontainer build (fork/clone here, never in the agent) ─► start
//!                     writes shim.json {pid}; copies stdout/stderr to FILE in the CRI log format
//!                     waitpid ─► writes exit.json {exit code, reason, finished}; removes the container
//!  agent ──spawn──► keelson pause --hostname NAME      (holds the pod's network, IPC and UTS namespaces)
//! ```
//!
//! libcontainer makes the container's init a child of the process that
//! builds it, which must reap it: the shim is that process. It runs before
//! any async runtime or thread exists (youki issue 3027), and starts its
//! log threads only after the container process is made.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{WaitStatus, waitpid};
use serde::{Deserialize, Serialize};

/// Why the shim failed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("libcontainer")]
    Container(#[from] libcontainer::error::LibcontainerError),
    #[error("system call")]
    Errno(#[from] nix::errno::Errno),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ShimError {
    let path = path.to_owned();
    move |source| ShimError::Io {
        action,
        path,
        source,
    }
}

/// What `shim.json` records once the container runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Started {
    pub pid: i32,
    pub started: DateTime<Utc>,
}

/// What `exit.json` records once it has exited.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exited {
    pub exit_code: i32,
    /// `Completed`, `Error` or `OOMKilled`.
    pub reason: String,
    pub finished: DateTime<Utc>,
}

/// Where the shim keeps a container's files.
#[derive(Clone, Debug)]
pub struct ShimPaths {
    pub id: String,
    pub bundle: PathBuf,
    /// libcontainer's state root, and where shim.json and exit.json go.
    pub state: PathBuf,
    pub log: PathBuf,
    pub rotation: LogRotation,
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), ShimError> {
    let temporary = path.with_extension("tmp");
    let bytes = serde_json::to_vec(value).map_err(|e| ShimError::Io {
        action: "encode",
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&temporary, bytes).map_err(io("write", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io("rename", path))
}

/// The container's log file, rotated by size as the kubelet rotates them
/// (`containerLogMaxSize`, `containerLogMaxFiles`): LOG is moved to LOG.1,
/// LOG.1 to LOG.2, …, the oldest dropped, and a new LOG begun.
#[derive(Debug)]
struct LogFile {
    file: std::fs::File,
    path: PathBuf,
    size: u64,
    rotation: LogRotation,
}

/// When and how far logs rotate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRotation {
    /// Bytes a log file grows to before it is rotated.
    pub max_size: u64,
    /// Files kept per container, the current one included (at least 2).
    pub max_files: u32,
}

impl Default for LogRotation {
    /// The kubelet's defaults: 10 MiB, 5 files.
    fn default() -> Self {
        Self {
            max_size: 10 << 20,
            max_files: 5,
        }
    }
}

impl LogFile {
    fn open(path: &Path, rotation: LogRotation) -> Result<Self, ShimError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io("open", path))?;
        let size = file.metadata().map_or(0, |m| m.len());
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
            rotation,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.file.write_all(bytes).is_ok() {
            self.size += bytes.len() as u64;
        }
        if self.size >= self.rotation.max_size {
            self.rotate();
        }
    }

    fn rotate(&mut self) {
        let keep = self.rotation.max_files.max(2) - 1;
        for n in (1..keep).rev() {
            let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        if std::fs::rename(&self.path, self.rotated(1)).is_err() {
            return;
        }
        if let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            self.file = file;
            self.size = 0;
        }
    }
}

/// Copies `stream`'s lines into the log in the CRI format:
/// `2016-10-06T00:17:09.669794202Z stdout F text`.
fn copy_lines(
    stream: OwnedFd,
    name: &'static str,
    log: Arc<Mutex<LogFile>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(std::fs::File::from(stream));
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let full = line.last() == Some(&b'\n');
                    if full {
                        line.pop();
                    }
                    let stamp = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
                    let tag = if full { "F" } else { "P" };
                    let mut entry = format!("{stamp} {name} {tag} ").into_bytes();
                    entry.extend_from_slice(&line);
                    entry.push(b'\n');
                    log.lock().unwrap_or_else(|p| p.into_inner()).write(&entry);
                }
            }
        }
    })
}

/// Whether the kernel's OOM killer killed something in the container's
/// cgroup (cgroup v1 `memory.oom_control`, v2 `memory.events`).
fn oom_killed(bundle: &Path) -> bool {
    let Ok(spec) = libcontainer::oci_spec::runtime::Spec::load(bundle.join("config.json")) else {
        return false;
    };
    let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) else {
        return false;
    };
    let relative = path.strip_prefix("/").unwrap_or(&path);
    let count = |file: PathBuf| {
        std::fs::read_to_string(file).ok().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
    };
    let v1 = Path::new("/sys/fs/cgroup/memory")
        .join(relative)
        .join("memory.oom_control");
    let v2 = Path::new("/sys/fs/cgroup")
        .join(relative)
        .join("memory.events");
    count(v1).or_else(|| count(v2)).is_some_and(|n| n > 0)
}

/// Runs one container to its end; returns its exit code.
pub fn run_shim(paths: &ShimPaths) -> Result<i32, ShimError> {
    // A session of its own: the agent's death or a signal to its group
    // does not reach the container.
    // Already a session leader is fine too.
    let _ = nix::unistd::setsid();
    std::fs::create_dir_all(&paths.state).map_err(io("create", &paths.state))?;
    let log = LogFile::open(&paths.log, paths.rotation)?;
    let (out_read, out_write) = nix::unistd::pipe()?;
    let (err_read, err_write) = nix::unistd::pipe()?;
    let mut container = ContainerBuilder::new(paths.id.clone(), SyscallType::default())
        .with_root_path(paths.state.join("libcontainer"))?
        .with_stdout(out_write)
        .with_stderr(err_write)
        .as_init(&paths.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()?;
    container.start()?;
    let started = Utc::now();
    let pid = container.pid().ok_or(nix::errno::Errno::ESRCH)?;
    write_json(
        &paths.state.join("shim.json"),
        &Started {
            pid: pid.as_raw(),
            started,
        },
    )?;
    // The container exists: threads are safe now.
    let log = Arc::new(Mutex::new(log));
    let readers = [
        copy_lines(out_read, "stdout", log.clone()),
        copy_lines(err_read, "stderr", log),
    ];
    let exit_code = loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, signal, _)) => break 128 + signal as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(error) => return Err(error.into()),
        }
    };
    let finished = Utc::now();
    for reader in readers {
        drop(reader.join());
    }
    let reason = if oom_killed(&paths.bundle) {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    write_json(
        &paths.state.join("exit.json"),
        &Exited {
            exit_code,
            reason: reason.into(),
            finished,
        },
    )?;
    drop(container.delete(true));
    Ok(exit_code)
}

/// Holds a pod's network, IPC and UTS namespaces until killed: unshares
/// them, names the host, brings loopback up, says `ready`, and waits.
pub fn run_pause(hostname: &str) -> Result<(), ShimError> {
    use nix::sched::{CloneFlags, unshare};
    // Already a session leader is fine too.
    let _ = nix::unistd::setsid();
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)?;
    nix::unistd::sethostname(hostname)?;
    let status = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(io("run", Path::new("ip")))?;
    if !status.success() {
        return Err(ShimError::Io {
            action: "bring loopback up with",
            path: PathBuf::from("ip"),
            source: std::io::Error::other(format!("{status}")),
        });
    }
    println!("ready");
    drop(std::io::stdout().flush());
    loop {
        nix::unistd::pause();
    }
}

/// Runs `command` inside a running container and returns its exit code
/// (`128 + signal` when a signal ended it, 126 when it could not start,
/// 127 when it does not exist). The command inherits this process's
/// standard streams; with `tty`, standard input is a terminal that becomes
/// the command's controlling terminal.
///
/// libcontainer makes the process a child of the caller, which reaps it:
/// like the shim, this runs before any thread exists.
pub fn run_exec(
    state: &Path,
    bundle: Option<&Path>,
    id: &str,
    command: &[String],
    tty: bool,
) -> Result<i32, ShimError> {
    // The command runs as the container's own user.
    let user = bundle
        .and_then(|b| libcontainer::oci_spec::runtime::Spec::load(b.join("config.json")).ok())
        .and_then(|spec| spec.process().as_ref().map(|p| p.user().clone()));
    // A session of its own, whose controlling terminal is the pty.
    let _ = nix::unistd::setsid();
    if tty {
        set_controlling_terminal()?;
    }
    let built = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(state.join("libcontainer"))
        .map(|b| {
            let mut tenant = b
                .as_tenant()
                .with_container_args(command.to_vec())
                .with_detach(false);
            if let Some(user) = &user {
                tenant = tenant
                    .with_user(Some(user.uid()))
                    .with_group(Some(user.gid()))
                    .with_additional_gids(user.additional_gids().clone().unwrap_or_default());
            }
            tenant.build()
        });
    let pid = match built {
        Ok(Ok(pid)) => pid,
        Ok(Err(error)) | Err(error) => {
            let text = keelson_control::runtime::chain(&error);
            let missing = text.contains("No such file") || text.contains("not found");
            eprintln!(
                "exec failed: unable to start {:?} in the container: {text}",
                command.first().map_or("", String::as_str)
            );
            return Ok(if missing { 127 } else { 126 });
        }
    };
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(error) => return Err(error.into()),
        }
    }
}

/// Makes standard input (a pty) this session's controlling terminal: a
/// session leader without one acquires the first terminal it opens.
fn set_controlling_terminal() -> Result<(), ShimError> {
    let path = Path::new("/proc/self/fd/0");
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("open the terminal", path))?;
    drop(terminal);
    Ok(())
}
