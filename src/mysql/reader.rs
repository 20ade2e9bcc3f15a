//! Keyset reads: SQL for tie-safe paging on (watermark column, primary key).
//!
//! A page is `ORDER BY column, key… LIMIT n` and the next page starts strictly
//! after the last row's whole tuple, so rows sharing one timestamp are never
//! skipped or read twice across page boundaries. The tuple comparison is
//! written out as nested `OR`s, which MariaDB turns into an index range.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};

use crate::error::{Error, Result};
use crate::schema::ident;

/// Which rows of the watermark column a read covers.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadRange {
    /// `start <= column <= upper`: the incremental window of this run.
    Window { start: Value, upper: Value },
    /// `column > max`: rows stamped past the run's upper limit (the source
    /// clock, or what the copy has committed), looked at every run so they
    /// arrive without moving the watermark.
    Above { max: Value },
    /// `column < min`: rows stamped before the quality bounds (zero and
    /// sentinel dates, 1902), looked at every run for the same reason.
    Below { min: Value },
    /// The ordering key (one integer column) past `held`, the key through
    /// which the last such read went, among rows no window of this run reads: on
    /// each `(column, from, below)`, `column` is NULL or lies in
    /// `[from, below)`. New rows with a backdated stamp arrive this way.
    KeysAbove {
        held: Option<Value>,
        unread: Vec<(String, Option<Value>, Value)>,
    },
    /// Every row (a full copy paged by the key).
    All,
}

/// A lower or upper limit on the watermark column.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    /// No limit.
    Open,
    /// Inclusive limit.
    At(Value),
}

fn cursor_predicate(order: &[String], params: &mut Vec<Value>, cursor: &[Value]) -> String {
    // (a, b, c) > (x, y, z)  ==  a > x OR (a = x AND (b > y OR (b = y AND c > z)))
    let mut sql = String::new();
    let last = order.len() - 1;
    for (i, column) in order.iter().enumerate() {
        let col = ident::mysql(column);
        if i == last {
            sql.push_str(&format!("{col} > ?"));
            params.push(cursor[i].clone());
        } else {
            sql.push_str(&format!("{col} > ? OR ({col} = ? AND ("));
            params.push(cursor[i].clone());
            params.push(cursor[i].clone());
        }
    }
    for _ in 0..last {
        sql.push_str("))");
    }
    format!("({sql})")
}

/// One page of a keyset read: rows of `range` strictly after `cursor` (a
/// value per `order` column), in `order`, at most `limit` of them.
pub fn page_query(
    table: &str,
    select: &[String],
    order: &[String],
    range: &ReadRange,
    cursor: Option<&[Value]>,
    limit: u32,
) -> (String, Vec<Value>) {
    let mut params = Vec::new();
    let mut conditions = range_conditions(&order[0], range, &mut params);
    if let Some(cursor) = cursor {
        conditions.push(cursor_predicate(order, &mut params, cursor));
    }
    let sql = format!(
        "SELECT {} FROM {}{} ORDER BY {} LIMIT {limit}",
        ident::mysql_list(select.iter().map(String::as_str)),
        ident::mysql(table),
        where_clause(&conditions),
        ident::mysql_list(order.iter().map(String::as_str)),
    );
    (sql, params)
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

/// The conditions that keep a read to `range` of watermark (or key)
/// column `column`, their values pushed to `params`.
fn range_conditions(column: &str, range: &ReadRange, params: &mut Vec<Value>) -> Vec<String> {
    let column = ident::mysql(column);
    let mut conditions = Vec::new();
    match range {
        ReadRange::Window { start, upper } => {
            conditions.push(format!("{column} >= ? AND {column} <= ?"));
            params.push(start.clone());
            params.push(upper.clone());
        }
        ReadRange::Above { max } => {
            conditions.push(format!("{column} > ?"));
            params.push(max.clone());
        }
        ReadRange::Below { min } => {
            conditions.push(format!("{column} < ?"));
            params.push(min.clone());
        }
        ReadRange::KeysAbove { held, unread } => {
            if let Some(held) = held {
                conditions.push(format!("{column} > ?"));
                params.push(held.clone());
            }
            for (stamp, from, below) in unread {
                let stamp = ident::mysql(stamp);
                match from {
                    Some(from) => {
                        conditions.push(format!(
                            "({stamp} IS NULL OR ({stamp} >= ? AND {stamp} < ?))"
                        ));
                        params.push(from.clone());
                    }
                    None => conditions.push(format!("({stamp} IS NULL OR {stamp} < ?)")),
                }
                params.push(below.clone());
            }
        }
        ReadRange::All => {}
    }
    conditions
}

/// What a range of a table holds, in one number pair: its rows, and the
/// sum of a 60-bit hash (MD5's first 15 hex digits) of each row's text
/// (`row_text`, an expression over the columns compared). Two copies of a
/// range with equal fingerprints hold the same rows, but for a chance of
/// about 2^-60; computed in the server, nothing but the pair crosses the
/// network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub rows: u64,
    pub sum: String,
}

/// The [`Fingerprint`] of `range` (on column `column`) of `table`.
pub async fn range_fingerprint(
    conn: &mut Conn,
    table: &str,
    row_text: &str,
    column: &str,
    range: &ReadRange,
) -> Result<Fingerprint> {
    let mut params = Vec::new();
    let conditions = range_conditions(column, range, &mut params);
    let sql = format!(
        "SELECT COUNT(*), CAST(COALESCE(SUM(CAST(CONV(SUBSTRING(MD5({row_text}), 1, 15), 16, 10) \
         AS UNSIGNED)), 0) AS CHAR) FROM {}{}",
        ident::mysql(table),
        where_clause(&conditions)
    );
    let row: Option<(u64, String)> = conn
        .exec_first(sql, params)
        .await
        .map_err(|e| Error::mysql(format!("comparing a range of `{table}`"), e))?;
    let (rows, sum) = row.unwrap_or_default();
    Ok(Fingerprint { rows, sum })
}

/// The highest value of `column` within `[min, max]`, or `None` when no row
/// lies there. Fixed at the start of a run: rows past it wait for the next.
pub async fn upper_bound(
    conn: &mut Conn,
    table: &str,
    column: &str,
    min: &Bound,
    max: &Bound,
) -> Result<Option<Value>> {
    let col = ident::mysql(column);
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    if let Bound::At(v) = min {
        conditions.push(format!("{col} >= ?"));
        params.push(v.clone());
    }
    if let Bound::At(v) = max {
        conditions.push(format!("{col} <= ?"));
        params.push(v.clone());
    }
    let sql = format!(
        "SELECT MAX({col}) FROM {}{}",
        ident::mysql(table),
        where_clause(&conditions)
    );
    let row: Option<Row> = conn.exec_first(sql, params).await.map_err(|e| {
        Error::mysql(
            format!("reading the upper bound of `{table}`.`{column}`"),
            e,
        )
    })?;
    Ok(row
        .and_then(|mut r| r.take::<Value, _>(0))
        .filter(|v| *v != Value::NULL))
}

/// Which clock a watermark column's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockTerms {
    /// `timestamp`: the server's clock as this session's time zone shows it.
    Session,
    /// `datetime`: the server's own local time (its global time zone), which
    /// is what `NOW()` writes into the column in OpenDental's sessions.
    ServerLocal,
    /// `date`: the server's local date.
    ServerDate,
}

/// The server's clock in a column's terms: `ahead` seconds past it (the
/// run's upper limit) and, when `back_micros` is given, that long before it
/// (the earliest stamp the clock can have written since then, even across a
/// fall-back or a clock stepped back).
pub async fn server_clock(
    conn: &mut Conn,
    terms: ClockTerms,
    ahead_seconds: u64,
    back_micros: Option<i64>,
) -> Result<(Value, Option<Value>)> {
    let clock = match terms {
        ClockTerms::Session => "NOW(6)",
        ClockTerms::ServerLocal | ClockTerms::ServerDate => {
            "CONVERT_TZ(NOW(6), @@session.time_zone, @@global.time_zone)"
        }
    };
    let earliest = if terms == ClockTerms::ServerDate {
        "DATE(c - INTERVAL ? MICROSECOND)"
    } else {
        "c - INTERVAL ? MICROSECOND"
    };
    let sql =
        format!("SELECT c + INTERVAL ? SECOND, {earliest} FROM (SELECT {clock} AS c) AS clock");
    let row: Option<Row> = conn
        .exec_first(sql, (ahead_seconds, back_micros.unwrap_or(0).max(0)))
        .await
        .map_err(|e| Error::mysql("reading the server clock", e))?;
    let (upper, earliest) = row
        .map(|mut r| (r.take::<Value, _>(0), r.take::<Value, _>(1)))
        .unwrap_or_default();
    match upper {
        Some(upper @ Value::Date(..)) => Ok((upper, back_micros.and(earliest))),
        _ => Err(no_time_zones()),
    }
}

/// A UTC date-time as this session's time zone shows it (how a `timestamp`
/// value read in a UTC session reads in this one).
pub async fn utc_to_session(conn: &mut Conn, value: Value) -> Result<Value> {
    let row: Option<Row> = conn
        .exec_first(
            "SELECT CONVERT_TZ(?, '+00:00', @@session.time_zone)",
            (value,),
        )
        .await
        .map_err(|e| Error::mysql("converting a UTC time into the session's time zone", e))?;
    match row.and_then(|mut r| r.take::<Value, _>(0)) {
        Some(v @ Value::Date(..)) => Ok(v),
        _ => Err(no_time_zones()),
    }
}

/// `CONVERT_TZ` gave NULL: the server does not know a zone it was named.
fn no_time_zones() -> Error {
    Error::new(
        crate::ErrorKind::Config,
        "the server cannot convert between UTC, its sessions' and its own time zone; \
         load its time zone tables (mysql_tzinfo_to_sql /usr/share/zoneinfo | mysql mysql)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_continue_strictly_after_the_whole_tuple() {
        let order = vec!["DateTStamp".to_string(), "A".to_string(), "B".to_string()];
        let range = ReadRange::Window {
            start: Value::Int(1),
            upper: Value::Int(9),
        };
        let cursor = [Value::Int(5), Value::Int(6), Value::Int(7)];
        let (sql, params) = page_query("t", &order, &order, &range, Some(&cursor), 100);
        assert!(
            sql.contains(
                "(`DateTStamp` > ? OR (`DateTStamp` = ? AND (`A` > ? OR (`A` = ? AND (`B` > ?)))))"
            ),
            "{sql}"
        );
        assert!(
            sql.ends_with("ORDER BY `DateTStamp`, `A`, `B` LIMIT 100"),
            "{sql}"
        );
        let ints: Vec<i64> = params
            .iter()
            .map(|v| match v {
                Value::Int(i) => *i,
                _ => -1,
            })
            .collect();
        assert_eq!(ints, vec![1, 9, 5, 5, 6, 6, 7]);
    }

    #[test]
    fn new_keys_are_read_past_the_held_key_among_rows_no_window_reads() {
        let order = vec!["ProcNum".to_string()];
        let range = ReadRange::KeysAbove {
            held: Some(Value::Int(900)),
            unread: vec![
                ("DateTStamp".into(), Some(Value::Int(1)), Value::Int(5)),
                ("ProcNum2".into(), None, Value::Int(7)),
            ],
        };
        let (sql, params) = page_query("procedurelog", &order, &order, &range, None, 10);
        assert!(
            sql.contains(
                "WHERE `ProcNum` > ? AND (`DateTStamp` IS NULL OR (`DateTStamp` >= ? AND `DateTStamp` < ?)) \
                 AND (`ProcNum2` IS NULL OR `ProcNum2` < ?) ORDER BY `ProcNum`"
            ),
            "{sql}"
        );
        assert_eq!(
            params,
            vec![Value::Int(900), Value::Int(1), Value::Int(5), Value::Int(7)]
        );
        let empty = ReadRange::KeysAbove {
            held: None,
            unread: vec![],
        };
        let (sql, params) = page_query("procedurelog", &order, &order, &empty, None, 10);
        assert!(
            sql.ends_with("FROM `procedurelog` ORDER BY `ProcNum` LIMIT 10"),
            "{sql}"
        );
        assert!(params.is_empty());
    }

    #[test]
    fn a_full_keyset_read_has_only_the_cursor() {
        let order = vec!["PatNum".to_string()];
        let (sql, params) = page_query("patient", &order, &order, &ReadRange::All, None, 5);
        assert_eq!(
            sql,
            "SELECT `PatNum` FROM `patient` ORDER BY `PatNum` LIMIT 5"
        );
        assert!(params.is_empty());
        let (sql, _) = page_query(
            "patient",
            &order,
            &order,
            &ReadRange::All,
            Some(&[Value::Int(3)]),
            5,
        );
        assert!(sql.contains("WHERE (`PatNum` > ?) ORDER BY"), "{sql}");
    }

    #[test]
    fn a_single_column_order_pages_on_that_column() {
        let order = vec!["SecurityLogNum".to_string()];
        let range = ReadRange::Above { max: Value::Int(3) };
        let (sql, params) = page_query(
            "securitylog",
            &order,
            &order,
            &range,
            Some(&[Value::Int(9)]),
            10,
        );
        assert!(
            sql.contains("WHERE `SecurityLogNum` > ? AND (`SecurityLogNum` > ?)"),
            "{sql}"
        );
        assert_eq!(params.len(), 2);
    }
}
