//! The user's kubeconfig: a context per profile merged in (as minikube
//! does), through `kubectl config` itself so every other entry is kept as
//! it was.

use std::path::{Path, PathBuf};

use super::LocalError;
use super::command::run;

/// The kubeconfig `kubectl` reads: the first of `$KUBECONFIG`, else
/// `~/.kube/config`.
pub fn path() -> PathBuf {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .as_ref()
        .and_then(|paths| std::env::split_paths(paths).next())
        .filter(|p| !p.as_os_str().is_empty())
    {
        return first;
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".kube").join("config")
}

/// What a context is made of.
#[derive(Debug)]
pub struct Credentials<'a> {
    pub server: &'a str,
    pub ca: &'a Path,
    pub certificate: &'a Path,
    pub key: &'a Path,
}

/// Adds (or replaces) cluster, user and context `name`, and makes it the
/// current context.
pub async fn merge(name: &str, credentials: &Credentials<'_>) -> Result<(), LocalError> {
    let ca = format!("--certificate-authority={}", credentials.ca.display());
    let server = format!("--server={}", credentials.server);
    run(
        "kubectl",
        &[
            "config",
            "set-cluster",
            name,
            &server,
            &ca,
            "--embed-certs=true",
        ],
    )
    .await?;
    let certificate = format!("--client-certificate={}", credentials.certificate.display());
    let key = format!("--client-key={}", credentials.key.display());
    run(
        "kubectl",
        &[
            "config",
            "set-credentials",
            name,
            &certificate,
            &key,
            "--embed-certs=true",
        ],
    )
    .await?;
    let cluster = format!("--cluster={name}");
    let user = format!("--user={name}");
    run("kubectl", &["config", "set-context", name, &cluster, &user]).await?;
    run("kubectl", &["config", "use-context", name]).await?;
    Ok(())
}

/// The current context, if any.
pub async fn current() -> Option<String> {
    run("kubectl", &["config", "current-context"])
        .await
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

/// Removes context, cluster and user `name` (those present).
pub async fn remove(name: &str) -> Result<(), LocalError> {
    if current().await.as_deref() == Some(name) {
        run("kubectl", &["config", "unset", "current-context"]).await?;
    }
    let contexts = run("kubectl", &["config", "get-contexts", "-o", "name"])
        .await
        .unwrap_or_default();
    if contexts.lines().any(|c| c.trim() == name) {
        run("kubectl", &["config", "delete-context", name]).await?;
    }
    let clusters = run("kubectl", &["config", "get-clusters"])
        .await
        .unwrap_or_default();
    if clusters.lines().any(|c| c.trim() == name) {
        run("kubectl", &["config", "delete-cluster", name]).await?;
    }
    let users = run("kubectl", &["config", "get-users"])
        .await
        .unwrap_or_default();
    if users.lines().any(|u| u.trim() == name) {
        run("kubectl", &["config", "delete-user", name]).await?;
    }
    Ok(())
}
