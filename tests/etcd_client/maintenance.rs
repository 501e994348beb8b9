//! Compaction, cluster and maintenance RPCs, and the errors etcd returns.

use super::*;

// ----- compaction ----------------------------------------------------------

#[tokio::test]
async fn compaction_makes_older_revisions_unreadable() {
    let server = Server::start();
    let mut client = server.client().await;
    put_all(
        &mut client,
        &[("foo", "v1"), ("foo", "v2"), ("foo", "v3"), ("foo", "v4")],
    )
    .await; // 2..=5

    let compacted = client.compact(4, None).await.expect("compact");
    assert_eq!(revision(compacted.header()), 5);
    expect_rpc_error(
        client
            .get("foo", Some(GetOptions::new().with_revision(3)))
            .await,
        "OutOfRange",
        COMPACTED,
    );
    let at4 = get(&mut client, "foo", GetOptions::new().with_revision(4)).await;
    assert_eq!(pairs(&at4), [("foo", "v3")]);
    let current = get(&mut client, "foo", GetOptions::new()).await;
    assert_eq!(pairs(&current), [("foo", "v4")]);

    for again in [3, 4] {
        expect_rpc_error(client.compact(again, None).await, "OutOfRange", COMPACTED);
    }
    expect_rpc_error(client.compact(6, None).await, "OutOfRange", FUTURE_REVISION);

    let physical = Some(etcd_client::CompactionOptions::new().with_physical());
    client.compact(5, physical).await.expect("physical compact");
    expect_rpc_error(
        client
            .get("foo", Some(GetOptions::new().with_revision(4)))
            .await,
        "OutOfRange",
        COMPACTED,
    );
}

// ----- cluster and maintenance ---------------------------------------------

#[tokio::test]
async fn status_reports_version_leader_and_raft_progress() {
    let server = Server::start();
    let mut client = server.client().await;
    client.put("foo", "bar", None).await.expect("put");

    let status = client.status().await.expect("status");
    let header = status.header().expect("header");
    assert_eq!(header.revision(), 2);
    assert_ne!(header.cluster_id(), 0);
    assert_ne!(header.member_id(), 0);
    assert_eq!(status.leader(), header.member_id(), "the only member leads");
    assert!(status.db_size() > 0);
    assert!(status.raft_index() > 0);
    assert!(status.raft_applied_index() > 0);
    assert!(status.raft_term() > 0);
    assert_eq!(header.raft_term(), status.raft_term());
    assert!(status.errors().is_empty(), "errors: {:?}", status.errors());
    let version = status.version();
    match server.target() {
        Target::Keelson => assert!(version.starts_with("3.5."), "version {version}"),
        Target::Etcd => assert!(version.starts_with("3.4."), "version {version}"),
    }
}

#[tokio::test]
async fn member_list_has_the_single_member() {
    let server = Server::start();
    let mut client = server.client().await;
    let list = client.member_list().await.expect("member list");
    let [member] = list.members() else {
        panic!("expected one member, got {:?}", list.members());
    };
    assert_eq!(member.name(), "default");
    assert_eq!(member.id(), list.header().expect("header").member_id());
    assert_eq!(
        member.client_urls(),
        [format!("http://{}", server.endpoint())]
    );
    assert!(
        !member.peer_urls().is_empty()
            && member
                .peer_urls()
                .iter()
                .all(|url| url.starts_with("http://")),
        "peer URLs {:?}",
        member.peer_urls()
    );
    assert!(!member.is_learner());
}

// ----- errors --------------------------------------------------------------

#[tokio::test]
async fn empty_key_is_rejected() {
    let server = Server::start();
    let mut client = server.client().await;
    expect_rpc_error(
        client.put("", "v", None).await,
        "InvalidArgument",
        EMPTY_KEY,
    );
    expect_rpc_error(client.get("", None).await, "InvalidArgument", EMPTY_KEY);
    expect_rpc_error(client.delete("", None).await, "InvalidArgument", EMPTY_KEY);
    let txn = Txn::new().and_then([TxnOp::put("", "v", None)]);
    expect_rpc_error(client.txn(txn).await, "InvalidArgument", EMPTY_KEY);
}

/// A request whose proposal would exceed `--max-request-bytes` is refused by
/// the server itself; one just below the limit is accepted.
#[tokio::test]
async fn request_over_max_request_bytes_is_too_large() {
    let server = Server::start();
    let mut client = server.client().await;
    let below = vec![b'x'; MAX_REQUEST_BYTES - 1024];
    client
        .put("fits", below, None)
        .await
        .expect("put below the limit");
    let value = vec![b'x'; MAX_REQUEST_BYTES + 1];
    expect_rpc_error(
        client.put("big", value, None).await,
        "InvalidArgument",
        "etcdserver: request is too large",
    );
    let got = get(&mut client, "big", GetOptions::new()).await;
    assert!(got.kvs().is_empty(), "nothing was written");
}

/// A message larger than the gRPC limit (`--max-request-bytes` plus 512 KiB
/// of allowance: 2 MiB by default) is refused by gRPC before the server sees it.
#[tokio::test]
async fn message_over_grpc_limit_is_resource_exhausted() {
    let server = Server::start();
    let mut client = server.client().await;
    let value = vec![b'x'; 2 * 1024 * 1024];
    expect_rpc_error(
        client.put("big", value, None).await,
        "ResourceExhausted",
        "grpc: received message larger than max (2097162 vs. 2097152)",
    );
    let got = get(&mut client, "big", GetOptions::new()).await;
    assert!(got.kvs().is_empty(), "nothing was written");
}

#[tokio::test]
async fn invalid_txns_are_rejected() {
    let server = Server::start();
    let mut client = server.client().await;
    let too_many: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    expect_rpc_error(
        client.txn(Txn::new().and_then(too_many)).await,
        "InvalidArgument",
        "etcdserver: too many operations in txn request",
    );
    let duplicate = Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]);
    expect_rpc_error(
        client.txn(duplicate).await,
        "InvalidArgument",
        "etcdserver: duplicate key given in txn request",
    );
    let got = get(&mut client, "k", GetOptions::new().with_prefix()).await;
    assert!(got.kvs().is_empty(), "nothing was written");
}

#[tokio::test]
async fn invalid_lease_grants_are_rejected() {
    let server = Server::start();
    let mut client = server.client().await;
    expect_rpc_error(
        client.lease_grant(9_000_000_001, None).await,
        "OutOfRange",
        "etcdserver: too large lease TTL",
    );
    let chosen = || Some(LeaseGrantOptions::new().with_id(0x1234));
    client.lease_grant(60, chosen()).await.expect("grant");
    expect_rpc_error(
        client.lease_grant(60, chosen()).await,
        "FailedPrecondition",
        "etcdserver: lease already exists",
    );
}
