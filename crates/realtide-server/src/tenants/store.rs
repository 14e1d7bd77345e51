//! The control database of tenants (`TENANTS_DB_URL`): one row per tenant whose settings
//! (database password and JWT secret included) are stored sealed with AES-256-GCM under a key
//! derived from `DB_ENC_KEY` (SHA-256 of it), with the tenant's id as associated data so a
//! sealed row cannot be moved to another id.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::Digest;

use crate::config::tenants::{TenantId, TenantSettings};

/// A failure of the control database or of a sealed row.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The control database failed.
    #[error("control database: {0}")]
    Database(#[source] tokio_postgres::Error),
    /// A row could not be opened (another `DB_ENC_KEY`, or damaged).
    #[error("tenant {0}: its sealed settings cannot be opened with DB_ENC_KEY")]
    Sealed(String),
}

/// One stored tenant.
#[derive(Debug, Clone)]
pub struct Record {
    /// The tenant's settings.
    pub settings: TenantSettings,
    /// A stable id of the record (uuid), as the reference's `id`.
    pub uuid: String,
    /// When it was created (RFC 3339).
    pub inserted_at: String,
}

/// The control database.
pub struct Store {
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    url: String,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// A store for `url`; connects on first use (and again after a failure).
    pub fn new(url: &str, key: &str) -> Store {
        let digest = sha2::Sha256::digest(key.as_bytes());
        Store {
            client: tokio::sync::Mutex::new(None),
            url: url.to_owned(),
            cipher: Aes256Gcm::new(&digest),
        }
    }

    async fn with_client<T>(
        &self,
        work: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut slot = self.client.lock().await;
        let client = match slot.take() {
            Some(client) if !client.is_closed() => slot.insert(client),
            _ => {
                let (client, connection) =
                    tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                        .await
                        .map_err(StoreError::Database)?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::warn!(%error, "control database connection ended");
                    }
                });
                client
                    .batch_execute(
                        "create table if not exists realtide_tenants (
                            external_id text primary key,
                            uuid text not null,
                            sealed bytea not null,
                            inserted_at timestamptz not null default now(),
                            updated_at timestamptz not null default now()
                        )",
                    )
                    .await
                    .map_err(StoreError::Database)?;
                slot.insert(client)
            }
        };
        work(client).await.map_err(StoreError::Database)
    }

    fn seal(&self, id: &TenantId, settings: &TenantSettings) -> Vec<u8> {
        let plain = serde_json::to_vec(settings).unwrap_or_default();
        let nonce_bytes: [u8; 12] = rand::random();
        let nonce = Nonce::from(nonce_bytes);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: id.as_str().as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    fn open(&self, id: &str, sealed: &[u8]) -> Result<TenantSettings, StoreError> {
        let fail = || StoreError::Sealed(id.to_owned());
        let (nonce, body) = sealed.split_at_checked(12).ok_or_else(fail)?;
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| fail())?;
        let plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: body,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| fail())?;
        serde_json::from_slice(&plain).map_err(|_| fail())
    }

    fn record(&self, row: &tokio_postgres::Row) -> Result<Record, StoreError> {
        let id: String = row.get(0);
        let uuid: String = row.get(1);
        let sealed: Vec<u8> = row.get(2);
        let inserted_at: String = row.get(3);
        Ok(Record {
            settings: self.open(&id, &sealed)?,
            uuid,
            inserted_at,
        })
    }

    const COLUMNS: &'static str = "external_id, uuid, sealed, \
        to_char(inserted_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";

    /// The tenant `id`, if stored.
    pub async fn get(&self, id: &TenantId) -> Result<Option<Record>, StoreError> {
        let sql = format!(
            "select {} from realtide_tenants where external_id = $1",
            Self::COLUMNS
        );
        let row = self
            .with_client(async |c| c.query_opt(&sql, &[&id.as_str()]).await)
            .await?;
        row.map(|row| self.record(&row)).transpose()
    }

    /// Every stored tenant, by id.
    pub async fn list(&self) -> Result<Vec<Record>, StoreError> {
        let sql = format!(
            "select {} from realtide_tenants order by external_id",
            Self::COLUMNS
        );
        let rows = self.with_client(async |c| c.query(&sql, &[]).await).await?;
        rows.iter().map(|row| self.record(row)).collect()
    }

    /// Stores `settings` under `id` (created or replaced); returns the record and whether it
    /// was created.
    pub async fn put(
        &self,
        id: &TenantId,
        settings: &TenantSettings,
    ) -> Result<(Record, bool), StoreError> {
        let sealed = self.seal(id, settings);
        let uuid = uuid::Uuid::new_v4().to_string();
        let sql = format!(
            "insert into realtide_tenants (external_id, uuid, sealed) values ($1, $2, $3)
             on conflict (external_id) do update set sealed = excluded.sealed, updated_at = now()
             returning {}, (xmax = 0)",
            Self::COLUMNS
        );
        let row = self
            .with_client(async |c| c.query_one(&sql, &[&id.as_str(), &uuid, &sealed]).await)
            .await?;
        let created: bool = row.get(4);
        Ok((self.record(&row)?, created))
    }

    /// Deletes `id`; whether it existed.
    pub async fn delete(&self, id: &TenantId) -> Result<bool, StoreError> {
        let count = self
            .with_client(async |c| {
                c.execute(
                    "delete from realtide_tenants where external_id = $1",
                    &[&id.as_str()],
                )
                .await
            })
            .await?;
        Ok(count > 0)
    }
}
