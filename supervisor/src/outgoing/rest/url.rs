//! Addresses, `url_path` templates and percent-encoding of a REST connection.

/// `http://host[:port]` / `https://host[:port]`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub https: bool,
    /// Without brackets for an IPv6 address.
    pub host: String,
    pub port: u16,
    /// What follows the address in a URL given whole (a token URL's path and query), else "".
    pub rest: String,
}

impl Address {
    /// `scheme://host:port` (brackets around an IPv6 host), for messages.
    pub fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority(true)
        )
    }

    /// `host[:port]`: the `Host` header's value (the port only when it is not the scheme's
    /// default, unless `always_port`).
    pub fn authority(&self, always_port: bool) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.https { 443 } else { 80 };
        if always_port || self.port != default {
            format!("{host}:{}", self.port)
        } else {
            host
        }
    }
}

/// Parses `http(s)://host[:port][/rest]`.
pub fn parse_address(s: &str) -> Result<Address, String> {
    let (https, after) = if let Some(a) = s.strip_prefix("https://") {
        (true, a)
    } else if let Some(a) = s.strip_prefix("http://") {
        (false, a)
    } else {
        return Err(format!(
            "{s:?} is not http://host[:port] or https://host[:port]"
        ));
    };
    let (hostport, rest) = match after.find(['/', '?']) {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, ""),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or_else(|| format!("{s:?}: unclosed [ in the host"))?;
        let port = &v6[end + 1..];
        (&v6[..end], port.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() || host.contains('@') {
        return Err(format!("{s:?} has no usable host"));
    }
    let port = match port {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: bad port {p:?}"))?,
    };
    Ok(Address {
        https,
        host: host.to_owned(),
        port,
        rest: rest.to_owned(),
    })
}

/// One piece of a `url_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    Placeholder(String),
}

/// Splits a `url_path` into literals and `{placeholders}`.
pub fn parse_template(path: &str) -> Result<Vec<Piece>, String> {
    if !path.starts_with('/') {
        return Err(format!("url_path {path:?} does not start with /"));
    }
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            out.push(Piece::Literal(rest[..open].to_owned()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("url_path {path:?}: unclosed {{"))?
            + open;
        let name = &rest[open + 1..close];
        if name.is_empty() || name.contains('{') {
            return Err(format!("url_path {path:?}: bad placeholder {{{name}}}"));
        }
        out.push(Piece::Placeholder(name.to_owned()));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Literal(rest.to_owned()));
    }
    Ok(out)
}

/// Appends `s` percent-encoded: everything but RFC 3986's unreserved characters; with
/// `form`, a space is `+` (application/x-www-form-urlencoded).
pub fn encode_into(out: &mut String, s: &str, form: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' if form => out.push('+'),
            _ => {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            }
        }
    }
}

/// `name=value` pairs, form-encoded and joined with `&`.
pub fn form_encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        encode_into(&mut out, k, true);
        out.push('=');
        encode_into(&mut out, v, true);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let a = parse_address("https://crm.example.com").unwrap();
        assert_eq!(
            (a.https, a.host.as_str(), a.port),
            (true, "crm.example.com", 443)
        );
        assert_eq!(a.origin(), "https://crm.example.com:443");
        assert_eq!(a.authority(false), "crm.example.com");
        let a = parse_address("http://[::1]:8080/token?x=1").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.rest.as_str()),
            ("::1", 8080, "/token?x=1")
        );
        assert_eq!(a.authority(false), "[::1]:8080");
        assert!(parse_address("ftp://x").is_err());
        assert!(parse_address("http://x:0").is_err());
        assert!(parse_address("http://:80").is_err());
    }

    #[test]
    fn templates_and_encoding() {
        assert_eq!(
            parse_template("/a/{id}/b").unwrap(),
            vec![
                Piece::Literal("/a/".into()),
                Piece::Placeholder("id".into()),
                Piece::Literal("/b".into())
            ]
        );
        assert!(parse_template("/a/{id").is_err());
        assert!(parse_template("a/{id}").is_err());
        let mut s = String::new();
        encode_into(&mut s, "a b/é&", false);
        assert_eq!(s, "a%20b%2F%C3%A9%26");
        assert_eq!(form_encode([("a b", "x+y"), ("c", "")]), "a+b=x%2By&c=");
    }
}
