//! Alerts from `monitoring:` settings: through the command hook, a webhook
//! served here on 127.0.0.1, the run history and the summary.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestDb, binary_with, scratch};

/// The path of the webhook URL: chat webhooks keep their token there, so it
/// must never be printed.
const TOKEN: &str = "T0KEN-8f3a9c";

/// What a webhook receiver does with each request.
#[derive(Clone, Copy)]
enum Answer {
    /// 503 to the first request, 204 to the rest.
    FailOnceThenAccept,
    /// Reads the request and never answers.
    Silent,
}

/// Serves a webhook on 127.0.0.1; returns its URL and the bodies received.
fn webhook(answer: Answer) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/hooks/{TOKEN}",
        listener.local_addr().unwrap().port()
    );
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let stream = stream.unwrap();
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            assert!(
                request_line.starts_with(&format!("POST /hooks/{TOKEN} HTTP/1.1")),
                "{request_line}"
            );
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let first = {
                let mut bodies = seen.lock().unwrap();
                bodies.push(String::from_utf8(body).unwrap());
                bodies.len() == 1
            };
            let mut stream = reader.into_inner();
            match answer {
                Answer::FailOnceThenAccept if first => {
                    stream
                        .write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
                        .unwrap();
                }
                Answer::FailOnceThenAccept => {
                    stream
                        .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                        .unwrap();
                }
                Answer::Silent => held.push(stream),
            }
        }
    });
    (url, bodies)
}

/// (kind, table, phase) of each JSON alert, sorted.
fn alert_keys<'a>(
    alerts: impl Iterator<Item = &'a serde_json::Value>,
) -> Vec<(String, String, String)> {
    let mut keys: Vec<_> = alerts
        .map(|a| {
            let field = |k: &str| a[k].as_str().unwrap_or("").to_string();
            (field("kind"), field("table"), field("phase"))
        })
        .collect();
    keys.sort();
    keys
}

fn hook_alerts(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn key(kind: &str, table: &str, phase: &str) -> (String, String, String) {
    (kind.into(), table.into(), phase.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_memory_and_failed_tables_alert_through_hook_webhook_history_and_summary() {
    let db = TestDb::new("alerts").await;
    db.source_sheetfield(6_000).await;
    db.source_sql(&[
        "CREATE TABLE `definition` (`DefNum` bigint NOT NULL PRIMARY KEY, `ItemName` varchar(255) NOT NULL)",
        "INSERT INTO `definition` SELECT seq, CONCAT('def ', seq) FROM seq_1_to_12",
    ])
    .await;
    let dir = scratch("alerts");
    let (url, received) = webhook(Answer::FailOnceThenAccept);
    let env = db.env_file(&dir);
    let mut env_text = std::fs::read_to_string(&env).unwrap();
    env_text.push_str(&format!("ETL_ALERT_WEBHOOK_URL={url}\n"));
    std::fs::write(&env, env_text).unwrap();
    let tables = dir.join("tables.yml");
    std::fs::write(
        &tables,
        "tables:\n\
         \x20 sheetfield:\n    extraction_strategy: incremental\n    incremental_columns: [SheetFieldNum]\n    \
         primary_incremental_column: SheetFieldNum\n    batch_size: 1000\n    monitoring:\n      \
         alert_on_failure: true\n      alert_on_slow_extraction: true\n      \
         performance_threshold_records_per_second: 1000000\n\
         \x20 definition:\n    extraction_strategy: full_table\n    monitoring:\n      \
         alert_on_failure: false\n      alert_on_slow_extraction: true\n      memory_alert_threshold_mb: 1\n\
         \x20 ghost:\n    extraction_strategy: full_table\n\
         \x20 quietghost:\n    extraction_strategy: full_table\n    monitoring:\n      alert_on_failure: false\n",
    )
    .unwrap();
    db.pg().await; // the warehouse exists; `init` creates the tracking tables
    let init = binary_with(&env, &tables).arg("init").output().unwrap();
    assert!(init.status.success(), "{init:?}");

    let hook_file = dir.join("hook.jsonl");
    // 6,000 rows at 2,000 rows/s: the copy of sheetfield takes three seconds.
    let out = binary_with(&env, &tables)
        .args([
            "run",
            "--all",
            "--max-rows-per-second",
            "2000",
            "--on-alert",
        ])
        .arg(format!("cat >> '{}'", hook_file.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        !stdout.contains(TOKEN) && !stderr.contains(TOKEN),
        "the webhook's token was printed: {stdout}{stderr}"
    );

    let hooked = hook_alerts(&hook_file);
    let keys = alert_keys(hooked.iter());
    // Speed is judged only on phases of a second or more: the load of
    // 6,000 rows is normally quicker than that, the throttled copy is not.
    let expected_core = [
        key("failure", "ghost", "extract"),
        key("memory", "definition", "extract"),
        key("memory", "definition", "load"),
        key("slow", "sheetfield", "extract"),
    ];
    for k in &expected_core {
        assert_eq!(
            keys.iter().filter(|x| *x == k).count(),
            1,
            "{k:?} once in {keys:?}"
        );
    }
    let extra: Vec<_> = keys.iter().filter(|k| !expected_core.contains(k)).collect();
    assert!(
        extra
            .iter()
            .all(|k| **k == key("slow", "sheetfield", "load")),
        "unexpected alerts: {extra:?}"
    );
    let slow = hooked.iter().find(|a| a["kind"] == "slow").unwrap();
    assert!(slow["measured"].as_f64().unwrap() < 2_500.0, "{slow}");
    assert_eq!(slow["threshold"], 1_000_000.0);
    assert!(
        slow["message"]
            .as_str()
            .unwrap()
            .contains("below its threshold")
    );
    let failure = hooked.iter().find(|a| a["kind"] == "failure").unwrap();
    assert!(
        failure["message"].as_str().unwrap().contains("`ghost`"),
        "{failure}"
    );

    // The webhook got each alert once after one refused attempt (503, retried).
    let bodies = received.lock().unwrap().clone();
    let posted: Vec<serde_json::Value> = bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    assert_eq!(posted.len(), hooked.len() + 1, "{bodies:?}");
    let mut delivered = alert_keys(posted.iter());
    delivered.dedup();
    assert_eq!(delivered, keys);
    assert!(
        posted
            .iter()
            .all(|p| p["text"].as_str().unwrap().contains("[etl-pipeline on "))
    );

    // The run history has one row per alert; the summary a line each.
    let client = db.pg().await;
    let rows = client
        .query(
            "select warnings->>'kind', table_name::text, phase::text, error from raw.etl_run_history \
             where status = 'alert'",
            &[],
        )
        .await
        .unwrap();
    let mut history: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    history.sort();
    assert_eq!(history, keys);
    assert_eq!(stdout.matches("ALERT (").count(), hooked.len(), "{stdout}");
    assert!(
        stdout.contains("ALERT (failure): `ghost` extract failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{} alert(s)", hooked.len())),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_start_alerts_and_a_silent_webhook_does_not_hold_it() {
    let db = TestDb::new("alerts_down").await;
    let dir = scratch("alerts_down");
    let (url, received) = webhook(Answer::Silent);
    let env = db.env_file(&dir);
    let env_text = std::fs::read_to_string(&env)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("TEST_POSTGRES_ANALYTICS_PORT=") {
                "TEST_POSTGRES_ANALYTICS_PORT=1".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(
        &env,
        format!(
            "{env_text}\nETL_ALERT_WEBHOOK_URL={url}\nETL_ALERT_WEBHOOK_TIMEOUT_SECONDS=1\n\
             ETL_ALERT_WEBHOOK_RETRIES=1\nETL_ALERT_COMMAND=cat > '{}'\n",
            dir.join("hook.json").display()
        ),
    )
    .unwrap();
    let tables = dir.join("tables.yml");
    std::fs::write(
        &tables,
        "tables:\n  definition:\n    extraction_strategy: full_table\n",
    )
    .unwrap();

    let started = Instant::now();
    let out = binary_with(&env, &tables)
        .args(["run", "--all"])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // Two attempts of one second each and a one-second pause between them.
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    assert!(
        stderr.contains("no answer within 1 s") && stderr.contains("gave up after 2 attempt(s)"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");
    assert_eq!(received.lock().unwrap().len(), 2);
    let alert: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("hook.json")).unwrap()).unwrap();
    assert_eq!(alert["kind"], "run_failed");
    assert!(
        alert["message"].as_str().unwrap().contains("run failed"),
        "{alert}"
    );
}
