//! Table introspection from `information_schema`, and data profiles for the
//! types whose mapping depends on their values.

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::schema::{DataProfile, SourceType, ident};

/// One source column.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceColumn {
    pub name: String,
    pub ty: SourceType,
    pub nullable: bool,
    /// The `COLUMN_TYPE` text, for reports.
    pub column_type: String,
}

/// A source table's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceTable {
    pub name: String,
    pub columns: Vec<SourceColumn>,
    /// Primary key columns in key order; empty when the table has none.
    pub primary_key: Vec<String>,
    /// Columns that lead some index (a watermark read on them is a range scan).
    pub indexed_first_columns: Vec<String>,
    /// The `AUTO_INCREMENT` column, if any.
    pub auto_increment: Option<String>,
    /// Unique indexes other than the primary key, by name.
    pub unique_keys: Vec<String>,
}

impl SourceTable {
    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&SourceColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Takes column `i` of an `information_schema` row as text (empty if NULL).
pub fn row_text(row: &mut Row, i: usize) -> String {
    match row.take::<Value, _>(i) {
        Some(Value::Bytes(b)) => String::from_utf8_lossy(&b).into_owned(),
        Some(Value::Int(v)) => v.to_string(),
        Some(Value::UInt(v)) => v.to_string(),
        _ => String::new(),
    }
}

/// Takes column `i` of an `information_schema` row as a number.
pub fn row_number(row: &mut Row, i: usize) -> Option<u64> {
    match row.take::<Value, _>(i) {
        Some(Value::Int(v)) => u64::try_from(v).ok(),
        Some(Value::UInt(v)) => Some(v),
        Some(Value::Bytes(b)) => String::from_utf8_lossy(&b).parse().ok(),
        _ => None,
    }
}

/// A table's `SHOW CREATE TABLE` text. Read as a row: a view answers with
/// four columns, and its text then fails [`super::replica_ddl`] by name.
pub async fn show_create(conn: &mut Conn, table: &str, whose: &str) -> Result<String> {
    let row: Option<Row> = conn
        .query_first(format!("SHOW CREATE TABLE {}", ident::mysql(table)))
        .await
        .map_err(|e| {
            Error::mysql(
                format!("reading the definition of {whose} table `{table}`"),
                e,
            )
        })?;
    Ok(row.map(|mut r| row_text(&mut r, 1)).unwrap_or_default())
}

/// The views of `database`, by name.
pub async fn views(conn: &mut Conn, database: &str) -> Result<Vec<String>> {
    conn.exec(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'VIEW' \
         ORDER BY TABLE_NAME",
        (database,),
    )
    .await
    .map_err(|e| Error::mysql(format!("listing the views of `{database}`"), e))
}

/// Reads a table's columns, primary key and indexes. A missing table is a
/// [`ErrorKind::Schema`] error naming it.
pub async fn describe_table(conn: &mut Conn, database: &str, table: &str) -> Result<SourceTable> {
    let ctx = |what: &str| format!("reading the {what} of MySQL table `{database}`.`{table}`");
    let checks: Vec<Row> = conn
        .exec(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
            (database, table),
        )
        .await
        .map_err(|e| Error::mysql(ctx("check constraints"), e))?;
    let check_clauses: Vec<String> = checks
        .into_iter()
        .map(|mut r| row_text(&mut r, 0))
        .collect();
    let rows: Vec<Row> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, NUMERIC_PRECISION, \
                    NUMERIC_SCALE, DATETIME_PRECISION, CHARACTER_MAXIMUM_LENGTH, EXTRA \
             FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (database, table),
        )
        .await
        .map_err(|e| Error::mysql(ctx("columns"), e))?;
    if rows.is_empty() {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "table `{table}` does not exist in MySQL database `{database}`; \
                 check the name in tables.yml or copy the table first"
            ),
        ));
    }
    let mut columns = Vec::with_capacity(rows.len());
    let mut auto_increment = None;
    for mut row in rows {
        let name = row_text(&mut row, 0);
        if row_text(&mut row, 8).contains("auto_increment") {
            auto_increment = Some(name.clone());
        }
        let data_type = row_text(&mut row, 1);
        let column_type = row_text(&mut row, 2);
        let nullable = row_text(&mut row, 3) == "YES";
        let json_checked = check_clauses
            .iter()
            .any(|c| c.contains(&format!("json_valid({})", ident::mysql(&name))));
        let ty = SourceType::parse(
            &data_type,
            &column_type,
            row_number(&mut row, 4),
            row_number(&mut row, 5),
            row_number(&mut row, 6),
            row_number(&mut row, 7),
            json_checked,
        )
        .map_err(|e| {
            Error::new(
                ErrorKind::Schema,
                format!("column `{table}`.`{name}`: {e}; exclude the table or ask for the type to be supported"),
            )
        })?;
        columns.push(SourceColumn {
            name,
            ty,
            nullable,
            column_type,
        });
    }
    let index_rows: Vec<Row> = conn
        .exec(
            "SELECT INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (database, table),
        )
        .await
        .map_err(|e| Error::mysql(ctx("indexes"), e))?;
    let mut primary_key = Vec::new();
    let mut indexed_first_columns = Vec::new();
    let mut unique_keys = Vec::new();
    for mut row in index_rows {
        let index = row_text(&mut row, 0);
        let seq = row_number(&mut row, 1);
        let column = row_text(&mut row, 2);
        if index != "PRIMARY" && seq == Some(1) && row_number(&mut row, 3) == Some(0) {
            unique_keys.push(index.clone());
        }
        if index == "PRIMARY" {
            primary_key.push(column.clone());
        }
        if seq == Some(1) && !indexed_first_columns.contains(&column) {
            indexed_first_columns.push(column);
        }
    }
    Ok(SourceTable {
        name: table.to_string(),
        columns,
        primary_key,
        indexed_first_columns,
        auto_increment,
        unique_keys,
    })
}

/// Scans the columns whose mapping depends on their data (`tinyint(1)`,
/// `time`) in one query. Done once, when the destination table is created.
pub async fn profile_columns(
    conn: &mut Conn,
    table: &SourceTable,
) -> Result<HashMap<String, DataProfile>> {
    let probed: Vec<&super::SourceColumn> = table
        .columns
        .iter()
        .filter(|c| c.ty.needs_profile())
        .collect();
    if probed.is_empty() {
        return Ok(HashMap::new());
    }
    let exprs: Vec<String> = probed
        .iter()
        .map(|c| {
            let col = ident::mysql(&c.name);
            match c.ty {
                SourceType::TinyIntOne { .. } => format!("COALESCE(MAX({col} NOT IN (0, 1)), 0)"),
                _ => format!("COALESCE(MAX({col} < '00:00:00' OR {col} > '24:00:00'), 0)"),
            }
        })
        .collect();
    let sql = format!(
        "SELECT {} FROM {}",
        exprs.join(", "),
        ident::mysql(&table.name)
    );
    let row: Option<Row> = conn
        .query_first(sql)
        .await
        .map_err(|e| Error::mysql(format!("profiling columns of `{}`", table.name), e))?;
    let mut out = HashMap::new();
    let Some(mut row) = row else {
        return Ok(out);
    };
    for (i, column) in probed.iter().enumerate() {
        let flagged = row_number(&mut row, i).unwrap_or(0) != 0;
        let profile = match column.ty {
            SourceType::TinyIntOne { .. } => DataProfile {
                non_boolean_values: flagged,
                ..DataProfile::default()
            },
            _ => DataProfile {
                time_outside_day: flagged,
                ..DataProfile::default()
            },
        };
        out.insert(column.name.clone(), profile);
    }
    Ok(out)
}
