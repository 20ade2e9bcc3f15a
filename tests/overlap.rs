//! Runs that overlap (cron, two machines) and runs stopped by SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::{TestDb, binary_with, scratch};

const TABLES: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

fn config() -> String {
    let mut text = String::from("tables:\n");
    for t in TABLES {
        text.push_str(&format!(
            "  {t}:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
             primary_incremental_column: DateTStamp\n    primary_key: Num\n    batch_size: 500\n    lookback_seconds: 0\n"
        ));
    }
    text
}

async fn setup(name: &str, rows: u32) -> (TestDb, std::path::PathBuf, std::path::PathBuf) {
    let db = TestDb::new(name).await;
    let mut statements = Vec::new();
    for t in TABLES {
        statements.push(format!(
            "CREATE TABLE `{t}` (`Num` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `Note` varchar(60) NOT NULL, \
             `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`))"
        ));
        statements.push(format!(
            "INSERT INTO `{t}` (`Note`, `DateTStamp`) SELECT CONCAT('{t} ', seq), '2024-01-01' + INTERVAL (seq DIV 3) SECOND \
             FROM seq_1_to_{rows}"
        ));
    }
    let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
    db.mysql(&refs).await;
    let dir = scratch(name);
    let env = db.env_file(&dir);
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, config()).unwrap();
    (db, env, tables)
}

fn spawn(env: &std::path::Path, tables: &std::path::Path, extra: &[&str]) -> std::process::Child {
    binary_with(env, tables)
        .args(["run", "--phase", "load", "--all", "--max-workers", "2"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_runs_never_process_one_table_at_once() {
    let (db, env, tables) = setup("overlap_runs", 20_000).await;
    for extra in [&[][..], &["--if-locked", "wait"][..]] {
        let first = spawn(&env, &tables, extra);
        let second = spawn(&env, &tables, extra);
        for child in [first, second] {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        db.mysql(&["UPDATE `alpha` SET `Note` = 'changed', `DateTStamp` = '2025-01-01' WHERE `Num` % 7 = 0"]).await;
    }
    let client = db.pg().await;
    let overlapping: i64 = client
        .query_one(
            "select count(*) from raw.etl_run_history a join raw.etl_run_history b \
             on a.table_name = b.table_name and a.id < b.id and a.phase = b.phase \
             and a.started_at < b.finished_at and b.started_at < a.finished_at",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(overlapping, 0, "a table was processed by two runs at once");
    let waited: i64 = client
        .query_one(
            "select count(*) from raw.etl_run_history where status = 'success'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        waited >= 4 + 8 - 4,
        "with --if-locked wait both runs load every table: {waited}"
    );
    let final_run = spawn(&env, &tables, &[]).wait_with_output().unwrap();
    assert!(final_run.status.success());
    for t in TABLES {
        db.assert_same(t, &["Num"]).await;
    }
}

/// The run lock is the warehouse table's, schema and all: a run into
/// another schema of the same database (another clinic of a group) does
/// not wait for it, a run into the same schema does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_locked_in_one_schema_is_free_in_another() {
    let (db, env, tables) = setup("lock_schemas", 300).await;
    // Held as the README says runs hold it.
    let holder = db.pg().await;
    holder
        .execute(
            "select pg_advisory_lock(4543564, hashtext('\"raw\".\"alpha\"'))",
            &[],
        )
        .await
        .unwrap();
    let other =
        std::fs::read_to_string(&env).unwrap() + "TEST_POSTGRES_ANALYTICS_SCHEMA=raw_north\n";
    let other_env = env.with_file_name("north.env");
    std::fs::write(&other_env, other).unwrap();
    for (env, schema, skipped) in [(&env, "raw", true), (&other_env, "raw_north", false)] {
        for args in [&["init"][..], &["run", "--phase", "load", "--all"]] {
            let out = binary_with(env, &tables).args(args).output().unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{schema} {args:?}: {all}");
            if args[0] == "run" {
                assert_eq!(
                    all.contains("`alpha` skipped: another run is processing it"),
                    skipped,
                    "{schema}: {all}"
                );
            }
        }
    }
    let client = db.pg().await;
    let loaded: i64 = client
        .query_one("select count(*) from raw_north.alpha", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(loaded, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_after_the_batch_in_hand_and_the_rerun_converges() {
    let (db, env, tables) = setup("sigterm_run", 60_000).await;
    let first = spawn(&env, &tables, &[]).wait_with_output().unwrap();
    assert!(first.status.success());
    for t in TABLES {
        db.mysql(&[&format!(
            "UPDATE `{t}` SET `Note` = CONCAT('edited ', `Num`), `DateTStamp` = '2025-01-01' + INTERVAL `Num` SECOND"
        )])
        .await;
    }
    let marks_before: Vec<Option<String>> = {
        let mut v = Vec::new();
        for t in TABLES {
            v.push(db.watermark(t, "DateTStamp").await);
        }
        v
    };
    let child = spawn(&env, &tables, &[]);
    let pid = child.id().to_string();
    let started = Instant::now();
    loop {
        let mut moved = false;
        for (t, before) in TABLES.iter().zip(&marks_before) {
            moved |= db.watermark(t, "DateTStamp").await != *before;
        }
        if moved {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no batch committed within a minute"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let signalled = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "took {:?} to stop",
        signalled.elapsed()
    );
    assert!(text.contains("STOPPED"), "{text}");
    let client = db.pg().await;
    let interrupted: i64 = client
        .query_one(
            "select count(*) from raw.etl_load_status where load_status = 'interrupted'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(interrupted >= 1, "{text}");
    let rerun = spawn(&env, &tables, &[]).wait_with_output().unwrap();
    assert!(rerun.status.success());
    for t in TABLES {
        db.assert_same(t, &["Num"]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_tables_run_beside_a_heavy_one_when_workers_are_busy() {
    let db = TestDb::new("light_lanes").await;
    db.mysql(&[
        "CREATE TABLE `heavy` (`Num` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `Note` varchar(200) NOT NULL)",
        "INSERT INTO `heavy` (`Note`) SELECT REPEAT('h', 150) FROM seq_1_to_300000",
        "CREATE TABLE `light1` (`Num` bigint NOT NULL PRIMARY KEY)",
        "INSERT INTO `light1` VALUES (1), (2)",
        "CREATE TABLE `light2` (`Num` bigint NOT NULL PRIMARY KEY)",
        "INSERT INTO `light2` VALUES (3)",
    ])
    .await;
    let config = etl_pipeline::config::TablesConfig::parse(
        "tables:\n  heavy:\n    extraction_strategy: full_table\n    estimated_rows: 300000\n  \
         light1:\n    extraction_strategy: full_table\n    estimated_rows: 2\n  \
         light2:\n    extraction_strategy: full_table\n    estimated_rows: 1\n",
    )
    .unwrap();
    let report = db.try_run(&config, 1).await.unwrap();
    assert!(report.succeeded(), "{report:?}");
    // The heavy table goes first (largest first) and holds the one worker;
    // the light ones finish while it is still loading.
    let finished = db
        .pg()
        .await
        .query(
            "select table_name, finished_at from raw.etl_run_history where status = 'success' order by finished_at",
            &[],
        )
        .await
        .unwrap();
    let order: Vec<String> = finished.iter().map(|r| r.get(0)).collect();
    assert_eq!(order.last().map(String::as_str), Some("heavy"), "{order:?}");
    db.assert_same("heavy", &["Num"]).await;
    db.assert_same("light2", &["Num"]).await;
}
