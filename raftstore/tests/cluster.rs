//! Three members in one process, on real sockets: replication, forwarding,
//! linearizable reads on followers, failover, catch-up, and loss of quorum.
//! Every wait is on a condition with a deadline.

// Test scaffolding: a failed setup step fails the test with its panic.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use keelson_proto::etcdserverpb::{
    MemberListRequest, PutRequest, RangeRequest, StatusRequest, cluster_client::ClusterClient,
    kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use keelson_raftstore::node::MemberConfig;
use keelson_raftstore::server::{Listeners, ServeError, run};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

const DEADLINE: Duration = Duration::from_secs(20);

struct Slot {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    /// Where `/health` answers.
    metrics: SocketAddr,
    dir: PathBuf,
    running: Option<(CancellationToken, JoinHandle<Result<(), ServeError>>)>,
}

struct Cluster {
    slots: Vec<Slot>,
    initial: Vec<(String, String)>,
    _dir: TempDir,
}

impl Cluster {
    async fn start(size: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut slots = Vec::new();
        for i in 0..size {
            // Bind once to learn free ports; the members bind them again.
            let client = TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap()
                .local_addr()
                .unwrap();
            let peer = TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap()
                .local_addr()
                .unwrap();
            let metrics = TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap()
                .local_addr()
                .unwrap();
            let name = format!("m{i}");
            slots.push(Slot {
                dir: dir.path().join(&name),
                name,
                client,
                peer,
                metrics,
                running: None,
            });
        }
        let initial = slots
            .iter()
            .map(|s| (s.name.clone(), format!("http://{}", s.peer)))
            .collect();
        let mut cluster = Cluster {
            slots,
            initial,
            _dir: dir,
        };
        for i in 0..size {
            cluster.up(i).await;
        }
        cluster
    }

    async fn up(&mut self, i: usize) {
        let slot = &self.slots[i];
        let config = MemberConfig {
            name: slot.name.clone(),
            data_dir: slot.dir.clone(),
            advertise_client_urls: vec![format!("http://{}", slot.client)],
            initial_advertise_peer_urls: vec![format!("http://{}", slot.peer)],
            initial_cluster: self.initial.clone(),
            request_timeout: Duration::from_secs(2),
            // Snapshot often: members build and purge behind snapshots under load.
            snapshot_count: 50,
            ..MemberConfig::default()
        };
        let listeners = Listeners {
            client: TcpListener::bind(slot.client).await.unwrap(),
            peer: Some(TcpListener::bind(slot.peer).await.unwrap()),
            metrics: Some(TcpListener::bind(slot.metrics).await.unwrap()),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(config, listeners, None, stop.clone()));
        self.slots[i].running = Some((stop, task));
    }

    async fn down(&mut self, i: usize) {
        let (stop, task) = self.slots[i].running.take().expect("member is running");
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    fn channel(&self, i: usize) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.slots[i].client))
            .unwrap()
            .connect_lazy()
    }

    async fn put(&self, i: usize, key: &str, value: &str) -> Result<i64, tonic::Status> {
        let put = PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        Ok(KvClient::new(self.channel(i))
            .put(put)
            .await?
            .into_inner()
            .header
            .unwrap()
            .revision)
    }

    async fn get(
        &self,
        i: usize,
        key: &str,
        serializable: bool,
    ) -> Result<Option<String>, tonic::Status> {
        let range = RangeRequest {
            key: key.into(),
            serializable,
            ..Default::default()
        };
        let response = KvClient::new(self.channel(i))
            .range(range)
            .await?
            .into_inner();
        Ok(response
            .kvs
            .first()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    async fn leader(&self, among: &[usize]) -> usize {
        let wait = async {
            loop {
                for &i in among {
                    let status = MaintenanceClient::new(self.channel(i))
                        .status(StatusRequest {})
                        .await;
                    if let Ok(status) = status {
                        let status = status.into_inner();
                        if status.leader != 0 && status.leader == status.header.unwrap().member_id {
                            return i;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .expect("a leader is elected")
    }

    /// Retries `put` until it succeeds (a leader may still be settling).
    async fn put_eventually(&self, i: usize, key: &str, value: &str) -> i64 {
        let wait = async {
            loop {
                match self.put(i, key, value).await {
                    Ok(revision) => return revision,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .expect("the write goes through")
    }

    async fn wait_value(&self, i: usize, key: &str, value: &str) {
        let wait = async {
            while self.get(i, key, true).await.ok().flatten().as_deref() != Some(value) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .expect("the member catches up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_member_are_read_from_every_member() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    cluster
        .put_eventually(follower, "forwarded", "by a follower")
        .await;
    for i in 0..3 {
        // Linearizable: no waiting needed, the read waits for the read index.
        assert_eq!(
            cluster.get(i, "forwarded", false).await.unwrap().as_deref(),
            Some("by a follower")
        );
    }
    let members = ClusterClient::new(cluster.channel(follower))
        .member_list(MemberListRequest {
            linearizable: false,
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    let mut names: Vec<_> = members.iter().map(|m| m.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["m0", "m1", "m2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_survives_its_leader_and_the_leader_catches_up() {
    let mut cluster = Cluster::start(3).await;
    let old = cluster.leader(&[0, 1, 2]).await;
    cluster.put_eventually(old, "before", "1").await;
    cluster.down(old).await;

    let survivors: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = cluster.leader(&survivors).await;
    assert_ne!(new, old);
    // Far more writes than the snapshot interval while the old leader is away
    // (openraft keeps the log a down member still needs, so it catches up
    // from the log; tests/cluster.rs shows a new member catching up by snapshot).
    for n in 0..200 {
        cluster
            .put_eventually(survivors[n % 2], &format!("k{}", n % 10), &n.to_string())
            .await;
    }
    cluster.put_eventually(new, "after", "2").await;

    cluster.up(old).await;
    cluster.wait_value(old, "after", "2").await;
    assert_eq!(
        cluster.get(old, "before", true).await.unwrap().as_deref(),
        Some("1")
    );
    assert_eq!(
        cluster.get(old, "k9", true).await.unwrap().as_deref(),
        Some("199")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_writes_fail_with_etcds_errors_then_recover() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    cluster.put_eventually(leader, "k", "v1").await;
    let (status, body) = support::http_get(cluster.slots[leader].metrics, "/health").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    cluster.down(others[0]).await;
    cluster.down(others[1]).await;

    // Cut off from the majority, the old leader says so on `/health`, as
    // etcd does: a load balancer in front of the members stops using it.
    let (status, body) = support::http_get(cluster.slots[leader].metrics, "/health").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert!(body.contains(r#""health":"false""#), "{body}");
    let (status, _) =
        support::http_get(cluster.slots[leader].metrics, "/health?serializable=true").await;
    assert!(
        ["HTTP/1.1 200 OK", "HTTP/1.1 503 Service Unavailable"].contains(&status.as_str()),
        "{status}"
    );

    let refused = tokio::time::timeout(DEADLINE, cluster.put(leader, "k", "v2"))
        .await
        .expect("the write fails rather than hang");
    let status = refused.expect_err("no quorum, no write");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        ["etcdserver: request timed out", "etcdserver: no leader"].contains(&status.message()),
        "{status:?}"
    );

    cluster.up(others[0]).await;
    cluster.put_eventually(leader, "k", "v3").await;
    assert_eq!(
        cluster.get(others[0], "k", false).await.unwrap().as_deref(),
        Some("v3")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_gives_every_lease_a_full_ttl() {
    use keelson_proto::etcdserverpb::{
        LeaseGrantRequest, LeaseTimeToLiveRequest, lease_client::LeaseClient,
    };

    let mut cluster = Cluster::start(3).await;
    let old = cluster.leader(&[0, 1, 2]).await;
    let follower = (old + 1) % 3;
    let mut leases = LeaseClient::new(cluster.channel(follower));
    let id = leases
        .lease_grant(LeaseGrantRequest { ttl: 6, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let put = PutRequest {
        key: b"session".to_vec(),
        value: b"alive".to_vec(),
        lease: id,
        ..Default::default()
    };
    KvClient::new(cluster.channel(follower))
        .put(put)
        .await
        .unwrap();

    let remaining = |leases: LeaseClient<Channel>| async move {
        let mut leases = leases;
        let asked = leases
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
            .await;
        asked.map(|r| r.into_inner().ttl).unwrap_or(-1)
    };
    // Let the lease run down without keep-alives (time passes; nothing is faked).
    let run_down = async {
        while !(0..=3).contains(&remaining(leases.clone()).await) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(DEADLINE, run_down)
        .await
        .expect("the lease runs down");

    cluster.down(old).await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = cluster.leader(&survivors).await;
    let ttl = remaining(LeaseClient::new(cluster.channel(new))).await;
    assert!(
        ttl >= 5,
        "the new leader restarts the lease's full TTL, got {ttl}"
    );
    assert_eq!(
        cluster.get(new, "session", false).await.unwrap().as_deref(),
        Some("alive")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_every_member_each_get_their_own_revision() {
    const WRITES: usize = 300;
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    cluster.put_eventually(leader, "warm", "up").await;

    // Many writes at once, on every member: they are proposed in batches.
    let writes = (0..WRITES).map(|n| {
        let mut kv = KvClient::new(cluster.channel(n % 3));
        async move {
            let put = PutRequest {
                key: format!("c{n:03}").into(),
                value: n.to_string().into(),
                ..Default::default()
            };
            kv.put(put)
                .await
                .map(|r| r.into_inner().header.unwrap().revision)
        }
    });
    let revisions: Vec<i64> = futures::future::join_all(writes)
        .await
        .into_iter()
        .map(|r| r.expect("every write is acknowledged"))
        .collect();
    let unique: std::collections::BTreeSet<i64> = revisions.iter().copied().collect();
    assert_eq!(
        unique.len(),
        WRITES,
        "every write has a revision of its own"
    );

    for i in 0..3 {
        let range = RangeRequest {
            key: "c".into(),
            range_end: "d".into(),
            ..Default::default()
        };
        let kvs = KvClient::new(cluster.channel(i))
            .range(range)
            .await
            .unwrap()
            .into_inner()
            .kvs;
        assert_eq!(kvs.len(), WRITES, "member {i} holds every write");
        for (n, kv) in kvs.iter().enumerate() {
            assert_eq!(kv.value, n.to_string().into_bytes());
            assert_eq!(kv.mod_revision, revisions[n], "member {i}, key {n}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_snapshot_stream_is_refused() {
    use keelson_proto::keelsonpb::{
        Member, Membership, SnapshotChunk, SnapshotMeta, StoredMembership, Vote, VoterSet,
        raft_client::RaftClient,
    };

    let cluster = Cluster::start(1).await;
    cluster.put_eventually(0, "k", "v1").await;
    let channel = Endpoint::from_shared(format!("http://{}", cluster.slots[0].peer))
        .unwrap()
        .connect_lazy();
    let mut peer = RaftClient::new(channel);
    let vote = Some(Vote {
        term: 1,
        node_id: 1,
        committed: true,
    });
    // A well-formed head: one voter, nothing applied.
    let meta = SnapshotMeta {
        last_log_id: None,
        last_membership: Some(StoredMembership {
            log_id: None,
            membership: Some(Membership {
                configs: vec![VoterSet { ids: vec![1] }],
                members: [(1, Member::default())].into(),
            }),
        }),
        snapshot_id: "forged".into(),
    };
    let streams = [
        ("empty", vec![]),
        (
            "headless",
            vec![SnapshotChunk {
                data: vec![1, 2, 3],
                ..Default::default()
            }],
        ),
        (
            "two heads",
            vec![
                SnapshotChunk {
                    vote,
                    meta: Some(meta.clone()),
                    data: vec![],
                },
                SnapshotChunk {
                    vote,
                    ..Default::default()
                },
            ],
        ),
    ];
    for (what, chunks) in streams {
        let refused = peer
            .install_snapshot(tokio_stream::iter(chunks))
            .await
            .expect_err(what);
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{what}: {refused:?}"
        );
    }
    // Nothing was installed: the member still holds its data and serves.
    assert_eq!(
        cluster.get(0, "k", false).await.unwrap().as_deref(),
        Some("v1")
    );
    cluster.put_eventually(0, "k", "v2").await;
}
