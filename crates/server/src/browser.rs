//! Refuses what a browser sends on another site's behalf.
//!
//! Two attacks reach a server that a user runs on their own machine, where it is open by default:
//! - **Cross-site requests.** A page on another site can `POST` to `localhost:8080` (a
//!   `text/plain` body needs no CORS preflight) and start a tune job or replace a task. Browsers
//!   name the sending site in `Sec-Fetch-Site` and `Origin`; a request that changes something is
//!   refused when they say it came from another origin. Clients that are not browsers send
//!   neither header and are not affected.
//! - **DNS rebinding.** A site can make its own name resolve to 127.0.0.1; its page's requests are
//!   then same-origin, but carry that name in `Host`. A server bound to a loopback address, or
//!   given `[server] allowed_hosts`, answers only `Host` names of this machine (`localhost`,
//!   `*.localhost`), IP addresses and the listed names. A page can make a name point here, never
//!   an address, so an address is always safe to answer: a kubelet's probe or a Prometheus scrape
//!   sends the pod's.

use actix_web::HttpRequest;
use actix_web::http::{Method, header};

use super::error::ApiError;

/// The `Host` names a server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPolicy {
    /// Any: a server on a non-loopback address without `allowed_hosts`, or `allowed_hosts = "*"`.
    Any,
    /// This machine's names, IP addresses and these (normalised by [`host_name`]).
    Only(Vec<String>),
}

/// The checks for one listener.
#[derive(Debug, Clone)]
pub struct BrowserGuard {
    hosts: HostPolicy,
}

impl BrowserGuard {
    /// The guard for a listener on a loopback address or not, with the configured
    /// `allowed_hosts` (names, each with or without a port; `*` answers any `Host`).
    pub fn new(loopback: bool, allowed_hosts: &[String]) -> Self {
        let listed: Vec<String> = allowed_hosts
            .iter()
            .map(|h| host_name(h.trim()))
            .filter(|h| !h.is_empty())
            .collect();
        let hosts = if listed.iter().any(|h| h == "*") || (!loopback && listed.is_empty()) {
            HostPolicy::Any
        } else {
            HostPolicy::Only(listed)
        };
        Self { hosts }
    }

    /// True when any `Host` is answered: the server is reachable through DNS rebinding unless
    /// it needs tokens.
    pub fn answers_any_host(&self) -> bool {
        self.hosts == HostPolicy::Any
    }

    /// Lets the request through, or says why it is refused (403).
    pub fn check(&self, request: &HttpRequest) -> Result<(), ApiError> {
        let host = request.headers().get(header::HOST).map(|v| v.to_str());
        // Browsers always send a readable Host; a client that sends none is not one.
        let host = match host {
            None => None,
            Some(Ok(host)) => Some(host.trim()),
            Some(Err(_)) => return Err(self.unknown_host("(not text)")),
        };
        if let Some(host) = host {
            self.check_host(host)?;
        }
        if !is_safe(request.method()) {
            self.check_same_origin(request, host.unwrap_or_default())?;
        }
        Ok(())
    }

    fn check_host(&self, host: &str) -> Result<(), ApiError> {
        match &self.hosts {
            HostPolicy::Any => Ok(()),
            HostPolicy::Only(listed) => {
                let name = host_name(host);
                if is_loopback_name(&name) || is_address(&name) || listed.contains(&name) {
                    Ok(())
                } else {
                    Err(self.unknown_host(host))
                }
            }
        }
    }

    fn unknown_host(&self, host: &str) -> ApiError {
        ApiError::HostNotAllowed(format!(
            "this server answers IP addresses, this machine's names (localhost) and those in \
             [server] allowed_hosts (DELTASPACE_SERVER_ALLOWED_HOSTS) as Host, not {host:?}"
        ))
    }

    /// Refuses a request a browser marks as sent from another origin. Behind a reverse proxy the
    /// page's origin is the proxy's name: it is accepted when it is in `allowed_hosts` or is the
    /// proxy's `X-Forwarded-Host` (a page elsewhere cannot set that header without a CORS
    /// preflight, which this server never grants).
    fn check_same_origin(&self, request: &HttpRequest, host: &str) -> Result<(), ApiError> {
        let text = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        if let Some(site) = text("sec-fetch-site") {
            return match site.trim() {
                "same-origin" | "none" => Ok(()),
                other => Err(cross_site(format!("Sec-Fetch-Site: {other}"))),
            };
        }
        let Some(origin) = text("origin").map(str::trim) else {
            return Ok(());
        };
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        let forwarded = text("x-forwarded-host").unwrap_or_default().trim();
        let listed = match &self.hosts {
            HostPolicy::Only(listed) => listed.contains(&host_name(origin_host)),
            HostPolicy::Any => false,
        };
        let same = [host, forwarded]
            .iter()
            .any(|h| !h.is_empty() && origin_host.eq_ignore_ascii_case(h));
        if same || listed {
            return Ok(());
        }
        Err(cross_site(format!("Origin: {origin}, Host: {host}")))
    }
}

fn cross_site(why: String) -> ApiError {
    ApiError::CrossSite(format!(
        "a browser sent this request from another site ({why}); send it from this server's own \
         page or from a client that is not a browser"
    ))
}

/// GET, HEAD and OPTIONS change nothing here.
fn is_safe(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::OPTIONS].contains(method)
}

/// Whether an `allowed_hosts` entry can match a `Host` header: `*`, or a name of letters, digits,
/// `-`, `_` and `.`, or an IPv6 address in brackets, then an optional `:port`.
pub fn is_allowed_host(entry: &str) -> bool {
    if entry == "*" {
        return true;
    }
    // The port, with its colon, follows an IPv6 address's closing bracket or a name's first colon.
    let (name_ok, port) = if let Some(rest) = entry.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) => (ip.parse::<std::net::Ipv6Addr>().is_ok(), port),
            None => return false,
        }
    } else {
        let (name, port) = entry.find(':').map_or((entry, ""), |at| entry.split_at(at));
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        (!name.is_empty() && name.chars().all(valid), port)
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|digits| digits.parse::<u16>().is_ok());
    name_ok && port_ok
}

/// The name part of a `Host` value (or of an `allowed_hosts` entry), lower case, without a
/// trailing dot: `[::1]:8080` → `[::1]`, `Example.org.:80` → `example.org`.
fn host_name(host: &str) -> String {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().map(|ip| format!("[{ip}]")),
        None => host.split(':').next().map(String::from),
    };
    name.unwrap_or_default()
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// `localhost` and `*.localhost`.
fn is_loopback_name(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

/// An IPv4 address, or an IPv6 one in brackets, as [`host_name`] leaves them.
fn is_address(name: &str) -> bool {
    match name.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => name.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> HttpRequest {
        let mut request = TestRequest::default().method(method);
        for &(name, value) in headers {
            request = request.insert_header((name, value));
        }
        request.to_http_request()
    }

    fn code(
        guard: &BrowserGuard,
        method: Method,
        headers: &[(&str, &str)],
    ) -> Option<&'static str> {
        guard
            .check(&request(method, headers))
            .err()
            .map(|e| e.code())
    }

    #[test]
    fn a_loopback_server_answers_this_machines_and_listed_host_names_only() {
        let guard = BrowserGuard::new(true, &[" deltaspace.internal:443 ".into()]);
        for host in [
            "localhost:8080",
            "127.0.0.1:8080",
            "127.1.2.3",
            "[::1]:8080",
            "[::ffff:127.0.0.1]",
            "app.localhost",
            "localhost.",
            "DeltaSpace.Internal:80",
            "deltaspace.internal.",
            // No page can make an address point elsewhere: a pod's, as probes send it.
            "10.1.2.3:8080",
            "[::2]:80",
        ] {
            assert_eq!(code(&guard, Method::GET, &[("host", host)]), None, "{host}");
        }
        for host in [
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "10.1.2.3.nip.io",
            "[evil.example]",
            "::1",
            ":80",
            "",
        ] {
            let refused = code(&guard, Method::GET, &[("host", host)]);
            assert_eq!(refused, Some("host_not_allowed"), "{host:?}");
        }
        // A client that sends no Host at all (HTTP/1.0) is not a browser.
        assert_eq!(code(&guard, Method::GET, &[]), None);
    }

    #[test]
    fn any_host_is_answered_off_loopback_unless_hosts_are_listed() {
        let evil = [("host", "evil.example")];
        let open = BrowserGuard::new(false, &[]);
        assert!(open.answers_any_host());
        assert_eq!(code(&open, Method::GET, &evil), None);
        let listed = BrowserGuard::new(false, &["api.example".into()]);
        assert!(!listed.answers_any_host());
        assert_eq!(code(&listed, Method::GET, &evil), Some("host_not_allowed"));
        assert_eq!(code(&listed, Method::GET, &[("host", "api.example")]), None);
        assert_eq!(
            code(&listed, Method::GET, &[("host", "10.0.0.7:8080")]),
            None
        );
        let any = BrowserGuard::new(true, &["*".into()]);
        assert_eq!(code(&any, Method::GET, &evil), None);
    }

    #[test]
    fn changes_sent_from_another_site_are_refused() {
        let guard = BrowserGuard::new(true, &[]);
        let host = ("host", "localhost:8080");
        let cross = [
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
            vec![host, ("origin", "https://evil.example")],
            vec![host, ("origin", "http://localhost:9999")],
            vec![host, ("origin", "null")],
        ];
        for headers in &cross {
            assert_eq!(
                code(&guard, Method::POST, headers),
                Some("cross_site"),
                "{headers:?}"
            );
            // Reads change nothing, and a page elsewhere cannot read the answer.
            assert_eq!(code(&guard, Method::GET, headers), None);
        }
        let same = [
            vec![host],
            vec![host, ("sec-fetch-site", "same-origin")],
            vec![host, ("sec-fetch-site", "none")],
            vec![host, ("origin", "http://localhost:8080")],
        ];
        for headers in &same {
            assert_eq!(code(&guard, Method::DELETE, headers), None, "{headers:?}");
        }
    }

    #[test]
    fn behind_a_reverse_proxy_the_page_is_known_by_its_public_name() {
        // nginx's default passes Host 127.0.0.1:8080; a plain-HTTP page sends no Sec-Fetch-Site.
        let host = ("host", "127.0.0.1:8080");
        let page = ("origin", "http://deltaspace.example");
        let forwarded = BrowserGuard::new(true, &[]);
        let headers = [host, page, ("x-forwarded-host", "deltaspace.example")];
        assert_eq!(code(&forwarded, Method::POST, &headers), None);
        assert_eq!(
            code(&forwarded, Method::POST, &[host, page]),
            Some("cross_site")
        );
        let listed = BrowserGuard::new(true, &["deltaspace.example".into()]);
        assert_eq!(code(&listed, Method::POST, &[host, page]), None);
    }
}
