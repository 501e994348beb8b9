//! What `keelson up` needs from the machine, each missing piece with what
//! to do about it.

use std::path::Path;

use super::LocalError;
use super::command::run;

/// Where the CNI plugins are looked for (the agent's `--cni-bin-dir`).
pub const CNI_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];

/// One missing prerequisite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub what: String,
    /// The Debian package that provides it, when one does.
    pub package: Option<&'static str>,
    /// What to do, in a few words, when no package does.
    pub fix: &'static str,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.package {
            Some(package) => write!(f, "{} (apt-get install {package})", self.what),
            None => write!(f, "{} ({})", self.what, self.fix),
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            std::fs::metadata(dir.join(program)).is_ok_and(|m| {
                std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// Everything missing on this machine (empty when `keelson up` can run).
pub fn check() -> Vec<Missing> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push(Missing {
            what: "root: namespaces, bridges, routes and containers need it".into(),
            package: None,
            fix: "run it with sudo",
        });
    }
    for (program, package) in [
        ("ip", Some("iproute2")),
        ("nsenter", Some("util-linux")),
        ("setsid", Some("util-linux")),
        ("sysctl", Some("procps")),
        ("iptables", Some("iptables")),
        ("iptables-restore", Some("iptables")),
        ("kubectl", None),
    ] {
        if !on_path(program) {
            missing.push(Missing {
                what: format!("the {program} command"),
                package,
                fix: "install kubectl 1.32 from kubernetes.io",
            });
        }
    }
    for plugin in ["bridge", "host-local", "loopback", "portmap"] {
        if !CNI_DIRS
            .iter()
            .any(|dir| Path::new(dir).join(plugin).exists())
        {
            missing.push(Missing {
                what: format!("the {plugin} CNI plugin (in {})", CNI_DIRS.join(" or ")),
                package: Some("containernetworking-plugins"),
                fix: "",
            });
        }
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.contains("overlay") {
        missing.push(Missing {
            what: "the overlay filesystem in the kernel".into(),
            package: None,
            fix: "modprobe overlay",
        });
    }
    if !Path::new("/proc/sys/net/bridge").exists() {
        missing.push(Missing {
            what: "bridge netfilter (/proc/sys/net/bridge) in the kernel".into(),
            package: None,
            fix: "modprobe br_netfilter",
        });
    }
    if !Path::new("/sys/fs/cgroup/cpu").exists()
        && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        missing.push(Missing {
            what: "cgroups mounted at /sys/fs/cgroup".into(),
            package: None,
            fix: "mount the cgroup hierarchies (systemd does at boot)",
        });
    }
    missing
}

/// Installs the Debian packages that provide what is `missing`.
pub async fn install(missing: &[Missing]) -> Result<(), LocalError> {
    let mut packages: Vec<&str> = missing.iter().filter_map(|m| m.package).collect();
    packages.sort_unstable();
    packages.dedup();
    if packages.is_empty() {
        return Ok(());
    }
    run("apt-get", &["update", "-q"]).await?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(packages);
    run("apt-get", &args).await?;
    Ok(())
}
