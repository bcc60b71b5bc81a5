//! The one call bottle makes to podman's own (libpod) API instead of its
//! Docker-compatible one: creating an internal network without DNS.
//!
//! Podman's compatible `POST /networks/create` always sets
//! `dns_enabled: true`, and netavark then gives the bridge the network's
//! gateway address so aardvark-dns can listen there: the host holds an
//! address the agent can reach (measured, docs/runtimes.md, "Podman").
//! libpod's `POST /v4.0.0/libpod/networks/create` takes `dns_enabled:
//! false` and `internal: true`, and the network then has no gateway at all;
//! the agent's resolver is its sidecar either way. Everything else still
//! goes through bollard and the compatible API, which sees the network like
//! any other.

use crate::{RuntimeError, RuntimeKind};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;

/// What libpod's network create takes (the fields bottle sets).
#[derive(Debug, serde::Serialize)]
pub(super) struct InternalNetwork<'a> {
    pub name: &'a str,
    pub driver: &'static str,
    pub network_interface: &'a str,
    pub subnets: Vec<Subnet>,
    pub internal: bool,
    pub dns_enabled: bool,
    pub ipv6_enabled: bool,
    pub labels: &'a BTreeMap<String, String>,
}

#[derive(Debug, serde::Serialize)]
pub(super) struct Subnet {
    pub subnet: String,
}

/// Why a libpod call failed: the answer's message, or the transport's.
#[derive(Debug)]
pub(super) struct Failed(pub String);

/// The unix socket of `host` (`unix:///run/podman/podman.sock`).
fn socket_of(host: &str) -> Result<&str, RuntimeError> {
    host.strip_prefix("unix://")
        .ok_or_else(|| RuntimeError::Capability {
            runtime: RuntimeKind::Docker,
            capability: "podman-internal-network".into(),
            detail: format!(
                "podman at {host}: bottle reaches podman's own API only over its unix socket"
            ),
            fix: "point DOCKER_HOST at podman's unix socket (scripts/setup-podman.sh prints it)"
                .into(),
        })
}

/// Creates `net` through libpod on the socket of `host`; returns its id.
pub(super) async fn create_internal_network(
    host: &str,
    net: &InternalNetwork<'_>,
) -> Result<Result<String, Failed>, RuntimeError> {
    let socket = socket_of(host)?;
    let body = serde_json::to_vec(net).map_err(|e| RuntimeError::Call {
        runtime: RuntimeKind::Docker,
        operation: format!("create network {}", net.name),
        message: e.to_string(),
    })?;
    let uri: hyper::Uri = hyperlocal::Uri::new(socket, "/v4.0.0/libpod/networks/create").into();
    let request = hyper::Request::post(uri)
        .header("content-type", "application/json")
        .body(Full::new(hyper::body::Bytes::from(body)))
        .map_err(|e| RuntimeError::Call {
            runtime: RuntimeKind::Docker,
            operation: format!("create network {}", net.name),
            message: e.to_string(),
        })?;
    let client: Client<hyperlocal::UnixConnector, Full<hyper::body::Bytes>> =
        Client::builder(TokioExecutor::new()).build(hyperlocal::UnixConnector);
    let response = match client.request(request).await {
        Ok(r) => r,
        Err(e) => return Ok(Err(Failed(format!("podman's API at {socket}: {e}")))),
    };
    let status = response.status();
    let bytes = match response.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(Err(Failed(format!("reading podman's answer: {e}")))),
    };
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if !status.is_success() {
        let message = json["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        return Ok(Err(Failed(format!("{status}: {message}"))));
    }
    match json["id"].as_str() {
        Some(id) if !id.is_empty() => Ok(Ok(id.to_string())),
        _ => Ok(Err(Failed(format!(
            "podman's answer names no network id: {}",
            String::from_utf8_lossy(&bytes).trim()
        )))),
    }
}

/// `GET path` on libpod; the JSON answer, or why there is none.
async fn get_json(host: &str, path: &str) -> Result<serde_json::Value, Failed> {
    let socket = socket_of(host).map_err(|e| Failed(e.to_string()))?;
    let uri: hyper::Uri = hyperlocal::Uri::new(socket, path).into();
    let client: Client<hyperlocal::UnixConnector, Full<hyper::body::Bytes>> =
        Client::builder(TokioExecutor::new()).build(hyperlocal::UnixConnector);
    let response = client
        .get(uri)
        .await
        .map_err(|e| Failed(format!("podman's API at {socket}: {e}")))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Failed(format!("reading podman's answer: {e}")))?
        .to_bytes();
    if !status.is_success() {
        return Err(Failed(format!(
            "{status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| Failed(format!("podman's answer: {e}")))
}

/// The bounding capability set of container `id` (libpod inspect's
/// `BoundingCaps`), or None when podman does not say.
pub(super) async fn bounding_caps(host: &str, id: &str) -> Option<Vec<String>> {
    let json = get_json(host, &format!("/v4.0.0/libpod/containers/{id}/json"))
        .await
        .ok()?;
    json["BoundingCaps"].as_array().map(|caps| {
        caps.iter()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect()
    })
}

/// What libpod says of network `id`: whether it is internal, whether it
/// serves DNS, and the gateways of its subnets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NetworkFacts {
    pub internal: bool,
    pub dns_enabled: bool,
    pub gateways: Vec<String>,
}

pub(super) async fn network_facts(host: &str, id: &str) -> Result<NetworkFacts, String> {
    let json = get_json(host, &format!("/v4.0.0/libpod/networks/{id}/json"))
        .await
        .map_err(|f| f.0)?;
    Ok(NetworkFacts {
        internal: json["internal"].as_bool().unwrap_or(false),
        dns_enabled: json["dns_enabled"].as_bool().unwrap_or(true),
        gateways: json["subnets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["gateway"].as_str().map(str::to_string))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_asks_for_no_dns_and_no_outside() {
        let labels = BTreeMap::from([("dev.bottle.name".to_string(), "b".to_string())]);
        let v = serde_json::to_value(InternalNetwork {
            name: "bottle-b-internal",
            driver: "bridge",
            network_interface: "bt-x",
            subnets: vec![Subnet {
                subnet: "10.213.4.0/24".into(),
            }],
            internal: true,
            dns_enabled: false,
            ipv6_enabled: false,
            labels: &labels,
        })
        .unwrap();
        assert_eq!(v["dns_enabled"], false);
        assert_eq!(v["internal"], true);
        assert_eq!(v["subnets"][0]["subnet"], "10.213.4.0/24");
        assert!(v["subnets"][0].get("gateway").is_none());
        assert_eq!(v["labels"]["dev.bottle.name"], "b");
    }

    #[test]
    fn only_a_unix_socket_reaches_libpod() {
        assert_eq!(
            socket_of("unix:///run/podman/podman.sock").unwrap(),
            "/run/podman/podman.sock"
        );
        let e = socket_of("tcp://10.0.0.1:2375").unwrap_err().to_string();
        assert!(
            e.contains("only over its unix socket") && e.contains("fix:"),
            "{e}"
        );
    }
}
