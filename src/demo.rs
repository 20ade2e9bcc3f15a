//! A self-contained demo on this machine's servers: creates a source
//! database with two OpenDental-shaped tables, an empty replica, a warehouse,
//! a config and an env file, then runs both phases in full, changes rows at
//! the source, and runs them incrementally. The benchmark builds its data the
//! same way.

use std::path::{Path, PathBuf};

use mysql_async::prelude::Queryable;

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::{
    DEFAULT_SOURCE_CONNECTIONS, MySqlSettings, PgSettings, Secret, SslMode, TablesConfig,
};
use crate::error::{Error, Result};
use crate::extract::ExtractContext;
use crate::load::LoadContext;
use crate::pipeline::{self, IfLocked, Phases, RunContext, RunPlan, render_summary};
use crate::schema::ident;
use crate::shutdown::Stop;
use crate::{mysql as my, postgres as pg};

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
    pub rows: u64,
    pub dir: PathBuf,
    pub setup_only: bool,
}

/// A `procedurelog` shaped like OpenDental's (25 columns, the types that
/// matter: unsigned tinyints, `tinyint(1)`, `time`, zero-date defaults,
/// `double` money, 4-byte UTF-8 text) with an index on `DateTStamp`.
const PROCEDURELOG_DDL: &str = "CREATE TABLE `procedurelog` (
  `ProcNum` bigint(20) NOT NULL AUTO_INCREMENT,
  `PatNum` bigint(20) NOT NULL,
  `AptNum` bigint(20) NOT NULL,
  `OldCode` varchar(15) NOT NULL DEFAULT '',
  `ProcDate` date NOT NULL DEFAULT '0001-01-01',
  `ProcFee` double NOT NULL DEFAULT '0',
  `Surf` varchar(10) DEFAULT '',
  `ToothNum` varchar(2) DEFAULT '',
  `ProcStatus` tinyint(3) unsigned NOT NULL DEFAULT '0',
  `ProvNum` bigint(20) NOT NULL,
  `ClinicNum` bigint(20) NOT NULL,
  `CodeNum` bigint(20) NOT NULL,
  `DateOriginalProsth` date NOT NULL DEFAULT '0000-00-00',
  `ClaimNote` varchar(80) DEFAULT '',
  `UnitQty` int(11) NOT NULL,
  `BaseUnits` int(11) NOT NULL,
  `ProcTime` time NOT NULL,
  `HideGraphics` tinyint(1) NOT NULL,
  `DrugQty` float NOT NULL,
  `BillingNote` varchar(255) NOT NULL,
  `Discount` decimal(10,2) NOT NULL,
  `IsLocked` tinyint(4) NOT NULL,
  `SecDateEntry` date NOT NULL DEFAULT '0001-01-01',
  `DateComplete` date NOT NULL DEFAULT '0001-01-01',
  `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY (`ProcNum`),
  KEY `DateTStamp` (`DateTStamp`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// Ten rows share each `DateTStamp` value, so paging must be tie-safe.
const PROCEDURELOG_FILL: &str = "INSERT INTO `procedurelog` (`PatNum`, `AptNum`, `OldCode`, `ProcDate`, `ProcFee`,
  `Surf`, `ToothNum`, `ProcStatus`, `ProvNum`, `ClinicNum`, `CodeNum`, `DateOriginalProsth`, `ClaimNote`,
  `UnitQty`, `BaseUnits`, `ProcTime`, `HideGraphics`, `DrugQty`, `BillingNote`, `Discount`, `IsLocked`,
  `SecDateEntry`, `DateComplete`, `DateTStamp`)
SELECT seq % 5000 + 1, seq % 20000, CONCAT('D', LPAD(seq % 9999, 4, '0')),
  DATE '2015-01-01' + INTERVAL (seq % 3650) DAY, (seq % 50000) / 100,
  ELT(seq % 5 + 1, 'M', 'O', 'D', 'B', 'L'), LPAD(seq % 32 + 1, 2, '0'), seq % 7, seq % 12 + 1, seq % 3,
  seq % 800 + 1, IF(seq % 10 = 0, '0000-00-00', DATE '2010-01-01' + INTERVAL (seq % 4000) DAY),
  IF(seq % 4 = 0, 'Prefers mornings ☺ 𝄞', ''), 1, 0, SEC_TO_TIME(seq % 86400), seq % 2, (seq % 100) / 4,
  '', (seq % 10000) / 100, seq % 2, DATE '2015-01-01' + INTERVAL (seq % 3650) DAY, '0001-01-01',
  TIMESTAMP '2024-01-01 00:00:00' + INTERVAL (seq DIV 10) MINUTE
FROM seq_1_to_{rows}";

/// `securitylog`: append-only, watermark on its auto-increment key.
const SECURITYLOG_DDL: &str = "CREATE TABLE `securitylog` (
  `SecurityLogNum` bigint(20) NOT NULL AUTO_INCREMENT,
  `PermType` tinyint(3) unsigned NOT NULL DEFAULT '0',
  `UserNum` bigint(20) NOT NULL,
  `LogDateTime` datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
  `LogText` text,
  `PatNum` bigint(20) NOT NULL,
  `CompName` varchar(255) NOT NULL,
  `FKey` bigint(20) NOT NULL,
  `LogSource` tinyint(4) NOT NULL,
  `DefNum` bigint(20) NOT NULL,
  `DefNumError` bigint(20) NOT NULL,
  `DateTPrevious` datetime NOT NULL DEFAULT '0001-01-01 00:00:00',
  PRIMARY KEY (`SecurityLogNum`),
  KEY `LogDateTime` (`LogDateTime`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

const SECURITYLOG_FILL: &str =
    "INSERT INTO `securitylog` (`PermType`, `UserNum`, `LogDateTime`, `LogText`,
  `PatNum`, `CompName`, `FKey`, `LogSource`, `DefNum`, `DefNumError`, `DateTPrevious`)
SELECT seq % 200, seq % 40 + 1, TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND,
  CONCAT('Patient ', seq % 5000, ' chart opened from workstation ', seq % 25), seq % 5000 + 1,
  CONCAT('FRONTDESK-', seq % 25), seq, seq % 3, 0, 0, '0001-01-01 00:00:00'
FROM seq_1_to_{rows}";

/// The demo's table config, in the old system's format.
pub const DEMO_TABLES_YML: &str = "tables:
  procedurelog:
    extraction_strategy: incremental
    incremental_columns: [ProcNum, DateTStamp]
    primary_incremental_column: DateTStamp
    primary_key: ProcNum
    batch_size: 50000
    data_quality_filters: {min_date: '2000-01-01', max_date: '2100-01-01'}
    performance_category: large
    processing_priority: high
  securitylog:
    extraction_strategy: incremental_chunked
    incremental_columns: [SecurityLogNum, LogDateTime]
    primary_incremental_column: SecurityLogNum
    primary_key: SecurityLogNum
    batch_size: 50000
    performance_category: large
    processing_priority: high
";

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
        }
    }

    fn env_text(&self) -> String {
        format!(
            "ETL_ENVIRONMENT=test\n\
             TEST_OPENDENTAL_SOURCE_HOST={0}\nTEST_OPENDENTAL_SOURCE_PORT={1}\nTEST_OPENDENTAL_SOURCE_DB={8}\n\
             TEST_OPENDENTAL_SOURCE_USER={3}\nTEST_OPENDENTAL_SOURCE_PASSWORD=\n\
             TEST_MYSQL_REPLICATION_HOST={0}\nTEST_MYSQL_REPLICATION_PORT={1}\nTEST_MYSQL_REPLICATION_DB={2}\n\
             TEST_MYSQL_REPLICATION_USER={3}\nTEST_MYSQL_REPLICATION_PASSWORD=\n\
             TEST_POSTGRES_ANALYTICS_HOST={4}\nTEST_POSTGRES_ANALYTICS_PORT={5}\nTEST_POSTGRES_ANALYTICS_DB={6}\n\
             TEST_POSTGRES_ANALYTICS_SCHEMA=raw\nTEST_POSTGRES_ANALYTICS_USER={7}\nTEST_POSTGRES_ANALYTICS_PASSWORD=\n",
            self.mysql_host,
            self.mysql_port,
            self.replica_database,
            self.mysql_user,
            self.pg_host,
            self.pg_port,
            self.warehouse_database,
            self.pg_user,
            self.source_database
        )
    }
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

/// Creates (or re-creates) a MySQL database with the demo tables filled.
pub async fn create_source(settings: &MySqlSettings, rows: u64) -> Result<()> {
    let admin = MySqlSettings {
        database: String::new(),
        ..settings.clone()
    };
    let mut conn = my::connect(&admin).await?;
    let db = ident::mysql(&settings.database);
    let statements = [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db} CHARACTER SET utf8mb4"),
        format!("USE {db}"),
        "SET SESSION sql_mode = ''".to_string(),
        PROCEDURELOG_DDL.to_string(),
        PROCEDURELOG_FILL.replace("{rows}", &rows.max(1).to_string()),
        SECURITYLOG_DDL.to_string(),
        SECURITYLOG_FILL.replace("{rows}", &rows.max(1).to_string()),
    ];
    for sql in statements {
        conn.query_drop(&sql).await.map_err(|e| {
            Error::mysql(
                format!("creating the demo source `{}`", settings.database),
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

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)
        .map_err(|e| Error::config(format!("cannot write {}: {e}", path.display())))
}

/// Runs the demo; returns whether every table succeeded in every phase.
pub async fn run(opts: &DemoOptions) -> Result<bool> {
    let source = opts.source();
    let replica = opts.replica();
    let warehouse = opts.warehouse();
    println!(
        "creating demo source `{}` ({} rows in procedurelog and in securitylog), replica `{}` and warehouse `{}`",
        opts.source_database, opts.rows, opts.replica_database, opts.warehouse_database
    );
    create_source(&source, opts.rows).await?;
    create_empty(&replica).await?;
    create_warehouse(&warehouse).await?;
    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| Error::config(format!("cannot create {}: {e}", opts.dir.display())))?;
    let env_file = opts.dir.join("demo.env");
    let tables_file = opts.dir.join("tables.yml");
    write_file(&env_file, &opts.env_text())?;
    write_file(&tables_file, DEMO_TABLES_YML)?;
    pipeline::init(Some(&warehouse), Some(&replica)).await?;
    let hint = format!(
        "etl-pipeline --env-file {} --tables {}",
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
        }),
        load: Some(LoadContext {
            replica,
            warehouse: warehouse.clone(),
            rate: None,
        }),
        warehouse: Some(warehouse),
        stop: Stop::never(),
    };
    let config = TablesConfig::parse(DEMO_TABLES_YML)?;
    let plan = RunPlan {
        tables: config.tables().cloned().collect(),
        force_full: false,
        max_workers: pipeline::default_max_workers(),
        phases: Phases {
            extract: true,
            load: true,
        },
        if_locked: IfLocked::Skip,
    };
    println!("\n1. first run (source → replica → warehouse, in full):");
    let first = pipeline::run(&ctx, plan.clone()).await?;
    print!("{}", render_summary(&first));

    let mut conn = my::connect(&source).await?;
    for sql in [
        "UPDATE `procedurelog` SET `ProcFee` = `ProcFee` + 10 WHERE `ProcNum` % 100 = 7",
        "INSERT INTO `securitylog` (`PermType`, `UserNum`, `LogDateTime`, `LogText`, `PatNum`, `CompName`, `FKey`, \
         `LogSource`, `DefNum`, `DefNumError`) SELECT 1, 1, NOW(), 'demo change', 1, 'DEMO', seq, 0, 0, 0 FROM seq_1_to_500",
    ] {
        conn.query_drop(sql)
            .await
            .map_err(|e| Error::mysql("changing demo rows", e))?;
    }
    println!(
        "\n2. changed 1% of procedurelog and appended 500 securitylog rows at the source; incremental run:"
    );
    let second = pipeline::run(&ctx, plan).await?;
    print!("{}", render_summary(&second));
    println!(
        "\nThe warehouse is `{}` (schema raw). Carry on with:\n  {hint} status",
        opts.warehouse_database
    );
    Ok(first.succeeded() && second.succeeded())
}
