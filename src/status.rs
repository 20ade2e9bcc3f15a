//! What `status` and `serve`'s page show of each table: the tracking tables
//! of both hops, and the lag behind the source.

use std::path::Path;

use crate::config::{Env, Mode, TablesConfig};
use crate::error::Result;
use crate::tracking::{self, StatusLine};
use crate::{mysql as my, postgres as pg};

/// The status lines of the tables of `env`, and, when `lag` asks for it,
/// where the lag was measured (or why it could not be). The source down is
/// when an operator needs the rest most: each lag is then marked unknown,
/// with the reason, and the tracking still shows.
pub async fn gather(
    env: &Env,
    tables_file: &Path,
    lag: bool,
) -> Result<(Vec<StatusLine>, Option<String>)> {
    let warehouse = env.warehouse()?;
    let client = pg::connect(&warehouse).await?;
    tracking::check_warehouse(&client, &warehouse.schema).await?;
    let mut lines = tracking::status_lines(&client, &warehouse.schema).await?;
    if env.mode()? == Mode::Replica
        && let Ok(replica) = env.replica()
    {
        let mut conn = my::connect(&replica).await?;
        tracking::check_replica(&mut conn, &replica.database).await?;
        tracking::add_copy_status(&mut conn, &mut lines).await?;
    }
    if !lag {
        return Ok((lines, None));
    }
    let (against, lag_db) = match (env.mode()?, env.source()) {
        (_, Ok(source)) => ("source", source),
        (Mode::Replica, Err(_)) => ("replica", env.replica()?),
        (Mode::Direct, Err(e)) => return Err(e),
    };
    let config = TablesConfig::load(tables_file).ok();
    let skew = |table: &str| {
        config.as_ref().and_then(|c| c.get(table).ok()).map_or(
            crate::config::DEFAULT_CLOCK_SKEW_SECONDS,
            crate::config::TableConfig::skew_allowance,
        )
    };
    let measured = match my::connect(&lag_db).await {
        Ok(mut conn) => {
            tracking::add_lag(&mut conn, &lag_db.database, &mut lines, skew).await?;
            format!(
                "lag measured against the {against}, {}",
                my::describe(&lag_db)
            )
        }
        Err(e) => {
            let why = format!("unknown: {}", crate::error::chain(&e));
            for line in &mut lines {
                line.lag_note = Some(why.clone());
            }
            format!(
                "lag unknown: the {against} cannot be reached ({})",
                my::describe(&lag_db)
            )
        }
    };
    Ok((lines, Some(measured)))
}
