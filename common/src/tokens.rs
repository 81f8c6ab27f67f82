//! Bearer tokens: HS256 JWTs carrying the user ID (`sub`) and an expiry. The users service signs
//! them at login; the gateway verifies them locally, without a round trip.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock;

/// The signing secret. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct TokenSecret(Vec<u8>);

impl TokenSecret {
    /// Refuses secrets too short to resist brute force.
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self, TokenError> {
        let secret = secret.into();
        if secret.len() < 32 {
            return Err(TokenError::WeakSecret);
        }
        Ok(Self(secret))
    }
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret([redacted])")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token secret must be at least 32 bytes")]
    WeakSecret,
    #[error("token has expired")]
    Expired,
    #[error("token is invalid")]
    Invalid,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user ID, as a decimal string.
    sub: String,
    /// Issued at and expiry, in seconds since the Unix epoch.
    iat: i64,
    exp: i64,
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A freshly issued token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at_ms: i64,
}

impl Tokens {
    pub fn new(secret: &TokenSecret, ttl: Duration) -> Self {
        Self {
            encoding: EncodingKey::from_secret(&secret.0),
            decoding: DecodingKey::from_secret(&secret.0),
            ttl,
        }
    }

    pub fn issue(&self, user_id: u64) -> Result<IssuedToken, TokenError> {
        self.issue_at(user_id, clock::now_millis())
    }

    fn issue_at(&self, user_id: u64, now_ms: i64) -> Result<IssuedToken, TokenError> {
        let ttl_secs = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let iat = now_ms.div_euclid(1000);
        let claims = Claims {
            sub: user_id.to_string(),
            iat,
            exp: iat + ttl_secs,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)?;
        Ok(IssuedToken {
            token,
            expires_at_ms: claims.exp * 1000,
        })
    }

    /// The user ID of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Result<u64, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(|err| {
                match err.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid,
                }
            })?;
        data.claims.sub.parse().map_err(|_| TokenError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(secret: &str) -> Tokens {
        Tokens::new(
            &TokenSecret::new(secret).unwrap(),
            Duration::from_secs(3600),
        )
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_fresh_token_names_its_user() {
        let t = tokens(SECRET);
        let issued = t.issue(42).unwrap();
        assert_eq!(t.verify(&issued.token), Ok(42));
        assert!(issued.expires_at_ms > clock::now_millis());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let t = tokens(SECRET);
        let issued = t.issue_at(42, clock::now_millis() - 7_200_000).unwrap();
        assert_eq!(t.verify(&issued.token), Err(TokenError::Expired));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let issued = tokens(SECRET).issue(42).unwrap();
        let other = tokens("another secret that is long enough!!");
        assert_eq!(other.verify(&issued.token), Err(TokenError::Invalid));
    }

    #[test]
    fn garbage_and_tampering_are_refused() {
        let t = tokens(SECRET);
        assert_eq!(t.verify("not a token"), Err(TokenError::Invalid));
        let issued = t.issue(42).unwrap();
        let mut parts: Vec<&str> = issued.token.split('.').collect();
        let forged_claims = "eyJzdWIiOiI0MyIsImlhdCI6MCwiZXhwIjo5OTk5OTk5OTk5fQ";
        parts[1] = forged_claims;
        assert_eq!(t.verify(&parts.join(".")), Err(TokenError::Invalid));
    }

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        assert_eq!(
            TokenSecret::new("short").err(),
            Some(TokenError::WeakSecret)
        );
        let secret = TokenSecret::new(SECRET).unwrap();
        assert!(!format!("{secret:?}").contains(SECRET));
    }
}
