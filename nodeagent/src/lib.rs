//! The node agent, Keelson's kubelet: pod workers and the OCI runtime boundary (see `docs/architecture.md`).
