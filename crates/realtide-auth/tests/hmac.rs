//! Shared-secret (HS*) tokens, claim rules, token cleaning and error messages.

mod common;

use common::{NOW, SECRET, TestResult, good_claims, hs256, secret_verifier, token};
use jsonwebtoken::{Algorithm, EncodingKey};
use realtide_auth::{AuthError, ConfigError, JwtVerifier, sign_hs256};
use serde_json::{Value, json};

fn hs(alg: Algorithm, name: &str, claims: &Value, secret: &str) -> TestResult<String> {
    token(
        &json!({"alg": name, "typ": "JWT"}),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
        alg,
    )
}

#[test]
fn hs256_hs384_hs512_are_accepted() -> TestResult {
    let verifier = secret_verifier()?;
    for (alg, name) in [
        (Algorithm::HS256, "HS256"),
        (Algorithm::HS384, "HS384"),
        (Algorithm::HS512, "HS512"),
    ] {
        let claims = verifier.verify_at(&hs(alg, name, &good_claims(), SECRET)?, NOW)?;
        assert_eq!(claims.role, "authenticated");
        assert_eq!(claims.exp, NOW + 3600);
        assert_eq!(claims.sub.as_deref(), Some("user-1"));
        assert_eq!(claims.all.get("sub"), Some(&json!("user-1")));
        assert_eq!(claims.expires_in(NOW), 3600);
        assert_eq!(claims.confirm_expiry(NOW), Ok(3600));
    }
    Ok(())
}

#[test]
fn header_without_typ_is_accepted() -> TestResult {
    let token = token(
        &json!({"alg": "HS256"}),
        &good_claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )?;
    assert!(secret_verifier()?.verify_at(&token, NOW).is_ok());
    Ok(())
}

#[test]
fn wrong_secret_is_a_signature_error() -> TestResult {
    let token = hs(Algorithm::HS256, "HS256", &good_claims(), "another-secret")?;
    assert_eq!(
        secret_verifier()?.verify_at(&token, NOW).map(|_| ()),
        Err(AuthError::InvalidSignature)
    );
    Ok(())
}

#[test]
fn header_alg_must_match_the_signature() -> TestResult {
    // Signed with HS512 but announced as HS256.
    let token = token(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &good_claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS512,
    )?;
    assert_eq!(
        secret_verifier()?.verify_at(&token, NOW).map(|_| ()),
        Err(AuthError::InvalidSignature)
    );
    Ok(())
}

#[test]
fn tampered_claims_are_a_signature_error() -> TestResult {
    let token = hs256(&good_claims())?;
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = common::b64(&json!({"role": "service_role", "exp": NOW + 3600}))?;
    if let Some(slot) = parts.get_mut(1) {
        *slot = &forged;
    }
    assert_eq!(
        secret_verifier()?
            .verify_at(&parts.join("."), NOW)
            .map(|_| ()),
        Err(AuthError::InvalidSignature)
    );
    Ok(())
}

#[test]
fn signature_is_checked_before_claims() -> TestResult {
    let claims = json!({"exp": NOW - 10});
    let token = hs(Algorithm::HS256, "HS256", &claims, "another-secret")?;
    assert_eq!(
        secret_verifier()?.verify_at(&token, NOW).map(|_| ()),
        Err(AuthError::InvalidSignature)
    );
    Ok(())
}

#[test]
fn expired_reports_exact_seconds() -> TestResult {
    let verifier = secret_verifier()?;
    let token = hs256(&json!({"role": "anon", "exp": NOW - 42}))?;
    let error = verifier.verify_at(&token, NOW).err();
    assert_eq!(error, Some(AuthError::Expired { seconds_ago: 42 }));
    assert_eq!(
        error.map(|e| e.to_string()).as_deref(),
        Some("Token has expired 42 seconds ago")
    );
    // exp == now is expired too, 0 seconds ago.
    let token = hs256(&json!({"role": "anon", "exp": NOW}))?;
    assert_eq!(
        verifier.verify_at(&token, NOW).map(|_| ()),
        Err(AuthError::Expired { seconds_ago: 0 })
    );
    // One second of validity left is fine.
    let token = hs256(&json!({"role": "anon", "exp": NOW + 1}))?;
    assert!(verifier.verify_at(&token, NOW).is_ok());
    Ok(())
}

#[test]
fn verify_uses_the_system_clock() -> TestResult {
    let verifier = secret_verifier()?;
    // NOW is in the past of any machine running these tests.
    let expired = hs256(&json!({"role": "anon", "exp": NOW}))?;
    assert!(matches!(
        verifier.verify(&expired),
        Err(AuthError::Expired { seconds_ago }) if seconds_ago > 0
    ));
    let far_future = hs256(&json!({"role": "anon", "exp": 32_503_680_000_i64}))?;
    assert!(verifier.verify(&far_future).is_ok());
    Ok(())
}

#[test]
fn role_and_exp_are_required() -> TestResult {
    let verifier = secret_verifier()?;
    for claims in [
        json!({"exp": NOW + 10}),
        json!({"role": "anon"}),
        json!({}),
        json!({"role": null, "exp": NOW + 10}),
        json!({"role": 7, "exp": NOW + 10}),
    ] {
        let token = hs256(&claims)?;
        assert_eq!(
            verifier.verify_at(&token, NOW).map(|_| ()),
            Err(AuthError::MissingClaims),
            "{claims}"
        );
    }
    Ok(())
}

#[test]
fn expiry_is_checked_before_required_claims() -> TestResult {
    // As in the reference: Joken validation (exp) runs before the role/exp presence check.
    let token = hs256(&json!({"exp": NOW - 5}))?;
    assert_eq!(
        secret_verifier()?.verify_at(&token, NOW).map(|_| ()),
        Err(AuthError::Expired { seconds_ago: 5 })
    );
    Ok(())
}

#[test]
fn string_exp_is_rejected() -> TestResult {
    let verifier = secret_verifier()?;
    for exp in [
        json!((NOW - 60).to_string()),
        json!((NOW + 1000).to_string()),
        json!(null),
    ] {
        let token = hs256(&json!({"role": "anon", "exp": exp}))?;
        assert_eq!(
            verifier.verify_at(&token, NOW).map(|_| ()),
            Err(AuthError::ClaimMismatch("exp".into())),
            "{exp}"
        );
    }
    Ok(())
}

#[test]
fn iat_must_be_numeric_when_present() -> TestResult {
    let verifier = secret_verifier()?;
    let token = hs256(&json!({"role": "anon", "exp": NOW + 10, "iat": NOW.to_string()}))?;
    assert_eq!(
        verifier.verify_at(&token, NOW).map(|_| ()),
        Err(AuthError::ClaimMismatch("iat".into()))
    );
    let token = hs256(&json!({"role": "anon", "exp": NOW + 10, "iat": NOW}))?;
    assert!(verifier.verify_at(&token, NOW).is_ok());
    let token = hs256(&json!({"role": "anon", "exp": NOW + 10}))?;
    let claims = verifier.verify_at(&token, NOW)?;
    assert!(!claims.all.contains_key("iat"));
    Ok(())
}

#[test]
fn decimal_exp_and_iat_are_rounded() -> TestResult {
    let verifier = secret_verifier()?;
    let exp = NOW as f64 + 99.5;
    let iat = NOW as f64 - 0.4;
    let token = hs256(&json!({"role": "anon", "exp": exp, "iat": iat}))?;
    let claims = verifier.verify_at(&token, NOW)?;
    assert_eq!(claims.exp, NOW + 100);
    assert_eq!(claims.all.get("exp"), Some(&json!(NOW + 100)));
    assert_eq!(claims.all.get("iat"), Some(&json!(NOW)));
    // An expired decimal exp is a generic validation failure in the reference.
    let token = hs256(&json!({"role": "anon", "exp": NOW as f64 - 1.5}))?;
    assert_eq!(
        verifier.verify_at(&token, NOW).map(|_| ()),
        Err(AuthError::ClaimMismatch("exp".into()))
    );
    Ok(())
}

#[test]
fn claim_validators_match_mismatch_and_absent() -> TestResult {
    let verifier = JwtVerifier::new(
        Some(SECRET),
        None,
        Some(r#"{"iss": "Tester", "aud": "www.test.com"}"#),
    )?;
    let base = json!({"role": "anon", "exp": NOW + 10});
    let with = |extra: Value| -> Value {
        let mut claims = base.clone();
        if let (Some(target), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            target.extend(extra);
        }
        claims
    };
    // Matching values.
    let token = hs256(&with(json!({"iss": "Tester", "aud": "www.test.com"})))?;
    assert!(verifier.verify_at(&token, NOW).is_ok());
    // Absent claims are not checked.
    let token = hs256(&base)?;
    assert!(verifier.verify_at(&token, NOW).is_ok());
    let token = hs256(&with(json!({"iss": "Tester"})))?;
    assert!(verifier.verify_at(&token, NOW).is_ok());
    // A mismatch names the claim and has no join code.
    let token = hs256(&with(json!({"iss": "Tester", "aud": "www.other.com"})))?;
    let error = verifier.verify_at(&token, NOW).err();
    assert_eq!(error, Some(AuthError::ClaimMismatch("aud".into())));
    assert_eq!(error.and_then(|e| e.join_code()), None);
    // Type matters (except integer vs float, like Elixir ==).
    let verifier = JwtVerifier::new(Some(SECRET), None, Some(r#"{"level": 1}"#))?;
    let token = hs256(&with(json!({"level": "1"})))?;
    assert_eq!(
        verifier.verify_at(&token, NOW).map(|_| ()),
        Err(AuthError::ClaimMismatch("level".into()))
    );
    let token = hs256(&with(json!({"level": 1.0})))?;
    assert!(verifier.verify_at(&token, NOW).is_ok());
    Ok(())
}

#[test]
fn whitespace_and_percent_encoding_are_removed() -> TestResult {
    let verifier = secret_verifier()?;
    let token = hs256(&good_claims())?;
    let spaced: String = token
        .chars()
        .enumerate()
        .flat_map(|(i, c)| match i % 7 {
            0 => vec![' ', c],
            3 => vec!['\n', c],
            5 => vec!['\r', '\t', c],
            _ => vec![c],
        })
        .collect();
    assert!(verifier.verify_at(&format!("  {spaced}\n"), NOW).is_ok());
    let encoded = token.replace('.', "%2E").replace('-', "%2D");
    assert!(verifier.verify_at(&encoded, NOW).is_ok());
    let encoded_whitespace = format!("%20{}%0A", token.replacen('.', "%0D%0A.", 1));
    assert!(verifier.verify_at(&encoded_whitespace, NOW).is_ok());
    Ok(())
}

#[test]
fn padded_parts_are_accepted() -> TestResult {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE;
    // Build a token whose header/payload carry base64 padding; the signature covers the
    // padded text, as the reference signs whatever text it received.
    let header = URL_SAFE.encode(br#"{"alg":"HS256"}"#);
    let claims = URL_SAFE.encode(serde_json::to_vec(&good_claims())?);
    assert!(header.ends_with('=') || claims.ends_with('='));
    let input = format!("{header}.{claims}");
    let signature = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )?;
    let token = format!("{input}.{signature}");
    assert!(secret_verifier()?.verify_at(&token, NOW).is_ok());
    Ok(())
}

#[test]
fn hs_without_secret_has_no_signer() -> TestResult {
    let verifier = JwtVerifier::new(None, Some(r#"{"keys": []}"#), None)?;
    let token = hs256(&good_claims())?;
    let error = verifier.verify_at(&token, NOW).err();
    assert_eq!(error, Some(AuthError::NoSigner));
    Ok(())
}

#[test]
fn unsupported_algorithms_have_no_signer() -> TestResult {
    let verifier = secret_verifier()?;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    for header in [
        json!({"alg": "none"}),
        json!({"alg": "ZZ999"}),
        json!({"alg": "hs256"}),
        json!({"alg": 256}),
        json!({"typ": "JWT"}),
        json!({"alg": "PS256", "kid": "rsa-key-1"}),
    ] {
        let token = token(&header, &good_claims(), &key, Algorithm::HS256)?;
        assert_eq!(
            verifier.verify_at(&token, NOW).map(|_| ()),
            Err(AuthError::NoSigner),
            "{header}"
        );
    }
    Ok(())
}

#[test]
fn sign_hs256_round_trips() -> TestResult {
    let token = sign_hs256(&good_claims(), SECRET);
    let claims = secret_verifier()?.verify_at(&token, NOW)?;
    assert_eq!(claims.role, "authenticated");
    let header = token.split('.').next().unwrap_or_default();
    use base64::Engine as _;
    let header: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header)?)?;
    assert_eq!(header, json!({"typ": "JWT", "alg": "HS256"}));
    Ok(())
}

#[test]
fn display_strings_are_exact() {
    let cases = [
        (
            AuthError::Expired { seconds_ago: 17 },
            "Token has expired 17 seconds ago",
        ),
        (
            AuthError::MissingClaims,
            "Fields `role` and `exp` are required in JWT",
        ),
        (
            AuthError::InvalidExpiration,
            "Token expiration time is invalid",
        ),
        (
            AuthError::Malformed,
            "The token provided is not a valid JWT",
        ),
        (
            AuthError::InvalidSignature,
            "Failed to validate JWT signature",
        ),
        (
            AuthError::NoSigner,
            "Failed to generate JWT signer, check your JWT secret or JWKS configuration",
        ),
        (
            AuthError::UnknownKid("abc-123".into()),
            "Failed to generate JWT signer for key ID (kid) \"abc-123\", check your JWT secret or JWKS configuration",
        ),
    ];
    for (error, message) in cases {
        assert_eq!(error.to_string(), message);
    }
}

#[test]
fn config_errors_name_the_setting() {
    let no_keys = JwtVerifier::new(None, None, None).err();
    assert!(matches!(no_keys, Some(ConfigError::NoKeys)));
    let text = no_keys.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        text.contains("JWT_SECRET") && text.contains("JWT_JWKS"),
        "{text}"
    );

    let bad_jwks = JwtVerifier::new(Some(SECRET), Some("{nope"), None).err();
    assert!(matches!(bad_jwks, Some(ConfigError::JwksJson { .. })));
    let has_source = bad_jwks
        .as_ref()
        .and_then(std::error::Error::source)
        .is_some();
    assert!(has_source);
    assert!(
        bad_jwks
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("JWT_JWKS")
    );

    let bad_validators = JwtVerifier::new(Some(SECRET), None, Some("[")).err();
    assert!(matches!(
        bad_validators,
        Some(ConfigError::ClaimValidatorsJson { .. })
    ));
    let text = bad_validators.map(|e| e.to_string()).unwrap_or_default();
    assert!(text.contains("JWT_CLAIM_VALIDATORS"), "{text}");

    assert!(matches!(
        JwtVerifier::new(Some(SECRET), None, Some(r#""iss""#)),
        Err(ConfigError::ClaimValidatorsNotObject)
    ));
    assert!(matches!(
        JwtVerifier::new(None, Some("[]"), None),
        Err(ConfigError::JwksNotObject)
    ));
    // Blank settings count as unset.
    assert!(matches!(
        JwtVerifier::new(Some(""), Some("  "), None),
        Err(ConfigError::NoKeys)
    ));
    assert!(JwtVerifier::new(Some(SECRET), Some(""), Some("")).is_ok());
}

#[test]
fn debug_does_not_print_secrets() -> TestResult {
    let verifier = JwtVerifier::new(
        Some(SECRET),
        Some(r#"{"keys": [{"kty": "oct", "kid": "k1", "k": "b2N0LXNlY3JldC12YWx1ZQ"}]}"#),
        Some(r#"{"iss": "Tester"}"#),
    )?;
    let debug = format!("{verifier:?}");
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(!debug.contains("oct-secret-value"), "{debug}");
    assert!(!debug.contains("b2N0LXNlY3JldC12YWx1ZQ"), "{debug}");
    assert!(debug.contains("JwtVerifier"), "{debug}");
    let cloned = verifier.clone();
    assert_eq!(format!("{cloned:?}"), debug);
    Ok(())
}

#[test]
fn a_remembered_signature_still_has_its_claims_checked_and_binds_only_that_token() -> TestResult {
    let verifier = secret_verifier()?;
    let good = hs(Algorithm::HS256, "HS256", &good_claims(), SECRET)?;
    // Verified once (remembered), then again: same claims.
    assert!(verifier.verify_at(&good, NOW).is_ok());
    assert_eq!(verifier.verify_at(&good, NOW)?.role, "authenticated");
    // Expiry is checked on every use, remembered or not.
    assert!(matches!(
        verifier.verify_at(&good, NOW + 7200),
        Err(AuthError::Expired { .. })
    ));
    // The same header and claims with another signature is not the remembered token.
    let forged = match good.rsplit_once('.') {
        Some((head, _)) => format!("{head}.AAAA"),
        None => return Err("no signature part".into()),
    };
    assert_eq!(
        verifier.verify_at(&forged, NOW).map(|_| ()),
        Err(AuthError::InvalidSignature)
    );
    // Nor are other claims under the remembered token's signature.
    let mut claims = good_claims();
    if let Some(map) = claims.as_object_mut() {
        map.insert("role".to_owned(), json!("service_role"));
    }
    let resigned = hs(Algorithm::HS256, "HS256", &claims, "another-secret")?;
    let swapped = format!(
        "{}.{}",
        resigned
            .rsplit_once('.')
            .map(|(h, _)| h)
            .unwrap_or_default(),
        good.rsplit_once('.').map(|(_, s)| s).unwrap_or_default()
    );
    assert_eq!(
        verifier.verify_at(&swapped, NOW).map(|_| ()),
        Err(AuthError::InvalidSignature)
    );
    // Another verifier (another secret) remembers nothing of this one.
    let other = JwtVerifier::new(Some("another-secret-that-is-long-enough-000"), None, None)?;
    assert_eq!(
        other.verify_at(&good, NOW).map(|_| ()),
        Err(AuthError::InvalidSignature)
    );
    Ok(())
}
