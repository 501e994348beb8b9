//! A container's environment as Kubernetes builds it: `envFrom` first
//! (ConfigMaps and Secrets, with prefixes), then `env` — literal values,
//! and `valueFrom` a ConfigMap or Secret key, a field of the pod, or a
//! resource of the container.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use keelson_control::client::{Client, ClientError};

/// Why the environment cannot be built: the container waits with
/// `CreateContainerConfigError` and this message.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    KeyNotFound {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("unsupported fieldRef {0:?}")]
    Field(String),
    #[error("unsupported resourceFieldRef {0:?}")]
    Resource(String),
    #[error("reading {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: ClientError,
    },
}

/// What the node has, for `resourceFieldRef` limits a container does not set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allocatable {
    pub milli_cpu: i64,
    pub memory: i64,
}

async fn config_map(
    client: &Client,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    match client.get::<ConfigMap>(Some(namespace), name).await {
        Ok(map) => Ok(Some(map.data.unwrap_or_default())),
        Err(error) if error.is_not_found() => {
            if optional {
                Ok(None)
            } else {
                Err(EnvError::ConfigMapNotFound(name.to_owned()))
            }
        }
        Err(source) => Err(EnvError::Api {
            what: format!("configmap {name}"),
            source,
        }),
    }
}

async fn secret(
    client: &Client,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    match client.get::<Secret>(Some(namespace), name).await {
        Ok(secret) => {
            let mut values: BTreeMap<String, String> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect();
            for (k, v) in secret.string_data.unwrap_or_default() {
                values.insert(k, v);
            }
            Ok(Some(values))
        }
        Err(error) if error.is_not_found() => {
            if optional {
                Ok(None)
            } else {
                Err(EnvError::SecretNotFound(name.to_owned()))
            }
        }
        Err(source) => Err(EnvError::Api {
            what: format!("secret {name}"),
            source,
        }),
    }
}

/// `metadata.labels['app']` and friends.
pub fn field(pod: &Pod, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(value) = keyed("metadata.labels['", meta.labels.as_ref()) {
        return Ok(value);
    }
    if let Some(value) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
        return Ok(value);
    }
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone()),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
        "status.podIPs" => status.and_then(|s| s.pod_ips.as_ref()).map(|ips| {
            ips.iter()
                .map(|i| i.ip.clone())
                .collect::<Vec<_>>()
                .join(",")
        }),
        "status.hostIPs" => status.and_then(|s| s.host_ips.as_ref()).map(|ips| {
            ips.iter()
                .map(|i| i.ip.clone())
                .collect::<Vec<_>>()
                .join(",")
        }),
        other => return Err(EnvError::Field(other.to_owned())),
    };
    Ok(value.unwrap_or_default())
}

/// `limits.memory` and friends, divided by `divisor` and rounded up, as
/// the Downward API gives them; limits not set are the node's allocatable.
pub fn resource(
    container: &Container,
    name: &str,
    divisor: Option<&str>,
    node: Allocatable,
) -> Result<String, EnvError> {
    let resources = container.resources.clone().unwrap_or_default();
    let (map, key) = match name.split_once('.') {
        Some(("limits", key)) => (resources.limits, key),
        Some(("requests", key)) => (resources.requests, key),
        _ => return Err(EnvError::Resource(name.to_owned())),
    };
    let get = |parse: fn(&str) -> Option<i64>| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .and_then(|q| parse(&q.0))
    };
    let (amount, unit) = match key {
        // In millicores, divided in millicores.
        "cpu" => (
            get(keelson_control::quantity::milli).unwrap_or(if name.starts_with("limits") {
                node.milli_cpu
            } else {
                0
            }),
            divisor
                .and_then(keelson_control::quantity::milli)
                .unwrap_or(1000),
        ),
        "memory" | "ephemeral-storage" => (
            get(keelson_control::quantity::value).unwrap_or(
                if name.starts_with("limits") && key == "memory" {
                    node.memory
                } else {
                    0
                },
            ),
            divisor
                .and_then(keelson_control::quantity::value)
                .unwrap_or(1),
        ),
        _ => return Err(EnvError::Resource(name.to_owned())),
    };
    let unit = unit.max(1);
    Ok(((amount + unit - 1) / unit).to_string())
}

/// The container's environment, before `$(VAR)` expansion.
pub async fn resolve(
    client: &Client,
    pod: &Pod,
    container: &Container,
    node: Allocatable,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(n, _)| *n != name);
        env.push((name, value));
    };
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let values = if let Some(r) = &source.config_map_ref {
            config_map(client, &namespace, &r.name, r.optional == Some(true)).await?
        } else if let Some(r) = &source.secret_ref {
            secret(client, &namespace, &r.name, r.optional == Some(true)).await?
        } else {
            None
        };
        for (key, value) in values.unwrap_or_default() {
            set(&mut env, format!("{prefix}{key}"), value);
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => var.value.clone().unwrap_or_default(),
            Some(from) => {
                let keyed = if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    let values = config_map(client, &namespace, &r.name, optional).await?;
                    Some(("ConfigMap", values, optional, &r.name, &r.key))
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    let values = secret(client, &namespace, &r.name, optional).await?;
                    Some(("Secret", values, optional, &r.name, &r.key))
                } else {
                    None
                };
                if let Some((kind, values, optional, name, key)) = keyed {
                    // A missing optional object or key leaves the variable unset.
                    match values.map(|v| v.get(key).cloned()) {
                        None => continue,
                        Some(Some(value)) => value,
                        Some(None) if optional => continue,
                        Some(None) => {
                            return Err(EnvError::KeyNotFound {
                                kind,
                                namespace,
                                name: name.clone(),
                                key: key.clone(),
                            });
                        }
                    }
                } else if let Some(r) = &from.field_ref {
                    field(pod, &r.field_path)?
                } else if let Some(r) = &from.resource_field_ref {
                    resource(
                        container,
                        &r.resource,
                        r.divisor.as_ref().map(|d| d.0.as_str()),
                        node,
                    )?
                } else {
                    String::new()
                }
            }
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_and_resources_follow_the_downward_api() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c",
                "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "64Mi"}}}]},
            "status": {"podIP": "10.42.0.7"},
        }))
        .unwrap();
        assert_eq!(field(&pod, "metadata.name").unwrap(), "web-1");
        assert_eq!(field(&pod, "metadata.labels['app']").unwrap(), "web");
        assert_eq!(field(&pod, "metadata.annotations['none']").unwrap(), "");
        assert_eq!(field(&pod, "status.podIP").unwrap(), "10.42.0.7");
        assert!(field(&pod, "spec.containers").is_err());
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let node = Allocatable {
            milli_cpu: 2000,
            memory: 1 << 30,
        };
        assert_eq!(
            resource(container, "requests.cpu", None, node).unwrap(),
            "1",
            "rounded up to a core"
        );
        assert_eq!(
            resource(container, "requests.cpu", Some("1m"), node).unwrap(),
            "250"
        );
        assert_eq!(
            resource(container, "limits.memory", Some("1Mi"), node).unwrap(),
            "64"
        );
        assert_eq!(
            resource(container, "limits.cpu", None, node).unwrap(),
            "2",
            "the node's, when unset"
        );
    }
}
