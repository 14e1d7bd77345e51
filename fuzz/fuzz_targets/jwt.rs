//! Arbitrary tokens and arbitrary claims verified with an HS256 secret, as every connect, join
//! and `access_token` does with client input.
//!
//! Besides "no panic":
//! - a token is never accepted unless its signature is the HMAC of its signing input under the
//!   secret: the input's claims are also signed with a wrong secret and with `alg: none`, and
//!   neither is ever accepted;
//! - a correctly signed token is accepted only when its claims carry a string `role` and a
//!   numeric `exp` not in the past, and the accepted role is the one signed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use realtide_auth::{JwtVerifier, sign_hs256};

const SECRET: &str = "fuzz-secret-with-at-least-thirty-two-bytes";
const NOW: i64 = 1_800_000_000;

fn b64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let verifier = JwtVerifier::new(Some(SECRET), None, None).expect("verifier");
    // 1. The input as a token.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = verifier.verify_at(text, NOW);
    }
    // 2. The input as claims JSON.
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let signed = sign_hs256(&claims, SECRET);
    match verifier.verify_at(&signed, NOW) {
        Ok(accepted) => {
            assert!(claims.get("role").is_some_and(serde_json::Value::is_string));
            assert_eq!(claims.get("role").and_then(serde_json::Value::as_str), Some(accepted.role.as_str()));
            // A decimal `exp` just above now may round down to now (the channel check then
            // refuses it); never below.
            assert!(accepted.exp >= NOW, "expired token accepted: exp {}", accepted.exp);
        }
        Err(_) => {}
    }
    let forged = sign_hs256(&claims, "another-secret-of-at-least-thirty-two-bytes");
    assert!(verifier.verify_at(&forged, NOW).is_err(), "token signed with another secret accepted");
    let body = b64(serde_json::to_string(&claims).unwrap_or_default().as_bytes());
    for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"None"}"#, r#"{"alg":"NONE"}"#] {
        let unsigned = format!("{}.{body}.", b64(header.as_bytes()));
        assert!(verifier.verify_at(&unsigned, NOW).is_err(), "unsigned token accepted");
        let stripped = format!("{}.{body}", b64(header.as_bytes()));
        assert!(verifier.verify_at(&stripped, NOW).is_err(), "token without signature accepted");
    }
    // The signed token with its payload replaced by the input's claims plus a changed role.
    if let Some((head, rest)) = signed.split_once('.') {
        if let Some((_, signature)) = rest.split_once('.') {
            let mut tampered = claims.clone();
            if let Some(object) = tampered.as_object_mut() {
                object.insert("role".into(), serde_json::Value::from("service_role"));
            }
            if tampered != claims {
                let body = b64(serde_json::to_string(&tampered).unwrap_or_default().as_bytes());
                let token = format!("{head}.{body}.{signature}");
                assert!(verifier.verify_at(&token, NOW).is_err(), "tampered claims accepted");
            }
        }
    }
});
