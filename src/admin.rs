//! The operator's commands on a running or stopped member: `snapshot`,
//! `member`, and `status --data-dir` (the cluster's health in plain words).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use keelson_raftstore::admin;
use keelson_raftstore::tls::MemberTls;

/// Which member to ask: its client URL, or its data directory (where a
/// running member notes its URLs).
#[derive(Debug, Args)]
pub(crate) struct MemberTarget {
    /// A member's client URL (http://HOST:2379).
    #[arg(long, conflicts_with = "data_dir")]
    endpoints: Option<String>,
    /// The data directory of the member on this machine.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl MemberTarget {
    pub(crate) fn is_given(&self) -> bool {
        self.endpoints.is_some() || self.data_dir.is_some()
    }

    /// The client URL to ask, and the member's certificates for it when
    /// it is `https://` (from `--data-dir`).
    fn connection(&self) -> anyhow::Result<(String, Option<MemberTls>)> {
        let endpoint = self.endpoint()?;
        let tls = match &self.data_dir {
            Some(dir) => MemberTls::read(dir)
                .with_context(|| format!("the member's certificates in {}", dir.display()))?,
            None => None,
        };
        if endpoint.starts_with("https://") && tls.is_none() {
            bail!(
                "{endpoint} serves TLS: give --data-dir of a member on this machine for its certificates"
            );
        }
        Ok((endpoint, tls))
    }

    /// The client URL to ask.
    fn endpoint(&self) -> anyhow::Result<String> {
        if let Some(endpoint) = &self.endpoints {
            return Ok(endpoint.split(',').next().unwrap_or_default().to_owned());
        }
        let Some(dir) = &self.data_dir else {
            return Ok("http://127.0.0.1:2379".into());
        };
        let path = dir.join(crate::server::MEMBER_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (has a member run with --data-dir {}?)",
                path.display(),
                dir.display()
            )
        })?;
        let member: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        member["clientURL"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{} has no clientURL", path.display()))
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCommand {
    /// Save a consistent snapshot of the store, from any member.
    Save {
        /// Where to write it (written beside it first, then renamed).
        file: PathBuf,
        #[command(flatten)]
        target: MemberTarget,
    },
    /// Check a snapshot's integrity (its SHA-256) and say what it holds.
    Check { file: PathBuf },
    /// Rebuild a member's data directory from a snapshot: started there,
    /// the member is a one-member cluster with every object of the
    /// snapshot; the others then join it anew.
    Restore {
        file: PathBuf,
        /// The new member's data directory (must hold no store yet).
        #[arg(long)]
        data_dir: PathBuf,
        /// The cluster's join token: its secret unseals the Secrets and the
        /// CA in the snapshot.
        #[arg(long, env = "KEELSON_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A file holding the join token.
        #[arg(long, env = "KEELSON_TOKEN_FILE", conflicts_with = "token")]
        token_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum MemberCommand {
    /// The control plane's members.
    List {
        #[command(flatten)]
        target: MemberTarget,
    },
    /// Remove a member (one whose machine or disk is lost) by name or ID;
    /// a replacement then joins with `keelson server --join`.
    Remove {
        name: String,
        #[command(flatten)]
        target: MemberTarget,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Issue a running member's own certificates again (the API serving
    /// certificate and the admin kubeconfig); it serves the new ones at
    /// once, without a restart.
    Rotate {
        /// The member's data directory.
        #[arg(long, default_value = "/var/lib/keelson/server")]
        data_dir: PathBuf,
    },
}

pub(crate) async fn certs(command: CertsCommand) -> anyhow::Result<()> {
    let CertsCommand::Rotate { data_dir } = command;
    let path = data_dir.join("admin.kubeconfig");
    if !path.exists() && data_dir.join("kubeconfig").exists() {
        bail!(
            "{} is a node agent's: an agent renews its client certificate itself when it starts within {} days of its expiry (restart it; its pods keep running)",
            data_dir.display(),
            crate::agent::RENEW_WITHIN_DAYS
        );
    }
    let config = keelson_control::client::Kubeconfig::read(&path)
        .with_context(|| format!("the member's credentials in {}", path.display()))?;
    let client =
        keelson_control::client::Client::https(keelson_control::client::Https::new(&config)?);
    let answer = client
        .request(
            hyper::Method::POST,
            "/keelson/v1/certificates/rotate",
            "",
            Vec::new(),
        )
        .await
        .with_context(|| format!("the member at {} did not rotate", config.server))?;
    let expiry: serde_json::Value = serde_json::from_slice(&answer)?;
    println!(
        "Rotated. The member at {} now serves a certificate valid until {}; the admin kubeconfig in {} until {}.",
        config.server,
        expiry["apiserver"].as_str().unwrap_or("?"),
        data_dir.display(),
        expiry["admin"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// The join token, given or read from a file.
pub(crate) fn read_token(token: Option<&String>, file: Option<&PathBuf>) -> anyhow::Result<String> {
    match (token, file) {
        (Some(token), _) => Ok(token.trim().to_owned()),
        (None, Some(file)) => Ok(std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the token file {}", file.display()))?
            .trim()
            .to_owned()),
        (None, None) => bail!(
            "the cluster's join token is needed: --token TOKEN or --token-file FILE (a member kept it in DATA_DIR/token)"
        ),
    }
}

pub(crate) async fn snapshot(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Save { file, target } => {
            let (endpoint, tls) = target.connection()?;
            let info = admin::save_snapshot(&endpoint, tls.as_ref(), &file).await?;
            println!(
                "Snapshot saved at {} from {endpoint}: {} bytes, revision {}, sha256 {}",
                file.display(),
                info.bytes,
                info.revision,
                info.sha256
            );
        }
        SnapshotCommand::Check { file } => {
            let info = admin::check_snapshot(&file)?;
            println!(
                "{}: intact, {} bytes, revision {}, sha256 {}",
                file.display(),
                info.bytes,
                info.revision,
                info.sha256
            );
        }
        SnapshotCommand::Restore {
            file,
            data_dir,
            token: given,
            token_file,
        } => {
            let token = read_token(given.as_ref(), token_file.as_ref())?;
            let Some((_, secret)) = token.split_once("::keelson:") else {
                bail!("the token is not a join token (K10<CA hash>::keelson:<secret>)");
            };
            let restored = admin::restore_snapshot(&file, &data_dir)?;
            restore_ca(&data_dir, secret)?;
            let cluster = serde_json::json!({
                "clusterToken": secret,
                "initialCluster": [],
                "joined": false,
            });
            crate::server::write_private(
                &data_dir.join(crate::server::CLUSTER_FILE),
                &format!("{cluster:#}\n"),
            )?;
            println!(
                "Restored {} keys at revision {} into {}.\nStart a member there (keelson server --data-dir {} …): it is a cluster of one. The other members join it anew, each with an empty data directory (keelson server --join …).",
                restored.keys,
                restored.revision,
                data_dir.display(),
                data_dir.display()
            );
        }
    }
    Ok(())
}

/// Puts the cluster CA of restored data into `DATA_DIR/pki`, unsealed with
/// the token's secret: the restored member's store certificates come from
/// it, and it is the CA the other members and the agents already trust.
fn restore_ca(data_dir: &Path, secret: &str) -> anyhow::Result<()> {
    use keelson_raftstore::store::{MvccStore, StoreConfig};
    let store = MvccStore::open(&admin::store_dir(data_dir), StoreConfig::default())?;
    let read = |key: &[u8]| {
        store
            .get(key, store.revision())
            .map(|kv| kv.map(|kv| kv.value))
    };
    let (Some(wrapped), Some(sealed)) = (
        read(keelson_control::secrets::DATA_KEY)?,
        read(keelson_control::server::CA_KEY)?,
    ) else {
        let ca = keelson_control::pki::ClusterCa::generate()?;
        println!(
            "The snapshot holds no cluster CA (no API server ever ran on it): made a new one."
        );
        return crate::server::write_ca(data_dir, &ca.cert_pem, &ca.key_pem);
    };
    let sealer = keelson_control::secrets::Sealer::from_wrapped(&wrapped, secret)
        .context("the token does not open this snapshot's keys: is it this cluster's token?")?;
    let ca = keelson_control::server::open_ca(&sealer, &sealed)
        .context("the snapshot's cluster CA does not open")?;
    crate::server::write_ca(data_dir, &ca.cert_pem, &ca.key_pem)
}

pub(crate) async fn member(command: MemberCommand) -> anyhow::Result<()> {
    match command {
        MemberCommand::List { target } => {
            let (endpoint, tls) = target.connection()?;
            let health = admin::cluster_health(&endpoint, tls.as_ref()).await?;
            for line in member_table(&health) {
                println!("{line}");
            }
        }
        MemberCommand::Remove { name, target } => {
            let (endpoint, tls) = target.connection()?;
            let health = admin::cluster_health(&endpoint, tls.as_ref()).await?;
            let Some(found) = health
                .members
                .iter()
                .find(|m| m.member.name == name || format!("{:x}", m.member.id) == name)
            else {
                bail!("no member is named {name:?}; `keelson member list` shows the members");
            };
            admin::remove_member(&endpoint, tls.as_ref(), found.member.id).await?;
            println!(
                "Member {name} ({:x}) removed. A replacement joins with an empty data directory: keelson server --join https://MEMBER:6443 --token-file TOKEN …",
                found.member.id
            );
        }
    }
    Ok(())
}

/// The members, one line each.
fn member_table(health: &admin::ClusterHealth) -> Vec<String> {
    let leader = health
        .members
        .iter()
        .find_map(|m| m.status.as_ref().ok().map(|s| s.leader))
        .unwrap_or(0);
    let mut lines = vec![format!(
        "{:<16} {:<12} {:<10} {:<10} {:<12} {}",
        "ID", "NAME", "STATE", "ROLE", "RAFT INDEX", "CLIENT URL"
    )];
    for m in &health.members {
        let (state, index) = match &m.status {
            Ok(status) => ("started", status.raft_index.to_string()),
            Err(_) if m.member.client_ur_ls.is_empty() => ("unstarted", "-".to_owned()),
            Err(_) => ("unreachable", "-".to_owned()),
        };
        let role = if m.member.is_learner {
            "learner"
        } else if m.member.id == leader {
            "leader"
        } else {
            "voter"
        };
        lines.push(format!(
            "{:<16x} {:<12} {:<10} {:<10} {:<12} {}",
            m.member.id,
            if m.member.name.is_empty() {
                "-"
            } else {
                &m.member.name
            },
            state,
            role,
            index,
            m.member.client_ur_ls.join(",")
        ));
    }
    lines
}

/// What the numbers mean for the cluster, in plain words.
fn explain(voters: usize, answering: usize, learners: usize) -> Vec<String> {
    let quorum = voters / 2 + 1;
    let tolerated = voters.saturating_sub(quorum);
    let mut lines = Vec::new();
    if answering < quorum {
        lines.push(format!(
            "QUORUM LOST: {answering} of {voters} voting members answer and {quorum} are needed. The store takes no writes and the Kubernetes API does not answer until {} more are back.",
            quorum - answering
        ));
        lines.push(
            "If the others are gone for good, recover from a survivor: stop it, run `keelson server --cluster-reset` with its usual flags, start it again, and have new members join it (docs/operations.md, \"Quorum loss\").".to_owned(),
        );
    } else if voters == 1 {
        lines.push(
            "One voting member: no failure is tolerated. Join two more (keelson server --join …) for a highly available control plane.".to_owned(),
        );
    } else {
        lines.push(format!(
            "Quorum: {quorum} of {voters} voting members; {answering} answer. It tolerates {tolerated} member(s) down, {} more now.",
            answering - quorum
        ));
    }
    if voters > 1 && voters.is_multiple_of(2) {
        lines.push(format!(
            "{voters} voting members is an even number: a quorum is {quorum}, so it tolerates {tolerated} failure(s), no more than {} members would, and has one more member that can fail. Join another member, or remove one (keelson member remove NAME).",
            voters - 1
        ));
    }
    if learners > 0 {
        lines.push(format!(
            "{learners} learner(s) catching up: each becomes a voting member once in sync with the leader."
        ));
    }
    lines
}

/// The certificates in a member's data directory and when each expires.
fn certificate_lines(data_dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let now = chrono::Utc::now();
    let files = [
        ("cluster CA", data_dir.join("pki/ca.crt")),
        ("API serving", data_dir.join("pki/apiserver.crt")),
    ];
    let mut found: Vec<(&str, Option<chrono::DateTime<chrono::Utc>>)> = files
        .iter()
        .filter_map(|(what, path)| {
            let pem = std::fs::read_to_string(path).ok()?;
            Some((*what, keelson_control::pki::expiry(&pem)))
        })
        .collect();
    for (what, file) in [
        ("admin client", "admin.kubeconfig"),
        ("agent client", "kubeconfig"),
    ] {
        if let Ok(config) = keelson_control::client::Kubeconfig::read(&data_dir.join(file)) {
            found.push((what, keelson_control::pki::expiry(&config.cert_pem)));
        }
    }
    for (what, expiry) in found {
        let line = match expiry {
            Some(at) => {
                let days = (at - now).num_days();
                let warning = if days < 30 {
                    ": renew it now (keelson certs rotate)"
                } else {
                    ""
                };
                format!(
                    "  {what:<14} expires {} (in {days} days){warning}",
                    at.format("%Y-%m-%d")
                )
            }
            None => format!("  {what:<14} unreadable"),
        };
        lines.push(line);
    }
    lines
}

/// `keelson status --data-dir|--endpoints`: the control plane's members,
/// its quorum in plain words, and the certificates' expiry. Fails (exit 7)
/// when quorum is lost.
pub(crate) async fn status(target: &MemberTarget) -> anyhow::Result<()> {
    let (endpoint, tls) = target.connection()?;
    let health = admin::cluster_health(&endpoint, tls.as_ref()).await?;
    println!("Control plane (as {endpoint} sees it):");
    for line in member_table(&health) {
        println!("  {line}");
    }
    let voters = health.members.iter().filter(|m| !m.member.is_learner);
    let answering = voters
        .clone()
        .filter(|m| m.status.as_ref().is_ok_and(|s| s.leader != 0))
        .count();
    let voters = voters.count();
    let learners = health.members.len() - voters;
    println!();
    for line in explain(voters, answering, learners) {
        println!("{line}");
    }
    if let Some(dir) = &target.data_dir {
        let certificates = certificate_lines(dir);
        if !certificates.is_empty() {
            println!("\nCertificates ({}):", dir.display());
            for line in certificates {
                println!("{line}");
            }
        }
    }
    if answering < voters / 2 + 1 {
        std::process::exit(7);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quorum_is_explained() {
        let healthy = explain(3, 3, 0).join("\n");
        assert!(
            healthy.contains("tolerates 1 member(s) down, 1 more now"),
            "{healthy}"
        );
        let even = explain(2, 2, 0).join("\n");
        assert!(
            even.contains("even number") && even.contains("tolerates 0 failure(s)"),
            "{even}"
        );
        let four = explain(4, 4, 0).join("\n");
        assert!(four.contains("no more than 3 members would"), "{four}");
        let lost = explain(3, 1, 0).join("\n");
        assert!(
            lost.starts_with("QUORUM LOST: 1 of 3") && lost.contains("--cluster-reset"),
            "{lost}"
        );
        let alone = explain(1, 1, 1).join("\n");
        assert!(
            alone.contains("no failure is tolerated") && alone.contains("1 learner(s)"),
            "{alone}"
        );
    }
}
