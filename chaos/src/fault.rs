//! Faults, injected into a local cluster's real processes and network
//! namespaces, and undone.
//!
//! ```text
//!  process  kill -9 (then start again), SIGSTOP (then SIGCONT)
//!  network  iptables chain KEELSON-CHAOS in a member's or node's own
//!           namespace, jumped to from INPUT and OUTPUT: DROP to/from the
//!           peers cut off (or a random share of their packets); tc netem
//!           on its eth0 for delay, where the kernel has sch_netem
//!  cluster  MemberRemove, disk wiped, MemberAdd, started as a new member
//! ```
//!
//! Everything is undone by [`heal`]; namespaces are the profile's own, so
//! nothing outside the cluster is ever touched.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use keelson_proto::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberRemoveRequest, StatusRequest,
    cluster_client::ClusterClient, maintenance_client::MaintenanceClient,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::local::{Local, LocalError};
use crate::rng::Rng;
use crate::store::channel;

const CHAIN: &str = "KEELSON-CHAOS";
/// The share of packets between members `packet-loss` drops (each way).
const LOSS: f64 = 0.2;

/// A fault a scenario can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of the Raft leader, restarted at heal.
    KillLeader,
    KillFollower,
    /// kill -9 of every member at once.
    KillAll,
    /// SIGSTOP of the leader, SIGCONT at heal.
    PauseLeader,
    /// The leader cut off from both followers (clients still reach it).
    IsolateLeader,
    /// One follower cut off: a minority against the majority.
    IsolateFollower,
    /// Two members cannot see each other; both still see the third.
    Bridge,
    /// A fifth of the packets between members dropped, each way.
    PacketLoss,
    /// 50–150 ms on every packet between members (needs sch_netem).
    Delay,
    /// A follower removed, its disk wiped, added back as a new member.
    ReplaceFollower,
    /// kill -9 of a node agent (its pods go on), restarted at heal.
    KillAgent,
    /// A node stopped: its agent and its pods, as a power cut does.
    StopNode,
    /// A node cut off from the control plane (its pods go on).
    PartitionNode,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Self::KillLeader => "kill-leader",
            Self::KillFollower => "kill-follower",
            Self::KillAll => "kill-all",
            Self::PauseLeader => "pause-leader",
            Self::IsolateLeader => "isolate-leader",
            Self::IsolateFollower => "isolate-follower",
            Self::Bridge => "bridge",
            Self::PacketLoss => "packet-loss",
            Self::Delay => "delay",
            Self::ReplaceFollower => "replace-follower",
            Self::KillAgent => "kill-agent",
            Self::StopNode => "stop-node",
            Self::PartitionNode => "partition-node",
        }
    }

    /// Whether a majority of members stays up and connected throughout.
    pub fn keeps_majority(self) -> bool {
        !matches!(self, Self::KillAll)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error("{0}")]
    Cluster(String),
    #[error("this machine cannot inject {fault}: {reason}")]
    Unsupported { fault: &'static str, reason: String },
}

/// What was done, so that it can be undone.
#[derive(Debug)]
pub struct Injected {
    pub fault: Fault,
    /// Which member or node, in words.
    pub target: String,
    undo: Undo,
}

#[derive(Debug)]
enum Undo {
    StartMembers(Vec<u8>),
    Continue(i32),
    Unblock(Vec<String>),
    Undelay(Vec<String>),
    Rejoin(u8),
    StartAgent(String),
}

/// Which member leads now (by index from 1), as the members report it.
pub async fn leader(local: &Local, within: Duration) -> Result<u8, FaultError> {
    let deadline = Instant::now() + within;
    loop {
        let mut ids = Vec::new();
        let mut leader_id = 0;
        for i in 1..=local.profile.servers {
            let Ok(channel) = channel(&local.client_url(i), Duration::from_secs(1)) else {
                continue;
            };
            if let Ok(status) = MaintenanceClient::new(channel)
                .status(StatusRequest {})
                .await
            {
                let status = status.into_inner();
                if let Some(header) = status.header {
                    ids.push((i, header.member_id));
                }
                leader_id = leader_id.max(status.leader);
            }
        }
        if let Some((i, _)) = ids
            .iter()
            .find(|(_, id)| *id == leader_id && leader_id != 0)
        {
            return Ok(*i);
        }
        if Instant::now() >= deadline {
            return Err(FaultError::Cluster(format!(
                "no member reported a leader within {within:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pick_other(local: &Local, not: u8, rng: &mut Rng) -> u8 {
    let others: Vec<u8> = (1..=local.profile.servers).filter(|i| *i != not).collect();
    others[rng.below(others.len() as u64) as usize]
}

async fn ip_netns(netns: &str, program: &str, args: &[&str]) -> Result<String, FaultError> {
    let mut full = vec!["netns", "exec", netns, program];
    full.extend_from_slice(args);
    crate::local::command::run("ip", &full)
        .await
        .map_err(FaultError::from)
}

/// Drops traffic between `netns` and `peers` (`probability` of it, or all).
async fn block(
    netns: &str,
    peers: &[Ipv4Addr],
    probability: Option<f64>,
) -> Result<(), FaultError> {
    let _ = ip_netns(netns, "iptables", &["-w", "-N", CHAIN]).await;
    for hook in ["INPUT", "OUTPUT"] {
        if ip_netns(netns, "iptables", &["-w", "-C", hook, "-j", CHAIN])
            .await
            .is_err()
        {
            ip_netns(netns, "iptables", &["-w", "-I", hook, "-j", CHAIN]).await?;
        }
    }
    let share = probability.map(|p| format!("{p:.2}"));
    for peer in peers {
        let peer = peer.to_string();
        for direction in ["-s", "-d"] {
            let mut rule = vec!["-w", "-A", CHAIN, direction, peer.as_str()];
            if let Some(share) = &share {
                rule.extend([
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    share,
                ]);
            }
            rule.extend(["-j", "DROP"]);
            ip_netns(netns, "iptables", &rule).await?;
        }
    }
    Ok(())
}

/// Removes what [`block`] added (and nothing else).
pub async fn unblock(netns: &str) -> Result<(), FaultError> {
    for hook in ["INPUT", "OUTPUT"] {
        while ip_netns(netns, "iptables", &["-w", "-D", hook, "-j", CHAIN])
            .await
            .is_ok()
        {}
    }
    let _ = ip_netns(netns, "iptables", &["-w", "-F", CHAIN]).await;
    let _ = ip_netns(netns, "iptables", &["-w", "-X", CHAIN]).await;
    Ok(())
}

fn member_ips(local: &Local, except: u8) -> Vec<Ipv4Addr> {
    (1..=local.profile.servers)
        .filter(|i| *i != except)
        .map(|i| local.layout().member_ip(i))
        .collect()
}

/// Injects `fault`; the nodes it may pick are `nodes`.
pub async fn inject(
    local: &Local,
    fault: Fault,
    nodes: &[String],
    rng: &mut Rng,
) -> Result<Injected, FaultError> {
    let processes = local.processes();
    let injected = |target: String, undo| Injected {
        fault,
        target,
        undo,
    };
    match fault {
        Fault::KillLeader | Fault::KillFollower | Fault::PauseLeader => {
            let leader = leader(local, Duration::from_secs(30)).await?;
            let i = if fault == Fault::KillFollower {
                pick_other(local, leader, rng)
            } else {
                leader
            };
            let name = Local::member_name(i);
            if fault == Fault::PauseLeader {
                let pid = processes
                    .pid(&name)
                    .ok_or_else(|| FaultError::Cluster(format!("{name} is not running")))?;
                let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
                return Ok(injected(format!("{name} (leader)"), Undo::Continue(pid)));
            }
            processes.kill(&name).await;
            let role = if i == leader { "leader" } else { "follower" };
            Ok(injected(
                format!("{name} ({role})"),
                Undo::StartMembers(vec![i]),
            ))
        }
        Fault::KillAll => {
            let all: Vec<u8> = (1..=local.profile.servers).collect();
            for i in &all {
                processes.kill(&Local::member_name(*i)).await;
            }
            Ok(injected("every member".into(), Undo::StartMembers(all)))
        }
        Fault::IsolateLeader | Fault::IsolateFollower => {
            let leader = leader(local, Duration::from_secs(30)).await?;
            let i = if fault == Fault::IsolateFollower {
                pick_other(local, leader, rng)
            } else {
                leader
            };
            let netns = local.member_netns(i);
            block(&netns, &member_ips(local, i), None).await?;
            Ok(injected(Local::member_name(i), Undo::Unblock(vec![netns])))
        }
        Fault::Bridge => {
            let a = 1 + rng.below(u64::from(local.profile.servers)) as u8;
            let b = pick_other(local, a, rng);
            let netns = local.member_netns(a);
            block(&netns, &[local.layout().member_ip(b)], None).await?;
            Ok(injected(
                format!("{} ✕ {}", Local::member_name(a), Local::member_name(b)),
                Undo::Unblock(vec![netns]),
            ))
        }
        Fault::PacketLoss => {
            let mut touched = Vec::new();
            for i in 1..=local.profile.servers {
                let netns = local.member_netns(i);
                block(&netns, &member_ips(local, i), Some(LOSS)).await?;
                touched.push(netns);
            }
            Ok(injected("every member".into(), Undo::Unblock(touched)))
        }
        Fault::Delay => {
            let mut touched: Vec<String> = Vec::new();
            for i in 1..=local.profile.servers {
                let netns = local.member_netns(i);
                let added = crate::local::command::run(
                    "ip",
                    &[
                        "netns", "exec", &netns, "tc", "qdisc", "add", "dev", "eth0", "root",
                        "netem", "delay", "100ms", "50ms",
                    ],
                )
                .await;
                if let Err(error) = added {
                    for netns in &touched {
                        let _ = undelay(netns).await;
                    }
                    let error = error.to_string();
                    let reason = if error.contains("qdisc kind is unknown") {
                        "the kernel has no sch_netem".to_owned()
                    } else {
                        format!("tc netem: {error}")
                    };
                    return Err(FaultError::Unsupported {
                        fault: fault.name(),
                        reason,
                    });
                }
                touched.push(netns);
            }
            Ok(injected("every member".into(), Undo::Undelay(touched)))
        }
        Fault::ReplaceFollower => {
            let leader = leader(local, Duration::from_secs(30)).await?;
            let i = pick_other(local, leader, rng);
            replace(local, leader, i).await?;
            Ok(injected(Local::member_name(i), Undo::Rejoin(i)))
        }
        Fault::KillAgent | Fault::StopNode | Fault::PartitionNode => {
            let Some(node) = nodes.get(rng.below(nodes.len() as u64) as usize) else {
                return Err(FaultError::Cluster("no node to pick".into()));
            };
            match fault {
                Fault::KillAgent => {
                    processes.kill(node).await;
                }
                Fault::StopNode => local.stop_node(node).await?,
                _ => {
                    let (netns, _) = local.node_netns(node)?;
                    let mut cut = member_ips(local, 0);
                    cut.push(local.layout().host_ip());
                    block(&netns, &cut, None).await?;
                    return Ok(injected(node.clone(), Undo::Unblock(vec![netns])));
                }
            }
            Ok(injected(node.clone(), Undo::StartAgent(node.clone())))
        }
    }
}

async fn undelay(netns: &str) -> Result<String, FaultError> {
    ip_netns(netns, "tc", &["qdisc", "del", "dev", "eth0", "root"]).await
}

/// Removes member `i` through the leader, wipes its store, adds it back
/// and leaves it stopped (heal starts it as a new member).
async fn replace(local: &Local, leader: u8, i: u8) -> Result<(), FaultError> {
    let cluster = |m: u8| -> Result<ClusterClient<tonic::transport::Channel>, FaultError> {
        let channel = channel(&local.client_url(m), Duration::from_secs(10))
            .map_err(|e| FaultError::Cluster(e.to_string()))?;
        Ok(ClusterClient::new(channel))
    };
    let members = cluster(leader)?
        .member_list(MemberListRequest::default())
        .await
        .map_err(|e| FaultError::Cluster(format!("member list: {}", e.message())))?
        .into_inner()
        .members;
    let peer = local.peer_url(i);
    let id = members
        .iter()
        .find(|m| m.peer_ur_ls.contains(&peer))
        .map(|m| m.id)
        .ok_or_else(|| FaultError::Cluster(format!("no member has peer URL {peer}")))?;
    cluster(leader)?
        .member_remove(MemberRemoveRequest { id })
        .await
        .map_err(|e| FaultError::Cluster(format!("member remove: {}", e.message())))?;
    local.processes().kill(&Local::member_name(i)).await;
    let store = local.member_store(i);
    std::fs::remove_dir_all(&store)
        .map_err(|e| FaultError::Cluster(format!("cannot wipe {}: {e}", store.display())))?;
    cluster(leader)?
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![peer],
            is_learner: false,
        })
        .await
        .map_err(|e| FaultError::Cluster(format!("member add: {}", e.message())))?;
    Ok(())
}

/// Waits until member `i` has applied what the leader had committed when
/// the wait began.
async fn caught_up(local: &Local, i: u8, within: Duration) -> Result<(), FaultError> {
    let deadline = Instant::now() + within;
    let status = |m: u8| async move {
        let channel = channel(&local.client_url(m), Duration::from_secs(2)).ok()?;
        let status = MaintenanceClient::new(channel)
            .status(StatusRequest {})
            .await
            .ok()?;
        Some(status.into_inner())
    };
    let mut target = None;
    let mut seen = None;
    while Instant::now() < deadline {
        if target.is_none() {
            let leader = leader(local, Duration::from_secs(5)).await.ok();
            if let Some(leader) = leader {
                target = status(leader).await.map(|s| s.raft_index);
            }
        }
        let member = status(i).await;
        seen = member.as_ref().map(|m| m.raft_applied_index);
        if let (Some(target), Some(applied)) = (target, seen)
            && applied >= target
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(FaultError::Cluster(format!(
        "{} did not catch up with the leader within {within:?} (leader's index {}, the member's {})",
        Local::member_name(i),
        target.map_or("unknown".into(), |t| t.to_string()),
        seen.map_or("not answering".into(), |s| format!("applied {s}")),
    )))
}

/// Undoes what [`inject`] did.
pub async fn heal(local: &Local, injected: Injected) -> Result<(), FaultError> {
    match injected.undo {
        Undo::StartMembers(members) => {
            for i in members {
                local.restart_member(i, false)?;
            }
        }
        Undo::Continue(pid) => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
        Undo::Unblock(namespaces) => {
            for netns in namespaces {
                unblock(&netns).await?;
            }
        }
        Undo::Undelay(namespaces) => {
            for netns in namespaces {
                undelay(&netns).await?;
            }
        }
        Undo::Rejoin(i) => {
            local.restart_member(i, true)?;
            // Membership changes one at a time: the next replacement must
            // not leave a quorum that counts a member still catching up.
            caught_up(local, i, Duration::from_secs(60)).await?;
        }
        Undo::StartAgent(node) => local.start_node(&node, &mut |_| {}).await?,
    }
    Ok(())
}
