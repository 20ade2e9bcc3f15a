//! What a person watching a run sees: on a terminal, a live view of the
//! tables in flight (rows, rate, time left) and the tables done; elsewhere
//! (cron, log shippers) plain `started` / `finished` log lines.
//!
//! The phases report progress as `tracing` events on [`TARGET`]; this layer
//! turns them into the live view, so the loaders know nothing of terminals.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The `tracing` target of progress events.
pub const TARGET: &str = "etl_pipeline::progress";

/// Reports rows done so far by a table's phase.
pub fn rows(table: &str, phase: &str, rows: u64) {
    tracing::debug!(target: TARGET, table, phase, rows, "rows");
}

/// How often the live view is redrawn.
const REDRAW: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Fields {
    message: String,
    table: String,
    phase: String,
    rows: Option<u64>,
    expected: Option<u64>,
    tables: Option<u64>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "message" => self.message = text,
            "table" => self.table = text.trim_matches('"').to_string(),
            "phase" => self.phase = text.trim_matches('"').to_string(),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "table" => self.table = value.to_string(),
            "phase" => self.phase = value.to_string(),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "rows" => self.rows = Some(value),
            "expected_rows" => self.expected = Some(value),
            "tables" => self.tables = Some(value),
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_u64(field, u64::try_from(value).unwrap_or(0));
    }
}

struct Active {
    started: Instant,
    rows: u64,
    expected: Option<u64>,
}

#[derive(Default)]
struct View {
    active: BTreeMap<(String, String), Active>,
    done: u64,
    total: u64,
    drawn: usize,
    running: bool,
}

impl View {
    fn clear(&mut self, out: &mut impl Write) {
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }

    fn draw(&mut self, out: &mut impl Write) {
        self.clear(out);
        if !self.running {
            return;
        }
        let mut lines = vec![format!("tables done {}/{}", self.done, self.total)];
        for ((table, phase), a) in &self.active {
            let secs = a.started.elapsed().as_secs_f64();
            let rate = if secs > 0.0 {
                a.rows as f64 / secs
            } else {
                0.0
            };
            let eta = match a.expected {
                Some(e) if rate > 0.0 && e > a.rows => {
                    format!(", about {:.0}s left", (e - a.rows) as f64 / rate)
                }
                _ => String::new(),
            };
            lines.push(format!(
                "  {table:<28} {phase:<7} {:>12} rows {:>10.0} rows/s{eta}",
                a.rows, rate
            ));
        }
        for line in &lines {
            let _ = writeln!(out, "{line}");
        }
        self.drawn = lines.len();
        let _ = out.flush();
    }
}

/// The live view as a `tracing` layer; [`ProgressLayer::start`] also starts
/// the redraw thread.
#[derive(Clone)]
pub struct ProgressLayer {
    view: Arc<Mutex<View>>,
}

impl ProgressLayer {
    /// A layer drawing on standard error every half second.
    pub fn start() -> ProgressLayer {
        let view = Arc::new(Mutex::new(View::default()));
        let redraw = Arc::clone(&view);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(REDRAW);
                if let Ok(mut v) = redraw.lock()
                    && v.running
                {
                    v.draw(&mut std::io::stderr());
                }
            }
        });
        ProgressLayer { view }
    }
}

impl<S: Subscriber> Layer<S> for ProgressLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let Ok(mut v) = self.view.lock() else { return };
        let key = (f.table.clone(), f.phase.clone());
        match f.message.as_str() {
            "run started" => {
                v.running = true;
                v.total = f.tables.unwrap_or(0);
                v.done = 0;
            }
            "run finished" => {
                v.running = false;
                v.clear(&mut std::io::stderr());
            }
            "started" => {
                v.active.insert(
                    key,
                    Active {
                        started: Instant::now(),
                        rows: 0,
                        expected: f.expected,
                    },
                );
            }
            "rows" => {
                if let (Some(a), Some(rows)) = (v.active.get_mut(&key), f.rows) {
                    a.rows = rows;
                }
            }
            "finished" => {
                v.active.remove(&key);
            }
            "table done" => v.done += 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_lists_tables_in_flight_and_clears_itself() {
        let mut v = View {
            running: true,
            total: 3,
            done: 1,
            ..View::default()
        };
        v.active.insert(
            ("procedurelog".into(), "load".into()),
            Active {
                started: Instant::now() - Duration::from_secs(2),
                rows: 1000,
                expected: Some(3000),
            },
        );
        let mut out = Vec::new();
        v.draw(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("tables done 1/3"), "{text}");
        assert!(
            text.contains("procedurelog") && text.contains("1000 rows") && text.contains("left"),
            "{text}"
        );
        let mut out = Vec::new();
        v.running = false;
        v.draw(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "\x1b[2A\x1b[J");
    }
}
