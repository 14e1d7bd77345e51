//! Garbage input: malformed tokens are reported as such and nothing ever panics.

mod common;

use common::{NOW, SECRET, TestResult, b64, ed25519_key, good_claims, hs256, jwks_text, token};
use jsonwebtoken::{Algorithm, EncodingKey};
use realtide_auth::{AuthError, JwtVerifier};
use serde_json::{Value, json};

/// A verifier with every kind of key configured, including deliberately broken JWKs.
fn everything_verifier() -> TestResult<JwtVerifier> {
    let mut jwks: Value = serde_json::from_str(&jwks_text()?)?;
    if let Some(keys) = jwks.get_mut("keys").and_then(Value::as_array_mut) {
        keys.extend([
            json!({"kty": "oct", "kid": "hs-1", "k": "b2N0LXNlY3JldC12YWx1ZQ"}),
            json!({"kty": "OKP", "kid": "short", "crv": "Ed25519", "x": "AAAA"}),
            json!({"kty": "OKP", "kid": "zero", "crv": "Ed25519", "x": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
            json!({"kty": "EC", "kid": "bad-point", "crv": "P-256",
                   "x": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                   "y": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
            json!({"kty": "RSA", "kid": "tiny-rsa", "n": "AQ", "e": "AQ"}),
            json!({"kty": "RSA", "kid": "zero-rsa", "n": "AA", "e": "AA"}),
            json!("not a jwk"),
        ]);
    }
    Ok(JwtVerifier::new(
        Some(SECRET),
        Some(&jwks.to_string()),
        Some(r#"{"iss": "x", "nested": {"a": [1, 2.0]}}"#),
    )?)
}

#[test]
fn garbage_tokens_are_malformed() -> TestResult {
    let verifier = everything_verifier()?;
    let cases = [
        String::new(),
        " ".into(),
        "\n\t".into(),
        "abc".into(),
        "a.b".into(),
        "a.b.c".into(),
        "a.b.c.d".into(),
        "..".into(),
        "...".into(),
        "%".into(),
        "%zz.%zz.%zz".into(),
        "e30".into(),
        "e30.e30".into(),
        "e30.e30.e30.e30".into(),
        "!!!.e30.sig".into(),
        "e30.!!!.sig".into(),
        // Header not an object: [] / "x" / 1 / null.
        format!("{}.{}.sig", b64(&json!([]))?, b64(&json!({}))?),
        format!("{}.{}.sig", b64(&json!("x"))?, b64(&json!({}))?),
        format!("{}.{}.sig", b64(&json!(1))?, b64(&json!({}))?),
        format!("{}.{}.sig", b64(&json!(null))?, b64(&json!({}))?),
        // Claims not an object.
        format!(
            "{}.{}.sig",
            b64(&json!({"alg": "HS256"}))?,
            b64(&json!([]))?
        ),
        format!(
            "{}.{}.sig",
            b64(&json!({"alg": "HS256"}))?,
            b64(&json!(42))?
        ),
        // Not JSON at all.
        format!("{}.{}.sig", b64(&json!({"alg": "HS256"}))?, "bm90IGpzb24"),
        // Invalid UTF-8 inside the JSON.
        "eyJhbGciOiJIUzI1NiJ9.__79.sig".into(),
    ];
    for token in &cases {
        assert_eq!(
            verifier.verify_at(token, NOW).map(|_| ()),
            Err(AuthError::Malformed),
            "{token:?}"
        );
    }
    Ok(())
}

#[test]
fn broken_keys_and_signatures_do_not_panic() -> TestResult {
    let verifier = everything_verifier()?;
    let ed = ed25519_key()?;
    for (alg, kid) in [
        ("EdDSA", "short"),
        ("EdDSA", "zero"),
        ("ES256", "bad-point"),
        ("RS256", "tiny-rsa"),
        ("RS512", "zero-rsa"),
        ("HS256", "hs-1"),
    ] {
        let token = token(
            &json!({"alg": alg, "kid": kid}),
            &good_claims(),
            &ed,
            Algorithm::EdDSA,
        )?;
        let result = verifier.verify_at(&token, NOW);
        assert!(
            matches!(
                result,
                Err(AuthError::InvalidSignature | AuthError::NoSigner)
            ),
            "{alg} {kid}: {result:?}"
        );
    }
    // Signatures that are empty, not base64url, padded, or absurdly long.
    let valid = hs256(&good_claims())?;
    let input = valid
        .rsplit_once('.')
        .map(|(input, _)| input)
        .unwrap_or_default();
    for signature in ["", "!!", "AAAA====", "é", &"A".repeat(10_000)] {
        let token = format!("{input}.{signature}");
        assert_eq!(
            verifier.verify_at(&token, NOW).map(|_| ()),
            Err(AuthError::InvalidSignature),
            "{signature:?}"
        );
    }
    Ok(())
}

/// xorshift64*: a tiny deterministic generator, enough for fuzz-style inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(bound.max(1)).unwrap_or(1)).unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len()))
    }
}

const ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.% \n\t+/\"{}[]:,";

fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut bytes = seed.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let position = rng.below(bytes.len() + 1);
        let byte = *rng.pick(ALPHABET).unwrap_or(&b'.');
        match rng.below(5) {
            0 => bytes.insert(position.min(bytes.len()), byte),
            1 if position < bytes.len() => {
                bytes.remove(position);
            }
            2 if position < bytes.len() => {
                if let Some(slot) = bytes.get_mut(position) {
                    *slot = byte;
                }
            }
            3 => bytes.truncate(position),
            _ => {
                if let Some(slot) = bytes.get_mut(position) {
                    *slot ^= 1 << rng.below(8);
                }
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn random_json(rng: &mut Rng, depth: usize) -> Value {
    let strings = [
        "", "HS256", "RS256", "ES256", "ES384", "EdDSA", "Ed25519", "none", "anon",
    ];
    match rng.below(if depth > 2 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(i64::try_from(rng.next() >> 1).unwrap_or(0) - i64::MAX / 2),
        3 => json!(f64::from(u32::try_from(rng.below(1 << 20)).unwrap_or(0)) / 7.0),
        4 => json!(rng.pick(&strings).copied().unwrap_or_default()),
        5 => Value::Array(
            (0..rng.below(3))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "alg", "kid", "typ", "role", "exp", "iat", "sub", "iss", "nested",
            ];
            let mut map = serde_json::Map::new();
            for _ in 0..rng.below(6) {
                let key = rng.pick(&keys).copied().unwrap_or("k");
                map.insert(key.to_owned(), random_json(rng, depth + 1));
            }
            Value::Object(map)
        }
    }
}

#[test]
fn random_and_mutated_inputs_never_panic() -> TestResult {
    let verifier = everything_verifier()?;
    let secret_key = EncodingKey::from_secret(SECRET.as_bytes());
    let kids = [
        "rsa-key-1",
        "ec-p256-key-1",
        "ec-p384-key-1",
        "ed25519-key-1",
        "hs-1",
        "short",
        "zero",
        "bad-point",
        "tiny-rsa",
        "zero-rsa",
        "missing",
    ];
    let algs = [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA",
        "Ed25519", "Ed448", "PS256", "none",
    ];
    let seeds = [
        hs256(&good_claims())?,
        hs256(&json!({"role": "anon", "exp": NOW - 1, "iat": "x"}))?,
        token(
            &json!({"alg": "EdDSA", "kid": "ed25519-key-1"}),
            &good_claims(),
            &ed25519_key()?,
            Algorithm::EdDSA,
        )?,
    ];

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut outcomes = [0_usize; 2];
    for round in 0..6_000 {
        let input = match round % 4 {
            // Raw random bytes (lossily made into text).
            0 => {
                let bytes: Vec<u8> = (0..rng.below(120))
                    .map(|_| u8::try_from(rng.next() & 0xFF).unwrap_or(0))
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            // Random characters from the token alphabet.
            1 => (0..rng.below(200))
                .map(|_| char::from(*rng.pick(ALPHABET).unwrap_or(&b'a')))
                .collect(),
            // Mutations of valid tokens.
            2 => {
                let seed = rng.pick(&seeds).cloned().unwrap_or_default();
                mutate(&mut rng, &seed)
            }
            // Well-formed structure with random header/claims, correctly HMAC-signed.
            _ => {
                let mut header = random_json(&mut rng, 0);
                if rng.below(3) > 0 {
                    header = json!({
                        "alg": rng.pick(&algs).copied().unwrap_or("HS256"),
                        "kid": rng.pick(&kids).copied().unwrap_or("missing"),
                    });
                }
                let claims = random_json(&mut rng, 0);
                let signing_input = format!("{}.{}", b64(&header)?, b64(&claims)?);
                let signature = jsonwebtoken::crypto::sign(
                    signing_input.as_bytes(),
                    &secret_key,
                    Algorithm::HS256,
                )?;
                format!("{signing_input}.{signature}")
            }
        };
        let result = verifier.verify_at(&input, NOW);
        // Exercise Display and join codes too.
        if let Err(error) = &result {
            assert!(!error.to_string().is_empty());
            let _ = error.join_code();
        }
        let slot = usize::from(result.is_ok());
        if let Some(count) = outcomes.get_mut(slot) {
            *count += 1;
        }
        // Extreme clocks must not overflow either.
        let _ = verifier.verify_at(&input, i64::MIN);
        let _ = verifier.verify_at(&input, i64::MAX);
    }
    let [failures, successes] = outcomes;
    assert!(failures > 0);
    assert_eq!(failures + successes, 6_000);
    Ok(())
}

#[test]
fn extreme_numbers_do_not_overflow() -> TestResult {
    let verifier = JwtVerifier::new(Some(SECRET), None, None)?;
    let cases = [
        (json!(i64::MIN), i64::MAX),
        (json!(u64::MAX), 0),
        (json!(1e300), 0),
        (json!(-1e300), 0),
        (json!(i64::MAX), i64::MIN),
    ];
    for (exp, now) in cases {
        let token = hs256(&json!({"role": "anon", "exp": exp, "iat": exp}))?;
        let result = verifier.verify_at(&token, now);
        if let Ok(claims) = &result {
            let _ = claims.expires_in(now);
            let _ = claims.confirm_expiry(now);
        }
    }
    // Expired by the maximum amount saturates instead of wrapping.
    let token = hs256(&json!({"role": "anon", "exp": i64::MIN}))?;
    assert_eq!(
        verifier.verify_at(&token, i64::MAX).map(|_| ()),
        Err(AuthError::Expired {
            seconds_ago: i64::MAX
        })
    );
    Ok(())
}
