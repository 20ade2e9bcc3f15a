//! Runs each active schedule at its cron times, in the machine's local time.
//!
//! A schedule runs one run at a time. A time that comes while its last run
//! is still going is not queued: when that run ends, one run starts at once
//! for every time missed meanwhile, then the schedule keeps to its times.
//! The same holds across downtime: a schedule whose time passed while
//! `serve` was stopped (by the run history, its last start) runs once when
//! `serve` starts, not once per time missed. Two schedules (or a schedule
//! and an API run) may run at once; a table both select is processed by
//! whichever reaches it first, and the other run skips it (the run locks).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local};

use tokio::sync::oneshot;

use super::runs::RunRequest;
use super::{App, Job};
use crate::config::Schedule;
use crate::error::chain;
use crate::pipeline;
use crate::tracking::{self, RunOrigin};

/// The longest sleep between looks at the clock: a wall clock stepped (by
/// NTP, by hand) or a machine resumed from sleep is noticed within it.
const CLOCK_LOOK_SECONDS: u64 = 30;

/// Runs `schedule` until the process is asked to stop.
pub async fn run_schedule(app: Arc<App>, schedule: Schedule) {
    let mut stop = app.runner.stop.clone();
    let mut last = last_start(&app, &schedule).await;
    loop {
        let now = Local::now();
        let due = match last.as_ref().and_then(|l| schedule.next_after(l)) {
            Some(missed) if missed <= now => Some(missed),
            _ => None,
        };
        let Some(at) = due.or_else(|| schedule.next_after(&now)) else {
            tracing::warn!(schedule = %schedule.name, "the cron expression has no time left to fire");
            return;
        };
        if at > now {
            let wait = (at - now)
                .to_std()
                .unwrap_or_default()
                .min(Duration::from_secs(CLOCK_LOOK_SECONDS));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.requested_wait() => return,
            }
            if Local::now() < at {
                continue;
            }
        } else {
            tracing::info!(target: crate::progress::TARGET, schedule = %schedule.name, missed = %at, "catching up once on a time missed");
        }
        if stop.requested() {
            return;
        }
        let started = Local::now();
        let origin = RunOrigin {
            run_id: pipeline::new_run_id(),
            triggered_by: "scheduler",
            schedule: Some(schedule.name.clone()),
        };
        let request = RunRequest {
            selection: schedule.selection.clone(),
            force_full: schedule.force_full,
        };
        app.runs.begin(&origin, &request);
        let (done, ended) = oneshot::channel();
        let job = Job {
            origin,
            request,
            done: Some(done),
        };
        if app.jobs.send(job).await.is_err() {
            return;
        }
        let _ = ended.await;
        last = Some(started);
    }
}

/// When the schedule's last run began, by the run history (so that a
/// restart catches up once on what it missed); `None` when it never ran or
/// the history cannot be read.
async fn last_start(app: &App, schedule: &Schedule) -> Option<DateTime<Local>> {
    let warehouse = app.runner.env.warehouse().ok()?;
    let read = async {
        let client = crate::postgres::connect(&warehouse).await?;
        tracking::last_scheduled_start(&client, &warehouse.schema, &schedule.name).await
    };
    match read.await {
        Ok(Some(micros)) => {
            let at = DateTime::from_timestamp_micros(micros)?;
            Some(at.with_timezone(&Local))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(schedule = %schedule.name, error = %chain(&e), "last run unknown; no catch-up");
            None
        }
    }
}
