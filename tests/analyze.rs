//! `analyze` on OpenDental's own schema and seed data.

mod common;

use std::time::{Duration, Instant};

use common::{TestDb, binary_with, scratch, text};
use etl_pipeline::config::{
    DeleteDetection, ExtractionStrategy, PerformanceCategory, TablesConfig,
};
use mysql_async::prelude::Queryable;

const DUMP: &str = "fixtures/opendental/opendental-21.1-unittest-dump.sql";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_profiles_the_opendental_fixture_and_its_config_drives_a_run() {
    let db = TestDb::new("analyze_fixture").await;
    let dump =
        std::fs::read_to_string(DUMP).expect("the OpenDental fixture is in fixtures/opendental");
    let mut conn = etl_pipeline::mysql::connect(&db.source).await.unwrap();
    conn.query_drop(dump).await.unwrap();
    // Planted: procedurelog large enough to be tracked, a table whose only
    // candidate is full of bad dates, and securitylog rows without a stamp.
    db.source_sql(&[
        "INSERT INTO `procedurelog` (`PatNum`, `AptNum`, `ProcDate`, `ProcFee`, `Priority`, `ProvNum`, `Dx`, `PlannedAptNum`, \
         `ClinicNum`, `ProcNumLab`, `BillingTypeOne`, `BillingTypeTwo`, `CodeNum`, `UnitQty`, `BaseUnits`, `StartTime`, `StopTime`, \
         `DateTP`, `SiteNum`, `HideGraphics`, `CanadianTypeCodes`, `ProcTime`, `ProcTimeEnd`, `Prognosis`, `DrugUnit`, `DrugQty`, \
         `UnitQtyType`, `StatementNum`, `IsLocked`, `BillingNote`, `RepeatChargeNum`, `SnomedBodySite`, `DiagnosticCode2`, \
         `DiagnosticCode3`, `DiagnosticCode4`, `ProvOrderOverride`, `Discount`, `IsDateProsthEst`, `IcdVersion`, `IsCpoe`, \
         `SecUserNumEntry`, `OrderingReferralNum`, `TaxAmt`, `Urgency`, `DiscountPlanAmt`) \
         SELECT seq, 0, '2023-01-01', 10, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, '2023-01-01', 0, 0, '', '00:00:00', '00:00:00', \
         0, 0, 0, 0, 0, 0, '', 0, '', '', '', '', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 FROM seq_1_to_12000",
        "CREATE TABLE `badstamps` (`BadNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `SecDateTEdit` datetime NOT NULL, \
         `DateTEntry` datetime NOT NULL)",
        "INSERT INTO `badstamps` (`SecDateTEdit`, `DateTEntry`) SELECT IF(seq % 2 = 0, '1902-01-01', '2099-01-01'), \
         '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_20000",
        "INSERT INTO `securitylog` (`PermType`, `UserNum`, `LogDateTime`, `LogText`, `PatNum`, `CompName`, `FKey`, `LogSource`, \
         `DefNum`, `DefNumError`) SELECT 1, 1, '2024-02-02', 'x', 1, 'PC', seq, 0, 0, 0 FROM seq_1_to_15000",
        "CREATE TABLE `oddtypes` (`OddNum` bigint NOT NULL PRIMARY KEY, `Flag` tinyint(1) NOT NULL, `Span` time NOT NULL, \
         `Note` text, `Seen` date NOT NULL)",
        "INSERT INTO `oddtypes` VALUES (1, 2, '30:00:00', CONCAT('a', CHAR(0), 'b'), '0000-00-00'), (2, 1, '01:00:00', 'ok', '2024-01-01')",
        "CREATE VIEW `recent_procedures` AS SELECT `ProcNum`, `ProcDate` FROM `procedurelog` WHERE `ProcDate` > '2023-06-01'",
        "ANALYZE TABLE `procedurelog`, `badstamps`, `securitylog`",
    ])
    .await;

    let dir = scratch("analyze_fixture");
    let env = db.env_file(&dir);
    let tables = dir.join("config").join("tables.yml");
    let started = Instant::now();
    let out = binary_with(&env, &tables)
        .args(["analyze"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "analysis took {:?}",
        started.elapsed()
    );

    assert!(
        text(&out).contains("left out 1 view(s), which are not copied")
            && text(&out).contains("recent_procedures"),
        "{}",
        text(&out)
    );
    let config = TablesConfig::load(&tables).unwrap();
    assert_eq!(config.len(), 381, "the view is not among the tables");
    let procedurelog = config.get("procedurelog").unwrap();
    assert_eq!(
        procedurelog.primary_incremental_column.as_deref(),
        Some("DateTStamp")
    );
    assert_eq!(procedurelog.primary_key, vec!["ProcNum"]);
    assert_eq!(
        procedurelog.extraction_strategy,
        ExtractionStrategy::Incremental
    );
    assert_eq!(
        procedurelog.performance_category,
        Some(PerformanceCategory::Small)
    );
    assert_eq!(
        config.get("badstamps").unwrap().performance_category,
        Some(PerformanceCategory::Small)
    );
    assert_eq!(
        config.get("account").unwrap().performance_category,
        Some(PerformanceCategory::Tiny)
    );
    assert_eq!(
        config.get("account").unwrap().extraction_strategy,
        ExtractionStrategy::FullTable
    );
    let no_key = config.tables().filter(|t| t.primary_key.is_empty()).count();
    assert!(no_key < 10, "{no_key} tables without a key");
    let securitylog = config.get("securitylog").unwrap();
    assert_eq!(
        securitylog.primary_incremental_column.as_deref(),
        Some("SecurityLogNum")
    );
    let bad = config.get("badstamps").unwrap();
    assert_eq!(
        bad.primary_incremental_column.as_deref(),
        Some("DateTEntry"),
        "the 1902/2099 column is never chosen"
    );
    assert_eq!(
        (bad.deletes.detection, bad.deletes.every_hours),
        (DeleteDetection::RowReconcile, Some(1)),
        "an entry stamp is blind to edits: its rows are reconciled"
    );
    assert_eq!(
        procedurelog.deletes.detection,
        DeleteDetection::KeyReconcile
    );
    let yaml = std::fs::read_to_string(&tables).unwrap();
    assert!(
        yaml.contains("candidate SecDateTEdit") && yaml.contains("rejected: 100%"),
        "the profile is kept as comments"
    );

    // The NUL byte would (rightly) fail the load; the analysis has reported it.
    db.source_sql(&["DELETE FROM `oddtypes` WHERE `OddNum` = 1"])
        .await;
    let out = binary_with(&env, &tables)
        .args(["run", "--all"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    db.assert_replica_same("procedurelog", &["ProcNum"]).await;
    db.assert_same("procedurelog", &["ProcNum"]).await;
}
