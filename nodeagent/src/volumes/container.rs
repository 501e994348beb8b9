//! A container's mounts: its volumeMounts, resolved against the pod's
//! prepared volumes, and the files every Kubernetes container gets.
//!
//! ```text
//!  volumeMounts[i] {name, mountPath, readOnly, subPath | subPathExpr, mountPropagation}
//!     ─► volume path (or PODDIR/volume-subpaths/NAME/CONTAINER/i, bound to VOLUME/subPath)
//!  /etc/hosts                ◄─ PODDIR/etc-hosts (unless a volumeMount is there)
//!  terminationMessagePath    ◄─ PODDIR/containers/CONTAINER/ATTEMPT (empty, 0666)
//! ```

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::{PreparedVolume, PreparedVolumes, VolumeError, subpath};
use crate::runtime::process;
use crate::runtime::{Mount, Propagation};

/// Where the files of the pod are and how mounts are made.
pub(crate) struct Context<'a> {
    pub(crate) pod_dir: &'a Path,
    pub(crate) cluster_domain: &'a str,
    pub(crate) cluster_dns: &'a [String],
    /// No bind mounts: subPaths are given as their resolved paths.
    pub(crate) hollow: bool,
}

const ETC_HOSTS: &str = "/etc/hosts";
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The most nameservers a resolver reads (glibc's MAXNS).
const MAX_NAMESERVERS: usize = 3;
/// The most search domains the kubelet writes.
const MAX_SEARCHES: usize = 32;
/// The API's default `terminationMessagePath`.
const TERMINATION_LOG: &str = "/dev/termination-log";
/// What the kubelet reads of a termination message.
const MAX_TERMINATION_MESSAGE: u64 = 4096;

/// See [`super::Volumes::mounts`].
pub(crate) fn mounts(
    context: &Context<'_>,
    prepared: &PreparedVolumes,
    pod: &Pod,
    container: &Container,
    attempt: u32,
    env: &[(String, String)],
    pod_ips: &[String],
) -> Result<Vec<Mount>, VolumeError> {
    let privileged = container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        == Some(true);
    let mut mounts = Vec::new();
    for (index, volume_mount) in container.volume_mounts.iter().flatten().enumerate() {
        let volume = prepared
            .get(&volume_mount.name)
            .ok_or_else(|| VolumeError::NoVolume {
                volume: volume_mount.name.clone(),
                container: container.name.clone(),
            })?;
        let propagation = propagation(volume_mount.mount_propagation.as_deref(), privileged)?;
        let sub_path = match volume_mount.sub_path_expr.as_deref() {
            Some(expression) if !expression.is_empty() => expand_strict(expression, env)?,
            _ => volume_mount.sub_path.clone().unwrap_or_default(),
        };
        let host_path = if sub_path.is_empty() {
            volume.path.clone()
        } else {
            subpath::validate(&sub_path).map_err(VolumeError::SubPath)?;
            let target = context
                .pod_dir
                .join("volume-subpaths")
                .join(&volume_mount.name)
                .join(&container.name)
                .join(index.to_string());
            sub_path_source(context, volume, &sub_path, &target).map_err(|(create, detail)| {
                tracing::warn!(
                    container = %container.name, volume_mount = %volume_mount.name, %detail,
                    "cannot mount the subPath"
                );
                let (mount, container) = (volume_mount.name.clone(), container.name.clone());
                if create {
                    VolumeError::SubPathCreate { mount, container }
                } else {
                    VolumeError::SubPathPrepare { mount, container }
                }
            })?
        };
        mounts.push(Mount {
            host_path,
            container_path: volume_mount.mount_path.clone(),
            read_only: volume_mount.read_only == Some(true) || volume.read_only,
            propagation,
        });
    }
    if !mounts.iter().any(|m| m.container_path == ETC_HOSTS) {
        std::fs::create_dir_all(context.pod_dir).map_err(file_error("create", context.pod_dir))?;
        let path = context.pod_dir.join("etc-hosts");
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let contents = if host_network {
            let node =
                std::fs::read(ETC_HOSTS).map_err(file_error("read", Path::new(ETC_HOSTS)))?;
            node_hosts_file(&node, pod)
        } else {
            hosts_file(pod, pod_ips, context.cluster_domain)
        };
        write_in_place(&path, &contents, 0o644).map_err(file_error("write", &path))?;
        mounts.push(Mount {
            host_path: path,
            container_path: ETC_HOSTS.to_owned(),
            read_only: false,
            propagation: Propagation::Private,
        });
    }
    if !mounts.iter().any(|m| m.container_path == RESOLV_CONF) {
        let path = context.pod_dir.join("resolv.conf");
        let node = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
        let contents = resolv_conf(pod, context.cluster_dns, context.cluster_domain, &node);
        write_in_place(&path, contents.as_bytes(), 0o644).map_err(file_error("write", &path))?;
        mounts.push(Mount {
            host_path: path,
            container_path: RESOLV_CONF.to_owned(),
            read_only: false,
            propagation: Propagation::Private,
        });
    }
    let message_path = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| TERMINATION_LOG.to_owned());
    if !message_path.is_empty() {
        let path = termination_file(context.pod_dir, &container.name, attempt);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(file_error("create", parent))?;
        }
        write_in_place(&path, b"", 0o666).map_err(file_error("create", &path))?;
        mounts.push(Mount {
            host_path: path,
            container_path: message_path,
            read_only: false,
            propagation: Propagation::Private,
        });
    }
    Ok(mounts)
}

fn file_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let path = path.to_owned();
    move |source| VolumeError::ContainerFile {
        action,
        path,
        source,
    }
}

/// Writes `contents` into `path` without replacing the file: containers
/// bind-mount it, and see the new contents.
fn write_in_place(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    std::fs::write(path, contents)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// A volumeMount's `mountPropagation`.
fn propagation(mode: Option<&str>, privileged: bool) -> Result<Propagation, VolumeError> {
    match mode {
        None | Some("None") => Ok(Propagation::Private),
        Some("HostToContainer") => Ok(Propagation::HostToContainer),
        Some("Bidirectional") if privileged => Ok(Propagation::Bidirectional),
        Some("Bidirectional") => Err(VolumeError::Bidirectional),
        Some(other) => Err(VolumeError::Propagation(other.to_owned())),
    }
}

/// A `subPathExpr` expanded with the container's environment (each
/// variable expanded with those before it).
///
/// Errors: the variables it uses that are unset or empty.
fn expand_strict(expression: &str, env: &[(String, String)]) -> Result<String, VolumeError> {
    let mut values: HashMap<String, String> = HashMap::new();
    for (name, value) in env {
        let expanded = process::expand(value, &values);
        values.insert(name.clone(), expanded);
    }
    let mut missing = BTreeSet::new();
    let mut rest = expression;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            if values.get(name).is_none_or(String::is_empty) {
                missing.insert(name.to_owned());
            }
            rest = &inner[end + 1..];
        } else {
            rest = after;
        }
    }
    if !missing.is_empty() {
        return Err(VolumeError::SubPathExpr(missing.into_iter().collect()));
    }
    Ok(process::expand(expression, &values))
}

/// Where the runtime takes a subPath from; `Err((made, detail))`, `made`
/// when making its directories failed.
fn sub_path_source(
    context: &Context<'_>,
    volume: &PreparedVolume,
    sub_path: &str,
    target: &Path,
) -> Result<PathBuf, (bool, String)> {
    if std::fs::metadata(volume.path.join(sub_path)).is_err() {
        // Made now, with the volume's mode: made later by the runtime, it
        // would be root's 0755.
        let mode = std::fs::metadata(&volume.path)
            .map(|m| m.permissions().mode() & 0o7777)
            .map_err(|e| (true, format!("stat {}: {e}", volume.path.display())))?;
        subpath::make_dirs(&volume.path, sub_path, mode).map_err(|d| (true, d))?;
    }
    let (file, resolved) = subpath::open(&volume.path, sub_path).map_err(|d| (false, d))?;
    if context.hollow {
        return Ok(resolved);
    }
    subpath::bind(&file, target).map_err(|d| (false, d))
}

/// The pod's host name and, with a `subdomain`, its domain, as the
/// kubelet makes them (the name cut to 63 characters).
fn host_name(pod: &Pod, cluster_domain: &str) -> (String, Option<String>) {
    let spec = pod.spec.as_ref();
    let mut name = spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    if name.len() > 63 {
        name.truncate(63);
        name = name.trim_end_matches(['-', '.']).to_owned();
    }
    let domain = spec
        .and_then(|s| s.subdomain.clone())
        .filter(|s| !s.is_empty())
        .map(|sub| {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            format!("{sub}.{namespace}.svc.{cluster_domain}")
        });
    (name, domain)
}

/// `# Entries added by HostAliases.` and the pod's `hostAliases`.
fn host_aliases(pod: &Pod) -> String {
    let aliases = pod.spec.as_ref().and_then(|s| s.host_aliases.as_ref());
    let Some(aliases) = aliases.filter(|a| !a.is_empty()) else {
        return String::new();
    };
    let mut out = String::from("\n# Entries added by HostAliases.\n");
    for alias in aliases {
        for name in alias.hostnames.iter().flatten() {
            out.push_str(&format!("{}\t{name}\n", alias.ip));
        }
    }
    out
}

/// The pod's /etc/hosts, as the kubelet writes it: localhost, the pod's
/// addresses with its name (the loopback address while it has none), its
/// host aliases.
pub(crate) fn hosts_file(pod: &Pod, pod_ips: &[String], cluster_domain: &str) -> Vec<u8> {
    let (name, domain) = host_name(pod, cluster_domain);
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    let loopback = ["127.0.0.1".to_owned()];
    let ips = if pod_ips.is_empty() {
        &loopback[..]
    } else {
        pod_ips
    };
    for ip in ips {
        match &domain {
            Some(domain) => out.push_str(&format!("{ip}\t{name}.{domain}\t{name}\n")),
            None => out.push_str(&format!("{ip}\t{name}\n")),
        }
    }
    out.push_str(&host_aliases(pod));
    out.into_bytes()
}

/// The pod's /etc/resolv.conf, as the kubelet writes it for its
/// `dnsPolicy`: `ClusterFirst` (the default; `Default` for host-network
/// pods, or when there is no cluster DNS) gives the cluster DNS, the
/// search path `NS.svc.DOMAIN svc.DOMAIN DOMAIN` then the node's, and
/// `ndots:5`; `Default` the node's; `None` nothing; then `dnsConfig` adds
/// nameservers and searches and overrides options by name.
pub(crate) fn resolv_conf(pod: &Pod, cluster_dns: &[String], domain: &str, node: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    } && !cluster_dns.is_empty();
    let field = |key: &str| -> Vec<String> {
        node.lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .filter(|rest| rest.starts_with([' ', '\t']))
            .flat_map(|rest| rest.split_whitespace().map(str::to_owned))
            .collect()
    };
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        match (policy, cluster) {
            ("None", _) => (Vec::new(), Vec::new(), Vec::new()),
            (_, true) => {
                let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
                let mut searches = vec![
                    format!("{namespace}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.to_owned(),
                ];
                searches.extend(field("search"));
                (cluster_dns.to_vec(), searches, vec!["ndots:5".to_owned()])
            }
            _ => (field("nameserver"), field("search"), field("options")),
        };
    if let Some(config) = &spec.dns_config {
        servers.extend(config.nameservers.iter().flatten().cloned());
        searches.extend(config.searches.iter().flatten().cloned());
        for option in config.options.iter().flatten() {
            let Some(name) = option.name.as_deref() else {
                continue;
            };
            options.retain(|o| o.split(':').next() != Some(name));
            options.push(match &option.value {
                Some(value) => format!("{name}:{value}"),
                None => name.to_owned(),
            });
        }
    }
    let mut seen = BTreeSet::new();
    searches.retain(|s| seen.insert(s.clone()));
    servers.truncate(MAX_NAMESERVERS);
    searches.truncate(MAX_SEARCHES);
    let mut out = String::new();
    for server in &servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// A host-network pod's /etc/hosts: the node's, and the pod's aliases.
fn node_hosts_file(node: &[u8], pod: &Pod) -> Vec<u8> {
    let mut out = b"# Kubernetes-managed hosts file (host network).\n".to_vec();
    out.extend_from_slice(node);
    out.extend_from_slice(host_aliases(pod).as_bytes());
    out
}

/// `PODDIR/containers/NAME/ATTEMPT` (eight hex digits).
fn termination_file(pod_dir: &Path, container: &str, attempt: u32) -> PathBuf {
    pod_dir
        .join("containers")
        .join(container)
        .join(format!("{attempt:08x}"))
}

/// The last 4096 bytes of a termination message file; `None` if there is
/// no file or it is empty.
pub(crate) fn termination_message(pod_dir: &Path, container: &str, attempt: u32) -> Option<String> {
    let mut file = std::fs::File::open(termination_file(pod_dir, container, attempt)).ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(
        length.saturating_sub(MAX_TERMINATION_MESSAGE),
    ))
    .ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_TERMINATION_MESSAGE)
        .read_to_end(&mut bytes)
        .ok()?;
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u1"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn hosts_files_follow_the_kubelet() {
        let header = "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n";
        let cases = [
            (json!({"containers": []}), vec![], "127.0.0.1\tweb-0\n"),
            (
                json!({"containers": [], "hostname": "db"}),
                vec!["10.42.0.7".to_owned()],
                "10.42.0.7\tdb\n",
            ),
            (
                json!({"containers": [], "subdomain": "web"}),
                vec!["10.42.0.7".to_owned(), "fd00::7".to_owned()],
                "10.42.0.7\tweb-0.web.shop.svc.cluster.local\tweb-0\nfd00::7\tweb-0.web.shop.svc.cluster.local\tweb-0\n",
            ),
            (
                json!({"containers": [], "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo", "bar"]}]}),
                vec!["10.42.0.7".to_owned()],
                "10.42.0.7\tweb-0\n\n# Entries added by HostAliases.\n10.1.2.3\tfoo\n10.1.2.3\tbar\n",
            ),
        ];
        for (spec, ips, tail) in cases {
            let text =
                String::from_utf8(hosts_file(&pod(spec.clone()), &ips, "cluster.local")).unwrap();
            assert_eq!(text, format!("{header}{tail}"), "{spec}");
        }
        let node = node_hosts_file(b"127.0.0.1 node\n", &pod(json!({"containers": []})));
        assert_eq!(
            String::from_utf8(node).unwrap(),
            "# Kubernetes-managed hosts file (host network).\n127.0.0.1 node\n"
        );
    }

    #[test]
    fn resolv_conf_follows_the_dns_policy() {
        let node = "nameserver 192.0.2.53\nsearch corp.example\noptions timeout:2\n";
        let dns = ["10.43.0.10".to_owned()];
        let with = |spec: serde_json::Value| {
            let mut p = pod(spec);
            p.metadata.namespace = Some("shop".into());
            resolv_conf(&p, &dns, "cluster.local", node)
        };
        assert_eq!(
            with(json!({"containers": []})),
            "nameserver 10.43.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:5\n"
        );
        assert_eq!(
            with(json!({"dnsPolicy": "Default", "containers": []})),
            "nameserver 192.0.2.53\nsearch corp.example\noptions timeout:2\n"
        );
        assert_eq!(
            with(json!({"hostNetwork": true, "containers": []})),
            "nameserver 192.0.2.53\nsearch corp.example\noptions timeout:2\n",
            "ClusterFirst on the host network is Default"
        );
        assert!(
            with(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet", "containers": []}))
                .starts_with("nameserver 10.43.0.10\n")
        );
        assert_eq!(
            with(json!({"dnsPolicy": "None", "containers": [], "dnsConfig": {
                "nameservers": ["1.2.3.4"], "searches": ["a.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}})),
            "nameserver 1.2.3.4\nsearch a.example\noptions ndots:2 edns0\n"
        );
        assert!(
            with(json!({"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}))
                .ends_with("options ndots:1\n"),
            "dnsConfig overrides an option by name"
        );
        let p = pod(json!({"containers": []}));
        assert_eq!(
            resolv_conf(&p, &[], "cluster.local", node),
            "nameserver 192.0.2.53\nsearch corp.example\noptions timeout:2\n",
            "no cluster DNS: the node's"
        );
    }

    #[test]
    fn long_host_names_are_cut_as_the_kubelet_cuts_them() {
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(5));
        let (name, _) = host_name(
            &pod(json!({"containers": [], "hostname": long})),
            "cluster.local",
        );
        assert_eq!(name, "a".repeat(62));
    }

    #[test]
    fn sub_path_expressions_need_every_variable() {
        let env: Vec<(String, String)> = [
            ("POD", "web-0"),
            ("NS", "shop"),
            ("DIR", "$(NS)/$(POD)"),
            ("EMPTY", ""),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("logs/$(POD)", Ok("logs/web-0")),
            ("$(DIR)", Ok("shop/web-0")),
            ("cost$$(POD)", Ok("cost$(POD)")),
            (
                "$(NONE)/$(EMPTY)/$(POD)",
                Err("missing value for EMPTY, NONE"),
            ),
            ("plain", Ok("plain")),
        ];
        for (expression, expected) in cases {
            let got = expand_strict(expression, &env).map_err(|e| e.to_string());
            assert_eq!(
                got,
                expected.map(str::to_owned).map_err(str::to_owned),
                "{expression}"
            );
        }
    }

    #[test]
    fn propagation_follows_the_kubelet() {
        assert_eq!(propagation(None, false).unwrap(), Propagation::Private);
        assert_eq!(
            propagation(Some("None"), false).unwrap(),
            Propagation::Private
        );
        assert_eq!(
            propagation(Some("HostToContainer"), false).unwrap(),
            Propagation::HostToContainer
        );
        assert_eq!(
            propagation(Some("Bidirectional"), true).unwrap(),
            Propagation::Bidirectional
        );
        assert_eq!(
            propagation(Some("Bidirectional"), false)
                .unwrap_err()
                .to_string(),
            "Bidirectional mount propagation is available only to privileged containers"
        );
        assert_eq!(
            propagation(Some("Sideways"), false)
                .unwrap_err()
                .to_string(),
            "invalid MountPropagation mode: \"Sideways\""
        );
    }

    #[test]
    fn termination_messages_are_read_from_their_end() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(termination_message(dir.path(), "c", 0), None);
        let file = termination_file(dir.path(), "c", 3);
        assert!(file.ends_with("containers/c/00000003"));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "").unwrap();
        assert_eq!(termination_message(dir.path(), "c", 3), None);
        let long = format!("{}{}", "x".repeat(100), "y".repeat(4096));
        std::fs::write(&file, &long).unwrap();
        assert_eq!(
            termination_message(dir.path(), "c", 3),
            Some("y".repeat(4096))
        );
    }
}
