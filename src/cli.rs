//! Command-line definitions and what each command does.
//!
//! clap validates the input; [`execute`] turns it into settings, a table
//! selection and a run, and returns the process exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::alert::{Alert, Notifier};
use crate::analyze;
use crate::config::{self, Env, Mask, Mode, TablesConfig};
use crate::demo::{self, DemoOptions};
use crate::error::{Error, ErrorKind, Result, chain};
use crate::extract::ExtractContext;
use crate::group::{self, Clinic, Group};
use crate::load::LoadContext;
use crate::mysql::RateLimit;
use crate::pipeline::{self, IfLocked, Phases, RunContext, RunPlan, render_summary};
use crate::schema::ident;
use crate::shutdown::{self, Stop};
use crate::status;
use crate::tracking::RunOrigin;
use crate::verify::{self, VerifyContext};
use crate::{mysql as my, postgres as pg, tracking};

/// Keeps a PostgreSQL analytics warehouse in step with an OpenDental MySQL/MariaDB database.
#[derive(Debug, Parser)]
#[command(name = "etl-pipeline", version)]
pub struct Cli {
    /// Env file to read settings from (default: .env_<ETL_ENVIRONMENT>).
    #[arg(long, global = true, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Table configuration.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        default_value = "config/tables.yml"
    )]
    pub tables: PathBuf,
    /// A dental group's file: `init`, `run`, `status`, `verify` and
    /// `analyze --check` work on each of its clinics, `dbt-sources` and
    /// `schedule` on the group (see the README). With `demo`: a number of
    /// clinics to build and run as a group.
    #[arg(long, global = true, value_name = "FILE")]
    pub clinics: Option<PathBuf>,
    /// With --clinics: only this clinic (repeatable).
    #[arg(long, global = true, value_name = "NAME")]
    pub clinic: Vec<String>,
    /// Log progress (info level) to standard error.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Log lines as text or as JSON (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Profile the source database and write the table config (--tables FILE).
    Analyze(AnalyzeArgs),
    /// Write a dbt sources.yml for the warehouse schema.
    DbtSources(DbtSourcesArgs),
    /// Create the tracking tables in the replica and the warehouse (idempotent).
    Init,
    /// Copy tables from the source into the replica, then load them into the warehouse.
    Run(RunArgs),
    /// One line per table from the tracking tables (copy and load side by side).
    Status(StatusArgs),
    /// Check the table config and environment without connecting.
    Validate,
    /// Connect to each database and report its version and latency.
    TestConnections,
    /// Compare row counts of source, replica and warehouse (and, with --deep, every value).
    Verify(VerifyArgs),
    /// Build a demo clinic from OpenDental's schema on this machine, then analyze, run and verify it.
    Demo(DemoArgs),
    /// Print what Airflow, Kubernetes or systemd needs to run the group of --clinics FILE.
    Schedule(ScheduleArgs),
    /// Record dbt's progress in the warehouse's etl_transform_status.
    #[command(subcommand)]
    Transform(TransformCommand),
    /// Run the config's schedules and serve the operator's page, metrics and API over HTTP.
    Serve(ServeArgs),
}

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; one other machines can reach needs ETL_SERVE_TOKEN.
    #[arg(long, value_name = "ADDR", default_value = crate::serve::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Tables each run processes at once (default: one per core, 2 to 8).
    #[arg(
        long,
        default_value_t = pipeline::default_max_workers(),
        hide_default_value = true,
        value_parser = parse_workers
    )]
    pub max_workers: usize,
    /// Command run for each alert, the alert as JSON on standard input
    /// (default: ETL_ALERT_COMMAND).
    #[arg(long, value_name = "CMD")]
    pub on_alert: Option<String>,
}

/// `transform` subcommands.
#[derive(Debug, Subcommand)]
pub enum TransformCommand {
    /// Record that a dbt model over a table ran (or failed).
    Mark(TransformMarkArgs),
}

/// Arguments of `transform mark`.
#[derive(Debug, Args)]
pub struct TransformMarkArgs {
    /// The raw table the transformation read.
    #[arg(long, value_name = "T")]
    pub table: String,
    /// How the transformation ended.
    #[arg(long, value_enum)]
    pub status: TransformStatus,
    /// Rows the transformation wrote.
    #[arg(long)]
    pub rows: Option<i64>,
}

/// `transform mark --status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransformStatus {
    Success,
    Failed,
}

/// Which phases `run` performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// Extract then load, per table (in direct mode: load from the source).
    All,
    /// Source (MySQL) → replica (MySQL) only.
    Extract,
    /// Replica (MySQL) → warehouse (PostgreSQL) only.
    Load,
}

impl Phase {
    fn phases(self) -> Phases {
        Phases {
            extract: matches!(self, Phase::All | Phase::Extract),
            load: matches!(self, Phase::All | Phase::Load),
        }
    }
}

/// `--category`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Category {
    Large,
    Medium,
    Small,
    Tiny,
}

impl From<crate::config::PerformanceCategory> for Category {
    fn from(category: crate::config::PerformanceCategory) -> Category {
        use crate::config::PerformanceCategory as P;
        match category {
            P::Large => Category::Large,
            P::Medium => Category::Medium,
            P::Small => Category::Small,
            P::Tiny => Category::Tiny,
        }
    }
}

impl Category {
    fn matches(self, table: &crate::config::TableConfig) -> bool {
        table.performance_category.map(Category::from) == Some(self)
    }
}

/// `--if-locked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LockChoice {
    /// Leave the table to the other run (not a failure).
    Skip,
    /// Wait for the other run to finish the table.
    Wait,
}

/// Arguments of `run`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["table", "all"])))]
pub struct RunArgs {
    /// Phase to run.
    #[arg(long, value_enum, default_value = "all")]
    pub phase: Phase,
    /// Table to run (repeatable).
    #[arg(long = "table", value_name = "T")]
    pub table: Vec<String>,
    /// Run every table in the config.
    #[arg(long)]
    pub all: bool,
    /// With --all: leave this table out (repeatable).
    #[arg(long, value_name = "T", conflicts_with = "table")]
    pub exclude: Vec<String>,
    /// Refresh in full, whatever the watermarks say.
    #[arg(long)]
    pub force_full: bool,
    /// Let key reconciliation delete more than a table's max_delete_share.
    #[arg(long)]
    pub allow_mass_delete: bool,
    /// Read incrementally even after a gap longer than time_gap_threshold_days.
    #[arg(long)]
    pub no_time_gap: bool,
    /// Read every table, also those whose table stamps say neither end changed.
    #[arg(long)]
    pub recheck: bool,
    /// Tables processed at once (default: one per core, 2 to 8).
    #[arg(
        long,
        default_value_t = pipeline::default_max_workers(),
        hide_default_value = true,
        value_parser = parse_workers
    )]
    pub max_workers: usize,
    /// Only tables of this performance category (with --all).
    #[arg(long, value_enum)]
    pub category: Option<Category>,
    /// Also write the run summary as JSON to this file (for schedulers).
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// What to do with a table another run is processing.
    #[arg(long, value_enum, default_value = "skip")]
    pub if_locked: LockChoice,
    /// Rows per second read from the source, across all tables (default:
    /// OPENDENTAL_SOURCE_MAX_ROWS_PER_SECOND, else unlimited).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_rows_per_second: Option<u32>,
    /// Command run for each alert, the alert as JSON on standard input
    /// (default: ETL_ALERT_COMMAND).
    #[arg(long, value_name = "CMD")]
    pub on_alert: Option<String>,
}

fn parse_workers(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!("`{text}` is not a worker count from 1 to 64")),
    }
}

/// Arguments of `schedule`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// The engine: `airflow` (a DAG), `kubernetes` (CronJobs) or `systemd` (a service and timer).
    #[arg(value_enum)]
    pub engine: Engine,
    /// Airflow: one task per clinic and performance category instead of per clinic.
    #[arg(long)]
    pub by_category: bool,
    /// The etl-pipeline binary the tasks run (Airflow, systemd).
    #[arg(long, value_name = "PATH", default_value = "etl-pipeline")]
    pub binary: String,
    /// The container image the CronJobs run (Kubernetes).
    #[arg(long, value_name = "IMAGE", default_value = "etl-pipeline:latest")]
    pub image: String,
}

/// `schedule`'s engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    Airflow,
    Kubernetes,
    Systemd,
}

/// Arguments of `analyze`.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Write nothing; exit 1 when the schema changed since the table config was written.
    #[arg(long)]
    pub check: bool,
    /// What to write for the columns flagged as likely patient data (names,
    /// SSN, birthdate, address, phone, email, notes): `keep` flags them in
    /// comments; `exclude` and `mask` also write a policy for those the
    /// previous config does not cover.
    #[arg(long, value_enum, default_value = "keep")]
    pub phi: PhiArg,
    /// OpenDental's schema documentation (XML): its descriptions flag more
    /// patient columns.
    #[arg(long, value_name = "FILE")]
    pub docs: Option<PathBuf>,
}

/// `analyze --phi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PhiArg {
    Keep,
    Exclude,
    Mask,
}

/// Arguments of `dbt-sources`.
#[derive(Debug, Args)]
pub struct DbtSourcesArgs {
    /// OpenDental's schema documentation (XML) for table and column descriptions.
    #[arg(long, value_name = "FILE")]
    pub docs: Option<PathBuf>,
    /// Where to write the sources file.
    #[arg(long, value_name = "FILE", default_value = "sources.yml")]
    pub output: PathBuf,
    /// Write `freshness` and `loaded_at_field` on each table, as dbt before
    /// 1.10 reads them, instead of under `config:`.
    #[arg(long)]
    pub legacy_freshness: bool,
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: StatusFormat,
    /// Do not query the source for each table's lag behind it.
    #[arg(long)]
    pub no_lag: bool,
    /// Exit 1 when a table's lag is over this (90s, 15m, 2h, 1d) or cannot
    /// be measured: for monitors.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "no_lag")]
    pub max_lag: Option<i64>,
}

/// `status --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Table,
    Json,
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Table to verify (repeatable; default: every table in the config).
    #[arg(long = "table", value_name = "T")]
    pub table: Vec<String>,
    /// Compare every row value by value, in key order, and name differing keys.
    #[arg(long)]
    pub deep: bool,
    /// With --deep: rewrite exactly the rows that differ (the replica from the source, then the
    /// warehouse from the replica), then verify again.
    #[arg(long, requires = "deep")]
    pub repair: bool,
    /// With --repair: let it remove more than a table's max_delete_share.
    #[arg(long, requires = "repair")]
    pub allow_mass_delete: bool,
}

/// Arguments of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Fraction of a real clinic's row counts each table gets (0.1 is about 2 million rows).
    #[arg(long, default_value_t = 0.01)]
    pub scale: f64,
    /// Rows per table, instead of the scaled real counts.
    #[arg(long)]
    pub rows: Option<u64>,
    /// Only these tables (comma-separated; default: all of OpenDental's).
    #[arg(long, value_delimiter = ',', value_name = "TABLES")]
    pub only: Vec<String>,
    /// Folder with the OpenDental fixture (default: the repository's fixtures/opendental).
    #[arg(long, value_name = "DIR")]
    pub fixtures: Option<PathBuf>,
    /// Create the data, config and env file, but do not load.
    #[arg(long)]
    pub setup_only: bool,
    /// Work another day at an existing demo clinic (--source-db): edit, delete and enter rows
    /// as between the demo's first two runs, and stop; the next `run --all` reads the day.
    #[arg(long, conflicts_with = "setup_only")]
    pub another_day: bool,
    /// Folder for the demo's tables.yml and env file.
    #[arg(long, default_value = "target/etl-demo")]
    pub dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    pub mysql_host: String,
    #[arg(long, default_value_t = 3306)]
    pub mysql_port: u16,
    #[arg(long, default_value = "root")]
    pub mysql_user: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub pg_host: String,
    #[arg(long, default_value_t = 5432)]
    pub pg_port: u16,
    #[arg(long, default_value = "postgres")]
    pub pg_user: String,
    /// Demo source database (dropped and re-created).
    #[arg(long, default_value = "etl_demo_source")]
    pub source_db: String,
    /// Demo replica database (dropped and re-created).
    #[arg(long, default_value = "etl_demo_replica")]
    pub replica_db: String,
    /// Demo warehouse database (dropped and re-created).
    #[arg(long, default_value = "etl_demo")]
    pub warehouse_db: String,
}

/// Exit code for a run where some table failed, or a command failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for bad configuration or environment.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code when the tracking tables are missing.
pub const EXIT_NOT_INITIALIZED: u8 = 3;
/// Exit code of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Turns the first Ctrl-C or SIGTERM into a stop request (tables finish
/// the batch in hand and commit) and the second into an immediate exit.
pub(crate) fn stop_on_signals() -> Stop {
    let (handle, stop) = shutdown::channel();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "SIGTERM cannot be watched");
                    return;
                }
            };
        let mut asked = false;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if asked {
                eprintln!("stopping now");
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
            asked = true;
            eprintln!(
                "stopping after the batches in hand are committed (signal again to stop at once)"
            );
            handle.request();
        }
    });
    stop
}

/// The exit code for an error that stopped a command.
pub fn exit_code(err: &Error) -> ExitCode {
    ExitCode::from(match err.kind() {
        ErrorKind::Config => EXIT_CONFIG,
        ErrorKind::NotInitialized => EXIT_NOT_INITIALIZED,
        ErrorKind::Interrupted => EXIT_INTERRUPTED,
        _ => EXIT_FAILED,
    })
}

/// `run`: the tables through the phases, the summary, history pruning.
async fn run_tables(
    tables_file: &std::path::Path,
    args: &RunArgs,
    env: &Env,
    notifier: &Notifier,
) -> Result<ExitCode> {
    let report = run_in(
        tables_file,
        args,
        env,
        notifier,
        (stop_on_signals(), RunOrigin::manual(pipeline::new_run_id())),
        args.max_workers,
    )
    .await?;
    print!("{}", render_summary(&report));
    if let Some(path) = &args.summary_json {
        write_json(path, &pipeline::summary_json(&report))?;
    }
    Ok(run_exit_code(&report))
}

/// How a run ends for the process: interrupted, succeeded or failed.
fn run_exit_code(report: &pipeline::RunReport) -> ExitCode {
    if report.interrupted() {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// Runs the tables `args` selects in environment `env` (a clinic's, in a
/// group), with `workers` tables at once, as `origin` says; records the
/// column policy changes and prunes the history once it is done.
pub(crate) async fn run_in(
    tables_file: &std::path::Path,
    args: &RunArgs,
    env: &Env,
    notifier: &Notifier,
    (stop, origin): (Stop, RunOrigin),
    workers: usize,
) -> Result<pipeline::RunReport> {
    let config = TablesConfig::load(tables_file)?;
    for name in &args.exclude {
        config.get(name)?;
    }
    let mut tables = pipeline::select_tables(&config, &args.table, args.all)?;
    tables.retain(|t| !args.exclude.contains(&t.name));
    if let Some(category) = args.category {
        tables.retain(|t| category.matches(t));
        if tables.is_empty() {
            return Err(Error::config(format!(
                "no table in {} has performance_category {category:?}",
                tables_file.display()
            )));
        }
    }
    let phases = args.phase.phases();
    let ctx = run_context(
        env,
        phases,
        args.max_rows_per_second,
        stop,
        notifier.clone(),
    )?;
    let if_locked = match args.if_locked {
        LockChoice::Skip => IfLocked::Skip,
        LockChoice::Wait => IfLocked::Wait,
    };
    let report = pipeline::run(
        &ctx,
        RunPlan {
            tables,
            force_full: args.force_full,
            allow_mass_delete: args.allow_mass_delete,
            ignore_time_gap: args.no_time_gap,
            recheck: args.recheck,
            max_workers: workers,
            phases,
            if_locked,
            origin,
        },
    )
    .await?;
    log_policy_changes(tables_file, &report);
    if let Some(warehouse) = &ctx.warehouse {
        let days = env
            .history_retention_days()?
            .unwrap_or(tracking::DEFAULT_HISTORY_RETENTION_DAYS);
        pipeline::prune_history(warehouse, days).await?;
    }
    Ok(report)
}

/// Records in the schema changelog beside the table config the column
/// policy changes the run rewrote tables for (once per table, though both
/// phases report it). A changelog that cannot be written is warned about:
/// the rows are already right.
fn log_policy_changes(tables_file: &Path, report: &pipeline::RunReport) {
    let changes: std::collections::BTreeSet<String> = report
        .outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().ok())
        .filter_map(|r| {
            r.policy_change.as_ref().map(|change| {
                format!(
                    "table `{}`: column policy changed ({change}), rewritten by run {}",
                    r.table, report.run_id
                )
            })
        })
        .collect();
    let changes: Vec<String> = changes.into_iter().collect();
    let when = crate::outcome::utc_now().to_sql_string().replace(' ', "T") + "Z";
    if let Err(e) = analyze::append_changelog(tables_file, &when, &changes) {
        eprintln!("warning: the column policy change is not in the schema changelog: {e}");
    }
}

/// The databases a run with these phases needs, read from the environment
/// (only the variables those databases need).
fn run_context(
    env: &Env,
    phases: Phases,
    max_rows_per_second: Option<u32>,
    stop: Stop,
    notifier: Notifier,
) -> Result<RunContext> {
    let mode = env.mode()?;
    let rate = match max_rows_per_second {
        Some(n) => Some(n),
        None if phases.extract || mode == Mode::Direct => env.source_max_rows_per_second()?,
        None => None,
    }
    .map(|n| Arc::new(RateLimit::new(n)));
    let warehouse = if phases.load {
        Some(env.warehouse()?)
    } else {
        env.warehouse().ok()
    };
    match mode {
        Mode::Direct => {
            if phases.extract && !phases.load {
                return Err(Error::config(
                    "ETL_MODE is direct: there is no replica to extract into; run --phase load or --phase all",
                ));
            }
            let source = env.source()?;
            let mask_key = env.mask_key()?;
            Ok(RunContext {
                extract: None,
                load: warehouse.clone().map(|w| LoadContext {
                    replica: source,
                    warehouse: w,
                    rate,
                    capped_by_copy: false,
                    mask_key: mask_key.clone(),
                    connections: Default::default(),
                }),
                warehouse,
                stop,
                notifier,
            })
        }
        Mode::Replica => {
            let replica = env.replica()?;
            let extract = if phases.extract {
                Some(ExtractContext {
                    source: env.source()?,
                    replica: replica.clone(),
                    rate: rate.clone(),
                    source_slots: Arc::new(Semaphore::new(env.source_max_connections()?)),
                    replica_lock_wait: env.replica_lock_wait()?,
                    mask_key: env.mask_key()?,
                })
            } else {
                None
            };
            Ok(RunContext {
                extract,
                load: warehouse
                    .clone()
                    .filter(|_| phases.load)
                    .map(|w| LoadContext {
                        replica,
                        warehouse: w,
                        rate: None,
                        capped_by_copy: true,
                        mask_key: None,
                        connections: Default::default(),
                    }),
                warehouse,
                stop,
                notifier,
            })
        }
    }
}

/// `status`: the tracking tables, and each table's lag behind the source
/// (unknown, with the reason, when the source cannot be reached).
async fn status_command(cli: &Cli, args: &StatusArgs) -> Result<ExitCode> {
    let env = Env::load(cli.env_file.as_deref())?;
    let (code, json) = status_in(cli, &env, args).await?;
    if let Some(json) = json {
        println!("{}", pretty(&json)?);
    }
    Ok(code)
}

fn pretty(json: &serde_json::Value) -> Result<String> {
    serde_json::to_string_pretty(json)
        .map_err(|e| Error::config(format!("cannot encode the status: {e}")))
}

/// `status` of the tables of one environment (a clinic's, in a group):
/// printed as a table, or, with `--format json`, returned.
async fn status_in(
    cli: &Cli,
    env: &Env,
    args: &StatusArgs,
) -> Result<(ExitCode, Option<serde_json::Value>)> {
    let (lines, measured) = status::gather(env, &cli.tables, !args.no_lag).await?;
    if let (Some(measured), StatusFormat::Table) = (measured, args.format) {
        println!("{measured}");
    }
    if args.format == StatusFormat::Json {
        let json = serde_json::to_value(&lines)
            .map_err(|e| Error::config(format!("cannot encode the status: {e}")))?;
        return Ok((lag_verdict(&lines, args.max_lag), Some(json)));
    }
    println!(
        "{:<28} {:<11} {:<19} {:<11} {:<19} {:<11} {:>10} {:>5} {:>9} {:>9} {:<9} {:>9}  watermark",
        "table",
        "copy",
        "last copied",
        "load",
        "last loaded",
        "strategy",
        "rows",
        "fails",
        "behind",
        "lag",
        "transform",
        "dbt lag"
    );
    for l in &lines {
        println!(
            "{:<28} {:<11} {:<19} {:<11} {:<19} {:<11} {:>10} {:>5} {:>9} {:>9} {:<9} {:>9}  {}",
            l.table,
            l.copy_status.as_deref().unwrap_or("-"),
            l.last_copied.as_deref().unwrap_or("-"),
            if l.status.is_empty() { "-" } else { &l.status },
            if l.last_loaded.is_empty() {
                "-"
            } else {
                &l.last_loaded
            },
            l.strategy,
            l.rows_loaded,
            l.failures_24h,
            l.rows_behind.map_or_else(|| "-".into(), |n| n.to_string()),
            l.lag_seconds.map_or_else(|| "-".into(), human_duration),
            l.transform_status.as_deref().unwrap_or("-"),
            l.transform_behind_seconds
                .map_or_else(|| "-".into(), human_duration),
            l.watermark
        );
        if !l.error.is_empty() {
            println!("    error: {}", l.error);
        }
        if let Some(note) = &l.lag_note
            && !l.watermark.is_empty()
        {
            println!("    lag: {note}");
        }
        if let Some(future) = l.rows_in_future.filter(|n| *n > 0) {
            println!(
                "    {future} row(s) stamped in the future: looked at every run, never moving the watermark"
            );
        }
    }
    if lines.is_empty() {
        println!("no table has been run yet; run `etl-pipeline run --all`");
    }
    Ok((lag_verdict(&lines, args.max_lag), None))
}

/// The exit of `status --max-lag`: failure when some table is further
/// behind than `max_lag` seconds, or its lag could not be measured.
fn lag_verdict(lines: &[tracking::StatusLine], max_lag: Option<i64>) -> ExitCode {
    let Some(max) = max_lag else {
        return ExitCode::SUCCESS;
    };
    let late: Vec<String> = lines
        .iter()
        .filter(|l| !l.watermark.is_empty())
        .filter_map(|l| match (l.lag_seconds, &l.lag_note) {
            (Some(lag), _) if lag > max => {
                Some(format!("{} is {} behind", l.table, human_duration(lag)))
            }
            (None, Some(note)) if l.rows_behind.is_none() => {
                Some(format!("{}: lag {note}", l.table))
            }
            _ => None,
        })
        .collect();
    if late.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "more than {} behind, or not measured: {}",
        human_duration(max),
        late.join("; ")
    );
    ExitCode::from(EXIT_FAILED)
}

/// A duration as `status --max-lag` takes it: a number with `s`, `m`, `h`
/// or `d` (`90s`, `15m`, `2h`, `1d`), in seconds.
fn parse_duration(text: &str) -> std::result::Result<i64, String> {
    let bad = || format!("`{text}` is not a duration like 90s, 15m, 2h or 1d");
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    number
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(bad)
}

/// OpenDental's schema documentation from an XML file.
fn read_docs(path: &Path) -> Result<analyze::Docs> {
    let xml = std::fs::read_to_string(path)
        .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
    analyze::parse_docs(&xml).map_err(|e| Error::config(format!("{}: {e}", path.display())))
}

/// A command on each clinic of a group (those `--clinic` names, or all),
/// or on the group as a whole (`dbt-sources`, `schedule`). Clinics are
/// isolated: one that fails (unreachable, a broken env file, stuck past its
/// timeouts) is named, and the others finish.
async fn group_command(cli: &Cli, group: &Group) -> Result<ExitCode> {
    let clinics = group.select(&cli.clinic)?;
    if let Command::Schedule(args) = &cli.command {
        print!("{}", schedule_text(cli, group, args)?);
        return Ok(ExitCode::SUCCESS);
    }
    let base = Env::load(cli.env_file.as_deref())?;
    match &cli.command {
        Command::Init => {
            let failed = each_clinic(&clinics, true, async |clinic| {
                println!("{}", init_clinic(clinic, &base).await?);
                Ok(true)
            })
            .await;
            let warehouse = base.warehouse()?;
            let client = pg::connect(&warehouse).await?;
            let schema = ident::pg(&group.group_schema);
            client
                .batch_execute(&format!("create schema if not exists {schema}"))
                .await
                .map_err(|e| Error::postgres(format!("creating schema {schema}"), e))?;
            println!("group views go to schema {}", group.group_schema);
            group_verdict(&failed)
        }
        Command::Run(args) => run_group(cli, group, &clinics, &base, args).await,
        Command::DbtSources(args) => {
            let of = analyze::SourceOf::Group {
                schema: &group.group_schema,
            };
            dbt_sources_command(cli, &base, of, args).await
        }
        Command::Verify(args) => {
            let failed = each_clinic(&clinics, true, async |clinic| {
                Ok(verify_in(cli, &clinic.env(&base)?, args).await? == ExitCode::SUCCESS)
            })
            .await;
            group_verdict(&failed)
        }
        Command::Analyze(args) if args.check => {
            let previous = std::fs::read_to_string(&cli.tables).map_err(|e| {
                Error::config(format!(
                    "{} cannot be read ({e}); write it with `etl-pipeline analyze` for one clinic first",
                    cli.tables.display()
                ))
            })?;
            let policy = analyze::PreviousPolicy::read(&previous)?;
            let failed = each_clinic(&clinics, true, async |clinic| {
                let source = clinic.env(&base)?.source()?;
                let mut plans = analyze::analyze(&source).await?;
                analyze::apply_phi(&mut plans, None, analyze::PhiPolicy::Keep, &policy);
                let changes = analyze::changes_since(&previous, &plans)?;
                print_changes(&changes, &cli.tables);
                Ok(changes.is_empty())
            })
            .await;
            group_verdict(&failed)
        }
        Command::Status(args) => {
            let json = args.format == StatusFormat::Json;
            let mut by_clinic = serde_json::Map::new();
            let failed = each_clinic(&clinics, !json, async |clinic| {
                let outcome = async { status_in(cli, &clinic.env(&base)?, args).await }.await;
                let (entry, result) = match outcome {
                    Ok((code, lines)) => (
                        lines.unwrap_or(serde_json::Value::Null),
                        Ok(code == ExitCode::SUCCESS),
                    ),
                    // The error goes into the JSON; printed, it would spoil it.
                    Err(e) if json => (serde_json::json!({"error": chain(&e)}), Ok(false)),
                    Err(e) => (serde_json::Value::Null, Err(e)),
                };
                by_clinic.insert(clinic.name.clone(), entry);
                result
            })
            .await;
            if json {
                println!("{}", pretty(&serde_json::Value::Object(by_clinic))?);
            }
            group_verdict(&failed)
        }
        _ => Err(Error::config(
            "with --clinics, `init`, `run`, `status`, `verify`, `analyze --check`, `dbt-sources` and \
             `schedule` work on the group; the table config is the group's, so write it with `analyze` for one clinic \
             (its env file with --env-file), and run other commands the same way",
        )),
    }
}

/// `demo --clinics N`: the global option's value is a number of clinics.
fn demo_clinics(given: &Path) -> Result<usize> {
    given.to_str().and_then(|n| n.parse().ok()).ok_or_else(|| {
        Error::config(format!(
            "demo --clinics {}: with demo, --clinics takes a number of clinics to build, e.g. \
                 `demo --clinics 3`",
            given.display()
        ))
    })
}

/// `dbt-sources`: the source of the warehouse schema or of a group's views.
async fn dbt_sources_command(
    cli: &Cli,
    env: &Env,
    of: analyze::SourceOf<'_>,
    args: &DbtSourcesArgs,
) -> Result<ExitCode> {
    let warehouse = env.warehouse()?;
    let config = if cli.tables.exists() {
        Some(TablesConfig::load(&cli.tables)?)
    } else {
        None
    };
    let docs = args.docs.as_deref().map(read_docs).transpose()?;
    let text = analyze::dbt_sources(
        &warehouse,
        of,
        config.as_ref(),
        docs.as_ref(),
        args.legacy_freshness,
    )
    .await?;
    config::write_atomically(&args.output, &text)?;
    println!("wrote {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}

/// What `schedule` prints for the group: paths made absolute, so a task
/// started anywhere on this machine reads the same files.
fn schedule_text(cli: &Cli, group: &Group, args: &ScheduleArgs) -> Result<String> {
    let how = crate::schedule::Invocation {
        binary: args.binary.clone(),
        group_file: crate::schedule::absolute(cli.clinics.as_deref().unwrap_or(Path::new("")))?,
        tables: crate::schedule::absolute(&cli.tables)?,
        env_file: cli
            .env_file
            .as_deref()
            .map(crate::schedule::absolute)
            .transpose()?,
    };
    Ok(match args.engine {
        Engine::Airflow => {
            let categories = if args.by_category {
                categories_of(&TablesConfig::load(&cli.tables)?, &cli.tables)?
            } else {
                Vec::new()
            };
            crate::schedule::airflow(group, &how, &categories)
        }
        Engine::Kubernetes => crate::schedule::kubernetes(group, &args.image),
        Engine::Systemd => crate::schedule::systemd(group, &how),
    })
}

/// The performance categories the tables use, largest first; every table
/// must have one, or it would be in no task.
fn categories_of(config: &TablesConfig, path: &Path) -> Result<Vec<&'static str>> {
    let missing: Vec<&str> = config
        .tables()
        .filter(|t| t.performance_category.is_none())
        .map(|t| t.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Error::config(format!(
            "--by-category runs each category in its own task, and {} table(s) of {} have no \
             performance_category ({}); set one or run `etl-pipeline analyze`",
            missing.len(),
            path.display(),
            missing
                .iter()
                .take(5)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    use crate::config::PerformanceCategory as P;
    Ok([P::Large, P::Medium, P::Small, P::Tiny]
        .into_iter()
        .filter(|c| config.tables().any(|t| t.performance_category == Some(*c)))
        .map(config::category_name)
        .collect())
}

/// What `analyze --check` found, one change a line, then the count.
fn print_changes(changes: &[String], tables: &Path) {
    for change in changes {
        println!("{change}");
    }
    println!(
        "{} schema change(s) since {} was written",
        changes.len(),
        tables.display()
    );
}

/// Creates one clinic's tracking tables; says where.
async fn init_clinic(clinic: &Clinic, base: &Env) -> Result<String> {
    let env = clinic.env(base)?;
    let warehouse = env.warehouse()?;
    let replica = match env.mode()? {
        Mode::Replica => Some(env.replica()?),
        Mode::Direct => None,
    };
    pipeline::init(Some(&warehouse), replica.as_ref()).await?;
    Ok(match &replica {
        Some(r) => format!(
            "tracking tables ready in schema {} and in {}",
            warehouse.schema,
            my::describe(r)
        ),
        None => format!("tracking tables ready in schema {}", warehouse.schema),
    })
}

/// Runs `step` on each clinic in turn, under a `== clinic` heading when
/// `heading`: a clinic whose step fails (its error printed) or reports
/// failure (`Ok(false)`) is named in what this returns, and the others
/// still run.
async fn each_clinic(
    clinics: &[&Clinic],
    heading: bool,
    mut step: impl AsyncFnMut(&Clinic) -> Result<bool>,
) -> Vec<String> {
    let mut failed = Vec::new();
    for clinic in clinics {
        if heading {
            println!("== clinic {} (schema {})", clinic.name, clinic.schema);
        }
        match step(clinic).await {
            Ok(true) => {}
            Ok(false) => failed.push(clinic.name.clone()),
            Err(e) => {
                println!("FAILED: {}", chain(&e));
                failed.push(clinic.name.clone());
            }
        }
    }
    failed
}

/// Exit code of a group command: failure naming the clinics that failed.
fn group_verdict(failed: &[String]) -> Result<ExitCode> {
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("clinic(s) failed: {}", failed.join(", "));
    Ok(ExitCode::from(EXIT_FAILED))
}

/// How long a clinic asked to stop at its deadline gets to commit the
/// batches in hand before it is abandoned.
const CLINIC_STOP_GRACE: Duration = Duration::from_secs(30);

/// Runs a clinic's `run` until it ends, passing on a stop the process is
/// asked for. At `limit` (the group's `schedule.timeout_minutes`) the
/// clinic is asked to stop at its next batch boundary, and abandoned
/// [`CLINIC_STOP_GRACE`] later if it has not got there (a server stuck in
/// the middle of a query never does; its open batches roll back). Either
/// way the clinic fails, and what it committed stands.
async fn within_deadline(
    run: impl std::future::Future<Output = Result<pipeline::RunReport>>,
    handle: shutdown::StopHandle,
    mut signal: Stop,
    limit: Duration,
) -> Result<pipeline::RunReport> {
    tokio::pin!(run);
    tokio::select! {
        report = &mut run => return report,
        () = signal.requested_wait() => {
            handle.request();
            return run.await;
        }
        () = tokio::time::sleep(limit) => {}
    }
    handle.request();
    let minutes = limit.as_secs() / 60;
    let ended = match tokio::time::timeout(CLINIC_STOP_GRACE, run).await {
        Ok(_) => "stopped at its next batch boundary".to_string(),
        Err(_) => format!(
            "abandoned {}s after being asked to stop, with batches in hand (they roll back)",
            CLINIC_STOP_GRACE.as_secs()
        ),
    };
    Err(Error::new(
        ErrorKind::Transient,
        format!(
            "did not finish within schedule.timeout_minutes ({minutes} min) of the group file: {ended}; \
             what it committed stands and its next run resumes from there"
        ),
    ))
}

/// Runs the clinics side by side: as many at once as `--max-workers`
/// allows, the workers shared out among them; then re-creates the group's
/// views. The summary and `--summary-json` go clinic by clinic.
async fn run_group(
    cli: &Cli,
    group: &Group,
    clinics: &[&Clinic],
    base: &Env,
    args: &RunArgs,
) -> Result<ExitCode> {
    let started = Instant::now();
    let notifier = Notifier::from_env(base, args.on_alert.as_deref())?;
    let stop = stop_on_signals();
    let at_once = args.max_workers.clamp(1, clinics.len().max(1));
    let workers = (args.max_workers / at_once).max(1);
    let slots = Arc::new(Semaphore::new(at_once));
    let limit = Duration::from_secs(u64::from(group.schedule.timeout_minutes) * 60);
    let runs = clinics.iter().map(|clinic| {
        let (slots, stop, notifier) = (slots.clone(), stop.clone(), notifier.clone());
        async move {
            let _slot = slots.acquire().await;
            let started = Instant::now();
            let outcome = async {
                let env = clinic.env(base)?;
                let (handle, clinic_stop) = shutdown::channel();
                let origin = RunOrigin::manual(pipeline::new_run_id());
                let run = run_in(
                    &cli.tables,
                    args,
                    &env,
                    &notifier,
                    (clinic_stop, origin),
                    workers,
                );
                within_deadline(run, handle, stop, limit).await
            }
            .await;
            (*clinic, outcome, started.elapsed())
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let mut failed = Vec::new();
    let mut interrupted = false;
    let mut summaries = serde_json::Map::new();
    let mut rows_read = 0;
    for (clinic, outcome, took) in &results {
        println!("== clinic {} (schema {})", clinic.name, clinic.schema);
        let summary = match outcome {
            Ok(report) => {
                print!("{}", render_summary(report));
                interrupted |= report.interrupted();
                if !report.succeeded() {
                    failed.push(clinic.name.clone());
                }
                rows_read += report.rows_read();
                pipeline::summary_json(report)
            }
            Err(e) => {
                println!("FAILED: {}", chain(e));
                failed.push(clinic.name.clone());
                pipeline::failed_summary_json(*took, e)
            }
        };
        summaries.insert(clinic.name.clone(), summary);
    }
    let views = match base.warehouse() {
        Ok(warehouse) => group::refresh_views(&warehouse, group).await,
        Err(e) => Err(e),
    };
    let views_json = match &views {
        Ok(report) => {
            println!(
                "group views in {}: {} re-created, {} unchanged",
                group.group_schema,
                report.changed.len(),
                report.unchanged
            );
            for warning in &report.warnings {
                println!("WARNING: {warning}");
            }
            serde_json::json!({
                "schema": group.group_schema,
                "changed": report.changed,
                "unchanged": report.unchanged,
                "warnings": report.warnings,
            })
        }
        Err(e) => {
            println!(
                "group views in {} not made: {}",
                group.group_schema,
                chain(e)
            );
            serde_json::json!({"schema": group.group_schema, "error": chain(e)})
        }
    };
    let secs = started.elapsed().as_secs_f64();
    println!(
        "group: {} clinic(s), {} failed, {rows_read} rows in {secs:.2}s, peak memory {}",
        results.len(),
        failed.len(),
        pipeline::peak_memory()
    );
    if let Some(path) = &args.summary_json {
        write_json(
            path,
            &serde_json::json!({
                "succeeded": failed.is_empty() && views.is_ok(),
                "seconds": secs,
                "rows_read": rows_read,
                "peak_memory_kib": pipeline::peak_rss_kib(),
                "failed_clinics": failed,
                "clinics": summaries,
                "group_views": views_json,
            }),
        )?;
    }
    if interrupted {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    views?;
    group_verdict(&failed)
}

/// `verify`: counts, `--deep` comparisons and `--repair`.
async fn verify_command(cli: &Cli, args: &VerifyArgs) -> Result<ExitCode> {
    let env = Env::load(cli.env_file.as_deref())?;
    verify_in(cli, &env, args).await
}

/// `verify` in one environment (a clinic's, in a group).
async fn verify_in(cli: &Cli, env: &Env, args: &VerifyArgs) -> Result<ExitCode> {
    let config = TablesConfig::load(&cli.tables)?;
    let all = args.table.is_empty();
    let selected = pipeline::select_tables(&config, &args.table, all)?;
    let ctx = match env.mode()? {
        Mode::Replica => VerifyContext {
            source: env.source().ok(),
            mysql: env.replica()?,
            warehouse: env.warehouse()?,
            mask_key: env.mask_key()?,
        },
        Mode::Direct => VerifyContext {
            source: None,
            mysql: env.source()?,
            warehouse: env.warehouse()?,
            mask_key: env.mask_key()?,
        },
    };
    if args.repair {
        for r in verify::repair(&ctx, &selected, args.allow_mass_delete).await? {
            match &r.note {
                Some(note) => println!("{:<28} not repaired: {note}", r.table),
                None => println!(
                    "{:<28} replica: {} row(s) rewritten, {} removed; warehouse: {} row(s) rewritten, {} removed",
                    r.table,
                    r.replica.written,
                    r.replica.removed,
                    r.warehouse.written,
                    r.warehouse.removed
                ),
            }
        }
        println!();
    }
    let checks = verify::verify(&ctx, &selected, args.deep).await?;
    print!("{}", verify::render(&checks, args.deep));
    let clean = checks.iter().all(verify::TableCheck::is_clean);
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> Result<ExitCode> {
    if let (Some(file), false) = (&cli.clinics, matches!(cli.command, Command::Demo(_))) {
        let group = Group::load(file)?;
        return group_command(&cli, &group).await;
    }
    if !cli.clinic.is_empty() {
        return Err(Error::config(
            "--clinic picks clinics of a group: give the group file with --clinics FILE",
        ));
    }
    match cli.command {
        Command::Demo(args) => {
            let opts = DemoOptions {
                mysql_host: args.mysql_host,
                mysql_port: args.mysql_port,
                mysql_user: args.mysql_user,
                pg_host: args.pg_host,
                pg_port: args.pg_port,
                pg_user: args.pg_user,
                source_database: args.source_db,
                replica_database: args.replica_db,
                warehouse_database: args.warehouse_db,
                scale: args.scale,
                rows: args.rows,
                only: args.only,
                fixtures: args.fixtures,
                dir: args.dir,
                setup_only: args.setup_only,
            };
            let ok = match &cli.clinics {
                Some(_) if args.another_day => {
                    return Err(Error::config(
                        "--another-day works at one demo clinic: leave out --clinics",
                    ));
                }
                Some(count) => demo::run_group(&opts, demo_clinics(count)?).await?,
                None if args.another_day => demo::another_day(&opts).await.map(|()| true)?,
                None => demo::run(&opts).await?,
            };
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            })
        }
        Command::Analyze(args) => {
            let env = Env::load(cli.env_file.as_deref())?;
            let source = env.source()?;
            let started = Instant::now();
            let mut plans = analyze::analyze(&source).await?;
            let views = my::views(&mut my::connect(&source).await?, &source.database).await?;
            if !views.is_empty() {
                println!(
                    "left out {} view(s), which are not copied (build them in the warehouse over the tables they read): {}",
                    views.len(),
                    views.join(", ")
                );
            }
            let previous = std::fs::read_to_string(&cli.tables).ok();
            let previous_policy = match &previous {
                Some(text) => analyze::PreviousPolicy::read(text)?,
                None => analyze::PreviousPolicy::default(),
            };
            let docs = args.docs.as_deref().map(read_docs).transpose()?;
            let policy = match args.phi {
                PhiArg::Keep => analyze::PhiPolicy::Keep,
                PhiArg::Exclude => analyze::PhiPolicy::Exclude,
                PhiArg::Mask => analyze::PhiPolicy::Mask,
            };
            analyze::apply_phi(&mut plans, docs.as_ref(), policy, &previous_policy);
            let changes = match &previous {
                Some(text) => analyze::changes_since(text, &plans)?,
                None => vec![format!("first analysis: {} tables", plans.len())],
            };
            if args.check {
                if previous.is_none() {
                    return Err(Error::config(format!(
                        "{} does not exist yet; run `etl-pipeline analyze` first",
                        cli.tables.display()
                    )));
                }
                print_changes(&changes, &cli.tables);
                return Ok(if changes.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_FAILED)
                });
            }
            analyze::write_config(
                &plans,
                previous_policy.defaults.as_deref(),
                &changes,
                &cli.tables,
                env.environment().name(),
            )?;
            let incremental = plans.iter().filter(|p| p.chosen.is_some()).count();
            println!(
                "analyzed {} tables of {} in {:.1}s ({incremental} with a watermark column); wrote {} ({} schema change(s))",
                plans.len(),
                my::describe(&source),
                started.elapsed().as_secs_f64(),
                cli.tables.display(),
                changes.len()
            );
            let flagged: usize = plans.iter().map(|p| p.phi.len()).sum();
            let uncovered: usize = plans
                .iter()
                .flat_map(|p| {
                    p.phi
                        .iter()
                        .filter(|(c, _)| !p.exclude.contains(c) && !p.mask.contains_key(c))
                })
                .count();
            if flagged > 0 {
                println!(
                    "flagged {flagged} column(s) as likely patient data (`# likely PHI` comments); {uncovered} left \
                     in clear (`analyze --phi exclude` or `--phi mask` writes a policy for them)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DbtSources(ref args) => {
            let env = Env::load(cli.env_file.as_deref())?;
            dbt_sources_command(&cli, &env, analyze::SourceOf::Warehouse, args).await
        }
        Command::Transform(TransformCommand::Mark(args)) => {
            let env = Env::load(cli.env_file.as_deref())?;
            let warehouse = env.warehouse()?;
            let client = pg::connect(&warehouse).await?;
            tracking::check_warehouse(&client, &warehouse.schema).await?;
            let status = match args.status {
                TransformStatus::Success => "success",
                TransformStatus::Failed => "failed",
            };
            tracking::mark_transform(&client, &warehouse.schema, &args.table, status, args.rows)
                .await?;
            println!("{}: transform {status}", args.table);
            Ok(ExitCode::SUCCESS)
        }
        Command::Init => {
            let env = Env::load(cli.env_file.as_deref())?;
            let warehouse = env.warehouse()?;
            let replica = match env.mode()? {
                Mode::Replica => Some(env.replica()?),
                Mode::Direct => None,
            };
            pipeline::init(Some(&warehouse), replica.as_ref()).await?;
            println!(
                "tracking tables ready in {} (schema {})",
                pg::describe(&warehouse),
                warehouse.schema
            );
            if let Some(r) = &replica {
                println!("tracking tables ready in {}", my::describe(r));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let started = std::time::Instant::now();
            let outcome = async {
                let env = Env::load(cli.env_file.as_deref())?;
                let notifier = Notifier::from_env(&env, args.on_alert.as_deref())?;
                let outcome = run_tables(&cli.tables, &args, &env, &notifier).await;
                if let Err(e) = &outcome
                    && notifier.delivers()
                {
                    notifier.send(&Alert::run_failed(&pipeline::new_run_id(), e));
                    notifier.flush().await;
                }
                outcome
            }
            .await;
            // A run that ends in an error still leaves its summary, so a
            // scheduler never reads the previous run's as this one's.
            if let (Err(e), Some(path)) = (&outcome, &args.summary_json) {
                let summary = pipeline::failed_summary_json(started.elapsed(), e);
                if let Err(written) = write_json(path, &summary) {
                    eprintln!("warning: {written:#}");
                }
            }
            outcome
        }
        Command::Status(ref args) => status_command(&cli, args).await,
        Command::Serve(args) => {
            let env = Env::load(cli.env_file.as_deref())?;
            let opts = crate::serve::ServeOptions {
                listen: args.listen,
                tables_file: cli.tables.clone(),
                max_workers: args.max_workers,
                on_alert: args.on_alert,
            };
            crate::serve::serve(opts, env).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule(_) => Err(Error::config(
            "schedule runs a dental group: give its file with --clinics FILE",
        )),
        Command::Validate => {
            let config = TablesConfig::load(&cli.tables)?;
            let env = Env::load(cli.env_file.as_deref())?;
            let mode = env.mode()?;
            let warehouse = env.warehouse()?;
            println!(
                "{}: {} table(s), {} schedule(s), valid",
                cli.tables.display(),
                config.len(),
                config.schedules().len()
            );
            println!("environment {}, mode {mode:?}:", env.environment().name());
            if mode == Mode::Replica {
                println!("  replica    {}", my::describe(&env.replica()?));
            }
            pg::check_tls(&warehouse)?;
            println!(
                "  warehouse  {} (schema {}, TLS {})",
                pg::describe(&warehouse),
                warehouse.schema,
                warehouse.ssl_mode.name()
            );
            match env.source() {
                Ok(source) => println!(
                    "  source     {} (TLS {})",
                    my::describe(&source),
                    source.ssl_mode.name()
                ),
                Err(e) if mode == Mode::Direct || env.source_configured() => return Err(e),
                Err(e) => {
                    println!("  source     not configured (needed by the extract phase): {e}")
                }
            }
            let hashing: Vec<&str> = config
                .tables()
                .filter(|t| t.columns.mask.values().any(|m| *m == Mask::Hash))
                .map(|t| t.name.as_str())
                .collect();
            match (env.mask_key()?, hashing.is_empty()) {
                (None, false) => {
                    return Err(Error::config(format!(
                        "mask_columns hashes columns of {}, which needs a key: set ETL_MASK_KEY_FILE \
                         (a file holding it) or ETL_MASK_KEY",
                        hashing.join(", ")
                    )));
                }
                (Some(_), _) => {
                    println!("  mask key   set ({} table(s) hash columns)", hashing.len())
                }
                (None, true) => {}
            }
            env.source_max_rows_per_second()?;
            env.source_max_connections()?;
            env.history_retention_days()?;
            if mode == Mode::Replica {
                env.replica_lock_wait()?;
            }
            Notifier::from_env(&env, None)?;
            for (name, nearest) in env.unknown_variables() {
                println!(
                    "  warning: {name} is not a setting this tool reads; did you mean {nearest}?"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(ref args) => verify_command(&cli, args).await,
        Command::TestConnections => {
            let env = Env::load(cli.env_file.as_deref())?;
            let mut ok = true;
            let mut mysql_targets = vec![("replica", env.replica())];
            if let Ok(source) = env.source() {
                mysql_targets.insert(0, ("source", Ok(source)));
            }
            for (role, settings) in mysql_targets {
                let outcome = async {
                    let s = settings?;
                    let started = Instant::now();
                    let mut conn = my::connect(&s).await?;
                    let version = my::server_version(&mut conn).await?;
                    Ok(format!(
                        "{} ok, {version}, {} ms",
                        my::describe(&s),
                        started.elapsed().as_millis()
                    ))
                }
                .await;
                ok &= report_connection(role, outcome);
            }
            let outcome = async {
                let s = env.warehouse()?;
                let started = Instant::now();
                let client = pg::connect(&s).await?;
                let version = pg::server_version(&client).await?;
                Ok(format!(
                    "{} ok, {version}, {} ms",
                    pg::describe(&s),
                    started.elapsed().as_millis()
                ))
            }
            .await;
            ok &= report_connection("warehouse", outcome);
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            })
        }
    }
}

/// Seconds as the two largest units: `45s`, `12m05s`, `3h12m`, `2d04h`.
fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

fn write_json(path: &std::path::Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::config(format!("cannot encode {}: {e}", path.display())))?;
    config::write_atomically(path, &text)
}

fn report_connection(role: &str, outcome: Result<String>) -> bool {
    match outcome {
        Ok(line) => {
            println!("{role:<10} {line}");
            true
        }
        Err(e) => {
            println!("{role:<10} FAILED: {}", chain(&e));
            false
        }
    }
}
