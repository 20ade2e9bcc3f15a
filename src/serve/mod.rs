//! `etl-pipeline serve`: the tool as a service. It runs the config's
//! `schedules:` by itself ([`scheduler`]) and answers over HTTP:
//!
//! | path | what |
//! |---|---|
//! | `GET /` | the operator's page: every table's copy, load and transform status, lag, last error, failures in 24 h; the schedules; recent alerts |
//! | `GET /tables/NAME` | one table's run history, with plots (SVG drawn here) |
//! | `GET /metrics` | Prometheus metrics, text format ([`metrics`]) |
//! | `GET /healthz` | `ok` while the process serves |
//! | `POST /api/runs` | starts a run now (`{"tables": [...]}`, `{"category": "small"}` or `{"all": true}`, and `force_full`); answers its id |
//! | `GET /api/runs/ID` | a run's state and summary |
//!
//! It listens on loopback unless told otherwise; any other address needs a
//! token (`ETL_SERVE_TOKEN` or `ETL_SERVE_TOKEN_FILE`), asked of every
//! request but `/healthz`, as a bearer token or as a browser's basic-auth
//! password. SIGTERM (or Ctrl-C) stops new runs, lets the runs under way
//! finish the batch in hand and commit, and exits 0.

mod metrics;
mod page;
mod runs;
mod scheduler;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::alert::Notifier;
use crate::config::{Env, PerformanceCategory, Secret, Selection, TablesConfig};
use crate::error::{Error, Result, chain};
use crate::pipeline;
use crate::shutdown::Stop;
use crate::tracking::{self, RunOrigin, StatusLine};

pub use runs::{RunRequest, RunState};

/// The address `serve` listens on unless `--listen` says otherwise: this
/// machine only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How often the status behind the page and the metrics is read again
/// (and each table's lag sampled for its plot): one indexed count per
/// table at the source a minute stays gentle on a clinic's server. It is
/// also read again after a run this process makes, but not sooner than
/// [`STATUS_MIN_GAP_SECONDS`] after the last read.
pub const STATUS_REFRESH_SECONDS: u64 = 60;

/// The least time between two reads of the status: a schedule every few
/// seconds must not turn the lag counts into a steady load on the source.
pub const STATUS_MIN_GAP_SECONDS: u64 = 10;

/// Lag samples kept per table: a day of one a minute.
const LAG_SAMPLES: usize = 1_440;

/// The largest request body read (`POST /api/runs`): a list of every
/// OpenDental table fits many times over.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// A request's headers must arrive within this, so a client that never
/// finishes them cannot hold a connection open.
const HEADER_TIMEOUT_SECONDS: u64 = 10;

/// How `serve` was asked to run.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub tables_file: PathBuf,
    pub max_workers: usize,
    pub on_alert: Option<String>,
}

/// The status as last read, with each table's lag over time.
#[derive(Debug, Default)]
pub struct StatusSnapshot {
    /// Seconds since the epoch of the last refresh; `None` before the first.
    pub refreshed_at: Option<f64>,
    pub lines: Vec<StatusLine>,
    /// Where the lag was measured, or why it could not be.
    pub measured: Option<String>,
    /// Why the status could not be read at the last refresh.
    pub error: Option<String>,
    /// Per table: (seconds since the epoch, lag in seconds), oldest first.
    pub lag_samples: HashMap<String, VecDeque<(f64, i64)>>,
}

/// What every request and schedule shares.
pub struct App {
    runner: runs::Runner,
    runs: runs::Runs,
    config: TablesConfig,
    token: Option<Secret>,
    status: Mutex<Arc<StatusSnapshot>>,
    /// Woken after a run ends, so the status is read again then.
    status_changed: Notify,
    /// Runs to start: the schedules and `POST /api/runs` hand them to the
    /// loop that drives every run ([`drive`]).
    jobs: mpsc::Sender<Job>,
}

/// A run to start, and whom to tell when it has ended.
pub struct Job {
    origin: RunOrigin,
    request: RunRequest,
    done: Option<oneshot::Sender<()>>,
}

/// Runs waiting to start at most: a schedule waits for its own run, so
/// this bounds the API's; a request past it is answered 503.
const QUEUED_RUNS: usize = 32;

/// Runs the service until SIGTERM or Ctrl-C.
pub async fn serve(opts: ServeOptions, env: Env) -> Result<()> {
    let config = TablesConfig::load(&opts.tables_file)?;
    let token = env.serve_token()?;
    if !opts.listen.ip().is_loopback() && token.is_none() {
        return Err(Error::config(format!(
            "serve would listen on {}, which other machines can reach, without a token: set \
             ETL_SERVE_TOKEN (or ETL_SERVE_TOKEN_FILE) to a secret of at least {} bytes, which every \
             request must then carry, or listen on 127.0.0.1",
            opts.listen,
            crate::config::MIN_SERVE_TOKEN_BYTES
        )));
    }
    let warehouse = env.warehouse()?;
    let client = crate::postgres::connect(&warehouse).await?;
    tracking::check_warehouse(&client, &warehouse.schema).await?;
    drop(client);
    let notifier = Notifier::from_env(&env, opts.on_alert.as_deref())?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| {
            Error::config(format!(
                "cannot listen on {}: {e}; pick another address with --listen ADDR",
                opts.listen
            ))
        })?;
    let stop = crate::cli::stop_on_signals();
    let (jobs, queued) = mpsc::channel(QUEUED_RUNS);
    let app = Arc::new(App {
        runner: runs::Runner {
            tables_file: opts.tables_file.clone(),
            env,
            notifier,
            stop: stop.clone(),
            max_workers: opts.max_workers,
        },
        runs: runs::Runs::default(),
        token,
        status: Mutex::new(Arc::new(StatusSnapshot::default())),
        status_changed: Notify::new(),
        jobs,
        config,
    });
    let mut tasks = tokio::task::JoinSet::new();
    let active: Vec<_> = app
        .config
        .schedules()
        .iter()
        .filter(|s| s.active)
        .cloned()
        .collect();
    println!(
        "serving on http://{} ({} schedule(s) active of {}); stop with SIGTERM or Ctrl-C",
        opts.listen,
        active.len(),
        app.config.schedules().len()
    );
    for schedule in active {
        tasks.spawn(scheduler::run_schedule(app.clone(), schedule));
    }
    let refresher = tokio::spawn(refresh_status(app.clone(), stop.clone()));
    let connections = tokio::spawn(accept(listener, app.clone(), stop.clone()));
    drive(&app, queued, stop).await;
    connections.abort();
    refresher.abort();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    println!("stopped: every run under way committed the batch in hand");
    Ok(())
}

/// Drives every run: starts each job as it comes, until `stop` is asked;
/// then lets the runs under way end (they stop at their next batch
/// boundary, committed). Runs are driven here, on the task that owns the
/// process, not spawned.
async fn drive(app: &App, mut queued: mpsc::Receiver<Job>, mut stop: Stop) {
    let mut running = futures_util::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            job = queued.recv() => {
                let Some(job) = job else { break };
                running.push(async move {
                    app.runs.execute(&app.runner, job.origin, job.request).await;
                    app.status_changed.notify_one();
                    if let Some(done) = job.done {
                        let _ = done.send(());
                    }
                });
            }
            Some(()) = running.next(), if !running.is_empty() => {}
            () = stop.requested_wait() => break,
        }
    }
    while running.next().await.is_some() {}
}

/// Serves connections until `stop` is asked.
async fn accept(listener: tokio::net::TcpListener, app: Arc<App>, mut stop: Stop) {
    let app = &app;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.requested_wait() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(&app, req).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(HEADER_TIMEOUT_SECONDS))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}

/// Reads the status every [`STATUS_REFRESH_SECONDS`] and after each run
/// (at most once per [`STATUS_MIN_GAP_SECONDS`]).
async fn refresh_status(app: Arc<App>, mut stop: Stop) {
    loop {
        let read = crate::status::gather(&app.runner.env, &app.runner.tables_file, true).await;
        let now = runs::epoch_now();
        let previous = app.snapshot();
        let mut next = StatusSnapshot {
            refreshed_at: Some(now),
            lag_samples: previous.lag_samples.clone(),
            ..StatusSnapshot::default()
        };
        match read {
            Ok((lines, measured)) => {
                for line in &lines {
                    if let Some(lag) = line.lag_seconds {
                        let samples = next.lag_samples.entry(line.table.clone()).or_default();
                        if samples.len() >= LAG_SAMPLES {
                            samples.pop_front();
                        }
                        samples.push_back((now, lag));
                    }
                }
                next.lines = lines;
                next.measured = measured;
            }
            Err(e) => {
                next.lines = previous.lines.clone();
                next.error = Some(crate::config::redact(&chain(&e)));
            }
        }
        *app.status.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        let read_at = tokio::time::Instant::now();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(STATUS_REFRESH_SECONDS)) => {}
            () = app.status_changed.notified() => {
                let gap = read_at + Duration::from_secs(STATUS_MIN_GAP_SECONDS);
                tokio::select! {
                    () = tokio::time::sleep_until(gap) => {}
                    () = stop.requested_wait() => return,
                }
            }
            () = stop.requested_wait() => return,
        }
    }
}

impl App {
    /// The status as last read.
    fn snapshot(&self) -> Arc<StatusSnapshot> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `req` carries the token (always, when none is set).
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(given) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let offered = if let Some(bearer) = given.strip_prefix("Bearer ") {
            bearer.trim().to_string()
        } else if let Some(basic) = given.strip_prefix("Basic ") {
            decode_basic_password(basic.trim()).unwrap_or_default()
        } else {
            return false;
        };
        same_secret(&offered, token.expose())
    }
}

/// Compares two secrets by their SHA-256 digests, so the time taken says
/// nothing about how much of the token a guess got right.
fn same_secret(offered: &str, token: &str) -> bool {
    let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    digest(offered).as_ref() == digest(token).as_ref()
}

/// The password of a basic-auth header value (`base64(user:password)`):
/// a browser asks a person for it, so the page opens on a phone too.
fn decode_basic_password(encoded: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut out = Vec::new();
    for c in encoded.bytes().filter(|c| *c != b'=') {
        let value = ALPHABET.iter().position(|a| *a == c)?;
        bits = (bits << 6) | u32::try_from(value).ok()?;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push(u8::try_from((bits >> count) & 0xff).ok()?);
        }
    }
    let text = String::from_utf8(out).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_string())
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", value.to_string())
}

fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/healthz" {
        return respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n");
    }
    if !app.authorized(&req) {
        let mut response = respond(
            StatusCode::UNAUTHORIZED,
            "text/plain; charset=utf-8",
            "a token is needed: send `Authorization: Bearer TOKEN` (ETL_SERVE_TOKEN)\n",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"etl-pipeline\", charset=\"UTF-8\""),
        );
        return response;
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/") => page::overview(app).await,
        (&Method::GET, "/metrics") => metrics_response(app).await,
        (&Method::GET, "/api/runs") => json(
            StatusCode::OK,
            &serde_json::to_value(app.runs.list()).unwrap_or_default(),
        ),
        (&Method::POST, "/api/runs") => start_run(app, req).await,
        (&Method::GET, p) if p.starts_with("/api/runs/") => {
            let id = &p["/api/runs/".len()..];
            match app.runs.get(id) {
                Some(run) => json(StatusCode::OK, &run.to_json()),
                None => json_error(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "no run `{id}` started by this process (its tables' runs are in etl_run_history)"
                    ),
                ),
            }
        }
        (&Method::GET, p) if p.starts_with("/tables/") => {
            page::table(app, &percent_decode(&p["/tables/".len()..])).await
        }
        (_, "/" | "/metrics" | "/api/runs") => json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not served at {path}"),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("nothing at {path}; the page is at /\n"),
        ),
    }
}

/// A path segment with its `%XX` escapes decoded (table names with spaces).
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| {
            char::from(b)
                .to_digit(16)
                .and_then(|d| u8::try_from(d).ok())
        };
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi * 16 + lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn metrics_response(app: &App) -> Response<Full<Bytes>> {
    let status = app.snapshot();
    let history = async {
        let warehouse = app.runner.env.warehouse()?;
        let client = crate::postgres::connect(&warehouse).await?;
        tracking::phase_summaries(&client, &warehouse.schema).await
    }
    .await;
    if let Err(e) = &history {
        tracing::warn!(error = %chain(e), "metrics: the run history cannot be read");
    }
    let (runs_started, runs_failed) = app.runs.counts();
    let running = app
        .runs
        .list()
        .iter()
        .filter(|r| r.state == "running")
        .count();
    let text = metrics::render(&metrics::Scrape {
        status: &status,
        history: history.as_ref().ok(),
        runs_started,
        runs_failed,
        runs_running: running,
    });
    respond(StatusCode::OK, metrics::CONTENT_TYPE, text)
}

/// The body of `POST /api/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    tables: Option<Vec<String>>,
    category: Option<PerformanceCategory>,
    all: Option<bool>,
    #[serde(default)]
    force_full: bool,
}

/// Checks a run body against the config: which tables, as a schedule
/// names them.
fn run_request(config: &TablesConfig, body: RunBody) -> std::result::Result<RunRequest, String> {
    let has_category = |category| {
        config
            .tables()
            .any(|t| t.performance_category == Some(category))
    };
    let selection = Selection::pick(
        (body.category, body.tables, body.all),
        &|table| config.get(table).is_ok(),
        &has_category,
    )
    .map_err(|(key, why)| match key {
        Some(key) => format!("`{key}`: {why}"),
        None => why,
    })?;
    Ok(RunRequest {
        selection,
        force_full: body.force_full,
    })
}

async fn start_run(app: &Arc<App>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if app.runner.stop.requested() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "serve is stopping; no new runs",
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the body cannot be read ({e}); send at most {MAX_BODY_BYTES} bytes of JSON"
                ),
            );
        }
    };
    let parsed: RunBody = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the body is not a run request ({e}); send e.g. {{\"tables\": [\"procedurelog\"]}}, \
                     {{\"category\": \"small\"}} or {{\"all\": true}}, with \"force_full\" optional"
                ),
            );
        }
    };
    let request = match run_request(&app.config, parsed) {
        Ok(request) => request,
        Err(why) => return json_error(StatusCode::BAD_REQUEST, &why),
    };
    let origin = RunOrigin {
        run_id: pipeline::new_run_id(),
        triggered_by: "api",
        schedule: None,
    };
    let id = app.runs.begin(&origin, &request);
    let job = Job {
        origin,
        request,
        done: None,
    };
    if app.jobs.try_send(job).is_err() {
        app.runs.abandon(&id);
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("{QUEUED_RUNS} runs are waiting to start already; try again once some have"),
        );
    }
    json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "id": id, "state": "running", "url": format!("/api/runs/{id}") }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browsers_basic_auth_gives_the_password() {
        // "operator:s3cret-token-1234" in base64.
        assert_eq!(
            decode_basic_password("b3BlcmF0b3I6czNjcmV0LXRva2VuLTEyMzQ=").as_deref(),
            Some("s3cret-token-1234")
        );
        assert_eq!(decode_basic_password("!!!"), None);
        assert_eq!(decode_basic_password("bm9jb2xvbg=="), None);
    }

    #[test]
    fn table_names_in_paths_are_decoded() {
        assert_eq!(percent_decode("odd%20name"), "odd name");
        assert_eq!(percent_decode("procedurelog"), "procedurelog");
        assert_eq!(percent_decode("bad%2"), "bad%2");
        assert_eq!(percent_decode("%C3%A9t%C3%A9"), "été");
    }

    #[test]
    fn a_run_request_names_one_selection_the_config_has() {
        let config = TablesConfig::parse(
            "tables:\n  procedurelog: {extraction_strategy: full_table, performance_category: small}\n",
        )
        .unwrap();
        let body = |text: &str| serde_json::from_str::<RunBody>(text).unwrap();
        let ok = run_request(&config, body(r#"{"tables": ["procedurelog"]}"#)).unwrap();
        assert_eq!(ok.selection, Selection::Tables(vec!["procedurelog".into()]));
        assert!(!ok.force_full);
        assert!(
            run_request(&config, body(r#"{"all": true, "force_full": true}"#))
                .unwrap()
                .force_full
        );
        assert!(run_request(&config, body(r#"{"category": "small"}"#)).is_ok());
        let refused = |text: &str| run_request(&config, body(text)).unwrap_err();
        assert!(refused(r#"{"tables": ["nope"]}"#).contains("`nope`"));
        assert!(refused(r#"{"category": "large"}"#).contains("large"));
        assert!(refused(r#"{}"#).contains("exactly one"));
        assert!(refused(r#"{"tables": ["procedurelog"], "all": true}"#).contains("exactly one"));
        assert!(serde_json::from_str::<RunBody>(r#"{"table": "x"}"#).is_err());
    }
}
