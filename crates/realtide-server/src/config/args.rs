//! The flags of `realtide serve`, each with its environment variable.

use std::net::IpAddr;

use clap::Args;

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
    /// Presence on for every join, also those whose `config.presence.enabled` is not set (the
    /// reference's tenant flag `presence_enabled`).
    #[arg(long, env = "PRESENCE_ENABLED", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub presence_enabled: bool,
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
    /// TOML file of tenants (`[[tenant]]` tables): the process then serves several projects,
    /// each chosen by the first label of the `Host` header or a `/t/{tenant}` path prefix.
    #[arg(long, env = "TENANTS_FILE")]
    pub tenants_file: Option<std::path::PathBuf>,
    /// PostgreSQL URL of the control database that keeps the tenants (written by the
    /// management API `/api/tenants`); instead of TENANTS_FILE.
    #[arg(long, env = "TENANTS_DB_URL", hide_env_values = true)]
    pub tenants_db_url: Option<String>,
    /// Key the tenants' settings (secrets included) are sealed with in the control database
    /// (at least 32 characters; keep it: without it the stored tenants cannot be read).
    #[arg(long, env = "DB_ENC_KEY", hide_env_values = true)]
    pub db_enc_key: Option<String>,
    /// Seconds a tenant read from the control database is used before it is read again
    /// (updates through this process's API apply at once).
    #[arg(long, env = "TENANT_CACHE_TTL_SECS", default_value_t = 60)]
    pub tenant_cache_ttl_secs: u64,
    /// Seconds a tenant with no socket keeps running (pools, replication) before it stops; it
    /// starts again on the next request.
    #[arg(long, env = "TENANT_IDLE_STOP_SECS", default_value_t = 600)]
    pub tenant_idle_stop_secs: u64,
    /// NATS server URLs of the cluster, comma-separated (`nats://host:4222`, `tls://...`;
    /// `user:password@` in a URL is used). Unset: this process is a single node.
    #[arg(long, env = "CLUSTER_NATS_URL", hide_env_values = true)]
    pub cluster_nats_url: Option<String>,
    /// This node's name in the cluster (letters, digits, `-`, `_`); default: the host name
    /// plus a random suffix.
    #[arg(long, env = "CLUSTER_NODE_NAME")]
    pub cluster_node_name: Option<String>,
    /// NATS credentials file (`.creds`: user JWT and NKey seed).
    #[arg(long, env = "CLUSTER_NATS_CREDS")]
    pub cluster_nats_creds: Option<std::path::PathBuf>,
    /// NATS authentication token.
    #[arg(long, env = "CLUSTER_NATS_TOKEN", hide_env_values = true)]
    pub cluster_nats_token: Option<String>,
    /// PEM CA certificate(s) to verify the NATS servers; setting it requires TLS.
    #[arg(long, env = "CLUSTER_NATS_TLS_CA")]
    pub cluster_nats_tls_ca: Option<std::path::PathBuf>,
    /// How often a node announces itself to the others, in milliseconds.
    #[arg(long, env = "CLUSTER_HEARTBEAT_MS", default_value_t = 1_000)]
    pub cluster_heartbeat_ms: u64,
    /// A node not heard from for this long is gone: its presences leave on the others.
    #[arg(long, env = "CLUSTER_NODE_TIMEOUT_MS", default_value_t = 5_000)]
    pub cluster_node_timeout_ms: u64,
    /// How long the JetStream change stream keeps transactions, in seconds.
    #[arg(long, env = "CLUSTER_STREAM_MAX_AGE_SECS", default_value_t = 86_400)]
    pub cluster_stream_max_age_secs: u64,
    /// Replicas of the JetStream change stream (up to the NATS cluster's size).
    #[arg(long, env = "CLUSTER_STREAM_REPLICAS", default_value_t = 1)]
    pub cluster_stream_replicas: usize,
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
