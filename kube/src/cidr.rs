//! CIDR blocks (`10.0.0.0/8`, `fd00::/8`): parsing and membership, for the
//! NetworkPolicy evaluator's `ipBlock` and for the cluster ranges a render
//! excludes from the sidecar's egress.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One address block: an address and a prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A string that is not a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a CIDR block ({why})\n  fix: write an address, a slash and a prefix length with the host bits zero, e.g. 10.96.0.0/12 or fd00::/8")]
pub struct CidrError {
    pub text: String,
    pub why: &'static str,
}

impl Cidr {
    /// The block's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside the block. An IPv4 address is never inside
    /// an IPv6 block nor the reverse (Kubernetes compares families as they
    /// are written; `::ffff:a.b.c.d` is an IPv6 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }

    /// Whether every address of `other` lies inside this block.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// The `n`th address of the block (0 is the block's own address), or
    /// `None` past its end.
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        match self.addr {
            IpAddr::V4(a) => {
                let size = 1u128 << (32 - u32::from(self.prefix));
                (n < size).then(|| IpAddr::V4((u32::from(a) + n as u32).into()))
            }
            IpAddr::V6(a) => {
                let bits = 128 - u32::from(self.prefix);
                let fits = bits == 128 || n < (1u128 << bits);
                fits.then(|| IpAddr::V6((u128::from(a) + n).into()))
            }
        }
    }

    /// How many addresses the block holds, saturating at `u128::MAX`.
    pub fn size(&self) -> u128 {
        let bits = match self.addr {
            IpAddr::V4(_) => 32 - u32::from(self.prefix),
            IpAddr::V6(_) => 128 - u32::from(self.prefix),
        };
        1u128.checked_shl(bits).unwrap_or(u128::MAX)
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8, width: u32) -> bool {
    let shift = width - u32::from(prefix);
    if shift >= width {
        return true;
    }
    (a >> shift) == (b >> shift)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let err = |why| CidrError {
            text: text.to_string(),
            why,
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(|| err("no /prefix"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 3 {
            return Err(err("the prefix is not a number"));
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| err("the prefix is not a number"))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        if u32::from(prefix) > width {
            return Err(err("the prefix is longer than the address"));
        }
        let host_bits_zero = match addr {
            IpAddr::V4(a) => {
                let host = width - u32::from(prefix);
                host == 32 || u32::from(a) & ((1u32 << host) - 1) == 0
            }
            IpAddr::V6(a) => {
                let host = width - u32::from(prefix);
                host == 128 || u128::from(a) & ((1u128 << host) - 1) == 0
            }
        };
        if !host_bits_zero {
            return Err(err("host bits are set"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn membership_follows_the_prefix() {
        let net = c("10.96.0.0/12");
        assert!(net.contains("10.96.0.1".parse().unwrap()));
        assert!(net.contains("10.111.255.255".parse().unwrap()));
        assert!(!net.contains("10.112.0.0".parse().unwrap()));
        assert!(!net.contains("10.95.255.255".parse().unwrap()));
        assert!(c("0.0.0.0/0").contains("93.184.216.34".parse().unwrap()));
        assert!(c("169.254.169.254/32").contains("169.254.169.254".parse().unwrap()));
        assert!(!c("169.254.169.254/32").contains("169.254.169.253".parse().unwrap()));
        assert!(c("fd00::/8").contains("fd00:ec2::254".parse().unwrap()));
        assert!(c("::/0").contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn families_never_mix() {
        assert!(!c("0.0.0.0/0").contains("::1".parse().unwrap()));
        assert!(!c("::/0").contains("10.0.0.1".parse().unwrap()));
        assert!(!c("::/0").covers(&c("10.0.0.0/8")));
    }

    #[test]
    fn covers_needs_the_whole_block() {
        assert!(c("10.0.0.0/8").covers(&c("10.96.0.0/12")));
        assert!(!c("10.96.0.0/12").covers(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/8").covers(&c("11.0.0.0/12")));
    }

    #[test]
    fn bad_blocks_are_refused_with_the_reason() {
        for (text, why) in [
            ("10.0.0.0", "no /prefix"),
            ("10.0.0.1/8", "host bits are set"),
            ("10.0.0.0/33", "the prefix is longer than the address"),
            ("10.0.0.0/", "the prefix is not a number"),
            ("10.0.0.0/+8", "the prefix is not a number"),
            ("nope/8", "not an IP address"),
            ("fd00::1/8", "host bits are set"),
        ] {
            assert_eq!(text.parse::<Cidr>().unwrap_err().why, why, "{text}");
        }
    }

    #[test]
    fn nth_and_size_count_addresses() {
        let net = c("10.96.0.0/12");
        assert_eq!(net.size(), 1 << 20);
        assert_eq!(net.nth(10), Some("10.96.0.10".parse().unwrap()));
        assert_eq!(net.nth(1 << 20), None);
        assert_eq!(c("0.0.0.0/0").size(), 1 << 32);
        assert_eq!(c("::/0").size(), u128::MAX);
        assert_eq!(c("fd00::/120").nth(255), Some("fd00::ff".parse().unwrap()));
        assert_eq!(c("fd00::/120").nth(256), None);
    }

    #[test]
    fn display_round_trips() {
        for s in ["10.96.0.0/12", "0.0.0.0/0", "fd00:ec2::254/128", "::/0"] {
            assert_eq!(c(s).to_string(), s);
        }
    }
}
