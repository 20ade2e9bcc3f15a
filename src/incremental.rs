//! What an incremental read covers, shared by both phases: the keyset
//! passes a run reads (from the stored watermarks, the quality bounds and the
//! look-back window), the watermarks a full read records, and how committed
//! batches advance the watermarks.

use std::cmp::Ordering;
use std::collections::HashMap;

use mysql_async::{Conn, Value};

use crate::config::{ExtractionStrategy, TableConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::mysql::{self as my, Bound, ClockTerms, Pass, PassKind, ReadRange, SourceTable};
use crate::outcome::TableReport;
use crate::schema::{
    DateTimeParts, SourceType, compare_values, step_back, value_from_text, value_to_text,
};
use crate::tracking::StoredWatermark;

/// The range a MySQL `timestamp` can hold (1970-01-01 00:00:01 to
/// 2038-01-19 03:14:07 UTC), narrowed by a day on each side for the session
/// time zone. MySQL compares a `timestamp` column with a constant outside this
/// range as false, so bounds beyond it are pulled in.
const TIMESTAMP_FLOOR: DateTimeParts = DateTimeParts::midnight(1970, 1, 2);
const TIMESTAMP_CEILING: DateTimeParts = DateTimeParts::midnight(2038, 1, 18);

/// The lowest date a watermark counts, whatever `min_date` says: just past
/// OpenDental's "no date" values (`0000-00-00`, `0001-01-01`, `1900-01-01`),
/// so rows stamped with one are read by the below-bounds pass of every run
/// instead of waiting below a watermark they can never reach.
const SENTINEL_FLOOR: DateTimeParts = DateTimeParts::midnight(1900, 1, 2);

/// What a phase knows about a table's reads besides its config.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Per watermark column, the watermark the copy before this hop has
    /// committed, in this session's terms (the load from a replica). Such a
    /// column is bounded by it instead of by the server's clock, so the load
    /// never passes what the copy guarantees complete.
    pub caps: HashMap<String, Value>,
    /// The copy before this hop manages the table: a watermark column it has
    /// no committed watermark for (a first copy under way, or one that
    /// stopped between its swap and its tracking update) does not move.
    pub copy_manages: bool,
    /// Microseconds since the run that wrote the stored watermarks began,
    /// by the tracking store's clock; `None` when not known.
    pub since_last_run: Option<i64>,
    /// Where the new-keys pass starts, when the table's key is an
    /// auto-increment integer: the key through which the last one read
    /// (`Some(None)`: from the first key). See [`held_key`].
    pub held_key: Option<Option<Value>>,
}

/// Where a new-keys pass starts: the key through which the last one read,
/// as the tracking table keeps it (empty: from the first key), else, the
/// first time, the highest key the destination holds (`highest`, read only
/// then). The highest key alone is no start: a window or below-bounds pass
/// of a run stopped before its new-keys pass can have written a row whose
/// key is above new rows that only that pass finds.
pub async fn held_key<F>(stored: Option<&str>, highest: F) -> Result<Option<Value>>
where
    F: std::future::Future<Output = Result<Option<Value>>>,
{
    match stored {
        Some("") => Ok(None),
        Some(text) => Ok(Some(key_value(text))),
        None => highest.await,
    }
}

/// An integer key from its text.
pub fn key_value(text: &str) -> Value {
    match text.parse::<i64>() {
        Ok(v) => Value::Int(v),
        Err(_) => text
            .parse::<u64>()
            .map(Value::UInt)
            .unwrap_or_else(|_| Value::Bytes(text.as_bytes().to_vec())),
    }
}

/// Where a watermark column's values may lie in this run.
struct ColumnBounds {
    /// Values below it are outside the quality bounds (dates only).
    min: Option<Value>,
    /// Values above it never move the watermark, and why.
    max: Option<(Value, PassKind)>,
    /// The earliest stamp the server's clock can have written since the
    /// last run began (dates only, when that run's start is known).
    earliest: Option<Value>,
}

fn clock_terms(ty: &SourceType) -> ClockTerms {
    match ty {
        SourceType::Timestamp { .. } => ClockTerms::Session,
        SourceType::Date => ClockTerms::ServerDate,
        _ => ClockTerms::ServerLocal,
    }
}

fn lower(a: Option<(Value, PassKind)>, b: Option<(Value, PassKind)>) -> Option<(Value, PassKind)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if compare_values(&b.0, &a.0) == Some(Ordering::Less) {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    }
}

/// The bounds of a watermark column in this run. Dates count from
/// [`SENTINEL_FLOOR`] (or a later `min_date`) up to the lowest of
/// `max_date`, the copy's committed watermark (`cap`) and, without a cap,
/// the server's clock at the start of the run plus the table's skew
/// allowance, in the column's own terms.
async fn column_bounds(
    mysql: &mut Conn,
    cfg: &TableConfig,
    ty: &SourceType,
    cap: Option<&Value>,
    since_last_run: Option<i64>,
) -> Result<ColumnBounds> {
    let mut bounds = ColumnBounds {
        min: None,
        max: cap.map(|c| (c.clone(), PassKind::AheadOfCopy)),
        earliest: None,
    };
    if !ty.is_temporal() {
        return Ok(bounds);
    }
    let is_timestamp = matches!(ty, SourceType::Timestamp { .. });
    let floor = if is_timestamp {
        TIMESTAMP_FLOOR
    } else {
        SENTINEL_FLOOR
    };
    let min = match cfg.quality.min {
        Some(m) if m.pg_micros() > floor.pg_micros() => m,
        _ => floor,
    };
    bounds.min = Some(min.to_mysql());
    let quality_max = cfg.quality.max.map(|p| {
        let p = if is_timestamp && p.pg_micros() > TIMESTAMP_CEILING.pg_micros() {
            TIMESTAMP_CEILING
        } else {
            p
        };
        (p.to_mysql(), PassKind::OutsideBounds)
    });
    if cap.is_none() {
        let (upper, earliest) =
            my::server_clock(mysql, clock_terms(ty), cfg.skew_allowance(), since_last_run).await?;
        bounds.max = Some((upper, PassKind::Future));
        bounds.earliest = earliest;
    }
    bounds.max = lower(bounds.max, quality_max);
    Ok(bounds)
}

impl ColumnBounds {
    /// The highest value of `column` within these bounds, or `None` when no
    /// row lies there: a full read's watermark, an incremental window's top.
    async fn highest(&self, mysql: &mut Conn, table: &str, column: &str) -> Result<Option<Value>> {
        let bound = |v: Option<&Value>| v.cloned().map(Bound::At).unwrap_or(Bound::Open);
        let max = bound(self.max.as_ref().map(|(v, _)| v));
        my::upper_bound(mysql, table, column, &bound(self.min.as_ref()), &max).await
    }
}

/// The columns whose watermarks a full read records for the next run.
fn trackable_columns(cfg: &TableConfig, source: &SourceTable, key: &[String]) -> Vec<String> {
    if cfg.extraction_strategy == ExtractionStrategy::FullTable || key.is_empty() {
        return Vec::new();
    }
    let columns = cfg.watermark_columns();
    let usable = columns.iter().all(|c| {
        source
            .column(c)
            .is_some_and(|col| col.ty.is_watermark_capable())
    });
    if usable { columns } else { Vec::new() }
}

/// The watermarks a full read records: the highest value of each watermark
/// column within its bounds (never past the clock or the copy). Read before
/// the rows, so a row added in between (on a table without snapshots,
/// MyISAM) is read again next run, never skipped.
pub async fn full_read_marks(
    mysql: &mut Conn,
    cfg: &TableConfig,
    source: &SourceTable,
    key: &[String],
    limits: &Limits,
) -> Result<Vec<(String, StoredWatermark)>> {
    let mut marks = Vec::new();
    for column in trackable_columns(cfg, source, key) {
        let Some(source_column) = source.column(&column) else {
            continue;
        };
        let bounds = column_bounds(
            mysql,
            cfg,
            &source_column.ty,
            limits.caps.get(&column),
            None,
        )
        .await?;
        if let Some(upper) = bounds.highest(mysql, &cfg.name, &column).await?
            && let Some(value) = value_to_text(&upper)
        {
            marks.push((column, StoredWatermark { value, key: None }));
        }
    }
    Ok(marks)
}

/// Whether a table's key is one auto-increment integer column that is not
/// itself a watermark column: then new rows can be found by their key,
/// whatever their stamp says.
pub fn reads_new_keys(source: &SourceTable, key: &[String], columns: &[String]) -> bool {
    matches!(key, [k] if source.auto_increment.as_deref() == Some(k.as_str()) && !columns.contains(k))
}

/// The watermarks of an incremental read, advanced batch by batch, and how
/// far its new-keys pass has read.
#[derive(Debug, Clone)]
pub struct Marks {
    columns: Vec<String>,
    current: HashMap<String, (Value, StoredWatermark)>,
    /// The key below which every row has been read by a new-keys pass
    /// (`Some(None)`: no key yet); `None` where no such pass runs.
    keys_through: Option<Option<Value>>,
    /// The highest key of the table read, taken before its passes: once
    /// every pass has ended, each row up to it has been read by one of them
    /// (a window, or the new-keys pass for rows no window reads).
    highest_key: Option<Value>,
}

impl Marks {
    /// The marks after a committed batch of a `kind` pass that read up to
    /// `last` (watermark value, then key) on `column`, or up to key `last`
    /// (the new-keys pass); never moves a mark backwards.
    pub fn advanced(&self, kind: PassKind, column: Option<&str>, last: Option<&[Value]>) -> Marks {
        let mut next = self.clone();
        if kind == PassKind::NewKeys
            && let (Some(through), Some([key, ..])) = (&mut next.keys_through, last)
            && through
                .as_ref()
                .is_none_or(|t| compare_values(key, t) == Some(Ordering::Greater))
        {
            *through = Some(key.clone());
        }
        if let (Some(column), Some(last)) = (column, last)
            && let Some((value, mark)) = next.current.get_mut(column)
            && compare_values(&last[0], value) == Some(Ordering::Greater)
        {
            *value = last[0].clone();
            *mark = StoredWatermark {
                value: value_to_text(&last[0]).unwrap_or_default(),
                key: key_json(&last[1..]),
            };
        }
        next
    }

    /// The marks once every pass has read to its end: the next run's
    /// new-keys pass starts past the highest key there was before them, so
    /// its index range stays empty when nothing is new, however long new
    /// rows arrive through the window alone.
    pub fn finished(&self) -> Marks {
        let mut done = self.clone();
        if let (Some(through), Some(highest)) = (&mut done.keys_through, &self.highest_key)
            && through
                .as_ref()
                .is_none_or(|t| compare_values(highest, t) == Some(Ordering::Greater))
        {
            *through = Some(highest.clone());
        }
        done
    }

    /// The marks to store, in column order.
    pub fn stored(&self) -> Vec<(String, StoredWatermark)> {
        self.columns
            .iter()
            .filter_map(|c| self.current.get(c).map(|(_, m)| (c.clone(), m.clone())))
            .collect()
    }

    /// Where the next run's new-keys pass starts ([`crate::tracking::Progress::keys_through`]).
    pub fn keys_through(&self) -> Option<String> {
        self.keys_through
            .as_ref()
            .map(|k| k.as_ref().and_then(value_to_text).unwrap_or_default())
    }

    /// The first watermark column and its value (`last_primary_value`).
    pub fn primary(&self) -> Option<(String, String)> {
        let column = self.columns.first()?;
        self.current
            .get(column)
            .map(|(_, m)| (column.clone(), m.value.clone()))
    }
}

fn key_json(values: &[Value]) -> Option<String> {
    if values.is_empty() {
        return None;
    }
    let texts: Vec<Option<String>> = values.iter().map(value_to_text).collect();
    serde_json::to_string(&texts).ok()
}

fn earlier(a: Value, b: Option<&Value>) -> Value {
    match b {
        Some(b) if compare_values(b, &a) == Some(Ordering::Less) => b.clone(),
        _ => a,
    }
}

/// The passes of an incremental read on `columns` (OR). For each column:
/// the window from its stored watermark (inclusive, less the look-back) up
/// to the run's upper bound, paged by (column, key); the rows stamped past
/// the upper limit (the future, or not yet committed by the copy) and, for
/// dates, before the quality bounds, which arrive without moving the
/// watermark. The window starts lower when the copy's watermark is lower
/// (the load never passes it) or when the server's clock went back since
/// the last run (a fall-back hour, a clock stepped back): the watermark then
/// steps back too, so the next hop re-reads what this one re-reads. For a
/// table with an auto-increment key, one more pass reads the keys past
/// where the last one ended ([`held_key`]) among rows no window reads.
pub async fn plan_passes(
    mysql: &mut Conn,
    cfg: &TableConfig,
    source: &SourceTable,
    key: &[String],
    stored: &HashMap<String, StoredWatermark>,
    columns: &[String],
    limits: &Limits,
) -> Result<(Vec<Pass>, Marks)> {
    let mut passes = Vec::new();
    let mut current = HashMap::new();
    let mut unread = Vec::new();
    for column in columns {
        let source_column = source.column(column).ok_or_else(|| {
            Error::new(
                ErrorKind::Schema,
                format!("watermark column `{column}` is not in `{}`", cfg.name),
            )
        })?;
        let mark = stored.get(column).ok_or_else(|| {
            Error::new(
                ErrorKind::Schema,
                format!("no watermark for `{}`.`{column}`", cfg.name),
            )
        })?;
        let value = value_from_text(&source_column.ty, &mark.value).map_err(|e| {
            Error::new(
                ErrorKind::Schema,
                format!(
                    "{}; rerun `{}` with --force-full to rebuild it",
                    e.0, cfg.name
                ),
            )
        })?;
        let cap = match limits.caps.get(column) {
            None if limits.copy_manages => Some(&value),
            cap => cap,
        };
        let bounds =
            column_bounds(mysql, cfg, &source_column.ty, cap, limits.since_last_run).await?;
        let from = earlier(earlier(value.clone(), cap), bounds.earliest.as_ref());
        if compare_values(&from, &value) == Some(Ordering::Less) {
            let text = value_to_text(&from).unwrap_or_default();
            tracing::info!(table = %cfg.name, %column, from = %text, "watermark steps back");
            current.insert(
                column.clone(),
                (
                    from.clone(),
                    StoredWatermark {
                        value: text,
                        key: None,
                    },
                ),
            );
        } else {
            current.insert(column.clone(), (value.clone(), mark.clone()));
        }
        let mut start = step_back(&from, cfg.lookback_seconds, cfg.lookback_keys);
        if let Some(min_value) = &bounds.min
            && compare_values(&start, min_value) == Some(Ordering::Less)
        {
            start = min_value.clone();
        }
        let mut order = vec![column.clone()];
        order.extend(key.iter().filter(|k| *k != column).cloned());
        if let Some(upper) = bounds.highest(mysql, &cfg.name, column).await? {
            passes.push(Pass {
                advances: Some(column.clone()),
                kind: PassKind::Window,
                range: ReadRange::Window {
                    start: start.clone(),
                    upper,
                },
                order: order.clone(),
                after: None,
            });
        }
        if let Some((max, kind)) = bounds.max {
            passes.push(Pass {
                advances: None,
                kind,
                range: ReadRange::Above { max },
                order: order.clone(),
                after: None,
            });
        }
        if let Some(min) = &bounds.min {
            passes.push(Pass {
                advances: None,
                kind: PassKind::OutsideBounds,
                range: ReadRange::Below { min: min.clone() },
                order,
                after: None,
            });
        }
        unread.push((column.clone(), bounds.min, start));
    }
    if let Some(held) = &limits.held_key
        && reads_new_keys(source, key, columns)
    {
        passes.push(Pass {
            advances: None,
            kind: PassKind::NewKeys,
            range: ReadRange::KeysAbove {
                held: held.clone(),
                unread,
            },
            order: key.to_vec(),
            after: None,
        });
    }
    let keys_through = limits
        .held_key
        .clone()
        .filter(|_| reads_new_keys(source, key, columns));
    let highest_key = match keys_through {
        Some(_) => my::upper_bound(mysql, &cfg.name, &key[0], &Bound::Open, &Bound::Open).await?,
        None => None,
    };
    Ok((
        passes,
        Marks {
            columns: columns.to_vec(),
            current,
            keys_through,
            highest_key,
        },
    ))
}

/// A pass's range compared in the databases instead of read: its words
/// (the key a load stores its fingerprint under) and its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub range: String,
    pub print: my::Fingerprint,
}

/// A pass's range in words: kind, column and bounds.
fn range_words(pass: &Pass) -> String {
    let text = |v: &Value| value_to_text(v).unwrap_or_default();
    let bounds = match &pass.range {
        ReadRange::Window { start, upper } => format!("{} ..= {}", text(start), text(upper)),
        ReadRange::Above { max } => format!("> {}", text(max)),
        ReadRange::Below { min } => format!("< {}", text(min)),
        ReadRange::KeysAbove { .. } | ReadRange::All => String::new(),
    };
    format!("{:?} {} {bounds}", pass.kind, pass.order[0])
}

/// Whether a pass may re-read only rows the destination already holds, so
/// that comparing its range first can spare the read: a window with no row
/// past the watermark (`marks`), rows past the upper limit, rows outside
/// the quality bounds. Not the new-keys pass (one index range, empty when
/// nothing is new), nor a window whose newest rows are past the watermark
/// (they are new: it is read).
fn worth_comparing(pass: &Pass, marks: &Marks) -> bool {
    match (&pass.kind, &pass.range) {
        (PassKind::NewKeys, _) => false,
        (PassKind::Window, ReadRange::Window { upper, .. }) => pass
            .advances
            .as_ref()
            .and_then(|c| marks.current.get(c))
            .is_some_and(|(mark, _)| compare_values(upper, mark) != Some(Ordering::Greater)),
        _ => true,
    }
}

/// Fingerprints, in `conn`'s `table`, of the ranges of the passes worth
/// comparing ([`worth_comparing`]), aligned with `passes`.
pub async fn probe_passes(
    conn: &mut Conn,
    table: &str,
    row_text: &str,
    passes: &[Pass],
    marks: &Marks,
) -> Result<Vec<Option<Probe>>> {
    let mut probes = Vec::with_capacity(passes.len());
    for pass in passes {
        let probe = if worth_comparing(pass, marks) {
            Some(probe(conn, table, row_text, pass).await?)
        } else {
            None
        };
        probes.push(probe);
    }
    Ok(probes)
}

/// The fingerprint of a pass's range, under its words.
async fn probe(conn: &mut Conn, table: &str, row_text: &str, pass: &Pass) -> Result<Probe> {
    Ok(Probe {
        range: range_words(pass),
        print: my::range_fingerprint(conn, table, row_text, &pass.order[0], &pass.range).await?,
    })
}

/// For a load: fingerprints of the windows the next run will compare when
/// nothing changes, for the windows this run reads because rows lie past
/// the watermark. Such a window is read to its upper bound, which becomes
/// the watermark, so the next run's window is that bound less the look-back
/// (no lower than this window's start) up to the same bound. Taken in the
/// snapshot the run reads in, they say what the run has read: the next run
/// then skips the window when it is still the same, instead of reading it
/// once more to learn that.
pub async fn probe_next_windows(
    conn: &mut Conn,
    cfg: &TableConfig,
    row_text: &str,
    passes: &[Pass],
    marks: &Marks,
) -> Result<Vec<Probe>> {
    let mut probes = Vec::new();
    for pass in passes {
        let ReadRange::Window { start, upper } = &pass.range else {
            continue;
        };
        if pass.kind != PassKind::Window || worth_comparing(pass, marks) {
            continue;
        }
        let mut next_start = step_back(upper, cfg.lookback_seconds, cfg.lookback_keys);
        if compare_values(&next_start, start) == Some(Ordering::Less) {
            next_start = start.clone();
        }
        let next = Pass {
            range: ReadRange::Window {
                start: next_start,
                upper: upper.clone(),
            },
            ..pass.clone()
        };
        probes.push(probe(conn, &cfg.name, row_text, &next).await?);
    }
    Ok(probes)
}

/// The passes still to read: those whose range `held` (the destination's
/// fingerprints by range) does not hold as `probes` found it. A range
/// found empty is not read either. The rows of the passes left out are
/// counted in `report`, as unchanged and by their kind.
pub fn drop_unchanged(
    passes: Vec<Pass>,
    probes: &[Option<Probe>],
    held: &HashMap<String, my::Fingerprint>,
    report: &mut TableReport,
) -> Vec<Pass> {
    passes
        .into_iter()
        .zip(probes)
        .filter_map(|(pass, probe)| match probe {
            Some(p) if p.print.rows == 0 || held.get(&p.range) == Some(&p.print) => {
                report.count_pass(pass.kind, p.print.rows);
                report.rows_unchanged += p.print.rows;
                None
            }
            _ => Some(pass),
        })
        .collect()
}

/// Fingerprints by range, as a load stores them after a success.
pub fn probes_json(probes: &[Probe]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = probes
        .iter()
        .map(|p| {
            (
                p.range.clone(),
                serde_json::json!([p.print.rows, p.print.sum]),
            )
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Fingerprints by range from what [`probes_json`] wrote (none from
/// anything else).
pub fn probes_from_json(text: Option<&str>) -> HashMap<String, my::Fingerprint> {
    let Some(serde_json::Value::Object(map)) = text.and_then(|t| serde_json::from_str(t).ok())
    else {
        return HashMap::new();
    };
    map.into_iter()
        .filter_map(|(range, v)| {
            let rows = v.get(0)?.as_u64()?;
            let sum = v.get(1)?.as_str()?.to_string();
            Some((range, my::Fingerprint { rows, sum }))
        })
        .collect()
}

/// Text for the run history: `column=value; …`.
pub fn describe_marks(marks: &[(String, StoredWatermark)]) -> Option<String> {
    if marks.is_empty() {
        return None;
    }
    Some(
        marks
            .iter()
            .map(|(c, m)| format!("{c}={}", m.value))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks() -> Marks {
        let mark = StoredWatermark {
            value: "10".into(),
            key: None,
        };
        Marks {
            columns: vec!["A".into()],
            current: HashMap::from([("A".to_string(), (Value::Int(10), mark))]),
            keys_through: Some(Some(Value::Int(50))),
            highest_key: Some(Value::Int(120)),
        }
    }

    #[test]
    fn marks_move_forward_only_and_keep_the_key() {
        let m = marks();
        let window = PassKind::Window;
        let back = m.advanced(window, Some("A"), Some(&[Value::Int(4), Value::Int(1)]));
        assert_eq!(back.primary(), Some(("A".into(), "10".into())));
        let on = m.advanced(window, Some("A"), Some(&[Value::Int(12), Value::Int(7)]));
        assert_eq!(on.primary(), Some(("A".into(), "12".into())));
        assert_eq!(on.stored()[0].1.key.as_deref(), Some("[\"7\"]"));
        let none = m.advanced(PassKind::OutsideBounds, None, Some(&[Value::Int(99)]));
        assert_eq!(none.primary(), Some(("A".into(), "10".into())));
    }

    #[test]
    fn only_the_new_keys_pass_moves_where_it_resumes() {
        let m = marks();
        // A row stamped now with a high key, read by the window: the
        // new-keys pass has not read the keys below it.
        let window = m.advanced(
            PassKind::Window,
            Some("A"),
            Some(&[Value::Int(12), Value::Int(90)]),
        );
        assert_eq!(window.keys_through().as_deref(), Some("50"));
        let above = m.advanced(PassKind::OutsideBounds, None, Some(&[Value::Int(95)]));
        assert_eq!(above.keys_through().as_deref(), Some("50"));
        let read = m.advanced(PassKind::NewKeys, None, Some(&[Value::Int(70)]));
        assert_eq!(read.keys_through().as_deref(), Some("70"));
        let lookback = read.advanced(PassKind::NewKeys, None, Some(&[Value::Int(60)]));
        assert_eq!(lookback.keys_through().as_deref(), Some("70"));
        let empty = Marks {
            keys_through: Some(None),
            ..marks()
        };
        assert_eq!(empty.keys_through().as_deref(), Some(""));
        let first = empty.advanced(PassKind::NewKeys, None, Some(&[Value::Int(3)]));
        assert_eq!(first.keys_through().as_deref(), Some("3"));
    }

    #[test]
    fn a_finished_read_resumes_past_the_highest_key_before_it() {
        let m = marks();
        assert_eq!(m.finished().keys_through().as_deref(), Some("120"));
        let past = m.advanced(PassKind::NewKeys, None, Some(&[Value::Int(130)]));
        assert_eq!(past.finished().keys_through().as_deref(), Some("130"));
        let empty_table = Marks {
            keys_through: Some(None),
            highest_key: None,
            ..marks()
        };
        assert_eq!(empty_table.finished().keys_through().as_deref(), Some(""));
        let no_pass = Marks {
            keys_through: None,
            ..marks()
        };
        assert_eq!(no_pass.finished().keys_through(), None);
    }
}
