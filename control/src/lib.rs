//! The Kubernetes API server, the controllers and the scheduler (see `docs/architecture.md`).
