//! The extract phase and the two-hop run: a source database ("the clinic")
//! and a replica on the real MariaDB, the warehouse on PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::{TestDb, phase_report};
use etl_pipeline::ErrorKind;
use etl_pipeline::config::{SslMode, Strategy, TablesConfig};
use mysql_async::prelude::Queryable;

const VISIT: &str = "CREATE TABLE `visit` (
  `VisitNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
  `PatNum` bigint NOT NULL,
  `Note` varchar(100) NOT NULL DEFAULT '',
  `Fee` double NOT NULL DEFAULT 0,
  `VisitDate` date NOT NULL DEFAULT '0000-00-00',
  `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  KEY `DateTStamp` (`DateTStamp`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1";

const SECURITYLOG: &str = "CREATE TABLE `securitylog` (
  `SecurityLogNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
  `PermType` tinyint(3) unsigned NOT NULL DEFAULT 0,
  `LogDateTime` datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
  `LogText` text
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

fn config(batch: u32) -> TablesConfig {
    TablesConfig::parse(&format!(
        "tables:\n  visit:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    primary_key: VisitNum\n    batch_size: {batch}\n    lookback_seconds: 0\n  \
         securitylog:\n    extraction_strategy: incremental_chunked\n    incremental_columns: [SecurityLogNum]\n    \
         primary_incremental_column: SecurityLogNum\n    primary_key: SecurityLogNum\n    batch_size: {batch}\n    lookback_keys: 0\n"
    ))
    .unwrap()
}

fn fill_visits(rows: u32) -> String {
    format!(
        "INSERT INTO `visit` (`PatNum`, `Note`, `Fee`, `VisitDate`, `DateTStamp`) \
         SELECT seq % 977, CONCAT('café visit ', seq), seq / 4, IF(seq % 10 = 0, '0000-00-00', '2020-01-01' + INTERVAL seq % 900 DAY), \
         '2024-01-01 00:00:00' + INTERVAL (seq DIV 5) SECOND FROM seq_1_to_{rows}"
    )
}

async fn assert_all_same(db: &TestDb) {
    db.assert_replica_same("visit", &["VisitNum"]).await;
    db.assert_same("visit", &["VisitNum"]).await;
    db.assert_replica_same("securitylog", &["SecurityLogNum"])
        .await;
    db.assert_same("securitylog", &["SecurityLogNum"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hop_runs_keep_the_warehouse_equal_to_the_source() {
    let db = TestDb::new("two_hop").await;
    db.source_sql(&[
        VISIT,
        &fill_visits(2000),
        SECURITYLOG,
        "INSERT INTO `securitylog` (`PermType`, `LogDateTime`, `LogText`) SELECT seq % 200, NOW(), CONCAT('log ', seq) FROM seq_1_to_1500",
    ])
    .await;
    let cfg = config(300);
    let first = db.run_two_hop(&cfg, None).await;
    assert!(first.succeeded(), "{first:?}");
    assert_eq!(
        phase_report(&first, "visit", "extract").decision.strategy,
        Strategy::Full
    );
    assert_all_same(&db).await;

    // Updates, inserts, and rows landing on the watermark's own second.
    db.source_sql(&[
        "UPDATE `visit` SET `Fee` = `Fee` + 1, `DateTStamp` = '2024-06-01 10:00:00' WHERE `VisitNum` % 50 = 0",
        "UPDATE `visit` SET `Note` = 'same second, lower key', `DateTStamp` = '2024-01-01 00:06:40' WHERE `VisitNum` = 3",
        "INSERT INTO `visit` (`PatNum`, `Note`, `DateTStamp`) SELECT seq, 'tied', '2024-06-01 10:00:00' FROM seq_1_to_700",
        "INSERT INTO `securitylog` (`PermType`, `LogDateTime`, `LogText`) SELECT 1, NOW(), 'new' FROM seq_1_to_120",
    ])
    .await;
    let second = db.run_two_hop(&cfg, None).await;
    assert!(second.succeeded(), "{second:?}");
    let visit = phase_report(&second, "visit", "extract");
    assert!(
        matches!(visit.decision.strategy, Strategy::Incremental { .. }),
        "{:?}",
        visit.decision
    );
    assert_eq!((visit.rows_inserted, visit.rows_updated), (700, 41));
    let log = phase_report(&second, "securitylog", "extract");
    assert_eq!(log.rows_inserted, 120);
    assert!(
        log.rows_read <= 121,
        "append-only: only new keys are read, read {}",
        log.rows_read
    );
    assert_all_same(&db).await;
    let copy_status: (String, String, String) = {
        let mut conn = etl_pipeline::mysql::connect(&db.ctx.replica).await.unwrap();
        conn.query_first(
            "SELECT `copy_status`, `primary_column_name`, `last_primary_value` FROM `etl_copy_status` WHERE `table_name` = 'visit'",
        )
        .await
        .unwrap()
        .unwrap()
    };
    assert_eq!(
        copy_status,
        (
            "success".into(),
            "DateTStamp".into(),
            "2024-06-01 10:00:00".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_drift_at_the_source_reaches_the_replica_and_the_warehouse() {
    let db = TestDb::new("two_hop_drift").await;
    db.source_sql(&[VISIT, &fill_visits(500), SECURITYLOG])
        .await;
    let cfg = config(1000);
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    db.source_sql(&[
        "ALTER TABLE `visit` ADD COLUMN `Priority` tinyint(4) NOT NULL DEFAULT 2, MODIFY `Note` varchar(200) NOT NULL DEFAULT ''",
        "UPDATE `visit` SET `Note` = REPEAT('long note ', 15) WHERE `VisitNum` = 8",
    ])
    .await;
    let run = db.run_two_hop(&cfg, None).await;
    assert!(run.succeeded(), "{run:?}");
    let extract = phase_report(&run, "visit", "extract");
    assert_eq!(extract.decision.strategy, Strategy::Full);
    assert!(
        extract
            .warnings
            .iter()
            .any(|w| w.contains("added [Priority]")
                && w.contains("Note (varchar(100) → varchar(200))")),
        "{:?}",
        extract.warnings
    );
    assert_all_same(&db).await;
    let types = db.pg_types("visit").await;
    assert_eq!(types["Priority"], "smallint");
    assert_eq!(types["Note"], "character varying(200)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_connection_is_killed_resumes_after_the_last_committed_page() {
    let db = TestDb::new("two_hop_killed").await;
    db.source_sql(&[VISIT, &fill_visits(200_000), SECURITYLOG])
        .await;
    let cfg = config(2000);
    let source_db = db.source.database.clone();
    let replica_db = db.ctx.replica.database.clone();
    let admin = db.mysql_admin.clone();
    let killer = tokio::spawn(async move {
        let mut conn = etl_pipeline::mysql::connect(&admin).await.unwrap();
        for _ in 0..20_000 {
            let copied: Option<u64> = conn
                .query_first(format!(
                    "SELECT COUNT(*) FROM `{replica_db}`.`visit__etl_shadow`"
                ))
                .await
                .unwrap_or(None);
            if copied.unwrap_or(0) >= 20_000
                && common::kill_reader_of(&mut conn, &source_db, None).await
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        false
    });
    let run = db.run_two_hop(&cfg, None).await;
    assert!(
        killer.await.unwrap(),
        "the copy's source connection was never seen"
    );
    let extract = phase_report(&run, "visit", "extract");
    let resumed = extract
        .warnings
        .iter()
        .find_map(|w| {
            w.strip_prefix("resumed after ")
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or_else(|| panic!("no resume: {:?}", extract.warnings));
    assert!(resumed >= 20_000, "resumed after {resumed} rows");
    assert_eq!(
        extract.rows_read,
        200_000 - resumed,
        "no page was read twice"
    );
    assert_all_same(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_select_only_source_user_is_enough() {
    let db = TestDb::new("two_hop_readonly").await;
    db.source_sql(&[VISIT, &fill_visits(300), SECURITYLOG])
        .await;
    let user = "etl_t_reader";
    let grant = format!("GRANT SELECT ON `{}`.* TO '{user}'@'%'", db.source.database);
    db.source_sql(&[
        &format!("DROP USER IF EXISTS '{user}'@'%'"),
        &format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'read-only-pw'"),
        &grant,
    ])
    .await;
    let mut reader = db.source.clone();
    reader.user = user.into();
    reader.password = etl_pipeline::config::Secret::new("read-only-pw");
    // The user cannot write: any write by the tool would fail the run.
    let mut conn = etl_pipeline::mysql::connect(&reader).await.unwrap();
    let denied = conn
        .query_drop("DELETE FROM `visit` WHERE `VisitNum` = 1")
        .await;
    assert!(denied.is_err());
    drop(conn);
    let extract = etl_pipeline::extract::ExtractContext {
        source: reader,
        ..db.extract_ctx(None)
    };
    for _ in 0..2 {
        let run = db
            .run_two_hop_via(extract.clone(), &config(100), false)
            .await;
        assert!(run.succeeded(), "{run:?}");
    }
    assert_all_same(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_against_a_server_without_tls_fails_clearly() {
    let db = TestDb::new("two_hop_tls").await;
    let mut source = db.source.clone();
    source.ssl_mode = SslMode::Required;
    let err = etl_pipeline::mysql::connect(&source).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Access);
    assert!(err.to_string().contains("does not offer TLS"), "{err}");
    source.ssl_mode = SslMode::Preferred;
    assert!(
        etl_pipeline::mysql::connect(&source).await.is_ok(),
        "preferred falls back to plain TCP"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_the_copy_to_its_rows_per_second() {
    let db = TestDb::new("two_hop_rate").await;
    db.source_sql(&[VISIT, &fill_visits(3000), SECURITYLOG])
        .await;
    let started = Instant::now();
    let run = db.run_two_hop(&config(500), Some(1000)).await;
    assert!(run.succeeded(), "{run:?}");
    // 3,000 rows at 1,000 rows/s, the first page free: at least 2.5 s.
    assert!(
        started.elapsed() >= Duration::from_millis(2400),
        "took {:?}",
        started.elapsed()
    );
    assert_all_same(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_loads_the_warehouse_straight_from_the_source() {
    let db = TestDb::new("direct_mode").await;
    db.source_sql(&[VISIT, &fill_visits(800), SECURITYLOG])
        .await;
    let load = etl_pipeline::load::LoadContext {
        replica: db.source.clone(),
        capped_by_copy: false,
        ..db.ctx.clone()
    };
    let ctx = etl_pipeline::pipeline::RunContext::load_only(load);
    let plan = etl_pipeline::pipeline::RunPlan {
        tables: config(300).tables().cloned().collect(),
        force_full: false,
        allow_mass_delete: false,
        ignore_time_gap: false,
        recheck: false,
        max_workers: 2,
        phases: etl_pipeline::pipeline::Phases {
            extract: true,
            load: false,
        },
        if_locked: Default::default(),
        origin: etl_pipeline::tracking::RunOrigin::manual(etl_pipeline::pipeline::new_run_id()),
    };
    let err = etl_pipeline::pipeline::run(&ctx, plan.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("direct"), "{err}");
    // Both phases (`--phase all`, the default) are the load alone.
    let plan = etl_pipeline::pipeline::RunPlan {
        phases: etl_pipeline::pipeline::Phases {
            extract: true,
            load: true,
        },
        if_locked: Default::default(),
        origin: etl_pipeline::tracking::RunOrigin::manual(etl_pipeline::pipeline::new_run_id()),
        ..plan
    };
    let run = etl_pipeline::pipeline::run(&ctx, plan).await.unwrap();
    assert!(run.succeeded(), "{run:?}");
    let mut conn = etl_pipeline::mysql::connect(&db.ctx.replica).await.unwrap();
    let tables: Vec<String> = conn.query("SHOW TABLES").await.unwrap();
    assert!(
        !tables.contains(&"visit".to_string()),
        "nothing was copied into the replica"
    );
    let client = db.pg().await;
    let n: i64 = client
        .query_one("select count(*) from raw.visit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_deep_is_clean_after_a_run_and_names_planted_differences() {
    let db = TestDb::new("verify_deep").await;
    db.source_sql(&[
        VISIT,
        &fill_visits(25_000),
        SECURITYLOG,
        "INSERT INTO `securitylog` (`PermType`, `LogDateTime`, `LogText`) SELECT seq % 200, NOW(), CONCAT('log ', seq) FROM seq_1_to_300",
    ])
    .await;
    let cfg = config(5000);
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    let ctx = etl_pipeline::verify::VerifyContext {
        source: Some(db.source.clone()),
        mysql: db.ctx.replica.clone(),
        warehouse: db.ctx.warehouse.clone(),
        mask_key: None,
    };
    let tables = vec![
        cfg.get("visit").unwrap().clone(),
        cfg.get("securitylog").unwrap().clone(),
    ];
    let checks = etl_pipeline::verify::verify(&ctx, &tables, true)
        .await
        .unwrap();
    for c in &checks {
        assert!(c.is_clean(), "{c:?}");
    }
    assert_eq!(checks[0].compared, 25_000);

    let client = db.pg().await;
    client
        .batch_execute(
            "update raw.visit set \"Fee\" = -1 where \"VisitNum\" = 12345; \
             delete from raw.visit where \"VisitNum\" = 20001; \
             insert into raw.visit (\"VisitNum\", \"PatNum\", \"Note\", \"Fee\") values (999999, 1, 'ghost', 0)",
        )
        .await
        .unwrap();
    db.mysql(&["UPDATE `securitylog` SET `LogText` = 'tampered' WHERE `SecurityLogNum` = 7"])
        .await;
    let checks = etl_pipeline::verify::verify(&ctx, &tables, true)
        .await
        .unwrap();
    let visit = &checks[0].differences;
    assert!(
        visit
            .iter()
            .any(|d| d.starts_with("key VisitNum=12345: column `Fee` differs")),
        "{visit:?}"
    );
    assert!(
        visit
            .iter()
            .any(|d| d == "key VisitNum=20001: missing in the warehouse"),
        "{visit:?}"
    );
    assert!(
        visit
            .iter()
            .any(|d| d.starts_with("key VisitNum=999999: only in the warehouse")),
        "{visit:?}"
    );
    let log = &checks[1].differences;
    assert!(
        log.iter()
            .any(|d| d
                == "key SecurityLogNum=7: column `LogText` differs between source and replica"),
        "{log:?}"
    );
    assert!(!checks[0].is_clean() && !checks[1].is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_full_table_is_skipped_in_both_phases_and_refreshed_when_it_changes() {
    let db = TestDb::new("ex_unchanged").await;
    db.source_sql(&[
        "CREATE TABLE `definition` (`DefNum` bigint NOT NULL PRIMARY KEY, `ItemName` varchar(255) NOT NULL)",
        "INSERT INTO `definition` SELECT seq, CONCAT('def ', seq) FROM seq_1_to_400",
    ])
    .await;
    let cfg = etl_pipeline::config::TablesConfig::parse(
        "tables:\n  definition:\n    extraction_strategy: full_table\n",
    )
    .unwrap();
    let report = |r: &etl_pipeline::pipeline::RunReport, phase: &str| {
        let o = r.outcome("definition", phase).unwrap();
        let t = o.result.as_ref().unwrap();
        (t.rows_read, t.decision.reason.clone())
    };
    let first = db.run_two_hop(&cfg, None).await;
    assert_eq!(report(&first, "extract").0, 400);
    assert_eq!(report(&first, "load").0, 400);

    let second = db.run_two_hop(&cfg, None).await;
    for phase in ["extract", "load"] {
        let (rows, reason) = report(&second, phase);
        assert_eq!(rows, 0, "{phase}: {reason}");
        assert!(reason.starts_with("unchanged"), "{phase}: {reason}");
    }

    db.source_sql(&["UPDATE `definition` SET `ItemName` = 'renamed' WHERE `DefNum` = 200"])
        .await;
    let third = db.run_two_hop(&cfg, None).await;
    assert_eq!(report(&third, "extract").0, 400);
    assert_eq!(report(&third, "load").0, 400);
    db.assert_replica_same("definition", &["DefNum"]).await;
    db.assert_same("definition", &["DefNum"]).await;

    // A refresh older than a day runs again even when the checksum agrees.
    db.mysql(&["UPDATE `etl_copy_status` SET `last_copied` = NOW() - INTERVAL 2 DAY"])
        .await;
    db.pg()
        .await
        .batch_execute("update raw.etl_load_status set last_loaded = now() - interval '2 days'")
        .await
        .unwrap();
    let fourth = db.run_two_hop(&cfg, None).await;
    assert_eq!(report(&fourth, "extract").0, 400);
    assert_eq!(report(&fourth, "load").0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_idle_past_its_time_gap_is_refreshed_in_full_and_says_why() {
    let db = TestDb::new("ex_time_gap").await;
    db.source_sql(&[
        "CREATE TABLE `commlog` (`CommlogNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `Note` text NOT NULL, \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`))",
        "INSERT INTO `commlog` (`Note`) SELECT CONCAT('call ', seq) FROM seq_1_to_300",
    ])
    .await;
    let cfg = etl_pipeline::config::TablesConfig::parse(
        "tables:\n  commlog:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    primary_key: CommlogNum\n    time_gap_threshold_days: 7\n",
    )
    .unwrap();
    let decision = |r: &etl_pipeline::pipeline::RunReport, phase: &str| {
        let o = r.outcome("commlog", phase).unwrap();
        let t = o.result.as_ref().unwrap();
        (
            t.decision.strategy.name().to_string(),
            t.decision.reason.clone(),
        )
    };
    db.run_two_hop(&cfg, None).await;
    let recent = db.run_two_hop(&cfg, None).await;
    assert_eq!(decision(&recent, "extract").0, "incremental");
    assert_eq!(decision(&recent, "load").0, "incremental");

    let age = |days: u32| {
        (
            format!("UPDATE `etl_copy_status` SET `last_copied` = NOW() - INTERVAL {days} DAY"),
            format!("update raw.etl_load_status set last_loaded = now() - interval '{days} days'"),
        )
    };
    let (copy, load) = age(10);
    db.mysql(&[copy.as_str()]).await;
    db.pg().await.batch_execute(&load).await.unwrap();
    let idle = db.run_two_hop(&cfg, None).await;
    for phase in ["extract", "load"] {
        let (strategy, reason) = decision(&idle, phase);
        assert_eq!(strategy, "full", "{phase}: {reason}");
        assert!(
            reason.contains("10.0 days ago") && reason.contains("time_gap_threshold_days (7)"),
            "{phase}: {reason}"
        );
    }
    let recorded: String = db
        .last_history("commlog", "load")
        .await
        .get("strategy_reason");
    assert!(recorded.contains("time_gap_threshold_days"), "{recorded}");
    db.assert_same("commlog", &["CommlogNum"]).await;

    // --no-time-gap reads incrementally whatever the gap.
    db.pg().await.batch_execute(&load).await.unwrap();
    let report = etl_pipeline::load::load_table(
        &db.ctx,
        cfg.get("commlog").unwrap(),
        &etl_pipeline::load::LoadOptions {
            ignore_time_gap: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.decision.strategy.name(), "incremental");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phase_over_its_timeout_is_stopped_retried_and_fails_with_nothing_half_written() {
    let db = TestDb::new("ex_timeout").await;
    db.source_sheetfield(40_000).await;
    let table = "tables:\n  sheetfield:\n    extraction_strategy: incremental\n    \
                 incremental_columns: [SheetFieldNum]\n    primary_incremental_column: SheetFieldNum\n    \
                 batch_size: 1000\n";
    let slow = etl_pipeline::config::TablesConfig::parse(&format!(
        "{table}    timeout_seconds: 1\n    retry_count: 1\n"
    ))
    .unwrap();
    // 40,000 rows at 4,000 rows/s take ten seconds: each try is stopped after one.
    let started = std::time::Instant::now();
    let report = db.run_two_hop(&slow, Some(4000)).await;
    let outcome = report.outcome("sheetfield", "extract").unwrap();
    let err = outcome.result.as_ref().unwrap_err();
    assert!(
        err.to_string().contains("timeout_seconds (1)")
            && err.to_string().contains("gave up after 1 retries"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "stopped, not run to the end: {:?}",
        started.elapsed()
    );
    assert!(!report.succeeded());
    assert_eq!(
        db.last_history("sheetfield", "extract")
            .await
            .get::<_, String>("status"),
        "failed"
    );

    let config = etl_pipeline::config::TablesConfig::parse(table).unwrap();
    let rerun = db.run_two_hop(&config, None).await;
    assert!(rerun.succeeded(), "{rerun:?}");
    db.assert_replica_same("sheetfield", &["SheetFieldNum"])
        .await;
    db.assert_same("sheetfield", &["SheetFieldNum"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_full_copy_continues_after_a_batch_whose_commit_landed_unseen() {
    let db = TestDb::new("ex_unseen_commit").await;
    db.source_sheetfield(20_000).await;
    let cfg = common::table_config(
        "tables:\n  sheetfield:\n    extraction_strategy: incremental\n    \
         incremental_columns: [SheetFieldNum]\n    primary_incremental_column: SheetFieldNum\n    \
         batch_size: 1000\n",
    );
    let ctx = db.extract_ctx(Some(4000));
    let opts = etl_pipeline::load::LoadOptions::default();
    let resume = etl_pipeline::extract::ResumeSlot::default();
    // The first attempt is cut off a few batches into its full copy.
    let cut = tokio::time::timeout(
        Duration::from_millis(1500),
        etl_pipeline::extract::copy_table(&ctx, &cfg, &opts, resume.clone()),
    )
    .await;
    assert!(cut.is_err(), "the first attempt should still be running");
    // Its last batch committed although the attempt never heard back: the
    // next 1,000 rows are in the shadow table.
    let replica = &db.ctx.replica.database;
    let source = &db.source.database;
    db.mysql(&[&format!(
        "INSERT INTO `{replica}`.`sheetfield__etl_shadow` SELECT * FROM `{source}`.`sheetfield` \
         WHERE `SheetFieldNum` > (SELECT MAX(`SheetFieldNum`) FROM `{replica}`.`sheetfield__etl_shadow`) \
         ORDER BY `SheetFieldNum` LIMIT 1000"
    )])
    .await;
    let ctx = db.extract_ctx(None);
    let report = etl_pipeline::extract::copy_table(&ctx, &cfg, &opts, resume)
        .await
        .unwrap();
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.starts_with("resumed after")),
        "{report:?}"
    );
    db.assert_replica_same("sheetfield", &["SheetFieldNum"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_copy_carries_awkward_values_exactly() {
    let db = TestDb::new("ex_awkward").await;
    db.source_sql(&[
        "CREATE TABLE `sheetfielddef` (`Num` bigint NOT NULL PRIMARY KEY, \
         `Txt` text NULL, `Latin` varchar(40) CHARACTER SET latin1 NULL, `Bin` blob NULL, \
         `F` float NULL, `D` double NULL, `Dec` decimal(20,6) NULL, `Dt` datetime(6) NULL, \
         `Day` date NULL, `Tm` time(3) NULL, `Yr` year NULL, `En` enum('a','b c') NULL, \
         `St` set('x','y') NULL, `Js` json NULL, KEY `Txt` (`Txt`(10)), UNIQUE KEY `Dt` (`Num`, `Dt`)) \
         DEFAULT CHARSET=utf8mb4",
        "INSERT INTO `sheetfielddef` VALUES \
         (1, CONCAT('tab\\there', CHAR(10), 'line', CHAR(13), 'cr \\\\ back'), 'café', \
          UNHEX('00090A0D5C4E5CFF80'), 3.4028235e38, -2.2250738585072014e-308, -12345678901234.123456, \
          '2024-02-29 23:59:59.999999', '0000-00-00', '-838:59:59.999', 1901, 'b c', 'x,y', '{\"k\": [1, \"\\\\t\"]}'), \
         (2, '\\\\N', '', '', 1.17549435e-38, 1e308, 0, '1000-01-01 00:00:00', '9999-12-31', '100:00:00', 2155, 'a', '', 'null'), \
         (3, '', NULL, NULL, 0, -0.0, NULL, NULL, NULL, '00:00:00.001', 0, NULL, NULL, NULL), \
         (4, NULL, 'x', UNHEX(''), NULL, NULL, 1, '2000-01-01', '2000-01-01', NULL, 2000, NULL, 'y', '[]')",
        "INSERT INTO `sheetfielddef` (`Num`, `Bin`) SELECT 10 + seq, UNHEX(REPEAT(LPAD(HEX(seq % 256), 2, '0'), 12000)) \
         FROM seq_0_to_255",
    ])
    .await;
    // Batches of 7 such rows pass 64 KiB: the load is handed over in several slices.
    let config = TablesConfig::parse(
        "tables:\n  sheetfielddef:\n    extraction_strategy: full_table\n    batch_size: 7\n",
    )
    .unwrap();
    let run = db.run_two_hop(&config, None).await;
    assert!(run.succeeded(), "{run:?}");
    db.assert_replica_same("sheetfielddef", &["Num"]).await;
    db.assert_same("sheetfielddef", &["Num"]).await;
    // The replica keeps the source's keys.
    let mut replica = mysql_async::Conn::new(
        mysql_async::OptsBuilder::default()
            .ip_or_hostname(db.ctx.replica.host.clone())
            .tcp_port(db.ctx.replica.port)
            .user(Some(db.ctx.replica.user.clone()))
            .db_name(Some(db.ctx.replica.database.clone())),
    )
    .await
    .unwrap();
    let keys: Vec<String> = replica
        .query(
            "SELECT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
                AND TABLE_NAME = 'sheetfielddef' AND SEQ_IN_INDEX = 1 ORDER BY INDEX_NAME",
        )
        .await
        .unwrap();
    assert_eq!(keys, ["Dt", "PRIMARY", "Txt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_code_moved_to_a_new_row_leaves_both_rows_in_the_copies() {
    let db = TestDb::new("ex_unique_moved").await;
    db.source_sql(&[
        "CREATE TABLE `procedurecode` (`CodeNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         `ProcCode` varchar(15) NOT NULL, `Descript` varchar(50) NOT NULL, \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, \
         UNIQUE KEY `ProcCode` (`ProcCode`), KEY `DateTStamp` (`DateTStamp`))",
        "INSERT INTO `procedurecode` (`ProcCode`, `Descript`, `DateTStamp`) \
         SELECT CONCAT('D', seq), CONCAT('code ', seq), '2024-01-01 00:00:00' FROM seq_1_to_50",
    ])
    .await;
    let cfg = TablesConfig::parse(
        "tables:\n  procedurecode:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    lookback_seconds: 0\n",
    )
    .unwrap();
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    // A code moves to a new row, which the copy reads first (its stamp is
    // earlier): with a unique key in the replica its upsert would overwrite
    // the old row and the new one would never be written.
    let move_code = |n: u32| {
        [
            format!(
                "UPDATE `procedurecode` SET `ProcCode` = 'D{n}-retired', `DateTStamp` = '2025-01-01 00:00:0{n}' \
                 WHERE `ProcCode` = 'D{n}'"
            ),
            format!(
                "INSERT INTO `procedurecode` (`ProcCode`, `Descript`, `DateTStamp`) \
                 VALUES ('D{n}', 'the new D{n}', '2025-01-01 00:00:00')"
            ),
        ]
    };
    let statements = move_code(1);
    db.source_sql(&[&statements[0], &statements[1]]).await;
    let run = db.run_two_hop(&cfg, None).await;
    assert!(run.succeeded(), "{run:?}");
    db.assert_replica_same("procedurecode", &["CodeNum"]).await;
    db.assert_same("procedurecode", &["CodeNum"]).await;

    // A replica made with the unique key (by an older version) is fixed in place.
    db.mysql(&[
        "ALTER TABLE `procedurecode` DROP INDEX `ProcCode`, ADD UNIQUE KEY `ProcCode` (`ProcCode`)",
    ])
    .await;
    let statements = move_code(2);
    db.source_sql(&[&statements[0], &statements[1]]).await;
    let run = db.run_two_hop(&cfg, None).await;
    assert!(run.succeeded(), "{run:?}");
    assert!(
        phase_report(&run, "procedurecode", "extract")
            .warnings
            .iter()
            .any(|w| w.contains("unique key(s) ProcCode of the replica copy made plain")),
        "{run:?}"
    );
    db.assert_replica_same("procedurecode", &["CodeNum"]).await;
    db.assert_same("procedurecode", &["CodeNum"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_with_foreign_keys_copy_and_stay_in_step() {
    let db = TestDb::new("ex_foreign_keys").await;
    db.source_sql(&[
        "CREATE TABLE `provider` (`ProvNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `Abbr` varchar(20) NOT NULL, \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`)) ENGINE=InnoDB",
        "CREATE TABLE `appointment` (`AptNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `ProvNum` bigint NOT NULL, \
         `Note` varchar(40) NOT NULL, `Fee` decimal(10,2) NOT NULL CHECK (`Fee` >= 0), \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`), \
         CONSTRAINT `fk_provider` FOREIGN KEY (`ProvNum`) REFERENCES `provider` (`ProvNum`) ON DELETE CASCADE) ENGINE=InnoDB",
        "INSERT INTO `provider` (`Abbr`, `DateTStamp`) SELECT CONCAT('DOC', seq), '2024-01-01' FROM seq_1_to_20",
        "INSERT INTO `appointment` (`ProvNum`, `Note`, `Fee`, `DateTStamp`) \
         SELECT 1 + seq % 20, CONCAT('visit ', seq), seq, '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_500",
    ])
    .await;
    let table = |name: &str| {
        format!(
            "  {name}:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
             primary_incremental_column: DateTStamp\n    reconcile: keys\n"
        )
    };
    let cfg = TablesConfig::parse(&format!(
        "tables:\n{}{}",
        table("appointment"),
        table("provider")
    ))
    .unwrap();
    let first = db.run_two_hop(&cfg, None).await;
    assert!(first.succeeded(), "{first:?}");
    // A provider removed with its appointments (the cascade), new ones.
    db.source_sql(&[
        "DELETE FROM `provider` WHERE `ProvNum` = 3",
        "INSERT INTO `provider` (`Abbr`) VALUES ('NEW')",
        "INSERT INTO `appointment` (`ProvNum`, `Note`, `Fee`) \
         SELECT (SELECT MAX(`ProvNum`) FROM `provider`), 'new provider', 5 FROM seq_1_to_3",
    ])
    .await;
    let second = db.run_two_hop(&cfg, None).await;
    assert!(second.succeeded(), "{second:?}");
    for (table, key) in [("provider", "ProvNum"), ("appointment", "AptNum")] {
        db.assert_replica_same(table, &[key]).await;
        db.assert_same(table, &[key]).await;
    }
    let foreign = db
        .replica_count(
            "SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE()",
        )
        .await;
    assert_eq!(foreign, 0, "the replica keeps no foreign key");
}

/// A clinic's server holds more than plain tables: generated and invisible
/// columns, CHECK constraints, triggers, partitions, FULLTEXT and SPATIAL
/// indexes, system versioning, views. Every table copies in two hops and
/// stays in step; the view is skipped and named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_table_copies_in_two_hops() {
    let db = TestDb::new("ex_table_kinds").await;
    let stamp =
        "`DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP";
    db.source_sql(&[
        &format!("CREATE TABLE `provider` (`ProvNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `Abbr` varchar(20) NOT NULL, {stamp}, KEY (`DateTStamp`))"),
        &format!(
            "CREATE TABLE `patient` (`PatNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `ProvNum` bigint NOT NULL, \
             `LName` varchar(40) NOT NULL, `FName` varchar(40) NOT NULL, `Birthdate` date NOT NULL, \
             `FullName` varchar(82) AS (CONCAT(`LName`, ', ', `FName`)) VIRTUAL, \
             `BirthYear` smallint AS (YEAR(`Birthdate`)) STORED, \
             `SSN` char(9) INVISIBLE DEFAULT '', \
             `Balance` decimal(10,2) NOT NULL DEFAULT 0 CHECK (`Balance` > -100000), \
             `Prefs` json, `Notes` text, {stamp}, KEY (`DateTStamp`), \
             UNIQUE KEY `name_birth` (`LName`, `FName`, `Birthdate`), KEY (`FullName`), KEY (`BirthYear`), \
             FULLTEXT KEY `names` (`LName`, `FName`), FULLTEXT KEY `notes` (`Notes`), \
             CONSTRAINT `fk_prov` FOREIGN KEY (`ProvNum`) REFERENCES `provider` (`ProvNum`), \
             CONSTRAINT `names_given` CHECK (`LName` <> '' OR `FName` <> '')) ENGINE=InnoDB"
        ),
        &format!("CREATE TABLE `patientlog` (`LogNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `PatNum` bigint NOT NULL, `Action` varchar(10) NOT NULL, {stamp}, KEY (`DateTStamp`))"),
        "CREATE TRIGGER `patient_insert` AFTER INSERT ON `patient` FOR EACH ROW \
         INSERT INTO `patientlog` (`PatNum`, `Action`) VALUES (NEW.`PatNum`, 'insert')",
        "CREATE TRIGGER `patient_update` BEFORE UPDATE ON `patient` FOR EACH ROW \
         SET NEW.`Notes` = CONCAT(COALESCE(NEW.`Notes`, ''), ' (edited)')",
        &format!(
            "CREATE TABLE `visit` (`VisitNum` bigint NOT NULL AUTO_INCREMENT, `VisitDate` date NOT NULL, `PatNum` bigint NOT NULL, {stamp}, \
             PRIMARY KEY (`VisitNum`, `VisitDate`), KEY (`DateTStamp`)) \
             PARTITION BY RANGE (YEAR(`VisitDate`)) (PARTITION p2023 VALUES LESS THAN (2024), \
             PARTITION p2024 VALUES LESS THAN (2025), PARTITION pmax VALUES LESS THAN MAXVALUE)"
        ),
        &format!("CREATE TABLE `office` (`OfficeNum` bigint NOT NULL PRIMARY KEY, `Location` point NOT NULL, {stamp}, SPATIAL KEY (`Location`), KEY (`DateTStamp`)) ENGINE=InnoDB"),
        "CREATE TABLE `fee` (`FeeNum` bigint NOT NULL PRIMARY KEY, `Amount` decimal(10,2)) WITH SYSTEM VERSIONING",
        "CREATE TABLE `feehist` (`FeeNum` bigint NOT NULL, `Amount` decimal(10,2), \
         `RowStart` timestamp(6) GENERATED ALWAYS AS ROW START INVISIBLE, \
         `RowEnd` timestamp(6) GENERATED ALWAYS AS ROW END INVISIBLE, \
         PRIMARY KEY (`FeeNum`, `RowEnd`), PERIOD FOR SYSTEM_TIME (`RowStart`, `RowEnd`)) WITH SYSTEM VERSIONING",
        "CREATE VIEW `patient_balance` AS SELECT `PatNum`, `Balance` FROM `patient`",
        "INSERT INTO `provider` (`Abbr`, `DateTStamp`) SELECT CONCAT('DOC', seq), '2024-01-01' FROM seq_1_to_5",
        "INSERT INTO `patient` (`ProvNum`, `LName`, `FName`, `Birthdate`, `SSN`, `Balance`, `Prefs`, `Notes`, `DateTStamp`) \
         SELECT 1 + seq % 5, CONCAT('Last', seq), CONCAT('First', seq), '1960-01-01' + INTERVAL seq * 97 DAY, \
         LPAD(seq, 9, '0'), seq * 1.25, JSON_OBJECT('recall', seq % 2 = 0), CONCAT('note ', seq), '2024-01-01' \
         FROM seq_1_to_300",
        "INSERT INTO `visit` (`VisitDate`, `PatNum`, `DateTStamp`) \
         SELECT '2023-06-01' + INTERVAL seq DAY, seq, '2024-01-01' FROM seq_1_to_700",
        "INSERT INTO `office` (`OfficeNum`, `Location`, `DateTStamp`) \
         SELECT seq, POINT(seq / 10, seq / 20), '2024-01-01' FROM seq_1_to_4",
        "INSERT INTO `fee` VALUES (1, 10.00), (2, 20.00)",
        "INSERT INTO `feehist` (`FeeNum`, `Amount`) VALUES (1, 10.00), (2, 20.00)",
        "UPDATE `fee` SET `Amount` = 11.00 WHERE `FeeNum` = 1",
        "UPDATE `feehist` SET `Amount` = 11.00 WHERE `FeeNum` = 1",
    ])
    .await;
    let incremental = |name: &str| {
        format!(
            "  {name}:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
             primary_incremental_column: DateTStamp\n    reconcile: keys\n"
        )
    };
    let full = |name: &str| format!("  {name}:\n    extraction_strategy: full_table\n");
    let cfg = TablesConfig::parse(&format!(
        "tables:\n{}{}{}{}{}{}{}{}",
        incremental("provider"),
        incremental("patient"),
        incremental("patientlog"),
        incremental("visit").replace("reconcile: keys", "reconcile: none"),
        incremental("office"),
        full("fee"),
        full("feehist"),
        full("patient_balance"),
    ))
    .unwrap();
    let first = db.run_two_hop(&cfg, None).await;
    assert!(first.succeeded(), "{first:?}");
    let view = first
        .outcomes
        .iter()
        .find(|o| o.table == "patient_balance")
        .unwrap();
    let skipped = view.result.as_ref().unwrap_err();
    assert_eq!(skipped.kind(), ErrorKind::Skipped);
    assert!(
        skipped.to_string().contains("is a view in the source"),
        "{skipped}"
    );
    assert_eq!(first.outcomes.len(), 7 * 2 + 1, "{first:?}");

    // A day at the clinic: edits (the update trigger writes Notes), new
    // patients (the insert trigger logs them), a removal, new visits in
    // the newest partition, a moved office.
    db.source_sql(&[
        "UPDATE `patient` SET `LName` = 'Renamed', `Birthdate` = '1999-12-31', `Balance` = -5 WHERE `PatNum` = 7",
        "UPDATE `patient` SET `SSN` = '999999999' WHERE `PatNum` = 8",
        "INSERT INTO `patient` (`ProvNum`, `LName`, `FName`, `Birthdate`, `SSN`, `Notes`) VALUES (2, 'New', 'Patient', '2001-02-03', '123456789', 'walk-in')",
        "DELETE FROM `patient` WHERE `PatNum` = 9",
        "INSERT INTO `visit` (`VisitDate`, `PatNum`) VALUES ('2026-12-01', 301), ('2023-07-01', 5)",
        "UPDATE `office` SET `Location` = POINT(7, 8) WHERE `OfficeNum` = 2",
        "UPDATE `fee` SET `Amount` = 12.00 WHERE `FeeNum` = 2",
    ])
    .await;
    let second = db.run_two_hop(&cfg, None).await;
    assert!(second.succeeded(), "{second:?}");
    for table in ["provider", "patient", "patientlog", "visit", "office"] {
        let copy = phase_report(&second, table, "extract");
        assert!(
            matches!(copy.decision.strategy, Strategy::Incremental { .. }),
            "{table} is copied incrementally, its replica definition steady: {:?}",
            copy.decision
        );
    }
    for (table, key) in [
        ("provider", &["ProvNum"][..]),
        ("patient", &["PatNum"]),
        ("patientlog", &["LogNum"]),
        ("visit", &["VisitNum", "VisitDate"]),
        ("office", &["OfficeNum"]),
        ("fee", &["FeeNum"]),
        ("feehist", &["FeeNum"]),
    ] {
        db.assert_replica_same(table, key).await;
        db.assert_source_same(table, key).await;
    }
    // The warehouse has the generated and invisible columns, with the
    // source's values.
    let pg = db.pg().await;
    let row = pg
        .query_one(
            "select \"FullName\", \"BirthYear\"::int, \"SSN\", \"Notes\" from raw.patient where \"PatNum\" = 7",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Renamed, First7");
    assert_eq!(row.get::<_, i32>(1), 1999);
    assert_eq!(row.get::<_, String>(2), "000000007");
    assert_eq!(row.get::<_, String>(3), "note 7 (edited)");
    for (what, sql) in [
        (
            "triggers",
            "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()",
        ),
        (
            "views",
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'VIEW'",
        ),
        (
            "foreign keys",
            "SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE()",
        ),
        (
            "generated columns",
            "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND EXTRA LIKE '%GENERATED%'",
        ),
    ] {
        assert_eq!(
            db.replica_count(sql).await,
            0,
            "the replica holds no {what}"
        );
    }
    let fulltext = db
        .replica_count(
            "SELECT COUNT(DISTINCT INDEX_NAME) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = 'patient' AND INDEX_TYPE = 'FULLTEXT'",
        )
        .await;
    assert_eq!(fulltext, 2, "both FULLTEXT keys are built");
}

/// A key reconciliation the table's key cannot serve (a partitioned table
/// keyed by its date too) is refused on the first run, before anything is
/// copied, not on the day of its first reconciliation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reconciliation_on_a_date_key_is_refused_on_the_first_run() {
    let db = TestDb::new("ex_date_key").await;
    db.source_sql(&[
        "CREATE TABLE `visit` (`VisitNum` bigint NOT NULL, `VisitDate` date NOT NULL, \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (`VisitNum`, `VisitDate`))",
        "INSERT INTO `visit` (`VisitNum`, `VisitDate`) VALUES (1, '2024-01-01')",
    ])
    .await;
    let cfg = TablesConfig::parse(
        "tables:\n  visit:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    reconcile: keys\n",
    )
    .unwrap();
    for run in [db.run_two_hop(&cfg, None).await, db.run_direct(&cfg).await] {
        let failed = run.outcomes[0].result.as_ref().unwrap_err();
        assert_eq!(failed.kind(), ErrorKind::Config);
        assert!(
            failed.to_string().contains("`VisitDate` is not an integer"),
            "{failed}"
        );
    }
    let copied = db
        .replica_count(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'visit'",
        )
        .await;
    assert_eq!(copied, 0, "nothing was copied");
}

/// MySQL 8's own `SHOW CREATE TABLE` texts (collations MariaDB lacks,
/// version comments, functional and invisible indexes, NOT ENFORCED
/// checks, SRID, partitions) make tables a MariaDB replica accepts, keys
/// included, and that take a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql8_definitions_make_tables_on_a_mariadb_replica() {
    let db = TestDb::new("ex_mysql8_ddl").await;
    let tables = [
        (
            "version",
            "CREATE TABLE `version` (\n  `my_row_id` bigint unsigned NOT NULL AUTO_INCREMENT /*!80023 INVISIBLE */,\n  \
             `app_version` varchar(10) NOT NULL,\n  `master_data_version` varchar(10) NOT NULL,\n  \
             PRIMARY KEY (`my_row_id`)\n) ENGINE=InnoDB AUTO_INCREMENT=2 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_ai_ci",
            "INSERT INTO `version` VALUES (1, '1.0.0', '1.0.0')",
        ),
        (
            "Accounts",
            "CREATE TABLE `Accounts` (\n  `doc` json DEFAULT NULL,\n  \
             `_id` varbinary(32) GENERATED ALWAYS AS (json_unquote(json_extract(`doc`,_utf8mb4'$._id'))) STORED NOT NULL,\n  \
             `_json_schema` json GENERATED ALWAYS AS (_utf8mb4'{\"type\":\"object\"}') VIRTUAL,\n  \
             `id` varchar(30) GENERATED ALWAYS AS (json_unquote(json_extract(`doc`,_utf8mb4'$.id'))) STORED NOT NULL,\n  \
             PRIMARY KEY (`_id`),\n  \
             CONSTRAINT `$val_strict_A4A2D2706248415191E4A14C4A6061242BC437D2` CHECK (json_schema_valid(`_json_schema`,`doc`)) /*!80016 NOT ENFORCED */\n\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_ai_ci",
            "INSERT INTO `Accounts` VALUES ('{\"_id\": \"a1\", \"id\": \"x\"}', 'a1', '{\"type\":\"object\"}', 'x')",
        ),
        (
            "places",
            "CREATE TABLE `places` (\n  `id` int NOT NULL,\n  `lat` double NOT NULL,\n  `lng` double NOT NULL,\n  \
             `loc` point GENERATED ALWAYS AS (st_srid(point(`lng`,`lat`),4326)) STORED NOT NULL /*!80003 SRID 4326 */ /*!80023 INVISIBLE */ COMMENT 'geo',\n  \
             `name` varchar(31) CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_as_cs NOT NULL,\n  \
             `about` text,\n  `d` date NOT NULL,\n  \
             PRIMARY KEY (`name`,`d`),\n  KEY `lower_name` ((lower(`name`))),\n  \
             KEY `name_prefix` (`name`(10) DESC) /*!80000 INVISIBLE */,\n  SPATIAL KEY `loc` (`loc`),\n  \
             FULLTEXT KEY `ft_name` (`name`) /*!50100 WITH PARSER `ngram` */ ,\n  FULLTEXT KEY `ft_about` (`about`),\n  \
             CONSTRAINT `places_chk_1` CHECK ((`lat` between -(90) and 90))\n\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_ai_ci ROW_FORMAT=DYNAMIC\n\
             /*!50100 PARTITION BY RANGE (year(`d`))\n\
             (PARTITION p2023 VALUES LESS THAN (2024) ENGINE = InnoDB,\n PARTITION pmax VALUES LESS THAN MAXVALUE ENGINE = InnoDB) */",
            "INSERT INTO `places` VALUES (1, 45.5, -73.6, POINT(-73.6, 45.5), 'Clinic', 'downtown', '2024-05-01'), \
             (2, 45.5, -73.6, POINT(-73.6, 45.5), 'clinic', 'uptown', '2024-05-01')",
        ),
    ];
    let mut replica = etl_pipeline::mysql::connect(&db.ctx.replica).await.unwrap();
    let collations: Vec<String> = replica
        .query("SELECT COLLATION_NAME FROM information_schema.COLLATIONS")
        .await
        .unwrap();
    let has = |c: &str| collations.iter().any(|k| k == c);
    for (name, text, row) in tables {
        let made =
            etl_pipeline::mysql::replica_ddl(text, name, name, &has, &Default::default()).unwrap();
        replica
            .query_drop(&made.create)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", made.create));
        for key in &made.deferred_keys {
            replica
                .query_drop(format!("ALTER TABLE `{name}` ADD {key}"))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}\n{key}"));
        }
        replica
            .query_drop(row)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // `Clinic` and `clinic` are two keys under utf8mb4_0900_as_cs: they
    // stay two rows in the replica.
    let names: Vec<String> = replica
        .query("SELECT `name` FROM `places` ORDER BY `id`")
        .await
        .unwrap();
    assert_eq!(names, ["Clinic", "clinic"]);
}
