//! What realtide knows about published tables: columns, types, primary keys, row level
//! security, and which columns a role may select.
//!
//! Lookups are cached. A table's entry is dropped when the replication stream sends a new
//! Relation message for it (pgoutput does after DDL) and otherwise expires after
//! [`TABLE_TTL`]; column privileges expire after [`PRIVILEGE_TTL`], so GRANT/REVOKE and
//! `ALTER TABLE ... ENABLE ROW LEVEL SECURITY` take effect without a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use realtide_replication::sql::quote_ident;
use realtide_replication::value::{TypeInfo, TypeKind, builtin};

use crate::db::pool::{DbError, Pool};

/// How long a table description is trusted without a Relation message.
pub const TABLE_TTL: Duration = Duration::from_secs(10);
/// How long column privileges of a role are trusted.
pub const PRIVILEGE_TTL: Duration = Duration::from_secs(5);

/// A column of a table.
#[derive(Debug, Clone)]
pub struct Column {
    /// `attname`.
    pub name: String,
    /// `attnum`.
    pub attnum: i16,
    /// Its type.
    pub ty: TypeInfo,
    /// The type as SQL (`format_type`), for casts in generated queries.
    pub type_sql: String,
}

impl Column {
    /// A column of a built-in type (unit tests and benchmarks build tables with it).
    pub fn test(name: &str, type_name: &str) -> Column {
        Column {
            name: name.to_owned(),
            attnum: 1,
            ty: TypeInfo {
                oid: 0,
                name: type_name.to_owned(),
                kind: TypeKind::Base,
            },
            type_sql: type_name.to_owned(),
        }
    }
}

/// A table as realtide needs it.
#[derive(Debug, Clone)]
pub struct Table {
    /// `pg_class.oid`.
    pub oid: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Columns in attnum order.
    pub columns: Vec<Column>,
    /// Indices into `columns` of the primary key.
    pub primary_key: Vec<usize>,
    /// Row level security is enabled.
    pub rls: bool,
}

impl Table {
    /// Index of a column by name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// `"schema"."table"`, quoted for SQL.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Per column of a table, whether something holds (e.g. a role may select it).
pub type ColumnMask = Arc<Vec<bool>>;

/// Cached catalog lookups.
#[derive(Debug)]
pub struct Catalog {
    db: Arc<Pool>,
    tables: Mutex<HashMap<u32, (Arc<Table>, Instant)>>,
    privileges: Mutex<HashMap<(String, u32), (ColumnMask, Instant)>>,
    types: Mutex<HashMap<u32, TypeInfo>>,
}

impl Catalog {
    /// A catalog reading through `db`.
    pub fn new(db: Arc<Pool>) -> Catalog {
        Catalog {
            db,
            tables: Mutex::new(HashMap::new()),
            privileges: Mutex::new(HashMap::new()),
            types: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets a table (a new Relation message arrived for it).
    pub fn invalidate(&self, oid: u32) {
        self.tables.lock().remove(&oid);
        self.privileges.lock().retain(|(_, table), _| *table != oid);
    }

    /// The table with this oid, or `None` when it does not exist (any more).
    pub async fn table(&self, oid: u32) -> Result<Option<Arc<Table>>, DbError> {
        if let Some((table, at)) = self.tables.lock().get(&oid)
            && at.elapsed() < TABLE_TTL
        {
            return Ok(Some(table.clone()));
        }
        let client = self.db.client().await?;
        let Some(head) = client
            .query_opt(
                "select n.nspname::text, c.relname::text, c.relrowsecurity \
                 from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = $1",
                &[&oid],
            )
            .await
            .map_err(DbError::query("table lookup"))?
        else {
            return Ok(None);
        };
        let rows = client
            .query(
                "select a.attname::text, a.attnum, a.atttypid, format_type(a.atttypid, a.atttypmod) from pg_attribute a \
                 where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped order by a.attnum",
                &[&oid],
            )
            .await
            .map_err(DbError::query("column lookup"))?;
        let key_attnums: Vec<i16> = client
            .query(
                "select unnest(i.indkey)::int2 from pg_index i where i.indrelid = $1 and i.indisprimary",
                &[&oid],
            )
            .await
            .map_err(DbError::query("primary key lookup"))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut columns = Vec::with_capacity(rows.len());
        for row in &rows {
            let type_oid: u32 = row.get(2);
            columns.push(Column {
                name: row.get(0),
                attnum: row.get(1),
                ty: self.type_info(type_oid).await?,
                type_sql: row.get(3),
            });
        }
        let primary_key = key_attnums
            .iter()
            .filter_map(|attnum| columns.iter().position(|c| c.attnum == *attnum))
            .collect();
        let table = Arc::new(Table {
            oid,
            schema: head.get(0),
            name: head.get(1),
            columns,
            primary_key,
            rls: head.get(2),
        });
        self.tables
            .lock()
            .insert(oid, (table.clone(), Instant::now()));
        Ok(Some(table))
    }

    /// Tables of the publication: `(oid, schema, name)`.
    pub async fn published_tables(
        &self,
        publication: &str,
    ) -> Result<Vec<(u32, String, String)>, DbError> {
        let client = self.db.client().await?;
        let rows = client
            .query(
                "select format('%I.%I', schemaname, tablename)::regclass::oid, schemaname::text, tablename::text \
                 from pg_publication_tables where pubname = $1",
                &[&publication],
            )
            .await
            .map_err(DbError::query("publication tables"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Which columns of `table` (by index) `role` may SELECT: column (or table) privilege and
    /// USAGE on the table's schema, as PostgreSQL itself requires for a read. A role that does
    /// not exist may select nothing.
    pub async fn selectable(&self, role: &str, table: &Table) -> Result<ColumnMask, DbError> {
        let key = (role.to_owned(), table.oid);
        if let Some((mask, at)) = self.privileges.lock().get(&key)
            && at.elapsed() < PRIVILEGE_TTL
        {
            return Ok(mask.clone());
        }
        let client = self.db.client().await?;
        let exists = client
            .query_opt("select 1 from pg_roles where rolname = $1", &[&role])
            .await
            .map_err(DbError::query("role lookup"))?
            .is_some();
        let mut mask = vec![false; table.columns.len()];
        if exists {
            let rows = client
                .query(
                    "select a.attnum from pg_attribute a join pg_class c on c.oid = a.attrelid \
                     where a.attrelid = $2 and a.attnum > 0 and not a.attisdropped \
                     and has_schema_privilege($1, c.relnamespace, 'USAGE') \
                     and has_column_privilege($1, a.attrelid, a.attnum, 'SELECT')",
                    &[&role, &table.oid],
                )
                .await
                .map_err(DbError::query("column privileges"))?;
            for row in rows {
                let attnum: i16 = row.get(0);
                if let Some(i) = table.columns.iter().position(|c| c.attnum == attnum)
                    && let Some(slot) = mask.get_mut(i)
                {
                    *slot = true;
                }
            }
        }
        let mask = Arc::new(mask);
        self.privileges
            .lock()
            .insert(key, (mask.clone(), Instant::now()));
        Ok(mask)
    }

    /// Describes a type by oid (built-ins without a query).
    pub async fn type_info(&self, oid: u32) -> Result<TypeInfo, DbError> {
        if let Some(ty) = builtin(oid) {
            return Ok(ty);
        }
        if let Some(ty) = self.types.lock().get(&oid) {
            return Ok(ty.clone());
        }
        let client = self.db.client().await?;
        // Resolve the chain (array element / domain base) iteratively, innermost last.
        let mut chain: Vec<(u32, String, i8)> = Vec::new();
        let mut next = Some(oid);
        while let Some(current) = next.take() {
            if chain.len() > 8 || builtin(current).is_some() && !chain.is_empty() {
                chain.push((current, String::new(), 0));
                break;
            }
            let Some(row) = client
                .query_opt(
                    "select typname::text, typtype::\"char\", typelem, typbasetype, typcategory::\"char\" \
                     from pg_type where oid = $1",
                    &[&current],
                )
                .await
                .map_err(DbError::query("type lookup"))?
            else {
                chain.push((current, format!("{current}"), b'p' as i8));
                break;
            };
            let name: String = row.get(0);
            let typtype: i8 = row.get(1);
            let elem: u32 = row.get(2);
            let base: u32 = row.get(3);
            let category: i8 = row.get(4);
            let marker = if category == b'A' as i8 && elem != 0 {
                next = Some(elem);
                b'A' as i8
            } else if typtype == b'd' as i8 {
                next = Some(base);
                b'd' as i8
            } else {
                typtype
            };
            chain.push((current, name, marker));
        }
        // Fold from the innermost type outwards.
        let mut inner: Option<TypeInfo> = None;
        for (type_oid, name, marker) in chain.into_iter().rev() {
            let ty = if name.is_empty() {
                builtin(type_oid).unwrap_or_else(|| pseudo(type_oid, String::new()))
            } else {
                let kind = match marker as u8 {
                    b'A' => TypeKind::Array(Box::new(
                        inner.take().unwrap_or_else(|| pseudo(0, "unknown".into())),
                    )),
                    b'd' => TypeKind::Domain(Box::new(
                        inner.take().unwrap_or_else(|| pseudo(0, "unknown".into())),
                    )),
                    b'e' => TypeKind::Enum,
                    b'c' => TypeKind::Composite,
                    b'r' | b'm' => TypeKind::Range,
                    b'b' => TypeKind::Base,
                    _ => TypeKind::Pseudo,
                };
                TypeInfo {
                    oid: type_oid,
                    name,
                    kind,
                }
            };
            inner = Some(ty);
        }
        let ty = inner.unwrap_or_else(|| pseudo(oid, "unknown".into()));
        self.types.lock().insert(oid, ty.clone());
        Ok(ty)
    }
}

fn pseudo(oid: u32, name: String) -> TypeInfo {
    TypeInfo {
        oid,
        name,
        kind: TypeKind::Pseudo,
    }
}
