//! End-to-end tests that drive the real `etcdctl` 3.4 against a server and
//! compare what it prints with what etcd 3.4.23 prints for the same commands.
//!
//! Every test starts its own fresh server, so revisions are deterministic: the
//! first write is revision 2. Values that differ between servers (lease IDs,
//! member and cluster IDs, raft term and index, remaining lease TTLs) are
//! parsed out of the output and substituted before comparing. Nothing waits on
//! a fixed sleep: background `etcdctl` output is awaited line by line with a
//! deadline and slow effects (lease expiry) are polled with a deadline.
//!
//! Run against real etcd with `KEELSON_TEST_AGAINST_ETCD=/usr/bin/etcd`.

mod common;

use std::time::Duration;

use common::{Json, Server, Target, wait_until};

/// What `etcdctl txn -i` prints on stdout before the outcome.
const TXN_PROMPTS: &str =
    "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n";

/// A lease ID that no test ever grants.
const UNKNOWN_LEASE: &str = "1234abcd";

/// `lines` joined as etcdctl prints them: each one terminated by a newline.
fn lines(lines: &[&str]) -> String {
    lines.iter().flat_map(|line| [*line, "\n"]).collect()
}

fn put(server: &Server, key: &str, value: &str) {
    assert_eq!(
        server.etcdctl_ok(&["put", key, value]),
        "OK\n",
        "put {key} {value}"
    );
}

fn put_all(server: &Server, pairs: &[(&str, &str)]) {
    for (key, value) in pairs {
        put(server, key, value);
    }
}

fn get_json(server: &Server, args: &[&str]) -> Json {
    let args: Vec<&str> = ["get"]
        .iter()
        .chain(args)
        .chain(&["-w", "json"])
        .copied()
        .collect();
    Json::parse(&server.etcdctl_ok(&args))
}

fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected {needle:?} in:\n{haystack}"
    );
}

/// Runs `args`, asserts that it fails with gRPC status `code` and `message`
/// (etcdctl 3.4 logs the status in a client warning), and returns stderr.
fn expect_rpc_error(server: &Server, args: &[&str], code: &str, message: &str) -> String {
    let stderr = server.etcdctl_err(args);
    assert_contains(
        &stderr,
        &format!("rpc error: code = {code} desc = {message}"),
    );
    stderr
}

// ----- put / get -----------------------------------------------------------

#[test]
fn put_prints_ok_and_get_prints_key_then_value() {
    let server = Server::start();
    assert_eq!(server.etcdctl_ok(&["put", "foo", "bar"]), "OK\n");
    assert_eq!(server.etcdctl_ok(&["get", "foo"]), lines(&["foo", "bar"]));
    assert_eq!(
        server.etcdctl_ok(&["get", "foo", "--print-value-only"]),
        "bar\n"
    );
    assert_eq!(
        server.etcdctl_ok(&["get", "missing"]),
        "",
        "a missing key prints nothing"
    );
}

#[test]
fn get_prefix_limit_range_and_from_key() {
    let server = Server::start();
    put_all(
        &server,
        &[
            ("foo", "1"),
            ("foo1", "2"),
            ("foo2", "3"),
            ("fo", "4"),
            ("zoo", "5"),
        ],
    );

    let prefix = lines(&["foo", "1", "foo1", "2", "foo2", "3"]);
    assert_eq!(server.etcdctl_ok(&["get", "--prefix", "foo"]), prefix);
    assert_eq!(
        server.etcdctl_ok(&["get", "--prefix", "foo", "--limit", "2"]),
        lines(&["foo", "1", "foo1", "2"])
    );
    assert_eq!(
        server.etcdctl_ok(&["get", "foo", "foo2"]),
        lines(&["foo", "1", "foo1", "2"]),
        "range end is exclusive"
    );
    assert_eq!(
        server.etcdctl_ok(&["get", "--from-key", "foo1"]),
        lines(&["foo1", "2", "foo2", "3", "zoo", "5"])
    );
    assert_eq!(
        server.etcdctl_ok(&["get", "--prefix", "foo", "--keys-only"]),
        lines(&["foo", "", "foo1", "", "foo2", ""]),
        "--keys-only still prints an empty line after each key"
    );
}

#[test]
fn get_historical_revision() {
    let server = Server::start();
    put(&server, "foo", "bar"); // revision 2
    put(&server, "foo", "baz"); // revision 3
    assert_eq!(
        server.etcdctl_ok(&["get", "foo", "--rev=2"]),
        lines(&["foo", "bar"])
    );
    assert_eq!(
        server.etcdctl_ok(&["get", "foo", "--rev=3"]),
        lines(&["foo", "baz"])
    );
    assert_eq!(server.etcdctl_ok(&["get", "foo"]), lines(&["foo", "baz"]));
    assert_eq!(
        server.etcdctl_ok(&["get", "foo", "--rev=1"]),
        "",
        "foo did not exist at revision 1"
    );
}

#[test]
fn get_sorted_by_each_target() {
    let server = Server::start();
    // Final state: foo=baz (create 2, mod 3, version 2), foo1=nnn (create 4,
    // mod 7, version 3), foo2=aaa (create 5, mod 5, version 1).
    put_all(
        &server,
        &[
            ("foo", "bar"),
            ("foo", "baz"),
            ("foo1", "zzz"),
            ("foo2", "aaa"),
            ("foo1", "mmm"),
            ("foo1", "nnn"),
        ],
    );
    let cases: [(&[&str], [&str; 3]); 7] = [
        (&["--sort-by=KEY"], ["foo", "foo1", "foo2"]),
        (
            &["--sort-by=KEY", "--order=DESCEND"],
            ["foo2", "foo1", "foo"],
        ),
        (&["--order=DESCEND"], ["foo2", "foo1", "foo"]),
        (
            &["--sort-by=VALUE", "--order=ASCEND"],
            ["foo2", "foo", "foo1"],
        ),
        (&["--sort-by=VERSION"], ["foo2", "foo", "foo1"]),
        (
            &["--sort-by=CREATE", "--order=DESCEND"],
            ["foo2", "foo1", "foo"],
        ),
        (
            &["--sort-by=MODIFY", "--order=ASCEND"],
            ["foo", "foo2", "foo1"],
        ),
    ];
    for (flags, order) in cases {
        let args: Vec<&str> = ["get", "--prefix", "foo", "--keys-only"]
            .iter()
            .chain(flags)
            .copied()
            .collect();
        let expected: Vec<&str> = order.iter().flat_map(|key| [*key, ""]).collect();
        assert_eq!(server.etcdctl_ok(&args), lines(&expected), "get {flags:?}");
    }
    assert_eq!(
        server.etcdctl_ok(&[
            "get",
            "--prefix",
            "foo",
            "--sort-by=VALUE",
            "--order=DESCEND",
            "--limit=1"
        ]),
        lines(&["foo1", "nnn"]),
        "the limit applies after sorting"
    );
}

#[test]
fn get_json_reports_revisions_and_base64() {
    let server = Server::start();
    put_all(&server, &[("foo", "bar"), ("foo", "baz"), ("other", "x")]);
    let json = get_json(&server, &["foo"]);
    assert_eq!(json["header"]["revision"].as_i64(), 4);
    assert_eq!(json["count"].as_i64(), 1);
    let kv = &json["kvs"][0];
    assert_eq!(kv["key"].as_str(), "Zm9v", "base64 of foo");
    assert_eq!(kv["value"].as_str(), "YmF6", "base64 of baz");
    assert_eq!(kv["create_revision"].as_i64(), 2);
    assert_eq!(kv["mod_revision"].as_i64(), 3);
    assert_eq!(kv["version"].as_i64(), 2);
    assert!(kv["lease"].is_null(), "a zero lease is omitted");

    let missing = get_json(&server, &["missing"]);
    assert!(
        missing["kvs"].is_null() && missing["count"].is_null(),
        "empty fields are omitted: {missing:?}"
    );
    assert_eq!(missing["header"]["revision"].as_i64(), 4);
}

/// etcdctl 3.4 has no `get --count-only`; the JSON `count` of a limited get
/// carries the total instead.
#[test]
fn get_json_count_is_total_despite_limit() {
    let server = Server::start();
    put_all(
        &server,
        &[("foo", "1"), ("foo1", "2"), ("foo2", "3"), ("bar", "4")],
    );
    let json = get_json(&server, &["--prefix", "foo", "--limit", "1", "--keys-only"]);
    assert_eq!(json["count"].as_i64(), 3);
    assert!(json["more"].as_bool());
    assert_eq!(json["kvs"].as_array().len(), 1);
    assert!(
        json["kvs"][0]["value"].is_null(),
        "--keys-only omits the value"
    );

    let json = get_json(&server, &["--prefix", "foo"]);
    assert_eq!(json["count"].as_i64(), 3);
    assert!(json["more"].is_null(), "more=false is omitted");
}

#[test]
fn put_prev_kv_prints_previous_pair() {
    let server = Server::start();
    assert_eq!(
        server.etcdctl_ok(&["put", "--prev-kv", "foo", "bar"]),
        "OK\n",
        "no previous value"
    );
    assert_eq!(
        server.etcdctl_ok(&["put", "--prev-kv", "foo", "baz"]),
        lines(&["OK", "foo", "bar"])
    );
    assert_eq!(server.etcdctl_ok(&["get", "foo"]), lines(&["foo", "baz"]));
}

#[test]
fn put_ignore_value_keeps_existing_value() {
    let server = Server::start();
    put(&server, "foo", "bar");
    assert_eq!(server.etcdctl_ok(&["put", "--ignore-value", "foo"]), "OK\n");
    let kv = &get_json(&server, &["foo"])["kvs"][0];
    assert_eq!(kv["value"].as_str(), "YmFy", "base64 of bar");
    assert_eq!(
        (kv["mod_revision"].as_i64(), kv["version"].as_i64()),
        (3, 2)
    );
}

// ----- del -----------------------------------------------------------------

#[test]
fn del_prints_number_of_deleted_keys() {
    let server = Server::start();
    put(&server, "foo", "bar");
    assert_eq!(server.etcdctl_ok(&["del", "foo"]), "1\n");
    assert_eq!(
        server.etcdctl_ok(&["del", "foo"]),
        "0\n",
        "deleting a missing key"
    );
    assert_eq!(server.etcdctl_ok(&["get", "foo"]), "");
}

#[test]
fn del_prefix_and_range() {
    let server = Server::start();
    put_all(
        &server,
        &[
            ("a", "1"),
            ("ab", "2"),
            ("abc", "3"),
            ("b", "4"),
            ("c", "5"),
            ("d", "6"),
        ],
    );
    assert_eq!(server.etcdctl_ok(&["del", "--prefix", "ab"]), "2\n");
    assert_eq!(
        server.etcdctl_ok(&["del", "b", "d"]),
        "2\n",
        "range end is exclusive"
    );
    assert_eq!(
        server.etcdctl_ok(&["get", "--from-key", ""]),
        lines(&["a", "1", "d", "6"])
    );
    assert_eq!(server.etcdctl_ok(&["del", "--prefix", "nothing"]), "0\n");
}

#[test]
fn del_prev_kv_prints_count_then_pairs() {
    let server = Server::start();
    put_all(&server, &[("k", "v"), ("p1", "a"), ("p2", "b")]);
    assert_eq!(
        server.etcdctl_ok(&["del", "--prev-kv", "k"]),
        lines(&["1", "k", "v"])
    );
    assert_eq!(
        server.etcdctl_ok(&["del", "--prev-kv", "--prefix", "p"]),
        lines(&["2", "p1", "a", "p2", "b"])
    );
    assert_eq!(server.etcdctl_ok(&["del", "--prev-kv", "k"]), "0\n");
}

// ----- txn -----------------------------------------------------------------

/// Sets up k1 (create 2, mod 2, version 1) and k2 (create 3, mod 4, version 2).
fn txn_fixture() -> Server {
    let server = Server::start();
    put_all(&server, &[("k1", "v1"), ("k2", "v2"), ("k2", "v2b")]);
    server
}

#[test]
fn txn_success_branch() {
    let server = txn_fixture();
    let input = "value(\"k1\") = \"v1\"\nversion(\"k2\") = \"2\"\ncreate(\"k2\") = \"3\"\nmod(\"k2\") > \"3\"\n\n\
                 put k3 v3\nget k1\ndel k2\n\n\
                 put never x\n\n";
    let output = server.etcdctl_stdin_ok(&["txn", "-i"], input);
    assert_eq!(
        output,
        format!(
            "{TXN_PROMPTS}{}",
            lines(&["SUCCESS", "", "OK", "", "k1", "v1", "", "1"])
        )
    );
    assert_eq!(
        server.etcdctl_ok(&["get", "--from-key", ""]),
        lines(&["k1", "v1", "k3", "v3"])
    );
    let k3 = &get_json(&server, &["k3"]);
    assert_eq!(
        k3["kvs"][0]["mod_revision"].as_i64(),
        5,
        "the whole txn is one revision"
    );
    assert_eq!(k3["header"]["revision"].as_i64(), 5);
}

#[test]
fn txn_failure_branch() {
    let server = txn_fixture();
    let input = "value(\"k1\") = \"v1\"\nmod(\"k1\") < \"2\"\n\n\
                 put k1 changed\n\n\
                 put k4 v4\nget k1\ndel missing\n\n";
    let output = server.etcdctl_stdin_ok(&["txn", "-i"], input);
    assert_eq!(
        output,
        format!(
            "{TXN_PROMPTS}{}",
            lines(&["FAILURE", "", "OK", "", "k1", "v1", "", "0"])
        )
    );
    assert_eq!(
        server.etcdctl_ok(&["get", "k1"]),
        lines(&["k1", "v1"]),
        "success ops not applied"
    );
    assert_eq!(server.etcdctl_ok(&["get", "k4"]), lines(&["k4", "v4"]));
}

#[test]
fn txn_compares_on_missing_key() {
    let server = txn_fixture();
    let txn = |compare: &str| {
        server.etcdctl_stdin_ok(&["txn", "-i"], &format!("{compare}\n\nget k1\n\n\n"))
    };
    let success = format!("{TXN_PROMPTS}{}", lines(&["SUCCESS", "", "k1", "v1"]));
    assert_eq!(txn("version(\"missing\") = \"0\""), success);
    assert_eq!(txn("create(\"missing\") = \"0\""), success);
    assert_eq!(txn("mod(\"missing\") < \"1\""), success);
    // A value compare against a missing key always fails, even with `!=`.
    let failure_without_ops = format!("{TXN_PROMPTS}FAILURE\n");
    assert_eq!(txn("value(\"missing\") != \"x\""), failure_without_ops);
}

// ----- watch ---------------------------------------------------------------
//
// etcdctl prints nothing when a watch is created, so a test cannot know when a
// watch is in place. Watches therefore start at an explicit revision: events
// from that revision on are delivered whether they happened before or after
// the watch was created.

#[test]
fn watch_prefix_prints_events() {
    let server = Server::start();
    put(&server, "foo", "1"); // revision 2
    let watch = server.spawn_etcdctl(&["watch", "--prefix", "foo", "--rev=2"]);
    watch.expect_lines(&["PUT", "foo", "1"]);

    // The watch is now established; everything below arrives live.
    put_all(
        &server,
        &[
            ("fo", "no"),
            ("bar", "no"),
            ("foo/a", "2"),
            ("foo/b", "3"),
            ("foo", "4"),
        ],
    );
    assert_eq!(server.etcdctl_ok(&["del", "foo"]), "1\n");
    // One revision deleting two keys: two events in a single response.
    assert_eq!(server.etcdctl_ok(&["del", "--prefix", "foo"]), "2\n");
    watch.expect_lines(&[
        "PUT", "foo/a", "2", //
        "PUT", "foo/b", "3", //
        "PUT", "foo", "4", //
        "DELETE", "foo", "", //
        "DELETE", "foo/a", "", //
        "DELETE", "foo/b", "",
    ]);
}

#[test]
fn watch_rev_replays_history() {
    let server = Server::start();
    put_all(&server, &[("foo", "a"), ("foo", "b"), ("bar", "x")]); // revisions 2..=4
    assert_eq!(server.etcdctl_ok(&["del", "foo"]), "1\n"); // revision 5
    put(&server, "foo", "c"); // revision 6

    let watch = server.spawn_etcdctl(&["watch", "foo", "--rev=3"]);
    watch.expect_lines(&["PUT", "foo", "b", "DELETE", "foo", "", "PUT", "foo", "c"]);
    put(&server, "foo", "d");
    watch.expect_lines(&["PUT", "foo", "d"]);
}

#[test]
fn watch_prev_kv_prints_previous_pair_first() {
    let server = Server::start();
    put(&server, "foo", "a"); // revision 2
    let watch = server.spawn_etcdctl(&["watch", "--prev-kv", "foo", "--rev=3"]);
    put(&server, "foo", "b");
    assert_eq!(server.etcdctl_ok(&["del", "foo"]), "1\n");
    put(&server, "foo", "c");
    watch.expect_lines(&[
        "PUT", "foo", "a", "foo", "b", // previous pair, then the new one
        "DELETE", "foo", "b", "foo", "", //
        "PUT", "foo", "c", // no previous pair
    ]);
}

/// etcdctl 3.4 has no `watch --progress-notify` flag, so the periodic
/// notifications never reach it; interactive mode can request one.
#[test]
fn watch_interactive_progress_request() {
    let server = Server::start();
    put_all(&server, &[("foo", "a"), ("bar", "b")]); // revisions 2 and 3
    let mut watch = server.spawn_etcdctl(&["watch", "-i"]);
    watch.send_line("watch foo");
    watch.send_line("progress");
    watch.expect_lines(&["progress notify: 3"]);
    put(&server, "foo", "c");
    watch.expect_lines(&["PUT", "foo", "c"]);
    put(&server, "bar", "d");
    watch.send_line("progress");
    watch.expect_lines(&["progress notify: 5"]);
}

#[test]
fn watch_from_compacted_revision_is_canceled() {
    let server = Server::start();
    put_all(&server, &[("foo", "1"), ("foo", "2"), ("foo", "3")]);
    assert_eq!(
        server.etcdctl_ok(&["compaction", "3"]),
        "compacted revision 3\n"
    );
    let mut watch = server.spawn_etcdctl(&["watch", "foo", "--rev=2"]);
    let (status, stderr) = watch.wait_for_exit();
    assert!(!status.success(), "watch exited with {status}");
    assert_contains(
        &stderr,
        "watch was canceled (etcdserver: mvcc: required revision has been compacted)\n",
    );
    assert_contains(&stderr, "Error: watch is canceled by the server\n");
}

// ----- lease ---------------------------------------------------------------

/// Grants a lease asking for `requested` seconds, asserts that etcdctl reports
/// `granted` seconds, and returns the lease ID as printed (16 hex digits).
fn grant_lease_with(server: &Server, requested: u64, granted: u64) -> String {
    let output = server.etcdctl_ok(&["lease", "grant", &requested.to_string()]);
    let id = output.split(' ').nth(1).unwrap_or_default().to_owned();
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "lease ID in {output:?}"
    );
    assert_eq!(output, format!("lease {id} granted with TTL({granted}s)\n"));
    id
}

fn grant_lease(server: &Server, ttl: u64) -> String {
    grant_lease_with(server, ttl, ttl)
}

fn lease_id_as_decimal(id: &str) -> i64 {
    i64::from_str_radix(id, 16).expect("hex lease ID")
}

/// Splits a `lease timetolive` line into the line with `remaining(Rs)` and the
/// remaining seconds, which depend on timing.
fn normalise_remaining(output: &str) -> (String, u64) {
    let start = output.find("remaining(").expect("remaining(...)") + "remaining(".len();
    let len = output[start..].find("s)").expect("remaining(...s)");
    let seconds = output[start..start + len]
        .parse()
        .expect("remaining seconds");
    (
        format!("{}R{}", &output[..start], &output[start + len..]),
        seconds,
    )
}

#[test]
fn lease_grant_prints_hex_id_and_ttl() {
    let server = Server::start();
    let id = grant_lease(&server, 5);
    let other = grant_lease(&server, 5);
    assert_ne!(id, other);

    let json = Json::parse(&server.etcdctl_ok(&["lease", "grant", "7", "-w", "json"]));
    assert_eq!(json["TTL"].as_i64(), 7);
    assert!(json["ID"].as_i64() > 0);
    assert_eq!(json["Error"].as_str(), "");
    assert!(
        json["revision"].as_i64() > 0,
        "the header is flattened into the object: {json:?}"
    );
}

/// etcd raises TTLs below its minimum (1.5 election timeouts, rounded up: 2 s
/// with the default 1 s election timeout) to that minimum.
#[test]
fn lease_grant_applies_minimum_ttl() {
    let server = Server::start();
    grant_lease_with(&server, 1, 2);
}

#[test]
fn lease_timetolive_lists_attached_keys() {
    let server = Server::start();
    let id = grant_lease(&server, 100);
    assert_eq!(
        server.etcdctl_ok(&["put", &format!("--lease={id}"), "k", "v"]),
        "OK\n"
    );
    assert_eq!(
        get_json(&server, &["k"])["kvs"][0]["lease"].as_i64(),
        lease_id_as_decimal(&id)
    );

    let (output, remaining) =
        normalise_remaining(&server.etcdctl_ok(&["lease", "timetolive", &id]));
    assert_eq!(
        output,
        format!("lease {id} granted with TTL(100s), remaining(Rs)\n")
    );
    assert!(
        (90..100).contains(&remaining),
        "etcd truncates the remaining TTL: {remaining}"
    );

    let (output, _) =
        normalise_remaining(&server.etcdctl_ok(&["lease", "timetolive", &id, "--keys"]));
    assert_eq!(
        output,
        format!("lease {id} granted with TTL(100s), remaining(Rs), attached keys([k])\n")
    );

    let json =
        Json::parse(&server.etcdctl_ok(&["lease", "timetolive", &id, "--keys", "-w", "json"]));
    assert_eq!(json["id"].as_i64(), lease_id_as_decimal(&id));
    assert_eq!(json["granted-ttl"].as_i64(), 100);
    assert!((90..100).contains(&json["ttl"].as_i64()));
    assert_eq!(
        json["keys"],
        Json::Array(vec![Json::String("aw==".into())]),
        "base64 of k"
    );
}

#[test]
fn lease_list_prints_count_then_ids() {
    let server = Server::start();
    assert_eq!(server.etcdctl_ok(&["lease", "list"]), "found 0 leases\n");
    let mut ids = vec![grant_lease(&server, 100), grant_lease(&server, 200)];
    let output = server.etcdctl_ok(&["lease", "list"]);
    let mut printed: Vec<&str> = output.lines().collect();
    assert_eq!(printed.remove(0), "found 2 leases");
    printed.sort_unstable();
    ids.sort_unstable();
    assert_eq!(printed, ids);
}

#[test]
fn lease_keep_alive_prints_each_renewal() {
    let server = Server::start();
    let id = grant_lease(&server, 5);
    let keep_alive = server.spawn_etcdctl(&["lease", "keep-alive", &id]);
    let renewed = format!("lease {id} keepalived with TTL(5)");
    keep_alive.expect_lines(&[&renewed, &renewed]);
}

#[test]
fn lease_revoke_deletes_attached_keys() {
    let server = Server::start();
    let id = grant_lease(&server, 100);
    let lease_flag = format!("--lease={id}");
    for key in ["k1", "k2"] {
        assert_eq!(server.etcdctl_ok(&["put", &lease_flag, key, "v"]), "OK\n");
    }
    put(&server, "k3", "unleased");
    assert_eq!(
        server.etcdctl_ok(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(
        server.etcdctl_ok(&["get", "--prefix", "k"]),
        lines(&["k3", "unleased"])
    );
    assert_eq!(
        server.etcdctl_ok(&["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
}

#[test]
fn lease_expires_and_attached_key_disappears() {
    let server = Server::start();
    let id = grant_lease_with(&server, 1, 2);
    assert_eq!(
        server.etcdctl_ok(&["put", &format!("--lease={id}"), "ephemeral", "v"]),
        "OK\n"
    );
    wait_until(Duration::from_secs(15), "the leased key to expire", || {
        server.etcdctl_ok(&["get", "ephemeral"]).is_empty()
    });
    assert_eq!(
        server.etcdctl_ok(&["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
    assert_eq!(server.etcdctl_ok(&["lease", "list"]), "found 0 leases\n");
}

#[test]
fn lease_timetolive_of_unknown_lease_reports_expired() {
    let server = Server::start();
    let expected = format!("lease {UNKNOWN_LEASE:0>16} already expired\n");
    assert_eq!(
        server.etcdctl_ok(&["lease", "timetolive", UNKNOWN_LEASE]),
        expected
    );
    assert_eq!(
        server.etcdctl_ok(&["lease", "timetolive", UNKNOWN_LEASE, "--keys"]),
        expected
    );

    let json =
        Json::parse(&server.etcdctl_ok(&["lease", "timetolive", UNKNOWN_LEASE, "-w", "json"]));
    assert_eq!(json["id"].as_i64(), lease_id_as_decimal(UNKNOWN_LEASE));
    assert_eq!(
        json["ttl"].as_i64(),
        -1,
        "an unknown lease is reported with TTL -1, not an error"
    );
    assert_eq!(json["granted-ttl"].as_i64(), 0);
    assert!(json["keys"].is_null());
}

#[test]
fn lease_keep_alive_of_unknown_lease_reports_expired() {
    let server = Server::start();
    let mut keep_alive = server.spawn_etcdctl(&["lease", "keep-alive", UNKNOWN_LEASE]);
    keep_alive.expect_lines(&[&format!("lease {UNKNOWN_LEASE:0>16} expired or revoked.")]);
    let (status, _) = keep_alive.wait_for_exit();
    assert!(status.success(), "keep-alive exited with {status}");
}

// ----- compaction ----------------------------------------------------------

#[test]
fn compaction_discards_older_revisions() {
    let server = Server::start();
    put_all(
        &server,
        &[("foo", "v1"), ("foo", "v2"), ("foo", "v3"), ("foo", "v4")],
    ); // revisions 2..=5
    assert_eq!(
        server.etcdctl_ok(&["compaction", "4"]),
        "compacted revision 4\n"
    );

    let compacted = "etcdserver: mvcc: required revision has been compacted";
    let stderr = expect_rpc_error(&server, &["get", "foo", "--rev=3"], "OutOfRange", compacted);
    assert_contains(&stderr, &format!("Error: {compacted}\n"));
    assert_eq!(
        server.etcdctl_ok(&["get", "foo", "--rev=4"]),
        lines(&["foo", "v3"])
    );
    assert_eq!(server.etcdctl_ok(&["get", "foo"]), lines(&["foo", "v4"]));

    let stderr = expect_rpc_error(&server, &["compaction", "4"], "OutOfRange", compacted);
    assert_contains(&stderr, &format!("Error: {compacted}\n"));
}

#[test]
fn future_revision_is_rejected() {
    let server = Server::start();
    put_all(&server, &[("foo", "v1"), ("foo", "v2")]); // revisions 2 and 3
    let future = "etcdserver: mvcc: required revision is a future revision";
    let stderr = expect_rpc_error(&server, &["get", "foo", "--rev=4"], "OutOfRange", future);
    assert_contains(&stderr, &format!("Error: {future}\n"));
    expect_rpc_error(&server, &["compaction", "4"], "OutOfRange", future);
}

// ----- cluster and maintenance ---------------------------------------------

#[test]
fn endpoint_status_json() {
    let server = Server::start();
    put(&server, "foo", "bar");
    let json = Json::parse(&server.etcdctl_ok(&["endpoint", "status", "-w", "json"]));
    assert_eq!(json.as_array().len(), 1);
    assert_eq!(json[0]["Endpoint"].as_str(), server.endpoint());

    let status = &json[0]["Status"];
    let header = &status["header"];
    assert!(header["cluster_id"].as_u64() != 0);
    assert!(header["member_id"].as_u64() != 0);
    assert_eq!(header["revision"].as_i64(), 2);
    assert_eq!(
        status["leader"].as_u64(),
        header["member_id"].as_u64(),
        "the only member leads"
    );
    assert!(status["dbSize"].as_i64() > 0);
    assert!(status["raftIndex"].as_u64() > 0);
    assert!(status["raftTerm"].as_u64() > 0);
    assert_eq!(status["raftTerm"], header["raft_term"]);

    let version = status["version"].as_str();
    match server.target() {
        Target::Keelson => assert!(version.starts_with("3.5."), "version {version}"),
        Target::Etcd => assert!(!version.is_empty()),
    }
}

#[test]
fn member_list_shows_the_single_member() {
    let server = Server::start();
    let output = server.etcdctl_ok(&["member", "list"]);
    let fields: Vec<&str> = output.trim_end_matches('\n').split(", ").collect();
    assert_eq!(fields.len(), 6, "member line {output:?}");
    let (id, client_urls) = (fields[0], fields[4]);
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "member ID {id:?}"
    );
    assert!(
        client_urls.starts_with("http://127.0.0.1:"),
        "client URLs {client_urls:?}"
    );
    let normalised = format!(
        "<id>, {}, {}, <peer-urls>, <client-urls>, {}",
        fields[1], fields[2], fields[5]
    );
    assert_eq!(
        normalised,
        "<id>, started, default, <peer-urls>, <client-urls>, false"
    );
    assert_eq!(output.lines().count(), 1);

    let json = Json::parse(&server.etcdctl_ok(&["member", "list", "-w", "json"]));
    let member = &json["members"][0];
    assert_eq!(json["members"].as_array().len(), 1);
    assert_eq!(member["name"].as_str(), "default");
    assert_eq!(
        format!("{:x}", member["ID"].as_u64()),
        id,
        "the same ID in hex"
    );
    assert_eq!(member["ID"], json["header"]["member_id"]);
}

#[test]
fn snapshot_save_writes_a_file() {
    let server = Server::start();
    put(&server, "foo", "bar");
    let dir = tempfile::tempdir().expect("snapshot directory");
    let path = dir.path().join("snapshot.db");
    let path_text = path.to_str().expect("UTF-8 path");
    assert_eq!(
        server.etcdctl_ok(&["snapshot", "save", path_text]),
        format!("Snapshot saved at {path_text}\n")
    );
    let size = std::fs::metadata(&path).expect("snapshot file").len();
    assert!(size > 0, "snapshot is empty");
}

// ----- errors --------------------------------------------------------------

#[test]
fn put_empty_key_is_rejected() {
    let server = Server::start();
    let message = "etcdserver: key is not provided";
    let stderr = expect_rpc_error(&server, &["put", "", "v"], "InvalidArgument", message);
    assert_contains(&stderr, &format!("Error: {message}\n"));
}

#[test]
fn revoking_unknown_lease_fails() {
    let server = Server::start();
    let message = "etcdserver: requested lease not found";
    let stderr = expect_rpc_error(
        &server,
        &["lease", "revoke", UNKNOWN_LEASE],
        "NotFound",
        message,
    );
    assert_contains(
        &stderr,
        &format!("Error: failed to revoke lease ({message})\n"),
    );
}

#[test]
fn put_with_unknown_lease_fails() {
    let server = Server::start();
    let message = "etcdserver: requested lease not found";
    let lease_flag = format!("--lease={UNKNOWN_LEASE}");
    let stderr = expect_rpc_error(
        &server,
        &["put", &lease_flag, "k", "v"],
        "NotFound",
        message,
    );
    assert_contains(&stderr, &format!("Error: {message}\n"));
}

#[test]
fn ignore_value_or_lease_on_missing_key_fails() {
    let server = Server::start();
    let message = "etcdserver: key not found";
    for args in [
        &["put", "--ignore-value", "k"][..],
        &["put", "--ignore-lease", "k", "v"],
    ] {
        let stderr = expect_rpc_error(&server, args, "InvalidArgument", message);
        assert_contains(&stderr, &format!("Error: {message}\n"));
    }
}

#[test]
fn too_large_lease_ttl_is_rejected() {
    let server = Server::start();
    let message = "etcdserver: too large lease TTL";
    let stderr = expect_rpc_error(
        &server,
        &["lease", "grant", "9000000001"],
        "OutOfRange",
        message,
    );
    assert_contains(
        &stderr,
        &format!("Error: failed to grant lease ({message})\n"),
    );
}
