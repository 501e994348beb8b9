//! The volume manager against objects held in memory, on real tmpfs and
//! bind mounts (as root, as CI runs; skipped otherwise). Each test's
//! node directory is unmounted and removed when it ends, pass or fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::*;
use crate::runtime::Propagation;

/// Kind, namespace, name.
type Key = (String, String, String);

/// Objects by key, and how many reads were made.
#[derive(Clone, Default)]
struct Memory {
    objects: Arc<Mutex<HashMap<Key, Value>>>,
    reads: Arc<AtomicUsize>,
}

impl Memory {
    fn put(&self, kind: &str, namespace: &str, object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        self.objects
            .lock()
            .unwrap()
            .insert((kind.to_owned(), namespace.to_owned(), name), object);
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

impl Objects for Memory {
    async fn fetch<K>(&self, namespace: Option<&str>, name: &str) -> Result<Option<K>, ClientError>
    where
        K: k8s_openapi::Resource + serde::de::DeserializeOwned + Send + 'static,
    {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let key = (
            K::KIND.to_owned(),
            namespace.unwrap_or_default().to_owned(),
            name.to_owned(),
        );
        let value = self.objects.lock().unwrap().get(&key).cloned();
        Ok(value.map(|v| serde_json::from_value(v).unwrap()))
    }
}

/// A node directory with its volume manager; unmounts everything under
/// it when dropped.
struct Node {
    volumes: Volumes<Memory>,
    objects: Memory,
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        Self::with(|v| v)
    }

    fn with(configure: impl FnOnce(Volumes<Memory>) -> Volumes<Memory>) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let objects = Memory::default();
        let node = Allocatable {
            milli_cpu: 4000,
            memory: 8 << 30,
        };
        let volumes = configure(Volumes::new(dir.path(), objects.clone(), node));
        Node {
            volumes,
            objects,
            dir,
        }
    }

    fn canonical(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }

    fn mounts(&self) -> Vec<PathBuf> {
        system::mounts_under(&self.canonical()).unwrap()
    }

    /// The options of the mount at `path` (its mountinfo line).
    fn mount_line(&self, path: &Path) -> Option<String> {
        let path = std::fs::canonicalize(path).ok()?;
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        text.lines()
            .find(|l| l.split(' ').nth(4).map(Path::new) == Some(path.as_path()))
            .map(str::to_owned)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(dir) = std::fs::canonicalize(self.dir.path()) {
            drop(system::unmount_all(&dir));
        }
    }
}

fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: needs root for mounts");
    }
    root
}

fn pod(volumes: Value, containers: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "uid-1",
            "labels": {"app": "web"}},
        "spec": {"volumes": volumes, "containers": containers},
    }))
    .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn empty_dirs_are_directories_or_sized_tmpfs() {
    if !root() {
        return;
    }
    let node = Node::new();
    let pod = pod(
        json!([
            {"name": "scratch", "emptyDir": {}},
            {"name": "fast", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            {"name": "defaulted"},
        ]),
        json!([{"name": "c", "resources": {"limits": {"memory": "64Mi"}}}]),
    );
    let prepared = node.volumes.prepare(&pod).await.unwrap();
    let scratch = prepared.get("scratch").unwrap();
    assert_eq!(
        scratch.path,
        node.dir
            .path()
            .join("pods/uid-1/volumes/kubernetes.io~empty-dir/scratch")
    );
    assert_eq!(
        std::fs::metadata(&scratch.path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o777
    );
    assert!(node.mount_line(&scratch.path).is_none(), "on disk");
    assert!(prepared.get("defaulted").unwrap().path.is_dir());
    let fast = prepared.get("fast").unwrap();
    let line = node.mount_line(&fast.path).expect("a tmpfs");
    assert!(
        line.contains(" - tmpfs ") && line.contains("size=1024k"),
        "{line}"
    );
    assert!(
        node.dir
            .path()
            .join("pods/uid-1/plugins/kubernetes.io~empty-dir/fast/ready")
            .is_file()
    );
    // Again: the same, nothing mounted twice.
    assert_eq!(node.volumes.prepare(&pod).await.unwrap(), prepared);
    assert_eq!(node.mounts().len(), 1);
}

#[tokio::test]
async fn tmpfs_sizes_follow_the_pod_limit() {
    if !root() {
        return;
    }
    let node = Node::new();
    let pod = pod(
        json!([{"name": "fast", "emptyDir": {"medium": "Memory"}}]),
        json!([{"name": "c", "resources": {"limits": {"memory": "2Mi"}}},
               {"name": "d", "resources": {"limits": {"memory": "2Mi"}}}]),
    );
    let prepared = node.volumes.prepare(&pod).await.unwrap();
    let line = node
        .mount_line(&prepared.get("fast").unwrap().path)
        .unwrap();
    assert!(line.contains("size=4096k"), "{line}");
}

fn config_map(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "shop"}, "data": data})
}

fn secret(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "shop"}, "data": data})
}

#[tokio::test]
async fn config_maps_and_secrets_are_written_then_updated_at_once() {
    if !root() {
        return;
    }
    let node = Node::new();
    node.objects.put(
        "ConfigMap",
        "shop",
        config_map("cfg", json!({"a": "1", "b": "2"})),
    );
    node.objects.put(
        "Secret",
        "shop",
        secret("creds", json!({"password": "aHVudGVyMg=="})),
    );
    let pod = pod(
        json!([
            {"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 0o640}},
            {"name": "creds", "secret": {"secretName": "creds",
                "items": [{"key": "password", "path": "db/password", "mode": 0o400}]}},
        ]),
        json!([{"name": "c"}]),
    );
    let prepared = node.volumes.prepare(&pod).await.unwrap();
    let cfg = prepared.get("cfg").unwrap();
    assert!(cfg.read_only);
    assert!(cfg.path.ends_with("volumes/kubernetes.io~configmap/cfg"));
    assert_eq!(read(&cfg.path.join("a")), "1");
    assert_eq!(
        std::fs::read_link(cfg.path.join("a")).unwrap(),
        Path::new("..data/a")
    );
    assert_eq!(
        std::fs::metadata(cfg.path.join("a"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    assert!(
        node.mount_line(&cfg.path).is_none(),
        "ConfigMaps are on disk"
    );
    let creds = prepared.get("creds").unwrap();
    assert!(creds.path.ends_with("volumes/kubernetes.io~secret/creds"));
    assert_eq!(read(&creds.path.join("db/password")), "hunter2");
    assert_eq!(
        std::fs::metadata(creds.path.join("db/password"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o400
    );
    let line = node
        .mount_line(&creds.path)
        .expect("Secrets are on a tmpfs");
    assert!(line.contains(" - tmpfs "), "{line}");

    // Set up already: no reads.
    let reads = node.objects.reads();
    node.volumes.prepare(&pod).await.unwrap();
    assert_eq!(node.objects.reads(), reads);

    // Unchanged: nothing rewritten.
    let data = std::fs::read_link(cfg.path.join("..data")).unwrap();
    node.volumes.update(&pod).await.unwrap();
    assert_eq!(std::fs::read_link(cfg.path.join("..data")).unwrap(), data);

    // Changed: every file at once, the removed key gone.
    node.objects.put(
        "ConfigMap",
        "shop",
        config_map("cfg", json!({"a": "one", "c": "3"})),
    );
    node.volumes.update(&pod).await.unwrap();
    assert_ne!(std::fs::read_link(cfg.path.join("..data")).unwrap(), data);
    assert_eq!(read(&cfg.path.join("a")), "one");
    assert_eq!(read(&cfg.path.join("c")), "3");
    assert!(std::fs::symlink_metadata(cfg.path.join("b")).is_err());
}

#[tokio::test]
async fn missing_objects_and_keys_fail_as_in_the_kubelet() {
    if !root() {
        return;
    }
    let node = Node::new();
    node.objects
        .put("ConfigMap", "shop", config_map("cfg", json!({"a": "1"})));
    let cases = [
        (
            json!({"name": "v", "configMap": {"name": "nope"}}),
            Some(r#"MountVolume.SetUp failed for volume "v" : configmap "nope" not found"#),
        ),
        (
            json!({"name": "v", "configMap": {"name": "nope", "optional": true}}),
            None,
        ),
        (
            json!({"name": "v", "secret": {"secretName": "nope"}}),
            Some(r#"MountVolume.SetUp failed for volume "v" : secret "nope" not found"#),
        ),
        (
            json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "zz", "path": "zz"}]}}),
            Some(
                r#"MountVolume.SetUp failed for volume "v" : configmap references non-existent config key: zz"#,
            ),
        ),
        (
            json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "../a"}]}}),
            Some(
                r#"MountVolume.SetUp failed for volume "v" : invalid path: must not contain '..': ../a"#,
            ),
        ),
        (
            json!({"name": "v", "nfs": {"server": "s", "path": "/"}}),
            Some(r#"MountVolume.SetUp failed for volume "v" : unsupported volume source: nfs"#),
        ),
        (
            json!({"name": "v", "emptyDir": {"medium": "HugePages"}}),
            Some(
                r#"MountVolume.SetUp failed for volume "v" : unsupported volume source: emptyDir medium "HugePages""#,
            ),
        ),
    ];
    for (index, (volume, expected)) in cases.into_iter().enumerate() {
        let mut pod = pod(json!([volume, {"name": "ok", "emptyDir": {}}]), json!([]));
        pod.metadata.uid = Some(format!("uid-{index}"));
        let outcome = node.volumes.prepare(&pod).await;
        match expected {
            Some(message) => {
                let error = outcome.unwrap_err();
                assert_eq!(error.to_string(), message, "case {index}");
                assert_eq!(error.reason(), "FailedMount");
            }
            None => {
                let prepared = outcome.unwrap();
                let path = &prepared.get("v").unwrap().path;
                assert!(path.join("..data").exists(), "an empty volume");
            }
        }
        // The other volume is set up all the same.
        let ok = node
            .volumes
            .volume_dir(&format!("uid-{index}"), EMPTY_DIR, "ok");
        assert!(ok.is_dir(), "case {index}");
    }
    // A missing object that appears: the next prepare sets it up.
    let mut pod = pod(
        json!([{"name": "v", "configMap": {"name": "late"}}]),
        json!([]),
    );
    pod.metadata.uid = Some("uid-late".into());
    assert!(node.volumes.prepare(&pod).await.is_err());
    node.objects
        .put("ConfigMap", "shop", config_map("late", json!({"k": "v"})));
    let prepared = node.volumes.prepare(&pod).await.unwrap();
    assert_eq!(read(&prepared.get("v").unwrap().path.join("k")), "v");
}

#[tokio::test]
async fn downward_api_and_projected_volumes_follow_the_pod() {
    if !root() {
        return;
    }
    let node = Node::new();
    node.objects.put(
        "ConfigMap",
        "shop",
        config_map("cfg", json!({"a": "1", "same": "from the map"})),
    );
    node.objects.put(
        "Secret",
        "shop",
        secret("creds", json!({"same": "ZnJvbSB0aGUgc2VjcmV0"})),
    );
    let mut pod = pod(
        json!([
            {"name": "info", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}},
            ]}},
            {"name": "all", "projected": {"defaultMode": 0o600, "sources": [
                {"configMap": {"name": "cfg"}},
                {"secret": {"name": "creds"}},
                {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                {"configMap": {"name": "absent", "optional": true}},
            ]}},
        ]),
        json!([{"name": "c", "resources": {"limits": {"memory": "64Mi"}}}]),
    );
    let prepared = node.volumes.prepare(&pod).await.unwrap();
    let info = &prepared.get("info").unwrap().path;
    assert!(info.ends_with("volumes/kubernetes.io~downward-api/info"));
    assert!(node.mount_line(info).is_some(), "on a tmpfs");
    assert_eq!(read(&info.join("labels")), "app=\"web\"");
    assert_eq!(read(&info.join("name")), "web-0");
    assert_eq!(read(&info.join("mem")), "64");
    let all = &prepared.get("all").unwrap().path;
    assert!(all.ends_with("volumes/kubernetes.io~projected/all"));
    assert_eq!(read(&all.join("a")), "1");
    assert_eq!(
        read(&all.join("same")),
        "from the secret",
        "later sources win"
    );
    assert_eq!(read(&all.join("ns")), "shop");
    assert_eq!(
        std::fs::metadata(all.join("ns"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // New labels: the next update writes them.
    pod.metadata
        .labels
        .get_or_insert_default()
        .insert("tier".into(), "front".into());
    node.volumes.update(&pod).await.unwrap();
    assert_eq!(read(&info.join("labels")), "app=\"web\"\ntier=\"front\"");

    // Tokens are not served here yet: a clear error.
    let mut token = pod.clone();
    token.metadata.uid = Some("uid-2".into());
    token.spec.as_mut().unwrap().volumes = Some(
        serde_json::from_value(json!([{"name": "token", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token"}}]}}]))
        .unwrap(),
    );
    let error = node.volumes.prepare(&token).await.unwrap_err().to_string();
    assert!(
        error.contains("unsupported volume source: serviceAccountToken"),
        "{error}"
    );
}

#[tokio::test]
async fn claims_mount_their_bound_host_path() {
    if !root() {
        return;
    }
    let node = Node::new();
    let data = tempfile::tempdir().unwrap();
    node.objects.put(
        "PersistentVolumeClaim",
        "shop",
        json!({"metadata": {"name": "data", "namespace": "shop", "uid": "claim-1"},
            "spec": {"volumeName": "pv-1"}, "status": {"phase": "Bound"}}),
    );
    node.objects.put(
        "PersistentVolume",
        "",
        json!({"metadata": {"name": "pv-1"}, "spec": {
            "claimRef": {"name": "data", "namespace": "shop", "uid": "claim-1"},
            "hostPath": {"path": data.path()}}}),
    );
    let pod = pod(
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data", "readOnly": true}},
               {"name": "pending", "persistentVolumeClaim": {"claimName": "none"}}]),
        json!([{"name": "c", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]),
    );
    let error = node.volumes.prepare(&pod).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "MountVolume.SetUp failed for volume \"pending\" : error processing PVC shop/none: failed to fetch PVC from API server: persistentvolumeclaims \"none\" not found"
    );
    let mut pod = pod;
    pod.spec.as_mut().unwrap().volumes.as_mut().unwrap().pop();
    let prepared = node.volumes.prepare(&pod).await.unwrap();
    let claim = prepared.get("data").unwrap();
    assert_eq!(claim.path, data.path());
    assert!(claim.read_only);
    let container = &pod.spec.as_ref().unwrap().containers[0];
    let mounts = node
        .volumes
        .mounts(&prepared, &pod, container, 0, &[], &[])
        .unwrap();
    assert_eq!(mounts[0].host_path, data.path());
    assert!(mounts[0].read_only, "the claim is read-only");
}

#[tokio::test]
async fn container_mounts_resolve_sub_paths_safely() {
    if !root() {
        return;
    }
    let node = Node::new();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("keep"), "host data").unwrap();
    node.objects.put(
        "ConfigMap",
        "shop",
        config_map("cfg", json!({"app.conf": "x=1"})),
    );
    let pod = pod(
        json!([
            {"name": "scratch", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "host", "hostPath": {"path": host.path(), "type": "Directory"}},
        ]),
        json!([{"name": "c", "volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "scratch", "mountPath": "/logs", "subPathExpr": "logs/$(POD_NAME)"},
            {"name": "cfg", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
            {"name": "host", "mountPath": "/host", "subPath": "keep", "readOnly": true,
             "mountPropagation": "HostToContainer"},
        ]}]),
    );
    let prepared = node.volumes.prepare(&pod).await.unwrap();
    let container = &pod.spec.as_ref().unwrap().containers[0];
    let env = [("POD_NAME".to_owned(), "web-0".to_owned())];
    let ips = ["10.42.0.9".to_owned()];
    let mounts = node
        .volumes
        .mounts(&prepared, &pod, container, 2, &env, &ips)
        .unwrap();
    let by_path: HashMap<&str, &crate::runtime::Mount> = mounts
        .iter()
        .map(|m| (m.container_path.as_str(), m))
        .collect();
    let scratch = &prepared.get("scratch").unwrap().path;
    assert_eq!(by_path["/scratch"].host_path, *scratch);
    assert!(!by_path["/scratch"].read_only);

    // A subPath made in the volume, bound under volume-subpaths.
    let pod_dir = std::fs::canonicalize(node.dir.path().join("pods/uid-1")).unwrap();
    let logs = &by_path["/logs"];
    assert_eq!(logs.host_path, pod_dir.join("volume-subpaths/scratch/c/1"));
    assert!(scratch.join("logs/web-0").is_dir());
    std::fs::write(scratch.join("logs/web-0/out"), "seen").unwrap();
    assert_eq!(
        read(&logs.host_path.join("out")),
        "seen",
        "bound to the subPath"
    );

    // A ConfigMap key: a file, read-only whatever the mount says.
    let conf = &by_path["/etc/app.conf"];
    assert!(conf.read_only);
    assert_eq!(read(&conf.host_path), "x=1");
    assert!(node.mount_line(&conf.host_path).is_some());

    let keep = &by_path["/host"];
    assert!(keep.read_only);
    assert_eq!(keep.propagation, Propagation::HostToContainer);
    assert_eq!(read(&keep.host_path), "host data");

    // The files every container gets.
    let hosts = &by_path["/etc/hosts"];
    assert!(read(&hosts.host_path).ends_with("10.42.0.9\tweb-0\n"));
    let log = &by_path["/dev/termination-log"];
    assert!(log.host_path.ends_with("containers/c/00000002"));
    assert_eq!(
        std::fs::metadata(&log.host_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o666
    );
    std::fs::write(&log.host_path, "bye").unwrap();
    assert_eq!(
        node.volumes.termination_message("uid-1", "c", 2).as_deref(),
        Some("bye")
    );

    // Mounts again (a restart): the same binds, not stacked.
    let before = node.mounts().len();
    node.volumes
        .mounts(&prepared, &pod, container, 3, &env, &ips)
        .unwrap();
    assert_eq!(node.mounts().len(), before);

    // Gone: every mount off, the pod's directory removed, the node's own
    // files untouched.
    node.volumes.remove("uid-1").await.unwrap();
    assert!(node.mounts().is_empty());
    assert!(!node.dir.path().join("pods/uid-1").exists());
    assert_eq!(read(&host.path().join("keep")), "host data");
    // Again: nothing to do.
    node.volumes.remove("uid-1").await.unwrap();
}

#[tokio::test]
async fn sub_paths_may_not_escape_their_volume() {
    if !root() {
        return;
    }
    let node = Node::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "node file").unwrap();
    let pod = pod(json!([{"name": "scratch", "emptyDir": {}}]), json!([]));
    let prepared = node.volumes.prepare(&pod).await.unwrap();
    let scratch = &prepared.get("scratch").unwrap().path;
    // What a container could have put there.
    std::os::unix::fs::symlink(outside.path(), scratch.join("escape")).unwrap();
    let cases = [
        (
            json!({"name": "scratch", "mountPath": "/x", "subPath": "escape/secret"}),
            "failed to prepare subPath for volumeMount \"scratch\" of container \"c\"",
        ),
        (
            json!({"name": "scratch", "mountPath": "/x", "subPath": "escape/new"}),
            "failed to create subPath directory for volumeMount \"scratch\" of container \"c\"",
        ),
        (
            json!({"name": "scratch", "mountPath": "/x", "subPath": "../../etc"}),
            "unable to provision SubPath `../../etc`: must not contain '..'",
        ),
        (
            json!({"name": "scratch", "mountPath": "/x", "subPath": "/etc"}),
            "error SubPath `/etc` must not be an absolute path",
        ),
        (
            json!({"name": "scratch", "mountPath": "/x", "subPathExpr": "$(UNSET)"}),
            "missing value for UNSET",
        ),
        (
            json!({"name": "other", "mountPath": "/x"}),
            "cannot find volume \"other\" to mount into container \"c\"",
        ),
    ];
    for (volume_mount, expected) in cases {
        let container: k8s_openapi::api::core::v1::Container =
            serde_json::from_value(json!({"name": "c", "volumeMounts": [volume_mount]})).unwrap();
        let error = node
            .volumes
            .mounts(&prepared, &pod, &container, 0, &[], &[])
            .unwrap_err();
        assert_eq!(error.to_string(), expected, "{volume_mount}");
        assert_eq!(error.reason(), "CreateContainerConfigError");
    }
    assert!(!outside.path().join("new").exists());
    assert!(node.mounts().is_empty(), "nothing bound");
}

#[tokio::test]
async fn sweeps_remove_only_pods_no_longer_there() {
    if !root() {
        return;
    }
    let node = Node::new();
    for uid in ["live", "gone"] {
        let mut pod = pod(
            json!([{"name": "fast", "emptyDir": {"medium": "Memory"}}]),
            json!([]),
        );
        pod.metadata.uid = Some(uid.into());
        node.volumes.prepare(&pod).await.unwrap();
    }
    assert_eq!(node.mounts().len(), 2);
    let live = HashSet::from(["live".to_owned()]);
    assert_eq!(node.volumes.sweep(&live).await, vec!["gone".to_owned()]);
    assert_eq!(node.mounts().len(), 1);
    assert!(node.dir.path().join("pods/live").is_dir());
    assert!(!node.dir.path().join("pods/gone").exists());
    assert!(node.volumes.sweep(&live).await.is_empty());
}

#[tokio::test]
async fn a_tmpfs_lost_in_a_restart_is_set_up_again() {
    if !root() {
        return;
    }
    let node = Node::new();
    node.objects
        .put("Secret", "shop", secret("creds", json!({"k": "dg=="})));
    let pod = pod(
        json!([{"name": "creds", "secret": {"secretName": "creds"}}]),
        json!([]),
    );
    let prepared = node.volumes.prepare(&pod).await.unwrap();
    let path = prepared.get("creds").unwrap().path.clone();
    // What a reboot leaves: the marker, an empty directory.
    system::unmount_all(&node.canonical()).unwrap();
    assert!(!path.join("k").exists());
    node.volumes.prepare(&pod).await.unwrap();
    assert_eq!(read(&path.join("k")), "v");
    assert!(node.mount_line(&path).is_some());
}

#[tokio::test]
async fn hollow_nodes_mount_nothing() {
    let node = Node::with(Volumes::hollow);
    node.objects
        .put("Secret", "shop", secret("creds", json!({"k": "dg=="})));
    node.objects
        .put("ConfigMap", "shop", config_map("cfg", json!({"a": "1"})));
    let pod = pod(
        json!([
            {"name": "fast", "emptyDir": {"medium": "Memory"}},
            {"name": "creds", "secret": {"secretName": "creds"}},
            {"name": "cfg", "configMap": {"name": "cfg"}},
        ]),
        json!([{"name": "c", "volumeMounts": [{"name": "cfg", "mountPath": "/a", "subPath": "a"}]}]),
    );
    let prepared = node.volumes.prepare(&pod).await.unwrap();
    assert!(node.mounts().is_empty());
    assert!(
        !prepared.get("creds").unwrap().path.join("k").exists(),
        "no secrets on disk"
    );
    assert_eq!(read(&prepared.get("cfg").unwrap().path.join("a")), "1");
    let container = &pod.spec.as_ref().unwrap().containers[0];
    let mounts = node
        .volumes
        .mounts(&prepared, &pod, container, 0, &[], &[])
        .unwrap();
    assert_eq!(read(&mounts[0].host_path), "1");
    assert!(node.mounts().is_empty());
    // A missing secret still shows.
    let mut missing = pod.clone();
    missing.metadata.uid = Some("uid-2".into());
    missing.spec.as_mut().unwrap().volumes = Some(
        serde_json::from_value(json!([{"name": "s", "secret": {"secretName": "none"}}])).unwrap(),
    );
    assert!(node.volumes.prepare(&missing).await.is_err());
    node.volumes.remove("uid-1").await.unwrap();
    assert!(!node.dir.path().join("pods/uid-1").exists());
}

#[tokio::test]
async fn names_that_are_not_one_path_component_are_refused() {
    let node = Node::new();
    for uid in ["..", "a/b", ""] {
        let mut bad = pod(json!([{"name": "v", "emptyDir": {}}]), json!([]));
        bad.metadata.uid = Some(uid.into());
        let error = node.volumes.prepare(&bad).await.unwrap_err();
        assert!(
            matches!(error, VolumeError::InvalidName(_)),
            "{uid}: {error}"
        );
        assert!(matches!(
            node.volumes.remove(uid).await,
            Err(VolumeError::InvalidName(_))
        ));
    }
    let bad = pod(json!([{"name": "../v", "emptyDir": {}}]), json!([]));
    assert!(matches!(
        node.volumes.prepare(&bad).await,
        Err(VolumeError::InvalidName(_))
    ));
    assert!(node.dir.path().exists());
    assert!(std::fs::read_dir(node.dir.path().join("pods")).map_or(true, |d| d.count() == 0));
}
