//! The address of the client behind a request, which rate limits count by and events record: the connection's
//! peer, or, when that peer is a reverse proxy the operator named in `server.trusted_proxies`, the address the
//! proxies report in `X-Forwarded-For`.
//!
//! A client can write any `X-Forwarded-For` it likes, and a proxy appends the address it received the request
//! from. So the header is read from its end (the nearest hop) backwards, through the trusted proxies only: the
//! first address that is not a trusted proxy is the client. Whatever a client wrote before that is never read,
//! so nobody gets a fresh allowance by inventing addresses. A hop that is no address (`unknown`, garbage) ends
//! the walk at the last proxy that named it, and at most [`MAX_HOPS`] hops are read. With no proxies configured,
//! or a peer not among them, the header is ignored altogether, as it has to be when clients reach the service
//! directly. A trusted network trusts every host in it, so only the proxies' own addresses belong in the list.

use axum::http::HeaderMap;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// The header reverse proxies append the address of their own client to.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Most hops read back from the end of `X-Forwarded-For`: a request passes few proxies, and a client can make
/// the header as long as the server's header limit allows.
const MAX_HOPS: usize = 16;

/// The reverse proxies whose `X-Forwarded-For` is believed (`server.trusted_proxies`): addresses or networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Proxies given as addresses (`10.0.0.5`, `::1`) or networks (`10.0.0.0/24`, `fd00::/64`). A network
    /// of everything (`0.0.0.0/0`, `::/0`) is refused: it would let every client name its own address.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        entries
            .iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                let net = IpNet::from_str(entry)
                    .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                    .map_err(|_| format!("{entry:?} is neither an IP address nor a network such as 10.0.0.0/24"))?;
                let net = canonical(net.trunc());
                if net.prefix_len() == 0 {
                    return Err(format!(
                        "{entry:?} trusts every address, so any client could name its own; list the proxies"
                    ));
                }
                Ok(net)
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `ip` is one of the trusted proxies.
    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request that arrived from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        // Every X-Forwarded-For line, in order, makes one list; read from the end.
        let hops = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .rev()
            .flat_map(|line| line.as_bytes().rsplit(|&b| b == b','))
            .take(MAX_HOPS);
        let mut client = peer;
        for hop in hops {
            match hop_address(hop) {
                Some(ip) if self.trusts(ip) => client = ip,
                Some(ip) => return ip,
                None => return client,
            }
        }
        client
    }
}

/// `net` with an IPv4-mapped IPv6 network (`::ffff:10.0.0.0/120`) written as the IPv4 network it is
/// (`10.0.0.0/24`): addresses are compared in their canonical form, in which a mapped address is IPv4.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        net => net,
    }
}

/// One `X-Forwarded-For` entry as an address: `203.0.113.7`, `2001:db8::1`, and the forms with a port some
/// proxies write (`203.0.113.7:5123`, `[2001:db8::1]:5123`).
fn hop_address(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(hop).ok()?.trim();
    let ip = IpAddr::from_str(hop)
        .or_else(|_| SocketAddr::from_str(hop).map(|addr| addr.ip()))
        .ok()?;
    Some(ip.to_canonical())
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Entries are read as any YAML scalar, then as text: an environment override is split at its commas and
        // each item read as YAML, so `…TRUSTED_PROXIES=10` arrives as the number 10, which deserves the same
        // "neither an IP address nor a network" as any other entry that is none, not serde's "invalid type".
        let entries = Vec::<serde_norway::Value>::deserialize(deserializer)?
            .into_iter()
            .map(|entry| match entry {
                serde_norway::Value::String(text) => Ok(text),
                serde_norway::Value::Number(number) => Ok(number.to_string()),
                serde_norway::Value::Bool(flag) => Ok(flag.to_string()),
                other => Err(serde::de::Error::custom(format!(
                    "each entry must be an IP address or a network such as 10.0.0.0/24, not {other:?}"
                ))),
            })
            .collect::<Result<Vec<String>, D::Error>>()?;
        Self::parse(&entries).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn forwarded(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_str(line).expect("header value"));
        }
        headers
    }

    fn proxies(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(entries).expect("proxies")
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let none = TrustedProxies::default();
        assert_eq!(none.client(ip("10.0.0.5"), &forwarded(&["1.2.3.4"])), ip("10.0.0.5"));
    }

    #[test]
    fn a_peer_that_is_no_trusted_proxy_is_the_client_whatever_it_forwards() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            trusted.client(ip("198.51.100.9"), &forwarded(&["1.2.3.4"])),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn the_client_is_the_nearest_hop_that_is_no_trusted_proxy() {
        let trusted = proxies(&["10.0.0.0/8", "192.0.2.1"]);
        // The client wrote 6.6.6.6 itself; the outer proxy appended its client, the inner proxy the outer one.
        let headers = forwarded(&["6.6.6.6, 203.0.113.7, 192.0.2.1"]);
        assert_eq!(trusted.client(ip("10.0.0.5"), &headers), ip("203.0.113.7"));
        // The same across several header lines.
        let headers = forwarded(&["6.6.6.6", "203.0.113.7", "192.0.2.1"]);
        assert_eq!(trusted.client(ip("10.0.0.5"), &headers), ip("203.0.113.7"));
    }

    #[test]
    fn a_hop_that_is_no_address_ends_the_walk_at_the_proxy_that_wrote_it() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            trusted.client(ip("10.0.0.5"), &forwarded(&["unknown, 10.0.0.6"])),
            ip("10.0.0.6")
        );
        assert_eq!(
            trusted.client(ip("10.0.0.5"), &forwarded(&["1.2.3.4, "])),
            ip("10.0.0.5")
        );
        // No header at all: the proxy itself.
        assert_eq!(trusted.client(ip("10.0.0.5"), &HeaderMap::new()), ip("10.0.0.5"));
    }

    #[test]
    fn addresses_with_ports_and_mapped_addresses_are_read() {
        let trusted = proxies(&["127.0.0.1", "::1"]);
        assert_eq!(
            trusted.client(ip("::1"), &forwarded(&["203.0.113.7:5123"])),
            ip("203.0.113.7")
        );
        assert_eq!(
            trusted.client(ip("::1"), &forwarded(&["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
        // An IPv4 proxy seen on a dual-stack socket, and a client written as IPv4-mapped.
        assert_eq!(
            trusted.client(ip("::ffff:127.0.0.1"), &forwarded(&["::ffff:203.0.113.7"])),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn a_header_of_trusted_hops_only_names_its_first() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            trusted.client(ip("10.0.0.5"), &forwarded(&["10.1.1.1, 10.2.2.2"])),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn only_the_last_hops_are_read() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let mut line = vec!["203.0.113.7"];
        line.extend(std::iter::repeat_n("10.0.0.1", MAX_HOPS));
        // Every hop read is trusted, so the walk stops at the last one it read, never reaching the client's.
        assert_eq!(
            trusted.client(ip("10.0.0.5"), &forwarded(&[&line.join(",")])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn entries_that_are_no_address_or_network_are_refused_by_name() {
        let err = TrustedProxies::parse(&["10.0.0.0/8", "proxy.local"]).expect_err("a host name");
        assert!(err.contains("\"proxy.local\""), "{err}");
        assert!(TrustedProxies::parse(&["10.0.0.0/33"]).is_err());
        // A network written with host bits set still means the network.
        assert_eq!(proxies(&["10.1.2.3/8"]), proxies(&["10.0.0.0/8"]));
    }

    #[test]
    fn entries_that_yaml_reads_as_numbers_or_flags_are_refused_as_no_address() {
        for (yaml, entry) in [("[10]", "\"10\""), ("[1.5]", "\"1.5\""), ("[true]", "\"true\"")] {
            let err = serde_norway::from_str::<TrustedProxies>(yaml)
                .expect_err(yaml)
                .to_string();
            assert!(
                err.contains(entry) && err.contains("neither an IP address nor a network"),
                "{err}"
            );
        }
        let err = serde_norway::from_str::<TrustedProxies>("[[10.0.0.1]]")
            .expect_err("a nested list")
            .to_string();
        assert!(err.contains("each entry must be an IP address"), "{err}");
        let trusted = serde_norway::from_str::<TrustedProxies>("['10.0.0.0/8', '::1']").expect("addresses");
        assert!(trusted.trusts("10.1.2.3".parse().expect("an address")));
    }

    #[test]
    fn a_network_of_every_address_is_refused() {
        for everything in ["0.0.0.0/0", "::/0"] {
            let err = TrustedProxies::parse(&[everything]).expect_err(everything);
            assert!(err.contains("trusts every address"), "{err}");
        }
    }

    #[test]
    fn proxies_written_as_ipv4_mapped_addresses_are_trusted_as_ipv4() {
        assert_eq!(proxies(&["::ffff:10.0.0.5"]), proxies(&["10.0.0.5"]));
        assert_eq!(proxies(&["::ffff:10.0.0.0/104"]), proxies(&["10.0.0.0/8"]));
        let trusted = proxies(&["::ffff:10.0.0.0/120"]);
        assert_eq!(
            trusted.client(ip("10.0.0.7"), &forwarded(&["203.0.113.7"])),
            ip("203.0.113.7")
        );
        // A network wider than the mapped range stays IPv6.
        assert_eq!(proxies(&["::ffff:0:0/95"]).0[0].prefix_len(), 95);
    }

    #[test]
    fn a_forwarded_ipv6_client_is_read_whole() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            trusted.client(ip("10.0.0.5"), &forwarded(&["2001:db8:1:2::99"])),
            ip("2001:db8:1:2::99")
        );
    }
}
