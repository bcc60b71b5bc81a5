//! Example bottles the render tests share: the deny-all default, and one
//! with an allowed host, a credential and a git remote (with fixed, fake
//! per-install material, so golden files hold nothing of this machine).

#![allow(dead_code)]

use bottle_kube::{AgentSpec, BottleSpec, ClusterSpec, Materials, SidecarSpec};
use std::collections::BTreeMap;

pub fn agent() -> AgentSpec {
    AgentSpec {
        image: "bottle-agent:latest".into(),
        command: vec!["sleep".into(), "infinity".into()],
        workdir: "/workspace".into(),
        env: BTreeMap::new(),
        cpus: Some(2.0),
        memory_bytes: Some(4 << 30),
        uid: 1000,
        home: "/home/agent".into(),
        ca_path: "/usr/local/share/ca-certificates/bottle/bottle-ca.crt".into(),
        ca_env: vec!["SSL_CERT_FILE".into(), "NODE_EXTRA_CA_CERTS".into()],
    }
}

/// The built-in default: no egress, supervise on, no git.
pub fn deny_all(name: &str) -> BottleSpec {
    BottleSpec {
        name: name.into(),
        agent: agent(),
        sidecar: SidecarSpec {
            image: "bottle-sidecar:0.1.0".into(),
            policy_json: format!(
                "{{\n  \"name\": \"{name}\",\n  \"egress\": {{\n    \"allow\": []\n  }}\n}}\n"
            ),
            git: false,
            supervise: true,
        },
        cluster: ClusterSpec::default(),
        git_config: None,
        credential_vars: Vec::new(),
        materials: None,
    }
}

/// An allowed host with a credential, a git remote, gVisor, and the
/// per-install material (fake values).
pub fn egress_git(name: &str) -> BottleSpec {
    let mut s = deny_all(name);
    s.agent.env = BTreeMap::from([
        ("EDITOR".into(), "vi".into()),
        ("ANSWER".into(), "yes".into()),
    ]);
    s.sidecar.policy_json = format!(
        "{{\n  \"name\": \"{name}\",\n  \"egress\": {{\n    \"allow\": [\"api.anthropic.com\"],\n    \"credentials\": [{{\"host\": \"api.anthropic.com\", \"header\": \"x-api-key\", \"from_env\": \"ANTHROPIC_API_KEY\"}}]\n  }},\n  \"git\": {{\"remotes\": [{{\"name\": \"app\"}}]}}\n}}\n"
    );
    s.sidecar.git = true;
    s.cluster.runtime_class = Some("gvisor".into());
    s.cluster.node_cidrs = vec!["203.0.113.0/24".parse().unwrap()];
    let ip = bottle_kube::render::sidecar_ip(name, &s.cluster.service_cidr, None).unwrap();
    s.git_config = Some(format!(
        "[url \"http://{ip}:8080/app.git\"]\n    insteadOf = https://github.com/acme/app.git\n"
    ));
    s.credential_vars = vec!["ANTHROPIC_API_KEY".into()];
    s.materials = Some(Materials {
        ca_cert_pem: "-----BEGIN CERTIFICATE-----\nTEST-CA-CERTIFICATE\n-----END CERTIFICATE-----\n".into(),
        ca_key_pem: "-----BEGIN PRIVATE KEY-----\nTEST-CA-KEY\n-----END PRIVATE KEY-----\n".into(),
        secrets_json: "{\"credentials\":{\"ANTHROPIC_API_KEY\":{\"value\":\"TEST-REAL-VALUE\",\"placeholder\":\"bottle-placeholder-TEST\"}}}\n".into(),
        placeholders: BTreeMap::from([("ANTHROPIC_API_KEY".into(), "bottle-placeholder-TEST".into())]),
    });
    s
}
