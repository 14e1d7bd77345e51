//! The `realtime` schema realtide owns in the database: versioned migrations run at start, and
//! the daily partitions of `realtime.messages` (created ahead, dropped after the retention).
//!
//! Migrations run in one transaction under a transaction-level advisory lock, so several
//! realtide processes starting at once apply each version exactly once; applied versions are
//! recorded in `realtime.realtide_migrations`.

use std::time::Duration;

use tokio_postgres::Client;

use crate::db::pool::{self as database, DbError};

/// Versioned migrations, applied in order, each once.
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "messages",
    include_str!("../../sql/realtime/0001_messages.sql"),
)];

/// Run by every start: grants to roles that may have been created since.
const GRANTS: &str = include_str!("../../sql/realtime/0002_grants.sql");

/// Key of the advisory lock that serializes migrations across processes.
const MIGRATION_LOCK: i64 = 0x7265_616c_7469_6465; // "realtide"

/// The publication of `realtime.messages` streamed beside the postgres_changes publication.
pub const MESSAGES_PUBLICATION: &str = "realtide_messages";

/// How often partitions are created ahead and old ones dropped.
pub const JANITOR_INTERVAL: Duration = Duration::from_secs(3600);

/// Applies the pending migrations, the grants, and today's partitions.
pub async fn migrate(
    url: &str,
    tls: Option<&std::sync::Arc<database::TlsConfig>>,
    retention: Duration,
) -> Result<Vec<i32>, DbError> {
    let mut client = database::connect(url, tls).await?;
    // `if not exists` notices are expected on every start.
    client
        .batch_execute("set client_min_messages = warning")
        .await
        .map_err(DbError::query("migration setup"))?;
    let applied = migrate_on(&mut client).await?;
    maintain_partitions(&client, retention).await?;
    Ok(applied)
}

async fn migrate_on(client: &mut Client) -> Result<Vec<i32>, DbError> {
    let transaction = client
        .transaction()
        .await
        .map_err(DbError::query("migration begin"))?;
    transaction
        .execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(DbError::query("migration lock"))?;
    transaction
        .batch_execute(
            "create schema if not exists realtime; \
             create table if not exists realtime.realtide_migrations ( \
               version integer primary key, name text not null, \
               applied_at timestamptz not null default now())",
        )
        .await
        .map_err(DbError::query("migration table"))?;
    let done: Vec<i32> = transaction
        .query("select version from realtime.realtide_migrations", &[])
        .await
        .map_err(DbError::query("migration versions"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        transaction
            .batch_execute(sql)
            .await
            .map_err(DbError::query("migration"))?;
        transaction
            .execute(
                "insert into realtime.realtide_migrations (version, name) values ($1, $2)",
                &[version, name],
            )
            .await
            .map_err(DbError::query("migration record"))?;
        tracing::info!(version, name, "applied realtime schema migration");
        applied.push(*version);
    }
    transaction
        .batch_execute(GRANTS)
        .await
        .map_err(DbError::query("migration grants"))?;
    transaction
        .commit()
        .await
        .map_err(DbError::query("migration commit"))?;
    Ok(applied)
}

/// Creates the partitions from yesterday to today + 3 and drops those past the retention.
pub async fn maintain_partitions(client: &Client, retention: Duration) -> Result<u32, DbError> {
    client
        .execute(
            "select realtime.create_messages_partitions(current_date - 1, current_date + 3)",
            &[],
        )
        .await
        .map_err(DbError::query("create partitions"))?;
    let hours = i32::try_from(retention.as_secs() / 3600).unwrap_or(i32::MAX);
    let dropped: i32 = client
        .query_one(
            "select realtime.drop_messages_partitions( \
               (now() at time zone 'utc') - make_interval(hours => $1::int))",
            &[&hours],
        )
        .await
        .map_err(DbError::query("drop partitions"))?
        .get(0);
    if dropped > 0 {
        tracing::info!(dropped, "dropped expired realtime.messages partitions");
    }
    Ok(dropped.unsigned_abs())
}

/// Keeps partitions ahead of time and drops expired ones, hourly, until shutdown; skips a turn
/// while `ready` says the schema is not migrated yet.
pub async fn janitor(
    pool: std::sync::Arc<crate::db::pool::Pool>,
    retention: Duration,
    ready: impl Fn() -> bool,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(JANITOR_INTERVAL) => {}
        }
        if !ready() {
            continue;
        }
        let result = async {
            let client = pool.client().await?;
            maintain_partitions(&client, retention).await
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(error = %crate::logs::error_chain(&error), "partition maintenance failed");
        }
    }
}
