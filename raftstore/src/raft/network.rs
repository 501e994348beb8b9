//! Peer traffic over gRPC: openraft's RPCs, and what followers ask of the leader.
//!
//! One lazily connected channel per peer, shared by every caller and reused
//! for the life of the member ([`Peers`]); each call has an explicit deadline.
//! Incoming messages are decoded with [`super::codec`], so a malformed one is
//! answered with `InvalidArgument`, never a panic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keelson_proto::keelsonpb::{self as pb, raft_client::RaftClient};
use openraft::error::Infallible;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError,
    ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot, Vote};
use prost::Message;
use tonic::transport::Channel;

use super::codec;
use super::{MemberInfo, TypeConfig};

/// Largest peer message: snapshot chunks are well under it.
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Bytes of log entries one append carries at most (unless one entry is
/// larger). openraft 0.9 gives an append one heartbeat interval, 50 ms
/// here, to be sent, appended durably and answered; an append much larger
/// than this cannot make it under load, is cancelled, and is sent again
/// whole: replication stalls for good (seen with 300 one-megabyte entries).
pub const MAX_APPEND_BYTES: usize = 2 * 1024 * 1024;
/// Bytes of snapshot data per streamed chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections to the other members, by member ID.
#[derive(Clone, Debug, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<u64, (String, Channel)>>>,
    /// This member's TLS identity, for peers at `https://` URLs.
    tls: Option<crate::tls::MemberTls>,
}

/// A peer could not be reached at all (no usable URL).
#[derive(Debug, thiserror::Error)]
#[error("member {id:x} has no usable peer URL {url:?}")]
pub struct BadPeerUrl {
    pub id: u64,
    pub url: String,
}

impl Peers {
    pub fn new(tls: Option<crate::tls::MemberTls>) -> Self {
        Self {
            channels: Arc::default(),
            tls,
        }
    }

    /// A client for member `id`, reusing its connection while its URL stays the same.
    pub fn client(&self, id: u64, member: &MemberInfo) -> Result<RaftClient<Channel>, BadPeerUrl> {
        let url = member.peer_urls.first().cloned().unwrap_or_default();
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, channel)) = channels.get(&id)
            && *known == url
        {
            return Ok(client(channel.clone()));
        }
        let channel = crate::tls::endpoint(&url, self.tls.as_ref())
            .map_err(|_| BadPeerUrl {
                id,
                url: url.clone(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .connect_lazy();
        channels.insert(id, (url, channel.clone()));
        Ok(client(channel))
    }
}

fn client(channel: Channel) -> RaftClient<Channel> {
    RaftClient::new(channel)
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
}

/// openraft's view of the network.
#[derive(Clone, Debug, Default)]
pub struct Network {
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &MemberInfo) -> Connection {
        Connection {
            target,
            client: self.peers.client(target, node),
        }
    }
}

/// openraft's link to one peer.
#[derive(Debug)]
pub struct Connection {
    target: u64,
    client: Result<RaftClient<Channel>, BadPeerUrl>,
}

type RpcError<E = openraft::error::Infallible> = RPCError<u64, MemberInfo, RaftError<u64, E>>;

fn transport_error<E: std::error::Error>(status: tonic::Status) -> RpcError<E> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

fn malformed<E: std::error::Error>(error: codec::DecodeError) -> RpcError<E> {
    RPCError::Network(NetworkError::new(&error))
}

fn with_deadline<T>(message: T, option: &RPCOption) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(option.hard_ttl());
    request
}

impl Connection {
    fn client<E: std::error::Error>(&self) -> Result<RaftClient<Channel>, RpcError<E>> {
        match &self.client {
            Ok(client) => Ok(client.clone()),
            Err(error) => Err(RPCError::Unreachable(Unreachable::new(error))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcError> {
        let message = codec::append_entries(&rpc);
        let bytes = message.encoded_len();
        if bytes > MAX_APPEND_BYTES && rpc.entries.len() > 1 {
            // Ask openraft for fewer entries per message, in proportion.
            let fit = rpc.entries.len() * MAX_APPEND_BYTES / bytes;
            return Err(PayloadTooLarge::new_entries_hint(fit.max(1) as u64).into());
        }
        let request = with_deadline(message, &option);
        let sent = std::time::Instant::now();
        let response = self
            .client()?
            .append_entries(request)
            .await
            .map_err(transport_error)?;
        // etcd measures its peers' round trip with probes; an append (a
        // heartbeat, most often) is the same round trip here.
        metrics::histogram!("etcd_network_peer_round_trip_time_seconds", "To" => format!("{:x}", self.target))
            .record(sent.elapsed().as_secs_f64());
        codec::from_append_entries_response(response.into_inner()).map_err(malformed)
    }

    /// Never called: openraft sends snapshots only through
    /// [`Self::full_snapshot`], which Keelson streams (this chunk-per-call
    /// RPC is what openraft's default `full_snapshot` would use).
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcError<InstallSnapshotError>> {
        let error = std::io::Error::other("snapshots are streamed, not sent chunk by chunk");
        Err(RPCError::Network(NetworkError::new(&error)))
    }

    /// Streams `snapshot` to the peer in one call: a head naming the vote
    /// and the snapshot, then the data in 1 MiB chunks; the peer installs
    /// it once the stream ends. The whole transfer gets openraft's
    /// per-chunk timeout once per chunk.
    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let head = codec::snapshot_head(&vote, &snapshot.meta);
        let data = snapshot.snapshot.into_inner();
        let chunks = data.len().div_ceil(SNAPSHOT_CHUNK_BYTES);
        let (id, bytes) = (snapshot.meta.snapshot_id.clone(), data.len());
        // Chunks are cut as the stream is polled: one in memory at a time.
        let body = (0..chunks).map(move |i| {
            let end = ((i + 1) * SNAPSHOT_CHUNK_BYTES).min(data.len());
            pb::SnapshotChunk {
                vote: None,
                meta: None,
                data: data[i * SNAPSHOT_CHUNK_BYTES..end].to_vec(),
            }
        });
        let stream = tokio_stream::iter(std::iter::once(head).chain(body));
        let mut request = tonic::Request::new(stream);
        request.set_timeout(option.hard_ttl() * (chunks as u32 + 1));
        let mut client = self.client::<Infallible>().map_err(|error| match error {
            RPCError::Unreachable(e) => StreamingError::Unreachable(e),
            other => StreamingError::Network(NetworkError::new(&other)),
        })?;
        let response = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            response = client.install_snapshot(request) => response,
        };
        let response = response.map_err(|status| match transport_error::<Infallible>(status) {
            RPCError::Unreachable(e) => StreamingError::Unreachable(e),
            RPCError::Network(e) => StreamingError::Network(e),
            other => StreamingError::Network(NetworkError::new(&other)),
        })?;
        tracing::info!(target = %format!("{:x}", self.target), snapshot = %id, bytes, "snapshot sent");
        codec::from_install_snapshot_response(&response.into_inner())
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcError> {
        let request = with_deadline(codec::vote_request(&rpc), &option);
        let response = self
            .client()?
            .vote(request)
            .await
            .map_err(transport_error)?;
        codec::from_vote_response(&response.into_inner()).map_err(malformed)
    }
}
