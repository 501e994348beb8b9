//! Configuration files for `keelson server` and `keelson agent`: YAML whose
//! keys are the long flags' names, as k3s's `config.yaml` is.
//!
//! ```yaml
//! # /etc/keelson/server.yaml
//! name: server-1
//! data-dir: /var/lib/keelson/server
//! advertise-address: 10.0.0.11
//! join: https://10.0.0.10:6443
//! token-file: /etc/keelson/token
//! tls-san: [keelson.example.com, 10.0.0.100]
//! ```
//!
//! The file's settings become flags placed before the command line's, so a
//! flag given on the command line wins; a list flag given in both gets the
//! values of both. A list becomes the flag repeated; a `true` becomes the
//! bare flag, a `false` leaves a switch off.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail};
use clap::CommandFactory;

/// `argv` with any `--config FILE` of `keelson server` or `keelson agent`
/// replaced by the file's settings as flags.
pub(crate) fn expand(argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some(at) =
        subcommand_position(&argv).filter(|at| argv[*at] == "server" || argv[*at] == "agent")
    else {
        return Ok(argv);
    };
    let command = argv[at].to_string_lossy().into_owned();
    let mut rest = Vec::with_capacity(argv.len());
    let mut file = None;
    let mut args = argv[at + 1..].iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            file = args.next().cloned();
        } else if let Some(path) = text.strip_prefix("--config=") {
            file = Some(path.into());
        } else {
            rest.push(arg.clone());
        }
    }
    let Some(file) = file else {
        return Ok(argv);
    };
    let path = Path::new(&file);
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    let flags = flags(&command, &path.display().to_string(), &text)?;
    let mut expanded: Vec<OsString> = argv[..=at].to_vec();
    expanded.extend(flags.into_iter().map(OsString::from));
    expanded.extend(rest);
    Ok(expanded)
}

/// Where the subcommand is: the first argument that is neither a global
/// flag nor its value.
fn subcommand_position(argv: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while let Some(arg) = argv.get(i) {
        let text = arg.to_string_lossy();
        if text == "--log-format" {
            i += 2;
        } else if text.starts_with('-') {
            i += 1;
        } else {
            return Some(i);
        }
    }
    None
}

/// The flags a configuration file's text stands for.
fn flags(command: &str, path: &str, text: &str) -> anyhow::Result<Vec<String>> {
    use serde_yaml::Value;
    let document: Value =
        serde_yaml::from_str(text).with_context(|| format!("{path} is not YAML"))?;
    let mapping = match document {
        Value::Mapping(mapping) => mapping,
        Value::Null => return Ok(Vec::new()),
        _ => bail!("{path}: expected a mapping of flag names to values"),
    };
    let cli = crate::Cli::command();
    let known: Vec<String> = cli
        .find_subcommand(command)
        .map(|sub| {
            sub.get_arguments()
                .filter_map(|a| a.get_long().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut flags = Vec::new();
    for (key, value) in mapping {
        let key = match key {
            Value::String(key) => key,
            other => format!("{other:?}"),
        };
        if key == "config" || !known.contains(&key) {
            bail!(
                "{path}: {key:?} is not a flag of `keelson {command}` (see keelson {command} --help)"
            );
        }
        let bad =
            || anyhow::anyhow!("{path}: {key}: expected a string, number, boolean or list of them");
        let scalar = |value: &Value| -> Option<String> {
            match value {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        };
        match &value {
            Value::Bool(true) => flags.push(format!("--{key}")),
            Value::Bool(false) | Value::Null => {}
            Value::Sequence(items) => {
                for item in items {
                    flags.push(format!("--{key}={}", scalar(item).ok_or_else(bad)?));
                }
            }
            other => flags.push(format!("--{key}={}", scalar(other).ok_or_else(bad)?)),
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn settings_become_flags_before_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.yaml");
        std::fs::write(
            &file,
            "name: s1\ncluster-init: true\nleader-elect: false\ntls-san: [a.example, 10.0.0.9]\nsnapshot-retention: 3\n",
        )
        .unwrap();
        let config = file.to_str().unwrap();
        let expanded = expand(args(&[
            "keelson", "server", "--config", config, "--name", "s2",
        ]))
        .unwrap();
        assert_eq!(
            expanded,
            args(&[
                "keelson",
                "server",
                "--name=s1",
                "--cluster-init",
                "--tls-san=a.example",
                "--tls-san=10.0.0.9",
                "--snapshot-retention=3",
                "--name",
                "s2",
            ])
        );
        // The command line's flags win; lists add up.
        use clap::Parser;
        let mut with_san = expanded.clone();
        with_san.extend(args(&["--tls-san", "b.example"]));
        let cli = crate::Cli::try_parse_from(with_san).unwrap();
        let crate::Command::Server(server) = cli.command else {
            panic!("not a server command");
        };
        assert_eq!(server.name, "s2");
        assert_eq!(server.tls_san, ["a.example", "10.0.0.9", "b.example"]);
        let global = args(&[
            "keelson",
            "--log-format",
            "json",
            "server",
            "--config",
            config,
        ]);
        assert_eq!(expand(global).unwrap()[4], "--name=s1");
    }

    #[test]
    fn the_example_files_in_deploy_are_valid() {
        use clap::Parser;
        for (command, file) in [("server", "server.yaml"), ("agent", "agent.yaml")] {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd/").to_owned() + file;
            let argv = expand(args(&["keelson", command, "--config", &path])).unwrap();
            assert!(argv.len() > 4, "{argv:?}");
            crate::Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    #[test]
    fn unknown_settings_and_other_commands() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.yaml");
        std::fs::write(&file, "kubeconfg: /x\n").unwrap();
        let error = expand(args(&[
            "keelson",
            "agent",
            "--config",
            file.to_str().unwrap(),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("\"kubeconfg\" is not a flag of `keelson agent`"),
            "{error}"
        );
        let untouched = args(&["keelson", "status", "--config", "x"]);
        assert_eq!(expand(untouched.clone()).unwrap(), untouched);
    }
}
