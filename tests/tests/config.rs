//! Process configuration and the plain HTTP routes.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use realtide_tests::{Server, binary};

/// Runs the binary with `env` and without any JWT settings; returns (exit code, stdout, stderr).
async fn run_without_secret(env: &[(&str, &str)]) -> Result<(Option<i32>, String, String)> {
    let mut command = tokio::process::Command::new(binary()?);
    for name in [
        "JWT_SECRET",
        "API_JWT_SECRET",
        "JWT_JWKS",
        "JWT_CLAIM_VALIDATORS",
    ] {
        command.env_remove(name);
    }
    command
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn()?;
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .context("the server did not exit within 10 s")??;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn missing_jwt_secret_fails_fast_with_one_line() -> Result<()> {
    let (code, stdout, stderr) = run_without_secret(&[]).await?;
    ensure!(code.is_some_and(|c| c != 0), "exit code {code:?}");
    ensure!(!stdout.contains("listening"), "stdout {stdout:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() == 1, "stderr is not one line: {stderr:?}");
    ensure!(
        stderr.contains("JWT_SECRET"),
        "stderr does not name JWT_SECRET: {stderr:?}"
    );
    // An empty secret counts as missing.
    let (code, _, stderr) = run_without_secret(&[("JWT_SECRET", "")]).await?;
    ensure!(
        code.is_some_and(|c| c != 0),
        "empty secret: exit code {code:?}"
    );
    ensure!(stderr.contains("JWT_SECRET"), "{stderr:?}");
    Ok(())
}

#[tokio::test]
async fn invalid_numeric_setting_fails_fast_naming_it() -> Result<()> {
    let (code, _, stderr) = run_without_secret(&[
        ("JWT_SECRET", LONG_SECRET),
        ("WEBSOCKET_MAX_FRAME_SIZE", "0"),
    ])
    .await?;
    ensure!(code.is_some_and(|c| c != 0), "exit code {code:?}");
    ensure!(stderr.lines().count() == 1, "{stderr:?}");
    ensure!(stderr.contains("WEBSOCKET_MAX_FRAME_SIZE"), "{stderr:?}");
    Ok(())
}

const LONG_SECRET: &str = "a-secret-of-enough-length-for-the-test-0123456789";

/// Each invalid setting stops the start with one line naming it (and saying why), before
/// anything listens or connects.
#[tokio::test]
async fn each_bad_setting_fails_at_start_with_its_own_message() -> Result<()> {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case<'_>] = &[
        (
            &[("JWT_SECRET", LONG_SECRET), ("DB_URL", "not-a-url")],
            &["DB_URL is not a usable PostgreSQL URL"],
        ),
        (
            &[
                ("JWT_SECRET", LONG_SECRET),
                ("DB_URL", "postgres://u@h:notaport/db"),
            ],
            &["DB_URL", "invalid port"],
        ),
        // Checked even without a database.
        (
            &[("JWT_SECRET", LONG_SECRET), ("SLOT_NAME", "Bad-Name")],
            &["SLOT_NAME must be 1-63 characters"],
        ),
        (
            &[("JWT_SECRET", "short-secret")],
            &["JWT_SECRET must be at least 32 bytes (it has 12)"],
        ),
        (
            &[("API_JWT_SECRET", "short-secret")],
            &["API_JWT_SECRET must be at least 32 bytes"],
        ),
        (
            &[("JWT_SECRET", LONG_SECRET), ("METRICS_JWT_SECRET", "m")],
            &["METRICS_JWT_SECRET must be at least 32 bytes"],
        ),
        (
            &[("JWT_SECRET", LONG_SECRET), ("PRIVATE_ONLY", "maybe")],
            &[
                "PRIVATE_ONLY (--private-only, from the environment)",
                "accepted values: true, false",
            ],
        ),
        (
            &[("JWT_SECRET", LONG_SECRET), ("PORT", "99999")],
            &["PORT (--port, from the environment)"],
        ),
        (
            &[("JWT_SECRET", LONG_SECRET), ("SHUTDOWN_TIMEOUT_MS", "0")],
            &["SHUTDOWN_TIMEOUT_MS must be greater than 0"],
        ),
    ];
    for (env, wanted) in cases {
        let (code, stdout, stderr) = run_without_secret(env).await?;
        ensure!(
            code == Some(2),
            "{env:?}: exit code {code:?}, stderr {stderr:?}"
        );
        ensure!(!stdout.contains("listening"), "{env:?}: {stdout:?}");
        ensure!(stderr.trim().lines().count() == 1, "{env:?}: {stderr:?}");
        for text in *wanted {
            ensure!(stderr.contains(text), "{env:?}: {stderr:?} lacks {text:?}");
        }
    }
    // Accepted spellings of a boolean.
    for value in ["1", "yes", "true", "off"] {
        let server = Server::start(&[("PRIVATE_ONLY", value)]).await?;
        drop(server);
    }
    Ok(())
}

/// `realtide token` without a secret names the setting; next to a dev data directory it signs
/// with the dev secret.
#[tokio::test]
async fn token_finds_the_dev_secret_or_names_the_missing_setting() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("realtide-token-{}", std::process::id()));
    std::fs::create_dir_all(dir.join(".realtide/dev"))?;
    let bin = binary()?;
    let run = |args: &'static [&'static str]| {
        let mut command = tokio::process::Command::new(&bin);
        command
            .env_remove("JWT_SECRET")
            .current_dir(&dir)
            .arg("token")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    };
    let output = run(&["--role", "authenticated"]).output().await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(2), "{output:?}");
    ensure!(
        stderr.contains("no signing secret: set JWT_SECRET")
            && stderr.contains(".realtide/dev/jwt_secret"),
        "{stderr:?}"
    );
    let secret = "the-dev-secret-of-this-directory-0123456789";
    std::fs::write(dir.join(".realtide/dev/jwt_secret"), secret)?;
    let output = run(&["--role", "authenticated", "--sub", "u-1"])
        .output()
        .await?;
    ensure!(output.status.success(), "{output:?}");
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let verifier = realtide_auth::JwtVerifier::new(Some(secret), None, None)?;
    let claims = verifier.verify(&token)?;
    ensure!(claims.role == "authenticated", "{claims:?}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn healthcheck_answers_ok() -> Result<()> {
    let server = Server::start(&[]).await?;
    let response = server.http("GET", "/healthcheck", &[]).await?;
    ensure!(response.status == 200, "{response:?}");
    ensure!(response.body == "ok", "{response:?}");
    Ok(())
}
