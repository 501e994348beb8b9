//! Txns: compares on every target, both branches, nesting, reads of the txn's own writes, empty ranges.

use super::*;

// ----- txn -----------------------------------------------------------------

/// Sets up k1 (create 2, mod 2, version 1), k2 (create 3, mod 4, version 2)
/// and k3 (create 5, attached to the returned lease).
async fn txn_fixture(client: &mut Client) -> i64 {
    put_all(client, &[("k1", "v1"), ("k2", "v2"), ("k2", "v2b")]).await;
    let lease = client.lease_grant(100, None).await.expect("grant").id();
    client
        .put("k3", "v3", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");
    lease
}

#[tokio::test]
async fn txn_success_branch_compares_every_target() {
    let server = Server::start();
    let mut client = server.client().await;
    let lease = txn_fixture(&mut client).await;

    let txn = Txn::new()
        .when([
            Compare::value("k1", CompareOp::Equal, "v1"),
            Compare::value("k1", CompareOp::NotEqual, "other"),
            Compare::version("k2", CompareOp::Equal, 2),
            Compare::version("k2", CompareOp::Less, 3),
            Compare::create_revision("k2", CompareOp::Equal, 3),
            Compare::mod_revision("k2", CompareOp::Greater, 3),
            Compare::lease("k3", CompareOp::Equal, lease),
        ])
        .and_then([
            TxnOp::put("k4", "v4", None),
            TxnOp::get("k1", None),
            TxnOp::delete("k2", Some(DeleteOptions::new().with_prev_key())),
        ])
        .or_else([TxnOp::put("never", "x", None)]);
    let response = client.txn(txn).await.expect("txn");
    assert!(response.succeeded());
    assert_eq!(
        revision(response.header()),
        6,
        "the whole txn is one revision"
    );

    let ops = response.op_responses();
    assert_eq!(ops.len(), 3);
    assert!(matches!(&ops[0], TxnOpResponse::Put(put) if put.prev_key().is_none()));
    let TxnOpResponse::Get(got) = &ops[1] else {
        panic!("expected a range response, got {:?}", ops[1]);
    };
    assert_eq!(pairs(got), [("k1", "v1")]);
    let TxnOpResponse::Delete(deleted) = &ops[2] else {
        panic!("expected a delete response, got {:?}", ops[2]);
    };
    assert_eq!(deleted.deleted(), 1);
    assert_eq!(text(deleted.prev_kvs()[0].value()), "v2b");

    let all = get(&mut client, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(pairs(&all), [("k1", "v1"), ("k3", "v3"), ("k4", "v4")]);
    assert_eq!(meta(&all.kvs()[2]), (6, 6, 1, 0));
}

#[tokio::test]
async fn txn_failure_branch() {
    let server = Server::start();
    let mut client = server.client().await;
    txn_fixture(&mut client).await;

    let txn = Txn::new()
        .when([
            Compare::value("k1", CompareOp::Equal, "v1"),
            Compare::mod_revision("k1", CompareOp::Less, 2),
        ])
        .and_then([TxnOp::put("k1", "changed", None)])
        .or_else([TxnOp::put("k4", "v4", None), TxnOp::get("k1", None)]);
    let response = client.txn(txn).await.expect("txn");
    assert!(!response.succeeded());
    assert_eq!(revision(response.header()), 6);
    let ops = response.op_responses();
    assert_eq!(ops.len(), 2);
    let TxnOpResponse::Get(got) = &ops[1] else {
        panic!("expected a range response, got {:?}", ops[1]);
    };
    assert_eq!(
        pairs(got),
        [("k1", "v1")],
        "the success ops were not applied"
    );
    let k4 = get(&mut client, "k4", GetOptions::new()).await;
    assert_eq!(meta(&k4.kvs()[0]), (6, 6, 1, 0));

    let read_only = Txn::new().when([Compare::value("k1", CompareOp::Equal, "nope")]);
    let response = client.txn(read_only).await.expect("txn");
    assert!(!response.succeeded());
    assert!(response.op_responses().is_empty());
    assert_eq!(
        revision(response.header()),
        6,
        "a txn that writes nothing does not create a revision"
    );
}

#[tokio::test]
async fn txn_compares_on_missing_keys_and_ranges() {
    let server = Server::start();
    let mut client = server.client().await;
    txn_fixture(&mut client).await;

    let cases = [
        (Compare::version("missing", CompareOp::Equal, 0), true),
        (
            Compare::create_revision("missing", CompareOp::Equal, 0),
            true,
        ),
        (Compare::mod_revision("missing", CompareOp::Less, 1), true),
        (Compare::lease("missing", CompareOp::Equal, 0), true),
        // A value compare against a missing key fails, even with `!=`.
        (Compare::value("missing", CompareOp::NotEqual, "x"), false),
        // A compare over a range holds only if it holds for every key in it.
        (
            Compare::version("k", CompareOp::Greater, 0).with_prefix(),
            true,
        ),
        (
            Compare::version("k", CompareOp::Greater, 1).with_prefix(),
            false,
        ),
        (
            Compare::mod_revision("k1", CompareOp::Less, 5).with_range("k3"),
            true,
        ),
    ];
    for (compare, expected) in cases {
        let description = format!("{compare:?}");
        let response = client.txn(Txn::new().when([compare])).await.expect("txn");
        assert_eq!(response.succeeded(), expected, "{description}");
    }
}

#[tokio::test]
async fn nested_txn_runs_the_branch_its_compares_pick() {
    let server = Server::start();
    let mut client = server.client().await;
    txn_fixture(&mut client).await;

    let inner = |version| {
        Txn::new()
            .when([Compare::version("k2", CompareOp::Equal, version)])
            .and_then([TxnOp::put("nested", "inner-success", None)])
            .or_else([
                TxnOp::put("nested", "inner-failure", None),
                TxnOp::get("k2", None),
            ])
    };
    for (version, expected) in [(2, "inner-success"), (1, "inner-failure")] {
        let outer = Txn::new()
            .when([Compare::value("k1", CompareOp::Equal, "v1")])
            .and_then([TxnOp::txn(inner(version)), TxnOp::get("k1", None)]);
        let response = client.txn(outer).await.expect("txn");
        assert!(response.succeeded());
        let ops = response.op_responses();
        assert_eq!(ops.len(), 2);
        let TxnOpResponse::Txn(nested) = &ops[0] else {
            panic!("expected a txn response, got {:?}", ops[0]);
        };
        assert_eq!(nested.succeeded(), version == 2);
        assert_eq!(
            nested.op_responses().len(),
            if version == 2 { 1 } else { 2 }
        );

        let got = get(&mut client, "nested", GetOptions::new()).await;
        assert_eq!(pairs(&got), [("nested", expected)]);
        assert_eq!(got.kvs()[0].mod_revision(), revision(response.header()));
    }
}

#[tokio::test]
async fn txn_range_sees_the_txn_own_earlier_writes() {
    let server = Server::start();
    let mut client = server.client().await;
    txn_fixture(&mut client).await;

    let txn = Txn::new().and_then([
        TxnOp::get("k4", None),
        TxnOp::put("k4", "v4", None),
        TxnOp::get("k4", None),
        TxnOp::delete("k1", None),
        TxnOp::get("k", Some(GetOptions::new().with_prefix())),
    ]);
    let response = client.txn(txn).await.expect("txn");
    assert!(response.succeeded(), "a txn without compares succeeds");
    assert_eq!(revision(response.header()), 6);

    let ranges: Vec<GetResponse> = response
        .op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(got) => Some(got),
            _ => None,
        })
        .collect();
    assert_eq!(ranges.len(), 3);
    assert!(ranges[0].kvs().is_empty(), "k4 before the put");
    assert_eq!(pairs(&ranges[1]), [("k4", "v4")]);
    assert_eq!(meta(&ranges[1].kvs()[0]), (6, 6, 1, 0));
    assert_eq!(
        keys(&ranges[2]),
        ["k2", "k3", "k4"],
        "the range sees the put and the delete"
    );
}

/// Every response inside a txn carries a header with the txn's revision.
#[tokio::test]
async fn txn_op_responses_carry_the_txn_revision() {
    let server = Server::start();
    let mut client = server.client().await;
    txn_fixture(&mut client).await;

    let write = Txn::new().and_then([
        TxnOp::put("k4", "v4", None),
        TxnOp::get("k1", None),
        TxnOp::delete("k2", None),
    ]);
    let read = Txn::new().and_then([TxnOp::get("k1", None)]);
    for (txn, expected) in [(write, 6), (read, 6)] {
        let response = client.txn(txn).await.expect("txn");
        assert_eq!(revision(response.header()), expected);
        for op in response.op_responses() {
            let header = match &op {
                TxnOpResponse::Put(put) => put.header(),
                TxnOpResponse::Get(got) => got.header(),
                TxnOpResponse::Delete(deleted) => deleted.header(),
                TxnOpResponse::Txn(_) => panic!("no nested txn was sent"),
            };
            assert_eq!(
                header.map(ResponseHeader::revision),
                Some(expected),
                "header of {op:?}"
            );
        }
    }
}

/// A range whose end sorts before its key selects nothing: reads find
/// nothing, deletes delete nothing, and compares over it see a missing key.
#[tokio::test]
async fn range_end_before_key_selects_nothing() {
    let server = Server::start();
    let mut client = server.client().await;
    put_all(&mut client, &[("a", "1"), ("b", "1")]).await; // 2, 3

    let reversed = || GetOptions::new().with_range("a");
    let got = get(&mut client, "b", reversed()).await;
    assert!(got.kvs().is_empty());
    assert_eq!((got.count(), revision(got.header())), (0, 3));
    let counted = get(&mut client, "b", reversed().with_count_only()).await;
    assert_eq!(counted.count(), 0);

    let deleted = client
        .delete("b", Some(DeleteOptions::new().with_range("a")))
        .await
        .expect("delete");
    assert_eq!((deleted.deleted(), revision(deleted.header())), (0, 3));

    let txn = Txn::new()
        .when([Compare::version("b", CompareOp::Equal, 0).with_range("a")])
        .and_then([TxnOp::get("b", Some(reversed()))]);
    let response = client.txn(txn).await.expect("txn");
    assert!(
        response.succeeded(),
        "a compare over no key is made against a missing key"
    );
    let TxnOpResponse::Get(got) = &response.op_responses()[0] else {
        panic!("expected a range response");
    };
    assert!(got.kvs().is_empty());

    let all = get(&mut client, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(keys(&all), ["a", "b"], "nothing was deleted");
    let put = client.put("c", "1", None).await.expect("put afterwards");
    assert_eq!(revision(put.header()), 4);
}
