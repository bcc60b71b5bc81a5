//! Closing the host side of an internal network to what the agent sends to
//! everyone (broadcast, multicast), and measuring that it is closed.
//!
//! Measured on engine 20.10.24: with `inhibit_ipv4` the host holds no IPv4
//! address on an internal bridge, yet a datagram the agent sends to
//! 255.255.255.255, or to a group a host socket joined on the bridge
//! (224.0.0.251, mDNS), is delivered to host sockets bound to 0.0.0.0: the
//! kernel takes broadcast and multicast in on any interface, address or not.
//! Strict reverse-path filtering on the bridge drops them: the sender's
//! address has no route back through a bridge that holds no address.
//!
//! What [`isolate`] sets on the bridge, and why:
//! - `net.ipv4.conf.<bridge>.rp_filter=1` (strict). The kernel uses the
//!   larger of `all` and the interface, so `all.rp_filter=2` (loose: any
//!   route back, the default route included, will do) would undo it: that is
//!   read back and refused with the fix;
//! - `accept_local=0` on the bridge: no packet claiming one of the host's own
//!   addresses as its source is taken in. Belt and braces: the agent has no
//!   NET_RAW or NET_ADMIN to forge a source. `all.accept_local` is reported,
//!   not required;
//! - `net.ipv6.conf.<bridge>.disable_ipv6=1`: the bridge otherwise takes an
//!   IPv6 link-local address once a container joins (measured), a host
//!   address `inhibit_ipv4` does not cover. Agent containers run with IPv6
//!   off, so this is belt and braces too;
//! - `mc_forwarding` cannot be written (a multicast routing daemon sets it);
//!   it is read back and reported. Multicast routing input is checked
//!   against the same reverse path, so `rp_filter` covers it.
//!
//! The engine may be remote (Docker Desktop, a VM, ssh) and bottle may not be
//! root, so everything runs in short-lived helper containers in the engine
//! host's network namespace, never in bottle's own process. The helper that
//! writes gets only what writing `/proc/sys/net` needs: `NET_ADMIN`, `/proc/sys`
//! not read-only (on podman through its `unmask=/proc/sys` option, as it
//! ignores an empty `readonly_paths`), no AppArmor profile (docker-default
//! denies `/proc/sys` writes), no-new-privileges; not `--privileged`.

use super::DockerRuntime;
use crate::{
    ContainerSpec, NetworkAttachment, NetworkInfo, Role, Runtime, RuntimeError, RuntimeKind,
    Weakness,
};
use bollard::models::{ContainerCreateBody, HostConfig};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Writes the settings on bridge `$1` and prints them back as `key=value`.
const ISOLATE_SCRIPT: &str = r#"b="$1"; d="/proc/sys/net/ipv4/conf/$b"
[ -d "$d" ] || { echo "no interface $b in the engine host's network namespace" >&2; exit 3; }
echo 1 > "$d/rp_filter" && echo 0 > "$d/accept_local" || exit 4
v6="/proc/sys/net/ipv6/conf/$b/disable_ipv6"
if [ -e "$v6" ]; then echo 1 > "$v6" || exit 5; fi
a=/proc/sys/net/ipv4/conf/all
echo "rp_filter=$(cat "$d/rp_filter") all.rp_filter=$(cat $a/rp_filter) accept_local=$(cat "$d/accept_local") all.accept_local=$(cat $a/accept_local) mc_forwarding=$(cat "$d/mc_forwarding") disable_ipv6=$(cat "$v6" 2>/dev/null || echo absent)"
"#;

/// Binds UDP 0.0.0.0:$1, joins 224.0.0.251 on bridge $2 (as an mDNS daemon
/// would), says `ready`, then prints `got SRC PAYLOAD` for every datagram
/// for $3 seconds. Perl: perl-base is in every Debian image.
const LISTEN_SCRIPT: &str = r#"use Socket; my ($port, $br, $secs) = @ARGV; $| = 1;
socket(my $s, PF_INET, SOCK_DGRAM, 0) or die "socket: $!\n";
bind($s, sockaddr_in($port, INADDR_ANY)) or die "bind 0.0.0.0:$port: $!\n";
open(my $f, "<", "/sys/class/net/$br/ifindex") or die "no interface $br: $!\n";
my $idx = <$f>; chomp $idx;
setsockopt($s, IPPROTO_IP, Socket::IP_ADD_MEMBERSHIP(), pack("a4a4i", inet_aton("224.0.0.251"), INADDR_ANY, $idx)) or die "join 224.0.0.251 on $br: $!\n";
print "ready\n"; my $end = time + $secs; my $rin = ''; vec($rin, fileno($s), 1) = 1;
while (time < $end) { if (select(my $r = $rin, undef, undef, 0.2)) { my $from = recv($s, my $buf, 512, 0) or next;
  my (undef, $a) = sockaddr_in($from); print "got ", inet_ntoa($a), " $buf\n"; } }
"#;

/// Sends `TAG DEST` to each DEST:$1 three times, with SO_BROADCAST.
const SEND_SCRIPT: &str = r#"use Socket; my ($port, $tag, @dst) = @ARGV; $| = 1;
socket(my $s, PF_INET, SOCK_DGRAM, 0) or die "socket: $!\n";
setsockopt($s, SOL_SOCKET, SO_BROADCAST, 1) or die "SO_BROADCAST: $!\n";
for my $i (1..3) { for my $d (@dst) { send($s, "$tag $d", 0, sockaddr_in($port, inet_aton($d))) or print "send $d: $!\n"; }
  select(undef, undef, undef, 0.05); }
print "sent\n";
"#;

/// The multicast group the probe and the tests use (mDNS).
pub const MDNS_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);

/// The broadcast address of an IPv4 CIDR, e.g. `10.213.4.255` for
/// `10.213.4.0/24`.
pub fn subnet_broadcast(cidr: &str) -> Option<Ipv4Addr> {
    let (addr, len) = cidr.split_once('/')?;
    let (addr, len) = (addr.parse::<Ipv4Addr>().ok()?, len.parse::<u32>().ok()?);
    if len > 32 {
        return None;
    }
    let host_bits = u32::MAX.checked_shr(len).unwrap_or(0);
    Some(Ipv4Addr::from(u32::from(addr) | host_bits))
}

/// Is `name` an interface name the kernel could hold (and safe to pass on)?
fn plausible_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// What the isolating helper read back, checked. `Ok` carries the line for
/// the user; `Err` says what is wrong and the fix.
pub fn check_readback(bridge: &str, out: &str) -> Result<String, (String, String)> {
    let kv: BTreeMap<&str, &str> = out
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .collect();
    let num = |k: &str| kv.get(k).and_then(|v| v.parse::<u32>().ok());
    let (Some(rp), Some(all_rp), Some(local)) =
        (num("rp_filter"), num("all.rp_filter"), num("accept_local"))
    else {
        return Err((
            format!("the helper printed no readable settings: {:?}", out.trim()),
            "check that the sidecar image runs `sh` and that the engine's host is Linux".into(),
        ));
    };
    if rp.max(all_rp) != 1 {
        return Err((
            format!("reverse-path filtering on {bridge} is {} (interface {rp}, all {all_rp}), not strict (1): the agent's broadcast still reaches host sockets", rp.max(all_rp)),
            format!("on the engine's host run `sysctl -w net.ipv4.conf.all.rp_filter=0` (and set it in /etc/sysctl.d to keep it): loose mode in `all` (2, Ubuntu's default) overrides strict mode on every interface, while with 0 each interface keeps its own setting and bottle makes its bridges strict; or accept it knowingly with --accept-weakness {}", Weakness::BroadcastReachesHost),
        ));
    }
    if local != 0 {
        return Err((
            format!("accept_local on {bridge} reads {local} after writing 0"),
            "check what on the engine's host rewrites interface sysctls (a network manager?)"
                .into(),
        ));
    }
    let v6 = kv.get("disable_ipv6").copied().unwrap_or("?");
    if v6 != "1" && v6 != "absent" {
        return Err((
            format!("IPv6 on {bridge} is still on (disable_ipv6={v6}) after writing 1"),
            "check what on the engine's host rewrites interface sysctls (a network manager?)"
                .into(),
        ));
    }
    Ok(format!(
        "{bridge}: rp_filter=1 (strict), accept_local=0 (all: {}), IPv6 {}, mc_forwarding={}",
        kv.get("all.accept_local").copied().unwrap_or("?"),
        if v6 == "absent" { "absent" } else { "off" },
        kv.get("mc_forwarding").copied().unwrap_or("?"),
    ))
}

fn scratch_name(what: &str) -> String {
    format!(
        "bottle-probe-{}-{what}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}

fn probe_labels() -> BTreeMap<String, String> {
    BTreeMap::from([crate::Role::Probe.label()])
}

fn failed(operation: &str, message: String) -> RuntimeError {
    RuntimeError::Call {
        runtime: RuntimeKind::Docker,
        operation: operation.into(),
        message,
    }
}

/// Podman: makes sure a container labelled [`Role::Bridge`] sits on
/// `network` for as long as the network lives, so its bridge exists now and
/// is not deleted (losing the settings below) when the agent and sidecar
/// both stop. It carries the network's labels, so `bottle down` (or a
/// probe's sweep, for a probe's network) removes it with the rest.
async fn hold_bridge_for_life(
    rt: &DockerRuntime,
    network: &NetworkInfo,
    helper_image: &str,
) -> Result<(), RuntimeError> {
    let name = format!("{}-bridge", network.name);
    if rt.inspect_container(&name).await.is_ok() {
        return Ok(());
    }
    let mut labels: BTreeMap<String, String> = rt
        .docker
        .inspect_network(&network.id, None)
        .await
        .map_err(super::call(format!("inspect network {}", network.name)))?
        .labels
        .unwrap_or_default()
        .into_iter()
        .collect();
    if Role::of(&labels) != Some(Role::Probe) {
        labels.extend([Role::Bridge.label()]);
    }
    // The last address of the /24, clear of the sidecar's .2 and the
    // agent's .3 (a dynamic address would take .2 or .3 first).
    let ipv4 = network
        .subnet
        .as_deref()
        .and_then(|s| s.split('/').next()?.parse::<Ipv4Addr>().ok())
        .map(|base| {
            let o = base.octets();
            Ipv4Addr::new(o[0], o[1], o[2], 254)
        });
    let spec = ContainerSpec {
        name: name.clone(),
        image: helper_image.into(),
        entrypoint: Some(vec!["sleep".into(), "infinity".into()]),
        labels,
        networks: vec![NetworkAttachment {
            network: network.id.clone(),
            ipv4,
            aliases: vec![],
        }],
        user: Some("65534:65534".into()),
        cap_drop: vec!["ALL".into()],
        no_new_privileges: true,
        read_only_rootfs: true,
        ..Default::default()
    };
    let id = rt.create_container(&spec).await?;
    if let Err(e) = rt.start_container(&id).await {
        let _ = rt.remove_container(&id).await;
        return Err(e);
    }
    Ok(())
}

/// Sets and reads back the settings of the module doc on `network`'s bridge.
fn isolate_error(detail: String, fix: String) -> RuntimeError {
    RuntimeError::Capability {
        runtime: RuntimeKind::Docker,
        capability: "broadcast-isolated".into(),
        detail,
        fix,
    }
}

/// The bridge of `network`, when its name is one a shell may be handed.
fn usable_bridge(network: &NetworkInfo) -> Result<&str, RuntimeError> {
    match network.host_interface.as_deref() {
        Some(b) if plausible_ifname(b) => Ok(b),
        other => Err(isolate_error(
            format!(
                "network {} has no usable bridge name ({other:?})",
                network.name
            ),
            "recreate the bottle (`bottle down`, then `bottle up`)".into(),
        )),
    }
}

/// A host-network helper with NET_ADMIN and a writable `/proc/sys`,
/// running `script` with the bridge as `$1`.
fn isolate_helper(
    rt: &DockerRuntime,
    helper_image: &str,
    script: String,
    bridge: &str,
) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(helper_image.into()),
        entrypoint: Some(vec![
            "sh".into(),
            "-c".into(),
            script,
            "bottle-isolate".into(),
            bridge.into(),
        ]),
        labels: Some(probe_labels().into_iter().collect()),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(vec!["NET_ADMIN".into()]),
            // `/proc/sys` is read-only by default; an empty list lifts that
            // (the CLI's `--security-opt systempaths=unconfined`).
            readonly_paths: Some(vec![]),
            security_opt: Some({
                let mut opts = vec![
                    "no-new-privileges:true".to_string(),
                    "apparmor=unconfined".to_string(),
                ];
                // Podman keeps `/proc/sys` read-only whatever
                // `readonly_paths` says; its own option lifts it.
                if rt.engine == super::Engine::Podman {
                    opts.push("unmask=/proc/sys".into());
                }
                opts
            }),
            init: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn helper_failed(bridge: &str, e: &RuntimeError) -> RuntimeError {
    isolate_error(
        format!("the helper that sets {bridge}'s sysctls could not run: {e}"),
        format!("let the engine run a host-network container with NET_ADMIN (rootless or restricted engines cannot), or accept --accept-weakness {}", Weakness::BroadcastReachesHost),
    )
}

fn script_failed(bridge: &str, code: i64, stderr: &str) -> RuntimeError {
    isolate_error(
        format!(
            "setting {bridge}'s sysctls failed (exit {code}): {}",
            stderr.trim()
        ),
        format!("let the engine run a host-network container with NET_ADMIN, or accept --accept-weakness {}", Weakness::BroadcastReachesHost),
    )
}

pub(super) async fn isolate(
    rt: &DockerRuntime,
    network: &NetworkInfo,
    helper_image: &str,
) -> Result<String, RuntimeError> {
    let bridge = usable_bridge(network)?;
    if rt.engine == super::Engine::Podman {
        hold_bridge_for_life(rt, network, helper_image).await?;
    }
    let body = isolate_helper(rt, helper_image, ISOLATE_SCRIPT.into(), bridge);
    let out = rt
        .run_body(&scratch_name("isolate"), body)
        .await
        .map_err(|e| helper_failed(bridge, &e))?;
    if out.code != 0 {
        return Err(script_failed(bridge, out.code, &out.stderr));
    }
    check_readback(bridge, &out.stdout).map_err(|(detail, fix)| isolate_error(detail, fix))
}

/// Where the combined helper's output changes section: the line holds the
/// exit code of the part before it.
const SECTION: &str = "@@bottle-exit=";

/// [`isolate`] and [`super::networks::host_addresses_on`] with one helper
/// container instead of two (on docker; podman, whose bridges come and go
/// with containers, runs the two as before): the sysctls are set and read
/// back, then `bottle-sidecar netinfo` lists the host's interfaces from
/// the same host network namespace.
pub(super) async fn isolate_and_list(
    rt: &DockerRuntime,
    network: &NetworkInfo,
    helper_image: &str,
) -> (
    Result<Vec<IpAddr>, RuntimeError>,
    Result<String, RuntimeError>,
) {
    if rt.engine == super::Engine::Podman {
        return tokio::join!(
            super::networks::host_addresses_on(rt, network, helper_image),
            isolate(rt, network, helper_image)
        );
    }
    let bridge = match usable_bridge(network) {
        Ok(b) => b,
        Err(e) => {
            return (
                super::networks::host_addresses_on(rt, network, helper_image).await,
                Err(e),
            )
        }
    };
    let script = format!(
        "( {ISOLATE_SCRIPT} ); echo \"{SECTION}$?\"; bottle-sidecar netinfo; echo \"{SECTION}$?\""
    );
    let body = isolate_helper(rt, helper_image, script, bridge);
    let out = match rt.run_body(&scratch_name("isolate"), body).await {
        Ok(out) => out,
        Err(e) => {
            // An engine that refuses the privileged helper may still run
            // the unprivileged listing: the host-address check must not
            // fail with the hardening (that one a user may accept).
            return (
                super::networks::host_addresses_on(rt, network, helper_image).await,
                Err(helper_failed(bridge, &e)),
            );
        }
    };
    let (isolated, listed) = split_sections(&out.stdout);
    let isolated = match isolated {
        Some((0, text)) => check_readback(bridge, text).map_err(|(d, f)| isolate_error(d, f)),
        Some((code, _)) => Err(script_failed(bridge, code, &out.stderr)),
        None => Err(script_failed(bridge, out.code, &out.stderr)),
    };
    let addrs = match listed {
        Some((0, text)) => super::networks::parse_netinfo(text)
            .and_then(|found| super::networks::addresses_of(network, &found)),
        // The listing did not run to the end in the privileged helper: the
        // unprivileged one lists them, as it did before the two were one.
        _ => super::networks::host_addresses_on(rt, network, helper_image).await,
    };
    (addrs, isolated)
}

/// One section of the combined helper's output: the exit code that ended
/// it and its text.
type Section<'a> = Option<(i64, &'a str)>;

/// The two sections of the combined helper's output; `None` for a section
/// that never ended.
fn split_sections(stdout: &str) -> (Section<'_>, Section<'_>) {
    let mut sections = Vec::new();
    let mut rest = stdout;
    while let Some(at) = rest.find(SECTION) {
        let text = &rest[..at];
        let after = &rest[at + SECTION.len()..];
        let end = after.find('\n').unwrap_or(after.len());
        let code = after[..end].trim().parse::<i64>().unwrap_or(-1);
        sections.push((code, text));
        rest = after.get(end + 1..).unwrap_or("");
    }
    let mut it = sections.into_iter();
    (it.next(), it.next())
}

/// What `measure` saw: the datagrams that reached a host socket.
#[derive(Debug, Clone)]
pub struct Leak {
    /// One entry per datagram: the source and the destination it was sent to.
    pub received: Vec<String>,
    /// The destinations tried.
    pub sent_to: Vec<Ipv4Addr>,
}

/// Listens on the engine host (a host-network helper) on 0.0.0.0:port with
/// 224.0.0.251 joined on `network`'s bridge, sends to 255.255.255.255,
/// 224.0.0.251 and the subnet broadcast from a container on `network`, and
/// returns what arrived. Nothing arriving is the isolated state.
pub async fn measure(
    rt: &DockerRuntime,
    network: &NetworkInfo,
    helper_image: &str,
) -> Result<Leak, RuntimeError> {
    let bridge = network
        .host_interface
        .as_deref()
        .filter(|b| plausible_ifname(b))
        .ok_or_else(|| {
            failed(
                "measure broadcast isolation",
                format!("network {} has no usable bridge name", network.name),
            )
        })?;
    let mut sent_to = vec![Ipv4Addr::BROADCAST, MDNS_GROUP];
    if let Some(b) = network.subnet.as_deref().and_then(subnet_broadcast) {
        sent_to.push(b);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let port = 40_000 + (nanos % 20_000) as u16;
    let tag = format!("bottle-probe-{}-{nanos}", std::process::id());

    let listener = ContainerSpec {
        name: scratch_name("listen"),
        image: helper_image.into(),
        entrypoint: Some(vec![
            "perl".into(),
            "-e".into(),
            LISTEN_SCRIPT.into(),
            port.to_string(),
            bridge.into(),
            "20".into(),
        ]),
        labels: probe_labels(),
        host_network: true,
        user: Some("65534:65534".into()),
        cap_drop: vec!["ALL".into()],
        no_new_privileges: true,
        ..Default::default()
    };
    let id = rt.create_container(&listener).await?;
    let result = async {
        rt.start_container(&id).await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (out, err) = rt.collect_logs(&id).await?;
            if out.contains("ready") {
                break;
            }
            let state = rt.inspect_container(&id).await?.state;
            if state != crate::ContainerState::Running || std::time::Instant::now() > deadline {
                return Err(failed(
                    "listen for broadcast on the engine's host",
                    format!("the listener did not get ready: {}", err.trim()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut argv: Vec<String> = vec![
            "perl".into(),
            "-e".into(),
            SEND_SCRIPT.into(),
            port.to_string(),
            tag.clone(),
        ];
        argv.extend(sent_to.iter().map(|a| a.to_string()));
        let sender = ContainerSpec {
            name: scratch_name("send"),
            image: helper_image.into(),
            entrypoint: Some(argv),
            labels: probe_labels(),
            networks: vec![NetworkAttachment {
                network: network.id.clone(),
                ipv4: None,
                aliases: vec![],
            }],
            user: Some("65534:65534".into()),
            cap_drop: vec!["ALL".into()],
            no_new_privileges: true,
            ..Default::default()
        };
        let sent = rt.run_capture(&sender).await?;
        if sent.code != 0 || !sent.stdout.contains("sent") {
            return Err(failed(
                "send broadcast from the internal network",
                format!(
                    "exit {}: {} {}",
                    sent.code,
                    sent.stdout.trim(),
                    sent.stderr.trim()
                ),
            ));
        }
        // Delivery on one bridge takes microseconds; allow for a slow host.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (out, _) = rt.collect_logs(&id).await?;
        let mut received: Vec<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("got "))
            .filter(|l| l.contains(&tag))
            .map(|l| l.replace(&format!("{tag} "), "to "))
            .collect();
        received.sort();
        received.dedup();
        Ok(Leak { received, sent_to })
    }
    .await;
    let _ = rt.remove_container(&id).await;
    result
}

impl DockerRuntime {
    /// What reaches a host socket on 0.0.0.0 when a container on `network`
    /// broadcasts and multicasts (`measure`); empty when isolated.
    pub async fn broadcast_reaching_host(
        &self,
        network: &NetworkInfo,
        helper_image: &str,
    ) -> Result<Leak, RuntimeError> {
        measure(self, network, helper_image).await
    }

    /// Creates a container from a raw engine body (what [`ContainerSpec`]
    /// does not offer, such as writable `/proc/sys`), runs it to completion
    /// and removes it.
    async fn run_body(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<crate::ExecOutput, RuntimeError> {
        let opts = bollard::query_parameters::CreateContainerOptionsBuilder::default()
            .name(name)
            .build();
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(super::call(format!("create container {name}")))?;
        let result = self.run_to_end(&created.id).await;
        let _ = self.remove_container(&created.id).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_combined_helper_output_splits_into_its_two_parts() {
        let out =
            "rp_filter=1 all.rp_filter=0\n@@bottle-exit=0\n{\"interfaces\":[]}\n@@bottle-exit=0\n";
        let (a, b) = split_sections(out);
        assert_eq!(a, Some((0, "rp_filter=1 all.rp_filter=0\n")));
        assert_eq!(b, Some((0, "{\"interfaces\":[]}\n")));
        // The sysctls failed (exit 4), the listing ran; a helper cut short
        // leaves the second part unended.
        let (a, b) = split_sections("@@bottle-exit=4\n{}\n@@bottle-exit=0\n");
        assert_eq!((a, b), (Some((4, "")), Some((0, "{}\n"))));
        assert_eq!(
            split_sections("@@bottle-exit=0\n{\"inter"),
            (Some((0, "")), None)
        );
        assert_eq!(split_sections(""), (None, None));
    }

    #[test]
    fn broadcast_of_a_subnet() {
        assert_eq!(
            subnet_broadcast("10.213.4.0/24"),
            Some(Ipv4Addr::new(10, 213, 4, 255))
        );
        assert_eq!(
            subnet_broadcast("172.18.0.0/16"),
            Some(Ipv4Addr::new(172, 18, 255, 255))
        );
        assert_eq!(
            subnet_broadcast("10.0.0.1/32"),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(subnet_broadcast("0.0.0.0/0"), Some(Ipv4Addr::BROADCAST));
        assert_eq!(subnet_broadcast("10.0.0.0/33"), None);
        assert_eq!(subnet_broadcast("garbage"), None);
    }

    #[test]
    fn readback_must_be_strict_rp_filter() {
        let ok = "rp_filter=1 all.rp_filter=0 accept_local=0 all.accept_local=0 mc_forwarding=0 disable_ipv6=1";
        let line = check_readback("bt-x", ok).unwrap();
        assert!(line.contains("rp_filter=1 (strict)"), "{line}");
        // `all` strict covers an interface left at 0.
        assert!(check_readback(
            "bt-x",
            "rp_filter=0 all.rp_filter=1 accept_local=0 disable_ipv6=absent"
        )
        .is_ok());
        // Loose mode anywhere wins over strict: refused, with the fix.
        let (detail, fix) = check_readback(
            "bt-x",
            "rp_filter=1 all.rp_filter=2 accept_local=0 disable_ipv6=1",
        )
        .unwrap_err();
        assert!(detail.contains("is 2"), "{detail}");
        assert!(fix.contains("net.ipv4.conf.all.rp_filter"), "{fix}");
        assert!(check_readback(
            "bt-x",
            "rp_filter=0 all.rp_filter=0 accept_local=0 disable_ipv6=1"
        )
        .is_err());
        assert!(check_readback(
            "bt-x",
            "rp_filter=1 all.rp_filter=0 accept_local=1 disable_ipv6=1"
        )
        .is_err());
        assert!(check_readback(
            "bt-x",
            "rp_filter=1 all.rp_filter=0 accept_local=0 disable_ipv6=0"
        )
        .is_err());
        assert!(check_readback("bt-x", "sh: not found").is_err());
    }

    #[test]
    fn interface_names() {
        assert!(plausible_ifname("bt-0123456789ab"));
        assert!(!plausible_ifname("bt-0123456789abc"));
        assert!(!plausible_ifname("a;b"));
        assert!(!plausible_ifname(""));
    }
}
