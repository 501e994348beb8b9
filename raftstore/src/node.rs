//! A member: its store, its place in the Raft cluster, and its identity.
//!
//! ```text
//!  gRPC services ──propose(command)──► batch ─► leader? ──yes──► Raft::client_write ──► log ──► peers
//!        ▲                                        │ no                       │ committed
//!        │                                        └──► Forward to the leader │
//!        │                                                         ▼
//!        └──── response + revision ◄──── StateMachine::apply ──► MvccStore, WatchHub, Lessor
//! ```
//!
//! Every member runs openraft, a lone one too (a cluster of one). Writes go
//! through the leader's log; a follower hands them to the leader over the
//! peer connection. Linearizable reads wait until the member has applied the
//! leader's read index. Only the leader tracks lease deadlines (see
//! [`crate::lessor`]); keep-alives reaching a follower are passed on to it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keelson_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    ResponseHeader,
};
use keelson_proto::keelsonpb::{self as pb, Command, MemberRecord, command::Op};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::hub::WatchHub;
use crate::lessor::Lessor;
use crate::propose::{Outcome, Proposer, write_error};
use crate::raft::network::{Network, Peers};
use crate::raft::read_index::{ReadIndexBatcher, ReadIndexFailure};
use crate::raft::{LogStore, MemberInfo, StateMachine, TypeConfig};
use crate::store::{CommandResponse, MvccStore, StoreConfig};
use crate::validate::MAX_LEASE_TTL;

/// Whether this member founds a new cluster or joins one that exists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

/// Everything a member needs to start, apart from its sockets.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub advertise_client_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// The founding members, `(name, peer URL)`; empty means this member alone.
    pub initial_cluster: Vec<(String, String)>,
    pub initial_cluster_state: ClusterState,
    /// A member joining as a learner makes itself a voter once it has
    /// caught up with the leader.
    pub promote_when_caught_up: bool,
    pub initial_cluster_token: String,
    /// TLS on the peer and client ports, both ways (`https://` URLs).
    pub tls: Option<crate::tls::MemberTls>,
    /// How often the leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// How long a follower waits without a heartbeat before it campaigns
    /// (randomised between this and twice this).
    pub election_timeout: Duration,
    /// How long a write or a linearizable read may wait for the cluster.
    pub request_timeout: Duration,
    /// Largest request accepted, in bytes (etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// How often watchers that asked for it get a progress notification.
    pub progress_notify_interval: Duration,
    /// Recent events kept in memory for watchers.
    pub watch_buffer_events: usize,
    /// Applied entries after which a new snapshot is taken (and the log purged behind it).
    pub snapshot_count: u64,
    /// Deliberately broken: linearizable reads skip the read index and
    /// answer from this member's state (for testing the chaos checkers).
    pub unsafe_stale_reads: bool,
    pub store: StoreConfig,
}

impl Default for MemberConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            data_dir: PathBuf::from("default.keelson"),
            advertise_client_urls: vec!["http://localhost:2379".into()],
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            initial_cluster: Vec::new(),
            initial_cluster_state: ClusterState::New,
            promote_when_caught_up: false,
            initial_cluster_token: "etcd-cluster".into(),
            tls: None,
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: Duration::from_millis(250),
            request_timeout: Duration::from_secs(5),
            max_request_bytes: 1536 * 1024,
            max_txn_ops: crate::validate::DEFAULT_MAX_TXN_OPS,
            progress_notify_interval: Duration::from_secs(600),
            watch_buffer_events: 65_536,
            snapshot_count: 10_000,
            unsafe_stale_reads: false,
            store: StoreConfig::default(),
        }
    }
}

impl MemberConfig {
    /// The founding members with their IDs, this member included, exactly as
    /// every founder computes them from the same flags: each founder proposes
    /// this membership as the first log entry, and the entries must be equal.
    /// Client URLs are not in the flags; members publish them once joined.
    fn founders(&self) -> BTreeMap<u64, MemberInfo> {
        let mut founders = BTreeMap::new();
        for (name, url) in &self.initial_cluster {
            let info = MemberInfo {
                name: name.clone(),
                peer_urls: vec![url.clone()],
                client_urls: Vec::new(),
            };
            founders.insert(
                member_id(&info.peer_urls, &self.initial_cluster_token),
                info,
            );
        }
        let me = MemberInfo {
            client_urls: Vec::new(),
            ..self.member_info()
        };
        founders.insert(member_id(&me.peer_urls, &self.initial_cluster_token), me);
        founders
    }

    fn member_info(&self) -> MemberInfo {
        MemberInfo {
            name: self.name.clone(),
            peer_urls: self.initial_advertise_peer_urls.clone(),
            client_urls: self.advertise_client_urls.clone(),
        }
    }
}

/// A founding member's ID, derived as etcd derives it: from its peer URLs
/// and the cluster token, so every founder computes the same IDs from the
/// same flags.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    hash_u64([urls.concat().as_bytes(), token.as_bytes()])
}

/// The ID of a member added to a running cluster: the peer URLs, the token
/// and the time, as etcd's `member add` makes it, so a member added again
/// under the same URL (its disk lost and replaced) is a new member that no
/// entry about its predecessor applies to.
fn added_member_id(peer_urls: &[String], token: &str) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut urls = peer_urls.to_vec();
    urls.sort();
    hash_u64([
        urls.concat().as_bytes(),
        token.as_bytes(),
        &nanos.to_be_bytes(),
    ])
}

/// How long a member joining an existing cluster keeps asking the members
/// it was given for the ID it was added under.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a member joining an existing cluster learns from its peers: the
/// ID `member add` gave it (found by its peer URLs) and the cluster's ID.
async fn discover_identity(config: &MemberConfig) -> Result<(u64, u64)> {
    let mine: BTreeSet<&String> = config.initial_advertise_peer_urls.iter().collect();
    let peers: Vec<&String> = config
        .initial_cluster
        .iter()
        .map(|(_, url)| url)
        .filter(|url| !mine.contains(url))
        .collect();
    if peers.is_empty() {
        return Err(Error::Join {
            reason: "--initial-cluster names no member but this one to ask".into(),
        });
    }
    let deadline = Instant::now() + DISCOVERY_TIMEOUT;
    loop {
        // Every peer at once: some of them may be down, or not started yet.
        let asks = peers.iter().map(|url| async move {
            let asked = async {
                let channel = crate::tls::endpoint(url, config.tls.as_ref())
                    .map_err(|e| e.to_string())?
                    .connect_timeout(Duration::from_secs(2))
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                pb::raft_client::RaftClient::new(channel)
                    .members(pb::MembersRequest {})
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|status| status.message().to_owned())
            };
            tokio::time::timeout(Duration::from_secs(3), asked)
                .await
                .unwrap_or_else(|_| Err("no answer within 3s".into()))
                .map_err(|failure| format!("{url}: {failure}"))
        });
        let answers = futures::future::join_all(asks).await;
        let mut failures = Vec::new();
        for answer in answers {
            match answer {
                Ok(answer) => {
                    let found = answer.members.iter().find(|(_, member)| {
                        member.peer_urls.iter().collect::<BTreeSet<_>>() == mine
                    });
                    if let Some((id, _)) = found {
                        return Ok((*id, answer.cluster_id));
                    }
                    // A member that has not applied the addition yet.
                    failures.push(format!(
                        "the cluster has no member with peer URLs {}: add it first (etcdctl member add, or keelson server --join)",
                        config.initial_advertise_peer_urls.join(",")
                    ));
                }
                Err(failure) => failures.push(failure),
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Join {
                reason: format!(
                    "no member of --initial-cluster answered within {DISCOVERY_TIMEOUT:?} ({})",
                    failures.join("; ")
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One running member.
pub struct Node {
    identity: MemberRecord,
    config: MemberConfig,
    store: Arc<MvccStore>,
    hub: Arc<WatchHub>,
    lessor: Arc<Mutex<Lessor>>,
    raft: Raft<TypeConfig>,
    reads: Arc<ReadIndexBatcher>,
    proposer: Arc<Proposer>,
    peers: Peers,
    ids: IdGenerator,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

pub(crate) const META_MEMBER: &str = "member";

impl Node {
    /// Opens the member's store and starts its Raft. A member of a new
    /// cluster that has never run proposes the founding membership.
    pub async fn start(config: MemberConfig) -> Result<Arc<Self>> {
        let store = Arc::new(MvccStore::open(
            &config.data_dir.join("store"),
            config.store.clone(),
        )?);
        let joining = match store.meta(META_MEMBER)? {
            None if config.initial_cluster_state == ClusterState::Existing => {
                Some(discover_identity(&config).await?)
            }
            _ => None,
        };
        let identity = Self::identity(&store, &config, joining)?;
        let hub = Arc::new(WatchHub::new(store.revision(), config.watch_buffer_events));
        let lessor = Arc::new(Mutex::new(Lessor::default()));
        let peers = Peers::new(config.tls.clone());

        let election = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: config.initial_cluster_token.clone(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            // Keep some log behind a snapshot for members that are only a little behind.
            max_in_snapshot_log_to_keep: config.snapshot_count.min(1000),
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|source| Error::RaftConfig {
            source: Box::new(source),
        })?;
        let state_machine = StateMachine::new(store.clone(), hub.clone(), lessor.clone());
        let raft = Raft::new(
            identity.member_id,
            Arc::new(raft_config),
            Network {
                peers: peers.clone(),
            },
            LogStore::new(store.clone()),
            state_machine,
        )
        .await
        .map_err(|source| Error::RaftFatal {
            source: Box::new(source),
        })?;

        if config.initial_cluster_state == ClusterState::New
            && !raft
                .is_initialized()
                .await
                .map_err(|source| Error::RaftFatal {
                    source: Box::new(source),
                })?
        {
            let founders = config.founders();
            tracing::info!(members = founders.len(), "founding a new cluster");
            // Every founder proposes the same membership; openraft accepts
            // that, and the first elected leader's entry wins.
            if let Err(error) = raft.initialize(founders).await {
                tracing::info!(%error, "cluster already initialized");
            }
        }
        if store.is_restored()? {
            Self::start_log_after_restored_data(&raft, config.request_timeout * 6).await?;
            store.clear_restored()?;
        }
        tracing::info!(member = %format!("{:x}", identity.member_id), name = %identity.name, "member started");
        let ids = IdGenerator::new(identity.member_id);
        Ok(Arc::new(Self {
            identity,
            config,
            store,
            hub,
            lessor,
            reads: ReadIndexBatcher::new(raft.clone()),
            proposer: Proposer::new(raft.clone(), peers.clone()),
            raft,
            peers,
            ids,
        }))
    }

    /// Data restored from a snapshot is not in the log of the cluster the
    /// member founds on it. Before any peer is served, the member snapshots
    /// what it applied and purges the log behind it, so a member that joins
    /// later is sent that snapshot — the restored data — rather than a log
    /// that starts after it.
    async fn start_log_after_restored_data(
        raft: &Raft<TypeConfig>,
        within: Duration,
    ) -> Result<()> {
        let stopped = |_| Error::Stopped;
        let fatal = |source| Error::RaftFatal {
            source: Box::new(source),
        };
        let applied = raft
            .wait(Some(within))
            .metrics(
                |m| m.state == ServerState::Leader && m.last_applied.is_some(),
                "the restored member leads and has applied its membership",
            )
            .await
            .map_err(stopped)?
            .last_applied
            .map_or(0, |id| id.index);
        raft.trigger().snapshot().await.map_err(fatal)?;
        raft.wait(Some(within))
            .metrics(
                |m| m.snapshot.is_some_and(|id| id.index >= applied),
                "a snapshot of the restored data",
            )
            .await
            .map_err(stopped)?;
        raft.trigger().purge_log(applied).await.map_err(fatal)?;
        raft.wait(Some(within))
            .metrics(
                |m| m.purged.is_some_and(|id| id.index >= applied),
                "the log purged behind it",
            )
            .await
            .map_err(stopped)?;
        tracing::info!(
            index = applied,
            "restored data: the log now starts after its snapshot"
        );
        Ok(())
    }

    /// The identity recorded on first start, or a new one: a founder's
    /// derived from the flags, a joiner's as its peers told it (`joining`).
    fn identity(
        store: &MvccStore,
        config: &MemberConfig,
        joining: Option<(u64, u64)>,
    ) -> Result<MemberRecord> {
        if let Some(raw) = store.meta(META_MEMBER)? {
            let mut record =
                MemberRecord::decode(raw.as_slice()).map_err(|_| Error::CorruptMeta {
                    key: META_MEMBER,
                    reason: "undecodable MemberRecord",
                })?;
            if record.name != config.name {
                return Err(Error::WrongMember {
                    found: record.name,
                    expected: config.name.clone(),
                });
            }
            record.client_urls = config.advertise_client_urls.clone();
            return Ok(record);
        }
        let (member_id, cluster_id) = joining.unwrap_or_else(|| {
            let founders: Vec<u8> = config
                .founders()
                .keys()
                .flat_map(|id| id.to_be_bytes())
                .collect();
            (
                member_id(
                    &config.initial_advertise_peer_urls,
                    &config.initial_cluster_token,
                ),
                hash_u64([founders.as_slice(), config.initial_cluster_token.as_bytes()]),
            )
        });
        let record = MemberRecord {
            member_id,
            cluster_id,
            name: config.name.clone(),
            client_urls: config.advertise_client_urls.clone(),
            peer_urls: config.initial_advertise_peer_urls.clone(),
        };
        store.put_meta(META_MEMBER, &record.encode_to_vec())?;
        Ok(record)
    }

    /// Follows leadership: the leader alone tracks lease deadlines, and a
    /// member removed from the cluster stops (cancels `stop`). Runs until `stop`.
    pub async fn follow_leadership(self: Arc<Self>, stop: CancellationToken) {
        let mut metrics = self.raft.metrics();
        let mut was_leader = false;
        let mut leader = None;
        let mut was_member = false;
        loop {
            let (is_leader, current_leader, is_member) = {
                let m = metrics.borrow_and_update();
                let membership = m.membership_config.membership();
                let me = self.identity.member_id;
                // A voter being removed sees the joint configuration whose
                // target leaves it out, and never the final one: the leader
                // stops replicating to it as soon as it appends that. (A
                // learner is in neither half of a joint configuration that
                // promotes another member, and is not leaving.)
                let joint = membership.get_joint_config();
                let leaving = joint.len() > 1
                    && joint.first().is_some_and(|from| from.contains(&me))
                    && joint.last().is_some_and(|target| !target.contains(&me));
                let is_member = !leaving && membership.nodes().any(|(id, _)| *id == me);
                (m.state == ServerState::Leader, m.current_leader, is_member)
            };
            if is_leader != was_leader {
                let mut lessor = self.lessor();
                if is_leader {
                    lessor.promote(self.store.leases(), Instant::now());
                    tracing::info!("became leader: lease deadlines restart from now");
                } else {
                    lessor.demote();
                }
                was_leader = is_leader;
            }
            if current_leader != leader {
                if current_leader.is_some() {
                    metrics::counter!("etcd_server_leader_changes_seen_total").increment(1);
                }
                leader = current_leader;
            }
            metrics::gauge!("etcd_server_is_leader").set(f64::from(u8::from(is_leader)));
            metrics::gauge!("etcd_server_has_leader")
                .set(f64::from(u8::from(current_leader.is_some())));
            // A leader removing itself finishes the change (and steps down)
            // first. Every added member has an ID of its own, so no entry
            // about an earlier member under the same peer URL applies here.
            if was_member && !is_member && !is_leader {
                tracing::warn!("this member was removed from the cluster; stopping");
                stop.cancel();
            }
            was_member |= is_member;
            tokio::select! {
                () = stop.cancelled() => break,
                changed = metrics.changed() => if changed.is_err() { break },
            }
        }
    }

    /// Waits until this member appears in the cluster's membership: at once
    /// for a founder, once the leader has replicated it for a joining member.
    pub async fn joined(&self) -> Result<()> {
        let me = self.identity.member_id;
        self.raft
            .wait(None)
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .nodes()
                        .any(|(id, _)| *id == me)
                },
                "membership",
            )
            .await
            .map(drop)
            .map_err(|_| Error::Stopped)
    }

    /// Makes the membership record this member's name and client URLs, as
    /// etcd's members publish theirs: founders only know each other's peer
    /// URLs, and `member add` knows only those. Retries until it is done or
    /// `stop` fires.
    pub async fn publish(self: Arc<Self>, stop: CancellationToken) {
        let me = self.identity.member_id;
        let mine = self.config.member_info();
        let mut metrics = self.raft.metrics();
        // Attempts back off: until the first membership is committed, every
        // change is refused, and each refusal costs the leader a log line.
        let mut backoff = self.config.heartbeat_interval;
        let mut next_attempt = Instant::now();
        loop {
            let recorded = metrics
                .borrow_and_update()
                .membership_config
                .membership()
                .get_node(&me)
                .cloned();
            if recorded.as_ref() == Some(&mine) {
                return;
            }
            if recorded.is_some() && Instant::now() >= next_attempt {
                match self.set_member_info(me, mine.clone()).await {
                    Ok(()) => tracing::info!("published this member's attributes"),
                    Err(error) => {
                        tracing::debug!(%error, "publishing this member's attributes failed; will retry")
                    }
                }
                next_attempt = Instant::now() + backoff;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            tokio::select! {
                () = stop.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(next_attempt) => {}
            }
        }
    }

    /// Records `info` for member `id`, through the leader.
    pub async fn set_member_info(&self, id: u64, info: MemberInfo) -> Result<()> {
        let change = ChangeMembers::SetNodes(BTreeMap::from([(id, info.clone())]));
        let outcome = if self.raft.metrics().borrow().state == ServerState::Leader {
            self.membership(self.raft.change_membership(change, true).await)
        } else {
            Err(self.not_leader())
        };
        match outcome {
            Err(Error::NotLeader {
                leader: Some((leader, member)),
            }) => {
                let mut client = self
                    .peers
                    .client(leader, &member)
                    .map_err(|_| Error::NoLeader)?;
                let request = pb::PublishRequest {
                    member_id: id,
                    member: Some(pb::Member {
                        name: info.name,
                        peer_urls: info.peer_urls,
                        client_urls: info.client_urls,
                    }),
                };
                client.publish(request).await.map_err(Error::remote)?;
                Ok(())
            }
            outcome => outcome,
        }
    }

    /// The leader's client URL, for requests only the leader serves.
    pub fn leader_client_url(&self) -> Option<String> {
        let leader = self.leader();
        self.members()
            .into_iter()
            .find(|(id, _, _)| *id == leader)
            .and_then(|(_, info, _)| info.client_urls.first().cloned())
    }

    /// Stops Raft; the store is closed when the last handle goes.
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft did not stop cleanly");
        }
    }

    pub fn identity_record(&self) -> &MemberRecord {
        &self.identity
    }

    pub fn config(&self) -> &MemberConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<MvccStore> {
        &self.store
    }

    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The member that leads now (0: none known).
    pub fn leader(&self) -> u64 {
        self.raft.metrics().borrow().current_leader.unwrap_or(0)
    }

    /// The last log index, and the last applied one.
    pub fn raft_indexes(&self) -> (u64, u64) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        (
            m.last_log_index.unwrap_or(0),
            m.last_applied.map_or(0, |id| id.index),
        )
    }

    /// Every member: ID, description, and whether it is a learner.
    pub fn members(&self) -> Vec<(u64, MemberInfo, bool)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, info)| (*id, info.clone(), !voters.contains(id)))
            .collect()
    }

    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision,
            raft_term: self.term(),
        }
    }

    /// Orders `command` after every earlier write and applies it; returns its
    /// response and the store revision after it, once a quorum has it durably.
    /// Writes waiting at once are proposed together (see [`crate::propose`]);
    /// a follower hands them to the leader.
    pub async fn propose(&self, command: Command) -> Result<(CommandResponse, i64)> {
        let size = command.encoded_len();
        if size > self.config.max_request_bytes {
            return Err(Error::RequestTooLarge {
                size,
                max: self.config.max_request_bytes,
            });
        }
        let deadline = Instant::now() + self.config.request_timeout;
        let pending = metrics::gauge!("etcd_server_proposals_pending");
        pending.increment(1.0);
        let _done = decrement_on_drop(pending);
        self.proposer.propose(command, deadline).await
    }

    /// Proposes writes a follower forwarded, batched with this member's
    /// own; one outcome per command.
    pub async fn propose_forwarded(&self, commands: Vec<Command>) -> Vec<Outcome> {
        let deadline = Instant::now() + self.config.request_timeout;
        self.proposer.propose_all(commands, deadline).await
    }

    async fn wait_for_leader(&self, deadline: Instant) -> Result<()> {
        self.proposer.wait_for_leader(deadline).await
    }

    /// Returns once this member has applied every write acknowledged before
    /// the call: the leader confirms it still leads, a follower waits for
    /// the leader's read index.
    pub async fn linearizable_barrier(&self) -> Result<()> {
        let deadline = Instant::now() + self.config.request_timeout;
        tokio::time::timeout_at(deadline, async {
            loop {
                match self.read_index().await {
                    Ok(_) => return Ok(()),
                    Err(Error::NotLeader {
                        leader: Some((id, member)),
                    }) => {
                        let mut client =
                            self.peers.client(id, &member).map_err(|_| Error::Timeout)?;
                        // A read is safe to ask again: if another member
                        // leads before the old leader answers, ask it.
                        let asked = client.read_index(pb::ReadIndexRequest {});
                        let replaced = self.proposer.wait_for_leader_change(id, deadline);
                        let answer = tokio::select! {
                            answer = asked => answer,
                            Ok(()) = replaced => continue,
                        };
                        let index = match answer {
                            Ok(response) => response.into_inner().index,
                            // The leader's own refusal.
                            Err(status) if status.message().starts_with("etcdserver:") => {
                                return Err(Error::remote(status));
                            }
                            // It could not be reached: a read is safe to ask
                            // again, of the next leader.
                            Err(_) => {
                                self.proposer.wait_for_leader_change(id, deadline).await?;
                                continue;
                            }
                        };
                        let left = deadline.saturating_duration_since(Instant::now());
                        self.raft
                            .wait(Some(left))
                            .applied_index_at_least(Some(index), "read index")
                            .await
                            .map_err(|_| Error::Timeout)?;
                        return Ok(());
                    }
                    Err(Error::NotLeader { leader: None }) => {
                        self.wait_for_leader(deadline).await?
                    }
                    Err(error) => return Err(error),
                }
            }
        })
        .await
        .map_err(|_| Error::Timeout)?
    }

    /// The leader's read index (confirmed with a quorum, batched with
    /// concurrent reads), once applied here; for reads on the leader and for
    /// followers that ask.
    pub async fn read_index(&self) -> Result<u64> {
        self.reads
            .read_index()
            .await
            .map_err(|failure| match failure {
                ReadIndexFailure::NotLeader(leader) => Error::NotLeader { leader },
                ReadIndexFailure::NoQuorum => Error::Timeout,
                ReadIndexFailure::Stopped => Error::Stopped,
            })
    }

    /// Grants a lease: checks the TTL, picks an ID if the client left it to
    /// the server, and proposes the grant.
    pub async fn lease_grant(
        &self,
        mut request: LeaseGrantRequest,
    ) -> Result<(CommandResponse, i64)> {
        if request.ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge {
                ttl: request.ttl,
                max: MAX_LEASE_TTL,
            });
        }
        if request.id == 0 {
            request.id = self.ids.next_lease_id();
        }
        self.propose(Command {
            op: Some(Op::LeaseGrant(request)),
        })
        .await
    }

    fn lessor(&self) -> MutexGuard<'_, Lessor> {
        self.lessor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where lease questions go: `None` while this member leads, else the leader.
    fn lease_authority(&self) -> Option<(u64, MemberInfo)> {
        if self.lessor().is_primary() {
            return None;
        }
        let leader = self.leader();
        self.members()
            .into_iter()
            .find(|(id, _, _)| *id == leader)
            .map(|(id, info, _)| (id, info))
    }

    /// Keeps lease `id` alive; its TTL, or 0 if it is unknown or expired.
    pub async fn lease_renew(&self, id: i64) -> Result<i64> {
        match self.lease_authority() {
            None => Ok(self.lessor().renew(id, Instant::now()).unwrap_or(0)),
            Some((leader, member)) => {
                let mut client = self
                    .peers
                    .client(leader, &member)
                    .map_err(|_| Error::NoLeader)?;
                let response = client
                    .lease_keep_alive(LeaseKeepAliveRequest { id })
                    .await
                    .map_err(Error::remote)?;
                Ok(response.into_inner().ttl)
            }
        }
    }

    /// Seconds left on lease `id` (etcd truncates), `None` if unknown.
    pub async fn lease_remaining(&self, id: i64) -> Result<Option<i64>> {
        match self.lease_authority() {
            None => Ok(self
                .lessor()
                .remaining(id, Instant::now())
                .map(|left| left.as_secs() as i64)),
            Some((leader, member)) => {
                let mut client = self
                    .peers
                    .client(leader, &member)
                    .map_err(|_| Error::NoLeader)?;
                let response = client
                    .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
                    .await
                    .map_err(Error::remote)?;
                let ttl = response.into_inner().ttl;
                Ok((ttl >= 0).then_some(ttl))
            }
        }
    }

    /// Proposes the revocation of every lease past its deadline; called
    /// periodically (only the leader has deadlines).
    pub async fn revoke_expired(&self) {
        let expired = self.lessor().expired(Instant::now(), 1000);
        for id in expired {
            let command = Command {
                op: Some(Op::LeaseRevoke(LeaseRevokeRequest { id })),
            };
            match self.propose(command).await {
                Ok(_) => tracing::info!(lease = %format!("{id:x}"), "lease expired"),
                Err(Error::LeaseNotFound { .. }) => {}
                Err(error) => {
                    tracing::warn!(lease = %format!("{id:x}"), %error, "revoking expired lease failed")
                }
            }
        }
    }

    /// Adds a member (as a learner first); returns its ID. Only the leader changes membership.
    pub async fn add_member(&self, peer_urls: Vec<String>, learner: bool) -> Result<u64> {
        let id = added_member_id(&peer_urls, &self.config.initial_cluster_token);
        let members = self.members();
        if members.iter().any(|(known, _, _)| *known == id) {
            return Err(Error::MemberExists { id });
        }
        if let Some(url) = members
            .iter()
            .flat_map(|(_, info, _)| &info.peer_urls)
            .find(|url| peer_urls.contains(url))
        {
            return Err(Error::PeerUrlExists { url: url.clone() });
        }
        let info = MemberInfo {
            name: String::new(),
            peer_urls,
            client_urls: Vec::new(),
        };
        self.membership(self.raft.add_learner(id, info, false).await)?;
        if !learner {
            self.membership(
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                    .await,
            )?;
        }
        Ok(id)
    }

    /// Makes a learner a voter.
    pub async fn promote_member(&self, id: u64) -> Result<()> {
        match self
            .members()
            .into_iter()
            .find(|(known, _, _)| *known == id)
        {
            None => return Err(Error::MemberNotFound { id }),
            Some((_, _, false)) => return Err(Error::MemberNotLearner { id }),
            Some(_) => {}
        }
        // Only the leader knows how far the learner has got.
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return Err(self.not_leader());
        }
        if !self.in_sync(id) {
            return Err(Error::LearnerNotReady { id });
        }
        self.membership(
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                .await,
        )
    }

    /// This member does not lead: who does, for the caller to ask.
    fn not_leader(&self) -> Error {
        let leader = self.leader();
        Error::NotLeader {
            leader: self
                .members()
                .into_iter()
                .find(|(id, _, _)| *id == leader)
                .map(|(id, info, _)| (id, info)),
        }
    }

    /// Whether learner `id` has replicated at least 90 % of the leader's
    /// log, etcd's bar for promoting it (a voter far behind would hold up
    /// every commit that needs it).
    fn in_sync(&self, id: u64) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.last_log_index.unwrap_or(0);
        let matched = m
            .replication
            .as_ref()
            .and_then(|replication| replication.get(&id).cloned().flatten())
            .map_or(0, |log_id| log_id.index);
        matched as f64 >= leader as f64 * 0.9
    }

    /// Removes a member from the cluster.
    pub async fn remove_member(&self, id: u64) -> Result<()> {
        let learner = match self
            .members()
            .into_iter()
            .find(|(known, _, _)| *known == id)
        {
            None => return Err(Error::MemberNotFound { id }),
            Some((_, _, learner)) => learner,
        };
        let change = if learner {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        };
        self.membership(self.raft.change_membership(change, false).await)
    }

    fn membership<T>(
        &self,
        outcome: std::result::Result<T, RaftError<u64, ClientWriteError<u64, MemberInfo>>>,
    ) -> Result<()> {
        outcome.map(drop).map_err(write_error)
    }
}

/// Decrements `gauge` when dropped, however the proposal ends.
fn decrement_on_drop(gauge: metrics::Gauge) -> impl Drop {
    struct Decrement(metrics::Gauge);
    impl Drop for Decrement {
        fn drop(&mut self) {
            self.0.decrement(1.0);
        }
    }
    Decrement(gauge)
}

/// What a refused write (or membership change) means for the client.
/// The first eight bytes of a SHA-256 over `parts`.
fn hash_u64<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// Unique IDs made by one member, laid out as etcd lays out its request IDs:
/// 16 bits of member ID, 40 bits of start time in milliseconds, and a counter
/// in the low bits that carries into the time, so IDs never repeat even
/// across restarts.
#[derive(Debug)]
struct IdGenerator {
    prefix: u64,
    suffix: AtomicU64,
}

const SUFFIX_BITS: u32 = 48;
const COUNTER_BITS: u32 = 8;

impl IdGenerator {
    fn new(member_id: u64) -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let time_bits = millis & ((1 << (SUFFIX_BITS - COUNTER_BITS)) - 1);
        Self {
            prefix: member_id << SUFFIX_BITS,
            suffix: AtomicU64::new(time_bits << COUNTER_BITS),
        }
    }

    /// A positive lease ID (etcd's lease IDs are non-negative int64s).
    fn next_lease_id(&self) -> i64 {
        let suffix = self.suffix.fetch_add(1, Ordering::Relaxed) + 1;
        let id = (self.prefix | (suffix & ((1 << SUFFIX_BITS) - 1))) & (i64::MAX as u64);
        match id as i64 {
            0 => 1,
            id => id,
        }
    }
}
