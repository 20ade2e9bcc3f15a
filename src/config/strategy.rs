//! Strategy resolution: the one function that decides, for either phase,
//! whether a table is refreshed in full or read incrementally, and why.

use std::collections::HashSet;

use super::tables::{ExtractionStrategy, TableConfig};

/// How a table is read in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Every row, replacing the destination's contents atomically.
    Full,
    /// Rows past the watermarks of these columns (OR across them).
    Incremental { columns: Vec<String> },
}

impl Strategy {
    /// `full` or `incremental`, as written to the run history.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Full => "full",
            Strategy::Incremental { .. } => "incremental",
        }
    }
}

/// A strategy and the reason it was chosen, recorded in the run history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub strategy: Strategy,
    pub reason: String,
}

/// What the run knows about a table besides its config.
#[derive(Debug, Clone, Default)]
pub struct TableFacts {
    /// `--force-full` was given.
    pub force_full: bool,
    /// The key rows are upserted on (empty: the table has none).
    pub key: Vec<String>,
    /// Source columns that can order rows (integers, dates, date-times).
    pub orderable_columns: HashSet<String>,
    /// All source columns.
    pub source_columns: HashSet<String>,
    /// Watermark columns the tracking tables hold a watermark for.
    pub watermarked_columns: HashSet<String>,
    /// The destination table did not exist before this run.
    pub destination_created: bool,
    /// Source columns the destination lacked (added by this run).
    pub added_columns: Vec<String>,
    /// Destination columns widened by this run because their source type grew.
    pub altered_columns: Vec<String>,
    /// Seconds since this phase last wrote the table (`None`: never).
    pub seconds_since_last: Option<i64>,
    /// `--no-time-gap` was given.
    pub ignore_time_gap: bool,
}

fn full(reason: impl Into<String>) -> Decision {
    Decision {
        strategy: Strategy::Full,
        reason: reason.into(),
    }
}

/// Why a full refresh was skipped.
pub const UNCHANGED_REASON: &str =
    "unchanged since the last full refresh (same CHECKSUM TABLE, refreshed at least daily)";

/// A full refresh of an unchanged table is skipped for at most this long:
/// the next one after it runs whatever the checksum says, so even a
/// checksum collision cannot keep a change out for more than a day.
pub const UNCHANGED_SKIP_MAX_SECONDS: i64 = 86_400;

/// Whether a phase takes the table's checksum before reading it: only
/// full refreshes of `full_table` tables, the only ones [`unchanged`] can
/// skip (for any other table it would be a whole extra scan for nothing).
pub fn wants_checksum(config: &TableConfig, decision: &Decision) -> bool {
    decision.strategy == Strategy::Full
        && config.extraction_strategy == ExtractionStrategy::FullTable
}

/// Whether a config-driven full refresh can be skipped: the table it reads
/// has the checksum the last refresh recorded before reading, that refresh
/// is under a day old, and nothing else (a flag, a new destination, a schema
/// change) asks for a refresh.
pub fn unchanged(
    config: &TableConfig,
    facts: &TableFacts,
    checksum: Option<&str>,
    last: Option<(&str, i64)>,
) -> bool {
    config.extraction_strategy == ExtractionStrategy::FullTable
        && !facts.force_full
        && !facts.destination_created
        && facts.added_columns.is_empty()
        && facts.altered_columns.is_empty()
        && matches!(
            (checksum, last),
            (Some(now), Some((then, age))) if now == then && age < UNCHANGED_SKIP_MAX_SECONDS
        )
}

/// Decides how to read a table. The order of the checks is the order of
/// precedence: an explicit flag, then what makes an incremental read unsafe,
/// then what makes it impossible.
pub fn resolve(config: &TableConfig, facts: &TableFacts) -> Decision {
    if facts.force_full {
        return full("--force-full given");
    }
    if config.extraction_strategy == ExtractionStrategy::FullTable {
        return full("config: extraction_strategy is full_table");
    }
    if let (Some(days), Some(seconds), false) = (
        config.time_gap_days,
        facts.seconds_since_last,
        facts.ignore_time_gap,
    ) && seconds > i64::from(days) * 86_400
    {
        return full(format!(
            "last run {:.1} days ago, over time_gap_threshold_days ({days}): a refresh is faster and safer \
             than catching up",
            seconds as f64 / 86_400.0
        ));
    }
    if facts.key.is_empty() {
        return full("table has no primary key, so changed rows cannot be upserted");
    }
    let columns = config.watermark_columns();
    for column in &columns {
        if !facts.source_columns.contains(column) {
            return full(format!(
                "incremental column `{column}` is not in the source table"
            ));
        }
        if !facts.orderable_columns.contains(column) {
            return full(format!(
                "incremental column `{column}` is not an integer, date or date-time column"
            ));
        }
    }
    if facts.destination_created {
        return full("first load: destination table created");
    }
    if !facts.added_columns.is_empty() {
        return full(format!(
            "source added column(s) {}: existing rows need their values",
            facts.added_columns.join(", ")
        ));
    }
    if !facts.altered_columns.is_empty() {
        return full(format!(
            "source changed the type of column(s) {}: a type change rewrites rows without touching their watermark",
            facts.altered_columns.join(", ")
        ));
    }
    if let Some(missing) = columns
        .iter()
        .find(|c| !facts.watermarked_columns.contains(*c))
    {
        return full(format!("no watermark recorded for `{missing}` yet"));
    }
    let reason = match columns.as_slice() {
        [one] if facts.key.len() == 1 && facts.key[0] == *one => {
            format!("watermark on the key {one}")
        }
        [one] => format!("watermark on ({one}, {})", facts.key.join(", ")),
        many => format!(
            "watermarks on {} (OR), each paged with the key",
            many.join(", ")
        ),
    };
    Decision {
        strategy: Strategy::Incremental { columns },
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TablesConfig;

    fn procedurelog() -> TableConfig {
        let text = "tables:\n  procedurelog:\n    extraction_strategy: incremental\n    incremental_columns: [ProcNum, DateTStamp]\n    primary_incremental_column: DateTStamp\n    primary_key: ProcNum\n";
        TablesConfig::parse(text)
            .unwrap()
            .get("procedurelog")
            .unwrap()
            .clone()
    }

    fn ready() -> TableFacts {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        TableFacts {
            key: vec!["ProcNum".into()],
            orderable_columns: set(&["ProcNum", "DateTStamp"]),
            source_columns: set(&["ProcNum", "DateTStamp", "ProcFee"]),
            watermarked_columns: set(&["DateTStamp"]),
            ..TableFacts::default()
        }
    }

    #[test]
    fn a_gap_longer_than_the_threshold_means_a_full_refresh_unless_ignored() {
        let mut cfg = procedurelog();
        cfg.time_gap_days = Some(7);
        let after = |seconds: i64, ignore: bool| {
            resolve(
                &cfg,
                &TableFacts {
                    seconds_since_last: Some(seconds),
                    ignore_time_gap: ignore,
                    ..ready()
                },
            )
        };
        assert_eq!(after(6 * 86_400, false).strategy.name(), "incremental");
        let d = after(8 * 86_400, false);
        assert_eq!(d.strategy, Strategy::Full);
        assert!(d.reason.contains("8.0 days ago"), "{}", d.reason);
        assert_eq!(after(8 * 86_400, true).strategy.name(), "incremental");
        let never = resolve(&cfg, &ready());
        assert_eq!(
            never.strategy.name(),
            "incremental",
            "no gap without a last run"
        );
    }

    #[test]
    fn only_full_refreshes_of_full_table_tables_take_a_checksum() {
        let refresh = full("first load");
        let whole = TableConfig::full_table("definition");
        let tracked = procedurelog();
        assert!(wants_checksum(&whole, &refresh));
        assert!(
            !wants_checksum(&tracked, &refresh),
            "a whole extra scan for nothing"
        );
        assert!(!wants_checksum(&tracked, &resolve(&tracked, &ready())));
    }

    #[test]
    fn only_a_config_full_refresh_with_the_same_recent_checksum_is_skipped() {
        let full = TableConfig::full_table("definition");
        let facts = TableFacts {
            key: vec!["DefNum".into()],
            ..TableFacts::default()
        };
        let same = Some(("123", 60));
        assert!(unchanged(&full, &facts, Some("123"), same));
        assert!(!unchanged(&full, &facts, Some("124"), same), "changed");
        assert!(!unchanged(&full, &facts, None, same), "no checksum");
        assert!(
            !unchanged(&full, &facts, Some("123"), None),
            "never recorded"
        );
        assert!(
            !unchanged(
                &full,
                &facts,
                Some("123"),
                Some(("123", UNCHANGED_SKIP_MAX_SECONDS))
            ),
            "a day old"
        );
        for facts in [
            TableFacts {
                force_full: true,
                ..facts.clone()
            },
            TableFacts {
                destination_created: true,
                ..facts.clone()
            },
            TableFacts {
                added_columns: vec!["New".into()],
                ..facts.clone()
            },
        ] {
            assert!(!unchanged(&full, &facts, Some("123"), same), "{facts:?}");
        }
        assert!(
            !unchanged(&procedurelog(), &ready(), Some("123"), same),
            "incremental tables are never skipped this way"
        );
    }

    #[test]
    fn a_watermarked_table_is_read_incrementally() {
        let d = resolve(&procedurelog(), &ready());
        assert_eq!(
            d.strategy,
            Strategy::Incremental {
                columns: vec!["DateTStamp".into()]
            }
        );
        assert_eq!(d.reason, "watermark on (DateTStamp, ProcNum)");
    }

    #[test]
    fn each_reason_for_a_full_refresh_is_named() {
        let cfg = procedurelog();
        let cases: Vec<(TableFacts, &str)> = vec![
            (
                TableFacts {
                    force_full: true,
                    ..ready()
                },
                "--force-full",
            ),
            (
                TableFacts {
                    key: vec![],
                    ..ready()
                },
                "no primary key",
            ),
            (
                TableFacts {
                    destination_created: true,
                    ..ready()
                },
                "first load",
            ),
            (
                TableFacts {
                    added_columns: vec!["New".into()],
                    ..ready()
                },
                "added column(s) New",
            ),
            (
                TableFacts {
                    watermarked_columns: HashSet::new(),
                    ..ready()
                },
                "no watermark",
            ),
            (
                TableFacts {
                    altered_columns: vec!["Fee".into()],
                    ..ready()
                },
                "changed the type of column(s) Fee",
            ),
            (
                TableFacts {
                    orderable_columns: HashSet::new(),
                    ..ready()
                },
                "not an integer",
            ),
        ];
        for (facts, expected) in cases {
            let d = resolve(&cfg, &facts);
            assert_eq!(d.strategy, Strategy::Full);
            assert!(d.reason.contains(expected), "{} vs {expected}", d.reason);
        }
        let full_table = TableConfig::full_table("procedurelog");
        assert!(resolve(&full_table, &ready()).reason.contains("full_table"));
    }
}
