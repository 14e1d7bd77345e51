//! The management API of tenants (`/api/tenants`) over a control database
//! (`TENANTS_DB_URL`, settings sealed with `DB_ENC_KEY`): authorization, validation errors,
//! create/show/list, update and delete with their effect on the tenant's sockets and slot.
#![allow(clippy::indexing_slicing)]

use std::time::Duration;

use anyhow::{Result, ensure};
use realtide_tests::{PgCluster, Server, Vsn, sign_with, unix_now};
use serde_json::{Value, json};

const API_SECRET: &str = "management-api-secret-0123456789-abcdef";
const ENC_KEY: &str = "control-database-sealing-key-0123456789ab";
const ACME_SECRET: &str = "acme-tenant-secret-0123456789-abcdefghij";
const ACME_SECRET_2: &str = "acme-tenant-secret-rotated-0123456789-ab";

fn admin() -> String {
    sign_with(
        &json!({"role": "service_role", "exp": unix_now() + 3600}),
        API_SECRET,
    )
}

fn tenant_token(secret: &str) -> String {
    sign_with(&json!({"role": "anon", "exp": unix_now() + 3600}), secret)
}

async fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, String, Option<String>)> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    let body = body.map(|b| b.to_string());
    let response = server
        .http_body(method, path, &headers, body.as_deref().map(str::as_bytes))
        .await?;
    let location = response.header("location").map(str::to_owned);
    Ok((response.status, response.body, location))
}

#[tokio::test]
async fn tenants_are_managed_through_the_api() -> Result<()> {
    let pg = PgCluster::start().await?;
    pg.connect()
        .await?
        .batch_execute("create database acme")
        .await?;
    let acme_url = match pg.url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/acme"),
        None => anyhow::bail!("url {}", pg.url),
    };
    let changes = std::env::temp_dir().join(format!("realtide-tenants-api-{}", std::process::id()));
    let changes_text = changes.to_string_lossy().into_owned();
    let server = Server::start(&[
        ("TENANTS_DB_URL", pg.url.as_str()),
        ("DB_ENC_KEY", ENC_KEY),
        ("API_JWT_SECRET", API_SECRET),
        ("CHANGES_DIR", &changes_text),
    ])
    .await?;
    let admin = admin();

    // Authorization: no token, a tenant's token, a bad signature.
    for token in [
        None,
        Some(tenant_token(ACME_SECRET)),
        Some("x.y.z".to_owned()),
    ] {
        let (status, body, _) =
            call(&server, "GET", "/api/tenants", token.as_deref(), None).await?;
        ensure!(
            status == 403 && body.is_empty(),
            "{token:?}: {status} {body}"
        );
    }
    // Validation: each error names its field, and nothing is stored.
    let cases = [
        (json!({}), "tenant"),
        (
            json!({"tenant": {"external_id": "Bad.Id", "jwt_secret": ACME_SECRET}}),
            "external_id",
        ),
        (
            json!({"tenant": {"external_id": "acme", "jwt_secret": ACME_SECRET, "colour": 1}}),
            "colour",
        ),
        (json!({"tenant": {"external_id": "acme"}}), "tenant"),
        (
            json!({"tenant": {"external_id": "acme", "jwt_secret": ACME_SECRET, "max_concurrent_users": "many"}}),
            "tenant",
        ),
    ];
    for (body, field) in cases {
        let (status, text, _) = call(
            &server,
            "POST",
            "/api/tenants",
            Some(&admin),
            Some(body.clone()),
        )
        .await?;
        let parsed: Value = serde_json::from_str(&text).unwrap_or_default();
        ensure!(
            status == 422 && parsed["errors"][field].is_array(),
            "{body}: {status} {text}"
        );
    }
    // An oversized body is refused before it is read whole.
    let huge = json!({"tenant": {"external_id": "acme", "name": "x".repeat(3 << 20)}});
    let (status, _, _) = call(&server, "POST", "/api/tenants", Some(&admin), Some(huge)).await?;
    ensure!(status == 413, "oversized body: {status}");
    let (_, text, _) = call(&server, "GET", "/api/tenants", Some(&admin), None).await?;
    ensure!(
        serde_json::from_str::<Value>(&text)? == json!({"data": []}),
        "{text}"
    );

    // Create, in the reference's shape.
    let create = json!({"tenant": {
        "external_id": "acme",
        "name": "Acme",
        "jwt_secret": ACME_SECRET,
        "max_concurrent_users": 50,
        "extensions": [{"type": "postgres_cdc_rls", "settings": {
            "db_host": "127.0.0.1",
            "db_port": pg.port()?.to_string(),
            "db_user": "postgres",
            "db_password": "not-needed-but-secret",
            "db_name": "acme",
            "publication": "acme_pub",
        }}],
    }});
    let (status, text, location) =
        call(&server, "POST", "/api/tenants", Some(&admin), Some(create)).await?;
    ensure!(status == 201, "{status} {text}\n{}", server.stderr());
    ensure!(
        location.as_deref() == Some("/api/tenants/acme"),
        "{location:?}"
    );
    ensure!(
        !text.contains("not-needed-but-secret") && !text.contains(ACME_SECRET),
        "a secret in the response: {text}"
    );
    let data: Value = serde_json::from_str(&text)?;
    ensure!(
        data["data"]["external_id"] == "acme"
            && data["data"]["max_concurrent_users"] == 50
            && data["data"]["extensions"][0]["settings"]["slot_name"] == "realtide_acme",
        "{text}"
    );
    // Stored sealed: neither the password nor the secret is in the control database's bytes.
    let control = pg.connect().await?;
    let row = control
        .query_one(
            "select sealed from realtide_tenants where external_id = 'acme'",
            &[],
        )
        .await?;
    let sealed: Vec<u8> = row.get(0);
    ensure!(
        !sealed
            .windows(ACME_SECRET.len())
            .any(|w| w == ACME_SECRET.as_bytes())
            && !sealed.windows(8).any(|w| w == b"not-need"),
        "settings stored in clear"
    );
    // Its migrations ran at create.
    let acme_db = tokio_postgres::connect(&acme_url, tokio_postgres::NoTls).await?;
    tokio::spawn(acme_db.1);
    let schema = acme_db
        .0
        .query("select 1 from pg_namespace where nspname = 'realtime'", &[])
        .await?;
    ensure!(!schema.is_empty(), "no realtime schema in acme's database");

    let (status, text, _) = call(&server, "GET", "/api/tenants/acme", Some(&admin), None).await?;
    ensure!(
        status == 200 && text.contains("\"Acme\""),
        "{status} {text}"
    );
    let (status, text, _) = call(&server, "GET", "/api/tenants/nope", Some(&admin), None).await?;
    ensure!(
        status == 404 && serde_json::from_str::<Value>(&text)? == json!({"message": "not found"}),
        "{status} {text}"
    );
    let (status, text, _) = call(
        &server,
        "GET",
        "/api/tenants/acme/health",
        Some(&admin),
        None,
    )
    .await?;
    ensure!(
        status == 200 && text.contains("\"db_connected\":true"),
        "{status} {text}"
    );

    // A socket of acme; rotating acme's secret disconnects it as the reference does.
    let query = format!("apikey={}&vsn=2.0.0", tenant_token(ACME_SECRET));
    let mut client = server
        .connect_url(Vsn::V2, "/t/acme/realtime/v1/websocket", &query, &[])
        .await?;
    client.join("realtime:room", &json!({"config": {}})).await?;
    let (status, text, _) = call(
        &server,
        "PUT",
        "/api/tenants/acme",
        Some(&admin),
        Some(json!({"tenant": {"jwt_secret": ACME_SECRET_2}})),
    )
    .await?;
    ensure!(status == 200, "{status} {text}");
    let (code, frames) = client.expect_end(Duration::from_secs(20)).await?;
    ensure!(code == Some(1012), "close {code:?} after {frames:?}");
    ensure!(
        frames
            .iter()
            .any(|f| format!("{f:?}").contains("Server requested disconnect")),
        "{frames:?}"
    );
    let old = server
        .try_connect(Vsn::V2, "/t/acme/realtime/v1/websocket", &query, &[])
        .await?
        .refused()?;
    ensure!(old.status == 401, "{old:?}\n{}", server.stderr());
    let new_query = format!("apikey={}&vsn=2.0.0", tenant_token(ACME_SECRET_2));
    let mut client = server
        .connect_url(Vsn::V2, "/t/acme/realtime/v1/websocket", &new_query, &[])
        .await?;
    client.join("realtime:room", &json!({"config": {}})).await?;
    // The update kept what it did not name.
    let (_, text, _) = call(&server, "GET", "/api/tenants/acme", Some(&admin), None).await?;
    ensure!(text.contains("\"max_concurrent_users\":50"), "{text}");
    let (status, _, _) = call(
        &server,
        "POST",
        "/api/tenants/acme/reload",
        Some(&admin),
        None,
    )
    .await?;
    ensure!(status == 204, "reload {status}");
    let (code, _) = client.expect_end(Duration::from_secs(20)).await?;
    ensure!(code == Some(1012), "close after reload {code:?}");
    // Shutdown stops it the same way; the next connect starts it again.
    let mut client = server
        .connect_url(Vsn::V2, "/t/acme/realtime/v1/websocket", &new_query, &[])
        .await?;
    client.join("realtime:room", &json!({"config": {}})).await?;
    let (status, _, _) = call(
        &server,
        "POST",
        "/api/tenants/acme/shutdown",
        Some(&admin),
        None,
    )
    .await?;
    ensure!(status == 204, "shutdown {status}");
    let (code, _) = client.expect_end(Duration::from_secs(20)).await?;
    ensure!(code == Some(1012), "close after shutdown {code:?}");
    let (status, _, _) = call(
        &server,
        "POST",
        "/api/tenants/nope/reload",
        Some(&admin),
        None,
    )
    .await?;
    ensure!(status == 404, "reload of an unknown tenant {status}");

    // Delete: sockets drained, slot dropped, tenant gone; a second delete is 204 too.
    let mut client = server
        .connect_url(Vsn::V2, "/t/acme/realtime/v1/websocket", &new_query, &[])
        .await?;
    client.join("realtime:room", &json!({"config": {}})).await?;
    pg.wait_slot_active("realtide_acme").await.ok();
    let (status, _, _) = call(&server, "DELETE", "/api/tenants/acme", Some(&admin), None).await?;
    ensure!(status == 204, "delete {status}");
    let (code, _) = client.expect_end(Duration::from_secs(20)).await?;
    ensure!(code == Some(1012), "close after delete {code:?}");
    let slots = control
        .query(
            "select 1 from pg_replication_slots where slot_name = 'realtide_acme'",
            &[],
        )
        .await?;
    ensure!(
        slots.is_empty(),
        "acme's slot is still there\n{}",
        server.stderr()
    );
    let gone = server
        .try_connect(Vsn::V2, "/t/acme/realtime/v1/websocket", &new_query, &[])
        .await?
        .refused()?;
    ensure!(gone.status == 404, "{gone:?}");
    let (status, _, _) = call(&server, "DELETE", "/api/tenants/acme", Some(&admin), None).await?;
    ensure!(status == 204, "second delete {status}");
    ensure!(
        !server.stderr().contains("not-needed-but-secret"),
        "the password reached the logs"
    );
    let _ = std::fs::remove_dir_all(&changes);
    Ok(())
}
