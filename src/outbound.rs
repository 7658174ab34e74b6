//! Outgoing HTTP/1.1 requests to servers outside the trust boundary (the CAP feeds this node
//! polls, the county's emergency-broadcast platform it reports to): an `http://` address, one
//! request per connection, and an answer bounded in size before a byte of it is kept. Deadlines
//! and redirects are the caller's (each protocol has its own).

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Target {
    /// An `http://host[:port][/path][?query]` address; no user info, no white space or control
    /// characters anywhere (they cannot be sent in a request line).
    pub fn parse(url: &str) -> Option<Target> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        // An IPv6 host is bracketed; any other host has no colon but the one before the port.
        let (host, port) = if authority.starts_with('[') {
            let end = authority.find(']')? + 1;
            let port = match &authority[end..] {
                "" => 80,
                after => after.strip_prefix(':')?.parse().ok()?,
            };
            (&authority[..end], port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, p.parse().ok()?),
                None => (authority, 80),
            }
        };
        let bad = |s: &str| s.chars().any(|c| c.is_whitespace() || c.is_control());
        if host.is_empty() || bad(host) || bad(path) {
            return None;
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Some(Target {
            host: host.to_string(),
            port,
            path,
        })
    }

    pub fn url(&self) -> String {
        if self.port == 80 {
            format!("http://{}{}", self.host, self.path)
        } else {
            format!("http://{}:{}{}", self.host, self.port, self.path)
        }
    }

    /// `href` read relative to this address (only `http://` addresses and paths).
    pub fn join(&self, href: &str) -> Option<Target> {
        let href = href.trim();
        if href.starts_with("http://") {
            return Target::parse(href);
        }
        if href.contains("://") || href.starts_with("//") {
            return None;
        }
        let path = if href.starts_with('/') {
            href.to_string()
        } else {
            let dir = self
                .path
                .split(['?', '#'])
                .next()
                .and_then(|p| p.rsplit_once('/'))
                .map_or("", |(d, _)| d);
            format!("{dir}/{href}")
        };
        Some(Target {
            path,
            ..self.clone()
        })
    }
}

/// Why an exchange gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The server could not be reached or broke off: worth another try.
    #[error("{0}")]
    Unreachable(String),
    /// The answer is larger than the caller takes: the document's fault.
    #[error("{url} is larger than {max} bytes")]
    TooLarge { url: String, max: usize },
}

/// What came back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The `Location` header, for callers that follow redirects.
    pub location: Option<String>,
    pub body: Bytes,
}

/// Sends one request (`Host` and `User-Agent` set here) and reads an answer of at most `max` bytes.
pub async fn exchange(
    target: &Target,
    method: hyper::Method,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
    max: usize,
) -> Result<Answer, OutboundError> {
    let unreachable = |what: &str, e: &dyn std::fmt::Display| {
        OutboundError::Unreachable(format!("{what} {}: {e}", target.url()))
    };
    let stream =
        tokio::net::TcpStream::connect((target.host.trim_matches(['[', ']']), target.port))
            .await
            .map_err(|e| unreachable("cannot connect to", &e))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| unreachable("cannot talk HTTP to", &e))?;
    let driver = tokio::spawn(connection);
    let host = if target.port == 80 {
        target.host.clone()
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(target.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "township-node");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| unreachable("a request that cannot be sent to", &e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable("no answer from", &e))?;
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get(hyper::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let declared = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || OutboundError::TooLarge {
        url: target.url(),
        max,
    };
    if declared.is_some_and(|n| n > max as u64) {
        driver.abort();
        return Err(too_large());
    }
    let body = Limited::new(response.into_body(), max)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                OutboundError::Unreachable(format!("{} broke off: {e}", target.url()))
            }
        })?
        .to_bytes();
    driver.abort();
    Ok(Answer {
        status,
        location,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn addresses_are_read_and_joined() {
        let t = Target::parse("http://feed.example:8080/cap/feed.atom?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("feed.example", 8080));
        assert_eq!(t.path, "/cap/feed.atom?x=1");
        assert_eq!(
            t.join("a/1.xml").unwrap().url(),
            "http://feed.example:8080/cap/a/1.xml"
        );
        assert_eq!(
            t.join("/b.xml").unwrap().url(),
            "http://feed.example:8080/b.xml"
        );
        assert_eq!(
            t.join("http://other/c.xml").unwrap().url(),
            "http://other/c.xml"
        );
        assert!(t.join("https://other/c.xml").is_none());
        assert!(t.join("file:///etc/passwd").is_none());
        assert!(Target::parse("https://x/").is_none());
        assert!(Target::parse("http://user@x/").is_none());
        assert!(Target::parse("http://x:notaport/").is_none());
        assert_eq!(Target::parse("http://[::1]:81/f").unwrap().port, 81);
        assert_eq!(Target::parse("http://x").unwrap().path, "/");
    }

    #[test]
    fn platform_addresses_parse() {
        let t = Target::parse("http://county-platform:7500/ebd").expect("url");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("county-platform", 7500, "/ebd")
        );
        let t = Target::parse("http://10.0.0.1").expect("url");
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let t = Target::parse("http://[::1]:81/x").expect("url");
        assert_eq!((t.host.as_str(), t.port), ("[::1]", 81));
        let t = Target::parse("http://[::1]/x").expect("url");
        assert_eq!((t.host.as_str(), t.port), ("[::1]", 80));
        for bad in [
            "https://x",
            "ftp://x",
            "http://",
            "http://u@h/",
            "http://h:99999/",
            "http://h/a b",
            "http://::1/",
            "http://[::1/",
            "http://[::1]x/",
        ] {
            assert!(Target::parse(bad).is_none(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn garbage_addresses_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = Target::parse(&text);
            let _ = Target::parse(&format!("http://{text}"));
            if let Some(t) = Target::parse("http://x/a/b") { let _ = t.join(&text); }
        }
    }
}
