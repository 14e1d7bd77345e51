//! Token minting with a shared secret, for the `realtide token` command and for tests.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// Signs `claims` with HS256 and `secret`, header `{"typ":"JWT","alg":"HS256"}`.
///
/// `claims` is serialized as given (normally a JSON object with `role` and `exp`).
#[must_use]
pub fn sign_hs256(claims: &Value, secret: &str) -> String {
    let header = Header::new(Algorithm::HS256);
    let key = EncodingKey::from_secret(secret.as_bytes());
    // HMAC accepts keys of any length and a `Value` always serializes, so encoding cannot
    // fail; the empty string is only a no-panic fallback and never verifies.
    jsonwebtoken::encode(&header, claims, &key).unwrap_or_default()
}
