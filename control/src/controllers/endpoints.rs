//! The Endpoints and EndpointSlice controllers: which pods back each
//! Service with a selector, on which ports.
//!
//! ```text
//!  service/pod events ─► queue(service) ─► pods the selector matches, with an IP, not finished
//!      ├─ Endpoints NAME: ready addresses and notReadyAddresses (terminating pods left out)
//!      └─ EndpointSlices NAME-xxxxx: every pod with its ready/serving/terminating conditions,
//!         one slice per distinct port set, at most 100 endpoints each
//! ```
//!
//! A named `targetPort` is looked up in each pod's container ports, so
//! pods that name the port differently still get traffic on the right one.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio_util::sync::CancellationToken;

use super::pods::{is_ready, phase};
use crate::client::{Client, ClientError, DeleteOptions};
use crate::runtime::{
    Action, Event, Informer, Queue, controller_reference, key_of, selects, split_key,
};

/// Endpoints per slice, as Kubernetes' `--max-endpoints-per-slice`.
const MAX_PER_SLICE: usize = 100;
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// Why a Service's endpoints could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error("Service {service}: {action}")]
    Api {
        service: String,
        action: &'static str,
        #[source]
        source: ClientError,
    },
}

fn failed(service: &str, action: &'static str) -> impl FnOnce(ClientError) -> EndpointsError {
    let service = service.to_owned();
    move |source| EndpointsError::Api {
        service,
        action,
        source,
    }
}

/// The pod's port for `target`: a number as is, a name from its containers.
pub fn resolve_port(pod: &Pod, target: Option<&IntOrString>, port: i32) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
        }
    }
}

fn selector_of(service: &Service) -> Option<LabelSelector> {
    let selector = service.spec.as_ref()?.selector.clone()?;
    if selector.is_empty() {
        return None;
    }
    Some(LabelSelector {
        match_labels: Some(selector),
        match_expressions: None,
    })
}

fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .pod_ip
        .clone()
        .filter(|ip| !ip.is_empty())
}

/// The ports a pod serves a Service on: (name, port, protocol) per Service port.
type PortSet = Vec<(Option<String>, i32, String)>;

/// A pod as one endpoint of a Service.
#[derive(Clone, Debug)]
struct Backend {
    pod: Arc<Pod>,
    ip: String,
    ready: bool,
    serving: bool,
    terminating: bool,
    ports: PortSet,
    /// The pod's `hostname`, when its `subdomain` is the Service: its
    /// DNS name under the Service (`web-0.web.ns.svc…`).
    hostname: Option<String>,
}

/// The pods backing `service`, sorted by name.
fn backends(service: &Service, pods: &[Arc<Pod>]) -> Vec<Backend> {
    let Some(selector) = selector_of(service) else {
        return Vec::new();
    };
    let spec = service.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut backends: Vec<Backend> = pods
        .iter()
        .filter(|p| selects(&selector, p.metadata.labels.as_ref()))
        .filter(|p| !matches!(phase(p), Some("Succeeded" | "Failed")))
        .filter_map(|pod| {
            let ip = pod_ip(pod)?;
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|sp| {
                    let port = resolve_port(pod, sp.target_port.as_ref(), sp.port)?;
                    Some((
                        sp.name.clone(),
                        port,
                        sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    ))
                })
                .collect();
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let serving = is_ready(pod) || publish_not_ready;
            let hostname = pod.spec.as_ref().and_then(|s| {
                let named = s.subdomain.is_some() && s.subdomain == service.metadata.name;
                s.hostname.clone().filter(|h| named && !h.is_empty())
            });
            Some(Backend {
                pod: pod.clone(),
                ip,
                ready: serving && !terminating,
                serving,
                terminating,
                ports,
                hostname,
            })
        })
        .collect();
    backends.sort_by(|a, b| a.pod.metadata.name.cmp(&b.pod.metadata.name));
    backends
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

/// The Endpoints subsets for `backends`: pods grouped by the ports they
/// resolve to; terminating pods left out.
fn subsets(backends: &[Backend]) -> Vec<EndpointSubset> {
    let mut groups: BTreeMap<PortSet, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for b in backends.iter().filter(|b| !b.terminating) {
        let address = EndpointAddress {
            ip: b.ip.clone(),
            node_name: b.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(&b.pod)),
            hostname: b.hostname.clone(),
        };
        let group = groups.entry(b.ports.clone()).or_default();
        if b.ready {
            group.0.push(address)
        } else {
            group.1.push(address)
        }
    }
    groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: Some(
                ports
                    .into_iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        name,
                        port,
                        protocol: Some(protocol),
                        app_protocol: None,
                    })
                    .collect(),
            ),
        })
        .collect()
}

/// The slices' contents for `backends`: endpoints grouped by port set, in
/// chunks of at most [`MAX_PER_SLICE`].
fn slice_contents(backends: &[Backend]) -> Vec<(Vec<SlicePort>, Vec<Endpoint>)> {
    let mut groups: BTreeMap<PortSet, Vec<Endpoint>> = BTreeMap::new();
    for b in backends {
        groups.entry(b.ports.clone()).or_default().push(Endpoint {
            addresses: vec![b.ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(b.ready),
                serving: Some(b.serving),
                terminating: Some(b.terminating),
            }),
            node_name: b.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(&b.pod)),
            hostname: b.hostname.clone(),
            ..Endpoint::default()
        });
    }
    let mut contents = Vec::new();
    for (ports, endpoints) in groups {
        let ports: Vec<SlicePort> = ports
            .into_iter()
            .map(|(name, port, protocol)| SlicePort {
                name,
                port: Some(port),
                protocol: Some(protocol),
                app_protocol: None,
            })
            .collect();
        for chunk in endpoints.chunks(MAX_PER_SLICE) {
            contents.push((ports.clone(), chunk.to_vec()));
        }
    }
    contents
}

#[derive(Clone, Debug)]
pub struct EndpointsController {
    client: Client,
    services: Informer<Service>,
    pods: Informer<Pod>,
    endpoints: Informer<Endpoints>,
    slices: Informer<EndpointSlice>,
    queue: Queue<String>,
}

impl EndpointsController {
    pub fn new(
        client: Client,
        services: &Informer<Service>,
        pods: &Informer<Pod>,
        endpoints: &Informer<Endpoints>,
        slices: &Informer<EndpointSlice>,
        shutdown: CancellationToken,
    ) -> Self {
        let controller = Self {
            client,
            services: services.clone(),
            pods: pods.clone(),
            endpoints: endpoints.clone(),
            slices: slices.clone(),
            queue: Queue::new("endpoint", shutdown),
        };
        let c = controller.clone();
        services.on_event(move |event| {
            let (Event::Added(s) | Event::Updated { new: s, .. } | Event::Deleted(s)) = event;
            c.queue.add(key_of(&s.metadata));
        });
        let c = controller.clone();
        pods.on_event(move |event| match event {
            Event::Added(pod) | Event::Deleted(pod) => c.enqueue_services_of(pod, None),
            Event::Updated { old, new } => c.enqueue_services_of(new, Some(old)),
        });
        let c = controller.clone();
        endpoints.on_event(move |event| {
            if let Event::Deleted(e) | Event::Updated { new: e, .. } = event {
                c.queue.add(key_of(&e.metadata));
            }
        });
        let c = controller.clone();
        slices.on_event(move |event| {
            if let Event::Deleted(s) | Event::Updated { new: s, .. } = event
                && let Some(service) = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                let namespace = s.metadata.namespace.clone().unwrap_or_default();
                c.queue.add(format!("{namespace}/{service}"));
            }
        });
        controller
    }

    fn enqueue_services_of(&self, pod: &Pod, old: Option<&Pod>) {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        for service in self.services.list_in(namespace) {
            let Some(selector) = selector_of(&service) else {
                continue;
            };
            if selects(&selector, pod.metadata.labels.as_ref())
                || old.is_some_and(|o| selects(&selector, o.metadata.labels.as_ref()))
            {
                self.queue.add(key_of(&service.metadata));
            }
        }
    }

    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        for synced in [
            self.services.wait_synced(&shutdown).await,
            self.pods.wait_synced(&shutdown).await,
            self.endpoints.wait_synced(&shutdown).await,
            self.slices.wait_synced(&shutdown).await,
        ] {
            if !synced {
                return;
            }
        }
        let this = self.clone();
        crate::runtime::run_workers("endpoint", self.queue.clone(), workers, move |key| {
            let this = this.clone();
            async move { this.reconcile(&key).await }
        })
        .await;
    }

    async fn reconcile(&self, key: &str) -> Result<Action, EndpointsError> {
        let (namespace, name) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let Some(service) = self.services.get(key) else {
            // Endpoints go with their Service (slices are owned, and collected).
            if self.endpoints.get(key).is_some() {
                match self
                    .client
                    .delete::<Endpoints>(Some(namespace), name, &DeleteOptions::default())
                    .await
                {
                    Ok(()) => {}
                    Err(error) if error.is_not_found() => {}
                    Err(error) => return Err(failed(key, "delete Endpoints")(error)),
                }
            }
            return Ok(Action::Done);
        };
        if selector_of(&service).is_none() {
            // Endpoints of a Service without a selector are the user's.
            return Ok(Action::Done);
        }
        let backends = backends(&service, &self.pods.list_in(namespace));
        self.sync_endpoints(key, &service, &backends).await?;
        self.sync_slices(key, &service, &backends).await?;
        Ok(Action::Done)
    }

    async fn sync_endpoints(
        &self,
        key: &str,
        service: &Service,
        backends: &[Backend],
    ) -> Result<(), EndpointsError> {
        let (namespace, name) = split_key(key);
        let subsets = subsets(backends);
        let subsets = (!subsets.is_empty()).then_some(subsets);
        let labels = service.metadata.labels.clone();
        match self.endpoints.get(key) {
            Some(current) if current.subsets == subsets && current.metadata.labels == labels => {
                Ok(())
            }
            Some(current) => {
                let mut updated = (*current).clone();
                updated.subsets = subsets;
                updated.metadata.labels = labels;
                match self.client.replace(&updated).await {
                    Ok(_) => Ok(()),
                    Err(error) if error.is_not_found() => Ok(()),
                    Err(error) => Err(failed(key, "update Endpoints")(error)),
                }
            }
            None => {
                let endpoints = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        namespace: namespace.map(str::to_owned),
                        labels,
                        ..ObjectMeta::default()
                    },
                    subsets,
                };
                match self.client.create(namespace, &endpoints).await {
                    Ok(_) => Ok(()),
                    Err(error) if error.is_already_exists() => Ok(()),
                    Err(error) => Err(failed(key, "create Endpoints")(error)),
                }
            }
        }
    }

    async fn sync_slices(
        &self,
        key: &str,
        service: &Service,
        backends: &[Backend],
    ) -> Result<(), EndpointsError> {
        let (namespace, name) = split_key(key);
        let namespace = namespace.unwrap_or_default();
        let uid = service.metadata.uid.clone();
        let mut existing: Vec<Arc<EndpointSlice>> = self
            .slices
            .list_in(namespace)
            .into_iter()
            .filter(|s| {
                let labels = s.metadata.labels.as_ref();
                labels
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(String::as_str)
                    == Some(name)
                    && labels
                        .and_then(|l| l.get(MANAGED_BY_LABEL))
                        .map(String::as_str)
                        == Some(MANAGED_BY)
            })
            .collect();
        existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut labels = service.metadata.labels.clone().unwrap_or_default();
        labels.insert(SERVICE_NAME_LABEL.into(), name.to_owned());
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        let mut contents = slice_contents(backends);
        if contents.is_empty() {
            // A Service with no endpoints still has one (empty) slice.
            contents.push((Vec::new(), Vec::new()));
        }
        let mut reused: HashSet<String> = HashSet::new();
        for (i, (ports, endpoints)) in contents.into_iter().enumerate() {
            let ports = (!ports.is_empty()).then_some(ports);
            match existing.get(i) {
                Some(current) => {
                    reused.insert(current.metadata.name.clone().unwrap_or_default());
                    if current.endpoints == endpoints
                        && current.ports == ports
                        && current.metadata.labels.as_ref() == Some(&labels)
                    {
                        continue;
                    }
                    let mut updated = (**current).clone();
                    updated.endpoints = endpoints;
                    updated.ports = ports;
                    updated.metadata.labels = Some(labels.clone());
                    match self.client.replace(&updated).await {
                        Ok(_) => {}
                        Err(error) if error.is_not_found() => {}
                        Err(error) => return Err(failed(key, "update an EndpointSlice")(error)),
                    }
                }
                None => {
                    // A name of its own per Service and position, not a
                    // generated one: a sync that runs before the cache has
                    // seen this slice then fails to create it again
                    // (AlreadyExists, retried) instead of making a twin.
                    let tag: String = uid
                        .as_deref()
                        .unwrap_or_default()
                        .chars()
                        .filter(char::is_ascii_alphanumeric)
                        .take(8)
                        .collect();
                    let slice = EndpointSlice {
                        metadata: ObjectMeta {
                            name: Some(format!("{name}-{tag}{i}")),
                            namespace: Some(namespace.to_owned()),
                            labels: Some(labels.clone()),
                            owner_references: uid
                                .as_ref()
                                .map(|_| vec![controller_reference(service)]),
                            ..ObjectMeta::default()
                        },
                        address_type: "IPv4".into(),
                        endpoints,
                        ports,
                    };
                    self.client
                        .create(Some(namespace), &slice)
                        .await
                        .map_err(failed(key, "create an EndpointSlice"))?;
                }
            }
        }
        for stale in existing
            .iter()
            .filter(|s| !reused.contains(s.metadata.name.as_deref().unwrap_or_default()))
        {
            let slice = stale.metadata.name.clone().unwrap_or_default();
            match self
                .client
                .delete::<EndpointSlice>(Some(namespace), &slice, &DeleteOptions::default())
                .await
            {
                Ok(()) => {}
                Err(error) if error.is_not_found() => {}
                Err(error) => return Err(failed(key, "delete an EndpointSlice")(error)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(
        name: &str,
        ip: &str,
        ready: bool,
        terminating: bool,
        port_name: &str,
        port: i32,
    ) -> Arc<Pod> {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": port_name, "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap();
        if terminating {
            pod.metadata.deletion_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(chrono::Utc::now()),
            );
        }
        Arc::new(pod)
    }

    fn service(publish_not_ready: bool) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"selector": {"app": "web"}, "publishNotReadyAddresses": publish_not_ready,
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))
        .unwrap()
    }

    #[test]
    fn endpoints_split_ready_and_resolve_named_ports() {
        let pods = vec![
            pod("a", "10.42.0.2", true, false, "http", 8080),
            pod("b", "10.42.0.3", false, false, "http", 8080),
            pod("c", "10.42.0.4", true, false, "http", 9090),
            pod("d", "10.42.0.5", true, true, "http", 8080),
        ];
        let all = backends(&service(false), &pods);
        let subsets = subsets(&all);
        assert_eq!(subsets.len(), 2, "two port sets: {subsets:?}");
        let on_8080 = subsets
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == 8080)
            .unwrap();
        let ips = |a: &Option<Vec<EndpointAddress>>| {
            a.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ips(&on_8080.addresses), ["10.42.0.2"]);
        assert_eq!(
            ips(&on_8080.not_ready_addresses),
            ["10.42.0.3"],
            "terminating d is left out"
        );

        let slices = slice_contents(&all);
        let d = slices
            .iter()
            .flat_map(|(_, e)| e)
            .find(|e| e.addresses[0] == "10.42.0.5")
            .unwrap();
        assert_eq!(
            d.conditions,
            Some(EndpointConditions {
                ready: Some(false),
                serving: Some(true),
                terminating: Some(true)
            })
        );

        let published = backends(&service(true), &pods);
        assert!(
            published
                .iter()
                .find(|b| b.ip == "10.42.0.3")
                .unwrap()
                .ready
        );
    }

    #[test]
    fn pods_of_the_services_subdomain_carry_their_hostname() {
        let named = |subdomain: &str| {
            let mut p = (*pod("web-0", "10.42.0.2", true, false, "http", 8080)).clone();
            let spec = p.spec.as_mut().unwrap();
            spec.hostname = Some("web-0".into());
            spec.subdomain = Some(subdomain.into());
            Arc::new(p)
        };
        let hostname = |pods: Vec<Arc<Pod>>| {
            let all = backends(&service(false), &pods);
            let slices = slice_contents(&all);
            let address = subsets(&all)[0].addresses.as_ref().unwrap()[0]
                .hostname
                .clone();
            (slices[0].1[0].hostname.clone(), address)
        };
        assert_eq!(
            hostname(vec![named("web")]),
            (Some("web-0".into()), Some("web-0".into()))
        );
        assert_eq!(hostname(vec![named("other")]), (None, None));
    }
}
