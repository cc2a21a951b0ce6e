//! Outbound HTTP: what a guest may send through `wasi:http/outgoing-handler`, and how.
//!
//! Deny by default, like every grant, in three steps:
//!
//! 1. **Link once**: `wasi:http/outgoing-handler` and `wasi:http/types` are in every store's
//!    linker, but a component may import them only when its `grants.http` exists (checked at
//!    load with its other imports).
//! 2. **Derive each component's policy at load** ([`EgressPolicy`]): its allow-list, the
//!    headers built from host-held secrets for each origin, and the deployment's resolver and
//!    TLS roots. A bad entry, a header for an origin the list refuses or a missing secret is an
//!    error at load that names it.
//! 3. **Build each store's hooks** ([`Egress`]): each request the guest hands over is checked
//!    against the policy, sent by the host to the address it checked, bounded by the run's
//!    limits, and recorded with its operation and attempt.
//!
//! The host sends each request itself. It resolves the name and refuses loopback, private,
//! link-local, multicast and unspecified addresses unless an entry names them. It connects to
//! the very address it checked, sets `Host` from the checked URL (a guest cannot set it), never
//! follows redirects, adds the grant's secret headers last, and strips from the response every
//! header that carries a secret's value.

mod allow;
mod hooks;
mod resolve;
mod secrets;
mod send;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use tokio_rustls::TlsConnector;

pub use allow::{AllowList, Origin, Scheme};
pub(crate) use hooks::{Egress, EgressRun};
pub use resolve::{Resolver, special};
pub use secrets::{SecretSource, Secrets};

/// `grants.http` of a handler or worker.
///
/// ```toml
/// [handlers.grants.http]
/// allow = ["https://payments.example.com", "https://*.carrier.example:8443"]
/// headers = { "https://payments.example.com" = { authorization = "Bearer {{ secrets.PAYMENTS_TOKEN }}" } }
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// Origins the guest may send requests to (see [`AllowList`]). Empty allows nothing.
    pub allow: Vec<String>,
    /// Headers the host adds to every request for one origin of `allow`; values may use
    /// `{{ secrets.NAME }}`.
    #[serde(default)]
    pub headers: BTreeMap<String, BTreeMap<String, String>>,
}

/// The `[egress]` table: how the host reaches the origins grants allow.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSettings {
    /// Names answered with fixed addresses instead of DNS, as `/etc/hosts` does.
    #[serde(default)]
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
    /// A PEM file of certificate authorities trusted for `https` besides the Mozilla roots;
    /// relative to the config file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Outbound requests in flight on this host at once, all runs together (default 1,024);
    /// beyond it requests are refused.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

impl EgressSettings {
    /// Resolves a relative `ca_file` against `base`.
    pub fn resolve(&mut self, base: &Path) {
        if let Some(file) = &mut self.ca_file {
            *file = base.join(&*file);
        }
    }
}

/// Outbound requests in flight on one host, unless `[egress] max_connections` says otherwise.
const MAX_CONNECTIONS: usize = 1024;

/// What every policy of a deployment shares: its resolver, its TLS client and the host's slots
/// for requests in flight.
pub(crate) struct Network {
    resolver: Resolver,
    tls: TlsConnector,
    slots: Arc<tokio::sync::Semaphore>,
    max_connections: usize,
}

impl Network {
    pub(crate) fn new(settings: &EgressSettings) -> Result<Arc<Self>, String> {
        let extra = match &settings.ca_file {
            Some(file) => std::fs::read(file)
                .map_err(|e| format!("egress.ca_file: cannot read {}: {e}", file.display()))?,
            None => Vec::new(),
        };
        let max_connections = settings.max_connections.unwrap_or(MAX_CONNECTIONS).max(1);
        Ok(Arc::new(Self {
            resolver: Resolver::new(&settings.hosts),
            tls: send::tls_connector(&extra)?,
            slots: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            max_connections,
        }))
    }
}

/// The headers a grant adds to the requests for one origin, and the secrets they carry.
struct OriginHeaders {
    origin: Origin,
    headers: HeaderMap,
    secrets: Vec<Arc<str>>,
    /// The policy's other secrets: what a request to this origin must not carry.
    foreign: Arc<[Arc<str>]>,
}

/// One component's outbound policy: its allow-list and the secret headers of each origin.
pub(crate) struct EgressPolicy {
    allow: AllowList,
    headers: Vec<OriginHeaders>,
    /// Values of every secret the headers carry, stripped from responses.
    secrets: Arc<[Arc<str>]>,
    network: Arc<Network>,
}

impl EgressPolicy {
    /// The policy of `grant`, its headers built from `secrets`. The error names the entry,
    /// origin, header or secret that is wrong.
    pub(crate) fn new(
        grant: &HttpGrant,
        secrets: &Secrets,
        network: &Arc<Network>,
    ) -> Result<Self, String> {
        let allow =
            AllowList::parse(&grant.allow).map_err(|e| format!("grants.http.allow: {e}"))?;
        let mut headers = Vec::new();
        let mut used: Vec<Arc<str>> = Vec::new();
        for (origin, values) in &grant.headers {
            let context = |e: String| format!("grants.http.headers.\"{origin}\": {e}");
            let parsed = Origin::parse(origin).map_err(context)?;
            if !allow.admits(&parsed) {
                return Err(context("this origin is not in grants.http.allow".into()));
            }
            let mut map = HeaderMap::new();
            let mut carried = Vec::new();
            for (name, template) in values {
                let header = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| context(format!("`{name}` is not a header name")))?;
                let (text, secrets_used) = secrets.render(template).map_err(context)?;
                let mut value = HeaderValue::from_str(&text)
                    .map_err(|_| context(format!("the value of {name} is not a header value")))?;
                value.set_sensitive(true);
                map.insert(header, value);
                carried.extend(secrets_used);
            }
            let loopback = parsed.ip().is_some_and(|ip| ip.is_loopback());
            if !carried.is_empty() && parsed.scheme == Scheme::Http && !loopback {
                return Err(context(
                    "a secret is sent only over https (or http to a loopback address)".into(),
                ));
            }
            used.extend(carried.iter().cloned());
            headers.push(OriginHeaders {
                origin: parsed,
                headers: map,
                secrets: carried,
                foreign: Arc::new([]),
            });
        }
        for entry in &mut headers {
            entry.foreign = used
                .iter()
                .filter(|secret| !entry.secrets.contains(secret))
                .cloned()
                .collect();
        }
        Ok(Self {
            allow,
            headers,
            secrets: used.into(),
            network: Arc::clone(network),
        })
    }

    /// The headers the grant adds to requests for `origin`, if any.
    fn headers_of(&self, origin: &Origin) -> Option<&OriginHeaders> {
        self.headers.iter().find(|entry| entry.origin == *origin)
    }

    /// The secrets a request to `origin` must not carry: those held for other origins only.
    fn foreign_secrets(&self, origin: &Origin) -> Arc<[Arc<str>]> {
        let foreign = self
            .headers_of(origin)
            .map_or(&self.secrets, |entry| &entry.foreign);
        Arc::clone(foreign)
    }
}

/// Checks `grant` as loading would, against the deployment's `network`: the error names
/// what is wrong.
pub(crate) fn check_grant(
    grant: &HttpGrant,
    secrets: &Secrets,
    network: &Arc<Network>,
) -> Result<(), String> {
    EgressPolicy::new(grant, secrets, network).map(drop)
}
