//! Local clusters: a whole HA Keelson cluster on one machine, every member
//! and every node in a network namespace of its own (what `keelson up`
//! makes, and what chaos scenarios run against).
//!
//! ```text
//!  $KEELSON_HOME/PROFILE/            (default /var/lib/keelson/profiles)
//!    profile.json                    what the profile is: index, members, nodes
//!    servers/server-N/               a member's data (store, pki, admin.kubeconfig, token)
//!    nodes/NAME/                     a node's agent data (images, pods) and its kubeconfig
//!    pki/                            the admin's credentials, for the user's kubeconfig
//!    admin.kubeconfig                the admin, through the endpoint
//!    logs/COMPONENT.log, run/COMPONENT.pid
//! ```
//!
//! Start order: network → members → endpoint → (API answers) → credentials
//! → agents → (nodes Ready). Stop is the reverse, and removes the pods'
//! containers and the network as a host shutdown would; the data stays, so
//! `start` brings the same cluster back.

pub(crate) mod command;
pub mod image;
pub mod kubeconfig;
pub mod net;
pub mod prereq;
pub mod process;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use keelson_control::client::{Client, ClientError, Https, Kubeconfig, KubeconfigError};
use serde::{Deserialize, Serialize};

pub use net::Layout;
pub use process::Processes;

/// The port the endpoint serves the API on (minikube's).
pub const API_PORT: u16 = 8443;
const MEMBER_API_PORT: u16 = 6443;
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
const METRICS_PORT: u16 = 2381;
/// The agents' HTTPS endpoint (the kubelet's port).
const AGENT_PORT: u16 = 10250;
/// The component name of the endpoint process.
pub const ENDPOINT: &str = "endpoint";

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("this machine is missing: {0}")]
    Prerequisites(String),
    #[error("profile {profile:?}: {reason}")]
    Profile { profile: String, reason: String },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("the API: {0}")]
    Api(#[from] ClientError),
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> LocalError {
    move |source| LocalError::Io { what, source }
}

/// Where profiles live: `$KEELSON_HOME`, else `/var/lib/keelson/profiles`.
pub fn home() -> PathBuf {
    std::env::var_os("KEELSON_HOME")
        .filter(|h| !h.is_empty())
        .map_or_else(|| PathBuf::from("/var/lib/keelson/profiles"), PathBuf::from)
}

/// A node of a profile: its name and its slot (its address).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub name: String,
    pub slot: u8,
}

/// What a profile is, as `profile.json` keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    pub index: u8,
    pub servers: u8,
    pub nodes: Vec<NodeEntry>,
    /// The Kubernetes version the API reports (filled once it answered).
    #[serde(default)]
    pub version: String,
    /// Extra flags for every member and every agent.
    #[serde(default)]
    pub server_flags: Vec<String>,
    #[serde(default)]
    pub agent_flags: Vec<String>,
}

/// How to make a new profile.
#[derive(Clone, Debug)]
pub struct Options {
    pub servers: u8,
    pub nodes: u8,
    pub server_flags: Vec<String>,
    pub agent_flags: Vec<String>,
}

/// What one component is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentStatus {
    pub name: String,
    pub kind: Kind,
    pub address: String,
    pub running: bool,
    /// Nodes: whether the API says the Node is Ready (None: not known).
    pub ready: Option<bool>,
    /// The process's resident memory, while it runs.
    pub rss_bytes: Option<u64>,
    /// Where its Prometheus metrics are (the HTTPS ones need a client
    /// certificate of the cluster CA: the profile's `pki/admin.crt`).
    pub metrics: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Member,
    Endpoint,
    Node,
}

/// Whether `name` can name a profile: a DNS label short enough for the
/// names derived from it.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Every profile under [`home`], by name.
pub fn profiles() -> Vec<Profile> {
    let mut found: Vec<Profile> = std::fs::read_dir(home())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("profile.json")).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// A profile on disk, and the binary that runs its processes.
#[derive(Clone, Debug)]
pub struct Local {
    pub profile: Profile,
    pub dir: PathBuf,
    binary: PathBuf,
}

impl Local {
    /// Opens an existing profile.
    pub fn open(name: &str, binary: &Path) -> Result<Self, LocalError> {
        let dir = home().join(name);
        let path = dir.join("profile.json");
        let bytes = std::fs::read(&path).map_err(|_| LocalError::Profile {
            profile: name.into(),
            reason: format!(
                "not found (no {}); `keelson profile list` shows those there are",
                path.display()
            ),
        })?;
        let profile = serde_json::from_slice(&bytes).map_err(|e| LocalError::Profile {
            profile: name.into(),
            reason: format!("{} is not a profile: {e}", path.display()),
        })?;
        Ok(Self {
            profile,
            dir,
            binary: binary.to_owned(),
        })
    }

    /// Makes a new profile (nothing started yet), on the first free index.
    pub async fn create(name: &str, options: &Options, binary: &Path) -> Result<Self, LocalError> {
        let refuse = |reason: String| LocalError::Profile {
            profile: name.into(),
            reason,
        };
        if !valid_name(name) {
            return Err(refuse(
                "a profile name is lowercase letters, digits and '-', at most 40".into(),
            ));
        }
        if !(1..=7).contains(&options.servers) {
            return Err(refuse("--servers: 1 to 7 members".into()));
        }
        if !(1..=200).contains(&options.nodes) {
            return Err(refuse("--nodes: 1 to 200".into()));
        }
        let taken: Vec<u8> = profiles().iter().map(|p| p.index).collect();
        let mut index = None;
        for candidate in 1..=net::MAX_PROFILES {
            let layout = Layout { index: candidate };
            if !taken.contains(&candidate)
                && net::is_free(&layout).await?
                && net::claim(&layout).await?
            {
                index = Some(candidate);
                break;
            }
        }
        let index = index.ok_or_else(|| {
            refuse(format!(
                "no free address ranges: {} profiles at most, and none over ranges this machine routes",
                net::MAX_PROFILES
            ))
        })?;
        let profile = Profile {
            name: name.into(),
            index,
            servers: options.servers,
            nodes: (1..=options.nodes)
                .map(|slot| NodeEntry {
                    name: node_name(name, slot),
                    slot,
                })
                .collect(),
            version: String::new(),
            server_flags: options.server_flags.clone(),
            agent_flags: options.agent_flags.clone(),
        };
        let local = Self {
            profile,
            dir: home().join(name),
            binary: binary.to_owned(),
        };
        local.save()?;
        Ok(local)
    }

    fn save(&self) -> Result<(), LocalError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(io(format!("cannot create {}", self.dir.display())))?;
        let path = self.dir.join("profile.json");
        let text = serde_json::to_vec_pretty(&self.profile).unwrap_or_default();
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(io(format!("cannot write {}", path.display())))
    }

    /// The `keelson` binary the profile's processes run.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn layout(&self) -> Layout {
        Layout {
            index: self.profile.index,
        }
    }

    pub fn processes(&self) -> Processes {
        Processes::new(&self.dir)
    }

    /// `https://HOST_IP:8443`: where kubectl and the agents reach the API.
    pub fn server_url(&self) -> String {
        format!("https://{}:{API_PORT}", self.layout().host_ip())
    }

    pub fn member_name(i: u8) -> String {
        format!("server-{i}")
    }

    fn member_dir(&self, i: u8) -> PathBuf {
        self.dir.join("servers").join(Self::member_name(i))
    }

    /// A node's agent data directory.
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.join("nodes").join(name)
    }

    /// Member `i`'s network namespace.
    pub fn member_netns(&self, i: u8) -> String {
        self.member_port(i).netns
    }

    /// Member `i`'s etcd client URL.
    pub fn client_url(&self, i: u8) -> String {
        format!("http://{}:{CLIENT_PORT}", self.layout().member_ip(i))
    }

    /// Member `i`'s peer URL.
    pub fn peer_url(&self, i: u8) -> String {
        format!("http://{}:{PEER_PORT}", self.layout().member_ip(i))
    }

    /// Member `i`'s store (what a lost disk loses).
    pub fn member_store(&self, i: u8) -> PathBuf {
        self.member_dir(i).join("store")
    }

    /// Node `name`'s network namespace and address.
    pub fn node_netns(&self, name: &str) -> Result<(String, std::net::Ipv4Addr), LocalError> {
        let port = self.node_port(&self.node(name)?);
        Ok((port.netns, port.ip))
    }

    /// Starts member `i` again (after it was killed): with its data it
    /// rejoins as it was; with none, as a new member (`existing` cluster)
    /// the others have already added.
    pub fn restart_member(&self, i: u8, joining: bool) -> Result<(), LocalError> {
        self.start_member(i, joining)
    }

    fn member_port(&self, i: u8) -> net::Port {
        net::Port {
            netns: format!("keelson-{}-server-{i}", self.profile.name),
            short: format!("s{i}"),
            ip: self.layout().member_ip(i),
        }
    }

    fn node_port(&self, node: &NodeEntry) -> net::Port {
        net::Port {
            netns: format!("keelson-{}-node-{}", self.profile.name, node.slot),
            short: format!("n{}", node.slot),
            ip: self.layout().node_ip(node.slot),
        }
    }

    fn node(&self, name: &str) -> Result<NodeEntry, LocalError> {
        self.profile
            .nodes
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .ok_or_else(|| LocalError::Profile {
                profile: self.profile.name.clone(),
                reason: format!(
                    "has no node {name:?} (it has {})",
                    self.profile
                        .nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    /// The admin's kubeconfig through the endpoint.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// Starts whatever of the profile is not running, and waits for the API
    /// and every node to be Ready.
    pub async fn start(&mut self, progress: &mut dyn FnMut(&str)) -> Result<(), LocalError> {
        let layout = self.layout();
        progress(&format!(
            "Creating network {} ({}, API endpoint {})",
            layout.bridge(),
            layout.subnet(),
            self.server_url()
        ));
        net::create_bridge(&layout).await?;
        for i in 1..=self.profile.servers {
            net::attach(&layout, &self.member_port(i)).await?;
        }
        let names: Vec<String> = (1..=self.profile.servers).map(Self::member_name).collect();
        progress(&format!(
            "Starting {} control-plane members: {}",
            self.profile.servers,
            names.join(", ")
        ));
        for i in 1..=self.profile.servers {
            self.start_member(i, false)?;
        }
        self.start_endpoint()?;
        let started = Instant::now();
        let client = self.wait_for_api(Duration::from_secs(90)).await?;
        progress(&format!(
            "The API answers through {} ({:.1} s)",
            self.server_url(),
            started.elapsed().as_secs_f64()
        ));
        if let Ok(version) = client
            .request(hyper::Method::GET, "/version", "", Vec::new())
            .await
            .map_err(LocalError::from)
            .and_then(|bytes| {
                serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| {
                    LocalError::Profile {
                        profile: self.profile.name.clone(),
                        reason: format!("/version: {e}"),
                    }
                })
            })
            && let Some(version) = version["gitVersion"].as_str()
        {
            self.profile.version = version.split('+').next().unwrap_or(version).to_owned();
            self.save()?;
        }
        let nodes: Vec<NodeEntry> = self.profile.nodes.clone();
        progress(&format!(
            "Starting {} node(s): {}",
            nodes.len(),
            nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for node in &nodes {
            self.start_node_with(&client, node).await?;
        }
        self.wait_nodes_ready(&client, &nodes, Duration::from_secs(120), progress)
            .await?;
        Ok(())
    }

    fn spawn(
        &self,
        name: &str,
        netns: Option<&str>,
        args: Vec<OsString>,
    ) -> Result<(), LocalError> {
        let processes = self.processes();
        if processes.pid(name).is_some() {
            return Ok(());
        }
        processes.spawn(name, netns, &self.binary, &args)?;
        Ok(())
    }

    fn start_member(&self, i: u8, joining: bool) -> Result<(), LocalError> {
        let layout = self.layout();
        let ip = layout.member_ip(i);
        let peers: Vec<String> = (1..=self.profile.servers)
            .map(|j| {
                format!(
                    "{}=http://{}:{PEER_PORT}",
                    Self::member_name(j),
                    layout.member_ip(j)
                )
            })
            .collect();
        let mut args: Vec<OsString> = vec![
            "server".into(),
            "--name".into(),
            Self::member_name(i).into(),
        ];
        args.push("--data-dir".into());
        args.push(self.member_dir(i).into());
        for (flag, value) in [
            ("--listen-client-urls", format!("http://{ip}:{CLIENT_PORT}")),
            (
                "--advertise-client-urls",
                format!("http://{ip}:{CLIENT_PORT}"),
            ),
            ("--listen-peer-urls", format!("http://{ip}:{PEER_PORT}")),
            (
                "--initial-advertise-peer-urls",
                format!("http://{ip}:{PEER_PORT}"),
            ),
            (
                "--listen-metrics-urls",
                format!("http://{ip}:{METRICS_PORT}"),
            ),
            ("--initial-cluster", peers.join(",")),
            (
                "--initial-cluster-state",
                if joining { "existing" } else { "new" }.into(),
            ),
            (
                "--initial-cluster-token",
                format!("keelson-{}", self.profile.name),
            ),
            (
                "--listen-api-url",
                format!("https://{ip}:{MEMBER_API_PORT}"),
            ),
            ("--tls-san", layout.host_ip().to_string()),
            ("--service-cluster-ip-range", layout.service_cidr()),
            ("--cluster-cidr", layout.cluster_cidr()),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        args.extend(self.profile.server_flags.iter().map(OsString::from));
        self.spawn(
            &Self::member_name(i),
            Some(&self.member_port(i).netns),
            args,
        )
    }

    fn start_endpoint(&self) -> Result<(), LocalError> {
        let layout = self.layout();
        let mut args: Vec<OsString> = vec![
            "endpoint".into(),
            "--profile-dir".into(),
            self.dir.clone().into(),
        ];
        args.push("--listen".into());
        args.push(format!("{}:{API_PORT}", layout.host_ip()).into());
        for i in 1..=self.profile.servers {
            let ip = layout.member_ip(i);
            args.push("--member".into());
            args.push(format!("{ip}:{MEMBER_API_PORT}={ip}:{METRICS_PORT}").into());
        }
        self.spawn(ENDPOINT, None, args)
    }

    /// Waits until a member has written the admin's credentials and the
    /// API answers through the endpoint; then writes the profile's admin
    /// kubeconfig and a client of it.
    async fn wait_for_api(&self, within: Duration) -> Result<Client, LocalError> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(client) = self.try_admin_client().await {
                return Ok(client);
            }
            if Instant::now() >= deadline {
                return Err(LocalError::Timeout {
                    what: format!(
                        "the API at {} (see {})",
                        self.server_url(),
                        self.processes().log(&Self::member_name(1)).display()
                    ),
                    after: within,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn try_admin_client(&self) -> Option<Client> {
        let member = (1..=self.profile.servers)
            .map(|i| self.member_dir(i).join("admin.kubeconfig"))
            .find_map(|path| Kubeconfig::read(&path).ok())?;
        let admin = Kubeconfig {
            server: self.server_url(),
            ..member
        };
        let client = Client::https(Https::new(&admin).ok()?);
        client
            .request(hyper::Method::GET, "/readyz", "", Vec::new())
            .await
            .ok()?;
        self.write_admin(&admin).ok()?;
        Some(client)
    }

    fn write_admin(&self, admin: &Kubeconfig) -> Result<(), LocalError> {
        let pki = self.dir.join("pki");
        std::fs::create_dir_all(&pki).map_err(io(format!("cannot create {}", pki.display())))?;
        for (file, text) in [
            ("ca.crt", &admin.ca_pem),
            ("admin.crt", &admin.cert_pem),
            ("admin.key", &admin.key_pem),
        ] {
            write_private(&pki.join(file), text)?;
        }
        let issued = keelson_control::pki::Issued {
            cert_pem: admin.cert_pem.clone(),
            key_pem: admin.key_pem.clone(),
        };
        let text = keelson_control::pki::kubeconfig(
            &self.profile.name,
            &admin.server,
            &admin.ca_pem,
            "kubernetes-admin",
            &issued,
        );
        write_private(&self.admin_kubeconfig(), &text)
    }

    /// Adds this profile's context to the user's kubeconfig and makes it
    /// current; the kubeconfig's path.
    pub async fn configure_kubectl(&self) -> Result<PathBuf, LocalError> {
        let pki = self.dir.join("pki");
        kubeconfig::merge(
            &self.profile.name,
            &kubeconfig::Credentials {
                server: &self.server_url(),
                ca: &pki.join("ca.crt"),
                certificate: &pki.join("admin.crt"),
                key: &pki.join("admin.key"),
            },
        )
        .await?;
        Ok(kubeconfig::path())
    }

    /// A client of the API as the admin, once the profile has one.
    pub fn admin_client(&self) -> Result<Client, LocalError> {
        let config = Kubeconfig::read(&self.admin_kubeconfig())?;
        Ok(Client::https(Https::new(&config)?))
    }

    /// The node's kubeconfig: credentials for `system:node:NAME`, asked of
    /// the cluster with its join token the first time.
    async fn node_kubeconfig(
        &self,
        client: &Client,
        node: &NodeEntry,
    ) -> Result<PathBuf, LocalError> {
        let dir = self.node_dir(&node.name);
        let path = dir.join("kubeconfig");
        if path.exists() {
            return Ok(path);
        }
        std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let token = (1..=self.profile.servers)
            .find_map(|i| std::fs::read_to_string(self.member_dir(i).join("token")).ok())
            .map(|t| t.trim().to_owned())
            .ok_or_else(|| LocalError::Profile {
                profile: self.profile.name.clone(),
                reason: "no member has written the join token yet".into(),
            })?;
        let body = serde_json::json!({"token": token, "name": node.name, "role": "agent"});
        let answer = client
            .request(
                hyper::Method::POST,
                "/keelson/v1/join",
                "application/json",
                body.to_string().into_bytes(),
            )
            .await?;
        let answer: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|e| LocalError::Profile {
                profile: self.profile.name.clone(),
                reason: format!("the join answer is not JSON: {e}"),
            })?;
        let field = |name: &str| answer[name].as_str().unwrap_or_default().to_owned();
        let issued = keelson_control::pki::Issued {
            cert_pem: field("certificate"),
            key_pem: field("key"),
        };
        let text = keelson_control::pki::kubeconfig(
            &self.profile.name,
            &self.server_url(),
            &field("ca"),
            &field("user"),
            &issued,
        );
        write_private(&path, &text)?;
        Ok(path)
    }

    async fn start_node_with(&self, client: &Client, node: &NodeEntry) -> Result<(), LocalError> {
        let layout = self.layout();
        let port = self.node_port(node);
        net::attach(&layout, &port).await?;
        let kubeconfig = self.node_kubeconfig(client, node).await?;
        let mut args: Vec<OsString> = vec!["agent".into()];
        for (flag, value) in [
            ("--node-name", node.name.clone()),
            ("--node-ip", port.ip.to_string()),
            ("--cluster-cidr", layout.cluster_cidr()),
            ("--service-cidr", layout.service_cidr()),
            ("--cluster-dns", layout.cluster_dns()),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        args.push("--data-dir".into());
        args.push(self.node_dir(&node.name).into());
        args.push("--kubeconfig".into());
        args.push(kubeconfig.into());
        args.extend(self.profile.agent_flags.iter().map(OsString::from));
        self.spawn(&node.name, Some(&port.netns), args)
    }

    async fn wait_nodes_ready(
        &self,
        client: &Client,
        nodes: &[NodeEntry],
        within: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), LocalError> {
        let started = Instant::now();
        // Heartbeat times have whole seconds.
        let since = chrono::Utc::now() - chrono::Duration::seconds(1);
        let mut shown = usize::MAX;
        loop {
            // Ready, and its agent renewed the node's Lease since the wait
            // began (a restarted node's old Ready condition does not count).
            let params = keelson_control::client::ListParams::default();
            let leases = client.list::<Lease>(Some("kube-node-lease"), &params);
            let ready =
                match (client.list::<Node>(None, &params).await, leases.await) {
                    (Ok(listed), Ok(leases)) => nodes
                        .iter()
                        .filter(|entry| {
                            listed.items.iter().any(|n| {
                                n.metadata.name.as_ref() == Some(&entry.name) && is_ready(n)
                            }) && leases.items.iter().any(|l| {
                                l.metadata.name.as_ref() == Some(&entry.name)
                                    && l.spec
                                        .as_ref()
                                        .and_then(|s| s.renew_time.as_ref())
                                        .is_some_and(|t| t.0 >= since)
                            })
                        })
                        .count(),
                    _ => 0,
                };
            if ready != shown {
                progress(&format!(
                    "Nodes Ready: {ready}/{} ({:.1} s)",
                    nodes.len(),
                    started.elapsed().as_secs_f64()
                ));
                shown = ready;
            }
            if ready == nodes.len() {
                return Ok(());
            }
            if started.elapsed() >= within {
                return Err(LocalError::Timeout {
                    what: format!(
                        "{} node(s) to be Ready (see the logs under {})",
                        nodes.len() - ready,
                        self.dir.join("logs").display()
                    ),
                    after: within,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops node `node`'s agent and removes its pods and its network, as
    /// if the machine had been switched off.
    async fn stop_node_entry(&self, node: &NodeEntry) -> Result<(), LocalError> {
        let processes = self.processes();
        processes.stop(&node.name, Duration::from_secs(10)).await;
        let port = self.node_port(node);
        let dir = self.node_dir(&node.name);
        if std::path::Path::new("/run/netns")
            .join(&port.netns)
            .exists()
            && dir.exists()
        {
            let mut args: Vec<OsString> = vec![
                format!("--net=/run/netns/{}", port.netns).into(),
                self.binary.clone().into(),
                "agent".into(),
                "--cleanup".into(),
                "--data-dir".into(),
                dir.clone().into(),
                "--kubeconfig".into(),
                dir.join("kubeconfig").into(),
            ];
            args.extend(
                self.profile
                    .agent_flags
                    .iter()
                    .filter(|f| f.starts_with("--cni-bin-dir") || f.starts_with("--network"))
                    .map(OsString::from),
            );
            if let Err(error) = command::run("nsenter", &args).await {
                tracing::warn!(node = %node.name, %error, "removing the node's pods failed");
            }
        }
        Processes::kill_under(&dir).await;
        unmount_under(&dir).await;
        net::detach(&self.layout(), &port).await
    }

    /// Stops everything (agents first, then members and the endpoint) and
    /// removes the network; the data stays.
    pub async fn stop(&self, progress: &mut dyn FnMut(&str)) -> Result<(), LocalError> {
        // Everything is attempted even when a step fails: a half-stopped
        // profile is worse than one reported failure.
        let mut first_error = None;
        let mut keep = |result: Result<(), LocalError>| {
            if let Err(error) = result {
                tracing::warn!(%error, "stopping the profile");
                first_error.get_or_insert(error);
            }
        };
        for node in &self.profile.nodes {
            progress(&format!("Stopping node {}", node.name));
            keep(self.stop_node_entry(node).await);
        }
        let processes = self.processes();
        progress("Stopping the control plane");
        for i in 1..=self.profile.servers {
            processes
                .stop(&Self::member_name(i), Duration::from_secs(10))
                .await;
        }
        processes.stop(ENDPOINT, Duration::from_secs(5)).await;
        let layout = self.layout();
        for i in 1..=self.profile.servers {
            keep(net::detach(&layout, &self.member_port(i)).await);
        }
        keep(net::remove_bridge(&layout).await);
        first_error.map_or(Ok(()), Err)
    }

    /// Stops the profile and removes everything it made: processes,
    /// mounts, namespaces, interfaces, routes, data, and its kubeconfig
    /// context. Every step is attempted; the first failure is reported.
    pub async fn delete(self, progress: &mut dyn FnMut(&str)) -> Result<(), LocalError> {
        let stopped = self.stop(progress).await;
        progress("Removing what is left");
        Processes::kill_under(&self.dir).await;
        unmount_under(&self.dir).await;
        let mut first_error = stopped.err();
        for netns in net::namespaces_named(&format!("keelson-{}-", self.profile.name)).await {
            if let Err(error) = command::run("ip", &["netns", "del", &netns]).await {
                first_error.get_or_insert(error);
            }
        }
        if let Err(error) = net::remove_bridge(&self.layout()).await {
            first_error.get_or_insert(error);
        }
        // The pods' cgroup parent, in every hierarchy, once no agent on
        // this machine has pods in it (removing a cgroup that is not empty
        // fails, and is left alone).
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(hierarchy.path().join("keelson"));
        }
        if let Err(error) = kubeconfig::remove(&self.profile.name).await {
            tracing::warn!(%error, "could not remove the kubeconfig context");
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir)
            .map_err(io(format!("cannot remove {}", self.dir.display())))
        {
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Adds a node (named as minikube names them: PROFILE-m02, …) and
    /// starts it; its name.
    pub async fn add_node(&mut self, progress: &mut dyn FnMut(&str)) -> Result<String, LocalError> {
        let slot = (1..=200u8)
            .find(|s| !self.profile.nodes.iter().any(|n| n.slot == *s))
            .ok_or_else(|| LocalError::Profile {
                profile: self.profile.name.clone(),
                reason: "has 200 nodes, the most one profile holds".into(),
            })?;
        let mut name = node_name(&self.profile.name, slot);
        while self.profile.nodes.iter().any(|n| n.name == name) {
            name.push('x');
        }
        let node = NodeEntry {
            name: name.clone(),
            slot,
        };
        self.profile.nodes.push(node.clone());
        self.save()?;
        self.start_node(&name, progress).await?;
        Ok(name)
    }

    /// Starts a stopped node and waits for it to be Ready.
    pub async fn start_node(
        &self,
        name: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), LocalError> {
        let node = self.node(name)?;
        let client = self.admin_client()?;
        progress(&format!("Starting node {name}"));
        self.start_node_with(&client, &node).await?;
        self.wait_nodes_ready(&client, &[node], Duration::from_secs(120), progress)
            .await
    }

    /// Stops a node: its agent, its pods, its network (a machine switched
    /// off; the control plane notices as it would).
    pub async fn stop_node(&self, name: &str) -> Result<(), LocalError> {
        let node = self.node(name)?;
        self.stop_node_entry(&node).await
    }

    /// Stops a node, removes its Node object and its data, and forgets it.
    pub async fn delete_node(&mut self, name: &str) -> Result<(), LocalError> {
        let node = self.node(name)?;
        self.stop_node_entry(&node).await?;
        if let Ok(client) = self.admin_client() {
            match client.delete::<Node>(None, name, &Default::default()).await {
                Ok(()) => {}
                Err(error) if error.is_not_found() => {}
                Err(error) => return Err(error.into()),
            }
        }
        let dir = self.node_dir(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(io(format!("cannot remove {}", dir.display())))?;
        }
        self.profile.nodes.retain(|n| n.name != name);
        self.save()
    }

    /// Every component with what it is doing.
    pub async fn status(&self) -> Vec<ComponentStatus> {
        let processes = self.processes();
        let layout = self.layout();
        let mut all = Vec::new();
        for i in 1..=self.profile.servers {
            let name = Self::member_name(i);
            all.push(ComponentStatus {
                running: processes.pid(&name).is_some(),
                rss_bytes: processes.pid(&name).and_then(process::rss_bytes),
                name,
                kind: Kind::Member,
                address: format!("https://{}:{MEMBER_API_PORT}", layout.member_ip(i)),
                ready: None,
                metrics: vec![
                    format!("http://{}:{METRICS_PORT}/metrics", layout.member_ip(i)),
                    format!("https://{}:{MEMBER_API_PORT}/metrics", layout.member_ip(i)),
                ],
            });
        }
        all.push(ComponentStatus {
            name: ENDPOINT.into(),
            kind: Kind::Endpoint,
            address: self.server_url(),
            running: processes.pid(ENDPOINT).is_some(),
            ready: None,
            rss_bytes: processes.pid(ENDPOINT).and_then(process::rss_bytes),
            metrics: Vec::new(),
        });
        let nodes = match self.admin_client() {
            Ok(client) => {
                let params = keelson_control::client::ListParams::default();
                let listing = client.list::<Node>(None, &params);
                match tokio::time::timeout(Duration::from_secs(5), listing).await {
                    Ok(Ok(list)) => Some(list.items),
                    _ => None,
                }
            }
            Err(_) => None,
        };
        for node in &self.profile.nodes {
            all.push(ComponentStatus {
                name: node.name.clone(),
                kind: Kind::Node,
                address: layout.node_ip(node.slot).to_string(),
                running: processes.pid(&node.name).is_some(),
                rss_bytes: processes.pid(&node.name).and_then(process::rss_bytes),
                metrics: vec![
                    format!("https://{}:{AGENT_PORT}/metrics", layout.node_ip(node.slot)),
                    format!(
                        "https://{}:{AGENT_PORT}/metrics/resource",
                        layout.node_ip(node.slot)
                    ),
                ],
                ready: nodes.as_ref().map(|items| {
                    items
                        .iter()
                        .any(|n| n.metadata.name.as_ref() == Some(&node.name) && is_ready(n))
                }),
            });
        }
        all
    }

    /// The address the endpoint serves on, as a socket address.
    pub fn endpoint_address(&self) -> SocketAddr {
        SocketAddr::from((self.layout().host_ip(), API_PORT))
    }
}

/// minikube's node names: the profile's for the first, PROFILE-m02 after.
pub fn node_name(profile: &str, slot: u8) -> String {
    if slot == 1 {
        profile.to_owned()
    } else {
        format!("{profile}-m{slot:02}")
    }
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn write_private(path: &Path, text: &str) -> Result<(), LocalError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("cannot write {}", path.display())))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .map_err(io(format!("cannot write {}", path.display())))
}

async fn unmount_under(dir: &Path) {
    for mount in process::mounts_under(dir) {
        let _ = command::run("umount", &[OsString::from("-l"), mount.into()]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("kube-demo"));
        assert!(!valid_name("Kube"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
        assert_eq!(node_name("kube-demo", 1), "kube-demo");
        assert_eq!(node_name("kube-demo", 2), "kube-demo-m02");
        assert_eq!(node_name("kube-demo", 12), "kube-demo-m12");
    }
}
