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

/// Copies `stream`'s lines into the log in the CRI format:
/// `2016-10-06T00:17:09.669794202Z stdout F text`.
fn copy_lines(
    stream: OwnedFd,
    name: &'static str,
    log: Arc<Mutex<std::fs::File>>,
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
                    let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = write!(file, "{stamp} {name} {tag} ");
                    let _ = file.write_all(&line);
                    let _ = file.write_all(b"\n");
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
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .map_err(io("open", &paths.log))?;
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
