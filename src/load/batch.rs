//! The load's column plan and its encoder: MySQL rows into binary `COPY`
//! tuples for the destination's actual column types.

use std::sync::Arc;

use bytes::{BufMut, Bytes};
use mysql_async::{Row, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::mysql::Encoder;
use crate::schema::{Encoded, PgType, SourceType, encode_field, value_to_text};

/// An incremental batch (one transaction) is also cut at this many bytes,
/// so wide rows (16 MB blobs) keep memory bounded by batch, not by table.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A full load commits once, so its batches are only the unit of hand-over
/// between reader and writer. 512 KiB keeps both busy and stays under the
/// allocator's mmap threshold (1 MiB, set in `main`), so freed batches are
/// reused instead of mapped and faulted in afresh: a 2,000,000-row load
/// peaked at 20 MiB instead of 45 MiB, at the same speed.
pub const FULL_BATCH_BYTES: usize = 512 * 1024;

/// One column as it is read and written.
#[derive(Debug, Clone)]
pub struct PlannedColumn {
    pub name: String,
    pub source: SourceType,
    pub target: PgType,
}

/// The columns of a load, in select order, and where the key sits among them.
#[derive(Debug, Clone)]
pub struct Plan {
    pub table: String,
    pub columns: Vec<PlannedColumn>,
    pub key_positions: Vec<usize>,
}

impl Plan {
    /// Column names in select order.
    pub fn names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// The position of a column in the select list.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    fn key_text(&self, row: &Row) -> String {
        if self.key_positions.is_empty() {
            return "(table has no key)".to_string();
        }
        self.key_positions
            .iter()
            .map(|&i| {
                let value = row
                    .as_ref(i)
                    .and_then(value_to_text)
                    .unwrap_or_else(|| "NULL".into());
                format!("{}={value}", self.columns[i].name)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Appends one row as a binary `COPY` tuple; counts zero dates per column.
    pub fn encode_row(&self, row: &Row, buf: &mut Vec<u8>, zero_dates: &mut [u64]) -> Result<()> {
        let count = i16::try_from(self.columns.len()).map_err(|_| {
            Error::new(
                ErrorKind::Schema,
                format!("`{}` has too many columns", self.table),
            )
        })?;
        buf.put_i16(count);
        for (i, column) in self.columns.iter().enumerate() {
            let value = row.as_ref(i).unwrap_or(&Value::NULL);
            match encode_field(value, &column.source, &column.target, buf) {
                Ok(Encoded::Value) => {}
                Ok(Encoded::ZeroDate) => zero_dates[i] += 1,
                Err(e) => {
                    let outgrown = matches!(column.target, PgType::Time(_))
                        && matches!(value, Value::Time(negative, days, hours, ..)
                            if *negative || *days > 0 || *hours >= 24);
                    return Err(Error::new(
                        if outgrown {
                            ErrorKind::Outgrown
                        } else {
                            ErrorKind::Value
                        },
                        format!(
                            "table `{}`, column `{}`, key {}: cannot carry the value into {}: {e}",
                            self.table,
                            column.name,
                            self.key_text(row),
                            column.target
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Encodes rows into binary `COPY` tuples for the warehouse.
pub struct CopyEncoder {
    plan: Arc<Plan>,
    buf: Vec<u8>,
    zero_dates: Vec<u64>,
}

impl CopyEncoder {
    /// An encoder for the plan's columns.
    pub fn new(plan: Arc<Plan>) -> CopyEncoder {
        let zero_dates = vec![0; plan.columns.len()];
        CopyEncoder {
            plan,
            buf: Vec::with_capacity(1 << 20),
            zero_dates,
        }
    }
}

impl Encoder for CopyEncoder {
    type Payload = Bytes;

    fn encode(&mut self, row: Row) -> Result<()> {
        self.plan
            .encode_row(&row, &mut self.buf, &mut self.zero_dates)
    }

    fn held_bytes(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self) -> (Bytes, Vec<u64>) {
        // The next batch is about as large: one allocation instead of a doubling series.
        let next = Vec::with_capacity(self.buf.len());
        let bytes = Bytes::from(std::mem::replace(&mut self.buf, next));
        let zero = std::mem::replace(&mut self.zero_dates, vec![0; self.plan.columns.len()]);
        (bytes, zero)
    }
}
