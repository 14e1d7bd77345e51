//! The projects one process serves. Without `TENANTS_FILE` there is one implicit project, as
//! a single-project server always was. With it, each tenant is its own [`App`] (its own
//! registry, presence, limits, counters, pools, replication slot and change journal), started
//! on the first request that names it and stopped after `TENANT_IDLE_STOP_SECS` without a
//! socket; nothing but the process (listener, socket count, connection tasks) is shared.
//!
//! - [`routing`]: which tenant a request names (`/t/{tenant}` prefix, or the first label of
//!   the `Host` header), pure.
//! - [`store`]: the control database (`TENANTS_DB_URL`), settings sealed with `DB_ENC_KEY`.

pub mod routing;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::app::{App, Background, ProcessParts};
use crate::config::tenants::{TenantId, TenantSettings, TenantSource, TenantsConfig};
use store::{Record, Store};

/// Why a request's tenant cannot serve it.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// No tenant has this id (or the request named none).
    #[error("Tenant not found")]
    NotFound,
    /// The tenant is suspended.
    #[error("Realtime was disabled for this tenant")]
    Suspended,
    /// The control database failed.
    #[error("{0}")]
    Store(String),
    /// The tenant's state could not be made (its journal directory, say).
    #[error("tenant {tenant} could not start: {message}")]
    Start {
        /// The tenant.
        tenant: TenantId,
        /// What failed.
        message: String,
    },
}

/// The projects of this process.
#[derive(Debug)]
pub enum Tenants {
    /// One implicit project: every request is its.
    One(One),
    /// Tenants by id.
    Many(Arc<Set>),
}

/// The implicit project.
#[derive(Debug)]
pub struct One {
    app: Arc<App>,
    background: Mutex<Option<Background>>,
}

/// The tenants (of `TENANTS_FILE` or the control database) and those of them running now.
#[derive(Debug)]
pub struct Set {
    settings: TenantsConfig,
    catalog: Catalog,
    process: ProcessParts,
    state: Mutex<HashMap<TenantId, State>>,
    /// Stops under way (idle ones), awaited at shutdown.
    stops: TaskTracker,
    epoch: Instant,
}

/// Where tenants are looked up.
#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "one value per process")]
enum Catalog {
    /// `TENANTS_FILE`, read once.
    File(std::collections::BTreeMap<TenantId, Arc<Record>>),
    /// The control database, with a bounded cache of lookups (misses included) so that a
    /// connect does not ask the database each time.
    Database {
        store: Store,
        cache: moka::future::Cache<TenantId, Option<Arc<Record>>>,
    },
}

#[derive(Debug)]
enum State {
    Running(Running),
    /// Stopping; the receiver turns `true` once it stopped.
    Stopping(watch::Receiver<bool>),
}

#[derive(Debug)]
struct Running {
    app: Arc<App>,
    background: Background,
    /// Milliseconds since the set's epoch of the last request that named this tenant.
    last_used: Arc<AtomicU64>,
}

impl Tenants {
    /// One implicit project; its background work starts now.
    pub fn one(app: Arc<App>) -> Tenants {
        let background = app.start();
        Tenants::One(One {
            app,
            background: Mutex::new(Some(background)),
        })
    }

    /// The tenants of `settings`; none runs until a request names it.
    pub fn many(settings: TenantsConfig, process: ProcessParts) -> Tenants {
        let catalog = match &settings.source {
            TenantSource::File { tenants, .. } => {
                let inserted_at = crate::tenants::now_rfc3339();
                Catalog::File(
                    tenants
                        .iter()
                        .map(|(id, settings)| {
                            (
                                id.clone(),
                                Arc::new(Record {
                                    settings: settings.clone(),
                                    uuid: uuid::Uuid::new_v4().to_string(),
                                    inserted_at: inserted_at.clone(),
                                }),
                            )
                        })
                        .collect(),
                )
            }
            TenantSource::Database {
                url,
                key,
                cache_ttl,
            } => Catalog::Database {
                store: Store::new(url, key),
                cache: moka::future::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(*cache_ttl)
                    .build(),
            },
        };
        let set = Arc::new(Set {
            catalog,
            settings,
            process,
            state: Mutex::new(HashMap::new()),
            stops: TaskTracker::new(),
            epoch: Instant::now(),
        });
        tokio::spawn(set.clone().stop_idle());
        set.resume_active();
        Tenants::Many(set)
    }

    /// Whether requests must name a tenant.
    pub fn is_many(&self) -> bool {
        matches!(self, Tenants::Many(_))
    }

    /// The project a request is for: the implicit one, or the named tenant (started if it is
    /// not running).
    pub async fn resolve(&self, tenant: Option<&str>) -> Result<Arc<App>, TenantError> {
        match self {
            Tenants::One(one) => Ok(one.app.clone()),
            Tenants::Many(set) => {
                let id = tenant
                    .and_then(TenantId::parse)
                    .ok_or(TenantError::NotFound)?;
                set.app(&id).await
            }
        }
    }

    /// The running projects (for health and metrics).
    pub fn running(&self) -> Vec<Arc<App>> {
        match self {
            Tenants::One(one) => vec![one.app.clone()],
            Tenants::Many(set) => set
                .state
                .lock()
                .values()
                .filter_map(|state| match state {
                    State::Running(running) => Some(running.app.clone()),
                    State::Stopping(_) => None,
                })
                .collect(),
        }
    }

    /// At shutdown, after the process's token was cancelled: waits (bounded) until every
    /// running project handed its decoded changes to its sockets, then tells the sessions to
    /// close.
    pub async fn disconnect_all(&self) {
        let apps = self.running();
        let deadline = crate::changes::feed::DRAIN_DEADLINE + Duration::from_secs(2);
        let all = futures_util::future::join_all(apps.iter().map(|app| app.disconnect.cancelled()));
        let _ = tokio::time::timeout(deadline, all).await;
        for app in &apps {
            app.disconnect.cancel();
        }
    }

    /// After every session closed: confirms the slots and saves positions.
    pub async fn finish(&self) {
        match self {
            Tenants::One(one) => {
                let background = one.background.lock().take();
                if let Some(background) = background {
                    background.finish().await;
                }
                if let Some(cluster) = &one.app.cluster {
                    // After the slot was released: the others take it at once. With a database
                    // this node may have held the slot (a node that did not only makes them
                    // ask early).
                    cluster.goodbye(one.app.postgres.is_some()).await;
                }
            }
            Tenants::Many(set) => {
                let running: Vec<Running> = {
                    let mut state = set.state.lock();
                    let ids: Vec<TenantId> = state
                        .iter()
                        .filter(|(_, s)| matches!(s, State::Running(_)))
                        .map(|(id, _)| id.clone())
                        .collect();
                    ids.into_iter()
                        .filter_map(|id| match state.remove(&id) {
                            Some(State::Running(running)) => Some(running),
                            _ => None,
                        })
                        .collect()
                };
                futures_util::future::join_all(running.into_iter().map(|r| r.background.finish()))
                    .await;
                set.stops.close();
                let _ = tokio::time::timeout(Duration::from_secs(40), set.stops.wait()).await;
            }
        }
    }
}

impl Set {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The stored tenant `id`.
    pub async fn lookup(&self, id: &TenantId) -> Result<Option<Arc<Record>>, TenantError> {
        match &self.catalog {
            Catalog::File(tenants) => Ok(tenants.get(id).cloned()),
            Catalog::Database { store, cache } => cache
                .try_get_with(id.clone(), async {
                    store.get(id).await.map(|record| record.map(Arc::new))
                })
                .await
                .map_err(|e| TenantError::Store(crate::logs::error_chain(e.as_ref()))),
        }
    }

    /// The running tenant `id`, started now if it is not running (after a stop under way).
    pub async fn app(self: &Arc<Self>, id: &TenantId) -> Result<Arc<App>, TenantError> {
        let record = self.lookup(id).await?.ok_or(TenantError::NotFound)?;
        if record.settings.suspended {
            return Err(TenantError::Suspended);
        }
        loop {
            let mut stopped = {
                let mut state = self.state.lock();
                match state.get(id) {
                    Some(State::Running(running)) => {
                        running.last_used.store(self.now_ms(), Ordering::Relaxed);
                        return Ok(running.app.clone());
                    }
                    Some(State::Stopping(stopped)) => stopped.clone(),
                    None => {
                        let running = self.start(id, &record.settings)?;
                        let app = running.app.clone();
                        state.insert(id.clone(), State::Running(running));
                        return Ok(app);
                    }
                }
            };
            // Its journal and slot are still held by the stopping instance.
            if stopped.wait_for(|done| *done).await.is_err() {
                return Err(TenantError::Start {
                    tenant: id.clone(),
                    message: "its previous run did not stop".to_owned(),
                });
            }
        }
    }

    fn start(&self, id: &TenantId, settings: &TenantSettings) -> Result<Running, TenantError> {
        let failed = |message: String| TenantError::Start {
            tenant: id.clone(),
            message,
        };
        let config = settings
            .config(id, &self.settings.base)
            .map_err(|e| failed(crate::logs::error_chain(&e)))?;
        let app = App::new(
            config,
            None,
            &self.process,
            Some(id.clone()),
            self.process.shutdown.child_token(),
        )
        .map_err(|e| failed(crate::logs::error_chain(&e)))?;
        let background = app.start();
        tracing::info!(tenant = %id, "tenant started");
        Ok(Running {
            app,
            background,
            last_used: Arc::new(AtomicU64::new(self.now_ms())),
        })
    }

    /// Starts stopping the running tenant `id` (under the state lock): its sockets get
    /// `Server requested disconnect` once its decoded changes reached them, then its slot is
    /// confirmed and its pools closed. Returns what turns `true` once it stopped.
    fn begin_stop(
        self: &Arc<Self>,
        state: &mut HashMap<TenantId, State>,
        id: &TenantId,
        forget: bool,
    ) -> Option<watch::Receiver<bool>> {
        match state.get(id) {
            Some(State::Stopping(stopped)) => return Some(stopped.clone()),
            Some(State::Running(_)) => {}
            None => return None,
        }
        let (done, stopped) = watch::channel(false);
        let Some(State::Running(running)) =
            state.insert(id.clone(), State::Stopping(stopped.clone()))
        else {
            return None;
        };
        let set = self.clone();
        let id = id.clone();
        self.stops.spawn(async move {
            running.app.shutdown.cancel();
            let _ = tokio::time::timeout(
                crate::changes::feed::DRAIN_DEADLINE + Duration::from_secs(2),
                running.app.disconnect.cancelled(),
            )
            .await;
            running.app.disconnect.cancel();
            let Running {
                app, background, ..
            } = running;
            background.finish().await;
            // The next start takes the same journal (a lock file) and slot: wait (bounded)
            // until the sessions and tasks that still hold this run have let go of it.
            let postgres = app.postgres.clone();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while (Arc::strong_count(&app) > 1
                || postgres.as_ref().is_some_and(|p| Arc::strong_count(p) > 2))
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // An idle tenant's subscribers are past their resume window: nobody is owed the
            // changes committed until it starts again, so its slot (which would hold WAL back
            // meanwhile) and journal go; the next start makes them anew.
            if forget && let Some(postgres) = &postgres {
                forget_stream(&postgres.config).await;
            }
            drop(postgres);
            drop(app);
            set.state.lock().remove(&id);
            let _ = done.send(true);
            tracing::info!(tenant = %id, "tenant stopped");
        });
        Some(stopped)
    }

    /// Starts, at process start, the tenants that were running when the process stopped (their
    /// journal is still there): their slots resume at once and their subscribers can rejoin;
    /// unused, they stop again after the idle period.
    pub fn resume_active(self: &Arc<Self>) {
        let dir = self.settings.base.changes_dir.join("tenants");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let ids: Vec<TenantId> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(TenantId::parse))
            .collect();
        let set = self.clone();
        tokio::spawn(async move {
            for id in ids {
                match set.app(&id).await {
                    Ok(_) => tracing::info!(tenant = %id, "tenant resumed at start"),
                    Err(TenantError::NotFound) => {}
                    Err(error) => {
                        tracing::warn!(tenant = %id, %error, "tenant could not resume at start")
                    }
                }
            }
        });
    }

    /// Stops the running tenant `id` and waits until it stopped.
    pub async fn stop(self: &Arc<Self>, id: &TenantId) {
        let stopped = {
            let mut state = self.state.lock();
            self.begin_stop(&mut state, id, false)
        };
        if let Some(mut stopped) = stopped {
            let _ = stopped.wait_for(|done| *done).await;
        }
    }

    /// The running app of `id`, without starting it.
    pub fn running(&self, id: &TenantId) -> Option<Arc<App>> {
        match self.state.lock().get(id) {
            Some(State::Running(running)) => Some(running.app.clone()),
            _ => None,
        }
    }

    /// The process's settings the tenants' are laid over.
    pub fn base(&self) -> &crate::config::ServeArgs {
        &self.settings.base
    }

    /// The management API's token verifier.
    pub fn api_jwt(&self) -> Option<&realtide_auth::JwtVerifier> {
        self.settings.api_jwt.as_ref()
    }

    /// The control database, when tenants are kept there (the file is read-only).
    pub fn store(&self) -> Option<&Store> {
        match &self.catalog {
            Catalog::Database { store, .. } => Some(store),
            Catalog::File(_) => None,
        }
    }

    /// Every tenant.
    pub async fn list(&self) -> Result<Vec<(TenantId, Arc<Record>)>, TenantError> {
        match &self.catalog {
            Catalog::File(tenants) => Ok(tenants
                .iter()
                .map(|(id, record)| (id.clone(), record.clone()))
                .collect()),
            Catalog::Database { store, .. } => Ok(store
                .list()
                .await
                .map_err(|e| TenantError::Store(crate::logs::error_chain(&e)))?
                .into_iter()
                .filter_map(|record| {
                    TenantId::parse(&record.settings.external_id).map(|id| (id, Arc::new(record)))
                })
                .collect()),
        }
    }

    /// Forgets what the cache holds of `id` (after a write, or a reload).
    pub async fn invalidate(&self, id: &TenantId) {
        if let Catalog::Database { cache, .. } = &self.catalog {
            cache.invalidate(id).await;
        }
    }

    /// Stops tenants that had no socket and no request for `TENANT_IDLE_STOP_SECS`.
    async fn stop_idle(self: Arc<Self>) {
        let idle = self.settings.idle_stop;
        let forget = idle >= Duration::from_secs(self.settings.base.changes_resume_window);
        let period = (idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
        let shutdown = self.process.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            let now = self.now_ms();
            let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
            let mut state = self.state.lock();
            let idle_ids: Vec<TenantId> = state
                .iter()
                .filter_map(|(id, s)| match s {
                    State::Running(r)
                        if r.app.metrics.connections() == 0
                            && now.saturating_sub(r.last_used.load(Ordering::Relaxed))
                                >= idle_ms =>
                    {
                        Some(id.clone())
                    }
                    _ => None,
                })
                .collect();
            for id in idle_ids {
                tracing::info!(tenant = %id, "tenant idle; stopping it");
                let _ = self.begin_stop(&mut state, &id, forget);
            }
        }
    }
}

/// Now as RFC 3339 UTC (seconds).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Drops a stopped tenant's replication slot (inactive by then) and removes its change
/// journal; failures are logged (a slot left behind is dropped on the next delete, or by hand).
pub async fn forget_stream(database: &crate::config::DatabaseConfig) {
    match crate::db::pool::connect(&database.url, database.tls.as_ref()).await {
        Ok(client) => {
            if let Err(error) = client
                .execute(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots \
                     where slot_name = $1 and not active",
                    &[&database.slot],
                )
                .await
            {
                tracing::warn!(slot = %database.slot, %error, "could not drop a stopped tenant's slot");
            }
        }
        Err(error) => {
            tracing::warn!(slot = %database.slot, error = %crate::logs::error_chain(&error), "could not drop a stopped tenant's slot");
        }
    }
    // The journal's directory is `CHANGES_DIR/tenants/<id>/<slot>`: the tenant's directory goes.
    let tenant_dir = database
        .changes
        .dir
        .parent()
        .unwrap_or(&database.changes.dir);
    if let Err(error) = std::fs::remove_dir_all(tenant_dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%error, "could not remove a stopped tenant's change journal");
    }
}
