//! openraft's types to and from `keelsonpb` protobufs.
//!
//! Encoding is infallible. Decoding checks what protobuf cannot (required
//! fields present, payloads known) and reports a [`DecodeError`] naming the
//! field, so a malformed peer message or log record is an error, never a panic.

use std::collections::{BTreeMap, BTreeSet};

use keelson_proto::keelsonpb as pb;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{
    CommittedLeaderId, EntryPayload, LeaderId, LogId, Membership, SnapshotMeta, StoredMembership,
    Vote,
};

use super::{MemberInfo, TypeConfig};

/// A protobuf that does not describe a valid Raft value.
#[derive(Debug, thiserror::Error)]
#[error("malformed {message}: {problem}")]
pub struct DecodeError {
    pub message: &'static str,
    pub problem: &'static str,
}

fn missing(message: &'static str, field: &'static str) -> DecodeError {
    DecodeError {
        message,
        problem: field,
    }
}

pub type Entry = openraft::Entry<TypeConfig>;

pub fn log_id(id: &LogId<u64>) -> pb::LogId {
    pb::LogId {
        term: id.leader_id.term,
        node_id: id.leader_id.node_id,
        index: id.index,
    }
}

pub fn from_log_id(id: &pb::LogId) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(id.term, id.node_id), id.index)
}

fn opt_log_id(id: Option<&pb::LogId>) -> Option<LogId<u64>> {
    id.map(from_log_id)
}

pub fn vote(vote: &Vote<u64>) -> pb::Vote {
    pb::Vote {
        term: vote.leader_id.term,
        node_id: vote.leader_id.node_id,
        committed: vote.committed,
    }
}

pub fn from_vote(vote: &pb::Vote) -> Vote<u64> {
    Vote {
        leader_id: LeaderId::new(vote.term, vote.node_id),
        committed: vote.committed,
    }
}

fn required_vote(v: Option<&pb::Vote>, message: &'static str) -> Result<Vote<u64>, DecodeError> {
    v.map(from_vote).ok_or(missing(message, "vote"))
}

fn member(info: &MemberInfo) -> pb::Member {
    pb::Member {
        name: info.name.clone(),
        peer_urls: info.peer_urls.clone(),
        client_urls: info.client_urls.clone(),
    }
}

fn from_member(member: &pb::Member) -> MemberInfo {
    MemberInfo {
        name: member.name.clone(),
        peer_urls: member.peer_urls.clone(),
        client_urls: member.client_urls.clone(),
    }
}

pub fn membership(membership: &Membership<u64, MemberInfo>) -> pb::Membership {
    pb::Membership {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|ids| pb::VoterSet {
                ids: ids.iter().copied().collect(),
            })
            .collect(),
        members: membership
            .nodes()
            .map(|(id, info)| (*id, member(info)))
            .collect(),
    }
}

pub fn from_membership(
    membership: &pb::Membership,
) -> Result<Membership<u64, MemberInfo>, DecodeError> {
    let configs: Vec<BTreeSet<u64>> = membership
        .configs
        .iter()
        .map(|set| set.ids.iter().copied().collect())
        .collect();
    let members: BTreeMap<u64, MemberInfo> = membership
        .members
        .iter()
        .map(|(id, m)| (*id, from_member(m)))
        .collect();
    if configs.iter().flatten().any(|id| !members.contains_key(id)) {
        return Err(missing("Membership", "a voter without its member record"));
    }
    Ok(Membership::new(configs, members))
}

pub fn stored_membership(stored: &StoredMembership<u64, MemberInfo>) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: stored.log_id().as_ref().map(log_id),
        membership: Some(membership(stored.membership())),
    }
}

pub fn from_stored_membership(
    stored: &pb::StoredMembership,
) -> Result<StoredMembership<u64, MemberInfo>, DecodeError> {
    let membership = stored
        .membership
        .as_ref()
        .ok_or(missing("StoredMembership", "membership"))?;
    Ok(StoredMembership::new(
        opt_log_id(stored.log_id.as_ref()),
        from_membership(membership)?,
    ))
}

pub fn entry(entry: &Entry) -> pb::Entry {
    let payload = match &entry.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(proposal) => pb::entry::Payload::Proposal(proposal.clone()),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership(m)),
    };
    pb::Entry {
        log_id: Some(log_id(&entry.log_id)),
        payload: Some(payload),
    }
}

pub fn from_entry(entry: pb::Entry) -> Result<Entry, DecodeError> {
    let id = entry
        .log_id
        .as_ref()
        .map(from_log_id)
        .ok_or(missing("Entry", "log_id"))?;
    let payload = match entry.payload.ok_or(missing("Entry", "payload"))? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Proposal(proposal) => EntryPayload::Normal(proposal),
        pb::entry::Payload::Membership(m) => EntryPayload::Membership(from_membership(&m)?),
    };
    Ok(Entry {
        log_id: id,
        payload,
    })
}

pub fn snapshot_meta(meta: &SnapshotMeta<u64, MemberInfo>) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: meta.last_log_id.as_ref().map(log_id),
        last_membership: Some(stored_membership(&meta.last_membership)),
        snapshot_id: meta.snapshot_id.clone(),
    }
}

pub fn from_snapshot_meta(
    meta: &pb::SnapshotMeta,
) -> Result<SnapshotMeta<u64, MemberInfo>, DecodeError> {
    let membership = meta
        .last_membership
        .as_ref()
        .ok_or(missing("SnapshotMeta", "last_membership"))?;
    Ok(SnapshotMeta {
        last_log_id: opt_log_id(meta.last_log_id.as_ref()),
        last_membership: from_stored_membership(membership)?,
        snapshot_id: meta.snapshot_id.clone(),
    })
}

pub fn append_entries(request: &AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote(&request.vote)),
        prev_log_id: request.prev_log_id.as_ref().map(log_id),
        entries: request.entries.iter().map(entry).collect(),
        leader_commit: request.leader_commit.as_ref().map(log_id),
    }
}

pub fn from_append_entries(
    request: pb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, DecodeError> {
    Ok(AppendEntriesRequest {
        vote: required_vote(request.vote.as_ref(), "AppendEntriesRequest")?,
        prev_log_id: opt_log_id(request.prev_log_id.as_ref()),
        entries: request
            .entries
            .into_iter()
            .map(from_entry)
            .collect::<Result<_, _>>()?,
        leader_commit: opt_log_id(request.leader_commit.as_ref()),
    })
}

pub fn append_entries_response(response: &AppendEntriesResponse<u64>) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::{Conflict, PartialSuccess, Result as R, Success};
    let result = match response {
        AppendEntriesResponse::Success => R::Success(Success {}),
        AppendEntriesResponse::PartialSuccess(matching) => R::PartialSuccess(PartialSuccess {
            matching: matching.as_ref().map(log_id),
        }),
        AppendEntriesResponse::Conflict => R::Conflict(Conflict {}),
        AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote(v)),
    };
    pb::AppendEntriesResponse {
        result: Some(result),
    }
}

pub fn from_append_entries_response(
    response: pb::AppendEntriesResponse,
) -> Result<AppendEntriesResponse<u64>, DecodeError> {
    use pb::append_entries_response::Result as R;
    Ok(
        match response
            .result
            .ok_or(missing("AppendEntriesResponse", "result"))?
        {
            R::Success(_) => AppendEntriesResponse::Success,
            R::PartialSuccess(p) => {
                AppendEntriesResponse::PartialSuccess(opt_log_id(p.matching.as_ref()))
            }
            R::Conflict(_) => AppendEntriesResponse::Conflict,
            R::HigherVote(v) => AppendEntriesResponse::HigherVote(from_vote(&v)),
        },
    )
}

pub fn vote_request(request: &VoteRequest<u64>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote(&request.vote)),
        last_log_id: request.last_log_id.as_ref().map(log_id),
    }
}

pub fn from_vote_request(request: &pb::VoteRequest) -> Result<VoteRequest<u64>, DecodeError> {
    Ok(VoteRequest {
        vote: required_vote(request.vote.as_ref(), "VoteRequest")?,
        last_log_id: opt_log_id(request.last_log_id.as_ref()),
    })
}

pub fn vote_response(response: &VoteResponse<u64>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote(&response.vote)),
        vote_granted: response.vote_granted,
        last_log_id: response.last_log_id.as_ref().map(log_id),
    }
}

pub fn from_vote_response(response: &pb::VoteResponse) -> Result<VoteResponse<u64>, DecodeError> {
    Ok(VoteResponse {
        vote: required_vote(response.vote.as_ref(), "VoteResponse")?,
        vote_granted: response.vote_granted,
        last_log_id: opt_log_id(response.last_log_id.as_ref()),
    })
}

/// A streamed snapshot's first chunk: who sends it and what it is.
pub fn snapshot_head(vote_: &Vote<u64>, meta: &SnapshotMeta<u64, MemberInfo>) -> pb::SnapshotChunk {
    pb::SnapshotChunk {
        vote: Some(vote(vote_)),
        meta: Some(snapshot_meta(meta)),
        data: Vec::new(),
    }
}

/// The vote and snapshot description a stream's first chunk carries.
pub fn from_snapshot_head(
    chunk: &pb::SnapshotChunk,
) -> Result<(Vote<u64>, SnapshotMeta<u64, MemberInfo>), DecodeError> {
    let meta = chunk
        .meta
        .as_ref()
        .ok_or(missing("SnapshotChunk", "meta"))?;
    Ok((
        required_vote(chunk.vote.as_ref(), "SnapshotChunk")?,
        from_snapshot_meta(meta)?,
    ))
}

pub fn from_install_snapshot_response(
    response: &pb::InstallSnapshotResponse,
) -> Result<SnapshotResponse<u64>, DecodeError> {
    Ok(SnapshotResponse {
        vote: required_vote(response.vote.as_ref(), "InstallSnapshotResponse")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Membership<u64, MemberInfo> {
        let info = |name: &str| MemberInfo {
            name: name.into(),
            peer_urls: vec![format!("http://{name}:2380")],
            client_urls: vec![format!("http://{name}:2379")],
        };
        let nodes = BTreeMap::from([(1, info("a")), (2, info("b")), (3, info("learner"))]);
        Membership::new(vec![BTreeSet::from([1, 2])], nodes)
    }

    #[test]
    fn entries_round_trip() {
        let id = LogId::new(CommittedLeaderId::new(4, 2), 17);
        let proposal = pb::Proposal {
            commands: vec![pb::Command::default(); 2],
        };
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(proposal),
            EntryPayload::Membership(members()),
        ] {
            let original = Entry {
                log_id: id,
                payload,
            };
            let decoded = from_entry(entry(&original)).unwrap();
            assert_eq!(format!("{decoded:?}"), format!("{original:?}"));
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(from_entry(pb::Entry::default()).is_err());
        assert!(
            from_entry(pb::Entry {
                log_id: Some(pb::LogId::default()),
                payload: None
            })
            .is_err()
        );
        assert!(from_append_entries(pb::AppendEntriesRequest::default()).is_err());
        assert!(from_append_entries_response(pb::AppendEntriesResponse::default()).is_err());
        let orphan_voter = pb::Membership {
            configs: vec![pb::VoterSet { ids: vec![9] }],
            members: Default::default(),
        };
        assert!(from_membership(&orphan_voter).is_err());
    }
}
