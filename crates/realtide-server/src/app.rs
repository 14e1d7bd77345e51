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

/// State shared by every connection.
#[derive(Debug)]
pub struct App {
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
    /// Cancelled when the server shuts down.
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
    /// Builds the shared state.
    pub fn new(
        config: Config,
        link: Option<ClusterLink>,
    ) -> Result<Arc<App>, crate::changes::journal::JournalError> {
        let metrics = Arc::new(Metrics::default());
        let limits = Arc::new(crate::limits::Limits::new(config.limits));
        let exporter = Exporter::new(config.database.is_some());
        let (config_limits_connections, handshake_timeout) =
            (config.limits.connections, config.handshake_timeout);
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
            exporter,
            postgres,
            config,
            registry,
            publisher,
            limits,
            metrics,
            shutdown: CancellationToken::new(),
            disconnect: CancellationToken::new(),
            tasks: TaskTracker::new(),
            cluster,
            sockets: crate::ws::listener::Sockets::new(
                config_limits_connections,
                handshake_timeout,
            ),
        }))
    }
}
