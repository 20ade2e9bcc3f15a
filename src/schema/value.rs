//! Value conversion: one MySQL value into PostgreSQL's binary `COPY` field.
//!
//! [`encode_field`] writes the field (length prefix and bytes) for the
//! destination column's actual type, so a warehouse created by another tool
//! still loads. Nothing is rounded, wrapped, truncated or repaired: a value
//! that does not fit comes back as a [`ValueError`] saying why. Zero dates
//! (`0000-00-00`, `2020-00-15`) are written as NULL and reported as
//! [`Encoded::ZeroDate`] so the run can count them.

use bytes::BufMut;
use mysql_async::Value;

use super::types::{PgType, SourceType};

/// What was written for a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    /// The value itself (or a NULL that was NULL at the source).
    Value,
    /// A zero date or a date with a zero part, written as NULL.
    ZeroDate,
}

/// Why a value could not be carried into its destination column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, ValueError> {
    Err(ValueError(message.into()))
}

/// Microseconds in one day.
const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Days from 0000-03-01 (proleptic Gregorian) to PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_DAYS_FROM_CIVIL: i64 = 730_425;

/// Days since 2000-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`, shifted to PostgreSQL's epoch).
pub fn days_since_pg_epoch(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - PG_EPOCH_DAYS_FROM_CIVIL
}

/// The date `days` after 2000-01-01, as (year, month, day).
pub fn civil_from_pg_days(days: i64) -> (i64, u32, u32) {
    let z = days + PG_EPOCH_DAYS_FROM_CIVIL;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // month is 1..=12 and day 1..=31 by construction.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Number of days in a month, or `None` for a month outside 1–12.
pub fn days_in_month(year: i64, month: u32) -> Option<u32> {
    Some(match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => return None,
    })
}

/// A MySQL date-time split into parts, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTimeParts {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub micros: u32,
}

impl DateTimeParts {
    /// Midnight at the start of a date (the caller knows the date is valid).
    pub const fn midnight(year: u16, month: u8, day: u8) -> DateTimeParts {
        DateTimeParts {
            year,
            month,
            day,
            hour: 0,
            minute: 0,
            second: 0,
            micros: 0,
        }
    }

    /// Microseconds since 2000-01-01 00:00:00.
    pub fn pg_micros(&self) -> i64 {
        let days = days_since_pg_epoch(
            i64::from(self.year),
            u32::from(self.month),
            u32::from(self.day),
        );
        days * MICROS_PER_DAY
            + (i64::from(self.hour) * 3600 + i64::from(self.minute) * 60 + i64::from(self.second))
                * 1_000_000
            + i64::from(self.micros)
    }

    /// The parts of a moment given as microseconds since 2000-01-01.
    pub fn from_pg_micros(micros: i64) -> Option<DateTimeParts> {
        let days = micros.div_euclid(MICROS_PER_DAY);
        let rest = micros.rem_euclid(MICROS_PER_DAY);
        let (year, month, day) = civil_from_pg_days(days);
        let secs = rest / 1_000_000;
        Some(DateTimeParts {
            year: u16::try_from(year).ok()?,
            month: u8::try_from(month).ok()?,
            day: u8::try_from(day).ok()?,
            hour: u8::try_from(secs / 3600).ok()?,
            minute: u8::try_from(secs / 60 % 60).ok()?,
            second: u8::try_from(secs % 60).ok()?,
            micros: u32::try_from(rest % 1_000_000).ok()?,
        })
    }

    /// `YYYY-MM-DD HH:MM:SS[.ffffff]`, the form MySQL and PostgreSQL both read.
    pub fn to_sql_string(&self) -> String {
        let mut s = format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        if self.micros != 0 {
            s.push_str(&format!(".{:06}", self.micros));
        }
        s
    }

    /// The MySQL binary-protocol value for these parts.
    pub fn to_mysql(&self) -> Value {
        Value::Date(
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.micros,
        )
    }
}

/// Checks a binary-protocol date. `Ok(None)` is a zero date or one with a
/// zero part; an impossible date (`2021-02-30`) is an error.
pub fn check_date(
    (year, month, day, hour, minute, second, micros): (u16, u8, u8, u8, u8, u8, u32),
) -> Result<Option<DateTimeParts>, ValueError> {
    if year == 0 || month == 0 || day == 0 {
        return Ok(None);
    }
    let valid_day =
        days_in_month(i64::from(year), u32::from(month)).is_some_and(|max| u32::from(day) <= max);
    if !valid_day || hour > 23 || minute > 59 || second > 59 || micros > 999_999 {
        return fail(format!(
            "{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} is not a valid date-time"
        ));
    }
    Ok(Some(DateTimeParts {
        year,
        month,
        day,
        hour,
        minute,
        second,
        micros,
    }))
}

/// Writes the PostgreSQL binary `numeric` form of a decimal string such as
/// `-123.4500` (the MySQL wire form of `decimal`) or an integer.
pub fn put_numeric(text: &str, buf: &mut Vec<u8>) -> Result<(), ValueError> {
    let (negative, unsigned_text) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (int_part, frac_part) = match unsigned_text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (unsigned_text, ""),
    };
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return fail(format!("`{text}` is not a decimal number"));
    }
    let int_part = int_part.trim_start_matches('0');
    let dscale = frac_part.len();
    // Base-10000 digit groups, aligned on the decimal point.
    let int_pad = (4 - int_part.len() % 4) % 4;
    let frac_pad = (4 - frac_part.len() % 4) % 4;
    let mut digits: Vec<i16> = Vec::with_capacity((int_part.len() + frac_part.len()) / 4 + 2);
    let mut group = 0i16;
    let mut count = 0;
    let padded = std::iter::repeat_n(b'0', int_pad)
        .chain(int_part.bytes())
        .chain(frac_part.bytes())
        .chain(std::iter::repeat_n(b'0', frac_pad));
    for b in padded {
        group = group * 10 + i16::from(b - b'0');
        count += 1;
        if count == 4 {
            digits.push(group);
            group = 0;
            count = 0;
        }
    }
    let int_groups = (int_part.len() + int_pad) / 4;
    let mut weight =
        i64::try_from(int_groups).map_err(|_| ValueError("numeric too large".into()))? - 1;
    let leading = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..leading);
    weight -= i64::try_from(leading).map_err(|_| ValueError("numeric too large".into()))?;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let too_big = || ValueError(format!("`{text}` is beyond PostgreSQL numeric's range"));
    let ndigits = i16::try_from(digits.len()).map_err(|_| too_big())?;
    let weight = i16::try_from(weight).map_err(|_| too_big())?;
    let dscale = u16::try_from(dscale).map_err(|_| too_big())?;
    let sign: u16 = if negative && !digits.is_empty() {
        0x4000
    } else {
        0
    };
    let len = 8 + 2 * digits.len();
    buf.put_i32(i32::try_from(len).map_err(|_| too_big())?);
    buf.put_i16(ndigits);
    buf.put_i16(weight);
    buf.put_u16(sign);
    buf.put_u16(dscale);
    for d in digits {
        buf.put_i16(d);
    }
    Ok(())
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) -> Result<(), ValueError> {
    let len = i32::try_from(bytes.len()).map_err(|_| {
        ValueError(format!(
            "{} bytes exceed PostgreSQL's 1 GB field limit",
            bytes.len()
        ))
    })?;
    buf.put_i32(len);
    buf.put_slice(bytes);
    Ok(())
}

fn text_of(bytes: &[u8]) -> Result<&str, ValueError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ValueError(format!("text is not valid UTF-8 ({e})")))?;
    // A byte scan (memchr) first: the char search costs a tenth of a load's CPU.
    if bytes.contains(&0)
        && let Some(pos) = text.find('\0')
    {
        return fail(format!(
            "text holds a NUL byte at character {}, which PostgreSQL text cannot store; \
             map the column to bytea to carry it",
            text[..pos].chars().count() + 1
        ));
    }
    Ok(text)
}

fn int_into(target: &PgType, v: i128, buf: &mut Vec<u8>) -> Result<(), ValueError> {
    let out_of_range = || ValueError(format!("{v} does not fit PostgreSQL {target}"));
    match target {
        PgType::Bool => match v {
            0 | 1 => {
                buf.put_i32(1);
                buf.put_u8(u8::from(v == 1));
            }
            _ => {
                return fail(format!(
                    "{v} does not fit PostgreSQL boolean (only 0 and 1 do); \
                     alter the column to smallint or run with --force-full after dropping the table"
                ));
            }
        },
        PgType::Int2 => {
            buf.put_i32(2);
            buf.put_i16(i16::try_from(v).map_err(|_| out_of_range())?);
        }
        PgType::Int4 => {
            buf.put_i32(4);
            buf.put_i32(i32::try_from(v).map_err(|_| out_of_range())?);
        }
        PgType::Int8 => {
            buf.put_i32(8);
            buf.put_i64(i64::try_from(v).map_err(|_| out_of_range())?);
        }
        PgType::Numeric(_) => numeric_into(&v.to_string(), target, buf)?,
        PgType::Text | PgType::VarChar(_) | PgType::Char(_) => {
            put_bytes(buf, v.to_string().as_bytes())?
        }
        _ => {
            return fail(format!(
                "an integer cannot be stored in PostgreSQL {target}"
            ));
        }
    }
    Ok(())
}

/// PostgreSQL `bit(n)` from MySQL's right-aligned big-endian `bit(n)` bytes.
fn bits_into(
    width: u32,
    bytes: &[u8],
    target: &PgType,
    buf: &mut Vec<u8>,
) -> Result<(), ValueError> {
    if bytes.len() > 8 {
        return fail(format!(
            "bit value of {} bytes exceeds bit(64)",
            bytes.len()
        ));
    }
    let value = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    if width < 64 && value >> width != 0 {
        return fail(format!("bit value {value:#b} is wider than bit({width})"));
    }
    match target {
        PgType::Bit(n) | PgType::VarBit(Some(n)) if *n == width => {}
        PgType::VarBit(None) => {}
        PgType::Bool if width == 1 => {
            buf.put_i32(1);
            buf.put_u8(u8::from(value == 1));
            return Ok(());
        }
        PgType::Int8 if width < 64 => {
            buf.put_i32(8);
            buf.put_i64(
                i64::try_from(value).map_err(|_| ValueError("bit value exceeds bigint".into()))?,
            );
            return Ok(());
        }
        PgType::Numeric(_) => return numeric_into(&value.to_string(), target, buf),
        _ => {
            return fail(format!(
                "bit({width}) cannot be stored in PostgreSQL {target}"
            ));
        }
    }
    let nbytes = usize::try_from(width.div_ceil(8)).map_err(|_| ValueError("bit width".into()))?;
    let aligned = if width == 64 {
        value
    } else {
        value << (64 - width)
    };
    buf.put_i32(i32::try_from(4 + nbytes).map_err(|_| ValueError("bit width".into()))?);
    buf.put_i32(i32::try_from(width).map_err(|_| ValueError("bit width".into()))?);
    buf.put_slice(&aligned.to_be_bytes()[..nbytes]);
    Ok(())
}

/// Whether `micros` survive PostgreSQL's rounding to `precision` fractional
/// digits (`time(p)`, `timestamp(p)`); a value that would be rounded fails.
fn keeps_fraction(micros: u32, precision: Option<u32>, target: &PgType) -> Result<(), ValueError> {
    let step = 10u32.pow(6u32.saturating_sub(precision.unwrap_or(6).min(6)));
    if micros.is_multiple_of(step) {
        return Ok(());
    }
    fail(format!(
        "fraction .{micros:06} has more digits than PostgreSQL {target} keeps, which would round it; \
         widen the column's precision"
    ))
}

/// A decimal into `numeric`, refusing what the column's `(p,s)` would
/// change: more decimal places than `s` (PostgreSQL rounds them) or more
/// integer digits than `p - s`.
fn numeric_into(text: &str, target: &PgType, buf: &mut Vec<u8>) -> Result<(), ValueError> {
    if let PgType::Numeric(Some((precision, scale))) = target {
        let unsigned = text.trim_start_matches(['-', '+']);
        let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let places = frac.trim_end_matches('0').len();
        let digits = int.trim_start_matches('0').len();
        let whole = usize::try_from(precision.saturating_sub(*scale)).unwrap_or(usize::MAX);
        let scale = usize::try_from(*scale).unwrap_or(usize::MAX);
        if places > scale {
            return fail(format!(
                "{text} has {places} decimal places; PostgreSQL {target} would round it; \
                 widen the column (alter table … type numeric({}, {places}))",
                whole + places
            ));
        }
        if digits > whole {
            return fail(format!(
                "{text} has {digits} integer digits, more than PostgreSQL {target} holds"
            ));
        }
    }
    put_numeric(text, buf)
}

fn time_into(
    (negative, days, hours, minutes, seconds, micros): (bool, u32, u8, u8, u8, u32),
    target: &PgType,
    buf: &mut Vec<u8>,
) -> Result<(), ValueError> {
    let magnitude = ((i64::from(days) * 24 + i64::from(hours)) * 3600
        + i64::from(minutes) * 60
        + i64::from(seconds))
        * 1_000_000
        + i64::from(micros);
    let total = if negative { -magnitude } else { magnitude };
    match target {
        PgType::Time(p) if (0..=MICROS_PER_DAY).contains(&total) => {
            keeps_fraction(micros, *p, target)?;
            buf.put_i32(8);
            buf.put_i64(total);
        }
        PgType::Time(_) => {
            let sign = if negative { "-" } else { "" };
            let h = i64::from(days) * 24 + i64::from(hours);
            return fail(format!(
                "time {sign}{h}:{minutes:02}:{seconds:02} lies outside 00:00–24:00, which PostgreSQL time cannot hold; \
                 alter the column to interval"
            ));
        }
        PgType::Interval => {
            buf.put_i32(16);
            buf.put_i64(total);
            buf.put_i32(0);
            buf.put_i32(0);
        }
        _ => return fail(format!("a time cannot be stored in PostgreSQL {target}")),
    }
    Ok(())
}

/// Writes one binary `COPY` field for `value`, read from a column of type
/// `source`, into a column of type `target`.
pub fn encode_field(
    value: &Value,
    source: &SourceType,
    target: &PgType,
    buf: &mut Vec<u8>,
) -> Result<Encoded, ValueError> {
    match value {
        Value::NULL => buf.put_i32(-1),
        Value::Int(v) => int_into(target, i128::from(*v), buf)?,
        Value::UInt(v) => int_into(target, i128::from(*v), buf)?,
        Value::Float(v) => match target {
            PgType::Float4 => {
                buf.put_i32(4);
                buf.put_f32(*v);
            }
            PgType::Float8 => {
                buf.put_i32(8);
                buf.put_f64(f64::from(*v));
            }
            _ => return fail(format!("a float cannot be stored in PostgreSQL {target}")),
        },
        Value::Double(v) => match target {
            PgType::Float8 => {
                buf.put_i32(8);
                buf.put_f64(*v);
            }
            _ => {
                return fail(format!(
                    "a double cannot be stored in PostgreSQL {target} without rounding"
                ));
            }
        },
        Value::Date(y, mo, d, h, mi, s, us) => {
            let Some(parts) = check_date((*y, *mo, *d, *h, *mi, *s, *us))? else {
                buf.put_i32(-1);
                return Ok(Encoded::ZeroDate);
            };
            match target {
                PgType::Date
                    if parts.hour == 0
                        && parts.minute == 0
                        && parts.second == 0
                        && parts.micros == 0 =>
                {
                    buf.put_i32(4);
                    let days = days_since_pg_epoch(
                        i64::from(parts.year),
                        u32::from(parts.month),
                        u32::from(parts.day),
                    );
                    buf.put_i32(
                        i32::try_from(days).map_err(|_| ValueError("date out of range".into()))?,
                    );
                }
                PgType::Date => {
                    return fail(format!(
                        "{} has a time of day, which PostgreSQL date would drop",
                        parts.to_sql_string()
                    ));
                }
                PgType::Timestamp(p) | PgType::TimestampTz(p) => {
                    keeps_fraction(parts.micros, *p, target)?;
                    buf.put_i32(8);
                    buf.put_i64(parts.pg_micros());
                }
                _ => return fail(format!("a date cannot be stored in PostgreSQL {target}")),
            }
        }
        Value::Time(neg, days, h, m, s, us) => {
            time_into((*neg, *days, *h, *m, *s, *us), target, buf)?
        }
        Value::Bytes(bytes) => match (source, target) {
            (SourceType::Decimal { .. }, PgType::Numeric(_)) => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| ValueError("decimal is not ASCII".into()))?;
                numeric_into(text, target, buf)?;
            }
            (SourceType::Bit { width }, _) => bits_into(*width, bytes, target, buf)?,
            (SourceType::Binary | SourceType::Geometry, PgType::Bytea) => put_bytes(buf, bytes)?,
            (_, PgType::Bytea) => put_bytes(buf, bytes)?,
            (SourceType::Binary | SourceType::Geometry, _) => {
                return fail(format!(
                    "binary data cannot be stored in PostgreSQL {target}; use bytea"
                ));
            }
            (_, PgType::Text | PgType::VarChar(_) | PgType::Char(_) | PgType::Json) => {
                put_bytes(buf, text_of(bytes)?.as_bytes())?;
            }
            (_, PgType::Jsonb) => {
                let text = text_of(bytes)?;
                let len = i32::try_from(text.len() + 1)
                    .map_err(|_| ValueError("json too large".into()))?;
                buf.put_i32(len);
                buf.put_u8(1);
                buf.put_slice(text.as_bytes());
            }
            (_, PgType::Numeric(_)) => {
                numeric_into(text_of(bytes)?, target, buf)?;
            }
            _ => {
                return fail(format!(
                    "{source:?} text cannot be stored in PostgreSQL {target}"
                ));
            }
        },
    }
    Ok(Encoded::Value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(text: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        put_numeric(text, &mut buf).unwrap();
        buf
    }

    fn words(bytes: &[u8]) -> Vec<i16> {
        bytes[4..]
            .chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn numeric_is_grouped_in_base_ten_thousand() {
        // 12345.678 = 1|2345 . 6780 → ndigits 3, weight 1, sign +, dscale 3
        assert_eq!(
            words(&numeric_bytes("12345.678")),
            vec![3, 1, 0, 3, 1, 2345, 6780]
        );
        // -0.0001 → ndigits 1, weight -1, sign -, dscale 4
        assert_eq!(words(&numeric_bytes("-0.0001")), vec![1, -1, 0x4000, 4, 1]);
        // 0.00 → no digits, dscale 2
        assert_eq!(words(&numeric_bytes("0.00")), vec![0, 0, 0, 2]);
        // 18446744073709551615 = 1844|6744|0737|0955|1615
        assert_eq!(
            words(&numeric_bytes("18446744073709551615")),
            vec![5, 4, 0, 0, 1844, 6744, 737, 955, 1615]
        );
        // 10000 → 1|0000: trailing zero group dropped, weight 1
        assert_eq!(words(&numeric_bytes("10000")), vec![1, 1, 0, 0, 1]);
    }

    #[test]
    fn numeric_rejects_what_is_not_a_number() {
        let mut buf = Vec::new();
        for bad in ["", "-", "1e5", "12a", "1.2.3", "."] {
            assert!(put_numeric(bad, &mut buf).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_count_days_from_the_postgres_epoch() {
        assert_eq!(days_since_pg_epoch(2000, 1, 1), 0);
        assert_eq!(days_since_pg_epoch(1999, 12, 31), -1);
        assert_eq!(days_since_pg_epoch(2000, 3, 1), 60);
        assert_eq!(days_since_pg_epoch(1, 1, 1), -730_119);
        for days in [-800_000, -1, 0, 59, 60, 365, 9999, 2_900_000] {
            let (y, m, d) = civil_from_pg_days(days);
            assert_eq!(days_since_pg_epoch(y, m, d), days);
        }
    }

    #[test]
    fn zero_dates_become_null_and_are_reported() {
        let mut buf = Vec::new();
        let source = SourceType::Date;
        for zero in [
            Value::Date(0, 0, 0, 0, 0, 0, 0),
            Value::Date(2020, 0, 15, 0, 0, 0, 0),
        ] {
            buf.clear();
            let got = encode_field(&zero, &source, &PgType::Date, &mut buf).unwrap();
            assert_eq!(got, Encoded::ZeroDate);
            assert_eq!(buf, (-1i32).to_be_bytes().to_vec());
        }
    }

    #[test]
    fn impossible_dates_are_refused() {
        let mut buf = Vec::new();
        let v = Value::Date(2021, 2, 30, 0, 0, 0, 0);
        assert!(encode_field(&v, &SourceType::Date, &PgType::Date, &mut buf).is_err());
    }

    #[test]
    fn integers_that_do_not_fit_are_refused_not_wrapped() {
        let mut buf = Vec::new();
        let source = SourceType::Integer {
            bytes: 8,
            unsigned: true,
        };
        let v = Value::UInt(u64::MAX);
        assert!(encode_field(&v, &source, &PgType::Int8, &mut buf).is_err());
        assert!(encode_field(&v, &source, &PgType::Numeric(Some((20, 0))), &mut buf).is_ok());
        assert!(
            encode_field(
                &Value::Int(2),
                &SourceType::TinyIntOne { unsigned: false },
                &PgType::Bool,
                &mut buf
            )
            .is_err()
        );
    }

    #[test]
    fn nul_bytes_in_text_are_refused_loudly() {
        let mut buf = Vec::new();
        let v = Value::Bytes(b"ab\0c".to_vec());
        let err = encode_field(&v, &SourceType::Text, &PgType::Text, &mut buf).unwrap_err();
        assert!(err.0.contains("NUL byte at character 3"), "{err}");
    }

    #[test]
    fn long_times_fit_interval_but_not_time() {
        let mut buf = Vec::new();
        let v = Value::Time(false, 34, 22, 59, 59, 0);
        let source = SourceType::Time { fsp: 0 };
        assert!(encode_field(&v, &source, &PgType::Time(Some(0)), &mut buf).is_err());
        buf.clear();
        encode_field(&v, &source, &PgType::Interval, &mut buf).unwrap();
        assert_eq!(
            &buf[4..12],
            &((838i64 * 3600 + 59 * 60 + 59) * 1_000_000).to_be_bytes()
        );
    }

    #[test]
    fn bits_are_left_aligned_for_postgres() {
        let mut buf = Vec::new();
        let v = Value::Bytes(vec![0b101]);
        encode_field(&v, &SourceType::Bit { width: 3 }, &PgType::Bit(3), &mut buf).unwrap();
        assert_eq!(buf, vec![0, 0, 0, 5, 0, 0, 0, 3, 0b1010_0000]);
    }

    #[test]
    fn moments_round_trip_through_micros() {
        let parts = check_date((2024, 2, 29, 23, 59, 58, 123_456))
            .unwrap()
            .unwrap();
        assert_eq!(
            DateTimeParts::from_pg_micros(parts.pg_micros()),
            Some(parts)
        );
        assert_eq!(parts.to_sql_string(), "2024-02-29 23:59:58.123456");
    }
}
