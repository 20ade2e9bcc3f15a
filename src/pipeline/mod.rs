//! Runs a set of tables: ordering, a cap on concurrent tables, the run
//! history and tracking status around each table, and the run report.

mod report;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio_postgres::Client;

use crate::config::TableConfig;
use crate::error::{Error, Result, chain};
use crate::load::{LoadContext, LoadOptions, TableReport, load_table};
use crate::postgres as pg;
use crate::schema::{DateTimeParts, days_since_pg_epoch};
use crate::tracking::{self, HistoryOutcome};

pub use report::{peak_rss_kib, render_summary};

/// Tables loaded at once unless `--max-workers` says otherwise: this
/// machine class has two cores, and MySQL, PostgreSQL and this process share them.
pub const DEFAULT_MAX_WORKERS: usize = 2;

/// What one `run` does.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub tables: Vec<TableConfig>,
    pub force_full: bool,
    pub max_workers: usize,
}

/// One table's outcome.
#[derive(Debug)]
pub struct TableOutcome {
    pub table: String,
    pub result: Result<TableReport>,
    pub elapsed: Duration,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunReport {
    pub run_id: String,
    pub outcomes: Vec<TableOutcome>,
    pub elapsed: Duration,
}

impl RunReport {
    /// Whether every requested table succeeded.
    pub fn succeeded(&self) -> bool {
        self.outcomes.iter().all(|o| o.result.is_ok())
    }

    /// Rows read over all tables.
    pub fn rows_read(&self) -> u64 {
        self.outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().ok())
            .map(|r| r.rows_read)
            .sum()
    }
}

/// A run id that sorts by time: `20261122T021500Z-<pid>`.
pub fn new_run_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let micros = i64::try_from(now.as_micros()).unwrap_or(0);
    let unix_to_pg = days_since_pg_epoch(1970, 1, 1) * 86_400_000_000;
    let stamp = DateTimeParts::from_pg_micros(micros + unix_to_pg)
        .map(|p| {
            format!(
                "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
                p.year, p.month, p.day, p.hour, p.minute, p.second
            )
        })
        .unwrap_or_default();
    format!("{stamp}-{}", std::process::id())
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

async fn load_with_retries(
    ctx: &LoadContext,
    cfg: &TableConfig,
    opts: &LoadOptions,
) -> Result<TableReport> {
    let mut retried = Vec::new();
    let mut wait = RETRY_BACKOFF;
    loop {
        match load_table(ctx, cfg, opts).await {
            Ok(mut report) => {
                report.warnings.extend(retried);
                return Ok(report);
            }
            Err(e)
                if e.kind().is_retryable()
                    && retried.len() < usize::try_from(DEFAULT_RETRIES).unwrap_or(0) =>
            {
                tracing::warn!(table = %cfg.name, error = %chain(&e), wait_s = wait.as_secs(), "retrying");
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

async fn load_one(
    control: &Client,
    ctx: &LoadContext,
    cfg: &TableConfig,
    opts: &LoadOptions,
) -> TableOutcome {
    let schema = &ctx.warehouse.schema;
    let started = Instant::now();
    let history = tracking::begin_history(control, schema, &opts.run_id, &cfg.name, "load").await;
    let _ = tracking::mark_status(control, schema, &cfg.name, "running", None, &opts.run_id).await;
    let result = load_with_retries(ctx, cfg, opts).await;
    let outcome = match &result {
        Ok(report) => HistoryOutcome {
            status: "success".into(),
            strategy: Some(report.decision.strategy.name().into()),
            strategy_reason: Some(report.decision.reason.clone()),
            rows_read: i64::try_from(report.rows_read).unwrap_or(i64::MAX),
            rows_inserted: i64::try_from(report.rows_inserted).unwrap_or(i64::MAX),
            rows_updated: i64::try_from(report.rows_updated).unwrap_or(i64::MAX),
            watermark_start: report.watermark_start.clone(),
            watermark_end: report.watermark_end.clone(),
            zero_dates: serde_json::json!(report.zero_dates),
            warnings: serde_json::json!(report.warnings),
            error: None,
        },
        Err(e) => HistoryOutcome {
            status: "failed".into(),
            error: Some(chain(e)),
            zero_dates: serde_json::json!({}),
            warnings: serde_json::json!([]),
            ..HistoryOutcome::default()
        },
    };
    if let Err(e) = &result {
        tracing::error!(table = %cfg.name, error = %chain(e), "load failed");
        let _ = tracking::mark_status(
            control,
            schema,
            &cfg.name,
            "failed",
            Some(&chain(e)),
            &opts.run_id,
        )
        .await;
    }
    if let Ok(id) = history
        && let Err(e) = tracking::finish_history(control, schema, id, &outcome).await
    {
        tracing::warn!(table = %cfg.name, error = %chain(&e), "run history not written");
    }
    TableOutcome {
        table: cfg.name.clone(),
        result,
        elapsed: started.elapsed(),
    }
}

/// Loads the planned tables, at most `max_workers` at once. Fails as a whole
/// only when the warehouse cannot be reached or is not initialised; a failing
/// table is reported in its outcome and does not stop the others.
pub async fn run_load(ctx: &LoadContext, mut plan: RunPlan) -> Result<RunReport> {
    let started = Instant::now();
    let control = pg::connect(&ctx.warehouse).await?;
    tracking::check_warehouse(&control, &ctx.warehouse.schema).await?;
    let run_id = new_run_id();
    order_tables(&mut plan.tables);
    let opts = LoadOptions {
        force_full: plan.force_full,
        run_id: run_id.clone(),
    };
    let control = &control;
    let opts = &opts;
    let outcomes: Vec<TableOutcome> = futures_util::stream::iter(plan.tables.iter())
        .map(|cfg| load_one(control, ctx, cfg, opts))
        .buffer_unordered(plan.max_workers.max(1))
        .collect()
        .await;
    Ok(RunReport {
        run_id,
        outcomes,
        elapsed: started.elapsed(),
    })
}

/// Creates the tracking tables in the warehouse and the replica.
pub async fn init(ctx: &LoadContext) -> Result<()> {
    let client = pg::connect(&ctx.warehouse).await?;
    tracking::init_warehouse(&client, &ctx.warehouse.schema).await?;
    let mut mysql = crate::mysql::connect(&ctx.replica).await?;
    tracking::init_replica(&mut mysql).await?;
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
