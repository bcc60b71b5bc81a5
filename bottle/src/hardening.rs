//! Hardening applied to every bottle's containers, as data with a reason per
//! entry, so a reviewer can see why each line is there.

/// Capabilities dropped from the agent (on top of the runtime's defaults).
pub const AGENT_CAP_DROP: &[(&str, &str)] = &[
    (
        "NET_RAW",
        "raw and packet sockets: ARP/ICMP spoofing on the bottle network, hand-made packets",
    ),
    (
        "NET_ADMIN",
        "routes, interfaces, firewall rules; not a default, dropped so a changed default cannot add it",
    ),
    ("SYS_ADMIN", "mount and namespace tricks; not a default, dropped all the same"),
    ("MKNOD", "creating device nodes"),
    ("AUDIT_WRITE", "writing to the host kernel's audit log"),
    ("SETFCAP", "granting file capabilities to binaries"),
];

/// The sidecar drops every capability and runs as the state dir's owner; these
/// namespaced settings (its own network namespace only) are all it needs.
pub const SIDECAR_SYSCTLS: &[(&str, &str, &str)] = &[(
    "net.ipv4.ip_unprivileged_port_start",
    "0",
    "lets the unprivileged sidecar listen on 53, 80 and 443 for the agent",
)];

/// Names only.
pub fn names(list: &[(&str, &str)]) -> Vec<String> {
    list.iter().map(|(n, _)| n.to_string()).collect()
}

/// Where a runtime has no namespaced sysctls (Apple `container`, smolvm), the
/// sidecar runs as root with every capability dropped but this one.
pub const SIDECAR_CAP_ADD_FALLBACK: &[(&str, &str)] = &[(
    "NET_BIND_SERVICE",
    "the sidecar listens on 53, 80 and 443 for the agent",
)];
