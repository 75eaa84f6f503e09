//! The SSRF guard. An endpoint's host is resolved when the deliverer
//! connects, every address is checked, and the connection goes to a checked
//! address (no second lookup that a DNS answer could change in between).
//! Loopback, private, link-local (cloud metadata), CGNAT, unspecified,
//! multicast, documentation and reserved ranges are refused, and their IPv6
//! forms, IPv4-mapped ones included, unless a network of `WA_DELIVER_ALLOW`
//! holds the address.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;

/// Networks endpoints may reach although they are not public.
#[derive(Debug, Clone, Default)]
pub struct NetGuard {
    allow: Arc<Vec<IpNet>>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardError {
    #[error("{host} resolves to {ip}, a {kind} address: refused (allow it with WA_DELIVER_ALLOW)")]
    Refused {
        host: String,
        ip: IpAddr,
        kind: &'static str,
    },
    #[error("{host} does not resolve: {reason}")]
    Unresolved { host: String, reason: String },
}

impl NetGuard {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self {
            allow: Arc::new(allow),
        }
    }

    /// `None` when `ip` may be connected to, else why not.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = canonical(ip);
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return None;
        }
        non_public_kind(ip)
    }

    /// Every address of `host` that may be connected to; an error when it
    /// has none (naming the first refused one).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, GuardError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addresses: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|error| GuardError::Unresolved {
                    host: host.to_owned(),
                    reason: error.to_string(),
                })?
                .collect(),
        };
        self.checked(host, addresses)
    }

    /// The addresses a lookup of `host` gave that may be connected to; an
    /// error naming the first refused one when none may.
    pub fn checked(
        &self,
        host: &str,
        addresses: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, GuardError> {
        let mut refused = None;
        let allowed: Vec<SocketAddr> = addresses
            .into_iter()
            .filter(|addr| match self.refusal(addr.ip()) {
                None => true,
                Some(kind) => {
                    refused.get_or_insert((addr.ip(), kind));
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), refused) {
            (false, _) => Ok(allowed),
            (true, Some((ip, kind))) => Err(GuardError::Refused {
                host: host.to_owned(),
                ip,
                kind,
            }),
            (true, None) => Err(GuardError::Unresolved {
                host: host.to_owned(),
                reason: "no addresses".to_owned(),
            }),
        }
    }
}

/// An IPv4-mapped or IPv4-compatible IPv6 address is judged as the IPv4 one.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn non_public_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if a == 100 && (64..128).contains(&b) {
        Some("carrier-grade NAT")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast or reserved")
    } else if ip.is_documentation() || (a == 198 && (b == 18 || b == 19)) || (a == 192 && b == 0) {
        Some("reserved")
    } else {
        None
    }
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast or reserved")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local (cloud metadata)")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private")
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        Some("reserved")
    } else if first == 0x0064 && ip.segments()[1] == 0xff9b {
        // NAT64 embeds an IPv4 address that could be anything.
        let [.., a, b, c, d] = ip.octets();
        v4_kind(Ipv4Addr::new(a, b, c, d))
    } else if ip.segments()[..6] == [0; 6] {
        // IPv4-compatible (::a.b.c.d), deprecated but still routable by some stacks.
        let [.., a, b, c, d] = ip.octets();
        v4_kind(Ipv4Addr::new(a, b, c, d)).or(Some("reserved"))
    } else {
        None
    }
}

/// hyper-util's resolver interface over [`NetGuard::resolve`]: the HTTP
/// connector connects only to what this returns. IP-literal hosts never reach
/// a resolver, so [`crate::http`] checks those before connecting.
#[derive(Clone)]
pub struct GuardedResolver(pub NetGuard);

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, GuardError>> + Send>>;

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = GuardError;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.0.clone();
        Box::pin(async move {
            // The connector sets the port itself; 0 is a placeholder.
            let addresses = guard.resolve(name.as_str(), 0).await?;
            Ok(addresses.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(guard: &NetGuard, ip: &str) -> bool {
        guard.refusal(ip.parse().unwrap()).is_some()
    }

    #[test]
    fn non_public_addresses_are_refused_in_every_spelling() {
        let guard = NetGuard::default();
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.5",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "ff02::1",
        ] {
            assert!(refused(&guard, ip), "{ip} should be refused");
        }
        for ip in [
            "93.184.215.14",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!refused(&guard, ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn the_allow_list_opens_only_its_networks() {
        let guard = NetGuard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(!refused(&guard, "127.0.0.1"));
        assert!(!refused(&guard, "::ffff:127.0.0.1"));
        assert!(refused(&guard, "169.254.169.254"));
        assert!(refused(&guard, "::1"));
    }

    #[test]
    fn a_name_is_refused_when_every_address_it_resolves_to_is() {
        let guard = NetGuard::default();
        let metadata: SocketAddr = "169.254.169.254:80".parse().unwrap();
        let public: SocketAddr = "93.184.215.14:80".parse().unwrap();
        let error = guard
            .checked("metadata.example", vec![metadata])
            .unwrap_err();
        assert!(
            matches!(
                error,
                GuardError::Refused {
                    kind: "link-local (cloud metadata)",
                    ..
                }
            ),
            "{error}"
        );
        // A mixed answer keeps only the public address: that is where it connects.
        assert_eq!(
            guard
                .checked("mixed.example", vec![metadata, public])
                .unwrap(),
            vec![public]
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        let error = NetGuard::default()
            .resolve("localhost", 80)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                GuardError::Refused {
                    kind: "loopback",
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("WA_DELIVER_ALLOW"));
    }
}
