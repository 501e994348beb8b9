//! A member: the store, the order in which writes reach it, and the member's identity.
//!
//! ```text
//!  gRPC services ──propose(command)──► applier thread ──apply(batch)──► MvccStore
//!        ▲                                  │  publish events            (synced)
//!        └──── response + revision ◄────────┴──► WatchHub, Lessor
//! ```
//!
//! Writes are *proposed* and applied in one order by a single applier
//! thread, which takes every proposal waiting at the time as one batch (one
//! synced RocksDB write for the lot). On a single member the applier *is* the
//! log; with replication, the Raft state machine calls the same
//! [`MvccStore::apply`] with committed entries.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keelson_proto::etcdserverpb::{LeaseGrantRequest, ResponseHeader};
use keelson_proto::keelsonpb::{Command, MemberRecord};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::hub::WatchHub;
use crate::lessor::Lessor;
use crate::store::{CommandResponse, LeaseChange, MvccStore, StoreConfig};
use crate::validate::MAX_LEASE_TTL;

/// Everything a member needs to start, apart from its sockets.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub advertise_client_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    pub initial_cluster_token: String,
    /// Largest request accepted, in bytes (etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// How often watchers that asked for it get a progress notification.
    pub progress_notify_interval: Duration,
    /// Recent events kept in memory for watchers.
    pub watch_buffer_events: usize,
    pub store: StoreConfig,
}

impl Default for MemberConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            data_dir: PathBuf::from("default.keelson"),
            advertise_client_urls: vec!["http://localhost:2379".into()],
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            initial_cluster_token: "etcd-cluster".into(),
            max_request_bytes: 1536 * 1024,
            max_txn_ops: crate::validate::DEFAULT_MAX_TXN_OPS,
            progress_notify_interval: Duration::from_secs(600),
            watch_buffer_events: 65_536,
            store: StoreConfig::default(),
        }
    }
}

/// The term every response reports while the store has a single member.
const SINGLE_MEMBER_TERM: u64 = 1;
/// The most proposals the applier takes into one batch.
const MAX_BATCH: usize = 512;

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<(CommandResponse, i64)>>,
}

/// One running member.
pub struct Node {
    identity: MemberRecord,
    config: MemberConfig,
    store: Arc<MvccStore>,
    hub: Arc<WatchHub>,
    lessor: Arc<Mutex<Lessor>>,
    proposals: mpsc::Sender<Proposal>,
    ids: IdGenerator,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

const META_MEMBER: &str = "member";

impl Node {
    /// Opens the member's store and starts its applier thread. The thread
    /// stops once the returned node is dropped, or when storage fails: then it
    /// cancels `failed` and returns the error.
    pub fn start(
        config: MemberConfig,
        failed: CancellationToken,
    ) -> Result<(Arc<Self>, std::thread::JoinHandle<Result<()>>)> {
        let store = Arc::new(MvccStore::open(
            &config.data_dir.join("store"),
            config.store.clone(),
        )?);
        let identity = Self::identity(&store, &config)?;
        let hub = Arc::new(WatchHub::new(store.revision(), config.watch_buffer_events));
        let lessor = Arc::new(Mutex::new(Lessor::default()));
        // A lone member is its own primary: it expires leases.
        lessor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .promote(store.leases(), Instant::now());

        let (proposals, queue) = mpsc::channel(4 * MAX_BATCH);
        let applier = {
            let (store, hub, lessor) = (store.clone(), hub.clone(), lessor.clone());
            std::thread::Builder::new()
                .name("keelson-applier".into())
                .spawn(move || {
                    let outcome = apply_loop(queue, &store, &hub, &lessor);
                    if outcome.is_err() {
                        failed.cancel();
                    }
                    outcome
                })
                .map_err(|source| Error::Thread { source })?
        };
        let ids = IdGenerator::new(identity.member_id);
        tracing::info!(member = %format!("{:x}", identity.member_id), name = %identity.name, "member started");
        let node = Arc::new(Self {
            identity,
            config,
            store,
            hub,
            lessor,
            proposals,
            ids,
        });
        Ok((node, applier))
    }

    /// The identity recorded on first start, or a new one derived as etcd
    /// derives it (from the peer URLs and the cluster token).
    fn identity(store: &MvccStore, config: &MemberConfig) -> Result<MemberRecord> {
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
        let mut peers = config.initial_advertise_peer_urls.clone();
        peers.sort();
        let member_id = hash_u64([
            peers.concat().as_bytes(),
            config.initial_cluster_token.as_bytes(),
        ]);
        let record = MemberRecord {
            member_id,
            cluster_id: hash_u64([
                &member_id.to_be_bytes()[..],
                config.initial_cluster_token.as_bytes(),
            ]),
            name: config.name.clone(),
            client_urls: config.advertise_client_urls.clone(),
            peer_urls: config.initial_advertise_peer_urls.clone(),
        };
        store.put_meta(META_MEMBER, &record.encode_to_vec())?;
        Ok(record)
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

    /// The Raft term responses report.
    pub fn term(&self) -> u64 {
        SINGLE_MEMBER_TERM
    }

    /// The member that currently leads (this one, while it is alone).
    pub fn leader(&self) -> u64 {
        self.identity.member_id
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
    /// response and the store revision after it, once it is durable.
    pub async fn propose(&self, command: Command) -> Result<(CommandResponse, i64)> {
        let size = command.encoded_len();
        if size > self.config.max_request_bytes {
            return Err(Error::RequestTooLarge {
                size,
                max: self.config.max_request_bytes,
            });
        }
        let (reply, response) = oneshot::channel();
        self.proposals
            .send(Proposal { command, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        response.await.map_err(|_| Error::Stopped)?
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
        let op = keelson_proto::keelsonpb::command::Op::LeaseGrant(request);
        self.propose(Command { op: Some(op) }).await
    }

    fn lessor(&self) -> MutexGuard<'_, Lessor> {
        self.lessor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps lease `id` alive; its TTL, or `None` if it is unknown or expired.
    pub fn lease_renew(&self, id: i64) -> Option<i64> {
        self.lessor().renew(id, Instant::now())
    }

    /// Seconds left on lease `id` (etcd truncates), `None` if unknown.
    pub fn lease_remaining(&self, id: i64) -> Option<i64> {
        self.lessor()
            .remaining(id, Instant::now())
            .map(|left| left.as_secs() as i64)
    }

    /// Proposes the revocation of every lease past its deadline; called
    /// periodically while the member is primary.
    pub async fn revoke_expired(&self) {
        let expired = self.lessor().expired(Instant::now(), 1000);
        for id in expired {
            let op = keelson_proto::keelsonpb::command::Op::LeaseRevoke(
                keelson_proto::etcdserverpb::LeaseRevokeRequest { id },
            );
            match self.propose(Command { op: Some(op) }).await {
                Ok(_) => tracing::info!(lease = %format!("{id:x}"), "lease expired"),
                Err(Error::LeaseNotFound { .. }) => {}
                Err(error) => {
                    tracing::warn!(lease = %format!("{id:x}"), %error, "revoking expired lease failed")
                }
            }
        }
    }
}

fn apply_loop(
    mut queue: mpsc::Receiver<Proposal>,
    store: &MvccStore,
    hub: &WatchHub,
    lessor: &Mutex<Lessor>,
) -> Result<()> {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH
            && let Ok(next) = queue.try_recv()
        {
            batch.push(next);
        }
        let first_index = store.applied_index() + 1;
        let commands: Vec<(u64, Command)> = batch
            .iter_mut()
            .enumerate()
            .map(|(i, p)| (first_index + i as u64, std::mem::take(&mut p.command)))
            .collect();
        match store.apply(&commands) {
            Ok(output) => {
                metrics::counter!("etcd_server_proposals_committed_total")
                    .increment(commands.len() as u64);
                metrics::counter!("etcd_server_proposals_applied_total")
                    .increment(commands.len() as u64);
                {
                    let now = Instant::now();
                    let mut lessor = lessor.lock().unwrap_or_else(|p| p.into_inner());
                    for change in &output.lease_changes {
                        match *change {
                            LeaseChange::Granted { id, ttl } => lessor.granted(id, ttl, now),
                            LeaseChange::Revoked { id } => lessor.revoked(id),
                        }
                    }
                }
                hub.publish(output.events, store.revision());
                for (proposal, applied) in batch.drain(..).zip(output.applied) {
                    let result = applied.response.map(|r| (r, applied.revision));
                    if result.is_err() {
                        metrics::counter!("etcd_server_proposals_failed_total").increment(1);
                    }
                    // The client may have gone away; its write still happened.
                    let _ = proposal.reply.send(result);
                }
            }
            Err(error) => {
                tracing::error!(error = %crate::error::error_chain(&error), "applying to the store failed; the applier stops");
                for proposal in batch.drain(..) {
                    let _ = proposal.reply.send(Err(Error::Stopped));
                }
                return Err(error);
            }
        }
    }
    Ok(())
}

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
