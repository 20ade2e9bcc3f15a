//! PostgreSQL restarted in the middle of a load: the table is retried once
//! the server is back and converges.
//!
//! The restart drops every connection to the server, so this test lives
//! alone in its test binary (`cargo test` runs binaries one after another).
//! It needs the PostgreSQL cluster on this machine (`pg_ctlcluster`).

mod common;

use std::time::{Duration, Instant};

use common::TestDb;
use etl_pipeline::config::TablesConfig;

fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("the PostgreSQL cluster must be on this machine (/etc/postgresql)")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("no cluster under /etc/postgresql");
    let status = std::process::Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "fast",
        ])
        .status()
        .expect("pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster restart failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts this machine's PostgreSQL: run by .ci/run and reliability/run (cargo test -- --ignored)"]
async fn a_postgres_restart_mid_load_is_retried_and_converges() {
    let db = TestDb::new("fault_pg_restart").await;
    db.mysql(&[
        "CREATE TABLE `stamped` (`Num` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `Note` varchar(200) NOT NULL, \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`))",
        "INSERT INTO `stamped` (`Note`, `DateTStamp`) SELECT REPEAT('r', 120), '2024-01-01' + INTERVAL (seq DIV 4) SECOND \
         FROM seq_1_to_300000",
    ])
    .await;
    // Backoff 1 + 2 + 4 + 8 s: time enough for the server to come back.
    let config = TablesConfig::parse(
        "tables:\n  stamped:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    primary_key: Num\n    batch_size: 20000\n    retry_count: 4\n",
    )
    .unwrap();
    let watcher = {
        let (admin, database) = (db.pg_admin.clone(), db.ctx.warehouse.database.clone());
        tokio::spawn(async move {
            let client = etl_pipeline::postgres::connect(&admin).await.unwrap();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(60) {
                let copying: i64 = client
                    .query_one(
                        "select count(*) from pg_stat_activity where datname = $1 and state = 'active' \
                         and query ilike 'copy %'",
                        &[&database],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if copying > 0 {
                    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            false
        })
    };
    let report = db.run(&config).await;
    assert!(watcher.await.unwrap(), "the load's COPY was never seen");
    common::assert_retried(&report, "stamped", "load", "");
    db.assert_same("stamped", &["Num"]).await;

    db.mysql(&["UPDATE `stamped` SET `Note` = 'after the restart' WHERE `Num` % 5 = 0"])
        .await;
    let again = db.run(&config).await;
    assert!(again.succeeded(), "{again:?}");
    db.assert_same("stamped", &["Num"]).await;
}
