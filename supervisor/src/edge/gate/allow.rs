//! Channel allow lists: the parse of an `allow_from` entry into the network a client must
//! be in. The check itself runs in the compiled gate (`edge::gate`); nothing here reads a
//! request.

use ipnet::IpNet;
use std::net::IpAddr;

/// An `allow_from` entry that is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowError {
    #[error("{0:?} is not an IP address or CIDR (allow_from)")]
    NotANetwork(String),
    #[error(
        "{entry:?} has host bits set (allow_from): write {network} for the network, or the bare address for one host"
    )]
    HostBits { entry: String, network: IpNet },
}

/// Parses an allow list entry: a CIDR, or a bare address (one host).
pub fn parse_allow(entry: &str) -> Result<IpNet, AllowError> {
    let e = entry.trim();
    let net = e
        .parse::<IpNet>()
        .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| AllowError::NotANetwork(entry.to_owned()))?;
    if net.trunc() != net {
        // `192.0.2.7/24` allows the whole /24: almost always a mistake for one host.
        return Err(AllowError::HostBits {
            entry: entry.to_owned(),
            network: net.trunc(),
        });
    }
    // Clients are compared in their canonical form (an IPv4-mapped IPv6 address as IPv4).
    Ok(match net {
        IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
            Some(v4) if v6.prefix_len() >= 96 => {
                IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net)
            }
            _ => net,
        },
        v4 => v4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_entries_parse_as_cidrs_or_hosts() {
        assert!(
            parse_allow("10.0.0.0/8")
                .unwrap()
                .contains(&"10.1.2.3".parse::<IpAddr>().unwrap())
        );
        assert!(
            parse_allow("::1")
                .unwrap()
                .contains(&"::1".parse::<IpAddr>().unwrap())
        );
        assert!(parse_allow("2001:db8::/32").is_ok());
        assert!(parse_allow("10.0.0.0/33").is_err());
        assert!(parse_allow("example.com").is_err());
        // Host bits: almost always one host meant, refused rather than widened.
        let e = parse_allow("192.0.2.7/24").unwrap_err().to_string();
        assert!(e.contains("192.0.2.0/24"), "{e}");
        // IPv4-mapped entries match the canonical (IPv4) client addresses.
        assert_eq!(
            parse_allow("::ffff:10.0.0.0/104").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_allow("::ffff:192.0.2.7").unwrap(),
            "192.0.2.7/32".parse::<IpNet>().unwrap()
        );
    }
}
