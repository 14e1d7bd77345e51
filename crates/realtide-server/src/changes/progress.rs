//! Where replication stands: its status (watched by subscribers and `/api/health`), what a
//! failure means for the operator, and the positions it reached (one typed value instead of
//! loose atomics).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use realtide_replication::lsn::Lsn;
use realtide_replication::stream::StreamError;

/// Where the replication stream stands; subscribers and `/api/health` watch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationStatus {
    /// Not connected yet, or stopping.
    Starting,
    /// Connected and streaming.
    Streaming,
    /// The last attempt failed; retried with backoff.
    Down {
        /// What is wrong, and what to do about it when known.
        problem: Arc<str>,
        /// Whether it is a setting or privilege to fix (else an outage).
        configuration: bool,
    },
}

impl ReplicationStatus {
    /// The `system` error a postgres_changes subscriber gets while replication is down: the
    /// fix for configuration problems, the reference's text for outages.
    pub fn subscriber_message(&self) -> Option<String> {
        match self {
            ReplicationStatus::Down {
                problem,
                configuration: true,
            } => Some(format!(
                "Realtime was unable to start replication: {problem}"
            )),
            ReplicationStatus::Down { .. } => {
                Some("Realtime was unable to connect to the project database".into())
            }
            ReplicationStatus::Starting | ReplicationStatus::Streaming => None,
        }
    }

    /// `starting`, `streaming` or `down`.
    pub fn name(&self) -> &'static str {
        match self {
            ReplicationStatus::Starting => "starting",
            ReplicationStatus::Streaming => "streaming",
            ReplicationStatus::Down { .. } => "down",
        }
    }
}

/// What a failed replication attempt means for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// One line: what is wrong and how to fix it.
    pub text: String,
    /// A setting or privilege to fix (logged at error level), not an outage to wait out.
    pub configuration: bool,
}

impl Problem {
    /// Reads the SQLSTATE and message of the first database error in `error`'s chain.
    pub fn of(error: &(dyn std::error::Error + 'static), url: &str) -> Problem {
        let mut code: Option<String> = None;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(current) = source {
            if code.is_none() {
                if let Some(StreamError::Server { code: c, .. }) =
                    current.downcast_ref::<StreamError>()
                {
                    code = Some(c.clone());
                } else if let Some(db) = current
                    .downcast_ref::<tokio_postgres::Error>()
                    .and_then(tokio_postgres::Error::as_db_error)
                {
                    code = Some(db.code().code().to_owned());
                }
            }
            source = current.source();
        }
        let user = url
            .parse::<tokio_postgres::Config>()
            .ok()
            .and_then(|c| c.get_user().map(str::to_owned))
            .unwrap_or_else(|| "postgres".into());
        Problem::classify(code.as_deref(), &crate::logs::error_chain(error), &user)
    }

    /// The fix for the known causes; the error text for the rest.
    pub fn classify(code: Option<&str>, text: &str, user: &str) -> Problem {
        let lower = text.to_ascii_lowercase();
        let fix = |text: String| Problem {
            text,
            configuration: true,
        };
        if lower.contains("wal_level") {
            return fix(
                "wal_level must be logical: set wal_level = logical in postgresql.conf and restart PostgreSQL".into(),
            );
        }
        if lower.contains("replication")
            && (code == Some("42501")
                || lower.contains("permission denied")
                || lower.contains("must be superuser"))
        {
            return fix(format!(
                "role {user} needs REPLICATION: ALTER ROLE \"{user}\" WITH REPLICATION"
            ));
        }
        if code == Some("53400") || lower.contains("all replication slots are in use") {
            return fix(
                "max_replication_slots is reached: drop an unused slot (see pg_replication_slots) or raise max_replication_slots".into(),
            );
        }
        if lower.contains("max_wal_senders") {
            return fix("max_wal_senders is reached: raise max_wal_senders".into());
        }
        if lower.contains("pg_hba.conf") {
            return fix(format!(
                "pg_hba.conf does not let {user} connect for replication: add a `host replication {user} ...` line"
            ));
        }
        if code == Some("28P01") || lower.contains("password authentication failed") {
            return fix(format!("the password of {user} in DB_URL was refused"));
        }
        if code == Some("3D000") {
            return fix("the database named in DB_URL does not exist".into());
        }
        if code == Some("42501") {
            return fix(format!(
                "role {user} lacks a privilege realtide needs: {text}"
            ));
        }
        Problem {
            text: format!("cannot stream from the database: {text}"),
            configuration: false,
        }
    }
}

/// The positions of the replication stream, shared with `/api/health` and `/metrics`.
#[derive(Debug, Default)]
pub struct Progress {
    /// Last position confirmed to the slot.
    confirmed: AtomicU64,
    /// Latest WAL end the server reported.
    server_end: AtomicU64,
}

impl Progress {
    /// The last position confirmed to the slot (0/0 before the first).
    pub fn confirmed(&self) -> Lsn {
        Lsn(self.confirmed.load(Ordering::Relaxed))
    }

    /// The slot was confirmed at `lsn`.
    pub fn set_confirmed(&self, lsn: Lsn) {
        self.confirmed.store(lsn.0, Ordering::Relaxed);
    }

    /// The slot is known to be confirmed at least at `lsn`.
    pub fn raise_confirmed(&self, lsn: Lsn) {
        self.confirmed.fetch_max(lsn.0, Ordering::Relaxed);
    }

    /// The server reported WAL up to `lsn`.
    pub fn saw_server_end(&self, lsn: Lsn) {
        self.server_end.fetch_max(lsn.0, Ordering::Relaxed);
    }

    /// Replication lag in bytes (server WAL end minus confirmed position).
    pub fn lag_bytes(&self) -> u64 {
        self.server_end
            .load(Ordering::Relaxed)
            .saturating_sub(self.confirmed.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::Problem;

    /// PostgreSQL 15's own messages for each cause (SQLSTATE, text) map to their fix.
    #[test]
    fn problems_are_classified_from_postgres_messages() {
        let cases = [
            (
                Some("55000"),
                "replication stream: PostgreSQL error 55000: logical decoding requires wal_level >= logical",
                "wal_level must be logical",
            ),
            (
                Some("42501"),
                "replication stream: PostgreSQL error 42501: must be superuser or replication role to use replication slots",
                "role app needs REPLICATION: ALTER ROLE \"app\" WITH REPLICATION",
            ),
            (
                Some("53400"),
                "replication stream: PostgreSQL error 53400: all replication slots are in use",
                "max_replication_slots is reached",
            ),
            (
                Some("53300"),
                "replication stream: PostgreSQL error 53300: number of requested standby connections exceeds max_wal_senders (currently 0)",
                "max_wal_senders is reached",
            ),
            (
                Some("28000"),
                "replication authentication: no pg_hba.conf entry for replication connection from host \"10.0.0.2\", user \"app\", no encryption",
                "pg_hba.conf does not let app connect for replication",
            ),
            (
                Some("28P01"),
                "database: password authentication failed for user \"app\"",
                "the password of app in DB_URL was refused",
            ),
            (
                Some("3D000"),
                "database: database \"nope\" does not exist",
                "the database named in DB_URL does not exist",
            ),
            (
                Some("42501"),
                "database: permission denied for database postgres",
                "role app lacks a privilege realtide needs",
            ),
        ];
        for (code, text, fix) in cases {
            let problem = Problem::classify(code, text, "app");
            assert!(problem.configuration, "{text}");
            assert!(problem.text.starts_with(fix), "{text} -> {}", problem.text);
        }
        let outage = Problem::classify(None, "replication connection: Connection refused", "app");
        assert!(!outage.configuration);
    }
}
