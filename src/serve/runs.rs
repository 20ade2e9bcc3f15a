//! The runs `serve` starts (by a schedule or `POST /api/runs`): each is an
//! ordinary `run`, recorded in the run history with what started it, and
//! kept here for `GET /api/runs/ID` and the process's metrics.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::alert::Notifier;
use crate::cli::{self, Category, LockChoice, Phase, RunArgs};
use crate::config::{Env, Selection};
use crate::pipeline;
use crate::shutdown::Stop;
use crate::tracking::RunOrigin;

/// Runs kept for `GET /api/runs/ID`: two days of a schedule every 15
/// minutes, a few hundred bytes each; older ones are in the run history.
pub const KEPT_RUNS: usize = 200;

/// Runs whose whole summary is kept as well: a clinic's summary is a
/// quarter of a MiB (379 tables, two phases), so this bounds them to a few
/// MiB; the runs before keep their state, and their tables are in the run
/// history.
pub const KEPT_SUMMARIES: usize = 20;

/// What to run: the tables, and whether in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub selection: Selection,
    pub force_full: bool,
}

impl RunRequest {
    /// The selection in words, for the page and the API.
    pub fn describe(&self) -> String {
        let what = match &self.selection {
            Selection::All => "all tables".to_string(),
            Selection::Category(c) => format!("category {}", crate::config::category_name(*c)),
            Selection::Tables(t) => t.join(", "),
        };
        if self.force_full {
            format!("{what}, in full")
        } else {
            what
        }
    }
}

/// A run's state as the API answers it.
#[derive(Debug, Clone, Serialize)]
pub struct RunState {
    pub id: String,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub state: &'static str,
    pub triggered_by: &'static str,
    pub schedule: Option<String>,
    pub tables: String,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub finished_at: Option<f64>,
    /// The run summary, as `run --summary-json` writes it (compact JSON),
    /// once it ended and while it is among the newest [`KEPT_SUMMARIES`].
    #[serde(skip)]
    pub summary: Option<Arc<str>>,
}

impl RunState {
    /// The state as the API answers it, with the summary when kept.
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::to_value(self).unwrap_or_default();
        json["summary"] = self
            .summary
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(serde_json::Value::Null);
        json
    }
}

/// A count per `triggered_by`.
pub type ByTrigger = Vec<(&'static str, u64)>;

/// How every run of this process is run.
pub struct Runner {
    pub tables_file: PathBuf,
    pub env: Env,
    pub notifier: Notifier,
    pub stop: Stop,
    pub max_workers: usize,
}

#[derive(Default)]
struct Counts {
    started: HashMap<&'static str, u64>,
    failed: HashMap<&'static str, u64>,
}

/// Every run this process started: the newest [`KEPT_RUNS`], and counts by
/// trigger since the process began.
#[derive(Default)]
pub struct Runs {
    states: Mutex<VecDeque<RunState>>,
    counts: Mutex<Counts>,
}

/// Seconds since the Unix epoch, now.
pub fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Runs {
    /// Registers a new run as running and returns its id.
    pub fn begin(&self, origin: &RunOrigin, request: &RunRequest) -> String {
        let state = RunState {
            id: origin.run_id.clone(),
            state: "running",
            triggered_by: origin.triggered_by,
            schedule: origin.schedule.clone(),
            tables: request.describe(),
            started_at: epoch_now(),
            finished_at: None,
            summary: None,
        };
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if states.len() >= KEPT_RUNS {
            states.pop_front();
        }
        states.push_back(state);
        origin.run_id.clone()
    }

    /// Runs a registered run to its end and records how it ended.
    pub async fn execute(&self, runner: &Runner, origin: RunOrigin, request: RunRequest) {
        let id = origin.run_id.clone();
        let trigger = origin.triggered_by;
        let started = Instant::now();
        let args = run_args(&request, runner.max_workers);
        self.count(trigger, false);
        tracing::info!(target: crate::progress::TARGET, run_id = %id, triggered_by = trigger, tables = %request.describe(), "serve starts a run");
        let outcome = cli::run_in(
            &runner.tables_file,
            &args,
            &runner.env,
            &runner.notifier,
            (runner.stop.clone(), origin),
            runner.max_workers,
        )
        .await;
        let (state, summary) = match &outcome {
            Ok(report) if report.interrupted() => ("interrupted", pipeline::summary_json(report)),
            Ok(report) if report.succeeded() => ("succeeded", pipeline::summary_json(report)),
            Ok(report) => ("failed", pipeline::summary_json(report)),
            Err(e) => {
                let mut json = pipeline::failed_summary_json(started.elapsed(), e);
                json["run_id"] = serde_json::Value::from(id.clone());
                let state = if e.kind() == crate::ErrorKind::Interrupted {
                    "interrupted"
                } else {
                    "failed"
                };
                (state, json)
            }
        };
        tracing::info!(target: crate::progress::TARGET, run_id = %id, state, "serve's run ended");
        if state == "failed" {
            self.count(trigger, true);
        }
        self.finish(&id, state, &summary);
    }

    /// Records how a run ended; only the newest [`KEPT_SUMMARIES`] keep
    /// their summary.
    fn finish(&self, id: &str, state: &'static str, summary: &serde_json::Value) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(run) = states.iter_mut().find(|r| r.id == id) {
            run.state = state;
            run.finished_at = Some(epoch_now());
            run.summary = Some(Arc::from(summary.to_string()));
        }
        let mut kept = 0;
        for run in states.iter_mut().rev().filter(|r| r.summary.is_some()) {
            kept += 1;
            if kept > KEPT_SUMMARIES {
                run.summary = None;
            }
        }
    }

    /// Counts a run of `trigger` started (or, with `failed`, failed).
    fn count(&self, trigger: &'static str, failed: bool) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let by = if failed {
            &mut counts.failed
        } else {
            &mut counts.started
        };
        *by.entry(trigger).or_default() += 1;
    }

    /// Forgets a run that was registered but could not be started.
    pub fn abandon(&self, id: &str) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|r| r.id != id);
    }

    /// One run's state, if this process started it and still keeps it.
    pub fn get(&self, id: &str) -> Option<RunState> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.iter().find(|r| r.id == id).cloned()
    }

    /// The runs kept, newest first.
    pub fn list(&self) -> Vec<RunState> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.iter().rev().cloned().collect()
    }

    /// Whether a run of `schedule` is under way.
    pub fn schedule_running(&self, schedule: &str) -> bool {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .iter()
            .any(|r| r.state == "running" && r.schedule.as_deref() == Some(schedule))
    }

    /// Runs started and runs failed, by trigger, since the process began.
    pub fn counts(&self) -> (ByTrigger, ByTrigger) {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        // Both of serve's triggers, from zero, so each series exists before
        // its first run (a rate over a series that appears late misses it).
        let sorted = |m: &HashMap<&'static str, u64>| {
            let mut v: Vec<_> = ["api", "scheduler"]
                .into_iter()
                .map(|k| (k, m.get(k).copied().unwrap_or(0)))
                .collect();
            v.sort();
            v
        };
        (sorted(&counts.started), sorted(&counts.failed))
    }
}

/// The `run` arguments of a request: both phases, tables another run holds
/// skipped (two runs never process one table at once: the run locks see
/// to it), `max_workers` tables at once.
fn run_args(request: &RunRequest, max_workers: usize) -> RunArgs {
    let (table, all, category) = match &request.selection {
        Selection::All => (Vec::new(), true, None),
        Selection::Category(c) => (Vec::new(), true, Some(Category::from(*c))),
        Selection::Tables(t) => (t.clone(), false, None),
    };
    RunArgs {
        phase: Phase::All,
        table,
        all,
        exclude: Vec::new(),
        force_full: request.force_full,
        allow_mass_delete: false,
        no_time_gap: false,
        recheck: false,
        max_workers,
        category,
        summary_json: None,
        if_locked: LockChoice::Skip,
        max_rows_per_second: None,
        on_alert: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_holds_a_bounded_number_of_runs_and_summaries() {
        let runs = Runs::default();
        let request = RunRequest {
            selection: Selection::All,
            force_full: false,
        };
        for n in 0..KEPT_RUNS + 5 {
            let origin = RunOrigin::manual(format!("run-{n}"));
            runs.begin(&origin, &request);
            runs.finish(&origin.run_id, "succeeded", &serde_json::json!({"n": n}));
        }
        let list = runs.list();
        assert_eq!(list.len(), KEPT_RUNS);
        assert_eq!(list[0].id, format!("run-{}", KEPT_RUNS + 4));
        let with_summary: Vec<&str> = list
            .iter()
            .filter(|r| r.summary.is_some())
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(with_summary.len(), KEPT_SUMMARIES);
        assert_eq!(with_summary[0], list[0].id);
        assert_eq!(list[0].to_json()["summary"]["n"], KEPT_RUNS + 4);
        assert!(list[KEPT_SUMMARIES].to_json()["summary"].is_null());
        assert!(runs.get("run-0").is_none());
    }
}
