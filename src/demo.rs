//! The demo: a clinic built on this machine's MariaDB from OpenDental's own
//! schema (the 21.1 unit-test database, 379 tables with their seed rows),
//! grown with synthetic rows to a chosen fraction of a real clinic's row
//! counts; then analyze, init, a full two-hop run, changes at the source, an
//! incremental run, a run with nothing to do and a deep verification, each
//! timed. The benchmark builds its tables the same way.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio::sync::Semaphore;

use crate::analyze;
use crate::config::{
    DEFAULT_SOURCE_CONNECTIONS, MySqlSettings, PgSettings, PgSslMode, Secret, SslMode,
    TablesConfig, write_atomically,
};
use crate::error::{Error, ErrorKind, Result, chain};
use crate::extract::ExtractContext;
use crate::group::DEFAULT_GROUP_SCHEMA;
use crate::load::LoadContext;
use crate::pipeline::{self, IfLocked, Phases, RunContext, RunPlan, RunReport};
use crate::schema::{SourceType, ident};
use crate::shutdown::Stop;
use crate::tracking::RunOrigin;
use crate::verify::{self, VerifyContext};
use crate::{mysql as my, postgres as pg};

/// OpenDental's schema with its seed rows, as `mysqldump` wrote it.
pub const SCHEMA_DUMP: &str = "opendental-21.1-unittest-dump.sql";
/// The old system's table config: each table's row count in a real clinic.
pub const ROW_COUNTS: &str = "seed-system-tables.yml";

/// Where the demo puts its data and files.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub mysql_host: String,
    pub mysql_port: u16,
    pub mysql_user: String,
    pub pg_host: String,
    pub pg_port: u16,
    pub pg_user: String,
    pub source_database: String,
    pub replica_database: String,
    pub warehouse_database: String,
    /// Fraction of a real clinic's row count each table gets.
    pub scale: f64,
    /// Rows per table instead of the scaled real counts.
    pub rows: Option<u64>,
    /// Only these tables (default: all of OpenDental's).
    pub only: Vec<String>,
    /// Folder with [`SCHEMA_DUMP`] and [`ROW_COUNTS`].
    pub fixtures: Option<PathBuf>,
    pub dir: PathBuf,
    pub setup_only: bool,
}

impl DemoOptions {
    fn source(&self) -> MySqlSettings {
        MySqlSettings {
            database: self.source_database.clone(),
            ..self.replica()
        }
    }

    fn replica(&self) -> MySqlSettings {
        MySqlSettings {
            host: self.mysql_host.clone(),
            port: self.mysql_port,
            database: self.replica_database.clone(),
            user: self.mysql_user.clone(),
            password: Secret::default(),
            ssl_mode: SslMode::Disabled,
            ssl_ca: None,
            ssl_client: None,
        }
    }

    fn warehouse(&self) -> PgSettings {
        PgSettings {
            host: self.pg_host.clone(),
            port: self.pg_port,
            database: self.warehouse_database.clone(),
            schema: crate::config::DEFAULT_SCHEMA.to_string(),
            user: self.pg_user.clone(),
            password: Secret::default(),
            ssl_mode: PgSslMode::default(),
            ssl_root_cert: None,
            ssl_client: None,
        }
    }

    fn env_text(&self) -> String {
        format!(
            "ETL_ENVIRONMENT=test\n{}{}",
            self.clinic_env_text(),
            self.warehouse_env_text()
        )
    }

    /// A clinic's own settings: its source and replica.
    fn clinic_env_text(&self) -> String {
        format!(
            "TEST_OPENDENTAL_SOURCE_HOST={0}\nTEST_OPENDENTAL_SOURCE_PORT={1}\nTEST_OPENDENTAL_SOURCE_DB={2}\n\
             TEST_OPENDENTAL_SOURCE_USER={3}\nTEST_OPENDENTAL_SOURCE_PASSWORD=\n\
             TEST_MYSQL_REPLICATION_HOST={0}\nTEST_MYSQL_REPLICATION_PORT={1}\nTEST_MYSQL_REPLICATION_DB={4}\n\
             TEST_MYSQL_REPLICATION_USER={3}\nTEST_MYSQL_REPLICATION_PASSWORD=\n",
            self.mysql_host,
            self.mysql_port,
            self.source_database,
            self.mysql_user,
            self.replica_database,
        )
    }

    fn warehouse_env_text(&self) -> String {
        format!(
            "TEST_POSTGRES_ANALYTICS_HOST={}\nTEST_POSTGRES_ANALYTICS_PORT={}\nTEST_POSTGRES_ANALYTICS_DB={}\n\
             TEST_POSTGRES_ANALYTICS_SCHEMA=raw\nTEST_POSTGRES_ANALYTICS_USER={}\nTEST_POSTGRES_ANALYTICS_PASSWORD=\n",
            self.pg_host, self.pg_port, self.warehouse_database, self.pg_user,
        )
    }

    /// How big the demo's tables are, in words.
    fn size(&self) -> String {
        match self.rows {
            Some(n) => format!("{n} rows per table"),
            None => format!("{} of a real clinic's row counts", self.scale),
        }
    }

    /// One clinic of `demo --clinics N`: its own source and replica
    /// databases, the shared warehouse.
    fn clinic(&self, name: &str) -> DemoOptions {
        DemoOptions {
            source_database: format!("{}_{name}", self.source_database),
            replica_database: format!("{}_{name}", self.replica_database),
            ..self.clone()
        }
    }
}

/// This program as the user can type it: its path relative to the working
/// directory when it lies below it (`target/release/etl-pipeline` after
/// `cargo run --release`), else its full path; `etl-pipeline` if unknown.
fn this_binary() -> PathBuf {
    let Ok(exe) = std::env::current_exe() else {
        return PathBuf::from("etl-pipeline");
    };
    std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or(exe)
}

/// The folder holding the OpenDental fixture: `given`, or the repository's
/// `fixtures/opendental` (from the working directory, or where the binary
/// was built).
pub fn fixtures_dir(given: Option<&Path>) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match given {
        Some(dir) => vec![dir.to_path_buf()],
        None => vec![
            PathBuf::from("fixtures/opendental"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/opendental"),
        ],
    };
    candidates
        .iter()
        .find(|d| d.join(SCHEMA_DUMP).is_file() && d.join(ROW_COUNTS).is_file())
        .cloned()
        .ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
            Error::config(format!(
                "the OpenDental fixture ({SCHEMA_DUMP} and {ROW_COUNTS}) is not in {}; pass --fixtures DIR",
                tried.join(" or ")
            ))
        })
}

fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))
}

/// Creates (or re-creates) an empty MySQL database.
pub async fn create_empty(settings: &MySqlSettings) -> Result<()> {
    let admin = MySqlSettings {
        database: String::new(),
        ..settings.clone()
    };
    let mut conn = my::connect(&admin).await?;
    let db = ident::mysql(&settings.database);
    for sql in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db} CHARACTER SET utf8mb4"),
    ] {
        conn.query_drop(&sql).await.map_err(|e| {
            Error::mysql(
                format!("creating the demo database `{}`", settings.database),
                e,
            )
        })?;
    }
    Ok(())
}

/// Creates (or re-creates) an empty PostgreSQL database.
pub async fn create_warehouse(settings: &PgSettings) -> Result<()> {
    let admin = PgSettings {
        database: "postgres".to_string(),
        ..settings.clone()
    };
    let client = pg::connect(&admin).await?;
    let db = ident::pg(&settings.database);
    for sql in [
        format!("drop database if exists {db} with (force)"),
        format!("create database {db}"),
    ] {
        client.batch_execute(&sql).await.map_err(|e| {
            Error::postgres(
                format!("creating the demo warehouse `{}`", settings.database),
                e,
            )
        })?;
    }
    Ok(())
}

/// What [`build_source`] made.
#[derive(Debug, Clone, Default)]
pub struct BuiltSource {
    /// Tables, in name order.
    pub tables: Vec<String>,
    /// Rows in all tables.
    pub rows: u64,
    /// Of those, rows the demo generated (the rest are OpenDental's seed rows).
    pub generated: u64,
}

/// Creates (or re-creates) the demo clinic: OpenDental's schema and seed
/// rows from the fixture, then synthetic rows until each table holds
/// `rows`, or `scale` times its real row count.
pub async fn build_source(
    settings: &MySqlSettings,
    fixtures: &Path,
    scale: f64,
    rows: Option<u64>,
    only: &[String],
) -> Result<BuiltSource> {
    let dump = read_file(&fixtures.join(SCHEMA_DUMP))?;
    let counts_path = fixtures.join(ROW_COUNTS);
    let counts = TablesConfig::load(&counts_path)?;
    create_empty(settings).await?;
    let mut conn = my::connect(settings).await?;
    let ctx = |what: &str| format!("{what} in the demo source `{}`", settings.database);
    conn.query_drop(dump)
        .await
        .map_err(|e| Error::mysql(ctx(&format!("loading {SCHEMA_DUMP}")), e))?;
    let mut tables: Vec<String> = conn
        .exec(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME",
            (settings.database.as_str(),),
        )
        .await
        .map_err(|e| Error::mysql(ctx("listing the tables"), e))?;
    if !only.is_empty() {
        if let Some(unknown) = only.iter().find(|t| !tables.contains(t)) {
            return Err(Error::config(format!(
                "--only names `{unknown}`, which is not a table of OpenDental's schema"
            )));
        }
        for t in tables.iter().filter(|t| !only.contains(t)) {
            conn.query_drop(format!("DROP TABLE {}", ident::mysql(t)))
                .await
                .map_err(|e| Error::mysql(ctx(&format!("dropping `{t}`")), e))?;
        }
        tables.retain(|t| only.contains(t));
    }
    let mut work = Vec::new();
    let mut total = 0;
    for t in &tables {
        let existing: u64 = conn
            .query_first(format!("SELECT COUNT(*) FROM {}", ident::mysql(t)))
            .await
            .map_err(|e| Error::mysql(ctx(&format!("counting `{t}`")), e))?
            .unwrap_or(0);
        let target = match rows {
            Some(n) => n,
            None => counts
                .get(t)
                .ok()
                .and_then(|c| c.estimated_rows)
                .map_or(0, |n| (n as f64 * scale).round() as u64),
        };
        total += existing.max(target);
        if target > existing {
            work.push((t.clone(), target - existing));
        }
    }
    drop(conn);
    work.sort_by_key(|w| std::cmp::Reverse(w.1));
    let generated = work.iter().map(|w| w.1).sum();
    futures_util::stream::iter(work.into_iter().map(|(table, n)| async move {
        let mut conn = my::connect(settings).await?;
        fill(&mut conn, &settings.database, &table, n, Fill::History).await
    }))
    .buffer_unordered(2)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(BuiltSource {
        tables,
        rows: total,
        generated,
    })
}

/// What generated rows look like in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Rows spread over past years, in key order; edit stamps from mid-2021
    /// to mid-2026, three rows to a value (ties a watermark must page through).
    History,
    /// Rows entered now: dates today, stamps left to their defaults.
    Fresh,
}

/// Appends `n` synthetic rows to `table`, one `INSERT … SELECT` over
/// MariaDB's sequence engine, every column given a value of its type.
pub async fn fill(conn: &mut Conn, database: &str, table: &str, n: u64, how: Fill) -> Result<()> {
    let shape = my::describe_table(conn, database, table).await?;
    let extras: Vec<(String, String, Option<String>)> = conn
        .exec(
            "SELECT COLUMN_NAME, EXTRA, CHARACTER_SET_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (database, table),
        )
        .await
        .map_err(|e| Error::mysql(format!("reading the columns of `{table}`"), e))?;
    let extra: HashMap<&str, (&str, Option<&str>)> = extras
        .iter()
        .map(|(c, e, cs)| (c.as_str(), (e.as_str(), cs.as_deref())))
        .collect();
    let qt = ident::mysql(table);
    let mut names = Vec::new();
    let mut values = Vec::new();
    for col in &shape.columns {
        let (extra, charset) = extra.get(col.name.as_str()).copied().unwrap_or(("", None));
        let extra = extra.to_ascii_lowercase();
        if extra.contains("auto_increment") || (how == Fill::Fresh && extra.contains("on update")) {
            continue;
        }
        let expr = if shape.primary_key == [col.name.clone()] {
            let max: Option<i64> = conn
                .query_first(format!(
                    "SELECT COALESCE(MAX({}), 0) FROM {qt}",
                    ident::mysql(&col.name)
                ))
                .await
                .map_err(|e| Error::mysql(format!("reading the largest key of `{table}`"), e))?;
            format!("{} + seq", max.unwrap_or(0))
        } else {
            let value = value_expr(&col.name, &col.ty, charset == Some("latin1"), n, how);
            if col.nullable {
                format!("IF(seq % 11 = 0, NULL, {value})")
            } else {
                value
            }
        };
        names.push(ident::mysql(&col.name));
        values.push(expr);
    }
    let sql = format!(
        "INSERT INTO {qt} ({}) SELECT {} FROM seq_1_to_{n}",
        names.join(", "),
        values.join(", ")
    );
    conn.query_drop("SET SESSION sql_mode = ''")
        .await
        .map_err(|e| Error::mysql("setting sql_mode", e))?;
    conn.query_drop(&sql)
        .await
        .map_err(|e| Error::mysql(format!("generating {n} rows in `{table}`"), e))?;
    if conn.affected_rows() != n {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "generating rows in `{table}`: {} of {n} inserted",
                conn.affected_rows()
            ),
        ));
    }
    Ok(())
}

/// A value of type `ty` for row `seq` of `n`: varied, within the type's
/// range, with OpenDental's habits (0001-01-01 for "no date" in one row of
/// fifty, accented and symbol text in one of seven).
fn value_expr(name: &str, ty: &SourceType, latin1: bool, n: u64, how: Fill) -> String {
    let label: String = name.chars().take(12).collect();
    let accents = if latin1 { " é" } else { " é☺" };
    let text = format!("CONCAT('{label} ', seq, IF(seq % 7 = 0, '{accents}', ''))");
    let spread = |seconds: u64| (seconds / n.max(1)).max(1);
    match ty {
        SourceType::Integer { bytes: 1, unsigned } => {
            format!("seq % {}", if *unsigned { 200 } else { 100 })
        }
        SourceType::Integer { bytes: 2, .. } => "seq % 10000".into(),
        SourceType::Integer { bytes: 3 | 4, .. } => "seq % 1000000".into(),
        SourceType::Integer { .. } => "seq % 50000 + 1".into(),
        SourceType::TinyIntOne { .. } | SourceType::Bit { .. } => "seq % 2".into(),
        SourceType::Decimal { precision, scale } => format!(
            "CAST((seq % {}) / {} AS DECIMAL({precision}, {scale}))",
            10u64.pow((*precision).clamp(1, 9)),
            10u64.pow((*scale).min(9))
        ),
        SourceType::Float | SourceType::Double => "(seq % 1000000) / 100".into(),
        SourceType::Char { length } | SourceType::VarChar { length } => {
            format!("LEFT({text}, {length})")
        }
        SourceType::Text => format!("CONCAT({text}, ' for patient ', seq % 5000)"),
        SourceType::Binary => "UNHEX(MD5(seq))".into(),
        SourceType::Enum | SourceType::Set => "1".into(),
        SourceType::Json => "JSON_OBJECT('n', seq)".into(),
        SourceType::Date => match how {
            Fill::History => {
                "IF(seq % 50 = 0, '0001-01-01', DATE '2016-01-01' + INTERVAL (seq % 3650) DAY)"
                    .into()
            }
            Fill::Fresh => "CURDATE()".into(),
        },
        SourceType::DateTime { .. } => match how {
            Fill::History => format!(
                "IF(seq % 50 = 0, '0001-01-01 00:00:00', TIMESTAMP '2016-01-01 08:00:00' + INTERVAL (seq * {}) SECOND)",
                spread(315_360_000)
            ),
            Fill::Fresh => "NOW()".into(),
        },
        SourceType::Timestamp { .. } => match how {
            Fill::History => format!(
                "TIMESTAMP '2021-06-01 00:00:00' + INTERVAL (seq DIV 3 * {}) SECOND",
                spread(157_680_000) * 3
            ),
            Fill::Fresh => "NOW()".into(),
        },
        SourceType::Time { .. } => "SEC_TO_TIME(seq % 86400)".into(),
        SourceType::Year => "2000 + seq % 25".into(),
        SourceType::Geometry => "POINT(seq % 90, seq % 180)".into(),
    }
}

/// Works another day at an existing demo clinic (`demo --another-day`):
/// the changes [`change_source`] makes between the demo's first two runs.
pub async fn another_day(opts: &DemoOptions) -> Result<()> {
    let source = opts.source();
    let mut conn = my::connect(&source).await?;
    let tables: Vec<String> = conn
        .exec(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE'",
            (&source.database,),
        )
        .await
        .map_err(|e| Error::mysql(format!("listing the tables of `{}`", source.database), e))?;
    if tables.is_empty() {
        return Err(Error::config(format!(
            "`{}` holds no demo clinic: run `etl-pipeline demo` first",
            source.database
        )));
    }
    let changes = change_source(&source, &tables).await?;
    println!(
        "the clinic `{}` worked another day: {changes}",
        source.database
    );
    Ok(())
}

/// What a clinic does between two runs: edits 1% of procedures and 2% of
/// patients (their edit stamps move), deletes 1% of procedures and 2.5% of
/// appointments outright, enters new procedures, commlog notes and security
/// log entries. Only tables the demo has are touched.
async fn change_source(settings: &MySqlSettings, tables: &[String]) -> Result<String> {
    let mut conn = my::connect(settings).await?;
    let mut done = Vec::new();
    let has = |t: &str| tables.iter().any(|x| x == t);
    for (table, sql, what) in [
        (
            "procedurelog",
            "UPDATE `procedurelog` SET `ProcFee` = `ProcFee` + 10 WHERE `ProcNum` % 100 = 7",
            "procedurelog fees edited",
        ),
        (
            "patient",
            "UPDATE `patient` SET `EstBalance` = `EstBalance` + 1 WHERE `PatNum` % 50 = 3",
            "patient balances edited",
        ),
        (
            "procedurelog",
            "DELETE FROM `procedurelog` WHERE `ProcNum` % 100 = 13",
            "procedures deleted",
        ),
        (
            "appointment",
            "DELETE FROM `appointment` WHERE `AptNum` % 40 = 5",
            "appointments deleted",
        ),
    ] {
        if has(table) {
            conn.query_drop(sql)
                .await
                .map_err(|e| Error::mysql(format!("editing `{table}`"), e))?;
            done.push(format!("{} {what}", conn.affected_rows()));
        }
    }
    for (table, n) in [
        ("procedurelog", 300),
        ("commlog", 200),
        ("securitylog", 500),
        ("securityloghash", 500),
    ] {
        if has(table) {
            fill(&mut conn, &settings.database, table, n, Fill::Fresh).await?;
            done.push(format!("{n} {table} rows entered"));
        }
    }
    Ok(done.join(", "))
}

/// The totals of a run and any table that failed, with its error.
fn brief(report: &RunReport) -> String {
    let mut out = format!("   {}\n", pipeline::totals_line(report));
    for o in &report.outcomes {
        if let Err(e) = &o.result
            && e.kind() != ErrorKind::Skipped
        {
            let _ = writeln!(out, "   FAILED {} ({}): {}", o.table, o.phase, chain(e));
        }
    }
    out
}

/// Analyzes the demo clinic `source` and writes the table config as
/// `analyze` would, patient columns kept.
async fn write_config(source: &MySqlSettings, path: &Path) -> Result<Vec<analyze::TablePlan>> {
    let mut plans = analyze::analyze(source).await?;
    analyze::apply_phi(
        &mut plans,
        None,
        analyze::PhiPolicy::Keep,
        &analyze::PreviousPolicy::default(),
    );
    analyze::write_config(&plans, None, &[], path, "test")?;
    Ok(plans)
}

/// `--scale` within what a demo can build.
fn check_scale(scale: f64) -> Result<()> {
    if scale > 0.0 && scale <= 10.0 {
        Ok(())
    } else {
        Err(Error::config(format!(
            "--scale {scale} is out of range; give a fraction of a real clinic between 0 and 10, e.g. 0.1"
        )))
    }
}

/// Runs the demo; returns whether every step succeeded and verified clean.
pub async fn run(opts: &DemoOptions) -> Result<bool> {
    check_scale(opts.scale)?;
    let fixtures = fixtures_dir(opts.fixtures.as_deref())?;
    let source = opts.source();
    let replica = opts.replica();
    let warehouse = opts.warehouse();
    let demo_started = Instant::now();
    let mut timings: Vec<(String, f64)> = Vec::new();
    let mut step = |label: &str, started: Instant| {
        let secs = started.elapsed().as_secs_f64();
        timings.push((label.to_string(), secs));
        secs
    };

    let size = opts.size();
    println!(
        "1. building the demo clinic `{}` from OpenDental's schema ({SCHEMA_DUMP}) at {size}",
        opts.source_database
    );
    let started = Instant::now();
    let built = build_source(&source, &fixtures, opts.scale, opts.rows, &opts.only).await?;
    create_empty(&replica).await?;
    create_warehouse(&warehouse).await?;
    let secs = step("build the demo clinic", started);
    println!(
        "   {} tables, {} rows ({} generated) in {secs:.1}s; empty replica `{}` and warehouse `{}`",
        built.tables.len(),
        built.rows,
        built.generated,
        opts.replica_database,
        opts.warehouse_database
    );

    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| Error::config(format!("cannot create {}: {e}", opts.dir.display())))?;
    let env_file = opts.dir.join("demo.env");
    let tables_file = opts.dir.join("tables.yml");
    write_atomically(&env_file, &opts.env_text())?;
    let started = Instant::now();
    let plans = write_config(&source, &tables_file).await?;
    pipeline::init(Some(&warehouse), Some(&replica)).await?;
    let secs = step("analyze + init", started);
    println!(
        "2. analyzed the clinic and wrote {} ({} tables, {} with a watermark column), created the tracking tables: {secs:.1}s",
        tables_file.display(),
        plans.len(),
        plans.iter().filter(|p| p.chosen.is_some()).count()
    );
    let hint = format!(
        "{} --env-file {} --tables {}",
        this_binary().display(),
        env_file.display(),
        tables_file.display()
    );
    if opts.setup_only {
        println!("demo data ready; run it with: {hint} run --all");
        return Ok(true);
    }

    let ctx = RunContext {
        extract: Some(ExtractContext {
            source: source.clone(),
            replica: replica.clone(),
            rate: None,
            source_slots: Arc::new(Semaphore::new(DEFAULT_SOURCE_CONNECTIONS)),
            replica_lock_wait: None,
            mask_key: None,
        }),
        load: Some(LoadContext {
            replica: replica.clone(),
            warehouse: warehouse.clone(),
            rate: None,
            capped_by_copy: true,
            mask_key: None,
            connections: Default::default(),
        }),
        warehouse: Some(warehouse.clone()),
        stop: Stop::never(),
        notifier: crate::alert::Notifier::none(),
    };
    let config = TablesConfig::load(&tables_file)?;
    let plan = RunPlan {
        tables: config.tables().cloned().collect(),
        force_full: false,
        allow_mass_delete: false,
        ignore_time_gap: false,
        recheck: false,
        max_workers: pipeline::default_max_workers(),
        phases: Phases {
            extract: true,
            load: true,
        },
        if_locked: IfLocked::Skip,
        origin: RunOrigin::manual(pipeline::new_run_id()),
    };
    let mut ok = true;
    for (i, (label, title)) in [
        (
            "first run (full)",
            "first run: source → replica → warehouse, in full",
        ),
        ("incremental run", "incremental run after the changes"),
        ("run with no change", "run again with nothing changed"),
    ]
    .into_iter()
    .enumerate()
    {
        if i == 1 {
            let changes = change_source(&source, &built.tables).await?;
            println!("4. the clinic works: {changes}");
        }
        let started = Instant::now();
        let report = pipeline::run(&ctx, plan.clone()).await?;
        step(label, started);
        let file = opts.dir.join(format!("run-{}.txt", i + 1));
        write_atomically(&file, &pipeline::render_summary(&report))?;
        println!(
            "{}. {title} (every table: {}):",
            [3, 5, 6][i],
            file.display()
        );
        print!("{}", brief(&report));
        ok &= report.succeeded();
    }

    let started = Instant::now();
    let checks = verify::verify(
        &VerifyContext {
            source: Some(source),
            mysql: replica,
            warehouse,
            mask_key: None,
        },
        &plan.tables,
        true,
    )
    .await?;
    let secs = step("verify --deep", started);
    let file = opts.dir.join("verify.txt");
    write_atomically(&file, &verify::render(&checks, true))?;
    let differing: Vec<&str> = checks
        .iter()
        .filter(|c| !c.is_clean())
        .map(|c| c.table.as_str())
        .collect();
    let compared: u64 = checks.iter().map(|c| c.compared).sum();
    println!(
        "7. verify --deep: {} tables, {compared} rows compared value by value in {secs:.1}s: {} (per table: {})",
        checks.len(),
        if differing.is_empty() {
            "source = replica = warehouse".to_string()
        } else {
            format!("DIFFERENCES in {}", differing.join(", "))
        },
        file.display()
    );
    ok &= differing.is_empty();

    println!("\ntimings:");
    for (label, secs) in &timings {
        println!("  {label:<24} {secs:>8.1}s");
    }
    println!(
        "  {:<24} {:>8.1}s",
        "demo in all",
        demo_started.elapsed().as_secs_f64()
    );
    println!(
        "\nThe warehouse is `{}` (schema raw). Carry on with:\n  {hint} status\n\
         or watch it in a browser at http://{} (add a `schedules:` block to run it by itself):\n  {hint} serve",
        opts.warehouse_database,
        crate::serve::DEFAULT_LISTEN
    );
    Ok(ok)
}

/// Columns OpenDental added after 21.1 (its 24.3 documentation lists
/// them), which the newest clinic of `demo --clinics N` has: table, column,
/// its type, and a value for the rows already there.
const NEWER_COLUMNS: &[(&str, &str, &str, &str)] = &[
    (
        "payment",
        "MerchantFee",
        "double NOT NULL DEFAULT 0",
        "ROUND(`PayAmt` * 0.029, 2)",
    ),
    (
        "appointment",
        "ItemOrderPlanned",
        "int(11) NOT NULL DEFAULT 0",
        "`AptNum` % 7",
    ),
];

/// The clinics of `demo --clinics N`: the compass points, then `clinic05`
/// and on.
pub fn clinic_names(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match ["north", "south", "east", "west"].get(i) {
            Some(name) => name.to_string(),
            None => format!("clinic{:02}", i + 1),
        })
        .collect()
}

/// Most clinics `demo --clinics N` builds.
pub const MAX_DEMO_CLINICS: usize = 50;

/// `demo --clinics N`: builds N clinics, the last on a newer OpenDental
/// schema, writes the group file and each clinic's env file, then runs
/// the group as a user types it (`--clinics FILE init`, `run --all`, the
/// clinics' day of edits, `run --all` again, `verify --deep`), each
/// command's output in a file, and shows the group's view of the newer
/// columns clinic by clinic.
pub async fn run_group(opts: &DemoOptions, count: usize) -> Result<bool> {
    check_scale(opts.scale)?;
    if !(2..=MAX_DEMO_CLINICS).contains(&count) {
        return Err(Error::config(format!(
            "demo --clinics {count}: give a number of clinics from 2 to {MAX_DEMO_CLINICS}"
        )));
    }
    let fixtures = fixtures_dir(opts.fixtures.as_deref())?;
    let names = clinic_names(count);
    let clinics: Vec<DemoOptions> = names.iter().map(|n| opts.clinic(n)).collect();
    let newest = names.last().expect("at least two clinics");
    let demo_started = Instant::now();
    let size = opts.size();
    println!("1. building {count} clinics from OpenDental's schema ({SCHEMA_DUMP}) at {size}");
    let mut tables = Vec::new();
    for (name, clinic) in names.iter().zip(&clinics) {
        let started = Instant::now();
        let built = build_source(
            &clinic.source(),
            &fixtures,
            opts.scale,
            opts.rows,
            &opts.only,
        )
        .await?;
        create_empty(&clinic.replica()).await?;
        let newer = if name == newest {
            newer_schema(&clinic.source(), &built.tables).await?
        } else {
            String::new()
        };
        println!(
            "   {name}: `{}`, {} tables, {} rows in {:.1}s{newer}",
            clinic.source_database,
            built.tables.len(),
            built.rows,
            started.elapsed().as_secs_f64()
        );
        tables = built.tables;
    }
    let warehouse = opts.warehouse();
    create_warehouse(&warehouse).await?;

    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| Error::config(format!("cannot create {}: {e}", opts.dir.display())))?;
    let env_file = opts.dir.join("demo.env");
    let tables_file = opts.dir.join("tables.yml");
    let group_file = opts.dir.join("clinics.yml");
    write_atomically(
        &env_file,
        &format!("ETL_ENVIRONMENT=test\n{}", opts.warehouse_env_text()),
    )?;
    let mut group = format!(
        "# Written by `etl-pipeline demo --clinics`: one env file per clinic.\n\
         group_schema: {DEFAULT_GROUP_SCHEMA}\nclinics:\n"
    );
    for (name, clinic) in names.iter().zip(&clinics) {
        write_atomically(
            &opts.dir.join(format!("{name}.env")),
            &clinic.clinic_env_text(),
        )?;
        let _ = writeln!(group, "  {name}: {{env_file: {name}.env}}");
    }
    write_atomically(&group_file, &group)?;
    write_config(&clinics[0].source(), &tables_file).await?;
    println!(
        "2. wrote {} (the group), an env file per clinic beside it, and {} (analyzed from {})",
        group_file.display(),
        tables_file.display(),
        names[0]
    );

    let files = GroupFiles {
        env: env_file,
        tables: tables_file,
        group: group_file,
        dir: opts.dir.clone(),
    };
    if !files.command(&["init"], "init.txt").await? {
        return Ok(false);
    }
    if opts.setup_only {
        println!("demo group ready; run it with: {} run --all", files.hint());
        return Ok(true);
    }

    let mut ok = true;
    for (step, title, run) in [
        (3, "first run: every clinic in full, side by side", 1),
        (5, "incremental run after the clinics' edits", 2),
    ] {
        if run == 2 {
            for (name, clinic) in names.iter().zip(&clinics) {
                let changes = change_source(&clinic.source(), &tables).await?;
                println!("4. {name} works: {changes}");
            }
        }
        println!("{step}. {title}:");
        let json = files.dir.join(format!("run-{run}.json"));
        ok &= files
            .command(
                &["run", "--all", "--summary-json", &json.to_string_lossy()],
                &format!("run-{run}.txt"),
            )
            .await?;
        print!("{}", group_brief(&json)?);
    }
    println!("6. the group's view of the columns only {newest} has:");
    print!("{}", newer_columns_by_clinic(&warehouse, &tables).await?);
    println!("7. verify --deep, clinic by clinic:");
    ok &= files.command(&["verify", "--deep"], "verify.txt").await?;
    println!(
        "\ndemo in all: {:.1}s. The warehouse is `{}`: schema raw_<clinic> per clinic, {DEFAULT_GROUP_SCHEMA} for \
         the views over all. Carry on with:\n  {} status",
        demo_started.elapsed().as_secs_f64(),
        opts.warehouse_database,
        files.hint()
    );
    Ok(ok)
}

/// The files `demo --clinics` writes and its commands read.
struct GroupFiles {
    env: PathBuf,
    tables: PathBuf,
    group: PathBuf,
    dir: PathBuf,
}

impl GroupFiles {
    /// The command line before the command, as a user types it.
    fn hint(&self) -> String {
        format!(
            "{} --env-file {} --tables {} --clinics {}",
            this_binary().display(),
            self.env.display(),
            self.tables.display(),
            self.group.display()
        )
    }

    /// Runs this program on the group with `args`, its output into
    /// `output` in the demo's folder; says what it ran and whether it
    /// succeeded.
    async fn command(&self, args: &[&str], output: &str) -> Result<bool> {
        let out = self.dir.join(output);
        println!("   {} {} > {}", self.hint(), args.join(" "), out.display());
        let cannot =
            |e: std::io::Error| Error::config(format!("cannot write {}: {e}", out.display()));
        let log = std::fs::File::create(&out).map_err(cannot)?;
        let errors = log.try_clone().map_err(cannot)?;
        let program = std::env::current_exe()
            .map_err(|e| Error::config(format!("cannot find this program to run it: {e}")))?;
        let status = tokio::process::Command::new(&program)
            .arg("--env-file")
            .arg(&self.env)
            .arg("--tables")
            .arg(&self.tables)
            .arg("--clinics")
            .arg(&self.group)
            .args(args)
            .stdout(log)
            .stderr(errors)
            .status()
            .await
            .map_err(|e| Error::config(format!("cannot start {}: {e}", program.display())))?;
        if !status.success() {
            println!("   FAILED ({status}); see {}", out.display());
        }
        Ok(status.success())
    }
}

/// A group run's `--summary-json`, a line per clinic and one for all.
fn group_brief(json: &Path) -> Result<String> {
    let text = read_file(json)?;
    let summary: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::config(format!("{}: {e}", json.display())))?;
    let mut out = String::new();
    if let Some(clinics) = summary["clinics"].as_object() {
        for (name, clinic) in clinics {
            let tables = clinic["tables"].as_array().map_or(0, Vec::len);
            let _ = writeln!(
                out,
                "   {name:<10} {} table runs, {} rows read in {:.1}s{}",
                tables,
                clinic["rows_read"],
                clinic["seconds"].as_f64().unwrap_or(0.0),
                match clinic["error"].as_str() {
                    Some(e) => format!(", FAILED: {e}"),
                    None if clinic["succeeded"] == false => ", with failed tables".into(),
                    None => String::new(),
                }
            );
        }
    }
    let _ = writeln!(
        out,
        "   all clinics: {} rows in {:.1}s, peak memory {:.1} MiB; group views: {} re-created, {} unchanged",
        summary["rows_read"],
        summary["seconds"].as_f64().unwrap_or(0.0),
        summary["peak_memory_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        summary["group_views"]["changed"]
            .as_array()
            .map_or(0, Vec::len),
        summary["group_views"]["unchanged"]
    );
    Ok(out)
}

/// Gives the newest clinic OpenDental's later columns ([`NEWER_COLUMNS`]),
/// on the tables it has; says which.
async fn newer_schema(settings: &MySqlSettings, tables: &[String]) -> Result<String> {
    let mut conn = my::connect(settings).await?;
    let mut added = Vec::new();
    for (table, column, definition, fill) in NEWER_COLUMNS {
        if !tables.iter().any(|t| t == table) {
            continue;
        }
        for sql in [
            format!("ALTER TABLE `{table}` ADD COLUMN `{column}` {definition}"),
            format!("UPDATE `{table}` SET `{column}` = {fill}"),
        ] {
            conn.query_drop(&sql)
                .await
                .map_err(|e| Error::mysql(format!("giving `{table}` a newer column"), e))?;
        }
        added.push(format!("{table}.{column}"));
    }
    Ok(if added.is_empty() {
        ", no table of --only has a newer column".into()
    } else {
        format!(
            ", on a newer schema (OpenDental 24.3's {})",
            added.join(", ")
        )
    })
}

/// For each newer column, how many rows of each clinic have a value in
/// the group's view (the older clinics' rows read NULL).
async fn newer_columns_by_clinic(warehouse: &PgSettings, tables: &[String]) -> Result<String> {
    let client = pg::connect(warehouse).await?;
    let mut out = String::new();
    for (table, name, _, _) in NEWER_COLUMNS {
        if !tables.iter().any(|t| t == table) {
            continue;
        }
        let view = ident::pg_qualified(DEFAULT_GROUP_SCHEMA, table);
        let rows = client
            .query(
                &format!(
                    "select clinic, count(*), count({}) from {view} group by clinic order by clinic",
                    ident::pg(name)
                ),
                &[],
            )
            .await
            .map_err(|e| Error::postgres(format!("reading {view}"), e))?;
        let counts: Vec<String> = rows
            .iter()
            .map(|r| {
                let (clinic, all, set): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
                format!("{clinic} {set} of {all}")
            })
            .collect();
        let _ = writeln!(out, "   {view}.{name} set: {}", counts.join(", "));
    }
    Ok(out)
}
