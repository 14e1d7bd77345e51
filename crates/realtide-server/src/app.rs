//! The state of one project in one value: configuration, channels, limits, counters, the publish
//! path, the database side and the shutdown tokens. Everything a connection, an HTTP request or a
//! background task needs is reached from an [`App`]; nothing per project lives in statics, so
//! several projects in one process are several of these values.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::changes::postgres::Postgres;
use crate::changes::shared::SharedStream;
use crate::channels::registry::Registry;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::{Exporter, Metrics};

/// What every project of one process shares: the shutdown signal, the tracker of connection
/// tasks and the count of accepted sockets.
#[derive(Debug, Clone)]
pub struct ProcessParts {
    /// Cancelled when the process shuts down.
    pub shutdown: CancellationToken,
    /// Every connection task and delayed reply, awaited at shutdown.
    pub tasks: TaskTracker,
    /// Accepted sockets, counted from accept.
    pub sockets: Arc<crate::ws::listener::Sockets>,
}

impl ProcessParts {
    /// The parts for a process configured by `config` (its connection bounds).
    pub fn new(config: &Config) -> ProcessParts {
        ProcessParts {
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            sockets: crate::ws::listener::Sockets::new(
                config.limits.connections,
                config.handshake_timeout,
            ),
        }
    }
}

/// State shared by every connection of one project.
#[derive(Debug)]
pub struct App {
    /// The tenant this project is, when the process serves several.
    pub tenant: Option<crate::config::tenants::TenantId>,
    /// Validated configuration.
    pub config: Config,
    /// Topics and subscribers.
    pub registry: Arc<Registry>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Rate and count limits.
    pub limits: Arc<crate::limits::Limits>,
    /// The publish path of user broadcasts (client, HTTP and database).
    pub publisher: crate::channels::publish::Publisher,
    /// Cancelled when this project stops: the process shuts down, or (with several tenants)
    /// this tenant is stopped on its own.
    pub shutdown: CancellationToken,
    /// Cancelled after `shutdown` once decoded changes were handed to the sockets: sessions
    /// then say goodbye and close.
    pub disconnect: CancellationToken,
    /// Every connection task and delayed reply, awaited at shutdown.
    pub tasks: TaskTracker,
    /// Database state, when `DB_URL` is set.
    pub postgres: Option<Arc<Postgres>>,
    /// Prometheus exporter behind `GET /metrics`.
    pub exporter: Exporter,
    /// Accepted sockets, counted from accept.
    pub sockets: Arc<crate::ws::listener::Sockets>,
    /// This node's cluster, when CLUSTER_NATS_URL is set.
    pub cluster: Option<Arc<Cluster>>,
}

/// A connected cluster link, made before the [`App`] (so a wrong URL fails at start).
#[derive(Debug)]
pub struct ClusterLink {
    /// The NATS connection.
    pub connection: crate::cluster::Connection,
    /// The shared change stream (with a database).
    pub shared: Option<Arc<SharedStream>>,
}

impl App {
    /// Builds the state of one project; `shutdown` is the token it stops with (the process's,
    /// or a child of it for a tenant).
    pub fn new(
        config: Config,
        link: Option<ClusterLink>,
        process: &ProcessParts,
        tenant: Option<crate::config::tenants::TenantId>,
        shutdown: CancellationToken,
    ) -> Result<Arc<App>, crate::changes::journal::JournalError> {
        let metrics = Arc::new(Metrics::default());
        let limits = Arc::new(crate::limits::Limits::new(config.limits));
        let exporter = Exporter::new(config.database.is_some());
        let postgres = config
            .database
            .clone()
            .map(|database| {
                Postgres::new(
                    database,
                    exporter.authorization_histogram(),
                    link.as_ref().and_then(|l| l.shared.clone()),
                )
            })
            .transpose()?;
        let registry = Arc::new(Registry::new(metrics.clone(), limits.clone()));
        let cluster = match (link, &config.cluster) {
            (Some(link), Some(settings)) => Some(Cluster::new(
                settings.clone(),
                link.connection,
                registry.clone(),
                limits.clone(),
                metrics.clone(),
                postgres.clone(),
            )),
            _ => None,
        };
        let peers: Arc<dyn crate::channels::publish::Peers> = match &cluster {
            Some(cluster) => {
                registry.set_watch(cluster.clone());
                cluster.clone()
            }
            None => Arc::new(crate::channels::publish::NoPeers),
        };
        let publisher =
            crate::channels::publish::Publisher::new(registry.clone(), limits.clone(), peers);
        Ok(Arc::new(App {
            tenant,
            exporter,
            postgres,
            config,
            registry,
            publisher,
            limits,
            metrics,
            shutdown,
            disconnect: CancellationToken::new(),
            tasks: process.tasks.clone(),
            cluster,
            sockets: process.sockets.clone(),
        }))
    }
}

/// The background tasks of one project with a database (replication stream, change feed,
/// stream mirror, journal keeper), and the tokens of its staged stop.
#[derive(Debug)]
pub struct Background {
    tasks: TaskTracker,
    /// Cancelled once every session closed: the slot is confirmed and positions are saved.
    finished: CancellationToken,
}

impl App {
    /// Starts this project's background work. Shutdown runs in stages: `shutdown` stops the
    /// replication stream; the change feed hands what was decoded to the sockets and then
    /// cancels `disconnect` (sessions close); [`Background::finish`] confirms the slot.
    /// Without a database, `disconnect` follows `shutdown` at once.
    pub fn start(self: &Arc<Self>) -> Background {
        use crate::changes::{feed, source};
        use tracing::Instrument;
        let span = self.span();
        self.tasks.spawn(
            self.limits
                .clone()
                .run(self.shutdown.clone())
                .instrument(span.clone()),
        );
        let stages = feed::Stages {
            shutdown: self.shutdown.clone(),
            replication_stopped: CancellationToken::new(),
            disconnect: self.disconnect.clone(),
        };
        let finished = CancellationToken::new();
        let tasks = TaskTracker::new();
        if let Some(postgres) = self.postgres.clone() {
            let outlet = source::Outlet {
                publisher: self.publisher.clone(),
                max_payload: self.config.max_payload_bytes,
            };
            tasks.spawn(
                source::run(
                    postgres.clone(),
                    outlet,
                    self.metrics.clone(),
                    stages.clone(),
                    finished.clone(),
                )
                .instrument(span.clone()),
            );
            tasks.spawn(
                feed::run(
                    postgres.clone(),
                    self.limits.clone(),
                    self.metrics.clone(),
                    crate::changes::render::RenderLimits {
                        max_record_bytes: postgres.config.max_record_bytes,
                    },
                    stages.clone(),
                )
                .instrument(span.clone()),
            );
            tasks.spawn(feed::keeper(postgres.clone(), finished.clone()).instrument(span.clone()));
            if postgres.shared.is_some() {
                tasks.spawn(
                    crate::changes::mirror::read(
                        postgres.clone(),
                        self.publisher.clone(),
                        self.config.max_payload_bytes,
                        self.metrics.clone(),
                        self.shutdown.clone(),
                    )
                    .instrument(span.clone()),
                );
            }
            let ready = postgres.clone();
            self.tasks.spawn(
                crate::db::schema::janitor(
                    postgres.pool.clone(),
                    postgres.config.messages_retention,
                    move || {
                        ready
                            .schema_ready
                            .load(std::sync::atomic::Ordering::Relaxed)
                    },
                    self.shutdown.clone(),
                )
                .instrument(span.clone()),
            );
        } else {
            let disconnect = self.disconnect.clone();
            let shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                disconnect.cancel();
            });
        }
        Background { tasks, finished }
    }
}

impl App {
    /// The span this project's tasks log in: the tenant's id, when the process serves several.
    pub fn span(&self) -> tracing::Span {
        match &self.tenant {
            Some(tenant) => tracing::info_span!("tenant", tenant = %tenant),
            None => tracing::Span::none(),
        }
    }
}

impl Background {
    /// After every session closed: confirms the slot, saves positions and waits (bounded) for
    /// the background tasks to end.
    pub async fn finish(self) {
        self.finished.cancel();
        self.tasks.close();
        if tokio::time::timeout(std::time::Duration::from_secs(30), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("replication did not stop in time");
        }
    }
}
