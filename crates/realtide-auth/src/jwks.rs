//! The tenant JWKS (`JWT_JWKS`): parsed once into decoding keys indexed by key type and `kid`.
//!
//! Lookup follows the reference (`jwt_verification.ex`): the **first** JWK with the wanted
//! `kty` and a string `kid` equal to the token's wins. An `oct` JWK only counts when its `k` is
//! a string. JWKs that cannot be turned into a key are kept (so the lookup still finds them) but
//! marked unusable, which the verifier reports as a signer error rather than panicking later.

use std::collections::HashMap;

use base64::Engine as _;
use jsonwebtoken::DecodingKey;
use serde_json::{Map, Value};

use crate::error::ConfigError;
use crate::token::BASE64URL_LENIENT;

/// The JWK key types (`kty`) the verifier looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum KeyType {
    /// `oct`: shared HMAC secret.
    Oct,
    /// `RSA`.
    Rsa,
    /// `EC`: ECDSA.
    Ec,
    /// `OKP`: EdDSA.
    Okp,
}

impl KeyType {
    fn from_kty(kty: &str) -> Option<Self> {
        match kty {
            "oct" => Some(Self::Oct),
            "RSA" => Some(Self::Rsa),
            "EC" => Some(Self::Ec),
            "OKP" => Some(Self::Okp),
            _ => None,
        }
    }
}

/// Elliptic curves of `EC` JWKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EcCurve {
    /// `P-256` (ES256).
    P256,
    /// `P-384` (ES384).
    P384,
    /// Anything else (`P-521`, unknown, missing); cannot be verified.
    Other,
}

/// Curves of `OKP` JWKs, as far as the reference distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OkpCurve {
    /// `Ed25519`.
    Ed25519,
    /// `Ed448`: accepted by the reference, but no verifier is available here.
    Ed448,
    /// Any other curve (for example `X25519`) or none: the reference treats the `kid` as not
    /// found.
    NotSigning,
}

/// One usable-or-not key from the JWKS. `None` keys are present but unusable.
#[derive(Debug, Clone)]
pub(crate) enum JwkKey {
    /// `oct`; `None` when `k` is not valid base64url (the reference then reports the `kid`).
    Hmac(Option<DecodingKey>),
    /// `RSA`; `None` when `n`/`e` are missing or not base64url.
    Rsa(Option<DecodingKey>),
    /// `EC`; `None` when `x`/`y` are missing, undecodable, or of the wrong size for the curve.
    Ec(EcCurve, Option<DecodingKey>),
    /// `OKP`; `None` unless `crv` is `Ed25519` and `x` decodes to 32 bytes.
    Okp(OkpCurve, Option<DecodingKey>),
}

/// The parsed JWKS.
#[derive(Debug, Clone, Default)]
pub(crate) struct JwkSet {
    by_type: HashMap<KeyType, HashMap<String, JwkKey>>,
    len: usize,
}

impl JwkSet {
    /// Parses `JWT_JWKS` text. Returns `Ok(None)` when the object has no `keys` member: the
    /// reference then behaves as if no JWKS was configured at all.
    pub(crate) fn parse(text: &str) -> Result<Option<Self>, ConfigError> {
        let value: Value =
            serde_json::from_str(text).map_err(|source| ConfigError::JwksJson { source })?;
        let Value::Object(object) = value else {
            return Err(ConfigError::JwksNotObject);
        };
        let Some(keys) = object.get("keys") else {
            return Ok(None);
        };
        let Value::Array(keys) = keys else {
            return Err(ConfigError::JwksKeysNotArray);
        };
        let mut set = Self::default();
        for jwk in keys {
            // Entries that are not objects cannot match any lookup; skip them.
            if let Value::Object(jwk) = jwk {
                set.insert(jwk);
            }
        }
        Ok(Some(set))
    }

    /// Finds the first JWK with this key type and `kid`.
    pub(crate) fn find(&self, key_type: KeyType, kid: &str) -> Option<&JwkKey> {
        self.by_type.get(&key_type)?.get(kid)
    }

    /// Number of indexed JWKs (first occurrences only).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn insert(&mut self, jwk: &Map<String, Value>) {
        let Some(key_type) = jwk
            .get("kty")
            .and_then(Value::as_str)
            .and_then(KeyType::from_kty)
        else {
            return;
        };
        let Some(kid) = jwk.get("kid").and_then(Value::as_str) else {
            return;
        };
        let key = match key_type {
            KeyType::Oct => match jwk.get("k").and_then(Value::as_str) {
                Some(k) => JwkKey::Hmac(decode(k).map(|secret| DecodingKey::from_secret(&secret))),
                // The reference's `oct` lookup requires a string `k`; otherwise no match.
                None => return,
            },
            KeyType::Rsa => JwkKey::Rsa(rsa_key(jwk)),
            KeyType::Ec => {
                let (curve, key) = ec_key(jwk);
                JwkKey::Ec(curve, key)
            }
            KeyType::Okp => {
                let (curve, key) = okp_key(jwk);
                JwkKey::Okp(curve, key)
            }
        };
        let slot = self.by_type.entry(key_type).or_default();
        if !slot.contains_key(kid) {
            slot.insert(kid.to_owned(), key);
            self.len += 1;
        }
    }
}

/// Lenient base64url decoding of a JWK member.
fn decode(text: &str) -> Option<Vec<u8>> {
    BASE64URL_LENIENT.decode(text).ok()
}

fn member(jwk: &Map<String, Value>, name: &str) -> Option<Vec<u8>> {
    jwk.get(name).and_then(Value::as_str).and_then(decode)
}

fn rsa_key(jwk: &Map<String, Value>) -> Option<DecodingKey> {
    let n = member(jwk, "n")?;
    let e = member(jwk, "e")?;
    if n.is_empty() || e.is_empty() {
        return None;
    }
    Some(DecodingKey::from_rsa_raw_components(&n, &e))
}

fn ec_key(jwk: &Map<String, Value>) -> (EcCurve, Option<DecodingKey>) {
    let (curve, size) = match jwk.get("crv").and_then(Value::as_str) {
        Some("P-256") => (EcCurve::P256, 32),
        Some("P-384") => (EcCurve::P384, 48),
        _ => return (EcCurve::Other, None),
    };
    let point = ec_point(jwk, size);
    (curve, point.map(|point| DecodingKey::from_ec_der(&point)))
}

/// The uncompressed SEC1 point `04 || x || y`, as `DecodingKey::from_ec_components` builds it.
fn ec_point(jwk: &Map<String, Value>, size: usize) -> Option<Vec<u8>> {
    let x = member(jwk, "x")?;
    let y = member(jwk, "y")?;
    if x.len() != size || y.len() != size {
        return None;
    }
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Some(point)
}

fn okp_key(jwk: &Map<String, Value>) -> (OkpCurve, Option<DecodingKey>) {
    match jwk.get("crv").and_then(Value::as_str) {
        Some("Ed25519") => {
            // The EdDSA verifier slices the first 32 bytes, so anything else must be refused here.
            let key = member(jwk, "x")
                .filter(|x| x.len() == 32)
                .map(|x| DecodingKey::from_ed_der(&x));
            (OkpCurve::Ed25519, key)
        }
        Some("Ed448") => (OkpCurve::Ed448, None),
        _ => (OkpCurve::NotSigning, None),
    }
}

#[cfg(test)]
mod tests {
    use super::{EcCurve, JwkKey, JwkSet, KeyType, OkpCurve};
    use crate::error::ConfigError;

    #[test]
    fn parse_errors() {
        assert!(matches!(
            JwkSet::parse("{"),
            Err(ConfigError::JwksJson { .. })
        ));
        assert!(matches!(
            JwkSet::parse("[]"),
            Err(ConfigError::JwksNotObject)
        ));
        assert!(matches!(
            JwkSet::parse(r#"{"keys": {}}"#),
            Err(ConfigError::JwksKeysNotArray)
        ));
        assert!(matches!(JwkSet::parse("{}"), Ok(None)));
        assert!(matches!(JwkSet::parse(r#"{"keys": []}"#), Ok(Some(_))));
    }

    #[test]
    fn first_match_wins_and_odd_entries_are_skipped() -> Result<(), ConfigError> {
        let set = JwkSet::parse(
            r#"{"keys": [
                1, "x", null,
                {"kty": "oct", "kid": "a"},
                {"kty": "oct", "kid": "a", "k": "c2VjcmV0"},
                {"kty": "oct", "kid": "a", "k": "b3RoZXI"},
                {"kty": "oct", "kid": "bad", "k": "!!"},
                {"kty": "oct", "kid": 5, "k": "c2VjcmV0"},
                {"kty": "OKP", "kid": "x", "crv": "X25519", "x": "AAAA"},
                {"kty": "OKP", "kid": "short", "crv": "Ed25519", "x": "AAAA"},
                {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
                {"kty": "RSA", "kid": "r"}
            ]}"#,
        )?
        .unwrap_or_default();
        assert_eq!(set.len(), 6);
        assert!(matches!(
            set.find(KeyType::Oct, "a"),
            Some(JwkKey::Hmac(Some(_)))
        ));
        assert!(matches!(
            set.find(KeyType::Oct, "bad"),
            Some(JwkKey::Hmac(None))
        ));
        assert!(set.find(KeyType::Rsa, "a").is_none());
        assert!(matches!(
            set.find(KeyType::Okp, "x"),
            Some(JwkKey::Okp(OkpCurve::NotSigning, None))
        ));
        assert!(matches!(
            set.find(KeyType::Okp, "short"),
            Some(JwkKey::Okp(OkpCurve::Ed25519, None))
        ));
        assert!(matches!(
            set.find(KeyType::Ec, "p521"),
            Some(JwkKey::Ec(EcCurve::Other, None))
        ));
        assert!(matches!(
            set.find(KeyType::Rsa, "r"),
            Some(JwkKey::Rsa(None))
        ));
        Ok(())
    }
}
