//! JWT verification for realtide, matching the Supabase Realtime reference server
//! (supabase/realtime `lib/realtime_web/channels/auth/jwt_verification.ex` and
//! `channels_authorization.ex`).
//!
//! Build one [`JwtVerifier`] per tenant configuration (shared secret, JWKS, claim validators)
//! and call [`JwtVerifier::verify`] for every socket, join and `access_token` refresh. Errors
//! are [`AuthError`]s whose `Display` is the reference's message and whose
//! [`AuthError::join_code`] is the join-reply code prefix.
//!
//! Module map:
//! - [`verify`]: [`JwtVerifier`]: token cleaning, signer selection by `alg`/`kid`, signature
//!   check, then claim validation.
//! - [`claims`]: [`Claims`] and the claim rules (`exp`, `iat`, `JWT_CLAIM_VALIDATORS`,
//!   required `role`/`exp`, rounding of decimal times).
//! - `jwks` (private): the JWKS parsed once into decoding keys indexed by key type and `kid`.
//! - `token` (private): percent-decoding, whitespace removal, splitting and decoding of the three parts.
//! - [`sign`]: [`sign_hs256`] for minting tokens (CLI and tests).
//! - [`error`]: [`ConfigError`] and [`AuthError`].
//!
//! Tokens and keys are never logged, and `Debug` output of [`JwtVerifier`] shows no key
//! material.

pub mod claims;
pub mod error;
mod jwks;
pub mod sign;
mod token;
pub mod verify;

pub use claims::Claims;
pub use error::{AuthError, ConfigError};
pub use sign::sign_hs256;
pub use verify::JwtVerifier;
