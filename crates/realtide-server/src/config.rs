//! Typed configuration of `realtide serve`, loaded once from flags and the environment.
//!
//! Every setting has an environment variable (Supabase Realtime's name where one exists) and a
//! flag; flags win. Validation happens once at start; an invalid setting stops the process with
//! one line naming it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Args;
use realtide_auth::JwtVerifier;

/// Command-line / environment settings of `realtide serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML file of settings named like their environment variables (`PORT = 4000`,
    /// `jwt_secret = "..."`); flags and environment variables win over it.
    #[arg(long, env = "REALTIDE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Port to listen on (0 picks a free port).
    #[arg(long, env = "PORT", default_value_t = 4000)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// HS256/384/512 secret used to verify JWTs (alias: API_JWT_SECRET).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Alias of JWT_SECRET.
    #[arg(long, env = "API_JWT_SECRET", hide_env_values = true)]
    pub api_jwt_secret: Option<String>,
    /// JSON Web Key Set (`{"keys":[...]}`) for asymmetric JWTs and `kid`-selected HS keys.
    #[arg(long, env = "JWT_JWKS", hide_env_values = true)]
    pub jwt_jwks: Option<String>,
    /// JSON object of exact-match claim validators.
    #[arg(long, env = "JWT_CLAIM_VALIDATORS")]
    pub jwt_claim_validators: Option<String>,
    /// PostgreSQL URL (optional; postgres_changes and private channels need it). When unset,
    /// DB_HOST (with DB_PORT, DB_USER, DB_PASSWORD, DB_NAME) builds one.
    #[arg(long, env = "DB_URL", hide_env_values = true)]
    pub db_url: Option<String>,
    /// PostgreSQL host, when DB_URL is not given.
    #[arg(long, env = "DB_HOST")]
    pub db_host: Option<String>,
    /// PostgreSQL port.
    #[arg(long, env = "DB_PORT", default_value_t = 5432)]
    pub db_port: u16,
    /// PostgreSQL user.
    #[arg(long, env = "DB_USER", default_value = "postgres")]
    pub db_user: String,
    /// PostgreSQL password.
    #[arg(long, env = "DB_PASSWORD", hide_env_values = true)]
    pub db_password: Option<String>,
    /// PostgreSQL database.
    #[arg(long, env = "DB_NAME", default_value = "postgres")]
    pub db_name: String,
    /// Require TLS to PostgreSQL (query and replication connections).
    #[arg(long, env = "DB_SSL", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub db_ssl: bool,
    /// PEM CA certificate(s) to verify PostgreSQL's certificate and host name; without it TLS
    /// encrypts but does not verify (libpq's sslmode=require).
    #[arg(long, env = "DB_SSL_CA_CERT")]
    pub db_ssl_ca_cert: Option<std::path::PathBuf>,
    /// Publication whose tables stream postgres_changes (created empty when absent).
    #[arg(long, env = "PUBLICATION", default_value = "supabase_realtime")]
    pub publication: String,
    /// Persistent logical replication slot realtide consumes.
    #[arg(long, env = "SLOT_NAME", default_value = "realtide")]
    pub slot_name: String,
    /// Drop the replication slot on graceful shutdown (WAL is then not retained while realtide
    /// is down, and changes committed meanwhile are not delivered).
    #[arg(long, env = "SLOT_DROP_ON_SHUTDOWN", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub slot_drop_on_shutdown: bool,
    /// Directory of the change journal and the departed subscribers' positions (one
    /// subdirectory per slot; must survive restarts for a resume across them).
    #[arg(long, env = "CHANGES_DIR", default_value = ".realtide/changes")]
    pub changes_dir: std::path::PathBuf,
    /// How long, in seconds, a postgres_changes subscriber that lost its socket can rejoin and
    /// receive what it missed.
    #[arg(long, env = "CHANGES_RESUME_WINDOW", default_value_t = 120)]
    pub changes_resume_window: u64,
    /// Most departed subscribers whose positions are kept for a resume.
    #[arg(
        long,
        env = "CHANGES_RESUME_MAX_SUBSCRIBERS",
        default_value_t = 100_000
    )]
    pub changes_resume_max_subscribers: usize,
    /// Bound of the change journal on disk, in bytes: beyond it the oldest resume records are
    /// given up, and while live subscribers still need more the replication stream pauses.
    #[arg(long, env = "CHANGES_MAX_BYTES", default_value_t = 2 << 30)]
    pub changes_max_bytes: u64,
    /// Seconds a postgres_changes subscriber may make no progress reading its socket while
    /// changes wait for it before it is disconnected (it can then resume).
    #[arg(long, env = "CHANGES_STALL_TIMEOUT", default_value_t = 60)]
    pub changes_stall_timeout: u64,
    /// Log a warning when the slot lags the server's WAL by more than this many bytes.
    #[arg(long, env = "REPLICATION_LAG_WARN_BYTES", default_value_t = 1 << 30)]
    pub replication_lag_warn_bytes: u64,
    /// Connections used for catalog lookups and row level security checks.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 4)]
    pub db_pool_size: usize,
    /// Connections used for private-channel authorization checks (separate from DB_POOL_SIZE
    /// so that change delivery never delays joins).
    #[arg(long, env = "AUTHORIZATION_POOL_SIZE", default_value_t = 2)]
    pub authorization_pool_size: usize,
    /// Longest a private-channel authorization check may take, in milliseconds (also the
    /// statement timeout of the authorization connections).
    #[arg(long, env = "AUTHORIZATION_TIMEOUT_MS", default_value_t = 5000)]
    pub authorization_timeout_ms: u64,
    /// Daily partitions of `realtime.messages` are dropped once all their rows are older than
    /// this many hours (replay cannot reach further back).
    #[arg(long, env = "MESSAGES_RETENTION_HOURS", default_value_t = 72)]
    pub messages_retention_hours: u64,
    /// Change records larger than this keep only small fields (`Error 413: Payload Too Large`).
    #[arg(
        long,
        env = "POSTGRES_CHANGES_MAX_RECORD_BYTES",
        default_value_t = 1_048_576
    )]
    pub max_record_bytes: usize,
    /// Delay before a failed join's error reply, in milliseconds.
    #[arg(long, env = "CHANNEL_ERROR_BACKOFF_MS", default_value_t = 5000)]
    pub channel_error_backoff_ms: u64,
    /// Delay before a failed connect's HTTP error, in milliseconds.
    #[arg(long, env = "CONNECT_ERROR_BACKOFF_MS", default_value_t = 2000)]
    pub connect_error_backoff_ms: u64,
    /// Largest accepted payload, in kilobytes (limit = value × 1000 + 500 bytes).
    #[arg(long, env = "TENANT_MAX_PAYLOAD_SIZE_IN_KB", default_value_t = 3000)]
    pub max_payload_size_in_kb: u64,
    /// Most channels one socket may have joined at once.
    #[arg(long, env = "TENANT_MAX_CHANNELS_PER_CLIENT", default_value_t = 100)]
    pub max_channels_per_client: usize,
    /// Events per second (client sends, deliveries, HTTP and database broadcasts) averaged
    /// over the last minute; above it receiving channels are shut down with `Too many messages
    /// per second`, HTTP broadcasts get 429 and database broadcasts are dropped. 0 = no limit.
    #[arg(long, env = "TENANT_MAX_EVENTS_PER_SECOND", default_value_t = 0)]
    pub max_events_per_second: u64,
    /// Join attempts per second; above it joins are refused with `ClientJoinRateLimitReached`
    /// and the socket is closed, and connects get 429. 0 = no limit.
    #[arg(long, env = "TENANT_MAX_JOINS_PER_SECOND", default_value_t = 0)]
    pub max_joins_per_second: u64,
    /// Presence events per second (`presence_state` pushes and `presence_diff` deliveries).
    /// 0 = no limit.
    #[arg(
        long,
        env = "TENANT_MAX_PRESENCE_EVENTS_PER_SECOND",
        default_value_t = 0
    )]
    pub max_presence_events_per_second: u64,
    /// Sockets with at least one joined channel. 0 = no limit.
    #[arg(long, env = "TENANT_MAX_CONCURRENT_USERS", default_value_t = 0)]
    pub max_concurrent_users: usize,
    /// Open WebSocket connections per process; further upgrades get 503. 0 = no limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Presence calls (track/untrack) one channel may make per window. 0 = no limit.
    #[arg(long, env = "CLIENT_PRESENCE_MAX_CALLS", default_value_t = 5)]
    pub client_presence_max_calls: u32,
    /// The presence call window, in milliseconds.
    #[arg(long, env = "CLIENT_PRESENCE_WINDOW_MS", default_value_t = 30_000)]
    pub client_presence_window_ms: u64,
    /// Refuse public channels (`PrivateOnly: This project only allows private channels`).
    #[arg(long, env = "PRIVATE_ONLY", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub private_only: bool,
    /// Period of the rate counters' window buckets, in milliseconds (12 buckets).
    #[arg(long, env = "RATE_COUNTER_TICK_MS", default_value_t = 5000)]
    pub rate_counter_tick_ms: u64,
    /// Largest WebSocket message accepted; bigger ones close the socket.
    #[arg(long, env = "WEBSOCKET_MAX_FRAME_SIZE", default_value_t = 5_000_000)]
    pub max_frame_size: usize,
    /// Idle time after which a socket that sent nothing is closed, in milliseconds.
    #[arg(long, env = "WEBSOCKET_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// Outbound queue bound per connection, in frames.
    #[arg(long, env = "OUTBOUND_QUEUE_MESSAGES", default_value_t = 10_000)]
    pub outbound_queue_messages: usize,
    /// Outbound queue bound per connection, in bytes.
    #[arg(long, env = "OUTBOUND_QUEUE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub outbound_queue_bytes: usize,
    /// Bytes of broadcast and presence frames held for all connections together (queued or
    /// being written; a frame shared by many connections counts once). Past it, a connection
    /// with more than 64 KiB still queued is closed as a slow consumer at its next frame.
    #[arg(long, env = "OUTBOUND_TOTAL_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub outbound_total_bytes: usize,
    /// Bytes of rendered presence metas one topic may hold; tracks past it are refused.
    #[arg(long, env = "PRESENCE_MAX_STATE_BYTES", default_value_t = 10_000_000)]
    pub presence_max_state_bytes: usize,
    /// Bytes of rendered presence metas all topics together may hold; tracks past it are
    /// refused.
    #[arg(long, env = "PRESENCE_MAX_TOTAL_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub presence_max_total_bytes: usize,
    /// postgres_changes bindings one channel may ask for; a join with more gets a `system`
    /// error and no subscription.
    #[arg(long, env = "MAX_BINDINGS_PER_CHANNEL", default_value_t = 100)]
    pub max_bindings_per_channel: usize,
    /// Longest `like`/`ilike`/`match`/`imatch` filter pattern, in characters.
    #[arg(long, env = "FILTER_PATTERN_MAX_CHARS", default_value_t = 256)]
    pub filter_pattern_max_chars: usize,
    /// Time a TCP connection has to send a complete HTTP request (headers and body) or
    /// WebSocket upgrade, in milliseconds, and at most between two requests; slower or silent
    /// connections are closed.
    #[arg(long, env = "HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Longest a graceful shutdown may take, in milliseconds: past it (or at a second
    /// SIGTERM/SIGINT) the process exits at once, whatever it was waiting on.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 30_000)]
    pub shutdown_timeout_ms: u64,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// PEM certificate chain: with TLS_KEY, realtide serves HTTPS and WSS itself.
    #[arg(long, env = "TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of TLS_CERT.
    #[arg(long, env = "TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// When set, `GET /metrics` requires `Authorization: Bearer <JWT>` signed (HS256/384/512)
    /// with this secret and carrying `role` and `exp`.
    #[arg(long, env = "METRICS_JWT_SECRET", hide_env_values = true)]
    pub metrics_jwt_secret: Option<String>,
}

/// Validated configuration, passed down by value.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// JWT verifier built from the secret / JWKS / validators.
    pub jwt: JwtVerifier,
    /// Database settings, when a database is configured.
    pub database: Option<DatabaseConfig>,
    /// Delay before join error replies.
    pub channel_error_backoff: Duration,
    /// Delay before connect error responses.
    pub connect_error_backoff: Duration,
    /// Largest accepted payload in bytes.
    pub max_payload_bytes: usize,
    /// Most channels per socket.
    pub max_channels_per_client: usize,
    /// Largest WebSocket message.
    pub max_frame_size: usize,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Outbound queue bounds.
    pub outbox: crate::outbox::OutboxLimits,
    /// Bounds on what one join may ask of postgres_changes.
    pub subscribe: SubscribeLimits,
    /// `HANDSHAKE_TIMEOUT_MS`.
    pub handshake_timeout: Duration,
    /// Emit JSON logs.
    pub json_logs: bool,
    /// `SHUTDOWN_TIMEOUT_MS`.
    pub shutdown_timeout: Duration,
    /// Verifier guarding `GET /metrics`, when `METRICS_JWT_SECRET` is set.
    pub metrics_jwt: Option<JwtVerifier>,
    /// Rate and count limits.
    pub limits: crate::limits::LimitSettings,
    /// Native TLS, when TLS_CERT and TLS_KEY are set.
    pub tls: Option<Tls>,
}

/// A loaded TLS certificate and key.
#[derive(Clone)]
pub struct Tls {
    /// The acceptor built from them.
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// Where and how postgres_changes are read.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// Connection URL.
    pub url: String,
    /// Publication name.
    pub publication: String,
    /// Replication slot name.
    pub slot: String,
    /// Query pool size.
    pub pool_size: usize,
    /// Record size limit.
    pub max_record_bytes: usize,
    /// TLS to PostgreSQL, when required.
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    /// Authorization pool size.
    pub authorization_pool_size: usize,
    /// Authorization check deadline.
    pub authorization_timeout: Duration,
    /// Retention of `realtime.messages`.
    pub messages_retention: Duration,
    /// Drop the slot on graceful shutdown.
    pub drop_slot_on_shutdown: bool,
    /// Lag above which a warning is logged.
    pub lag_warn_bytes: u64,
    /// The change journal.
    pub changes: ChangesConfig,
    /// Resume records.
    pub resume: ResumeLimits,
}

/// The change journal's settings.
#[derive(Debug, Clone)]
pub struct ChangesConfig {
    /// The journal's directory (`CHANGES_DIR/<slot>`).
    pub dir: std::path::PathBuf,
    /// Bound in bytes.
    pub max_bytes: u64,
    /// Longest a subscriber may make no progress.
    pub stall_timeout: Duration,
}

/// A setting that failed validation; its message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither a secret nor a JWKS was given.
    #[error("JWT_SECRET (or API_JWT_SECRET, or JWT_JWKS) must be set")]
    MissingJwt,
    /// The JWT settings are invalid.
    #[error("invalid JWT configuration: {0}")]
    Jwt(#[source] realtide_auth::ConfigError),
    /// A numeric setting is out of range.
    #[error("{name} must be {rule}")]
    Range {
        /// The setting.
        name: &'static str,
        /// What it must be.
        rule: &'static str,
    },
    /// METRICS_JWT_SECRET is invalid.
    #[error("invalid METRICS_JWT_SECRET: {0}")]
    MetricsJwt(#[source] realtide_auth::ConfigError),
    /// DB_SSL_CA_CERT is unusable.
    #[error("invalid database TLS settings: {}", crate::logs::error_chain(.0))]
    DbTls(#[source] crate::db::tls::DbTlsError),
    /// Only one of TLS_CERT and TLS_KEY is set.
    #[error("TLS_CERT and TLS_KEY must be set together")]
    TlsPair,
    /// The certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] crate::ws::tls::TlsError),
    /// A JWT secret is too short to be safe.
    #[error(
        "{name} must be at least {MIN_SECRET_BYTES} bytes (it has {len}); generate one with `openssl rand -hex 32`"
    )]
    ShortSecret {
        /// The setting.
        name: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// DB_URL is not a usable connection URL.
    #[error(
        "DB_URL is not a usable PostgreSQL URL (postgres://user:password@host:port/database): {reason}"
    )]
    DbUrl {
        /// What is wrong (never the password).
        reason: String,
    },
    /// LOG_FORMAT is not text or json.
    #[error("LOG_FORMAT must be `text` or `json`")]
    LogFormat,
}

/// HS256 keys shorter than the hash output (32 bytes) are below the strength the algorithm
/// assumes (RFC 7518 section 3.2); Supabase asks for at least 32 characters too.
pub const MIN_SECRET_BYTES: usize = 32;

fn check_secret(name: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::ShortSecret {
            name,
            len: value.len(),
        });
    }
    Ok(())
}

/// The URL must parse for both the query client and the replication client, and name a host.
fn db_url(url: &str) -> Result<(), ConfigError> {
    realtide_replication::stream::check_url(url).map_err(|e| ConfigError::DbUrl {
        reason: e
            .to_string()
            .trim_start_matches("replication config: ")
            .trim_start_matches("connection URL: ")
            .to_owned(),
    })?;
    let parsed: tokio_postgres::Config =
        url.parse()
            .map_err(|e: tokio_postgres::Error| ConfigError::DbUrl {
                reason: e.to_string(),
            })?;
    if parsed.get_hosts().is_empty() {
        return Err(ConfigError::DbUrl {
            reason: "no host".into(),
        });
    }
    Ok(())
}

fn nonempty(name: &'static str, value: String) -> Result<String, ConfigError> {
    if value.trim().is_empty() {
        Err(ConfigError::Range {
            name,
            rule: "non-empty",
        })
    } else {
        Ok(value)
    }
}

/// Slot names are limited by PostgreSQL to lower-case letters, digits and underscores.
fn slot_name(value: String) -> Result<String, ConfigError> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(value)
    } else {
        Err(ConfigError::Range {
            name: "SLOT_NAME",
            rule: "1-63 characters of a-z, 0-9 and _",
        })
    }
}

/// `postgres://user:password@host:port/name`, user, password and name percent-encoded.
fn db_url_from_parts(
    host: &str,
    port: u16,
    user: &str,
    password: Option<&str>,
    name: &str,
) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let auth = match password {
        Some(password) if !password.is_empty() => format!("{}:{}", enc(user), enc(password)),
        _ => enc(user),
    };
    // IPv6 literals need brackets in a URL.
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("postgres://{auth}@{host}:{port}/{}", enc(name))
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path} (REALTIDE_CONFIG/--config)")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("invalid TOML in {path} (REALTIDE_CONFIG/--config): {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A key names no setting, or its value is not a scalar.
    #[error("{path}: {key} {problem}")]
    Key {
        /// The file.
        path: String,
        /// The key.
        key: String,
        /// What is wrong.
        problem: &'static str,
    },
}

/// The configuration file named by `--config <file>` / `--config=<file>` in `args` or by
/// `REALTIDE_CONFIG`, as `(ENV_NAME, value)` pairs. Keys are setting names as environment
/// variables, in any case.
pub fn config_file(args: &[std::ffi::OsString]) -> Result<Option<ConfigFile>, FileError> {
    let mut path = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" {
            path = iter.next().map(|p| p.to_string_lossy().into_owned());
        } else if let Some(value) = arg.strip_prefix("--config=") {
            path = Some(value.to_owned());
        }
    }
    let Some(path) = path.or_else(|| std::env::var("REALTIDE_CONFIG").ok()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| FileError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| FileError::Parse {
            path: path.clone(),
            message: e.message().to_owned(),
        })?;
    let mut pairs = Vec::with_capacity(table.len());
    for (key, value) in table {
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            _ => {
                return Err(FileError::Key {
                    path,
                    key: key.to_ascii_uppercase(),
                    problem: "must be a string, number or boolean",
                });
            }
        };
        pairs.push((key.to_ascii_uppercase(), value));
    }
    Ok(Some(ConfigFile { path, pairs }))
}

/// A loaded configuration file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Where it was read from.
    pub path: String,
    /// `(ENV_NAME, value)` pairs.
    pub pairs: Vec<(String, String)>,
}

/// Makes the file's values the defaults of the matching arguments of `command` and of its
/// subcommands, so that flags and the environment still win. Keys matching no setting are an
/// error.
pub fn apply_file(
    mut command: clap::Command,
    file: &ConfigFile,
) -> Result<clap::Command, FileError> {
    fn known(command: &clap::Command, name: &str) -> bool {
        command
            .get_arguments()
            .any(|a| a.get_env().is_some_and(|e| e == name))
            || command.get_subcommands().any(|c| known(c, name))
    }
    fn apply(mut command: clap::Command, name: &str, value: &'static str) -> clap::Command {
        let ids: Vec<clap::Id> = command
            .get_arguments()
            .filter(|a| a.get_env().is_some_and(|e| e == name))
            .map(|a| a.get_id().clone())
            .collect();
        for id in ids {
            command = command.mut_arg(id, |a| a.default_value(value));
        }
        let subcommands: Vec<String> = command
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        for sub in subcommands {
            command = command.mut_subcommand(sub, |c| apply(c, name, value));
        }
        command
    }
    for (name, value) in &file.pairs {
        if name == "REALTIDE_CONFIG" || !known(&command, name) {
            return Err(FileError::Key {
                path: file.path.clone(),
                key: name.clone(),
                problem: "is not a realtide setting",
            });
        }
        // Loaded once per process; clap keeps borrowed defaults.
        let value: &'static str = Box::leak(value.clone().into_boxed_str());
        command = apply(command, name, value);
    }
    Ok(command)
}

/// One line for a command-line error: the setting by its environment name and flag, where
/// the bad value came from (flag, environment or configuration file), and the accepted values.
pub fn describe_args_error(
    command: &clap::Command,
    error: &clap::Error,
    file: Option<&ConfigFile>,
) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(s)) => vec![s.clone()],
        Some(ContextValue::Strings(v)) => v.clone(),
        _ => Vec::new(),
    };
    let args = context(ContextKind::InvalidArg);
    let names: Vec<String> = args
        .iter()
        .map(|arg| setting_name(command, arg, file))
        .collect();
    let value = context(ContextKind::InvalidValue).into_iter().next();
    let valid = context(ContextKind::ValidValue);
    match (error.kind(), names.first(), value) {
        (ErrorKind::MissingRequiredArgument, _, _) if !names.is_empty() => {
            format!("missing setting: {}", names.join(", "))
        }
        (ErrorKind::InvalidValue | ErrorKind::ValueValidation, Some(name), Some(value)) => {
            let mut line = format!("invalid value '{value}' for {name}");
            if !valid.is_empty() {
                line.push_str(&format!("; accepted values: {}", valid.join(", ")));
            } else if let Some(reason) = std::error::Error::source(error) {
                if reason.to_string() == "value was not a boolean" {
                    // BoolishValueParser's list.
                    line.push_str("; accepted values: true, false, yes, no, on, off, 1, 0");
                } else {
                    line.push_str(&format!(": {reason}"));
                }
            }
            line
        }
        _ => {
            let text = error.to_string();
            text.lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ")
                .to_owned()
        }
    }
}

/// `PORT (--port, from /etc/realtide.toml)` for clap's `--port <PORT>`.
fn setting_name(command: &clap::Command, arg: &str, file: Option<&ConfigFile>) -> String {
    fn find<'a>(command: &'a clap::Command, long: &str) -> Option<&'a clap::Arg> {
        command
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .or_else(|| command.get_subcommands().find_map(|c| find(c, long)))
    }
    let long = arg
        .trim_start_matches("--")
        .split([' ', '='])
        .next()
        .unwrap_or_default();
    let Some(found) = find(command, long) else {
        return format!("'{arg}'");
    };
    let Some(env) = found.get_env().map(|e| e.to_string_lossy().into_owned()) else {
        return format!("--{long}");
    };
    let from_file = file.and_then(|f| f.pairs.iter().any(|(k, _)| *k == env).then_some(&f.path));
    let source = if std::env::args()
        .any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
    {
        "from the command line".to_owned()
    } else if std::env::var_os(&env).is_some() {
        "from the environment".to_owned()
    } else if let Some(path) = from_file {
        format!("from {path}")
    } else {
        return format!("{env} (--{long})");
    };
    format!("{env} (--{long}, {source})")
}

impl ServeArgs {
    /// Validates the settings into a [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let secret = match (
            self.jwt_secret.filter(|s| !s.is_empty()),
            self.api_jwt_secret.filter(|s| !s.is_empty()),
        ) {
            (Some(value), _) => {
                check_secret("JWT_SECRET", &value)?;
                Some(value)
            }
            (None, Some(value)) => {
                check_secret("API_JWT_SECRET", &value)?;
                Some(value)
            }
            (None, None) => None,
        };
        // Checked whether or not a database is configured, so that a typo shows at once.
        let slot = slot_name(self.slot_name.clone())?;
        let jwks = self.jwt_jwks.filter(|s| !s.trim().is_empty());
        if secret.is_none() && jwks.is_none() {
            return Err(ConfigError::MissingJwt);
        }
        let jwt = JwtVerifier::new(
            secret.as_deref(),
            jwks.as_deref(),
            self.jwt_claim_validators.as_deref(),
        )
        .map_err(ConfigError::Jwt)?;
        let positive = |name, value: u64| {
            if value == 0 {
                Err(ConfigError::Range {
                    name,
                    rule: "greater than 0",
                })
            } else {
                Ok(value)
            }
        };
        positive("TENANT_MAX_PAYLOAD_SIZE_IN_KB", self.max_payload_size_in_kb)?;
        positive("WEBSOCKET_MAX_FRAME_SIZE", self.max_frame_size as u64)?;
        positive("WEBSOCKET_IDLE_TIMEOUT_MS", self.idle_timeout_ms)?;
        positive(
            "OUTBOUND_QUEUE_MESSAGES",
            self.outbound_queue_messages as u64,
        )?;
        positive("OUTBOUND_QUEUE_BYTES", self.outbound_queue_bytes as u64)?;
        positive("OUTBOUND_TOTAL_BYTES", self.outbound_total_bytes as u64)?;
        positive(
            "PRESENCE_MAX_STATE_BYTES",
            self.presence_max_state_bytes as u64,
        )?;
        positive(
            "PRESENCE_MAX_TOTAL_BYTES",
            self.presence_max_total_bytes as u64,
        )?;
        positive(
            "MAX_BINDINGS_PER_CHANNEL",
            self.max_bindings_per_channel as u64,
        )?;
        positive(
            "FILTER_PATTERN_MAX_CHARS",
            self.filter_pattern_max_chars as u64,
        )?;
        positive("HANDSHAKE_TIMEOUT_MS", self.handshake_timeout_ms)?;
        let json_logs = match self.log_format.as_str() {
            "text" => false,
            "json" => true,
            _ => return Err(ConfigError::LogFormat),
        };
        let metrics_jwt = match self.metrics_jwt_secret.filter(|s| !s.is_empty()) {
            None => None,
            Some(value) => {
                check_secret("METRICS_JWT_SECRET", &value)?;
                Some(JwtVerifier::new(Some(&value), None, None).map_err(ConfigError::MetricsJwt)?)
            }
        };
        let tls = match (self.tls_cert, self.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(Tls {
                acceptor: crate::ws::tls::acceptor(&cert, &key)?,
            }),
            _ => return Err(ConfigError::TlsPair),
        };
        let max_payload_bytes = usize::try_from(self.max_payload_size_in_kb)
            .ok()
            .and_then(|kb| kb.checked_mul(1000))
            .and_then(|b| b.checked_add(500))
            .ok_or(ConfigError::Range {
                name: "TENANT_MAX_PAYLOAD_SIZE_IN_KB",
                rule: "a size that fits in memory",
            })?;
        Ok(Config {
            listen: SocketAddr::new(self.host, self.port),
            jwt,
            database: match self.db_url.filter(|s| !s.is_empty()).or_else(|| {
                let host = self.db_host.filter(|h| !h.is_empty())?;
                Some(db_url_from_parts(
                    &host,
                    self.db_port,
                    &self.db_user,
                    self.db_password.as_deref(),
                    &self.db_name,
                ))
            }) {
                None => None,
                Some(url) => Some(DatabaseConfig {
                    tls: if self.db_ssl
                        || self.db_ssl_ca_cert.is_some()
                        || crate::db::tls::url_requires_tls(&url)
                    {
                        Some(
                            crate::db::tls::client_config(self.db_ssl_ca_cert.as_deref())
                                .map_err(ConfigError::DbTls)?,
                        )
                    } else {
                        None
                    },
                    url: {
                        db_url(&url)?;
                        url
                    },
                    publication: nonempty("PUBLICATION", self.publication)?,
                    slot: slot.clone(),
                    pool_size: positive("DB_POOL_SIZE", self.db_pool_size as u64)? as usize,
                    max_record_bytes: positive(
                        "POSTGRES_CHANGES_MAX_RECORD_BYTES",
                        self.max_record_bytes as u64,
                    )? as usize,
                    authorization_pool_size: positive(
                        "AUTHORIZATION_POOL_SIZE",
                        self.authorization_pool_size as u64,
                    )? as usize,
                    authorization_timeout: Duration::from_millis(positive(
                        "AUTHORIZATION_TIMEOUT_MS",
                        self.authorization_timeout_ms,
                    )?),
                    messages_retention: Duration::from_secs(
                        positive("MESSAGES_RETENTION_HOURS", self.messages_retention_hours)?
                            .saturating_mul(3600),
                    ),
                    drop_slot_on_shutdown: self.slot_drop_on_shutdown,
                    lag_warn_bytes: self.replication_lag_warn_bytes,
                    changes: ChangesConfig {
                        dir: {
                            if self.changes_dir.as_os_str().is_empty() {
                                return Err(ConfigError::Range {
                                    name: "CHANGES_DIR",
                                    rule: "a directory path",
                                });
                            }
                            self.changes_dir.join(&self.slot_name)
                        },
                        max_bytes: positive("CHANGES_MAX_BYTES", self.changes_max_bytes)?,
                        stall_timeout: Duration::from_secs(positive(
                            "CHANGES_STALL_TIMEOUT",
                            self.changes_stall_timeout,
                        )?),
                    },
                    resume: ResumeLimits {
                        window: Duration::from_secs(self.changes_resume_window),
                        max_records: self.changes_resume_max_subscribers,
                    },
                }),
            },
            channel_error_backoff: Duration::from_millis(self.channel_error_backoff_ms),
            connect_error_backoff: Duration::from_millis(self.connect_error_backoff_ms),
            max_payload_bytes,
            max_channels_per_client: self.max_channels_per_client,
            max_frame_size: self.max_frame_size,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            outbox: crate::outbox::OutboxLimits {
                messages: self.outbound_queue_messages,
                bytes: self.outbound_queue_bytes,
            },
            subscribe: SubscribeLimits {
                bindings: self.max_bindings_per_channel,
                pattern_chars: self.filter_pattern_max_chars,
            },
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            json_logs,
            shutdown_timeout: Duration::from_millis(positive(
                "SHUTDOWN_TIMEOUT_MS",
                self.shutdown_timeout_ms,
            )?),
            metrics_jwt,
            tls,
            limits: crate::limits::LimitSettings {
                events_per_second: self.max_events_per_second,
                joins_per_second: self.max_joins_per_second,
                presence_events_per_second: self.max_presence_events_per_second,
                concurrent_users: self.max_concurrent_users,
                connections: self.max_connections,
                presence_calls: self.client_presence_max_calls,
                presence_window: Duration::from_millis(positive(
                    "CLIENT_PRESENCE_WINDOW_MS",
                    self.client_presence_window_ms,
                )?),
                private_only: self.private_only,
                outbound_total_bytes: self.outbound_total_bytes,
                presence_state_bytes: self.presence_max_state_bytes,
                presence_total_bytes: self.presence_max_total_bytes,
                tick: Duration::from_millis(positive(
                    "RATE_COUNTER_TICK_MS",
                    self.rate_counter_tick_ms,
                )?),
            },
        })
    }
}

/// The default data directory (also where `realtide token` looks for the dev secret).
pub const DEV_DATA_DIR: &str = ".realtide/dev";

/// Bounds on what one join may ask of postgres_changes: they bound the matching work one
/// subscriber adds to every change (bindings x pattern length x value length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeLimits {
    /// `MAX_BINDINGS_PER_CHANNEL`.
    pub bindings: usize,
    /// `FILTER_PATTERN_MAX_CHARS`.
    pub pattern_chars: usize,
}

/// Bounds of the resume records of departed postgres_changes subscribers.
#[derive(Debug, Clone, Copy)]
pub struct ResumeLimits {
    /// How long a departed subscriber's record is kept.
    pub window: Duration,
    /// Most records kept.
    pub max_records: usize,
}
