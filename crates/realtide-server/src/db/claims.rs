//! A channel's claims, grouped: subscriptions with identical tokens share one RLS check.

use serde_json::Value;

/// Claims shared by subscriptions with identical tokens; RLS checks run once per group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimsGroup {
    /// The claims as JSON text (also the group key).
    pub claims: String,
    /// The `role` claim.
    pub role: String,
    /// The `sub` claim.
    pub sub: Option<String>,
    /// The `exp` claim (unix seconds): past it, nothing is delivered under these claims.
    pub exp: i64,
}

impl ClaimsGroup {
    /// From verified claims.
    pub fn new(claims: &realtide_auth::Claims) -> ClaimsGroup {
        ClaimsGroup {
            claims: Value::Object(claims.all.clone()).to_string(),
            role: claims.role.clone(),
            sub: claims.sub.clone(),
            exp: claims.exp,
        }
    }

    /// Whether the token these claims came from has expired at `now_unix` (the reference's
    /// `confirm_token` rule: no seconds left).
    pub fn expired(&self, now_unix: i64) -> bool {
        self.exp.saturating_sub(now_unix) <= 0
    }
}

/// Seconds since the Unix epoch (token expiry is judged in whole seconds, as `exp` is).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
