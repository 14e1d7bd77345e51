//! Connect-time behaviour: paths, serializer selection and the HTTP refusals (reference:
//! supabase/realtime `lib/realtime_web/channels/user_socket.ex` and
//! `test/realtime_web/channels/user_socket_test.exs`).

use anyhow::{Result, ensure};
use realtide_tests::{
    Connect, HttpResponse, SECRET, Server, Vsn, anon, sign, sign_with, token, unix_now,
};
use serde_json::json;

async fn refusal(server: &Server, query: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
    server
        .try_connect(Vsn::V2, "/socket/websocket", query, headers)
        .await?
        .refused()
}

/// Asserts a 401 with `{"error": message}` and a JSON content type.
fn assert_json_error(response: &HttpResponse, status: u16, message: &str) -> Result<()> {
    ensure!(
        response.status == status,
        "status {} in {response:?}",
        response.status
    );
    let expected = json!({ "error": message }).to_string();
    ensure!(
        response.body == expected,
        "body {:?}, expected {expected:?}",
        response.body
    );
    let content_type = response.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}"
    );
    Ok(())
}

#[tokio::test]
async fn both_paths_upgrade_and_answer_heartbeats() -> Result<()> {
    let server = Server::start(&[]).await?;
    for path in ["/socket/websocket", "/realtime/v1/websocket"] {
        let query = format!("apikey={}&vsn=2.0.0", anon());
        let mut client = server.connect_url(Vsn::V2, path, &query, &[]).await?;
        let reply = client.heartbeat().await?;
        ensure!(
            reply.raw == r#"[null,"1","phoenix","phx_reply",{"status":"ok","response":{}}]"#,
            "{path}: {}",
            reply.raw
        );
    }
    Ok(())
}

#[tokio::test]
async fn missing_apikey_is_401() -> Result<()> {
    let server = Server::start(&[]).await?;
    let response = refusal(&server, "vsn=2.0.0", &[]).await?;
    assert_json_error(&response, 401, "API key is missing")?;
    let response = refusal(&server, "apikey=&vsn=2.0.0", &[]).await?;
    assert_json_error(&response, 401, "API key is missing")
}

#[tokio::test]
async fn expired_token_is_401() -> Result<()> {
    let server = Server::start(&[]).await?;
    let query = format!("apikey={}&vsn=2.0.0", token("anon", -60));
    let response = refusal(&server, &query, &[]).await?;
    assert_json_error(&response, 401, "Token has expired")
}

#[tokio::test]
async fn role_and_exp_are_required() -> Result<()> {
    let server = Server::start(&[]).await?;
    let now = unix_now();
    for claims in [
        json!({"exp": now + 3600}),
        json!({"role": "anon"}),
        json!({"sub": "x", "iat": now}),
    ] {
        let query = format!("apikey={}&vsn=2.0.0", sign(&claims));
        let response = refusal(&server, &query, &[]).await?;
        assert_json_error(
            &response,
            401,
            "Fields `role` and `exp` are required in JWT",
        )?;
    }
    Ok(())
}

#[tokio::test]
async fn garbage_token_is_not_a_valid_jwt() -> Result<()> {
    let server = Server::start(&[]).await?;
    for garbage in ["garbage", "a.b.c", "not-a-jwt.at-all"] {
        let query = format!("apikey={garbage}&vsn=2.0.0");
        let response = refusal(&server, &query, &[]).await?;
        assert_json_error(&response, 401, "The token provided is not a valid JWT")?;
    }
    Ok(())
}

#[tokio::test]
async fn wrong_secret_fails_signature() -> Result<()> {
    let server = Server::start(&[]).await?;
    let other = sign_with(
        &json!({"role": "anon", "exp": unix_now() + 3600}),
        &format!("{SECRET}-but-different"),
    );
    let query = format!("apikey={other}&vsn=2.0.0");
    let response = refusal(&server, &query, &[]).await?;
    assert_json_error(&response, 401, "Failed to validate JWT signature")
}

#[tokio::test]
async fn x_api_key_header_wins_over_apikey() -> Result<()> {
    let server = Server::start(&[]).await?;
    let good = anon();
    // Valid header, garbage query parameter: accepted.
    let query = "apikey=garbage&vsn=2.0.0".to_owned();
    let mut client = server
        .connect_url(
            Vsn::V2,
            "/socket/websocket",
            &query,
            &[("x-api-key", &good)],
        )
        .await?;
    client.heartbeat().await?;
    // Garbage header, valid query parameter: the header is the one checked.
    let query = format!("apikey={good}&vsn=2.0.0");
    let response = refusal(&server, &query, &[("x-api-key", "garbage")]).await?;
    assert_json_error(&response, 401, "The token provided is not a valid JWT")?;
    // Header alone is enough.
    let mut client = server
        .connect_url(
            Vsn::V2,
            "/socket/websocket",
            "vsn=2.0.0",
            &[("x-api-key", &good)],
        )
        .await?;
    client.heartbeat().await?;
    Ok(())
}

#[tokio::test]
async fn unknown_vsn_is_403_with_empty_body() -> Result<()> {
    let server = Server::start(&[]).await?;
    for vsn in ["3.0.0", "garbage", "2", "1.1.0"] {
        let query = format!("apikey={}&vsn={vsn}", anon());
        let response = refusal(&server, &query, &[]).await?;
        ensure!(response.status == 403, "vsn={vsn}: {response:?}");
        ensure!(
            response.body.is_empty(),
            "vsn={vsn}: body {:?}",
            response.body
        );
    }
    // The serializer check comes before authentication.
    let response = refusal(&server, "vsn=3.0.0", &[]).await?;
    ensure!(
        response.status == 403 && response.body.is_empty(),
        "{response:?}"
    );
    Ok(())
}

#[tokio::test]
async fn missing_vsn_means_v1_framing() -> Result<()> {
    let server = Server::start(&[]).await?;
    let query = format!("apikey={}", anon());
    let mut client = server
        .connect_url(Vsn::V1, "/socket/websocket", &query, &[])
        .await?;
    client
        .send_text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}"#)
        .await?;
    let reply = client.next_text().await?;
    ensure!(
        reply.json()?
            == json!({"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"7"}),
        "{}",
        reply.raw
    );
    // A V2 array is not understood by the V1 serializer: dropped without a reply.
    client
        .send_text(r#"[null,"8","phoenix","heartbeat",{}]"#)
        .await?;
    client.assert_no_frame(realtide_tests::QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn vsn_patch_versions_are_accepted() -> Result<()> {
    let server = Server::start(&[]).await?;
    let query = format!("apikey={}&vsn=2.0.1", anon());
    let mut client = server
        .connect_url(Vsn::V2, "/socket/websocket", &query, &[])
        .await?;
    client.heartbeat().await?;
    let query = format!("apikey={}&vsn=1.0.0", anon());
    let mut client = server
        .connect_url(Vsn::V1, "/socket/websocket", &query, &[])
        .await?;
    client.heartbeat().await?;
    Ok(())
}

#[tokio::test]
async fn unknown_query_parameters_are_ignored() -> Result<()> {
    let server = Server::start(&[]).await?;
    let query = format!(
        "foo=bar&apikey={}&log_level=debug&vsn=2.0.0&x=1&x=2&empty=",
        anon()
    );
    let connect = server
        .try_connect(Vsn::V2, "/realtime/v1/websocket", &query, &[])
        .await?;
    let mut client = match connect {
        Connect::Open(client) => client,
        Connect::Refused(response) => anyhow::bail!("refused: {response:?}"),
    };
    client.heartbeat().await?;
    Ok(())
}
