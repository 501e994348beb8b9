//! What a container runs: Kubernetes' rules for combining the image's
//! entrypoint, cmd, env and working directory with the container's
//! command, args, env and workingDir, and its `$(VAR)` expansion.

use std::collections::HashMap;

use serde::Deserialize;

/// The parts of an image's config that decide how it runs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ImageConfig {
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

impl ImageConfig {
    /// The `config` object of an OCI image config blob.
    pub fn from_blob(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Blob {
            #[serde(default)]
            config: ImageConfig,
        }
        serde_json::from_slice::<Blob>(bytes).map(|b| b.config)
    }
}

/// Expands `$(NAME)` with `env`, as Kubernetes does: `$$` is a literal `$`,
/// and a reference to an undefined variable is left as written.
pub fn expand(text: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The environment: the image's, then the container's (later entries win,
/// each expanded with what comes before it), in order.
pub fn environment(image: &ImageConfig, container: &[(String, String)]) -> Vec<(String, String)> {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let mut set = |name: String, value: String, values: &mut HashMap<String, String>| {
        if !values.contains_key(&name) {
            order.push(name.clone());
        }
        values.insert(name, value);
    };
    for entry in image.env.iter().flatten() {
        let (name, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        set(name.to_owned(), value.to_owned(), &mut values);
    }
    for (name, value) in container {
        let expanded = expand(value, &values);
        set(name.clone(), expanded, &mut values);
    }
    order
        .into_iter()
        .map(|name| {
            let value = values.get(&name).cloned().unwrap_or_default();
            (name, value)
        })
        .collect()
}

/// The process arguments: a container's command replaces the image's
/// entrypoint (and drops its cmd); its args replace the cmd. Both are
/// expanded with the container's environment.
pub fn arguments(
    image: &ImageConfig,
    command: &[String],
    args: &[String],
    env: &[(String, String)],
) -> Vec<String> {
    let env: HashMap<String, String> = env.iter().cloned().collect();
    let expand_all = |v: &[String]| v.iter().map(|a| expand(a, &env)).collect::<Vec<_>>();
    let entrypoint = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    match (command.is_empty(), args.is_empty()) {
        (true, true) => [entrypoint, cmd].concat(),
        (true, false) => [entrypoint, expand_all(args)].concat(),
        (false, true) => expand_all(command),
        (false, false) => [expand_all(command), expand_all(args)].concat(),
    }
}

/// The working directory: the container's, else the image's, else `/`.
pub fn working_dir(image: &ImageConfig, container: Option<&str>) -> String {
    container
        .filter(|d| !d.is_empty())
        .or(image.working_dir.as_deref().filter(|d| !d.is_empty()))
        .unwrap_or("/")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn command_and_args_combine_with_the_image_as_kubernetes_says() {
        let image = ImageConfig {
            entrypoint: Some(strings(&["/entry"])),
            cmd: Some(strings(&["--default"])),
            ..ImageConfig::default()
        };
        let none: Vec<String> = Vec::new();
        assert_eq!(
            arguments(&image, &none, &none, &[]),
            ["/entry", "--default"]
        );
        assert_eq!(
            arguments(&image, &none, &strings(&["--mine"]), &[]),
            ["/entry", "--mine"]
        );
        assert_eq!(
            arguments(&image, &strings(&["/bin/sh"]), &none, &[]),
            ["/bin/sh"]
        );
        assert_eq!(
            arguments(
                &image,
                &strings(&["/bin/sh", "-c"]),
                &strings(&["echo $(GREETING) $$(HOME) $(MISSING)"]),
                &[("GREETING".into(), "hi".into())]
            ),
            ["/bin/sh", "-c", "echo hi $(HOME) $(MISSING)"]
        );
    }

    #[test]
    fn environments_layer_and_expand_in_order() {
        let image = ImageConfig {
            env: Some(strings(&["PATH=/usr/bin:/bin", "LANG=C"])),
            ..ImageConfig::default()
        };
        let env = environment(
            &image,
            &[
                ("LANG".into(), "C.UTF-8".into()),
                ("HOME_DIR".into(), "/home".into()),
                ("DATA".into(), "$(HOME_DIR)/data".into()),
            ],
        );
        assert_eq!(
            env,
            [
                ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
                ("LANG".to_owned(), "C.UTF-8".to_owned()),
                ("HOME_DIR".to_owned(), "/home".to_owned()),
                ("DATA".to_owned(), "/home/data".to_owned()),
            ]
        );
        assert_eq!(working_dir(&image, None), "/");
        assert_eq!(
            working_dir(
                &ImageConfig {
                    working_dir: Some("/srv".into()),
                    ..ImageConfig::default()
                },
                None
            ),
            "/srv"
        );
        assert_eq!(working_dir(&image, Some("/work")), "/work");
        let blob = br#"{"config":{"Cmd":["sh"],"Env":["PATH=/bin"],"WorkingDir":"/root"}}"#;
        assert_eq!(
            ImageConfig::from_blob(blob).unwrap().cmd,
            Some(strings(&["sh"]))
        );
    }
}

/// Who a container's process runs as, and what it may write, from its
/// (and its pod's) `securityContext`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: bool,
    pub supplemental_groups: Vec<i64>,
    pub read_only_root_filesystem: bool,
}

impl Identity {
    /// The container's settings, falling back to the pod's.
    pub fn of(
        pod: Option<&k8s_openapi::api::core::v1::PodSecurityContext>,
        container: Option<&k8s_openapi::api::core::v1::SecurityContext>,
    ) -> Self {
        Self {
            run_as_user: container
                .and_then(|c| c.run_as_user)
                .or_else(|| pod.and_then(|p| p.run_as_user)),
            run_as_group: container
                .and_then(|c| c.run_as_group)
                .or_else(|| pod.and_then(|p| p.run_as_group)),
            run_as_non_root: container
                .and_then(|c| c.run_as_non_root)
                .or_else(|| pod.and_then(|p| p.run_as_non_root))
                .unwrap_or(false),
            supplemental_groups: pod
                .and_then(|p| p.supplemental_groups.clone())
                .unwrap_or_default(),
            read_only_root_filesystem: container
                .and_then(|c| c.read_only_root_filesystem)
                .unwrap_or(false),
        }
    }
}

/// The uid, gid and additional gids a process runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Looks a name (or number) up in `/etc/passwd`- or `/etc/group`-formatted
/// `text`: its id, and (for passwd) its primary group.
fn lookup(text: &str, name: &str) -> Option<(u32, Option<u32>)> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 3 && fields[0] == name).then(|| {
            let id = fields[2].parse().ok()?;
            Some((id, fields.get(3).and_then(|g| g.parse().ok())))
        })?
    })
}

/// The user the container runs as, as the kubelet and runc decide it:
/// `runAsUser`/`runAsGroup` first, then the image's `User` (`uid`,
/// `uid:gid`, `name` or `name:group`, names looked up in the image's
/// `passwd` and `group` texts), else root; a user without a group gets
/// its primary group from `passwd`, else 0. `runAsNonRoot` refuses root,
/// and a user name it cannot prove is not root.
///
/// Errors: the message `CreateContainerConfigError` shows.
pub fn resolve_user(
    identity: &Identity,
    image_user: Option<&str>,
    passwd: &str,
    group: &str,
) -> Result<User, String> {
    let image_user = image_user.filter(|u| !u.is_empty());
    let (image_name, image_group) = match image_user {
        Some(u) => match u.split_once(':') {
            Some((user, group)) => (Some(user), Some(group)),
            None => (Some(u), None),
        },
        None => (None, None),
    };
    let number =
        |n: i64, what: &str| u32::try_from(n).map_err(|_| format!("{what} {n} is not a valid id"));
    let (uid, primary) = match (identity.run_as_user, image_name) {
        (Some(uid), _) => {
            let uid = number(uid, "runAsUser")?;
            (uid, lookup(passwd, &uid.to_string()).and_then(|(_, g)| g))
        }
        (None, Some(name)) => match name.parse::<u32>() {
            Ok(uid) => (uid, None),
            Err(_) => {
                if identity.run_as_non_root {
                    return Err(format!(
                        "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root"
                    ));
                }
                let (uid, gid) = lookup(passwd, name).ok_or_else(|| {
                    format!("unable to find user {name}: no matching entries in passwd file")
                })?;
                (uid, gid)
            }
        },
        (None, None) => (0, None),
    };
    if identity.run_as_non_root && uid == 0 {
        return Err("container has runAsNonRoot and image will run as root".into());
    }
    let gid = match (identity.run_as_group, image_group) {
        (Some(gid), _) => number(gid, "runAsGroup")?,
        (None, Some(group_name)) => match group_name.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(group, group_name)
                .map(|(gid, _)| gid)
                .ok_or_else(|| {
                    format!("unable to find group {group_name}: no matching entries in group file")
                })?,
        },
        (None, None) => primary.unwrap_or(0),
    };
    let additional_gids = identity
        .supplemental_groups
        .iter()
        .filter_map(|g| u32::try_from(*g).ok())
        .collect();
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:www:/var/www:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\n";

    fn user(identity: &Identity, image: Option<&str>) -> Result<User, String> {
        resolve_user(identity, image, PASSWD, GROUP)
    }

    #[test]
    fn users_come_from_the_pod_then_the_image() {
        let none = Identity::default();
        assert_eq!(user(&none, None).unwrap().uid, 0);
        let www = user(&none, Some("www")).unwrap();
        assert_eq!((www.uid, www.gid), (33, 34), "primary group from passwd");
        let numbers = user(&none, Some("1000:2000")).unwrap();
        assert_eq!((numbers.uid, numbers.gid), (1000, 2000));
        let named_group = user(&none, Some("www:staff")).unwrap();
        assert_eq!((named_group.uid, named_group.gid), (33, 50));
        let pinned = Identity {
            run_as_user: Some(1234),
            run_as_group: Some(99),
            supplemental_groups: vec![7],
            ..Identity::default()
        };
        let pinned = user(&pinned, Some("www")).unwrap();
        assert_eq!(
            (pinned.uid, pinned.gid, pinned.additional_gids),
            (1234, 99, vec![7])
        );
        assert!(
            user(&none, Some("nobody"))
                .unwrap_err()
                .contains("unable to find user nobody")
        );
    }

    #[test]
    fn run_as_non_root_refuses_root_and_unprovable_names() {
        let strict = Identity {
            run_as_non_root: true,
            ..Identity::default()
        };
        assert_eq!(
            user(&strict, None).unwrap_err(),
            "container has runAsNonRoot and image will run as root"
        );
        assert!(
            user(&strict, Some("www"))
                .unwrap_err()
                .contains("non-numeric user (www)")
        );
        assert_eq!(user(&strict, Some("1000")).unwrap().uid, 1000);
        let forced = Identity {
            run_as_non_root: true,
            run_as_user: Some(0),
            ..Identity::default()
        };
        assert!(user(&forced, Some("1000")).is_err());
    }

    #[test]
    fn container_settings_win_over_the_pod() {
        let pod: k8s_openapi::api::core::v1::PodSecurityContext =
            serde_json::from_value(serde_json::json!({"runAsUser": 1, "runAsGroup": 2, "runAsNonRoot": true, "supplementalGroups": [5]}))
                .unwrap();
        let container: k8s_openapi::api::core::v1::SecurityContext = serde_json::from_value(
            serde_json::json!({"runAsUser": 3, "readOnlyRootFilesystem": true}),
        )
        .unwrap();
        assert_eq!(
            Identity::of(Some(&pod), Some(&container)),
            Identity {
                run_as_user: Some(3),
                run_as_group: Some(2),
                run_as_non_root: true,
                supplemental_groups: vec![5],
                read_only_root_filesystem: true,
            }
        );
    }
}
