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

    /// Checks one address. An IPv6 address that carries an IPv4 address (IPv4-mapped
    /// `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4
    /// `2002:AABB:CCDD::`) is checked as that IPv4 address too, so a private or link-local
    /// target cannot hide in IPv6 form. The local-use NAT64 prefix `64:ff9b:1::/48` is private
    /// whatever it embeds.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Blocked> {
        let mut private = false;
        if let IpAddr::V6(v6) = ip {
            let s = v6.segments();
            private |= s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1;
            for v4 in embedded_ipv4(v6) {
                self.check_class(IpAddr::V4(v4), ip, false)?;
            }
        }
        self.check_class(ip, ip, private)
    }

    /// Refuses `ip` when it is link-local, or private (or `private` is set) without the switch;
    /// `shown` is the address as requested, named in the error.
    fn check_class(&self, ip: IpAddr, shown: IpAddr, private: bool) -> Result<(), Blocked> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let (link_local, private) = match ip {
            IpAddr::V4(v4) => (
                v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast(),
                private
                    || v4.is_loopback()
                    || v4.is_private()
                    || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64),
            ),
            IpAddr::V6(v6) => (
                (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_unspecified(),
                private || v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
            ),
        };
        let named = if ip == shown {
            format!("address {ip}")
        } else {
            format!("address {shown} (IPv4 {ip})")
        };
        if link_local {
            return Err(Blocked(format!(
                "{named} is link-local or unspecified (e.g. the metadata service)"
            )));
        }
        if private && !self.allow_private {
            return Err(Blocked(format!(
                "{named} is loopback or private (set SLUICE_ALLOW_PRIVATE_NETWORKS=true to allow)"
            )));
        }
        Ok(())
    }
}

/// The IPv4 addresses an IPv6 address carries: IPv4-compatible `::a.b.c.d` (not `::` or
/// `::1`), NAT64 `64:ff9b::/96` and the `/96` form of `64:ff9b:1::/48` (last 32 bits), the
/// `/48` form of `64:ff9b:1::/48` (bits 48–63 and 72–87, RFC 6052), and 6to4 `2002::/16`
/// (bits 16–47). IPv4-mapped `::ffff:a.b.c.d` is unwrapped by the caller.
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Vec<std::net::Ipv4Addr> {
    use std::net::Ipv4Addr;
    let s = v6.segments();
    let o = v6.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let mut out = Vec::new();
    if s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1) {
        out.push(last);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        out.push(last);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        // Either form may be in use; the other then holds zeros, which mean nothing.
        let at_48 = Ipv4Addr::new(o[6], o[7], o[9], o[10]);
        out.extend([at_48, last].into_iter().filter(|a| !a.is_unspecified()));
    }
    if s[0] == 0x2002 {
        out.push(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    out
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
        assert!(local.check_url(&url("http://[::1]/")).is_ok());
        // Link-local stays refused even when private networks are allowed.
        assert!(local.check_url(&url("http://169.254.169.254/")).is_err());
    }

    #[test]
    fn ipv4_inside_ipv6_is_checked_as_ipv4() {
        let strict = NetworkPolicy::default();
        let local = NetworkPolicy::default().with_private_networks(true);
        let refused =
            |p: &NetworkPolicy, a: &str| p.check_ip(a.parse().unwrap()).err().map(|b| b.0);
        // The metadata service and loopback in every IPv6 form that embeds an IPv4 address.
        for metadata in [
            "64:ff9b::a9fe:a9fe",       // NAT64 /96
            "64:ff9b:1::a9fe:a9fe",     // local-use NAT64, /96 form
            "64:ff9b:1:a9fe:a9:fe00::", // local-use NAT64, /48 form
            "2002:a9fe:a9fe::1",        // 6to4
            "::a9fe:a9fe",              // IPv4-compatible
            "::ffff:a9fe:a9fe",         // IPv4-mapped
        ] {
            for p in [&strict, &local] {
                let why = refused(p, metadata).unwrap_or_else(|| panic!("{metadata} allowed"));
                assert!(
                    why.contains("169.254.169.254") && why.contains("link-local"),
                    "{metadata}: {why}"
                );
            }
        }
        for private in [
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "2002:c0a8:0101::",
            "::7f00:1",
            "2002:6440:1::",
        ] {
            let why = refused(&strict, private).unwrap_or_else(|| panic!("{private} allowed"));
            assert!(
                why.contains("SLUICE_ALLOW_PRIVATE_NETWORKS"),
                "{private}: {why}"
            );
            assert!(refused(&local, private).is_none(), "{private}");
        }
        // The local-use NAT64 prefix is private whatever it embeds.
        assert!(refused(&strict, "64:ff9b:1::808:808").is_some());
        // Public IPv4 addresses behind NAT64 or 6to4 stay reachable.
        for public in ["64:ff9b::808:808", "2002:808:808::1", "2606:4700::1111"] {
            assert_eq!(refused(&strict, public), None, "{public}");
        }
        assert!(
            strict
                .check_url(&url("http://[64:ff9b::a9fe:a9fe]/latest/"))
                .is_err()
        );
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
