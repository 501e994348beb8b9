//! PersistentVolumes on a local cluster, as root (as CI runs): claims bound
//! to static volumes, local-path volumes provisioned on the node a claim's
//! first pod went to, data that outlives its pods, and volumes released or
//! deleted with their claims.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::time::Duration;

use common::profile::{IMAGE, Profile};
use common::wait_until;
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(90);

fn jsonpath(profile: &Profile, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend(what);
    let path = format!("jsonpath={path}");
    args.extend(["-o", &path]);
    profile.try_kubectl(&args).unwrap_or_default()
}

fn pod(name: &str, claim: &str, script: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": IMAGE, "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}})
}

fn claim(name: &str, class: Option<&str>, size: &str) -> serde_json::Value {
    let mut claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}});
    if let Some(class) = class {
        claim["spec"]["storageClassName"] = json!(class);
    }
    claim
}

#[test]
fn claims_bind_provision_and_outlive_their_pods() {
    let profile = Profile::up(2, &[]);

    // The built-in default class, and a claim that waits for its consumer.
    let classes = profile.kubectl(&["get", "storageclass"]);
    assert!(
        classes.contains("local-path (default)")
            && classes.contains("keelson.io/local-path")
            && classes.contains("WaitForFirstConsumer"),
        "{classes}"
    );
    profile.apply(&claim("data", None, "1Gi"));
    wait_until(CONVERGE, "the default class written into the claim", || {
        jsonpath(&profile, &["pvc", "data"], "{.spec.storageClassName}") == "local-path"
    });
    wait_until(CONVERGE, "the claim to wait for its first consumer", || {
        profile
            .try_kubectl(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=data",
            ])
            .is_some_and(|e| e.contains("WaitForFirstConsumer"))
    });
    assert_eq!(
        jsonpath(&profile, &["pvc", "data"], "{.status.phase}"),
        "Pending"
    );

    // Its first pod: a volume made on that pod's node, bound, written.
    profile.apply(&pod(
        "writer",
        "data",
        "echo kept > /data/file && exec sleep 3600",
    ));
    wait_until(CONVERGE, "the writer to run", || {
        jsonpath(&profile, &["pod", "writer"], "{.status.phase}") == "Running"
    });
    let node = jsonpath(&profile, &["pod", "writer"], "{.spec.nodeName}");
    let volume = jsonpath(&profile, &["pvc", "data"], "{.spec.volumeName}");
    assert!(volume.starts_with("pvc-"), "{volume}");
    assert_eq!(
        jsonpath(&profile, &["pvc", "data"], "{.status.phase}"),
        "Bound"
    );
    assert_eq!(
        jsonpath(
            &profile,
            &["pv", &volume],
            "{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}"
        ),
        node
    );
    let pvs = profile.kubectl(&["get", "pv", &volume, "--no-headers"]);
    let columns: Vec<&str> = pvs.split_whitespace().collect();
    assert_eq!(
        &columns[1..7],
        [
            "1Gi",
            "RWO",
            "Delete",
            "Bound",
            "default/data",
            "local-path"
        ],
        "{pvs}"
    );
    let pvcs = profile.kubectl(&["get", "pvc", "data", "--no-headers"]);
    let columns: Vec<&str> = pvcs.split_whitespace().collect();
    assert_eq!(
        &columns[1..6],
        ["Bound", &volume, "1Gi", "RWO", "local-path"],
        "{pvcs}"
    );
    let path = jsonpath(&profile, &["pv", &volume], "{.spec.hostPath.path}");
    assert!(
        path.starts_with(
            &profile
                .dir()
                .join("nodes")
                .join(&node)
                .to_string_lossy()
                .into_owned()
        ),
        "the volume lives in its node's data: {path}"
    );
    wait_until(CONVERGE, "the file on the node", || {
        std::fs::read_to_string(format!("{path}/file")).is_ok_and(|t| t == "kept\n")
    });

    // The data outlives the pod; the next pod goes where the volume is.
    profile.kubectl(&["delete", "pod", "writer", "--wait=true"]);
    profile.apply(&pod("reader", "data", "cat /data/file && exec sleep 3600"));
    wait_until(
        CONVERGE,
        "the reader to print what the writer wrote",
        || {
            profile
                .try_kubectl(&["logs", "reader"])
                .is_some_and(|l| l.trim() == "kept")
        },
    );
    assert_eq!(
        jsonpath(&profile, &["pod", "reader"], "{.spec.nodeName}"),
        node
    );

    // A static volume binds a claim of its class at once; the smallest fits.
    let static_dir = profile.home.path().join("static");
    for (name, size) in [("big", "5Gi"), ("small", "2Gi")] {
        profile.apply(&json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": format!("{}-{name}", profile.name)},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "manual",
                "hostPath": {"path": static_dir.join(name).to_string_lossy(), "type": "DirectoryOrCreate"}}}));
    }
    profile.apply(&claim("manual", Some("manual"), "1Gi"));
    wait_until(CONVERGE, "the manual claim to bind", || {
        jsonpath(&profile, &["pvc", "manual"], "{.status.phase}") == "Bound"
    });
    assert_eq!(
        jsonpath(&profile, &["pvc", "manual"], "{.spec.volumeName}"),
        format!("{}-small", profile.name)
    );
    // Retain: its claim deleted, the volume is Released and kept.
    profile.kubectl(&["delete", "pvc", "manual"]);
    let small = format!("{}-small", profile.name);
    wait_until(CONVERGE, "the static volume to be Released", || {
        jsonpath(&profile, &["pv", &small], "{.status.phase}") == "Released"
    });
    // Too big for anything, of a class that does not exist: Pending, said why.
    profile.apply(&claim("huge", Some("manual"), "50Gi"));
    wait_until(CONVERGE, "the huge claim's event", || {
        profile
            .try_kubectl(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=huge",
            ])
            .is_some_and(|e| e.contains("FailedBinding"))
    });
    assert_eq!(
        jsonpath(&profile, &["pvc", "huge"], "{.status.phase}"),
        "Pending"
    );

    // Delete: the provisioned volume goes with its claim, and its directory.
    profile.kubectl(&["delete", "pod", "reader", "--wait=true"]);
    profile.kubectl(&["delete", "pvc", "data"]);
    wait_until(CONVERGE, "the provisioned volume to be deleted", || {
        profile
            .try_kubectl(&["get", "pv", &volume, "--ignore-not-found"])
            .is_some_and(|t| t.trim().is_empty())
    });
    assert!(
        !std::path::Path::new(&path).exists(),
        "the directory is gone: {path}"
    );
    for name in ["big", "small"] {
        profile.kubectl(&["delete", "pv", &format!("{}-{name}", profile.name)]);
    }
}
