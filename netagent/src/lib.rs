//! The network agent: pod interfaces over CNI, the iptables service proxy and cluster DNS (see `docs/architecture.md`).
