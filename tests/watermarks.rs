//! Never miss a row: what a clinic's ordinary day does to watermarks. A
//! long first copy edited while it runs, a row stamped hours ahead by a
//! clock that runs fast, and new rows stamped in the past or with
//! OpenDental's "no date" values, each through both hops, each compared
//! value by value with the source afterwards.

mod common;

use std::time::Duration;

use common::{PATPLAN, TestDb, phase_report};
use etl_pipeline::config::TablesConfig;
use mysql_async::prelude::Queryable;

const VISIT: &str = "CREATE TABLE `visit` (
  `VisitNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
  `PatNum` bigint NOT NULL,
  `Fee` double NOT NULL DEFAULT 0,
  `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  KEY `DateTStamp` (`DateTStamp`)
) ENGINE=InnoDB";

fn config() -> TablesConfig {
    TablesConfig::parse(
        "tables:
  visit:
    extraction_strategy: incremental
    incremental_columns: [DateTStamp]
    primary_incremental_column: DateTStamp
    batch_size: 500
    lookback_seconds: 2
    lookback_keys: 1
  patplan:
    extraction_strategy: incremental
    incremental_columns: [SecDateTEntry]
    primary_incremental_column: SecDateTEntry
    batch_size: 500
    lookback_seconds: 2
",
    )
    .unwrap()
}

fn fill_visits(rows: u32) -> String {
    format!(
        "INSERT INTO `visit` (`PatNum`, `Fee`, `DateTStamp`) \
         SELECT seq % 977, seq, '2024-01-01 00:00:00' + INTERVAL (seq DIV 3) SECOND FROM seq_1_to_{rows}"
    )
}

fn fill_patplans(rows: u32) -> String {
    format!(
        "INSERT INTO `patplan` (`PatNum`, `Ordinal`, `Note`, `SecDateTEntry`) \
         SELECT seq, 1, CONCAT('plan ', seq), '2024-03-01 08:00:00' + INTERVAL seq MINUTE FROM seq_1_to_{rows}"
    )
}

async fn assert_converged(db: &TestDb) {
    db.assert_replica_same("visit", &["VisitNum"]).await;
    db.assert_same("visit", &["VisitNum"]).await;
    db.assert_replica_same("patplan", &["PatNum", "Ordinal"])
        .await;
    db.assert_same("patplan", &["PatNum", "Ordinal"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_behind_a_long_first_copy_reaches_the_warehouse() {
    let db = TestDb::new("wm_long_copy").await;
    db.source_sql(&[VISIT, &fill_visits(20_000), PATPLAN, &fill_patplans(10)])
        .await;
    let cfg = config();
    // At 2,000 rows/s the first copy takes 10 s. Two seconds in, a row it has
    // passed is edited; six seconds later one it has not reached yet, so the
    // replica holds a newer stamp than the edit behind the copy.
    let source = db.source.clone();
    let edits = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        common::exec_on(
            &source,
            &["UPDATE `visit` SET `Fee` = -5 WHERE `VisitNum` = 5"],
        )
        .await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        common::exec_on(
            &source,
            &["UPDATE `visit` SET `Fee` = -19990 WHERE `VisitNum` = 19990"],
        )
        .await;
    });
    let first = db.run_two_hop(&cfg, Some(2000)).await;
    edits.await.unwrap();
    assert!(first.succeeded(), "{first:?}");
    let second = db.run_two_hop(&cfg, None).await;
    assert!(second.succeeded(), "{second:?}");
    assert_converged(&db).await;
    assert_eq!(db.pg_count("visit").await, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_stamped_hours_ahead_never_hides_the_edits_after_it() {
    let db = TestDb::new("wm_clock_ahead").await;
    db.source_sql(&[VISIT, &fill_visits(300), PATPLAN, &fill_patplans(300)])
        .await;
    let cfg = config();
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    // A timestamp three hours ahead (a clock put right by NTP afterwards), and
    // an entry stamp three hours ahead in the server's local time (a
    // workstation's clock).
    db.source_sql(&[
        "UPDATE `visit` SET `Fee` = -1, `DateTStamp` = NOW() + INTERVAL 3 HOUR WHERE `VisitNum` = 1",
        "UPDATE `patplan` SET `Note` = 'ahead', `SecDateTEntry` = NOW() + INTERVAL 3 HOUR WHERE `PatNum` = 1",
    ])
    .await;
    let ahead = db.run_two_hop(&cfg, None).await;
    assert!(ahead.succeeded(), "{ahead:?}");
    // The copy sees the source's clock; the load stops at the copy's watermark.
    for table in ["visit", "patplan"] {
        let report = phase_report(&ahead, table, "extract");
        assert_eq!(report.rows_future, 1, "{table}: {report:?}");
    }
    assert!(
        phase_report(&ahead, "visit", "extract")
            .warnings
            .iter()
            .any(|w| w.contains("1 row(s) stamped in the future")),
        "{ahead:?}"
    );
    // Ordinary edits after it, stamped by the right clock.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    db.source_sql(&[
        "UPDATE `visit` SET `Fee` = -2 WHERE `VisitNum` IN (2, 4)",
        "UPDATE `patplan` SET `Note` = 'edited', `SecDateTEntry` = NOW() WHERE `PatNum` IN (2, 4)",
    ])
    .await;
    let after = db.run_two_hop(&cfg, None).await;
    assert!(after.succeeded(), "{after:?}");
    assert_converged(&db).await;
    let mark = db.watermark("visit", "DateTStamp").await.unwrap();
    let now = db
        .pg()
        .await
        .query_one(
            "select (now() at time zone 'utc' + interval '1 minute')::text",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    assert!(
        mark < now,
        "the watermark {mark} passed the clock ({now} + 1 minute)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backdated_and_no_date_rows_arrive_without_moving_the_watermark() {
    let db = TestDb::new("wm_backdated").await;
    db.source_sql(&[VISIT, &fill_visits(300), PATPLAN, &fill_patplans(300)])
        .await;
    let cfg = config();
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    db.source_sql(&[
        "INSERT INTO `visit` (`PatNum`, `Fee`, `DateTStamp`) VALUES (1, 11, '2015-03-03 10:00:00')",
        "INSERT INTO `visit` (`PatNum`, `Fee`, `DateTStamp`) VALUES (2, 12, '0000-00-00 00:00:00')",
        "INSERT INTO `patplan` (`PatNum`, `Ordinal`, `Note`, `SecDateTEntry`) VALUES \
         (1, 2, 'no date', '0001-01-01 00:00:00'), (1, 3, 'zero', '0000-00-00 00:00:00'), \
         (1, 4, 'sentinel', '1900-01-01 00:00:00')",
    ])
    .await;
    let mark_before = db.watermark("visit", "DateTStamp").await;
    let run = db.run_two_hop(&cfg, None).await;
    assert!(run.succeeded(), "{run:?}");
    assert_converged(&db).await;
    for phase in ["extract", "load"] {
        let visit = phase_report(&run, "visit", phase);
        assert_eq!(visit.rows_new_keys, 1, "{phase}: {visit:?}");
        assert_eq!(visit.rows_outside_bounds, 1, "{phase}: {visit:?}");
        assert_eq!(phase_report(&run, "patplan", phase).rows_outside_bounds, 3);
    }
    assert_eq!(db.watermark("visit", "DateTStamp").await, mark_before);
    // The backdated row is held now: the next run does not read it by key again.
    let again = db.run_two_hop(&cfg, None).await;
    assert!(again.succeeded(), "{again:?}");
    for phase in ["extract", "load"] {
        assert_eq!(phase_report(&again, "visit", phase).rows_new_keys, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_holds_its_watermark_while_the_copy_has_none_committed() {
    let db = TestDb::new("wm_copy_unmarked").await;
    db.source_sql(&[VISIT, &fill_visits(300), PATPLAN, &fill_patplans(10)])
        .await;
    let cfg = config();
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    let mark = db.watermark("visit", "DateTStamp").await;
    // What a full copy stopped between its swap and its tracking update
    // leaves: new rows in the replica, no copy watermark.
    let edit = "UPDATE `visit` SET `Fee` = -7, `DateTStamp` = NOW() WHERE `VisitNum` = 3";
    db.source_sql(&[edit]).await;
    db.mysql(&[
        edit,
        "DELETE FROM `etl_copy_watermark` WHERE `table_name` = 'visit'",
    ])
    .await;
    let load = db.load(&cfg.get("visit").unwrap().clone()).await.unwrap();
    assert_eq!(load.rows_updated, 1, "{load:?}");
    assert_eq!(db.watermark("visit", "DateTStamp").await, mark);
    db.assert_same("visit", &["VisitNum"]).await;
    // The next copy is a full one, and both hops move on from there.
    let run = db.run_two_hop(&cfg, None).await;
    assert!(run.succeeded(), "{run:?}");
    assert!(
        phase_report(&run, "visit", "extract")
            .decision
            .reason
            .contains("no watermark recorded"),
        "{run:?}"
    );
    assert_converged(&db).await;
    assert!(db.watermark("visit", "DateTStamp").await > mark);
}

/// The server's local clock falls back an hour between two runs, as at the
/// end of daylight saving time: stamps written in the local time of a
/// `datetime` column go back an hour, below the watermark. The source is a
/// server of the test's own so its global time zone can move from UTC−4
/// (daylight time) to UTC−5 (standard time) as a zone with daylight saving
/// does, without touching the tests beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_in_the_hour_repeated_at_a_fall_back_are_read() {
    let server = common::PrivateMariaDb::start("wm_fall_back").await;
    let mut db = TestDb::new("wm_fall_back").await;
    db.source = server.database("clinic").await;
    common::exec_on(&server.admin, &["SET GLOBAL time_zone = '-04:00'"]).await;
    db.source_sql(&[
        "CREATE TABLE `commlog` (`CommlogNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         `Note` varchar(40) NOT NULL, `CommDateTime` datetime NOT NULL, KEY `CommDateTime` (`CommDateTime`))",
        "INSERT INTO `commlog` (`Note`, `CommDateTime`) \
         SELECT CONCAT('call ', seq), NOW() - INTERVAL (200 - seq) MINUTE FROM seq_1_to_200",
    ])
    .await;
    let cfg = TablesConfig::parse(
        "tables:
  commlog:
    extraction_strategy: incremental
    incremental_columns: [CommDateTime]
    primary_incremental_column: CommDateTime
    batch_size: 50
    lookback_seconds: 2
",
    )
    .unwrap();
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    db.source_sql(&["UPDATE `commlog` SET `Note` = 'daylight time', `CommDateTime` = NOW() WHERE `CommlogNum` = 1"])
        .await;
    let daylight = db.run_two_hop(&cfg, None).await;
    assert!(daylight.succeeded(), "{daylight:?}");
    assert_eq!(phase_report(&daylight, "commlog", "load").rows_updated, 1);
    // 02:00 daylight time becomes 01:00 standard time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    common::exec_on(&server.admin, &["SET GLOBAL time_zone = '-05:00'"]).await;
    db.source_sql(&[
        "UPDATE `commlog` SET `Note` = 'standard time', `CommDateTime` = NOW() WHERE `CommlogNum` IN (5, 7)",
    ])
    .await;
    let standard = db.run_two_hop(&cfg, None).await;
    assert!(standard.succeeded(), "{standard:?}");
    db.assert_replica_same("commlog", &["CommlogNum"]).await;
    db.assert_same("commlog", &["CommlogNum"]).await;
    // Both hops stepped their watermarks back with the clock, so the hour
    // comes round again without loss.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    db.source_sql(&[
        "UPDATE `commlog` SET `Note` = 'later', `CommDateTime` = NOW() WHERE `CommlogNum` = 9",
    ])
    .await;
    let later = db.run_two_hop(&cfg, None).await;
    assert!(later.succeeded(), "{later:?}");
    db.assert_replica_same("commlog", &["CommlogNum"]).await;
    db.assert_same("commlog", &["CommlogNum"]).await;
}

/// Entry-stamped claims (the stamp never moves on an edit) of every kind of
/// value, under `reconcile: rows`.
const STAMPED: &str = "CREATE TABLE `claimproc` (
  `ClaimProcNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
  `InsPayAmt` double NOT NULL DEFAULT 0,
  `Ratio` float NULL,
  `WriteOff` decimal(12,2) NULL,
  `Remarks` varchar(60) CHARACTER SET latin1 NULL,
  `Blob` blob NULL,
  `Meta` json NULL,
  `DateCP` date NOT NULL DEFAULT '0000-00-00',
  `Seen` datetime(6) NULL,
  `SecDateTEntry` datetime NOT NULL,
  KEY `SecDateTEntry` (`SecDateTEntry`)
) ENGINE=InnoDB";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_reconciliation_repairs_what_no_watermark_sees_on_both_hops() {
    let db = TestDb::new("wm_reconcile_rows").await;
    db.source_sql(&[
        STAMPED,
        "INSERT INTO `claimproc` (`InsPayAmt`, `Ratio`, `WriteOff`, `Remarks`, `Blob`, `Meta`, `DateCP`, `Seen`, `SecDateTEntry`) \
         SELECT seq / 7, IF(seq % 5 = 0, NULL, seq / 3), seq / 4, IF(seq % 9 = 0, NULL, CONCAT('café ', seq)), \
         IF(seq % 4 = 0, NULL, UNHEX(LPAD(HEX(seq), 8, '0'))), IF(seq % 3 = 0, NULL, CONCAT('{\"n\": ', seq, '}')), \
         IF(seq % 11 = 0, '0000-00-00', '2024-01-01' + INTERVAL seq DAY), '2024-01-01 00:00:00.123456' + INTERVAL seq SECOND, \
         '2024-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_6000",
    ])
    .await;
    let cfg = TablesConfig::parse(
        "tables:
  claimproc:
    extraction_strategy: incremental
    incremental_columns: [SecDateTEntry]
    primary_incremental_column: SecDateTEntry
    reconcile: rows
    reconcile_every_runs: 1
",
    )
    .unwrap();
    let first = db.run_two_hop(&cfg, None).await;
    assert!(first.succeeded(), "{first:?}");
    // Nothing differs: equal values hash alike on every side.
    let quiet = db.run_two_hop(&cfg, None).await;
    assert!(quiet.succeeded(), "{quiet:?}");
    for phase in ["extract", "load"] {
        let report = phase_report(&quiet, "claimproc", phase);
        assert_eq!(
            (report.rows_repaired, report.rows_deleted),
            (0, 0),
            "{phase}: {report:?}"
        );
    }
    // Edits that leave the entry stamp alone, a deletion at the source, and
    // hands in the replica and the warehouse.
    db.source_sql(&[
        "UPDATE `claimproc` SET `InsPayAmt` = 12.5 WHERE `ClaimProcNum` = 10",
        "UPDATE `claimproc` SET `Ratio` = 0.1 WHERE `ClaimProcNum` = 2000",
        "UPDATE `claimproc` SET `Meta` = '{\"n\": -1}', `Blob` = NULL WHERE `ClaimProcNum` = 5000",
        "DELETE FROM `claimproc` WHERE `ClaimProcNum` = 3000",
    ])
    .await;
    db.mysql(&[
        "UPDATE `claimproc` SET `Remarks` = 'typed in the replica' WHERE `ClaimProcNum` = 4000",
    ])
    .await;
    db.pg()
        .await
        .batch_execute(
            "update raw.claimproc set \"WriteOff\" = 0 where \"ClaimProcNum\" = 50; \
             delete from raw.claimproc where \"ClaimProcNum\" = 60",
        )
        .await
        .unwrap();
    let before = db.row_versions("claimproc", "ClaimProcNum").await;
    let run = db.run_two_hop(&cfg, None).await;
    assert!(run.succeeded(), "{run:?}");
    let copy = phase_report(&run, "claimproc", "extract");
    assert_eq!((copy.rows_repaired, copy.rows_deleted), (4, 1), "{copy:?}");
    let load = phase_report(&run, "claimproc", "load");
    // 4000 is equal again in the replica; 50 and 60 were changed by hand.
    assert_eq!((load.rows_repaired, load.rows_deleted), (5, 1), "{load:?}");
    db.assert_replica_same("claimproc", &["ClaimProcNum"]).await;
    assert_eq!(
        db.assert_source_same("claimproc", &["ClaimProcNum"]).await,
        5999
    );
    let after = db.row_versions("claimproc", "ClaimProcNum").await;
    for (key, version) in &before {
        if ![10, 50, 2000, 5000, 3000].contains(key) {
            assert_eq!(after.get(key), Some(version), "row {key} was rewritten");
        }
    }
    let history = db.last_history("claimproc", "load").await;
    assert_eq!(history.get::<_, i64>("rows_repaired"), 5);
}

/// A run stopped between its passes leaves in the destination rows the
/// window read (stamped now, the highest keys) while rows with lower keys
/// and old stamps, which only the new-keys pass finds, are still unread.
/// The next run's new-keys pass must start where the last one read, not at
/// the highest key the destination holds. Here the stopped run's batch is
/// written by hand: one window row, in the replica and in the warehouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_a_stopped_run_left_unread_below_the_keys_it_wrote_still_arrive() {
    let db = TestDb::new("wm_keys_through").await;
    db.source_sql(&[VISIT, &fill_visits(300)]).await;
    let cfg = TablesConfig::from_tables([config().get("visit").unwrap().clone()]);
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    db.source_sql(&[
        "INSERT INTO `visit` (`PatNum`, `Fee`, `DateTStamp`) VALUES (1, 11, '2015-03-03 10:00:00')",
        "INSERT INTO `visit` (`PatNum`, `Fee`) VALUES (2, 12), (3, 13), (4, 14)",
    ])
    .await;
    let mut source_conn = etl_pipeline::mysql::connect(&db.source).await.unwrap();
    let top: u64 = source_conn
        .query_first("SELECT MAX(`VisitNum`) FROM `visit`")
        .await
        .unwrap()
        .unwrap();
    let (source, replica) = (&db.source.database, &db.ctx.replica.database);
    db.mysql(&[&format!(
        "INSERT INTO `{replica}`.`visit` SELECT * FROM `{source}`.`visit` WHERE `VisitNum` = {top}"
    )])
    .await;
    db.pg()
        .await
        .batch_execute(&format!(
            "insert into raw.visit (\"VisitNum\", \"PatNum\", \"Fee\", \"DateTStamp\") \
             values ({top}, 4, 14, now())"
        ))
        .await
        .unwrap();
    let run = db.run_two_hop(&cfg, None).await;
    assert!(run.succeeded(), "{run:?}");
    db.assert_replica_same("visit", &["VisitNum"]).await;
    db.assert_same("visit", &["VisitNum"]).await;
    for phase in ["extract", "load"] {
        let visit = phase_report(&run, "visit", phase);
        assert!(visit.rows_new_keys >= 1, "{phase}: {visit:?}");
    }
    // A run that read to its end resumes past the highest key it began
    // with, so the next one's key range holds nothing old to step over.
    let copied = db
        .replica_count(
            "SELECT CAST(`keys_through` AS UNSIGNED) FROM `etl_copy_status` WHERE `table_name` = 'visit'",
        )
        .await;
    assert_eq!(copied, top);
    let loaded: Vec<Option<String>> = db
        .pg_values("select keys_through from raw.etl_load_status where table_name = 'visit'")
        .await;
    assert_eq!(loaded, vec![Some(top.to_string())]);
}
