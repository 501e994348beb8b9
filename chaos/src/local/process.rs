//! A profile's processes: started detached (their own session, so they
//! outlive the command that started them), each in its namespace, logging
//! to `logs/NAME.log`, its pid in `run/NAME.pid`.
//!
//! A pid file is only believed while that process's command line still
//! names the profile's directory (pids are reused).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::LocalError;

fn io(what: String) -> impl FnOnce(std::io::Error) -> LocalError {
    move |source| LocalError::Io { what, source }
}

/// Where a profile keeps its pid files and logs.
#[derive(Clone, Debug)]
pub struct Processes {
    /// The profile's directory: every process's command line names it.
    root: PathBuf,
}

impl Processes {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.root.join("run").join(format!("{name}.pid"))
    }

    /// The log of component `name`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.root.join("logs").join(format!("{name}.log"))
    }

    /// Starts `program ARGS` as component `name`, in network namespace
    /// `netns` (the host's when `None`). Its pid.
    pub fn spawn(
        &self,
        name: &str,
        netns: Option<&str>,
        program: &Path,
        args: &[OsString],
    ) -> Result<i32, LocalError> {
        for dir in ["run", "logs"] {
            let dir = self.root.join(dir);
            std::fs::create_dir_all(&dir)
                .map_err(io(format!("cannot create {}", dir.display())))?;
        }
        let log_path = self.log(name);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("cannot open {}", log_path.display())))?;
        use std::io::Write;
        writeln!(log, "----- starting {name} -----")
            .map_err(io(format!("cannot write {}", log_path.display())))?;
        let stderr = log
            .try_clone()
            .map_err(io(format!("cannot open {}", log_path.display())))?;
        // setsid: a session of its own, so neither the terminal's signals nor
        // the starter's exit reach it. nsenter, not `ip netns exec`: that one
        // also remounts /sys, which hides the cgroup hierarchies.
        let mut command = std::process::Command::new("setsid");
        if let Some(netns) = netns {
            command
                .arg("nsenter")
                .arg(format!("--net=/run/netns/{netns}"));
        }
        command
            .arg(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(stderr);
        let child = command
            .spawn()
            .map_err(io(format!("cannot start {name}")))?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let pid_file = self.pid_file(name);
        std::fs::write(&pid_file, format!("{pid}\n"))
            .map_err(io(format!("cannot write {}", pid_file.display())))?;
        Ok(pid)
    }

    /// The pid of component `name` while it runs.
    pub fn pid(&self, name: &str) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file(name))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        self.is_ours(pid).then_some(pid)
    }

    fn is_ours(&self, pid: i32) -> bool {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
        // The state follows the parenthesised command name.
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        !zombie && mentions(&cmdline, &self.root)
    }

    /// Stops component `name`: SIGTERM, then SIGKILL after `grace`. Whether
    /// it was running.
    pub async fn stop(&self, name: &str, grace: Duration) -> bool {
        let Some(pid) = self.pid(name) else {
            let _ = std::fs::remove_file(self.pid_file(name));
            return false;
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        if !self.gone(pid, grace).await {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            self.gone(pid, Duration::from_secs(5)).await;
        }
        let _ = std::fs::remove_file(self.pid_file(name));
        true
    }

    /// Kills component `name` at once (SIGKILL), as a crash would.
    pub async fn kill(&self, name: &str) -> bool {
        let Some(pid) = self.pid(name) else {
            return false;
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        self.gone(pid, Duration::from_secs(5)).await;
        let _ = std::fs::remove_file(self.pid_file(name));
        true
    }

    async fn gone(&self, pid: i32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.is_ours(pid) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Every process whose command line names `dir` (what a profile or a
    /// node left behind: agents, shims, pause processes, servers), and
    /// every container process an agent data directory under `dir`
    /// recorded (their command lines are the image's and name nothing).
    pub fn under(dir: &Path) -> Vec<i32> {
        let mut found = containers_under(dir);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if mentions(&cmdline, dir) {
                found.push(pid);
            }
        }
        found
    }

    /// SIGKILLs every process under `dir`, and waits for them to go.
    pub async fn kill_under(dir: &Path) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = Self::under(dir);
            if left.is_empty() || Instant::now() >= deadline {
                return;
            }
            for pid in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether a command line (arguments separated by NULs) names `dir` or a
/// path under it: `/p/nodes/a-m02` is not under `/p/nodes/a`.
/// Pids of the live containers recorded under `dir` by agents' runtimes
/// (`runtime/containers/ID/state/shim.json`, looked for up to three levels
/// down), kept only while the pid is still in a pod cgroup.
fn containers_under(dir: &Path) -> Vec<i32> {
    let mut runtimes = Vec::new();
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for parent in level {
            for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if entry.file_name() == "runtime" {
                    runtimes.push(entry.path());
                } else {
                    next.push(entry.path());
                }
            }
        }
        level = next;
    }
    let mut pids = Vec::new();
    for runtime in runtimes {
        let containers = runtime.join("containers");
        for entry in std::fs::read_dir(containers)
            .into_iter()
            .flatten()
            .flatten()
        {
            let shim = entry.path().join("state").join("shim.json");
            let Ok(text) = std::fs::read(&shim) else {
                continue;
            };
            let pid = serde_json::from_slice::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("pid").and_then(serde_json::Value::as_i64))
                .and_then(|pid| i32::try_from(pid).ok());
            let Some(pid) = pid.filter(|&pid| pid > 1) else {
                continue;
            };
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if cgroup.contains("/keelson/pod") {
                pids.push(pid);
            }
        }
    }
    pids
}

fn mentions(cmdline: &[u8], dir: &Path) -> bool {
    let text = String::from_utf8_lossy(cmdline);
    let needle = dir.to_string_lossy();
    let needle = needle.trim_end_matches('/');
    if needle.is_empty() {
        return false;
    }
    text.match_indices(needle).any(|(at, _)| {
        matches!(
            text[at + needle.len()..].chars().next(),
            None | Some('\0' | '/')
        )
    })
}

/// Resident memory of process `pid` (`VmRSS`), in bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Mount points under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_named_whole() {
        let dir = Path::new("/p/nodes/a");
        assert!(mentions(b"keelson\0agent\0--data-dir\0/p/nodes/a\0", dir));
        assert!(mentions(b"keelson\0shim\0--bundle\0/p/nodes/a/pods/x", dir));
        assert!(mentions(b"keelson\0--data-dir=/p/nodes/a", dir));
        assert!(!mentions(
            b"keelson\0agent\0--data-dir\0/p/nodes/a-m02\0",
            dir
        ));
        assert!(!mentions(b"", dir));
    }
}
