//! The allow-list of a grant: which origins a guest may send requests to.
//!
//! An entry gives a scheme, a host and a port, and nothing else:
//! - `https://payments.example.com` (port 443 implied), `http://api.internal:8080`;
//! - `https://*.carrier.example:8443`: any subdomain of `carrier.example`, not the name itself;
//! - `http://127.0.0.1:9000`, `http://[fd00::1]:80`, `http://10.0.0.0/8:80`: an address or a
//!   range. Only such entries let a request reach loopback, private, link-local, multicast or
//!   unspecified addresses, and a URL written with an IP literal matches only them.

use std::net::IpAddr;

use ipnet::IpNet;

/// A URL scheme a grant can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http`.
    Http,
    /// `https`.
    Https,
}

impl Scheme {
    /// The scheme named `name`, if it is one a grant can name.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "http" => Some(Self::Http),
            "https" => Some(Self::Https),
            _ => None,
        }
    }

    /// The port a URL of this scheme uses when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// Where a request goes: scheme, host (a lowercase name or an IP literal) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The scheme.
    pub scheme: Scheme,
    /// The host as written in the URL, lowercased, without brackets around IPv6.
    pub host: String,
    /// The port, the scheme's default when the URL names none.
    pub port: u16,
}

impl Origin {
    /// The origin of a URL's scheme and authority, e.g. `https`, `api.example.com:8443`.
    pub fn new(scheme: Scheme, host: &str, port: Option<u16>) -> Self {
        Self {
            scheme,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase(),
            port: port.unwrap_or(scheme.default_port()),
        }
    }

    /// Parses an origin written `scheme://host[:port]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let entry = Entry::parse(text)?;
        match entry.host {
            HostPattern::Name(host) => Ok(Self::new(entry.scheme, &host, Some(entry.port))),
            HostPattern::Net(net) if net.prefix_len() == net.max_prefix_len() => Ok(Self::new(
                entry.scheme,
                &net.addr().to_string(),
                Some(entry.port),
            )),
            _ => Err(format!("`{text}` is a pattern, not one origin")),
        }
    }

    /// The `Host` header of a request to this origin: the host (IPv6 in brackets), and the
    /// port unless it is the scheme's.
    pub fn host_header(&self) -> String {
        let host = match self.ip() {
            Some(IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.host.clone(),
        };
        if self.port == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The host as an IP address, when the URL wrote one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(ip)) => write!(f, "{}://[{ip}]:{}", self.scheme.as_str(), self.port),
            _ => write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Exactly this name.
    Name(String),
    /// Any name ending in this suffix (which starts with a dot).
    Subdomains(String),
    /// An address or a range of addresses.
    Net(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    scheme: Scheme,
    host: HostPattern,
    port: u16,
}

impl Entry {
    fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{text}`: {why}");
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://host[:port]"))?;
        let scheme =
            Scheme::parse(scheme).ok_or_else(|| bad("the scheme must be http or https"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['?', '#', '@']) {
            return Err(bad(
                "an entry names scheme, host and port only (no path, query or user)",
            ));
        }
        let (host, port) = split_port(rest).map_err(|why| bad(&why))?;
        let port = port.unwrap_or(scheme.default_port());
        let host = if let Some(net) = parse_net(host) {
            HostPattern::Net(net)
        } else if host.contains('/') {
            return Err(bad(
                "an entry names scheme, host and port only (no path, query or user)",
            ));
        } else if let Some(suffix) = host.strip_prefix("*.") {
            check_name(suffix).map_err(|why| bad(&why))?;
            HostPattern::Subdomains(format!(".{}", suffix.to_ascii_lowercase()))
        } else {
            check_name(host).map_err(|why| bad(&why))?;
            HostPattern::Name(host.to_ascii_lowercase())
        };
        Ok(Self { scheme, host, port })
    }

    fn admits(&self, origin: &Origin) -> bool {
        if self.scheme != origin.scheme || self.port != origin.port {
            return false;
        }
        match (&self.host, origin.ip()) {
            (HostPattern::Net(net), Some(ip)) => net.contains(&ip),
            (HostPattern::Name(name), None) => *name == origin.host,
            (HostPattern::Subdomains(suffix), None) => {
                origin.host.len() > suffix.len() && origin.host.ends_with(suffix.as_str())
            }
            _ => false,
        }
    }

    fn names_address(&self, origin: &Origin, ip: IpAddr) -> bool {
        self.scheme == origin.scheme
            && self.port == origin.port
            && matches!(&self.host, HostPattern::Net(net) if net.contains(&ip))
    }
}

/// Splits `host[:port]` (IPv6 in brackets); the port, when given, must be a number.
fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(inner) = text.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or("an IPv6 address must be closed with `]`")?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            _ => (text, None),
        }
    };
    let port = port
        .map(|port| {
            port.parse::<u16>()
                .ok()
                .filter(|port| *port > 0)
                .ok_or_else(|| format!("`{port}` is not a port"))
        })
        .transpose()?;
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    Ok((host, port))
}

fn parse_net(host: &str) -> Option<IpNet> {
    host.parse::<IpNet>()
        .ok()
        .or_else(|| host.parse::<IpAddr>().ok().map(IpNet::from))
}

fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a host name (`*.` is allowed only at the start)"
        ))
    }
}

/// The origins a grant admits. Empty admits nothing.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    entries: Vec<Entry>,
}

impl AllowList {
    /// Parses every entry; the error names the first bad one and why.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let entries = entries
            .iter()
            .map(|entry| Entry::parse(entry.trim()))
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// Whether a request to `origin` may be sent at all.
    pub fn admits(&self, origin: &Origin) -> bool {
        self.entries.iter().any(|entry| entry.admits(origin))
    }

    /// Whether an entry names address `ip` (alone or in a range) for `origin`'s scheme and
    /// port: only then may a request reach an address that is otherwise refused.
    pub fn names_address(&self, origin: &Origin, ip: IpAddr) -> bool {
        self.entries
            .iter()
            .any(|entry| entry.names_address(origin, ip))
    }

    /// Whether the list admits nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
