//! The destination guard: which resolved addresses the sidecar may connect
//! to.
//!
//! An allowed *name* is not enough: DNS for it may answer (or be made to
//! answer) loopback, the host, the LAN, or a cloud metadata service. After
//! resolution every address is classified here, and anything that is not a
//! plain public unicast address is refused, with three exceptions:
//!
//! - an `egress.allow` entry that names that exact address (and port) makes it
//!   reachable whatever its class: the user said so explicitly;
//! - a name listed in `egress.allow_private` may resolve to private (RFC 1918),
//!   unique-local (fc00::/7) or shared (CGNAT, 100.64/10) addresses, in their
//!   native form only: never loopback, link-local, metadata, the sidecar's
//!   gateway or its own addresses;
//! - nothing else.
//!
//! IPv6 forms that carry an IPv4 address (mapped, compatible, translated,
//! NAT64 `64:ff9b::/96`, 6to4) are classified by the IPv4 address inside.
//! Pure functions: the sidecar passes in its gateways and own addresses
//! ([`LocalNet`]).

use crate::egress::{Decision, EgressPolicy, Verdict};
use crate::host::HostPattern;
use ipnet::{Ipv4Net, Ipv6Net};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not plain public unicast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    Unspecified,
    Loopback,
    /// RFC 1918.
    Private,
    /// 100.64.0.0/10, carrier-grade NAT (RFC 6598).
    SharedCgnat,
    LinkLocal,
    /// A cloud metadata service (AWS, GCP, Azure, Alibaba).
    Metadata,
    Multicast,
    Broadcast,
    Documentation,
    /// Reserved, benchmarking, discard or tunnelling ranges.
    Reserved,
    /// fc00::/7.
    UniqueLocal,
    /// fec0::/10 (deprecated, still routed by some stacks).
    SiteLocal,
    /// A gateway of the sidecar's own routes: the host, on the egress network.
    Gateway,
    /// An address of the sidecar itself.
    Sidecar,
}

impl AddressClass {
    /// May an `egress.allow_private` name resolve to this class?
    pub fn relaxable(self) -> bool {
        matches!(
            self,
            AddressClass::Private | AddressClass::SharedCgnat | AddressClass::UniqueLocal
        )
    }

    fn describe(self) -> &'static str {
        match self {
            AddressClass::Unspecified => "an unspecified",
            AddressClass::Loopback => "a loopback",
            AddressClass::Private => "a private (RFC 1918)",
            AddressClass::SharedCgnat => "a shared (CGNAT, 100.64.0.0/10)",
            AddressClass::LinkLocal => "a link-local",
            AddressClass::Metadata => "a cloud metadata",
            AddressClass::Multicast => "a multicast",
            AddressClass::Broadcast => "a broadcast",
            AddressClass::Documentation => "a documentation",
            AddressClass::Reserved => "a reserved",
            AddressClass::UniqueLocal => "a unique-local (fc00::/7)",
            AddressClass::SiteLocal => "a site-local (fec0::/10)",
            AddressClass::Gateway => "the sidecar's gateway (the host)",
            AddressClass::Sidecar => "the sidecar's own",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// An IPv6 form that carries an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// `::ffff:a.b.c.d`
    Mapped,
    /// `::a.b.c.d` (deprecated)
    Compatible,
    /// `::ffff:0:a.b.c.d` (SIIT)
    Translated,
    /// `64:ff9b::a.b.c.d`
    Nat64,
    /// `2002:AABB:CCDD::/48`
    SixToFour,
}

impl fmt::Display for Embedding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Embedding::Mapped => "IPv4-mapped",
            Embedding::Compatible => "IPv4-compatible",
            Embedding::Translated => "IPv4-translated",
            Embedding::Nat64 => "NAT64",
            Embedding::SixToFour => "6to4",
        })
    }
}

/// The class of a non-public address, and the IPv6 form it was hidden in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    pub class: AddressClass,
    /// `Some` when the class is that of an IPv4 address inside an IPv6 one.
    pub embedded: Option<(Embedding, Ipv4Addr)>,
}

/// The sidecar's surroundings, which the guard refuses as well: the gateways
/// of its routes (the host) and its own addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalNet {
    pub gateways: Vec<IpAddr>,
    pub own: Vec<IpAddr>,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(a, b, c, d), len)
}

/// IPv4 ranges in match order (most specific first).
const V4_RANGES: [((Ipv4Addr, u8), AddressClass); 20] = [
    (v4(169, 254, 169, 254, 32), AddressClass::Metadata),
    (v4(100, 100, 100, 200, 32), AddressClass::Metadata),
    (v4(168, 63, 129, 16, 32), AddressClass::Metadata),
    (v4(255, 255, 255, 255, 32), AddressClass::Broadcast),
    (v4(0, 0, 0, 0, 8), AddressClass::Unspecified),
    (v4(127, 0, 0, 0, 8), AddressClass::Loopback),
    (v4(10, 0, 0, 0, 8), AddressClass::Private),
    (v4(172, 16, 0, 0, 12), AddressClass::Private),
    (v4(192, 168, 0, 0, 16), AddressClass::Private),
    (v4(100, 64, 0, 0, 10), AddressClass::SharedCgnat),
    (v4(169, 254, 0, 0, 16), AddressClass::LinkLocal),
    (v4(192, 0, 2, 0, 24), AddressClass::Documentation),
    (v4(198, 51, 100, 0, 24), AddressClass::Documentation),
    (v4(203, 0, 113, 0, 24), AddressClass::Documentation),
    (v4(192, 0, 0, 0, 24), AddressClass::Reserved),
    (v4(192, 88, 99, 0, 24), AddressClass::Reserved),
    (v4(198, 18, 0, 0, 15), AddressClass::Reserved),
    (v4(224, 0, 0, 0, 4), AddressClass::Multicast),
    (v4(240, 0, 0, 0, 4), AddressClass::Reserved),
    // 0.0.0.0 alone is covered by 0/8; kept explicit for readers.
    (v4(0, 0, 0, 0, 32), AddressClass::Unspecified),
];

/// IPv6 ranges that are classified directly (embedded forms are handled
/// before these).
fn v6_ranges() -> [(Ipv6Net, AddressClass); 14] {
    let net = |s: &str| -> Ipv6Net { s.parse().unwrap_or_default() };
    [
        (net("::/128"), AddressClass::Unspecified),
        (net("::1/128"), AddressClass::Loopback),
        (net("fd00:ec2::254/128"), AddressClass::Metadata),
        (net("64:ff9b:1::/48"), AddressClass::Reserved),
        (net("100::/64"), AddressClass::Reserved),
        (net("2001::/32"), AddressClass::Reserved),
        (net("2001:2::/48"), AddressClass::Reserved),
        (net("2001:db8::/32"), AddressClass::Documentation),
        (net("3fff::/20"), AddressClass::Documentation),
        (net("fc00::/7"), AddressClass::UniqueLocal),
        (net("fe80::/10"), AddressClass::LinkLocal),
        (net("fec0::/10"), AddressClass::SiteLocal),
        (net("ff00::/8"), AddressClass::Multicast),
        (net("5f00::/16"), AddressClass::Reserved),
    ]
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    V4_RANGES.iter().find_map(|((base, len), class)| {
        Ipv4Net::new(*base, *len)
            .ok()
            .filter(|n| n.contains(&ip))
            .map(|_| *class)
    })
}

/// The IPv4 address an IPv6 address carries, if it is one of the forms in
/// [`Embedding`]. `::` and `::1` are not "compatible" forms.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<(Embedding, Ipv4Addr)> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some((Embedding::Mapped, tail)),
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some((Embedding::Translated, tail)),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some((Embedding::Nat64, tail)),
        [0, 0, 0, 0, 0, 0, 0, 0] | [0, 0, 0, 0, 0, 0, 0, 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some((Embedding::Compatible, tail)),
        [0x2002, a, b, ..] => Some((
            Embedding::SixToFour,
            Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8),
        )),
        _ => None,
    }
}

/// Classifies `ip`; `None` means plain public unicast.
pub fn classify(ip: IpAddr) -> Option<Classified> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4).map(|class| Classified {
            class,
            embedded: None,
        }),
        IpAddr::V6(v6) => {
            if let Some((form, inner)) = embedded_v4(v6) {
                return classify_v4(inner).map(|class| Classified {
                    class,
                    embedded: Some((form, inner)),
                });
            }
            v6_ranges()
                .iter()
                .find(|(net, _)| net.contains(&v6))
                .map(|(_, class)| Classified {
                    class: *class,
                    embedded: None,
                })
        }
    }
}

impl EgressPolicy {
    /// Does an `egress.allow` entry name exactly `ip` on `port`?
    pub fn names_address(&self, ip: IpAddr, port: u16) -> bool {
        self.allow.iter().any(|rule| match rule.host {
            HostPattern::Ip(named) => named == ip && rule.covers(&ip.to_string(), port),
            _ => false,
        })
    }

    /// The destination guard: may the sidecar connect to `ip:port`, which
    /// `host` (normalised; a name or the address itself) resolved to? See the
    /// module doc for the rules. An IPv4-mapped address is the IPv4 address
    /// (it is where the kernel connects), for exceptions too.
    pub fn check_address(
        &self,
        host: &str,
        ip: IpAddr,
        port: u16,
        local: &LocalNet,
    ) -> Result<(), Decision> {
        let ip = ip.to_canonical();
        if self.names_address(ip, port) {
            return Ok(());
        }
        let (class, embedded) = if local.gateways.iter().any(|g| g.to_canonical() == ip) {
            (AddressClass::Gateway, None)
        } else if local.own.iter().any(|o| o.to_canonical() == ip) {
            (AddressClass::Sidecar, None)
        } else {
            match classify(ip) {
                None => return Ok(()),
                Some(c) => (c.class, c.embedded),
            }
        };
        let is_name = host.parse::<IpAddr>().is_err();
        let private_name = is_name && self.allow_private.iter().any(|p| p.matches(host));
        if embedded.is_none() && class.relaxable() && private_name {
            return Ok(());
        }
        let what = match embedded {
            Some((form, inner)) => {
                format!("{ip}, the {form} form of {inner}, which is {class} address")
            }
            None => format!("{ip}, {class} address"),
        };
        let reason = if is_name {
            format!("{host} resolved to {what}; egress never connects there")
        } else {
            format!("{host} is {what}; egress never connects there")
        };
        Err(Decision {
            verdict: Verdict::Deny,
            rule: "destination-guard".into(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AllowRule;

    fn class_of(s: &str) -> Option<AddressClass> {
        classify(s.parse().unwrap()).map(|c| c.class)
    }

    #[test]
    fn ipv4_classes() {
        use AddressClass::*;
        for (ip, want) in [
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("10.1.2.3", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(Private)),
            ("100.64.0.1", Some(SharedCgnat)),
            ("100.127.255.255", Some(SharedCgnat)),
            ("100.128.0.1", None),
            ("169.254.1.1", Some(LinkLocal)),
            ("169.254.169.254", Some(Metadata)),
            ("100.100.100.200", Some(Metadata)),
            ("168.63.129.16", Some(Metadata)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("240.0.0.1", Some(Reserved)),
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("198.18.0.1", Some(Reserved)),
            ("192.0.0.8", Some(Reserved)),
        ] {
            assert_eq!(class_of(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv6_classes_and_embedded_forms() {
        use AddressClass::*;
        for (ip, want) in [
            ("2606:4700::1111", None),
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("fd00:ec2::254", Some(Metadata)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("fc00::1", Some(UniqueLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("fec0::1", Some(SiteLocal)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("2001:0:4136:e378::1", Some(Reserved)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(Metadata)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("::169.254.169.254", Some(Metadata)),
            ("::ffff:0:10.0.0.1", Some(Private)),
            ("64:ff9b::7f00:1", Some(Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(Metadata)),
            ("64:ff9b::808:808", None),
            ("64:ff9b:1::1", Some(Reserved)),
            ("2002:7f00:1::1", Some(Loopback)),
            ("2002:a9fe:a9fe::", Some(Metadata)),
            ("2002:0808:0808::1", None),
        ] {
            assert_eq!(class_of(ip), want, "{ip}");
        }
        let c = classify("64:ff9b::a9fe:a9fe".parse().unwrap()).unwrap();
        assert_eq!(
            c.embedded,
            Some((Embedding::Nat64, Ipv4Addr::new(169, 254, 169, 254)))
        );
    }

    fn policy(allow: &[&str], private: &[&str]) -> EgressPolicy {
        EgressPolicy {
            allow: allow.iter().map(|a| AllowRule::parse(a).unwrap()).collect(),
            allow_private: private
                .iter()
                .map(|p| HostPattern::parse(p).unwrap())
                .collect(),
            ..Default::default()
        }
    }

    fn check(p: &EgressPolicy, host: &str, ip: &str, port: u16) -> Result<(), Decision> {
        let local = LocalNet {
            gateways: vec!["172.18.0.1".parse().unwrap()],
            own: vec!["172.18.0.2".parse().unwrap()],
        };
        p.check_address(host, ip.parse().unwrap(), port, &local)
    }

    #[test]
    fn names_resolving_to_private_addresses_are_refused() {
        let p = policy(&["api.example.com", "internal.corp"], &[]);
        assert_eq!(check(&p, "api.example.com", "93.184.216.34", 443), Ok(()));
        let d = check(&p, "api.example.com", "127.0.0.1", 443).unwrap_err();
        assert_eq!(d.rule, "destination-guard");
        assert_eq!(
            d.reason,
            "api.example.com resolved to 127.0.0.1, a loopback address; egress never connects there"
        );
        let d = check(&p, "internal.corp", "10.0.0.5", 443).unwrap_err();
        assert!(
            d.reason.contains("a private (RFC 1918) address"),
            "{}",
            d.reason
        );
        let d = check(&p, "api.example.com", "64:ff9b::a9fe:a9fe", 443).unwrap_err();
        assert_eq!(
            d.reason,
            "api.example.com resolved to 64:ff9b::a9fe:a9fe, the NAT64 form of 169.254.169.254, which is a cloud metadata address; egress never connects there"
        );
        // Mapped addresses are the IPv4 address itself.
        let d = check(&p, "api.example.com", "::ffff:127.0.0.1", 443).unwrap_err();
        assert!(
            d.reason.contains("resolved to 127.0.0.1, a loopback"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn gateway_and_own_addresses_are_refused_even_for_private_names() {
        let p = policy(&["internal.corp"], &["internal.corp"]);
        let d = check(&p, "internal.corp", "172.18.0.1", 443).unwrap_err();
        assert!(d.reason.contains("the sidecar's gateway"), "{}", d.reason);
        let d = check(&p, "internal.corp", "172.18.0.2", 443).unwrap_err();
        assert!(d.reason.contains("the sidecar's own"), "{}", d.reason);
    }

    #[test]
    fn allow_private_relaxes_only_private_classes_in_native_form() {
        let p = policy(&["*.corp.example"], &["*.corp.example"]);
        for ok in ["10.0.0.5", "192.168.3.4", "100.64.1.1", "fd12::5"] {
            assert_eq!(check(&p, "git.corp.example", ok, 443), Ok(()), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "169.254.3.3",
            "100.100.100.200",
            "fd00:ec2::254",
            "fe80::1",
            "64:ff9b::a00:5",
            "::10.0.0.5",
            "224.0.0.1",
        ] {
            assert!(check(&p, "git.corp.example", bad, 443).is_err(), "{bad}");
        }
        // Not listed in allow_private.
        let q = policy(&["*.corp.example"], &["git.corp.example"]);
        assert!(check(&q, "wiki.corp.example", "10.0.0.5", 443).is_err());
    }

    #[test]
    fn an_allow_entry_naming_the_exact_address_and_port_wins() {
        let p = policy(
            &[
                "127.0.0.1:8443",
                "169.254.169.254:80",
                "origin.test",
                "172.18.0.1:9000",
            ],
            &[],
        );
        assert_eq!(check(&p, "127.0.0.1", "127.0.0.1", 8443), Ok(()));
        // The same address through a name, on the named port.
        assert_eq!(check(&p, "origin.test", "127.0.0.1", 8443), Ok(()));
        assert!(check(&p, "origin.test", "127.0.0.1", 443).is_err());
        assert_eq!(check(&p, "169.254.169.254", "169.254.169.254", 80), Ok(()));
        assert_eq!(check(&p, "172.18.0.1", "172.18.0.1", 9000), Ok(()));
        assert!(check(&p, "origin.test", "127.0.0.2", 8443).is_err());
    }
}
