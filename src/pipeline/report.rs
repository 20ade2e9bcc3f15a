//! The run summary printed at the end of a run.

use std::fmt::Write;

use super::RunReport;
use crate::error::{Error, ErrorKind, chain};

/// Peak resident memory of this process in KiB (`VmHWM`), where the OS tells.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A table of per-table results, then totals.
pub fn render_summary(report: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<7} {:<8} {:>8} {:>12} {:>12} {:>12} {:>9} {:>9} {:>12}  why",
        "table",
        "phase",
        "status",
        "strategy",
        "read",
        "inserted",
        "updated",
        "deleted",
        "seconds",
        "rows/s"
    );
    for outcome in &report.outcomes {
        match &outcome.result {
            Ok(r) => {
                let _ = writeln!(
                    out,
                    "{:<28} {:<7} {:<8} {:>8} {:>12} {:>12} {:>12} {:>9} {:>9.2} {:>12.0}  {}",
                    r.table,
                    outcome.phase,
                    "ok",
                    r.decision.strategy.name(),
                    r.rows_read,
                    r.rows_inserted,
                    r.rows_updated,
                    r.rows_deleted,
                    r.elapsed.as_secs_f64(),
                    r.rows_per_second(),
                    r.decision.reason
                );
                if r.rows_repaired > 0 {
                    let _ = writeln!(
                        out,
                        "    repaired: {} row(s) that differed or were missing, found by row reconciliation",
                        r.rows_repaired
                    );
                }
                for (column, count) in &r.zero_dates {
                    let _ = writeln!(out, "    {column}: {count} zero date(s) loaded as NULL");
                }
                for warning in &r.warnings {
                    let _ = writeln!(out, "    warning: {warning}");
                }
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "{:<28} {:<7} {:<8} {:>8} {:>12} {:>12} {:>12} {:>9} {:>9.2} {:>12}",
                    outcome.table,
                    outcome.phase,
                    match e.kind() {
                        ErrorKind::Skipped => "SKIPPED",
                        ErrorKind::Interrupted => "STOPPED",
                        _ => "FAILED",
                    },
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    outcome.elapsed.as_secs_f64(),
                    "-"
                );
                let label = if e.kind() == ErrorKind::Skipped {
                    "note"
                } else {
                    "error"
                };
                let _ = writeln!(out, "    {label}: {}", chain(e));
            }
        }
    }
    for alert in &report.alerts {
        let _ = writeln!(out, "ALERT ({}): {}", alert.kind.name(), alert.message);
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "WARNING: {warning}");
    }
    out.push_str(&totals_line(report));
    out.push('\n');
    out
}

/// The run's last summary line: tables, failures, rows, time, rate, memory.
pub fn totals_line(report: &RunReport) -> String {
    let failed = report
        .outcomes
        .iter()
        .filter(|o| {
            o.result
                .as_ref()
                .is_err_and(|e| e.kind() != ErrorKind::Skipped)
        })
        .count();
    let secs = report.elapsed.as_secs_f64();
    let rows = report.rows_read();
    let alerts = match report.alerts.len() {
        0 => String::new(),
        n => format!(", {n} alert(s)"),
    };
    let tables: std::collections::BTreeSet<&str> =
        report.outcomes.iter().map(|o| o.table.as_str()).collect();
    format!(
        "run {}: {} table(s), {} failed{alerts}, {} rows in {:.2}s ({:.0} rows/s), peak memory {}",
        report.run_id,
        tables.len(),
        failed,
        rows,
        secs,
        if secs > 0.0 { rows as f64 / secs } else { 0.0 },
        peak_memory()
    )
}

/// This process's peak resident memory, for a person: `84.2 MiB`.
pub fn peak_memory() -> String {
    peak_rss_kib()
        .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "unknown".into())
}

/// The `--summary-json` of a run that ended in `error` before it had a
/// report: no table, the error, and how long it took.
pub fn failed_summary_json(elapsed: std::time::Duration, error: &Error) -> serde_json::Value {
    serde_json::json!({
        "run_id": super::new_run_id(),
        "succeeded": false,
        "interrupted": error.kind() == ErrorKind::Interrupted,
        "seconds": elapsed.as_secs_f64(),
        "rows_read": 0,
        "peak_memory_kib": peak_rss_kib(),
        "tables": [],
        "alerts": [],
        "error": chain(error),
    })
}

/// The run as JSON, for schedulers (`--summary-json`).
pub fn summary_json(report: &RunReport) -> serde_json::Value {
    let tables: Vec<serde_json::Value> = report
        .outcomes
        .iter()
        .map(|o| match &o.result {
            Ok(r) => serde_json::json!({
                "table": o.table,
                "phase": o.phase,
                "status": "success",
                "strategy": r.decision.strategy.name(),
                "reason": r.decision.reason,
                "rows_read": r.rows_read,
                "rows_inserted": r.rows_inserted,
                "rows_updated": r.rows_updated,
                "rows_deleted": r.rows_deleted,
                "rows_repaired": r.rows_repaired,
                "rows_outside_bounds": r.rows_outside_bounds,
                "rows_future": r.rows_future,
                "rows_new_keys": r.rows_new_keys,
                "rows_unchanged": r.rows_unchanged,
                "seconds": r.elapsed.as_secs_f64(),
                "rows_per_second": r.rows_per_second(),
                "zero_dates": r.zero_dates,
                "warnings": r.warnings,
                "watermark_start": r.watermark_start,
                "watermark_end": r.watermark_end,
            }),
            Err(e) => serde_json::json!({
                "table": o.table,
                "phase": o.phase,
                "status": match e.kind() {
                    ErrorKind::Skipped => "skipped",
                    ErrorKind::Interrupted => "interrupted",
                    _ => "failed",
                },
                "seconds": o.elapsed.as_secs_f64(),
                "error": chain(e),
            }),
        })
        .collect();
    serde_json::json!({
        "run_id": report.run_id,
        "succeeded": report.succeeded(),
        "interrupted": report.interrupted(),
        "seconds": report.elapsed.as_secs_f64(),
        "rows_read": report.rows_read(),
        "peak_memory_kib": peak_rss_kib(),
        "tables": tables,
        "alerts": report.alerts.iter().map(|a| a.to_json()).collect::<Vec<_>>(),
        "warnings": report.warnings,
    })
}
