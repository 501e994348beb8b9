//! Pod interfaces through the standard CNI plugins, invoked as the CNI
//! specification says (what libcni does for containerd and CRI-O).
//!
//! ```text
//!  node's podCIDR ─► conflist: bridge (keelson0, the pods' gateway, host-local IPAM) ─► portmap
//!  ADD: each plugin in order, stdin = its config + name + cniVersion (+ prevResult of the one before)
//!       env CNI_COMMAND CNI_CONTAINERID CNI_NETNS CNI_IFNAME CNI_ARGS CNI_PATH ─► result (the pod's IP)
//!  DEL: in reverse order, with the ADD's result as prevResult; also without the namespace
//!       (the pod's processes gone after a crash): host-local still frees the address
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// The CNI version spoken (Debian 12's plugins are 1.1: up to 1.0.0).
const CNI_VERSION: &str = "1.0.0";

/// Where Debian's `containernetworking-plugins` and other distributions
/// put the plugins.
pub const PLUGIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];

/// Why a CNI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("the node has no pod CIDR yet")]
    NoPodCidr,
    #[error(
        "CNI plugin {plugin:?} is not installed in {dirs} (Debian: apt-get install containernetworking-plugins)"
    )]
    Missing { plugin: String, dirs: String },
    #[error("CNI plugin {plugin} {command}: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("running CNI plugin {plugin}")]
    Exec {
        plugin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command} answered with no IPv4 address: {answer}")]
    NoAddress {
        plugin: String,
        command: &'static str,
        answer: String,
    },
}

/// The network of the pods of one node.
#[derive(Clone, Debug)]
pub struct CniConfig {
    /// The bridge the pods' interfaces hang from (in the node's namespace).
    pub bridge: String,
    /// Where host-local keeps its allocations (one directory per node).
    pub state_dir: PathBuf,
    pub plugin_dirs: Vec<PathBuf>,
}

/// The conflist for a node whose pods take addresses from `pod_cidr`: the
/// bridge plugin (the bridge is the pods' default gateway; hairpin on, so a
/// pod reaches itself through a Service) with host-local IPAM, then portmap
/// for `hostPort`s.
pub fn conflist(config: &CniConfig, pod_cidr: &str) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": "keelson",
        "plugins": [
            {
                "type": "bridge",
                "bridge": config.bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": config.state_dir,
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    })
}

/// What one plugin reads on stdin: its own config with the list's name and
/// version, the previous result, and the runtime's arguments for the
/// capabilities it declares.
pub fn plugin_input(
    list: &Value,
    plugin: &Value,
    previous: Option<&Value>,
    port_mappings: &Value,
) -> Value {
    let mut input = plugin.clone();
    input["name"] = list["name"].clone();
    input["cniVersion"] = list["cniVersion"].clone();
    if let Some(previous) = previous {
        input["prevResult"] = previous.clone();
    }
    if plugin["capabilities"]["portMappings"] == true {
        input["runtimeConfig"] = json!({"portMappings": port_mappings});
    }
    if let Some(object) = input.as_object_mut() {
        object.remove("capabilities");
    }
    input
}

/// The first IPv4 address of a result (`10.42.1.5/24` → `10.42.1.5`).
pub fn ipv4_of(result: &Value) -> Option<String> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let address = ip["address"].as_str()?;
        let bare = address.split('/').next()?;
        bare.parse::<std::net::Ipv4Addr>()
            .ok()
            .map(|a| a.to_string())
    })
}

/// A `hostPort` of the pod, as portmap reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

fn mappings_json(mappings: &[PortMapping]) -> Value {
    Value::Array(
        mappings
            .iter()
            .map(|m| {
                json!({"hostPort": m.host_port, "containerPort": m.container_port,
                       "protocol": m.protocol.to_lowercase()})
            })
            .collect(),
    )
}

/// Who the plugins are run for.
#[derive(Clone, Debug)]
pub struct Attachment<'a> {
    pub container_id: &'a str,
    /// The pod's network namespace; `None` once it is gone.
    pub netns: Option<&'a Path>,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub port_mappings: &'a [PortMapping],
}

impl CniConfig {
    fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        self.plugin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::Missing {
                plugin: plugin.to_owned(),
                dirs: self
                    .plugin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })
    }

    async fn invoke(
        &self,
        command: &'static str,
        attachment: &Attachment<'_>,
        input: &Value,
    ) -> Result<Value, CniError> {
        let plugin = input["type"].as_str().unwrap_or_default().to_owned();
        let binary = self.find(&plugin)?;
        let path = self
            .plugin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let exec = |source| CniError::Exec {
            plugin: plugin.clone(),
            source,
        };
        let mut child = tokio::process::Command::new(&binary)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", attachment.container_id)
            .env(
                "CNI_NETNS",
                attachment
                    .netns
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            )
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    attachment.namespace, attachment.pod, attachment.container_id
                ),
            )
            .env("CNI_PATH", path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(exec)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.to_string().as_bytes())
                .await
                .map_err(exec)?;
        }
        let output = child.wait_with_output().await.map_err(exec)?;
        let answer: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if !output.status.success() {
            let message = answer["msg"]
                .as_str()
                .map(|m| match answer["details"].as_str() {
                    Some(d) if !d.is_empty() => format!("{m}: {d}"),
                    _ => m.to_owned(),
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&output.stderr).trim().to_owned());
            return Err(CniError::Plugin {
                plugin,
                command,
                message,
            });
        }
        Ok(answer)
    }

    /// ADD: every plugin of `list` in order; the last one's result.
    pub async fn add(&self, list: &Value, attachment: &Attachment<'_>) -> Result<Value, CniError> {
        let mappings = mappings_json(attachment.port_mappings);
        let mut previous: Option<Value> = None;
        for plugin in list["plugins"].as_array().into_iter().flatten() {
            let input = plugin_input(list, plugin, previous.as_ref(), &mappings);
            let result = self.invoke("ADD", attachment, &input).await?;
            previous = Some(result);
        }
        let result = previous.unwrap_or(Value::Null);
        if ipv4_of(&result).is_none() {
            return Err(CniError::NoAddress {
                plugin: "bridge".into(),
                command: "ADD",
                answer: result.to_string(),
            });
        }
        Ok(result)
    }

    /// DEL: every plugin of `list` in reverse order, given the ADD's result.
    /// Every plugin is asked even when one fails; the first error is returned.
    pub async fn del(
        &self,
        list: &Value,
        attachment: &Attachment<'_>,
        result: Option<&Value>,
    ) -> Result<(), CniError> {
        let mappings = mappings_json(attachment.port_mappings);
        let mut first = None;
        for plugin in list["plugins"].as_array().into_iter().flatten().rev() {
            let input = plugin_input(list, plugin, result, &mappings);
            if let Err(error) = self.invoke("DEL", attachment, &input).await {
                first.get_or_insert(error);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// CHECK: every plugin in order, given the ADD's result.
    pub async fn check(
        &self,
        list: &Value,
        attachment: &Attachment<'_>,
        result: &Value,
    ) -> Result<(), CniError> {
        let mappings = mappings_json(attachment.port_mappings);
        for plugin in list["plugins"].as_array().into_iter().flatten() {
            let input = plugin_input(list, plugin, Some(result), &mappings);
            self.invoke("CHECK", attachment, &input).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CniConfig {
        CniConfig {
            bridge: "keelson0".into(),
            state_dir: PathBuf::from("/var/lib/keelson/agent/cni"),
            plugin_dirs: vec![PathBuf::from("/usr/lib/cni")],
        }
    }

    #[test]
    fn the_conflist_chains_bridge_and_portmap() {
        let list = conflist(&config(), "10.42.1.0/24");
        assert_eq!(list["plugins"][0]["type"], "bridge");
        assert_eq!(
            list["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.1.0/24"
        );
        assert_eq!(list["plugins"][1]["type"], "portmap");
        let previous = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.42.1.5/24"}]});
        let mappings = mappings_json(&[PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "TCP".into(),
        }]);
        let first = plugin_input(&list, &list["plugins"][0], None, &mappings);
        assert_eq!(first["name"], "keelson");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("prevResult").is_none() && first.get("runtimeConfig").is_none());
        let second = plugin_input(&list, &list["plugins"][1], Some(&previous), &mappings);
        assert_eq!(second["prevResult"], previous);
        assert_eq!(
            second["runtimeConfig"]["portMappings"][0],
            json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp"})
        );
        assert!(second.get("capabilities").is_none());
    }

    #[test]
    fn results_give_the_pods_ipv4_address() {
        let result = json!({"ips": [{"address": "fd00::5/64"}, {"address": "10.42.1.5/24", "gateway": "10.42.1.1"}]});
        assert_eq!(ipv4_of(&result).as_deref(), Some("10.42.1.5"));
        assert_eq!(ipv4_of(&json!({"ips": []})), None);
        assert_eq!(ipv4_of(&Value::Null), None);
    }
}
