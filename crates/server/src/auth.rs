//! Bearer-token authorization. Tokens are kept only as SHA-256 digests and compared in constant
//! time (over every configured token, so timing tells nothing about which or how close); no token
//! is ever logged. With no tokens configured, every request is allowed.

use actix_web::HttpRequest;
use actix_web::http::header;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::error::ApiError;
use deltaspace_core::secret::Secret;

/// What a route does, for deciding whether it needs a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Creating, replacing or deleting tasks: needs a token whenever tokens are configured.
    Write,
    /// Predictions, embeddings and task reads: needs a token only with `protect_reads`.
    Read,
}

/// The configured tokens, as digests.
pub struct Auth {
    digests: Vec<[u8; 32]>,
    protect_reads: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.digests.len())
            .field("protect_reads", &self.protect_reads)
            .finish()
    }
}

impl Auth {
    /// Keeps digests of the non-empty `tokens`.
    pub fn new(tokens: &[Secret], protect_reads: bool) -> Self {
        let digests = tokens
            .iter()
            .map(|t| t.expose().trim())
            .filter(|t| !t.is_empty())
            .map(digest)
            .collect();
        Self {
            digests,
            protect_reads,
        }
    }

    /// True when writes need a token.
    pub fn protects_writes(&self) -> bool {
        !self.digests.is_empty()
    }

    /// True when reads need a token too.
    pub fn protects_reads(&self) -> bool {
        self.protects_writes() && self.protect_reads
    }

    /// Allows the request, or answers 401.
    pub fn require(&self, request: &HttpRequest, access: Access) -> Result<(), ApiError> {
        let needed = match access {
            Access::Write => self.protects_writes(),
            Access::Read => self.protects_reads(),
        };
        if !needed {
            return Ok(());
        }
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer);
        match presented {
            Some(token) if self.accepts(token) => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
    }

    fn accepts(&self, token: &str) -> bool {
        let presented = digest(token);
        let mut matched = Choice::from(0);
        for known in &self.digests {
            matched |= presented.ct_eq(known);
        }
        matched.into()
    }
}

/// The token of an `Authorization: Bearer TOKEN` value (scheme case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn request(authorization: Option<&str>) -> HttpRequest {
        let mut request = TestRequest::default();
        if let Some(value) = authorization {
            request = request.insert_header((header::AUTHORIZATION, value));
        }
        request.to_http_request()
    }

    #[test]
    fn writes_need_one_of_the_tokens_and_reads_only_when_protected() {
        let tokens = ["alpha", " beta ", ""].map(Secret::new);
        let auth = Auth::new(&tokens, false);
        assert!(
            auth.require(&request(Some("Bearer alpha")), Access::Write)
                .is_ok()
        );
        assert!(
            auth.require(&request(Some("bearer beta")), Access::Write)
                .is_ok()
        );
        for bad in [
            None,
            Some("Bearer alph"),
            Some("Basic alpha"),
            Some("Bearer "),
        ] {
            assert!(
                auth.require(&request(bad), Access::Write).is_err(),
                "{bad:?}"
            );
        }
        assert!(auth.require(&request(None), Access::Read).is_ok());
        let strict = Auth::new(&[Secret::new("alpha")], true);
        assert!(strict.require(&request(None), Access::Read).is_err());
        assert!(!format!("{strict:?}").contains("alpha"));
    }

    #[test]
    fn no_tokens_means_open() {
        let auth = Auth::new(&[], true);
        assert!(auth.require(&request(None), Access::Write).is_ok());
        assert!(auth.require(&request(None), Access::Read).is_ok());
    }
}
