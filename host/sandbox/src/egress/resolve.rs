//! From a checked origin to the one address the host connects to.
//!
//! A name is resolved here, by the host, once: through the deployment's `[egress] hosts`
//! first, then DNS. Every address it resolves to is checked, and the connection goes to the
//! first one that passes, so an answer that changes between the check and the connect cannot
//! slip another address in.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::allow::{AllowList, Origin};

/// Resolves names to addresses: fixed ones first, then the system's resolver.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    hosts: BTreeMap<String, Vec<IpAddr>>,
}

impl Resolver {
    /// A resolver that answers `hosts` (lowercase names) itself.
    pub fn new(hosts: &BTreeMap<String, Vec<IpAddr>>) -> Self {
        Self {
            hosts: hosts
                .iter()
                .map(|(name, ips)| (name.to_ascii_lowercase(), ips.clone()))
                .collect(),
        }
    }

    async fn resolve(&self, origin: &Origin, limit: Duration) -> Result<Vec<IpAddr>, String> {
        if let Some(ip) = origin.ip() {
            return Ok(vec![ip]);
        }
        if let Some(ips) = self.hosts.get(&origin.host) {
            return Ok(ips.clone());
        }
        let lookup = tokio::net::lookup_host((origin.host.as_str(), origin.port));
        let found = tokio::time::timeout(limit, lookup)
            .await
            .map_err(|_| {
                format!(
                    "resolving {} took over {} ms",
                    origin.host,
                    limit.as_millis()
                )
            })?
            .map_err(|e| format!("cannot resolve {}: {e}", origin.host))?;
        Ok(found.map(|address| address.ip()).collect())
    }

    /// The address to connect to for `origin`: the first it resolves to (within `limit`) that
    /// is public, or that `allow` names explicitly. The error says why none is.
    pub async fn address(
        &self,
        origin: &Origin,
        allow: &AllowList,
        limit: Duration,
    ) -> Result<SocketAddr, String> {
        let ips = self.resolve(origin, limit).await?;
        let mut refused = None;
        for ip in ips {
            let ip = canonical(ip);
            match special(ip) {
                Some(kind) if !allow.names_address(origin, ip) => {
                    refused.get_or_insert((ip, kind));
                }
                _ => return Ok(SocketAddr::new(ip, origin.port)),
            }
        }
        Err(match refused {
            Some((ip, kind)) => format!(
                "{} resolves to {ip}, a {kind} address that no entry of the grant names",
                origin.host
            ),
            None => format!("{} resolves to no address", origin.host),
        })
    }
}

/// An IPv4 address written as IPv6 is that IPv4 address: mapped (`::ffff:a.b.c.d`),
/// compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`).
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let embedded = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    };
    match v6.segments() {
        [0, 0, 0, 0, 0, 0, high, low] if high != 0 => embedded(high, low),
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => embedded(high, low),
        [0x2002, high, low, ..] => embedded(high, low),
        _ => ip,
    }
}

/// What kind of non-public address `ip` is, if it is one.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast or reserved")
    } else if (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (18..20).contains(&b))
        || ip.is_documentation()
    {
        Some("reserved")
    } else {
        None
    }
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        Some("private")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if ip.segments()[..3] == [0x64, 0xff9b, 1] || ip.segments()[..2] == [0x2001, 0] {
        Some("translated or tunnelled")
    } else if ip.segments()[..2] == [0x2001, 0xdb8] {
        Some("reserved")
    } else if ip.is_multicast() {
        Some("multicast or reserved")
    } else {
        None
    }
}
