//! Three real `keelson server` processes on loopback, driven from outside
//! with `etcdctl` and `etcd-client` as an operator and a client would:
//! membership as `member list` shows it, agreement on a leader, replication,
//! a SIGKILLed leader under write load, loss and return of a quorum, and a
//! fourth member that joins as a learner, is promoted and is removed.
//!
//! The harness is [`common::cluster`]: free ports picked up front, one
//! temporary data directory per member, readiness when a member logs
//! `serving client traffic`, SIGKILL and restart on the same directory and
//! ports, and every member's log printed when a test fails. Nothing waits on a
//! fixed sleep: every wait polls a condition against a deadline.
//!
//! Keelson only: these tests start Keelson processes, never etcd.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::Json;
use common::cluster::{Cluster, FOUNDERS, LEADER_DEADLINE, Member, eventually};
use etcd_client::{Client, GetOptions};
use tokio::sync::watch;
use tokio::task::{JoinHandle, block_in_place};

/// How long the members may take to publish their client URLs, or to show a
/// membership change in `member list`.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(30);

/// The line `etcdctl member list` prints for `member`, whose ID is `id` (hex).
fn member_line(member: &Member, id: &str, learner: bool) -> String {
    format!(
        "{id}, started, {}, {}, {}, {learner}",
        member.name(),
        member.peer_url(),
        member.client_url()
    )
}

/// A member's ID in hex, as `etcdctl` prints it, from its `endpoint status`.
fn hex_id(member: &Member) -> String {
    format!("{:x}", member.wait_status().member_id)
}

/// Waits until `etcdctl member list` (through every running member) prints
/// exactly `expected`, in any order.
fn wait_for_member_list(cluster: &Cluster, expected: &[String]) {
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    eventually(MEMBERSHIP_DEADLINE, "the expected member list", || {
        let listed = cluster.member_list();
        let listed_set: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
        if listed.len() == expected.len() && listed_set == expected {
            Ok(())
        } else {
            Err(format!(
                "member list printed {listed:#?}, expected {expected:#?}"
            ))
        }
    });
}

/// The member-list lines of the founders, once they have published their client URLs.
fn founder_lines(cluster: &Cluster) -> Vec<String> {
    (0..FOUNDERS)
        .map(|i| {
            let member = cluster.member(i);
            member_line(member, &hex_id(member), false)
        })
        .collect()
}

// ----- membership, leader, replication -------------------------------------

#[test]
fn three_members_list_each_other_agree_on_a_leader_and_replicate() {
    let cluster = Cluster::start();

    // Client URLs appear once each member has published them.
    let founders = founder_lines(&cluster);
    wait_for_member_list(&cluster, &founders);

    // `endpoint status` on each endpoint: one leader, one term.
    let ids: BTreeSet<u64> = (0..FOUNDERS)
        .map(|i| cluster.member(i).wait_status().member_id)
        .collect();
    let endpoints: BTreeSet<String> = (0..FOUNDERS)
        .map(|i| cluster.member(i).endpoint())
        .collect();
    eventually(
        LEADER_DEADLINE,
        "one leader and term on every endpoint",
        || {
            let text = cluster.etcdctl_ok(&["endpoint", "status", "-w", "json"]);
            let json = Json::parse(&text);
            let statuses = json.as_array();
            let answered: BTreeSet<String> = statuses
                .iter()
                .map(|entry| entry["Endpoint"].as_str().to_owned())
                .collect();
            assert_eq!(answered, endpoints, "endpoints in {text}");
            let agreed: BTreeSet<(String, String)> = statuses
                .iter()
                .map(|entry| {
                    let status = &entry["Status"];
                    (
                        format!("{:?}", status["leader"]),
                        format!("{:?}", status["raftTerm"]),
                    )
                })
                .collect();
            let leader = &statuses[0]["Status"]["leader"];
            if agreed.len() == 1 && !leader.is_null() && ids.contains(&leader.as_u64()) {
                Ok(())
            } else {
                Err(text)
            }
        },
    );

    // A put through one endpoint is read through each of the others.
    assert_eq!(
        cluster
            .member(0)
            .etcdctl_ok(&["put", "shared", "through m0"]),
        "OK\n"
    );
    for i in 1..FOUNDERS {
        assert_eq!(
            cluster.member(i).etcdctl_ok(&["get", "shared"]),
            "shared\nthrough m0\n",
            "get through {}",
            cluster.member(i).name()
        );
    }
}

// ----- a SIGKILLed leader under write load ---------------------------------

/// Concurrent writers, each with a client per member.
const WRITERS: usize = 4;
/// Acknowledged puts before the leader is killed.
const ACKS_BEFORE_KILL: usize = 200;
/// Further acknowledged puts, through the survivors, before the old leader returns.
const ACKS_AFTER_KILL: usize = 200;
/// Further acknowledged puts after the old leader returns.
const ACKS_AFTER_RESTART: usize = 100;
/// How long the writers may take to reach each of those counts.
const LOAD_DEADLINE: Duration = Duration::from_secs(90);
/// How long a writer may take to finish its put in flight once told to stop.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// How long a member may take to apply what the leader has applied.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(60);
/// Pause before a writer retries a failed put.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// The prefix of every key the writers put.
const PREFIX: &str = "load/";

/// What one writer did until it was told to stop.
#[derive(Debug, Default)]
struct Writer {
    /// Acknowledged puts, `(key, value)`.
    acked: Vec<(String, String)>,
    /// Every failed put's error, with the member it went through.
    errors: Vec<String>,
}

/// Puts `load/<id>/0`, `load/<id>/1`, … until `stop`, each through the next
/// member in turn; a failed put is retried (through the next member) until
/// it is acknowledged. Counts every acknowledged put in `acks`.
async fn write_continuously(
    id: usize,
    mut clients: Vec<Client>,
    acks: watch::Sender<usize>,
    stop: watch::Receiver<bool>,
) -> Writer {
    let mut writer = Writer::default();
    let mut attempt = id;
    while !*stop.borrow() {
        let seq = writer.acked.len();
        let (key, value) = (format!("{PREFIX}{id}/{seq}"), format!("value {id}/{seq}"));
        let through = attempt % FOUNDERS;
        attempt += 1;
        match clients[through]
            .put(key.as_str(), value.as_str(), None)
            .await
        {
            Ok(_) => {
                writer.acked.push((key, value));
                acks.send_modify(|count| *count += 1);
            }
            Err(err) => {
                writer.errors.push(format!("through m{through}: {err}"));
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    writer
}

/// Waits until `acks` counts at least `count` acknowledged puts.
async fn wait_for_acks(acks: &mut watch::Receiver<usize>, count: usize, when: &str) {
    let waited = tokio::time::timeout(LOAD_DEADLINE, acks.wait_for(|&n| n >= count))
        .await
        .map(|outcome| outcome.map(drop));
    match waited {
        Ok(outcome) => outcome.expect("the writers stopped early"),
        Err(_) => panic!(
            "{} acks, fewer than {count}, within {LOAD_DEADLINE:?} {when}",
            *acks.borrow()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_killing_the_leader_under_load() {
    let mut cluster = Cluster::start();
    let all: Vec<usize> = (0..FOUNDERS).collect();
    let old_leader = block_in_place(|| cluster.leader(&all));

    let (acks, mut acked) = watch::channel(0);
    let (stop, stopped) = watch::channel(false);
    let mut handles: Vec<JoinHandle<Writer>> = Vec::with_capacity(WRITERS);
    for id in 0..WRITERS {
        let mut clients = Vec::with_capacity(FOUNDERS);
        for i in 0..FOUNDERS {
            clients.push(cluster.member(i).client().await);
        }
        handles.push(tokio::spawn(write_continuously(
            id,
            clients,
            acks.clone(),
            stopped.clone(),
        )));
    }
    drop(acks);

    wait_for_acks(&mut acked, ACKS_BEFORE_KILL, "before the kill").await;
    block_in_place(|| cluster.member_mut(old_leader).kill());
    let at_kill = *acked.borrow();
    eprintln!("killed the leader {old_leader} after {at_kill} acks");

    // Writes resume through the survivors, under a new leader.
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != old_leader).collect();
    let new_leader = block_in_place(|| cluster.leader(&survivors));
    assert_ne!(new_leader, old_leader);
    wait_for_acks(&mut acked, at_kill + ACKS_AFTER_KILL, "after the kill").await;

    block_in_place(|| cluster.member_mut(old_leader).restart());
    let at_restart = *acked.borrow();
    wait_for_acks(
        &mut acked,
        at_restart + ACKS_AFTER_RESTART,
        "after the restart",
    )
    .await;

    stop.send(true).expect("the writers listen");
    let mut writers = Vec::with_capacity(WRITERS);
    for handle in handles {
        let writer = tokio::time::timeout(STOP_DEADLINE, handle)
            .await
            .unwrap_or_else(|_| panic!("a writer still runs {STOP_DEADLINE:?} after the stop"))
            .expect("writer task");
        writers.push(writer);
    }
    let errors: Vec<&String> = writers.iter().flat_map(|w| &w.errors).collect();
    let distinct: BTreeSet<&String> = errors.iter().copied().collect();
    eprintln!(
        "{} puts acknowledged, {} failed and retried; distinct errors: {distinct:#?}",
        writers.iter().map(|w| w.acked.len()).sum::<usize>(),
        errors.len()
    );
    let expected: BTreeMap<String, String> = writers
        .into_iter()
        .flat_map(|writer| writer.acked)
        .collect();

    // Every member, once it has applied what the leader has, holds every
    // acknowledged put: read each one alone, serializably.
    let leader_applied = block_in_place(|| {
        let leader = cluster.leader(&all);
        cluster.member(leader).wait_status().raft_applied_index
    });
    for i in all {
        let member = cluster.member(i);
        block_in_place(|| member.wait_applied(leader_applied, CATCH_UP_DEADLINE));
        let response = member
            .client()
            .await
            .get(
                PREFIX,
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await
            .unwrap_or_else(|err| panic!("serializable get from {}: {err}", member.name()));
        let stored: BTreeMap<String, String> = response
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect();
        let wrong: Vec<(&String, &String, Option<&String>)> = expected
            .iter()
            .filter(|(key, value)| stored.get(*key) != Some(*value))
            .map(|(key, value)| (key, value, stored.get(key)))
            .collect();
        assert!(
            wrong.is_empty(),
            "{} of {} acknowledged puts are missing or different on {} \
             (applied index at least {leader_applied}); first ones (key, acked, found): {:?}",
            wrong.len(),
            expected.len(),
            member.name(),
            &wrong[..wrong.len().min(10)]
        );
    }
}

// ----- loss and return of a quorum -----------------------------------------

/// What a put without a quorum may fail with, as etcd's do.
const NO_QUORUM_ERRORS: [&str; 2] = ["etcdserver: request timed out", "etcdserver: no leader"];
/// How long a put without a quorum may take to fail (the server's own request
/// timeout is 5 s, the client's 10 s).
const NO_QUORUM_DEADLINE: Duration = Duration::from_secs(20);
/// How long writes may take to succeed again once a quorum is back.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);

/// Puts `key` through `client` until it is acknowledged.
async fn put_eventually(client: &mut Client, key: &str, value: &str) {
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    loop {
        match client.put(key, value, None).await {
            Ok(_) => return,
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "put {key}={value} still fails after {RECOVERY_DEADLINE:?}: {err}"
                );
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_puts_fail_with_etcds_errors_then_recover() {
    let mut cluster = Cluster::start();
    let all: Vec<usize> = (0..FOUNDERS).collect();
    let leader = block_in_place(|| cluster.leader(&all));
    // The survivor is a follower: both the leader and the other follower go.
    let (survivor, other) = ((leader + 1) % FOUNDERS, (leader + 2) % FOUNDERS);
    let mut client = cluster.member(survivor).client().await;
    put_eventually(&mut client, "k", "v1").await;

    block_in_place(|| {
        cluster.member_mut(leader).kill();
        cluster.member_mut(other).kill();
    });
    let started = Instant::now();
    let refused = tokio::time::timeout(NO_QUORUM_DEADLINE, client.put("k", "v2", None))
        .await
        .unwrap_or_else(|_| {
            panic!("a put without a quorum still hangs after {NO_QUORUM_DEADLINE:?}")
        });
    let error = refused
        .expect_err("a put without a quorum succeeded")
        .to_string();
    let took = started.elapsed();
    eprintln!("a put without a quorum failed after {took:?}: {error}");
    assert!(
        NO_QUORUM_ERRORS
            .iter()
            .any(|expected| error.contains(expected)),
        "a put without a quorum failed after {took:?} with {error:?}, not one of {NO_QUORUM_ERRORS:?}"
    );

    block_in_place(|| cluster.member_mut(other).restart());
    put_eventually(&mut client, "k", "v3").await;
    let got = cluster
        .member(other)
        .client()
        .await
        .get("k", None)
        .await
        .expect("linearizable get through the restarted member");
    let values: Vec<&[u8]> = got.kvs().iter().map(|kv| kv.value()).collect();
    assert_eq!(values, [b"v3"]);
}

// ----- a fourth member: learner, voter, removed ----------------------------

/// How long a promotion may be refused while the learner catches up.
const PROMOTE_DEADLINE: Duration = Duration::from_secs(30);
/// How long a removed member may take to stop by itself.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn a_learner_joins_is_promoted_serves_and_is_removed() {
    let mut cluster = Cluster::start();
    let founders = founder_lines(&cluster);
    wait_for_member_list(&cluster, &founders);
    let leader = cluster.leader(&(0..FOUNDERS).collect::<Vec<_>>());
    // Through a follower, which passes the change on to the leader.
    let follower = (leader + 1) % FOUNDERS;

    // Enough writes for snapshots (--snapshot-count 100) and a log purged
    // behind them: the new member can only catch up by installing one.
    let bench = std::process::Command::new(env!("CARGO_BIN_EXE_keelson"))
        .args([
            "bench",
            "store",
            "put",
            "--endpoints",
            &cluster.member(leader).endpoint(),
        ])
        .args([
            "--total",
            "400",
            "--clients",
            "4",
            "--conns",
            "1",
            "--key-space",
            "50",
        ])
        .output()
        .expect("run keelson bench");
    assert!(
        bench.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&bench.stderr)
    );

    let new = cluster.reserve("m3");
    let peer_url = cluster.member(new).peer_url();
    let added = cluster.member(follower).etcdctl_ok(&[
        "member",
        "add",
        "m3",
        "--learner",
        &format!("--peer-urls={peer_url}"),
    ]);
    // etcdctl prints IDs with %16x: IDs under 16 hex digits are space-padded
    // (here and in its promote and remove lines below).
    let words: Vec<&str> = added
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ["Member", id, "added", "to", "cluster", cluster_id] = words[..] else {
        panic!("member add printed {added:?}");
    };
    let (id, cluster_id) = (id.to_owned(), cluster_id.to_owned());
    let initial_cluster = cluster.initial_cluster();
    let printed_cluster = added
        .lines()
        .find_map(|line| line.strip_prefix("ETCD_INITIAL_CLUSTER="))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {added:?}"))
        .trim_matches('"');
    assert_eq!(
        printed_cluster.split(',').collect::<BTreeSet<_>>(),
        initial_cluster.split(',').collect::<BTreeSet<_>>(),
        "member add printed {added:?}"
    );
    for line in [
        "ETCD_NAME=\"m3\"".to_owned(),
        format!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{peer_url}\""),
        "ETCD_INITIAL_CLUSTER_STATE=\"existing\"".to_owned(),
    ] {
        assert!(added.lines().any(|l| l == line), "no {line} in {added:?}");
    }
    // Until it runs, the new member has neither name nor client URLs.
    let mut expected = founders.clone();
    expected.push(format!("{id}, unstarted, , {peer_url}, , true"));
    wait_for_member_list(&cluster, &expected);

    cluster.join(new);
    assert!(
        cluster.member(new).logged("snapshot installed"),
        "m3 caught up without a snapshot"
    );
    assert_eq!(hex_id(cluster.member(new)), id, "m3's ID");
    expected.pop();
    expected.push(member_line(cluster.member(new), &id, true));
    wait_for_member_list(&cluster, &expected);

    let promoted = eventually(PROMOTE_DEADLINE, "member promote to succeed", || {
        let output = cluster
            .member(follower)
            .etcdctl(&["member", "promote", &id]);
        if output.status.success() {
            Ok(common::stdout(&output))
        } else {
            Err(common::stderr(&output))
        }
    });
    assert_eq!(
        promoted,
        format!("Member {id:>16} promoted in cluster {cluster_id:>16}\n")
    );
    expected.pop();
    expected.push(member_line(cluster.member(new), &id, false));
    wait_for_member_list(&cluster, &expected);

    // The voter serves writes, which the others see.
    assert_eq!(
        cluster
            .member(new)
            .etcdctl_ok(&["put", "joined", "through m3"]),
        "OK\n"
    );
    assert_eq!(
        cluster.member(0).etcdctl_ok(&["get", "joined"]),
        "joined\nthrough m3\n"
    );

    // Removed, it leaves the list and stops by itself.
    assert_eq!(
        cluster.member(0).etcdctl_ok(&["member", "remove", &id]),
        format!("Member {id:>16} removed from cluster {cluster_id:>16}\n")
    );
    let status = cluster.member_mut(new).wait_for_exit(EXIT_DEADLINE);
    eprintln!("the removed member exited with {status}");
    wait_for_member_list(&cluster, &founders);
    assert_eq!(cluster.etcdctl_ok(&["put", "after", "the removal"]), "OK\n");
}
