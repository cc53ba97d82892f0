//! Leaving and restarting cleanly: leadership transfer, snapshot-then-purge, preStop, and the
//! admin HTTP endpoints Kubernetes probes.

pub mod http;
pub mod leadership;
pub mod prestop;
pub mod removal;
pub mod snapshot;
