//! The JSON shapes of Apple `container` 1.0.0 that the driver reads
//! (docs/runtimes.md, appendix). Every field is optional or defaulted:
//! only what bottle uses is named, and unknown keys are ignored, so a later
//! release that adds fields (1.1 adds `status.variant`) still parses.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// `system status --format json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemStatus {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub api_server_version: String,
}

/// One entry of `ls --format json` or `inspect`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Container {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub configuration: ContainerConfig,
    #[serde(default)]
    pub status: ContainerStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub image: ImageRef,
    #[serde(default)]
    pub published_ports: Vec<PublishedPort>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageRef {
    #[serde(default)]
    pub reference: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedPort {
    #[serde(default)]
    pub host_address: String,
    #[serde(default)]
    pub host_port: u16,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    #[serde(default)]
    pub state: String,
    /// In `--network` order; empty unless running.
    #[serde(default)]
    pub networks: Vec<Attachment>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(default)]
    pub network: String,
    /// CIDR form, e.g. `192.168.65.2/24`.
    #[serde(default)]
    pub ipv4_address: String,
}

impl Attachment {
    /// The address without its prefix length.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        strip_prefix_len(&self.ipv4_address)
    }
}

/// `a.b.c.d/NN` (or a bare address) → `a.b.c.d`.
pub fn strip_prefix_len(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.trim().parse().ok()
}

/// One entry of `network ls --format json` or `network inspect`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Network {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub configuration: NetworkConfig,
    #[serde(default)]
    pub status: NetworkStatus,
}

impl Network {
    pub fn name(&self) -> &str {
        if self.configuration.name.is_empty() {
            self.id.as_deref().unwrap_or_default()
        } else {
            &self.configuration.name
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetworkConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `nat` or `hostOnly` (what `--internal` makes).
    #[serde(default)]
    pub mode: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    #[serde(default)]
    pub ipv4_subnet: String,
    #[serde(default)]
    pub ipv4_gateway: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_1_0_0_shapes_with_escaped_slashes() {
        let text = r#"[{"configuration":{"id":"a","labels":{"dev.bottle.name":"x"},"image":{"reference":"docker.io\/library\/alpine:latest"},"publishedPorts":[{"containerPort":80,"count":1,"hostAddress":"127.0.0.1","hostPort":8080,"proto":"tcp"}]},"id":"a","status":{"state":"running","networks":[{"hostname":"a","ipv4Address":"192.168.65.2\/24","ipv4Gateway":"192.168.65.1","macAddress":"x","network":"default"}],"variant":"future"}}]"#;
        let c: Vec<Container> = serde_json::from_str(text).unwrap();
        assert_eq!(
            c[0].configuration.image.reference,
            "docker.io/library/alpine:latest"
        );
        assert_eq!(
            c[0].status.networks[0].ipv4(),
            Some(Ipv4Addr::new(192, 168, 65, 2))
        );
        assert_eq!(
            c[0].configuration.published_ports[0].host_address,
            "127.0.0.1"
        );
        let n: Network = serde_json::from_str(
            r#"{"configuration":{"creationDate":"2026-01-01T00:00:00Z","labels":{},"mode":"hostOnly","name":"n","options":{},"plugin":"vmnet"},"id":"n","status":{"ipv4Gateway":"192.168.66.1","ipv4Subnet":"192.168.66.0\/24"}}"#,
        )
        .unwrap();
        assert_eq!(n.status.ipv4_subnet, "192.168.66.0/24");
        assert_eq!(n.configuration.mode, "hostOnly");
    }
}
