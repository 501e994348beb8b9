//! The etcd v3 gRPC services, on top of one [`crate::node::Node`].
//!
//! Each service validates a request the way etcd's gRPC layer does, turns a
//! write into a command for the node, and maps the store's errors to etcd's
//! gRPC statuses at this edge (see [`crate::error::Error::to_status`]).

mod cluster;
mod kv;
mod lease;
mod maintenance;
mod oversize;
mod peer;
mod watch;

use std::sync::Arc;

use keelson_proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use keelson_proto::keelsonpb::{Command, command::Op};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::service::Routes;

pub use self::cluster::promote_when_caught_up;
pub use self::maintenance::ETCD_VERSION;
pub use self::oversize::{OversizeLayer, oversize_layer};
use crate::node::Node;
use crate::store::CommandResponse;

/// gRPC framing added on top of the largest request etcd accepts.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// All five services, ready to be served. Watch streams end when `shutdown` fires.
pub fn routes(node: &Arc<Node>, shutdown: &CancellationToken) -> Routes {
    let max_decoding = node.config().max_request_bytes + GRPC_OVERHEAD_BYTES;
    Routes::new(
        KvServer::new(kv::KvService::new(node.clone()))
            .max_decoding_message_size(max_decoding)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        WatchServer::new(watch::WatchService::new(node.clone(), shutdown.clone()))
            .max_decoding_message_size(max_decoding)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        LeaseServer::new(lease::LeaseService::new(node.clone()))
            .max_decoding_message_size(max_decoding),
    )
    .add_service(ClusterServer::new(cluster::ClusterService::new(
        node.clone(),
    )))
    .add_service(
        MaintenanceServer::new(maintenance::MaintenanceService::new(node.clone()))
            .max_encoding_message_size(usize::MAX),
    )
}

/// The peer service, for the peer listener.
pub fn peer_routes(node: &Arc<Node>) -> Routes {
    use crate::raft::network::MAX_PEER_MESSAGE_BYTES;
    Routes::new(
        keelson_proto::keelsonpb::raft_server::RaftServer::new(peer::PeerService::new(
            node.clone(),
        ))
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES),
    )
}

/// Proposes `op` and unwraps the response variant `pick` expects, with the
/// revision after it.
async fn propose<T>(
    node: &Node,
    op: Op,
    pick: fn(CommandResponse) -> Option<T>,
) -> Result<(T, i64), Status> {
    let (response, revision) = node.propose(Command { op: Some(op) }).await?;
    let response =
        pick(response).ok_or_else(|| Status::internal("etcdserver: unexpected response kind"))?;
    Ok((response, revision))
}
