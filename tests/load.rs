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
    // 1902 is below the quality bounds; 2099 is past the clock, which comes
    // before max_date.
    assert_eq!((report.rows_outside_bounds, report.rows_future), (1, 1));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_value_by_value() {
    let db = TestDb::new("all_types").await;
    db.mysql(&[
        "CREATE TABLE `types` (
          `Id` int NOT NULL PRIMARY KEY,
          `TinyS` tinyint(4), `TinyU` tinyint(3) unsigned, `Flag` tinyint(1), `NotFlag` tinyint(1),
          `SmallS` smallint, `SmallU` smallint unsigned, `MediumS` mediumint, `MediumU` mediumint unsigned,
          `IntS` int, `IntU` int unsigned, `BigS` bigint, `BigU` bigint unsigned,
          `Money` decimal(10,2), `Wide` decimal(65,30), `Ratio` float, `Fee` double,
          `Bit1` bit(1), `Bit13` bit(13), `Bit64` bit(64),
          `Code` char(5), `Name` varchar(50), `Note` text, `Long` longtext,
          `Latin` varchar(40) CHARACTER SET latin1,
          `Bin` binary(4), `VarBin` varbinary(10), `Blob` longblob,
          `Kind` enum('new','done','void'), `Tags` set('a','b','c'), `Doc` json,
          `Day` date, `Moment` datetime(6), `Stamp` timestamp(3) NULL, `Span` time, `Yr` year
        ) DEFAULT CHARSET=utf8mb4",
        "INSERT INTO `types` VALUES
          (1, -128, 255, 1, 2, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
           -9223372036854775808, 18446744073709551615, -12345678.90, 12345678901234567890123456789012345.123456789012345678901234567890,
           3.25, -1234567.123456789, b'1', b'1010101010101', b'1111111111111111111111111111111111111111111111111111111111111111',
           'ab', 'tooth 😁 𝄞 ñ', 'multi\nline\ttext', REPEAT('x', 70000), 'café naïve',
           x'00FF10', x'DEADBEEF', x'000102', 'done', 'a,c', '{\"a\": [1, 2, {\"b\": null}], \"c\": \"ü\"}',
           '0001-01-01', '2024-02-29 23:59:59.999999', '2038-01-19 03:14:07.123', '838:59:59', 2155),
          (2, 127, 0, 0, 0, 32767, 0, 8388607, 0, 2147483647, 0, 9223372036854775807, 0, 0.01, -0.000000000000000000000000000001,
           -0.5, 1e300, b'0', b'0', b'0', '', '', '', '', '', x'', x'', x'', 'new', '', '[]',
           '9999-12-31', '1000-01-01 00:00:00', '1970-01-01 00:00:01', '-838:59:59', 1901),
          (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    ])
    .await;
    let cfg = table_config("tables:\n  types:\n    extraction_strategy: full_table\n");
    let report = db.load(&cfg).await.unwrap();
    assert_eq!(report.rows_inserted, 3);
    let types = db.pg_types("types").await;
    let expect = [
        ("TinyS", "smallint"),
        ("TinyU", "smallint"),
        ("Flag", "boolean"),
        ("NotFlag", "smallint"),
        ("SmallU", "integer"),
        ("MediumU", "integer"),
        ("IntU", "bigint"),
        ("BigU", "numeric(20,0)"),
        ("Money", "numeric(10,2)"),
        ("Wide", "numeric(65,30)"),
        ("Ratio", "real"),
        ("Fee", "double precision"),
        ("Bit13", "bit(13)"),
        ("Code", "character(5)"),
        ("Name", "character varying(50)"),
        ("Latin", "character varying(40)"),
        ("Blob", "bytea"),
        ("Kind", "text"),
        ("Doc", "jsonb"),
        ("Day", "date"),
        ("Moment", "timestamp(6) without time zone"),
        ("Stamp", "timestamp(3) without time zone"),
        ("Span", "interval"),
        ("Yr", "smallint"),
    ];
    for (column, ty) in expect {
        assert_eq!(types.get(column).map(String::as_str), Some(ty), "{column}");
    }
    db.assert_same("types", &["Id"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_full_on_a_loaded_table_reloads_it() {
    let db = TestDb::new("force_full").await;
    db.mysql(&[
        STAMPED,
        "INSERT INTO `stamped` (`Note`) SELECT CONCAT('row ', seq) FROM seq_1_to_500",
    ])
    .await;
    let cfg = stamped_config(100, 0);
    db.load(&cfg).await.unwrap();
    let client = db.pg().await;
    client
        .batch_execute("delete from raw.stamped where \"Num\" <= 10; update raw.stamped set \"Note\" = 'drift'")
        .await
        .unwrap();
    let plain = db.load(&cfg).await.unwrap();
    assert!(is_incremental(&plain));
    let forced = db.load_with(&cfg, true).await.unwrap();
    assert_eq!(forced.decision.strategy, Strategy::Full);
    assert!(forced.decision.reason.contains("--force-full"));
    assert_eq!(forced.rows_inserted, 500);
    db.assert_same("stamped", &["Num"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_with_no_changes_changes_nothing() {
    let db = TestDb::new("no_changes").await;
    db.mysql(&[
        STAMPED,
        "INSERT INTO `stamped` (`Note`, `DateTStamp`) SELECT CONCAT('row ', seq), NOW() - INTERVAL seq SECOND FROM seq_1_to_300",
    ])
    .await;
    let cfg = stamped_config(50, 3600);
    db.load(&cfg).await.unwrap();
    let client = db.pg().await;
    let versions =
        "select string_agg(xmin::text || ':' || ctid::text, ',' order by \"Num\") from raw.stamped";
    let before: String = client.query_one(versions, &[]).await.unwrap().get(0);
    let mark_before = db.watermark("stamped", "DateTStamp").await;
    let report = db.load(&cfg).await.unwrap();
    assert!(is_incremental(&report));
    assert_eq!(
        report.rows_read, 300,
        "the look-back window re-reads every row"
    );
    assert_eq!((report.rows_inserted, report.rows_updated), (0, 0));
    let after: String = client.query_one(versions, &[]).await.unwrap().get(0);
    assert_eq!(before, after, "no row version was rewritten");
    assert_eq!(mark_before, db.watermark("stamped", "DateTStamp").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_source_column_is_added_and_filled_on_the_next_run() {
    let db = TestDb::new("new_column").await;
    db.mysql(&[
        STAMPED,
        "INSERT INTO `stamped` (`Note`) SELECT CONCAT('row ', seq) FROM seq_1_to_100",
    ])
    .await;
    let cfg = stamped_config(1000, 0);
    db.load(&cfg).await.unwrap();
    db.mysql(&["ALTER TABLE `stamped` ADD COLUMN `IsHidden` tinyint(4) NOT NULL DEFAULT 3, ADD COLUMN `Odd Name \"q\"` varchar(10) DEFAULT 'x'"])
        .await;
    let report = db.load(&cfg).await.unwrap();
    assert_eq!(report.decision.strategy, Strategy::Full);
    assert!(
        report.decision.reason.contains("IsHidden"),
        "{}",
        report.decision.reason
    );
    let types = db.pg_types("stamped").await;
    assert_eq!(types.get("IsHidden").map(String::as_str), Some("smallint"));
    assert!(types.contains_key("Odd Name \"q\""));
    db.assert_same("stamped", &["Num"]).await;
    let next = db.load(&cfg).await.unwrap();
    assert!(is_incremental(&next), "{:?}", next.decision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_column_is_filled_even_when_the_refresh_after_adding_it_failed() {
    let db = TestDb::new("new_column_failed").await;
    db.mysql(&[
        STAMPED,
        "INSERT INTO `stamped` (`Note`, `DateTStamp`) SELECT CONCAT('row ', seq), '2024-01-01' + INTERVAL seq MINUTE \
         FROM seq_1_to_100",
    ])
    .await;
    let cfg = stamped_config(1000, 0);
    db.load(&cfg).await.unwrap();
    // The column reaches the warehouse, then the refresh fails (a value it
    // cannot carry; a kill or a lost connection would do the same).
    db.mysql(&[
        "ALTER TABLE `stamped` ADD COLUMN `IsHidden` tinyint(4) NOT NULL DEFAULT 3",
        "UPDATE `stamped` SET `Note` = CONCAT('bad', CHAR(0)) WHERE `Num` = 50",
    ])
    .await;
    db.load(&cfg).await.unwrap_err();
    assert!(db.pg_types("stamped").await.contains_key("IsHidden"));
    db.mysql(&["UPDATE `stamped` SET `Note` = 'fixed' WHERE `Num` = 50"])
        .await;
    let report = db.load(&cfg).await.unwrap();
    assert_eq!(report.decision.strategy, Strategy::Full, "{report:?}");
    db.assert_same("stamped", &["Num"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dbt_view_over_a_raw_table_survives_a_full_refresh() {
    let db = TestDb::new("view_survives").await;
    db.mysql(&[
        STAMPED,
        "INSERT INTO `stamped` (`Note`, `Amount`) SELECT CONCAT('row ', seq), seq FROM seq_1_to_200",
    ])
    .await;
    let cfg = stamped_config(1000, 0);
    db.load(&cfg).await.unwrap();
    let client = db.pg().await;
    client
        .batch_execute(
            "create schema staging; \
             create view staging.stg_stamped as select \"Num\" as num, \"Amount\" as amount from raw.stamped",
        )
        .await
        .unwrap();
    db.mysql(&["UPDATE `stamped` SET `Amount` = `Amount` * 2"])
        .await;
    db.load_with(&cfg, true).await.unwrap();
    let total: f64 = client
        .query_one("select sum(amount) from staging.stg_stamped", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 2.0 * (200.0 * 201.0 / 2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_primary_key_is_refreshed_in_full_with_a_warning() {
    let db = TestDb::new("no_key").await;
    db.mysql(&[
        "CREATE TABLE `tmppatient` (`PatNum` bigint, `LName` varchar(100), `SecDateTEdit` datetime)",
        "INSERT INTO `tmppatient` SELECT seq, CONCAT('Smith', seq), NOW() FROM seq_1_to_40",
        "INSERT INTO `tmppatient` SELECT seq, CONCAT('Smith', seq), NOW() FROM seq_1_to_5",
    ])
    .await;
    let cfg = table_config(
        "tables:\n  tmppatient:\n    extraction_strategy: incremental\n    incremental_columns: [SecDateTEdit]\n    primary_incremental_column: SecDateTEdit\n",
    );
    db.load(&cfg).await.unwrap();
    db.mysql(&["DELETE FROM `tmppatient` WHERE `PatNum` > 30"])
        .await;
    let report = db.load(&cfg).await.unwrap();
    assert_eq!(report.decision.strategy, Strategy::Full);
    assert!(report.decision.reason.contains("no primary key"));
    assert!(report.warnings.iter().any(|w| w.contains("no primary key")));
    assert_eq!(db.pg_count("tmppatient").await, 35);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_cannot_be_carried_fails_the_table_naming_column_and_key() {
    let db = TestDb::new("nul_bytes").await;
    db.mysql(&[
        "CREATE TABLE `commlog` (`CommlogNum` bigint NOT NULL PRIMARY KEY, `Note` text)",
        "INSERT INTO `commlog` VALUES (1, 'fine'), (2, CONCAT('bad', CHAR(0), 'byte'))",
    ])
    .await;
    let cfg = table_config("tables:\n  commlog:\n    extraction_strategy: full_table\n");
    let err = db.load(&cfg).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Value);
    let message = err.to_string();
    assert!(
        message.contains("table `commlog`, column `Note`, key CommlogNum=2"),
        "{message}"
    );
    assert!(message.contains("NUL byte"), "{message}");
    assert_eq!(db.pg_count("commlog").await, 0, "nothing half-loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn or_across_columns_catches_a_change_seen_by_either_column() {
    let db = TestDb::new("or_columns").await;
    db.mysql(&[
        "CREATE TABLE `claimproc` (`ClaimProcNum` bigint NOT NULL PRIMARY KEY, `InsPayAmt` double NOT NULL,
          `SecDateTEdit` datetime NOT NULL, `DateCP` date NOT NULL, KEY (`SecDateTEdit`), KEY (`DateCP`))",
        "INSERT INTO `claimproc` SELECT seq, seq, '2024-01-01 00:00:00' + INTERVAL seq MINUTE, '2024-01-01' + INTERVAL seq DAY FROM seq_1_to_100",
    ])
    .await;
    let cfg = table_config(
        "tables:\n  claimproc:\n    extraction_strategy: incremental\n    incremental_columns: [SecDateTEdit, DateCP]\n    \
         primary_incremental_column: none\n    primary_key: ClaimProcNum\n    lookback_seconds: 0\n    \
         data_quality_filters: {min_date: '2000-01-01', max_date: '2100-01-01'}\n",
    );
    db.load(&cfg).await.unwrap();
    // One row changes only its SecDateTEdit, another only its DateCP: AND
    // would miss both, OR sees each through its own watermark.
    db.mysql(&[
        "UPDATE `claimproc` SET `InsPayAmt` = 1000, `SecDateTEdit` = '2025-01-01 00:00:00' WHERE `ClaimProcNum` = 5",
        "UPDATE `claimproc` SET `InsPayAmt` = 2000, `DateCP` = '2025-06-01' WHERE `ClaimProcNum` = 6",
    ])
    .await;
    let report = db.load(&cfg).await.unwrap();
    assert!(is_incremental(&report), "{:?}", report.decision);
    assert_eq!(report.rows_updated, 2);
    assert_eq!(
        db.watermark("claimproc", "DateCP").await.as_deref(),
        Some("2025-06-01 00:00:00")
    );
    db.assert_same("claimproc", &["ClaimProcNum"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_fails_alone_and_the_run_history_says_why() {
    let db = TestDb::new("missing_table").await;
    db.mysql(&[STAMPED, "INSERT INTO `stamped` (`Note`) VALUES ('a')"])
        .await;
    let config = etl_pipeline::config::TablesConfig::parse(
        "tables:\n  stamped:\n    extraction_strategy: full_table\n  ghost:\n    extraction_strategy: full_table\n",
    )
    .unwrap();
    let report = db.run(&config).await;
    assert!(!report.succeeded());
    let ghost = report.outcomes.iter().find(|o| o.table == "ghost").unwrap();
    let err = ghost.result.as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Schema);
    assert!(
        err.to_string().contains("table `ghost` does not exist"),
        "{err}"
    );
    assert!(
        report
            .outcomes
            .iter()
            .any(|o| o.table == "stamped" && o.result.is_ok())
    );
    let client = db.pg().await;
    let rows = client
        .query("select table_name::text, status::text, coalesce(error, '') from raw.etl_run_history order by table_name, id", &[])
        .await
        .unwrap();
    let statuses: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        statuses,
        vec![
            ("ghost".into(), "failed".into()),
            ("ghost".into(), "alert".into()),
            ("stamped".into(), "success".into())
        ]
    );
    let status: String = client
        .query_one(
            "select load_status::text from raw.etl_load_status where table_name = 'ghost'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_before_init_says_to_run_init() {
    let db = TestDb::new("not_initialized").await;
    let client = db.pg().await;
    client
        .batch_execute("drop table raw.etl_load_watermark")
        .await
        .unwrap();
    let config = etl_pipeline::config::TablesConfig::parse(
        "tables:\n  a:\n    extraction_strategy: full_table\n",
    )
    .unwrap();
    let err = db.try_run(&config, 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotInitialized);
    assert!(err.to_string().contains("run `etl-pipeline init`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_mysql_connection_is_retried_and_the_load_converges() {
    let db = TestDb::new("dropped_connection").await;
    db.mysql(&[
        STAMPED,
        "INSERT INTO `stamped` (`Note`, `Amount`) SELECT REPEAT('n', 90), seq FROM seq_1_to_300000",
    ])
    .await;
    let config = etl_pipeline::config::TablesConfig::parse(
        "tables:\n  stamped:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    primary_key: Num\n",
    )
    .unwrap();
    let database = db.ctx.replica.database.clone();
    let killer = {
        let admin = db.mysql_admin.clone();
        tokio::spawn(async move {
            let mut conn = etl_pipeline::mysql::connect(&admin).await.unwrap();
            for _ in 0..4000 {
                if common::kill_reader_of(&mut conn, &database, Some("stamped")).await {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            false
        })
    };
    let report = db.run(&config).await;
    assert!(
        killer.await.unwrap(),
        "the load's MySQL connection was never seen"
    );
    common::assert_retried(&report, "stamped", "load", "");
    db.assert_same("stamped", &["Num"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_widened_source_column_is_widened_in_the_warehouse_and_reloaded() {
    let db = TestDb::new("widened_column").await;
    db.mysql(&[
        "CREATE TABLE `fee` (`FeeNum` bigint NOT NULL PRIMARY KEY, `Amount` int NOT NULL, `Code` varchar(10) NOT NULL, \
         `SecDateTEdit` datetime NOT NULL)",
        "INSERT INTO `fee` VALUES (1, 10, 'D0120', '2024-01-01 00:00:00'), (2, 20, 'D0140', '2024-01-01 00:00:01')",
    ])
    .await;
    let cfg = table_config(
        "tables:\n  fee:\n    extraction_strategy: incremental\n    incremental_columns: [SecDateTEdit]\n    \
         primary_incremental_column: SecDateTEdit\n",
    );
    db.load(&cfg).await.unwrap();
    // An upgrade widens both columns; MySQL's ALTER does not touch SecDateTEdit.
    db.mysql(&[
        "ALTER TABLE `fee` MODIFY `Amount` bigint NOT NULL, MODIFY `Code` varchar(40) NOT NULL",
        "UPDATE `fee` SET `Amount` = 9000000000, `Code` = 'D0120-with-a-much-longer-code', \
         `SecDateTEdit` = '2024-02-01 00:00:00' WHERE `FeeNum` = 1",
    ])
    .await;
    let report = db.load(&cfg).await.unwrap();
    assert_eq!(
        report.decision.strategy,
        Strategy::Full,
        "{:?}",
        report.warnings
    );
    assert!(
        report.decision.reason.contains("Amount, Code"),
        "{}",
        report.decision.reason
    );
    let types = db.pg_types("fee").await;
    assert_eq!(types["Amount"], "bigint");
    assert_eq!(types["Code"], "character varying(40)");
    db.assert_same("fee", &["FeeNum"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decimal_that_gained_places_is_widened_to_hold_both_and_never_rounded() {
    let db = TestDb::new("decimal_scale").await;
    db.mysql(&[
        "CREATE TABLE `fee` (`FeeNum` bigint NOT NULL PRIMARY KEY, `Amount` decimal(10,2) NOT NULL, \
         `Seen` datetime NOT NULL, `SecDateTEdit` datetime NOT NULL)",
        "INSERT INTO `fee` VALUES (1, 12345678.91, '2024-01-01 10:00:00', '2024-01-01 00:00:00')",
    ])
    .await;
    let cfg = table_config(
        "tables:\n  fee:\n    extraction_strategy: incremental\n    incremental_columns: [SecDateTEdit]\n    \
         primary_incremental_column: SecDateTEdit\n",
    );
    db.load(&cfg).await.unwrap();
    // Four decimal places now, two fewer integer digits: numeric(10,4) would
    // not hold row 1, numeric(10,2) would round row 2.
    db.mysql(&[
        "ALTER TABLE `fee` MODIFY `Amount` decimal(10,4) NOT NULL",
        "UPDATE `fee` SET `Amount` = 1.2345, `SecDateTEdit` = '2024-02-01 00:00:00' WHERE `FeeNum` = 1",
        "INSERT INTO `fee` VALUES (2, 123456.0001, '2024-01-01 10:00:00', '2024-02-01 00:00:00')",
    ])
    .await;
    let report = db.load(&cfg).await.unwrap();
    assert!(report.decision.reason.contains("Amount"), "{report:?}");
    assert_eq!(db.pg_types("fee").await["Amount"], "numeric(12,4)");
    db.assert_same("fee", &["FeeNum"]).await;

    // A column the load cannot widen (a view over it) and values finer than
    // it keeps: the table fails, naming the value, instead of rounding it.
    db.pg()
        .await
        .batch_execute("create view raw.fee_view as select \"Amount\", \"Seen\" from raw.fee")
        .await
        .unwrap();
    db.mysql(&[
        "ALTER TABLE `fee` MODIFY `Amount` decimal(12,6) NOT NULL, MODIFY `Seen` datetime(3) NOT NULL",
        "UPDATE `fee` SET `Amount` = 1.234567, `SecDateTEdit` = '2024-03-01 00:00:00' WHERE `FeeNum` = 1",
    ])
    .await;
    let err = db.load(&cfg).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Value, "{err}");
    assert!(
        err.to_string().contains("1.234567 has 6 decimal places"),
        "{err}"
    );
    db.mysql(&[
        "UPDATE `fee` SET `Amount` = 1.5, `Seen` = '2024-01-01 10:00:00.250' WHERE `FeeNum` = 1",
    ])
    .await;
    let err = db.load(&cfg).await.unwrap_err();
    assert!(err.to_string().contains("fraction .250000"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_past_a_day_widens_its_time_column_to_interval_and_loads() {
    let db = TestDb::new("time_outgrown").await;
    db.mysql(&[
        "CREATE TABLE `schedule` (`ScheduleNum` bigint NOT NULL PRIMARY KEY, `StopTime` time NOT NULL, \
         `DateTStamp` datetime NOT NULL)",
        "INSERT INTO `schedule` VALUES (1, '17:00:00', '2024-01-01 00:00:00'), (2, '18:30:00', '2024-01-01 00:00:01')",
    ])
    .await;
    let cfg = table_config(
        "tables:\n  schedule:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n",
    );
    db.load(&cfg).await.unwrap();
    assert_eq!(
        db.pg_types("schedule").await["StopTime"],
        "time(0) without time zone"
    );
    db.mysql(&["UPDATE `schedule` SET `StopTime` = '30:15:00', `DateTStamp` = '2024-02-01 00:00:00' WHERE `ScheduleNum` = 2"])
        .await;
    let report = db.load(&cfg).await.unwrap();
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("StopTime hold values past 24 hours")),
        "{report:?}"
    );
    assert_eq!(db.pg_types("schedule").await["StopTime"], "interval");
    db.assert_same("schedule", &["ScheduleNum"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_a_small_table_keep_the_old_rows_during_a_full_refresh_without_waiting() {
    let db = TestDb::new("reader_not_blocked").await;
    db.mysql(&[
        STAMPED,
        "INSERT INTO `stamped` (`Note`, `Amount`) SELECT 'old', seq FROM seq_1_to_200",
    ])
    .await;
    let cfg = stamped_config(1000, 0);
    db.load(&cfg).await.unwrap();
    let mut reader = db.pg().await;
    let tx = reader
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    let old_sum = "select count(*), count(*) filter (where \"Note\" = 'old') from raw.stamped";
    let before = tx.query_one(old_sum, &[]).await.unwrap();
    assert_eq!(
        (before.get::<_, i64>(0), before.get::<_, i64>(1)),
        (200, 200)
    );
    db.mysql(&["UPDATE `stamped` SET `Note` = 'new'"]).await;
    let refresh =
        tokio::time::timeout(std::time::Duration::from_secs(20), db.load_with(&cfg, true)).await;
    assert!(refresh.expect("the refresh waited on the reader").is_ok());
    let during = tx.query_one(old_sum, &[]).await.unwrap();
    assert_eq!(
        (during.get::<_, i64>(0), during.get::<_, i64>(1)),
        (200, 200),
        "the reader's snapshot still holds every old row"
    );
    tx.commit().await.unwrap();
    db.assert_same("stamped", &["Num"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_full_refresh_builds_the_tables_indexes_again() {
    let db = TestDb::new("ld_reindex").await;
    // About 36 MiB in PostgreSQL: past the size where a refresh truncates.
    db.mysql(&[
        "CREATE TABLE `document` (`DocNum` bigint NOT NULL PRIMARY KEY, `PatNum` bigint NOT NULL, \
         `Note` text NOT NULL)",
        "INSERT INTO `document` SELECT seq, seq % 97, REPEAT(MD5(seq), 45) FROM seq_1_to_25000",
    ])
    .await;
    let cfg = common::table_config(
        "tables:\n  document:\n    extraction_strategy: full_table\n    primary_key: DocNum\n",
    );
    db.load(&cfg).await.unwrap();
    let client = db.pg().await;
    client
        .batch_execute(
            "create index document_patient on raw.document (\"PatNum\") where \"PatNum\" > 0; \
             create view public.document_notes as select \"DocNum\", \"Note\" from raw.document",
        )
        .await
        .unwrap();
    let indexes = || async {
        let rows = db
            .pg()
            .await
            .query(
                "select pg_get_indexdef(indexrelid) from pg_index where indrelid = 'raw.document'::regclass \
                 order by 1",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let before = indexes().await;
    assert_eq!(before.len(), 2, "{before:?}");
    let size: i64 = client
        .query_one("select pg_relation_size('raw.document')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        size > etl_pipeline::load::DELETE_REFRESH_MAX_BYTES,
        "{size}"
    );
    db.mysql(&["UPDATE `document` SET `PatNum` = 0 WHERE `DocNum` <= 10"])
        .await;
    db.load_with(&cfg, true).await.unwrap();
    assert_eq!(indexes().await, before);
    let primary: i64 = client
        .query_one(
            "select count(*) from pg_constraint where conrelid = 'raw.document'::regclass and contype = 'p'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(primary, 1);
    let through_view: i64 = client
        .query_one("select count(*) from public.document_notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(through_view, 25_000);
    // Copied with `freeze`: readers and vacuum need not revisit the pages.
    client
        .batch_execute("create extension if not exists pg_visibility")
        .await
        .unwrap();
    let unfrozen: i64 = client
        .query_one(
            "select count(*) from pg_visibility_map('raw.document') where not all_frozen",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unfrozen, 0);
    db.assert_same("document", &["DocNum"]).await;
}

/// Sessions PostgreSQL has counted for `db`'s warehouse database, once the
/// count has settled (a session is counted when its statistics are flushed).
async fn warehouse_sessions(db: &TestDb) -> i64 {
    let client = db.pg().await;
    let mut last = -1;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let now: i64 = client
            .query_one(
                "select sessions from pg_stat_database where datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// The tables of a run take a few warehouse connections in turn instead of
/// opening one each (each is a PostgreSQL backend to start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_opens_a_few_warehouse_connections_not_one_per_table() {
    let db = TestDb::new("load_sessions").await;
    let mut config = String::from("tables:\n");
    for n in 1..=20 {
        db.mysql(&[
            &format!(
                "CREATE TABLE `t{n:02}` (`Num` bigint NOT NULL PRIMARY KEY, `Note` varchar(20))"
            ),
            &format!("INSERT INTO `t{n:02}` SELECT seq, 'row' FROM seq_1_to_{n}"),
        ])
        .await;
        config.push_str(&format!(
            "  t{n:02}:\n    extraction_strategy: full_table\n"
        ));
    }
    let dir = common::scratch("load_sessions");
    let env = db.env_file(&dir);
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, config).unwrap();
    let before = warehouse_sessions(&db).await;
    let out = common::binary_with(&env, &tables)
        .args(["run", "--phase", "load", "--all", "--max-workers", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    // The session the count is read on, the run's control and lock
    // connections, and the loads' few.
    let opened = warehouse_sessions(&db).await - before;
    assert!(opened <= 8, "{opened} sessions for 20 tables");
    for n in 1..=20 {
        assert_eq!(db.pg_count(&format!("t{n:02}")).await, n);
    }
}
