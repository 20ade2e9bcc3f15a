//! What a phase of a table comes to, shared below both phases and the
//! modules that report on them (summary, alerts, tracking): the report of
//! one table's copy or load, the options a phase runs with, and the clock
//! runs are stamped by. The phases meet only in the pipeline.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Decision;
use crate::mysql::PassKind;
use crate::schema::{DateTimeParts, days_since_pg_epoch};
use crate::shutdown::Stop;

/// How a phase (copy or load) runs.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub force_full: bool,
    /// Lets a key reconciliation delete more than the table's `max_delete_share`.
    pub allow_mass_delete: bool,
    /// Reads incrementally even after a gap longer than `time_gap_threshold_days`.
    pub ignore_time_gap: bool,
    pub run_id: String,
    /// Asked to stop: finish the batch in hand (a full refresh rolls back).
    pub stop: Stop,
}

/// What one phase (extract or load) did to a table.
#[derive(Debug, Clone)]
pub struct TableReport {
    pub table: String,
    pub decision: Decision,
    pub rows_read: u64,
    pub rows_inserted: u64,
    pub rows_updated: u64,
    /// Rows removed (or soft-deleted) because the copy read from no longer has them.
    pub rows_deleted: u64,
    /// Rows a row reconciliation wrote again because they differed or were missing.
    pub rows_repaired: u64,
    /// Rows whose watermark value lies outside the quality bounds (re-read, not moving the watermark).
    pub rows_outside_bounds: u64,
    /// Rows stamped past the source clock at the run's start (carried, not moving the watermark).
    pub rows_future: u64,
    /// New rows stamped below the window, found by their auto-increment key.
    pub rows_new_keys: u64,
    /// Rows of re-read ranges (windows, future or out-of-bounds stamps) not
    /// read because the destination already held them as they are.
    pub rows_unchanged: u64,
    /// Zero dates written as NULL, by column.
    pub zero_dates: BTreeMap<String, u64>,
    pub warnings: Vec<String>,
    pub watermark_start: Option<String>,
    pub watermark_end: Option<String>,
    /// The change of column policy (`was → now`) this phase rewrote the
    /// table for.
    pub policy_change: Option<String>,
    pub elapsed: Duration,
}

impl TableReport {
    /// A report of nothing done yet.
    pub fn new(table: &str, decision: Decision) -> TableReport {
        TableReport {
            table: table.to_string(),
            decision,
            rows_read: 0,
            rows_inserted: 0,
            rows_updated: 0,
            rows_deleted: 0,
            rows_repaired: 0,
            rows_outside_bounds: 0,
            rows_future: 0,
            rows_new_keys: 0,
            rows_unchanged: 0,
            zero_dates: BTreeMap::new(),
            warnings: Vec::new(),
            watermark_start: None,
            watermark_end: None,
            policy_change: None,
            elapsed: Duration::ZERO,
        }
    }

    /// Counts a batch of an incremental read by the pass that read it.
    pub fn count_pass(&mut self, kind: PassKind, rows: u64) {
        match kind {
            PassKind::OutsideBounds => self.rows_outside_bounds += rows,
            PassKind::Future => self.rows_future += rows,
            PassKind::NewKeys => self.rows_new_keys += rows,
            PassKind::Window | PassKind::AheadOfCopy => {}
        }
    }

    /// Warns about the rows an incremental read carried outside its window:
    /// stamped outside the quality bounds, in the future (past the source
    /// clock plus `skew_seconds`), or new below the window.
    pub fn note_arrivals(&mut self, skew_seconds: u64) {
        if self.rows_outside_bounds > 0 {
            self.warnings.push(format!(
                "{} row(s) have a watermark value outside the quality bounds (zero, sentinel or out-of-range dates); \
                 every run compares them and reads them again when they change",
                self.rows_outside_bounds
            ));
        }
        if self.rows_future > 0 {
            self.warnings.push(format!(
                "{} row(s) stamped in the future (past the source clock at the run's start + {skew_seconds} s); \
                 every run compares them and carries them when they change; they never move the watermark",
                self.rows_future
            ));
        }
        if self.rows_new_keys > 0 {
            self.warnings.push(format!(
                "{} new row(s) stamped before the watermark window (backdated, zero or sentinel stamps) \
                 arrived by their key",
                self.rows_new_keys
            ));
        }
    }

    /// Rows read per second of wall time.
    pub fn rows_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.rows_read as f64 / secs
        } else {
            0.0
        }
    }
}

/// The current UTC time.
pub fn utc_now() -> DateTimeParts {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let micros = i64::try_from(now.as_micros()).unwrap_or(0);
    let unix_to_pg = days_since_pg_epoch(1970, 1, 1) * 86_400_000_000;
    DateTimeParts::from_pg_micros(micros + unix_to_pg)
        .unwrap_or(DateTimeParts::midnight(1970, 1, 1))
}
