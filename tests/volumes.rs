//! Pod volumes in real containers (as root, as CI runs): the volume
//! manager sets them up from objects held in memory, the libcontainer
//! runtime mounts them into a busybox container, which reads and writes
//! them as a workload would.
//!
//! The node's data directory is a temporary directory; whatever the test
//! leaves running or mounted under it is killed and unmounted when it
//! ends, pass or fail.

#[allow(dead_code, reason = "uses part of the shared harness")]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use keelson_control::client::ClientError;
use keelson_nodeagent::images::Store;
use keelson_nodeagent::pods::env::Allocatable;
use keelson_nodeagent::runtime::libcontainer::LibcontainerRuntime;
use keelson_nodeagent::runtime::{
    ContainerConfig, ContainerRun, Resources, Runtime, SandboxConfig,
};
use keelson_nodeagent::volumes::{Objects, Volumes};
use serde_json::{Value, json};

const IMAGE: &str = "keelson.test/busybox:1";

/// Objects by kind and name (one namespace).
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<HashMap<(String, String), Value>>>);

impl Memory {
    fn put(&self, kind: &str, object: Value) {
        let name = object["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_owned();
        self.0
            .lock()
            .expect("the objects")
            .insert((kind.to_owned(), name), object);
    }
}

impl Objects for Memory {
    async fn fetch<K>(&self, _namespace: Option<&str>, name: &str) -> Result<Option<K>, ClientError>
    where
        K: k8s_openapi::Resource + k8s_openapi::serde::de::DeserializeOwned + Send + 'static,
    {
        let value = self
            .0
            .lock()
            .expect("the objects")
            .get(&(K::KIND.to_owned(), name.to_owned()))
            .cloned();
        Ok(value.map(|v| serde_json::from_value(v).expect("an object of its kind")))
    }
}

/// A node's data directory with the busybox image imported.
struct Node {
    data: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let data = common::images::node_data_with_busybox(IMAGE);
        Node { data }
    }

    fn runtime(&self) -> LibcontainerRuntime {
        let images = Store::open(&self.data.path().join("images")).expect("the image store");
        LibcontainerRuntime::new(self.data.path(), images)
            .expect("the runtime")
            .with_binary(PathBuf::from(env!("CARGO_BIN_EXE_keelson")))
    }

    fn mounts(&self) -> Vec<PathBuf> {
        let dir = std::fs::canonicalize(self.data.path()).unwrap_or_default();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(PathBuf::from)
            .filter(|m| m.starts_with(&dir))
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let needle = self.data.path().to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                drop(Command::new("kill").args(["-9", &pid.to_string()]).status());
            }
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for mount in mounts {
            drop(Command::new("umount").arg("-l").arg(&mount).status());
        }
    }
}

/// The text a container wrote to its log (CRI lines, stdout and stderr).
fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.splitn(4, ' ').nth(3))
        .map(|text| format!("{text}\n"))
        .collect()
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn config(name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        name: name.to_owned(),
        attempt: 0,
        image: IMAGE.to_owned(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        args: Vec::new(),
        env: Vec::new(),
        working_dir: None,
        resources: Resources::default(),
        mounts: Vec::new(),
        identity: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_see_their_volumes() {
    let node = Node::new();
    let runtime = node.runtime();
    let objects = Memory::default();
    let volumes = Volumes::new(
        node.data.path(),
        objects.clone(),
        Allocatable {
            milli_cpu: 2000,
            memory: 1 << 30,
        },
    );
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("motd"), "from the node\n").unwrap();
    objects.put(
        "ConfigMap",
        json!({"metadata": {"name": "app", "namespace": "shop"},
               "data": {"greeting": "hello", "app.conf": "x=1\n"}}),
    );
    objects.put(
        "Secret",
        json!({"metadata": {"name": "creds", "namespace": "shop"},
               "data": {"password": "aHVudGVyMg=="}}),
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "e2e-volumes-1",
            "labels": {"app": "web"}},
        "spec": {
            "volumes": [
                {"name": "config", "configMap": {"name": "app"}},
                {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}},
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                {"name": "host", "hostPath": {"path": host.path(), "type": "Directory"}},
            ],
            "containers": [{"name": "reader", "volumeMounts": [
                {"name": "config", "mountPath": "/etc/config"},
                {"name": "config", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
                {"name": "creds", "mountPath": "/etc/creds"},
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "scratch", "mountPath": "/out", "subPath": "out"},
                {"name": "info", "mountPath": "/etc/podinfo"},
                {"name": "host", "mountPath": "/host", "readOnly": true},
            ]}],
        },
    }))
    .unwrap();
    let container = &pod.spec.as_ref().unwrap().containers[0];

    let prepared = volumes.prepare(&pod).await.expect("the volumes");
    let sandbox = runtime
        .run_sandbox(&SandboxConfig {
            pod_uid: "e2e-volumes-1".into(),
            namespace: "shop".into(),
            name: "web-0".into(),
            hostname: "web-0".into(),
            host_ports: Vec::new(),
        })
        .await
        .expect("the sandbox");
    let mut reader = config(
        "reader",
        "cat /etc/config/greeting; echo; cat /etc/app.conf; cat /etc/creds/password; echo; \
         cat /etc/podinfo/labels; echo; cat /host/motd; cat /etc/hostname; \
         busybox grep web-0 /etc/hosts; echo written > /scratch/file; echo sub > /out/file; \
         busybox touch /host/x 2>/dev/null || echo host is read-only; \
         busybox touch /etc/config/x 2>/dev/null || echo config is read-only; \
         echo all done > /dev/termination-log",
    );
    reader.mounts = volumes
        .mounts(&prepared, &pod, container, 0, &[], &[])
        .expect("the mounts");
    let id = runtime
        .start_container(&sandbox.id, &reader)
        .await
        .expect("start the reader");
    wait_for("the reader to exit", Duration::from_secs(30), async || {
        let sandboxes = runtime.list().await.unwrap_or_default();
        sandboxes
            .iter()
            .flat_map(|s| &s.containers)
            .any(|c| c.id == id && matches!(c.run, ContainerRun::Exited { .. }))
    })
    .await;
    let log = log_text(&runtime.log_path(&id).unwrap());
    assert_eq!(
        log,
        "hello\nx=1\nhunter2\napp=\"web\"\nfrom the node\nweb-0\n127.0.0.1\tweb-0\n\
         host is read-only\nconfig is read-only\n",
    );
    let scratch = &prepared.get("scratch").unwrap().path;
    assert_eq!(
        std::fs::read_to_string(scratch.join("file")).unwrap(),
        "written\n"
    );
    assert_eq!(
        std::fs::read_to_string(scratch.join("out/file")).unwrap(),
        "sub\n"
    );
    assert!(!host.path().join("x").exists());
    assert_eq!(
        volumes
            .termination_message("e2e-volumes-1", "reader", 0)
            .as_deref(),
        Some("all done\n")
    );

    // A running container sees a ConfigMap update, all at once.
    let mut watcher = config(
        "watcher",
        "while true; do echo \"$(cat /etc/config/greeting)\"; sleep 0.2; done",
    );
    watcher.mounts = volumes
        .mounts(&prepared, &pod, container, 0, &[], &[])
        .expect("the mounts");
    let watching = runtime
        .start_container(&sandbox.id, &watcher)
        .await
        .expect("start the watcher");
    let log = runtime.log_path(&watching).unwrap();
    wait_for("hello", Duration::from_secs(30), async || {
        log_text(&log).contains("hello")
    })
    .await;
    objects.put(
        "ConfigMap",
        json!({"metadata": {"name": "app", "namespace": "shop"},
               "data": {"greeting": "bonjour", "app.conf": "x=2\n"}}),
    );
    volumes.update(&pod).await.expect("the update");
    wait_for("bonjour", Duration::from_secs(30), async || {
        log_text(&log).contains("bonjour")
    })
    .await;

    // Gone: the sandbox, then the volumes; nothing mounted is left.
    runtime
        .stop_sandbox(&sandbox.id, Duration::from_secs(1))
        .await
        .unwrap();
    runtime.remove_sandbox(&sandbox.id).await.unwrap();
    volumes
        .remove("e2e-volumes-1")
        .await
        .expect("remove the volumes");
    assert!(node.mounts().is_empty(), "{:?}", node.mounts());
    assert!(!node.data.path().join("pods/e2e-volumes-1").exists());
    assert_eq!(
        std::fs::read_to_string(host.path().join("motd")).unwrap(),
        "from the node\n"
    );
}
