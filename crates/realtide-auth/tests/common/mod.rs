//! Shared helpers for the integration tests: fixture keys and hand-built tokens.

// Each test binary uses a different subset of these helpers.
#![allow(
    dead_code,
    reason = "each test crate uses a different part of this module"
)]

use std::error::Error;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use realtide_auth::JwtVerifier;
use serde_json::{Value, json};

pub type TestResult<T = ()> = Result<T, Box<dyn Error>>;

/// The fixed "current time" used by most tests.
pub const NOW: i64 = 1_700_000_000;
/// The shared secret used by most tests.
pub const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("keys")
        .join(name)
}

/// The DER body of a PEM fixture under `tests/keys/`.
pub fn pem_der(name: &str) -> TestResult<Vec<u8>> {
    let text = std::fs::read_to_string(key_path(name))?;
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    Ok(STANDARD.decode(body)?)
}

/// `tests/keys/jwks_public.json` as text.
pub fn jwks_text() -> TestResult<String> {
    Ok(std::fs::read_to_string(key_path("jwks_public.json"))?)
}

pub fn rsa_key() -> TestResult<EncodingKey> {
    Ok(EncodingKey::from_rsa_der(&pem_der(
        "rsa_private_pkcs1.pem",
    )?))
}

pub fn p256_key() -> TestResult<EncodingKey> {
    Ok(EncodingKey::from_ec_der(&pem_der(
        "ec_p256_private_pkcs8.pem",
    )?))
}

pub fn p384_key() -> TestResult<EncodingKey> {
    Ok(EncodingKey::from_ec_der(&pem_der(
        "ec_p384_private_pkcs8.pem",
    )?))
}

pub fn ed25519_key() -> TestResult<EncodingKey> {
    Ok(EncodingKey::from_ed_der(&pem_der(
        "ed25519_private_pkcs8.pem",
    )?))
}

pub fn b64(value: &Value) -> TestResult<String> {
    Ok(URL_SAFE_NO_PAD.encode(serde_json::to_vec(value)?))
}

/// A token with exactly this header and these claims, signed with `key` using `alg`
/// (the header's own `alg` is not touched, so it may disagree on purpose).
pub fn token(
    header: &Value,
    claims: &Value,
    key: &EncodingKey,
    alg: Algorithm,
) -> TestResult<String> {
    let signing_input = format!("{}.{}", b64(header)?, b64(claims)?);
    let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), key, alg)?;
    Ok(format!("{signing_input}.{signature}"))
}

/// An HS256 token over `claims` with the test secret and header `{"alg":"HS256","typ":"JWT"}`.
pub fn hs256(claims: &Value) -> TestResult<String> {
    token(
        &json!({"alg": "HS256", "typ": "JWT"}),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
}

/// Valid claims expiring an hour after [`NOW`].
pub fn good_claims() -> Value {
    json!({"role": "authenticated", "exp": NOW + 3600, "sub": "user-1"})
}

/// A verifier with the test secret only.
pub fn secret_verifier() -> TestResult<JwtVerifier> {
    Ok(JwtVerifier::new(Some(SECRET), None, None)?)
}

/// A verifier with the test secret and the fixture JWKS.
pub fn jwks_verifier() -> TestResult<JwtVerifier> {
    Ok(JwtVerifier::new(Some(SECRET), Some(&jwks_text()?), None)?)
}
