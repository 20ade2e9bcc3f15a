//! The load phase against the real MariaDB and PostgreSQL on this machine.

mod common;

use common::{TestDb, table_config};
use etl_pipeline::ErrorKind;
use etl_pipeline::config::Strategy;

const STAMPED: &str = "CREATE TABLE `stamped` (
  `Num` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
  `Note` varchar(100) NOT NULL DEFAULT '',
  `Amount` double NOT NULL DEFAULT 0,
  `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  KEY `DateTStamp` (`DateTStamp`)
) ENGINE=InnoDB";

fn stamped_config(batch_size: u32, lookback_seconds: u64) -> etl_pipeline::config::TableConfig {
    table_config(&format!(
        "tables:\n  stamped:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    primary_key: Num\n    batch_size: {batch_size}\n    \
         lookback_seconds: {lookback_seconds}\n"
    ))
}

fn is_incremental(report: &etl_pipeline::load::TableReport) -> bool {
    matches!(report.decision.strategy, Strategy::Incremental { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn securitylog_rereads_loaded_rows_without_duplicate_key_errors() {
    let db = TestDb::new("securitylog_overlap").await;
    db.mysql(&[
        "CREATE TABLE `securitylog` (`SecurityLogNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         `PermType` tinyint(3) unsigned NOT NULL DEFAULT 0, `LogDateTime` datetime NOT NULL DEFAULT '0000-00-00 00:00:00', \
         `LogText` text, `CompName` varchar(255) NOT NULL)",
        "INSERT INTO `securitylog` (`PermType`, `LogDateTime`, `LogText`, `CompName`) \
         SELECT seq % 200, '2024-05-01 08:00:00' + INTERVAL seq SECOND, CONCAT('opened chart ', seq), 'FRONT' FROM seq_1_to_3000",
    ])
    .await;
    let cfg = table_config(
        "tables:\n  securitylog:\n    extraction_strategy: incremental_chunked\n    incremental_columns: [SecurityLogNum, LogDateTime]\n    \
         primary_incremental_column: SecurityLogNum\n    primary_key: SecurityLogNum\n    batch_size: 700\n",
    );
    let first = db.load(&cfg).await.unwrap();
    assert_eq!(first.rows_inserted, 3000);
    db.mysql(&[
        "INSERT INTO `securitylog` (`PermType`, `LogDateTime`, `LogText`, `CompName`) \
                SELECT 1, NOW(), 'new', 'BACK' FROM seq_1_to_250",
    ])
    .await;
    let second = db.load(&cfg).await.unwrap();
    assert!(is_incremental(&second), "{:?}", second.decision);
    // The look-back window re-reads rows already in the warehouse: an insert
    // would fail on the primary key, the upsert carries them unchanged.
    assert!(second.rows_read > 250, "read {}", second.rows_read);
    assert_eq!(second.rows_inserted, 250);
    assert_eq!(second.rows_updated, 0);
    db.assert_same("securitylog", &["SecurityLogNum"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_rows_sharing_one_timestamp_load_across_pages_of_a_hundred() {
    let db = TestDb::new("tied_timestamps").await;
    db.mysql(&[
        STAMPED,
        "INSERT INTO `stamped` (`Note`, `DateTStamp`) SELECT CONCAT('old ', seq), '2024-01-01 10:00:00' FROM seq_1_to_50",
    ])
    .await;
    let cfg = stamped_config(100, 0);
    db.load(&cfg).await.unwrap();
    db.mysql(&["INSERT INTO `stamped` (`Note`, `DateTStamp`) \
                SELECT CONCAT('tied ', seq), '2024-02-02 12:00:00' FROM seq_1_to_1000"])
        .await;
    let report = db.load(&cfg).await.unwrap();
    assert!(is_incremental(&report), "{:?}", report.decision);
    assert_eq!(report.rows_inserted, 1000);
    assert_eq!(db.pg_count("stamped").await, 1050);
    assert_eq!(
        db.watermark("stamped", "DateTStamp").await.as_deref(),
        Some("2024-02-02 12:00:00")
    );
    db.assert_same("stamped", &["Num"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_updated_to_the_watermark_second_after_a_run_is_picked_up() {
    let db = TestDb::new("same_second_update").await;
    db.mysql(&[
        STAMPED,
        "INSERT INTO `stamped` (`Note`, `DateTStamp`) SELECT CONCAT('row ', seq), '2024-03-03 09:00:00' + INTERVAL seq SECOND FROM seq_1_to_20",
    ])
    .await;
    let cfg = stamped_config(1000, 0);
    db.load(&cfg).await.unwrap();
    let mark = db.watermark("stamped", "DateTStamp").await.unwrap();
    assert_eq!(mark, "2024-03-03 09:00:20");
    // A late transaction writes a lower key with exactly the watermark's second.
    db.mysql(&["UPDATE `stamped` SET `Note` = 'late edit', `DateTStamp` = '2024-03-03 09:00:20' WHERE `Num` = 3"])
        .await;
    let report = db.load(&cfg).await.unwrap();
    assert!(is_incremental(&report));
    assert_eq!(report.rows_updated, 1);
    db.assert_same("stamped", &["Num"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dates_never_move_the_watermark_yet_their_rows_arrive() {
    let db = TestDb::new("bad_dates").await;
    db.mysql(&[
        "CREATE TABLE `claim` (`ClaimNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `ClaimFee` double NOT NULL, \
         `SecDateTEdit` datetime NOT NULL, KEY (`SecDateTEdit`))",
        "INSERT INTO `claim` (`ClaimFee`, `SecDateTEdit`) SELECT seq, '2024-06-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_100",
    ])
    .await;
    let cfg = table_config(
        "tables:\n  claim:\n    extraction_strategy: incremental\n    incremental_columns: [SecDateTEdit]\n    \
         primary_incremental_column: SecDateTEdit\n    primary_key: ClaimNum\n    lookback_seconds: 0\n    \
         data_quality_filters: {min_date: '2000-01-01', max_date: '2030-12-31'}\n",
    );
    db.load(&cfg).await.unwrap();
    assert_eq!(
        db.watermark("claim", "SecDateTEdit").await.as_deref(),
        Some("2024-06-01 01:40:00")
    );
    db.mysql(&[
        "INSERT INTO `claim` (`ClaimFee`, `SecDateTEdit`) VALUES (1.5, '2099-01-01 00:00:00'), (2.5, '1902-01-01 00:00:00')",
        "UPDATE `claim` SET `ClaimFee` = 99, `SecDateTEdit` = '2024-07-01 00:00:00' WHERE `ClaimNum` = 10",
    ])
    .await;
    let report = db.load(&cfg).await.unwrap();
    assert!(is_incremental(&report));
    assert_eq!(report.rows_outside_bounds, 2);
    assert_eq!(
        db.watermark("claim", "SecDateTEdit").await.as_deref(),
        Some("2024-07-01 00:00:00")
    );
    db.assert_same("claim", &["ClaimNum"]).await;
    // The 2099 row did not move the watermark, so later edits still arrive.
    db.mysql(&["UPDATE `claim` SET `ClaimFee` = 7, `SecDateTEdit` = '2024-08-01 00:00:00' WHERE `ClaimNum` = 20"])
        .await;
    let report = db.load(&cfg).await.unwrap();
    assert_eq!(report.rows_updated, 1);
    db.assert_same("claim", &["ClaimNum"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_dates_become_null_and_are_counted_per_column() {
    let db = TestDb::new("zero_dates").await;
    db.mysql(&[
        "CREATE TABLE `appointment` (`AptNum` bigint NOT NULL PRIMARY KEY, `AptDateTime` datetime NOT NULL DEFAULT '0000-00-00 00:00:00', \
         `DateTimeArrived` date NOT NULL DEFAULT '0000-00-00', `Sentinel` date NOT NULL DEFAULT '0001-01-01')",
        "INSERT INTO `appointment` VALUES (1, '0000-00-00 00:00:00', '2020-00-15', '0001-01-01'), \
         (2, '2023-05-05 10:30:00', '0000-00-00', '2023-05-05'), (3, '2020-01-00 00:00:00', '2020-02-29', '0001-01-01')",
    ])
    .await;
    let cfg = table_config("tables:\n  appointment:\n    extraction_strategy: full_table\n");
    let report = db.load(&cfg).await.unwrap();
    assert_eq!(report.zero_dates.get("AptDateTime"), Some(&2));
    assert_eq!(report.zero_dates.get("DateTimeArrived"), Some(&2));
    assert_eq!(
        report.zero_dates.get("Sentinel"),
        None,
        "0001-01-01 is a real date"
    );
    let client = db.pg().await;
    let row = client
        .query_one(
            "select count(*) filter (where \"AptDateTime\" is null), count(*) filter (where \"DateTimeArrived\" is null), \
             min(\"Sentinel\")::text from raw.appointment",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(row.get::<_, i64>(1), 2);
    assert_eq!(row.get::<_, String>(2), "0001-01-01");
}
