//! Random clinic days against the promise that no row is missed. Each day
//! the source gets what a clinic's day does to it (new rows, edits, many
//! rows sharing one second, a clock hours ahead, a typo far in the future,
//! backdated and zero-stamped entries, edits that leave an entry stamp
//! alone, deletions, now and then a new column), then a run that the
//! clinic keeps editing under and that is killed at a random moment half the
//! time, then a run to the end with the clinic quiet. After that run:
//!
//! - `procedurelog` (timestamp watermark, key reconciliation every run) and
//!   `securitylog` (append-only) must equal the source in the replica and
//!   the warehouse: everything done to them is within a watermark's sight
//!   (the clock, the key pass, the below-bounds pass) or a key
//!   reconciliation's.
//! - `patplan` (entry stamp, composite key, `reconcile: rows` every third
//!   run) may differ only by what its next row reconciliation is documented
//!   to catch: once the copy has reconciled after the day's last edit and
//!   the load after the copy, it must be equal.
//!
//! Every fourth day, and the last, ends with runs until both hops of
//! `patplan` have reconciled.
//! `ETL_DAYS` (default 3) and `ETL_DAYS_SEED` (default: the clock) size and
//! replay it; `bash reliability/run` runs 200 days.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Rng, TestDb, binary_with, scratch, setting, text};
use mysql_async::prelude::Queryable;

const TABLES: &str = "tables:
  procedurelog:
    extraction_strategy: incremental
    incremental_columns: [DateTStamp]
    primary_incremental_column: DateTStamp
    batch_size: 400
    lookback_seconds: 2
    lookback_keys: 1
    reconcile: keys
  patplan:
    extraction_strategy: incremental
    incremental_columns: [SecDateTEntry]
    primary_incremental_column: SecDateTEntry
    batch_size: 400
    lookback_seconds: 2
    reconcile: rows
    reconcile_every_runs: 3
  securitylog:
    extraction_strategy: incremental
    incremental_columns: [SecurityLogNum]
    primary_incremental_column: SecurityLogNum
    batch_size: 400
    lookback_keys: 0
";

async fn create_source(db: &TestDb) {
    db.source_sql(&[
        "CREATE TABLE `procedurelog` (`ProcNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         `PatNum` bigint NOT NULL, `ProcFee` double NOT NULL, `Note` varchar(80) NOT NULL DEFAULT '', \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, \
         KEY `DateTStamp` (`DateTStamp`))",
        "INSERT INTO `procedurelog` (`PatNum`, `ProcFee`, `Note`, `DateTStamp`) \
         SELECT seq % 300, seq / 4, CONCAT('procedure ', seq), '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_3000",
        "CREATE TABLE `patplan` (`PatNum` bigint NOT NULL, `Ordinal` int NOT NULL, `Note` varchar(80) NOT NULL, \
         `SecDateTEntry` datetime NOT NULL DEFAULT '0001-01-01 00:00:00', PRIMARY KEY (`PatNum`, `Ordinal`), \
         KEY `SecDateTEntry` (`SecDateTEntry`))",
        "INSERT INTO `patplan` SELECT seq, 1, CONCAT('plan ', seq), '2024-01-01' + INTERVAL seq MINUTE \
         FROM seq_1_to_1000",
        "CREATE TABLE `securitylog` (`SecurityLogNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         `LogText` varchar(80) NOT NULL, `LogDateTime` datetime NOT NULL)",
        "INSERT INTO `securitylog` (`LogText`, `LogDateTime`) SELECT CONCAT('log ', seq), NOW() FROM seq_1_to_500",
    ])
    .await;
}

/// The statements of one clinic day, in order.
fn day(rng: &mut Rng, n: u64, top: u64) -> Vec<String> {
    let mut sql = Vec::new();
    let key = |rng: &mut Rng| 1 + rng.upto(top.saturating_sub(1));
    for _ in 0..rng.upto(40) {
        sql.push(format!(
            "UPDATE `procedurelog` SET `ProcFee` = `ProcFee` + 1, `Note` = 'day {n} edit' WHERE `ProcNum` = {}",
            key(rng)
        ));
    }
    // Many rows sharing one second.
    let from = key(rng);
    sql.push(format!(
        "UPDATE `procedurelog` SET `Note` = 'day {n} tie' WHERE `ProcNum` BETWEEN {from} AND {}",
        from + rng.upto(700)
    ));
    sql.push(format!(
        "INSERT INTO `procedurelog` (`PatNum`, `ProcFee`, `Note`) SELECT seq, seq, 'day {n} new' \
         FROM seq_1_to_{}",
        1 + rng.upto(300)
    ));
    if rng.chance(40) {
        sql.push(format!(
            "UPDATE `procedurelog` SET `Note` = 'day {n} clock ahead', `DateTStamp` = NOW() + INTERVAL {} MINUTE \
             WHERE `ProcNum` = {}",
            30 + rng.upto(240),
            key(rng)
        ));
    }
    if rng.chance(20) {
        sql.push(format!(
            "UPDATE `procedurelog` SET `Note` = 'day {n} typo', `DateTStamp` = '2037-12-31 00:00:00' \
             WHERE `ProcNum` = {}",
            key(rng)
        ));
    }
    if rng.chance(40) {
        sql.push(format!(
            "INSERT INTO `procedurelog` (`PatNum`, `ProcFee`, `Note`, `DateTStamp`) VALUES \
             (1, 1, 'day {n} backdated', '2015-03-03 10:00:00'), (2, 2, 'day {n} zero', '0000-00-00 00:00:00')"
        ));
    }
    for _ in 0..rng.upto(5) {
        sql.push(format!(
            "DELETE FROM `procedurelog` WHERE `ProcNum` = {}",
            key(rng)
        ));
    }
    if rng.chance(8) {
        sql.push(format!(
            "ALTER TABLE `procedurelog` ADD COLUMN `Day{n}` int NOT NULL DEFAULT {n}"
        ));
    }
    // Entry-stamped plans: new ones, edits that leave the stamp alone, a
    // sentinel stamp, a backdated entry, a removal.
    sql.push(format!(
        "INSERT IGNORE INTO `patplan` VALUES ({}, {}, 'day {n} new plan', NOW())",
        key(rng),
        2 + rng.upto(3)
    ));
    for _ in 0..rng.upto(10) {
        sql.push(format!(
            "UPDATE `patplan` SET `Note` = 'day {n} edited' WHERE `PatNum` = {}",
            1 + rng.upto(999)
        ));
    }
    if rng.chance(40) {
        sql.push(format!(
            "INSERT IGNORE INTO `patplan` VALUES ({}, 9, 'day {n} no date', '0001-01-01 00:00:00'), \
             ({}, 8, 'day {n} backdated', '2016-06-06 06:06:06')",
            key(rng),
            key(rng)
        ));
    }
    if rng.chance(30) {
        sql.push(format!(
            "DELETE FROM `patplan` WHERE `PatNum` = {} AND `Ordinal` = 1",
            1 + rng.upto(999)
        ));
    }
    sql.push(format!(
        "INSERT INTO `securitylog` (`LogText`, `LogDateTime`) SELECT 'day {n}', NOW() FROM seq_1_to_{}",
        1 + rng.upto(200)
    ));
    sql
}

/// Autocommitted edits every few milliseconds while a run reads, until `stop`.
async fn keep_editing(
    settings: etl_pipeline::config::MySqlSettings,
    seed: u64,
    top: u64,
    stop: Arc<AtomicBool>,
) {
    let mut conn = etl_pipeline::mysql::connect(&settings).await.unwrap();
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        let key = 1 + rng.upto(top.saturating_sub(1));
        conn.query_drop(format!(
            "UPDATE `procedurelog` SET `ProcFee` = `ProcFee` + 0.5, `Note` = 'during a run' WHERE `ProcNum` = {key}"
        ))
        .await
        .unwrap();
        conn.query_drop(format!(
            "UPDATE `patplan` SET `Note` = 'during a run' WHERE `PatNum` = {}",
            1 + rng.upto(999)
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(3 + rng.upto(20))).await;
    }
}

fn run_to_end(env: &Path, tables: &Path) {
    let out = binary_with(env, tables)
        .args(["run", "--all", "--if-locked", "wait"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// Whether `patplan` has been reconciled on both hops since `edits_done`
/// (the source's clock, `YYYY-MM-DD HH:MM:SS.ffffff`): the copy after it,
/// and the load after the copy.
async fn patplan_reconciled(db: &TestDb, edits_done: &str) -> bool {
    let mut replica = etl_pipeline::mysql::connect(&db.ctx.replica).await.unwrap();
    let copy: Option<Option<String>> = replica
        .query_first(
            "SELECT DATE_FORMAT(`last_reconciled`, '%Y-%m-%d %H:%i:%s.%f') FROM `etl_copy_status` \
             WHERE `table_name` = 'patplan'",
        )
        .await
        .unwrap();
    let load: Option<String> = db
        .pg()
        .await
        .query_one(
            "select to_char(last_reconciled, 'YYYY-MM-DD HH24:MI:SS.US') from raw.etl_load_status \
             where table_name = 'patplan'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    match (copy.flatten(), load) {
        (Some(copy), Some(load)) => copy.as_str() > edits_done && load > copy,
        _ => false,
    }
}

/// The source's clock, as [`patplan_reconciled`] compares it.
async fn source_clock(conn: &mut mysql_async::Conn) -> String {
    conn.query_first("SELECT DATE_FORMAT(NOW(6), '%Y-%m-%d %H:%i:%s.%f')")
        .await
        .unwrap()
        .unwrap()
}

async fn assert_converged(db: &TestDb, tables: &[(&str, &[&str])], day: u64, seed: u64) {
    for (table, key) in tables {
        println!("day {day} (seed {seed}): comparing {table}");
        db.assert_replica_same(table, key).await;
        db.assert_source_same(table, key).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_clinic_days_lose_no_row() {
    let days = setting("ETL_DAYS", 3);
    let seed = setting(
        "ETL_DAYS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            .try_into()
            .unwrap_or(1),
    );
    println!("random clinic days: seed {seed}, {days} days (ETL_DAYS_SEED={seed} replays them)");
    let mut rng = Rng(seed);
    let db = TestDb::new("random_days").await;
    create_source(&db).await;
    let dir = scratch("random_days");
    let env = db.env_file(&dir);
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, TABLES).unwrap();
    run_to_end(&env, &tables);
    let mut source = etl_pipeline::mysql::connect(&db.source).await.unwrap();
    let (mut kills, mut reconciled_checks) = (0, 0);
    let mut edits_done = source_clock(&mut source).await;
    for n in 1..=days {
        let top: u64 = source
            .query_first("SELECT MAX(`ProcNum`) FROM `procedurelog`")
            .await
            .unwrap()
            .unwrap();
        for statement in day(&mut rng, n, top) {
            source.query_drop(&statement).await.unwrap();
        }
        // A run the clinic keeps editing under, killed half the time.
        let stop = Arc::new(AtomicBool::new(false));
        let editor = tokio::spawn(keep_editing(
            db.source.clone(),
            rng.next(),
            top,
            stop.clone(),
        ));
        let mut child = binary_with(&env, &tables)
            .args(["run", "--all", "--if-locked", "wait"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if rng.chance(50) {
            tokio::time::sleep(Duration::from_millis(rng.upto(700))).await;
            if child.try_wait().unwrap().is_none() {
                kills += 1;
            }
            let _ = child.kill();
        }
        let _ = child.wait();
        stop.store(true, Ordering::Relaxed);
        editor.await.unwrap();
        edits_done = source_clock(&mut source).await;
        // Hours pass between a clinic's runs: a second keeps the next day's
        // stamps apart from this one's.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        run_to_end(&env, &tables);
        assert_converged(
            &db,
            &[
                ("procedurelog", &["ProcNum"]),
                ("securitylog", &["SecurityLogNum"]),
            ],
            n,
            seed,
        )
        .await;
        // Every fourth day the clinic stays quiet until patplan's
        // reconciliation has come round on both hops.
        if n % 4 == 0 {
            for _ in 0..8 {
                if patplan_reconciled(&db, &edits_done).await {
                    break;
                }
                run_to_end(&env, &tables);
            }
        }
        if patplan_reconciled(&db, &edits_done).await {
            reconciled_checks += 1;
            assert_converged(&db, &[("patplan", &["PatNum", "Ordinal"])], n, seed).await;
        }
    }
    for _ in 0..8 {
        if patplan_reconciled(&db, &edits_done).await {
            break;
        }
        run_to_end(&env, &tables);
    }
    assert!(
        patplan_reconciled(&db, &edits_done).await,
        "patplan was not reconciled on both hops within 8 runs of the last edit"
    );
    assert_converged(&db, &[("patplan", &["PatNum", "Ordinal"])], days, seed).await;
    println!(
        "random clinic days: seed {seed}, {days} days, {kills} runs killed mid-way, \
         patplan compared after {reconciled_checks} reconciling runs: no row lost"
    );
}
