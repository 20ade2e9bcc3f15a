//! Source rows changing while a full and an incremental copy read them:
//! edits, watermarks moved backwards (inside the look-back window) and a
//! transaction that commits after a run read past its timestamp. The next
//! run converges: source, replica and warehouse hold the same rows.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::TestDb;
use etl_pipeline::config::TablesConfig;
use mysql_async::prelude::Queryable;

const ROWS: u32 = 150_000;

fn config() -> TablesConfig {
    TablesConfig::parse(
        "tables:\n  claim:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    primary_key: ClaimNum\n    batch_size: 4000\n    lookback_seconds: 600\n",
    )
    .unwrap()
}

/// Edits rows while `busy` is set: some stamped now, some stamped into
/// the recent past (a watermark moved backwards, still inside the window).
async fn edit_while(
    db_settings: etl_pipeline::config::MySqlSettings,
    busy: Arc<AtomicBool>,
) -> u32 {
    let mut conn = etl_pipeline::mysql::connect(&db_settings).await.unwrap();
    let mut round = 0u32;
    while busy.load(Ordering::Relaxed) {
        round += 1;
        let key = (round * 7919) % ROWS + 1;
        conn.query_drop(format!(
            "UPDATE `claim` SET `Note` = 'edited {round}', `Fee` = `Fee` + 1 WHERE `ClaimNum` BETWEEN {key} AND {key} + 40"
        ))
        .await
        .unwrap();
        let back = (round * 104_729) % ROWS + 1;
        conn.query_drop(format!(
            "UPDATE `claim` SET `Note` = 'moved back {round}', `DateTStamp` = NOW() - INTERVAL 120 SECOND \
             WHERE `ClaimNum` BETWEEN {back} AND {back} + 5"
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    round
}

async fn converged(db: &TestDb) {
    db.assert_replica_same("claim", &["ClaimNum"]).await;
    db.assert_source_same("claim", &["ClaimNum"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_changed_while_copies_read_them_converge_on_the_next_run() {
    let db = TestDb::new("concurrent_edits").await;
    db.source_sql(&[
        "CREATE TABLE `claim` (`ClaimNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `Note` varchar(100) NOT NULL, \
         `Fee` decimal(10,2) NOT NULL, \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`))",
        &format!(
            "INSERT INTO `claim` (`Note`, `Fee`, `DateTStamp`) SELECT CONCAT('claim ', seq), seq / 10, \
             NOW() - INTERVAL 100 DAY + INTERVAL (seq DIV 3) SECOND FROM seq_1_to_{ROWS}"
        ),
    ])
    .await;
    let config = config();

    // The first run is a full copy; then an incremental one after a wide edit.
    for setup in [
        "",
        "UPDATE `claim` SET `Note` = CONCAT('touched ', `ClaimNum`) WHERE `ClaimNum` % 4 = 0",
    ] {
        if !setup.is_empty() {
            db.source_sql(&[setup]).await;
        }
        let busy = Arc::new(AtomicBool::new(true));
        let editor = tokio::spawn(edit_while(db.source.clone(), busy.clone()));
        let report = db.run_two_hop(&config, None).await;
        busy.store(false, Ordering::Relaxed);
        let edits = editor.await.unwrap();
        assert!(report.succeeded(), "{report:?}");
        assert!(edits > 0, "no edit happened during the run");
        let after = db.run_two_hop(&config, None).await;
        assert!(after.succeeded(), "{after:?}");
        converged(&db).await;
    }

    // A transaction stamps a row, then commits only after a run has read
    // and moved its watermark past that second.
    let mut late = etl_pipeline::mysql::connect(&db.source).await.unwrap();
    late.query_drop("START TRANSACTION").await.unwrap();
    late.query_drop("UPDATE `claim` SET `Note` = 'committed late' WHERE `ClaimNum` = 3")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    db.source_sql(&[
        "UPDATE `claim` SET `Note` = 'committed at once' WHERE `ClaimNum` BETWEEN 10 AND 20",
    ])
    .await;
    let report = db.run_two_hop(&config, None).await;
    assert!(report.succeeded(), "{report:?}");
    late.query_drop("COMMIT").await.unwrap();
    let warehouse_has = |note: &'static str| {
        let db = &db;
        async move {
            db.pg()
                .await
                .query_one(
                    "select count(*) from raw.claim where \"Note\" = $1",
                    &[&note],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(warehouse_has("committed at once").await, 11);
    assert_eq!(warehouse_has("committed late").await, 0);
    let report = db.run_two_hop(&config, None).await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(
        warehouse_has("committed late").await,
        1,
        "the late commit was skipped"
    );
    converged(&db).await;
}
