//! [`JwtVerifier`]: signer selection and signature checking, then claim validation.
//!
//! Order (reference `ChannelsAuthorization.authorize_conn/3` → `JwtVerification.verify/3`):
//! clean the token (percent-decode, drop whitespace) → split and decode claims and header
//! ([`AuthError::Malformed`]) → choose the key from the header `alg`/`kid`
//! ([`AuthError::NoSigner`], [`AuthError::UnknownKid`]) → check the signature
//! ([`AuthError::InvalidSignature`]) → validate claims and require `role` and `exp`
//! (see [`crate::claims`]).
//!
//! Key choice by `alg`:
//!
//! | `alg` | key |
//! |---|---|
//! | `HS256`/`HS384`/`HS512` | with a string `kid` and a JWKS `oct` key of that `kid` (string `k`): that key (undecodable `k` → [`AuthError::UnknownKid`]); otherwise the shared secret ([`AuthError::NoSigner`] if none) |
//! | `RS256`/`RS384`/`RS512` | the JWKS `RSA` key with that `kid` |
//! | `ES256`/`ES384` (`ES512` → [`AuthError::NoSigner`] once found) | the JWKS `EC` key with that `kid` |
//! | `EdDSA`/`Ed25519` (`Ed448` → [`AuthError::NoSigner`] once found) | the JWKS `OKP` key with that `kid` and `crv` `Ed25519`/`Ed448`; another `crv` → [`AuthError::UnknownKid`] |
//! | anything else | [`AuthError::NoSigner`] |
//!
//! An asymmetric `alg` without a string `kid`, or with no JWKS `keys` configured, is
//! [`AuthError::NoSigner`]; a `kid` missing from a configured JWKS is [`AuthError::UnknownKid`].

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::claims::{ClaimRules, Claims};
use crate::error::{AuthError, ConfigError};
use crate::jwks::{EcCurve, JwkKey, JwkSet, KeyType, OkpCurve};
use crate::token;

/// Verifies tenant JWTs the way the reference server does. Cheap to clone (shared internals);
/// keys are decoded once at construction.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// The shared HS secret as a decoding key.
    secret: Option<DecodingKey>,
    /// The JWKS, when one with a `keys` member is configured.
    jwks: Option<JwkSet>,
    /// Claim validators, including the built-in `exp` / `iat` rules.
    rules: ClaimRules,
    /// Tokens whose signature this verifier already checked, by SHA-256 of the cleaned token
    /// (bounded, and forgotten after a while): a reconnect or rejoin with the same token skips
    /// the signature check. The claims are still checked every time (expiry moves on).
    verified: moka::sync::Cache<[u8; 32], ()>,
}

/// Most tokens whose verified signature is remembered, and for how long.
const VERIFIED_TOKENS: u64 = 10_000;
const VERIFIED_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never prints key material: only what is configured.
        let validators: Vec<&str> = self.inner.rules.validator_names().collect();
        f.debug_struct("JwtVerifier")
            .field("has_secret", &self.inner.secret.is_some())
            .field("jwks_keys", &self.inner.jwks.as_ref().map(JwkSet::len))
            .field("claim_validators", &validators)
            .finish()
    }
}

impl JwtVerifier {
    /// Builds a verifier.
    ///
    /// * `secret`: the shared HS secret (raw bytes of the string; an empty string counts as
    ///   unset).
    /// * `jwks`: JSON text of `{"keys": [...]}` (blank counts as unset; an object without
    ///   `keys` behaves like no JWKS).
    /// * `claim_validators`: JSON object text of exact-match claim validators
    ///   (`JWT_CLAIM_VALIDATORS`); `None` or blank = `{}`.
    ///
    /// Fails when the JSON is invalid or when neither a secret nor a JWKS is given.
    pub fn new(
        secret: Option<&str>,
        jwks: Option<&str>,
        claim_validators: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let secret = secret.filter(|secret| !secret.is_empty());
        let jwks_text = jwks.filter(|text| !text.trim().is_empty());
        if secret.is_none() && jwks_text.is_none() {
            return Err(ConfigError::NoKeys);
        }
        let jwks = match jwks_text {
            Some(text) => JwkSet::parse(text)?,
            None => None,
        };
        let rules = ClaimRules::parse(claim_validators)?;
        Ok(Self {
            inner: Arc::new(Inner {
                secret: secret.map(|secret| DecodingKey::from_secret(secret.as_bytes())),
                jwks,
                rules,
                verified: moka::sync::Cache::builder()
                    .max_capacity(VERIFIED_TOKENS)
                    .time_to_live(VERIFIED_FOR)
                    .build(),
            }),
        })
    }

    /// Verifies `token` at the current system time.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| {
                i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
            });
        self.verify_at(token, now)
    }

    /// Verifies `token` at `now_unix` (unix seconds).
    pub fn verify_at(&self, token: &str, now_unix: i64) -> Result<Claims, AuthError> {
        use sha2::Digest;
        let cleaned = token::clean(token);
        let parsed = token::parse(&cleaned)?;
        let digest: [u8; 32] = sha2::Sha256::digest(&cleaned).into();
        if !self.inner.verified.contains_key(&digest) {
            let (key, algorithm) = self.signer(&parsed.header)?;
            let signature =
                std::str::from_utf8(parsed.signature).map_err(|_| AuthError::InvalidSignature)?;
            match jsonwebtoken::crypto::verify(signature, parsed.signing_input, key, algorithm) {
                Ok(true) => self.inner.verified.insert(digest, ()),
                Ok(false) | Err(_) => return Err(AuthError::InvalidSignature),
            }
        }
        self.inner.rules.apply(parsed.claims, now_unix)
    }

    /// Chooses the key and algorithm for a token header.
    fn signer(
        &self,
        header: &serde_json::Map<String, Value>,
    ) -> Result<(&DecodingKey, Algorithm), AuthError> {
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(AuthError::NoSigner)?;
        let kid = header.get("kid").and_then(Value::as_str);
        match alg {
            "HS256" => self.hmac(kid, Algorithm::HS256),
            "HS384" => self.hmac(kid, Algorithm::HS384),
            "HS512" => self.hmac(kid, Algorithm::HS512),
            "RS256" | "RS384" | "RS512" => {
                let algorithm = match alg {
                    "RS256" => Algorithm::RS256,
                    "RS384" => Algorithm::RS384,
                    _ => Algorithm::RS512,
                };
                match self.jwk(KeyType::Rsa, kid)? {
                    JwkKey::Rsa(Some(key)) => Ok((key, algorithm)),
                    _ => Err(AuthError::NoSigner),
                }
            }
            "ES256" | "ES384" | "ES512" => match (alg, self.jwk(KeyType::Ec, kid)?) {
                ("ES256", JwkKey::Ec(EcCurve::P256, Some(key))) => Ok((key, Algorithm::ES256)),
                ("ES384", JwkKey::Ec(EcCurve::P384, Some(key))) => Ok((key, Algorithm::ES384)),
                // A usable key on the other curve cannot have produced the signature.
                ("ES256" | "ES384", JwkKey::Ec(_, Some(_))) => Err(AuthError::InvalidSignature),
                _ => Err(AuthError::NoSigner),
            },
            "EdDSA" | "Ed25519" | "Ed448" => {
                let found = self.jwk(KeyType::Okp, kid)?;
                match (alg, found) {
                    (_, JwkKey::Okp(OkpCurve::NotSigning, _)) => {
                        Err(AuthError::UnknownKid(kid.unwrap_or_default().to_owned()))
                    }
                    ("EdDSA" | "Ed25519", JwkKey::Okp(OkpCurve::Ed25519, Some(key))) => {
                        Ok((key, Algorithm::EdDSA))
                    }
                    _ => Err(AuthError::NoSigner),
                }
            }
            _ => Err(AuthError::NoSigner),
        }
    }

    /// HS key choice: a matching JWKS `oct` key, else the shared secret.
    fn hmac(
        &self,
        kid: Option<&str>,
        algorithm: Algorithm,
    ) -> Result<(&DecodingKey, Algorithm), AuthError> {
        let oct = match (kid, &self.inner.jwks) {
            (Some(kid), Some(jwks)) => jwks.find(KeyType::Oct, kid).map(|key| (kid, key)),
            _ => None,
        };
        if let Some((kid, JwkKey::Hmac(key))) = oct {
            return match key {
                Some(key) => Ok((key, algorithm)),
                None => Err(AuthError::UnknownKid(kid.to_owned())),
            };
        }
        match &self.inner.secret {
            Some(secret) => Ok((secret, algorithm)),
            None => Err(AuthError::NoSigner),
        }
    }

    /// Asymmetric key lookup: needs a `kid` and a JWKS; a miss names the `kid`.
    fn jwk(&self, key_type: KeyType, kid: Option<&str>) -> Result<&JwkKey, AuthError> {
        let (Some(kid), Some(jwks)) = (kid, &self.inner.jwks) else {
            return Err(AuthError::NoSigner);
        };
        jwks.find(key_type, kid)
            .ok_or_else(|| AuthError::UnknownKid(kid.to_owned()))
    }
}
