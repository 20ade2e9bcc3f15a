//! Throw-away databases for integration tests, and a value-by-value
//! comparison of a MySQL table with its warehouse copy.
//!
//! Each test gets its own MySQL and PostgreSQL databases named after it, so
//! tests run in parallel; the servers are taken from `ETL_TEST_MYSQL_*` and
//! `ETL_TEST_PG_*` (defaults: this machine's MariaDB as root, PostgreSQL as
//! postgres). A server that cannot be reached fails the test.

#![allow(dead_code)]

use std::collections::HashMap;

use etl_pipeline::config::{MySqlSettings, PgSettings, Secret, SslMode, TableConfig, TablesConfig};
use etl_pipeline::extract::ExtractContext;
use etl_pipeline::load::{LoadContext, LoadOptions, TableReport, load_table};
use etl_pipeline::mysql::RateLimit;
use etl_pipeline::pipeline::{self, RunPlan, RunReport};
use etl_pipeline::schema::ident;
use etl_pipeline::verify::{Canon, canon_mysql, canon_pg, pg_expr};
use etl_pipeline::{mysql as my, postgres as pg};
use mysql_async::prelude::Queryable;
use mysql_async::{Row, Value};

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// A test's own source, replica and warehouse databases.
/// The key of `mask_columns: hash` in the tests' contexts.
pub const TEST_MASK_KEY: &str = "tests-mask-key-0123456789abcdef";

/// Entry-stamped rows under a composite key (no auto-increment, so no new-keys pass:
/// only a window sees a row that commits late), the stamp
/// a `datetime` in the server's local time.
pub const PATPLAN: &str = "CREATE TABLE `patplan` (
  `PatNum` bigint NOT NULL,
  `Ordinal` tinyint NOT NULL,
  `Note` varchar(40) NOT NULL DEFAULT '',
  `SecDateTEntry` datetime NOT NULL DEFAULT '0001-01-01 00:00:00',
  PRIMARY KEY (`PatNum`, `Ordinal`),
  KEY `SecDateTEntry` (`SecDateTEntry`)
) ENGINE=InnoDB";

/// 40 patients (incremental on `DateTStamp`) and 12 definitions (full).
pub const PATIENTS_AND_DEFINITIONS: [&str; 4] = [
    "CREATE TABLE `patient` (`PatNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `LName` varchar(100) NOT NULL, \
     `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`))",
    "INSERT INTO `patient` (`LName`) SELECT CONCAT('Lee', seq) FROM seq_1_to_40",
    "CREATE TABLE `definition` (`DefNum` bigint NOT NULL PRIMARY KEY, `ItemName` varchar(255) NOT NULL)",
    "INSERT INTO `definition` SELECT seq, CONCAT('def ', seq) FROM seq_1_to_12",
];

pub struct TestDb {
    pub ctx: LoadContext,
    /// The "clinic" database (`etl_t_<name>_src`) the extract phase reads.
    pub source: MySqlSettings,
    pub mysql_admin: MySqlSettings,
    pub pg_admin: PgSettings,
    /// Runs read every table, whatever the table stamps say (tests of what
    /// a run does when it reads a table with nothing changed).
    pub recheck: bool,
}

impl TestDb {
    /// Creates empty databases `etl_t_<name>` on both servers (dropping
    /// leftovers of an earlier run) and the tracking tables.
    pub async fn new(name: &str) -> TestDb {
        let db = format!("etl_t_{name}");
        let mysql_admin = MySqlSettings {
            host: var("ETL_TEST_MYSQL_HOST", "127.0.0.1"),
            port: var("ETL_TEST_MYSQL_PORT", "3306").parse().unwrap(),
            database: String::new(),
            user: var("ETL_TEST_MYSQL_USER", "root"),
            password: Secret::new(var("ETL_TEST_MYSQL_PASSWORD", "")),
            ssl_mode: SslMode::Disabled,
            ssl_ca: None,
            ssl_client: None,
        };
        let pg_admin = PgSettings {
            host: var("ETL_TEST_PG_HOST", "127.0.0.1"),
            port: var("ETL_TEST_PG_PORT", "5432").parse().unwrap(),
            database: "postgres".into(),
            schema: "raw".into(),
            user: var("ETL_TEST_PG_USER", "postgres"),
            password: Secret::new(var("ETL_TEST_PG_PASSWORD", "")),
            ssl_mode: Default::default(),
            ssl_root_cert: None,
            ssl_client: None,
        };
        let source_db = format!("{db}_src");
        let mut conn = my::connect(&mysql_admin)
            .await
            .expect("MariaDB must be reachable for the tests");
        for name in [&db, &source_db] {
            conn.query_drop(format!("DROP DATABASE IF EXISTS {}", ident::mysql(name)))
                .await
                .unwrap();
            conn.query_drop(format!(
                "CREATE DATABASE {} CHARACTER SET utf8mb4",
                ident::mysql(name)
            ))
            .await
            .unwrap();
        }
        drop(conn);
        let client = pg::connect(&pg_admin)
            .await
            .expect("PostgreSQL must be reachable for the tests");
        client
            .batch_execute(&format!(
                "drop database if exists {} with (force)",
                ident::pg(&db)
            ))
            .await
            .unwrap();
        client
            .batch_execute(&format!("create database {}", ident::pg(&db)))
            .await
            .unwrap();
        let ctx = LoadContext {
            replica: MySqlSettings {
                database: db.clone(),
                ..mysql_admin.clone()
            },
            warehouse: PgSettings {
                database: db,
                ..pg_admin.clone()
            },
            rate: None,
            capped_by_copy: true,
            mask_key: Some(Secret::new(TEST_MASK_KEY)),
            connections: Default::default(),
        };
        pipeline::init(Some(&ctx.warehouse), Some(&ctx.replica))
            .await
            .unwrap();
        TestDb {
            ctx,
            source: MySqlSettings {
                database: source_db,
                ..mysql_admin.clone()
            },
            mysql_admin,
            pg_admin,
            recheck: false,
        }
    }

    /// Runs statements in the replica (with `sql_mode` cleared, as OpenDental runs).
    pub async fn mysql(&self, statements: &[&str]) {
        exec_on(&self.ctx.replica, statements).await;
    }

    /// Runs statements in the source.
    pub async fn source_sql(&self, statements: &[&str]) {
        exec_on(&self.source, statements).await;
    }

    /// Creates an append-only `sheetfield` of `rows` rows in the source
    /// (incremental on its auto-increment key).
    pub async fn source_sheetfield(&self, rows: u32) {
        let fill = format!(
            "INSERT INTO `sheetfield` (`FieldValue`) SELECT CONCAT('value ', seq) FROM seq_1_to_{rows}"
        );
        self.source_sql(&[
            "CREATE TABLE `sheetfield` (`SheetFieldNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
             `FieldValue` text NOT NULL)",
            &fill,
        ])
        .await;
    }

    /// An extract context from this test's source into its replica.
    pub fn extract_ctx(&self, rate: Option<u32>) -> ExtractContext {
        ExtractContext {
            source: self.source.clone(),
            replica: self.ctx.replica.clone(),
            rate: rate.map(|n| std::sync::Arc::new(RateLimit::new(n))),
            source_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(2)),
            replica_lock_wait: None,
            mask_key: self.ctx.mask_key.clone(),
        }
    }

    /// Runs tables through both phases (source → replica → warehouse).
    pub async fn run_two_hop(&self, config: &TablesConfig, rate: Option<u32>) -> RunReport {
        self.run_two_hop_with(config, rate, false).await
    }

    /// Runs both phases, saying whether key reconciliation may delete more
    /// than a table's `max_delete_share`.
    pub async fn run_two_hop_with(
        &self,
        config: &TablesConfig,
        rate: Option<u32>,
        allow_mass_delete: bool,
    ) -> RunReport {
        self.run_two_hop_via(self.extract_ctx(rate), config, allow_mass_delete)
            .await
    }

    /// Runs both phases with this extract context (another source user,
    /// a lock wait, …).
    pub async fn run_two_hop_via(
        &self,
        extract: ExtractContext,
        config: &TablesConfig,
        allow_mass_delete: bool,
    ) -> RunReport {
        let ctx = pipeline::RunContext {
            extract: Some(extract),
            load: Some(self.ctx.clone()),
            warehouse: Some(self.ctx.warehouse.clone()),
            stop: Default::default(),
            notifier: Default::default(),
        };
        let plan = RunPlan {
            tables: config.tables().cloned().collect(),
            force_full: false,
            allow_mass_delete,
            ignore_time_gap: false,
            recheck: self.recheck,
            max_workers: 2,
            phases: pipeline::Phases {
                extract: true,
                load: true,
            },
            if_locked: Default::default(),
            origin: etl_pipeline::tracking::RunOrigin::manual(etl_pipeline::pipeline::new_run_id()),
        };
        pipeline::run(&ctx, plan).await.unwrap()
    }

    /// The number a `SELECT COUNT(*) …` gives on the replica.
    pub async fn replica_count(&self, sql: &str) -> u64 {
        let mut replica = my::connect(&self.ctx.replica).await.unwrap();
        let n: Option<u64> = replica.query_first(sql).await.unwrap();
        n.unwrap_or(0)
    }

    /// Asserts the replica table equals the source table, value by value.
    pub async fn assert_replica_same(&self, table: &str, key: &[&str]) {
        // Every column by name: `*` leaves out invisible ones.
        let mut source = my::connect(&self.source).await.unwrap();
        let columns: Vec<String> = source
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? \
                 AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (&self.source.database, table),
            )
            .await
            .unwrap();
        let columns = &columns;
        let fetch = |settings: MySqlSettings| async move {
            let mut conn = my::connect(&settings).await.unwrap();
            let sql = format!(
                "SELECT {} FROM {} ORDER BY {}",
                ident::mysql_list(columns.iter().map(String::as_str)),
                ident::mysql(table),
                ident::mysql_list(key.iter().copied())
            );
            let rows: Vec<Row> = conn.exec(sql, ()).await.unwrap();
            rows.into_iter()
                .map(Row::unwrap)
                .collect::<Vec<Vec<Value>>>()
        };
        let source = fetch(self.source.clone()).await;
        let replica = fetch(self.ctx.replica.clone()).await;
        assert_eq!(
            source.len(),
            replica.len(),
            "{table}: {} rows at the source, {} in the replica",
            source.len(),
            replica.len()
        );
        for (i, (s, r)) in source.iter().zip(&replica).enumerate() {
            assert_eq!(s, r, "{table}: row {i} differs between source and replica");
        }
    }
}

/// Runs statements on a MySQL database (with `sql_mode` cleared, as OpenDental runs).
pub async fn exec_on(settings: &MySqlSettings, statements: &[&str]) {
    let mut conn = my::connect(settings).await.unwrap();
    conn.query_drop("SET SESSION sql_mode = ''").await.unwrap();
    for sql in statements {
        conn.query_drop(*sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl TestDb {
    /// `xmin` of every row of a warehouse table, by its integer key: which
    /// rows a change rewrote.
    pub async fn row_versions(&self, table: &str, key: &str) -> HashMap<i64, String> {
        self.pg()
            .await
            .query(
                &format!(
                    "select {}, xmin::text from {}",
                    ident::pg(key),
                    ident::pg_qualified("raw", table)
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

/// The report of one table's phase in a run, which must have succeeded.
pub fn phase_report<'a>(run: &'a RunReport, table: &str, phase: &str) -> &'a TableReport {
    run.outcome(table, phase)
        .unwrap_or_else(|| panic!("no {phase} outcome for {table}"))
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("{table} {phase}: {e}"))
}

impl TestDb {
    /// The newest run-history row of a table and phase.
    pub async fn last_history(&self, table: &str, phase: &str) -> tokio_postgres::Row {
        self.pg()
            .await
            .query_one(
                "select * from raw.etl_run_history where table_name = $1 and phase = $2 and status <> 'alert' \
                 order by id desc limit 1",
                &[&table, &phase],
            )
            .await
            .unwrap()
    }

    /// A warehouse connection.
    pub async fn pg(&self) -> tokio_postgres::Client {
        pg::connect(&self.ctx.warehouse).await.unwrap()
    }

    /// Loads one table through the library.
    pub async fn load(&self, cfg: &TableConfig) -> etl_pipeline::Result<TableReport> {
        self.load_with(cfg, false).await
    }

    /// Loads one table, optionally forcing a full refresh.
    pub async fn load_with(
        &self,
        cfg: &TableConfig,
        force_full: bool,
    ) -> etl_pipeline::Result<TableReport> {
        let opts = LoadOptions {
            force_full,
            allow_mass_delete: false,
            ignore_time_gap: false,
            run_id: "test".into(),
            stop: Default::default(),
        };
        load_table(&self.ctx, cfg, &opts).await
    }

    /// Runs tables through the pipeline (history, status, concurrency).
    pub async fn run(&self, config: &TablesConfig) -> RunReport {
        self.try_run(config, 2).await.unwrap()
    }

    /// Loads tables through the pipeline with `workers` workers; the error
    /// is the run's own (not initialised, unreachable).
    pub async fn try_run(
        &self,
        config: &TablesConfig,
        workers: usize,
    ) -> etl_pipeline::Result<RunReport> {
        pipeline::run_load(
            &self.ctx,
            RunPlan {
                tables: config.tables().cloned().collect(),
                force_full: false,
                allow_mass_delete: false,
                ignore_time_gap: false,
                recheck: self.recheck,
                max_workers: workers,
                phases: pipeline::Phases {
                    extract: false,
                    load: true,
                },
                if_locked: Default::default(),
                origin: etl_pipeline::tracking::RunOrigin::manual(
                    etl_pipeline::pipeline::new_run_id(),
                ),
            },
        )
        .await
    }

    /// Loads tables straight from the source (direct mode).
    pub async fn run_direct(&self, config: &TablesConfig) -> RunReport {
        let load = etl_pipeline::load::LoadContext {
            replica: self.source.clone(),
            capped_by_copy: false,
            ..self.ctx.clone()
        };
        pipeline::run_load(
            &load,
            RunPlan {
                tables: config.tables().cloned().collect(),
                force_full: false,
                allow_mass_delete: false,
                ignore_time_gap: false,
                recheck: self.recheck,
                max_workers: 2,
                phases: pipeline::Phases {
                    extract: false,
                    load: true,
                },
                if_locked: Default::default(),
                origin: etl_pipeline::tracking::RunOrigin::manual(
                    etl_pipeline::pipeline::new_run_id(),
                ),
            },
        )
        .await
        .unwrap()
    }

    /// The first column of what a query gives in the warehouse.
    pub async fn pg_values<T: for<'a> tokio_postgres::types::FromSql<'a>>(
        &self,
        sql: &str,
    ) -> Vec<T> {
        let rows = self.pg().await.query(sql, &[]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Number of rows in a warehouse table.
    pub async fn pg_count(&self, table: &str) -> i64 {
        let client = self.pg().await;
        let sql = format!("select count(*) from {}", ident::pg_qualified("raw", table));
        client.query_one(&sql, &[]).await.unwrap().get(0)
    }

    /// The stored watermark value of a column.
    pub async fn watermark(&self, table: &str, column: &str) -> Option<String> {
        let client = self.pg().await;
        client
            .query_opt(
                "select watermark_value from raw.etl_load_watermark where table_name = $1 and column_name = $2",
                &[&table, &column],
            )
            .await
            .unwrap()
            .map(|r| r.get(0))
    }

    /// Asserts the warehouse table equals the replica table, row by row and
    /// value by value (ordered by `key`).
    pub async fn assert_same(&self, table: &str, key: &[&str]) {
        self.assert_warehouse_equals(&self.ctx.replica, table, key)
            .await;
    }

    /// Asserts the warehouse table equals the source table (the clinic),
    /// row by row and value by value; returns the number of rows compared.
    pub async fn assert_source_same(&self, table: &str, key: &[&str]) -> usize {
        self.assert_warehouse_equals(&self.source, table, key).await
    }

    async fn assert_warehouse_equals(
        &self,
        mysql: &MySqlSettings,
        table: &str,
        key: &[&str],
    ) -> usize {
        let source = self.mysql_rows(mysql, table, key).await;
        let warehouse = self.pg_rows(table, key).await;
        assert_eq!(
            source.len(),
            warehouse.len(),
            "{table}: {} rows in MySQL ({}), {} in the warehouse",
            source.len(),
            mysql.database,
            warehouse.len()
        );
        for (i, (s, w)) in source.iter().zip(&warehouse).enumerate() {
            assert_eq!(s, w, "{table}: row {i} differs");
        }
        source.len()
    }

    async fn column_types(&self, table: &str) -> Vec<(String, String)> {
        let client = self.pg().await;
        client
            .query(
                "select a.attname::text, format_type(a.atttypid, a.atttypmod) from pg_attribute a \
                 where a.attrelid = to_regclass($1) and a.attnum > 0 and not a.attisdropped order by a.attnum",
                &[&ident::pg_qualified("raw", table)],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Warehouse column types as `format_type` spells them.
    pub async fn pg_types(&self, table: &str) -> HashMap<String, String> {
        self.column_types(table).await.into_iter().collect()
    }

    async fn mysql_rows(
        &self,
        mysql: &MySqlSettings,
        table: &str,
        key: &[&str],
    ) -> Vec<Vec<Canon>> {
        let columns = self.column_types(table).await;
        let mut conn = my::connect(mysql).await.unwrap();
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            ident::mysql_list(columns.iter().map(|(n, _)| n.as_str())),
            ident::mysql(table),
            ident::mysql_list(key.iter().copied())
        );
        let rows: Vec<Row> = conn.exec(sql, ()).await.unwrap();
        rows.into_iter()
            .map(|row| {
                columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, ty))| canon_mysql(row.as_ref(i).unwrap(), ty))
                    .collect()
            })
            .collect()
    }

    async fn pg_rows(&self, table: &str, key: &[&str]) -> Vec<Vec<Canon>> {
        let columns = self.column_types(table).await;
        let exprs: Vec<String> = columns
            .iter()
            .map(|(n, ty)| pg_expr(&ident::pg(n), ty))
            .collect();
        let sql = format!(
            "select {} from {} order by {}",
            exprs.join(", "),
            ident::pg_qualified("raw", table),
            // MySQL sorts NULL first.
            key.iter()
                .map(|k| format!("{} nulls first", ident::pg(k)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let client = self.pg().await;
        let rows = client.query(&sql, &[]).await.unwrap();
        rows.iter()
            .map(|row| {
                columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, ty))| canon_pg(row, i, ty))
                    .collect()
            })
            .collect()
    }
}

/// Asserts the table's phase succeeded after at least one retry whose
/// warning contains `cause`.
pub fn assert_retried(report: &RunReport, table: &str, phase: &str, cause: &str) {
    let outcome = report
        .outcome(table, phase)
        .unwrap_or_else(|| panic!("no {phase} outcome for {table}"));
    let done = outcome
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("{table} {phase} failed: {e:?}"));
    assert!(
        done.warnings
            .iter()
            .any(|w| w.starts_with("retried after") && w.contains(cause)),
        "{table} {phase}: no retry after `{cause}` in {:?}",
        done.warnings
    );
}

/// Parses a one-table config.
pub fn table_config(yaml: &str) -> TableConfig {
    let config = TablesConfig::parse(yaml).unwrap();
    config.tables().next().unwrap().clone()
}

impl TestDb {
    /// Writes an env file for the binary pointing at this test's databases
    /// (source, replica, warehouse);
    /// returns its path.
    pub fn env_file(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let (r, w, s) = (&self.ctx.replica, &self.ctx.warehouse, &self.source);
        let mut text = format!(
            "ETL_ENVIRONMENT=test\nTEST_MYSQL_REPLICATION_HOST={}\nTEST_MYSQL_REPLICATION_PORT={}\n\
             TEST_MYSQL_REPLICATION_DB={}\nTEST_MYSQL_REPLICATION_USER={}\nTEST_MYSQL_REPLICATION_PASSWORD={}\n\
             TEST_POSTGRES_ANALYTICS_HOST={}\nTEST_POSTGRES_ANALYTICS_PORT={}\nTEST_POSTGRES_ANALYTICS_DB={}\n\
             TEST_POSTGRES_ANALYTICS_USER={}\nTEST_POSTGRES_ANALYTICS_PASSWORD={}\n",
            r.host,
            r.port,
            r.database,
            r.user,
            r.password.expose(),
            w.host,
            w.port,
            w.database,
            w.user,
            w.password.expose()
        );
        text.push_str(&format!(
            "TEST_OPENDENTAL_SOURCE_HOST={}\nTEST_OPENDENTAL_SOURCE_PORT={}\nTEST_OPENDENTAL_SOURCE_DB={}\n\
             TEST_OPENDENTAL_SOURCE_USER={}\nTEST_OPENDENTAL_SOURCE_PASSWORD={}\n",
            s.host,
            s.port,
            s.database,
            s.user,
            s.password.expose()
        ));
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("test.env");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A scratch folder for one test's files.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("etl_t_{name}_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The binary under test, run with a clean environment (no `ETL_*`,
/// `TEST_*` or production variables leak in from the caller).
pub fn binary() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_etl-pipeline"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ETL_")
            || key.starts_with("TEST_")
            || key.starts_with("MYSQL_REPLICATION_")
            || key.starts_with("POSTGRES_ANALYTICS_")
            || key.starts_with("OPENDENTAL_SOURCE_")
        {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A finished command's standard output followed by its standard error.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The binary with this test's env file and table config.
pub fn binary_with(env: &std::path::Path, tables: &std::path::Path) -> std::process::Command {
    let mut cmd = binary();
    cmd.args([
        "--env-file",
        env.to_str().unwrap(),
        "--tables",
        tables.to_str().unwrap(),
    ]);
    cmd
}

/// Kills connections using `database`: only the one running a `SELECT` on
/// `table` when a table is given (it must be mid-query), else every one
/// (idle between pages too). Says whether it killed any.
pub async fn kill_reader_of(
    conn: &mut mysql_async::Conn,
    database: &str,
    table: Option<&str>,
) -> bool {
    let pattern = table.map_or_else(|| "%".to_string(), |t| format!("SELECT %`{t}`%"));
    let ids: Vec<u64> = conn
        .exec(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND COALESCE(INFO, '') LIKE ? \
             AND ID <> CONNECTION_ID()",
            (database, pattern.as_str()),
        )
        .await
        .unwrap();
    for id in &ids {
        // A connection may end by itself between the listing and the kill.
        let _ = conn.query_drop(format!("KILL CONNECTION {id}")).await;
    }
    !ids.is_empty()
}

/// A MariaDB server of a test's own, on a free port in a temporary folder,
/// for tests that change what is server-wide (the global time zone, TLS,
/// the general query log) and so must not share the machine's server with
/// tests running beside them. Root has no password from this machine.
/// Stopped and removed when dropped. Needs `mariadb-install-db` and
/// `mariadbd` on this machine; a server that does not start fails the test.
pub struct PrivateMariaDb {
    child: std::process::Child,
    dir: std::path::PathBuf,
    /// Root on this server, no database chosen.
    pub admin: MySqlSettings,
}

impl PrivateMariaDb {
    /// Initialises a data folder and starts the server on it, listening on
    /// 127.0.0.1.
    pub async fn start(name: &str) -> PrivateMariaDb {
        Self::start_with(name, &["--bind-address=127.0.0.1".into()]).await
    }

    /// The same, with the server's own options (`--bind-address` among them).
    pub async fn start_with(name: &str, options: &[String]) -> PrivateMariaDb {
        let dir = std::env::temp_dir().join(format!("etl_t_{name}_mariadb_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        let install = std::process::Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", dir.display()))
            .output()
            .expect("mariadb-install-db must be installed for this test");
        assert!(
            install.status.success(),
            "mariadb-install-db: {}",
            text(&install)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = std::process::Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                "--local-infile=1",
            ])
            .args(options)
            .arg(format!("--port={port}"))
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            // A temporary folder of its own (here and for the install): at
            // start a server clears the temporary tables it finds there,
            // which in /tmp are the live ones of the machine's own server
            // (whose queries then fail).
            .arg(format!("--tmpdir={}", dir.display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("mariadbd must be installed for this test");
        let admin = MySqlSettings {
            host: "127.0.0.1".into(),
            port,
            database: String::new(),
            user: "root".into(),
            password: Secret::new(String::new()),
            ssl_mode: SslMode::Disabled,
            ssl_ca: None,
            ssl_client: None,
        };
        let mut server = PrivateMariaDb { child, dir, admin };
        for _ in 0..300 {
            if my::connect(&server.admin).await.is_ok() {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "mariadbd exited ({status}): {}",
                    std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("mariadbd did not accept connections on port {port} within 30 s");
    }

    /// Settings for database `name` on this server, created if missing.
    pub async fn database(&self, name: &str) -> MySqlSettings {
        exec_on(
            &self.admin,
            &[&format!(
                "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4",
                ident::mysql(name)
            )],
        )
        .await;
        MySqlSettings {
            database: name.into(),
            ..self.admin.clone()
        }
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// splitmix64: small, seedable, and the same everywhere.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    pub fn upto(&mut self, max: u64) -> u64 {
        self.next() % (max + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.upto(99) < percent
    }
}

/// A whole-number setting from the environment, or `default`.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a whole number"))
    })
}

/// A certificate authority and certificates it signs, made with the
/// `openssl` command in a folder of the test's, for TLS tests.
pub struct TestCa {
    dir: std::path::PathBuf,
    name: String,
}

impl TestCa {
    /// A new CA called `name`, its key and certificate in `dir`.
    pub fn new(dir: &std::path::Path, name: &str) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let ca = TestCa {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        };
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
        ca
    }

    /// The CA's certificate file.
    pub fn cert(&self) -> std::path::PathBuf {
        self.dir.join(format!("{}.crt", self.name))
    }

    /// Signs a new key for `common_name` with these subject alternative
    /// names (`DNS:localhost,IP:127.0.0.1`, or empty), valid for two days
    /// from now; returns the certificate and key files.
    pub fn issue(
        &self,
        file: &str,
        common_name: &str,
        alt_names: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        self.sign(file, common_name, alt_names, None)
    }

    /// The same, valid only on 1 January 2020: long expired.
    pub fn issue_expired(
        &self,
        file: &str,
        common_name: &str,
        alt_names: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        self.sign(
            file,
            common_name,
            alt_names,
            Some(("20200101000000Z", "20200102000000Z")),
        )
    }

    fn sign(
        &self,
        file: &str,
        common_name: &str,
        alt_names: &str,
        window: Option<(&str, &str)>,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let ext = self.dir.join(format!("{file}.ext"));
        std::fs::write(
            &ext,
            // An extension makes it a version 3 certificate, which rustls
            // requires.
            if alt_names.is_empty() {
                "basicConstraints=CA:FALSE\n".to_string()
            } else {
                format!("basicConstraints=CA:FALSE\nsubjectAltName={alt_names}\n")
            },
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={common_name}"),
                "-keyout",
                &format!("{file}.key"),
                "-out",
                &format!("{file}.csr"),
            ],
        );
        let (csr, cert) = (format!("{file}.csr"), format!("{file}.crt"));
        let (ca_cert, ca_key) = (format!("{}.crt", self.name), format!("{}.key", self.name));
        match window {
            None => openssl(
                &self.dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca_cert,
                    "-CAkey",
                    &ca_key,
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    ext.to_str().unwrap(),
                    "-out",
                    &cert,
                ],
            ),
            // Only `openssl ca` sets a validity that is not from now on.
            Some((start, end)) => {
                let config = self.dir.join(format!("{}.cnf", self.name));
                let (index, serial) = (
                    self.dir.join(format!("{}.index", self.name)),
                    self.dir.join(format!("{}.serial", self.name)),
                );
                if !index.exists() {
                    std::fs::write(&index, "").unwrap();
                    std::fs::write(&serial, "1000\n").unwrap();
                }
                std::fs::write(
                    &config,
                    format!(
                        "[ca]\ndefault_ca = here\n[here]\ndatabase = {}\nserial = {}\nnew_certs_dir = {}\n\
                         default_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n",
                        index.display(),
                        serial.display(),
                        self.dir.display()
                    ),
                )
                .unwrap();
                openssl(
                    &self.dir,
                    &[
                        "ca",
                        "-batch",
                        "-notext",
                        "-config",
                        config.to_str().unwrap(),
                        "-cert",
                        &ca_cert,
                        "-keyfile",
                        &ca_key,
                        "-in",
                        &csr,
                        "-startdate",
                        start,
                        "-enddate",
                        end,
                        "-extfile",
                        ext.to_str().unwrap(),
                        "-out",
                        &cert,
                    ],
                );
            }
        }
        (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        )
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command must be installed for this test");
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
}

/// Copies `file` to `to`, owned by `postgres` and readable by it alone,
/// as the server wants its key.
fn install_for_postgres(file: &std::path::Path, to: &std::path::Path) {
    std::fs::copy(file, to).unwrap();
    std::process::Command::new("chown")
        .args(["postgres:postgres", to.to_str().unwrap()])
        .status()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A PostgreSQL server of a test's own on a free port, run as the
/// `postgres` system user (PostgreSQL refuses root), with the
/// `pg_hba.conf` lines given. Stopped and removed when dropped.
pub struct PrivatePostgres {
    child: std::process::Child,
    dir: std::path::PathBuf,
    pub port: u16,
}

impl PrivatePostgres {
    /// Initialises a cluster, adds `conf` to its `postgresql.conf`, writes
    /// `hba` as its `pg_hba.conf`, and starts it on 127.0.0.1 and
    /// 127.0.0.2. Files the server reads (`files`) are copied into its
    /// folder, owned by it and private, and named there by file name.
    pub async fn start(
        name: &str,
        conf: &str,
        hba: &str,
        files: &[&std::path::Path],
    ) -> PrivatePostgres {
        let dir = std::env::temp_dir().join(format!("etl_t_{name}_pg_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = |args: &[&str]| {
            let out = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .output()
                .expect("runuser must be installed for this test");
            assert!(out.status.success(), "{args:?}: {}", text(&out));
        };
        std::process::Command::new("chown")
            .args(["-R", "postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        let data = dir.join("data");
        as_postgres(&[
            "initdb",
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        for file in files {
            install_for_postgres(file, &data.join(file.file_name().unwrap()));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        use std::io::Write;
        let mut settings = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        writeln!(
            settings,
            "port = {port}\nlisten_addresses = '127.0.0.1,127.0.0.2'\nunix_socket_directories = '{}'\n\
             fsync = off\nshared_buffers = 16MB\n{conf}",
            dir.display()
        )
        .unwrap();
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = std::process::Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                "postgres",
                "-D",
                data.to_str().unwrap(),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("postgres must be installed for this test");
        let mut server = PrivatePostgres { child, dir, port };
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "postgres exited ({status}): {}",
                    std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("postgres did not accept connections on port {port} within 30 s");
    }

    /// Puts `file` in the data folder as `name` (a certificate or key the
    /// configuration names) and has the server read its configuration
    /// again; new connections see the change.
    pub fn replace_and_reload(&self, file: &std::path::Path, name: &str) {
        install_for_postgres(file, &self.dir.join("data").join(name));
        self.psql("select pg_reload_conf()");
        // The postmaster rereads on its next loop, within milliseconds.
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    /// Runs SQL as the superuser over the server's Unix socket.
    pub fn psql(&self, sql: &str) {
        self.query("postgres", sql);
    }

    /// Runs `sql` in `database` as the superuser, through the server's
    /// socket; returns what it printed, unaligned, without headers.
    pub fn query(&self, database: &str, sql: &str) -> String {
        let out = std::process::Command::new("psql")
            .args([
                "-h",
                self.dir.to_str().unwrap(),
                "-p",
                &self.port.to_string(),
            ])
            .args([
                "-U",
                "postgres",
                "-d",
                database,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // A fast shutdown of the postmaster (the first line of its pid file).
        let pid = std::fs::read_to_string(self.dir.join("data").join("postmaster.pid"))
            .ok()
            .and_then(|p| p.lines().next().map(str::to_string));
        if let Some(pid) = pid {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid])
                .status();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
