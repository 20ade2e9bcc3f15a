//! `/metrics`: the warehouse's state and this process's runs in
//! Prometheus' text format (0.0.4), through TiKV's `prometheus` crate
//! (without its protobuf part). The Prometheus project's own Rust client
//! writes OpenMetrics only, whose counters (`# TYPE etl_runs counter`
//! over `etl_runs_total` samples) the classic text parsers read as
//! untyped series; this format reads alike in Prometheus, its Python
//! parser and every agent that scrapes the classic format.
//!
//! Per table (label `table`): lag in seconds and rows behind the source (as
//! `status` measures them, refreshed every minute), the time of the last
//! success and the last run's duration (label `phase` too, from the run
//! history), and rows loaded in total (`etl_load_status.rows_loaded_total`,
//! counted by every load). For the process: runs started and failed, by
//! `triggered_by`; runs under way; whether the last status refresh worked.

use prometheus::core::Collector;
use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::StatusSnapshot;
use crate::tracking::Summaries;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What one scrape reports.
pub struct Scrape<'a> {
    pub status: &'a StatusSnapshot,
    /// `None` when the run history could not be read.
    pub history: Option<&'a Summaries>,
    pub runs_started: super::runs::ByTrigger,
    pub runs_failed: super::runs::ByTrigger,
    pub runs_running: usize,
}

/// A collector made from names and help texts this module writes, so it
/// always builds; registered in a registry of its own, so it always
/// registers.
fn add<C: Collector + Clone + 'static>(
    registry: &Registry,
    made: prometheus::Result<C>,
) -> Option<C> {
    let collector = made.ok()?;
    registry.register(Box::new(collector.clone())).ok()?;
    Some(collector)
}

/// The metrics text of one scrape.
pub fn render(scrape: &Scrape<'_>) -> String {
    let registry = Registry::new();
    let int_gauges = |name: &str, help: &str, labels: &[&str]| {
        add(&registry, IntGaugeVec::new(Opts::new(name, help), labels))
    };
    let gauges = |name: &str, help: &str, labels: &[&str]| {
        add(&registry, GaugeVec::new(Opts::new(name, help), labels))
    };
    let counters = |name: &str, help: &str, labels: &[&str]| {
        add(&registry, IntCounterVec::new(Opts::new(name, help), labels))
    };
    let lag = int_gauges(
        "etl_table_lag_seconds",
        "How far the newest row at the source is ahead of the loaded watermark (date-time watermarks)",
        &["table"],
    );
    let behind = int_gauges(
        "etl_table_rows_behind",
        "Rows at the source past the loaded watermark",
        &["table"],
    );
    for line in &scrape.status.lines {
        if let (Some(seconds), Some(lag)) = (line.lag_seconds, &lag) {
            lag.with_label_values(&[line.table.as_str()]).set(seconds);
        }
        if let (Some(rows), Some(behind)) = (line.rows_behind, &behind) {
            behind
                .with_label_values(&[line.table.as_str()])
                .set(i64::try_from(rows).unwrap_or(i64::MAX));
        }
    }
    let last_success = gauges(
        "etl_table_last_success_timestamp_seconds",
        "When the table's phase last succeeded (Unix time)",
        &["table", "phase"],
    );
    let last_duration = gauges(
        "etl_table_last_run_duration_seconds",
        "How long the table's phase took in its last finished run",
        &["table", "phase"],
    );
    let rows_loaded = counters(
        "etl_table_rows_loaded_total",
        "Rows written into the warehouse table by loads, in total",
        &["table"],
    );
    if let Some((phases, totals)) = scrape.history {
        for p in phases {
            let labels = [p.table.as_str(), p.phase.as_str()];
            if let (Some(at), Some(g)) = (p.last_success, &last_success) {
                g.with_label_values(&labels).set(at);
            }
            if let (Some(seconds), Some(g)) = (p.last_seconds, &last_duration) {
                g.with_label_values(&labels).set(seconds);
            }
        }
        if let Some(rows_loaded) = &rows_loaded {
            for (name, total) in totals {
                rows_loaded
                    .with_label_values(&[name.as_str()])
                    .inc_by(u64::try_from(*total).unwrap_or(0));
            }
        }
    }
    let by_trigger = |name: &str, help: &str, counts: &super::runs::ByTrigger| {
        if let Some(counter) = counters(name, help, &["triggered_by"]) {
            for (by, n) in counts {
                counter.with_label_values(&[*by]).inc_by(*n);
            }
        }
    };
    by_trigger(
        "etl_runs_total",
        "Runs this process started",
        &scrape.runs_started,
    );
    by_trigger(
        "etl_run_failures_total",
        "Runs this process started that failed",
        &scrape.runs_failed,
    );
    if let Some(running) = add(
        &registry,
        IntGauge::new("etl_runs_running", "Runs under way"),
    ) {
        running.set(i64::try_from(scrape.runs_running).unwrap_or(i64::MAX));
    }
    if let Some(up) = add(
        &registry,
        IntGauge::new(
            "etl_status_up",
            "1 when the tracking tables (and the run history) could be read",
        ),
    ) {
        up.set(i64::from(
            scrape.status.error.is_none() && scrape.history.is_some(),
        ));
    }
    let mut text = Vec::new();
    if prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .is_err()
    {
        return String::new();
    }
    String::from_utf8(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::PhaseSummary;

    #[test]
    fn every_series_is_typed_under_its_own_name() {
        let status = StatusSnapshot::default();
        let history = (
            vec![PhaseSummary {
                table: "procedurelog".into(),
                phase: "load".into(),
                last_success: Some(1_796_693_125.5),
                last_seconds: Some(2.25),
            }],
            vec![("procedurelog".to_string(), 41)],
        );
        let text = render(&Scrape {
            status: &status,
            history: Some(&history),
            runs_started: vec![("api", 1), ("scheduler", 3)],
            runs_failed: vec![("api", 0), ("scheduler", 1)],
            runs_running: 1,
        });
        for expected in [
            "# TYPE etl_table_rows_loaded_total counter\netl_table_rows_loaded_total{table=\"procedurelog\"} 41",
            "# TYPE etl_runs_total counter",
            "etl_runs_total{triggered_by=\"scheduler\"} 3",
            "etl_run_failures_total{triggered_by=\"api\"} 0",
            "etl_table_last_run_duration_seconds{phase=\"load\",table=\"procedurelog\"} 2.25",
            "etl_runs_running 1",
            "etl_status_up 1",
        ] {
            assert!(text.contains(expected), "{expected} missing:\n{text}");
        }
    }
}
