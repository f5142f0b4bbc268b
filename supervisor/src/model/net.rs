//! IP networks as the settings name them: `http.trusted_proxies` parsed into
//! [`TrustedProxies`]. Plain data and parsing; no I/O. What a trusted peer's headers are
//! believed about is `edge::forwarded`'s business, not this module's.

use ipnet::IpNet;
use std::net::IpAddr;

/// The networks whose peers are believed about the client (`http.trusted_proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

/// A `trusted_proxies` entry that is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?}: {message}")]
pub struct BadEntry {
    pub entry: String,
    pub message: String,
}

impl TrustedProxies {
    /// Parses CIDR entries (`10.0.0.0/8`, `::1/128`; a bare address is one host). An entry
    /// with host bits set (`10.0.0.1/8`) is refused: it is most likely a typo for a host or
    /// for the network, and guessing which could trust far more than meant.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, BadEntry> {
        let nets = entries
            .iter()
            .map(|e| parse_net(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { nets })
    }

    /// True when nobody is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` (canonicalised) lies in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

fn parse_net(entry: &str) -> Result<IpNet, BadEntry> {
    let bad = |message: String| BadEntry {
        entry: entry.to_owned(),
        message,
    };
    let s = entry.trim();
    if s.is_empty() {
        return Err(bad("an empty entry".into()));
    }
    if !s.contains('/') {
        return s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            bad("not an IP address or network (expected CIDR notation, e.g. 10.0.0.0/8 or fd00::/8)".into())
        });
    }
    let net: IpNet = s.parse().map_err(|_| {
        bad("not an IP network in CIDR notation (e.g. 10.0.0.0/8, fd00::/8; the prefix length is at most 32 for IPv4 and 128 for IPv6)".into())
    })?;
    let exact = net.trunc();
    if exact != net {
        return Err(bad(format!(
            "host bits are set: the network is {exact}, a single host is {}/{}",
            net.addr(),
            net.max_prefix_len()
        )));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(entries).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_entries_parse_and_match() {
        let t = trusted(&[
            "10.0.0.0/8",
            "127.0.0.1/32",
            "::1/128",
            "fd00::/8",
            "192.0.2.7",
        ]);
        for yes in ["10.1.2.3", "127.0.0.1", "::1", "fd12::1", "192.0.2.7"] {
            assert!(t.contains(ip(yes)), "{yes}");
        }
        for no in ["11.0.0.1", "127.0.0.2", "::2", "fe80::1", "192.0.2.8"] {
            assert!(!t.contains(ip(no)), "{no}");
        }
        // An IPv4 peer of a dual-stack listener matches IPv4 networks.
        assert!(t.contains(ip("::ffff:10.9.9.9")));
        assert!(TrustedProxies::parse::<&str>(&[]).unwrap().is_empty());
    }

    #[test]
    fn bad_cidr_entries_are_named() {
        for (entry, says) in [
            ("10.0.0.300/8", "CIDR notation"),
            ("10.0.0.0/33", "at most 32"),
            ("10.0.0.0/", "CIDR notation"),
            ("localhost", "not an IP address"),
            ("", "empty"),
            (
                "10.0.0.1/8",
                "the network is 10.0.0.0/8, a single host is 10.0.0.1/32",
            ),
            ("2001:db8::1/32", "the network is 2001:db8::/32"),
        ] {
            let e = TrustedProxies::parse(&["127.0.0.1/32", entry]).unwrap_err();
            assert_eq!(e.entry, entry);
            let text = e.to_string();
            assert!(text.contains(&format!("{entry:?}")), "{text}");
            assert!(text.contains(says), "{entry}: {text}");
        }
    }
}
