//! JWKS-based keys: `oct` keys by `kid`, RSA, EC and OKP (Ed25519), and signer errors.

mod common;

use common::{
    NOW, SECRET, TestResult, ed25519_key, good_claims, jwks_text, jwks_verifier, p256_key,
    p384_key, rsa_key, secret_verifier, token,
};
use jsonwebtoken::{Algorithm, EncodingKey};
use realtide_auth::{AuthError, JwtVerifier};
use serde_json::{Value, json};

fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "typ": "JWT", "kid": kid})
}

fn assert_ok(verifier: &JwtVerifier, token: &str) -> TestResult {
    let claims = verifier.verify_at(token, NOW)?;
    assert_eq!(claims.role, "authenticated");
    assert_eq!(claims.exp, NOW + 3600);
    Ok(())
}

fn assert_err(verifier: &JwtVerifier, token: &str, expected: AuthError) {
    assert_eq!(verifier.verify_at(token, NOW).map(|_| ()), Err(expected));
}

#[test]
fn hs_with_kid_in_jwks_uses_the_oct_key() -> TestResult {
    let jwks = r#"{"keys": [{"kty": "oct", "kid": "hs-1", "k": "b2N0LXNlY3JldC12YWx1ZQ"}]}"#;
    let verifier = JwtVerifier::new(Some(SECRET), Some(jwks), None)?;
    let oct = EncodingKey::from_secret(b"oct-secret-value");
    let shared = EncodingKey::from_secret(SECRET.as_bytes());

    let signed_with_oct = token(
        &header("HS256", "hs-1"),
        &good_claims(),
        &oct,
        Algorithm::HS256,
    )?;
    assert_ok(&verifier, &signed_with_oct)?;
    // The oct key wins over the shared secret when the kid matches.
    let signed_with_secret = token(
        &header("HS256", "hs-1"),
        &good_claims(),
        &shared,
        Algorithm::HS256,
    )?;
    assert_err(&verifier, &signed_with_secret, AuthError::InvalidSignature);
    // Other HS sizes use the same key.
    let hs512 = token(
        &header("HS512", "hs-1"),
        &good_claims(),
        &oct,
        Algorithm::HS512,
    )?;
    assert_ok(&verifier, &hs512)?;
    Ok(())
}

#[test]
fn hs_with_kid_absent_from_jwks_uses_the_secret() -> TestResult {
    let jwks = r#"{"keys": [{"kty": "oct", "kid": "hs-1", "k": "b2N0LXNlY3JldC12YWx1ZQ"}]}"#;
    let verifier = JwtVerifier::new(Some(SECRET), Some(jwks), None)?;
    let shared = EncodingKey::from_secret(SECRET.as_bytes());
    // Typical Supabase Auth token: HS256 with a kid that has no JWK.
    let token_other_kid = token(
        &header("HS256", "unknown-kid"),
        &good_claims(),
        &shared,
        Algorithm::HS256,
    )?;
    assert_ok(&verifier, &token_other_kid)?;
    // A kid of another key type does not count either.
    let token_rsa_kid = token(
        &header("HS256", "rsa-key-1"),
        &good_claims(),
        &shared,
        Algorithm::HS256,
    )?;
    assert_ok(&jwks_verifier()?, &token_rsa_kid)?;
    // Without any JWKS the kid is ignored.
    assert_ok(&secret_verifier()?, &token_other_kid)?;
    // A non-string kid is ignored.
    let numeric_kid = token(
        &json!({"alg": "HS256", "kid": 5}),
        &good_claims(),
        &shared,
        Algorithm::HS256,
    )?;
    assert_ok(&verifier, &numeric_kid)?;
    Ok(())
}

#[test]
fn hs_oct_key_with_bad_k_is_an_unknown_kid() -> TestResult {
    let jwks = r#"{"keys": [{"kty": "oct", "kid": "bad", "k": "not base64!"}]}"#;
    let verifier = JwtVerifier::new(Some(SECRET), Some(jwks), None)?;
    let shared = EncodingKey::from_secret(SECRET.as_bytes());
    let token = token(
        &header("HS256", "bad"),
        &good_claims(),
        &shared,
        Algorithm::HS256,
    )?;
    assert_err(&verifier, &token, AuthError::UnknownKid("bad".into()));
    Ok(())
}

#[test]
fn rsa_keys_verify() -> TestResult {
    let verifier = jwks_verifier()?;
    let key = rsa_key()?;
    for (alg, name) in [
        (Algorithm::RS256, "RS256"),
        (Algorithm::RS384, "RS384"),
        (Algorithm::RS512, "RS512"),
    ] {
        let token = token(&header(name, "rsa-key-1"), &good_claims(), &key, alg)?;
        assert_ok(&verifier, &token)?;
    }
    Ok(())
}

#[test]
fn ec_keys_verify() -> TestResult {
    let verifier = jwks_verifier()?;
    let token256 = token(
        &header("ES256", "ec-p256-key-1"),
        &good_claims(),
        &p256_key()?,
        Algorithm::ES256,
    )?;
    assert_ok(&verifier, &token256)?;
    let token384 = token(
        &header("ES384", "ec-p384-key-1"),
        &good_claims(),
        &p384_key()?,
        Algorithm::ES384,
    )?;
    assert_ok(&verifier, &token384)?;
    // ES256 pointing at the P-384 key cannot verify.
    let mismatched = token(
        &header("ES256", "ec-p384-key-1"),
        &good_claims(),
        &p256_key()?,
        Algorithm::ES256,
    )?;
    assert_err(&verifier, &mismatched, AuthError::InvalidSignature);
    Ok(())
}

#[test]
fn ed25519_keys_verify_with_eddsa_and_ed25519_alg_names() -> TestResult {
    let verifier = jwks_verifier()?;
    let key = ed25519_key()?;
    for name in ["EdDSA", "Ed25519"] {
        let token = token(
            &header(name, "ed25519-key-1"),
            &good_claims(),
            &key,
            Algorithm::EdDSA,
        )?;
        assert_ok(&verifier, &token)?;
    }
    Ok(())
}

#[test]
fn wrong_asymmetric_key_is_a_signature_error() -> TestResult {
    let verifier = jwks_verifier()?;
    // Signed by the RSA key but claims to be the Ed25519 key.
    let forged = token(
        &header("EdDSA", "ed25519-key-1"),
        &good_claims(),
        &ed25519_key()?,
        Algorithm::EdDSA,
    )?;
    let mut parts = forged.rsplitn(2, '.');
    let _signature = parts.next();
    let input = parts.next().unwrap_or_default();
    let other = jsonwebtoken::crypto::sign(input.as_bytes(), &rsa_key()?, Algorithm::RS256)?;
    assert_err(
        &verifier,
        &format!("{input}.{other}"),
        AuthError::InvalidSignature,
    );
    // An HS token signed with the public RSA modulus as secret must not pass as RS256.
    let confused = token(
        &header("RS256", "rsa-key-1"),
        &good_claims(),
        &EncodingKey::from_secret(b"AQAB"),
        Algorithm::HS256,
    )?;
    assert_err(&verifier, &confused, AuthError::InvalidSignature);
    Ok(())
}

#[test]
fn asymmetric_without_kid_has_no_signer() -> TestResult {
    let verifier = jwks_verifier()?;
    let key = rsa_key()?;
    let token = token(
        &json!({"alg": "RS256", "typ": "JWT"}),
        &good_claims(),
        &key,
        Algorithm::RS256,
    )?;
    assert_err(&verifier, &token, AuthError::NoSigner);
    let token_numeric_kid = common::token(
        &json!({"alg": "RS256", "kid": 1}),
        &good_claims(),
        &key,
        Algorithm::RS256,
    )?;
    assert_err(&verifier, &token_numeric_kid, AuthError::NoSigner);
    Ok(())
}

#[test]
fn asymmetric_without_configured_jwks_has_no_signer() -> TestResult {
    let token = token(
        &header("RS256", "rsa-key-1"),
        &good_claims(),
        &rsa_key()?,
        Algorithm::RS256,
    )?;
    assert_err(&secret_verifier()?, &token, AuthError::NoSigner);
    // A JWKS object without `keys` behaves like no JWKS.
    let verifier = JwtVerifier::new(Some(SECRET), Some("{}"), None)?;
    assert_err(&verifier, &token, AuthError::NoSigner);
    Ok(())
}

#[test]
fn unknown_kid_names_the_kid() -> TestResult {
    let verifier = jwks_verifier()?;
    let token = token(
        &header("RS256", "missing-kid"),
        &good_claims(),
        &rsa_key()?,
        Algorithm::RS256,
    )?;
    let error = verifier.verify_at(&token, NOW).err();
    assert_eq!(error, Some(AuthError::UnknownKid("missing-kid".into())));
    assert_eq!(
        error.as_ref().map(ToString::to_string).as_deref(),
        Some(
            "Failed to generate JWT signer for key ID (kid) \"missing-kid\", check your JWT secret or JWKS configuration"
        )
    );
    assert_eq!(error.and_then(|e| e.join_code()), Some("JwtSignerError"));
    // The kid must belong to a key of the right type.
    let ec_kid = common::token(
        &header("RS256", "ec-p256-key-1"),
        &good_claims(),
        &rsa_key()?,
        Algorithm::RS256,
    )?;
    assert_err(
        &verifier,
        &ec_kid,
        AuthError::UnknownKid("ec-p256-key-1".into()),
    );
    // An empty JWKS still reports the kid.
    let empty = JwtVerifier::new(None, Some(r#"{"keys": []}"#), None)?;
    assert_err(&empty, &token, AuthError::UnknownKid("missing-kid".into()));
    Ok(())
}

#[test]
fn unsupported_curves_and_algorithms() -> TestResult {
    let mut jwks: Value = serde_json::from_str(&jwks_text()?)?;
    if let Some(keys) = jwks.get_mut("keys").and_then(Value::as_array_mut) {
        keys.push(json!({"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": "AAAA"}));
        keys.push(json!({"kty": "OKP", "kid": "ed448", "crv": "Ed448", "x": "AAAA"}));
        keys.push(json!({"kty": "OKP", "kid": "short", "crv": "Ed25519", "x": "AAAA"}));
        keys.push(json!({"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"}));
    }
    let verifier = JwtVerifier::new(None, Some(&jwks.to_string()), None)?;
    let key = ed25519_key()?;
    let cases = [
        ("EdDSA", "x25519", AuthError::UnknownKid("x25519".into())),
        ("Ed448", "ed448", AuthError::NoSigner),
        ("EdDSA", "ed448", AuthError::NoSigner),
        ("EdDSA", "short", AuthError::NoSigner),
        ("Ed448", "ed25519-key-1", AuthError::NoSigner),
        ("ES512", "p521", AuthError::NoSigner),
        ("ES512", "nope", AuthError::UnknownKid("nope".into())),
        ("ES256", "p521", AuthError::NoSigner),
        ("PS256", "rsa-key-1", AuthError::NoSigner),
        ("none", "rsa-key-1", AuthError::NoSigner),
    ];
    for (alg, kid, expected) in cases {
        let token = token(&header(alg, kid), &good_claims(), &key, Algorithm::EdDSA)?;
        assert_eq!(
            verifier.verify_at(&token, NOW).map(|_| ()),
            Err(expected),
            "{alg} {kid}"
        );
    }
    Ok(())
}

#[test]
fn claims_rules_apply_to_asymmetric_tokens() -> TestResult {
    let verifier = JwtVerifier::new(None, Some(&jwks_text()?), Some(r#"{"iss": "auth"}"#))?;
    let key = p256_key()?;
    let expired = token(
        &header("ES256", "ec-p256-key-1"),
        &json!({"role": "anon", "exp": NOW - 9, "iss": "auth"}),
        &key,
        Algorithm::ES256,
    )?;
    assert_err(&verifier, &expired, AuthError::Expired { seconds_ago: 9 });
    let wrong_iss = token(
        &header("ES256", "ec-p256-key-1"),
        &json!({"role": "anon", "exp": NOW + 9, "iss": "other"}),
        &key,
        Algorithm::ES256,
    )?;
    assert_err(
        &verifier,
        &wrong_iss,
        AuthError::ClaimMismatch("iss".into()),
    );
    let no_role = token(
        &header("ES256", "ec-p256-key-1"),
        &json!({"exp": NOW + 9}),
        &key,
        Algorithm::ES256,
    )?;
    assert_err(&verifier, &no_role, AuthError::MissingClaims);
    Ok(())
}
