//! Which hosts and addresses a source may reach.
//!
//! URLs come from job specs, so a job could otherwise point the function at the instance
//! metadata service or an internal network. The [`NetworkPolicy`] is function configuration
//! (environment), not job input, so an event cannot widen it:
//!
//! - `SLUICE_ALLOWED_HOSTS`: comma-separated host names (`api.example.com`, `*.example.com`);
//!   when set, every request and every redirect must go to one of them.
//! - `SLUICE_ALLOW_PRIVATE_NETWORKS=true`: allow loopback and private addresses (local
//!   testing, VPC-internal APIs). Off by default.
//!
//! Link-local addresses (169.254.0.0/16 — the metadata service — and fe80::/10) and the
//! unspecified address are always refused. The checks run on the initial URL, on every redirect
//! target, and on every address a host name resolves to, so a public name that resolves to a
//! private address is refused too.

use std::net::{IpAddr, SocketAddr};

use reqwest::Url;

/// See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    allowed_hosts: Option<Vec<String>>,
    allow_private: bool,
}

/// A request the policy refused; travels as the source of a reqwest error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Blocked(pub String);

impl NetworkPolicy {
    /// Reads `SLUICE_ALLOWED_HOSTS` and `SLUICE_ALLOW_PRIVATE_NETWORKS`.
    pub fn from_env() -> Self {
        let allowed_hosts = std::env::var("SLUICE_ALLOWED_HOSTS").ok().map(|v| {
            v.split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect()
        });
        let allow_private = std::env::var("SLUICE_ALLOW_PRIVATE_NETWORKS")
            .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes"));
        NetworkPolicy {
            allowed_hosts,
            allow_private,
        }
    }

    /// Only these hosts (`*.example.com` matches subdomains).
    pub fn with_allowed_hosts(mut self, hosts: Vec<String>) -> Self {
        self.allowed_hosts = Some(hosts);
        self
    }

    /// Allows loopback and private addresses.
    pub fn with_private_networks(mut self, allow: bool) -> Self {
        self.allow_private = allow;
        self
    }

    /// Checks a URL's scheme and host (and its address, when the host is an IP literal).
    pub fn check_url(&self, url: &Url) -> Result<(), Blocked> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Blocked(format!(
                "scheme {} is not http or https",
                url.scheme()
            )));
        }
        let Some(host) = url.host_str() else {
            return Err(Blocked("the URL has no host".into()));
        };
        let host = host.to_ascii_lowercase();
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            self.check_host_name(&host)?;
            return self.check_ip(ip);
        }
        self.check_host_name(&host)
    }

    fn check_host_name(&self, host: &str) -> Result<(), Blocked> {
        let Some(allowed) = &self.allowed_hosts else {
            return Ok(());
        };
        let ok = allowed.iter().any(|a| match a.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => host == a,
        });
        if ok {
            Ok(())
        } else {
            Err(Blocked(format!(
                "host {host} is not in SLUICE_ALLOWED_HOSTS"
            )))
        }
    }

    /// Checks one address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Blocked> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let (link_local, private) = match ip {
            IpAddr::V4(v4) => (
                v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast(),
                v4.is_loopback()
                    || v4.is_private()
                    || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64),
            ),
            IpAddr::V6(v6) => (
                (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_unspecified(),
                v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
            ),
        };
        if link_local {
            return Err(Blocked(format!(
                "address {ip} is link-local or unspecified (e.g. the metadata service)"
            )));
        }
        if private && !self.allow_private {
            return Err(Blocked(format!(
                "address {ip} is loopback or private (set SLUICE_ALLOW_PRIVATE_NETWORKS=true to allow)"
            )));
        }
        Ok(())
    }
}

/// DNS resolution that drops refused addresses (and fails when none is left).
#[derive(Debug, Clone)]
pub(crate) struct GuardedResolver(pub NetworkPolicy);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let kept: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match policy.check_ip(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused = Some(e);
                        false
                    }
                })
                .collect();
            if kept.is_empty() {
                let why = refused
                    .map(|e| e.0)
                    .unwrap_or_else(|| "no addresses".into());
                return Err(Box::new(Blocked(format!(
                    "{host} resolves to a refused address: {why}"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Finds a [`Blocked`] in an error's chain.
pub(crate) fn find_blocked(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(b) = e.downcast_ref::<Blocked>() {
            return Some(b.0.clone());
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn metadata_and_private_addresses() {
        let strict = NetworkPolicy::default();
        assert!(
            strict
                .check_url(&url("http://169.254.169.254/latest/"))
                .unwrap_err()
                .0
                .contains("link-local")
        );
        assert!(
            strict
                .check_url(&url("http://127.0.0.1:80/"))
                .unwrap_err()
                .0
                .contains("SLUICE_ALLOW_PRIVATE_NETWORKS")
        );
        assert!(strict.check_url(&url("http://10.1.2.3/")).is_err());
        assert!(
            strict
                .check_url(&url("http://[::ffff:169.254.169.254]/"))
                .is_err()
        );
        assert!(strict.check_url(&url("http://[fe80::1]/")).is_err());
        assert!(strict.check_url(&url("http://93.184.216.34/")).is_ok());
        assert!(strict.check_url(&url("file:///etc/passwd")).is_err());
        let local = NetworkPolicy::default().with_private_networks(true);
        assert!(local.check_url(&url("http://127.0.0.1:80/")).is_ok());
        // Link-local stays refused even when private networks are allowed.
        assert!(local.check_url(&url("http://169.254.169.254/")).is_err());
    }

    #[test]
    fn allow_list() {
        let p = NetworkPolicy::default()
            .with_allowed_hosts(vec!["api.example.com".into(), "*.data.org".into()]);
        assert!(p.check_url(&url("https://api.example.com/x")).is_ok());
        assert!(p.check_url(&url("https://eu.data.org/x")).is_ok());
        assert!(p.check_url(&url("https://data.org/x")).is_err());
        assert!(
            p.check_url(&url("https://evil.com/api.example.com"))
                .unwrap_err()
                .0
                .contains("not in SLUICE_ALLOWED_HOSTS")
        );
    }
}
