//! Typed configuration of `realtide serve`, loaded once from flags and the environment.
//!
//! Every setting has an environment variable (Supabase Realtime's name where one exists) and a
//! flag; flags win. Validation happens once at start; an invalid setting stops the process with
//! one line naming it.
//!
//! - [`args`]: the flags and their environment variables ([`ServeArgs`]).
//! - [`file`]: the TOML file and the start-up error that names a setting.

use std::net::SocketAddr;
use std::time::Duration;

use realtide_auth::JwtVerifier;

mod args;
mod file;
pub mod tenants;

pub use args::ServeArgs;
pub use file::{ConfigFile, FileError, apply_file, config_file, describe_args_error};

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
    /// Cluster settings, when CLUSTER_NATS_URL is set.
    pub cluster: Option<ClusterConfig>,
    /// The tenants, when TENANTS_FILE is set (the process then serves several projects and
    /// the settings above are only the process's).
    pub tenants: Option<tenants::TenantsConfig>,
}

/// How this node joins a cluster over NATS.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs.
    pub urls: Vec<String>,
    /// This node's name.
    pub node: String,
    /// `CLUSTER_NATS_CREDS`.
    pub creds: Option<std::path::PathBuf>,
    /// `CLUSTER_NATS_TOKEN`.
    pub token: Option<String>,
    /// `CLUSTER_NATS_TLS_CA`.
    pub tls_ca: Option<std::path::PathBuf>,
    /// `CLUSTER_HEARTBEAT_MS`.
    pub heartbeat: Duration,
    /// `CLUSTER_NODE_TIMEOUT_MS`.
    pub node_timeout: Duration,
    /// `CLUSTER_STREAM_MAX_AGE_SECS`.
    pub stream_max_age: Duration,
    /// `CLUSTER_STREAM_REPLICAS`.
    pub stream_replicas: usize,
    /// Names the cluster's subjects and stream: the slot name, so that projects sharing one
    /// NATS never see each other's messages.
    pub scope: String,
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
    /// A cluster setting is unusable; the text names it.
    #[error("{0}")]
    Cluster(String),
    /// A tenant setting is unusable; the text names the tenant and the setting.
    #[error("{0}")]
    Tenants(String),
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

/// A setting that must be greater than zero.
fn positive(name: &'static str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        Err(ConfigError::Range {
            name,
            rule: "greater than 0",
        })
    } else {
        Ok(value)
    }
}

impl ServeArgs {
    /// Validates the settings into a [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let secret = match (
            self.jwt_secret.clone().filter(|s| !s.is_empty()),
            self.api_jwt_secret.clone().filter(|s| !s.is_empty()),
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
        let jwks = self.jwt_jwks.clone().filter(|s| !s.trim().is_empty());
        let tenants = self.tenants()?;
        // With tenants, each has its own secret; the process's verifier then checks nothing
        // anyone holds (a random secret).
        let secret = match (&tenants, secret) {
            (Some(_), None) if jwks.is_none() => Some(format!("{:032x}", rand::random::<u128>())),
            (_, secret) => secret,
        };
        if secret.is_none() && jwks.is_none() {
            return Err(ConfigError::MissingJwt);
        }
        if tenants.is_some()
            && self
                .cluster_nats_url
                .as_deref()
                .is_some_and(|u| !u.trim().is_empty())
        {
            return Err(ConfigError::Tenants(
                "TENANTS_FILE and CLUSTER_NATS_URL cannot be used together yet: run one cluster per project".to_owned(),
            ));
        }
        let jwt = JwtVerifier::new(
            secret.as_deref(),
            jwks.as_deref(),
            self.jwt_claim_validators.as_deref(),
        )
        .map_err(ConfigError::Jwt)?;
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
        let metrics_jwt = match self.metrics_jwt_secret.clone().filter(|s| !s.is_empty()) {
            None => None,
            Some(value) => {
                check_secret("METRICS_JWT_SECRET", &value)?;
                Some(JwtVerifier::new(Some(&value), None, None).map_err(ConfigError::MetricsJwt)?)
            }
        };
        let tls = match (self.tls_cert.as_deref(), self.tls_key.as_deref()) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(Tls {
                acceptor: crate::ws::tls::acceptor(cert, key)?,
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
            database: self.database(&slot)?,
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
            limits: self.limits()?,
            cluster: self.cluster(&slot)?,
            tenants,
        })
    }

    /// The cluster settings, when CLUSTER_NATS_URL is set.
    fn cluster(&self, slot: &str) -> Result<Option<ClusterConfig>, ConfigError> {
        let Some(urls) = self
            .cluster_nats_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        else {
            return Ok(None);
        };
        let urls: Vec<String> = urls
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        for url in &urls {
            if let Err(error) = url.parse::<async_nats::ServerAddr>() {
                return Err(ConfigError::Cluster(format!(
                    "CLUSTER_NATS_URL has an unusable URL ({error})"
                )));
            }
        }
        let node = match self.cluster_node_name.as_deref().filter(|n| !n.is_empty()) {
            Some(node) => node.to_owned(),
            None => default_node_name(),
        };
        if node.len() > 64
            || !node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::Cluster(
                "CLUSTER_NODE_NAME must be 1-64 letters, digits, '-' or '_'".to_owned(),
            ));
        }
        positive("CLUSTER_HEARTBEAT_MS", self.cluster_heartbeat_ms)?;
        positive(
            "CLUSTER_STREAM_MAX_AGE_SECS",
            self.cluster_stream_max_age_secs,
        )?;
        positive(
            "CLUSTER_STREAM_REPLICAS",
            self.cluster_stream_replicas as u64,
        )?;
        if self.cluster_node_timeout_ms < self.cluster_heartbeat_ms.saturating_mul(2) {
            return Err(ConfigError::Range {
                name: "CLUSTER_NODE_TIMEOUT_MS",
                rule: "at least twice CLUSTER_HEARTBEAT_MS",
            });
        }
        Ok(Some(ClusterConfig {
            urls,
            node,
            creds: self.cluster_nats_creds.clone(),
            token: self.cluster_nats_token.clone().filter(|t| !t.is_empty()),
            tls_ca: self.cluster_nats_tls_ca.clone(),
            heartbeat: Duration::from_millis(self.cluster_heartbeat_ms),
            node_timeout: Duration::from_millis(self.cluster_node_timeout_ms),
            stream_max_age: Duration::from_secs(self.cluster_stream_max_age_secs),
            stream_replicas: self.cluster_stream_replicas,
            scope: slot.to_owned(),
        }))
    }

    /// The database settings, when a database is configured (`DB_URL`, or `DB_HOST` and the
    /// other `DB_*` parts).
    fn database(&self, slot: &str) -> Result<Option<DatabaseConfig>, ConfigError> {
        Ok(
            match self.db_url.clone().filter(|s| !s.is_empty()).or_else(|| {
                let host = self.db_host.clone().filter(|h| !h.is_empty())?;
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
                    publication: nonempty("PUBLICATION", self.publication.clone())?,
                    slot: slot.to_owned(),
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
        )
    }

    /// Rate, count and size limits.
    fn limits(&self) -> Result<crate::limits::LimitSettings, ConfigError> {
        Ok(crate::limits::LimitSettings {
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
            presence_enabled: self.presence_enabled,
            outbound_total_bytes: self.outbound_total_bytes,
            presence_state_bytes: self.presence_max_state_bytes,
            presence_total_bytes: self.presence_max_total_bytes,
            tick: Duration::from_millis(positive(
                "RATE_COUNTER_TICK_MS",
                self.rate_counter_tick_ms,
            )?),
        })
    }

    /// The tenants, when TENANTS_FILE or TENANTS_DB_URL is set.
    fn tenants(&self) -> Result<Option<tenants::TenantsConfig>, ConfigError> {
        let file = self
            .tenants_file
            .clone()
            .filter(|f| !f.as_os_str().is_empty());
        let url = self.tenants_db_url.clone().filter(|u| !u.is_empty());
        let source = match (file, url) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(ConfigError::Tenants(
                    "TENANTS_FILE and TENANTS_DB_URL: set one of them".to_owned(),
                ));
            }
            (Some(path), None) => tenants::TenantSource::File {
                tenants: tenants::load(&path, self)?,
                path,
            },
            (None, Some(url)) => {
                db_url(&url).map_err(|_| {
                    ConfigError::Tenants("TENANTS_DB_URL is not a usable PostgreSQL URL".to_owned())
                })?;
                let key = self.db_enc_key.clone().filter(|k| !k.is_empty()).ok_or_else(|| {
                    ConfigError::Tenants(
                        "DB_ENC_KEY must be set with TENANTS_DB_URL (tenant secrets are stored sealed with it)"
                            .to_owned(),
                    )
                })?;
                check_secret("DB_ENC_KEY", &key)?;
                tenants::TenantSource::Database {
                    url,
                    key,
                    cache_ttl: Duration::from_secs(positive(
                        "TENANT_CACHE_TTL_SECS",
                        self.tenant_cache_ttl_secs,
                    )?),
                }
            }
        };
        positive("TENANT_IDLE_STOP_SECS", self.tenant_idle_stop_secs)?;
        let api_jwt = match self.api_jwt_secret.clone().filter(|s| !s.is_empty()) {
            None => None,
            Some(secret) => {
                check_secret("API_JWT_SECRET", &secret)?;
                Some(JwtVerifier::new(Some(&secret), None, None).map_err(ConfigError::Jwt)?)
            }
        };
        Ok(Some(tenants::TenantsConfig {
            source,
            idle_stop: Duration::from_secs(self.tenant_idle_stop_secs),
            base: Box::new(self.clone()),
            api_jwt,
        }))
    }
}

/// The host name plus a random suffix, so two processes on one host differ.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "realtide".to_owned());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    let suffix: u32 = rand::random();
    format!("{host}-{:06x}", suffix & 0xff_ffff)
}
