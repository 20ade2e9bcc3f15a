//! The operator's page: HTML rendered here (maud escapes every value), a
//! little CSS that reads on a phone, plots drawn as SVG on the server, and
//! no JavaScript.
//!
//! No secret or row value reaches a page: errors are shown with the
//! passwords this process read replaced, every number replaced by `#` and
//! every quoted name that is not a configured table by `…` (a value that
//! could not be carried is named in the error with its text); the whole
//! error is in `etl-pipeline status` and the run history, for whoever may
//! read the warehouse.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{App, StatusSnapshot, respond};
use crate::config::TablesConfig;
use crate::error::chain;
use crate::tracking::{self, AlertRow, HistoryRow};

/// Days of alerts the overview lists.
const ALERT_DAYS: i32 = 7;
/// Rows of run history a table's page lists and plots.
const HISTORY_ROWS: i64 = 200;

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;padding:0 .8rem 2rem;color:#1b1f24;background:#fafafa}
h1{font-size:1.3rem;margin:.8rem 0 .2rem}h2{font-size:1.1rem;margin:1.4rem 0 .4rem}
.muted{color:#5c6670;font-size:.85rem}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;border:1px solid #dde1e5;background:#fff}
table{border-collapse:collapse;font-size:.85rem;min-width:100%}
th,td{padding:.35rem .5rem;border-bottom:1px solid #eceff1;text-align:left;white-space:nowrap;vertical-align:top}
th{background:#f1f3f5;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.err{white-space:normal;min-width:14rem;color:#9b1c1c}
.ok{color:#116329}.bad{color:#9b1c1c;font-weight:600}.run{color:#7a4d00}
a{color:#0b5cad}
svg{width:100%;max-width:760px;height:auto;background:#fff;border:1px solid #dde1e5;display:block;margin:.4rem 0}
@media (max-width:640px){body{padding:0 .4rem 2rem}
.scroll{overflow-x:visible;border:0;background:none}
table,tbody,tr,td{display:block;min-width:0}thead{display:none}
tr{background:#fff;border:1px solid #dde1e5;margin:0 0 .5rem;padding:.3rem 0;display:grid;grid-template-columns:1fr 1fr}
td:first-child,td.err{grid-column:1/-1}
td{border:0;padding:.1rem .6rem;white-space:normal;text-align:left}td.num{text-align:left}
td[data-label]::before{content:attr(data-label) \": \";color:#5c6670}
td:first-child{font-weight:600}td.err{min-width:0}td.err:empty{display:none}}
";

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
}

fn html_response(markup: Markup) -> Response<Full<Bytes>> {
    respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        markup.into_string(),
    )
}

/// Error text fit for a page ([module docs](self)).
pub fn page_safe(text: &str, config: &TablesConfig) -> String {
    let text = crate::config::redact(text);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('#');
        } else if c == '`' || c == '\'' || c == '"' {
            let mut quoted = String::new();
            let mut closed = false;
            for q in chars.by_ref() {
                if q == c {
                    closed = true;
                    break;
                }
                quoted.push(q);
            }
            let known = config.get(&quoted).is_ok() || quoted.starts_with("etl-pipeline");
            out.push(c);
            out.push_str(if known { &quoted } else { "…" });
            if closed {
                out.push(c);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` UTC of seconds since the epoch.
fn at(epoch: f64) -> String {
    let micros = format!("{:.0}", epoch * 1e6).parse::<i64>().unwrap_or(0);
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn duration(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7_200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3_600),
        s => format!("{} d", s / 86_400),
    }
}

fn status_class(status: &str) -> &'static str {
    match status {
        "success" | "succeeded" | "skipped" => "ok",
        "running" => "run",
        "" | "-" => "",
        _ => "bad",
    }
}

/// `GET /`.
pub async fn overview(app: &Arc<App>) -> Response<Full<Bytes>> {
    let status = app.snapshot();
    let alerts = read_alerts(app).await;
    let config = &app.config;
    let body = html! {
        h1 { "etl-pipeline" }
        p.muted {
            (refreshed(&status))
            @if let Some(measured) = &status.measured { " · " (measured) }
        }
        @if let Some(error) = &status.error {
            p.bad { "The status cannot be read: " (page_safe(error, config)) }
        }
        h2 { "Tables (" (status.lines.len()) ")" }
        div.scroll {
            table {
                thead { tr {
                    th { "table" } th { "copy" } th { "last copied" } th { "load" } th { "last loaded" }
                    th { "strategy" } th { "rows" } th { "lag" } th { "behind" } th { "transform" }
                    th { "fails 24 h" } th { "last error" }
                } }
                tbody {
                    @for l in &status.lines {
                        tr {
                            td { a href={ "/tables/" (path_segment(&l.table)) } { (l.table) } }
                            td class=(status_class(l.copy_status.as_deref().unwrap_or(""))) data-label="copy" { (l.copy_status.as_deref().unwrap_or("-")) }
                            td data-label="last copied" { (l.last_copied.as_deref().unwrap_or("-")) }
                            td class=(status_class(&l.status)) data-label="load" { (dash(&l.status)) }
                            td data-label="last loaded" { (dash(&l.last_loaded)) }
                            td data-label="strategy" { (l.strategy) }
                            td.num data-label="rows" { (l.rows_loaded) }
                            td.num data-label="lag" { (l.lag_seconds.map_or_else(|| "-".to_string(), duration)) }
                            td.num data-label="behind" { (l.rows_behind.map_or_else(|| "-".to_string(), |n| n.to_string())) }
                            td class=(status_class(l.transform_status.as_deref().unwrap_or(""))) data-label="transform" { (l.transform_status.as_deref().unwrap_or("-")) }
                            td class=(if l.failures_24h > 0 { "num bad" } else { "num" }) data-label="fails 24 h" { (l.failures_24h) }
                            td.err data-label="last error" { (page_safe(&l.error, config)) }
                        }
                    }
                }
            }
        }
        @if status.lines.is_empty() {
            p { "No table has been run yet." }
        }
        h2 { "Schedules" }
        (schedules(app))
        h2 { "Runs of this process" }
        (runs(app))
        h2 { "Alerts, last " (ALERT_DAYS) " days" }
        (alerts_table(alerts, config))
    };
    html_response(page("etl-pipeline", body))
}

fn dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

fn refreshed(status: &StatusSnapshot) -> String {
    match status.refreshed_at {
        Some(t) => format!("status read {} UTC", at(t)),
        None => "status not read yet".to_string(),
    }
}

/// A table name as one path segment.
fn path_segment(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn schedules(app: &App) -> Markup {
    let now = chrono::Local::now();
    html! {
        @if app.config.schedules().is_empty() {
            p.muted { "No schedules: add a `schedules:` block to the table config." }
        } @else {
            div.scroll { table {
                thead { tr { th { "schedule" } th { "cron" } th { "runs" } th { "next" } th { "state" } } }
                tbody {
                    @for s in app.config.schedules() {
                        tr {
                            td { (s.name) }
                            td data-label="cron" { code { (s.pattern) } }
                            td data-label="runs" { (super::RunRequest { selection: s.selection.clone(), force_full: s.force_full }.describe()) }
                            td data-label="next" { @if s.active { (s.next_after(&now).map(|t| t.format("%Y-%m-%d %H:%M:%S %Z").to_string()).unwrap_or_default()) } @else { "-" } }
                            td data-label="state" {
                                @if !s.active { "paused" }
                                @else if app.runs.schedule_running(&s.name) { span.run { "running" } }
                                @else { "waiting" }
                            }
                        }
                    }
                }
            } }
        }
    }
}

fn runs(app: &App) -> Markup {
    let runs = app.runs.list();
    html! {
        @if runs.is_empty() {
            p.muted { "None yet." }
        } @else {
            div.scroll { table {
                thead { tr { th { "run" } th { "by" } th { "tables" } th { "started" } th { "state" } } }
                tbody {
                    @for r in runs.iter().take(20) {
                        tr {
                            td { (r.id) }
                            td data-label="by" { (r.triggered_by) @if let Some(s) = &r.schedule { " (" (s) ")" } }
                            td data-label="tables" { (r.tables) }
                            td data-label="started" { (at(r.started_at)) }
                            td class=(status_class(r.state)) data-label="state" { (r.state) }
                        }
                    }
                }
            } }
        }
    }
}

async fn read_alerts(app: &App) -> std::result::Result<Vec<AlertRow>, String> {
    let read = async {
        let warehouse = app.runner.env.warehouse()?;
        let client = crate::postgres::connect(&warehouse).await?;
        tracking::recent_alerts(&client, &warehouse.schema, ALERT_DAYS, 200).await
    };
    read.await.map_err(|e| page_safe(&chain(&e), &app.config))
}

fn alerts_table(
    alerts: std::result::Result<Vec<AlertRow>, String>,
    config: &TablesConfig,
) -> Markup {
    html! {
        @match alerts {
            Err(why) => p.bad { "The alerts cannot be read: " (why) },
            Ok(alerts) if alerts.is_empty() => p.muted { "None." },
            Ok(alerts) => div.scroll { table {
                thead { tr { th { "at (UTC)" } th { "kind" } th { "table" } th { "phase" } th { "message" } } }
                tbody {
                    @for a in &alerts {
                        tr {
                            td { (at(a.at)) }
                            td.bad data-label="kind" { (a.kind) }
                            td data-label="table" { (dash(&a.table)) }
                            td data-label="phase" { (dash(&a.phase)) }
                            td.err data-label="message" { (page_safe(&a.message, config)) }
                        }
                    }
                }
            } },
        }
    }
}

/// `GET /tables/NAME`.
pub async fn table(app: &Arc<App>, name: &str) -> Response<Full<Bytes>> {
    let config = &app.config;
    if config.get(name).is_err() {
        return respond(
            StatusCode::NOT_FOUND,
            "text/html; charset=utf-8",
            page(
                "not found",
                html! { p { "No table of that name is in the table config. " a href="/" { "All tables" } } },
            )
            .into_string(),
        );
    }
    let history = async {
        let warehouse = app.runner.env.warehouse()?;
        let client = crate::postgres::connect(&warehouse).await?;
        tracking::table_history(&client, &warehouse.schema, name, HISTORY_ROWS).await
    }
    .await;
    let status = app.snapshot();
    let line = status.lines.iter().find(|l| l.table == name);
    let lag: Vec<(f64, f64)> = status
        .lag_samples
        .get(name)
        .map(|s| {
            s.iter()
                .map(|(t, lag)| (*t, f64::from(i32::try_from(*lag).unwrap_or(i32::MAX))))
                .collect()
        })
        .unwrap_or_default();
    let body = html! {
        p { a href="/" { "← all tables" } }
        h1 { (name) }
        @if let Some(l) = line {
            p.muted {
                "load " (dash(&l.status)) " · last loaded " (dash(&l.last_loaded)) " · " (l.strategy)
                " · watermark " (dash(&l.watermark))
            }
        }
        @match &history {
            Err(e) => p.bad { "The run history cannot be read: " (page_safe(&chain(e), config)) },
            Ok(rows) => {
                h2 { "Rows per second, per run" }
                (chart(&phase_series(rows, rows_per_second), "rows/s"))
                h2 { "Duration, per run" }
                (chart(&phase_series(rows, |r| r.seconds), "s"))
                (history_table(rows, config))
            },
        }
        h2 { "Lag over time" }
        @if lag.len() < 2 {
            p.muted { "Sampled once a minute while serve runs; a plot needs two samples." }
        } @else {
            (chart(&[Series { label: "lag", color: "#7a4d00", points: lag }], "s"))
        }
    };
    html_response(page(name, body))
}

/// A run's read speed; none for a run that read nothing (a skipped or
/// unchanged table), whose zero says nothing of speed.
fn rows_per_second(row: &HistoryRow) -> Option<f64> {
    if row.rows_read == 0 {
        return None;
    }
    let seconds = row.seconds.filter(|s| *s > 0.0)?;
    let rows = i32::try_from(row.rows_read).ok()?;
    Some(f64::from(rows) / seconds)
}

/// One line of a chart.
struct Series {
    label: &'static str,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

/// The extract and load lines of a measure, oldest run first.
fn phase_series(rows: &[HistoryRow], measure: impl Fn(&HistoryRow) -> Option<f64>) -> Vec<Series> {
    [("extract", "#0b5cad"), ("load", "#116329")]
        .into_iter()
        .map(|(phase, color)| Series {
            label: phase,
            color,
            points: rows
                .iter()
                .rev()
                .filter(|r| r.phase == phase && r.status != "running")
                .filter_map(|r| measure(r).map(|v| (r.started_at, v)))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

fn history_table(rows: &[HistoryRow], config: &TablesConfig) -> Markup {
    html! {
        h2 { "Run history (newest " (rows.len()) ")" }
        div.scroll { table {
            thead { tr {
                th { "started (UTC)" } th { "phase" } th { "status" } th { "by" } th { "strategy" }
                th { "rows read" } th { "written" } th { "seconds" } th { "rows/s" } th { "error" }
            } }
            tbody {
                @for r in rows {
                    tr {
                        td { (at(r.started_at)) }
                        td data-label="phase" { (r.phase) }
                        td class=(status_class(&r.status)) data-label="status" { (r.status) }
                        td data-label="by" { (r.triggered_by) @if let Some(s) = &r.schedule { " (" (s) ")" } }
                        td data-label="strategy" { (r.strategy.as_deref().unwrap_or("-")) }
                        td.num data-label="rows read" { (r.rows_read) }
                        td.num data-label="written" { (r.rows_written) }
                        td.num data-label="seconds" { (r.seconds.map_or_else(|| "-".to_string(), |s| format!("{s:.2}"))) }
                        td.num data-label="rows/s" { (rows_per_second(r).map_or_else(|| "-".to_string(), |v| format!("{v:.0}"))) }
                        td.err data-label="error" { (page_safe(r.error.as_deref().unwrap_or(""), config)) }
                    }
                }
            }
        } }
    }
}

/// A line chart of `series` over time, as SVG.
fn chart(series: &[Series], unit: &str) -> Markup {
    const W: f64 = 560.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 78.0;
    const RIGHT: f64 = 12.0;
    const TOP: f64 = 14.0;
    const BOTTOM: f64 = 34.0;
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0_f64);
    for (x, y) in points {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    if series.is_empty() || x0 > x1 {
        return html! { p.muted { "No finished runs to plot yet." } };
    }
    let span = if x1 > x0 { x1 - x0 } else { 1.0 };
    let top = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    let px = |x: f64| LEFT + (x - x0) / span * (W - LEFT - RIGHT);
    let py = |y: f64| TOP + (1.0 - y / top) * (H - TOP - BOTTOM);
    let view = format!("0 0 {W} {H}");
    html! {
        svg xmlns="http://www.w3.org/2000/svg" viewBox=(view) role="img" {
            line x1=(LEFT) y1=(py(0.0)) x2=(W - RIGHT) y2=(py(0.0)) stroke="#8a949e" {}
            line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(py(0.0)) stroke="#8a949e" {}
            @for frac in [0.5, 1.0] {
                line x1=(LEFT) y1=(py(top * frac / 1.1)) x2=(W - RIGHT) y2=(py(top * frac / 1.1)) stroke="#eceff1" {}
                text x=(LEFT - 6.0) y=(py(top * frac / 1.1) + 4.0) text-anchor="end" font-size="13" fill="#5c6670" {
                    (short_number(top * frac / 1.1)) " " (unit)
                }
            }
            text x=(LEFT - 6.0) y=(py(0.0) + 4.0) text-anchor="end" font-size="13" fill="#5c6670" { "0" }
            text x=(LEFT) y=(H - 10.0) font-size="13" fill="#5c6670" { (at(x0)) }
            text x=(W - RIGHT) y=(H - 10.0) text-anchor="end" font-size="13" fill="#5c6670" { (at(x1)) }
            @for (i, s) in series.iter().enumerate() {
                polyline fill="none" stroke=(s.color) stroke-width="2"
                    points=(s.points.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect::<Vec<_>>().join(" ")) {}
                @for (x, y) in &s.points {
                    circle cx=(format!("{:.1}", px(*x))) cy=(format!("{:.1}", py(*y))) r="2.5" fill=(s.color) {}
                }
                text x=(LEFT + 8.0 + 90.0 * f64::from(u8::try_from(i).unwrap_or(0))) y=(TOP + 10.0) font-size="14" fill=(s.color) { (s.label) }
            }
        }
    }
}

fn short_number(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.1}M", v / 1_000_000.0)
    } else if v >= 10_000.0 {
        format!("{:.0}k", v / 1_000.0)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_on_a_page_keep_table_names_and_lose_values() {
        let config =
            TablesConfig::parse("tables:\n  patient: {extraction_strategy: full_table}\n").unwrap();
        let shown = page_safe(
            "`patient`.`Birthdate`: `1962-04-31` is not a date (PatNum 48213); run `etl-pipeline verify`",
            &config,
        );
        assert_eq!(
            shown,
            "`patient`.`…`: `…` is not a date (PatNum #); run `etl-pipeline verify`"
        );
        assert_eq!(page_safe("unterminated 'Smith", &config), "unterminated '…");
    }

    #[test]
    fn a_chart_draws_each_series_and_its_scale() {
        let svg = chart(
            &[Series {
                label: "load",
                color: "#116329",
                points: vec![(1_765_000_000.0, 100.0), (1_765_000_600.0, 250_000.0)],
            }],
            "rows/s",
        )
        .into_string();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("<polyline"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("250k rows/s"), "{svg}");
        assert!(chart(&[], "s").into_string().contains("No finished runs"));
    }

    #[test]
    fn odd_table_names_make_one_path_segment() {
        assert_eq!(path_segment("odd name/x"), "odd%20name%2Fx");
        assert_eq!(path_segment("procedurelog"), "procedurelog");
    }
}
