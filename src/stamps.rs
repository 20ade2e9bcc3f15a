//! Skipping a hop whose two ends have not changed.
//!
//! MariaDB keeps, per table, when it last changed: a MyISAM table's data
//! file's modification time. With the time the table was
//! created (any `ALTER` re-creates it) and its engine, that is the table's
//! stamp, read for a whole database in one query at the start of a run
//! and again as the run reaches its tables.
//!
//! When a hop (the copy, source → replica; or the load, replica →
//! warehouse) of a table ends having done everything it does, it records a
//! token: a hash of both ends' stamps as the run found them before it began
//! the table, the table's config and this version. A later run whose token comes out
//! the same skips the hop: neither end changed since a run that started
//! after every change either end had, and that run left nothing to do. The
//! warehouse end's "stamp" is the table's identity and shape (PostgreSQL
//! keeps no change time): a table dropped, re-created, emptied with
//! `TRUNCATE` or altered there is not skipped.
//!
//! A stamp is trusted only where it cannot miss a change:
//! - MariaDB only (MySQL 8 serves `information_schema` statistics from a
//!   cache that can be a day old);
//! - MyISAM (not with `myisam_use_mmap`, whose writes can leave the time
//!   alone): not InnoDB, which stamps a change with its transaction's start
//!   (a transaction begun in the second of a stamp a run saw, and committed
//!   after that run read the table, leaves the stamp as it was), nor Aria,
//!   whose time does not move with each write;
//! - a table last changed at least [`MARGIN_SECONDS`] before its stamps
//!   were read, so that a change stamped before and still becoming visible
//!   then is not taken as seen.
//!
//! A token is honoured for at most [`MAX_SKIP_SECONDS`] after it was
//! recorded; the hop then runs in full again, whatever the stamps say.

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use tokio_postgres::Client;

use crate::config::TableConfig;
use crate::error::{Error, Result};

/// How long before its stamps are read a table must have last changed for
/// its stamp to count.
pub const MARGIN_SECONDS: i64 = 5;

/// How long a recorded token lets a hop be skipped.
pub const MAX_SKIP_SECONDS: i64 = 86_400;

/// Why a hop was skipped, as the run history and the summary give it.
pub const SKIP_REASON: &str = "unchanged at both ends since its last complete run (table stamps)";

/// The trusted stamps of a database's tables, by table.
#[derive(Debug, Default, Clone)]
pub struct Stamps(HashMap<String, String>);

impl Stamps {
    /// Reads the stamps of `database`'s tables (empty on a server whose
    /// stamps are not trusted).
    pub async fn read(conn: &mut Conn, database: &str) -> Result<Stamps> {
        let err = |e| Error::mysql(format!("reading the table stamps of `{database}`"), e);
        let server: Option<(String, Option<i64>)> = conn
            .query_first("SELECT @@version, @@myisam_use_mmap")
            .await
            .map_err(err)?;
        let Some((version, mmap)) = server else {
            return Ok(Stamps::default());
        };
        if !version.contains("MariaDB") {
            return Ok(Stamps::default());
        }
        // Times as UTC seconds, whatever the session's zone and its DST.
        conn.query_drop("SET SESSION time_zone = '+00:00'")
            .await
            .map_err(err)?;
        let rows: Vec<Row> = conn
            .exec(
                "SELECT TABLE_NAME, ENGINE, UNIX_TIMESTAMP(UPDATE_TIME), UNIX_TIMESTAMP(CREATE_TIME), \
                        UNIX_TIMESTAMP() \
                 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE'",
                (database,),
            )
            .await
            .map_err(err)?;
        let mut stamps = HashMap::new();
        for mut row in rows {
            let name = crate::mysql::row_text(&mut row, 0);
            let engine = crate::mysql::row_text(&mut row, 1);
            let number = |row: &mut Row, i| {
                crate::mysql::row_number(row, i).and_then(|v| i64::try_from(v).ok())
            };
            let (updated, created, now) = (
                number(&mut row, 2),
                number(&mut row, 3),
                number(&mut row, 4),
            );
            let trusted_engine = engine == "MyISAM" && mmap == Some(0);
            if let (true, Some(updated), Some(created), Some(now)) =
                (trusted_engine, updated, created, now)
                && updated <= now - MARGIN_SECONDS
            {
                stamps.insert(name, format!("{engine} {updated} {created}"));
            }
        }
        Ok(Stamps(stamps))
    }

    /// The stamp of `table`, when it is trusted.
    pub fn get(&self, table: &str) -> Option<&str> {
        self.0.get(table).map(String::as_str)
    }
}

/// The identity and shape of each table of a warehouse schema: its oid and
/// file (a `TRUNCATE` gives it a new one) and its columns with their types.
pub async fn warehouse_shapes(client: &Client, schema: &str) -> Result<Stamps> {
    let rows = client
        .query(
            "select c.relname::text, c.oid::text || ' ' || c.relfilenode::text || ' ' || \
                    coalesce((select string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) \
                                                || case when a.attnotnull then ' not null' else '' end, \
                                                ',' order by a.attnum) \
                              from pg_attribute a where a.attrelid = c.oid and a.attnum > 0 \
                              and not a.attisdropped), '') \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relkind in ('r', 'p')",
            &[&schema],
        )
        .await
        .map_err(|e| Error::postgres(format!("reading the tables of schema {schema}"), e))?;
    Ok(Stamps(
        rows.into_iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect(),
    ))
}

/// A hop's token: both ends' stamps, the table's config and this version.
/// `None` when either end's stamp is not trusted.
pub fn token(cfg: &TableConfig, hop: &str, ends: [Option<&str>; 2]) -> Option<String> {
    let [from, to] = ends;
    let text = format!(
        "{}\n{hop}\n{}\n{}\n{cfg:?}",
        env!("CARGO_PKG_VERSION"),
        from?,
        to?
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    Some(
        digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// A recorded token and how many seconds ago it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub token: String,
    pub age_seconds: i64,
}

/// Whether a hop may be skipped: its token now is the one recorded, and
/// that was recorded less than [`MAX_SKIP_SECONDS`] ago.
pub fn may_skip(now: Option<&str>, recorded: Option<&Recorded>) -> bool {
    match (now, recorded) {
        (Some(now), Some(r)) => now == r.token && (0..MAX_SKIP_SECONDS).contains(&r.age_seconds),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_needs_both_ends_and_changes_with_each() {
        let cfg = TableConfig::full_table("patient");
        let a = token(&cfg, "copy", [Some("MyISAM 1 1"), Some("MyISAM 2 2")]);
        assert!(a.is_some());
        assert_eq!(
            a,
            token(&cfg, "copy", [Some("MyISAM 1 1"), Some("MyISAM 2 2")])
        );
        assert_ne!(
            a,
            token(&cfg, "copy", [Some("MyISAM 1 1"), Some("MyISAM 3 2")])
        );
        assert_ne!(
            a,
            token(&cfg, "load", [Some("MyISAM 1 1"), Some("MyISAM 2 2")])
        );
        let other = TableConfig {
            batch_size: 7,
            ..cfg.clone()
        };
        assert_ne!(
            a,
            token(&other, "copy", [Some("MyISAM 1 1"), Some("MyISAM 2 2")])
        );
        assert_eq!(token(&cfg, "copy", [None, Some("MyISAM 2 2")]), None);
        assert_eq!(token(&cfg, "copy", [Some("MyISAM 1 1"), None]), None);
    }

    #[test]
    fn a_token_is_honoured_for_a_day() {
        let recorded = |age_seconds| Recorded {
            token: "t".into(),
            age_seconds,
        };
        assert!(may_skip(Some("t"), Some(&recorded(10))));
        assert!(!may_skip(Some("u"), Some(&recorded(10))));
        assert!(!may_skip(None, Some(&recorded(10))));
        assert!(!may_skip(Some("t"), None));
        assert!(!may_skip(Some("t"), Some(&recorded(MAX_SKIP_SECONDS))));
        assert!(
            !may_skip(Some("t"), Some(&recorded(-5))),
            "a token from the future (the clock went back) is not honoured"
        );
    }
}
