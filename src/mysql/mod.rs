//! MySQL/MariaDB: connections, table introspection, and the keyset reader.

mod catalog;
mod ddl;
mod reader;
mod stream;

pub use catalog::{
    SourceColumn, SourceTable, describe_table, profile_columns, row_number, row_text, show_create,
    views,
};
pub use ddl::{ReplicaDdl, replica_ddl};
pub use reader::{
    Bound, ClockTerms, ReadRange, page_query, server_clock, upper_bound, utc_to_session,
};
pub use stream::{
    Batch, CHANNEL_BATCHES, Encoder, Pass, PassKind, RateLimit, ReadJob, ReadSpec, finish_reader,
    spawn_reader,
};

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, DriverError, Opts, OptsBuilder, SslOpts};

use crate::config::{MySqlSettings, SslMode};
use crate::error::{Error, ErrorKind, Result};

/// `CHECKSUM TABLE`: a checksum of every row's content, as text; `None`
/// when the server gives none (a missing table).
pub async fn table_checksum(conn: &mut Conn, table: &str) -> Result<Option<String>> {
    let row: Option<(String, Option<u64>)> = conn
        .query_first(format!(
            "CHECKSUM TABLE {}",
            crate::schema::ident::mysql(table)
        ))
        .await
        .map_err(|e| Error::mysql(format!("checksumming `{table}`"), e))?;
    Ok(row.and_then(|(_, sum)| sum).map(|s| s.to_string()))
}

/// How long to wait for a TCP connection before giving up: a host that does
/// not answer must fail the run, not hang it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds the server waits on a slow reader before dropping the stream:
/// the warehouse may hold a batch for a while (a long merge), so well above
/// the server's 60-second default.
const NET_WRITE_TIMEOUT_SECONDS: u32 = 600;

/// Where a connection goes, for messages (never the password).
pub fn describe(settings: &MySqlSettings) -> String {
    format!(
        "MySQL {}@{}:{}/{}",
        settings.user, settings.host, settings.port, settings.database
    )
}

fn ssl_opts(settings: &MySqlSettings) -> Option<SslOpts> {
    let base = SslOpts::default();
    match settings.ssl_mode {
        SslMode::Disabled => None,
        SslMode::Preferred | SslMode::Required => Some(
            base.with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        SslMode::VerifyCa | SslMode::VerifyIdentity => {
            let ca = settings.ssl_ca.clone().map(Into::into);
            Some(
                base.with_root_certs(ca.into_iter().collect())
                    .with_danger_skip_domain_validation(settings.ssl_mode == SslMode::VerifyCa),
            )
        }
    }
}

fn opts(settings: &MySqlSettings, ssl: Option<SslOpts>) -> Opts {
    OptsBuilder::default()
        .ssl_opts(ssl)
        .ip_or_hostname(settings.host.clone())
        .tcp_port(settings.port)
        .user(Some(settings.user.clone()))
        .pass(Some(settings.password.expose().to_string()))
        .db_name(Some(settings.database.clone()).filter(|d| !d.is_empty()))
        .prefer_socket(false)
        .stmt_cache_size(64)
        .init(vec![
            "SET NAMES utf8mb4".to_string(),
            format!("SET SESSION net_write_timeout = {NET_WRITE_TIMEOUT_SECONDS}"),
        ])
        .into()
}

async fn open(settings: &MySqlSettings, ssl: Option<SslOpts>) -> Result<Conn> {
    let what = describe(settings);
    match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts(settings, ssl))).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer))) => {
            Err(Error::new(
                ErrorKind::Access,
                format!(
                    "{what} does not offer TLS, but its SSL mode is {:?}; enable TLS on the server \
                 or lower the SSL_MODE setting",
                    settings.ssl_mode
                ),
            ))
        }
        Ok(Err(e)) => Err(Error::mysql(
            format!("cannot connect to {what}; check the host, port, user and password settings"),
            e,
        )),
        Err(_) => Err(Error::new(
            ErrorKind::Connection,
            format!(
                "cannot connect to {what}: no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Opens a connection, within [`CONNECT_TIMEOUT`], with the settings' TLS
/// mode (`preferred` falls back to plain TCP when the server has no TLS).
pub async fn connect(settings: &MySqlSettings) -> Result<Conn> {
    match open(settings, ssl_opts(settings)).await {
        Err(e) if settings.ssl_mode == SslMode::Preferred && e.kind() == ErrorKind::Access => {
            tracing::info!(server = %describe(settings), "no TLS offered; connecting without");
            open(settings, None).await
        }
        other => other,
    }
}

/// The server's version string.
pub async fn server_version(conn: &mut Conn) -> Result<String> {
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| Error::mysql("reading the server version", e))?;
    Ok(version.unwrap_or_default())
}

/// Starts a read-only transaction whose reads all see one snapshot.
pub async fn begin_snapshot(conn: &mut Conn) -> Result<()> {
    conn.query_drop("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(|e| Error::mysql("setting the isolation level", e))?;
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await
        .map_err(|e| Error::mysql("starting a consistent snapshot", e))
}

/// Ends the snapshot transaction.
pub async fn end_snapshot(conn: &mut Conn) -> Result<()> {
    conn.query_drop("COMMIT")
        .await
        .map_err(|e| Error::mysql("ending the snapshot", e))
}
