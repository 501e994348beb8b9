//! A profile's network: one bridge on the host, one namespace per member
//! and per node, each wired to the bridge by a veth pair.
//!
//! ```text
//!  host ── keelson-brK 192.168.(48+K).1/24 (the API endpoint listens here)
//!            ├─ kvK-s1 ══ eth0 .2   netns keelson-PROFILE-server-1
//!            ├─ …
//!            └─ kvK-n1 ══ eth0 .11  netns keelson-PROFILE-node-1
//!  host routes: blackhole pods /16, Services /16, LoadBalancer /16
//! ```
//!
//! No namespace gets a default route: members and nodes reach each other
//! and the host's end of the bridge, nothing else. Every name made here
//! carries the profile's index or name, and teardown removes only those.

use std::net::Ipv4Addr;

use super::LocalError;
use super::command::run;

/// Where a profile's addresses come from: everything follows its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub index: u8,
}

/// Profiles one machine can hold at once (each takes a /24 of
/// 192.168.49–62 and three /16s of 10.42–10.96).
pub const MAX_PROFILES: u8 = 14;

impl Layout {
    pub fn bridge(&self) -> String {
        format!("keelson-br{}", self.index)
    }

    fn third_octet(&self) -> u8 {
        48 + self.index
    }

    /// The members' and nodes' subnet.
    pub fn subnet(&self) -> String {
        format!("192.168.{}.0/24", self.third_octet())
    }

    /// The host's end of the bridge, where the API endpoint listens.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, self.third_octet(), 1)
    }

    /// Member `i` (from 1).
    pub fn member_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, self.third_octet(), 1 + i)
    }

    /// The node in `slot` (from 1).
    pub fn node_ip(&self, slot: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, self.third_octet(), 10 + slot)
    }

    fn base(&self) -> u16 {
        38 + 4 * u16::from(self.index)
    }

    /// Pods' addresses (`--cluster-cidr`).
    pub fn cluster_cidr(&self) -> String {
        format!("10.{}.0.0/16", self.base())
    }

    /// Services' addresses (`--service-cluster-ip-range`).
    pub fn service_cidr(&self) -> String {
        format!("10.{}.0.0/16", self.base() + 1)
    }

    /// The cluster DNS Service's address (the range's tenth).
    pub fn cluster_dns(&self) -> String {
        format!("10.{}.0.10", self.base() + 1)
    }

    /// LoadBalancer addresses (`--load-balancer-ip-range`).
    pub fn load_balancer_range(&self) -> String {
        format!("10.{}.0.0/24", self.base() + 2)
    }

    /// Ranges the host sends nowhere (a tunnel's narrower route wins).
    pub fn blackholes(&self) -> [String; 3] {
        [
            self.cluster_cidr(),
            self.service_cidr(),
            format!("10.{}.0.0/16", self.base() + 2),
        ]
    }

    /// The host end of a veth pair for `short` (`s1`, `n3`).
    fn veth(&self, short: &str) -> String {
        format!("kv{}-{short}", self.index)
    }
}

/// A namespace wired to the bridge.
#[derive(Clone, Debug)]
pub struct Port {
    pub netns: String,
    /// `s1` for member 1, `n3` for the node in slot 3.
    pub short: String,
    pub ip: Ipv4Addr,
}

/// The IPv4 routes of the host, as `ip route` prints them.
async fn host_routes() -> Result<String, LocalError> {
    run("ip", &["-4", "route", "show", "table", "all"]).await
}

/// `a.b.c.d/len` (or a bare address, a /32) as its first address and mask.
fn cidr(text: &str) -> Option<(u32, u32)> {
    let (address, len) = match text.split_once('/') {
        Some((address, len)) => (address, len.parse::<u32>().ok().filter(|l| *l <= 32)?),
        None => (text, 32),
    };
    let address = u32::from(address.parse::<Ipv4Addr>().ok()?);
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    Some((address & mask, mask))
}

/// Whether `route` (a line of `ip route`) sends any address of `range`
/// somewhere. Default routes are not counted: they are where traffic goes
/// when nothing more specific says otherwise.
fn overlaps(route: &str, range: &str) -> bool {
    const TYPES: [&str; 10] = [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "anycast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
        "nat",
    ];
    let mut words = route.split_whitespace();
    let destination = match words.next() {
        Some(kind) if TYPES.contains(&kind) => words.next(),
        first => first,
    };
    let Some(((a, a_mask), (b, b_mask))) = destination.and_then(cidr).zip(cidr(range)) else {
        return false;
    };
    let mask = a_mask & b_mask;
    a_mask != 0 && a & mask == b & mask
}

/// Whether `layout`'s ranges are free on this machine: no interface named
/// like its bridge and no route into any of its ranges.
pub async fn is_free(layout: &Layout) -> Result<bool, LocalError> {
    if link_exists(&layout.bridge()).await {
        return Ok(false);
    }
    let routes = host_routes().await?;
    let mut ranges = vec![layout.subnet()];
    ranges.extend(layout.blackholes());
    Ok(!routes
        .lines()
        .any(|route| ranges.iter().any(|range| overlaps(route, range))))
}

async fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", name]).await.is_ok()
}

/// Takes `layout`'s index for a new profile by making its bridge: false
/// when another made it first (the kernel decides, so two `keelson up`
/// running at once never share one).
pub async fn claim(layout: &Layout) -> Result<bool, LocalError> {
    match run("ip", &["link", "add", &layout.bridge(), "type", "bridge"]).await {
        Ok(_) => Ok(true),
        Err(LocalError::Command { stderr, .. }) if stderr.contains("exists") => Ok(false),
        Err(error) => Err(error),
    }
}

/// Makes the bridge (unless there) and the host's safety routes.
pub async fn create_bridge(layout: &Layout) -> Result<(), LocalError> {
    let bridge = layout.bridge();
    if !link_exists(&bridge).await {
        run("ip", &["link", "add", &bridge, "type", "bridge"]).await?;
    }
    let address = format!("{}/24", layout.host_ip());
    run("ip", &["addr", "replace", &address, "dev", &bridge]).await?;
    run("ip", &["link", "set", &bridge, "up"]).await?;
    for range in layout.blackholes() {
        run("ip", &["route", "replace", "blackhole", &range]).await?;
    }
    Ok(())
}

/// Makes `port`'s namespace (if missing) and wires it to the bridge.
pub async fn attach(layout: &Layout, port: &Port) -> Result<(), LocalError> {
    let netns = port.netns.as_str();
    if !std::path::Path::new("/run/netns").join(netns).exists() {
        run("ip", &["netns", "add", netns]).await?;
    }
    let veth = layout.veth(&port.short);
    if !link_exists(&veth).await {
        run(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
            ],
        )
        .await?;
        let address = format!("{}/24", port.ip);
        run("ip", &["-n", netns, "addr", "add", &address, "dev", "eth0"]).await?;
    }
    run("ip", &["link", "set", &veth, "master", &layout.bridge()]).await?;
    run("ip", &["link", "set", &veth, "up"]).await?;
    run("ip", &["-n", netns, "link", "set", "eth0", "up"]).await?;
    run("ip", &["-n", netns, "link", "set", "lo", "up"]).await?;
    // Nodes forward their pods' packets.
    run(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    )
    .await?;
    Ok(())
}

/// Removes `port`'s namespace (its end of the pair goes with it, and the
/// host's end with that).
pub async fn detach(layout: &Layout, port: &Port) -> Result<(), LocalError> {
    if std::path::Path::new("/run/netns")
        .join(&port.netns)
        .exists()
    {
        run("ip", &["netns", "del", &port.netns]).await?;
    }
    let veth = layout.veth(&port.short);
    // Deleting the namespace takes the pair down with it, asynchronously:
    // the host's end may vanish between the look and the delete.
    if link_exists(&veth).await {
        match run("ip", &["link", "del", &veth]).await {
            Err(LocalError::Command { stderr, .. }) if stderr.contains("Cannot find device") => {}
            other => {
                other?;
            }
        }
    }
    Ok(())
}

/// Removes the bridge, the safety routes, and a tunnel's route if one was
/// left behind.
pub async fn remove_bridge(layout: &Layout) -> Result<(), LocalError> {
    let bridge = layout.bridge();
    if link_exists(&bridge).await {
        run("ip", &["link", "del", &bridge]).await?;
    }
    let routes = host_routes().await?;
    let lb = layout.load_balancer_range();
    if routes.lines().any(|r| r.starts_with(&format!("{lb} "))) {
        run("ip", &["route", "del", &lb]).await?;
    }
    for range in layout.blackholes() {
        if routes
            .lines()
            .any(|r| r.starts_with(&format!("blackhole {range}")))
        {
            run("ip", &["route", "del", "blackhole", &range]).await?;
        }
    }
    Ok(())
}

/// Namespaces whose names start with `prefix` (a deleted profile's
/// leftovers).
pub async fn namespaces_named(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_profile_gets_the_familiar_ranges() {
        let layout = Layout { index: 1 };
        assert_eq!(layout.subnet(), "192.168.49.0/24");
        assert_eq!(layout.member_ip(1).to_string(), "192.168.49.2");
        assert_eq!(layout.node_ip(2).to_string(), "192.168.49.12");
        assert_eq!(layout.cluster_cidr(), "10.42.0.0/16");
        assert_eq!(layout.service_cidr(), "10.43.0.0/16");
        assert_eq!(layout.cluster_dns(), "10.43.0.10");
        assert_eq!(layout.load_balancer_range(), "10.44.0.0/24");
        let last = Layout {
            index: MAX_PROFILES,
        };
        assert_eq!(last.blackholes()[2], "10.96.0.0/16");
        assert!(last.veth("n200").len() <= 15, "interface names fit");
    }

    #[test]
    fn routes_overlap_by_destination() {
        let pods = "10.42.0.0/16";
        assert!(overlaps("blackhole 10.42.0.0/16 proto static", pods));
        assert!(overlaps("10.0.0.0/8 via 172.16.0.1 dev eth0", pods));
        assert!(overlaps("10.42.7.0/24 via 192.168.49.12 dev br0", pods));
        assert!(overlaps("local 10.42.0.1 dev lo table local", pods));
        assert!(!overlaps("10.43.0.0/16 dev br0", pods));
        assert!(!overlaps("default via 10.42.0.1 dev eth0", pods));
        assert!(!overlaps("unreachable default", pods));
    }
}
