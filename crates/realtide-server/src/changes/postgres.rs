//! The database side of realtide: query pool, catalog, postgres_changes subscriptions and the
//! replication task that feeds them.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::changes::journal::{Journal, JournalError};
use crate::changes::progress::{Progress, ReplicationStatus};
use crate::changes::resume::ResumeBook;
use crate::changes::shared::SharedStream;
use crate::changes::subscriptions::Subscriptions;
use crate::config::DatabaseConfig;
use crate::db::authorization::Authorizer;
use crate::db::catalog::Catalog;
use crate::db::pool::Pool;

/// Shared database state.
#[derive(Debug)]
pub struct Postgres {
    /// Settings.
    pub config: DatabaseConfig,
    /// Query connections.
    pub pool: Arc<Pool>,
    /// Table and privilege cache.
    pub catalog: Catalog,
    /// postgres_changes subscriptions.
    pub subscriptions: Subscriptions,
    /// Private-channel authorization checks (their own small pool).
    pub authorizer: Authorizer,
    /// Whether this process has applied the `realtime` schema migrations.
    pub schema_ready: AtomicBool,
    /// Whether the replication stream is streaming, starting, or down and why.
    pub replication: tokio::sync::watch::Sender<ReplicationStatus>,
    /// The positions the replication stream reached.
    pub progress: Progress,
    /// Committed changes not yet everywhere they must go.
    pub journal: Arc<Journal>,
    /// The cluster's change stream, when this process is a node of a cluster.
    pub shared: Option<Arc<SharedStream>>,
}

impl Postgres {
    /// Lazily connecting state; nothing touches the network until used.
    pub fn new(
        config: DatabaseConfig,
        authorization_seconds: metrics::Histogram,
        shared: Option<Arc<SharedStream>>,
    ) -> Result<Arc<Postgres>, JournalError> {
        let journal = Arc::new(Journal::open(&config.changes.dir)?);
        let book = ResumeBook::load(&config.changes.dir, config.resume);
        let pool = Arc::new(Pool::new(
            config.url.clone(),
            config.tls.clone(),
            config.pool_size,
        ));
        Ok(Arc::new(Postgres {
            journal,
            authorizer: Authorizer::new(
                config.url.clone(),
                config.tls.clone(),
                config.authorization_pool_size,
                config.authorization_timeout,
                authorization_seconds,
            ),
            schema_ready: AtomicBool::new(false),
            catalog: Catalog::new(pool.clone()),
            pool,
            config,
            subscriptions: Subscriptions::new(book),
            replication: tokio::sync::watch::Sender::new(ReplicationStatus::Starting),
            progress: Progress::default(),
            shared,
        }))
    }

    /// Whether the replication stream is connected.
    pub fn replication_streaming(&self) -> bool {
        matches!(*self.replication.borrow(), ReplicationStatus::Streaming)
    }

    /// Whether a query connection answers `select 1` within two seconds.
    pub async fn ping(&self) -> bool {
        let check = async {
            let client = self.pool.client().await.ok()?;
            client.simple_query("select 1").await.ok()
        };
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), check).await,
            Ok(Some(_))
        )
    }

    /// Replication lag in bytes (server WAL end minus confirmed position).
    pub fn lag_bytes(&self) -> u64 {
        self.progress.lag_bytes()
    }
}
