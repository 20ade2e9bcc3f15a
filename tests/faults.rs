//! Faults injected into real servers mid-run: the warehouse connection
//! terminated during `COPY`, the warehouse's disk filling up, a row lock held
//! on the replica. Each ends in a retried, converged run, or in a clear
//! failure of that table with nothing lost and the next run converging.
//! (A dropped MySQL connection is covered in `load.rs` and `extract.rs`; a
//! PostgreSQL restart in `restart.rs`.)

mod common;

use std::time::Duration;

use common::TestDb;
use etl_pipeline::config::TablesConfig;
use etl_pipeline::pipeline::RunReport;
use mysql_async::prelude::Queryable;

const STAMPED: &str = "CREATE TABLE `stamped` (`Num` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
    `Note` varchar(200) NOT NULL, `Amount` decimal(10,2) NOT NULL, \
    `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`))";

fn stamped_config(extra: &str) -> TablesConfig {
    TablesConfig::parse(&format!(
        "tables:\n  stamped:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    primary_key: Num\n    lookback_seconds: 0\n{extra}"
    ))
    .unwrap()
}

fn fill(rows: u32) -> String {
    format!(
        "INSERT INTO `stamped` (`Note`, `Amount`, `DateTStamp`) SELECT REPEAT('n', 90), seq / 100, \
         '2024-01-01' + INTERVAL (seq DIV 3) SECOND FROM seq_1_to_{rows}"
    )
}

fn error(report: &RunReport, table: &str, phase: &str) -> String {
    match &report.outcome(table, phase).unwrap().result {
        Ok(_) => panic!("{table} {phase} succeeded"),
        Err(e) => format!("{e:?}"),
    }
}

/// Terminates (`pg_terminate_backend`) the first backend of `database` seen
/// running a `COPY`; says whether it found one within `deadline`.
fn terminate_copy(db: &TestDb, deadline: Duration) -> tokio::task::JoinHandle<bool> {
    let (settings, database) = (db.pg_admin.clone(), db.ctx.warehouse.database.clone());
    tokio::spawn(async move {
        let client = etl_pipeline::postgres::connect(&settings).await.unwrap();
        let started = std::time::Instant::now();
        while started.elapsed() < deadline {
            let row = client
                .query_one(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                     where datname = $1 and state = 'active' and query ilike 'copy %'",
                    &[&database],
                )
                .await
                .unwrap();
            if row.get::<_, i64>(0) > 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        false
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_session_terminated_mid_copy_is_retried_and_converges() {
    let db = TestDb::new("fault_pg_terminate").await;
    db.mysql(&[STAMPED, &fill(200_000)]).await;
    let config = stamped_config("    batch_size: 20000\n");

    // The full load's COPY, then an incremental page's COPY into staging.
    for round in ["full", "incremental"] {
        let killer = terminate_copy(&db, Duration::from_secs(60));
        let report = db.run(&config).await;
        assert!(killer.await.unwrap(), "{round}: no COPY was seen");
        common::assert_retried(&report, "stamped", "load", "");
        db.assert_same("stamped", &["Num"]).await;
        db.mysql(&[
            "UPDATE `stamped` SET `Note` = 'edited', `Amount` = `Amount` + 1 WHERE `Num` % 3 = 0",
        ])
        .await;
    }
    db.run(&config).await;
    db.assert_same("stamped", &["Num"]).await;
}

/// A tablespace on a small tmpfs: PostgreSQL's writes there fail with
/// `No space left on device` (SQLSTATE 53100), as on a full disk. Needs the
/// PostgreSQL server on this machine and root to mount.
struct TinyDisk {
    path: std::path::PathBuf,
}

impl TinyDisk {
    const TABLESPACE: &str = "etl_t_tiny_disk";

    async fn mount(admin: &tokio_postgres::Client, megabytes: u32) -> TinyDisk {
        let path = std::path::PathBuf::from("/tmp/etl_t_tiny_disk");
        admin
            .batch_execute(&format!("drop tablespace if exists {}", Self::TABLESPACE))
            .await
            .unwrap();
        // Lazily: the server may still hold files of a dropped database open.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status();
        std::fs::create_dir_all(&path).unwrap();
        let disk = TinyDisk { path };
        disk.resize(megabytes);
        let owned = std::process::Command::new("chown")
            .args(["postgres:postgres", disk.path.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(owned.success(), "chown of {:?} failed", disk.path);
        admin
            .batch_execute(&format!(
                "create tablespace {} location '{}'",
                Self::TABLESPACE,
                disk.path.display()
            ))
            .await
            .unwrap();
        disk
    }

    /// Shrinks or grows the disk to what it holds now plus `megabytes`.
    fn leave_free(&self, megabytes: u32) {
        let out = std::process::Command::new("df")
            .args(["-m", "--output=used"])
            .arg(&self.path)
            .output()
            .unwrap();
        let used: u32 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        self.resize(used + megabytes);
    }

    fn resize(&self, megabytes: u32) {
        let mounted = std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains(self.path.to_str().unwrap());
        let options = if mounted {
            format!("remount,size={megabytes}m")
        } else {
            format!("size={megabytes}m")
        };
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a {megabytes} MiB tmpfs failed (the test needs root)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "mounts a tmpfs on this machine: run by .ci/run and reliability/run (cargo test -- --ignored)"]
async fn a_full_warehouse_disk_fails_the_table_clearly_and_the_next_run_converges() {
    let db = TestDb::new("fault_disk_full").await;
    let admin = etl_pipeline::postgres::connect(&db.pg_admin).await.unwrap();
    let disk = TinyDisk::mount(&admin, 24).await;
    db.mysql(&[STAMPED, &fill(20_000)]).await;
    // The warehouse database keeps its tables and temporary tables on the tiny disk.
    admin
        .batch_execute(&format!(
            "alter database {db} set default_tablespace = {ts}; alter database {db} set temp_tablespaces = {ts}",
            db = db.ctx.warehouse.database,
            ts = TinyDisk::TABLESPACE
        ))
        .await
        .unwrap();
    let config = stamped_config("    batch_size: 10000\n    retry_count: 0\n");
    let first = db.run(&config).await;
    assert!(first.succeeded(), "{first:?}");
    let before = db.pg_count("stamped").await;

    // 400,000 new rows (~50 MiB in the warehouse) cannot fit in 24 MiB.
    db.mysql(&[
        "INSERT INTO `stamped` (`Note`, `Amount`, `DateTStamp`) SELECT REPEAT('m', 90), seq / 100, \
         '2024-02-01' + INTERVAL seq SECOND FROM seq_1_to_400000",
    ])
    .await;
    let failed = db.run(&config).await;
    let message = error(&failed, "stamped", "load");
    eprintln!("{message}");
    assert!(
        message.contains("stamped") && message.contains("disk is full"),
        "{message}"
    );
    // What committed is whole: every row present is the replica's row, and
    // the watermark covers exactly the rows present.
    let after = db.pg_count("stamped").await;
    assert!(after >= before, "rows were lost: {before} → {after}");
    let client = db.pg().await;
    let past_mark: i64 = client
        .query_one(
            "select count(*) from raw.stamped where \"DateTStamp\" > \
             (select watermark_value::timestamp from raw.etl_load_watermark where table_name = 'stamped')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(past_mark, 0, "rows beyond the watermark were committed");
    let status: String = client
        .query_one(
            "select load_status from raw.etl_load_status where table_name = 'stamped'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "failed");

    disk.resize(512);
    let again = db.run(&config).await;
    assert!(again.succeeded(), "{again:?}");
    db.assert_same("stamped", &["Num"]).await;

    // A full refresh that runs out of space keeps the old contents.
    disk.leave_free(8);
    db.mysql(&["UPDATE `stamped` SET `Note` = REPEAT('x', 200)"])
        .await;
    let full = db
        .load_with(&config.tables().next().unwrap().clone(), true)
        .await;
    let message = format!("{:?}", full.expect_err("the refresh cannot fit"));
    assert!(message.contains("disk is full"), "{message}");
    let unchanged: i64 = client
        .query_one(
            "select count(*) from raw.stamped where \"Note\" like 'x%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unchanged, 0, "a failed refresh showed new rows");
    assert_eq!(db.pg_count("stamped").await, 420_000);
    disk.resize(512);
    db.load_with(&config.tables().next().unwrap().clone(), true)
        .await
        .unwrap();
    db.assert_same("stamped", &["Num"]).await;

    drop(client);
    for sql in [
        format!("drop database {} with (force)", db.ctx.warehouse.database),
        format!("drop tablespace {}", TinyDisk::TABLESPACE),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&disk.path)
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_lock_held_on_the_replica_is_waited_out_or_fails_the_table_clearly() {
    let db = TestDb::new("fault_replica_lock").await;
    db.source_sql(&[STAMPED, &fill(30_000)]).await;
    let mut ctx = db.extract_ctx(None);
    ctx.replica_lock_wait = Some(1);
    let run = |config: TablesConfig| {
        let (db, ctx) = (&db, ctx.clone());
        async move { db.run_two_hop_via(ctx, &config, false).await }
    };
    let config = stamped_config("    batch_size: 5000\n    retry_count: 2\n");
    assert!(run(config.clone()).await.succeeded());

    // A report on the replica holds row 7 for 2.5 s while the row changes
    // at the source: the copy times out after 1 s, is retried and gets through.
    db.source_sql(&["UPDATE `stamped` SET `Note` = 'changed' WHERE `Num` <= 100"])
        .await;
    let mut holder = etl_pipeline::mysql::connect(&db.ctx.replica).await.unwrap();
    holder.query_drop("START TRANSACTION").await.unwrap();
    holder
        .query_drop("SELECT * FROM `stamped` WHERE `Num` = 7 FOR UPDATE")
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        holder.query_drop("COMMIT").await.unwrap();
        holder
    });
    let report = run(config.clone()).await;
    common::assert_retried(&report, "stamped", "extract", "Lock wait timeout");
    db.assert_replica_same("stamped", &["Num"]).await;
    db.assert_source_same("stamped", &["Num"]).await;

    // Held past every retry: the table fails and says why; nothing is lost.
    let mut holder = release.await.unwrap();
    db.source_sql(&["UPDATE `stamped` SET `Note` = 'changed again' WHERE `Num` <= 100"])
        .await;
    holder.query_drop("START TRANSACTION").await.unwrap();
    holder
        .query_drop("SELECT * FROM `stamped` WHERE `Num` = 7 FOR UPDATE")
        .await
        .unwrap();
    let report = run(stamped_config("    batch_size: 5000\n    retry_count: 1\n")).await;
    let message = error(&report, "stamped", "extract");
    assert!(
        message.contains("stamped") && message.contains("Lock wait timeout"),
        "{message}"
    );
    holder.query_drop("COMMIT").await.unwrap();
    assert!(run(config).await.succeeded());
    db.assert_replica_same("stamped", &["Num"]).await;
    db.assert_source_same("stamped", &["Num"]).await;
}
