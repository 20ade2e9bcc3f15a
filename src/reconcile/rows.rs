//! Row by row comparison of two copies of a table: both walked side by side
//! in primary-key order, a page at a time (memory bounded by the page),
//! every value compared in canonical form ([`super::canon`]). It names the
//! first differing keys (`verify --deep`) or collects them all for a repair
//! (`verify --deep --repair`, and `reconcile: rows` on the warehouse hop).

use std::collections::VecDeque;
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};
use tokio_postgres::Client;

use super::Key;
use super::canon::{Canon, canon_mysql, canon_pg, pg_expr};
use crate::config::{ColumnPolicy, MySqlSettings};
use crate::error::{Error, Result};
use crate::mysql::{self as my, RateLimit, ReadRange, page_query};
use crate::schema::{SourceType, ident};

/// Rows fetched per side and page.
const PAGE_ROWS: u32 = 10_000;
/// Differences described per table before a check stops looking.
pub const MAX_DIFFERENCES: usize = 10;

/// A warehouse table's columns and their `format_type`, in order.
pub async fn pg_columns(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "select a.attname::text, format_type(a.atttypid, a.atttypmod) from pg_attribute a \
             join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2 and a.attnum > 0 and not a.attisdropped order by a.attnum",
            &[&schema, &table],
        )
        .await
        .map_err(|e| Error::postgres(format!("reading the columns of {schema}.{table}"), e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn int_key(v: &Value) -> Option<i128> {
    match v {
        Value::Int(i) => Some((*i).into()),
        Value::UInt(u) => Some((*u).into()),
        _ => None,
    }
}

/// One side of a deep check: rows in key order, fetched a page at a time.
struct MySqlSide {
    conn: Conn,
    table: String,
    columns: Vec<String>,
    key: Vec<String>,
    key_positions: Vec<usize>,
    cursor: Option<Vec<Value>>,
    buffer: VecDeque<(Vec<i128>, Vec<Value>)>,
    done: bool,
    /// Charged with each page (a source is read within the run's budget).
    rate: Option<Arc<RateLimit>>,
}

impl MySqlSide {
    async fn next(&mut self) -> Result<Option<(Vec<i128>, Vec<Value>)>> {
        if self.buffer.is_empty() && !self.done {
            let (sql, params) = page_query(
                &self.table,
                &self.columns,
                &self.key,
                &ReadRange::All,
                self.cursor.as_deref(),
                PAGE_ROWS,
            );
            let rows: Vec<Row> = self.conn.exec(sql, params).await.map_err(|e| {
                Error::mysql(format!("reading `{}` for verification", self.table), e)
            })?;
            self.done = rows.len() < usize::try_from(PAGE_ROWS).unwrap_or(usize::MAX);
            if let Some(rate) = &self.rate {
                rate.pay(u64::try_from(rows.len()).unwrap_or(u64::MAX))
                    .await;
            }
            for row in rows {
                let values = row.unwrap();
                self.cursor = Some(
                    self.key_positions
                        .iter()
                        .map(|&i| values[i].clone())
                        .collect(),
                );
                let key = self
                    .key_positions
                    .iter()
                    .filter_map(|&i| int_key(&values[i]))
                    .collect();
                self.buffer.push_back((key, values));
            }
        }
        Ok(self.buffer.pop_front())
    }
}

struct PgSide<'a> {
    client: &'a Client,
    select: String,
    key_positions: Vec<usize>,
    key_len: usize,
    cursor: Option<Vec<i64>>,
    types: Vec<String>,
    buffer: VecDeque<(Vec<i128>, Vec<Canon>)>,
    done: bool,
    from: String,
    /// Which rows count (`true`, or only those not soft-deleted).
    filter: String,
    order: String,
    key_list: String,
}

impl PgSide<'_> {
    async fn next(&mut self) -> Result<Option<(Vec<i128>, Vec<Canon>)>> {
        if self.buffer.is_empty() && !self.done {
            let rows = match &self.cursor {
                None => {
                    let sql = format!(
                        "select {} from {} where {} order by {} limit {PAGE_ROWS}",
                        self.select, self.from, self.filter, self.order
                    );
                    self.client.query(&sql, &[]).await
                }
                Some(cursor) => {
                    let marks = (1..=self.key_len)
                        .map(|i| format!("${i}::int8"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let sql = format!(
                        "select {} from {} where {} and ({}) > ({marks}) order by {} limit {PAGE_ROWS}",
                        self.select, self.from, self.filter, self.key_list, self.order
                    );
                    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = cursor
                        .iter()
                        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    self.client.query(&sql, &params).await
                }
            }
            .map_err(|e| Error::postgres(format!("reading {} for verification", self.from), e))?;
            self.done = rows.len() < usize::try_from(PAGE_ROWS).unwrap_or(usize::MAX);
            for row in &rows {
                let values: Vec<Canon> = self
                    .types
                    .iter()
                    .enumerate()
                    .map(|(i, ty)| canon_pg(row, i, ty))
                    .collect();
                let key: Vec<i128> = self
                    .key_positions
                    .iter()
                    .filter_map(|&i| match values[i] {
                        Canon::Int(k) => Some(k),
                        _ => None,
                    })
                    .collect();
                self.cursor = Some(
                    key.iter()
                        .map(|k| i64::try_from(*k).unwrap_or(i64::MAX))
                        .collect(),
                );
                self.buffer.push_back((key, values));
            }
        }
        Ok(self.buffer.pop_front())
    }
}

fn key_text(names: &[String], key: &[i128]) -> String {
    names
        .iter()
        .zip(key)
        .map(|(n, k)| format!("{n}={k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Differing keys a repair collects per pass before it writes them: the
/// keys stay in memory (16 bytes or so each), the rows do not.
pub const REPAIR_BATCH: usize = 50_000;

/// What a deep comparison of two copies found: up to [`MAX_DIFFERENCES`]
/// described, and (for a repair) the differing keys themselves.
#[derive(Debug, Default)]
pub struct Findings {
    pub described: Vec<String>,
    /// Keep the keys: rows to write again into the second copy (changed,
    /// or missing there) and rows to remove from it (only there).
    collect: bool,
    pub rewrite: Vec<Key>,
    pub remove: Vec<Key>,
}

impl Findings {
    /// Findings that keep every differing key (up to [`REPAIR_BATCH`]).
    pub fn collecting() -> Findings {
        Findings {
            collect: true,
            ..Findings::default()
        }
    }

    /// Whether the comparison should stop here (and a repair write what it has).
    pub fn full(&self) -> bool {
        if self.collect {
            self.rewrite.len() + self.remove.len() >= REPAIR_BATCH
        } else {
            self.described.len() >= MAX_DIFFERENCES
        }
    }

    fn note(&mut self, key: &[i128], text: String, remove: bool) {
        if self.described.len() < MAX_DIFFERENCES {
            self.described.push(text);
        }
        if self.collect {
            let key: Key = key
                .iter()
                .map(|k| i64::try_from(*k).unwrap_or(i64::MAX))
                .collect();
            if remove {
                self.remove.push(key);
            } else {
                self.rewrite.push(key);
            }
        }
    }

    /// Every differing key, to write again or remove.
    pub fn keys(&self) -> Vec<Key> {
        self.rewrite.iter().chain(&self.remove).cloned().collect()
    }
}

/// Walks two sorted sides, comparing rows with equal keys, and records
/// what differs in `found` until it is full. Returns the rows compared.
async fn merge<A, B, FA, FB, Eq>(
    mut next_a: FA,
    mut next_b: FB,
    key_names: &[String],
    labels: (&str, &str),
    mut differ: Eq,
    found: &mut Findings,
) -> Result<u64>
where
    FA: AsyncNext<A>,
    FB: AsyncNext<B>,
    Eq: FnMut(&A, &B) -> Option<String>,
{
    let mut a = next_a.next().await?;
    let mut b = next_b.next().await?;
    let mut compared = 0;
    while !found.full() {
        // Which side is behind: the first (its row is missing in the
        // second), the second (its row is only there), or neither.
        let behind = match (&a, &b) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match (behind, &a, &b) {
            (std::cmp::Ordering::Equal, Some((ka, va)), Some((_, vb))) => {
                compared += 1;
                if let Some(what) = differ(va, vb) {
                    found.note(
                        ka,
                        format!("key {}: {what}", key_text(key_names, ka)),
                        false,
                    );
                }
                a = next_a.next().await?;
                b = next_b.next().await?;
            }
            (std::cmp::Ordering::Less, Some((ka, _)), _) => {
                let text = format!(
                    "key {}: missing in the {}",
                    key_text(key_names, ka),
                    labels.1
                );
                found.note(ka, text, false);
                a = next_a.next().await?;
            }
            (_, _, Some((kb, _))) => {
                let text = format!(
                    "key {}: only in the {} (not in the {})",
                    key_text(key_names, kb),
                    labels.1,
                    labels.0
                );
                found.note(kb, text, true);
                b = next_b.next().await?;
            }
            (_, _, None) => break,
        }
    }
    Ok(compared)
}

/// A source of key-ordered rows.
trait AsyncNext<T> {
    async fn next(&mut self) -> Result<Option<(Vec<i128>, T)>>;
}

impl AsyncNext<Vec<Value>> for &mut MySqlSide {
    async fn next(&mut self) -> Result<Option<(Vec<i128>, Vec<Value>)>> {
        MySqlSide::next(self).await
    }
}

impl AsyncNext<Vec<Canon>> for &mut PgSide<'_> {
    async fn next(&mut self) -> Result<Option<(Vec<i128>, Vec<Canon>)>> {
        PgSide::next(self).await
    }
}

/// What a deep comparison of one table works from: its key (signed
/// integers) and the columns both the MySQL copy and the warehouse have.
#[derive(Clone)]
pub struct DeepPlan {
    table: String,
    key: Vec<String>,
    /// Shared columns with their warehouse `format_type`.
    shared: Vec<(String, String)>,
    names: Vec<String>,
}

/// The plan of a deep comparison, or `None` (with the reason) when the
/// table's key is not made of signed integers.
pub async fn deep_plan(
    mysql: &MySqlSettings,
    table: &str,
    pg_cols: &[(String, String)],
) -> Result<std::result::Result<DeepPlan, String>> {
    let mut conn = my::connect(mysql).await?;
    let described = my::describe_table(&mut conn, &mysql.database, table).await?;
    let key = described.primary_key.clone();
    let int_keys = !key.is_empty()
        && key.iter().all(|k| {
            matches!(
                described.column(k).map(|c| &c.ty),
                Some(
                    SourceType::Integer { bytes: 1..=4, .. }
                        | SourceType::Integer {
                            unsigned: false,
                            ..
                        }
                )
            )
        });
    if !int_keys {
        return Ok(Err(
            "no signed-integer primary key: compared by counts only".to_string(),
        ));
    }
    let shared: Vec<(String, String)> = pg_cols
        .iter()
        .filter(|(n, _)| described.column(n).is_some())
        .cloned()
        .collect();
    let names = shared.iter().map(|(n, _)| n.clone()).collect();
    Ok(Ok(DeepPlan {
        table: table.to_string(),
        key,
        shared,
        names,
    }))
}

impl DeepPlan {
    /// The plan without the columns `policy` masks: the source holds their
    /// clear values and every copy the masked ones, so against the source
    /// they differ by design.
    pub fn without_masked(mut self, policy: &ColumnPolicy) -> DeepPlan {
        self.shared
            .retain(|(n, _)| !policy.masks(n) || self.key.contains(n));
        self.names
            .retain(|n| !policy.masks(n) || self.key.contains(n));
        self
    }

    fn mysql_side(&self, conn: Conn, rate: Option<Arc<RateLimit>>) -> MySqlSide {
        MySqlSide {
            conn,
            rate,
            table: self.table.clone(),
            key_positions: self
                .key
                .iter()
                .filter_map(|k| self.names.iter().position(|n| n == k))
                .collect(),
            columns: self.names.clone(),
            key: self.key.clone(),
            cursor: None,
            buffer: VecDeque::new(),
            done: false,
        }
    }
}

/// Compares warehouse schema `schema` with the MySQL copy it is loaded
/// from (with `live_only`, the warehouse rows not soft-deleted), reading
/// MySQL within `rate` (direct mode reads the source); returns the rows
/// compared.
pub async fn compare_warehouse(
    (mysql, rate): (&MySqlSettings, Option<Arc<RateLimit>>),
    (client, schema): (&Client, &str),
    plan: &DeepPlan,
    live_only: bool,
    found: &mut Findings,
) -> Result<u64> {
    let mut mysql_side = plan.mysql_side(my::connect(mysql).await?, rate);
    let key = &plan.key;
    let mut pg_side = PgSide {
        client,
        select: plan
            .shared
            .iter()
            .map(|(n, ty)| pg_expr(&ident::pg(n), ty))
            .collect::<Vec<_>>()
            .join(", "),
        key_positions: mysql_side.key_positions.clone(),
        key_len: key.len(),
        cursor: None,
        types: plan.shared.iter().map(|(_, ty)| ty.clone()).collect(),
        buffer: VecDeque::new(),
        done: false,
        from: ident::pg_qualified(schema, &plan.table),
        filter: if live_only {
            format!("{} is null", ident::pg(super::DELETED_AT))
        } else {
            "true".to_string()
        },
        order: ident::pg_list(key.iter().map(String::as_str)),
        key_list: ident::pg_list(key.iter().map(String::as_str)),
    };
    let types: Vec<String> = plan.shared.iter().map(|(_, ty)| ty.clone()).collect();
    let names = &plan.names;
    let differ = |a: &Vec<Value>, b: &Vec<Canon>| {
        a.iter()
            .zip(b)
            .zip(names.iter().zip(&types))
            .find_map(|((va, vb), (name, ty))| {
                let ca = canon_mysql(va, ty);
                (ca != *vb).then(|| {
                    format!("column `{name}` differs ({ca} in MySQL, {vb} in the warehouse)")
                })
            })
    };
    merge(
        &mut mysql_side,
        &mut pg_side,
        key,
        ("MySQL copy", "warehouse"),
        differ,
        found,
    )
    .await
}

/// Compares the replica with the source.
pub async fn compare_replica(
    source: &MySqlSettings,
    replica: &MySqlSettings,
    plan: &DeepPlan,
    found: &mut Findings,
) -> Result<u64> {
    let mut source_side = plan.mysql_side(my::connect(source).await?, None);
    let mut replica_side = plan.mysql_side(my::connect(replica).await?, None);
    let names = &plan.names;
    let same = |a: &Vec<Value>, b: &Vec<Value>| {
        a.iter().zip(b).zip(names).find_map(|((va, vb), name)| {
            (va != vb).then(|| format!("column `{name}` differs between source and replica"))
        })
    };
    merge(
        &mut source_side,
        &mut replica_side,
        &plan.key,
        ("source", "replica"),
        same,
        found,
    )
    .await
}
