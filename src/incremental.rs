//! What an incremental read covers, shared by both phases: the keyset
//! passes a run reads (from the stored watermarks, the quality bounds and the
//! look-back window), the watermarks a full read records, and how committed
//! batches advance the watermarks.

use std::cmp::Ordering;
use std::collections::HashMap;

use mysql_async::{Conn, Value};

use crate::config::{ExtractionStrategy, TableConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::mysql::{self as my, Bound, Pass, ReadRange, SourceTable};
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

/// Quality bounds of a watermark column as MySQL values; dates and
/// date-times only. The upper bound defaults to the server's clock plus a day.
async fn column_bounds(
    mysql: &mut Conn,
    cfg: &TableConfig,
    ty: &SourceType,
) -> Result<(Bound, Bound)> {
    if !ty.is_temporal() {
        return Ok((Bound::Open, Bound::Open));
    }
    let is_timestamp = matches!(ty, SourceType::Timestamp { .. });
    let mut min = cfg.quality.min;
    if is_timestamp && min.is_some_and(|m| m.pg_micros() < TIMESTAMP_FLOOR.pg_micros()) {
        min = Some(TIMESTAMP_FLOOR);
    }
    let max = match cfg.quality.max {
        Some(p) if is_timestamp && p.pg_micros() > TIMESTAMP_CEILING.pg_micros() => {
            TIMESTAMP_CEILING.to_mysql()
        }
        Some(p) => p.to_mysql(),
        None => my::server_now_plus_day(mysql).await?,
    };
    Ok((
        min.map(|p| Bound::At(p.to_mysql())).unwrap_or(Bound::Open),
        Bound::At(max),
    ))
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

/// The watermarks a full read records: the highest in-bounds value of each
/// watermark column. Read before the rows, so a row added in between (on a
/// table without snapshots, MyISAM) is read again next run, never skipped.
pub async fn full_read_marks(
    mysql: &mut Conn,
    cfg: &TableConfig,
    source: &SourceTable,
    key: &[String],
) -> Result<Vec<(String, StoredWatermark)>> {
    let mut marks = Vec::new();
    for column in trackable_columns(cfg, source, key) {
        let Some(source_column) = source.column(&column) else {
            continue;
        };
        let (min, max) = column_bounds(mysql, cfg, &source_column.ty).await?;
        if let Some(upper) = my::upper_bound(mysql, &cfg.name, &column, &min, &max).await?
            && let Some(value) = value_to_text(&upper)
        {
            marks.push((column, StoredWatermark { value, key: None }));
        }
    }
    Ok(marks)
}

/// The watermarks of an incremental read, advanced batch by batch.
#[derive(Debug, Clone)]
pub struct Marks {
    columns: Vec<String>,
    current: HashMap<String, (Value, StoredWatermark)>,
}

impl Marks {
    /// The marks after a committed batch that read up to `last` (watermark
    /// value, then key) on `column`; never moves a mark backwards.
    pub fn advanced(&self, column: Option<&str>, last: Option<&[Value]>) -> Marks {
        let mut next = self.clone();
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

    /// The marks to store, in column order.
    pub fn stored(&self) -> Vec<(String, StoredWatermark)> {
        self.columns
            .iter()
            .filter_map(|c| self.current.get(c).map(|(_, m)| (c.clone(), m.clone())))
            .collect()
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

/// The passes of an incremental read on `columns` (OR): for each column the
/// window from its stored watermark (inclusive, less the look-back) up to
/// the run's upper bound, paged by (column, key); and, for dates, the rows
/// outside the quality bounds, which arrive without moving the watermark.
pub async fn plan_passes(
    mysql: &mut Conn,
    cfg: &TableConfig,
    source: &SourceTable,
    key: &[String],
    stored: &HashMap<String, StoredWatermark>,
    columns: &[String],
) -> Result<(Vec<Pass>, Marks)> {
    let mut passes = Vec::new();
    let mut current = HashMap::new();
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
        current.insert(column.clone(), (value.clone(), mark.clone()));
        let (min, max) = column_bounds(mysql, cfg, &source_column.ty).await?;
        let mut start = step_back(&value, cfg.lookback_seconds, cfg.lookback_keys);
        if let Bound::At(min_value) = &min
            && compare_values(&start, min_value) == Some(Ordering::Less)
        {
            start = min_value.clone();
        }
        let mut order = vec![column.clone()];
        order.extend(key.iter().filter(|k| *k != column).cloned());
        if let Some(upper) = my::upper_bound(mysql, &cfg.name, column, &min, &max).await? {
            passes.push(Pass {
                advances: Some(column.clone()),
                range: ReadRange::Window { start, upper },
                order: order.clone(),
                after: None,
            });
        }
        if let Bound::At(max_value) = max {
            let min = match min {
                Bound::At(v) => Some(v),
                Bound::Open => None,
            };
            passes.push(Pass {
                advances: None,
                range: ReadRange::Outside {
                    min,
                    max: max_value,
                },
                order,
                after: None,
            });
        }
    }
    Ok((
        passes,
        Marks {
            columns: columns.to_vec(),
            current,
        },
    ))
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
        }
    }

    #[test]
    fn marks_move_forward_only_and_keep_the_key() {
        let m = marks();
        let back = m.advanced(Some("A"), Some(&[Value::Int(4), Value::Int(1)]));
        assert_eq!(back.primary(), Some(("A".into(), "10".into())));
        let on = m.advanced(Some("A"), Some(&[Value::Int(12), Value::Int(7)]));
        assert_eq!(on.primary(), Some(("A".into(), "12".into())));
        assert_eq!(on.stored()[0].1.key.as_deref(), Some("[\"7\"]"));
        let none = m.advanced(None, Some(&[Value::Int(99)]));
        assert_eq!(none.primary(), Some(("A".into(), "10".into())));
    }
}
