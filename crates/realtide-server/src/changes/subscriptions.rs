//! `postgres_changes` subscriptions: parsing a join's bindings, checking them against the
//! database, and the registry the replication pipeline matches changes against.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexMap;
use parking_lot::{Mutex, RwLock};
use realtide_protocol::Vsn;
use realtide_protocol::message::binding_id;
use realtide_replication::filter::{
    CompiledFilter, Filter, Op, inspect, inspect_string, inspect_strings, parse_filters, validate,
};
use serde_json::{Map, Value};

use crate::changes::change::ChangeKind;
use crate::changes::journal::{Journal, Seq};
use crate::changes::resume::{Identity, Resume, ResumeBook};
use crate::channels::id::ChannelId;
use crate::config::SubscribeLimits;
use crate::db::catalog::{Catalog, Table};
use crate::db::claims::ClaimsGroup;
use crate::db::pool::DbError;
use crate::outbox::{Cursor, Outbox};

/// Which operations a binding wants (its `event`; a change itself has a
/// [`ChangeKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `*`
    All,
    /// `INSERT`
    Insert,
    /// `UPDATE`
    Update,
    /// `DELETE`
    Delete,
}

impl Action {
    fn parse(event: Option<&Value>) -> Action {
        match event
            .and_then(Value::as_str)
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("INSERT") => Action::Insert,
            Some("UPDATE") => Action::Update,
            Some("DELETE") => Action::Delete,
            // Anything else, or nothing, means every operation (as the reference).
            _ => Action::All,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Action::All => "*",
            Action::Insert => "INSERT",
            Action::Update => "UPDATE",
            Action::Delete => "DELETE",
        }
    }

    /// Whether a change of `kind` is wanted.
    pub fn accepts(self, kind: ChangeKind) -> bool {
        match self {
            Action::All => true,
            Action::Insert => kind == ChangeKind::Insert,
            Action::Update => kind == ChangeKind::Update,
            Action::Delete => kind == ChangeKind::Delete,
        }
    }
}

/// A schema or table name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`
    Any,
    /// An exact name.
    Name(String),
}

impl Pattern {
    fn new(name: &str) -> Pattern {
        if name == "*" {
            Pattern::Any
        } else {
            Pattern::Name(name.to_owned())
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Name(n) => n == name,
        }
    }

    fn label(&self) -> &str {
        match self {
            Pattern::Any => "*",
            Pattern::Name(n) => n,
        }
    }
}

/// One parsed `postgres_changes` binding.
#[derive(Debug)]
pub struct Binding {
    /// The id clients see in the join reply and in `ids`.
    pub id: u32,
    /// Operations wanted.
    pub action: Action,
    /// Schema pattern.
    pub schema: Pattern,
    /// Table pattern.
    pub table: Pattern,
    /// Filters, ANDed.
    pub filters: Vec<Filter>,
    /// Selected columns (primary keys are always added).
    pub select: Option<Vec<String>>,
    /// Filters compiled per table oid (`None`: not valid for that table).
    compiled: Mutex<HashMap<u32, Option<Arc<TableFilters>>>>,
}

impl Binding {
    /// The reference's Elixir-inspect rendering of the parsed parameters, used in messages.
    fn params_text(&self) -> String {
        let select = match &self.select {
            None => "nil".to_owned(),
            Some(cols) => inspect_strings(cols),
        };
        format!(
            "[event: {}, schema: {}, table: {}, filters: {}, select: {}]",
            self.action.label(),
            self.schema.label(),
            self.table.label(),
            inspect(&self.filters),
            select
        )
    }

    /// Whether the binding is interested in a change of `table` (name and action only).
    pub fn targets(&self, table: &Table, kind: ChangeKind) -> bool {
        self.action.accepts(kind)
            && self.schema.matches(&table.schema)
            && self.table.matches(&table.name)
    }

    /// Filters compiled for `table`; `None` when they cannot apply to it.
    pub fn filters_for(&self, table: &Table) -> Option<Arc<TableFilters>> {
        if let Some(cached) = self.compiled.lock().get(&table.oid) {
            return cached.clone();
        }
        let compiled = compile(&self.filters, table).ok().map(Arc::new);
        self.compiled.lock().insert(table.oid, compiled.clone());
        compiled
    }
}

/// Filters compiled for one table: `(column index, filter)`.
pub type TableFilters = Vec<(usize, CompiledFilter)>;

/// Compiles filters for a table.
fn compile(filters: &[Filter], table: &Table) -> Result<TableFilters, String> {
    filters
        .iter()
        .map(|filter| {
            let index = table
                .column_index(&filter.column)
                .ok_or_else(|| format!("invalid column for filter {}", filter.column))?;
            let column = table
                .columns
                .get(index)
                .ok_or_else(|| format!("invalid column for filter {}", filter.column))?;
            // The rejection's text is the `system` message the client sees.
            Ok((
                index,
                validate(filter, &column.ty).map_err(|e| e.to_string())?,
            ))
        })
        .collect()
}

/// Renders a JSON value as Elixir's `inspect` shows the decoded term (maps with sorted keys,
/// `nil`, lists), as the reference's messages quote the client's parameters.
fn inspect_value(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => inspect_string(s),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(inspect_value).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(map) => {
            if map.is_empty() {
                return "%{}".to_owned();
            }
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{} => {}",
                        inspect_string(k),
                        map.get(k).map(inspect_value).unwrap_or_default()
                    )
                })
                .collect();
            format!("%{{{}}}", parts.join(", "))
        }
    }
}

/// Parses one raw binding; errors are the `system` message texts.
pub fn parse_binding(entry: &Map<String, Value>) -> Result<Binding, String> {
    let schema = entry.get("schema").and_then(Value::as_str);
    let table = entry.get("table").and_then(Value::as_str);
    let (schema, table) = match (schema, table) {
        (Some(s), Some(t)) => (s, t),
        (Some(s), None) => (s, "*"),
        (None, Some(t)) => ("public", t),
        (None, None) => {
            return Err(format!(
                "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: {}",
                inspect_value(&Value::Object(entry.clone()))
            ));
        }
    };
    let filters = match entry.get("filter").and_then(Value::as_str) {
        Some(text) => parse_filters(text).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    let select = match entry.get("select") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    "Error parsing `select` params: expected a list of column names".to_owned()
                })?,
        ),
        Some(_) => {
            return Err(
                "Error parsing `select` params: expected a list of column names".to_owned(),
            );
        }
    };
    if select.is_some() && (schema == "*" || table == "*") {
        return Err(
            "Error parsing `select` params: not allowed with a wildcard schema or table".to_owned(),
        );
    }
    Ok(Binding {
        id: binding_id(entry),
        action: Action::parse(entry.get("event")),
        schema: Pattern::new(schema),
        table: Pattern::new(table),
        filters,
        select,
        compiled: Mutex::new(HashMap::new()),
    })
}

/// A channel's postgres_changes subscriptions.
#[derive(Debug)]
pub struct ChannelChanges {
    /// Its serializer.
    pub vsn: Vsn,
    /// Its connection's outbound queue.
    pub outbox: Outbox,
    /// The channel's wire topic.
    pub topic: Arc<str>,
    /// Its bindings.
    pub bindings: Vec<Binding>,
    /// Its claims (replaced on `access_token`).
    pub claims: RwLock<Arc<ClaimsGroup>>,
    /// How far delivery got (set by [`Subscriptions::register`]).
    pub cursor: Arc<Cursor>,
    /// Who it is, for a resume after a lost socket.
    pub identity: Identity,
}

/// All postgres_changes subscriptions of the process.
#[derive(Debug)]
pub struct Subscriptions {
    channels: RwLock<IndexMap<ChannelId, Arc<ChannelChanges>>>,
    /// Open channels with the claims currently in force on them (replaced on `access_token`),
    /// registered or not: a subscription is registered only under its channel's current claims.
    open: Mutex<HashMap<ChannelId, Arc<ClaimsGroup>>>,
    /// Departed subscribers (see [`crate::changes::resume`]).
    book: Mutex<ResumeBook>,
    /// Woken when a subscription is registered (the delivery task may have work).
    pub registered: tokio::sync::Notify,
}

impl Subscriptions {
    /// No subscriptions; departed subscribers from `book`.
    pub fn new(book: ResumeBook) -> Subscriptions {
        Subscriptions {
            channels: RwLock::new(IndexMap::new()),
            open: Mutex::new(HashMap::new()),
            book: Mutex::new(book),
            registered: tokio::sync::Notify::new(),
        }
    }

    /// The departed subscribers.
    pub fn book(&self) -> parking_lot::MutexGuard<'_, ResumeBook> {
        self.book.lock()
    }

    /// Positions of the live subscriptions (identity, where each would resume).
    pub fn live_positions(&self) -> Vec<(Identity, Seq)> {
        self.channels
            .read()
            .values()
            .map(|c| (c.identity, c.cursor.resume_position()))
            .collect()
    }

    /// The lowest position every live subscription has reached (`None` without any).
    pub fn min_live_position(&self) -> Option<Seq> {
        self.channels.read().values().map(|c| c.cursor.done()).min()
    }

    /// Marks a channel as open under `claims`: its subscriptions may be registered.
    pub fn open(&self, id: ChannelId, claims: Arc<ClaimsGroup>) {
        self.open.lock().insert(id, claims);
    }

    /// The claims in force on an open channel (`None` once it closed).
    pub fn current_claims(&self, id: ChannelId) -> Option<Arc<ClaimsGroup>> {
        self.open.lock().get(&id).cloned()
    }

    /// Whether a channel is still open.
    pub fn is_open(&self, id: ChannelId) -> bool {
        self.open.lock().contains_key(&id)
    }

    /// Removes a channel and its subscriptions. Unless it left on purpose (`depart` false),
    /// its position is kept for a resume.
    pub fn close(&self, id: ChannelId, depart: bool) {
        self.open.lock().remove(&id);
        let removed = self.channels.write().swap_remove(&id);
        if let Some(channel) = removed {
            channel.cursor.close();
            if depart {
                self.book
                    .lock()
                    .depart(channel.identity, channel.cursor.clone());
            }
        }
    }

    /// Registers a channel's subscriptions if the channel is still open and `changes` was
    /// prepared under the claims in force on it now; delivery starts where a departed
    /// subscriber of the same identity stopped, else at the journal's head.
    pub fn register(
        &self,
        id: ChannelId,
        mut changes: ChannelChanges,
        journal: &Journal,
        announce: impl FnOnce(&Resume),
    ) -> Registered {
        let open = self.open.lock();
        let Some(current) = open.get(&id) else {
            return Registered::Closed;
        };
        // A token switch while the bindings were being checked: they must be checked again
        // under the new role and identity, never registered under the old ones.
        if !Arc::ptr_eq(current, &changes.claims.read()) {
            return Registered::Stale;
        }
        let resume = self.book.lock().take(changes.identity, journal.first());
        let start = match resume {
            Resume::From(seq) => seq,
            Resume::Fresh | Resume::Missed { .. } => journal.head(),
        };
        changes.cursor = Cursor::new(start);
        // Announced before delivery can see the channel: the `system` message comes first.
        announce(&resume);
        self.channels.write().insert(id, Arc::new(changes));
        drop(open);
        self.registered.notify_one();
        Registered::Live(resume)
    }

    /// New claims for a channel (token refresh), for a registered subscription and for one
    /// still being prepared alike. Under the open lock, so a registration in flight either
    /// sees them or is refused as stale.
    pub fn update_claims(&self, id: ChannelId, claims: Arc<ClaimsGroup>) {
        let mut open = self.open.lock();
        let Some(current) = open.get_mut(&id) else {
            return;
        };
        *current = claims.clone();
        if let Some(channel) = self.channels.read().get(&id) {
            *channel.claims.write() = claims;
        }
    }

    /// A snapshot of every subscribed channel.
    pub fn snapshot(&self) -> Vec<Arc<ChannelChanges>> {
        self.channels.read().values().cloned().collect()
    }

    /// Whether nobody subscribes.
    pub fn is_empty(&self) -> bool {
        self.channels.read().is_empty()
    }
}

/// Outcome of [`Subscriptions::register`].
#[derive(Debug)]
pub enum Registered {
    /// Registered; where delivery starts.
    Live(Resume),
    /// The channel closed meanwhile.
    Closed,
    /// The channel's claims changed since the bindings were checked: check them again.
    Stale,
}

/// Why a join's bindings were not subscribed.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The parameters are refused for good; the text is the `system` error message.
    #[error("{message}")]
    Refused {
        /// The reference's message for this refusal.
        message: String,
    },
    /// The database could not be asked; retried while the channel stays open.
    #[error("database")]
    Database(#[from] DbError),
}

fn refused(message: String) -> SubscribeError {
    SubscribeError::Refused { message }
}

/// Parses and checks a join's bindings against the publication and the tables' columns.
pub async fn prepare(
    catalog: &Catalog,
    publication: &str,
    role: &str,
    entries: &[Map<String, Value>],
    limits: SubscribeLimits,
) -> Result<Vec<Binding>, SubscribeError> {
    if entries.len() > limits.bindings {
        return Err(refused(format!(
            "Too many postgres_changes bindings on one channel. Maximum {}",
            limits.bindings
        )));
    }
    let mut bindings = Vec::with_capacity(entries.len());
    for entry in entries {
        match parse_binding(entry) {
            Ok(binding) => bindings.push(binding),
            Err(message) => return Err(refused(message)),
        }
    }
    for binding in &bindings {
        if let Some(exception) = check_patterns(binding, limits.pattern_chars) {
            return Err(refused(format!(
                "Unable to subscribe to changes with given parameters. An exception happened so please check your connect parameters: {}. Exception: {exception}",
                binding.params_text()
            )));
        }
    }
    let published = catalog.published_tables(publication).await?;
    for binding in &bindings {
        let tables: Vec<u32> = published
            .iter()
            .filter(|(_, schema, table)| {
                binding.schema.matches(schema) && binding.table.matches(table)
            })
            .map(|(oid, _, _)| *oid)
            .collect();
        if tables.is_empty() {
            return Err(refused(format!(
                "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: {}",
                binding.params_text()
            )));
        }
        for oid in tables {
            let Some(table) = catalog.table(oid).await? else {
                continue;
            };
            let selectable = catalog.selectable(role, &table).await?;
            if let Err(exception) = check_columns(binding, &table, &selectable) {
                return Err(refused(format!(
                    "Unable to subscribe to changes with given parameters. An exception happened so please check your connect parameters: {}. Exception: {exception}",
                    binding.params_text()
                )));
            }
        }
    }
    Ok(bindings)
}

/// A pattern filter (`like`, `ilike`, `match`, `imatch`) longer than `max` characters, as an
/// exception text in the style of the reference's `in` list bound.
fn check_patterns(binding: &Binding, max: usize) -> Option<String> {
    binding.filters.iter().find_map(|filter| {
        let pattern = matches!(filter.op, Op::Like | Op::Ilike | Op::Match | Op::Imatch);
        (pattern && filter.raw_value.chars().count() > max).then(|| {
            format!(
                "ERROR P0001 (raise_exception) pattern too long for `{}` filter. Maximum {max}",
                filter.op
            )
        })
    })
}

/// The subscription-time checks of the reference's `subscription_check_filters` trigger;
/// errors are the Postgrex exception texts the reference shows.
fn check_columns(binding: &Binding, table: &Table, selectable: &[bool]) -> Result<(), String> {
    let raise = |message: String| format!("ERROR P0001 (raise_exception) {message}");
    let may_select =
        |index: Option<usize>| index.is_some_and(|i| selectable.get(i).copied().unwrap_or(false));
    for filter in &binding.filters {
        if !may_select(table.column_index(&filter.column)) {
            return Err(raise(format!(
                "invalid column for filter {}",
                filter.column
            )));
        }
    }
    compile(&binding.filters, table)?;
    for name in binding.select.iter().flatten() {
        if !may_select(table.column_index(name)) {
            return Err(raise(format!("invalid column for select {name}")));
        }
    }
    Ok(())
}
