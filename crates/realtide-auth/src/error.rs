//! Errors: [`ConfigError`] for bad key/validator settings, [`AuthError`] for rejected tokens.
//!
//! The `Display` strings of [`AuthError`] are the exact messages of the reference server
//! (`realtime_channel.ex`, `user_socket.ex`), so the server can forward them verbatim in join
//! replies (`"<Code>: <message>"`, see [`AuthError::join_code`]) and channel shutdowns.

use std::fmt;

/// A key or validator setting could not be used. Each message names the setting at fault.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    /// Neither a shared secret nor a JWKS was given, so no token could ever be verified.
    #[error("no JWT verification key configured: set JWT_SECRET, JWT_JWKS, or both")]
    NoKeys,
    /// `JWT_JWKS` is not JSON.
    #[error("JWT_JWKS is not valid JSON")]
    JwksJson {
        /// The JSON parse error.
        #[source]
        source: serde_json::Error,
    },
    /// `JWT_JWKS` is JSON but not an object.
    #[error("JWT_JWKS must be a JSON object such as {{\"keys\": [...]}}")]
    JwksNotObject,
    /// `JWT_JWKS` has a `keys` member that is not an array.
    #[error("JWT_JWKS member `keys` must be a JSON array of JWKs")]
    JwksKeysNotArray,
    /// `JWT_CLAIM_VALIDATORS` is not JSON.
    #[error("JWT_CLAIM_VALIDATORS is not valid JSON")]
    ClaimValidatorsJson {
        /// The JSON parse error.
        #[source]
        source: serde_json::Error,
    },
    /// `JWT_CLAIM_VALIDATORS` is JSON but not an object.
    #[error("JWT_CLAIM_VALIDATORS must be a JSON object mapping claim names to expected values")]
    ClaimValidatorsNotObject,
}

/// Why a token was rejected.
///
/// `Display` gives the reference server's message; [`AuthError::join_code`] gives the code
/// that prefixes it in a join error reply.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// `exp` is an integer not after the validation time; `seconds_ago` = now − exp (≥ 0).
    #[error("Token has expired {seconds_ago} seconds ago")]
    Expired {
        /// Validation time minus `exp`, in seconds.
        seconds_ago: i64,
    },
    /// The claims lack `role` (or it is not a string) or lack `exp`.
    #[error("Fields `role` and `exp` are required in JWT")]
    MissingClaims,
    /// The token verified but has no time left (`exp − now ≤ 0` after rounding a decimal
    /// `exp`). Never returned by [`crate::JwtVerifier::verify`]; produced by
    /// [`crate::Claims::confirm_expiry`], which mirrors the reference's channel token check.
    #[error("Token expiration time is invalid")]
    InvalidExpiration,
    /// Not three base64url parts, or the header or claims are not JSON objects.
    #[error("The token provided is not a valid JWT")]
    Malformed,
    /// The signature does not match the selected key.
    #[error("Failed to validate JWT signature")]
    InvalidSignature,
    /// No key can be chosen: unsupported `alg`, asymmetric `alg` without `kid` (or without a
    /// configured JWKS), HS `alg` without a shared secret, or an unusable JWK.
    #[error("Failed to generate JWT signer, check your JWT secret or JWKS configuration")]
    NoSigner,
    /// The header's `kid` has no JWK of the right key type in the JWKS.
    #[error(
        "Failed to generate JWT signer for key ID (kid) {}, check your JWT secret or JWKS configuration",
        ElixirInspect(.0)
    )]
    UnknownKid(String),
    /// A claim failed validation: a `JWT_CLAIM_VALIDATORS` mismatch, or a present `exp` / `iat`
    /// of the wrong type (`exp` must be a number, `iat` a number; a decimal `exp` in the past
    /// also lands here, as in the reference). The server answers these with its generic errors
    /// (`Error connecting to Realtime`, `Unknown Error on Channel`).
    #[error("JWT claim `{0}` failed validation")]
    ClaimMismatch(String),
}

impl AuthError {
    /// The code that prefixes the message in a join error reply (`"<code>: <message>"`), or
    /// `None` when the reference answers `Unknown Error on Channel` instead.
    #[must_use]
    pub fn join_code(&self) -> Option<&'static str> {
        match self {
            Self::Expired { .. } | Self::MissingClaims | Self::InvalidExpiration => {
                Some("InvalidJWTToken")
            }
            Self::Malformed => Some("MalformedJWT"),
            Self::InvalidSignature => Some("JwtSignatureError"),
            Self::NoSigner | Self::UnknownKid(_) => Some("JwtSignerError"),
            Self::ClaimMismatch(_) => None,
        }
    }
}

/// Renders a string the way Elixir's `inspect/1` does, which the reference uses for the `kid`
/// in signer errors: double-quoted with escapes when printable, `<<b, …>>` bytes otherwise.
struct ElixirInspect<'a>(&'a str);

impl fmt::Display for ElixirInspect<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        if !text.chars().all(is_printable) {
            f.write_str("<<")?;
            for (i, byte) in text.bytes().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{byte}")?;
            }
            return f.write_str(">>");
        }
        f.write_str("\"")?;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\u{0B}' => f.write_str("\\v")?,
                '\u{08}' => f.write_str("\\b")?,
                '\u{0C}' => f.write_str("\\f")?,
                '\u{1B}' => f.write_str("\\e")?,
                '\u{07}' => f.write_str("\\a")?,
                '#' if chars.peek() == Some(&'{') => f.write_str("\\#")?,
                other => write!(f, "{other}")?,
            }
        }
        f.write_str("\"")
    }
}

/// Approximation of Elixir's `String.printable?/1` for one character.
fn is_printable(c: char) -> bool {
    matches!(
        c,
        '\u{20}'
            ..='\u{7E}' | '\n' | '\r' | '\t' | '\u{0B}' | '\u{08}' | '\u{0C}' | '\u{1B}' | '\u{07}'
    ) || (c >= '\u{A0}' && !matches!(c, '\u{FFFE}' | '\u{FFFF}'))
}

#[cfg(test)]
mod tests {
    use super::{AuthError, ElixirInspect};

    #[test]
    fn inspect_quotes_and_escapes() {
        assert_eq!(ElixirInspect("abc").to_string(), "\"abc\"");
        assert_eq!(ElixirInspect("a\"b\\c").to_string(), "\"a\\\"b\\\\c\"");
        assert_eq!(ElixirInspect("x#{y}").to_string(), "\"x\\#{y}\"");
        assert_eq!(ElixirInspect("line\nnext").to_string(), "\"line\\nnext\"");
        assert_eq!(ElixirInspect("é").to_string(), "\"é\"");
        assert_eq!(ElixirInspect("a\u{1}").to_string(), "<<97, 1>>");
        assert_eq!(ElixirInspect("").to_string(), "\"\"");
    }

    #[test]
    fn join_codes() {
        assert_eq!(
            AuthError::Expired { seconds_ago: 3 }.join_code(),
            Some("InvalidJWTToken")
        );
        assert_eq!(
            AuthError::MissingClaims.join_code(),
            Some("InvalidJWTToken")
        );
        assert_eq!(
            AuthError::InvalidExpiration.join_code(),
            Some("InvalidJWTToken")
        );
        assert_eq!(AuthError::Malformed.join_code(), Some("MalformedJWT"));
        assert_eq!(
            AuthError::InvalidSignature.join_code(),
            Some("JwtSignatureError")
        );
        assert_eq!(AuthError::NoSigner.join_code(), Some("JwtSignerError"));
        assert_eq!(
            AuthError::UnknownKid("k".into()).join_code(),
            Some("JwtSignerError")
        );
        assert_eq!(AuthError::ClaimMismatch("iss".into()).join_code(), None);
    }
}
