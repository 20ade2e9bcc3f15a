//! A hop of a table whose two ends have not changed since it last ran to
//! its end is skipped, by the table stamps MariaDB keeps; and every change
//! at either end, or to the table's config, still arrives: edits, deletes
//! and new columns at the source, a row removed by hand from the replica, a
//! warehouse table dropped, a column newly masked. A table on an engine
//! whose stamp can miss a change (InnoDB) is never skipped, and neither is
//! one whose token is older than a day.

mod common;

use std::time::Duration;

use common::{Rng, TestDb, exec_on, phase_report};
use etl_pipeline::config::TablesConfig;
use etl_pipeline::pipeline::RunReport;
use etl_pipeline::stamps::{MARGIN_SECONDS, SKIP_REASON};

const TABLES: &[&str] = &[
    "CREATE TABLE `visit` (
      `VisitNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
      `Fee` double NOT NULL DEFAULT 0,
      `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
      KEY `DateTStamp` (`DateTStamp`)
    ) ENGINE=MyISAM",
    "INSERT INTO `visit` (`Fee`) SELECT seq FROM seq_1_to_300",
    "CREATE TABLE `note` (
      `NoteNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
      `Body` varchar(40) NOT NULL
    ) ENGINE=MyISAM",
    "INSERT INTO `note` (`Body`) SELECT CONCAT('note ', seq) FROM seq_1_to_200",
    "CREATE TABLE `chart` (
      `ChartNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
      `Remark` varchar(40) NOT NULL,
      `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
      KEY `DateTStamp` (`DateTStamp`)
    ) ENGINE=MyISAM",
    "INSERT INTO `chart` (`Remark`) SELECT CONCAT('remark ', seq) FROM seq_1_to_100",
    "CREATE TABLE `log` (
      `LogNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
      `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
      KEY `DateTStamp` (`DateTStamp`)
    ) ENGINE=InnoDB",
    "INSERT INTO `log` (`LogNum`) SELECT seq FROM seq_1_to_50",
];

const VISIT_CONFIG: &str = "tables:
  visit:
    extraction_strategy: incremental
    incremental_columns: [DateTStamp]
    primary_incremental_column: DateTStamp
    lookback_seconds: 3600
";

fn config(chart_extra: &str) -> TablesConfig {
    TablesConfig::parse(&format!(
        "{VISIT_CONFIG}    reconcile: keys
  note:
    extraction_strategy: full_table
  chart:
    extraction_strategy: incremental
    incremental_columns: [DateTStamp]
    primary_incremental_column: DateTStamp
    lookback_seconds: 3600
{chart_extra}
  log:
    extraction_strategy: incremental
    incremental_columns: [DateTStamp]
    primary_incremental_column: DateTStamp
"
    ))
    .unwrap()
}

fn skipped(run: &RunReport, table: &str, phase: &str) -> bool {
    phase_report(run, table, phase).decision.reason == SKIP_REASON
}

/// Waits until every write so far is older than the stamps' margin, runs
/// once (what it reads it finds unchanged, and records the tokens) and returns
/// the run after, which skips what it can.
async fn settle(db: &TestDb, cfg: &TablesConfig) -> RunReport {
    tokio::time::sleep(Duration::from_secs(
        u64::try_from(MARGIN_SECONDS).unwrap() + 1,
    ))
    .await;
    let recording = db.run_two_hop(cfg, None).await;
    assert!(recording.succeeded(), "{recording:?}");
    let run = db.run_two_hop(cfg, None).await;
    assert!(run.succeeded(), "{run:?}");
    run
}

fn assert_all_skipped_but_innodb(run: &RunReport) {
    for table in ["visit", "note", "chart"] {
        for phase in ["extract", "load"] {
            assert!(
                skipped(run, table, phase),
                "{table} {phase}: {:?}",
                phase_report(run, table, phase)
            );
            assert_eq!(phase_report(run, table, phase).rows_read, 0);
        }
    }
    assert!(!skipped(run, "log", "extract"), "InnoDB is never skipped");
    assert!(!skipped(run, "log", "load"), "InnoDB is never skipped");
}

async fn assert_converged(db: &TestDb) {
    for (table, key) in [
        ("visit", "VisitNum"),
        ("note", "NoteNum"),
        ("log", "LogNum"),
    ] {
        db.assert_replica_same(table, &[key]).await;
        db.assert_same(table, &[key]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_unchanged_at_both_ends_is_skipped_and_every_change_still_arrives() {
    let mut db = TestDb::new("stamps").await;
    db.source_sql(TABLES).await;
    let cfg = config("");
    let first = db.run_two_hop(&cfg, None).await;
    assert!(first.succeeded(), "{first:?}");
    assert_converged(&db).await;

    let quiet = settle(&db, &cfg).await;
    assert_all_skipped_but_innodb(&quiet);
    assert_eq!(
        db.last_history("visit", "load")
            .await
            .get::<_, Option<String>>("strategy_reason")
            .as_deref(),
        Some(SKIP_REASON)
    );

    // At the source: an edit, a delete and a new row. In
    // the replica, by hand: a row removed. Each hop that saw its end change
    // reads again, and the changes arrive.
    db.source_sql(&[
        "UPDATE `visit` SET `Fee` = -5 WHERE `VisitNum` = 9",
        "DELETE FROM `note` WHERE `NoteNum` = 4",
        "INSERT INTO `note` (`Body`) VALUES ('new note')",
    ])
    .await;
    db.mysql(&["DELETE FROM `chart` WHERE `ChartNum` = 6"])
        .await;
    let changed = db.run_two_hop(&cfg, None).await;
    assert!(changed.succeeded(), "{changed:?}");
    for table in ["visit", "note", "chart"] {
        assert!(!skipped(&changed, table, "extract"), "{table}");
        assert!(!skipped(&changed, table, "load"), "{table}");
    }
    assert_converged(&db).await;
    db.assert_replica_same("chart", &["ChartNum"]).await;
    db.assert_same("chart", &["ChartNum"]).await;
    let fee: Vec<f64> = db
        .pg_values("select \"Fee\" from raw.visit where \"VisitNum\" = 9")
        .await;
    assert_eq!(fee, [-5.0]);

    let quiet = settle(&db, &cfg).await;
    assert_all_skipped_but_innodb(&quiet);

    // A warehouse table dropped by hand, a column added at the source, and
    // a column the config now masks.
    db.pg()
        .await
        .batch_execute("drop table raw.note")
        .await
        .unwrap();
    db.source_sql(&["ALTER TABLE `visit` ADD COLUMN `Extra` int NOT NULL DEFAULT 7"])
        .await;
    let masked = config("    mask_columns: {Remark: hash}");
    let changed = db.run_two_hop(&masked, None).await;
    assert!(changed.succeeded(), "{changed:?}");
    assert!(
        skipped(&changed, "note", "extract"),
        "the copy's ends did not change"
    );
    assert!(!skipped(&changed, "note", "load"));
    assert!(!skipped(&changed, "visit", "extract"));
    assert!(!skipped(&changed, "chart", "extract"));
    assert_converged(&db).await;
    let extra: Vec<i32> = db
        .pg_values("select distinct \"Extra\" from raw.visit")
        .await;
    assert_eq!(extra, [7]);
    let remarks: Vec<String> = db
        .pg_values("select \"Remark\" from raw.chart where \"ChartNum\" = 1")
        .await;
    assert_eq!(remarks.len(), 1);
    assert_ne!(remarks[0], "remark 1", "the newly masked column is masked");

    // A token older than a day is not honoured: the hop reads again, and
    // records a fresh one.
    let quiet = settle(&db, &masked).await;
    assert_all_skipped_but_innodb(&quiet);
    db.mysql(&[
        "UPDATE `etl_copy_status` SET `unchanged_at` = UTC_TIMESTAMP(6) - INTERVAL 25 HOUR",
    ])
    .await;
    db.pg()
        .await
        .batch_execute("update raw.etl_load_status set unchanged_at = now() - interval '25 hours'")
        .await
        .unwrap();
    let stale = db.run_two_hop(&masked, None).await;
    assert!(stale.succeeded(), "{stale:?}");
    for table in ["visit", "note", "chart"] {
        assert!(!skipped(&stale, table, "extract"), "{table}");
        assert!(!skipped(&stale, table, "load"), "{table}");
    }
    // A table whose every hop is skipped takes no run lock: another run
    // holding `visit` does not keep this one from recording it unchanged.
    let other_run = db.pg().await;
    other_run
        .batch_execute(&format!(
            "select pg_advisory_lock({}, hashtext('\"raw\".\"visit\"'))",
            etl_pipeline::pipeline::LOCK_CLASS
        ))
        .await
        .unwrap();
    let again = db.run_two_hop(&masked, None).await;
    assert_all_skipped_but_innodb(&again);
    drop(other_run);

    // --recheck reads every table.
    db.recheck = true;
    let rechecked = db.run_two_hop(&masked, None).await;
    assert!(rechecked.succeeded(), "{rechecked:?}");
    for table in ["visit", "note", "chart"] {
        assert!(!skipped(&rechecked, table, "extract"), "{table}");
        assert!(!skipped(&rechecked, table, "load"), "{table}");
    }
}

/// Direct mode (no replica): the load's ends are the source and the
/// warehouse, and it is skipped by the same rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_load_unchanged_at_both_ends_is_skipped_and_an_edit_still_arrives() {
    let db = TestDb::new("stamps_direct").await;
    db.source_sql(&TABLES[..2]).await;
    let cfg = TablesConfig::parse(VISIT_CONFIG).unwrap();
    assert!(db.run_direct(&cfg).await.succeeded());
    tokio::time::sleep(Duration::from_secs(
        u64::try_from(MARGIN_SECONDS).unwrap() + 1,
    ))
    .await;
    let recording = db.run_direct(&cfg).await;
    assert!(!skipped(&recording, "visit", "load"));
    let quiet = db.run_direct(&cfg).await;
    assert!(skipped(&quiet, "visit", "load"), "{quiet:?}");

    db.source_sql(&["UPDATE `visit` SET `Fee` = -3 WHERE `VisitNum` = 2"])
        .await;
    let changed = db.run_direct(&cfg).await;
    assert!(changed.succeeded(), "{changed:?}");
    assert!(!skipped(&changed, "visit", "load"));
    let fee: Vec<f64> = db
        .pg_values("select \"Fee\" from raw.visit where \"VisitNum\" = 2")
        .await;
    assert_eq!(fee, [-3.0]);
    assert_eq!(db.pg_count("visit").await, 300);
}

/// Runs back to back while a clinic edits in bursts with quiet spells
/// longer than the margin between them, so that tokens are recorded and
/// edits land just before, during and just after the runs that record or
/// honour them: when the edits stop, one more run brings every table level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_around_runs_that_record_and_honour_tokens_all_arrive() {
    let db = TestDb::new("stamps_busy").await;
    db.source_sql(TABLES).await;
    let cfg = config("");
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    let source = db.source.clone();
    let seed = common::setting("ETL_TEST_SEED", 7);
    let clinic = tokio::spawn(async move {
        let mut rng = Rng(seed);
        for _burst in 0..4 {
            for _ in 0..8 {
                let n = rng.upto(300) + 1;
                let statement = match rng.upto(5) {
                    0 => format!("UPDATE `visit` SET `Fee` = `Fee` + 1 WHERE `VisitNum` = {n}"),
                    1 => format!(
                        "UPDATE `chart` SET `Remark` = 'seen {n}' WHERE `ChartNum` = {}",
                        n % 100 + 1
                    ),
                    2 => format!(
                        "UPDATE `note` SET `Body` = 'edited {n}' WHERE `NoteNum` = {}",
                        n % 200 + 1
                    ),
                    3 => "INSERT INTO `note` (`Body`) VALUES ('added')".to_string(),
                    4 => format!("DELETE FROM `visit` WHERE `VisitNum` = {n}"),
                    _ => "INSERT INTO `visit` (`Fee`) VALUES (1)".to_string(),
                };
                exec_on(&source, &[&statement]).await;
                tokio::time::sleep(Duration::from_millis(rng.upto(250))).await;
            }
            tokio::time::sleep(Duration::from_millis(
                u64::try_from(MARGIN_SECONDS).unwrap() * 1000 + 1500,
            ))
            .await;
        }
    });
    let mut skipped_hops = 0;
    while !clinic.is_finished() {
        let run = db.run_two_hop(&cfg, None).await;
        assert!(run.succeeded(), "{run:?}");
        skipped_hops += run
            .outcomes
            .iter()
            .filter(|o| {
                o.result
                    .as_ref()
                    .is_ok_and(|r| r.decision.reason == SKIP_REASON)
            })
            .count();
    }
    clinic.await.unwrap();
    assert!(
        skipped_hops > 0,
        "the runs skipped nothing: the test shows nothing"
    );
    let last = db.run_two_hop(&cfg, None).await;
    assert!(last.succeeded(), "{last:?}");
    assert_converged(&db).await;
    db.assert_replica_same("chart", &["ChartNum"]).await;
    db.assert_same("chart", &["ChartNum"]).await;
}
