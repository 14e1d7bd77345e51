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
    let (code, _, stderr) =
        run_without_secret(&[("JWT_SECRET", "secret"), ("WEBSOCKET_MAX_FRAME_SIZE", "0")]).await?;
    ensure!(code.is_some_and(|c| c != 0), "exit code {code:?}");
    ensure!(stderr.lines().count() == 1, "{stderr:?}");
    ensure!(stderr.contains("WEBSOCKET_MAX_FRAME_SIZE"), "{stderr:?}");
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
