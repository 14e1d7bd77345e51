//! `realtide token`: prints a signed JWT for local development and tests. The secret is
//! `JWT_SECRET` (or `--jwt-secret`); without one, the secret `realtide dev` generated in its data
//! directory (`.realtide/dev` unless `--data-dir`).

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;

/// Arguments of `realtide token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The `role` claim (`anon`, `authenticated`, `service_role`, ...).
    #[arg(long, default_value = "anon")]
    role: String,
    /// The `sub` claim (a user id).
    #[arg(long)]
    sub: Option<String>,
    /// Lifetime: a number with a unit `s`, `m`, `h` or `d` (e.g. `1h`, `30m`, `3600s`).
    #[arg(long, default_value = "1h", value_parser = parse_lifetime)]
    exp: Duration,
    /// Signing secret (the server's JWT_SECRET); default: the secret of `realtide dev`.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// The data directory of `realtide dev` whose secret signs when JWT_SECRET is not set.
    #[arg(long, default_value = crate::config::DEV_DATA_DIR)]
    data_dir: std::path::PathBuf,
}

/// The configured secret, else the dev server's.
fn signing_secret(args: &TokenArgs) -> Result<String, String> {
    if let Some(secret) = args.jwt_secret.as_ref().filter(|s| !s.is_empty()) {
        return Ok(secret.clone());
    }
    let path = args.data_dir.join("jwt_secret");
    match std::fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => Ok(secret.trim().to_owned()),
        _ => Err(format!(
            "no signing secret: set JWT_SECRET (or --jwt-secret), or run `realtide dev` in this directory first (it keeps its secret in {})",
            path.display()
        )),
    }
}

fn parse_lifetime(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{value}` is not a lifetime like 1h"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit `{unit}` (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

/// Prints the token to stdout.
pub fn print(args: TokenArgs) -> ExitCode {
    let secret = match signing_secret(&args) {
        Ok(secret) => secret,
        Err(message) => {
            crate::logs::complain(&format!("realtide token: {message}"));
            return ExitCode::from(2);
        }
    };
    crate::logs::say(&sign(&secret, &args.role, args.sub.as_deref(), args.exp));
    ExitCode::SUCCESS
}

/// An HS256 JWT with `role`, `iat`, `exp` = now + `lifetime`, and `sub` when given.
pub fn sign(secret: &str, role: &str, sub: Option<&str>, lifetime: Duration) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = serde_json::json!({
        "role": role,
        "iat": now,
        "exp": now.saturating_add(lifetime.as_secs()),
    });
    if let (Some(sub), Some(map)) = (sub, claims.as_object_mut()) {
        map.insert("sub".into(), sub.into());
    }
    realtide_auth::sign_hs256(&claims, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_lifetime("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_lifetime("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_lifetime("h").is_err());
        assert!(parse_lifetime("5y").is_err());
    }
}
