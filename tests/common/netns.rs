//! A cluster's network on this machine, made by the test and removed with
//! it: a bridge of its own, one network namespace per node (a veth on the
//! bridge, no route out), and blackholes on the host for the test's pod and
//! service ranges, so nothing addressed to them leaves the machine.
//!
//! ```text
//!  host: kbrN 10.99.N.1/24 (the API listens here)   blackhole 10.(100+N)/16, 10.(150+N)/16, 10.(200+N)/16
//!    ├─ veth ── netns knN-a: eth0 10.99.N.2   (keelson agent, pods on keelson0)
//!    └─ veth ── netns knN-b: eth0 10.99.N.3
//! ```
//!
//! Every test gets its own N, so tests run side by side. Everything is
//! removed on drop, pass or fail: agents and their containers, mounts, the
//! namespaces (their interfaces, routes and rules go with them), the bridge
//! and the host routes.

#![allow(dead_code, reason = "not every test makes a network")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};

use super::{Background, spawn_background};

/// `ip ARGS`, which must succeed.
pub(crate) fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `ip netns exec NS COMMAND…`: stdout, or the failure.
pub(crate) fn in_netns(netns: &str, command: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(command)
        .output()
        .expect("run ip netns exec");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?} in {netns}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// An HTTP/1.0 GET of `/` at `address` (`IP:PORT`) from this (the host's)
/// namespace: the body, or why not.
pub(crate) fn get_from_host(address: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &address.parse().map_err(|e| format!("{address}: {e}"))?,
        std::time::Duration::from_secs(3),
    )
    .map_err(|e| format!("{address}: {e}"))?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .ok_or(text)
}

/// One node: its namespace, address and data directory.
pub(crate) struct NetNode {
    pub(crate) name: String,
    pub(crate) netns: String,
    pub(crate) ip: String,
    pub(crate) data: tempfile::TempDir,
    agent: Option<Background>,
}

/// The test's network.
pub(crate) struct Network {
    pub(crate) id: u8,
    pub(crate) bridge: String,
    pub(crate) gateway: String,
    pub(crate) nodes: Vec<NetNode>,
    host_routes: Vec<String>,
}

static NEXT: AtomicU8 = AtomicU8::new(0);

impl Network {
    /// The pods' range (`--cluster-cidr`).
    pub(crate) fn cluster_cidr(&self) -> String {
        format!("10.{}.0.0/16", 100 + u16::from(self.id))
    }

    /// The Services' range (`--service-cluster-ip-range`).
    pub(crate) fn service_cidr(&self) -> String {
        format!("10.{}.0.0/16", 150 + u16::from(self.id))
    }

    /// The LoadBalancer addresses (`--load-balancer-ip-range`); a /24 of a
    /// /16 blackholed on the host.
    pub(crate) fn lb_range(&self) -> String {
        format!("10.{}.0.0/24", 200 + u16::from(self.id))
    }

    /// The cluster DNS address (the tenth of the Services' range).
    pub(crate) fn cluster_dns(&self) -> String {
        format!("10.{}.0.10", 150 + u16::from(self.id))
    }

    /// Makes the bridge and `nodes` namespaces (named `a`, `b`, …).
    pub(crate) fn create(nodes: usize) -> Network {
        // A number no other test of this run or of another holds.
        let id = loop {
            let n =
                (NEXT.fetch_add(1, Ordering::SeqCst) + (std::process::id() % 17) as u8) % 40 + 1;
            // The kernel may still be dismantling an earlier test's
            // namespaces, whose veths keep their names until it is done.
            let taken = [format!("kbr{n}"), format!("kv{n}a")].iter().any(|link| {
                Command::new("ip")
                    .args(["link", "show", link])
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
            if !taken {
                break n;
            }
        };
        let mut network = Network {
            id,
            bridge: format!("kbr{id}"),
            gateway: format!("10.99.{id}.1"),
            nodes: Vec::new(),
            host_routes: Vec::new(),
        };
        ip(&["link", "add", &network.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", network.gateway),
            "dev",
            &network.bridge,
        ]);
        ip(&["link", "set", &network.bridge, "up"]);
        let lb_net = format!("10.{}.0.0/16", 200 + u16::from(id));
        for range in [network.cluster_cidr(), network.service_cidr(), lb_net] {
            ip(&["route", "add", "blackhole", &range]);
            network.host_routes.push(range);
        }
        for i in 0..nodes {
            let name = char::from(b'a' + i as u8).to_string();
            let netns = format!("kn{id}-{name}");
            let host_end = format!("kv{id}{name}");
            let node_ip = format!("10.99.{id}.{}", i + 2);
            ip(&["netns", "add", &netns]);
            network.nodes.push(NetNode {
                name: name.clone(),
                netns: netns.clone(),
                ip: node_ip.clone(),
                data: super::images::node_data_with_busybox("keelson.test/busybox:1"),
                agent: None,
            });
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ]);
            ip(&["link", "set", &host_end, "master", &network.bridge]);
            ip(&["link", "set", &host_end, "up"]);
            for command in [
                vec!["ip", "addr", "add", &format!("{node_ip}/24"), "dev", "eth0"],
                vec!["ip", "link", "set", "eth0", "up"],
                vec!["ip", "link", "set", "lo", "up"],
                vec!["sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ] {
                in_netns(&netns, &command).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        network
    }

    /// `keelson ARGS` in namespace `i` (nsenter, not `ip netns exec`: that
    /// one also remounts /sys, which hides the cgroup hierarchies the
    /// containers need).
    pub(crate) fn keelson_in(&self, i: usize, args: &[&std::ffi::OsStr]) -> Command {
        self.binary_in(Path::new(env!("CARGO_BIN_EXE_keelson")), i, args)
    }

    /// `BINARY ARGS` in namespace `i` (another release of keelson).
    pub(crate) fn binary_in(&self, binary: &Path, i: usize, args: &[&std::ffi::OsStr]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.nodes[i].netns))
            .arg(binary)
            .args(args);
        command
    }

    /// Starts node `i`'s agent against the API in `kubeconfig`.
    pub(crate) fn start_agent(&mut self, i: usize, kubeconfig: &Path, extra: &[&str]) {
        self.start_agent_with(i, &["--kubeconfig".as_ref(), kubeconfig.as_os_str()], extra);
    }

    /// Starts node `i`'s agent; `access` says how it reaches the API
    /// (`--kubeconfig FILE`, or `--server URL --token-file FILE`).
    pub(crate) fn start_agent_with(
        &mut self,
        i: usize,
        access: &[&std::ffi::OsStr],
        extra: &[&str],
    ) {
        let binary = Path::new(env!("CARGO_BIN_EXE_keelson"));
        self.start_agent_of(binary, i, access, extra);
    }

    /// [`Network::start_agent_with`], with the agent of another release.
    pub(crate) fn start_agent_of(
        &mut self,
        binary: &Path,
        i: usize,
        access: &[&std::ffi::OsStr],
        extra: &[&str],
    ) {
        let (cluster_cidr, service_cidr, dns) =
            (self.cluster_cidr(), self.service_cidr(), self.cluster_dns());
        let mut command = self.binary_in(binary, i, &[]);
        let node = &mut self.nodes[i];
        command
            .args(["agent", "--node-name", &node.name, "--node-ip", &node.ip])
            .args([
                "--node-lease-renew-interval",
                "1s",
                "--sync-frequency",
                "2s",
            ])
            .args(["--cluster-cidr", &cluster_cidr, "--cluster-dns", &dns])
            .args(["--service-cidr", &service_cidr])
            .args(extra)
            .arg("--data-dir")
            .arg(node.data.path())
            .args(access);
        node.agent = Some(spawn_background(
            command,
            format!("keelson agent {} ({})", node.name, node.netns),
        ));
    }

    /// Kills node `i`'s agent with SIGKILL (its containers go on).
    pub(crate) fn kill_agent(&mut self, i: usize) {
        drop(self.nodes[i].agent.take());
    }
}

/// Processes whose command line names `dir` or a path under it.
pub(crate) fn processes_under(dir: &Path) -> Vec<i32> {
    keelson_chaos::local::Processes::under(dir)
}

/// Mount points under `dir`, deepest first.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    keelson_chaos::local::process::mounts_under(dir)
}

impl Drop for Network {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            drop(node.agent.take());
            for pid in processes_under(node.data.path()) {
                drop(Command::new("kill").args(["-9", &pid.to_string()]).status());
            }
            for mount in mounts_under(node.data.path()) {
                drop(Command::new("umount").arg("-l").arg(&mount).status());
            }
            drop(
                Command::new("ip")
                    .args(["netns", "del", &node.netns])
                    .status(),
            );
        }
        drop(
            Command::new("ip")
                .args(["link", "del", &self.bridge])
                .status(),
        );
        // A tunnel killed before it could remove its route.
        drop(
            Command::new("ip")
                .args(["route", "del", &self.lb_range()])
                .stderr(Stdio::null())
                .status(),
        );
        for range in &self.host_routes {
            drop(
                Command::new("ip")
                    .args(["route", "del", "blackhole", range])
                    .status(),
            );
        }
    }
}
