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
