//! Phase 2: one table from the replica (MySQL) into the warehouse (PostgreSQL).
//!
//! A full load empties and refills the table inside one transaction, so
//! readers see the old or the new contents and the table (and every view over
//! it) keeps its identity. An incremental load reads keyset pages past the
//! watermarks; each page is copied into a temporary staging table and merged,
//! and the watermark is written in the same transaction as the rows it covers.

mod batch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use mysql_async::{Conn, Value};
use tokio_postgres::{Client, GenericClient};

use crate::config::{
    Decision, DeleteDetection, MySqlSettings, PgSettings, Secret, Strategy, TableConfig,
    TableFacts, resolve, unchanged, wants_checksum,
};
use crate::error::{Error, ErrorKind, Result};
use crate::incremental::{self, Limits, Marks};
use crate::mask::Masker;
use crate::mysql::{self as my, RateLimit, ReadJob, ReadSpec, SourceTable, spawn_reader};
use crate::postgres::{self as pg, CopyIn, DestTable};
use crate::reconcile::{self, Side};
use crate::schema::{
    DataProfile, PgType, SourceType, covering, ident, is_widening, map_type, value_from_text,
};
use crate::tracking::{self, PhaseState, Progress, Record, StoredWatermark};

pub use crate::outcome::{LoadOptions, TableReport};
pub use batch::{CopyEncoder, FULL_BATCH_BYTES, MAX_BATCH_BYTES, Plan, PlannedColumn};

/// Where a load reads and writes.
#[derive(Debug, Clone)]
pub struct LoadContext {
    /// The MySQL database the load reads: the replica, or the source in direct mode.
    pub replica: MySqlSettings,
    pub warehouse: PgSettings,
    /// Rows-per-second budget on what the load reads (direct mode reads the source).
    pub rate: Option<Arc<RateLimit>>,
    /// `replica` is filled by this tool's copy (not direct mode): the load
    /// never moves a watermark past what the copy has committed.
    pub capped_by_copy: bool,
    /// The key of `mask_columns: hash`, for a load that reads the source
    /// (direct mode) and so applies the column policy itself.
    pub mask_key: Option<Secret>,
    /// Warehouse connections the run's loads share in turn.
    pub connections: pg::Pool,
}

const STAGE_TABLE: &str = "etl_stage";

struct Prepared {
    source: SourceTable,
    /// The column policy of the rows the load writes ([`Applied::fingerprint`]).
    policy: String,
    /// Masks for rows read from the source (direct mode).
    masker: Option<Arc<Masker>>,
    /// The change of policy the load rewrites the table for.
    policy_change: Option<String>,
    plan: Arc<Plan>,
    key: Vec<String>,
    dest_columns: Vec<(String, PgType)>,
    decision: Decision,
    facts: TableFacts,
    state: PhaseState,
    stored: HashMap<String, StoredWatermark>,
    warnings: Vec<String>,
}

fn mapped_alternatives(source: &crate::schema::SourceType) -> [PgType; 2] {
    [
        map_type(source, DataProfile::default()),
        map_type(
            source,
            DataProfile {
                non_boolean_values: true,
                time_outside_day: true,
            },
        ),
    ]
}

async fn prepare(
    mysql: &mut Conn,
    client: &mut Client,
    ctx: &LoadContext,
    cfg: &TableConfig,
    opts: &LoadOptions,
) -> Result<Prepared> {
    let schema = &ctx.warehouse.schema;
    let described = my::describe_table(mysql, &ctx.replica.database, &cfg.name).await?;
    // Reading the source, the load is the first hop and applies the column
    // policy itself; reading the replica, it carries the policy the copy
    // wrote the rows under.
    let (source, policy, masker) = if ctx.capped_by_copy {
        let policy = tracking::copy_state(mysql, &cfg.name).await?.policy;
        (described, policy, None)
    } else {
        let (shaped, applied) = crate::mask::shape(described, cfg)?;
        let masker = Masker::for_table(&shaped, &applied, ctx.mask_key.as_ref())?;
        (shaped, applied.fingerprint(), masker)
    };
    reconcile::check_key(cfg, &source)?;
    let too_long = ident::too_long_for_pg(
        std::iter::once(cfg.name.as_str()).chain(source.columns.iter().map(|c| c.name.as_str())),
    );
    if !too_long.is_empty() {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "`{}`: PostgreSQL cuts names longer than {} bytes, so {} cannot be carried under its own name; \
                 rename it at the source or leave the table out of the config",
                cfg.name,
                ident::PG_MAX_NAME_BYTES,
                too_long
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut warnings = Vec::new();
    warnings.extend(cfg.missing_columns_warning(|c| source.column(c).is_some()));
    let key = if !source.primary_key.is_empty() {
        if !cfg.primary_key.is_empty() && cfg.primary_key != source.primary_key {
            warnings.push(format!(
                "config primary_key {:?} differs from the table's primary key {:?}; using the table's",
                cfg.primary_key, source.primary_key
            ));
        }
        source.primary_key.clone()
    } else if !cfg.primary_key.is_empty()
        && cfg.primary_key.iter().all(|k| source.column(k).is_some())
    {
        warnings.push(format!(
            "MySQL table has no primary key; using config primary_key {:?}, which must be unique",
            cfg.primary_key
        ));
        cfg.primary_key.clone()
    } else {
        warnings.push("table has no primary key: loaded by full refresh every run".to_string());
        Vec::new()
    };

    let mut destination_created = false;
    let mut added_columns = Vec::new();
    let dest = match pg::describe_table(client, schema, &cfg.name).await? {
        None => {
            let profile = my::profile_columns(mysql, &source).await?;
            let columns: Vec<(String, PgType, bool)> = source
                .columns
                .iter()
                .map(|c| {
                    let ty = map_type(&c.ty, profile.get(&c.name).copied().unwrap_or_default());
                    (c.name.clone(), ty, !key.contains(&c.name))
                })
                .collect();
            pg::create_table(client, schema, &cfg.name, &columns, &key).await?;
            destination_created = true;
            describe_dest(client, schema, &cfg.name).await?
        }
        Some(existing) => {
            let missing: Vec<_> = source
                .columns
                .iter()
                .filter(|c| existing.column(&c.name).is_none())
                .cloned()
                .collect();
            if !missing.is_empty() {
                let subset = SourceTable {
                    columns: missing.clone(),
                    ..source.clone()
                };
                let profile = my::profile_columns(mysql, &subset).await?;
                let tx = client.transaction().await.map_err(|e| {
                    Error::postgres(format!("adding columns to {schema}.{}", cfg.name), e)
                })?;
                tracking::forget_load_watermarks(&tx, schema, &cfg.name).await?;
                for column in &missing {
                    let ty = map_type(
                        &column.ty,
                        profile.get(&column.name).copied().unwrap_or_default(),
                    );
                    pg::add_column(&tx, schema, &cfg.name, &column.name, &ty).await?;
                    added_columns.push(column.name.clone());
                }
                tx.commit().await.map_err(|e| {
                    Error::postgres(format!("adding columns to {schema}.{}", cfg.name), e)
                })?;
                describe_dest(client, schema, &cfg.name).await?
            } else {
                existing
            }
        }
    };
    let mut altered_columns = Vec::new();
    for column in &source.columns {
        let Some(current) = dest.column(&column.name).and_then(|c| c.ty.clone()) else {
            continue;
        };
        let mapped = map_type(&column.ty, DataProfile::default());
        if mapped_alternatives(&column.ty).contains(&current) {
            continue;
        }
        let wanted = if is_widening(&current, &mapped) {
            mapped
        } else {
            match covering(&current, &mapped) {
                Some(both) if both != current && is_widening(&current, &both) => both,
                _ => continue,
            }
        };
        match widen_column(client, schema, &cfg.name, &column.name, &wanted).await {
            Ok(()) => altered_columns.push(column.name.clone()),
            Err(e) => warnings.push(format!(
                "column `{}` is now {} in MySQL; widening it from {current} to {wanted} failed ({}); \
                 drop or change what blocks it (a view selecting it, for example) and rerun",
                column.name,
                column.column_type,
                crate::error::chain(&e)
            )),
        }
    }
    let dest = if altered_columns.is_empty() {
        dest
    } else {
        describe_dest(client, schema, &cfg.name).await?
    };
    let dest = if cfg.deletes.soft_delete && dest.column(reconcile::DELETED_AT).is_none() {
        pg::add_column(
            client,
            schema,
            &cfg.name,
            reconcile::DELETED_AT,
            &PgType::TimestampTz(None),
        )
        .await?;
        describe_dest(client, schema, &cfg.name).await?
    } else {
        dest
    };
    for column in &dest.columns {
        if source.column(&column.name).is_none() && column.name != reconcile::DELETED_AT {
            warnings.push(format!(
                "column `{}` is no longer in the source; kept in the warehouse, new rows get NULL",
                column.name
            ));
        }
    }

    let mut planned = Vec::with_capacity(source.columns.len());
    for column in &source.columns {
        let dest_column = dest.column(&column.name).ok_or_else(|| {
            Error::new(
                ErrorKind::Schema,
                format!(
                    "column {schema}.{}.{} vanished while loading",
                    cfg.name, column.name
                ),
            )
        })?;
        let target = dest_column.ty.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Schema,
                format!(
                    "column {schema}.{}.{} has PostgreSQL type {}, which this tool does not write; \
                     change it to {} or drop the table so it is recreated",
                    cfg.name,
                    column.name,
                    dest_column.type_name,
                    map_type(&column.ty, DataProfile::default())
                ),
            )
        })?;
        if !mapped_alternatives(&column.ty).contains(&target) {
            warnings.push(format!(
                "column `{}` is {} in MySQL (maps to {}) but {} in the warehouse; values load while they fit, \
                 and one that does not fails the table",
                column.name,
                column.column_type,
                map_type(&column.ty, DataProfile::default()),
                target
            ));
        }
        planned.push(PlannedColumn {
            name: column.name.clone(),
            source: column.ty.clone(),
            target,
        });
    }
    if !key.is_empty() {
        let key_set: HashSet<&String> = key.iter().collect();
        let has_unique = dest
            .unique_keys
            .iter()
            .any(|u| u.len() == key.len() && u.iter().all(|c| key_set.contains(c)));
        if !has_unique {
            return Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "{schema}.{} has no primary key or unique index on ({}), which the upsert needs; \
                     add one: alter table {} add primary key ({})",
                    cfg.name,
                    key.join(", "),
                    ident::pg_qualified(schema, &cfg.name),
                    ident::pg_list(key.iter().map(String::as_str))
                ),
            ));
        }
    }
    let key_positions = key
        .iter()
        .filter_map(|k| planned.iter().position(|c| &c.name == k))
        .collect();
    let plan = Arc::new(Plan {
        table: cfg.name.clone(),
        columns: planned,
        key_positions,
    });
    let dest_columns = plan
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.target.clone()))
        .collect();

    let stored = tracking::load_watermarks(client, schema, &cfg.name).await?;
    let state = tracking::load_state(client, schema, &cfg.name).await?;
    let facts = TableFacts {
        force_full: opts.force_full,
        key: key.clone(),
        orderable_columns: source
            .columns
            .iter()
            .filter(|c| c.ty.is_watermark_capable())
            .map(|c| c.name.clone())
            .collect(),
        source_columns: source.columns.iter().map(|c| c.name.clone()).collect(),
        watermarked_columns: stored.keys().cloned().collect(),
        destination_created,
        added_columns,
        altered_columns,
        seconds_since_last: state.seconds_since_last,
        ignore_time_gap: opts.ignore_time_gap,
    };
    let mut decision = resolve(cfg, &facts);
    let policy_change =
        crate::mask::policy_change(&state.policy, &policy, !facts.destination_created);
    if let Some(change) = &policy_change {
        decision = Decision {
            strategy: Strategy::Full,
            reason: crate::mask::policy_reason(change),
        };
    }
    if let Strategy::Incremental { columns } = &decision.strategy {
        for column in columns {
            if !source.indexed_first_columns.contains(column) {
                warnings.push(format!(
                    "no MySQL index starts with `{column}`: each incremental page scans the table; add one"
                ));
            }
        }
    }
    Ok(Prepared {
        source,
        policy,
        masker,
        policy_change,
        plan,
        key,
        dest_columns,
        decision,
        facts,
        state,
        stored,
        warnings,
    })
}

async fn describe_dest(client: &Client, schema: &str, table: &str) -> Result<DestTable> {
    pg::describe_table(client, schema, table)
        .await?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Schema,
                format!("{schema}.{table} vanished while loading"),
            )
        })
}

fn add_zero_dates(report: &mut BTreeMap<String, u64>, plan: &Plan, counts: &[u64]) {
    for (i, count) in counts.iter().enumerate() {
        if *count > 0 {
            *report.entry(plan.columns[i].name.clone()).or_default() += count;
        }
    }
}

/// Changes a warehouse column's type and forgets the table's watermarks in
/// one transaction: a refresh that fails after it still refreshes next time.
async fn widen_column(
    client: &mut Client,
    schema: &str,
    table: &str,
    column: &str,
    ty: &PgType,
) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::postgres(format!("widening {schema}.{table}.{column}"), e))?;
    tracking::forget_load_watermarks(&tx, schema, table).await?;
    pg::alter_column_type(&tx, schema, table, column, ty).await?;
    tx.commit()
        .await
        .map_err(|e| Error::postgres(format!("widening {schema}.{table}.{column}"), e))
}

/// Loads one table. The caller records the outcome in the run history.
/// A `time` value past 24 hours that meets a `time` column (created when
/// every value fit a day) widens the column to `interval` and loads again;
/// the batch that met it was rolled back.
pub async fn load_table(
    ctx: &LoadContext,
    cfg: &TableConfig,
    opts: &LoadOptions,
) -> Result<TableReport> {
    match load_once(ctx, cfg, opts).await {
        Err(e) if e.kind() == ErrorKind::Outgrown => {
            let widened = widen_outgrown_times(ctx, cfg).await?;
            if widened.is_empty() {
                return Err(e);
            }
            let mut report = load_once(ctx, cfg, opts).await?;
            report.warnings.push(format!(
                "time column(s) {} hold values past 24 hours now: widened to interval",
                widened.join(", ")
            ));
            Ok(report)
        }
        other => other,
    }
}

/// Alters to `interval` the warehouse `time` columns whose MySQL values now
/// lie outside 00:00–24:00 (one scan of those columns); returns their names.
async fn widen_outgrown_times(ctx: &LoadContext, cfg: &TableConfig) -> Result<Vec<String>> {
    let mut mysql = my::connect(&ctx.replica).await?;
    let client = pg::connect(&ctx.warehouse).await?;
    let schema = &ctx.warehouse.schema;
    let source = my::describe_table(&mut mysql, &ctx.replica.database, &cfg.name).await?;
    let dest = describe_dest(&client, schema, &cfg.name).await?;
    let times = SourceTable {
        columns: source
            .columns
            .iter()
            .filter(|c| {
                matches!(c.ty, SourceType::Time { .. })
                    && dest
                        .column(&c.name)
                        .is_some_and(|d| matches!(d.ty, Some(PgType::Time(_))))
            })
            .cloned()
            .collect(),
        ..source.clone()
    };
    let profile = my::profile_columns(&mut mysql, &times).await?;
    let mut widened = Vec::new();
    for column in &times.columns {
        if profile
            .get(&column.name)
            .is_some_and(|p| p.time_outside_day)
        {
            pg::alter_column_type(&client, schema, &cfg.name, &column.name, &PgType::Interval)
                .await?;
            widened.push(column.name.clone());
        }
    }
    Ok(widened)
}

async fn load_once(
    ctx: &LoadContext,
    cfg: &TableConfig,
    opts: &LoadOptions,
) -> Result<TableReport> {
    let started = Instant::now();
    let mut mysql = my::connect(&ctx.replica).await?;
    let mut client = ctx.connections.get(&ctx.warehouse).await?;
    let prepared = prepare(&mut mysql, &mut client, ctx, cfg, opts).await?;
    let mut report = TableReport {
        warnings: prepared.warnings.clone(),
        watermark_start: incremental::describe_marks(
            &prepared
                .stored
                .iter()
                .map(|(c, m)| (c.clone(), m.clone()))
                .collect::<Vec<_>>(),
        ),
        policy_change: prepared.policy_change.clone(),
        ..TableReport::new(&cfg.name, prepared.decision.clone())
    };
    tracing::info!(
        table = %cfg.name,
        strategy = prepared.decision.strategy.name(),
        reason = %prepared.decision.reason,
        "loading"
    );
    let checksum = if wants_checksum(cfg, &prepared.decision) {
        my::table_checksum(&mut mysql, &cfg.name).await?
    } else {
        None
    };
    let schema = &ctx.warehouse.schema;
    let policy_changed = prepared.policy != prepared.state.policy;
    if !policy_changed
        && unchanged(
            cfg,
            &prepared.facts,
            checksum.as_deref(),
            prepared.state.last_refresh(),
        )
    {
        tracking::mark_status(&client, schema, &cfg.name, "success", None, &opts.run_id).await?;
        report.decision.reason = crate::config::UNCHANGED_REASON.to_string();
        report.elapsed = started.elapsed();
        ctx.connections.put(&ctx.warehouse, client);
        return Ok(report);
    }
    let clock = tracking::load_clock(&client, schema, &cfg.name).await?;
    let copy_manages = ctx.capped_by_copy && tracking::copy_manages(&mut mysql, &cfg.name).await?;
    let caps = if copy_manages {
        copy_caps(&mut mysql, &prepared.source).await?
    } else {
        HashMap::new()
    };
    let held_key = match &prepared.decision.strategy {
        Strategy::Incremental { columns }
            if incremental::reads_new_keys(&prepared.source, &prepared.key, columns) =>
        {
            let highest = highest_key(&client, schema, &cfg.name, &prepared.key[0]);
            Some(incremental::held_key(prepared.state.keys_through.as_deref(), highest).await?)
        }
        _ => None,
    };
    let limits = Limits {
        caps,
        copy_manages,
        since_last_run: clock.since_last_run,
        held_key,
    };
    let job = Job {
        ctx,
        cfg,
        opts,
        prepared: &prepared,
        limits: &limits,
        run_started_at: &clock.now,
    };
    match &prepared.decision.strategy {
        Strategy::Full => {
            full_load(&job, mysql, &mut client, &mut report).await?;
            if let Some(sum) = &checksum {
                tracking::save_load_record(&client, schema, &cfg.name, Record::Checksum, sum)
                    .await?;
            }
        }
        Strategy::Incremental { columns } => {
            incremental_load(&job, mysql, &mut client, columns, &mut report).await?
        }
    }
    if reconcile::applies(&cfg.deletes, &prepared.decision.strategy) {
        let done = reconcile_load(&job, &mut client).await?;
        report.rows_deleted = done.removed;
        report.rows_repaired = done.written;
    } else if cfg.deletes.detection != DeleteDetection::None {
        let schema = &ctx.warehouse.schema;
        tracking::mark_load_reconciled(&client, schema, &cfg.name, true).await?;
    }
    if policy_changed {
        tracking::save_load_record(&client, schema, &cfg.name, Record::Policy, &prepared.policy)
            .await?;
    }
    report.elapsed = started.elapsed();
    ctx.connections.put(&ctx.warehouse, client);
    Ok(report)
}

/// Reconciles the warehouse with the MySQL copy it is loaded from when the
/// table's schedule says so (else removes the rows OpenDental logged as
/// deleted): rows the copy no longer has are removed (or stamped in
/// `_deleted_at`) and, under `reconcile: rows`, rows that differ or are
/// missing are loaded again, in one transaction with the tracking update.
/// The warehouse's rows are compared value by value in key order (no SQL
/// expression renders a `double` or a `json` alike in both databases).
async fn reconcile_load(job: &Job<'_>, client: &mut Client) -> Result<reconcile::Repaired> {
    let Job {
        ctx,
        cfg,
        opts,
        prepared,
        ..
    } = *job;
    let schema = &ctx.warehouse.schema;
    let target = ident::pg_qualified(schema, &cfg.name);
    let key = reconcile::reconcilable_key(&prepared.source)?;
    let mut mysql = my::connect(&ctx.replica).await?;
    let state = prepared.state.reconciled();
    let mut done = reconcile::Repaired::default();
    if cfg.deletes.detection == DeleteDetection::RowReconcile
        && reconcile::is_due(&cfg.deletes, state)
    {
        let columns = reconcile::pg_columns(client, schema, &cfg.name).await?;
        let plan = reconcile::deep_plan(&ctx.replica, &cfg.name, &columns)
            .await?
            .map_err(|note| {
                Error::config(format!("`{}`: {note}; set reconcile: keys", cfg.name))
            })?;
        // The source holds the clear values of the masked columns.
        let plan = if ctx.capped_by_copy {
            plan
        } else {
            plan.without_masked(&cfg.columns)
        };
        loop {
            let mut found = reconcile::Findings::collecting();
            let compared = reconcile::compare_warehouse(
                (&ctx.replica, ctx.rate.clone()),
                (&*client, schema),
                &plan,
                job.soft_delete(),
                &mut found,
            )
            .await?;
            let held = compared + u64::try_from(found.remove.len()).unwrap_or(u64::MAX);
            reconcile::check_share(
                &cfg.name,
                u64::try_from(found.remove.len()).unwrap_or(u64::MAX),
                held,
                &cfg.deletes,
                opts.allow_mass_delete,
            )?;
            let tx = client.transaction().await.map_err(|e| {
                Error::postgres(format!("starting the reconciliation of {target}"), e)
            })?;
            let step = reload_into(&tx, &mut mysql, job, &found.keys()).await?;
            let finished = !found.full();
            tracking::mark_load_reconciled(&tx, schema, &cfg.name, finished).await?;
            tx.commit().await.map_err(|e| {
                Error::postgres(format!("committing the reconciliation of {target}"), e)
            })?;
            done.written += step.written;
            done.removed += step.removed;
            if finished {
                break;
            }
        }
    } else {
        let found = reconcile::reconcile(
            &mut mysql,
            ctx.rate.clone(),
            &mut Side::Pg {
                client,
                schema: schema.clone(),
                table: cfg.name.clone(),
                live_only: cfg.deletes.soft_delete,
            },
            cfg,
            &key,
            state,
            None,
            opts.allow_mass_delete,
        )
        .await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| Error::postgres(format!("starting the reconciliation of {target}"), e))?;
        done.removed = reconcile::delete_pg(
            &tx,
            schema,
            &cfg.name,
            &key,
            &found.delete,
            cfg.deletes.soft_delete,
        )
        .await?;
        tracking::mark_load_reconciled(&tx, schema, &cfg.name, found.full).await?;
        tx.commit().await.map_err(|e| {
            Error::postgres(format!("committing the reconciliation of {target}"), e)
        })?;
    }
    if done.removed + done.written > 0 {
        tracing::info!(table = %cfg.name, removed = done.removed, repaired = done.written, "warehouse reconciled with the MySQL copy");
    }
    Ok(done)
}

/// Up to this table size on disk a full refresh empties the table with
/// `delete`: readers keep reading the old rows without waiting, and even a
/// transaction that began before the refresh sees them. Above it, `truncate`:
/// far faster on large tables and leaves no dead rows, but readers wait for
/// the refresh to commit. 32 MiB is some 100,000–300,000 OpenDental rows,
/// which `delete` empties in well under a second.
pub const DELETE_REFRESH_MAX_BYTES: i64 = 32 * 1024 * 1024;

/// Drops the indexes of a table just truncated in `tx` and returns the
/// statements that build them again: PostgreSQL builds an index over a full
/// table by one sort, several times faster than maintaining it row by row
/// during the `copy`. The transaction makes the drop,
/// the copy and the rebuild one change: readers never see the table without
/// its keys, and a failure restores them.
async fn defer_indexes(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    table: &str,
) -> Result<Vec<String>> {
    let target = ident::pg_qualified(schema, table);
    let err = |e| Error::postgres(format!("reading the indexes of {target}"), e);
    let rows = tx
        .query(
            "select quote_ident(ic.relname), pg_get_indexdef(i.indexrelid), quote_ident(c.conname), \
                    pg_get_constraintdef(c.oid) \
             from pg_index i join pg_class ic on ic.oid = i.indexrelid \
             left join pg_constraint c on c.conindid = i.indexrelid and c.conrelid = i.indrelid \
             where i.indrelid = $1::text::regclass order by ic.relname",
            &[&target],
        )
        .await
        .map_err(err)?;
    let mut rebuild = Vec::new();
    for row in rows {
        let (index, definition): (String, String) = (row.get(0), row.get(1));
        let constraint: Option<(String, String)> = row.get::<_, Option<String>>(2).zip(row.get(3));
        let (drop, build) = match constraint {
            Some((name, def)) => (
                format!("alter table {target} drop constraint {name}"),
                format!("alter table {target} add constraint {name} {def}"),
            ),
            None => (
                format!("drop index {}.{index}", ident::pg(schema)),
                definition,
            ),
        };
        tx.batch_execute(&drop)
            .await
            .map_err(|e| Error::postgres(format!("setting aside index {index} of {target}"), e))?;
        rebuild.push(build);
    }
    Ok(rebuild)
}

/// Whether a full refresh empties the table with `truncate` (over
/// [`DELETE_REFRESH_MAX_BYTES`]) rather than `delete`.
async fn truncates(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    table: &str,
) -> Result<bool> {
    let row = tx
        .query_one(
            "select pg_relation_size(c.oid) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2",
            &[&schema, &table],
        )
        .await
        .map_err(|e| Error::postgres(format!("reading the size of {schema}.{table}"), e))?;
    Ok(row.get::<_, i64>(0) > DELETE_REFRESH_MAX_BYTES)
}

fn read_spec(
    ctx: &LoadContext,
    cfg: &TableConfig,
    prepared: &Prepared,
    batch_bytes: usize,
) -> ReadSpec {
    ReadSpec {
        table: cfg.name.clone(),
        columns: prepared.plan.names(),
        batch_rows: cfg.batch_size,
        batch_bytes,
        rate: ctx.rate.clone(),
        masker: prepared.masker.clone(),
    }
}

/// Creates the session's staging table for the target (emptied at each
/// commit) and returns the `copy` into it and the merge out of it.
async fn staging(client: &impl GenericClient, job: &Job<'_>) -> Result<(String, String)> {
    let schema = &job.ctx.warehouse.schema;
    let target = ident::pg_qualified(schema, &job.cfg.name);
    client
        .batch_execute(&format!(
            "create temporary table if not exists {} (like {target} including defaults) on commit delete rows",
            ident::pg(STAGE_TABLE)
        ))
        .await
        .map_err(|e| Error::postgres(format!("creating the staging table for {target}"), e))?;
    let names = ident::pg_list(job.prepared.dest_columns.iter().map(|(n, _)| n.as_str()));
    let copy_sql = format!(
        "copy pg_temp.{} ({names}) from stdin (format binary)",
        ident::pg(STAGE_TABLE)
    );
    let merge = pg::merge_sql(
        schema,
        &job.cfg.name,
        STAGE_TABLE,
        &job.prepared.dest_columns,
        &job.prepared.key,
        job.soft_delete().then_some(reconcile::DELETED_AT),
    );
    Ok((copy_sql, merge))
}

/// Copies encoded rows into the session's staging table and merges them
/// into the target, in the caller's transaction; returns (inserted, updated).
async fn stage_and_merge(
    tx: &tokio_postgres::Transaction<'_>,
    (copy_sql, merge): (&str, &str),
    target: &str,
    payload: bytes::Bytes,
    rows: u64,
) -> Result<(u64, u64)> {
    let mut copy = CopyIn::start(tx, copy_sql, target).await?;
    copy.send(payload).await?;
    let copied = copy.finish().await?;
    if copied != rows {
        return Err(Error::new(
            ErrorKind::Database,
            format!("{target}: PostgreSQL staged {copied} rows, {rows} were sent"),
        ));
    }
    let counts = tx
        .query_one(merge, &[])
        .await
        .map_err(|e| Error::postgres(format!("merging a batch into {target}"), e))?;
    let inserted = u64::try_from(counts.get::<_, i64>(0)).unwrap_or(0);
    let updated = u64::try_from(counts.get::<_, i64>(1)).unwrap_or(0);
    Ok((inserted, updated))
}

/// Loads again the warehouse rows of `keys` from the MySQL copy, in one
/// transaction: rows it has are merged (a row already equal is not
/// rewritten), rows it lacks are removed (stamped in soft-delete mode). The
/// repair of what a comparison found different.
pub async fn reload_keys(
    ctx: &LoadContext,
    cfg: &TableConfig,
    keys: &[reconcile::Key],
) -> Result<reconcile::Repaired> {
    let mut mysql = my::connect(&ctx.replica).await?;
    let mut client = pg::connect(&ctx.warehouse).await?;
    let opts = LoadOptions::default();
    let prepared = prepare(&mut mysql, &mut client, ctx, cfg, &opts).await?;
    if prepared.key.is_empty() {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "`{}` has no primary key: its rows cannot be reloaded by key",
                cfg.name
            ),
        ));
    }
    let limits = Limits::default();
    let job = Job {
        ctx,
        cfg,
        opts: &opts,
        prepared: &prepared,
        limits: &limits,
        run_started_at: "",
    };
    let target = ident::pg_qualified(&ctx.warehouse.schema, &cfg.name);
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::postgres(format!("starting a reload of {target}"), e))?;
    let done = reload_into(&tx, &mut mysql, &job, keys).await?;
    tx.commit()
        .await
        .map_err(|e| Error::postgres(format!("committing a reload of {target}"), e))?;
    Ok(done)
}

/// Reads the rows of `keys` from the MySQL copy and merges them into the
/// warehouse in the caller's transaction; removes the keys it lacks.
async fn reload_into(
    tx: &tokio_postgres::Transaction<'_>,
    mysql: &mut Conn,
    job: &Job<'_>,
    keys: &[reconcile::Key],
) -> Result<reconcile::Repaired> {
    let (ctx, cfg, prepared) = (job.ctx, job.cfg, job.prepared);
    let schema = &ctx.warehouse.schema;
    let target = ident::pg_qualified(schema, &cfg.name);
    let (copy_sql, merge) = staging(tx, job).await?;
    let columns = prepared.plan.names();
    let mut done = reconcile::Repaired::default();
    for chunk in keys.chunks(reconcile::REPAIR_CHUNK) {
        let (rows, gone) = reconcile::rows_by_key(
            mysql,
            (&cfg.name, &columns, &prepared.key),
            chunk,
            ctx.rate.as_deref(),
        )
        .await?;
        let mut encoder = CopyEncoder::new(prepared.plan.clone());
        let count = u64::try_from(rows.len()).unwrap_or(u64::MAX);
        for mut row in rows {
            if let Some(masker) = &prepared.masker {
                masker.apply(&mut row);
            }
            my::Encoder::encode(&mut encoder, row)?;
        }
        let (payload, _) = my::Encoder::take(&mut encoder);
        if count > 0 {
            let (inserted, updated) =
                stage_and_merge(tx, (&copy_sql, &merge), &target, payload, count).await?;
            done.written += inserted + updated;
        }
        done.removed += reconcile::delete_pg(
            tx,
            schema,
            &cfg.name,
            &prepared.key,
            &gone,
            job.soft_delete(),
        )
        .await?;
    }
    Ok(done)
}

/// What a strategy's load works from.
struct Job<'a> {
    ctx: &'a LoadContext,
    cfg: &'a TableConfig,
    opts: &'a LoadOptions,
    prepared: &'a Prepared,
    limits: &'a Limits,
    /// When this load began, by the warehouse's clock (UTC).
    run_started_at: &'a str,
}

/// The copy's committed watermarks of a replica table, in this session's
/// terms: the copy keeps `timestamp` values in UTC, this session shows them
/// in the replica's own time zone.
async fn copy_caps(mysql: &mut Conn, table: &SourceTable) -> Result<HashMap<String, Value>> {
    let mut caps = HashMap::new();
    for (column, mark) in tracking::load_copy_watermarks(mysql, &table.name).await? {
        let Some(source_column) = table.column(&column) else {
            continue;
        };
        let value = value_from_text(&source_column.ty, &mark.value).map_err(|e| {
            Error::new(
                ErrorKind::Schema,
                format!(
                    "the copy's watermark of `{}`: {}; rerun its copy with --force-full",
                    table.name, e.0
                ),
            )
        })?;
        let value = if matches!(source_column.ty, SourceType::Timestamp { .. }) {
            my::utc_to_session(mysql, value).await?
        } else {
            value
        };
        caps.insert(column, value);
    }
    Ok(caps)
}

/// The highest key the warehouse table holds (`None`: it is empty).
async fn highest_key(
    client: &Client,
    schema: &str,
    table: &str,
    key: &str,
) -> Result<Option<Value>> {
    let target = ident::pg_qualified(schema, table);
    let row = client
        .query_one(
            &format!("select max({})::text from {target}", ident::pg(key)),
            &[],
        )
        .await
        .map_err(|e| Error::postgres(format!("reading the highest key of {target}"), e))?;
    let text: Option<String> = row.get(0);
    Ok(text.as_deref().map(incremental::key_value))
}

impl Job<'_> {
    /// Deleted rows are kept, stamped in `_deleted_at` (needs a key to merge on).
    fn soft_delete(&self) -> bool {
        self.cfg.deletes.soft_delete && !self.prepared.key.is_empty()
    }
}

async fn full_load(
    job: &Job<'_>,
    mut mysql: Conn,
    client: &mut Client,
    report: &mut TableReport,
) -> Result<()> {
    let Job {
        ctx,
        cfg,
        opts,
        prepared,
        ..
    } = *job;
    let schema = &ctx.warehouse.schema;
    my::begin_snapshot(&mut mysql).await?;
    let marks =
        incremental::full_read_marks(&mut mysql, cfg, &prepared.source, &prepared.key, job.limits)
            .await?;
    let (mut rx, reader) = spawn_reader(
        mysql,
        read_spec(ctx, cfg, prepared, FULL_BATCH_BYTES),
        ReadJob::Full,
        CopyEncoder::new(prepared.plan.clone()),
    );
    let target = ident::pg_qualified(schema, &cfg.name);
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::postgres(format!("starting the load of {target}"), e))?;
    let soft = job.soft_delete();
    let mut rebuild = Vec::new();
    let (copy_sql, merge) = if soft {
        let (copy_sql, merge) = staging(&tx, job).await?;
        (copy_sql, Some(merge))
    } else {
        let truncate = truncates(&tx, schema, &cfg.name).await?;
        let empty = if truncate {
            format!("truncate table {target}")
        } else {
            format!("delete from {target}")
        };
        tx.batch_execute(&empty)
            .await
            .map_err(|e| Error::postgres(format!("emptying {target} for a full refresh"), e))?;
        if truncate {
            rebuild = defer_indexes(&tx, schema, &cfg.name).await?;
        }
        // A table truncated in this transaction takes its rows already
        // frozen: the first reads and the next vacuum need not rewrite every
        // page to mark them visible (on 2,000,000 rows that is 0.27 s less).
        let copy_sql = format!(
            "copy {target} ({}) from stdin (format binary{})",
            ident::pg_list(prepared.dest_columns.iter().map(|(n, _)| n.as_str())),
            if truncate { ", freeze" } else { "" }
        );
        (copy_sql, None)
    };
    let mut copy = CopyIn::start(&tx, &copy_sql, &target).await?;
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        opts.stop
            .check(&cfg.name, "during its full refresh, which was rolled back")?;
        report.rows_read += batch.rows;
        add_zero_dates(&mut report.zero_dates, &prepared.plan, &batch.zero_dates);
        copy.send(batch.payload).await?;
        crate::progress::rows(&cfg.name, "load", report.rows_read);
    }
    let copied = copy.finish().await?;
    let mut mysql = my::finish_reader(reader, &cfg.name).await?;
    my::end_snapshot(&mut mysql).await?;
    if copied != report.rows_read {
        return Err(Error::new(
            ErrorKind::Database,
            format!(
                "{target}: PostgreSQL counted {copied} rows, {} were sent",
                report.rows_read
            ),
        ));
    }
    if !rebuild.is_empty() {
        tx.batch_execute("set local maintenance_work_mem = '256MB'")
            .await
            .map_err(|e| Error::postgres("sizing the index build", e))?;
    }
    for build in &rebuild {
        tx.batch_execute(build).await.map_err(|e| {
            Error::postgres(format!("building an index of {target} again: {build}"), e)
        })?;
    }
    let (inserted, updated, deleted) = match &merge {
        Some(merge) => soft_refresh(&tx, job, merge).await?,
        None => (copied, 0, 0),
    };
    let primary = marks.first().map(|(c, m)| (c.clone(), m.value.clone()));
    let progress = Progress {
        keys_through: None,
        window_fingerprints: None,
        watermarks: marks.clone(),
        replace_all: true,
        primary,
        rows_loaded: i64::try_from(copied).unwrap_or(i64::MAX),
        status: "success",
        strategy: "full",
        run_id: opts.run_id.clone(),
        run_started_at: Some(job.run_started_at.to_string()),
    };
    tracking::save_progress(&tx, schema, &cfg.name, &progress).await?;
    tx.commit()
        .await
        .map_err(|e| Error::postgres(format!("committing the full refresh of {target}"), e))?;
    report.rows_inserted = inserted;
    report.rows_updated = updated;
    report.rows_deleted = deleted;
    report.watermark_end = incremental::describe_marks(&marks);
    Ok(())
}

/// The end of a full refresh in soft-delete mode, the rows staged: live rows
/// whose key is gone are stamped deleted, then the staged rows are merged
/// (a stamped row that came back is live again). Returns (inserted,
/// updated, deleted).
async fn soft_refresh(
    tx: &tokio_postgres::Transaction<'_>,
    job: &Job<'_>,
    merge: &str,
) -> Result<(u64, u64, u64)> {
    let schema = &job.ctx.warehouse.schema;
    let target = ident::pg_qualified(schema, &job.cfg.name);
    let keys = ident::pg_list(job.prepared.key.iter().map(String::as_str));
    let stamped = tx
        .execute(
            &format!(
                "update {target} t set {deleted} = now() where t.{deleted} is null \
                 and not exists (select 1 from pg_temp.{stage} s where ({s_keys}) = ({t_keys}))",
                deleted = ident::pg(reconcile::DELETED_AT),
                stage = ident::pg(STAGE_TABLE),
                s_keys = prefixed("s", &job.prepared.key),
                t_keys = prefixed("t", &job.prepared.key),
            ),
            &[],
        )
        .await
        .map_err(|e| Error::postgres(format!("stamping deleted rows of {target} ({keys})"), e))?;
    let counts = tx
        .query_one(merge, &[])
        .await
        .map_err(|e| Error::postgres(format!("merging the full refresh into {target}"), e))?;
    let inserted = u64::try_from(counts.get::<_, i64>(0)).unwrap_or(0);
    let updated = u64::try_from(counts.get::<_, i64>(1)).unwrap_or(0);
    Ok((inserted, updated, stamped))
}

fn prefixed(alias: &str, columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| format!("{alias}.{}", ident::pg(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn incremental_load(
    job: &Job<'_>,
    mut mysql: Conn,
    client: &mut Client,
    columns: &[String],
    report: &mut TableReport,
) -> Result<()> {
    let Job {
        ctx,
        cfg,
        opts,
        prepared,
        ..
    } = *job;
    let schema = &ctx.warehouse.schema;
    // One snapshot for the bounds, the comparisons and every page read, so
    // the fingerprints kept describe exactly what was read.
    my::begin_snapshot(&mut mysql).await?;
    let (passes, mut marks) = incremental::plan_passes(
        &mut mysql,
        cfg,
        &prepared.source,
        &prepared.key,
        &prepared.stored,
        columns,
        job.limits,
    )
    .await?;
    // Ranges the MySQL side holds as it did when the last load that
    // succeeded read them are not read again.
    let row_text = reconcile::row_text(&prepared.source);
    let probes =
        incremental::probe_passes(&mut mysql, &cfg.name, &row_text, &passes, &marks).await?;
    let held = incremental::probes_from_json(prepared.state.window_fingerprints.as_deref());
    let passes = incremental::drop_unchanged(passes, &probes, &held, report);
    let next = incremental::probe_next_windows(&mut mysql, cfg, &row_text, &passes, &marks).await?;
    let kept: Vec<_> = probes.into_iter().flatten().chain(next).collect();

    let target = ident::pg_qualified(schema, &cfg.name);
    let (copy_sql, merge) = staging(&*client, job).await?;
    let (mut rx, reader) = spawn_reader(
        mysql,
        read_spec(ctx, cfg, prepared, MAX_BATCH_BYTES),
        ReadJob::Passes(passes),
        CopyEncoder::new(prepared.plan.clone()),
    );
    let progress_of = |marks: &Marks, rows: u64, status| Progress {
        keys_through: marks.keys_through(),
        window_fingerprints: (status == "success").then(|| incremental::probes_json(&kept)),
        primary: marks.primary(),
        watermarks: marks.stored(),
        replace_all: false,
        rows_loaded: i64::try_from(rows).unwrap_or(i64::MAX),
        status,
        strategy: "incremental",
        run_id: opts.run_id.clone(),
        run_started_at: Some(job.run_started_at.to_string()),
    };
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        let next = marks.advanced(
            batch.kind,
            batch.watermark.as_deref(),
            batch.last.as_deref(),
        );
        report.count_pass(batch.kind, batch.rows);
        let tx = client
            .transaction()
            .await
            .map_err(|e| Error::postgres(format!("starting a batch of {target}"), e))?;
        let (inserted, updated) =
            stage_and_merge(&tx, (&copy_sql, &merge), &target, batch.payload, batch.rows).await?;
        let rows_so_far = report.rows_inserted + report.rows_updated + inserted + updated;
        tracking::save_progress(
            &tx,
            schema,
            &cfg.name,
            &progress_of(&next, rows_so_far, "running"),
        )
        .await?;
        tx.commit()
            .await
            .map_err(|e| Error::postgres(format!("committing a batch of {target}"), e))?;
        marks = next;
        report.rows_read += batch.rows;
        report.rows_inserted += inserted;
        report.rows_updated += updated;
        add_zero_dates(&mut report.zero_dates, &prepared.plan, &batch.zero_dates);
        crate::progress::rows(&cfg.name, "load", report.rows_read);
        opts.stop.check(
            &cfg.name,
            &format!("after committing {} rows", report.rows_read),
        )?;
    }
    my::finish_reader(reader, &cfg.name).await?;
    let progress = progress_of(
        &marks.finished(),
        report.rows_inserted + report.rows_updated,
        "success",
    );
    tracking::save_progress(&*client, schema, &cfg.name, &progress).await?;
    report.watermark_end = incremental::describe_marks(&progress.watermarks);
    report.note_arrivals(cfg.skew_allowance());
    Ok(())
}
