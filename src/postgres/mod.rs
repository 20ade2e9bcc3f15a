//! PostgreSQL: connections, destination tables (DDL and catalog), binary
//! `COPY` framing, and the upsert merge.

mod copy;
mod table;
mod tls;

pub use copy::{COPY_HEADER, COPY_TRAILER, CopyIn};
pub use table::{
    DestColumn, DestTable, add_column, alter_column_type, create_table, describe_table,
    ensure_schema, merge_sql,
};

use std::time::Duration;

use tokio_postgres::Client;

use crate::config::PgSettings;
use crate::error::{Error, ErrorKind, Result};

/// How long to wait for the warehouse to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a connection goes, for messages (never the password).
pub fn describe(settings: &PgSettings) -> String {
    format!(
        "PostgreSQL {}@{}:{}/{}",
        settings.user, settings.host, settings.port, settings.database
    )
}

/// Reads the TLS files the settings name (root and client certificates,
/// key), as a connection would, without connecting.
pub fn check_tls(settings: &PgSettings) -> Result<()> {
    tls::connector(settings).map(drop)
}

/// Opens a connection and drives it on the runtime.
pub async fn connect(settings: &PgSettings) -> Result<Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&settings.host)
        .port(settings.port)
        .dbname(&settings.database)
        .user(&settings.user)
        .application_name("etl-pipeline")
        .connect_timeout(CONNECT_TIMEOUT);
    if !settings.password.expose().is_empty() {
        config.password(settings.password.expose());
    }
    let (tls, wire) = tls::connector(settings)?;
    config.ssl_mode(wire);
    let what = describe(settings);
    // `connect_timeout` bounds only the TCP connect; a server that accepts
    // and then says nothing must not hold the run forever.
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tls))
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Connection,
                format!(
                    "cannot connect to {what}: no answer within {}s; check that the host and port are PostgreSQL's",
                    CONNECT_TIMEOUT.as_secs()
                ),
            )
        })?;
    let (client, connection) = connected.map_err(|e| {
        if let Some(why) = tls::explain(&e, settings) {
            return Error::new(ErrorKind::Access, format!("cannot connect to {what}: {why}"));
        }
        let mut err = Error::postgres(
            format!("cannot connect to {what}; check the host, port, database, user and password settings"),
            e,
        );
        if err.kind() == ErrorKind::Database {
            err = Error::new(ErrorKind::Connection, err.message().to_string());
        }
        err
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "warehouse connection ended");
        }
    });
    Ok(client)
}

/// Warehouse connections the tables of a run take in turn: a connection
/// is handed back once a table's load has succeeded (one that failed is
/// closed with its error), and reset (`DISCARD ALL`: temporary tables,
/// settings) before it serves another table. A run then opens about as
/// many connections as it loads tables at once, instead of one per table:
/// each new one is a PostgreSQL backend started and its caches filled.
#[derive(Clone, Default)]
pub struct Pool(std::sync::Arc<std::sync::Mutex<Vec<(String, Client)>>>);

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

impl Pool {
    /// A connection to the `settings` database handed back earlier and
    /// still open, reset; else a new one.
    pub async fn get(&self, settings: &PgSettings) -> Result<Client> {
        let to = describe(settings);
        loop {
            let held = {
                let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
                let at = held.iter().position(|(of, _)| *of == to);
                at.map(|i| held.swap_remove(i).1)
            };
            let Some(client) = held else {
                return connect(settings).await;
            };
            if !client.is_closed() && client.batch_execute("DISCARD ALL").await.is_ok() {
                return Ok(client);
            }
        }
    }

    /// Hands back a connection to the `settings` database for the next table.
    pub fn put(&self, settings: &PgSettings, client: Client) {
        if !client.is_closed() {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((describe(settings), client));
        }
    }
}

/// The server's version string.
pub async fn server_version(client: &Client) -> Result<String> {
    let row = client
        .query_one("SELECT version()", &[])
        .await
        .map_err(|e| Error::postgres("reading the server version", e))?;
    Ok(row.get(0))
}
