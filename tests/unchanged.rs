//! A run after nothing changed reads none of the rows its look-back window
//! (or its future and no-date stamps) re-reads, because each range is first
//! compared in the databases; and every change inside such a range still
//! arrives: an edit that leaves the stamp alone, a row that commits late
//! below the watermark, a column added, a row stamped in the future edited.

mod common;

use common::{PATPLAN, TestDb, phase_report};
use etl_pipeline::config::TablesConfig;

/// Stamped now, so every row lies in the look-back window.
const VISIT: &str = "CREATE TABLE `visit` (
  `VisitNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
  `PatNum` bigint NOT NULL,
  `Fee` double NOT NULL DEFAULT 0,
  `Note` varchar(40) NULL,
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
    lookback_seconds: 3600
  patplan:
    extraction_strategy: incremental
    incremental_columns: [SecDateTEntry]
    primary_incremental_column: SecDateTEntry
    batch_size: 500
    lookback_seconds: 3600
",
    )
    .unwrap()
}

async fn assert_converged(db: &TestDb) {
    db.assert_replica_same("visit", &["VisitNum"]).await;
    db.assert_same("visit", &["VisitNum"]).await;
    db.assert_replica_same("patplan", &["PatNum", "Ordinal"])
        .await;
    db.assert_same("patplan", &["PatNum", "Ordinal"]).await;
}

/// Rows read and rows found unchanged by each phase of `table`.
fn reads(run: &etl_pipeline::pipeline::RunReport, table: &str) -> [(u64, u64); 2] {
    ["extract", "load"].map(|phase| {
        let r = phase_report(run, table, phase);
        (r.rows_read, r.rows_unchanged)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_after_no_change_reads_nothing_and_every_change_still_arrives() {
    let mut db = TestDb::new("unchanged_window").await;
    // What a run does with a table it reads: not skipped by its stamps.
    db.recheck = true;
    db.source_sql(&[
        VISIT,
        "INSERT INTO `visit` (`PatNum`, `Fee`) SELECT seq % 97, seq FROM seq_1_to_3000",
        // Rows an hour ahead of the clock and with no date: re-read ranges too.
        "INSERT INTO `visit` (`PatNum`, `Fee`, `DateTStamp`) \
         SELECT seq, seq, NOW() + INTERVAL 2 HOUR FROM seq_1_to_5",
        PATPLAN,
        "INSERT INTO `patplan` (`PatNum`, `Ordinal`, `SecDateTEntry`) \
         SELECT seq, 1, NOW() - INTERVAL 10 MINUTE FROM seq_1_to_400",
        "INSERT INTO `patplan` (`PatNum`, `Ordinal`) SELECT seq, 2 FROM seq_1_to_7",
    ])
    .await;
    let cfg = config();
    let first = db.run_two_hop(&cfg, None).await;
    assert!(first.succeeded(), "{first:?}");
    assert_converged(&db).await;

    // Nothing changed: the copy compares the window, the future rows and
    // the no-date rows with the source's and reads none. The load compares
    // them with what they were when it last read the same ranges: the first
    // time it meets a range it reads it, the next time it does not.
    let again = db.run_two_hop(&cfg, None).await;
    assert!(again.succeeded(), "{again:?}");
    assert_eq!(reads(&again, "visit"), [(0, 3005), (3005, 0)]);
    assert_eq!(reads(&again, "patplan"), [(0, 407), (407, 0)]);
    // The future rows are still counted, as every run counts them.
    assert_eq!(phase_report(&again, "visit", "extract").rows_future, 5);
    let quiet = db.run_two_hop(&cfg, None).await;
    assert_eq!(reads(&quiet, "visit"), [(0, 3005), (0, 3005)]);
    assert_eq!(reads(&quiet, "patplan"), [(0, 407), (0, 407)]);

    // An edit that keeps its stamp (written in the same second, or by a
    // statement that sets the stamp itself), a row that commits late below
    // the watermark with no key the new-keys pass would find, and an edit of
    // a row stamped in the future.
    db.source_sql(&[
        "UPDATE `visit` SET `Fee` = -1, `DateTStamp` = `DateTStamp` WHERE `VisitNum` = 7",
        "INSERT INTO `patplan` (`PatNum`, `Ordinal`, `SecDateTEntry`) \
         VALUES (1, 3, NOW() - INTERVAL 20 MINUTE)",
        "UPDATE `patplan` SET `Note` = 'no date, edited' WHERE `PatNum` = 3 AND `Ordinal` = 2",
        "UPDATE `visit` SET `Note` = 'future, edited', `DateTStamp` = `DateTStamp` \
         WHERE `DateTStamp` > NOW() + INTERVAL 1 HOUR ORDER BY `VisitNum` LIMIT 1",
    ])
    .await;
    let changed = db.run_two_hop(&cfg, None).await;
    assert!(changed.succeeded(), "{changed:?}");
    assert_converged(&db).await;
    for (table, phase) in [("visit", "extract"), ("visit", "load")] {
        let r = phase_report(&changed, table, phase);
        // Row 7 and a future row.
        assert!(
            r.rows_read > 0 && r.rows_updated == 2,
            "{table} {phase}: {r:?}"
        );
    }
    let warehouse = db.pg().await;
    let fee: f64 = warehouse
        .query_one("select \"Fee\" from raw.visit where \"VisitNum\" = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(fee, -1.0);
    assert_eq!(db.pg_count("patplan").await, 408);

    // A column added to the source changes every row's text: read again,
    // and the new column arrives.
    db.source_sql(&["ALTER TABLE `visit` ADD COLUMN `Extra` int NOT NULL DEFAULT 4"])
        .await;
    let added = db.run_two_hop(&cfg, None).await;
    assert!(added.succeeded(), "{added:?}");
    assert_converged(&db).await;
    // The load rewrote the table in full for its new column; it keeps no
    // comparison from a full load, so it reads the window once more.
    let once_more = db.run_two_hop(&cfg, None).await;
    assert_eq!(reads(&once_more, "visit"), [(0, 3005), (3005, 0)]);
    let settled = db.run_two_hop(&cfg, None).await;
    assert_eq!(reads(&settled, "visit"), [(0, 3005), (0, 3005)]);

    // New rows past the watermark: their window is read without being
    // compared, and what the next run would compare is taken beside it, so
    // the run after reads nothing in either hop.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    db.source_sql(&["INSERT INTO `visit` (`PatNum`, `Fee`) SELECT seq, seq FROM seq_1_to_20"])
        .await;
    let new_rows = db.run_two_hop(&cfg, None).await;
    assert!(new_rows.succeeded(), "{new_rows:?}");
    assert_eq!(phase_report(&new_rows, "visit", "load").rows_inserted, 20);
    let after = db.run_two_hop(&cfg, None).await;
    assert_eq!(reads(&after, "visit"), [(0, 3025), (0, 3025)]);
    assert_converged(&db).await;
}

/// Tracking tables an earlier version made (without the columns the load
/// keeps its fingerprints, both hops their tokens and where their new-keys
/// passes resume in, the load its rows loaded in total, and the history
/// what started each run) gain them at the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_tables_of_an_earlier_version_gain_the_new_columns() {
    let mut db = TestDb::new("unchanged_upgrade").await;
    db.recheck = true;
    db.source_sql(&[
        VISIT,
        "INSERT INTO `visit` (`PatNum`, `Fee`) SELECT seq, seq FROM seq_1_to_50",
        PATPLAN,
    ])
    .await;
    let warehouse = db.pg().await;
    warehouse
        .batch_execute(
            "alter table raw.etl_load_status drop column window_fingerprint, \
             drop column unchanged_token, drop column unchanged_at, drop column keys_through, \
             drop column rows_loaded_total; \
             alter table raw.etl_run_history drop column triggered_by, drop column schedule_name",
        )
        .await
        .unwrap();
    db.mysql(&[
        "ALTER TABLE `etl_copy_status` DROP COLUMN `unchanged_token`, DROP COLUMN `unchanged_at`, \
         DROP COLUMN `keys_through`",
    ])
    .await;
    let cfg = config();
    let first = db.run_two_hop(&cfg, None).await;
    assert!(first.succeeded(), "{first:?}");
    db.run_two_hop(&cfg, None).await;
    let again = db.run_two_hop(&cfg, None).await;
    assert_eq!(reads(&again, "visit"), [(0, 50), (0, 50)]);
    let tokens = db
        .replica_count(
            "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = 'etl_copy_status' \
             AND COLUMN_NAME IN ('unchanged_token', 'unchanged_at', 'keys_through')",
        )
        .await;
    assert_eq!(tokens, 3);
    let history: Vec<String> = db
        .pg_values(
            "select distinct triggered_by from raw.etl_run_history where table_name = 'visit'",
        )
        .await;
    assert_eq!(history, vec!["manual".to_string()]);
}

/// A masked column's values differ in the replica by design, so the copy
/// cannot compare them: a table with one is read as before, and an edit of
/// the masked column alone, keeping the stamp, still arrives (masked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_a_masked_column_alone_still_arrives() {
    let db = TestDb::new("unchanged_masked").await;
    db.source_sql(&[
        VISIT,
        "INSERT INTO `visit` (`PatNum`, `Fee`, `Note`) SELECT seq, seq, 'old' FROM seq_1_to_50",
    ])
    .await;
    let cfg = TablesConfig::parse(
        "tables:
  visit:
    extraction_strategy: incremental
    incremental_columns: [DateTStamp]
    primary_incremental_column: DateTStamp
    lookback_seconds: 3600
    mask_columns: {Note: hash}
",
    )
    .unwrap();
    assert!(db.run_two_hop(&cfg, None).await.succeeded());
    db.source_sql(&[
        "UPDATE `visit` SET `Note` = 'new', `DateTStamp` = `DateTStamp` WHERE `VisitNum` = 3",
    ])
    .await;
    let run = db.run_two_hop(&cfg, None).await;
    assert!(run.succeeded(), "{run:?}");
    assert_eq!(phase_report(&run, "visit", "extract").rows_updated, 1);
    let notes: Vec<String> = db
        .pg_values(
            "select \"Note\" from raw.visit where \"VisitNum\" in (3, 4) order by \"VisitNum\"",
        )
        .await;
    assert_eq!(notes.len(), 2);
    assert_ne!(
        notes[0], notes[1],
        "the edit of row 3 reached the warehouse"
    );
    assert!(!notes.iter().any(|n| n == "new" || n == "old"), "{notes:?}");
}
