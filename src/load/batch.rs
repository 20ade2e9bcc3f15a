//! The reader half of a load: MySQL rows encoded into binary `COPY` tuples,
//! cut into batches, handed to the writer through a bounded channel.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};
use tokio::sync::mpsc;

use crate::error::{Error, ErrorKind, Result};
use crate::mysql::{ReadRange, page_query};
use crate::schema::{Encoded, PgType, SourceType, encode_field, value_to_text};

/// Batches in flight between reader and writer: one being written, one
/// being read. More would only add memory.
pub const CHANNEL_BATCHES: usize = 2;
/// A full load's batch is also cut at this many bytes, so wide rows
/// (16 MB blobs) keep memory bounded by batch, not by table. A full load
/// commits once, so its batches are only the unit of hand-over between reader
/// and writer: 4 MiB keeps both busy while holding little.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

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
    pub fn encode_row(&self, row: &Row, buf: &mut BytesMut, zero_dates: &mut [u64]) -> Result<()> {
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
                    return Err(Error::new(
                        ErrorKind::Value,
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

/// Encoded rows on their way to the warehouse.
#[derive(Debug)]
pub struct Batch {
    pub bytes: Bytes,
    pub rows: u64,
    /// The watermark column this batch advances (`None`: it moves none).
    pub watermark: Option<String>,
    /// The last row's values of the order columns (watermark column, key…).
    pub last: Option<Vec<Value>>,
    pub zero_dates: Vec<u64>,
}

/// One keyset pass over a watermark column.
#[derive(Debug, Clone)]
pub struct Pass {
    /// Advance this column's watermark with the rows read (`None` for the
    /// out-of-bounds pass).
    pub advances: Option<String>,
    pub range: ReadRange,
    /// Watermark column first, then the key columns.
    pub order: Vec<String>,
}

/// What the reader reads.
#[derive(Debug, Clone)]
pub enum ReadJob {
    /// Every row, one streaming query (inside the caller's snapshot).
    Full,
    /// Keyset passes, one page per batch.
    Passes(Vec<Pass>),
}

async fn send(tx: &mpsc::Sender<Result<Batch>>, batch: Batch) -> bool {
    tx.send(Ok(batch)).await.is_ok()
}

fn take_batch(
    buf: &mut BytesMut,
    rows: &mut u64,
    zero: &mut [u64],
    watermark: Option<String>,
    last: Option<Vec<Value>>,
) -> Batch {
    let bytes = buf.split().freeze();
    // The next batch is about as large: one allocation instead of a doubling series.
    buf.reserve(bytes.len());
    let batch = Batch {
        bytes,
        rows: *rows,
        watermark,
        last,
        zero_dates: zero.to_vec(),
    };
    *rows = 0;
    zero.iter_mut().for_each(|z| *z = 0);
    batch
}

async fn read_full(
    conn: &mut Conn,
    plan: &Plan,
    batch_rows: u64,
    tx: &mpsc::Sender<Result<Batch>>,
) -> Result<()> {
    let sql = format!(
        "SELECT {} FROM {}",
        crate::schema::ident::mysql_list(plan.columns.iter().map(|c| c.name.as_str())),
        crate::schema::ident::mysql(&plan.table)
    );
    let ctx = || format!("reading MySQL table `{}`", plan.table);
    let mut result = conn
        .exec_iter(sql, ())
        .await
        .map_err(|e| Error::mysql(ctx(), e))?;
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut rows = 0u64;
    let mut zero = vec![0u64; plan.columns.len()];
    while let Some(row) = result.next().await.map_err(|e| Error::mysql(ctx(), e))? {
        plan.encode_row(&row, &mut buf, &mut zero)?;
        rows += 1;
        if rows >= batch_rows || buf.len() >= MAX_BATCH_BYTES {
            let batch = take_batch(&mut buf, &mut rows, &mut zero, None, None);
            if !send(tx, batch).await {
                return Ok(());
            }
        }
    }
    if rows > 0 {
        let batch = take_batch(&mut buf, &mut rows, &mut zero, None, None);
        send(tx, batch).await;
    }
    Ok(())
}

async fn read_passes(
    conn: &mut Conn,
    plan: &Plan,
    passes: &[Pass],
    batch_rows: u32,
    tx: &mpsc::Sender<Result<Batch>>,
) -> Result<()> {
    let names = plan.names();
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut zero = vec![0u64; plan.columns.len()];
    for pass in passes {
        let order_positions: Vec<usize> = pass
            .order
            .iter()
            .map(|c| {
                plan.position(c).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Schema,
                        format!("order column `{c}` is not read from `{}`", plan.table),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let mut cursor: Option<Vec<Value>> = None;
        loop {
            let (sql, params) = page_query(
                &plan.table,
                &names,
                &pass.order,
                &pass.range,
                cursor.as_deref(),
                batch_rows,
            );
            let ctx = || format!("reading a page of MySQL table `{}`", plan.table);
            let mut result = conn
                .exec_iter(sql, params)
                .await
                .map_err(|e| Error::mysql(ctx(), e))?;
            let mut rows = 0u64;
            let mut last_row: Option<Row> = None;
            while let Some(row) = result.next().await.map_err(|e| Error::mysql(ctx(), e))? {
                plan.encode_row(&row, &mut buf, &mut zero)?;
                rows += 1;
                last_row = Some(row);
            }
            drop(result);
            let Some(last_row) = last_row else { break };
            let last: Vec<Value> = order_positions
                .iter()
                .map(|&i| last_row.as_ref(i).cloned().unwrap_or(Value::NULL))
                .collect();
            cursor = Some(last.clone());
            let full_page = rows >= u64::from(batch_rows);
            let batch = take_batch(
                &mut buf,
                &mut rows,
                &mut zero,
                pass.advances.clone(),
                Some(last),
            );
            if !send(tx, batch).await {
                return Ok(());
            }
            if !full_page {
                break;
            }
        }
    }
    Ok(())
}

/// Runs a read job on its own task; batches (or the error that stopped the
/// read) arrive on the returned channel. The connection comes back when the
/// read ends, so a snapshot can be closed.
pub fn spawn_reader(
    mut conn: Conn,
    plan: Arc<Plan>,
    job: ReadJob,
    batch_rows: u32,
) -> (mpsc::Receiver<Result<Batch>>, tokio::task::JoinHandle<Conn>) {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let handle = tokio::spawn(async move {
        let outcome = match &job {
            ReadJob::Full => read_full(&mut conn, &plan, u64::from(batch_rows), &tx).await,
            ReadJob::Passes(passes) => read_passes(&mut conn, &plan, passes, batch_rows, &tx).await,
        };
        if let Err(e) = outcome {
            let _ = tx.send(Err(e)).await;
        }
        conn
    });
    (rx, handle)
}
