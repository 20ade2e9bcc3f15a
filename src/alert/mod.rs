//! Alerts: a table that failed, ran below its speed threshold or above its
//! memory threshold (`monitoring:` in `tables.yml`), and a run that could not
//! start. Each alert goes to the command hook (`--on-alert`, the alert as JSON
//! on standard input) and the webhook (`ETL_ALERT_WEBHOOK_URL`, a JSON POST)
//! in tasks of their own, so a slow receiver never holds up a table; the run
//! waits for deliveries in flight (each bounded by its timeout) before it ends.

mod memory;
mod webhook;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::config::{Env, TableConfig};
use crate::error::{Error, ErrorKind, Result, chain};
use crate::outcome::TableReport;

pub use memory::{MemoryWatch, Tracked};
pub use webhook::Webhook;

/// A phase shorter than this is not judged by its speed: its rows/s is
/// mostly connection and setup time, not throughput.
pub const MIN_SECONDS_FOR_SPEED: f64 = 1.0;
/// How long the hook command may run before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A phase of a table ended failed (`alert_on_failure`).
    Failure,
    /// A phase ran below `performance_threshold_records_per_second`.
    Slow,
    /// The process used more than `memory_alert_threshold_mb` while the
    /// phase ran.
    Memory,
    /// The run could not start (a database unreachable, not initialised).
    RunFailed,
}

impl AlertKind {
    /// The name used in JSON, the run history and the summary.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::Failure => "failure",
            AlertKind::Slow => "slow",
            AlertKind::Memory => "memory",
            AlertKind::RunFailed => "run_failed",
        }
    }
}

/// One alert, as delivered (JSON) and recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub run_id: String,
    pub table: Option<String>,
    pub phase: Option<String>,
    /// One line for people (also sent as `text`, which chat webhooks show).
    pub message: String,
    /// Rows/s or MiB measured, for speed and memory alerts.
    pub measured: Option<f64>,
    pub threshold: Option<f64>,
    /// UTC, ISO 8601.
    pub at: String,
    /// The machine the run is on (groups run one per clinic).
    pub host: String,
}

impl Alert {
    fn new(kind: AlertKind, run_id: &str, message: String) -> Alert {
        let at = crate::outcome::utc_now()
            .to_sql_string()
            .replacen(' ', "T", 1)
            + "Z";
        Alert {
            kind,
            run_id: run_id.to_string(),
            table: None,
            phase: None,
            message,
            measured: None,
            threshold: None,
            at,
            host: host_name(),
        }
    }

    /// The alert for a run that failed before any table ran.
    pub fn run_failed(run_id: &str, error: &Error) -> Alert {
        Alert::new(
            AlertKind::RunFailed,
            run_id,
            format!("run failed: {}", chain(error)),
        )
    }

    /// The JSON delivered to the hook and the webhook.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert(
                "text".into(),
                format!("[etl-pipeline on {}] {}", self.host, self.message).into(),
            );
        }
        value
    }
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates, and we stop at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// What one phase of one table measured, for [`table_alerts`].
#[derive(Debug)]
pub struct PhaseMeasure<'a> {
    pub phase: &'static str,
    pub result: &'a Result<TableReport>,
    /// The process's peak resident memory while the phase ran, in MiB.
    pub peak_memory_mb: Option<f64>,
}

/// The alerts a table's phase raises under its `monitoring:` settings.
pub fn table_alerts(cfg: &TableConfig, run_id: &str, measure: &PhaseMeasure<'_>) -> Vec<Alert> {
    let m = &cfg.monitoring;
    let phase = measure.phase;
    let table = &cfg.name;
    let mut alerts = Vec::new();
    let mut raise = |kind, message, measured, threshold| {
        let mut alert = Alert::new(kind, run_id, message);
        alert.table = Some(table.clone());
        alert.phase = Some(phase.to_string());
        alert.measured = measured;
        alert.threshold = threshold;
        alerts.push(alert);
    };
    match measure.result {
        Err(e) if matches!(e.kind(), ErrorKind::Skipped | ErrorKind::Interrupted) => return alerts,
        Err(e) if m.alert_on_failure => raise(
            AlertKind::Failure,
            format!("`{table}` {phase} failed: {}", chain(e)),
            None,
            None,
        ),
        Err(_) => {}
        Ok(report) => {
            let (seconds, rate) = (report.elapsed.as_secs_f64(), report.rows_per_second());
            if let Some(min) = m.min_rows_per_second.filter(|_| m.alert_on_performance)
                && report.rows_read > 0
                && seconds >= MIN_SECONDS_FOR_SPEED
                && rate < min
            {
                raise(
                    AlertKind::Slow,
                    format!(
                        "`{table}` {phase} ran at {rate:.0} rows/s, below its threshold of {min:.0} rows/s \
                         ({} rows in {seconds:.1} s)",
                        report.rows_read
                    ),
                    Some(rate),
                    Some(min),
                );
            }
        }
    }
    if let (Some(max), Some(peak)) = (
        m.max_memory_mb.filter(|_| m.alert_on_performance),
        measure.peak_memory_mb,
    ) && peak > max
    {
        raise(
            AlertKind::Memory,
            format!(
                "`{table}` {phase}: the process used {peak:.0} MiB while it ran, above its threshold of {max:.0} MiB"
            ),
            Some(peak),
            Some(max),
        );
    }
    alerts
}

/// Where alerts go: a command and/or a webhook. Cloning shares the
/// deliveries in flight.
#[derive(Clone, Default)]
pub struct Notifier {
    hook: Option<Arc<str>>,
    webhook: Option<Arc<Webhook>>,
    pending: Arc<Mutex<JoinSet<()>>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("hook", &self.hook)
            .field("webhook", &self.webhook.as_ref().map(|w| w.to_string()))
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// A notifier that delivers nowhere (alerts are still recorded).
    pub fn none() -> Notifier {
        Notifier::default()
    }

    /// The hook from `--on-alert` (else `ETL_ALERT_COMMAND`) and the
    /// webhook from `ETL_ALERT_WEBHOOK_URL`.
    pub fn from_env(env: &Env, on_alert: Option<&str>) -> Result<Notifier> {
        let hook = on_alert
            .map(str::to_string)
            .or_else(|| env.var("ETL_ALERT_COMMAND"))
            .filter(|c| !c.trim().is_empty());
        // `var` has trimmed the URL and dropped a blank one.
        let webhook = match env.var("ETL_ALERT_WEBHOOK_URL") {
            Some(url) => Some(Webhook::new(
                &url,
                Duration::from_secs(u64::from(
                    env.whole_number("ETL_ALERT_WEBHOOK_TIMEOUT_SECONDS")?
                        .unwrap_or(webhook::DEFAULT_TIMEOUT_SECONDS),
                )),
                env.whole_number("ETL_ALERT_WEBHOOK_RETRIES")?
                    .unwrap_or(webhook::DEFAULT_RETRIES),
            )?),
            None => None,
        };
        Ok(Notifier {
            hook: hook.map(Arc::from),
            webhook: webhook.map(Arc::new),
            pending: Arc::default(),
        })
    }

    /// Whether alerts go anywhere beyond the run history and summary.
    pub fn delivers(&self) -> bool {
        self.hook.is_some() || self.webhook.is_some()
    }

    /// Starts delivering an alert; returns at once.
    pub fn send(&self, alert: &Alert) {
        if !self.delivers() {
            return;
        }
        let body = alert.to_json().to_string();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(command) = &self.hook {
            let (command, body, alert) = (command.clone(), body.clone(), alert.clone());
            pending.spawn(async move {
                if let Err(why) = run_hook(&command, &body, &alert).await {
                    tracing::warn!(kind = alert.kind.name(), "alert hook: {why}");
                }
            });
        }
        if let Some(webhook) = &self.webhook {
            let webhook = webhook.clone();
            let kind = alert.kind.name();
            pending.spawn(async move {
                if let Err(why) = webhook.post(body.as_bytes()).await {
                    tracing::warn!(kind, "alert webhook: {why}");
                }
            });
        }
    }

    /// Waits for the deliveries in flight (each ends by its own timeout).
    pub async fn flush(&self) {
        let mut tasks =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        while tasks.join_next().await.is_some() {}
    }
}

/// Runs the hook with `sh -c`, the alert as JSON on standard input and its
/// main fields in `ETL_ALERT_KIND`, `ETL_ALERT_TABLE`, `ETL_ALERT_MESSAGE`.
/// Its output goes to standard error, beside this tool's log.
async fn run_hook(command: &str, body: &str, alert: &Alert) -> std::result::Result<(), String> {
    use std::os::fd::AsFd;
    let to_stderr = || {
        std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    };
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("ETL_ALERT_KIND", alert.kind.name())
        .env("ETL_ALERT_TABLE", alert.table.as_deref().unwrap_or(""))
        .env("ETL_ALERT_MESSAGE", &alert.message)
        .stdin(Stdio::piped())
        .stdout(to_stderr())
        .stderr(to_stderr())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `sh -c {command}`: {e}"))?;
    let feed_and_wait = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A hook that ignores its input closes the pipe early; that is fine.
            let _ = stdin.write_all(body.as_bytes()).await;
            let _ = stdin.write_all(b"\n").await;
        }
        child.wait().await
    };
    match tokio::time::timeout(HOOK_TIMEOUT, feed_and_wait).await {
        Err(_) => Err(format!(
            "`{command}` ran longer than {} s and was stopped",
            HOOK_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("`{command}`: {e}")),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("`{command}` exited with {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Decision, Monitoring, Strategy};

    fn report(rows: u64, seconds: f64) -> TableReport {
        let mut r = TableReport::new(
            "t",
            Decision {
                strategy: Strategy::Full,
                reason: "test".into(),
            },
        );
        r.rows_read = rows;
        r.elapsed = Duration::from_secs_f64(seconds);
        r
    }

    fn watched(m: Monitoring) -> TableConfig {
        TableConfig {
            monitoring: m,
            ..TableConfig::full_table("t")
        }
    }

    fn kinds(
        cfg: &TableConfig,
        result: &Result<TableReport>,
        memory: Option<f64>,
    ) -> Vec<AlertKind> {
        let measure = PhaseMeasure {
            phase: "load",
            result,
            peak_memory_mb: memory,
        };
        table_alerts(cfg, "r", &measure)
            .iter()
            .map(|a| a.kind)
            .collect()
    }

    #[test]
    fn speed_and_memory_alert_only_past_their_thresholds() {
        let cfg = watched(Monitoring {
            alert_on_failure: true,
            alert_on_performance: true,
            min_rows_per_second: Some(1000.0),
            max_memory_mb: Some(50.0),
        });
        assert_eq!(
            kinds(&cfg, &Ok(report(500, 2.0)), Some(10.0)),
            [AlertKind::Slow]
        );
        assert!(kinds(&cfg, &Ok(report(5000, 2.0)), Some(10.0)).is_empty());
        assert_eq!(
            kinds(&cfg, &Ok(report(5000, 2.0)), Some(80.0)),
            [AlertKind::Memory]
        );
        // Too short to judge by speed, and nothing read.
        assert!(kinds(&cfg, &Ok(report(5, 0.05)), None).is_empty());
        assert!(kinds(&cfg, &Ok(report(0, 3.0)), None).is_empty());
        let off = watched(Monitoring {
            alert_on_performance: false,
            ..cfg.monitoring
        });
        assert!(kinds(&off, &Ok(report(500, 2.0)), Some(80.0)).is_empty());
    }

    #[test]
    fn failures_alert_unless_switched_off_and_skips_never_do() {
        let cfg = watched(Monitoring::default());
        let failed: Result<TableReport> = Err(Error::new(ErrorKind::Schema, "boom"));
        assert_eq!(kinds(&cfg, &failed, None), [AlertKind::Failure]);
        let skipped: Result<TableReport> = Err(Error::new(ErrorKind::Skipped, "other run"));
        assert!(kinds(&cfg, &skipped, None).is_empty());
        let stopped: Result<TableReport> = Err(Error::new(ErrorKind::Interrupted, "stop"));
        assert!(kinds(&cfg, &stopped, None).is_empty());
        let quiet = watched(Monitoring {
            alert_on_failure: false,
            ..Monitoring::default()
        });
        assert!(kinds(&quiet, &failed, None).is_empty());
    }

    #[test]
    fn the_json_carries_a_text_line_for_chat_webhooks() {
        let alert = Alert::run_failed("r1", &Error::config("no warehouse"));
        let json = alert.to_json();
        assert_eq!(json["kind"], "run_failed");
        assert!(
            json["text"]
                .as_str()
                .unwrap()
                .ends_with("run failed: no warehouse")
        );
        assert!(json["at"].as_str().unwrap().ends_with('Z'));
    }
}
