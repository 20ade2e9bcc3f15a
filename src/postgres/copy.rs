//! Binary `COPY` framing: the header and trailer around tuples that
//! [`crate::schema::encode_field`] wrote.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{CopyInSink, Transaction};

use crate::error::{Error, Result};

/// `PGCOPY\n\377\r\n\0`, flags 0, no header extension.
pub const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The file trailer: a tuple field count of -1.
pub const COPY_TRAILER: &[u8] = &[0xff, 0xff];

/// An open `COPY ... FROM STDIN (FORMAT binary)`.
pub struct CopyIn {
    sink: Pin<Box<CopyInSink<Bytes>>>,
    target: String,
}

impl CopyIn {
    /// Starts the copy and sends the header.
    pub async fn start(tx: &Transaction<'_>, copy_sql: &str, target: &str) -> Result<CopyIn> {
        let sink = tx
            .copy_in::<_, Bytes>(copy_sql)
            .await
            .map_err(|e| Error::postgres(format!("starting COPY into {target}"), e))?;
        let mut copy = CopyIn {
            sink: Box::pin(sink),
            target: target.to_string(),
        };
        copy.send(Bytes::from_static(COPY_HEADER)).await?;
        Ok(copy)
    }

    /// Sends encoded tuples.
    pub async fn send(&mut self, chunk: Bytes) -> Result<()> {
        self.sink
            .feed(chunk)
            .await
            .map_err(|e| Error::postgres(format!("copying rows into {}", self.target), e))
    }

    /// Sends the trailer and returns the rows PostgreSQL counted.
    pub async fn finish(mut self) -> Result<u64> {
        self.send(Bytes::from_static(COPY_TRAILER)).await?;
        self.sink
            .as_mut()
            .finish()
            .await
            .map_err(|e| Error::postgres(format!("finishing COPY into {}", self.target), e))
    }
}
