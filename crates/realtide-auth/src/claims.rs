//! Claim validation after the signature check, and the [`Claims`] handed to the server.
//!
//! Mirrors `JwtAuthToken.token_config/0` and `ChannelsAuthorization.authorize_conn/3` of the
//! reference:
//!
//! 1. Validators run only for claims present in the token, in claim-name order (Joken walks
//!    the claims map, which Erlang keeps sorted for small maps); the first failure wins.
//!    * `exp`: a number greater than now. An expired **integer** `exp` gives
//!      [`AuthError::Expired`]; any other failure (string, `null`, expired decimal) is a plain
//!      validation failure, [`AuthError::ClaimMismatch`]`("exp")`.
//!    * `iat`: a number, else [`AuthError::ClaimMismatch`]`("iat")`.
//!    * each `JWT_CLAIM_VALIDATORS` pair: the claim equals the expected value (Elixir `==`,
//!      so `1 == 1.0`), else [`AuthError::ClaimMismatch`]. Validators for `exp`/`iat` are
//!      replaced by the built-in ones, as in the reference.
//! 2. Decimal `exp` / `iat` are rounded (half away from zero) to integers.
//! 3. `role` and `exp` must both be present, else [`AuthError::MissingClaims`].

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

use crate::error::{AuthError, ConfigError};

/// The verified claims of a token.
#[derive(Clone, Debug)]
pub struct Claims {
    /// The `role` claim (Postgres role for authorization and RLS).
    pub role: String,
    /// The `exp` claim in unix seconds (rounded if the token had a decimal).
    pub exp: i64,
    /// The `sub` claim, when it is a string.
    pub sub: Option<String>,
    /// Every claim, with a decimal `exp` / `iat` already rounded to an integer
    /// (this is what goes into `request.jwt.claims`).
    pub all: Map<String, Value>,
}

impl Claims {
    /// Seconds until expiry at `now_unix` (may be ≤ 0).
    #[must_use]
    pub fn expires_in(&self, now_unix: i64) -> i64 {
        self.exp.saturating_sub(now_unix)
    }

    /// The reference's channel-side check (`confirm_token`): the seconds left, or
    /// [`AuthError::InvalidExpiration`] when there are none. A token that just passed
    /// [`crate::JwtVerifier::verify_at`] with the same `now_unix` fails this only when a decimal
    /// `exp` was rounded down to `now_unix`.
    pub fn confirm_expiry(&self, now_unix: i64) -> Result<i64, AuthError> {
        match self.expires_in(now_unix) {
            left if left > 0 => Ok(left),
            _ => Err(AuthError::InvalidExpiration),
        }
    }
}

/// One validator.
#[derive(Debug, Clone)]
enum Check {
    /// Exact (Elixir `==`) match with a configured value.
    Equals(Value),
    /// The built-in `exp` rule.
    Exp,
    /// The built-in `iat` rule.
    Iat,
}

/// All claim validators, sorted by claim name.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRules {
    checks: BTreeMap<String, Check>,
}

impl ClaimRules {
    /// Builds the rules from `JWT_CLAIM_VALIDATORS` text (`None` or blank = `{}`).
    pub(crate) fn parse(validators: Option<&str>) -> Result<Self, ConfigError> {
        let mut checks = BTreeMap::new();
        if let Some(text) = validators.filter(|text| !text.trim().is_empty()) {
            let value: Value = serde_json::from_str(text)
                .map_err(|source| ConfigError::ClaimValidatorsJson { source })?;
            let Value::Object(pairs) = value else {
                return Err(ConfigError::ClaimValidatorsNotObject);
            };
            for (claim, expected) in pairs {
                checks.insert(claim, Check::Equals(expected));
            }
        }
        checks.insert("exp".to_owned(), Check::Exp);
        checks.insert("iat".to_owned(), Check::Iat);
        Ok(Self { checks })
    }

    /// The configured (non built-in) validator claim names, for `Debug` output.
    pub(crate) fn validator_names(&self) -> impl Iterator<Item = &str> {
        self.checks
            .iter()
            .filter(|(_, check)| matches!(check, Check::Equals(_)))
            .map(|(name, _)| name.as_str())
    }

    /// Validates signature-checked claims at `now_unix` and builds [`Claims`].
    pub(crate) fn apply(
        &self,
        mut claims: Map<String, Value>,
        now_unix: i64,
    ) -> Result<Claims, AuthError> {
        for (name, check) in &self.checks {
            let Some(value) = claims.get(name) else {
                continue;
            };
            let passed = match check {
                Check::Equals(expected) => loose_eq(value, expected),
                Check::Iat => value.is_number(),
                Check::Exp => check_exp(value, now_unix)?,
            };
            if !passed {
                return Err(AuthError::ClaimMismatch(name.clone()));
            }
        }

        round_claim(&mut claims, "exp");
        round_claim(&mut claims, "iat");

        let role = claims.get("role").and_then(Value::as_str);
        let exp = claims.get("exp").and_then(integer_value);
        let (Some(role), Some(exp)) = (role, exp) else {
            return Err(AuthError::MissingClaims);
        };
        let role = role.to_owned();
        let sub = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
        Ok(Claims {
            role,
            exp,
            sub,
            all: claims,
        })
    }
}

/// The `exp` validator: `Ok(true)` when valid, `Ok(false)` for a generic validation failure,
/// `Err(Expired)` for an expired integer (the only case the reference reports as expiry).
fn check_exp(value: &Value, now_unix: i64) -> Result<bool, AuthError> {
    let Value::Number(number) = value else {
        return Ok(false);
    };
    if let Some(exp) = number.as_i64() {
        if exp > now_unix {
            return Ok(true);
        }
        return Err(AuthError::Expired {
            seconds_ago: now_unix.saturating_sub(exp),
        });
    }
    if number.is_u64() {
        // Above i64::MAX, hence in the future.
        return Ok(true);
    }
    // A decimal: valid when in the future; an expired decimal is not an integer, so the
    // reference does not build the "expired N seconds ago" message for it.
    Ok(number.as_f64().is_some_and(|exp| exp > now_unix as f64))
}

/// Replaces a decimal number claim with its rounded integer value.
fn round_claim(claims: &mut Map<String, Value>, name: &str) {
    let Some(Value::Number(number)) = claims.get_mut(name) else {
        return;
    };
    if let Some(float) = number.as_f64().filter(|_| number.is_f64()) {
        *number = Number::from(round_to_i64(float));
    }
}

/// Rounds half away from zero, saturating at the `i64` bounds.
fn round_to_i64(float: f64) -> i64 {
    // `as` saturates for out-of-range values (and maps NaN to 0, which JSON cannot hold).
    float.round() as i64
}

/// An integer view of a number claim (decimals are already rounded; `u64` saturates).
fn integer_value(value: &Value) -> Option<i64> {
    let Value::Number(number) = value else {
        return None;
    };
    number
        .as_i64()
        .or_else(|| number.as_u64().map(|_| i64::MAX))
        .or_else(|| number.as_f64().map(round_to_i64))
}

/// Elixir `==`: numbers compare by value across integer/float (`1 == 1.0`), recursively
/// inside arrays and objects; everything else compares structurally.
fn loose_eq(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) => numbers_eq(a, b),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| loose_eq(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, x)| b.get(key).is_some_and(|y| loose_eq(x, y)))
        }
        _ => left == right,
    }
}

fn numbers_eq(a: &Number, b: &Number) -> bool {
    if a.is_f64() || b.is_f64() {
        match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        }
    } else {
        a == b
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{ClaimRules, loose_eq};
    use crate::error::{AuthError, ConfigError};

    fn object(value: Value) -> serde_json::Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }

    #[test]
    fn loose_equality_follows_elixir() {
        assert!(loose_eq(&json!(1), &json!(1.0)));
        assert!(loose_eq(&json!([1, {"a": 2}]), &json!([1.0, {"a": 2.0}])));
        assert!(!loose_eq(&json!("1"), &json!(1)));
        assert!(!loose_eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(loose_eq(&json!(null), &json!(null)));
    }

    #[test]
    fn validation_order_is_by_claim_name() -> Result<(), ConfigError> {
        let rules = ClaimRules::parse(Some(r#"{"aud": "x", "role": "anon"}"#))?;
        // aud < exp: the aud mismatch is reported before the expiry.
        let claims = object(json!({"aud": "y", "exp": 10, "role": "anon"}));
        assert_eq!(
            rules.apply(claims, 100).map(|_| ()),
            Err(AuthError::ClaimMismatch("aud".into()))
        );
        // exp < role: the expiry is reported before the role mismatch.
        let claims = object(json!({"exp": 10, "role": "admin"}));
        assert_eq!(
            rules.apply(claims, 100).map(|_| ()),
            Err(AuthError::Expired { seconds_ago: 90 })
        );
        Ok(())
    }

    #[test]
    fn validators_for_exp_and_iat_are_replaced() -> Result<(), ConfigError> {
        let rules = ClaimRules::parse(Some(r#"{"exp": 1, "iat": "x"}"#))?;
        let claims = object(json!({"exp": 200, "iat": 5, "role": "anon"}));
        assert!(rules.apply(claims, 100).is_ok());
        Ok(())
    }

    #[test]
    fn decimals_are_rounded() -> Result<(), ConfigError> {
        let rules = ClaimRules::parse(None)?;
        let claims = object(json!({"exp": 100.5, "iat": 99.4, "role": "anon"}));
        let claims = rules.apply(claims, 100).map_err(|_| ConfigError::NoKeys)?;
        assert_eq!(claims.exp, 101);
        assert_eq!(claims.all.get("exp"), Some(&json!(101)));
        assert_eq!(claims.all.get("iat"), Some(&json!(99)));
        // 100.3 is in the future at 100 but rounds to 100: no time left.
        let claims = object(json!({"exp": 100.3, "role": "anon"}));
        let claims = rules.apply(claims, 100).map_err(|_| ConfigError::NoKeys)?;
        assert_eq!(claims.exp, 100);
        assert_eq!(
            claims.confirm_expiry(100),
            Err(AuthError::InvalidExpiration)
        );
        Ok(())
    }

    #[test]
    fn parse_errors() {
        assert!(matches!(
            ClaimRules::parse(Some("nope")),
            Err(ConfigError::ClaimValidatorsJson { .. })
        ));
        assert!(matches!(
            ClaimRules::parse(Some("[1]")),
            Err(ConfigError::ClaimValidatorsNotObject)
        ));
        assert!(ClaimRules::parse(Some("  ")).is_ok());
    }
}
