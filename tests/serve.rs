//! `serve` as an operator runs it: a real process on a free port, its
//! schedules running against the test's databases, its page, metrics and
//! API over HTTP, its token, and its exit on SIGTERM.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{PATIENTS_AND_DEFINITIONS, TestDb, binary_with, scratch, text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TABLES: &str = "tables:
  patient:
    extraction_strategy: incremental
    incremental_columns: [DateTStamp]
    primary_incremental_column: DateTStamp
    primary_key: PatNum
    performance_category: small
  definition:
    extraction_strategy: full_table
    primary_key: DefNum
    performance_category: tiny
  ghost:
    extraction_strategy: full_table
    performance_category: tiny
";

/// A `serve` process, killed if the test ends without stopping it.
struct Serve {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Serve {
    /// Starts `serve` and waits until `/healthz` answers.
    async fn start(env: &Path, tables: &Path, dir: &Path) -> Serve {
        let port = free_port();
        let log = dir.join(format!("serve-{port}.log"));
        let child = binary_with(env, tables)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--max-workers", "2"])
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .unwrap();
        let mut serve = Serve { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _, _)) = serve.try_get("/healthz", None).await {
                return serve;
            }
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!("serve exited with {status}: {}", serve.output());
            }
            assert!(
                Instant::now() < deadline,
                "serve never answered: {}",
                serve.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: &str,
    ) -> std::io::Result<(u16, String, String)> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, head.to_string(), body.to_string()))
    }

    async fn try_get(
        &self,
        path: &str,
        auth: Option<&str>,
    ) -> std::io::Result<(u16, String, String)> {
        self.request("GET", path, auth, "").await
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let (status, _, body) = self.try_get(path, None).await.unwrap();
        (status, body)
    }

    /// Sends SIGTERM and waits for the process to exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A chunked body (hyper sends one when the length is not known up front)
/// joined again; a plain body as it is.
fn unchunk(head: &str, body: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

/// Waits until `done` holds, at most `within`.
async fn eventually(serve: &Serve, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < within,
            "not within {within:?}: {}",
            serve.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /api/runs/ID` once the run has ended (within a minute).
async fn ended(serve: &Serve, id: &str) -> serde_json::Value {
    let mut run = serde_json::Value::Null;
    eventually(serve, Duration::from_secs(60), async || {
        let (status, body) = serve.get(&format!("/api/runs/{id}")).await;
        assert_eq!(status, 200, "{body}");
        run = serde_json::from_str(&body).unwrap();
        run["state"] != "running"
    })
    .await;
    run
}

/// Waits until schedule `schedule` has started `count` runs, at most
/// `within`.
async fn await_runs(db: &TestDb, serve: &Serve, schedule: &str, count: i64, within: Duration) {
    eventually(serve, within, async || {
        runs_by(db, "scheduler", Some(schedule)).await >= count
    })
    .await;
}

async fn setup(name: &str, schedules: &str) -> (TestDb, PathBuf, PathBuf, PathBuf) {
    let db = TestDb::new(name).await;
    db.source_sql(&PATIENTS_AND_DEFINITIONS).await;
    let dir = scratch(name);
    let env = db.env_file(&dir);
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, format!("{TABLES}{schedules}")).unwrap();
    let out = binary_with(&env, &tables).arg("init").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    (db, dir, env, tables)
}

/// Distinct runs in the history, by what started them (less the one a
/// test writes by hand, `old-run`).
async fn runs_by(db: &TestDb, triggered_by: &str, schedule: Option<&str>) -> i64 {
    let rows: Vec<i64> = db
        .pg_values(&format!(
            "select count(distinct run_id) from raw.etl_run_history where status <> 'alert' \
             and run_id <> 'old-run' and triggered_by = '{triggered_by}' \
             and schedule_name is not distinct from {}",
            schedule.map_or("null".to_string(), |s| format!("'{s}'"))
        ))
        .await;
    rows[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_a_seconds_schedule_and_answers_its_page_metrics_and_api() {
    let (db, dir, env, tables) = setup(
        "serve_flow",
        "schedules:
  fast: {cron: \"*/5 * * * * *\", category: small}
  paused: {cron: \"* * * * * *\", all: true, active: false}
",
    )
    .await;
    let mut serve = Serve::start(&env, &tables, &dir).await;

    // The schedule runs by itself, at least twice within 14 s, and only
    // the tables of its category; the paused one never does.
    await_runs(&db, &serve, "fast", 2, Duration::from_secs(14)).await;
    assert_eq!(runs_by(&db, "scheduler", Some("paused")).await, 0);
    // Each began on its time (a multiple of 5 s), not drifting past it.
    let (_, list) = serve.get("/api/runs").await;
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    for run in list.as_array().unwrap() {
        let started = run["started_at"].as_f64().unwrap();
        assert!(
            started % 5.0 < 0.5,
            "began {:.3} s past its time: {run}",
            started % 5.0
        );
    }
    let other: Vec<i64> = db
        .pg_values(
            "select count(*) from raw.etl_run_history where triggered_by = 'scheduler' \
             and table_name <> 'patient'",
        )
        .await;
    assert_eq!(other, vec![0]);
    db.assert_same("patient", &["PatNum"]).await;

    // An edit at the source arrives through the schedule alone.
    db.source_sql(&["INSERT INTO `patient` (`LName`) VALUES ('Okafor')"])
        .await;
    eventually(&serve, Duration::from_secs(20), async || {
        db.pg_count("patient").await == 41
    })
    .await;

    // The page, a table's page with its plots, the metrics.
    let (status, page) = serve.get("/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<html") && page.contains("/tables/patient"),
        "{page}"
    );
    assert!(page.contains("fast") && page.contains("paused"), "{page}");
    assert!(page.contains("name=\"viewport\""));
    let (status, table_page) = serve.get("/tables/patient").await;
    assert_eq!(status, 200);
    assert!(table_page.contains("<svg"), "{table_page}");
    assert!(table_page.contains("scheduler (fast)"), "{table_page}");
    assert_eq!(serve.get("/tables/nope").await.0, 404);
    let (_, head, body) = serve.try_get("/metrics", None).await.unwrap();
    let metrics = unchunk(&head, &body);
    assert!(head.contains("200"), "{head}");
    for family in [
        "etl_table_last_success_timestamp_seconds{",
        "etl_table_last_run_duration_seconds{",
        "etl_table_rows_loaded_total{table=\"patient\"}",
        "etl_runs_total{triggered_by=\"scheduler\"}",
        "etl_status_up 1",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    assert!(
        metrics.contains("# TYPE etl_table_rows_loaded_total counter"),
        "{metrics}"
    );
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        assert!(series.starts_with("etl_"), "{line}");
    }
    let loaded: u64 = metrics
        .lines()
        .find(|l| l.starts_with("etl_table_rows_loaded_total{table=\"patient\"}"))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap();
    assert!(loaded >= 41, "{metrics}");

    // A run started over the API, followed to its end.
    let (status, _, body) = serve
        .request("POST", "/api/runs", None, r#"{"tables": ["definition"]}"#)
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&unchunk("", &body)).unwrap();
    let id = answer["id"].as_str().unwrap().to_string();
    let state = ended(&serve, &id).await;
    assert_eq!(state["state"], "succeeded", "{state}");
    assert_eq!(state["triggered_by"], "api");
    assert_eq!(state["summary"]["succeeded"], true, "{state}");
    let api_rows: Vec<i64> = db
        .pg_values(&format!(
            "select count(*) from raw.etl_run_history where run_id = '{id}' \
             and triggered_by = 'api' and table_name = 'definition'"
        ))
        .await;
    assert_eq!(api_rows, vec![2]);
    db.assert_same("definition", &["DefNum"]).await;
    for (body, names) in [
        (r#"{"tables": ["nope"]}"#, "`nope`"),
        (r#"{"all": true, "tables": ["patient"]}"#, "exactly one"),
        ("not json", "not a run request"),
    ] {
        let (status, _, answer) = serve
            .request("POST", "/api/runs", None, body)
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(names), "{body}: {answer}");
    }
    assert_eq!(serve.get("/api/runs/no-such-run").await.0, 404);

    // A run that fails (the table is configured but not at the source)
    // says so in its state, the failure counter and the page.
    let (status, _, body) = serve
        .request("POST", "/api/runs", None, r#"{"tables": ["ghost"]}"#)
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = ended(&serve, &id).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert!(run["summary"].to_string().contains("ghost"), "{run}");
    let (_, head, body) = serve.try_get("/metrics", None).await.unwrap();
    let metrics = unchunk(&head, &body);
    assert!(
        metrics.contains("etl_run_failures_total{triggered_by=\"api\"} 1"),
        "{metrics}"
    );
    // The page's status is read again after the run (at most every 10 s).
    eventually(&serve, Duration::from_secs(20), async || {
        serve.get("/").await.1.contains("/tables/ghost")
    })
    .await;
    let (_, ghost) = serve.get("/tables/ghost").await;
    assert!(
        ghost.contains(">failed<") && ghost.contains(">api<"),
        "{ghost}"
    );

    // SIGTERM: the process stops cleanly, exit 0.
    let status = serve.terminate();
    assert!(status.success(), "{status}: {}", serve.output());
    assert!(serve.output().contains("stopped"), "{}", serve.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_outside_loopback_needs_a_token_and_every_request_carries_it() {
    let (_db, dir, env, tables) = setup("serve_token", "").await;
    let port = free_port();
    let out = binary_with(&env, &tables)
        .args(["serve", "--listen", &format!("0.0.0.0:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("ETL_SERVE_TOKEN"), "{}", text(&out));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    let token = "serve-token-7f3a9c2e5b1d4680";
    let mut env_text = std::fs::read_to_string(&env).unwrap();
    env_text.push_str(&format!("ETL_SERVE_TOKEN={token}\n"));
    std::fs::write(&env, env_text).unwrap();
    let mut serve = Serve::start(&env, &tables, &dir).await;
    let bearer = format!("Bearer {token}");
    // "operator:<token>" in base64, as a browser sends it.
    let basic = "Basic b3BlcmF0b3I6c2VydmUtdG9rZW4tN2YzYTljMmU1YjFkNDY4MA==";
    for path in ["/", "/metrics", "/api/runs", "/tables/patient"] {
        let (status, head, _) = serve.try_get(path, None).await.unwrap();
        assert_eq!(status, 401, "{path}");
        assert!(head.contains("www-authenticate: Basic"), "{head}");
        let wrong = serve
            .try_get(path, Some("Bearer serve-token-0000000000000000"))
            .await
            .unwrap();
        assert_eq!(wrong.0, 401, "{path}");
        assert_eq!(
            serve.try_get(path, Some(&bearer)).await.unwrap().0,
            200,
            "{path}"
        );
        assert_eq!(
            serve.try_get(path, Some(basic)).await.unwrap().0,
            200,
            "{path}"
        );
    }
    let (status, _, _) = serve
        .request("POST", "/api/runs", None, r#"{"all": true}"#)
        .await
        .unwrap();
    assert_eq!(status, 401);
    assert_eq!(serve.get("/healthz").await.0, 200);
    let (_, _, page) = serve.try_get("/", Some(&bearer)).await.unwrap();
    assert!(!page.contains(token));
    assert!(serve.terminate().success());
    assert!(!serve.output().contains(token), "{}", serve.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_missed_while_serve_was_down_runs_once_and_a_new_one_waits() {
    let (db, dir, env, tables) = setup(
        "serve_catch_up",
        "schedules:
  yearly: {cron: \"0 0 3 1 1 *\", tables: [definition]}
  fresh: {cron: \"0 0 3 1 1 *\", tables: [patient]}
",
    )
    .await;
    // `yearly` last ran 400 days ago: its time passed while serve was down.
    db.pg()
        .await
        .batch_execute(
            "insert into raw.etl_run_history (run_id, table_name, phase, status, started_at, finished_at, \
                                              triggered_by, schedule_name) \
             values ('old-run', 'definition', 'load', 'success', now() - interval '400 days', \
                     now() - interval '400 days', 'scheduler', 'yearly')",
        )
        .await
        .unwrap();
    let mut serve = Serve::start(&env, &tables, &dir).await;
    await_runs(&db, &serve, "yearly", 1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Once, not once per year missed; the schedule that never ran waits.
    assert_eq!(runs_by(&db, "scheduler", Some("yearly")).await, 1);
    assert_eq!(runs_by(&db, "scheduler", Some("fresh")).await, 0);
    db.assert_same("definition", &["DefNum"]).await;
    assert!(serve.output().contains("catching up"), "{}", serve.output());
    assert!(serve.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_firing_while_its_run_is_stuck_starts_no_second_and_catches_up_once() {
    let (db, dir, env, tables) = setup(
        "serve_overlap",
        "schedules:
  often: {cron: \"*/2 * * * * *\", tables: [definition]}
",
    )
    .await;
    // Another session holds the source table: the schedule's run waits.
    let mut holder = etl_pipeline::mysql::connect(&db.source).await.unwrap();
    use mysql_async::prelude::Queryable;
    holder
        .query_drop("LOCK TABLES `definition` WRITE")
        .await
        .unwrap();
    let mut serve = Serve::start(&env, &tables, &dir).await;
    await_runs(&db, &serve, "often", 1, Duration::from_secs(10)).await;
    // Three times pass while the run waits: none starts another run.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(runs_by(&db, "scheduler", Some("often")).await, 1);
    let (_, body) = serve.get("/").await;
    assert!(body.contains("running"), "{body}");
    holder.query_drop("UNLOCK TABLES").await.unwrap();
    let unlocked = Instant::now();
    await_runs(&db, &serve, "often", 2, Duration::from_secs(10)).await;
    // The catch-up started at once (not at the next time), then the
    // schedule keeps to its times: runs of it never overlap.
    assert!(
        unlocked.elapsed() < Duration::from_millis(1900),
        "{:?}",
        unlocked.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let spans: Vec<(String, f64, f64)> = db
        .pg()
        .await
        .query(
            "select run_id, extract(epoch from min(started_at))::float8, \
                    extract(epoch from max(coalesce(finished_at, now())))::float8 \
             from raw.etl_run_history where schedule_name = 'often' group by run_id order by 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(spans.len() >= 3, "{spans:?}");
    for pair in spans.windows(2) {
        assert!(pair[1].1 >= pair[0].2, "runs overlap: {pair:?}");
    }
    db.assert_same("definition", &["DefNum"]).await;
    assert!(serve.terminate().success());
}
