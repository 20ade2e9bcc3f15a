//! Runs killed with SIGKILL, then rerun: the warehouse converges to the source.

mod common;

use std::time::{Duration, Instant};

use common::{TestDb, binary_with, scratch, table_config};

const ROWS: u32 = 120_000;

fn config_yaml(batch: u32) -> String {
    format!(
        "tables:\n  visit:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    primary_key: VisitNum\n    batch_size: {batch}\n    lookback_seconds: 0\n"
    )
}

async fn setup(name: &str) -> TestDb {
    let db = TestDb::new(name).await;
    let fill = format!(
        "INSERT INTO `visit` (`PatNum`, `Note`, `DateTStamp`) \
         SELECT seq % 977, CONCAT('visit ', seq), '2024-01-01 00:00:00' + INTERVAL (seq DIV 7) SECOND FROM seq_1_to_{ROWS}"
    );
    db.mysql(&[
        "CREATE TABLE `visit` (`VisitNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `PatNum` bigint NOT NULL, \
         `Note` varchar(100) NOT NULL, `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, \
         KEY `DateTStamp` (`DateTStamp`))",
        &fill,
    ])
    .await;
    db
}

/// Starts the binary on `visit` with this test's databases and config.
fn spawn_run(db: &TestDb, name: &str, batch: u32, extra: &[&str]) -> std::process::Child {
    let dir = scratch(name);
    let env = db.env_file(&dir);
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, config_yaml(batch)).unwrap();
    binary_with(&env, &tables)
        .args(["run", "--phase", "load", "--table", "visit"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

async fn poll<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_run_killed_between_batches_converges_on_rerun() {
    let db = setup("kill_incremental").await;
    let cfg = table_config(&config_yaml(300));
    db.load(&cfg).await.unwrap();
    let first_mark = db.watermark("visit", "DateTStamp").await.unwrap();
    db.mysql(&[
        "UPDATE `visit` SET `Note` = CONCAT('edited ', `VisitNum`), \
                `DateTStamp` = '2025-01-01 00:00:00' + INTERVAL (`VisitNum` DIV 3) SECOND",
    ])
    .await;

    let mut child = spawn_run(&db, "kill_incremental", 300, &[]);
    let moved = poll(Duration::from_secs(60), || async {
        db.watermark("visit", "DateTStamp").await.as_deref() != Some(first_mark.as_str())
    })
    .await;
    assert!(moved, "the run committed no batch within a minute");
    child.kill().unwrap();
    child.wait().unwrap();

    let client = db.pg().await;
    let edited: i64 = client
        .query_one(
            "select count(*) from raw.visit where \"Note\" like 'edited %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        edited > 0 && edited < i64::from(ROWS),
        "killed mid-run: {edited} rows edited"
    );
    let mark = db.watermark("visit", "DateTStamp").await.unwrap();
    assert!(
        mark.as_str() > first_mark.as_str() && mark.as_str() < "2025-01-01 11:06:40",
        "{mark}"
    );

    let report = db.load(&cfg).await.unwrap();
    assert!(
        report.rows_read > 0 && report.rows_read < u64::from(ROWS),
        "resumed, read {}",
        report.rows_read
    );
    db.assert_same("visit", &["VisitNum"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refresh_killed_mid_copy_leaves_the_old_contents_then_converges() {
    let db = setup("kill_full").await;
    let cfg = table_config(&config_yaml(5000));
    db.load(&cfg).await.unwrap();
    db.mysql(&[
        "UPDATE `visit` SET `Note` = 'changed after the first load' WHERE `VisitNum` % 2 = 0",
    ])
    .await;

    let mut child = spawn_run(&db, "kill_full", 5000, &["--force-full"]);
    let client = db.pg().await;
    let database = db.ctx.warehouse.database.clone();
    let copying = poll(Duration::from_secs(60), || async {
        client
            .query_one(
                "select count(*) from pg_stat_activity where datname = $1 and query like 'copy %' and state = 'active'",
                &[&database],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            > 0
    })
    .await;
    assert!(copying, "the full refresh never started copying");
    child.kill().unwrap();
    child.wait().unwrap();
    // The killed backend rolls back once it notices; readers then see the old rows.
    let gone = poll(Duration::from_secs(30), || async {
        client
            .query_one("select count(*) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid() and xact_start is not null", &[&database])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 0
    })
    .await;
    assert!(gone, "the killed session stayed");
    let old: i64 = client
        .query_one(
            "select count(*) from raw.visit where \"Note\" like 'visit %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        old,
        i64::from(ROWS),
        "the warehouse still holds the complete old contents"
    );

    let report = db.load(&cfg).await.unwrap();
    assert!(matches!(
        report.decision.strategy,
        etl_pipeline::config::Strategy::Incremental { .. }
    ));
    db.load_with(&cfg, true).await.unwrap();
    db.assert_same("visit", &["VisitNum"]).await;
}
