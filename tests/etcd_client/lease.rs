//! Leases: grant, keep-alive, time-to-live with keys, list, revoke and expiry deleting keys.

use super::*;

// ----- lease ---------------------------------------------------------------

#[tokio::test]
async fn lease_grant_keep_alive_and_time_to_live() {
    let server = Server::start();
    let mut client = server.client().await;
    let granted = client.lease_grant(60, None).await.expect("grant");
    let id = granted.id();
    assert!(id > 0, "lease ID {id}");
    assert_eq!((granted.ttl(), granted.error()), (60, ""));

    let chosen = LeaseGrantOptions::new().with_id(0x1234);
    let granted = client.lease_grant(60, Some(chosen)).await.expect("grant");
    assert_eq!(granted.id(), 0x1234, "the requested ID is used");

    for key in ["k2", "k1"] {
        let with_lease = Some(PutOptions::new().with_lease(id));
        client.put(key, "v", with_lease).await.expect("put");
    }
    let with_keys = Some(LeaseTimeToLiveOptions::new().with_keys());
    let ttl = client.lease_time_to_live(id, with_keys).await.expect("ttl");
    assert_eq!((ttl.id(), ttl.granted_ttl()), (id, 60));
    assert!(
        (50..=60).contains(&ttl.ttl()),
        "remaining TTL {}",
        ttl.ttl()
    );
    let mut attached: Vec<&str> = ttl.keys().iter().map(|key| text(key)).collect();
    attached.sort_unstable();
    assert_eq!(attached, ["k1", "k2"]);

    let ttl = client.lease_time_to_live(id, None).await.expect("ttl");
    assert!(ttl.keys().is_empty(), "keys only when asked for");

    let (mut keeper, mut renewals) = client.lease_keep_alive(id).await.expect("keep alive");
    assert_eq!(keeper.id(), id);
    keeper.keep_alive().await.expect("send keep-alive");
    let renewed = tokio::time::timeout(WATCH_DEADLINE, renewals.message())
        .await
        .expect("keep-alive response within the deadline")
        .expect("keep-alive stream failed")
        .expect("keep-alive stream ended");
    assert_eq!((renewed.id(), renewed.ttl()), (id, 60));
}

#[tokio::test]
async fn leases_lists_every_lease() {
    let server = Server::start();
    let mut client = server.client().await;
    assert!(client.leases().await.expect("leases").leases().is_empty());

    let mut granted = Vec::new();
    for ttl in [100, 200] {
        granted.push(client.lease_grant(ttl, None).await.expect("grant").id());
    }
    let listed = client.leases().await.expect("leases");
    let mut ids: Vec<i64> = listed.leases().iter().map(|lease| lease.id()).collect();
    ids.sort_unstable();
    granted.sort_unstable();
    assert_eq!(ids, granted);
}

#[tokio::test]
async fn lease_revoke_deletes_attached_keys() {
    let server = Server::start();
    let mut client = server.client().await;
    let id = client.lease_grant(100, None).await.expect("grant").id();
    for key in ["k1", "k2"] {
        let with_lease = Some(PutOptions::new().with_lease(id));
        client.put(key, "v", with_lease).await.expect("put"); // 2, 3
    }
    client.put("k3", "unleased", None).await.expect("put"); // 4

    let revoked = client.lease_revoke(id).await.expect("revoke");
    assert_eq!(
        revision(revoked.header()),
        5,
        "deleting the attached keys is one revision"
    );
    let left = get(&mut client, "k", GetOptions::new().with_prefix()).await;
    assert_eq!(pairs(&left), [("k3", "unleased")]);

    let ttl = client.lease_time_to_live(id, None).await.expect("ttl");
    assert_eq!(
        (ttl.id(), ttl.ttl(), ttl.granted_ttl()),
        (id, -1, 0),
        "a revoked lease reports TTL -1"
    );
    assert!(client.leases().await.expect("leases").leases().is_empty());
}

#[tokio::test]
async fn lease_expiry_deletes_attached_keys() {
    let server = Server::start();
    let mut client = server.client().await;
    let granted = client.lease_grant(2, None).await.expect("grant");
    let id = granted.id();
    assert_eq!(granted.ttl(), 2);
    let with_lease = Some(PutOptions::new().with_lease(id));
    client.put("ephemeral", "v", with_lease).await.expect("put"); // 2

    let options = WatchOptions::new().with_start_revision(3);
    let mut stream = watch(&mut client, "ephemeral", options).await;
    // The deletion comes within the watch deadline, well past the TTL.
    assert_eq!(
        next_described(&mut stream, 1).await,
        ["DELETE ephemeral= @3"]
    );

    let got = get(&mut client, "ephemeral", GetOptions::new()).await;
    assert!(got.kvs().is_empty());
    eventually(EXPIRY_DEADLINE, "the expired lease to be gone", || {
        let mut client = client.clone();
        async move {
            let ttl = client.lease_time_to_live(id, None).await.expect("ttl");
            let leases = client.leases().await.expect("leases");
            ttl.ttl() == -1 && leases.leases().is_empty()
        }
    })
    .await;
}

#[tokio::test]
async fn unknown_lease_is_not_found() {
    let server = Server::start();
    let mut client = server.client().await;
    let with_lease = Some(PutOptions::new().with_lease(UNKNOWN_LEASE));
    expect_rpc_error(
        client.put("k", "v", with_lease).await,
        "NotFound",
        LEASE_NOT_FOUND,
    );
    expect_rpc_error(
        client.lease_revoke(UNKNOWN_LEASE).await,
        "NotFound",
        LEASE_NOT_FOUND,
    );

    let ttl = client
        .lease_time_to_live(UNKNOWN_LEASE, None)
        .await
        .expect("time-to-live of an unknown lease is no error");
    assert_eq!(
        (ttl.id(), ttl.ttl(), ttl.granted_ttl()),
        (UNKNOWN_LEASE, -1, 0)
    );

    // The server answers a keep-alive of an unknown lease with TTL 0, which
    // the client turns into an error.
    match client.lease_keep_alive(UNKNOWN_LEASE).await {
        Err(Error::LeaseKeepAliveError(message)) => assert_eq!(message, "lease not found"),
        other => panic!("expected a keep-alive error, got {other:?}"),
    }
}
