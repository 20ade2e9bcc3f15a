//! `verify`: are the replica and the warehouse what the source says?
//!
//! Counts compare row numbers in the source, the replica and the warehouse.
//! The deep check walks two copies of a table side by side in primary-key
//! order, a page at a time (memory bounded by the page), compares every value
//! in canonical form ([`canon`]), and names the first differing keys.

mod canon;

pub use canon::{Canon, canon_mysql, canon_pg, pg_expr};

use std::collections::VecDeque;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};
use tokio_postgres::Client;

use crate::config::{MySqlSettings, PgSettings, TableConfig};
use crate::error::{Error, Result};
use crate::extract::ExtractContext;
use crate::load::LoadContext;
use crate::mysql::{self as my, ReadRange, page_query};
use crate::reconcile::{Key, Repaired};
use crate::schema::{SourceType, ident};
use crate::{postgres as pg, tracking};

/// Rows fetched per side and page in the deep check.
const PAGE_ROWS: u32 = 10_000;
/// Differences named per table before the deep check stops looking.
pub const MAX_DIFFERENCES: usize = 10;

/// The databases `verify` reads: the source (replica mode), the MySQL
/// database the warehouse is loaded from, and the warehouse.
#[derive(Debug, Clone)]
pub struct VerifyContext {
    pub source: Option<MySqlSettings>,
    pub mysql: MySqlSettings,
    pub warehouse: PgSettings,
}

/// What `verify` found for one table.
#[derive(Debug, Clone, Default)]
pub struct TableCheck {
    pub table: String,
    pub source_rows: Option<u64>,
    pub mysql_rows: Option<u64>,
    pub warehouse_rows: Option<u64>,
    /// Rows compared value by value (deep).
    pub compared: u64,
    pub differences: Vec<String>,
    pub notes: Vec<String>,
}

impl TableCheck {
    /// Whether every count agrees and the deep check found nothing.
    pub fn is_clean(&self) -> bool {
        let counts = [self.source_rows, self.mysql_rows, self.warehouse_rows];
        let present: Vec<u64> = counts.iter().flatten().copied().collect();
        self.differences.is_empty()
            && self.mysql_rows.is_some()
            && self.warehouse_rows.is_some()
            && present.windows(2).all(|w| w[0] == w[1])
    }
}

async fn mysql_count(conn: &mut Conn, database: &str, table: &str) -> Result<Option<u64>> {
    let exists: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (database, table),
        )
        .await
        .map_err(|e| Error::mysql(format!("looking for `{table}`"), e))?;
    if exists.unwrap_or(0) == 0 {
        return Ok(None);
    }
    let n: Option<u64> = conn
        .query_first(format!("SELECT COUNT(*) FROM {}", ident::mysql(table)))
        .await
        .map_err(|e| Error::mysql(format!("counting the rows of `{table}`"), e))?;
    Ok(n)
}

async fn pg_columns(client: &Client, schema: &str, table: &str) -> Result<Vec<(String, String)>> {
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
    order: String,
    key_list: String,
}

impl PgSide<'_> {
    async fn next(&mut self) -> Result<Option<(Vec<i128>, Vec<Canon>)>> {
        if self.buffer.is_empty() && !self.done {
            let rows = match &self.cursor {
                None => {
                    let sql = format!(
                        "select {} from {} order by {} limit {PAGE_ROWS}",
                        self.select, self.from, self.order
                    );
                    self.client.query(&sql, &[]).await
                }
                Some(cursor) => {
                    let marks = (1..=self.key_len)
                        .map(|i| format!("${i}::int8"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let sql = format!(
                        "select {} from {} where ({}) > ({marks}) order by {} limit {PAGE_ROWS}",
                        self.select, self.from, self.key_list, self.order
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
const REPAIR_BATCH: usize = 50_000;

/// What a deep comparison of two copies found: up to [`MAX_DIFFERENCES`]
/// described, and (for a repair) the differing keys themselves.
#[derive(Debug, Default)]
struct Findings {
    described: Vec<String>,
    /// Keep the keys: rows to write again into the second copy (changed,
    /// or missing there) and rows to remove from it (only there).
    collect: bool,
    rewrite: Vec<Key>,
    remove: Vec<Key>,
}

impl Findings {
    fn collecting() -> Findings {
        Findings {
            collect: true,
            ..Findings::default()
        }
    }

    /// Whether the comparison should stop here (and a repair write what it has).
    fn full(&self) -> bool {
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
    fn keys(&self) -> Vec<Key> {
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
        match (&a, &b) {
            (None, None) => break,
            (Some((ka, va)), Some((kb, vb))) if ka == kb => {
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
            (Some((ka, _)), Some((kb, _))) if ka < kb => {
                let text = format!(
                    "key {}: missing in the {}",
                    key_text(key_names, ka),
                    labels.1
                );
                found.note(ka, text, false);
                a = next_a.next().await?;
            }
            (Some((ka, _)), None) => {
                let text = format!(
                    "key {}: missing in the {}",
                    key_text(key_names, ka),
                    labels.1
                );
                found.note(ka, text, false);
                a = next_a.next().await?;
            }
            (_, Some((kb, _))) => {
                let text = format!(
                    "key {}: only in the {} (not in the {})",
                    key_text(key_names, kb),
                    labels.1,
                    labels.0
                );
                found.note(kb, text, true);
                b = next_b.next().await?;
            }
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

/// Checks tables: counts always, values with `deep`.
pub async fn verify(ctx: &VerifyContext, tables: &[String], deep: bool) -> Result<Vec<TableCheck>> {
    let client = pg::connect(&ctx.warehouse).await?;
    tracking::check_warehouse(&client, &ctx.warehouse.schema).await?;
    let mut mysql = my::connect(&ctx.mysql).await?;
    let mut source = match &ctx.source {
        Some(s) => Some(my::connect(s).await?),
        None => None,
    };
    let schema = &ctx.warehouse.schema;
    let mut checks = Vec::with_capacity(tables.len());
    for table in tables {
        let mut check = TableCheck {
            table: table.clone(),
            ..TableCheck::default()
        };
        check.mysql_rows = mysql_count(&mut mysql, &ctx.mysql.database, table).await?;
        if let (Some(conn), Some(s)) = (source.as_mut(), &ctx.source) {
            check.source_rows = mysql_count(conn, &s.database, table).await?;
        }
        let columns = pg_columns(&client, schema, table).await?;
        if !columns.is_empty() {
            let n: i64 = client
                .query_one(
                    &format!(
                        "select count(*) from {}",
                        ident::pg_qualified(schema, table)
                    ),
                    &[],
                )
                .await
                .map_err(|e| Error::postgres(format!("counting the rows of {schema}.{table}"), e))?
                .get(0);
            check.warehouse_rows = u64::try_from(n).ok();
        }
        if check.mysql_rows.is_none() {
            check.differences.push(format!(
                "`{table}` is missing in {}",
                my::describe(&ctx.mysql)
            ));
        }
        if check.warehouse_rows.is_none() {
            check
                .differences
                .push(format!("{schema}.{table} is missing in the warehouse"));
        }
        if deep && check.mysql_rows.is_some() && check.warehouse_rows.is_some() {
            deep_check(ctx, &client, table, &columns, &mut check).await?;
        }
        checks.push(check);
    }
    Ok(checks)
}

/// What a deep comparison of one table works from: its key (signed
/// integers) and the columns both the MySQL copy and the warehouse have.
struct DeepPlan {
    table: String,
    key: Vec<String>,
    /// Shared columns with their warehouse `format_type`.
    shared: Vec<(String, String)>,
    names: Vec<String>,
}

/// The plan of a deep comparison, or `None` (with the reason) when the
/// table's key is not made of signed integers.
async fn deep_plan(
    ctx: &VerifyContext,
    table: &str,
    pg_cols: &[(String, String)],
) -> Result<std::result::Result<DeepPlan, String>> {
    let mut conn = my::connect(&ctx.mysql).await?;
    let described = my::describe_table(&mut conn, &ctx.mysql.database, table).await?;
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
    fn mysql_side(&self, conn: Conn) -> MySqlSide {
        MySqlSide {
            conn,
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

/// Compares the warehouse with the MySQL copy it is loaded from; returns
/// the rows compared.
async fn compare_warehouse(
    ctx: &VerifyContext,
    client: &Client,
    plan: &DeepPlan,
    found: &mut Findings,
) -> Result<u64> {
    let mut mysql_side = plan.mysql_side(my::connect(&ctx.mysql).await?);
    let schema = &ctx.warehouse.schema;
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
async fn compare_replica(
    source: &MySqlSettings,
    replica: &MySqlSettings,
    plan: &DeepPlan,
    found: &mut Findings,
) -> Result<u64> {
    let mut source_side = plan.mysql_side(my::connect(source).await?);
    let mut replica_side = plan.mysql_side(my::connect(replica).await?);
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

async fn deep_check(
    ctx: &VerifyContext,
    client: &Client,
    table: &str,
    pg_cols: &[(String, String)],
    check: &mut TableCheck,
) -> Result<()> {
    let plan = match deep_plan(ctx, table, pg_cols).await? {
        Ok(plan) => plan,
        Err(note) => {
            check.notes.push(note);
            return Ok(());
        }
    };
    let mut found = Findings::default();
    check.compared = compare_warehouse(ctx, client, &plan, &mut found).await?;
    if let Some(source) = &ctx.source {
        compare_replica(source, &ctx.mysql, &plan, &mut found).await?;
    }
    check.differences.extend(found.described);
    Ok(())
}

/// What `verify --repair` did to one table.
#[derive(Debug, Clone, Default)]
pub struct TableRepair {
    pub table: String,
    /// Rows copied again into the replica, and removed from it.
    pub replica: Repaired,
    /// Rows loaded again into the warehouse, and removed from it.
    pub warehouse: Repaired,
    /// Why the table was not compared row by row, when it was not.
    pub note: Option<String>,
}

/// Repairs exactly the rows a deep comparison finds different: first the
/// replica from the source (when there is one), then the warehouse from
/// the MySQL copy, each in passes of up to [`REPAIR_BATCH`] keys until a
/// pass finds nothing more. Rows that match are never written. Removing
/// more than a table's `max_delete_share` is refused unless
/// `allow_mass_delete`.
pub async fn repair(
    ctx: &VerifyContext,
    configs: &[TableConfig],
    allow_mass_delete: bool,
) -> Result<Vec<TableRepair>> {
    let client = pg::connect(&ctx.warehouse).await?;
    tracking::check_warehouse(&client, &ctx.warehouse.schema).await?;
    let load = LoadContext {
        replica: ctx.mysql.clone(),
        warehouse: ctx.warehouse.clone(),
        rate: None,
        capped_by_copy: ctx.source.is_some(),
    };
    let mut repairs = Vec::with_capacity(configs.len());
    for cfg in configs {
        let mut repair = TableRepair {
            table: cfg.name.clone(),
            ..TableRepair::default()
        };
        let pg_cols = pg_columns(&client, &ctx.warehouse.schema, &cfg.name).await?;
        let plan = match deep_plan(ctx, &cfg.name, &pg_cols).await? {
            Ok(plan) => plan,
            Err(note) => {
                repair.note = Some(note);
                repairs.push(repair);
                continue;
            }
        };
        if let Some(source) = &ctx.source {
            let extract = ExtractContext {
                source: source.clone(),
                replica: ctx.mysql.clone(),
                rate: None,
                source_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
                replica_lock_wait: None,
            };
            loop {
                let mut found = Findings::collecting();
                compare_replica(source, &ctx.mysql, &plan, &mut found).await?;
                let mut mysql = my::connect(&ctx.mysql).await?;
                let rows = mysql_count(&mut mysql, &ctx.mysql.database, &cfg.name).await?;
                check_removal(cfg, &found, rows, allow_mass_delete)?;
                let done = crate::extract::recopy_keys(&extract, cfg, &found.keys()).await?;
                repair.replica.written += done.written;
                repair.replica.removed += done.removed;
                if !found.full() {
                    break;
                }
            }
        }
        loop {
            let mut found = Findings::collecting();
            compare_warehouse(ctx, &client, &plan, &mut found).await?;
            let target = ident::pg_qualified(&ctx.warehouse.schema, &cfg.name);
            let rows: i64 = client
                .query_one(&format!("select count(*) from {target}"), &[])
                .await
                .map_err(|e| Error::postgres(format!("counting the rows of {target}"), e))?
                .get(0);
            check_removal(cfg, &found, u64::try_from(rows).ok(), allow_mass_delete)?;
            let done = crate::load::reload_keys(&load, cfg, &found.keys()).await?;
            repair.warehouse.written += done.written;
            repair.warehouse.removed += done.removed;
            if !found.full() {
                break;
            }
        }
        repairs.push(repair);
    }
    Ok(repairs)
}

/// The mass-delete guard of a repair: removing more than the table's share
/// is refused (nothing is written) unless allowed.
fn check_removal(
    cfg: &TableConfig,
    found: &Findings,
    rows: Option<u64>,
    allow_mass_delete: bool,
) -> Result<()> {
    let removing = u64::try_from(found.remove.len()).unwrap_or(u64::MAX);
    crate::reconcile::check_share(
        &cfg.name,
        removing,
        rows.unwrap_or(0),
        &cfg.deletes,
        allow_mass_delete,
    )
}

/// The verification as a table: counts per database, rows compared (deep),
/// status, and each difference and note under its table.
pub fn render(checks: &[TableCheck], deep: bool) -> String {
    use std::fmt::Write as _;
    let show = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:>12} {:>12} {:>12} {:>12}  status",
        "table", "source", "mysql", "warehouse", "compared"
    );
    for c in checks {
        let _ = writeln!(
            out,
            "{:<28} {:>12} {:>12} {:>12} {:>12}  {}",
            c.table,
            show(c.source_rows),
            show(c.mysql_rows),
            show(c.warehouse_rows),
            if deep {
                c.compared.to_string()
            } else {
                "-".into()
            },
            if c.is_clean() { "ok" } else { "DIFFERS" }
        );
        for d in &c.differences {
            let _ = writeln!(out, "    {d}");
        }
        for n in &c.notes {
            let _ = writeln!(out, "    note: {n}");
        }
    }
    out
}
