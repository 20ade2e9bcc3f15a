//! Phase 1: one table from the clinic's OpenDental server (source) into the
//! local replication database (replica), MySQL to MySQL.
//!
//! The source is only ever read. A full copy fills a shadow table paged by
//! primary key and swaps it in with one atomic `RENAME TABLE`, so the replica
//! never shows a half-copied table under its real name; a copy interrupted by
//! a dropped connection resumes after the last committed page. An incremental
//! copy reads the same tie-safe keyset passes as the load phase and upserts
//! each page with `INSERT … ON DUPLICATE KEY UPDATE`, writing the watermark in
//! the same replica transaction; its values travel as the binary protocol's
//! typed values, bound as parameters. A full copy writes each batch with
//! `LOAD DATA LOCAL INFILE` (values as escaped text, any warning an error)
//! into a shadow table whose secondary keys are built once it is full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, TxOpts, Value};
use tokio::sync::Semaphore;

use crate::config::{
    DeleteDetection, MySqlSettings, Secret, Strategy, TableConfig, TableFacts, resolve, unchanged,
    wants_checksum,
};
use crate::error::{Error, ErrorKind, Result};
use crate::incremental::{self, Limits, Marks};
use crate::mask::Masker;
use crate::mysql::{
    self as my, Encoder, Pass, PassKind, RateLimit, ReadJob, ReadRange, ReadSpec, SourceTable,
    spawn_reader,
};
use crate::outcome::{LoadOptions, TableReport};
use crate::reconcile::{self, Side};
use crate::schema::ident;
use crate::shutdown::Stop;
use crate::tracking::{self, Progress, Record, StoredWatermark};

/// Bytes of values per `INSERT` statement: well under MariaDB's default
/// 16 MiB `max_allowed_packet`, large enough that a statement carries
/// thousands of ordinary rows.
const MAX_STATEMENT_BYTES: usize = 4 * 1024 * 1024;
/// MySQL's limit on placeholders in one prepared statement.
const MAX_PLACEHOLDERS: usize = 65_535;
/// A copy's batch is cut at this many bytes of held values too, so memory
/// stays bounded whatever the row width or `batch_size`.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Both sessions read and write `timestamp` values in UTC, so servers in
/// different time zones exchange them unchanged.
const SESSION_SETUP: [&str; 2] = [
    "SET SESSION time_zone = '+00:00'",
    // Strict, so a value that does not fit fails loudly; zero dates allowed, as in OpenDental.
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'",
];

/// Where a copy reads and writes, and how gently.
#[derive(Debug, Clone)]
pub struct ExtractContext {
    pub source: MySqlSettings,
    pub replica: MySqlSettings,
    /// The run's rows-per-second budget on the source.
    pub rate: Option<Arc<RateLimit>>,
    /// Tables read from the source at once.
    pub source_slots: Arc<Semaphore>,
    /// Seconds a replica write waits for a row lock another session holds
    /// (`innodb_lock_wait_timeout`) before its batch rolls back and the
    /// phase is retried; `None` keeps the server's setting.
    pub replica_lock_wait: Option<u32>,
    /// The key of `mask_columns: hash` (`ETL_MASK_KEY_FILE`).
    pub mask_key: Option<Secret>,
}

/// Where an interrupted full copy stands, kept across retries in one run.
/// A batch whose commit was cut off (a timeout, a dropped connection) may
/// still have committed, so a retry ends the old writer's session and takes
/// its starting point from the shadow table itself.
#[derive(Debug, Clone)]
pub struct Resume {
    shadow: String,
    /// Secondary keys added once the shadow table is full.
    deferred_keys: Vec<String>,
    marks: Vec<(String, StoredWatermark)>,
    /// The replica session that wrote the shadow table.
    writer: u32,
}

/// Shared between attempts of one table's copy within a run.
pub type ResumeSlot = Arc<Mutex<Option<Resume>>>;

fn shadow_name(table: &str) -> String {
    format!("{table}__etl_shadow")
}

fn retired_name(table: &str) -> String {
    format!("{table}__etl_retired")
}

/// Keeps the binary protocol's values as they came.
struct RowEncoder {
    rows: Vec<Vec<Value>>,
    bytes: usize,
}

/// Memory a held value takes: the enum, plus the heap block of a byte string
/// with the allocator's overhead.
fn value_size(v: &Value) -> usize {
    let heap = match v {
        Value::Bytes(b) => b.capacity() + 16,
        _ => 0,
    };
    std::mem::size_of::<Value>() + heap
}

impl Encoder for RowEncoder {
    type Payload = Vec<Vec<Value>>;

    fn encode(&mut self, row: Row) -> Result<()> {
        let values = row.unwrap();
        self.bytes += values.iter().map(value_size).sum::<usize>();
        self.rows.push(values);
        Ok(())
    }

    fn held_bytes(&self) -> usize {
        self.bytes
    }

    fn take(&mut self) -> (Vec<Vec<Value>>, Vec<u64>) {
        self.bytes = 0;
        (std::mem::take(&mut self.rows), Vec::new())
    }
}

/// Whether a full copy of `table` can go through `LOAD DATA LOCAL INFILE`:
/// the server allows it and every column takes its value as text (bit and
/// spatial columns do not).
async fn bulk_loadable(replica: &mut Conn, table: &SourceTable) -> Result<bool> {
    if table.columns.iter().any(|c| {
        matches!(
            c.ty,
            crate::schema::SourceType::Bit { .. } | crate::schema::SourceType::Geometry
        )
    }) {
        return Ok(false);
    }
    let on: Option<i64> = replica
        .query_first("SELECT @@local_infile")
        .await
        .map_err(|e| Error::mysql("reading the replica's local_infile setting", e))?;
    Ok(on == Some(1))
}

/// Appends a value as a `LOAD DATA` field: text, with backslash escapes
/// for backslash, tab, newline and NUL, and `\N` for NULL. A `year`
/// column's value goes as four digits: the server reads the text `0` as the
/// year 2000, `0000` as the year 0.
fn put_field(out: &mut Vec<u8>, value: &Value, year: bool) {
    use std::io::Write;
    match value {
        Value::NULL => out.extend_from_slice(b"\\N"),
        Value::Bytes(bytes) => {
            for &b in bytes {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    0 => out.extend_from_slice(b"\\0"),
                    _ => out.push(b),
                }
            }
        }
        Value::Int(v) if year => {
            let _ = write!(out, "{v:04}");
        }
        Value::Int(v) => {
            let _ = write!(out, "{v}");
        }
        Value::UInt(v) if year => {
            let _ = write!(out, "{v:04}");
        }
        Value::UInt(v) => {
            let _ = write!(out, "{v}");
        }
        // Rust prints the shortest text that parses back to the same number.
        // The server reads a float column's text as a double first, so a
        // float goes as its exact double (its own shortest text may round
        // past the float range: 3.4028235e38).
        Value::Float(v) => {
            let _ = write!(out, "{}", f64::from(*v));
        }
        Value::Double(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Date(y, mo, d, h, mi, sec, us) => {
            let _ = write!(out, "{y:04}-{mo:02}-{d:02}");
            if (*h, *mi, *sec, *us) != (0, 0, 0, 0) {
                let _ = write!(out, " {h:02}:{mi:02}:{sec:02}");
            }
            if *us != 0 {
                let _ = write!(out, ".{us:06}");
            }
        }
        Value::Time(negative, days, h, mi, sec, us) => {
            let hours = u64::from(*days) * 24 + u64::from(*h);
            let sign = if *negative { "-" } else { "" };
            let _ = write!(out, "{sign}{hours:02}:{mi:02}:{sec:02}");
            if *us != 0 {
                let _ = write!(out, ".{us:06}");
            }
        }
    }
}

/// Bytes of `LOAD DATA` input handed to the driver at a time.
const INFILE_CHUNK_BYTES: usize = 64 * 1024;

/// Writes a batch into `table` with one `LOAD DATA LOCAL INFILE` (one
/// statement: all rows or none). Any warning fails it: nothing may be
/// altered on the way in.
async fn load_rows(
    replica: &mut Conn,
    table: &SourceTable,
    into: &str,
    rows: Vec<Vec<Value>>,
) -> Result<u64> {
    let years: Vec<bool> = table
        .columns
        .iter()
        .map(|c| matches!(c.ty, crate::schema::SourceType::Year))
        .collect();
    let mut data = Vec::with_capacity(rows.len() * 64);
    for row in &rows {
        for (i, value) in row.iter().enumerate() {
            if i > 0 {
                data.push(b'\t');
            }
            put_field(&mut data, value, years.get(i).copied().unwrap_or(false));
        }
        data.push(b'\n');
    }
    let expected = rows.len() as u64;
    drop(rows);
    // Handed over in slices: the driver copies each into a pooled buffer
    // that it keeps for reuse, so one whole batch per buffer would keep
    // megabytes per buffer alive for the rest of the run.
    let payload = bytes::Bytes::from(data);
    let chunks: Vec<std::io::Result<bytes::Bytes>> = (0..payload.len())
        .step_by(INFILE_CHUNK_BYTES)
        .map(|at| Ok(payload.slice(at..payload.len().min(at + INFILE_CHUNK_BYTES))))
        .collect();
    replica.set_infile_handler(async move {
        Ok(futures_util::StreamExt::boxed(futures_util::stream::iter(
            chunks,
        )))
    });
    let sql = format!(
        "LOAD DATA LOCAL INFILE 'batch' INTO TABLE {} CHARACTER SET utf8mb4 \
         FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({})",
        ident::mysql(into),
        ident::mysql_list(table.columns.iter().map(|c| c.name.as_str()))
    );
    let err = |e| Error::mysql(format!("loading rows into replica table `{into}`"), e);
    replica.query_drop(sql).await.map_err(err)?;
    let (loaded, warnings) = (replica.affected_rows(), replica.get_warnings());
    if warnings > 0 || loaded != expected {
        let shown: Vec<(String, u32, String)> =
            replica.query("SHOW WARNINGS LIMIT 5").await.map_err(err)?;
        return Err(Error::new(
            ErrorKind::Value,
            format!(
                "replica table `{into}` took {loaded} of {expected} rows with {warnings} warning(s): {shown:?}"
            ),
        ));
    }
    Ok(loaded)
}

/// Rows per `INSERT` statement at most (fewer when the row is wide).
const MAX_STATEMENT_ROWS: usize = 512;

/// Splits `sizes` (bytes per row) into statement chunks. Every chunk is a
/// power of two rows, so a table's statements take at most ten shapes: each
/// prepared shape is cached with one parameter definition per placeholder,
/// and a new shape per batch would fill memory with them. A chunk stays
/// within [`MAX_PLACEHOLDERS`] and [`MAX_STATEMENT_BYTES`] (or is one row).
fn statement_chunks(sizes: &[usize], columns: usize) -> Vec<usize> {
    let cap = MAX_STATEMENT_ROWS
        .min(MAX_PLACEHOLDERS / columns.max(1))
        .max(1);
    let largest = 1usize << (usize::BITS - 1 - cap.leading_zeros());
    let mut chunks = Vec::new();
    let mut at = 0;
    while at < sizes.len() {
        let mut n = largest;
        while n > 1
            && (at + n > sizes.len()
                || sizes[at..at + n].iter().sum::<usize>() > MAX_STATEMENT_BYTES)
        {
            n /= 2;
        }
        chunks.push(n);
        at += n;
    }
    chunks
}

/// Inserts rows in statements of bounded size; `upsert` turns duplicates
/// into updates. Returns (inserted, updated).
async fn insert_rows(
    conn: &mut impl Queryable,
    table: &str,
    columns: &[String],
    key: &[String],
    rows: Vec<Vec<Value>>,
    upsert: bool,
) -> Result<(u64, u64)> {
    let per_row = columns.len().max(1);
    let names = ident::mysql_list(columns.iter().map(String::as_str));
    let tail = if upsert {
        let non_key: Vec<&String> = columns.iter().filter(|c| !key.contains(c)).collect();
        let sets = if non_key.is_empty() {
            let k = ident::mysql(&key[0]);
            format!("{k} = {k}")
        } else {
            non_key
                .iter()
                .map(|c| format!("{0} = VALUES({0})", ident::mysql(c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(" ON DUPLICATE KEY UPDATE {sets}")
    } else {
        String::new()
    };
    let row_marks = format!("({})", vec!["?"; per_row].join(", "));
    let sizes: Vec<usize> = rows
        .iter()
        .map(|r| r.iter().map(value_size).sum())
        .collect();
    let (mut inserted, mut updated) = (0u64, 0u64);
    let mut rows = rows.into_iter();
    for chunk in statement_chunks(&sizes, per_row) {
        let params: Vec<Value> = rows.by_ref().take(chunk).flatten().collect();
        let sql = format!(
            "INSERT INTO {} ({names}) VALUES {}{tail}",
            ident::mysql(table),
            vec![row_marks.as_str(); chunk].join(", ")
        );
        let err = |e| Error::mysql(format!("writing rows into replica table `{table}`"), e);
        let result = conn.exec_iter(sql, params).await.map_err(err)?;
        let affected = result.affected_rows();
        let info = result.info().into_owned();
        result.drop_result().await.map_err(err)?;
        let count = u64::try_from(chunk).unwrap_or(u64::MAX);
        let (i, u) = if upsert {
            upsert_counts(count, affected, &info)
        } else {
            (affected, 0)
        };
        inserted += i;
        updated += u;
    }
    Ok((inserted, updated))
}

/// Inserted and updated rows of an `INSERT … ON DUPLICATE KEY UPDATE` of
/// `rows` rows. MariaDB counts 1 per inserted row, 2 per changed row and 0 per
/// unchanged one, and for multi-row statements reports `Duplicates: N`, the
/// rows it changed; a single-row statement's count says it alone.
fn upsert_counts(rows: u64, affected: u64, info: &str) -> (u64, u64) {
    let changed = info
        .split("Duplicates:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(u64::from(rows == 1 && affected == 2));
    (affected.saturating_sub(2 * changed), changed)
}

/// How the replica's copy differs from the source's definition.
#[derive(Debug, Default)]
struct Drift {
    added: Vec<String>,
    changed: Vec<String>,
}

fn drift(source: &SourceTable, replica: &SourceTable) -> Drift {
    let mut d = Drift::default();
    for column in &source.columns {
        match replica.column(&column.name) {
            None => d.added.push(column.name.clone()),
            Some(r)
                if comparable_type(&r.column_type) != comparable_type(&column.column_type)
                    || r.nullable != column.nullable =>
            {
                d.changed.push(format!(
                    "{} ({} → {})",
                    column.name, r.column_type, column.column_type
                ));
            }
            Some(_) => {}
        }
    }
    for column in &replica.columns {
        if source.column(&column.name).is_none() {
            d.changed.push(format!("{} (dropped)", column.name));
        }
    }
    if source.primary_key != replica.primary_key {
        d.changed.push(format!(
            "primary key ({} → {})",
            replica.primary_key.join(", "),
            source.primary_key.join(", ")
        ));
    }
    d
}

/// A `COLUMN_TYPE` as MariaDB and MySQL 8 both render it, so a MySQL 8
/// source and a MariaDB replica agree on an unchanged column: integer
/// display widths dropped (MySQL 8.0.19 stopped showing them, except
/// `tinyint(1)`), `year(4)` as `year`, `json` as `longtext` (MariaDB's
/// `json`), `geomcollection` as `geometrycollection`.
fn comparable_type(column_type: &str) -> String {
    let t = column_type.to_ascii_lowercase();
    let integer = ["tinyint(", "smallint(", "mediumint(", "int(", "bigint("]
        .iter()
        .find(|p| t.starts_with(**p));
    match integer {
        Some(p) if !t.starts_with("tinyint(1)") && !t.contains("zerofill") => {
            let width_end = t.find(')').map_or(t.len(), |i| i + 1);
            format!("{}{}", &p[..p.len() - 1], &t[width_end..])
        }
        _ => match t.as_str() {
            "year(4)" => "year".to_string(),
            "json" => "longtext".to_string(),
            "geomcollection" => "geometrycollection".to_string(),
            _ => t,
        },
    }
}

/// A replica session, with the run's lock wait when one is set.
async fn replica_session(ctx: &ExtractContext) -> Result<Conn> {
    let mut conn = session(&ctx.replica).await?;
    if let Some(seconds) = ctx.replica_lock_wait {
        // Row locks (InnoDB) and table locks (the full copy's RENAME) alike.
        conn.query_drop(format!(
            "SET SESSION innodb_lock_wait_timeout = {seconds}, lock_wait_timeout = {seconds}"
        ))
        .await
        .map_err(|e| {
            Error::mysql(
                format!("setting the lock wait on {}", my::describe(&ctx.replica)),
                e,
            )
        })?;
    }
    Ok(conn)
}

async fn session(settings: &MySqlSettings) -> Result<Conn> {
    let mut conn = my::connect(settings).await?;
    for sql in SESSION_SETUP {
        conn.query_drop(sql).await.map_err(|e| {
            Error::mysql(
                format!("preparing the session on {}", my::describe(settings)),
                e,
            )
        })?;
    }
    Ok(conn)
}

async fn table_exists(conn: &mut Conn, database: &str, table: &str) -> Result<bool> {
    let n: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (database, table),
        )
        .await
        .map_err(|e| Error::mysql(format!("looking for `{table}` in the replica"), e))?;
    Ok(n.unwrap_or(0) > 0)
}

/// Copies one table from the source into the replica.
pub async fn copy_table(
    ctx: &ExtractContext,
    cfg: &TableConfig,
    opts: &LoadOptions,
    resume: ResumeSlot,
) -> Result<TableReport> {
    let (run_id, stop) = (opts.run_id.as_str(), &opts.stop);
    let started = Instant::now();
    let _slot = ctx
        .source_slots
        .acquire()
        .await
        .map_err(|_| Error::new(ErrorKind::Interrupted, "the run is shutting down"))?;
    let mut source = session(&ctx.source).await?;
    let mut replica = replica_session(ctx).await?;
    let described = my::describe_table(&mut source, &ctx.source.database, &cfg.name).await?;
    let (source_table, policy) = crate::mask::shape(described, cfg)?;
    reconcile::check_key(cfg, &source_table)?;
    let masker = Masker::for_table(&source_table, &policy, ctx.mask_key.as_ref())?;
    let key = source_table.primary_key.clone();
    let mut warnings = Vec::new();
    if key.is_empty() {
        warnings.push("table has no primary key: copied in full every run".to_string());
    }
    warnings.extend(cfg.missing_columns_warning(|c| source_table.column(c).is_some()));
    let replica_table = if table_exists(&mut replica, &ctx.replica.database, &cfg.name).await? {
        Some(my::describe_table(&mut replica, &ctx.replica.database, &cfg.name).await?)
    } else {
        None
    };
    if replica_table
        .as_ref()
        .is_some_and(|r| !r.unique_keys.is_empty())
    {
        let relaxed = relax_unique_keys(&mut replica, &cfg.name).await?;
        if !relaxed.is_empty() {
            warnings.push(format!(
                "unique key(s) {} of the replica copy made plain indexes: the copy applies changes row by row",
                relaxed.join(", ")
            ));
        }
    }
    let drift = replica_table
        .as_ref()
        .map(|r| drift(&source_table, r))
        .unwrap_or_default();
    if !drift.added.is_empty() || !drift.changed.is_empty() {
        warnings.push(format!(
            "schema drift applied to the replica: added [{}], changed [{}]",
            drift.added.join(", "),
            drift.changed.join(", ")
        ));
    }
    let stored = tracking::load_copy_watermarks(&mut replica, &cfg.name).await?;
    let state = tracking::copy_state(&mut replica, &cfg.name).await?;
    let clock = tracking::copy_clock(&mut replica, &cfg.name).await?;
    let facts = TableFacts {
        force_full: opts.force_full,
        seconds_since_last: state.seconds_since_last,
        ignore_time_gap: opts.ignore_time_gap,
        key: key.clone(),
        orderable_columns: source_table
            .columns
            .iter()
            .filter(|c| c.ty.is_watermark_capable())
            .map(|c| c.name.clone())
            .collect(),
        source_columns: source_table
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect(),
        watermarked_columns: stored.keys().cloned().collect(),
        destination_created: replica_table.is_none(),
        added_columns: drift.added.clone(),
        altered_columns: drift.changed.clone(),
    };
    let mut decision = resolve(cfg, &facts);
    let resuming = resume.lock().map(|r| r.is_some()).unwrap_or(false);
    if resuming && decision.strategy != Strategy::Full {
        decision = crate::config::Decision {
            strategy: Strategy::Full,
            reason: format!("resuming an interrupted full copy ({})", decision.reason),
        };
    }
    let policy_text = policy.fingerprint();
    let policy_change = crate::mask::policy_change(
        &state.policy,
        &policy_text,
        replica_table.is_some() && !resuming,
    );
    if let Some(change) = &policy_change {
        decision = crate::config::Decision {
            strategy: Strategy::Full,
            reason: crate::mask::policy_reason(change),
        };
    }
    if let Strategy::Incremental { columns } = &decision.strategy {
        for column in columns {
            if !source_table.indexed_first_columns.contains(column) {
                warnings.push(format!(
                    "no source index starts with `{column}`: each incremental page scans the table on the source; add one"
                ));
            }
        }
    }
    tracing::info!(table = %cfg.name, strategy = decision.strategy.name(), reason = %decision.reason, "copying");
    let mut report = TableReport {
        warnings,
        watermark_start: incremental::describe_marks(
            &stored
                .iter()
                .map(|(c, m)| (c.clone(), m.clone()))
                .collect::<Vec<_>>(),
        ),
        policy_change: policy_change.clone(),
        ..TableReport::new(&cfg.name, decision.clone())
    };
    let checksum = if wants_checksum(cfg, &decision) && !resuming {
        my::table_checksum(&mut source, &cfg.name).await?
    } else {
        None
    };
    if policy_change.is_none() && unchanged(cfg, &facts, checksum.as_deref(), state.last_refresh())
    {
        report.decision.reason = crate::config::UNCHANGED_REASON.to_string();
        report.elapsed = started.elapsed();
        return Ok(report);
    }
    let job = CopyJob {
        ctx,
        cfg,
        run_id,
        stop,
        table: &source_table,
        key: &key,
        clock: &clock,
        policy: &policy,
        masker: masker.clone(),
    };
    match &decision.strategy {
        Strategy::Full => {
            full_copy(&job, source, replica, &resume, &mut report).await?;
            if let Some(sum) = &checksum {
                let mut replica = replica_session(ctx).await?;
                tracking::save_copy_record(&mut replica, &cfg.name, Record::Checksum, sum).await?;
            }
        }
        Strategy::Incremental { columns } => {
            let stored = (&stored, state.keys_through.as_deref());
            incremental_copy(&job, source, replica, stored, columns, &mut report).await?
        }
    }
    if reconcile::applies(&cfg.deletes, &decision.strategy) {
        let done = reconcile_copy(
            ctx,
            cfg,
            (&source_table, masker.as_deref()),
            state.reconciled(),
            opts.allow_mass_delete,
        )
        .await?;
        report.rows_deleted = done.removed;
        report.rows_repaired = done.written;
    } else if cfg.deletes.detection != DeleteDetection::None {
        let mut replica = replica_session(ctx).await?;
        tracking::mark_copy_reconciled(&mut replica, &cfg.name, true).await?;
    }
    if policy_text != state.policy {
        let mut replica = replica_session(ctx).await?;
        tracking::save_copy_record(&mut replica, &cfg.name, Record::Policy, &policy_text).await?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Copies again from the source the replica rows of `keys`, in one replica
/// transaction: rows the source has are upserted (a row already equal is
/// left as it is), rows it lacks are deleted. The repair of what a
/// comparison found different.
pub async fn recopy_keys(
    ctx: &ExtractContext,
    cfg: &TableConfig,
    keys: &[reconcile::Key],
) -> Result<reconcile::Repaired> {
    let mut source = session(&ctx.source).await?;
    let mut replica = replica_session(ctx).await?;
    let described = my::describe_table(&mut source, &ctx.source.database, &cfg.name).await?;
    let (table, policy) = crate::mask::shape(described, cfg)?;
    let masker = Masker::for_table(&table, &policy, ctx.mask_key.as_ref())?;
    let held = my::describe_table(&mut replica, &ctx.replica.database, &cfg.name).await?;
    if !held.unique_keys.is_empty() {
        relax_unique_keys(&mut replica, &cfg.name).await?;
    }
    let key = reconcile::reconcilable_key(&table)?;
    let mut tx = replica
        .start_transaction(TxOpts::default())
        .await
        .map_err(|e| Error::mysql("starting a replica transaction", e))?;
    let done = recopy_into(
        &mut source,
        &mut tx,
        ctx.rate.as_deref(),
        (&table, masker.as_deref()),
        &key,
        keys,
    )
    .await?;
    tx.commit()
        .await
        .map_err(|e| Error::mysql(format!("committing a repair of `{}`", cfg.name), e))?;
    Ok(done)
}

/// Reads the rows of `keys` from the source (within the run's budget) and
/// upserts them into the replica through `replica` (a transaction of the
/// caller's); deletes the keys the source lacks.
async fn recopy_into(
    source: &mut Conn,
    replica: &mut impl Queryable,
    rate: Option<&RateLimit>,
    (table, masker): (&SourceTable, Option<&Masker>),
    key: &[String],
    keys: &[reconcile::Key],
) -> Result<reconcile::Repaired> {
    let columns: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
    let mut done = reconcile::Repaired::default();
    for chunk in keys.chunks(reconcile::REPAIR_CHUNK) {
        let (rows, gone) =
            reconcile::rows_by_key(source, (&table.name, &columns, key), chunk, rate).await?;
        let mut values: Vec<Vec<Value>> = rows.into_iter().map(Row::unwrap).collect();
        if let Some(masker) = masker {
            values.iter_mut().for_each(|v| masker.apply_values(v));
        }
        let (inserted, updated) =
            insert_rows(replica, &table.name, &columns, key, values, true).await?;
        done.written += inserted + updated;
        done.removed += reconcile::delete_mysql(replica, &table.name, key, &gone).await?;
    }
    Ok(done)
}

/// Reconciles the replica with the source when the table's schedule says
/// so (else removes the rows OpenDental logged as deleted): rows the source
/// no longer has are deleted and, under `reconcile: rows`, rows that
/// differ or are missing are copied again, in one replica transaction with
/// the tracking update.
async fn reconcile_copy(
    ctx: &ExtractContext,
    cfg: &TableConfig,
    (table, masker): (&SourceTable, Option<&Masker>),
    state: (Option<i64>, i64),
    allow_mass_delete: bool,
) -> Result<reconcile::Repaired> {
    let key = reconcile::reconcilable_key(table)?;
    let mut replica = replica_session(ctx).await?;
    let mut source = session(&ctx.source).await?;
    // Masked values differ from the source's by design: rows are compared
    // by their other columns.
    let compared = SourceTable {
        columns: table
            .columns
            .iter()
            .filter(|c| !cfg.columns.masks(&c.name))
            .cloned()
            .collect(),
        ..table.clone()
    };
    let row_text = (cfg.deletes.detection == DeleteDetection::RowReconcile)
        .then(|| reconcile::row_text(&compared));
    let found = reconcile::reconcile(
        &mut source,
        ctx.rate.clone(),
        &mut Side::MySql {
            conn: &mut replica,
            table: cfg.name.clone(),
            rate: None,
            row_text: row_text.clone(),
        },
        cfg,
        &key,
        state,
        row_text,
        allow_mass_delete,
    )
    .await?;
    let mut tx = replica
        .start_transaction(TxOpts::default())
        .await
        .map_err(|e| Error::mysql(format!("reconciling replica table `{}`", cfg.name), e))?;
    let mut done = recopy_into(
        &mut source,
        &mut tx,
        ctx.rate.as_deref(),
        (table, masker),
        &key,
        &found.rewrite,
    )
    .await?;
    done.removed += reconcile::delete_mysql(&mut tx, &cfg.name, &key, &found.delete).await?;
    tracking::mark_copy_reconciled(&mut tx, &cfg.name, found.full).await?;
    tx.commit()
        .await
        .map_err(|e| Error::mysql(format!("reconciling replica table `{}`", cfg.name), e))?;
    if done.removed + done.written > 0 {
        tracing::info!(table = %cfg.name, removed = done.removed, repaired = done.written, "replica reconciled with the source");
    }
    Ok(done)
}

struct CopyJob<'a> {
    ctx: &'a ExtractContext,
    cfg: &'a TableConfig,
    run_id: &'a str,
    stop: &'a Stop,
    table: &'a SourceTable,
    key: &'a [String],
    clock: &'a tracking::RunClock,
    policy: &'a crate::config::Applied,
    masker: Option<Arc<Masker>>,
}

impl CopyJob<'_> {
    fn spec(&self) -> ReadSpec {
        ReadSpec {
            table: self.cfg.name.clone(),
            columns: self.table.columns.iter().map(|c| c.name.clone()).collect(),
            batch_rows: self.cfg.batch_size,
            batch_bytes: MAX_BATCH_BYTES,
            rate: self.ctx.rate.clone(),
            masker: self.masker.clone(),
        }
    }

    fn columns(&self) -> Vec<String> {
        self.table.columns.iter().map(|c| c.name.clone()).collect()
    }

    fn progress(
        &self,
        marks: Vec<(String, StoredWatermark)>,
        primary: Option<(String, String)>,
        rows: u64,
        replace_all: bool,
        status: &'static str,
        strategy: &'static str,
    ) -> Progress {
        Progress {
            keys_through: None,
            window_fingerprints: None,
            watermarks: marks,
            replace_all,
            primary,
            rows_loaded: i64::try_from(rows).unwrap_or(i64::MAX),
            status,
            strategy,
            run_id: self.run_id.to_string(),
            run_started_at: Some(self.clock.now.clone()),
        }
    }
}

/// Turns a replica table's secondary `UNIQUE` keys into plain indexes and
/// names them. The copy applies the source's changes row by row, so it can
/// pass through states no source transaction showed (a code moved from one
/// row to a new one, the new row copied first); a unique key would then turn
/// the upsert of one row into an update of the other. The source keeps the
/// values unique; the replica only mirrors them.
async fn relax_unique_keys(replica: &mut Conn, table: &str) -> Result<Vec<String>> {
    let ddl = my::show_create(replica, table, "replica").await?;
    let unique = my::unique_keys(&ddl);
    let changes: Vec<String> = unique
        .iter()
        .map(|(name, plain)| format!("DROP INDEX {}, ADD {plain}", ident::mysql(name)))
        .collect();
    let names = unique.into_iter().map(|(name, _)| name).collect();
    if !changes.is_empty() {
        replica
            .query_drop(format!(
                "ALTER TABLE {} {}",
                ident::mysql(table),
                changes.join(", ")
            ))
            .await
            .map_err(|e| {
                Error::mysql(
                    format!("making the unique keys of replica table `{table}` plain"),
                    e,
                )
            })?;
    }
    Ok(names)
}

/// Seconds a retry waits for the session of an abandoned attempt to end.
const SETTLE_SECONDS: u32 = 30;

/// Ends the replica session `writer` of an abandoned attempt (its last
/// commit either landed or not), then returns the key of the shadow
/// table's last row (where the copy continues) and its row count.
async fn settle_shadow(
    replica: &mut Conn,
    shadow: &str,
    key: &[String],
    writer: u32,
) -> Result<(Option<Vec<Value>>, u64)> {
    // Unknown thread (1094): it is gone already.
    let _ = replica
        .query_drop(format!("KILL CONNECTION {writer}"))
        .await;
    for _ in 0..SETTLE_SECONDS * 10 {
        let alive: Option<u64> = replica
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?",
                (writer,),
            )
            .await
            .map_err(|e| Error::mysql("waiting for an abandoned copy session to end", e))?;
        if alive == Some(0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let table = ident::mysql(shadow);
    let err = |e| Error::mysql(format!("reading where shadow table `{shadow}` stands"), e);
    let order: Vec<String> = key
        .iter()
        .map(|k| format!("{} DESC", ident::mysql(k)))
        .collect();
    let last: Option<mysql_async::Row> = replica
        .exec_first(
            format!(
                "SELECT {} FROM {table} ORDER BY {} LIMIT 1",
                ident::mysql_list(key.iter().map(String::as_str)),
                order.join(", ")
            ),
            (),
        )
        .await
        .map_err(err)?;
    let rows: Option<u64> = replica
        .query_first(format!("SELECT COUNT(*) FROM {table}"))
        .await
        .map_err(err)?;
    Ok((last.map(mysql_async::Row::unwrap), rows.unwrap_or(0)))
}

async fn full_copy(
    job: &CopyJob<'_>,
    mut source: Conn,
    mut replica: Conn,
    resume: &ResumeSlot,
    report: &mut TableReport,
) -> Result<()> {
    let cfg = job.cfg;
    let shadow = shadow_name(&cfg.name);
    let previous = resume.lock().ok().and_then(|r| r.clone());
    let (marks, after, done_before, deferred_keys) = match previous {
        Some(r) if r.shadow == shadow => {
            let (after, rows) = settle_shadow(&mut replica, &shadow, job.key, r.writer).await?;
            report
                .warnings
                .push(format!("resumed after {rows} rows already copied"));
            (r.marks, after, rows, r.deferred_keys)
        }
        _ => {
            let marks = incremental::full_read_marks(
                &mut source,
                cfg,
                job.table,
                job.key,
                &Limits::default(),
            )
            .await?;
            let ddl = my::show_create(&mut source, &cfg.name, "source").await?;
            let collations: Vec<String> = replica
                .query("SELECT COLLATION_NAME FROM information_schema.COLLATIONS")
                .await
                .map_err(|e| Error::mysql("reading the replica's collations", e))?;
            let has = |c: &str| collations.iter().any(|k| k == c);
            let made = my::replica_ddl(&ddl, &cfg.name, &shadow, &has, job.policy)?;
            report.warnings.extend(made.notes);
            replica
                .query_drop(format!("DROP TABLE IF EXISTS {}", ident::mysql(&shadow)))
                .await
                .map_err(|e| Error::mysql(format!("clearing shadow table `{shadow}`"), e))?;
            replica.query_drop(made.create).await.map_err(|e| {
                Error::mysql(
                    format!("creating shadow table `{shadow}` in the replica"),
                    e,
                )
            })?;
            let deferred = made.deferred_keys;
            (marks, None, 0, deferred)
        }
    };
    let read = if job.key.is_empty() {
        ReadJob::Full
    } else {
        ReadJob::Passes(vec![Pass {
            advances: None,
            kind: PassKind::Window,
            range: ReadRange::All,
            order: job.key.to_vec(),
            after,
        }])
    };
    let columns = job.columns();
    let encoder = RowEncoder {
        rows: Vec::new(),
        bytes: 0,
    };
    let bulk = bulk_loadable(&mut replica, job.table).await?;
    let (mut rx, reader) = spawn_reader(source, job.spec(), read, encoder);
    let mut copied = done_before;
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        let inserted = if bulk {
            load_rows(&mut replica, job.table, &shadow, batch.payload).await?
        } else {
            let mut tx = replica
                .start_transaction(TxOpts::default())
                .await
                .map_err(|e| Error::mysql("starting a replica transaction", e))?;
            let (inserted, _) =
                insert_rows(&mut tx, &shadow, &columns, job.key, batch.payload, false).await?;
            tx.commit()
                .await
                .map_err(|e| Error::mysql(format!("committing a batch of `{shadow}`"), e))?;
            inserted
        };
        copied += inserted;
        report.rows_read += batch.rows;
        report.rows_inserted += inserted;
        crate::progress::rows(&cfg.name, "extract", copied);
        if let (false, Ok(mut slot)) = (job.key.is_empty(), resume.lock()) {
            *slot = Some(Resume {
                shadow: shadow.clone(),
                deferred_keys: deferred_keys.clone(),
                marks: marks.clone(),
                writer: replica.id(),
            });
        }
        job.stop.check(
            &cfg.name,
            "during its full copy (the replica keeps its previous copy)",
        )?;
    }
    my::finish_reader(reader, &cfg.name).await?;
    for statement in my::add_keys(&shadow, &deferred_keys) {
        replica
            .query_drop(statement)
            .await
            .map_err(|e| Error::mysql(format!("building the secondary keys of `{shadow}`"), e))?;
    }
    // RENAME commits on its own, so the tracking cannot change with it. The
    // old watermarks go first: a stop between the two leaves none, which
    // makes the next copy a full one and holds the load's watermarks still,
    // whichever table the swap left in place.
    let cleared = job.progress(Vec::new(), None, copied, true, "running", "full");
    tracking::save_copy_progress(&mut replica, &cfg.name, &cleared).await?;
    let real = ident::mysql(&cfg.name);
    let retired = ident::mysql(&retired_name(&cfg.name));
    let swap = if table_exists(&mut replica, &job.ctx.replica.database, &cfg.name).await? {
        replica
            .query_drop(format!("DROP TABLE IF EXISTS {retired}"))
            .await
            .map_err(|e| Error::mysql("clearing the retired copy", e))?;
        format!(
            "RENAME TABLE {real} TO {retired}, {} TO {real}",
            ident::mysql(&shadow)
        )
    } else {
        format!("RENAME TABLE {} TO {real}", ident::mysql(&shadow))
    };
    replica
        .query_drop(swap)
        .await
        .map_err(|e| Error::mysql(format!("swapping the new copy of `{}` in", cfg.name), e))?;
    replica
        .query_drop(format!("DROP TABLE IF EXISTS {retired}"))
        .await
        .map_err(|e| Error::mysql("dropping the retired copy", e))?;
    if let Ok(mut slot) = resume.lock() {
        *slot = None;
    }
    let primary = marks.first().map(|(c, m)| (c.clone(), m.value.clone()));
    let progress = job.progress(marks.clone(), primary, copied, true, "success", "full");
    tracking::save_copy_progress(&mut replica, &cfg.name, &progress).await?;
    report.watermark_end = incremental::describe_marks(&marks);
    Ok(())
}

/// The passes of an incremental copy still to read: a range the replica
/// holds as the source does is not read. Not for a table with masked
/// columns: the replica holds their masked values, so a change to one of
/// them alone (an edit within the second of the last, keeping the stamp)
/// could not be told, and its ranges are read as before.
async fn unchanged_dropped(
    job: &CopyJob<'_>,
    (source, replica): (&mut Conn, &mut Conn),
    passes: Vec<Pass>,
    marks: &Marks,
    report: &mut TableReport,
) -> Result<Vec<Pass>> {
    let cfg = job.cfg;
    if job.table.columns.iter().any(|c| cfg.columns.masks(&c.name)) {
        return Ok(passes);
    }
    let row_text = reconcile::row_text(job.table);
    let at_source = incremental::probe_passes(source, &cfg.name, &row_text, &passes, marks).await?;
    let to_compare: Vec<Pass> = passes
        .iter()
        .zip(&at_source)
        .filter(|(_, probe)| probe.as_ref().is_some_and(|p| p.print.rows > 0))
        .map(|(pass, _)| pass.clone())
        .collect();
    let held = incremental::probe_passes(replica, &cfg.name, &row_text, &to_compare, marks)
        .await?
        .into_iter()
        .flatten()
        .map(|p| (p.range, p.print))
        .collect();
    Ok(incremental::drop_unchanged(
        passes, &at_source, &held, report,
    ))
}

/// `stored`: the watermarks by column, and where the new-keys pass resumes.
async fn incremental_copy(
    job: &CopyJob<'_>,
    mut source: Conn,
    mut replica: Conn,
    (stored, keys_through): (&HashMap<String, StoredWatermark>, Option<&str>),
    columns: &[String],
    report: &mut TableReport,
) -> Result<()> {
    let cfg = job.cfg;
    let held_key = if incremental::reads_new_keys(job.table, job.key, columns) {
        let all = my::Bound::Open;
        let highest = my::upper_bound(&mut replica, &cfg.name, &job.key[0], &all, &all);
        Some(incremental::held_key(keys_through, highest).await?)
    } else {
        None
    };
    let limits = Limits {
        since_last_run: job.clock.since_last_run,
        held_key,
        ..Limits::default()
    };
    let (passes, mut marks) = incremental::plan_passes(
        &mut source,
        cfg,
        job.table,
        job.key,
        stored,
        columns,
        &limits,
    )
    .await?;
    let passes =
        unchanged_dropped(job, (&mut source, &mut replica), passes, &marks, report).await?;
    let names = job.columns();
    let encoder = RowEncoder {
        rows: Vec::new(),
        bytes: 0,
    };
    let (mut rx, reader) = spawn_reader(source, job.spec(), ReadJob::Passes(passes), encoder);
    let progress_of = |marks: &Marks, rows: u64, status| Progress {
        keys_through: marks.keys_through(),
        ..job.progress(
            marks.stored(),
            marks.primary(),
            rows,
            false,
            status,
            "incremental",
        )
    };
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        let next = marks.advanced(
            batch.kind,
            batch.watermark.as_deref(),
            batch.last.as_deref(),
        );
        report.count_pass(batch.kind, batch.rows);
        let mut tx = replica
            .start_transaction(TxOpts::default())
            .await
            .map_err(|e| Error::mysql("starting a replica transaction", e))?;
        let (inserted, updated) =
            insert_rows(&mut tx, &cfg.name, &names, job.key, batch.payload, true).await?;
        let rows_so_far = report.rows_inserted + report.rows_updated + inserted + updated;
        tracking::save_copy_progress(
            &mut tx,
            &cfg.name,
            &progress_of(&next, rows_so_far, "running"),
        )
        .await?;
        tx.commit()
            .await
            .map_err(|e| Error::mysql(format!("committing a batch of `{}`", cfg.name), e))?;
        marks = next;
        report.rows_read += batch.rows;
        report.rows_inserted += inserted;
        report.rows_updated += updated;
        crate::progress::rows(&cfg.name, "extract", report.rows_read);
        job.stop.check(
            &cfg.name,
            &format!("after copying {} rows", report.rows_read),
        )?;
    }
    my::finish_reader(reader, &cfg.name).await?;
    let progress = progress_of(
        &marks.finished(),
        report.rows_inserted + report.rows_updated,
        "success",
    );
    tracking::save_copy_progress(&mut replica, &cfg.name, &progress).await?;
    report.watermark_end = incremental::describe_marks(&progress.watermarks);
    report.note_arrivals(cfg.skew_allowance());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql::SourceColumn;
    use crate::schema::SourceType;

    fn table(columns: &[(&str, &str)], key: &[&str]) -> SourceTable {
        SourceTable {
            name: "t".into(),
            columns: columns
                .iter()
                .map(|(n, t)| SourceColumn {
                    name: n.to_string(),
                    ty: SourceType::Text,
                    nullable: true,
                    column_type: t.to_string(),
                })
                .collect(),
            primary_key: key.iter().map(|k| k.to_string()).collect(),
            indexed_first_columns: Vec::new(),
            auto_increment: None,
            unique_keys: Vec::new(),
        }
    }

    #[test]
    fn statements_come_in_few_power_of_two_shapes() {
        let chunks = statement_chunks(&[100; 1500], 25);
        assert_eq!(chunks, vec![512, 512, 256, 128, 64, 16, 8, 4]);
        assert_eq!(chunks.iter().sum::<usize>(), 1500);
        // 70 columns: 65,535 placeholders allow 936 rows, capped at 512.
        assert_eq!(statement_chunks(&[10; 600], 70)[0], 512);
        // Wide rows: 3 MiB each fit one per statement.
        assert_eq!(statement_chunks(&[3 << 20; 3], 5), vec![1, 1, 1]);
        assert!(statement_chunks(&[], 5).is_empty());
    }

    #[test]
    fn upsert_counts_tell_inserts_from_changes() {
        // 300 rows: 100 new, 150 changed, 50 unchanged.
        assert_eq!(
            upsert_counts(300, 100 + 300, "Records: 300  Duplicates: 150  Warnings: 0"),
            (100, 150)
        );
        assert_eq!(upsert_counts(1, 1, ""), (1, 0));
        assert_eq!(upsert_counts(1, 2, ""), (0, 1));
        assert_eq!(upsert_counts(1, 0, ""), (0, 0));
    }

    #[test]
    fn drift_names_added_changed_and_dropped_columns() {
        let replica = table(
            &[("A", "int(11)"), ("B", "varchar(10)"), ("Gone", "text")],
            &["A"],
        );
        let source = table(
            &[("A", "int(11)"), ("B", "varchar(40)"), ("New", "text")],
            &["A"],
        );
        let d = drift(&source, &replica);
        assert_eq!(d.added, vec!["New"]);
        assert_eq!(
            d.changed,
            vec!["B (varchar(10) → varchar(40))", "Gone (dropped)"]
        );
        assert!(drift(&source, &source).changed.is_empty());
    }

    #[test]
    fn a_mysql8_source_and_a_mariadb_replica_agree_on_unchanged_columns() {
        let mysql8 = table(
            &[
                ("A", "bigint unsigned"),
                ("B", "int"),
                ("C", "tinyint(1)"),
                ("D", "year"),
                ("E", "json"),
                ("F", "int(5) unsigned zerofill"),
                ("G", "geomcollection"),
            ],
            &["A"],
        );
        let mariadb = table(
            &[
                ("A", "bigint(20) unsigned"),
                ("B", "int(11)"),
                ("C", "tinyint(1)"),
                ("D", "year(4)"),
                ("E", "longtext"),
                ("F", "int(5) unsigned zerofill"),
                ("G", "geometrycollection"),
            ],
            &["A"],
        );
        let d = drift(&mysql8, &mariadb);
        assert!(d.added.is_empty() && d.changed.is_empty(), "{d:?}");
        // A real change still shows.
        let bool_now = table(&[("A", "bigint unsigned"), ("B", "tinyint(1)")], &["A"]);
        let was_int = table(&[("A", "bigint(20) unsigned"), ("B", "tinyint(4)")], &["A"]);
        assert_eq!(
            drift(&bool_now, &was_int).changed,
            ["B (tinyint(4) → tinyint(1))"]
        );
    }
}
