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
    /// `column > max OR column < min`: rows outside the quality bounds,
    /// re-read every run so they arrive without moving the watermark.
    Outside { min: Option<Value>, max: Value },
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
    let column = ident::mysql(&order[0]);
    let mut params = Vec::new();
    let mut conditions = Vec::new();
    match range {
        ReadRange::Window { start, upper } => {
            conditions.push(format!("{column} >= ? AND {column} <= ?"));
            params.push(start.clone());
            params.push(upper.clone());
        }
        ReadRange::Outside { min, max } => match min {
            Some(min) => {
                conditions.push(format!("({column} > ? OR {column} < ?)"));
                params.push(max.clone());
                params.push(min.clone());
            }
            None => {
                conditions.push(format!("{column} > ?"));
                params.push(max.clone());
            }
        },
        ReadRange::All => {}
    }
    if let Some(cursor) = cursor {
        conditions.push(cursor_predicate(order, &mut params, cursor));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT {} FROM {}{filter} ORDER BY {} LIMIT {limit}",
        ident::mysql_list(select.iter().map(String::as_str)),
        ident::mysql(table),
        ident::mysql_list(order.iter().map(String::as_str)),
    );
    (sql, params)
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
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let sql = format!("SELECT MAX({col}) FROM {}{filter}", ident::mysql(table));
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

/// The server's clock plus one day: the default upper quality bound, so a
/// date-time in the future never moves a watermark.
pub async fn server_now_plus_day(conn: &mut Conn) -> Result<Value> {
    let row: Option<Row> = conn
        .exec_first("SELECT NOW(6) + INTERVAL 1 DAY", ())
        .await
        .map_err(|e| Error::mysql("reading the server clock", e))?;
    row.and_then(|mut r| r.take::<Value, _>(0)).ok_or_else(|| {
        Error::new(
            crate::ErrorKind::Database,
            "the server returned no clock value",
        )
    })
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
        let range = ReadRange::Outside {
            min: None,
            max: Value::Int(3),
        };
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
