//! Bearer tokens: EdDSA (Ed25519) JWTs. Only the users service holds the private key and signs
//! ([`TokenSigner`]); every verifier (the gateway, and any service that wants to check a caller)
//! holds public keys only ([`TokenVerifier`]) and checks a token without a round trip.
//!
//! A token carries the user ID (`sub`), issue and expiry times, and the user's token generation
//! (`gen`) at login: the users service raises a user's generation when their password changes or
//! their account is deleted, which is how tokens issued before that stop working (see
//! [`Verified::generation`]). The header names the signing key (`kid`, derived from the public
//! key), so keys rotate by adding the new public key to every verifier, switching the signer,
//! and dropping the old public key once its tokens have expired.
//!
//! Keys are PEM files as `openssl genpkey -algorithm ed25519` writes them (PKCS#8 private key,
//! SPKI public key); [`generate_key_pair`] makes such a pair.

use std::collections::HashMap;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::clock;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token key is not a valid Ed25519 PEM key: {0}")]
    BadKey(String),
    #[error("no public key to verify tokens with")]
    NoKeys,
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
    /// The user's token generation when the token was issued.
    #[serde(default)]
    r#gen: u64,
}

/// A freshly issued token.
#[derive(Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at_ms: i64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"[redacted]")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub user_id: u64,
    /// The user's token generation at login; the token is revoked once the user's current
    /// generation is higher.
    pub generation: u64,
}

/// The key ID of a public key: the first 16 hex digits of the SHA-256 of its SPKI encoding, so
/// signer and verifiers agree on it with nothing to configure.
fn key_id(public: &ed25519_dalek::VerifyingKey) -> Result<String, TokenError> {
    let der = public
        .to_public_key_der()
        .map_err(|err| TokenError::BadKey(err.to_string()))?;
    let digest = Sha256::digest(der.as_bytes());
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// Signs tokens with the private key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct TokenSigner {
    kid: String,
    encoding: EncodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer from a PKCS#8 PEM Ed25519 private key; tokens live `ttl`.
    pub fn from_pem(private_pem: &str, ttl: Duration) -> Result<Self, TokenError> {
        let key = SigningKey::from_pkcs8_pem(private_pem)
            .map_err(|err| TokenError::BadKey(err.to_string()))?;
        let encoding = EncodingKey::from_ed_pem(private_pem.as_bytes())
            .map_err(|err| TokenError::BadKey(err.to_string()))?;
        Ok(Self {
            kid: key_id(&key.verifying_key())?,
            encoding,
            ttl,
        })
    }

    /// The ID of the key this signer signs with (its public key's).
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    pub fn issue(&self, user_id: u64, generation: u64) -> Result<IssuedToken, TokenError> {
        self.issue_at(user_id, generation, clock::now_millis())
    }

    fn issue_at(
        &self,
        user_id: u64,
        generation: u64,
        now_ms: i64,
    ) -> Result<IssuedToken, TokenError> {
        let ttl_secs = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let iat = now_ms.div_euclid(1000);
        let claims = Claims {
            sub: user_id.to_string(),
            iat,
            exp: iat + ttl_secs,
            r#gen: generation,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)?;
        Ok(IssuedToken {
            token,
            expires_at_ms: claims.exp * 1000,
        })
    }
}

/// Verifies tokens with one or more public keys (more than one during a key rotation).
///
/// A token is immutable and its signature either verifies or not, so what a valid token says
/// is remembered (keyed by the whole token, up to [`VERIFIED_CAPACITY`] tokens, each until its
/// expiry or [`VERIFIED_FOR`]): a user's requests, and the services each request reaches, check
/// the Ed25519 signature once rather than on every call. Expiry is still checked on every call.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: HashMap<String, DecodingKey>,
    verified: moka::sync::Cache<String, (Verified, i64)>,
}

/// Verified tokens remembered at most.
pub const VERIFIED_CAPACITY: u64 = 100_000;
/// The longest a verified token is remembered (its expiry still applies within it).
pub const VERIFIED_FOR: Duration = Duration::from_secs(300);

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("TokenVerifier")
            .field("kids", &kids)
            .finish()
    }
}

impl TokenVerifier {
    /// A verifier accepting tokens signed by the private key of any of these SPKI PEM public keys.
    pub fn from_pems<S: AsRef<str>>(public_pems: &[S]) -> Result<Self, TokenError> {
        let mut keys = HashMap::new();
        for pem in public_pems {
            let pem = pem.as_ref();
            let public = ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
                .map_err(|err| TokenError::BadKey(err.to_string()))?;
            let decoding = DecodingKey::from_ed_pem(pem.as_bytes())
                .map_err(|err| TokenError::BadKey(err.to_string()))?;
            keys.insert(key_id(&public)?, decoding);
        }
        if keys.is_empty() {
            return Err(TokenError::NoKeys);
        }
        let verified = moka::sync::Cache::builder()
            .max_capacity(VERIFIED_CAPACITY)
            .time_to_live(VERIFIED_FOR)
            .build();
        Ok(Self { keys, verified })
    }

    /// What a valid, unexpired token signed by one of the keys says.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        self.verify_until(token).map(|(verified, _)| verified)
    }

    /// As [`TokenVerifier::verify`], with the token's expiry (Unix seconds): for a call that
    /// lasts, such as a stream, which must end when its token does.
    pub fn verify_until(&self, token: &str) -> Result<(Verified, i64), TokenError> {
        if let Some((verified, exp)) = self.verified.get(token) {
            return if clock::now_millis() / 1000 <= exp {
                Ok((verified, exp))
            } else {
                Err(TokenError::Expired)
            };
        }
        let (verified, exp) = self.check_signature(token)?;
        self.verified.insert(token.to_owned(), (verified, exp));
        Ok((verified, exp))
    }

    /// The signature check itself: what the token says, and its expiry.
    fn check_signature(&self, token: &str) -> Result<(Verified, i64), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(TokenError::Invalid)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = 0;
        // Not valid before `nbf`, when a token says so (ours do not; a forged or foreign one
        // might, and jsonwebtoken ignores `nbf` unless asked).
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|err| {
                match err.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid,
                }
            })?;
        let verified = Verified {
            user_id: data.claims.sub.parse().map_err(|_| TokenError::Invalid)?,
            generation: data.claims.r#gen,
        };
        Ok((verified, data.claims.exp))
    }
}

/// A new Ed25519 key pair as PEM: (PKCS#8 private key, SPKI public key), the same formats as
/// `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.
pub fn generate_key_pair() -> Result<(String, String), TokenError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|err| TokenError::BadKey(err.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|err| TokenError::BadKey(err.to_string()))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|err| TokenError::BadKey(err.to_string()))?;
    Ok((private.to_string(), public))
}

/// The public key (SPKI PEM) of a private key (PKCS#8 PEM).
pub fn public_key_of(private_pem: &str) -> Result<String, TokenError> {
    let key = SigningKey::from_pkcs8_pem(private_pem)
        .map_err(|err| TokenError::BadKey(err.to_string()))?;
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|err| TokenError::BadKey(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`: keys as
    /// operators will have them.
    const OPENSSL_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEILfpRZFUs5ORQcAJ46pnUyLmSK8/Jc4Ue64MJczw7tpH
-----END PRIVATE KEY-----
";

    fn pair() -> (TokenSigner, TokenVerifier) {
        let (private, public) = generate_key_pair().unwrap();
        (
            TokenSigner::from_pem(&private, Duration::from_secs(3600)).unwrap(),
            TokenVerifier::from_pems(&[public]).unwrap(),
        )
    }

    #[test]
    fn a_fresh_token_names_its_user_and_generation() {
        let (signer, verifier) = pair();
        let issued = signer.issue(42, 3).unwrap();
        assert_eq!(
            verifier.verify(&issued.token),
            Ok(Verified {
                user_id: 42,
                generation: 3
            })
        );
        assert!(issued.expires_at_ms > clock::now_millis());
    }

    #[test]
    fn openssl_keys_work_and_the_public_key_is_derived() {
        let public = public_key_of(OPENSSL_PRIVATE).unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        let signer = TokenSigner::from_pem(OPENSSL_PRIVATE, Duration::from_secs(60)).unwrap();
        let verifier = TokenVerifier::from_pems(&[public]).unwrap();
        let issued = signer.issue(7, 0).unwrap();
        assert_eq!(verifier.verify(&issued.token).unwrap().user_id, 7);
    }

    #[test]
    fn an_expired_token_is_refused() {
        let (signer, verifier) = pair();
        let issued = signer
            .issue_at(42, 0, clock::now_millis() - 7_200_000)
            .unwrap();
        assert_eq!(verifier.verify(&issued.token), Err(TokenError::Expired));
    }

    #[test]
    fn a_remembered_token_still_expires_and_a_tampered_one_is_still_checked() {
        let (signer, verifier) = pair();
        let ttl_ms = i64::try_from(signer.ttl.as_millis()).unwrap();
        // Expires within about two seconds.
        let issued = signer
            .issue_at(42, 3, clock::now_millis() - ttl_ms + 2_000)
            .unwrap();
        let verified = verifier.verify(&issued.token).unwrap();
        assert_eq!(verifier.verify(&issued.token), Ok(verified), "remembered");
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        // Another user's ID in the claims, the signature left as it was.
        let parts: Vec<&str> = issued.token.split('.').collect();
        let claims = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        let claims = String::from_utf8(claims)
            .unwrap()
            .replace("\"42\"", "\"43\"");
        let tampered = [parts[0], &URL_SAFE_NO_PAD.encode(claims), parts[2]].join(".");
        assert_ne!(tampered, issued.token);
        assert_eq!(verifier.verify(&tampered), Err(TokenError::Invalid));
        std::thread::sleep(std::time::Duration::from_millis(3_500));
        assert_eq!(verifier.verify(&issued.token), Err(TokenError::Expired));
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let (signer, _) = pair();
        let (_, other_verifier) = pair();
        let issued = signer.issue(42, 0).unwrap();
        assert_eq!(
            other_verifier.verify(&issued.token),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn during_a_rotation_both_keys_verify() {
        let (old_private, old_public) = generate_key_pair().unwrap();
        let (new_private, new_public) = generate_key_pair().unwrap();
        let ttl = Duration::from_secs(60);
        let verifier = TokenVerifier::from_pems(&[old_public, new_public]).unwrap();
        for private in [old_private, new_private] {
            let issued = TokenSigner::from_pem(&private, ttl)
                .unwrap()
                .issue(9, 0)
                .unwrap();
            assert_eq!(verifier.verify(&issued.token).unwrap().user_id, 9);
        }
    }

    #[test]
    fn garbage_tampering_and_other_algorithms_are_refused() {
        let (signer, verifier) = pair();
        assert_eq!(verifier.verify("not a token"), Err(TokenError::Invalid));
        let issued = signer.issue(42, 0).unwrap();
        let mut parts: Vec<&str> = issued.token.split('.').collect();
        let forged_claims = "eyJzdWIiOiI0MyIsImlhdCI6MCwiZXhwIjo5OTk5OTk5OTk5fQ";
        parts[1] = forged_claims;
        assert_eq!(verifier.verify(&parts.join(".")), Err(TokenError::Invalid));
        // An HS256 token (a secret-key forgery attempt) is refused whatever it says.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "42".into(),
                iat: 0,
                exp: 9_999_999_999,
                r#gen: 0,
            },
            &EncodingKey::from_secret(b"guessable"),
        )
        .unwrap();
        assert_eq!(verifier.verify(&hs), Err(TokenError::Invalid));
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let (private, public) = generate_key_pair().unwrap();
        let signer = TokenSigner::from_pem(&private, Duration::from_secs(60)).unwrap();
        let verifier = TokenVerifier::from_pems(&[public]).unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signer.key_id().to_owned());
        let now = clock::now_millis() / 1000;
        #[derive(Serialize)]
        struct Early {
            sub: &'static str,
            iat: i64,
            exp: i64,
            nbf: i64,
        }
        let with_nbf = |nbf: i64| {
            let claims = Early {
                sub: "42",
                iat: now,
                exp: now + 600,
                nbf,
            };
            jsonwebtoken::encode(&header, &claims, &signer.encoding).unwrap()
        };
        assert_eq!(
            verifier.verify(&with_nbf(now + 300)),
            Err(TokenError::Invalid)
        );
        assert_eq!(verifier.verify(&with_nbf(now - 5)).unwrap().user_id, 42);
    }

    #[test]
    fn keys_never_show_in_debug_output() {
        let (private, _) = generate_key_pair().unwrap();
        let signer = TokenSigner::from_pem(&private, Duration::from_secs(60)).unwrap();
        let body: String = private.lines().nth(1).unwrap().to_owned();
        assert!(!format!("{signer:?}").contains(&body));
        let issued = signer.issue(1, 0).unwrap();
        assert!(!format!("{issued:?}").contains(&issued.token));
        assert!(TokenSigner::from_pem("not a key", Duration::from_secs(1)).is_err());
        assert_eq!(
            TokenVerifier::from_pems::<&str>(&[]).err(),
            Some(TokenError::NoKeys)
        );
    }
}
