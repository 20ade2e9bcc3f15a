//! The reader half of a phase: rows streamed from MySQL, handed to an
//! [`Encoder`] (binary `COPY` for the warehouse, bound values for the
//! replica), cut into batches and sent to the writer through a bounded
//! channel. Memory is bounded by batch size, never by table size.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};
use tokio::sync::mpsc;

use super::reader::{ReadRange, page_query};
use crate::error::{Error, ErrorKind, Result};
use crate::mask::Masker;
use crate::schema::ident;

/// Batches in flight between reader and writer: one being written, one
/// being read. More would only add memory.
pub const CHANNEL_BATCHES: usize = 2;

/// Turns rows into a batch payload.
pub trait Encoder: Send + 'static {
    /// What the writer receives.
    type Payload: Send + 'static;
    /// Adds one row.
    fn encode(&mut self, row: Row) -> Result<()>;
    /// Bytes held so far (for cutting batches).
    fn held_bytes(&self) -> usize;
    /// Takes what was encoded, with zero dates counted per column.
    fn take(&mut self) -> (Self::Payload, Vec<u64>);
}

/// Rows on their way to the writer.
#[derive(Debug)]
pub struct Batch<P> {
    pub payload: P,
    pub rows: u64,
    /// The watermark column this batch advances (`None`: it moves none).
    pub watermark: Option<String>,
    /// Which pass read it.
    pub kind: PassKind,
    /// The last row's values of the order columns (watermark column, key…).
    pub last: Option<Vec<Value>>,
    pub zero_dates: Vec<u64>,
}

/// Why a pass reads its rows, for the run's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    /// The whole table, or a watermark's window.
    Window,
    /// Rows stamped past the source clock at the run's start.
    Future,
    /// Rows stamped past the watermark the copy before this hop committed.
    AheadOfCopy,
    /// Rows stamped outside the quality bounds (zero and sentinel dates).
    OutsideBounds,
    /// New rows found by their auto-increment key, stamped below the window.
    NewKeys,
}

/// One keyset pass: rows of `range` in `order`, one page per batch.
#[derive(Debug, Clone)]
pub struct Pass {
    /// Advance this column's watermark with the rows read (`None` for passes
    /// that move no watermark).
    pub advances: Option<String>,
    pub kind: PassKind,
    pub range: ReadRange,
    /// Watermark column first, then the key columns (or the key alone).
    pub order: Vec<String>,
    /// Continue strictly after these `order` values (a resumed pass).
    pub after: Option<Vec<Value>>,
}

/// What the reader reads.
#[derive(Debug, Clone)]
pub enum ReadJob {
    /// Every row, one streaming query (inside the caller's snapshot).
    Full,
    /// Keyset passes.
    Passes(Vec<Pass>),
}

/// The table and columns a read selects, and how fast it may go.
#[derive(Debug, Clone)]
pub struct ReadSpec {
    pub table: String,
    pub columns: Vec<String>,
    pub batch_rows: u32,
    /// A full read's batch is also cut at this many bytes.
    pub batch_bytes: usize,
    /// The run's rate limit, shared by every table it reads.
    pub rate: Option<Arc<RateLimit>>,
    /// Masks applied to each row as it is read (the first hop only).
    pub masker: Option<Arc<Masker>>,
}

impl ReadSpec {
    fn mask(&self, row: &mut Row) {
        if let Some(masker) = &self.masker {
            masker.apply(row);
        }
    }
}

/// A rows-per-second budget shared by all readers of a run, so a run with
/// several tables in flight is as gentle on the source as one.
#[derive(Debug)]
pub struct RateLimit {
    per_second: u32,
    next: Mutex<Instant>,
}

impl RateLimit {
    /// At most `per_second` rows per second across all readers.
    pub fn new(per_second: u32) -> RateLimit {
        RateLimit {
            per_second: per_second.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Accounts for `rows` just read and waits until the budget allows more.
    /// Unused budget carries over for at most the cost of this batch.
    pub async fn pay(&self, rows: u64) {
        let cost = Duration::from_secs_f64(rows as f64 / f64::from(self.per_second));
        let until = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let floor = now.checked_sub(cost).unwrap_or(now);
            *next = (*next).max(floor) + cost;
            *next
        };
        tokio::time::sleep_until(until.into()).await;
    }
}

async fn pace(rate: &Option<Arc<RateLimit>>, rows: u64) {
    if let Some(rate) = rate {
        rate.pay(rows).await;
    }
}

fn take_batch<E: Encoder>(
    encoder: &mut E,
    rows: &mut u64,
    watermark: Option<String>,
    kind: PassKind,
    last: Option<Vec<Value>>,
) -> Batch<E::Payload> {
    let (payload, zero_dates) = encoder.take();
    let batch = Batch {
        payload,
        rows: *rows,
        watermark,
        kind,
        last,
        zero_dates,
    };
    *rows = 0;
    batch
}

async fn read_full<E: Encoder>(
    conn: &mut Conn,
    spec: &ReadSpec,
    encoder: &mut E,
    tx: &mpsc::Sender<Result<Batch<E::Payload>>>,
) -> Result<()> {
    let sql = format!(
        "SELECT {} FROM {}",
        ident::mysql_list(spec.columns.iter().map(String::as_str)),
        ident::mysql(&spec.table)
    );
    let ctx = || format!("reading MySQL table `{}`", spec.table);
    let mut result = conn
        .exec_iter(sql, ())
        .await
        .map_err(|e| Error::mysql(ctx(), e))?;
    let mut rows = 0u64;
    while let Some(mut row) = result.next().await.map_err(|e| Error::mysql(ctx(), e))? {
        spec.mask(&mut row);
        encoder.encode(row)?;
        rows += 1;
        if rows >= u64::from(spec.batch_rows) || encoder.held_bytes() >= spec.batch_bytes {
            let count = rows;
            let batch = take_batch(encoder, &mut rows, None, PassKind::Window, None);
            if tx.send(Ok(batch)).await.is_err() {
                return Ok(());
            }
            pace(&spec.rate, count).await;
        }
    }
    if rows > 0 {
        let count = rows;
        let batch = take_batch(encoder, &mut rows, None, PassKind::Window, None);
        let _ = tx.send(Ok(batch)).await;
        pace(&spec.rate, count).await;
    }
    Ok(())
}

async fn read_passes<E: Encoder>(
    conn: &mut Conn,
    spec: &ReadSpec,
    passes: &[Pass],
    encoder: &mut E,
    tx: &mpsc::Sender<Result<Batch<E::Payload>>>,
) -> Result<()> {
    for pass in passes {
        let order_positions: Vec<usize> = pass
            .order
            .iter()
            .map(|c| {
                spec.columns.iter().position(|s| s == c).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Schema,
                        format!("order column `{c}` is not read from `{}`", spec.table),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let mut cursor = pass.after.clone();
        loop {
            let (sql, params) = page_query(
                &spec.table,
                &spec.columns,
                &pass.order,
                &pass.range,
                cursor.as_deref(),
                spec.batch_rows,
            );
            let ctx = || format!("reading a page of MySQL table `{}`", spec.table);
            let mut result = conn
                .exec_iter(sql, params)
                .await
                .map_err(|e| Error::mysql(ctx(), e))?;
            let mut rows = 0u64;
            let mut page_rows = 0u64;
            let mut last: Option<Vec<Value>> = None;
            while let Some(mut row) = result.next().await.map_err(|e| Error::mysql(ctx(), e))? {
                last = Some(
                    order_positions
                        .iter()
                        .map(|&i| row.as_ref(i).cloned().unwrap_or(Value::NULL))
                        .collect(),
                );
                spec.mask(&mut row);
                encoder.encode(row)?;
                rows += 1;
                page_rows += 1;
                // Wide rows: hand over part of the page; its last row is still a valid cursor.
                if encoder.held_bytes() >= spec.batch_bytes {
                    let count = rows;
                    let batch = take_batch(
                        encoder,
                        &mut rows,
                        pass.advances.clone(),
                        pass.kind,
                        last.clone(),
                    );
                    if tx.send(Ok(batch)).await.is_err() {
                        return Ok(());
                    }
                    pace(&spec.rate, count).await;
                }
            }
            drop(result);
            let Some(last) = last else { break };
            cursor = Some(last.clone());
            if rows > 0 {
                let count = rows;
                let batch = take_batch(
                    encoder,
                    &mut rows,
                    pass.advances.clone(),
                    pass.kind,
                    Some(last),
                );
                if tx.send(Ok(batch)).await.is_err() {
                    return Ok(());
                }
                pace(&spec.rate, count).await;
            }
            let count = page_rows;
            if count < u64::from(spec.batch_rows) {
                break;
            }
        }
    }
    Ok(())
}

/// The writer's end of a read: batches, then the reader's connection.
pub type Reader<P> = (
    mpsc::Receiver<Result<Batch<P>>>,
    tokio::task::JoinHandle<Conn>,
);

/// Runs a read job on its own task; batches (or the error that stopped the
/// read) arrive on the returned channel. The connection comes back when the
/// read ends, so a snapshot can be closed.
pub fn spawn_reader<E: Encoder>(
    mut conn: Conn,
    spec: ReadSpec,
    job: ReadJob,
    mut encoder: E,
) -> Reader<E::Payload> {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let handle = tokio::spawn(async move {
        let outcome = match &job {
            ReadJob::Full => read_full(&mut conn, &spec, &mut encoder, &tx).await,
            ReadJob::Passes(passes) => {
                read_passes(&mut conn, &spec, passes, &mut encoder, &tx).await
            }
        };
        if let Err(e) = outcome {
            let _ = tx.send(Err(e)).await;
        }
        conn
    });
    (rx, handle)
}

/// Waits for a reader task to end and takes its connection back.
pub async fn finish_reader(handle: tokio::task::JoinHandle<Conn>, table: &str) -> Result<Conn> {
    handle.await.map_err(|e| {
        Error::new(
            ErrorKind::Interrupted,
            format!("the reader of `{table}` stopped: {e}"),
        )
    })
}
