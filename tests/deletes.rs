//! Hard deletes: rows deleted at the source leave the replica and the
//! warehouse (or are stamped `_deleted_at`), found by key reconciliation.

mod common;

use common::TestDb;
use etl_pipeline::ErrorKind;
use etl_pipeline::config::TablesConfig;
use etl_pipeline::pipeline::RunReport;

const APPOINTMENT: &str = "CREATE TABLE `appointment` (`AptNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
    `PatNum` bigint NOT NULL, `Note` varchar(100) NOT NULL, \
    `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`))";

fn config(extra: &str) -> TablesConfig {
    TablesConfig::parse(&format!(
        "tables:\n  appointment:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    primary_key: AptNum\n    delete_detection: key_reconcile\n{extra}"
    ))
    .unwrap()
}

fn deleted(report: &RunReport, table: &str, phase: &str) -> u64 {
    let outcome = report.outcome(table, phase).unwrap();
    match &outcome.result {
        Ok(r) => r.rows_deleted,
        Err(e) => panic!("{table} {phase}: {e}"),
    }
}

async fn live_rows(db: &TestDb, table: &str) -> i64 {
    db.pg()
        .await
        .query_one(
            &format!("select count(*) from raw.{table} where _deleted_at is null"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_range_and_edge_deletes_with_updates_and_inserts_reach_both_copies() {
    let db = TestDb::new("del_basic").await;
    db.source_sql(&[
        APPOINTMENT,
        "INSERT INTO `appointment` (`PatNum`, `Note`, `DateTStamp`) \
         SELECT seq % 700, CONCAT('visit ', seq), TIMESTAMP '2025-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_20000",
    ])
    .await;
    let cfg = config("");
    let first = db.run_two_hop(&cfg, None).await;
    assert!(first.succeeded(), "{first:?}");
    assert_eq!(deleted(&first, "appointment", "load"), 0);

    db.source_sql(&[
        "DELETE FROM `appointment` WHERE `AptNum` IN (1, 12345, 20000)",
        "DELETE FROM `appointment` WHERE `AptNum` BETWEEN 5000 AND 5100",
        "UPDATE `appointment` SET `Note` = 'moved' WHERE `AptNum` BETWEEN 7000 AND 7009",
        "INSERT INTO `appointment` (`PatNum`, `Note`) SELECT seq, 'new' FROM seq_1_to_5",
    ])
    .await;
    let second = db.run_two_hop(&cfg, None).await;
    assert_eq!(deleted(&second, "appointment", "extract"), 104);
    assert_eq!(deleted(&second, "appointment", "load"), 104);
    db.assert_replica_same("appointment", &["AptNum"]).await;
    db.assert_same("appointment", &["AptNum"]).await;
    assert_eq!(db.pg_count("appointment").await, 20000 - 104 + 5);

    let history: i64 = db
        .last_history("appointment", "load")
        .await
        .get("rows_deleted");
    assert_eq!(history, 104, "the run history counts the deletes");

    let third = db.run_two_hop(&cfg, None).await;
    assert_eq!(deleted(&third, "appointment", "extract"), 0);
    assert_eq!(deleted(&third, "appointment", "load"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_keys_are_reconciled() {
    let db = TestDb::new("del_composite").await;
    db.source_sql(&[
        "CREATE TABLE `periomeasure` (`PerioExamNum` bigint NOT NULL, `IntTooth` smallint NOT NULL, \
         `ToothValue` int NOT NULL, `SecDateTEdit` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, \
         PRIMARY KEY (`PerioExamNum`, `IntTooth`), KEY (`SecDateTEdit`))",
        "INSERT INTO `periomeasure` SELECT seq DIV 32, seq % 32, seq % 9, TIMESTAMP '2025-01-01 00:00:00' + INTERVAL seq SECOND \
         FROM seq_0_to_9599",
    ])
    .await;
    let cfg = TablesConfig::parse(
        "tables:\n  periomeasure:\n    extraction_strategy: incremental\n    incremental_columns: [SecDateTEdit]\n    \
         primary_incremental_column: SecDateTEdit\n    primary_key: [PerioExamNum, IntTooth]\n    \
         delete_detection: key_reconcile\n",
    )
    .unwrap();
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    db.source_sql(&[
        "DELETE FROM `periomeasure` WHERE `PerioExamNum` = 17",
        "DELETE FROM `periomeasure` WHERE `PerioExamNum` = 200 AND `IntTooth` IN (0, 31)",
        "DELETE FROM `periomeasure` WHERE `PerioExamNum` = 0 AND `IntTooth` = 0",
    ])
    .await;
    let report = db.run_two_hop(&cfg, None).await;
    assert_eq!(deleted(&report, "periomeasure", "extract"), 35);
    assert_eq!(deleted(&report, "periomeasure", "load"), 35);
    db.assert_replica_same("periomeasure", &["PerioExamNum", "IntTooth"])
        .await;
    db.assert_same("periomeasure", &["PerioExamNum", "IntTooth"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_source_trips_the_mass_delete_guard_and_removes_nothing() {
    let db = TestDb::new("del_guard").await;
    db.source_sql(&[
        APPOINTMENT,
        "INSERT INTO `appointment` (`PatNum`, `Note`) SELECT seq, 'x' FROM seq_1_to_3000",
    ])
    .await;
    let cfg = config("");
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    db.source_sql(&["DELETE FROM `appointment`"]).await;

    let report = db.run_two_hop(&cfg, None).await;
    let outcome = report.outcome("appointment", "extract").unwrap();
    let err = outcome.result.as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    let text = err.to_string();
    assert!(
        text.contains("3000 of its 3000 rows") && text.contains("--allow-mass-delete"),
        "{text}"
    );
    assert!(!report.succeeded());
    assert_eq!(db.pg_count("appointment").await, 3000, "nothing removed");
    let mut conn = etl_pipeline::mysql::connect(&db.ctx.replica).await.unwrap();
    let replica: Option<u64> = mysql_async::prelude::Queryable::query_first(
        &mut conn,
        "SELECT COUNT(*) FROM `appointment`",
    )
    .await
    .unwrap();
    assert_eq!(replica, Some(3000), "nothing removed from the replica");

    let allowed = db.run_two_hop_with(&cfg, None, true).await;
    assert_eq!(deleted(&allowed, "appointment", "extract"), 3000);
    assert_eq!(deleted(&allowed, "appointment", "load"), 3000);
    assert_eq!(db.pg_count("appointment").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_delete_keeps_rows_stamped_and_a_returning_row_is_live_again() {
    let db = TestDb::new("del_soft").await;
    db.source_sql(&[
        APPOINTMENT,
        "INSERT INTO `appointment` (`PatNum`, `Note`) SELECT seq, 'x' FROM seq_1_to_500",
    ])
    .await;
    let cfg = config("    soft_delete: true\n");
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    db.source_sql(&["DELETE FROM `appointment` WHERE `AptNum` IN (10, 20, 30)"])
        .await;
    let report = db.run_two_hop(&cfg, None).await;
    assert_eq!(deleted(&report, "appointment", "load"), 3);
    assert_eq!(db.pg_count("appointment").await, 500, "rows are kept");
    assert_eq!(live_rows(&db, "appointment").await, 497);
    let stamped: Vec<i64> = db
        .pg_values(
            "select \"AptNum\" from raw.appointment where _deleted_at is not null order by 1",
        )
        .await;
    assert_eq!(stamped, vec![10, 20, 30]);

    // A key that comes back is live again; a full refresh keeps the stamps.
    db.source_sql(&[
        "INSERT INTO `appointment` (`AptNum`, `PatNum`, `Note`) VALUES (20, 20, 'restored')",
        "DELETE FROM `appointment` WHERE `AptNum` = 40",
    ])
    .await;
    let report = db.run_two_hop(&cfg, None).await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(live_rows(&db, "appointment").await, 497);
    let client = db.pg().await;
    let note: String = client
        .query_one(
            "select \"Note\" from raw.appointment where \"AptNum\" = 20 and _deleted_at is null",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, "restored");
    let ctx = &db.ctx;
    let full = etl_pipeline::load::load_table(
        ctx,
        cfg.get("appointment").unwrap(),
        &etl_pipeline::load::LoadOptions {
            force_full: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(full.rows_deleted, 0, "nothing new to stamp");
    assert_eq!(db.pg_count("appointment").await, 500);
    assert_eq!(live_rows(&db, "appointment").await, 497);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_runs_on_its_schedule() {
    let db = TestDb::new("del_schedule").await;
    db.source_sql(&[
        APPOINTMENT,
        "INSERT INTO `appointment` (`PatNum`, `Note`) SELECT seq, 'x' FROM seq_1_to_200",
    ])
    .await;
    let cfg = config("    reconcile_every_runs: 2\n");
    let first = db.run_two_hop(&cfg, None).await;
    assert!(first.succeeded(), "{first:?}");
    db.source_sql(&["DELETE FROM `appointment` WHERE `AptNum` = 7"])
        .await;
    let second = db.run_two_hop(&cfg, None).await;
    assert_eq!(
        deleted(&second, "appointment", "extract"),
        0,
        "not due: reconciled one run ago"
    );
    assert_eq!(db.pg_count("appointment").await, 200);
    let third = db.run_two_hop(&cfg, None).await;
    assert_eq!(deleted(&third, "appointment", "extract"), 1);
    assert_eq!(deleted(&third, "appointment", "load"), 1);
    assert_eq!(db.pg_count("appointment").await, 199);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_opendental_logs_apply_between_reconciliations() {
    let db = TestDb::new("del_logged").await;
    db.source_sql(&[
        APPOINTMENT,
        "INSERT INTO `appointment` (`PatNum`, `Note`) SELECT seq, 'x' FROM seq_1_to_300",
        "CREATE TABLE `deletedobject` (`DeletedObjectNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         `ObjectNum` bigint NOT NULL, `ObjectType` int NOT NULL, \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP)",
    ])
    .await;
    let cfg = TablesConfig::parse(
        "tables:\n  appointment:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    primary_key: AptNum\n    delete_detection: key_reconcile\n    \
         reconcile_every_runs: 100\n  deletedobject:\n    extraction_strategy: full_table\n",
    )
    .unwrap();
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    // 5 and 6 are logged as deleted appointments; 7 is deleted unlogged
    // (ObjectType 1 is a schedule), so only a reconciliation would find it.
    db.source_sql(&[
        "DELETE FROM `appointment` WHERE `AptNum` IN (5, 6, 7)",
        "INSERT INTO `deletedobject` (`ObjectNum`, `ObjectType`) VALUES (5, 0), (6, 0), (7, 1)",
    ])
    .await;
    let second = db.run_two_hop(&cfg, None).await;
    assert_eq!(deleted(&second, "appointment", "extract"), 2);
    let third = db.run_two_hop(&cfg, None).await;
    assert_eq!(
        deleted(&second, "appointment", "load") + deleted(&third, "appointment", "load"),
        2,
        "the warehouse follows once the replica's deletedobject has the log"
    );
    assert_eq!(db.pg_count("appointment").await, 298);
    let client = db.pg().await;
    let seven: i64 = client
        .query_one(
            "select count(*) from raw.appointment where \"AptNum\" = 7",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(seven, 1, "an unlogged delete waits for the reconciliation");
}
