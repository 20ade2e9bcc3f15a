//! `verify`: are the replica and the warehouse what the source says?
//!
//! Counts compare row numbers in the source, the replica and the warehouse.
//! The deep check walks two copies of a table side by side in primary-key
//! order, a page at a time (memory bounded by the page), compares every value
//! in canonical form, and names the first differing keys
//! ([`crate::reconcile`] does the comparing); `--repair` rewrites them.

pub use crate::reconcile::{Canon, MAX_DIFFERENCES, canon_mysql, canon_pg, pg_expr};

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio_postgres::Client;

use crate::config::{MySqlSettings, PgSettings, Secret, TableConfig};
use crate::error::{Error, Result};
use crate::extract::ExtractContext;
use crate::load::LoadContext;
use crate::mysql as my;
use crate::reconcile::{
    DeepPlan, Findings, Repaired, compare_replica, compare_warehouse, deep_plan, pg_columns,
};
use crate::schema::ident;
use crate::{postgres as pg, tracking};

/// The databases `verify` reads: the source (replica mode), the MySQL
/// database the warehouse is loaded from, and the warehouse.
#[derive(Debug, Clone)]
pub struct VerifyContext {
    pub source: Option<MySqlSettings>,
    pub mysql: MySqlSettings,
    pub warehouse: PgSettings,
    /// The key of `mask_columns: hash`, for repairs that read the source.
    pub mask_key: Option<Secret>,
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

/// Checks tables: counts always, values with `deep` (masked columns are
/// compared between the copies only, never with the source's clear values).
pub async fn verify(
    ctx: &VerifyContext,
    tables: &[TableConfig],
    deep: bool,
) -> Result<Vec<TableCheck>> {
    let client = pg::connect(&ctx.warehouse).await?;
    tracking::check_warehouse(&client, &ctx.warehouse.schema).await?;
    let mut mysql = my::connect(&ctx.mysql).await?;
    let mut source = match &ctx.source {
        Some(s) => Some(my::connect(s).await?),
        None => None,
    };
    let schema = &ctx.warehouse.schema;
    let mut checks = Vec::with_capacity(tables.len());
    for cfg in tables {
        let table = &cfg.name;
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
            check.warehouse_rows = Some(pg_count(&client, schema, table).await?);
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
            deep_check(ctx, &client, cfg, &columns, &mut check).await?;
        }
        checks.push(check);
    }
    Ok(checks)
}

async fn deep_check(
    ctx: &VerifyContext,
    client: &Client,
    cfg: &TableConfig,
    pg_cols: &[(String, String)],
    check: &mut TableCheck,
) -> Result<()> {
    let (warehouse_plan, replica_plan) = match plans(ctx, cfg, pg_cols).await? {
        Ok(plans) => plans,
        Err(note) => {
            check.notes.push(note);
            return Ok(());
        }
    };
    let mut found = Findings::default();
    check.compared = compare_warehouse(
        (&ctx.mysql, None),
        (client, &ctx.warehouse.schema),
        &warehouse_plan,
        false,
        &mut found,
    )
    .await?;
    if let (Some(source), Some(plan)) = (&ctx.source, &replica_plan) {
        compare_replica(source, &ctx.mysql, plan, &mut found).await?;
    }
    check.differences.extend(found.described);
    Ok(())
}

/// The deep plans of a table: the warehouse against the MySQL database it
/// is loaded from, and (with a source) the replica against the source;
/// whichever side is the source leaves the masked columns out.
async fn plans(
    ctx: &VerifyContext,
    cfg: &TableConfig,
    pg_cols: &[(String, String)],
) -> Result<std::result::Result<(DeepPlan, Option<DeepPlan>), String>> {
    Ok(deep_plan(&ctx.mysql, &cfg.name, pg_cols)
        .await?
        .map(|plan| match &ctx.source {
            Some(_) => {
                let replica_plan = plan.clone().without_masked(&cfg.columns);
                (plan, Some(replica_plan))
            }
            None => (plan.without_masked(&cfg.columns), None),
        }))
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
        mask_key: ctx.mask_key.clone(),
        connections: Default::default(),
    };
    let mut repairs = Vec::with_capacity(configs.len());
    for cfg in configs {
        let mut repair = TableRepair {
            table: cfg.name.clone(),
            ..TableRepair::default()
        };
        let pg_cols = pg_columns(&client, &ctx.warehouse.schema, &cfg.name).await?;
        let (plan, replica_plan) = match plans(ctx, cfg, &pg_cols).await? {
            Ok(plans) => plans,
            Err(note) => {
                repair.note = Some(note);
                repairs.push(repair);
                continue;
            }
        };
        if let (Some(source), Some(replica_plan)) = (&ctx.source, &replica_plan) {
            let extract = ExtractContext {
                source: source.clone(),
                replica: ctx.mysql.clone(),
                rate: None,
                source_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
                replica_lock_wait: None,
                mask_key: ctx.mask_key.clone(),
            };
            loop {
                let mut found = Findings::collecting();
                compare_replica(source, &ctx.mysql, replica_plan, &mut found).await?;
                if found.keys().is_empty() {
                    break;
                }
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
            compare_warehouse(
                (&ctx.mysql, None),
                (&client, &ctx.warehouse.schema),
                &plan,
                false,
                &mut found,
            )
            .await?;
            if found.keys().is_empty() {
                break;
            }
            let rows = pg_count(&client, &ctx.warehouse.schema, &cfg.name).await?;
            check_removal(cfg, &found, Some(rows), allow_mass_delete)?;
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

/// Rows in warehouse table `schema.table`.
async fn pg_count(client: &Client, schema: &str, table: &str) -> Result<u64> {
    let target = ident::pg_qualified(schema, table);
    let n: i64 = client
        .query_one(&format!("select count(*) from {target}"), &[])
        .await
        .map_err(|e| Error::postgres(format!("counting the rows of {target}"), e))?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
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
