//! Watermark values: the text form kept in the tracking tables, typed back
//! into MySQL values for bound parameters, and the look-back step.

use mysql_async::Value;

use super::types::SourceType;
use super::value::{DateTimeParts, ValueError, check_date};

/// The text form of a watermark or key value, as stored in tracking tables
/// (`last_primary_value`): integers in decimal, date-times as
/// `YYYY-MM-DD HH:MM:SS[.ffffff]`, strings as themselves.
pub fn value_to_text(value: &Value) -> Option<String> {
    match value {
        Value::NULL => None,
        Value::Int(v) => Some(v.to_string()),
        Value::UInt(v) => Some(v.to_string()),
        Value::Float(v) => Some(v.to_string()),
        Value::Double(v) => Some(v.to_string()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Date(y, mo, d, h, mi, s, us) => Some(
            DateTimeParts {
                year: *y,
                month: *mo,
                day: *d,
                hour: *h,
                minute: *mi,
                second: *s,
                micros: *us,
            }
            .to_sql_string(),
        ),
        Value::Time(neg, d, h, m, s, us) => {
            let sign = if *neg { "-" } else { "" };
            let hours = u64::from(*d) * 24 + u64::from(*h);
            Some(format!("{sign}{hours}:{m:02}:{s:02}.{us:06}"))
        }
    }
}

fn parse_date_time(text: &str) -> Option<DateTimeParts> {
    let (date, time) = text.split_once(' ').unwrap_or((text, "00:00:00"));
    let (time, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut d = date.split('-');
    let mut t = time.split(':');
    let year = d.next()?.parse().ok()?;
    let month = d.next()?.parse().ok()?;
    let day = d.next()?.parse().ok()?;
    let hour = t.next()?.parse().ok()?;
    let minute = t.next()?.parse().ok()?;
    let second = t.next()?.parse().ok()?;
    let micros = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").get(..6)?.parse().ok()?
    };
    check_date((year, month, day, hour, minute, second, micros)).ok()?
}

/// Reads a stored watermark or key value back as a MySQL value of the
/// column's type, so comparisons bind typed parameters.
pub fn value_from_text(ty: &SourceType, text: &str) -> Result<Value, ValueError> {
    let bad = || {
        ValueError(format!(
            "stored watermark `{text}` does not parse as {ty:?}"
        ))
    };
    match ty {
        SourceType::Integer { unsigned: true, .. } => {
            text.parse::<u64>().map(Value::UInt).map_err(|_| bad())
        }
        SourceType::Integer {
            unsigned: false, ..
        }
        | SourceType::TinyIntOne { .. }
        | SourceType::Year => text.parse::<i64>().map(Value::Int).map_err(|_| bad()),
        SourceType::Date | SourceType::DateTime { .. } | SourceType::Timestamp { .. } => {
            parse_date_time(text).map(|p| p.to_mysql()).ok_or_else(bad)
        }
        _ => Ok(Value::Bytes(text.as_bytes().to_vec())),
    }
}

/// Moves a watermark back by the look-back window: `seconds` for dates and
/// date-times, `keys` for integers. Never below the type's minimum.
pub fn step_back(value: &Value, seconds: u64, keys: u64) -> Value {
    match value {
        Value::Int(v) => Value::Int(v.saturating_sub(i64::try_from(keys).unwrap_or(i64::MAX))),
        Value::UInt(v) => Value::UInt(v.saturating_sub(keys)),
        Value::Date(y, mo, d, h, mi, s, us) => {
            let Ok(Some(parts)) = check_date((*y, *mo, *d, *h, *mi, *s, *us)) else {
                return value.clone();
            };
            let back = i64::try_from(seconds)
                .unwrap_or(i64::MAX / 2_000_000)
                .saturating_mul(1_000_000);
            let floor = DateTimeParts::midnight(1, 1, 1);
            let micros = parts
                .pg_micros()
                .saturating_sub(back)
                .max(floor.pg_micros());
            DateTimeParts::from_pg_micros(micros)
                .map(|p| p.to_mysql())
                .unwrap_or_else(|| floor.to_mysql())
        }
        other => other.clone(),
    }
}

/// Orders two watermark values of the same column; `None` when they are of
/// kinds that do not compare (which a column's values never are).
pub fn compare_values(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::UInt(x), Value::UInt(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::UInt(y)) => Some(i128::from(*x).cmp(&i128::from(*y))),
        (Value::UInt(x), Value::Int(y)) => Some(i128::from(*x).cmp(&i128::from(*y))),
        (Value::Date(..), Value::Date(..)) => {
            let key = |v: &Value| match v {
                Value::Date(y, mo, d, h, mi, s, us) => (*y, *mo, *d, *h, *mi, *s, *us),
                _ => (0, 0, 0, 0, 0, 0, 0),
            };
            Some(key(a).cmp(&key(b)))
        }
        (Value::Bytes(x), Value::Bytes(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_round_trip_through_text() {
        let dt = SourceType::DateTime { fsp: 6 };
        let v = Value::Date(2024, 3, 1, 12, 30, 5, 250);
        let text = value_to_text(&v).unwrap();
        assert_eq!(text, "2024-03-01 12:30:05.000250");
        assert_eq!(value_from_text(&dt, &text).unwrap(), v);
        let big = SourceType::Integer {
            bytes: 8,
            unsigned: true,
        };
        assert_eq!(
            value_from_text(&big, "18446744073709551615").unwrap(),
            Value::UInt(u64::MAX)
        );
        assert!(value_from_text(&big, "12x").is_err());
    }

    #[test]
    fn values_of_one_column_compare() {
        use std::cmp::Ordering;
        let a = Value::Date(2024, 1, 1, 0, 0, 0, 0);
        let b = Value::Date(2024, 1, 1, 0, 0, 1, 0);
        assert_eq!(compare_values(&a, &b), Some(Ordering::Less));
        assert_eq!(
            compare_values(&Value::UInt(5), &Value::Int(-1)),
            Some(Ordering::Greater)
        );
        assert_eq!(compare_values(&Value::Int(1), &a), None);
    }

    #[test]
    fn look_back_crosses_midnight_and_month_ends() {
        let v = Value::Date(2024, 3, 1, 0, 5, 0, 0);
        assert_eq!(
            step_back(&v, 600, 0),
            Value::Date(2024, 2, 29, 23, 55, 0, 0)
        );
        assert_eq!(step_back(&Value::Int(500), 0, 1000), Value::Int(-500));
        assert_eq!(step_back(&Value::UInt(500), 0, 1000), Value::UInt(0));
    }
}
