//! Synthetic clusters for measuring the proxy, and a throwaway network
//! namespace to apply them in.
//!
//! ```text
//!  synthetic_input(S, E) ─► render ─► (time, bytes, rules)
//!  Netns::create("keelson-bench") ─► Iptables::in_netns ─► apply / apply_changes / apply (in place) / cleanup timings
//! ```
//!
//! Service `i` gets cluster IP `10.96.0.0 + i + 1`, one TCP port 80, and
//! `E` ready endpoints `10.244.x.y:8080` spread over three nodes.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::iptables::{Iptables, IptablesError};
use super::model::{Ipv4Cidr, SERVICE_NAME_LABEL};
use super::render::{NodeContext, ProxyInput, render};

/// A cluster of `services` ClusterIP Services with `endpoints` ready
/// endpoints each, seen from `node-0`.
pub fn synthetic_input(services: usize, endpoints: usize) -> ProxyInput {
    let mut input = ProxyInput {
        node: NodeContext {
            name: "node-0".into(),
            ips: vec![std::net::Ipv4Addr::new(172, 30, 0, 2)],
            cluster_cidr: Ipv4Cidr::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16).ok(),
            random_fully: true,
            ..NodeContext::default()
        },
        ..ProxyInput::default()
    };
    let mut next_pod: u32 = 0;
    for i in 0..services {
        let name = format!("svc-{i}");
        let cluster_ip = std::net::Ipv4Addr::from(
            u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1,
        );
        input.services.push(Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("bench".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip.to_string()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        }));
        let slice_endpoints = (0..endpoints)
            .map(|j| {
                next_pod += 1;
                let ip = std::net::Ipv4Addr::from(
                    u32::from(std::net::Ipv4Addr::new(10, 244, 0, 0)) + next_pod,
                );
                Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    node_name: Some(format!("node-{}", j % 3)),
                    ..Endpoint::default()
                }
            })
            .collect();
        input.endpoint_slices.push(Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-abcde")),
                namespace: Some("bench".into()),
                labels: Some(BTreeMap::from([(SERVICE_NAME_LABEL.to_owned(), name)])),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: slice_endpoints,
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..EndpointPort::default()
            }]),
        }));
    }
    input
}

/// Renders a synthetic cluster once (after one warm-up render): the time
/// it took, the payload's size in bytes and its number of rules.
pub fn render_benchmark(services: usize, endpoints_per_service: usize) -> (Duration, usize, usize) {
    let input = synthetic_input(services, endpoints_per_service);
    let _ = render(&input);
    let started = Instant::now();
    let rendered = render(&input);
    (started.elapsed(), rendered.text().len(), rendered.rules())
}

/// Timings of the proxy against a synthetic cluster.
#[derive(Clone, Copy, Debug, Default)]
pub struct BenchReport {
    pub services: usize,
    pub endpoints_per_service: usize,
    pub render: Duration,
    pub bytes: usize,
    pub rules: usize,
    /// `apply` into empty tables (save, restore, jumps).
    pub first_apply: Option<Duration>,
    /// `apply_changes` after one endpoint of one service changed.
    pub incremental_apply: Option<Duration>,
    /// `apply` when the kernel already holds the render (save and compare
    /// only, no restore).
    pub full_resync_in_place: Option<Duration>,
    /// `cleanup` of everything.
    pub cleanup: Option<Duration>,
}

/// Measures rendering, and with `iptables` (which must point at a
/// throwaway namespace) applying and cleaning up.
///
/// # Errors
/// Any iptables command fails.
pub async fn benchmark(
    iptables: Option<&Iptables>,
    services: usize,
    endpoints_per_service: usize,
) -> Result<BenchReport, IptablesError> {
    let (render_time, bytes, rules) = render_benchmark(services, endpoints_per_service);
    let mut report = BenchReport {
        services,
        endpoints_per_service,
        render: render_time,
        bytes,
        rules,
        ..BenchReport::default()
    };
    let Some(iptables) = iptables else {
        return Ok(report);
    };
    let mut input = synthetic_input(services, endpoints_per_service);
    let first = render(&input);
    let started = Instant::now();
    iptables.apply(&first).await?;
    report.first_apply = Some(started.elapsed());

    // One endpoint of the first service moves.
    if let Some(slice) = input.endpoint_slices.first_mut() {
        let slice = Arc::make_mut(slice);
        if let Some(endpoint) = slice.endpoints.first_mut() {
            endpoint.addresses = vec!["10.244.255.254".into()];
        }
    }
    let second = render(&input);
    let started = Instant::now();
    iptables.apply_changes(&second, &first).await?;
    report.incremental_apply = Some(started.elapsed());

    let started = Instant::now();
    let applied = iptables.apply(&second).await?;
    report.full_resync_in_place = Some(started.elapsed());
    debug_assert!(!applied.restored);

    let started = Instant::now();
    iptables.cleanup().await?;
    report.cleanup = Some(started.elapsed());
    Ok(report)
}

/// A network namespace this process made (`ip netns add NAME`), deleted
/// when dropped — even when a test fails.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// A namespace that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {name} already exists; refusing to touch it")]
    Exists { name: String },
    #[error("`ip netns add {name}` failed: {stderr}")]
    Add { name: String, stderr: String },
    #[error("cannot run `ip`")]
    Spawn(#[source] std::io::Error),
}

impl Netns {
    /// Makes `PREFIX-<pid>-<nanos>`, with its loopback up.
    ///
    /// # Errors
    /// [`NetnsError`] if the name is taken or `ip` fails (not root).
    pub fn create(prefix: &str) -> Result<Self, NetnsError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("{prefix}-{}-{nanos:x}", std::process::id());
        if std::path::Path::new("/run/netns").join(&name).exists() {
            return Err(NetnsError::Exists { name });
        }
        let output = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(NetnsError::Spawn)?;
        if !output.status.success() {
            return Err(NetnsError::Add {
                name,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        let netns = Self { name };
        let _ = netns.exec(&["ip", "link", "set", "lo", "up"]);
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace and returns its output.
    ///
    /// # Errors
    /// The command cannot be started.
    pub fn exec(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
    }

    /// The iptables tools inside this namespace.
    pub fn iptables(&self) -> Iptables {
        Iptables::in_netns(self.name.clone())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace takes its interfaces and rules with it.
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(output) if output.status.success() => {}
            Ok(output) => tracing::warn!(
                netns = %self.name,
                stderr = %String::from_utf8_lossy(&output.stderr).trim(),
                "cannot delete network namespace"
            ),
            Err(error) => tracing::warn!(netns = %self.name, %error, "cannot run `ip netns del`"),
        }
    }
}
