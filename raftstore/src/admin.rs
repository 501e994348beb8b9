//! What an operator does to a member's data from the outside: save a
//! snapshot through any member's client port, restore one into an empty
//! data directory as a new one-member cluster, reset a survivor's data to a
//! one-member cluster after quorum loss, and look at the cluster's health.
//!
//! ```text
//!  save:    Maintenance.Snapshot ──stream──► FILE.part ──(SHA-256 trailer checked)──► FILE
//!  restore: FILE ──(checked)──► DATA_DIR/store: keys, leases, revisions;
//!           no member identity, no applied log position, no membership
//!           ──► the member founds a cluster of itself on its next start
//!  reset:   DATA_DIR/store ──snapshot──► restore into a fresh DATA_DIR/store
//!           (the old one kept as store.before-reset-UNIXTIME)
//! ```
//!
//! Revisions survive a restore, so `resourceVersion`s stay valid: clients
//! that watch from one before the snapshot get the events after it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keelson_proto::etcdserverpb::{
    Member, MemberListRequest, MemberRemoveRequest, SnapshotRequest, StatusRequest, StatusResponse,
    cluster_client::ClusterClient, maintenance_client::MaintenanceClient,
};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use crate::tls::MemberTls;

use crate::store::{MvccStore, StoreConfig};

/// Why an operation on a member's data failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the member at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("the member at {endpoint} failed the request: {status}")]
    Request {
        endpoint: String,
        status: tonic::Status,
    },
    #[error("{path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged: its SHA-256 does not match its content (truncated or altered); use another snapshot"
    )]
    Damaged { path: PathBuf },
    #[error("{path} already holds a member's data: restore into an empty data directory")]
    NotEmpty { path: PathBuf },
    #[error("{path} holds no member's data")]
    NoData { path: PathBuf },
    #[error(transparent)]
    Store(#[from] crate::Error),
}

type Result<T, E = AdminError> = std::result::Result<T, E>;

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> AdminError {
    let path = path.to_owned();
    move |source| AdminError::Io { path, what, source }
}

/// What a snapshot holds, as saved or checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub bytes: u64,
    /// The store revision the snapshot was taken at (0 if not known).
    pub revision: i64,
    /// Hex SHA-256 of the whole file.
    pub sha256: String,
}

async fn connect(endpoint: &str, tls: Option<&MemberTls>) -> Result<Channel> {
    let unreachable = |reason: String| AdminError::Unreachable {
        endpoint: endpoint.to_owned(),
        reason,
    };
    crate::tls::endpoint(endpoint, tls)
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| unreachable(e.to_string()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a snapshot's SHA-256 trailer while it streams past: keeps the
/// last 32 bytes aside, hashes everything before them.
#[derive(Default)]
struct Trailer {
    hasher: Sha256,
    whole: Sha256,
    tail: Vec<u8>,
    bytes: u64,
}

impl Trailer {
    fn update(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        self.whole.update(chunk);
        self.tail.extend_from_slice(chunk);
        let keep = crate::snapshot::CHECKSUM_BYTES;
        if self.tail.len() > keep {
            let hashed = self.tail.len() - keep;
            self.hasher.update(&self.tail[..hashed]);
            self.tail.drain(..hashed);
        }
    }

    /// Whether the trailer matches, and the hash of the whole stream.
    fn finish(self) -> (bool, String, u64) {
        let intact = self.tail.len() == crate::snapshot::CHECKSUM_BYTES
            && self.hasher.finalize().as_slice() == self.tail.as_slice();
        (intact, hex(&self.whole.finalize()), self.bytes)
    }
}

/// Saves a consistent snapshot of the store served at `endpoint`
/// (`http://HOST:2379`) to `path`: written beside it first, checked, then
/// renamed, so `path` is never a partial snapshot.
pub async fn save_snapshot(
    endpoint: &str,
    tls: Option<&MemberTls>,
    path: &Path,
) -> Result<SnapshotInfo> {
    let mut client = MaintenanceClient::new(connect(endpoint, tls).await?)
        .max_decoding_message_size(64 * 1024 * 1024);
    let failed = |status| AdminError::Request {
        endpoint: endpoint.to_owned(),
        status,
    };
    let mut stream = client
        .snapshot(SnapshotRequest {})
        .await
        .map_err(failed)?
        .into_inner();
    let partial = path.with_extension("part");
    let mut file = std::fs::File::create(&partial).map_err(io(&partial, "cannot create"))?;
    let mut trailer = Trailer::default();
    let mut revision = 0;
    while let Some(chunk) = stream.message().await.map_err(failed)? {
        if let Some(header) = &chunk.header {
            revision = header.revision;
        }
        trailer.update(&chunk.blob);
        file.write_all(&chunk.blob)
            .map_err(io(&partial, "cannot write"))?;
    }
    file.sync_all().map_err(io(&partial, "cannot sync"))?;
    let (intact, sha256, bytes) = trailer.finish();
    if !intact {
        let _ = std::fs::remove_file(&partial);
        return Err(AdminError::Damaged { path: partial });
    }
    std::fs::rename(&partial, path).map_err(io(path, "cannot rename the snapshot into place"))?;
    Ok(SnapshotInfo {
        bytes,
        revision,
        sha256,
    })
}

/// Reads a whole snapshot file, refusing it unless its trailer matches.
fn read_checked(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(io(path, "cannot read the snapshot"))?;
    if !crate::snapshot::verify(&bytes) {
        return Err(AdminError::Damaged {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// Checks a snapshot file's integrity; what it holds.
pub fn check_snapshot(path: &Path) -> Result<SnapshotInfo> {
    let bytes = read_checked(path)?;
    let revision = crate::snapshot::parse(&bytes)?
        .iter()
        .find(|(family, key, _)| {
            *family == crate::backend::CF_META && *key == crate::store::META_REVISION.as_bytes()
        })
        .and_then(|(_, _, value)| <[u8; 8]>::try_from(*value).ok())
        .map_or(0, i64::from_be_bytes);
    Ok(SnapshotInfo {
        bytes: bytes.len() as u64,
        revision,
        sha256: hex(&Sha256::digest(&bytes)),
    })
}

/// What a restore or reset brought back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub revision: i64,
    pub keys: usize,
}

/// Writes `snapshot` into a new store in `dir`, as the data of a member
/// that founds a cluster of itself: the member identity, the applied log
/// position and the membership of the cluster it came from are dropped.
fn restore_bytes(snapshot: &[u8], dir: &Path) -> Result<Restored> {
    let store = MvccStore::open(dir, StoreConfig::default())?;
    let revision = store.restore(snapshot)?;
    store.forget_cluster()?;
    store.sync()?;
    Ok(Restored {
        revision,
        keys: store.key_count(),
    })
}

/// The store directory of a member's data directory.
pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}

/// Restores the snapshot at `snapshot` into the empty data directory
/// `data_dir` (its integrity checked first); started there, the member is
/// a one-member cluster with every key, lease and revision of the snapshot.
pub fn restore_snapshot(snapshot: &Path, data_dir: &Path) -> Result<Restored> {
    let bytes = read_checked(snapshot)?;
    let dir = store_dir(data_dir);
    if dir.exists() {
        return Err(AdminError::NotEmpty { path: dir });
    }
    std::fs::create_dir_all(data_dir).map_err(io(data_dir, "cannot create"))?;
    restore_bytes(&bytes, &dir)
}

/// Turns the (stopped) member's data in `data_dir` into a one-member
/// cluster's, keeping every key: the way back after the other members are
/// lost for good. The old store stays beside it; its path is returned.
pub fn reset_to_single_member(data_dir: &Path) -> Result<(Restored, PathBuf)> {
    let dir = store_dir(data_dir);
    if !dir.exists() {
        return Err(AdminError::NoData { path: dir });
    }
    let snapshot = {
        let store = MvccStore::open(&dir, StoreConfig::default())?;
        let mut bytes = Vec::new();
        store.snapshot(1 << 20, &mut |chunk, _| {
            bytes.extend_from_slice(&chunk);
            Ok(())
        })?;
        bytes
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kept = data_dir.join(format!("store.before-reset-{stamp}"));
    std::fs::rename(&dir, &kept).map_err(io(&dir, "cannot move the old store aside"))?;
    Ok((restore_bytes(&snapshot, &dir)?, kept))
}

/// One member as `status` found it.
#[derive(Clone, Debug)]
pub struct MemberHealth {
    pub member: Member,
    /// Its answer to Maintenance.Status, or why there was none.
    pub status: std::result::Result<StatusResponse, String>,
}

/// The cluster as one member lists it, with every member's own status.
#[derive(Clone, Debug)]
pub struct ClusterHealth {
    pub members: Vec<MemberHealth>,
}

/// Asks the member at `endpoint` for the membership, then every member for
/// its status (two seconds each).
pub async fn cluster_health(endpoint: &str, tls: Option<&MemberTls>) -> Result<ClusterHealth> {
    let channel = connect(endpoint, tls).await?;
    let members = ClusterClient::new(channel)
        .member_list(MemberListRequest {
            linearizable: false,
        })
        .await
        .map_err(|status| AdminError::Request {
            endpoint: endpoint.to_owned(),
            status,
        })?
        .into_inner()
        .members;
    let asks = members.into_iter().map(|member| async move {
        let status = match member.client_ur_ls.first() {
            None => Err("not started: it has never published its client URL".to_owned()),
            Some(url) => {
                let ask = async {
                    let channel = connect(url, tls).await.map_err(|e| e.to_string())?;
                    MaintenanceClient::new(channel)
                        .status(StatusRequest {})
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| s.message().to_owned())
                };
                tokio::time::timeout(Duration::from_secs(2), ask)
                    .await
                    .unwrap_or_else(|_| Err(format!("{url} did not answer within 2s")))
            }
        };
        MemberHealth { member, status }
    });
    Ok(ClusterHealth {
        members: futures::future::join_all(asks).await,
    })
}

/// Removes member `id`, through the member at `endpoint`.
pub async fn remove_member(endpoint: &str, tls: Option<&MemberTls>, id: u64) -> Result<()> {
    ClusterClient::new(connect(endpoint, tls).await?)
        .member_remove(MemberRemoveRequest { id })
        .await
        .map_err(|status| AdminError::Request {
            endpoint: endpoint.to_owned(),
            status,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailer_check_finds_damage() {
        let body = b"KEELSNAP-some-content".to_vec();
        let mut good = body.clone();
        good.extend_from_slice(&Sha256::digest(&body));
        let mut trailer = Trailer::default();
        for chunk in good.chunks(5) {
            trailer.update(chunk);
        }
        let (intact, sha, bytes) = trailer.finish();
        assert!(intact);
        assert_eq!(bytes, good.len() as u64);
        assert_eq!(sha, hex(&Sha256::digest(&good)));

        let mut bad = good.clone();
        bad[3] ^= 1;
        let mut trailer = Trailer::default();
        trailer.update(&bad);
        assert!(!trailer.finish().0);
        let mut trailer = Trailer::default();
        trailer.update(&good[..good.len() - 1]);
        assert!(!trailer.finish().0);
    }
}
