//! Delete detection by key reconciliation.
//!
//! An incremental read never sees a deleted row. To find them, the primary-key
//! sets of a copy (the replica, the warehouse) and of what it is read from
//! (the source, the replica) are compared without moving the rows: each side
//! computes a row count and a sum of a hash of the key, in the database,
//! over the whole table first (equal: nothing to do), then per range of the
//! leading key column; only ranges whose aggregates differ are split again,
//! down to ranges small enough to list their keys. A table of millions of
//! rows with a handful of deletes costs two aggregate passes over its key
//! index on each side plus a few small ranges.
//!
//! The hash is integer arithmetic both servers compute alike:
//! `h = ((k1 mod P) * 31 + (k2 mod P)) mod P …`, then `h * 48271 mod P` with
//! `P = 2^31 - 1`; every intermediate stays below 2^47.

mod canon;
mod rows;

pub use canon::{Canon, canon_mysql, canon_pg, pg_expr};
pub use rows::{
    DeepPlan, Findings, MAX_DIFFERENCES, REPAIR_BATCH, compare_replica, compare_warehouse,
    deep_plan, pg_columns,
};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use tokio_postgres::GenericClient;

use crate::config::{DeleteDetection, DeletePolicy, Strategy, TableConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::mysql::{RateLimit, SourceTable};
use crate::schema::{SourceType, ident};

/// Ranges a differing range is split into: enough that each holds about
/// [`LEAF_ROWS`] rows (keys assumed dense where the count is not known yet),
/// so scattered deletes send each differing range straight to a key listing
/// instead of another aggregate pass, within these bounds.
const MIN_BUCKETS: i128 = 64;
const MAX_BUCKETS: i128 = 1024;
/// At or below this many rows a range's keys are listed and compared.
const LEAF_ROWS: u64 = 4096;
const MODULUS: i64 = 2_147_483_647;
/// Keys per `DELETE` statement.
const DELETE_CHUNK: usize = 1000;

/// OpenDental's own deletion log, `deletedobject`, and the tables whose
/// deletions it records (by `ObjectType`): every deleted appointment, and
/// deleted provider schedules (other schedules are not logged).
const DELETION_LOG: &[(&str, i64)] = &[("appointment", 0), ("schedule", 1)];
/// How far before the last reconciliation the log is read again, for rows
/// logged by transactions that committed late.
const LOG_MARGIN_SECONDS: i64 = 3600;

/// The column a warehouse table gets in soft-delete mode.
pub const DELETED_AT: &str = "_deleted_at";

/// A primary key value (every key column is an integer).
pub type Key = Vec<i64>;

/// The key of a MySQL row whose key columns sit at `positions`; `None`
/// when a key value is not a 64-bit signed integer.
fn row_key(row: &Row, positions: &[usize]) -> Option<Key> {
    positions
        .iter()
        .map(|&i| match row.as_ref(i) {
            Some(mysql_async::Value::Int(v)) => Some(*v),
            Some(mysql_async::Value::UInt(v)) => i64::try_from(*v).ok(),
            _ => None,
        })
        .collect()
}

/// The rows of `keys` in MySQL table `table` (`columns` selected, `key`
/// among them), read with the binary protocol so values come typed, and
/// charged to `rate`; and the keys the table lacks. One statement: callers
/// pass at most [`REPAIR_CHUNK`] keys at a time.
pub async fn rows_by_key(
    conn: &mut Conn,
    (table, columns, key): (&str, &[String], &[String]),
    keys: &[Key],
    rate: Option<&RateLimit>,
) -> Result<(Vec<Row>, Vec<Key>)> {
    let positions: Vec<usize> = key
        .iter()
        .filter_map(|k| columns.iter().position(|c| c == k))
        .collect();
    let key_columns: Vec<String> = key.iter().map(|k| ident::mysql(k)).collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE {}",
        ident::mysql_list(columns.iter().map(String::as_str)),
        ident::mysql(table),
        key_condition(&key_columns, keys)
    );
    let rows: Vec<Row> = conn
        .exec(sql, ())
        .await
        .map_err(|e| Error::mysql(format!("reading rows of `{table}` by key"), e))?;
    if let Some(rate) = rate {
        rate.pay(u64::try_from(rows.len()).unwrap_or(u64::MAX))
            .await;
    }
    let found = rows
        .iter()
        .map(|r| {
            row_key(r, &positions).ok_or_else(|| {
                Error::new(
                    ErrorKind::Schema,
                    format!("`{table}`: a key read back is not a 64-bit integer"),
                )
            })
        })
        .collect::<Result<std::collections::HashSet<Key>>>()?;
    let gone = keys
        .iter()
        .filter(|k| !found.contains(*k))
        .cloned()
        .collect();
    Ok((rows, gone))
}

/// What a repair by key did to one copy of a table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Rows written again (inserted or changed).
    pub written: u64,
    /// Rows removed (or stamped deleted) because what the copy is read from lacks them.
    pub removed: u64,
}

/// Keys per statement and transaction when rows are repaired by key.
pub const REPAIR_CHUNK: usize = 1000;

/// One copy of a table whose keys are compared.
pub enum Side<'a> {
    MySql {
        conn: &'a mut Conn,
        table: String,
        /// Charged with the rows each query scans (the source is read gently).
        rate: Option<Arc<RateLimit>>,
        /// With `reconcile: rows`, the row's canonical text ([`row_text`]):
        /// its hash joins the key's in every aggregate and listing.
        row_text: Option<String>,
    },
    Pg {
        client: &'a tokio_postgres::Client,
        schema: String,
        table: String,
        /// Only rows not soft-deleted count.
        live_only: bool,
    },
}

/// A range's count and key-hash sum.
#[derive(Debug, PartialEq, Eq)]
struct Aggregate {
    count: u64,
    hash: String,
}

fn hash_expr(columns: &[String]) -> String {
    let mut h = format!("({} % {MODULUS})", columns[0]);
    for c in &columns[1..] {
        h = format!("(({h} * 31 + ({c} % {MODULUS})) % {MODULUS})");
    }
    format!("(({h} * 48271) % {MODULUS})")
}

/// A row's content as one text MySQL and MariaDB build alike from the same
/// values: each column as its length, a colon and its text (`N` for NULL),
/// comma-separated, so no two different rows read the same. `float` goes
/// through `double`, whose text is exact (a `float`'s own has six digits).
pub fn row_text(table: &SourceTable) -> String {
    let fields: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            let col = ident::mysql(&c.name);
            let value = if matches!(c.ty, SourceType::Float) {
                format!("CAST({col} AS DOUBLE)")
            } else {
                col
            };
            format!("IFNULL(CONCAT(LENGTH({value}), ':', {value}), 'N')")
        })
        .collect();
    format!("CONCAT_WS(',', {})", fields.join(", "))
}

/// 28 bits of the MD5 of a row's text, as an integer.
fn content_hash(row_text: &str) -> String {
    format!("CAST(CONV(SUBSTRING(MD5({row_text}), 1, 7), 16, 10) AS UNSIGNED)")
}

impl Side<'_> {
    fn columns(&self, key: &[String]) -> Vec<String> {
        match self {
            Side::MySql { .. } => key.iter().map(|k| ident::mysql(k)).collect(),
            Side::Pg { .. } => key
                .iter()
                .map(|k| format!("{}::bigint", ident::pg(k)))
                .collect(),
        }
    }

    fn source_clause(&self, first: &str, range: Option<(i64, i64)>) -> String {
        let (table, live) = match self {
            Side::MySql { table, .. } => (ident::mysql(table), false),
            Side::Pg {
                schema,
                table,
                live_only,
                ..
            } => (ident::pg_qualified(schema, table), *live_only),
        };
        let mut conditions = Vec::new();
        if let Some((lo, hi)) = range {
            conditions.push(format!("{first} BETWEEN {lo} AND {hi}"));
        }
        if live {
            conditions.push(format!("{} IS NULL", ident::pg(DELETED_AT)));
        }
        if conditions.is_empty() {
            format!("FROM {table}")
        } else {
            format!("FROM {table} WHERE {}", conditions.join(" AND "))
        }
    }

    fn name(&self) -> String {
        match self {
            Side::MySql { table, .. } => format!("MySQL table `{table}`"),
            Side::Pg { schema, table, .. } => format!("{schema}.{table}"),
        }
    }

    async fn rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let what = format!("reconciling the keys of {}", self.name());
        match self {
            Side::MySql { conn, .. } => {
                let rows: Vec<Row> = conn.query(sql).await.map_err(|e| Error::mysql(what, e))?;
                Ok(rows
                    .into_iter()
                    .map(|mut r| {
                        (0..r.len())
                            .map(|i| {
                                Some(crate::mysql::row_text(&mut r, i)).filter(|v| !v.is_empty())
                            })
                            .collect()
                    })
                    .collect())
            }
            Side::Pg { client, .. } => {
                let rows = client
                    .simple_query(sql)
                    .await
                    .map_err(|e| Error::postgres(what, e))?;
                Ok(rows
                    .into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                        }
                        _ => None,
                    })
                    .collect())
            }
        }
    }

    async fn charge(&self, rows: u64) {
        if let Side::MySql {
            rate: Some(rate), ..
        } = self
        {
            rate.pay(rows).await;
        }
    }

    /// The whole table's key bounds and [`Aggregate`], in one pass.
    async fn summary(&mut self, key: &[String]) -> Result<(Option<(i64, i64)>, Aggregate)> {
        let columns = self.columns(key);
        let first = &columns[0];
        let sql = format!(
            "SELECT MIN({first}), MAX({first}), COUNT(*), CAST(SUM({}) AS {}) {}",
            self.hash(&columns),
            self.text_type(),
            self.source_clause(first, None)
        );
        let rows = self.rows(&sql).await?;
        let row = rows.first();
        let value = |i: usize| {
            row.and_then(|r| r[i].as_deref())
                .and_then(|v| v.parse::<i64>().ok())
        };
        let count = value(2).and_then(|c| u64::try_from(c).ok()).unwrap_or(0);
        self.charge(count).await;
        let aggregate = Aggregate {
            count,
            hash: row.and_then(|r| r[3].clone()).unwrap_or_default(),
        };
        Ok((value(0).zip(value(1)), aggregate))
    }

    /// The hash of a row in aggregates: of its key, and under `reconcile:
    /// rows` of its content too.
    fn hash(&self, columns: &[String]) -> String {
        match self {
            Side::MySql {
                row_text: Some(text),
                ..
            } => format!(
                "(({} * 31 + {}) % {MODULUS})",
                hash_expr(columns),
                content_hash(text)
            ),
            _ => hash_expr(columns),
        }
    }

    fn text_type(&self) -> &'static str {
        match self {
            Side::MySql { .. } => "CHAR",
            Side::Pg { .. } => "text",
        }
    }

    async fn buckets(
        &mut self,
        key: &[String],
        lo: i64,
        hi: i64,
        width: i64,
    ) -> Result<HashMap<i64, Aggregate>> {
        let columns = self.columns(key);
        let first = &columns[0];
        let divide = match self {
            Side::MySql { .. } => "DIV",
            Side::Pg { .. } => "/",
        };
        let sql = format!(
            "SELECT ({first} - {lo}) {divide} {width} AS b, COUNT(*), CAST(SUM({}) AS {}) {} GROUP BY b",
            self.hash(&columns),
            self.text_type(),
            self.source_clause(first, Some((lo, hi)))
        );
        let mut out = HashMap::new();
        let mut scanned = 0;
        for row in self.rows(&sql).await? {
            let number = |i: usize| row[i].as_deref().and_then(|v| v.parse::<i64>().ok());
            let (Some(bucket), Some(count)) = (number(0), number(1)) else {
                continue;
            };
            let count = u64::try_from(count).unwrap_or(0);
            scanned += count;
            out.insert(
                bucket,
                Aggregate {
                    count,
                    hash: row[2].clone().unwrap_or_default(),
                },
            );
        }
        self.charge(scanned).await;
        Ok(out)
    }

    /// The keys in `[lo, hi]`, each with its row's content hash under
    /// `reconcile: rows` (else 0).
    async fn keys(&mut self, key: &[String], lo: i64, hi: i64) -> Result<BTreeMap<Key, u64>> {
        let columns = self.columns(key);
        let content = match self {
            Side::MySql {
                row_text: Some(text),
                ..
            } => content_hash(text),
            _ => "0".to_string(),
        };
        let sql = format!(
            "SELECT {}, {content} {}",
            columns.join(", "),
            self.source_clause(&columns[0], Some((lo, hi)))
        );
        let keys: BTreeMap<Key, u64> = self
            .rows(&sql)
            .await?
            .into_iter()
            .map(|mut r| {
                let hash = r.pop().flatten().and_then(|v| v.parse().ok()).unwrap_or(0);
                let key = r
                    .iter()
                    .map(|v| v.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0))
                    .collect();
                (key, hash)
            })
            .collect();
        self.charge(keys.len() as u64).await;
        Ok(keys)
    }
}

/// What a comparison found.
#[derive(Debug, Default)]
struct Differences {
    /// Keys the copy holds that the reference does not, in key order.
    extra: Vec<Key>,
    /// Under `reconcile: rows`: keys whose row the copy lacks or holds with
    /// other values, in key order.
    rewrite: Vec<Key>,
    /// Rows in the copy.
    copy_rows: u64,
}

/// How `copy` differs from `reference`: by keys, and by row content when
/// both sides carry a row text.
async fn differences(
    reference: &mut Side<'_>,
    copy: &mut Side<'_>,
    key: &[String],
    rows: bool,
) -> Result<Differences> {
    // One pass over each side first: most reconciliations find nothing,
    // and a whole table's aggregate costs half of one by ranges.
    let (theirs_bounds, theirs_all) = reference.summary(key).await?;
    let (ours_bounds, ours_all) = copy.summary(key).await?;
    if theirs_all == ours_all {
        return Ok(Differences {
            copy_rows: ours_all.count,
            ..Differences::default()
        });
    }
    let Some((lo, hi)) = (match (ours_bounds, theirs_bounds) {
        (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
        (Some(ours), None) => Some(ours),
        (None, Some(theirs)) if rows => Some(theirs),
        (None, _) => None,
    }) else {
        return Ok(Differences::default());
    };
    let mut found = Differences::default();
    let mut copy_rows = None;
    let mut queue = vec![(lo, hi, u64::MAX)];
    while let Some((lo, hi, count)) = queue.pop() {
        let span = i128::from(hi) - i128::from(lo) + 1;
        if count <= LEAF_ROWS || span <= MIN_BUCKETS {
            let theirs = reference.keys(key, lo, hi).await?;
            let ours = copy.keys(key, lo, hi).await?;
            copy_rows.get_or_insert(ours.len() as u64);
            found
                .extra
                .extend(ours.keys().filter(|k| !theirs.contains_key(*k)).cloned());
            if rows {
                found.rewrite.extend(
                    theirs
                        .iter()
                        .filter(|(k, hash)| ours.get(*k) != Some(hash))
                        .map(|(k, _)| k.clone()),
                );
            }
            continue;
        }
        let expected = i128::from(count).min(span);
        let buckets = (expected / i128::from(LEAF_ROWS)).clamp(MIN_BUCKETS, MAX_BUCKETS);
        let width = i64::try_from((span + buckets - 1) / buckets).unwrap_or(i64::MAX);
        let theirs = reference.buckets(key, lo, hi, width).await?;
        let ours = copy.buckets(key, lo, hi, width).await?;
        copy_rows.get_or_insert(ours.values().map(|a| a.count).sum());
        let mut differing: BTreeSet<i64> = ours
            .iter()
            .filter(|(b, agg)| theirs.get(*b) != Some(*agg))
            .map(|(b, _)| *b)
            .collect();
        if rows {
            differing.extend(theirs.keys().filter(|b| !ours.contains_key(*b)));
        }
        for bucket in differing {
            let start = i128::from(lo) + i128::from(bucket) * i128::from(width);
            let end = (start + i128::from(width) - 1).min(i128::from(hi));
            let (Ok(start), Ok(end)) = (i64::try_from(start), i64::try_from(end)) else {
                continue;
            };
            let most = ours
                .get(&bucket)
                .map_or(0, |a| a.count)
                .max(theirs.get(&bucket).map_or(0, |a| a.count));
            queue.push((start, end, most));
        }
    }
    found.extra.sort();
    found.rewrite.sort();
    found.copy_rows = copy_rows.unwrap_or(0);
    Ok(found)
}

/// The fast path between reconciliations: keys OpenDental logged in
/// `deletedobject` for `table` since shortly before the last reconciliation
/// (`since_seconds` ago) that `reference` no longer has. Empty when the
/// table's deletions are not logged or `reference` has no `deletedobject`.
async fn logged_deletions(
    reference: &mut Conn,
    table: &str,
    key: &[String],
    since_seconds: i64,
) -> Result<Vec<Key>> {
    let Some((_, object_type)) = DELETION_LOG.iter().find(|(t, _)| *t == table) else {
        return Ok(Vec::new());
    };
    let [column] = key else {
        return Ok(Vec::new());
    };
    let sql = format!(
        "SELECT DISTINCT d.`ObjectNum` FROM `deletedobject` d WHERE d.`ObjectType` = {object_type} \
         AND d.`DateTStamp` >= NOW() - INTERVAL {} SECOND \
         AND NOT EXISTS (SELECT 1 FROM {} x WHERE x.{} = d.`ObjectNum`) ORDER BY 1",
        since_seconds.max(0) + LOG_MARGIN_SECONDS,
        ident::mysql(table),
        ident::mysql(column)
    );
    match reference.query::<i64, _>(sql).await {
        Ok(keys) => Ok(keys.into_iter().map(|k| vec![k]).collect()),
        Err(e) => {
            let err = Error::mysql(format!("reading deletedobject for `{table}`"), e);
            if err.kind() == ErrorKind::Schema {
                Ok(Vec::new())
            } else {
                Err(err)
            }
        }
    }
}

/// What a reconciliation of one copy decided: keys to remove, and under
/// `reconcile: rows` keys to copy again.
#[derive(Debug, Default)]
pub struct Reconciliation {
    pub delete: Vec<Key>,
    pub rewrite: Vec<Key>,
    /// A full comparison ran (due by the table's schedule), rather than only
    /// OpenDental's deletion log.
    pub full: bool,
}

/// What to remove from `copy` this run (and copy again, under `reconcile:
/// rows`, where `copy` carries its row text and `row_text` is the
/// reference's): a full comparison when the table's policy says one is due
/// (the last `since` seconds and `runs` runs ago), else the keys
/// OpenDental's deletion log names. A removal of more than the policy's
/// share is refused unless `allowed`.
#[allow(clippy::too_many_arguments)]
pub async fn reconcile(
    reference: &mut Conn,
    rate: Option<Arc<RateLimit>>,
    copy: &mut Side<'_>,
    cfg: &TableConfig,
    key: &[String],
    (since, runs): (Option<i64>, i64),
    row_text: Option<String>,
    allowed: bool,
) -> Result<Reconciliation> {
    let (table, policy) = (cfg.name.as_str(), &cfg.deletes);
    if !due(policy, since, runs) {
        let delete = logged_deletions(reference, table, key, since.unwrap_or(0)).await?;
        return Ok(Reconciliation {
            delete,
            ..Reconciliation::default()
        });
    }
    let rows = row_text.is_some();
    let mut theirs = Side::MySql {
        conn: reference,
        table: table.to_string(),
        rate,
        row_text,
    };
    let found = differences(&mut theirs, copy, key, rows).await?;
    check_share(
        table,
        found.extra.len() as u64,
        found.copy_rows,
        policy,
        allowed,
    )?;
    Ok(Reconciliation {
        delete: found.extra,
        rewrite: found.rewrite,
        full: true,
    })
}

/// Whether a full reconciliation is due by the table's schedule.
pub fn is_due(policy: &DeletePolicy, (since, runs): (Option<i64>, i64)) -> bool {
    due(policy, since, runs)
}

/// Whether a key column's values fit the hash arithmetic on both servers:
/// a signed integer, or an unsigned one narrower than 8 bytes.
pub fn reconcilable_type(ty: &SourceType) -> bool {
    matches!(
        ty,
        SourceType::Integer {
            unsigned: false,
            ..
        } | SourceType::Integer { bytes: 1..=4, .. }
            | SourceType::TinyIntOne { .. }
    )
}

/// The key columns reconciliation can compare: every primary-key column of
/// a [`reconcilable_type`].
pub fn reconcilable_key(table: &SourceTable) -> Result<Vec<String>> {
    if table.primary_key.is_empty() {
        return Err(Error::config(format!(
            "`{}` has no primary key; reconciliation (reconcile: keys or rows) needs one (set reconcile: none)",
            table.name
        )));
    }
    for k in &table.primary_key {
        if !table.column(k).is_some_and(|c| reconcilable_type(&c.ty)) {
            return Err(Error::config(format!(
                "`{}`: key column `{k}` is not an integer; reconciliation compares integer keys only \
                 (set reconcile: none)",
                table.name
            )));
        }
    }
    Ok(table.primary_key.clone())
}

/// Refuses, before anything is copied, a table whose `reconcile:` setting
/// its key cannot serve: on the first run, not at the first reconciliation.
pub fn check_key(cfg: &TableConfig, table: &SourceTable) -> Result<()> {
    if cfg.deletes.detection == DeleteDetection::None {
        return Ok(());
    }
    reconcilable_key(table).map(drop)
}

/// Whether a reconciliation is due: never done, no schedule, or the
/// schedule's runs or hours have passed.
fn due(policy: &DeletePolicy, seconds_since: Option<i64>, runs_since: i64) -> bool {
    let Some(seconds) = seconds_since else {
        return true;
    };
    match (policy.every_runs, policy.every_hours) {
        (None, None) => true,
        (runs, hours) => {
            runs.is_some_and(|n| runs_since + 1 >= i64::from(n))
                || hours.is_some_and(|h| seconds >= i64::from(h) * 3600)
        }
    }
}

/// Whether this phase of the table reconciles at all.
pub fn applies(policy: &DeletePolicy, strategy: &Strategy) -> bool {
    policy.detection != DeleteDetection::None && matches!(strategy, Strategy::Incremental { .. })
}

/// Stops a reconciliation that would delete more than the allowed share
/// (`max_delete_share`) unless `allowed` (`--allow-mass-delete`).
pub fn check_share(
    table: &str,
    deleting: u64,
    rows: u64,
    policy: &DeletePolicy,
    allowed: bool,
) -> Result<()> {
    if allowed || deleting == 0 || (deleting as f64) <= policy.max_share * rows as f64 {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Refused,
        format!(
            "key reconciliation of `{table}` would delete {deleting} of its {rows} rows ({:.1}%), more than \
             max_delete_share {}; nothing was deleted. Check that the source is complete; if these rows \
             really were deleted, rerun with --allow-mass-delete",
            100.0 * deleting as f64 / rows.max(1) as f64,
            policy.max_share
        ),
    ))
}

/// `WHERE` condition matching `keys` on `columns` (quoted), numbers inline.
fn key_condition(columns: &[String], keys: &[Key]) -> String {
    let tuple = |k: &Key| {
        let parts: Vec<String> = k.iter().map(i64::to_string).collect();
        if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("({})", parts.join(", "))
        }
    };
    let lhs = if columns.len() == 1 {
        columns[0].clone()
    } else {
        format!("({})", columns.join(", "))
    };
    format!(
        "{lhs} IN ({})",
        keys.iter().map(tuple).collect::<Vec<_>>().join(", ")
    )
}

/// Deletes `keys` from a MySQL table; returns the rows removed.
pub async fn delete_mysql(
    conn: &mut impl Queryable,
    table: &str,
    key: &[String],
    keys: &[Key],
) -> Result<u64> {
    let columns: Vec<String> = key.iter().map(|k| ident::mysql(k)).collect();
    let mut removed = 0;
    let err = |e| Error::mysql(format!("deleting rows from replica table `{table}`"), e);
    for chunk in keys.chunks(DELETE_CHUNK) {
        let result = conn
            .query_iter(format!(
                "DELETE FROM {} WHERE {}",
                ident::mysql(table),
                key_condition(&columns, chunk)
            ))
            .await
            .map_err(err)?;
        removed += result.affected_rows();
        result.drop_result().await.map_err(err)?;
    }
    Ok(removed)
}

/// Deletes `keys` from a warehouse table, or stamps them in `_deleted_at`
/// (soft delete); returns the rows affected.
pub async fn delete_pg(
    tx: &impl GenericClient,
    schema: &str,
    table: &str,
    key: &[String],
    keys: &[Key],
    soft: bool,
) -> Result<u64> {
    let columns: Vec<String> = key.iter().map(|k| ident::pg(k)).collect();
    let target = ident::pg_qualified(schema, table);
    let mut affected = 0;
    for chunk in keys.chunks(DELETE_CHUNK) {
        let condition = key_condition(&columns, chunk);
        let sql = if soft {
            format!(
                "update {target} set {0} = now() where {condition} and {0} is null",
                ident::pg(DELETED_AT)
            )
        } else {
            format!("delete from {target} where {condition}")
        };
        affected += tx
            .execute(&sql, &[])
            .await
            .map_err(|e| Error::postgres(format!("deleting rows from {target}"), e))?;
    }
    Ok(affected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_plain_integer_arithmetic_within_bigint() {
        assert_eq!(
            hash_expr(&["`a`".into()]),
            "(((`a` % 2147483647) * 48271) % 2147483647)"
        );
        let max = (MODULUS - 1) as i128;
        assert!((max * 31 + max) < i128::from(i64::MAX));
        assert!(max * 48271 < i128::from(i64::MAX));
    }

    #[test]
    fn a_schedule_decides_when_reconciliation_is_due() {
        let every_run = DeletePolicy::default();
        assert!(due(&every_run, Some(10), 0));
        let three_runs = DeletePolicy {
            every_runs: Some(3),
            ..DeletePolicy::default()
        };
        assert!(due(&three_runs, None, 0), "never reconciled");
        assert!(!due(&three_runs, Some(10), 0));
        assert!(!due(&three_runs, Some(10), 1));
        assert!(due(&three_runs, Some(10), 2));
        let six_hours = DeletePolicy {
            every_hours: Some(6),
            ..DeletePolicy::default()
        };
        assert!(!due(&six_hours, Some(5 * 3600), 40));
        assert!(due(&six_hours, Some(6 * 3600), 0));
    }

    #[test]
    fn the_guard_refuses_mass_deletes_unless_allowed() {
        let policy = DeletePolicy {
            max_share: 0.1,
            ..DeletePolicy::default()
        };
        assert!(check_share("t", 10, 100, &policy, false).is_ok());
        let err = check_share("t", 11, 100, &policy, false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        assert!(err.to_string().contains("--allow-mass-delete"), "{err}");
        assert!(check_share("t", 100, 100, &policy, true).is_ok());
    }

    #[test]
    fn key_conditions_cover_single_and_composite_keys() {
        assert_eq!(
            key_condition(&["`a`".into()], &[vec![1], vec![5]]),
            "`a` IN (1, 5)"
        );
        assert_eq!(
            key_condition(&["a".into(), "b".into()], &[vec![1, 2], vec![3, 4]]),
            "(a, b) IN ((1, 2), (3, 4))"
        );
    }
}
