//! Crash harness: two-hop runs (source → replica → warehouse) of a
//! 200,000-row table, killed with SIGKILL at random moments while the source
//! keeps changing, then one run to the end; the replica and the warehouse
//! must equal the source row for row.
//!
//! `ETL_CRASH_KILLS` (default 5), `ETL_CRASH_ROWS` (default 200,000) and
//! `ETL_CRASH_SEED` (default: the clock) set the size; the seed is printed
//! and replays the same changes, modes and kill delays (the servers' timing
//! still varies). `bash reliability/run` runs it with 50 kills.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Rng, TestDb, binary_with, scratch, setting};
use mysql_async::prelude::Queryable;

const DEFAULT_KILLS: u64 = 5;
const DEFAULT_ROWS: u64 = 200_000;
const SECURITYLOG_ROWS: u64 = 50_000;

/// A small look-back window (2 s instead of 600 s): a wide window would
/// re-read every row the harness touched and hide a lost page.
const TABLES: &str = "tables:
  procedurelog:
    extraction_strategy: incremental
    incremental_columns: [DateTStamp]
    primary_incremental_column: DateTStamp
    primary_key: ProcNum
    batch_size: 5000
    lookback_seconds: 2
    delete_detection: key_reconcile
  securitylog:
    extraction_strategy: incremental_chunked
    incremental_columns: [SecurityLogNum]
    primary_incremental_column: SecurityLogNum
    primary_key: SecurityLogNum
    batch_size: 5000
    lookback_keys: 0
";

async fn create_source(db: &TestDb, rows: u64) {
    let procedures = format!(
        "INSERT INTO `procedurelog` (`PatNum`, `ProcDate`, `ProcFee`, `ProcStatus`, `Note`, `Amount`, `DateTStamp`) \
         SELECT seq % 4099, '2015-01-01' + INTERVAL seq % 3650 DAY, seq / 8, seq % 6, \
         IF(seq % 11 = 0, NULL, CONCAT('note ', seq, ' ', REPEAT(CHAR(97 + seq % 26), seq % 300))), \
         (seq % 100000) / 100, '2024-01-01 00:00:00' + INTERVAL (seq DIV 7) SECOND FROM seq_1_to_{rows}"
    );
    let logs = format!(
        "INSERT INTO `securitylog` (`PermType`, `LogDateTime`, `LogText`) \
         SELECT seq % 200, '2024-01-01' + INTERVAL seq MINUTE, CONCAT('log ', seq) FROM seq_1_to_{SECURITYLOG_ROWS}"
    );
    db.source_sql(&[
        "CREATE TABLE `procedurelog` (`ProcNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         `PatNum` bigint NOT NULL, `ProcDate` date NOT NULL, `ProcFee` double NOT NULL, \
         `ProcStatus` tinyint NOT NULL, `Note` text, `Amount` decimal(12,2) NOT NULL, \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, \
         KEY `PatNum` (`PatNum`), KEY `DateTStamp` (`DateTStamp`)) DEFAULT CHARSET=utf8mb4",
        &procedures,
        "CREATE TABLE `securitylog` (`SecurityLogNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         `PermType` tinyint unsigned NOT NULL, `LogDateTime` datetime NOT NULL, `LogText` text) DEFAULT CHARSET=utf8mb4",
        &logs,
    ])
    .await;
}

/// What the clinic does between two runs: edits, new rows, a few deletes.
async fn change_source(conn: &mut mysql_async::Conn, rng: &mut Rng, round: u64) {
    let top: u64 = conn
        .query_first("SELECT MAX(`ProcNum`) FROM `procedurelog`")
        .await
        .unwrap()
        .unwrap();
    let edits = rng.upto(3000);
    let keys: Vec<String> = (0..edits)
        .map(|_| (1 + rng.upto(top - 1)).to_string())
        .collect();
    for chunk in keys.chunks(1000) {
        conn.query_drop(format!(
            "UPDATE `procedurelog` SET `ProcFee` = `ProcFee` + 0.25, `ProcStatus` = (`ProcStatus` + 1) % 6, \
             `Note` = CONCAT('edited in round {round} ', `ProcNum`) WHERE `ProcNum` IN ({})",
            chunk.join(",")
        ))
        .await
        .unwrap();
    }
    let inserts = rng.upto(2000);
    if inserts > 0 {
        conn.query_drop(format!(
            "INSERT INTO `procedurelog` (`PatNum`, `ProcDate`, `ProcFee`, `ProcStatus`, `Note`, `Amount`) \
             SELECT seq, CURDATE(), seq / 3, 1, CONCAT('new in round {round} ', seq), seq / 7 FROM seq_1_to_{inserts}"
        ))
        .await
        .unwrap();
    }
    let deletes: Vec<String> = (0..rng.upto(30))
        .map(|_| (1 + rng.upto(top - 1)).to_string())
        .collect();
    if !deletes.is_empty() {
        conn.query_drop(format!(
            "DELETE FROM `procedurelog` WHERE `ProcNum` IN ({})",
            deletes.join(",")
        ))
        .await
        .unwrap();
    }
    let logs = rng.upto(1000);
    if logs > 0 {
        conn.query_drop(format!(
            "INSERT INTO `securitylog` (`PermType`, `LogDateTime`, `LogText`) \
             SELECT seq % 200, NOW(), CONCAT('round {round} ', seq) FROM seq_1_to_{logs}"
        ))
        .await
        .unwrap();
    }
}

/// Small autocommitted edits and appends, every few milliseconds, while a
/// run reads the tables, until `stop` is set.
async fn keep_editing(
    settings: etl_pipeline::config::MySqlSettings,
    rows: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut conn = etl_pipeline::mysql::connect(&settings).await.unwrap();
    let mut rng = Rng(seed);
    let mut statements = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = 1 + rng.upto(rows);
        conn.query_drop(format!(
            "UPDATE `procedurelog` SET `Amount` = `Amount` + 1, `Note` = 'edited during a run' \
             WHERE `ProcNum` BETWEEN {key} AND {key} + {}",
            rng.upto(20)
        ))
        .await
        .unwrap();
        conn.query_drop(
            "INSERT INTO `securitylog` (`PermType`, `LogDateTime`, `LogText`) VALUES (7, NOW(), 'during a run')",
        )
        .await
        .unwrap();
        statements += 2;
        tokio::time::sleep(Duration::from_millis(5 + rng.upto(30))).await;
    }
    statements
}

fn spawn(env: &Path, tables: &Path, log: &Path, full: bool) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = binary_with(env, tables);
    cmd.args([
        "run",
        "--table",
        "procedurelog",
        "--table",
        "securitylog",
        "--if-locked",
        "wait",
    ]);
    if full {
        cmd.arg("--force-full");
    }
    cmd.stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

/// The log line that starts the load of procedurelog.
const LOAD_STARTED: &str = "started table=procedurelog phase=\"load\"";

/// Waits for the child to end by itself, or kills it `delay` after it
/// starts, or `delay` after its log shows `armed_by` when one is given.
/// Returns its exit status when it ended first.
async fn run_or_kill(
    child: &mut Child,
    delay: Duration,
    armed_by: Option<(&Path, &str)>,
) -> Option<ExitStatus> {
    let mut armed = armed_by.is_none().then(Instant::now);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        match armed {
            Some(at) if at.elapsed() >= delay => {
                child.kill().unwrap();
                child.wait().unwrap();
                return None;
            }
            Some(_) => {}
            None => {
                let (log, marker) = armed_by.unwrap();
                if std::fs::read_to_string(log).is_ok_and(|t| t.contains(marker)) {
                    armed = Some(Instant::now());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How long the load of procedurelog took in a completed run, from its log.
fn load_seconds(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .find(|l| l.contains("finished table=procedurelog phase=\"load\""))?;
    line.split("seconds=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What the killed run was doing, from its log: the table phases it had
/// started and not finished (`extract of procedurelog`), or `start-up`.
fn phase_at_kill(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let field = |line: &str, key: &str| -> Option<String> {
        let value = line.split(key).nth(1)?.split_whitespace().next()?;
        Some(value.trim_matches('"').to_string())
    };
    let mut open = std::collections::BTreeSet::new();
    for line in text.lines() {
        let (Some(table), Some(phase)) = (field(line, "table="), field(line, "phase=")) else {
            continue;
        };
        let what = format!("{phase} of {table}");
        if line.contains(" started table=") {
            open.insert(what);
        } else if line.contains(" finished table=") {
            open.remove(&what);
        }
    }
    if open.is_empty() {
        "start-up or wrap-up".to_string()
    } else {
        open.into_iter().collect::<Vec<_>>().join(" + ")
    }
}

fn fail_with_log(what: &str, log: &PathBuf, seed: u64) -> ! {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    panic!("{what} (replay with ETL_CRASH_SEED={seed}); its output:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_killed_at_random_moments_lose_and_double_nothing() {
    let kills = setting("ETL_CRASH_KILLS", DEFAULT_KILLS);
    let rows = setting("ETL_CRASH_ROWS", DEFAULT_ROWS);
    let seed = setting(
        "ETL_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    eprintln!("crash harness: seed {seed}, {kills} kills, {rows} rows");
    let mut rng = Rng(seed);

    let db = TestDb::new("crash").await;
    create_source(&db, rows).await;
    let dir = scratch("crash");
    let env = db.env_file(&dir);
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, TABLES).unwrap();
    let mut source = etl_pipeline::mysql::connect(&db.source).await.unwrap();

    // How long an uncut run of each kind took; kills land anywhere in it.
    let mut full_secs = 4.0_f64;
    let mut incremental_secs = 1.5_f64;
    let mut full_load_secs = 1.0_f64;
    let mut incremental_load_secs = 0.3_f64;
    let (mut killed, mut killed_full, mut completed, mut round) = (0, 0, 0, 0);
    let mut edits_during_runs = 0;
    let mut killed_in = std::collections::BTreeMap::new();
    while killed < kills {
        round += 1;
        change_source(&mut source, &mut rng, round).await;
        let full = rng.upto(3) == 0;
        // Half the kills land anywhere in the run, half inside the load of
        // procedurelog (the extract phase takes most of a run's time).
        let in_load = rng.upto(1) == 0;
        let expected = match (in_load, full) {
            (false, true) => full_secs,
            (false, false) => incremental_secs,
            (true, true) => full_load_secs,
            (true, false) => incremental_load_secs,
        };
        let delay = Duration::from_secs_f64(expected * 1.1 * (rng.upto(1000) as f64 / 1000.0));
        let log = dir.join(format!("run-{round}.log"));

        let stop = Arc::new(AtomicBool::new(false));
        let editor = tokio::spawn(keep_editing(
            db.source.clone(),
            rows,
            rng.next(),
            stop.clone(),
        ));
        let started = Instant::now();
        let mut child = spawn(&env, &tables, &log, full);
        let armed_by = in_load.then_some((log.as_path(), LOAD_STARTED));
        let ended = run_or_kill(&mut child, delay, armed_by).await;
        stop.store(true, Ordering::Relaxed);
        edits_during_runs += editor.await.unwrap();
        match ended {
            Some(status) if status.success() => {
                completed += 1;
                let took = started.elapsed().as_secs_f64();
                eprintln!(
                    "round {round}: {} run completed in {took:.3} s",
                    if full { "full" } else { "incremental" }
                );
                let load = load_seconds(&log);
                if full {
                    full_secs = took;
                    full_load_secs = load.unwrap_or(full_load_secs);
                } else {
                    incremental_secs = took;
                    incremental_load_secs = load.unwrap_or(incremental_load_secs);
                }
            }
            Some(status) => fail_with_log(
                &format!("round {round}: the run ended with {status}"),
                &log,
                seed,
            ),
            None => {
                killed += 1;
                killed_full += u64::from(full);
                let during = phase_at_kill(&log);
                eprintln!(
                    "round {round}: {} run killed {:.3} s after {}, during {during}",
                    if full { "full" } else { "incremental" },
                    delay.as_secs_f64(),
                    if in_load {
                        "its load began"
                    } else {
                        "it started"
                    }
                );
                *killed_in.entry(during).or_insert(0) += 1;
            }
        }
    }

    let log = dir.join("final.log");
    let mut last = spawn(&env, &tables, &log, false);
    let status = last.wait().unwrap();
    if !status.success() {
        fail_with_log(&format!("the final run ended with {status}"), &log, seed);
    }
    db.assert_replica_same("procedurelog", &["ProcNum"]).await;
    db.assert_replica_same("securitylog", &["SecurityLogNum"])
        .await;
    let compared = db.assert_source_same("procedurelog", &["ProcNum"]).await
        + db.assert_source_same("securitylog", &["SecurityLogNum"])
            .await;
    eprintln!(
        "crash harness: seed {seed}: {killed} kills ({killed_full} full, {} incremental), {completed} runs completed, \
         {round} rounds of source changes plus {edits_during_runs} statements during runs; \
         {compared} rows compared in the replica and the warehouse, 0 differences; kills during: {killed_in:?}",
        killed - killed_full
    );
}
