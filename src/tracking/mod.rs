//! Tracking tables: their DDL (warehouse and replica) and the store behind
//! one interface.
//!
//! The old system's tables keep their columns so existing dbt models and
//! queries keep working; this tool only adds. `etl_load_watermark` holds one
//! row per watermark column (the value, and the key of the last row read at
//! that value, for operators: a read starts at the value itself, inclusive,
//! so rows tied on it are read again rather than skipped); `etl_run_history`
//! one row per table per phase per run.

use std::collections::HashMap;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio_postgres::{Client, GenericClient};

use crate::error::{Error, ErrorKind, Result};
use crate::schema::ident;
use crate::stamps::Recorded;

/// Tracking tables in the warehouse, in creation order.
pub const WAREHOUSE_TABLES: [&str; 4] = [
    "etl_load_status",
    "etl_transform_status",
    "etl_load_watermark",
    "etl_run_history",
];

/// The column of `etl_load_status` added last: tracking tables without it
/// were made by an earlier version.
const NEWEST_WAREHOUSE_COLUMN: &str = "rows_loaded_total";

/// The column of `etl_run_history` added last, for the same check.
const NEWEST_HISTORY_COLUMN: &str = "schedule_name";

/// What started a run, recorded with each of its run-history rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOrigin {
    pub run_id: String,
    /// `manual` (a person or an outside scheduler ran the command),
    /// `scheduler` (a schedule of `serve`) or `api` (`POST /api/runs`).
    pub triggered_by: &'static str,
    /// The schedule's name, for `scheduler` runs.
    pub schedule: Option<String>,
}

impl RunOrigin {
    /// A run typed or called from outside: `run`, the demo, a group.
    pub fn manual(run_id: String) -> RunOrigin {
        RunOrigin {
            run_id,
            triggered_by: "manual",
            schedule: None,
        }
    }
}

fn warehouse_ddl(schema: &str) -> Vec<String> {
    let t = |name: &str| ident::pg_qualified(schema, name);
    vec![
        format!("create schema if not exists {}", ident::pg(schema)),
        format!(
            "create table if not exists {} (
                id serial primary key,
                table_name varchar(255) not null unique,
                last_loaded timestamp not null default '1970-01-01 00:00:01',
                last_primary_value varchar(255),
                primary_column_name varchar(255),
                rows_loaded bigint default 0,
                load_status varchar(50) default 'pending',
                _loaded_at timestamp default current_timestamp)",
            t("etl_load_status")
        ),
        format!(
            "alter table {}
                add column if not exists _created_at timestamp default current_timestamp,
                add column if not exists _updated_at timestamp default current_timestamp,
                add column if not exists last_strategy varchar(20),
                add column if not exists last_error text,
                add column if not exists last_run_id varchar(64),
                add column if not exists last_reconciled timestamp,
                add column if not exists runs_since_reconcile integer not null default 0,
                add column if not exists source_checksum varchar(20),
                add column if not exists column_policy text,
                add column if not exists window_fingerprint text,
                add column if not exists unchanged_token varchar(64),
                add column if not exists unchanged_at timestamptz,
                add column if not exists keys_through varchar(40),
                add column if not exists rows_loaded_total bigint not null default 0",
            t("etl_load_status")
        ),
        format!(
            "create table if not exists {} (
                id serial primary key,
                table_name varchar(255) not null unique,
                last_transformed timestamp not null default '1970-01-01 00:00:01',
                last_primary_value varchar(255),
                primary_column_name varchar(255),
                rows_transformed bigint default 0,
                transform_status varchar(50) default 'pending',
                _transformed_at timestamp default current_timestamp,
                _created_at timestamp default current_timestamp,
                _updated_at timestamp default current_timestamp)",
            t("etl_transform_status")
        ),
        format!(
            "create table if not exists {} (
                table_name varchar(255) not null,
                column_name varchar(255) not null,
                watermark_value text not null,
                watermark_key text,
                updated_at timestamptz not null default now(),
                primary key (table_name, column_name))",
            t("etl_load_watermark")
        ),
        format!(
            "alter table {} add column if not exists run_started_at timestamp",
            t("etl_load_watermark")
        ),
        format!(
            "create table if not exists {} (
                id bigserial primary key,
                run_id varchar(64) not null,
                table_name varchar(255) not null,
                phase varchar(20) not null,
                started_at timestamptz not null default now(),
                finished_at timestamptz,
                status varchar(20) not null,
                strategy varchar(20),
                strategy_reason text,
                rows_read bigint not null default 0,
                rows_inserted bigint not null default 0,
                rows_updated bigint not null default 0,
                rows_deleted bigint not null default 0,
                watermark_start text,
                watermark_end text,
                zero_dates jsonb,
                warnings jsonb,
                error text)",
            t("etl_run_history")
        ),
        format!(
            "create index if not exists etl_run_history_table_started on {} (table_name, started_at)",
            t("etl_run_history")
        ),
        format!(
            "alter table {} add column if not exists rows_repaired bigint not null default 0, \
                add column if not exists triggered_by varchar(20) not null default 'manual', \
                add column if not exists schedule_name text",
            t("etl_run_history")
        ),
    ]
}

const REPLICA_DDL: &str = "CREATE TABLE IF NOT EXISTS `etl_copy_status` (
    `id` int NOT NULL AUTO_INCREMENT PRIMARY KEY,
    `table_name` varchar(255) NOT NULL UNIQUE,
    `last_copied` datetime NOT NULL DEFAULT '1970-01-01 00:00:01',
    `last_primary_value` varchar(255) NULL,
    `primary_column_name` varchar(255) NULL,
    `rows_copied` bigint DEFAULT 0,
    `copy_status` varchar(50) DEFAULT 'pending',
    `_created_at` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
    `_updated_at` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
) DEFAULT CHARSET = utf8mb4";

/// Creates the warehouse tracking tables (idempotent; existing tables of the
/// old system gain the new columns).
pub async fn init_warehouse(client: &Client, schema: &str) -> Result<()> {
    for sql in warehouse_ddl(schema) {
        client.batch_execute(&sql).await.map_err(|e| {
            Error::postgres(format!("creating tracking tables in schema {schema}"), e)
        })?;
    }
    Ok(())
}

const REPLICA_WATERMARK_DDL: &str = "CREATE TABLE IF NOT EXISTS `etl_copy_watermark` (
    `table_name` varchar(255) NOT NULL,
    `column_name` varchar(255) NOT NULL,
    `watermark_value` text NOT NULL,
    `watermark_key` text NULL,
    `updated_at` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
    PRIMARY KEY (`table_name`, `column_name`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4";

/// Columns `etl_copy_status` gained after the old system: when the table's
/// keys were last reconciled with the source, copies since, the source's
/// checksum taken before the last full copy, the column policy the copy
/// holds, the token of the last complete copy ([`crate::stamps`]), and how
/// far the new-keys pass has read ([`Progress::keys_through`]).
const REPLICA_STATUS_COLUMNS: &str = "ALTER TABLE `etl_copy_status`
    ADD COLUMN IF NOT EXISTS `last_reconciled` datetime(6) NULL,
    ADD COLUMN IF NOT EXISTS `runs_since_reconcile` int NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS `source_checksum` varchar(20) NULL,
    ADD COLUMN IF NOT EXISTS `column_policy` text NULL,
    ADD COLUMN IF NOT EXISTS `unchanged_token` varchar(64) NULL,
    ADD COLUMN IF NOT EXISTS `unchanged_at` datetime(6) NULL,
    ADD COLUMN IF NOT EXISTS `keys_through` varchar(40) NULL";

/// The column of `etl_copy_status` added last: a replica without it was
/// made by an earlier version.
const NEWEST_REPLICA_COLUMN: &str = "keys_through";

/// `last_reconciled` to the microsecond, as in the warehouse (a replica
/// made before it was kept to the second).
const REPLICA_RECONCILED_PRECISION: &str =
    "ALTER TABLE `etl_copy_status` MODIFY COLUMN `last_reconciled` datetime(6) NULL";

/// When the run that wrote a copy watermark began (UTC, the replica's
/// clock): the next run reads back to the earliest stamp the source's
/// clock can have written since, should that clock have gone back.
const REPLICA_WATERMARK_COLUMNS: &str = "ALTER TABLE `etl_copy_watermark`
    ADD COLUMN IF NOT EXISTS `run_started_at` datetime(6) NULL";

/// Tracking tables in the replica.
pub const REPLICA_TABLES: [&str; 2] = ["etl_copy_status", "etl_copy_watermark"];

/// Creates the replica's `etl_copy_status` and `etl_copy_watermark` (idempotent).
pub async fn init_replica(conn: &mut Conn) -> Result<()> {
    for ddl in [
        REPLICA_DDL,
        REPLICA_STATUS_COLUMNS,
        REPLICA_RECONCILED_PRECISION,
        REPLICA_WATERMARK_DDL,
        REPLICA_WATERMARK_COLUMNS,
    ] {
        conn.query_drop(ddl)
            .await
            .map_err(|e| Error::mysql("creating the tracking tables in the replica", e))?;
    }
    Ok(())
}

/// Fails with a message to run `etl-pipeline init` if a replica tracking
/// table is missing; tracking tables an earlier version made gain the
/// columns added since (the same additive, idempotent statements `init` runs).
pub async fn check_replica(conn: &mut Conn, database: &str) -> Result<()> {
    let found: Vec<(String, String)> = conn
        .exec(
            "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN (?, ?)",
            (database, REPLICA_TABLES[0], REPLICA_TABLES[1]),
        )
        .await
        .map_err(|e| Error::mysql("looking for the replica's tracking tables", e))?;
    for table in REPLICA_TABLES {
        if !found.iter().any(|(t, _)| t == table) {
            return Err(Error::new(
                ErrorKind::NotInitialized,
                format!(
                    "tracking table `{database}`.`{table}` does not exist; run `etl-pipeline init` first"
                ),
            ));
        }
    }
    if !found.iter().any(|(_, c)| c == NEWEST_REPLICA_COLUMN) {
        tracing::info!(%database, "adding the replica tracking columns this version needs");
        init_replica(conn).await?;
    }
    Ok(())
}

/// The copy watermarks of a table, by column.
pub async fn load_copy_watermarks(
    conn: &mut Conn,
    table: &str,
) -> Result<HashMap<String, StoredWatermark>> {
    let rows: Vec<(String, String, Option<String>)> = conn
        .exec(
            "SELECT `column_name`, `watermark_value`, `watermark_key` FROM `etl_copy_watermark` WHERE `table_name` = ?",
            (table,),
        )
        .await
        .map_err(|e| Error::mysql(format!("reading the copy watermarks of {table}"), e))?;
    Ok(rows
        .into_iter()
        .map(|(column, value, key)| (column, StoredWatermark { value, key }))
        .collect())
}

/// Whether this tool's copy manages `table` in the replica (it has an
/// `etl_copy_status` row), as opposed to a replica fed by other means.
pub async fn copy_manages(conn: &mut Conn, table: &str) -> Result<bool> {
    let n: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM `etl_copy_status` WHERE `table_name` = ?",
            (table,),
        )
        .await
        .map_err(|e| Error::mysql(format!("reading the copy status of `{table}`"), e))?;
    Ok(n.unwrap_or(0) > 0)
}

/// Writes copy progress with the caller's connection or transaction, after
/// (or with) the rows it covers.
pub async fn save_copy_progress(
    conn: &mut impl Queryable,
    table: &str,
    progress: &Progress,
) -> Result<()> {
    let err = |e| Error::mysql(format!("recording the copy progress of {table}"), e);
    if progress.replace_all {
        conn.exec_drop(
            "DELETE FROM `etl_copy_watermark` WHERE `table_name` = ?",
            (table,),
        )
        .await
        .map_err(err)?;
    }
    for (column, mark) in &progress.watermarks {
        conn.exec_drop(
            "INSERT INTO `etl_copy_watermark` (`table_name`, `column_name`, `watermark_value`, `watermark_key`, \
                                               `run_started_at`) \
             VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE `watermark_value` = VALUES(`watermark_value`), \
             `watermark_key` = VALUES(`watermark_key`), `run_started_at` = VALUES(`run_started_at`)",
            (table, column, &mark.value, &mark.key, &progress.run_started_at),
        )
        .await
        .map_err(err)?;
    }
    let (primary_column, primary_value) = match &progress.primary {
        Some((c, v)) => (Some(c.as_str()), Some(v.as_str())),
        None => (None, None),
    };
    conn.exec_drop(
        "INSERT INTO `etl_copy_status` (`table_name`, `last_copied`, `last_primary_value`, `primary_column_name`, \
                                        `rows_copied`, `copy_status`, `keys_through`) VALUES (?, NOW(), ?, ?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE `last_copied` = NOW(), \
           `last_primary_value` = COALESCE(VALUES(`last_primary_value`), `last_primary_value`), \
           `primary_column_name` = COALESCE(VALUES(`primary_column_name`), `primary_column_name`), \
           `rows_copied` = VALUES(`rows_copied`), `copy_status` = VALUES(`copy_status`), \
           `keys_through` = VALUES(`keys_through`)",
        (
            table,
            primary_value,
            primary_column,
            progress.rows_loaded,
            progress.status,
            &progress.keys_through,
        ),
    )
    .await
    .map_err(err)
}

/// Sets a table's copy status outside any data transaction.
pub async fn mark_copy_status(conn: &mut Conn, table: &str, status: &str) -> Result<()> {
    conn.exec_drop(
        "INSERT INTO `etl_copy_status` (`table_name`, `copy_status`) VALUES (?, ?) \
         ON DUPLICATE KEY UPDATE `copy_status` = VALUES(`copy_status`)",
        (table, status),
    )
    .await
    .map_err(|e| Error::mysql(format!("recording the copy status of {table}"), e))
}

/// Fails with a message to run `etl-pipeline init` if a tracking table is
/// missing; tracking tables an earlier version made gain the columns added
/// since (the same additive, idempotent statements `init` runs).
pub async fn check_warehouse(client: &Client, schema: &str) -> Result<()> {
    let names: Vec<String> = WAREHOUSE_TABLES
        .iter()
        .map(|t| ident::pg_qualified(schema, t))
        .collect();
    let row = client
        .query_one(
            "select array(select t from unnest($1::text[]) t where to_regclass(t) is null), \
             (select count(*) = 2 from information_schema.columns where table_schema = $2 \
                     and ((table_name = 'etl_load_status' and column_name = $3) \
                          or (table_name = 'etl_run_history' and column_name = $4)))",
            &[
                &names,
                &schema,
                &NEWEST_WAREHOUSE_COLUMN,
                &NEWEST_HISTORY_COLUMN,
            ],
        )
        .await
        .map_err(|e| Error::postgres("looking for the tracking tables", e))?;
    let missing: Vec<String> = row.get(0);
    if let Some(table) = missing.first() {
        return Err(Error::new(
            ErrorKind::NotInitialized,
            format!("tracking table {table} does not exist; run `etl-pipeline init` first"),
        ));
    }
    if !row.get::<_, bool>(1) {
        tracing::info!(%schema, "adding the tracking columns this version needs");
        init_warehouse(client, schema).await?;
    }
    Ok(())
}

/// A stored watermark: the value (text form) and the key of the last row
/// read at that value (a JSON array), if any. The next read starts at the
/// value, inclusive, less the look-back; the key says where the last one
/// stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWatermark {
    pub value: String,
    pub key: Option<String>,
}

/// Forgets a table's load watermarks, so its next load is a full refresh
/// whatever happens to the one under way: done in the transaction that adds
/// or widens a column, so a refresh that fails after it still fills the
/// column's values in existing rows next time.
pub async fn forget_load_watermarks(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
) -> Result<()> {
    client
        .execute(
            &format!(
                "delete from {} where table_name = $1",
                ident::pg_qualified(schema, "etl_load_watermark")
            ),
            &[&table],
        )
        .await
        .map_err(|e| Error::postgres(format!("forgetting the watermarks of {table}"), e))?;
    Ok(())
}

/// The load watermarks of a table, by column.
pub async fn load_watermarks(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<HashMap<String, StoredWatermark>> {
    let sql = format!(
        "select column_name::text, watermark_value, watermark_key from {} where table_name = $1",
        ident::pg_qualified(schema, "etl_load_watermark")
    );
    let rows = client
        .query(&sql, &[&table])
        .await
        .map_err(|e| Error::postgres(format!("reading the watermarks of {table}"), e))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                StoredWatermark {
                    value: r.get(1),
                    key: r.get(2),
                },
            )
        })
        .collect())
}

/// What a committed batch (or a finished full load) moved.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// New watermarks by column (already the maximum of old and new).
    pub watermarks: Vec<(String, StoredWatermark)>,
    /// Forget watermarks of columns not in `watermarks` (a full load).
    pub replace_all: bool,
    /// The primary watermark column and value, for `etl_load_status`.
    pub primary: Option<(String, String)>,
    /// Rows written by this run so far.
    pub rows_loaded: i64,
    pub status: &'static str,
    pub strategy: &'static str,
    pub run_id: String,
    /// When this run began reading, by the tracking store's clock (UTC).
    pub run_started_at: Option<String>,
    /// The fingerprints of the ranges an incremental load found in the
    /// MySQL side before reading ([`crate::incremental::probes_json`]),
    /// kept with its success; any other progress clears them.
    pub window_fingerprints: Option<String>,
    /// The key below which the new-keys pass has read every row (text; empty
    /// for "no key yet"): where the next run's pass starts. Kept apart from
    /// the highest key the destination holds, which other passes raise (a
    /// row stamped now, read by the window) past rows with lower keys and
    /// old stamps that only the new-keys pass can find. `None` where no
    /// new-keys pass runs (a full refresh clears it).
    pub keys_through: Option<String>,
}

/// The tracking store's clock at the start of a phase, and how long ago the
/// run that wrote the table's watermarks began by the same clock.
#[derive(Debug, Clone, Default)]
pub struct RunClock {
    /// Now, UTC, `YYYY-MM-DD HH:MM:SS.ffffff`.
    pub now: String,
    /// Microseconds since the last run began; `None` when not recorded.
    pub since_last_run: Option<i64>,
}

/// The replica's clock for a copy of `table` ([`RunClock`]).
pub async fn copy_clock(conn: &mut Conn, table: &str) -> Result<RunClock> {
    let row: Option<(String, Option<i64>)> = conn
        .exec_first(
            "SELECT DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%d %H:%i:%s.%f'), \
                    (SELECT TIMESTAMPDIFF(MICROSECOND, MIN(`run_started_at`), UTC_TIMESTAMP(6)) \
                     FROM `etl_copy_watermark` WHERE `table_name` = ?)",
            (table,),
        )
        .await
        .map_err(|e| Error::mysql(format!("reading the replica's clock for {table}"), e))?;
    let (now, since_last_run) = row.unwrap_or_default();
    Ok(RunClock {
        now,
        since_last_run,
    })
}

/// The warehouse's clock for a load of `table` ([`RunClock`]).
pub async fn load_clock(client: &Client, schema: &str, table: &str) -> Result<RunClock> {
    let row = client
        .query_one(
            &format!(
                "with c as (select clock_timestamp() at time zone 'utc' as now) \
                 select to_char(c.now, 'YYYY-MM-DD HH24:MI:SS.US'), \
                        (select (extract(epoch from c.now - min(w.run_started_at)) * 1000000)::bigint \
                         from {} w where w.table_name = $1) \
                 from c",
                ident::pg_qualified(schema, "etl_load_watermark")
            ),
            &[&table],
        )
        .await
        .map_err(|e| Error::postgres(format!("reading the warehouse's clock for {table}"), e))?;
    Ok(RunClock {
        now: row.get(0),
        since_last_run: row.get(1),
    })
}

/// Writes progress inside the caller's transaction, so it commits with the
/// rows it covers.
pub async fn save_progress(
    tx: &impl GenericClient,
    schema: &str,
    table: &str,
    progress: &Progress,
) -> Result<()> {
    let wm_table = ident::pg_qualified(schema, "etl_load_watermark");
    let err = |e| Error::postgres(format!("recording the load progress of {table}"), e);
    if progress.replace_all {
        tx.execute(
            &format!("delete from {wm_table} where table_name = $1"),
            &[&table],
        )
        .await
        .map_err(err)?;
    }
    for (column, mark) in &progress.watermarks {
        tx.execute(
            &format!(
                "insert into {wm_table} (table_name, column_name, watermark_value, watermark_key, updated_at, \
                                         run_started_at) \
                 values ($1, $2, $3, $4, now(), $5::text::timestamp) \
                 on conflict (table_name, column_name) do update set \
                 watermark_value = excluded.watermark_value, watermark_key = excluded.watermark_key, updated_at = now(), \
                 run_started_at = excluded.run_started_at"
            ),
            &[&table, column, &mark.value, &mark.key, &progress.run_started_at],
        )
        .await
        .map_err(err)?;
    }
    let (primary_column, primary_value) = match &progress.primary {
        Some((c, v)) => (Some(c.as_str()), Some(v.as_str())),
        None => (None, None),
    };
    tx.execute(
        &format!(
            "insert into {} as s (table_name, last_loaded, last_primary_value, primary_column_name, rows_loaded, \
                                  load_status, _loaded_at, _created_at, _updated_at, last_strategy, last_error, last_run_id, \
                                  window_fingerprint, keys_through) \
             values ($1, now(), $2, $3, $4::bigint, $5, now(), now(), now(), $6, null, $7, $8, $9) \
             on conflict (table_name) do update set \
               last_loaded = now(), \
               last_primary_value = coalesce(excluded.last_primary_value, s.last_primary_value), \
               primary_column_name = coalesce(excluded.primary_column_name, s.primary_column_name), \
               rows_loaded = excluded.rows_loaded, load_status = excluded.load_status, \
               _loaded_at = now(), _updated_at = now(), last_strategy = excluded.last_strategy, \
               last_error = null, last_run_id = excluded.last_run_id, \
               window_fingerprint = excluded.window_fingerprint, keys_through = excluded.keys_through",
            ident::pg_qualified(schema, "etl_load_status")
        ),
        &[
            &table,
            &primary_value,
            &primary_column,
            &progress.rows_loaded,
            &progress.status,
            &progress.strategy,
            &progress.run_id,
            &progress.window_fingerprints,
            &progress.keys_through,
        ],
    )
    .await
    .map_err(err)?;
    Ok(())
}

/// Sets a table's load status outside any data transaction (`running`,
/// `failed` with its error). Watermarks and rows are not touched.
pub async fn mark_status(
    client: &Client,
    schema: &str,
    table: &str,
    status: &str,
    error: Option<&str>,
    run_id: &str,
) -> Result<()> {
    client
        .execute(
            &format!(
                "insert into {} as s (table_name, load_status, last_error, last_run_id, _created_at, _updated_at) \
                 values ($1, $2, $3, $4, now(), now()) \
                 on conflict (table_name) do update set load_status = excluded.load_status, \
                 last_error = excluded.last_error, last_run_id = excluded.last_run_id, _updated_at = now()",
                ident::pg_qualified(schema, "etl_load_status")
            ),
            &[&table, &status, &error, &run_id],
        )
        .await
        .map_err(|e| Error::postgres(format!("recording the status of {table}"), e))?;
    Ok(())
}

/// One run-history row's outcome.
#[derive(Debug, Clone, Default)]
pub struct HistoryOutcome {
    pub status: String,
    pub strategy: Option<String>,
    pub strategy_reason: Option<String>,
    pub rows_read: i64,
    pub rows_inserted: i64,
    pub rows_updated: i64,
    pub rows_deleted: i64,
    pub rows_repaired: i64,
    pub watermark_start: Option<String>,
    pub watermark_end: Option<String>,
    pub zero_dates: serde_json::Value,
    pub warnings: serde_json::Value,
    pub error: Option<String>,
}

/// Records a table every phase of which this run skipped
/// ([`crate::stamps`]), in one statement: a finished run-history row per
/// phase, and, when the load is among them, its load status.
pub async fn record_skipped(
    client: &Client,
    schema: &str,
    (origin, table): (&RunOrigin, &str),
    phases: &[&str],
    (strategy, reason): (&str, &str),
) -> Result<()> {
    let phases: Vec<String> = phases.iter().map(|p| p.to_string()).collect();
    let loads = phases.iter().any(|p| p == "load");
    client
        .execute(
            &format!(
                "with history as ( \
                   insert into {} (run_id, table_name, phase, status, finished_at, strategy, strategy_reason, \
                                   zero_dates, warnings, triggered_by, schedule_name) \
                   select $1, $2, phase, 'success', now(), $4, $5, '{{}}'::jsonb, '[]'::jsonb, $7, $8 \
                   from unnest($3::text[]) as phase) \
                 insert into {} as s (table_name, load_status, last_error, last_run_id, _created_at, _updated_at) \
                 select $2, 'success', null, $1, now(), now() where $6 \
                 on conflict (table_name) do update set load_status = excluded.load_status, \
                 last_error = excluded.last_error, last_run_id = excluded.last_run_id, _updated_at = now()",
                ident::pg_qualified(schema, "etl_run_history"),
                ident::pg_qualified(schema, "etl_load_status")
            ),
            &[
                &origin.run_id,
                &table,
                &phases,
                &strategy,
                &reason,
                &loads,
                &origin.triggered_by,
                &origin.schedule,
            ],
        )
        .await
        .map_err(|e| Error::postgres(format!("recording the skipped run of {table}"), e))?;
    Ok(())
}

/// Opens a run-history row for a table and phase; returns its id.
pub async fn begin_history(
    client: &Client,
    schema: &str,
    origin: &RunOrigin,
    table: &str,
    phase: &str,
) -> Result<i64> {
    let row = client
        .query_one(
            &format!(
                "insert into {} (run_id, table_name, phase, status, triggered_by, schedule_name) \
                 values ($1, $2, $3, 'running', $4, $5) returning id",
                ident::pg_qualified(schema, "etl_run_history")
            ),
            &[
                &origin.run_id,
                &table,
                &phase,
                &origin.triggered_by,
                &origin.schedule,
            ],
        )
        .await
        .map_err(|e| Error::postgres(format!("opening the run history of {table}"), e))?;
    Ok(row.get(0))
}

/// Closes a run-history row.
pub async fn finish_history(
    client: &Client,
    schema: &str,
    id: i64,
    outcome: &HistoryOutcome,
) -> Result<()> {
    let zero_dates = outcome.zero_dates.to_string();
    let warnings = outcome.warnings.to_string();
    // A load's rows written also count into its table's running total
    // (`rows_loaded_total`, which `serve` exposes as a counter).
    client
        .execute(
            &format!(
                "with h as (update {} set finished_at = now(), status = $2, strategy = $3, strategy_reason = $4, \
                 rows_read = $5, rows_inserted = $6, rows_updated = $7, watermark_start = $8, \
                 watermark_end = $9, zero_dates = $10::text::jsonb, warnings = $11::text::jsonb, error = $12, \
                 rows_deleted = $13, rows_repaired = $14 \
                 where id = $1 returning table_name, phase) \
                 update {} s set rows_loaded_total = s.rows_loaded_total + $6 + $7 \
                 from h where h.phase = 'load' and s.table_name = h.table_name",
                ident::pg_qualified(schema, "etl_run_history"),
                ident::pg_qualified(schema, "etl_load_status")
            ),
            &[
                &id,
                &outcome.status,
                &outcome.strategy,
                &outcome.strategy_reason,
                &outcome.rows_read,
                &outcome.rows_inserted,
                &outcome.rows_updated,
                &outcome.watermark_start,
                &outcome.watermark_end,
                &zero_dates,
                &warnings,
                &outcome.error,
                &outcome.rows_deleted,
                &outcome.rows_repaired,
            ],
        )
        .await
        .map_err(|e| Error::postgres("closing the run history", e))?;
    Ok(())
}

/// Records an alert as a run-history row of status `alert`: the message in
/// `error`, the alert itself (kind, measured, threshold) in `warnings`.
pub async fn record_alert(
    client: &Client,
    schema: &str,
    (origin, alert): (&RunOrigin, &crate::alert::Alert),
) -> Result<()> {
    let details = alert.to_json().to_string();
    client
        .execute(
            &format!(
                "insert into {} (run_id, table_name, phase, status, started_at, finished_at, error, warnings, \
                                 triggered_by, schedule_name) \
                 values ($1, $2, $3, 'alert', now(), now(), $4, $5::text::jsonb, $6, $7)",
                ident::pg_qualified(schema, "etl_run_history")
            ),
            &[
                &alert.run_id,
                &alert.table.as_deref().unwrap_or(""),
                &alert.phase.as_deref().unwrap_or(""),
                &alert.message,
                &details,
                &origin.triggered_by,
                &origin.schedule,
            ],
        )
        .await
        .map_err(|e| Error::postgres("recording an alert in the run history", e))?;
    Ok(())
}

/// What the tracking tables say of a table's last copy (or load), read
/// once per phase: what decides a full refresh, a skipped one, and a key
/// reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseState {
    /// Seconds since the phase last wrote the table (`None`: never).
    pub seconds_since_last: Option<i64>,
    /// The checksum recorded before the last full refresh that succeeded.
    pub checksum: Option<String>,
    /// Seconds since the last key reconciliation (`None`: never).
    pub seconds_since_reconciled: Option<i64>,
    /// Runs of the phase since then.
    pub runs_since_reconcile: i64,
    /// The column policy ([`crate::config::Applied::fingerprint`]) the
    /// table's rows were written under; empty for none.
    pub policy: String,
    /// What the last incremental load that succeeded found in the ranges
    /// it re-reads (loads only).
    pub window_fingerprints: Option<String>,
    /// Where the new-keys pass resumes ([`Progress::keys_through`]).
    pub keys_through: Option<String>,
}

impl PhaseState {
    /// The last full refresh's checksum and age, when both are known.
    pub fn last_refresh(&self) -> Option<(&str, i64)> {
        self.checksum.as_deref().zip(self.seconds_since_last)
    }

    /// When the table was last reconciled and how many runs ago.
    pub fn reconciled(&self) -> (Option<i64>, i64) {
        (self.seconds_since_reconciled, self.runs_since_reconcile)
    }
}

/// The replica copy's [`PhaseState`] (`etl_copy_status`).
pub async fn copy_state(conn: &mut Conn, table: &str) -> Result<PhaseState> {
    let row: Option<mysql_async::Row> = conn
        .exec_first(
            "SELECT IF(`rows_copied` IS NULL, NULL, TIMESTAMPDIFF(SECOND, `last_copied`, NOW())), \
                    `source_checksum`, TIMESTAMPDIFF(SECOND, `last_reconciled`, NOW()), `runs_since_reconcile`, \
                    COALESCE(`column_policy`, ''), `keys_through` \
             FROM `etl_copy_status` WHERE `table_name` = ?",
            (table,),
        )
        .await
        .map_err(|e| Error::mysql(format!("reading the copy status of `{table}`"), e))?;
    Ok(row.map_or_else(PhaseState::default, |r| PhaseState {
        seconds_since_last: r.get::<Option<i64>, _>(0).flatten(),
        checksum: r.get::<Option<String>, _>(1).flatten(),
        seconds_since_reconciled: r.get::<Option<i64>, _>(2).flatten(),
        runs_since_reconcile: r.get::<i64, _>(3).unwrap_or(0),
        policy: r.get::<String, _>(4).unwrap_or_default(),
        window_fingerprints: None,
        keys_through: r.get::<Option<String>, _>(5).flatten(),
    }))
}

/// The warehouse load's [`PhaseState`] (`etl_load_status`).
pub async fn load_state(client: &Client, schema: &str, table: &str) -> Result<PhaseState> {
    let row = client
        .query_opt(
            &format!(
                "select case when last_strategy is not null then extract(epoch from now() - last_loaded)::bigint end, \
                        source_checksum::text, extract(epoch from now() - last_reconciled)::bigint, \
                        runs_since_reconcile::bigint, coalesce(column_policy, ''), window_fingerprint, keys_through \
                 from {} where table_name = $1",
                ident::pg_qualified(schema, "etl_load_status")
            ),
            &[&table],
        )
        .await
        .map_err(|e| Error::postgres(format!("reading the load status of {table}"), e))?;
    Ok(row.map_or_else(PhaseState::default, |r| PhaseState {
        seconds_since_last: r.get(0),
        checksum: r.get(1),
        seconds_since_reconciled: r.get(2),
        runs_since_reconcile: r.get(3),
        policy: r.get(4),
        window_fingerprints: r.get(5),
        keys_through: r.get(6),
    }))
}

/// What a copy or a load records of a table besides its progress.
#[derive(Debug, Clone, Copy)]
pub enum Record {
    /// The source checksum taken before a full refresh that succeeded.
    Checksum,
    /// The column policy the rows were written under.
    Policy,
}

impl Record {
    fn column(self) -> &'static str {
        match self {
            Record::Checksum => "source_checksum",
            Record::Policy => "column_policy",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Record::Checksum => "checksum",
            Record::Policy => "column policy",
        }
    }
}

/// The copy tokens ([`crate::stamps`]) recorded in the replica, by table.
pub async fn copy_tokens(conn: &mut Conn) -> Result<HashMap<String, Recorded>> {
    let rows: Vec<(String, String, Option<i64>)> = conn
        .query(
            "SELECT `table_name`, `unchanged_token`, TIMESTAMPDIFF(SECOND, `unchanged_at`, UTC_TIMESTAMP(6)) \
             FROM `etl_copy_status` WHERE `unchanged_token` IS NOT NULL",
        )
        .await
        .map_err(|e| Error::mysql("reading the copy tokens", e))?;
    Ok(recorded(rows))
}

/// The load tokens ([`crate::stamps`]) recorded in the warehouse, by table.
pub async fn load_tokens(client: &Client, schema: &str) -> Result<HashMap<String, Recorded>> {
    let rows = client
        .query(
            &format!(
                "select table_name::text, unchanged_token::text, \
                        extract(epoch from now() - unchanged_at)::bigint \
                 from {} where unchanged_token is not null",
                ident::pg_qualified(schema, "etl_load_status")
            ),
            &[],
        )
        .await
        .map_err(|e| Error::postgres("reading the load tokens", e))?;
    Ok(recorded(
        rows.into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
    ))
}

fn recorded(rows: Vec<(String, String, Option<i64>)>) -> HashMap<String, Recorded> {
    rows.into_iter()
        .filter_map(|(table, token, age)| {
            Some((
                table,
                Recorded {
                    token,
                    age_seconds: age?,
                },
            ))
        })
        .collect()
}

/// Records the token of a copy of `table` that ran to its end.
pub async fn save_copy_token(conn: &mut Conn, table: &str, token: &str) -> Result<()> {
    conn.exec_drop(
        "UPDATE `etl_copy_status` SET `unchanged_token` = ?, `unchanged_at` = UTC_TIMESTAMP(6) \
         WHERE `table_name` = ?",
        (token, table),
    )
    .await
    .map_err(|e| Error::mysql(format!("recording the copy token of `{table}`"), e))
}

/// Records the token of a load of `table` that ran to its end.
pub async fn save_load_token(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
    token: &str,
) -> Result<()> {
    client
        .execute(
            &format!(
                "update {} set unchanged_token = $1, unchanged_at = now() where table_name = $2",
                ident::pg_qualified(schema, "etl_load_status")
            ),
            &[&token, &table],
        )
        .await
        .map_err(|e| Error::postgres(format!("recording the load token of {table}"), e))?;
    Ok(())
}

/// Records `value` as the copy's `record` of `table`.
pub async fn save_copy_record(
    conn: &mut Conn,
    table: &str,
    record: Record,
    value: &str,
) -> Result<()> {
    conn.exec_drop(
        format!(
            "UPDATE `etl_copy_status` SET `{}` = ? WHERE `table_name` = ?",
            record.column()
        ),
        (value, table),
    )
    .await
    .map_err(|e| Error::mysql(format!("recording the {} of `{table}`", record.what()), e))
}

/// Records `value` as the load's `record` of `table`.
pub async fn save_load_record(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
    record: Record,
    value: &str,
) -> Result<()> {
    client
        .execute(
            &format!(
                "update {} set {} = $2 where table_name = $1",
                ident::pg_qualified(schema, "etl_load_status"),
                record.column()
            ),
            &[&table, &value],
        )
        .await
        .map_err(|e| Error::postgres(format!("recording the {} of {table}", record.what()), e))?;
    Ok(())
}

/// Records a reconciliation of the replica copy (`done`) or one more copy without.
pub async fn mark_copy_reconciled(
    conn: &mut impl Queryable,
    table: &str,
    done: bool,
) -> Result<()> {
    let set = if done {
        "`last_reconciled` = NOW(6), `runs_since_reconcile` = 0"
    } else {
        "`runs_since_reconcile` = `runs_since_reconcile` + 1"
    };
    conn.exec_drop(
        format!("UPDATE `etl_copy_status` SET {set} WHERE `table_name` = ?"),
        (table,),
    )
    .await
    .map_err(|e| Error::mysql(format!("recording the reconciliation of `{table}`"), e))
}

/// Records a reconciliation of the warehouse copy (`done`) or one more load without.
pub async fn mark_load_reconciled(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
    done: bool,
) -> Result<()> {
    let set = if done {
        "last_reconciled = now(), runs_since_reconcile = 0"
    } else {
        "runs_since_reconcile = runs_since_reconcile + 1"
    };
    client
        .execute(
            &format!(
                "update {} set {set} where table_name = $1",
                ident::pg_qualified(schema, "etl_load_status")
            ),
            &[&table],
        )
        .await
        .map_err(|e| Error::postgres(format!("recording the reconciliation of {table}"), e))?;
    Ok(())
}

/// Records a transformation (a dbt model) over a table in
/// `etl_transform_status`, the old system's table for it.
pub async fn mark_transform(
    client: &Client,
    schema: &str,
    table: &str,
    status: &str,
    rows: Option<i64>,
) -> Result<()> {
    client
        .execute(
            &format!(
                "insert into {} as s (table_name, last_transformed, rows_transformed, transform_status, \
                                      _transformed_at, _created_at, _updated_at) \
                 values ($1, case when $2 = 'success' then now() else '1970-01-01 00:00:01' end, \
                         coalesce($3::bigint, 0), $2, now(), now(), now()) \
                 on conflict (table_name) do update set \
                   last_transformed = case when excluded.transform_status = 'success' then now() \
                                           else s.last_transformed end, \
                   rows_transformed = coalesce($3::bigint, s.rows_transformed), \
                   transform_status = excluded.transform_status, _transformed_at = now(), _updated_at = now()",
                ident::pg_qualified(schema, "etl_transform_status")
            ),
            &[&table, &status, &rows],
        )
        .await
        .map_err(|e| Error::postgres(format!("recording the transformation of {table}"), e))?;
    Ok(())
}

/// One line of `etl-pipeline status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusLine {
    pub table: String,
    pub status: String,
    pub last_loaded: String,
    pub strategy: String,
    pub rows_loaded: i64,
    pub watermark: String,
    pub error: String,
    /// Load failures recorded in the run history over the last 24 hours.
    pub failures_24h: i64,
    /// The replica's copy status (`etl_copy_status`), when there is a replica.
    pub copy_status: Option<String>,
    pub last_copied: Option<String>,
    /// The watermark column and value behind `watermark`.
    #[serde(skip)]
    pub watermark_column: String,
    #[serde(skip)]
    pub watermark_value: String,
    /// Lag behind the source: rows there past the loaded watermark, the
    /// newest watermark value there, and (date-time watermarks) how far
    /// that is ahead of the loaded one, in seconds. `None` when unknown.
    pub rows_behind: Option<u64>,
    pub source_newest: Option<String>,
    pub lag_seconds: Option<i64>,
    /// Of `rows_behind`, those stamped past the source's clock plus the
    /// table's skew allowance: looked at every run, never moving the watermark.
    pub rows_in_future: Option<u64>,
    /// Why the lag is unknown, when it is.
    pub lag_note: Option<String>,
    /// The last transformation recorded by dbt (`etl_transform_status`).
    pub transform_status: Option<String>,
    pub last_transformed: Option<String>,
    /// How long the warehouse has held rows no successful transformation
    /// has read: last load minus last transformation, when the load is newer.
    pub transform_behind_seconds: Option<i64>,
}

/// Every table's load status, in name order.
pub async fn status_lines(client: &Client, schema: &str) -> Result<Vec<StatusLine>> {
    let sql = format!(
        "select s.table_name::text, coalesce(s.load_status, ''), to_char(s.last_loaded, 'YYYY-MM-DD HH24:MI:SS'), \
                coalesce(s.last_strategy, ''), coalesce(s.rows_loaded, 0)::bigint, \
                coalesce(s.primary_column_name || ' = ' || s.last_primary_value, ''), coalesce(s.last_error, ''), \
                (select count(*) from {history} h where h.table_name = s.table_name and h.status = 'failed' \
                   and h.started_at > now() - interval '24 hours'), \
                coalesce(s.primary_column_name, ''), coalesce(s.last_primary_value, ''), \
                t.transform_status::text, \
                to_char(nullif(t.last_transformed, '1970-01-01 00:00:01'), 'YYYY-MM-DD HH24:MI:SS'), \
                case when t.table_name is not null then \
                  greatest(0, extract(epoch from s.last_loaded - t.last_transformed))::bigint end \
         from {status} s left join {transform} t on t.table_name = s.table_name order by s.table_name",
        transform = ident::pg_qualified(schema, "etl_transform_status"),
        status = ident::pg_qualified(schema, "etl_load_status"),
        history = ident::pg_qualified(schema, "etl_run_history"),
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(|e| Error::postgres("reading etl_load_status", e))?;
    Ok(rows
        .iter()
        .map(|r| StatusLine {
            table: r.get(0),
            status: r.get(1),
            last_loaded: r.get(2),
            strategy: r.get(3),
            rows_loaded: r.get(4),
            watermark: r.get(5),
            error: r.get(6),
            failures_24h: r.get(7),
            copy_status: None,
            last_copied: None,
            watermark_column: r.get(8),
            watermark_value: r.get(9),
            rows_behind: None,
            source_newest: None,
            lag_seconds: None,
            rows_in_future: None,
            lag_note: None,
            transform_status: r.get(10),
            last_transformed: r.get(11),
            transform_behind_seconds: r.get(12),
        })
        .collect())
}

/// Adds the replica's copy status to status lines (and lines for tables
/// copied but never loaded).
pub async fn add_copy_status(conn: &mut Conn, lines: &mut Vec<StatusLine>) -> Result<()> {
    let rows: Vec<(String, Option<String>, Option<String>)> = conn
        .query(
            "SELECT `table_name`, `copy_status`, DATE_FORMAT(`last_copied`, '%Y-%m-%d %H:%i:%s') FROM `etl_copy_status`",
        )
        .await
        .map_err(|e| Error::mysql("reading etl_copy_status", e))?;
    for (table, status, copied) in rows {
        match lines.iter_mut().find(|l| l.table == table) {
            Some(line) => {
                line.copy_status = status;
                line.last_copied = copied;
            }
            None => lines.push(StatusLine {
                table,
                status: String::new(),
                last_loaded: String::new(),
                strategy: String::new(),
                rows_loaded: 0,
                watermark: String::new(),
                error: String::new(),
                failures_24h: 0,
                copy_status: status,
                last_copied: copied,
                watermark_column: String::new(),
                watermark_value: String::new(),
                rows_behind: None,
                source_newest: None,
                lag_seconds: None,
                rows_in_future: None,
                lag_note: None,
                transform_status: None,
                last_transformed: None,
                transform_behind_seconds: None,
            }),
        }
    }
    lines.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(())
}

/// Adds each table's lag behind the MySQL database `conn` is on (the source,
/// or the replica when the source is not configured): the rows there past
/// the loaded watermark, the newest watermark value, and for date-time
/// watermarks how many seconds that is ahead and how many rows are stamped
/// past the server's clock plus `skew(table)` seconds (in the column's own
/// terms, as a run reads them). One range count per table on its watermark
/// column; a table that cannot be measured gets a note.
pub async fn add_lag(
    conn: &mut Conn,
    database: &str,
    lines: &mut [StatusLine],
    skew: impl Fn(&str) -> u64,
) -> Result<()> {
    let types: Vec<(String, String, String)> = conn
        .exec(
            "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ?",
            (database,),
        )
        .await
        .map_err(|e| Error::mysql(format!("reading the columns of `{database}`"), e))?;
    let types: HashMap<(&str, &str), &str> = types
        .iter()
        .map(|(t, c, d)| ((t.as_str(), c.as_str()), d.as_str()))
        .collect();
    for line in lines.iter_mut() {
        if line.watermark_column.is_empty() {
            line.lag_note = Some("no watermark loaded yet".into());
            continue;
        }
        let Some(&data_type) = types.get(&(line.table.as_str(), line.watermark_column.as_str()))
        else {
            line.lag_note = Some(format!(
                "`{}`.`{}` is not in `{database}`",
                line.table, line.watermark_column
            ));
            continue;
        };
        let temporal = matches!(data_type, "date" | "datetime" | "timestamp");
        let col = ident::mysql(&line.watermark_column);
        let clock = if data_type == "timestamp" {
            "NOW()"
        } else {
            "CONVERT_TZ(NOW(), @@session.time_zone, @@global.time_zone)"
        };
        let sql = format!(
            "SELECT COUNT(*), CAST(MAX({col}) AS CHAR), {} FROM {} WHERE {col} > ?",
            if temporal {
                format!(
                    "TIMESTAMPDIFF(SECOND, ?, MAX({col})), \
                     CAST(SUM({col} > {clock} + INTERVAL {} SECOND) AS UNSIGNED)",
                    skew(&line.table)
                )
            } else {
                "NULL, NULL".into()
            },
            ident::mysql(&line.table)
        );
        let value = line.watermark_value.as_str();
        let params = if temporal {
            vec![value, value]
        } else {
            vec![value]
        };
        let row = conn
            .exec_first::<(u64, Option<String>, Option<i64>, Option<u64>), _, _>(sql, params)
            .await;
        match row {
            Ok(Some((behind, newest, seconds, future))) => {
                line.rows_behind = Some(behind);
                line.source_newest = newest;
                line.lag_seconds = if temporal {
                    Some(seconds.unwrap_or(0))
                } else {
                    None
                };
                line.rows_in_future = temporal.then_some(future.unwrap_or(0));
            }
            Ok(None) => {}
            Err(e) => line.lag_note = Some(format!("cannot measure: {e}")),
        }
    }
    Ok(())
}

/// One run-history row of a table, as the operator's page shows it.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub phase: String,
    pub status: String,
    pub triggered_by: String,
    pub schedule: Option<String>,
    pub strategy: Option<String>,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub seconds: Option<f64>,
    pub rows_read: i64,
    pub rows_written: i64,
    pub error: Option<String>,
}

/// The newest `limit` run-history rows of `table` (alerts left out),
/// newest first.
pub async fn table_history(
    client: &Client,
    schema: &str,
    table: &str,
    limit: i64,
) -> Result<Vec<HistoryRow>> {
    let rows = client
        .query(
            &format!(
                "select phase, status, triggered_by, schedule_name, strategy, \
                        extract(epoch from started_at)::float8, \
                        extract(epoch from finished_at - started_at)::float8, rows_read, \
                        rows_inserted + rows_updated + rows_deleted + rows_repaired, error \
                 from {} where table_name = $1 and status <> 'alert' \
                 order by started_at desc, id desc limit $2",
                ident::pg_qualified(schema, "etl_run_history")
            ),
            &[&table, &limit],
        )
        .await
        .map_err(|e| Error::postgres(format!("reading the run history of {table}"), e))?;
    Ok(rows
        .iter()
        .map(|r| HistoryRow {
            phase: r.get(0),
            status: r.get(1),
            triggered_by: r.get(2),
            schedule: r.get(3),
            strategy: r.get(4),
            started_at: r.get(5),
            seconds: r.get(6),
            rows_read: r.get(7),
            rows_written: r.get(8),
            error: r.get(9),
        })
        .collect())
}

/// One recorded alert ([`record_alert`]).
#[derive(Debug, Clone)]
pub struct AlertRow {
    /// Seconds since the Unix epoch.
    pub at: f64,
    pub table: String,
    pub phase: String,
    /// The alert's kind (`failure`, `slow`, `memory`, `run_failed`).
    pub kind: String,
    pub message: String,
}

/// The alerts of the last `days` days, newest first, at most `limit`.
pub async fn recent_alerts(
    client: &Client,
    schema: &str,
    days: i32,
    limit: i64,
) -> Result<Vec<AlertRow>> {
    let rows = client
        .query(
            &format!(
                "select extract(epoch from started_at)::float8, table_name, phase, \
                        coalesce(warnings ->> 'kind', ''), coalesce(error, '') \
                 from {} where status = 'alert' and started_at > now() - make_interval(days => $1) \
                 order by started_at desc, id desc limit $2",
                ident::pg_qualified(schema, "etl_run_history")
            ),
            &[&days, &limit],
        )
        .await
        .map_err(|e| Error::postgres("reading the recent alerts", e))?;
    Ok(rows
        .iter()
        .map(|r| AlertRow {
            at: r.get(0),
            table: r.get(1),
            phase: r.get(2),
            kind: r.get(3),
            message: r.get(4),
        })
        .collect())
}

/// What the metrics say of one table's phase: when it last succeeded and
/// how long its last finished run took (seconds since the epoch, seconds).
#[derive(Debug, Clone)]
pub struct PhaseSummary {
    pub table: String,
    pub phase: String,
    pub last_success: Option<f64>,
    pub last_seconds: Option<f64>,
}

/// What the metrics read of the tracking tables: every table's and phase's
/// [`PhaseSummary`], and each table's `rows_loaded_total`.
pub type Summaries = (Vec<PhaseSummary>, Vec<(String, i64)>);

/// [`Summaries`], in one statement each.
pub async fn phase_summaries(client: &Client, schema: &str) -> Result<Summaries> {
    let history = ident::pg_qualified(schema, "etl_run_history");
    let rows = client
        .query(
            &format!(
                "select table_name, phase, \
                        extract(epoch from max(finished_at) filter (where status = 'success'))::float8, \
                        (select extract(epoch from l.finished_at - l.started_at)::float8 from {history} l \
                         where l.table_name = h.table_name and l.phase = h.phase and l.status <> 'alert' \
                           and l.finished_at is not null \
                         order by l.finished_at desc limit 1) \
                 from {history} h where status <> 'alert' group by table_name, phase order by 1, 2"
            ),
            &[],
        )
        .await
        .map_err(|e| Error::postgres("summarising the run history", e))?;
    let phases = rows
        .iter()
        .map(|r| PhaseSummary {
            table: r.get(0),
            phase: r.get(1),
            last_success: r.get(2),
            last_seconds: r.get(3),
        })
        .collect();
    let totals = client
        .query(
            &format!(
                "select table_name, rows_loaded_total from {} order by 1",
                ident::pg_qualified(schema, "etl_load_status")
            ),
            &[],
        )
        .await
        .map_err(|e| Error::postgres("reading the rows loaded", e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok((phases, totals))
}

/// When a run of schedule `name` last began (microseconds since the
/// epoch), by the run history; `None` when it never ran.
pub async fn last_scheduled_start(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<Option<i64>> {
    let row = client
        .query_one(
            &format!(
                "select (extract(epoch from max(started_at)) * 1000000)::bigint from {} \
                 where triggered_by = 'scheduler' and schedule_name = $1",
                ident::pg_qualified(schema, "etl_run_history")
            ),
            &[&name],
        )
        .await
        .map_err(|e| Error::postgres(format!("reading when schedule {name} last ran"), e))?;
    Ok(row.get(0))
}

/// Run history kept unless `ETL_HISTORY_RETENTION_DAYS` says otherwise:
/// three months answers "what happened last quarter" and stays small.
pub const DEFAULT_HISTORY_RETENTION_DAYS: u32 = 90;

/// Deletes run history older than `days`; returns the rows removed.
pub async fn prune_history(client: &Client, schema: &str, days: u32) -> Result<u64> {
    let days = i32::try_from(days).unwrap_or(i32::MAX);
    client
        .execute(
            &format!(
                "delete from {} where started_at < now() - make_interval(days => $1)",
                ident::pg_qualified(schema, "etl_run_history")
            ),
            &[&days],
        )
        .await
        .map_err(|e| Error::postgres("pruning the run history", e))
}
