//! StatefulSets on a local cluster with real containers, as root (as CI
//! runs), driven with kubectl: pods created in order once each is ready,
//! stable host names resolvable through the headless Service, a deleted
//! pod back under its name, scaling in order both ways, claims that
//! outlive their pods and their set, a partitioned rolling update,
//! `kubectl rollout status/history/undo`, and a node switched off: its pod
//! waits to be gone before it is made again, never twice at once.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::profile::{IMAGE, Profile};
use common::{holds_within, wait_until};
use serde_json::{Value, json};

const CONVERGE: Duration = Duration::from_secs(120);

/// A pod of a StatefulSet as the API shows it.
#[derive(Clone, Debug, PartialEq)]
struct Member {
    name: String,
    ordinal: usize,
    uid: String,
    node: String,
    ip: String,
    ready: bool,
    /// When it last became ready (RFC 3339, UTC, comparable as text).
    ready_since: String,
    created: String,
    deleting: bool,
    revision: String,
}

/// The pods labelled `app=APP` in `namespace`, lowest ordinal first
/// (`None` if kubectl failed). Two pods of one name would fail the test.
fn members(profile: &Profile, namespace: &str, app: &str) -> Option<Vec<Member>> {
    let selector = format!("app={app}");
    let text = profile.try_kubectl(&[
        "get", "pods", "-n", namespace, "-l", &selector, "-o", "json",
    ])?;
    let list: Value = serde_json::from_str(&text).ok()?;
    let string = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut found = Vec::new();
    let mut names = HashSet::new();
    for pod in list["items"].as_array()? {
        let name = string(&pod["metadata"]["name"]);
        assert!(
            names.insert(name.clone()),
            "two pods named {name}: {text:?}"
        );
        let ready = pod["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
        found.push(Member {
            ordinal: name.rsplit_once('-')?.1.parse().ok()?,
            uid: string(&pod["metadata"]["uid"]),
            node: string(&pod["spec"]["nodeName"]),
            ip: string(&pod["status"]["podIP"]),
            ready: pod["status"]["phase"] == "Running"
                && ready.is_some_and(|c| c["status"] == "True"),
            ready_since: ready
                .map(|c| string(&c["lastTransitionTime"]))
                .unwrap_or_default(),
            created: string(&pod["metadata"]["creationTimestamp"]),
            deleting: !pod["metadata"]["deletionTimestamp"].is_null(),
            revision: string(&pod["metadata"]["labels"]["controller-revision-hash"]),
            name,
        });
    }
    found.sort_by_key(|m| m.ordinal);
    Some(found)
}

/// Polls the set's pods until `done`, checking `invariant` on every look.
fn watch(
    profile: &Profile,
    what: &str,
    mut invariant: impl FnMut(&[Member]),
    done: impl Fn(&[Member]) -> bool,
) -> Vec<Member> {
    let mut last = Vec::new();
    wait_until(CONVERGE, what, || {
        let Some(pods) = members(profile, "default", "web") else {
            return false;
        };
        invariant(&pods);
        let finished = done(&pods);
        last = pods;
        finished
    });
    last
}

/// OrderedReady: the pods present are `web-0 … web-k`, all but at most
/// one of them ready.
fn ordered(pods: &[Member]) {
    let ordinals: Vec<usize> = pods.iter().map(|p| p.ordinal).collect();
    assert!(
        ordinals.iter().enumerate().all(|(i, o)| i == *o),
        "a gap in the ordinals: {pods:#?}"
    );
    let unready = pods.iter().filter(|p| !p.ready || p.deleting).count();
    assert!(unready <= 1, "{unready} pods not ready at once: {pods:#?}");
}

fn all_ready(n: usize) -> impl Fn(&[Member]) -> bool {
    move |pods| pods.len() == n && pods.iter().all(|p| p.ready && !p.deleting)
}

/// Each pod from `from` on was created after the one before it was ready.
fn created_in_order(pods: &[Member], from: usize) {
    for pair in pods[from.max(1) - 1..].windows(2) {
        assert!(
            pair[1].created >= pair[0].ready_since && !pair[0].ready_since.is_empty(),
            "{} created at {} before {} was ready at {}",
            pair[1].name,
            pair[1].created,
            pair[0].name,
            pair[0].ready_since
        );
    }
}

fn get(profile: &Profile, args: &[&str], path: &str) -> String {
    let path = format!("jsonpath={path}");
    let mut all = vec!["get"];
    all.extend(args);
    all.extend(["-o", &path]);
    profile.try_kubectl(&all).unwrap_or_default()
}

fn web(replicas: u32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web"},
        "spec": {"serviceName": "web", "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "web", "image": IMAGE,
                        "command": ["sh", "-c", "busybox mkdir -p /www && hostname > /www/index.html && exec busybox httpd -f -p 8080 -h /www"],
                        "env": [{"name": "VERSION", "value": "1"}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}]}}}})
}

/// A set in `namespace` whose pods mount a claim `www` each, bound to a
/// local-path volume on the node the pod first lands on.
fn claimed(name: &str, replicas: u32, retention: Option<(&str, &str)>) -> Value {
    let mut set = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": "claims"},
        "spec": {"serviceName": name, "replicas": replicas, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "3600"],
                        "volumeMounts": [{"name": "www", "mountPath": "/www"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "www"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Mi"}}}}]}});
    if let Some((scaled, deleted)) = retention {
        set["spec"]["persistentVolumeClaimRetentionPolicy"] =
            json!({"whenScaled": scaled, "whenDeleted": deleted});
    }
    set
}

/// The claims of namespace `claims`: name → (labels, owner kinds, being deleted).
fn claims(profile: &Profile) -> BTreeMap<String, (Value, Vec<String>, bool)> {
    let Some(text) = profile.try_kubectl(&["get", "pvc", "-n", "claims", "-o", "json"]) else {
        return BTreeMap::new();
    };
    let list: Value = serde_json::from_str(&text).unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let owners = c["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    format!(
                        "{}/{}",
                        r["kind"].as_str().unwrap_or_default(),
                        r["name"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            (
                c["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                (
                    c["metadata"]["labels"].clone(),
                    owners,
                    !c["metadata"]["deletionTimestamp"].is_null(),
                ),
            )
        })
        .collect()
}

/// The revision numbers `kubectl rollout history` lists, with their change causes.
fn history(profile: &Profile) -> Vec<(String, String)> {
    profile
        .kubectl(&["rollout", "history", "statefulset/web"])
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let number = fields.next()?.to_owned();
            Some((number, fields.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

fn env_of(profile: &Profile, pod: &str) -> String {
    profile
        .kubectl(&["exec", pod, "--", "sh", "-c", "echo $VERSION"])
        .trim()
        .to_owned()
}

#[test]
fn statefulsets_keep_their_pods_identities_order_and_claims() {
    // Short failure detection, so a stopped node's pod is evicted within the test.
    let started = Instant::now();
    let progress = |what: &str| eprintln!("{:>6.1}s  {what}", started.elapsed().as_secs_f64());
    let profile = Profile::up(
        2,
        &[
            "--server-flag=--node-monitor-grace-period=6s",
            "--server-flag=--default-unreachable-toleration-seconds=2",
            "--server-flag=--default-not-ready-toleration-seconds=2",
            "--agent-flag=--node-lease-renew-interval=1s",
        ],
    );
    profile.apply(
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 8080}]}}),
    );

    progress("ordered creation");
    // OrderedReady: web-0, then web-1 once web-0 is ready, then web-2.
    profile.apply(&web(3));
    let pods = watch(
        &profile,
        "web-0..2 to be ready, in order",
        ordered,
        all_ready(3),
    );
    created_in_order(&pods, 1);
    let table = profile.kubectl(&["get", "statefulset", "web"]);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["web", "3/3"])),
        "{table}"
    );
    let events = profile.kubectl(&["get", "events"]);
    for pod in ["web-0", "web-1", "web-2"] {
        let message = format!("create Pod {pod} in StatefulSet web successful");
        assert!(events.contains(&message), "{message}: {events}");
    }

    progress("network identity");
    // Stable network identity: the host name, and web-1.web through the
    // headless Service, from another pod.
    assert_eq!(
        profile.kubectl(&["exec", "web-1", "--", "hostname"]).trim(),
        "web-1"
    );
    let ip = pods[1].ip.clone();
    let name = "web-1.web.default.svc.cluster.local";
    wait_until(CONVERGE, "web-1.web to resolve to web-1 from web-0", || {
        profile
            .try_kubectl(&["exec", "web-0", "--", "busybox", "nslookup", name])
            .is_some_and(|found| found.contains(&format!("Address: {ip}")))
    });
    wait_until(CONVERGE, "web-1.web to answer as web-1", || {
        let url = format!("http://{name}:8080/");
        profile
            .try_kubectl(&["exec", "web-0", "--", "busybox", "wget", "-qO-", &url])
            .is_some_and(|page| page.trim() == "web-1")
    });

    progress("a deleted pod");
    // A deleted pod comes back under its name; the others stay.
    profile.kubectl(&["delete", "pod", "web-1", "--wait=false"]);
    let again = watch(
        &profile,
        "web-1 to come back",
        |_| {},
        |now| all_ready(3)(now) && now[1].uid != pods[1].uid,
    );
    assert_eq!(again[0].uid, pods[0].uid);
    assert_eq!(again[2].uid, pods[2].uid);

    progress("scaling");
    // Scaling up goes in order, scaling down in reverse, one at a time.
    profile.kubectl(&["scale", "statefulset", "web", "--replicas=5"]);
    let pods = watch(
        &profile,
        "web-0..4 to be ready, in order",
        ordered,
        all_ready(5),
    );
    created_in_order(&pods, 3);
    profile.kubectl(&["scale", "statefulset", "web", "--replicas=2"]);
    watch(
        &profile,
        "web-4, web-3, web-2 to go, in that order",
        |pods| {
            ordered(pods);
            let deleting = pods.iter().filter(|p| p.deleting).count();
            assert!(deleting <= 1, "{deleting} pods going at once: {pods:#?}");
        },
        all_ready(2),
    );
    wait_until(CONVERGE, "the status to count two replicas", || {
        get(
            &profile,
            &["statefulset", "web"],
            "{.status.replicas}/{.status.readyReplicas}",
        ) == "2/2"
    });

    progress("partitioned update");
    // A rolling update with a partition updates web-1 only.
    let first = get(
        &profile,
        &["statefulset", "web"],
        "{.status.updateRevision}",
    );
    assert!(first.starts_with("web-"), "{first:?}");
    let before = members(&profile, "default", "web").unwrap_or_default();
    profile.kubectl(&[
        "patch",
        "statefulset",
        "web",
        "-p",
        r#"{"metadata": {"annotations": {"kubernetes.io/change-cause": "version 2"}},
            "spec": {"updateStrategy": {"rollingUpdate": {"partition": 1}},
                "template": {"spec": {"containers": [{"name": "web", "env": [{"name": "VERSION", "value": "2"}]}]}}}}"#,
    ]);
    let status = profile.kubectl(&["rollout", "status", "statefulset/web", "--timeout=120s"]);
    assert!(
        status.contains("partitioned roll out complete: 1 new pods have been updated"),
        "{status}"
    );
    let second = get(
        &profile,
        &["statefulset", "web"],
        "{.status.updateRevision}",
    );
    assert_ne!(second, first);
    let pods = watch(
        &profile,
        "web-1 at the new revision",
        |_| {},
        |pods| all_ready(2)(pods) && pods[1].revision == second,
    );
    assert_eq!(pods[0].uid, before[0].uid, "web-0 is below the partition");
    assert_eq!(pods[0].revision, first);
    assert_eq!(env_of(&profile, "web-0"), "1");
    assert_eq!(env_of(&profile, "web-1"), "2");
    assert_eq!(
        get(
            &profile,
            &["statefulset", "web"],
            "{.status.currentRevision} {.status.updatedReplicas}"
        ),
        format!("{first} 1")
    );

    // Partition 0: web-0 too; the update revision becomes the current one.
    profile.kubectl(&[
        "patch",
        "statefulset",
        "web",
        "-p",
        r#"{"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}}"#,
    ]);
    profile.kubectl(&["rollout", "status", "statefulset/web", "--timeout=120s"]);
    watch(
        &profile,
        "both pods at the new revision",
        |_| {},
        |pods| all_ready(2)(pods) && pods.iter().all(|p| p.revision == second),
    );
    wait_until(CONVERGE, "the update to complete", || {
        get(
            &profile,
            &["statefulset", "web"],
            "{.status.currentRevision}",
        ) == second
    });
    assert_eq!(env_of(&profile, "web-0"), "2");
    let revisions = history(&profile);
    assert_eq!(
        revisions,
        [
            ("1".into(), "<none>".into()),
            ("2".into(), "version 2".into())
        ],
        "{revisions:?}"
    );
    let shown = profile.kubectl(&["rollout", "history", "statefulset/web", "--revision=1"]);
    assert!(
        shown
            .lines()
            .any(|l| l.trim().starts_with("VERSION:") && l.trim().ends_with('1')),
        "{shown}"
    );

    progress("undo");
    // Undo: back to the first template, now revision 3.
    profile.kubectl(&["rollout", "undo", "statefulset/web"]);
    profile.kubectl(&["rollout", "status", "statefulset/web", "--timeout=120s"]);
    let pods = watch(
        &profile,
        "both pods back at the first revision",
        |_| {},
        |pods| all_ready(2)(pods) && pods.iter().all(|p| p.revision == first),
    );
    assert_eq!(env_of(&profile, "web-1"), "1");
    let numbers: Vec<String> = history(&profile).into_iter().map(|(n, _)| n).collect();
    assert_eq!(numbers, ["2", "3"]);

    progress("node stop");
    // A node switched off: its pod is evicted but not made again while it
    // is still there, terminating; it comes back once the node does.
    let victim = pods[1].clone();
    let others: Vec<Member> = pods
        .iter()
        .filter(|p| p.node != victim.node)
        .cloned()
        .collect();
    let at_most_two = |pods: &[Member]| {
        assert!(pods.len() <= 2, "more pods than replicas: {pods:#?}");
    };
    let same_victim = |pods: &[Member]| {
        at_most_two(pods);
        if let Some(p) = pods.iter().find(|p| p.name == victim.name) {
            assert_eq!(
                p.uid, victim.uid,
                "{} made again while its node is off",
                p.name
            );
        }
    };
    profile.keelson(&["node", "stop", &victim.node]);
    watch(
        &profile,
        "the stopped node's pod to be evicted",
        same_victim,
        |pods| pods.iter().any(|p| p.name == victim.name && p.deleting),
    );
    // Nothing takes its place while it is terminating.
    let replaced = holds_within(Duration::from_secs(15), || {
        let pods = members(&profile, "default", "web").unwrap_or_default();
        same_victim(&pods);
        false
    });
    assert!(!replaced);
    profile.keelson(&["node", "start", &victim.node]);
    let pods = watch(
        &profile,
        "the pod back after its node",
        at_most_two,
        |pods| {
            all_ready(2)(pods)
                && pods
                    .iter()
                    .any(|p| p.name == victim.name && p.uid != victim.uid)
        },
    );
    for other in &others {
        assert!(
            pods.iter().any(|p| p.uid == other.uid),
            "{} on the other node stays: {pods:#?}",
            other.name
        );
    }

    progress("claims");
    // Claims: one per pod and template, made before the pod, labelled with
    // the selector, kept through a scale-down and the set's deletion.
    profile.kubectl(&["create", "namespace", "claims"]);
    profile.apply(&claimed("web", 3, None));
    wait_until(CONVERGE, "www-web-0..2", || {
        let found = claims(&profile);
        ["www-web-0", "www-web-1", "www-web-2"].iter().all(|c| {
            found
                .get(*c)
                .is_some_and(|(labels, owners, _)| labels["app"] == "web" && owners.is_empty())
        })
    });
    wait_until(CONVERGE, "the pods to mount their claims", || {
        (0..3).all(|i| {
            get(
                &profile,
                &["pod", &format!("web-{i}"), "-n", "claims"],
                "{.spec.volumes[?(@.name==\"www\")].persistentVolumeClaim.claimName}",
            ) == format!("www-web-{i}")
        })
    });
    // Each pod writes its hostname to its volume; a replaced web-1 finds
    // what web-1 wrote, on whichever node it lands.
    wait_until(CONVERGE, "the claimed pods to run", || {
        (0..3).all(|i| {
            get(
                &profile,
                &["pod", &format!("web-{i}"), "-n", "claims"],
                "{.status.phase}",
            ) == "Running"
        })
    });
    for i in 0..3 {
        profile.kubectl(&[
            "exec",
            "-n",
            "claims",
            &format!("web-{i}"),
            "--",
            "sh",
            "-c",
            "hostname > /www/host",
        ]);
    }
    let old_uid = get(
        &profile,
        &["pod", "web-1", "-n", "claims"],
        "{.metadata.uid}",
    );
    profile.kubectl(&["delete", "pod", "web-1", "-n", "claims", "--wait=true"]);
    wait_until(CONVERGE, "web-1 back with its data", || {
        get(
            &profile,
            &["pod", "web-1", "-n", "claims"],
            "{.metadata.uid}",
        ) != old_uid
            && profile
                .try_kubectl(&["exec", "-n", "claims", "web-1", "--", "cat", "/www/host"])
                .is_some_and(|host| host.trim() == "web-1")
    });
    assert_eq!(
        get(
            &profile,
            &["pvc", "www-web-1", "-n", "claims"],
            "{.status.phase}"
        ),
        "Bound"
    );
    profile.kubectl(&[
        "scale",
        "statefulset",
        "web",
        "-n",
        "claims",
        "--replicas=1",
    ]);
    wait_until(CONVERGE, "web-1 and web-2 of claims to go", || {
        members(&profile, "claims", "web").is_some_and(|pods| pods.len() == 1)
    });
    assert_eq!(claims(&profile).len(), 3, "claims outlive scaled-down pods");
    profile.kubectl(&["delete", "statefulset", "web", "-n", "claims"]);
    wait_until(CONVERGE, "the set's pods to go", || {
        members(&profile, "claims", "web").is_some_and(|pods| pods.is_empty())
    });
    let kept = claims(&profile);
    assert!(
        ["www-web-0", "www-web-1", "www-web-2"]
            .iter()
            .all(|c| kept.get(*c).is_some_and(|k| !k.2)),
        "claims outlive their set: {kept:?}"
    );

    progress("retention");
    // Retention policy Delete: the claims of a scaled-down pod go with it,
    // the others are the set's and go with the set.
    profile.apply(&claimed("db", 2, Some(("Delete", "Delete"))));
    wait_until(CONVERGE, "www-db-0 and www-db-1 owned by the set", || {
        let found = claims(&profile);
        ["www-db-0", "www-db-1"].iter().all(|c| {
            found
                .get(*c)
                .is_some_and(|(_, owners, _)| owners == &["StatefulSet/db"])
        })
    });
    profile.kubectl(&["scale", "statefulset", "db", "-n", "claims", "--replicas=1"]);
    wait_until(CONVERGE, "www-db-1 to go with db-1", || {
        claims(&profile)
            .get("www-db-1")
            .is_none_or(|(_, _, deleting)| *deleting)
    });
    assert!(
        claims(&profile)
            .get("www-db-0")
            .is_some_and(|(_, owners, deleting)| owners == &["StatefulSet/db"] && !deleting)
    );
    profile.kubectl(&["delete", "statefulset", "db", "-n", "claims"]);
    wait_until(CONVERGE, "www-db-0 to go with its set", || {
        claims(&profile)
            .get("www-db-0")
            .is_none_or(|(_, _, deleting)| *deleting)
    });
    progress("done");
}
