//! Image references as Kubernetes and Docker read them: `busybox` is
//! `docker.io/library/busybox:latest`.

/// A normalized image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// `docker.io`, `registry.local:5000`, …
    pub registry: String,
    /// `library/busybox`.
    pub repository: String,
    /// `1.36`; `latest` when neither tag nor digest is given.
    pub tag: Option<String>,
    /// `sha256:…`, when pinned.
    pub digest: Option<String>,
}

/// Why a reference does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an image reference (like busybox:1.36 or registry:5000/app@sha256:…)")]
pub struct BadReference(pub String);

impl Reference {
    pub fn parse(text: &str) -> Result<Self, BadReference> {
        let bad = || BadReference(text.to_owned());
        if text.is_empty()
            || text
                .chars()
                .any(|c| c.is_whitespace() || c.is_ascii_uppercase())
        {
            return Err(bad());
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) if digest.starts_with("sha256:") && digest.len() == 71 => {
                (rest, Some(digest.to_owned()))
            }
            Some(_) => return Err(bad()),
            None => (text, None),
        };
        // A tag follows the last ':' after the last '/'.
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_owned())),
            None => (rest, None),
        };
        if name.is_empty() || tag.as_deref() == Some("") {
            return Err(bad());
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => ("docker.io".to_owned(), name.to_owned()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            _ => tag,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_as_docker_does() {
        let r = |s: &str| Reference::parse(s).unwrap().to_string();
        assert_eq!(r("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(r("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(r("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(
            r("registry.local:5000/app:v1"),
            "registry.local:5000/app:v1"
        );
        assert_eq!(r("localhost/app"), "localhost/app:latest");
        let pinned = format!("nginx@sha256:{}", "a".repeat(64));
        assert_eq!(
            r(&pinned),
            format!("docker.io/library/nginx@sha256:{}", "a".repeat(64))
        );
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("busybox:").is_err());
        assert!(Reference::parse("nginx@sha256:short").is_err());
    }
}
