//! Runs a set of tables through the phases: ordering, a cap on concurrent
//! tables, retries, the run history and tracking status around each table,
//! and the run report.

mod report;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_postgres::Client;

use crate::alert::{self, Alert, MemoryWatch, Notifier, PhaseMeasure, Tracked};
use crate::config::{
    Decision, DeleteDetection, ExtractionStrategy, PgSettings, Strategy, TableConfig,
};
use crate::error::{Error, ErrorKind, Result, chain};
use crate::extract::{self, ExtractContext};
use crate::load::{LoadContext, LoadOptions, TableReport, load_table};
use crate::postgres as pg;
use crate::progress;
use crate::schema::ident;
use crate::shutdown::Stop;
use crate::stamps::{self, Recorded, Stamps};
use crate::tracking::{self, HistoryOutcome, RunOrigin};

pub use report::{
    failed_summary_json, peak_memory, peak_rss_kib, render_summary, summary_json, totals_line,
};

/// Tables processed at once unless `--max-workers` says otherwise: one per
/// core (a table's load keeps about one core busy across this process and
/// the two servers), at least 2 so a slow table never idles the run, at most 8.
pub fn default_max_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8)
}

/// Tables estimated below this many rows are light: most of their time is
/// round trips (connect, describe, checksum, tracking), not CPU or memory,
/// so they run in lanes of their own beside the `max_workers` heavy ones.
pub const LIGHT_TABLE_ROWS: u64 = 100_000;

/// Whether a table needs one of the `max_workers` slots: large, or of
/// unknown size.
fn is_heavy(cfg: &TableConfig) -> bool {
    cfg.estimated_rows
        .is_none_or(|rows| rows >= LIGHT_TABLE_ROWS)
}

/// Which phases a run performs, per table in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    pub extract: bool,
    pub load: bool,
}

/// The databases a run touches. `extract` is `None` in direct mode (the
/// load then reads the source); `warehouse` is where the run history goes.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub extract: Option<ExtractContext>,
    pub load: Option<LoadContext>,
    pub warehouse: Option<PgSettings>,
    /// Asked to stop: tables not started are skipped, tables in flight stop
    /// at their next batch boundary.
    pub stop: Stop,
    /// Where alerts are delivered besides the run history and summary.
    pub notifier: Notifier,
}

impl RunContext {
    /// A context that only loads (replica or source → warehouse).
    pub fn load_only(load: LoadContext) -> RunContext {
        RunContext {
            warehouse: Some(load.warehouse.clone()),
            extract: None,
            load: Some(load),
            stop: Stop::never(),
            notifier: Notifier::none(),
        }
    }
}

/// What a run does with a table another run is processing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IfLocked {
    /// Leave it to the other run (reported as skipped; not a failure).
    #[default]
    Skip,
    /// Wait until the other run is done with it.
    Wait,
}

/// What one `run` does.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub tables: Vec<TableConfig>,
    pub force_full: bool,
    /// Lets key reconciliation delete more than a table's `max_delete_share`.
    pub allow_mass_delete: bool,
    /// Reads incrementally even after a gap longer than `time_gap_threshold_days`.
    pub ignore_time_gap: bool,
    /// Reads every table, also those whose stamps say neither end changed
    /// ([`crate::stamps`]).
    pub recheck: bool,
    pub max_workers: usize,
    pub phases: Phases,
    pub if_locked: IfLocked,
    /// The run's id and what started it, kept in its run history.
    pub origin: RunOrigin,
}

/// One table's outcome in one phase.
#[derive(Debug)]
pub struct TableOutcome {
    pub table: String,
    pub phase: &'static str,
    pub result: Result<TableReport>,
    pub elapsed: Duration,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunReport {
    pub run_id: String,
    pub outcomes: Vec<TableOutcome>,
    /// Alerts raised by the tables' `monitoring:` settings, in order.
    pub alerts: Vec<Alert>,
    /// What the run found worth a person's attention besides the tables
    /// (a source reached over the network without TLS).
    pub warnings: Vec<String>,
    pub elapsed: Duration,
}

impl RunReport {
    /// Whether every requested table succeeded in every phase (tables left
    /// to a concurrent run count as done).
    pub fn succeeded(&self) -> bool {
        self.outcomes.iter().all(|o| match &o.result {
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::Skipped,
        })
    }

    /// Whether a stop request cut the run short.
    pub fn interrupted(&self) -> bool {
        self.outcomes.iter().any(|o| {
            o.result
                .as_ref()
                .err()
                .is_some_and(|e| e.kind() == ErrorKind::Interrupted)
        })
    }

    /// Rows read over all tables and phases.
    pub fn rows_read(&self) -> u64 {
        self.outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().ok())
            .map(|r| r.rows_read)
            .sum()
    }

    /// The outcome of a table in a phase.
    pub fn outcome(&self, table: &str, phase: &str) -> Option<&TableOutcome> {
        self.outcomes
            .iter()
            .find(|o| o.table == table && o.phase == phase)
    }
}

/// A run id that sorts by time: `20261122T021500Z-<pid>`, and `-<n>` after
/// it for the n-th further run of the same process (a group's clinics).
pub fn new_run_id() -> String {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let now = crate::outcome::utc_now();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year, now.month, now.day, now.hour, now.minute, now.second
    );
    // The clinics of a group run in one process, started in one second.
    match RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
        0 => format!("{stamp}-{}", std::process::id()),
        n => format!("{stamp}-{}-{n}", std::process::id()),
    }
}

fn order_tables(tables: &mut [TableConfig]) {
    tables.sort_by(|a, b| {
        a.processing_priority
            .cmp(&b.processing_priority)
            .then(
                b.estimated_rows
                    .unwrap_or(0)
                    .cmp(&a.estimated_rows.unwrap_or(0)),
            )
            .then(a.name.cmp(&b.name))
    });
}

/// Times a table is tried again after a dropped connection or a transient
/// server error (deadlock, lock wait timeout, restart). Each retry resumes
/// from the last committed batch.
pub const DEFAULT_RETRIES: u32 = 2;
/// Wait before the first retry; doubled for each further one.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);

async fn with_retries<F, Fut>(cfg: &TableConfig, mut attempt: F) -> Result<TableReport>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<TableReport>>,
{
    let table = cfg.name.as_str();
    let retries = cfg.retry_count.unwrap_or(DEFAULT_RETRIES);
    let mut retried = Vec::new();
    let mut wait = RETRY_BACKOFF;
    loop {
        let outcome = match cfg.timeout_seconds {
            // Dropping the attempt drops its connections: the open
            // transaction rolls back and the watermark stays where it was.
            Some(limit) => tokio::time::timeout(Duration::from_secs(limit), attempt())
                .await
                .unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorKind::Transient,
                        format!(
                            "`{table}` ran longer than its timeout_seconds ({limit}); the batch in hand was rolled back"
                        ),
                    ))
                }),
            None => attempt().await,
        };
        match outcome {
            Ok(mut report) => {
                report.warnings.extend(retried);
                return Ok(report);
            }
            Err(e)
                if e.kind().is_retryable()
                    && retried.len() < usize::try_from(retries).unwrap_or(0) =>
            {
                tracing::warn!(table = %table, error = %chain(&e), wait_s = wait.as_secs(), "retrying");
                retried.push(format!("retried after: {}", chain(&e)));
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) if e.kind().is_retryable() => {
                return Err(Error::new(
                    e.kind(),
                    format!(
                        "{} (gave up after {} retries; batches already committed are complete and the next \
                         run resumes after them)",
                        chain(&e),
                        retried.len()
                    ),
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The status a table that did not finish is recorded with.
fn failure_status(e: &Error) -> &'static str {
    match e.kind() {
        ErrorKind::Interrupted => "interrupted",
        _ => "failed",
    }
}

fn history_outcome(result: &Result<TableReport>) -> HistoryOutcome {
    match result {
        Ok(report) => HistoryOutcome {
            status: "success".into(),
            strategy: Some(report.decision.strategy.name().into()),
            strategy_reason: Some(report.decision.reason.clone()),
            rows_read: i64::try_from(report.rows_read).unwrap_or(i64::MAX),
            rows_inserted: i64::try_from(report.rows_inserted).unwrap_or(i64::MAX),
            rows_updated: i64::try_from(report.rows_updated).unwrap_or(i64::MAX),
            rows_deleted: i64::try_from(report.rows_deleted).unwrap_or(i64::MAX),
            rows_repaired: i64::try_from(report.rows_repaired).unwrap_or(i64::MAX),
            watermark_start: report.watermark_start.clone(),
            watermark_end: report.watermark_end.clone(),
            zero_dates: serde_json::json!(report.zero_dates),
            warnings: serde_json::json!(report.warnings),
            error: None,
        },
        Err(e) => HistoryOutcome {
            status: failure_status(e).into(),
            error: Some(chain(e)),
            zero_dates: serde_json::json!({}),
            warnings: serde_json::json!([]),
            ..HistoryOutcome::default()
        },
    }
}

struct Shared<'a> {
    ctx: &'a RunContext,
    control: Option<&'a Client>,
    /// The session holding the run locks of the tables in hand (skip mode).
    locks: Option<&'a Client>,
    schema: &'a str,
    /// The run's id (`origin.run_id`) and what started it.
    origin: &'a RunOrigin,
    force_full: bool,
    allow_mass_delete: bool,
    ignore_time_gap: bool,
    phases: Phases,
    if_locked: IfLocked,
    memory: MemoryWatch,
    alerts: Mutex<Vec<Alert>>,
    /// Planned tables that are views in the database the run reads first.
    views: Vec<String>,
    skips: Skips,
}

impl Shared<'_> {
    /// Raises the alerts a finished phase calls for: recorded in the run
    /// history, kept for the summary, handed to the notifier.
    async fn raise_alerts(
        &self,
        cfg: &TableConfig,
        phase: &'static str,
        result: &Result<TableReport>,
        memory: Option<Tracked>,
    ) {
        let measure = PhaseMeasure {
            phase,
            result,
            peak_memory_mb: memory.map(|m| m.peak_mb()),
        };
        for alert in alert::table_alerts(cfg, &self.origin.run_id, &measure) {
            tracing::warn!(table = %cfg.name, phase, kind = alert.kind.name(), "alert: {}", alert.message);
            if let Some(control) = self.control
                && let Err(e) =
                    tracking::record_alert(control, self.schema, (self.origin, &alert)).await
            {
                tracing::warn!(table = %cfg.name, error = %chain(&e), "alert not recorded");
            }
            self.ctx.notifier.send(&alert);
            self.alerts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(alert);
        }
    }

    /// How each phase of each table runs.
    fn options(&self) -> LoadOptions {
        LoadOptions {
            force_full: self.force_full,
            allow_mass_delete: self.allow_mass_delete,
            ignore_time_gap: self.ignore_time_gap,
            run_id: self.origin.run_id.clone(),
            stop: self.ctx.stop.clone(),
        }
    }
}

fn phase_started(cfg: &TableConfig, phase: &str) {
    let expected_rows = cfg.estimated_rows.unwrap_or(0);
    tracing::info!(target: progress::TARGET, table = %cfg.name, phase, expected_rows, "started");
}

fn phase_finished(cfg: &TableConfig, phase: &str, result: &Result<TableReport>) {
    match result {
        Ok(r) => tracing::info!(
            target: progress::TARGET,
            table = %cfg.name,
            phase,
            rows = r.rows_read,
            seconds = r.elapsed.as_secs_f64(),
            strategy = r.decision.strategy.name(),
            "finished"
        ),
        Err(e) => {
            tracing::info!(target: progress::TARGET, table = %cfg.name, phase, error = %chain(e), "finished")
        }
    }
}

/// Each end's stamps ([`crate::stamps`]), as read at one moment.
#[derive(Default)]
struct Ends {
    source: Stamps,
    replica: Stamps,
    /// The MySQL database the load reads (the replica, or the source in direct mode).
    load_from: Stamps,
    warehouse: Stamps,
}

impl Ends {
    async fn read(ctx: &RunContext, phases: Phases, control: Option<&Client>) -> Result<Ends> {
        let mut ends = Ends::default();
        if let Some(extract) = ctx.extract.as_ref().filter(|_| phases.extract) {
            let mut source = crate::mysql::connect(&extract.source).await?;
            ends.source = Stamps::read(&mut source, &extract.source.database).await?;
            let mut replica = crate::mysql::connect(&extract.replica).await?;
            ends.replica = Stamps::read(&mut replica, &extract.replica.database).await?;
        }
        if let (Some(load), Some(client), true) = (&ctx.load, control, phases.load) {
            let same = ctx
                .extract
                .as_ref()
                .filter(|_| phases.extract)
                .is_some_and(|e| {
                    crate::mysql::describe(&e.replica) == crate::mysql::describe(&load.replica)
                });
            ends.load_from = if same {
                ends.replica.clone()
            } else {
                let mut conn = crate::mysql::connect(&load.replica).await?;
                Stamps::read(&mut conn, &load.replica.database).await?
            };
            ends.warehouse = stamps::warehouse_shapes(client, &load.warehouse.schema).await?;
        }
        Ok(ends)
    }
}

/// How long a run goes on deciding by the stamps it read last: a table
/// decided later reads them again, so that what changed since (and what
/// the run's own earlier tables wrote more than [`stamps::MARGIN_SECONDS`]
/// before) counts.
const STAMPS_FRESH_FOR: Duration = Duration::from_secs(2);

/// What a run knows about the tables it may skip ([`crate::stamps`]): the
/// tokens recorded, and each end's stamps, read at the run's start and
/// again as tables are reached.
#[derive(Default)]
struct Skips {
    /// The stamps and when they were read; none on a forced full refresh,
    /// with `--recheck`, or when they could not be read: every table is read.
    ends: tokio::sync::Mutex<Option<(Instant, Ends)>>,
    copy_tokens: HashMap<String, Recorded>,
    load_tokens: HashMap<String, Recorded>,
}

impl Skips {
    /// Reads the stamps and tokens for `plan`; nothing to skip on a forced
    /// full refresh, or when they cannot be read (the run then goes on
    /// reading every table).
    async fn read(ctx: &RunContext, plan: &RunPlan, control: Option<&Client>) -> Skips {
        if plan.force_full || plan.recheck {
            return Skips::default();
        }
        match Skips::try_read(ctx, plan, control).await {
            Ok(skips) => skips,
            Err(e) => {
                tracing::warn!(error = %chain(&e), "table stamps not read: every table is read");
                Skips::default()
            }
        }
    }

    async fn try_read(ctx: &RunContext, plan: &RunPlan, control: Option<&Client>) -> Result<Skips> {
        let mut skips = Skips {
            ends: tokio::sync::Mutex::new(Some((
                Instant::now(),
                Ends::read(ctx, plan.phases, control).await?,
            ))),
            ..Skips::default()
        };
        if let Some(extract) = ctx.extract.as_ref().filter(|_| plan.phases.extract) {
            let mut replica = crate::mysql::connect(&extract.replica).await?;
            skips.copy_tokens = tracking::copy_tokens(&mut replica).await?;
        }
        if let (Some(load), Some(client), true) = (&ctx.load, control, plan.phases.load) {
            skips.load_tokens = tracking::load_tokens(client, &load.warehouse.schema).await?;
        }
        Ok(skips)
    }

    /// What each hop of `cfg` does this run, by stamps at most
    /// [`STAMPS_FRESH_FOR`] old (or the last ones read, if reading them
    /// again fails).
    async fn plan(&self, shared: &Shared<'_>, cfg: &TableConfig) -> Hops {
        let mut ends = self.ends.lock().await;
        let Some((read_at, current)) = ends.as_mut() else {
            return Hops::default();
        };
        if read_at.elapsed() >= STAMPS_FRESH_FOR {
            match Ends::read(shared.ctx, shared.phases, shared.control).await {
                Ok(fresh) => (*read_at, *current) = (Instant::now(), fresh),
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "table stamps not read again");
                }
            }
        }
        let copy_token = stamps::token(
            cfg,
            "copy",
            [
                current.source.get(&cfg.name),
                current.replica.get(&cfg.name),
            ],
        );
        let copy_skip = shared.ctx.extract.is_some()
            && stamps::may_skip(copy_token.as_deref(), self.copy_tokens.get(&cfg.name));
        let load_token = stamps::token(
            cfg,
            "load",
            [
                current.load_from.get(&cfg.name),
                current.warehouse.get(&cfg.name),
            ],
        );
        // Row reconciliation also repairs hand edits in the warehouse,
        // which no stamp there shows.
        let load_skip = (copy_skip || !shared.phases.extract)
            && cfg.deletes.detection != DeleteDetection::RowReconcile
            && stamps::may_skip(load_token.as_deref(), self.load_tokens.get(&cfg.name));
        Hops {
            copy: (copy_skip, copy_token),
            load: (load_skip, load_token),
        }
    }
}

/// What a table's hops do this run: each whether it is skipped and the
/// token it records when it runs to its end.
#[derive(Default)]
struct Hops {
    copy: (bool, Option<String>),
    /// Skipped only if the copy is too (or there is none): a copy of this
    /// run that read the table may have changed the replica since its start.
    load: (bool, Option<String>),
}

impl Hops {
    /// Whether every phase the run performs is skipped.
    fn all_skipped(&self, phases: Phases) -> bool {
        (!phases.extract || self.copy.0) && (!phases.load || self.load.0)
    }
}

/// Whether a phase wrote rows to its destination table (its stamp moved,
/// so a token of the run's start would not be met again). A full refresh
/// counts every row it writes as inserted.
fn wrote(report: &TableReport) -> bool {
    report.rows_inserted + report.rows_updated + report.rows_deleted + report.rows_repaired > 0
}

/// The report of a phase skipped because neither end changed.
fn skipped_report(cfg: &TableConfig) -> TableReport {
    let strategy = match cfg.extraction_strategy {
        ExtractionStrategy::FullTable => Strategy::Full,
        _ => Strategy::Incremental {
            columns: cfg.incremental_columns.clone(),
        },
    };
    TableReport::new(
        &cfg.name,
        Decision {
            strategy,
            reason: stamps::SKIP_REASON.to_string(),
        },
    )
}

/// Copies one table, or skips it (`skip`); on success records `token`,
/// the copy's token at the run's start, when the copy wrote nothing.
async fn extract_one(
    shared: &Shared<'_>,
    ctx: &ExtractContext,
    cfg: &TableConfig,
    (skip, token): (bool, Option<String>),
) -> TableOutcome {
    let started = Instant::now();
    let memory = shared.memory.track();
    phase_started(cfg, "extract");
    let history = match shared.control {
        Some(c) => tracking::begin_history(c, shared.schema, shared.origin, &cfg.name, "extract")
            .await
            .ok(),
        None => None,
    };
    let resume = Arc::new(Mutex::new(None));
    let opts = shared.options();
    let mut result = if skip {
        Ok(skipped_report(cfg))
    } else {
        with_retries(cfg, || extract::copy_table(ctx, cfg, &opts, resume.clone())).await
    };
    if let (Ok(report), Some(token)) = (&result, &token)
        && !skip
        && !wrote(report)
    {
        let saved = match crate::mysql::connect(&ctx.replica).await {
            Ok(mut replica) => tracking::save_copy_token(&mut replica, &cfg.name, token).await,
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            result = Err(e);
        }
    }
    if let Err(e) = &result {
        tracing::error!(table = %cfg.name, error = %chain(e), "copy failed");
        if let Ok(mut replica) = crate::mysql::connect(&ctx.replica).await {
            let _ = tracking::mark_copy_status(&mut replica, &cfg.name, failure_status(e)).await;
        }
    }
    if let (Some(control), Some(id)) = (shared.control, history) {
        let _ =
            tracking::finish_history(control, shared.schema, id, &history_outcome(&result)).await;
    }
    phase_finished(cfg, "extract", &result);
    shared.raise_alerts(cfg, "extract", &result, memory).await;
    TableOutcome {
        table: cfg.name.clone(),
        phase: "extract",
        result,
        elapsed: started.elapsed(),
    }
}

/// Loads one table; on success records `token`, the load's token before
/// the table was begun. (A load is skipped only with its copy, by
/// [`skip_table`].)
async fn load_one(
    shared: &Shared<'_>,
    ctx: &LoadContext,
    cfg: &TableConfig,
    token: Option<String>,
) -> TableOutcome {
    let schema = &ctx.warehouse.schema;
    let started = Instant::now();
    let memory = shared.memory.track();
    phase_started(cfg, "load");
    let opts = shared.options();
    let control = shared.control;
    let history = match control {
        Some(c) => {
            let id = tracking::begin_history(c, schema, shared.origin, &cfg.name, "load")
                .await
                .ok();
            let _ =
                tracking::mark_status(c, schema, &cfg.name, "running", None, &shared.origin.run_id)
                    .await;
            id
        }
        None => None,
    };
    let mut result = with_retries(cfg, || load_table(ctx, cfg, &opts)).await;
    if let (Ok(_), Some(token), Some(c)) = (&result, &token, control)
        && let Err(e) = tracking::save_load_token(c, schema, &cfg.name, token).await
    {
        result = Err(e);
    }
    if let Err(e) = &result {
        tracing::error!(table = %cfg.name, error = %chain(e), "load failed");
        if let Some(c) = control {
            let status = failure_status(e);
            let _ = tracking::mark_status(
                c,
                schema,
                &cfg.name,
                status,
                Some(&chain(e)),
                &shared.origin.run_id,
            )
            .await;
        }
    }
    if let (Some(c), Some(id)) = (control, history)
        && let Err(e) = tracking::finish_history(c, schema, id, &history_outcome(&result)).await
    {
        tracing::warn!(table = %cfg.name, error = %chain(&e), "run history not written");
    }
    phase_finished(cfg, "load", &result);
    shared.raise_alerts(cfg, "load", &result, memory).await;
    TableOutcome {
        table: cfg.name.clone(),
        phase: "load",
        result,
        elapsed: started.elapsed(),
    }
}

/// Advisory-lock class of this tool's locks ("ETL").
pub const LOCK_CLASS: i32 = 0x0045_544C;

/// A table's run lock: an advisory lock held for as long as the table is
/// processed, released when the session ends (also when the process dies).
enum TableLock {
    /// Held on the run's shared lock session; released explicitly.
    Shared,
    /// Held on a session of its own (`--if-locked wait` blocks on it).
    Own(Client),
}

/// What a table's run lock is keyed by within [`LOCK_CLASS`]: the
/// warehouse table it writes, schema and all, so runs into different
/// schemas (a dental group's clinics) never wait on each other.
fn lock_key(warehouse: &PgSettings, table: &str) -> String {
    ident::pg_qualified(&warehouse.schema, table)
}

/// Takes the table's advisory lock: on the run's shared lock session when
/// the plan says skip (one try, no session per table), else on a session of
/// its own so that waiting blocks no other table. `None` when another run
/// holds it and the plan says skip.
async fn lock_table(
    shared: &Shared<'_>,
    warehouse: &PgSettings,
    table: &str,
) -> Result<Option<TableLock>> {
    let locked = |e| Error::postgres(format!("taking the run lock of {table}"), e);
    let key = lock_key(warehouse, table);
    if let (IfLocked::Skip, Some(locks)) = (shared.if_locked, shared.locks) {
        let row = locks
            .query_one(
                "select pg_try_advisory_lock($1, hashtext($2))",
                &[&LOCK_CLASS, &key],
            )
            .await
            .map_err(locked)?;
        return Ok(row.get::<_, bool>(0).then_some(TableLock::Shared));
    }
    let client = pg::connect(warehouse).await?;
    let sql = match shared.if_locked {
        IfLocked::Skip => "select pg_try_advisory_lock($1, hashtext($2))",
        IfLocked::Wait => "select true from (select pg_advisory_lock($1, hashtext($2))) as waited",
    };
    let row = client
        .query_one(sql, &[&LOCK_CLASS, &key])
        .await
        .map_err(locked)?;
    Ok(row.get::<_, bool>(0).then_some(TableLock::Own(client)))
}

/// Releases a table's run lock.
async fn unlock_table(shared: &Shared<'_>, lock: TableLock, warehouse: &PgSettings, table: &str) {
    match (lock, shared.locks) {
        (TableLock::Own(session), _) => drop(session),
        (TableLock::Shared, Some(locks)) => {
            if let Err(e) = locks
                .execute(
                    "select pg_advisory_unlock($1, hashtext($2))",
                    &[&LOCK_CLASS, &lock_key(warehouse, table)],
                )
                .await
            {
                // The lock ends with the session at the latest.
                tracing::warn!(table, error = %e, "run lock not released");
            }
        }
        (TableLock::Shared, None) => {}
    }
}

fn not_run(cfg: &TableConfig, phase: &'static str, kind: ErrorKind, why: String) -> TableOutcome {
    TableOutcome {
        table: cfg.name.clone(),
        phase,
        result: Err(Error::new(kind, why)),
        elapsed: Duration::ZERO,
    }
}

async fn process_table(shared: &Shared<'_>, cfg: &TableConfig) -> Vec<TableOutcome> {
    let first_phase = if shared.phases.extract {
        "extract"
    } else {
        "load"
    };
    if shared.views.contains(&cfg.name) {
        let why = format!(
            "`{}` is a view in the source, not a table: views are not copied. Remove it from tables.yml, \
             and build it in the warehouse (a dbt model) over the tables it reads",
            cfg.name
        );
        return vec![not_run(cfg, first_phase, ErrorKind::Skipped, why)];
    }
    if shared.ctx.stop.requested() {
        let why = format!("`{}` not started: the run was asked to stop", cfg.name);
        return vec![not_run(cfg, first_phase, ErrorKind::Interrupted, why)];
    }
    let hops = shared.skips.plan(shared, cfg).await;
    if hops.all_skipped(shared.phases) {
        return skip_table(shared, cfg).await;
    }
    let lock = match &shared.ctx.warehouse {
        Some(w) if shared.control.is_some() => match lock_table(shared, w, &cfg.name).await {
            Ok(Some(lock)) => Some(lock),
            Ok(None) => {
                let why = format!("`{}` skipped: another run is processing it", cfg.name);
                return vec![not_run(cfg, first_phase, ErrorKind::Skipped, why)];
            }
            Err(e) => return vec![not_run(cfg, first_phase, e.kind(), chain(&e))],
        },
        _ => None,
    };
    let outcomes = process_table_phases(shared, cfg, hops).await;
    if let (Some(lock), Some(w)) = (lock, &shared.ctx.warehouse) {
        unlock_table(shared, lock, w, &cfg.name).await;
    }
    tracing::debug!(target: progress::TARGET, table = %cfg.name, "table done");
    outcomes
}

async fn process_table_phases(
    shared: &Shared<'_>,
    cfg: &TableConfig,
    hops: Hops,
) -> Vec<TableOutcome> {
    let mut outcomes = Vec::new();
    if shared.phases.extract
        && let Some(ctx) = &shared.ctx.extract
    {
        let outcome = extract_one(shared, ctx, cfg, hops.copy).await;
        let failed = outcome.result.is_err();
        outcomes.push(outcome);
        if failed {
            return outcomes;
        }
    }
    if shared.phases.load
        && let Some(ctx) = &shared.ctx.load
    {
        if shared.ctx.stop.requested() {
            let why = format!("`{}` not loaded: the run was asked to stop", cfg.name);
            outcomes.push(not_run(cfg, "load", ErrorKind::Interrupted, why));
            return outcomes;
        }
        let copy_wrote = outcomes
            .first()
            .and_then(|o| o.result.as_ref().ok())
            .is_some_and(wrote);
        let token = hops.load.1.filter(|_| !copy_wrote);
        outcomes.push(load_one(shared, ctx, cfg, token).await);
    }
    outcomes
}

/// Records a table every phase of which is skipped, without a run lock:
/// nothing is read or written but its run history and load status.
async fn skip_table(shared: &Shared<'_>, cfg: &TableConfig) -> Vec<TableOutcome> {
    let mut phases = Vec::new();
    if shared.phases.extract && shared.ctx.extract.is_some() {
        phases.push("extract");
    }
    if shared.phases.load && shared.ctx.load.is_some() {
        phases.push("load");
    }
    let report = skipped_report(cfg);
    let recorded = match shared.control {
        Some(c) => {
            tracking::record_skipped(
                c,
                shared.schema,
                (shared.origin, &cfg.name),
                &phases,
                (report.decision.strategy.name(), &report.decision.reason),
            )
            .await
        }
        None => Ok(()),
    };
    if let Err(e) = recorded {
        tracing::warn!(table = %cfg.name, error = %chain(&e), "run history not written");
    }
    phases
        .into_iter()
        .map(|phase| {
            let result = Ok(report.clone());
            phase_finished(cfg, phase, &result);
            TableOutcome {
                table: cfg.name.clone(),
                phase,
                result,
                elapsed: Duration::ZERO,
            }
        })
        .collect()
}

/// Runs the planned tables through the planned phases, at most
/// `max_workers` tables at once. Fails as a whole only when a database
/// cannot be reached or is not initialised; a failing table is reported in
/// its outcome and does not stop the others (its load is skipped when its
/// copy failed).
pub async fn run(ctx: &RunContext, mut plan: RunPlan) -> Result<RunReport> {
    let started = Instant::now();
    if plan.phases.extract && ctx.extract.is_none() {
        // Direct mode has no copy to make: `--phase all` is the load alone.
        if !plan.phases.load {
            return Err(Error::config(
                "the extract phase needs a replica: ETL_MODE is direct, so run --phase load or --phase all",
            ));
        }
        plan.phases.extract = false;
    }
    if let Some(extract) = ctx.extract.as_ref().filter(|_| plan.phases.extract) {
        let mut replica = crate::mysql::connect(&extract.replica).await?;
        tracking::check_replica(&mut replica, &extract.replica.database).await?;
    }
    let control = match (&ctx.warehouse, plan.phases.load) {
        (Some(w), true) => {
            let client = pg::connect(w).await?;
            tracking::check_warehouse(&client, &w.schema).await?;
            Some(client)
        }
        (Some(w), false) => match pg::connect(w).await {
            Ok(client) if tracking::check_warehouse(&client, &w.schema).await.is_ok() => {
                Some(client)
            }
            _ => None,
        },
        (None, true) => {
            return Err(Error::new(
                ErrorKind::Config,
                "the load phase needs the warehouse settings",
            ));
        }
        (None, false) => None,
    };
    let run_id = plan.origin.run_id.clone();
    order_tables(&mut plan.tables);
    let source = probe_source(ctx, &plan).await?;
    let skips = Skips::read(ctx, &plan, control.as_ref()).await;
    let locks = match (&ctx.warehouse, &control, plan.if_locked) {
        (Some(w), Some(_), IfLocked::Skip) => Some(pg::connect(w).await?),
        _ => None,
    };
    let schema = ctx
        .warehouse
        .as_ref()
        .map(|w| w.schema.clone())
        .unwrap_or_default();
    let shared =
        Shared {
            ctx,
            control: control.as_ref(),
            locks: locks.as_ref(),
            schema: &schema,
            origin: &plan.origin,
            force_full: plan.force_full,
            allow_mass_delete: plan.allow_mass_delete,
            ignore_time_gap: plan.ignore_time_gap,
            phases: plan.phases,
            if_locked: plan.if_locked,
            memory: MemoryWatch::start(plan.tables.iter().any(|t| {
                t.monitoring.alert_on_performance && t.monitoring.max_memory_mb.is_some()
            })),
            alerts: Mutex::new(Vec::new()),
            views: source.views,
            skips,
        };
    let shared = &shared;
    let tables = u64::try_from(plan.tables.len()).unwrap_or(0);
    tracing::info!(target: progress::TARGET, run_id = %run_id, tables, "run started");
    // At most `max_workers` heavy tables at once, and as many light ones in
    // lanes beside them.
    let workers = plan.max_workers.max(1);
    let heavy_slots = tokio::sync::Semaphore::new(workers);
    let heavy_slots = &heavy_slots;
    let outcomes: Vec<TableOutcome> = futures_util::stream::iter(plan.tables.iter())
        .map(|cfg| async move {
            let _slot = if is_heavy(cfg) {
                heavy_slots.acquire().await.ok()
            } else {
                None
            };
            process_table(shared, cfg).await
        })
        .buffer_unordered(workers * 2)
        .flat_map(futures_util::stream::iter)
        .collect()
        .await;
    tracing::info!(target: progress::TARGET, run_id = %run_id, "run finished");
    ctx.notifier.flush().await;
    let alerts = std::mem::take(&mut *shared.alerts.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(RunReport {
        run_id,
        outcomes,
        alerts,
        warnings: source.warnings,
        elapsed: started.elapsed(),
    })
}

/// What one look at the database a run reads first tells before any table.
#[derive(Default)]
struct SourceProbe {
    /// Planned tables that are views there.
    views: Vec<String>,
    warnings: Vec<String>,
}

/// Looks at the database the run reads first (the source, or the replica
/// in a load-only run): which planned tables are views, and whether a
/// source off this machine is reached without TLS. A server that cannot be
/// reached fails the run here, once, within the connect timeout, rather
/// than once per table; a question it cannot answer is left to each
/// table's own connection.
async fn probe_source(ctx: &RunContext, plan: &RunPlan) -> Result<SourceProbe> {
    let (settings, is_source) = match (&ctx.extract, &ctx.load) {
        (Some(e), _) if plan.phases.extract => (&e.source, true),
        (extract, Some(l)) => (&l.replica, extract.is_none()),
        _ => return Ok(SourceProbe::default()),
    };
    let mut conn = crate::mysql::connect(settings).await?;
    let views = crate::mysql::views(&mut conn, &settings.database)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|v| plan.tables.iter().any(|t| &t.name == v))
        .collect();
    let mut warnings = Vec::new();
    if is_source
        && !crate::mysql::encrypted(&mut conn).await.unwrap_or(true)
        && !crate::mysql::on_this_machine(&settings.host, settings.port).await
    {
        warnings.push(format!(
            "the source {} is reached over the network without TLS: patient data crosses it in clear. \
             Turn TLS on at the server and set OPENDENTAL_SOURCE_SSL_MODE=verify_identity \
             (with OPENDENTAL_SOURCE_SSL_CA) or required",
            crate::mysql::describe(settings)
        ));
    }
    Ok(SourceProbe { views, warnings })
}

/// Loads the planned tables (replica → warehouse only).
pub async fn run_load(ctx: &LoadContext, plan: RunPlan) -> Result<RunReport> {
    run(
        &RunContext::load_only(ctx.clone()),
        RunPlan {
            phases: Phases {
                extract: false,
                load: true,
            },
            ..plan
        },
    )
    .await
}

/// Deletes run history older than `days` days.
pub async fn prune_history(warehouse: &PgSettings, days: u32) -> Result<u64> {
    let client = pg::connect(warehouse).await?;
    tracking::prune_history(&client, &warehouse.schema, days).await
}

/// Creates the tracking tables: in the warehouse, and in the replica when
/// there is one (never in the source).
pub async fn init(
    warehouse: Option<&PgSettings>,
    replica: Option<&crate::config::MySqlSettings>,
) -> Result<()> {
    if let Some(w) = warehouse {
        let client = pg::connect(w).await?;
        tracking::init_warehouse(&client, &w.schema).await?;
    }
    if let Some(r) = replica {
        let mut mysql = crate::mysql::connect(r).await?;
        tracking::init_replica(&mut mysql).await?;
    }
    Ok(())
}

/// Turns `--table` names into configs, refusing names the config lacks.
pub fn select_tables(
    config: &crate::config::TablesConfig,
    names: &[String],
    all: bool,
) -> Result<Vec<TableConfig>> {
    if all {
        if config.is_empty() {
            return Err(Error::config("the table config lists no tables"));
        }
        return Ok(config.tables().cloned().collect());
    }
    names.iter().map(|n| config.get(n).cloned()).collect()
}
