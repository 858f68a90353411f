//! Refuses what a browser sends on another site's behalf.
//!
//! Two attacks reach a server that a user runs on their own machine, where it is open by default:
//! - **Cross-site requests.** A page on another site can `POST` to `localhost:8080` (a
//!   `text/plain` body needs no CORS preflight) and start a tune job or predict. Browsers name the
//!   sending site in `Sec-Fetch-Site` and `Origin`; a request that changes something is refused
//!   when either says it came from another origin. Clients that are not browsers send neither
//!   header and are not affected.
//! - **DNS rebinding.** A site can make its own name resolve to 127.0.0.1; its page's requests are
//!   then same-origin, but carry that name in `Host`. A server bound to a loopback address answers
//!   only `Host` names that are loopback ones (`localhost`, `*.localhost`, `127.x.x.x`, `[::1]`)
//!   or listed in `[server] allowed_hosts`.

use actix_web::HttpRequest;
use actix_web::http::{Method, header};

use super::error::ApiError;

/// The checks for one listener.
#[derive(Debug, Clone)]
pub struct OriginGuard {
    /// `Some` when the server is bound to a loopback address: the extra `Host` names it answers
    /// (lower case, without port); `None` answers any.
    hosts: Option<Vec<String>>,
}

impl OriginGuard {
    /// The guard for a listener on a loopback address or not, with the configured `allowed_hosts`
    /// (`*` among them answers any `Host`).
    pub fn new(loopback: bool, allowed_hosts: &[String]) -> Self {
        let any = allowed_hosts.iter().any(|h| h.trim() == "*");
        let hosts = (loopback && !any).then(|| {
            allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect()
        });
        Self { hosts }
    }

    /// Lets the request through, or says why it is refused (403).
    pub fn check(&self, request: &HttpRequest) -> Result<(), ApiError> {
        self.check_host(request)?;
        if !is_safe(request.method()) {
            check_same_origin(request)?;
        }
        Ok(())
    }

    fn check_host(&self, request: &HttpRequest) -> Result<(), ApiError> {
        let Some(allowed) = &self.hosts else {
            return Ok(());
        };
        // Browsers always send Host; a client that sends none is not one.
        let host = header_text(request, header::HOST).unwrap_or_default();
        let name = host_name(host).to_ascii_lowercase();
        if name.is_empty() || is_loopback_name(&name) || allowed.contains(&name) {
            return Ok(());
        }
        Err(ApiError::HostNotAllowed(format!(
            "this server is bound to a loopback address and answers Host names of this machine \
             only (localhost, 127.0.0.1, [::1]), not {host:?}; add the name to [server] \
             allowed_hosts (DELTASPACE_SERVER_ALLOWED_HOSTS) to answer it"
        )))
    }
}

/// GET, HEAD and OPTIONS change nothing here.
fn is_safe(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::OPTIONS].contains(method)
}

/// Refuses a request a browser marks as sent from another origin.
fn check_same_origin(request: &HttpRequest) -> Result<(), ApiError> {
    let refuse = |why: String| {
        Err(ApiError::CrossSite(format!(
            "a browser sent this request from another site ({why}); send it from this server's \
             own page or from a client that is not a browser"
        )))
    };
    if let Some(site) = header_text(request, "sec-fetch-site") {
        return match site {
            "same-origin" | "none" => Ok(()),
            other => refuse(format!("Sec-Fetch-Site: {other}")),
        };
    }
    let Some(origin) = header_text(request, header::ORIGIN) else {
        return Ok(());
    };
    let host = header_text(request, header::HOST).unwrap_or_default();
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
    if origin_host.eq_ignore_ascii_case(host) {
        return Ok(());
    }
    refuse(format!("Origin: {origin}, Host: {host}"))
}

fn header_text(request: &HttpRequest, name: impl header::AsHeaderName) -> Option<&str> {
    request.headers().get(name)?.to_str().ok().map(str::trim)
}

/// The name part of a `Host` value: `[::1]:8080` → `[::1]`, `localhost:8080` → `localhost`.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.split(':').next().unwrap_or(host)
}

fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
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

    #[test]
    fn a_loopback_server_answers_loopback_and_listed_host_names_only() {
        let guard = OriginGuard::new(true, &["deltaspace.internal".into()]);
        for host in [
            "localhost:8080",
            "127.0.0.1:8080",
            "127.1.2.3",
            "[::1]:8080",
            "app.localhost",
            "DeltaSpace.Internal:80",
            "",
        ] {
            let get = request(Method::GET, &[("host", host)]);
            assert!(guard.check(&get).is_ok(), "{host}");
        }
        for host in ["evil.example:8080", "127.0.0.1.evil.example", "[::2]:80"] {
            let get = request(Method::GET, &[("host", host)]);
            let refused = guard.check(&get).unwrap_err();
            assert_eq!(refused.code(), "host_not_allowed", "{host}");
        }
        let open = OriginGuard::new(false, &[]);
        assert!(
            open.check(&request(Method::GET, &[("host", "evil.example")]))
                .is_ok()
        );
        let any = OriginGuard::new(true, &["*".into()]);
        assert!(
            any.check(&request(Method::GET, &[("host", "evil.example")]))
                .is_ok()
        );
    }

    #[test]
    fn changes_sent_from_another_site_are_refused() {
        let guard = OriginGuard::new(true, &[]);
        let host = ("host", "localhost:8080");
        let cross = [
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
            vec![host, ("origin", "https://evil.example")],
            vec![host, ("origin", "http://localhost:9999")],
            vec![host, ("origin", "null")],
        ];
        for headers in &cross {
            let post = request(Method::POST, headers);
            assert_eq!(
                guard.check(&post).unwrap_err().code(),
                "cross_site",
                "{headers:?}"
            );
            // Reads change nothing, and a page elsewhere cannot read the answer.
            assert!(guard.check(&request(Method::GET, headers)).is_ok());
        }
        let same = [
            vec![host],
            vec![host, ("sec-fetch-site", "same-origin")],
            vec![host, ("sec-fetch-site", "none")],
            vec![host, ("origin", "http://localhost:8080")],
        ];
        for headers in &same {
            let delete = request(Method::DELETE, headers);
            assert!(guard.check(&delete).is_ok(), "{headers:?}");
        }
    }
}
