//! Tenants: the projects one process serves when `TENANTS_FILE` is set. A tenant's settings
//! are the per-project settings of a single-project server (JWT secret or JWKS, database,
//! slot, publication, limits); everything else (listen address, timeouts, queue bounds) is the
//! process's. A tenant's [`Config`](super::Config) is the process's settings with the tenant's
//! laid over them, validated by the same code as the single-project settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigError, ServeArgs};

/// A tenant's external id: 1-63 characters of `a-z`, `0-9`, `_` and `-` (a DNS label, so it
/// can be the first label of the `Host` header).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Checks `value`; `None` when it is not a valid id.
    pub fn parse(value: &str) -> Option<TenantId> {
        let valid = !value.is_empty()
            && value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        valid.then(|| TenantId(value.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One tenant as written in `TENANTS_FILE` (`[[tenant]]` tables). Unset fields take the
/// process's setting of the same name.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// The external id (`Host` label or `/t/{id}` prefix).
    pub external_id: String,
    /// A display name.
    #[serde(default)]
    pub name: Option<String>,
    /// HS256/384/512 secret of the tenant's tokens.
    #[serde(default)]
    pub jwt_secret: Option<String>,
    /// JWKS of the tenant's tokens.
    #[serde(default)]
    pub jwt_jwks: Option<String>,
    /// Database URL.
    #[serde(default)]
    pub db_url: Option<String>,
    /// Database host (with the parts below), when `db_url` is not given.
    #[serde(default)]
    pub db_host: Option<String>,
    /// Database port.
    #[serde(default)]
    pub db_port: Option<u16>,
    /// Database user.
    #[serde(default)]
    pub db_user: Option<String>,
    /// Database password.
    #[serde(default)]
    pub db_password: Option<String>,
    /// Database name.
    #[serde(default)]
    pub db_name: Option<String>,
    /// TLS to the database.
    #[serde(default)]
    pub db_ssl: Option<bool>,
    /// Replication slot (default `realtide_<id>`, `-` written `_`).
    #[serde(default)]
    pub slot_name: Option<String>,
    /// Publication.
    #[serde(default)]
    pub publication: Option<String>,
    /// `TENANT_MAX_CONCURRENT_USERS` of this tenant.
    #[serde(default)]
    pub max_concurrent_users: Option<usize>,
    /// `TENANT_MAX_EVENTS_PER_SECOND` of this tenant.
    #[serde(default)]
    pub max_events_per_second: Option<u64>,
    /// `TENANT_MAX_JOINS_PER_SECOND` of this tenant.
    #[serde(default)]
    pub max_joins_per_second: Option<u64>,
    /// `TENANT_MAX_CHANNELS_PER_CLIENT` of this tenant.
    #[serde(default)]
    pub max_channels_per_client: Option<usize>,
    /// `TENANT_MAX_PRESENCE_EVENTS_PER_SECOND` of this tenant.
    #[serde(default)]
    pub max_presence_events_per_second: Option<u64>,
    /// `CLIENT_PRESENCE_MAX_CALLS` of this tenant.
    #[serde(default)]
    pub max_client_presence_events_per_window: Option<u32>,
    /// `CLIENT_PRESENCE_WINDOW_MS` of this tenant.
    #[serde(default)]
    pub client_presence_window_ms: Option<u64>,
    /// `PRIVATE_ONLY` of this tenant.
    #[serde(default)]
    pub private_only: Option<bool>,
    /// `PRESENCE_ENABLED` of this tenant.
    #[serde(default)]
    pub presence_enabled: Option<bool>,
    /// A suspended tenant's connects are refused (`Realtime was disabled for this tenant`).
    #[serde(default)]
    pub suspended: bool,
}

/// The whole `TENANTS_FILE`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenant: Vec<TenantSettings>,
}

/// Where the tenants are kept.
#[derive(Debug, Clone)]
pub enum TenantSource {
    /// `TENANTS_FILE`: read once at start, read-only.
    File {
        /// The file.
        path: PathBuf,
        /// Its tenants, by id.
        tenants: BTreeMap<TenantId, TenantSettings>,
    },
    /// `TENANTS_DB_URL`: the control database, written by the management API.
    Database {
        /// Its URL.
        url: String,
        /// `DB_ENC_KEY`, the key the stored settings are sealed with.
        key: String,
        /// `TENANT_CACHE_TTL_SECS`: how long a looked-up tenant is used without asking the
        /// control database again.
        cache_ttl: std::time::Duration,
    },
}

/// Where the tenants come from and how long an unused one keeps running.
#[derive(Debug, Clone)]
pub struct TenantsConfig {
    /// The tenants' source.
    pub source: TenantSource,
    /// `TENANT_IDLE_STOP_SECS`: a running tenant with no socket for this long is stopped.
    pub idle_stop: std::time::Duration,
    /// The process's settings, under every tenant's own.
    pub base: Box<ServeArgs>,
    /// Verifier of the management API's tokens (`API_JWT_SECRET`); without it the API
    /// refuses every request.
    pub api_jwt: Option<realtide_auth::JwtVerifier>,
}

/// Reads and checks `TENANTS_FILE`: every tenant's settings must make a valid configuration.
pub fn load(
    file: &Path,
    base: &ServeArgs,
) -> Result<BTreeMap<TenantId, TenantSettings>, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigError::Tenants(format!("TENANTS_FILE: cannot read {}: {e}", file.display()))
    })?;
    parse(&text, base).map_err(|message| {
        ConfigError::Tenants(format!("TENANTS_FILE {}: {message}", file.display()))
    })
}

/// Parses the text of a tenants file; the error names the tenant and the setting.
pub fn parse(text: &str, base: &ServeArgs) -> Result<BTreeMap<TenantId, TenantSettings>, String> {
    let file: TenantsFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    let mut tenants = BTreeMap::new();
    for settings in file.tenant {
        let Some(id) = TenantId::parse(&settings.external_id) else {
            return Err(format!(
                "external_id {:?} must be 1-63 characters of a-z, 0-9, _ and -",
                settings.external_id
            ));
        };
        // Validated now, so that a mistake shows at start rather than at the first connect.
        settings
            .config(&id, base)
            .map_err(|e| format!("tenant {id}: {e}"))?;
        if tenants.insert(id.clone(), settings).is_some() {
            return Err(format!("tenant {id} is listed twice"));
        }
    }
    let mut slots = BTreeMap::new();
    for (id, settings) in &tenants {
        let database = settings.database_key();
        if let Some(database) = database {
            let slot = settings.slot(id);
            if let Some(other) = slots.insert((database, slot.clone()), id.clone()) {
                return Err(format!(
                    "tenants {other} and {id} use the same database and slot {slot}: give one a slot_name"
                ));
            }
        }
    }
    Ok(tenants)
}

impl TenantSettings {
    /// The tenant's replication slot.
    pub fn slot(&self, id: &TenantId) -> String {
        match &self.slot_name {
            Some(slot) => slot.clone(),
            None => {
                let mut slot = format!("realtide_{}", id.as_str().replace('-', "_"));
                slot.truncate(63);
                slot
            }
        }
    }

    /// What tells two tenants' databases apart (for the slot check).
    fn database_key(&self) -> Option<String> {
        self.db_url.clone().or_else(|| {
            let host = self.db_host.clone()?;
            Some(format!(
                "{host}:{}/{}",
                self.db_port.unwrap_or(5432),
                self.db_name.clone().unwrap_or_default()
            ))
        })
    }

    /// The tenant's configuration: `base` with this tenant's settings over it. Settings of
    /// the process (listener, TLS, cluster) are not a tenant's.
    pub fn config(&self, id: &TenantId, base: &ServeArgs) -> Result<super::Config, ConfigError> {
        let mut args = base.clone();
        args.tls_cert = None;
        args.tls_key = None;
        args.cluster_nats_url = None;
        args.api_jwt_secret = None;
        args.jwt_secret = self.jwt_secret.clone();
        args.jwt_jwks = self.jwt_jwks.clone();
        if self.jwt_secret.is_none() && self.jwt_jwks.is_none() {
            return Err(ConfigError::Tenants(
                "jwt_secret or jwt_jwks must be set".to_owned(),
            ));
        }
        args.db_url = self.db_url.clone();
        args.db_host = self.db_host.clone();
        if let Some(port) = self.db_port {
            args.db_port = port;
        }
        if let Some(user) = &self.db_user {
            args.db_user = user.clone();
        }
        args.db_password = self.db_password.clone();
        if let Some(name) = &self.db_name {
            args.db_name = name.clone();
        }
        if let Some(ssl) = self.db_ssl {
            args.db_ssl = ssl;
        }
        args.slot_name = self.slot(id);
        if let Some(publication) = &self.publication {
            args.publication = publication.clone();
        }
        // One journal directory per tenant (under it, one per slot as usual).
        args.changes_dir = base.changes_dir.join("tenants").join(id.as_str());
        let set = |target: &mut u64, value: Option<u64>| {
            if let Some(value) = value {
                *target = value;
            }
        };
        set(&mut args.max_events_per_second, self.max_events_per_second);
        set(&mut args.max_joins_per_second, self.max_joins_per_second);
        set(
            &mut args.max_presence_events_per_second,
            self.max_presence_events_per_second,
        );
        set(
            &mut args.client_presence_window_ms,
            self.client_presence_window_ms,
        );
        if let Some(users) = self.max_concurrent_users {
            args.max_concurrent_users = users;
        }
        if let Some(channels) = self.max_channels_per_client {
            args.max_channels_per_client = channels;
        }
        if let Some(calls) = self.max_client_presence_events_per_window {
            args.client_presence_max_calls = calls;
        }
        if let Some(private_only) = self.private_only {
            args.private_only = private_only;
        }
        if let Some(presence_enabled) = self.presence_enabled {
            args.presence_enabled = presence_enabled;
        }
        args.tenants_file = None;
        args.tenants_db_url = None;
        args.into_config()
    }
}

#[cfg(test)]
#[expect(
    clippy::indexing_slicing,
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test assertions on known shapes"
)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn base() -> ServeArgs {
        Cli::parse_from(["realtide"]).serve
    }

    #[test]
    fn ids_are_dns_labels() {
        assert!(TenantId::parse("acme").is_some());
        assert!(TenantId::parse("acme-2_b").is_some());
        assert!(TenantId::parse("").is_none());
        assert!(TenantId::parse("Acme").is_none());
        assert!(TenantId::parse("a.b").is_none());
        assert!(TenantId::parse(&"a".repeat(64)).is_none());
        assert!(TenantId::parse(&"a".repeat(63)).is_some());
    }

    #[test]
    fn a_file_of_two_tenants_parses_with_their_own_settings() {
        let text = r#"
[[tenant]]
external_id = "acme"
jwt_secret = "acme-secret-that-is-long-enough-000"
db_url = "postgres://u@localhost/acme"
max_concurrent_users = 7

[[tenant]]
external_id = "globex-2"
jwt_secret = "globex-secret-that-is-long-enough-00"
private_only = true
"#;
        let tenants = parse(text, &base()).expect("parses");
        assert_eq!(tenants.len(), 2);
        let acme = TenantId::parse("acme").expect("id");
        let config = tenants[&acme].config(&acme, &base()).expect("config");
        assert_eq!(config.limits.concurrent_users, 7);
        let database = config.database.expect("database");
        assert_eq!(database.slot, "realtide_acme");
        assert!(database.changes.dir.ends_with("tenants/acme/realtide_acme"));
        let globex = TenantId::parse("globex-2").expect("id");
        let config = tenants[&globex].config(&globex, &base()).expect("config");
        assert!(config.limits.private_only);
        assert!(config.database.is_none());
    }

    #[test]
    fn mistakes_name_the_tenant_and_the_setting() {
        let bad_id = "[[tenant]]\nexternal_id = \"Bad.Id\"\njwt_secret = \"x\"\n";
        assert!(parse(bad_id, &base()).unwrap_err().contains("external_id"));
        let no_secret = "[[tenant]]\nexternal_id = \"a\"\n";
        assert!(
            parse(no_secret, &base())
                .unwrap_err()
                .contains("jwt_secret")
        );
        let unknown = "[[tenant]]\nexternal_id = \"a\"\njwt_secret = \"s\"\ncolour = 1\n";
        assert!(parse(unknown, &base()).unwrap_err().contains("colour"));
        let twice = "[[tenant]]\nexternal_id = \"a\"\njwt_secret = \"long-enough-secret-0000000000000\"\n[[tenant]]\nexternal_id = \"a\"\njwt_secret = \"long-enough-secret-0000000000000\"\n";
        assert!(parse(twice, &base()).unwrap_err().contains("twice"));
        let same_slot = "[[tenant]]\nexternal_id = \"a\"\njwt_secret = \"long-enough-secret-0000000000000\"\ndb_url = \"postgres://h/d\"\nslot_name = \"s\"\n[[tenant]]\nexternal_id = \"b\"\njwt_secret = \"long-enough-secret-0000000000000\"\ndb_url = \"postgres://h/d\"\nslot_name = \"s\"\n";
        assert!(
            parse(same_slot, &base())
                .unwrap_err()
                .contains("same database and slot")
        );
    }
}
