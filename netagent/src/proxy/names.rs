//! The names of the proxy's chains: a few fixed top-level chains, and
//! per-service-port and per-endpoint chains whose names are hashes of what
//! they stand for, so a chain keeps its name from one sync to the next.
//!
//! ```text
//!  "ns/name:port" + "tcp"            ─sha256─► base32 ─► first 16 ─► KEELSON-SVC-… / SVL / EXT / FW
//!  "ns/name:port" + "tcp" + "ip:port" ─sha256─► base32 ─► first 16 ─► KEELSON-SEP-…
//! ```
//!
//! The hash input is the one kube-proxy uses, so a service port's suffix is
//! the same as its `KUBE-SVC-…` suffix on a Kubernetes node, which helps
//! when comparing the two. iptables allows 28 characters in a chain name;
//! `KEELSON-SEP-` and 16 characters of hash make exactly 28.

use sha2::{Digest, Sha256};

/// Every chain the proxy owns starts with this; nothing else is touched.
pub const PREFIX: &str = "KEELSON-";

/// `nat` and `filter`: the entry point for traffic to service IPs.
pub const SERVICES: &str = "KEELSON-SERVICES";
/// `filter`: rejects or drops traffic to external IPs, load-balancer IPs
/// and node ports that have no usable endpoints.
pub const EXTERNAL_SERVICES: &str = "KEELSON-EXTERNAL-SERVICES";
/// `nat`: NodePorts, reached from the end of `KEELSON-SERVICES` for
/// traffic to a local address.
pub const NODEPORTS: &str = "KEELSON-NODEPORTS";
/// `nat`: masquerades what `KEELSON-MARK-MASQ` marked.
pub const POSTROUTING: &str = "KEELSON-POSTROUTING";
/// `nat`: marks a packet for masquerading.
pub const MARK_MASQ: &str = "KEELSON-MARK-MASQ";
/// `filter`: accepts forwarded service traffic.
pub const FORWARD: &str = "KEELSON-FORWARD";
/// `filter`: drops load-balancer traffic from outside
/// `loadBalancerSourceRanges`.
pub const PROXY_FIREWALL: &str = "KEELSON-PROXY-FIREWALL";

/// Per service port: endpoints for the `Cluster` traffic policy.
pub const SVC_PREFIX: &str = "KEELSON-SVC-";
/// Per service port: this node's endpoints for the `Local` traffic policy.
pub const SVL_PREFIX: &str = "KEELSON-SVL-";
/// Per service port: traffic to node ports, external IPs and load-balancer IPs.
pub const EXT_PREFIX: &str = "KEELSON-EXT-";
/// Per service port: `loadBalancerSourceRanges`.
pub const FW_PREFIX: &str = "KEELSON-FW-";
/// Per endpoint of a service port: DNAT to it.
pub const SEP_PREFIX: &str = "KEELSON-SEP-";

/// The mark for packets to masquerade (kube-proxy's default bit 14).
pub const MASQ_MARK: u32 = 0x4000;

/// `ns/name:port`, or `ns/name` for an unnamed port: how kube-proxy names
/// a service port in comments and hashes.
pub fn service_port_name(namespace: &str, name: &str, port: &str) -> String {
    if port.is_empty() {
        format!("{namespace}/{name}")
    } else {
        format!("{namespace}/{name}:{port}")
    }
}

/// The 16-character hash suffix of a service port's chains.
pub fn port_hash(service_port: &str, protocol: &str) -> String {
    hash16(&[service_port, protocol])
}

/// The name of an endpoint's chain (`KEELSON-SEP-…`); `endpoint` is `ip:port`.
pub fn endpoint_chain(service_port: &str, protocol: &str, endpoint: &str) -> String {
    format!(
        "{SEP_PREFIX}{}",
        hash16(&[service_port, protocol, endpoint])
    )
}

/// Whether `chain` is one of the per-service or per-endpoint chains (as
/// opposed to the fixed top-level ones).
pub fn is_service_chain(chain: &str) -> bool {
    [SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX]
        .iter()
        .any(|p| chain.starts_with(p))
}

/// Base32 (RFC 4648 alphabet) of the first 80 bits of the SHA-256 of the
/// concatenated parts: 16 characters.
fn hash16(parts: &[&str]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    // 10 bytes are 80 bits: exactly 16 groups of 5.
    let mut bits: u128 = 0;
    for byte in &digest[..10] {
        bits = (bits << 8) | u128::from(*byte);
    }
    (0..16)
        .rev()
        .map(|i| char::from(ALPHABET[((bits >> (i * 5)) & 0x1f) as usize]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hash_as_kube_proxy_does() {
        // The suffixes kube-proxy gives `ns1/svc1:p80` and its endpoint
        // 10.180.0.1:80 (KUBE-SVC-XPGD46QRK7WJZT7O, KUBE-SEP-SXIVWICOYRO3J4NJ).
        let port = service_port_name("ns1", "svc1", "p80");
        assert_eq!(port_hash(&port, "tcp"), "XPGD46QRK7WJZT7O");
        assert_eq!(
            endpoint_chain(&port, "tcp", "10.180.0.1:80"),
            "KEELSON-SEP-SXIVWICOYRO3J4NJ"
        );
        assert_eq!(service_port_name("ns", "svc", ""), "ns/svc");
        assert!(endpoint_chain(&port, "tcp", "10.180.0.1:80").len() <= 28);
        assert!(is_service_chain("KEELSON-EXT-XPGD46QRK7WJZT7O"));
        assert!(!is_service_chain(SERVICES));
    }
}
