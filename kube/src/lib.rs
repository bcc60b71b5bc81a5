//! bottle on Kubernetes, on paper: the manifests for one bottle
//! ([`render()`]), their YAML ([`yaml`]), and an evaluator of NetworkPolicies
//! ([`netpol`]) that proves what the rendered objects let through.
//!
//! Pure: no cluster, no I/O. The input is a [`spec::BottleSpec`] of this
//! crate's own, so it does not depend on the `bottle` crate; `bottle render`
//! maps its resolved config onto it. The design is in docs/kubernetes.md.

#![forbid(unsafe_code)]

pub mod cidr;
pub mod netpol;
pub mod render;
pub mod spec;
pub mod yaml;

pub use render::{render, RenderError, Rendered};
pub use spec::{AgentSpec, BottleSpec, ClusterSpec, Materials, SidecarDns, SidecarSpec};
