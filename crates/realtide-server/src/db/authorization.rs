//! Private-channel authorization: RLS policies on `realtime.messages` decide who may read
//! (SELECT) and write (INSERT) a topic, per extension (`broadcast`, `presence`).
//!
//! Each check is one statement: a session function (`pg_temp`) that, inside a PL/pgSQL block
//! whose changes are always rolled back, inserts probe rows, switches to the JWT's role with the
//! request settings (`role`, `realtime.topic`, `request.jwt.claims`, `request.jwt.claim.sub`,
//! `request.jwt.claim.role`, `request.headers`), and reads the probes back (read check) or
//! inserts them under RLS (write check; `42501` means denied). Because every check is a single
//! autocommit statement, checks from many sessions are pipelined on a small dedicated pool
//! (`AUTHORIZATION_POOL_SIZE`) without holding a connection per check, and nothing of a probe
//! is ever committed.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::db::claims::ClaimsGroup;
use crate::db::pool::{DbError, Pool};

/// The two features a policy can grant separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// Broadcast messages.
    Broadcast,
    /// Presence.
    Presence,
}

impl Extension {
    fn as_str(self) -> &'static str {
        match self {
            Extension::Broadcast => "broadcast",
            Extension::Presence => "presence",
        }
    }
}

/// One permission's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Grant {
    /// Not checked yet (checked lazily on first use).
    #[default]
    Unknown,
    /// The policy allows it.
    Granted,
    /// The policy does not allow it.
    Denied,
}

impl Grant {
    fn from_bool(granted: bool) -> Grant {
        if granted {
            Grant::Granted
        } else {
            Grant::Denied
        }
    }

    /// Whether the permission is known to be granted.
    pub fn granted(self) -> bool {
        self == Grant::Granted
    }
}

/// A private channel's cached permissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policies {
    /// Receive broadcasts.
    pub broadcast_read: Grant,
    /// Send broadcasts.
    pub broadcast_write: Grant,
    /// See presence.
    pub presence_read: Grant,
    /// Track presence.
    pub presence_write: Grant,
}

/// Who is asking: the claims and the request headers exposed to policies.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// Verified claims.
    pub claims: &'a ClaimsGroup,
    /// `request.headers` (a JSON object).
    pub headers: &'a str,
}

/// Why a check could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// The policy SQL failed (unknown role, broken policy, ...): treated as denied.
    #[error("rls policy error")]
    Policy(#[source] DbError),
    /// The statement timeout cancelled the check.
    #[error("authorization query canceled")]
    Canceled(#[source] DbError),
    /// No partition of `realtime.messages` for today.
    #[error("missing realtime.messages partition")]
    MissingPartition(#[source] DbError),
    /// The check did not finish within `AUTHORIZATION_TIMEOUT_MS`.
    #[error("authorization timed out")]
    Timeout,
    /// The database could not be reached.
    #[error("database unavailable")]
    Unavailable(#[source] DbError),
}

impl AuthzError {
    fn classify(error: DbError) -> AuthzError {
        let code = match &error {
            DbError::Query { source, .. } => source.code().cloned(),
            DbError::Connect(_) | DbError::NoConnections | DbError::NotVisible => {
                return AuthzError::Unavailable(error);
            }
        };
        match code {
            Some(code) if code == SqlState::QUERY_CANCELED => AuthzError::Canceled(error),
            Some(code) if code == SqlState::CHECK_VIOLATION => AuthzError::MissingPartition(error),
            Some(_) => AuthzError::Policy(error),
            None => AuthzError::Unavailable(error),
        }
    }

    /// The join error reason, as the reference words it.
    pub fn join_reason(&self, sub_topic: &str) -> String {
        match self {
            AuthzError::Policy(_) => unauthorized_reason(sub_topic),
            AuthzError::Canceled(error) => format!("QueryCanceled: {error}"),
            AuthzError::MissingPartition(_) => {
                "MissingPartition: Realtime was unable to find the expected messages partition"
                    .into()
            }
            AuthzError::Timeout => {
                "IncreaseConnectionPool: Please increase your connection pool size".into()
            }
            AuthzError::Unavailable(_) => {
                "UnableToConnectToProject: Realtime was unable to connect to the project database"
                    .into()
            }
        }
    }
}

/// Request headers as the JSON object policies read from `request.headers`: all of them for
/// HTTP broadcasts, only the `x-*` ones for WebSocket joins (as the reference).
pub fn request_headers(headers: &axum::http::HeaderMap, only_x: bool) -> String {
    let map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter(|(name, _)| !only_x || name.as_str().starts_with("x-"))
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.into())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// `Unauthorized: You do not have permissions to read from this Channel topic: <sub-topic>`.
pub fn unauthorized_reason(sub_topic: &str) -> String {
    format!("Unauthorized: {}", no_read_message(sub_topic))
}

/// The message for a channel whose reads are all denied.
pub fn no_read_message(sub_topic: &str) -> String {
    format!("You do not have permissions to read from this Channel topic: {sub_topic}")
}

/// The message for a channel that lost one of its reads.
pub fn lost_read_message(sub_topic: &str) -> String {
    format!("You no longer have permission to read from this Channel topic: {sub_topic}")
}

const FUNCTION: &str = "realtide_authorize_v1";

const FUNCTION_DDL: &str = r#"
create or replace function pg_temp.realtide_authorize_v1(
  p_topic text, p_claims text, p_sub text, p_role text, p_headers text,
  p_extensions text[], p_write boolean)
returns boolean[] language plpgsql as $realtide$
declare
  probes uuid[] := array[]::uuid[];
  granted boolean[] := array[]::boolean[];
  i integer;
begin
  begin
    if not p_write then
      -- Read probes are inserted as realtide's own user, before the role switch.
      for i in 1 .. coalesce(array_length(p_extensions, 1), 0) loop
        probes := probes || gen_random_uuid();
        insert into realtime.messages (id, topic, extension, private)
          values (probes[i], p_topic, p_extensions[i], true);
      end loop;
    end if;
    perform set_config('role', p_role, true);
    perform set_config('realtime.topic', p_topic, true);
    perform set_config('request.jwt.claims', p_claims, true);
    perform set_config('request.jwt.claim.sub', coalesce(p_sub, ''), true);
    perform set_config('request.jwt.claim.role', p_role, true);
    perform set_config('request.headers', p_headers, true);
    for i in 1 .. coalesce(array_length(p_extensions, 1), 0) loop
      if p_write then
        begin
          insert into realtime.messages (topic, extension, private)
            values (p_topic, p_extensions[i], true);
          granted := granted || true;
        exception when insufficient_privilege then
          granted := granted || false;
        end;
      else
        granted := granted || exists (select 1 from realtime.messages m where m.id = probes[i]);
      end if;
    end loop;
    -- Undo the probes and the settings: nothing of a check is ever committed.
    raise exception using errcode = 'RTD01', message = 'realtide authorization rollback';
  exception when sqlstate 'RTD01' then
    null;
  end;
  return granted;
end
$realtide$
"#;

/// Runs authorization checks on the dedicated pool.
#[derive(Debug)]
pub struct Authorizer {
    pool: Pool,
    timeout: Duration,
    latency: metrics::Histogram,
}

impl Authorizer {
    /// An authorizer over a pool of `size` connections to `url`.
    pub fn new(
        url: String,
        tls: Option<std::sync::Arc<crate::db::pool::TlsConfig>>,
        size: usize,
        timeout: Duration,
        latency: metrics::Histogram,
    ) -> Authorizer {
        let statement_timeout = format!("set statement_timeout = {}", timeout.as_millis());
        Authorizer {
            pool: Pool::with_setup(url, tls, size, statement_timeout),
            timeout,
            latency,
        }
    }

    async fn check(
        &self,
        sub_topic: &str,
        requester: Requester<'_>,
        extensions: &[Extension],
        write: bool,
    ) -> Result<Vec<bool>, AuthzError> {
        let run = async {
            let conn = self.pool.client().await?;
            conn.ensure(FUNCTION, FUNCTION_DDL).await?;
            let statement = conn
                .prepared(&format!(
                    "select pg_temp.{FUNCTION}($1, $2, $3, $4, $5, $6, $7)"
                ))
                .await?;
            let names: Vec<&str> = extensions.iter().map(|e| e.as_str()).collect();
            let claims = requester.claims;
            let row = conn
                .query_one(
                    &statement,
                    &[
                        &sub_topic,
                        &claims.claims,
                        &claims.sub,
                        &claims.role,
                        &requester.headers,
                        &names,
                        &write,
                    ],
                )
                .await
                .map_err(DbError::query("authorization check"))?;
            Ok::<Vec<bool>, DbError>(row.get(0))
        };
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, run).await;
        self.latency.record(started.elapsed().as_secs_f64());
        match result {
            Err(_) => Err(AuthzError::Timeout),
            Ok(Err(error)) => {
                let error = AuthzError::classify(error);
                tracing::warn!(error = %crate::logs::error_chain(&error), "authorization check failed");
                Err(error)
            }
            Ok(Ok(granted)) if granted.len() == extensions.len() => Ok(granted),
            Ok(Ok(_)) => Err(AuthzError::Unavailable(DbError::NoConnections)),
        }
    }

    /// Read check at join (or token refresh): broadcast, plus presence when `presence` is on.
    pub async fn read(
        &self,
        sub_topic: &str,
        requester: Requester<'_>,
        presence: bool,
    ) -> Result<Policies, AuthzError> {
        let extensions: &[Extension] = if presence {
            &[Extension::Broadcast, Extension::Presence]
        } else {
            &[Extension::Broadcast]
        };
        let granted = self.check(sub_topic, requester, extensions, false).await?;
        let mut policies = Policies {
            broadcast_read: Grant::from_bool(granted.first().copied().unwrap_or(false)),
            ..Policies::default()
        };
        if presence {
            policies.presence_read = Grant::from_bool(granted.get(1).copied().unwrap_or(false));
        }
        Ok(policies)
    }

    /// Write check for one extension (first send or track, HTTP private broadcasts).
    pub async fn write(
        &self,
        sub_topic: &str,
        requester: Requester<'_>,
        extension: Extension,
    ) -> Result<bool, AuthzError> {
        let granted = self.check(sub_topic, requester, &[extension], true).await?;
        Ok(granted.first().copied().unwrap_or(false))
    }

    /// Read check for presence alone (first track on a channel joined without presence).
    pub async fn presence_read(
        &self,
        sub_topic: &str,
        requester: Requester<'_>,
    ) -> Result<bool, AuthzError> {
        let granted = self
            .check(sub_topic, requester, &[Extension::Presence], false)
            .await?;
        Ok(granted.first().copied().unwrap_or(false))
    }
}
