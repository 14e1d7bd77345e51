//! Connections to PostgreSQL for queries (catalog lookups and RLS checks).
//!
//! A small fixed set of `tokio-postgres` clients used round-robin; a broken client is replaced
//! on its next use. Queries issued concurrently on one client are pipelined by tokio-postgres.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::collections::HashMap;

use tokio_postgres::{Client, NoTls, Statement};

/// A client plus its prepared statements (statements belong to one connection).
#[derive(Debug)]
pub struct Conn {
    /// The client.
    pub client: Client,
    statements: parking_lot::Mutex<HashMap<String, Statement>>,
    /// Session objects (temporary functions) already created on this connection.
    created: parking_lot::Mutex<std::collections::HashSet<String>>,
}

impl Conn {
    /// Runs `ddl` once per connection under the name `key` (e.g. a `pg_temp` function).
    pub async fn ensure(&self, key: &str, ddl: &str) -> Result<(), DbError> {
        if self.created.lock().contains(key) {
            return Ok(());
        }
        self.client
            .batch_execute(ddl)
            .await
            .map_err(DbError::query("session setup"))?;
        self.created.lock().insert(key.to_owned());
        Ok(())
    }

    /// A prepared statement for `sql`, prepared once per connection.
    pub async fn prepared(&self, sql: &str) -> Result<Statement, DbError> {
        if let Some(statement) = self.statements.lock().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self
            .client
            .prepare(sql)
            .await
            .map_err(DbError::query("prepare"))?;
        let mut statements = self.statements.lock();
        if statements.len() > 1000 {
            // Table shapes change rarely; a bound keeps a long-lived connection from growing.
            statements.clear();
        }
        statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// A database error, with the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The pool has no connection slots.
    #[error("the database pool has no connections")]
    NoConnections,
    /// A transaction streamed by the walsender is not yet visible to other sessions (its commit
    /// waits, e.g. for a synchronous standby).
    #[error("a committed transaction is not yet visible")]
    NotVisible,
    /// Connecting failed.
    #[error("cannot connect to the database")]
    Connect(#[source] tokio_postgres::Error),
    /// A query failed.
    #[error("database query failed: {what}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl DbError {
    /// Whether the error is about reaching the database (connection, shutdown, overload,
    /// timeout, a transaction not yet visible) rather than about the query: such work is
    /// retried later, never dropped.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::NoConnections | DbError::Connect(_) | DbError::NotVisible => true,
            DbError::Query { source, .. } => {
                if source.is_closed() {
                    return true;
                }
                match source.code() {
                    // No SQLSTATE: an I/O or protocol failure of the connection.
                    None => true,
                    Some(code) => {
                        let code = code.code();
                        // 08 connection exception, 53 insufficient resources, 57P0x operator
                        // intervention (shutdown, cannot connect now), 57014 query canceled
                        // (statement timeout), 40001/40P01 serialization failure/deadlock.
                        code.starts_with("08")
                            || code.starts_with("53")
                            || code.starts_with("57P")
                            || code == "57014"
                            || code == "40001"
                            || code == "40P01"
                    }
                }
            }
        }
    }

    /// Wraps a query error.
    pub fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DbError {
        move |source| DbError::Query { what, source }
    }
}

/// A small pool of query connections.
#[derive(Debug)]
pub struct Pool {
    url: String,
    /// TLS to PostgreSQL, when required.
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    /// Extra session settings run on each new connection.
    setup: Option<String>,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
}

impl Pool {
    /// A pool of `size` lazily opened connections.
    pub fn new(url: String, tls: Option<Arc<TlsConfig>>, size: usize) -> Pool {
        Pool::build(url, tls, size, None)
    }

    /// A pool whose connections also run `setup` (e.g. a statement timeout) when opened.
    pub fn with_setup(
        url: String,
        tls: Option<Arc<TlsConfig>>,
        size: usize,
        setup: String,
    ) -> Pool {
        Pool::build(url, tls, size, Some(setup))
    }

    fn build(url: String, tls: Option<Arc<TlsConfig>>, size: usize, setup: Option<String>) -> Pool {
        Pool {
            url,
            tls,
            setup,
            slots: (0..size.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Number of connections.
    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// The next client, round-robin.
    pub async fn client(&self) -> Result<Arc<Conn>, DbError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.client_at(index).await
    }

    /// The client in slot `index` (modulo the pool size), reconnecting it when broken.
    pub async fn client_at(&self, index: usize) -> Result<Arc<Conn>, DbError> {
        let Some(slot) = self.slots.get(index % self.slots.len()) else {
            return Err(DbError::NoConnections);
        };
        let mut slot = slot.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = connect(&self.url, self.tls.as_ref()).await?;
        if let Some(setup) = &self.setup {
            client
                .batch_execute(setup)
                .await
                .map_err(DbError::query("session setup"))?;
        }
        let client = Arc::new(Conn {
            client,
            statements: parking_lot::Mutex::new(HashMap::new()),
            created: parking_lot::Mutex::new(std::collections::HashSet::new()),
        });
        *slot = Some(client.clone());
        Ok(client)
    }
}

/// TLS settings for PostgreSQL connections.
pub type TlsConfig = tokio_rustls::rustls::ClientConfig;

/// Opens one connection (over TLS when `tls` is given; TLS is then required) and drives it on
/// a background task.
pub async fn connect(url: &str, tls: Option<&Arc<TlsConfig>>) -> Result<Client, DbError> {
    let client = match tls {
        None => {
            let (client, connection) = tokio_postgres::connect(url, NoTls)
                .await
                .map_err(DbError::Connect)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(%error, "database connection ended");
                }
            });
            client
        }
        Some(tls) => {
            let mut config: tokio_postgres::Config = url.parse().map_err(DbError::Connect)?;
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, connection) = config
                .connect(crate::db::tls::MakeRustls::new(tls.clone()))
                .await
                .map_err(DbError::Connect)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(%error, "database connection ended");
                }
            });
            client
        }
    };
    client
        // JIT compiling the small per-subscriber visibility queries costs far more than it saves.
        .batch_execute("set application_name = 'realtide'; set time zone 'UTC'; set jit = off")
        .await
        .map_err(DbError::query("session setup"))?;
    Ok(client)
}
