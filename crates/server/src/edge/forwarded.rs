//! The client behind trusted proxies: a request that arrives from a proxy
//! listed in `server.trusted_proxies` is counted against the address that
//! proxy reports, from `Forwarded` (RFC 7239) or, without it, `X-Forwarded-For`.
//!
//! The list is read from the right (the hop nearest to us) while the hop
//! that wrote the entry is trusted: a client can put anything at the left of
//! the header, but not past a proxy we trust, which appends what it saw.
//! An entry that is not an address (`unknown`, an obfuscated name) stops the
//! walk at the proxy that wrote it.

use std::net::IpAddr;

use axum::http::header::FORWARDED;
use axum::http::{HeaderMap, HeaderName};

use crate::config::IpNet;

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The address a request is counted under, arriving from `peer`.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = if headers.contains_key(FORWARDED) {
        headers
            .get_all(FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(forwarded_for)
            .collect()
    } else {
        headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect()
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        if !is_trusted(client) {
            break;
        }
        match parse_node(hop) {
            Some(ip) => client = ip,
            None => break,
        }
    }
    client
}

/// The `for=` parameter of one `Forwarded` element ("" when it has none).
fn forwarded_for(element: &str) -> &str {
    element
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
        .map_or("", |(_, value)| value.trim())
}

/// An address in either header: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`,
/// `"[2001:db8::1]:8080"`, quoted or not.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_are_the_client() {
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &[]), ip("192.0.2.1"));
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &trusted), ip("192.0.2.1"));
    }

    #[test]
    fn trusted_proxies_report_the_client() {
        let trusted = nets(&["10.0.0.0/8", "192.0.2.7"]);
        let peer = ip("10.1.2.3");
        // The rightmost untrusted hop, not what the client wrote on the left.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 192.0.2.7")]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.9"));
        // Several header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.9"));
        // Forwarded wins over X-Forwarded-For; ports, quotes and brackets.
        let h = headers(&[
            (
                "forwarded",
                r#"for="[2001:db8::1]:4711";proto=https, for=192.0.2.7:80"#,
            ),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("2001:db8::1"));
        // An unknown hop stops at the proxy that wrote it.
        let h = headers(&[("forwarded", "for=unknown, for=192.0.2.7")]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("192.0.2.7"));
        // No header: the proxy itself.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
    }
}
