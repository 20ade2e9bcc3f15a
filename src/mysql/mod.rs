//! MySQL/MariaDB: connections, table introspection, and the keyset reader.

mod catalog;
mod ddl;
mod reader;
mod stream;

pub use catalog::{
    SourceColumn, SourceTable, describe_table, profile_columns, row_number, row_text, show_create,
    views,
};
pub use ddl::{ReplicaDdl, add_keys, replica_ddl, unique_keys};
pub use reader::{
    Bound, ClockTerms, Fingerprint, ReadRange, page_query, range_fingerprint, server_clock,
    upper_bound, utc_to_session,
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
    .map(|opts| {
        opts.with_client_identity(
            settings
                .ssl_client
                .clone()
                .map(|(cert, key)| mysql_async::ClientIdentity::new(cert.into(), key.into())),
        )
    })
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

/// One connection attempt; the outer error is the timeout.
async fn attempt(
    settings: &MySqlSettings,
    ssl: Option<SslOpts>,
) -> Result<std::result::Result<Conn, mysql_async::Error>> {
    tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts(settings, ssl)))
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Connection,
                format!(
                    "cannot connect to {}: no answer within {}s",
                    describe(settings),
                    CONNECT_TIMEOUT.as_secs()
                ),
            )
        })
}

/// MySQL's ER_SECURE_TRANSPORT_REQUIRED (its `require_secure_transport`).
const SECURE_TRANSPORT_REQUIRED: u16 = 3159;
/// ER_ACCESS_DENIED_ERROR.
const ACCESS_DENIED: u16 = 1045;
/// ER_BAD_DB_ERROR.
const UNKNOWN_DATABASE: u16 = 1049;

/// Opens a connection, within [`CONNECT_TIMEOUT`], with the settings' TLS
/// mode (`preferred` falls back to plain TCP only when the server offers
/// no TLS, as MySQL's own client does).
pub async fn connect(settings: &MySqlSettings) -> Result<Conn> {
    let what = describe(settings);
    let no_tls = |e: &mysql_async::Error| {
        matches!(
            e,
            mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer)
        )
    };
    let mut result = attempt(settings, ssl_opts(settings)).await?;
    if settings.ssl_mode == SslMode::Preferred && result.as_ref().is_err_and(no_tls) {
        tracing::info!(server = %what, "no TLS offered; connecting without");
        result = attempt(settings, None).await?;
    }
    if settings.ssl_mode == SslMode::VerifyCa
        && let Some(name) = result
            .as_ref()
            .err()
            .and_then(|e| crate::tls::presented_name(e))
    {
        // The driver's own "skip the name check" has no effect with this
        // rustls (mysql_async #404). The chain checked out, and `verify_ca`
        // asks no more: connect again checking the chain and a name the
        // certificate gives.
        let opts = ssl_opts(settings).map(|o| o.with_danger_tls_hostname_override(Some(name)));
        result = attempt(settings, opts).await?;
    }
    let advice = crate::tls::Advice {
        host: &settings.host,
        host_setting: "its HOST setting",
        roots: settings.ssl_ca.as_deref(),
        roots_setting: "its SSL_CA setting",
        ca_only: "its SSL_MODE to verify_ca",
    };
    result.map_err(|e| match &e {
        e if let Some(why) = crate::tls::certificate_problem(e, &advice) => Error::new(
            ErrorKind::Access,
            format!("cannot connect to {what}: {why}"),
        ),
        e if no_tls(e) => Error::new(
            ErrorKind::Access,
            format!(
                "{what} does not offer TLS, but its SSL mode is {}; enable TLS on the server \
                 or lower the SSL_MODE setting",
                settings.ssl_mode.name()
            ),
        ),
        mysql_async::Error::Server(server) if server.code == SECURE_TRANSPORT_REQUIRED => {
            Error::new(
                ErrorKind::Access,
                format!(
                    "{what} accepts only TLS connections; set its SSL_MODE to verify_identity \
                     (with SSL_CA) or required"
                ),
            )
        }
        // MariaDB refuses a plain connection to a server that requires TLS
        // as it refuses a wrong password.
        mysql_async::Error::Server(server)
            if server.code == ACCESS_DENIED && settings.ssl_mode == SslMode::Disabled =>
        {
            Error::mysql(
                format!(
                    "cannot connect to {what}; check the user and password settings, and whether the \
                     server accepts only TLS connections (require_secure_transport): its SSL_MODE \
                     is disabled, so set it to verify_identity (with SSL_CA) or required"
                ),
                e,
            )
        }
        mysql_async::Error::Server(server) if server.code == UNKNOWN_DATABASE => Error::mysql(
            format!(
                "cannot connect to {what}: the server has no database `{}`; create it \
                 (CREATE DATABASE) or name the right one in the *_DB setting",
                settings.database
            ),
            e,
        ),
        _ => Error::mysql(
            format!("cannot connect to {what}; check the host, port, user and password settings"),
            e,
        ),
    })
}

/// Whether the session is encrypted (its TLS cipher is not empty).
pub async fn encrypted(conn: &mut Conn) -> Result<bool> {
    let cipher: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await
        .map_err(|e| Error::mysql("reading the session's TLS cipher", e))?;
    Ok(cipher.is_some_and(|(_, c)| !c.is_empty()))
}

/// Whether `host` is this machine: `localhost`, a loopback address, or a
/// name every address of which is one.
pub async fn on_this_machine(host: &str, port: u16) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(addresses) => {
            let addresses: Vec<_> = addresses.collect();
            !addresses.is_empty() && addresses.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
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
