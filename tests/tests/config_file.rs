//! Configuration from a TOML file (`--config` / `REALTIDE_CONFIG`), its precedence under the
//! environment, the `DB_HOST`/`DB_PORT`/`DB_USER`/`DB_NAME` form of the database settings, and
//! fail-fast errors naming the setting.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use realtide_tests::{PgCluster, Server, Vsn, binary};
use serde_json::json;

fn write_file(text: &str) -> Result<(tempfile_path::Path, String)> {
    let path = tempfile_path::Path::new("toml")?;
    std::fs::write(path.as_path(), text)?;
    let name = path.as_path().display().to_string();
    Ok((path, name))
}

/// A file under the system temp dir, removed on drop.
mod tempfile_path {
    #[derive(Debug)]
    pub struct Path(std::path::PathBuf);

    impl Path {
        pub fn new(ext: &str) -> anyhow::Result<Path> {
            let name = format!(
                "realtide-config-{}-{}.{ext}",
                std::process::id(),
                rand_suffix()
            );
            Ok(Path(std::env::temp_dir().join(name)))
        }

        pub fn as_path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }
}

async fn joins_allowed(server: &Server, attempts: usize) -> Result<usize> {
    let mut client = server.connect(Vsn::V2).await?;
    let mut ok = 0;
    for n in 0..attempts {
        let topic = format!("realtime:c{n}");
        let join_ref = client.send_join(&topic, &json!({"config": {}})).await?;
        let reply = client.expect_reply(&topic, &join_ref).await?;
        if reply.status() == Some("ok") {
            ok += 1;
        }
    }
    Ok(ok)
}

#[tokio::test]
async fn file_settings_apply_and_the_environment_wins() -> Result<()> {
    let (_file, path) =
        write_file("# limits\ntenant_max_channels_per_client = 1\nLOG_FORMAT = \"json\"\n")?;
    let server = Server::start(&[("REALTIDE_CONFIG", path.as_str())]).await?;
    ensure!(
        joins_allowed(&server, 3).await? == 1,
        "file limit not applied"
    );
    // LOG_FORMAT = "json" from the file: log lines are JSON objects.
    let first = server
        .stderr()
        .lines()
        .find(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(&first).context(first.clone())?;
    ensure!(
        parsed
            .get("level")
            .is_some_and(serde_json::Value::is_string)
            && parsed
                .get("fields")
                .is_some_and(serde_json::Value::is_object),
        "{first}"
    );

    let server = Server::start(&[
        ("REALTIDE_CONFIG", path.as_str()),
        ("TENANT_MAX_CHANNELS_PER_CLIENT", "3"),
    ])
    .await?;
    ensure!(
        joins_allowed(&server, 3).await? == 3,
        "environment did not win"
    );
    Ok(())
}

async fn run_failing(env: &[(&str, &str)], args: &[&str]) -> Result<(Option<i32>, String)> {
    let mut command = tokio::process::Command::new(binary()?);
    command
        .env(
            "JWT_SECRET",
            "a-secret-of-enough-length-for-the-test-0123456789",
        )
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env_remove("REALTIDE_CONFIG")
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(10), command.output())
        .await
        .context("realtide did not exit")??;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn bad_files_stop_the_start_with_one_line_naming_the_setting() -> Result<()> {
    let (_file, path) = write_file("PORTT = 4000\n")?;
    let (code, stderr) = run_failing(&[], &["--config", &path]).await?;
    ensure!(code == Some(2), "exit {code:?}");
    ensure!(
        stderr.trim().lines().count() == 1 && stderr.contains("PORTT is not a realtide setting"),
        "{stderr:?}"
    );
    let (_file, path) = write_file("websocket_idle_timeout_ms = \"soon\"\n")?;
    let (code, stderr) = run_failing(&[("REALTIDE_CONFIG", &path)], &[]).await?;
    ensure!(code == Some(2), "exit {code:?}");
    // The file's key, the flag, and the file are named.
    ensure!(
        stderr.trim().lines().count() == 1
            && stderr.contains("WEBSOCKET_IDLE_TIMEOUT_MS (--idle-timeout-ms, from ")
            && stderr.contains(&path),
        "{stderr:?}"
    );
    // A boolean lists what it accepts.
    let (_file, path) = write_file("private_only = \"maybe\"\n")?;
    let (code, stderr) = run_failing(&[("REALTIDE_CONFIG", &path)], &[]).await?;
    ensure!(code == Some(2), "exit {code:?}");
    ensure!(
        stderr.trim().lines().count() == 1
            && stderr.contains("PRIVATE_ONLY (--private-only, from ")
            && stderr.contains("accepted values: true, false"),
        "{stderr:?}"
    );
    let (_file, path) = write_file("port = [1]\n")?;
    let (code, stderr) = run_failing(&[("REALTIDE_CONFIG", &path)], &[]).await?;
    ensure!(
        code == Some(2) && stderr.contains("PORT must be a string"),
        "{stderr:?}"
    );
    let (code, stderr) =
        run_failing(&[("REALTIDE_CONFIG", "/nonexistent/realtide.toml")], &[]).await?;
    ensure!(
        code == Some(2) && stderr.contains("/nonexistent/realtide.toml"),
        "{stderr:?}"
    );
    let (code, stderr) = run_failing(&[("CLIENT_PRESENCE_WINDOW_MS", "0")], &[]).await?;
    ensure!(
        code == Some(2) && stderr.contains("CLIENT_PRESENCE_WINDOW_MS"),
        "{stderr:?}"
    );
    Ok(())
}

#[tokio::test]
async fn database_from_host_port_user_and_name() -> Result<()> {
    let pg = PgCluster::start().await?;
    // postgres://postgres@127.0.0.1:<port>/postgres
    let port = pg
        .url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .context("port in the cluster URL")?
        .to_owned();
    let server = Server::start(&[
        ("DB_HOST", "127.0.0.1"),
        ("DB_PORT", port.as_str()),
        ("DB_USER", "postgres"),
        ("DB_NAME", "postgres"),
        ("SLOT_NAME", "parts_slot"),
    ])
    .await?;
    pg.wait_slot_active("parts_slot").await?;
    drop(server);
    Ok(())
}
