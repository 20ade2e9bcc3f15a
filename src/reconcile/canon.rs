//! Canonical values: what a MySQL value and its warehouse copy both reduce
//! to, so two databases can be compared value by value.
//!
//! PostgreSQL values are selected through [`pg_expr`] (integers as `int8`,
//! dates and times as microseconds, decimals and text as text) and read with
//! [`canon_pg`]; MySQL binary-protocol values go through [`canon_mysql`],
//! which is told the warehouse type so that both sides meet in one form.

use mysql_async::Value;

use crate::schema::{DateTimeParts, check_date};

/// A value in a form both databases' values reduce to.
#[derive(Debug, Clone, PartialEq)]
pub enum Canon {
    Null,
    Int(i128),
    Decimal(String),
    F32(u32),
    F64(u64),
    Text(String),
    Bytes(Vec<u8>),
    Json(serde_json::Value),
    Micros(i64),
}

impl std::fmt::Display for Canon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Canon::Null => f.write_str("NULL"),
            Canon::Int(v) => write!(f, "{v}"),
            Canon::Decimal(v) | Canon::Text(v) => write!(f, "{v:?}"),
            Canon::F32(bits) => write!(f, "{}", f32::from_bits(*bits)),
            Canon::F64(bits) => write!(f, "{}", f64::from_bits(*bits)),
            Canon::Bytes(b) => write!(f, "{} bytes", b.len()),
            Canon::Json(v) => write!(f, "{v}"),
            Canon::Micros(v) => write!(f, "{v} µs"),
        }
    }
}

fn normalize_decimal(text: &str) -> String {
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let out = if frac.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{frac}")
    };
    if neg && out != "0" {
        format!("-{out}")
    } else {
        out
    }
}

fn base(ty: &str) -> &str {
    ty.split('(').next().unwrap_or(ty).trim()
}

/// The select expression that reads a warehouse column in canonical form;
/// `ty` is the column's `format_type`.
pub fn pg_expr(col: &str, ty: &str) -> String {
    match base(ty) {
        "boolean" => format!("{col}::int::int8"),
        "smallint" | "integer" | "bigint" => format!("{col}::int8"),
        "numeric" | "text" | "character varying" | "character" | "json" | "jsonb" | "bit" => {
            format!("{col}::text")
        }
        "date" => format!("({col} - date '2000-01-01')::int8 * 86400000000"),
        "timestamp" | "timestamp without time zone" => {
            format!("(extract(epoch from {col} - timestamp '2000-01-01') * 1000000)::int8")
        }
        "time" | "time without time zone" | "interval" => {
            format!("(extract(epoch from {col}) * 1000000)::int8")
        }
        _ => col.to_string(),
    }
}

fn json(text: String) -> Canon {
    match serde_json::from_str(&text) {
        Ok(v) => Canon::Json(v),
        Err(_) => Canon::Text(text),
    }
}

/// Reads column `i` of a row selected with [`pg_expr`].
pub fn canon_pg(row: &tokio_postgres::Row, i: usize, ty: &str) -> Canon {
    let unreadable = || Canon::Text(format!("<unreadable {ty}>"));
    match base(ty) {
        "boolean" | "smallint" | "integer" | "bigint" => {
            row.try_get::<_, Option<i64>>(i).map_or_else(
                |_| unreadable(),
                |v| v.map_or(Canon::Null, |v| Canon::Int(v.into())),
            )
        }
        "date"
        | "timestamp"
        | "timestamp without time zone"
        | "time"
        | "time without time zone"
        | "interval" => row
            .try_get::<_, Option<i64>>(i)
            .map_or_else(|_| unreadable(), |v| v.map_or(Canon::Null, Canon::Micros)),
        "numeric" => row.try_get::<_, Option<String>>(i).map_or_else(
            |_| unreadable(),
            |v| v.map_or(Canon::Null, |v| Canon::Decimal(normalize_decimal(&v))),
        ),
        "real" => row.try_get::<_, Option<f32>>(i).map_or_else(
            |_| unreadable(),
            |v| v.map_or(Canon::Null, |v| Canon::F32(v.to_bits())),
        ),
        "double precision" => row.try_get::<_, Option<f64>>(i).map_or_else(
            |_| unreadable(),
            |v| v.map_or(Canon::Null, |v| Canon::F64(v.to_bits())),
        ),
        "json" | "jsonb" => row
            .try_get::<_, Option<String>>(i)
            .map_or_else(|_| unreadable(), |v| v.map_or(Canon::Null, json)),
        "bit" => row.try_get::<_, Option<String>>(i).map_or_else(
            |_| unreadable(),
            |v| {
                v.map_or(Canon::Null, |v| {
                    i128::from_str_radix(&v, 2).map_or(Canon::Text(v), Canon::Int)
                })
            },
        ),
        "bytea" => row
            .try_get::<_, Option<Vec<u8>>>(i)
            .map_or_else(|_| unreadable(), |v| v.map_or(Canon::Null, Canon::Bytes)),
        _ => row
            .try_get::<_, Option<String>>(i)
            .map_or_else(|_| unreadable(), |v| v.map_or(Canon::Null, Canon::Text)),
    }
}

/// A MySQL value in canonical form for a warehouse column of type `pg_type`
/// (zero dates are NULL, as the load writes them).
pub fn canon_mysql(value: &Value, pg_type: &str) -> Canon {
    let ty = base(pg_type);
    match value {
        Value::NULL => Canon::Null,
        Value::Int(v) if ty == "numeric" => Canon::Decimal(v.to_string()),
        Value::Int(v) => Canon::Int((*v).into()),
        Value::UInt(v) if ty == "numeric" => Canon::Decimal(v.to_string()),
        Value::UInt(v) => Canon::Int((*v).into()),
        Value::Float(v) => Canon::F32(v.to_bits()),
        Value::Double(v) => Canon::F64(v.to_bits()),
        Value::Date(y, mo, d, h, mi, s, us) => match check_date((*y, *mo, *d, *h, *mi, *s, *us)) {
            Ok(None) => Canon::Null,
            Ok(Some(p)) => Canon::Micros(DateTimeParts::pg_micros(&p)),
            Err(e) => Canon::Text(e.0),
        },
        Value::Time(neg, d, h, m, s, us) => {
            let micros =
                ((i64::from(*d) * 24 + i64::from(*h)) * 3600 + i64::from(*m) * 60 + i64::from(*s))
                    * 1_000_000
                    + i64::from(*us);
            Canon::Micros(if *neg { -micros } else { micros })
        }
        Value::Bytes(b) => match ty {
            "numeric" => Canon::Decimal(normalize_decimal(&String::from_utf8_lossy(b))),
            "json" | "jsonb" => json(String::from_utf8_lossy(b).into_owned()),
            "bytea" => Canon::Bytes(b.clone()),
            "bit" => Canon::Int(b.iter().fold(0i128, |acc, x| (acc << 8) | i128::from(*x))),
            "character" => {
                Canon::Text(String::from_utf8_lossy(b).trim_end_matches(' ').to_string())
            }
            _ => Canon::Text(String::from_utf8_lossy(b).into_owned()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_meet_in_one_form() {
        assert_eq!(
            canon_mysql(&Value::Bytes(b"12.50".to_vec()), "numeric(10,2)"),
            Canon::Decimal("12.5".into())
        );
        assert_eq!(
            canon_mysql(&Value::UInt(u64::MAX), "numeric(20,0)"),
            Canon::Decimal(u64::MAX.to_string())
        );
        assert_eq!(
            canon_mysql(&Value::Date(0, 0, 0, 0, 0, 0, 0), "date"),
            Canon::Null
        );
        assert_eq!(
            canon_mysql(&Value::Bytes(b"ab   ".to_vec()), "character(5)"),
            Canon::Text("ab".into())
        );
        assert_eq!(normalize_decimal("-000.000"), "0");
        assert_eq!(
            canon_mysql(&Value::Bytes(b"{\"a\": 1}".to_vec()), "jsonb"),
            Canon::Json(serde_json::json!({"a": 1}))
        );
    }
}
