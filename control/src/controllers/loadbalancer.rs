//! LoadBalancer addresses from a pool (what MetalLB or a cloud's
//! controller does): every Service of type LoadBalancer gets an address of
//! the pool in `status.loadBalancer.ingress`, which every node's service
//! proxy then answers on; a Service that stops being one gives it back.
//!
//! ```text
//!  Services (watch) ─► type LoadBalancer, no ingress ─► first free address of --load-balancer-ip-range
//!                      (or spec.loadBalancerIP when free) ─► patch status
//!                      not LoadBalancer, ingress from the pool ─► clear status
//! ```
//!
//! Without a pool the controller does nothing and such Services stay
//! `<pending>`, as on a cluster without a load balancer. Addresses taken
//! are read from the Services themselves, so nothing else is stored.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError, Patch};
use crate::runtime::events::{EventType, Recorder};
use crate::runtime::{Action, Event, Informer, Queue, key_of, run_workers, split_key};

/// A range of addresses, `10.44.0.0/24`: every address of it but the
/// network and broadcast ones (for prefixes up to /30).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    base: u32,
    prefix: u8,
}

impl Pool {
    /// Parses `a.b.c.d/n` (n from 8 to 32).
    pub fn parse(cidr: &str) -> Option<Self> {
        let (ip, prefix) = cidr.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| (8..=32).contains(p))?;
        let mask = if prefix == 32 {
            u32::MAX
        } else {
            !(u32::MAX >> prefix)
        };
        Some(Self {
            base: u32::from(ip) & mask,
            prefix,
        })
    }

    /// Its usable addresses, in order.
    fn addresses(self) -> impl Iterator<Item = Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        let (first, last) = if self.prefix >= 31 {
            (0, size - 1)
        } else {
            (1, size - 2)
        };
        (first..=last).map(move |offset| Ipv4Addr::from(self.base + offset as u32))
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        let size = 1u64 << (32 - u32::from(self.prefix));
        u64::from(u32::from(ip).wrapping_sub(self.base)) < size
    }
}

pub fn is_load_balancer(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// The IPv4 ingress addresses in the Service's status.
pub fn ingress(service: &Service) -> Vec<Ipv4Addr> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// What to do with `service`'s status, given the pool and the addresses
/// other Services hold.
pub fn decide(service: &Service, pool: Pool, taken: &BTreeSet<Ipv4Addr>) -> Decision {
    let mine: Vec<Ipv4Addr> = ingress(service)
        .into_iter()
        .filter(|ip| pool.contains(*ip))
        .collect();
    if !is_load_balancer(service) {
        return if mine.is_empty() {
            Decision::Keep
        } else {
            Decision::Clear
        };
    }
    if !ingress(service).is_empty() {
        return Decision::Keep;
    }
    let requested = service
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
        .filter(|ip| !ip.is_empty());
    if let Some(requested) = requested {
        return match requested.parse::<Ipv4Addr>() {
            Ok(ip) if pool.contains(ip) && !taken.contains(&ip) => Decision::Assign(ip),
            Ok(ip) if pool.contains(ip) => {
                Decision::Refuse(format!("the requested address {ip} is taken"))
            }
            _ => Decision::Refuse(format!(
                "the requested address {requested} is not in the pool"
            )),
        };
    }
    match pool.addresses().find(|ip| !taken.contains(ip)) {
        Some(ip) => Decision::Assign(ip),
        None => Decision::Refuse("no address left in the pool".into()),
    }
}

/// What to do with one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    Assign(Ipv4Addr),
    Clear,
    /// It stays pending, for this reason.
    Refuse(String),
}

/// The controller.
#[derive(Debug)]
pub struct LoadBalancerController {
    client: Client,
    services: Informer<Service>,
    queue: Queue<String>,
    pool: Pool,
    events: Recorder,
}

impl LoadBalancerController {
    pub fn new(
        client: Client,
        services: &Informer<Service>,
        pool: Pool,
        events: Recorder,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let controller = Arc::new(Self {
            client,
            services: services.clone(),
            queue: Queue::new("service-lb-controller", shutdown),
            pool,
            events,
        });
        let queue = controller.queue.clone();
        services.on_event(move |event| {
            let (Event::Added(s) | Event::Updated { new: s, .. } | Event::Deleted(s)) = event;
            queue.add(key_of(&s.metadata));
        });
        controller
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if !self.services.wait_synced(&shutdown).await {
            return;
        }
        let this = self.clone();
        // One worker: two Services must not be given one address.
        run_workers("service-lb-controller", self.queue.clone(), 1, move |key| {
            let this = this.clone();
            async move { this.sync(&key).await }
        })
        .await;
    }

    async fn sync(&self, key: &str) -> Result<Action, ClientError> {
        let Some(service) = self.services.get(key) else {
            return Ok(Action::Done);
        };
        let taken: BTreeSet<Ipv4Addr> = self
            .services
            .list()
            .iter()
            .filter(|s| key_of(&s.metadata) != key)
            .flat_map(|s| ingress(s))
            .collect();
        let (namespace, name) = split_key(key);
        let status = match decide(&service, self.pool, &taken) {
            Decision::Keep => return Ok(Action::Done),
            Decision::Refuse(why) => {
                self.events.record(
                    service.as_ref(),
                    EventType::Warning,
                    "AllocationFailed",
                    format!("Failed to allocate IP for {key}: {why}"),
                );
                return Ok(Action::Done);
            }
            Decision::Clear => json!({"status": {"loadBalancer": {"ingress": null}}}),
            Decision::Assign(ip) => {
                self.events.record(
                    service.as_ref(),
                    EventType::Normal,
                    "IPAllocated",
                    format!("Assigned IP [\"{ip}\"]"),
                );
                json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}})
            }
        };
        match self
            .client
            .patch::<Service>(namespace, name, Some("status"), Patch::Merge, &status)
            .await
        {
            Ok(_) => Ok(Action::Done),
            Err(error) if error.is_not_found() => Ok(Action::Done),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(kind: &str, requested: Option<&str>, ingress: Option<&str>) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "s", "namespace": "ns"},
            "spec": {"type": kind, "loadBalancerIP": requested},
            "status": {"loadBalancer": {"ingress": ingress.map(|ip| vec![json!({"ip": ip})])}},
        }))
        .unwrap()
    }

    #[test]
    fn pools_hand_out_their_host_addresses() {
        let pool = Pool::parse("10.44.0.0/30").unwrap();
        assert_eq!(
            pool.addresses().collect::<Vec<_>>(),
            vec![Ipv4Addr::new(10, 44, 0, 1), Ipv4Addr::new(10, 44, 0, 2)]
        );
        assert_eq!(Pool::parse("10.44.0.7/32").unwrap().addresses().count(), 1);
        assert!(Pool::parse("10.44.0.0/33").is_none() && Pool::parse("junk").is_none());
        assert!(pool.contains(Ipv4Addr::new(10, 44, 0, 3)));
        assert!(!pool.contains(Ipv4Addr::new(10, 44, 0, 4)));
    }

    #[test]
    fn load_balancers_get_the_first_free_address() {
        let pool = Pool::parse("10.44.0.0/30").unwrap();
        let none = BTreeSet::new();
        let first = Ipv4Addr::new(10, 44, 0, 1);
        let second = Ipv4Addr::new(10, 44, 0, 2);
        assert_eq!(
            decide(&service("LoadBalancer", None, None), pool, &none),
            Decision::Assign(first)
        );
        let taken: BTreeSet<_> = [first].into();
        assert_eq!(
            decide(&service("LoadBalancer", None, None), pool, &taken),
            Decision::Assign(second)
        );
        let full: BTreeSet<_> = [first, second].into();
        assert!(matches!(
            decide(&service("LoadBalancer", None, None), pool, &full),
            Decision::Refuse(_)
        ));
        assert_eq!(
            decide(
                &service("LoadBalancer", Some("10.44.0.2"), None),
                pool,
                &none
            ),
            Decision::Assign(second)
        );
        assert!(matches!(
            decide(
                &service("LoadBalancer", Some("10.9.9.9"), None),
                pool,
                &none
            ),
            Decision::Refuse(_)
        ));
        assert_eq!(
            decide(
                &service("LoadBalancer", None, Some("10.44.0.1")),
                pool,
                &none
            ),
            Decision::Keep
        );
        assert_eq!(
            decide(&service("ClusterIP", None, Some("10.44.0.1")), pool, &none),
            Decision::Clear,
            "no longer a load balancer"
        );
        assert_eq!(
            decide(&service("ClusterIP", None, None), pool, &none),
            Decision::Keep
        );
    }
}
