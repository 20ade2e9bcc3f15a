//! The `schedules:` block of the table config: when `serve` runs which
//! tables by itself.
//!
//! ```yaml
//! schedules:
//!   frequent: {cron: "*/15 * * * *", category: small}
//!   nightly: {cron: "0 0 2 * * *", all: true, force_full: false}
//! ```
//!
//! A cron expression has five fields (minute to weekday) or six, a seconds
//! field first, and is read in the machine's local time zone, as cron reads
//! it. Each schedule names exactly one of `category`, `tables` or `all`.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Deserialize;

use super::tables::PerformanceCategory;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    cron: String,
    category: Option<PerformanceCategory>,
    tables: Option<Vec<String>>,
    all: Option<bool>,
    force_full: Option<bool>,
    active: Option<bool>,
}

/// Which tables a schedule runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Category(PerformanceCategory),
    Tables(Vec<String>),
}

impl Selection {
    /// The selection a schedule or a `POST /api/runs` body names: exactly
    /// one of `category` (some table has it), `tables` (each configured)
    /// or `all: true`. An error names the key at fault (none when the
    /// selection itself is) and why.
    pub fn pick(
        (category, tables, all): (
            Option<PerformanceCategory>,
            Option<Vec<String>>,
            Option<bool>,
        ),
        has_table: &impl Fn(&str) -> bool,
        has_category: &impl Fn(PerformanceCategory) -> bool,
    ) -> std::result::Result<Selection, (Option<&'static str>, String)> {
        match (category, tables, all) {
            (Some(category), None, None | Some(false)) => {
                if !has_category(category) {
                    let why = format!(
                        "no table has performance_category {}",
                        category_name(category)
                    );
                    return Err((Some("category"), why));
                }
                Ok(Selection::Category(category))
            }
            (None, Some(tables), None | Some(false)) => {
                if tables.is_empty() {
                    let why = "the list is empty; name at least one table".to_string();
                    return Err((Some("tables"), why));
                }
                if let Some(unknown) = tables.iter().find(|t| !has_table(t)) {
                    let why = format!("table `{unknown}` is not in the table config");
                    return Err((Some("tables"), why));
                }
                Ok(Selection::Tables(tables))
            }
            (None, None, Some(true)) => Ok(Selection::All),
            _ => Err((
                None,
                "name exactly one of `category`, `tables` or `all: true`".to_string(),
            )),
        }
    }
}

/// One validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    /// The expression as written (shown on the operator's page).
    pub pattern: String,
    pub cron: croner::Cron,
    pub selection: Selection,
    pub force_full: bool,
    /// `active: false` pauses a schedule without removing it.
    pub active: bool,
}

impl Schedule {
    /// The first time after `after` the schedule fires, if any, on a
    /// whole second (the cron library keeps the fraction of the second it
    /// is given, which would drift each run past its time).
    pub fn next_after<Tz: chrono::TimeZone>(
        &self,
        after: &chrono::DateTime<Tz>,
    ) -> Option<chrono::DateTime<Tz>> {
        use chrono::Timelike;
        let whole = after.with_nanosecond(0)?;
        self.cron.find_next_occurrence(&whole, false).ok()
    }
}

/// Validates the `schedules:` entries against the tables there are
/// (`has_table`, and `has_category` for a category some table has).
pub(super) fn validate(
    raw: BTreeMap<String, RawSchedule>,
    has_table: impl Fn(&str) -> bool,
    has_category: impl Fn(PerformanceCategory) -> bool,
) -> Result<Vec<Schedule>> {
    let mut schedules = Vec::new();
    for (name, raw) in raw {
        let err = |key: &str, why: String| Error::config(format!("schedules.{name}.{key}: {why}"));
        let cron = croner::Cron::from_str(&raw.cron).map_err(|e| {
            err(
                "cron",
                format!(
                    "`{}` is not a cron expression ({e}); write five fields (minute hour day month weekday) \
                     or six with seconds first, e.g. \"*/15 * * * *\"",
                    raw.cron
                ),
            )
        })?;
        let selection = Selection::pick(
            (raw.category, raw.tables, raw.all),
            &has_table,
            &has_category,
        )
        .map_err(|(key, why)| match key {
            Some(key) => err(key, why),
            None => Error::config(format!("schedules.{name}: {why}")),
        })?;
        schedules.push(Schedule {
            pattern: raw.cron,
            name,
            cron,
            selection,
            force_full: raw.force_full.unwrap_or(false),
            active: raw.active.unwrap_or(true),
        });
    }
    Ok(schedules)
}

/// A category as the config writes it.
pub fn category_name(category: PerformanceCategory) -> &'static str {
    match category {
        PerformanceCategory::Large => "large",
        PerformanceCategory::Medium => "medium",
        PerformanceCategory::Small => "small",
        PerformanceCategory::Tiny => "tiny",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> BTreeMap<String, RawSchedule> {
        serde_norway::from_str(text).unwrap()
    }

    fn check(text: &str) -> Result<Vec<Schedule>> {
        validate(
            raw(text),
            |t| t == "procedurelog",
            |c| c == PerformanceCategory::Small,
        )
    }

    #[test]
    fn five_and_six_field_expressions_are_read() {
        let s = check(
            "frequent: {cron: \"*/15 * * * *\", category: small}\n\
             nightly: {cron: \"0 0 2 * * *\", all: true}\n\
             fast: {cron: \"*/5 * * * * *\", tables: [procedurelog], active: false}",
        )
        .unwrap();
        assert_eq!(s.len(), 3);
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-08T01:07:03+00:00").unwrap();
        let next = |name: &str| {
            let s = s.iter().find(|s| s.name == name).unwrap();
            s.next_after(&at).unwrap().to_rfc3339()
        };
        assert_eq!(next("frequent"), "2026-12-08T01:15:00+00:00");
        assert_eq!(next("nightly"), "2026-12-08T02:00:00+00:00");
        assert_eq!(next("fast"), "2026-12-08T01:07:05+00:00");
        assert!(!s.iter().find(|s| s.name == "fast").unwrap().active);
        // A fraction of a second does not carry into the next time.
        let late = chrono::DateTime::parse_from_rfc3339("2026-12-08T01:07:05.284+00:00").unwrap();
        let fast = s.iter().find(|s| s.name == "fast").unwrap();
        assert_eq!(
            fast.next_after(&late).unwrap().to_rfc3339(),
            "2026-12-08T01:07:10+00:00"
        );
    }

    #[test]
    fn a_broken_schedule_is_named_with_what_to_do() {
        let message = |text: &str| check(text).unwrap_err().to_string();
        assert!(message("a: {cron: \"every day\", all: true}").contains("schedules.a.cron"));
        assert!(message("a: {cron: \"* * * * *\"}").contains("exactly one of"));
        assert!(
            message("a: {cron: \"* * * * *\", all: true, category: small}")
                .contains("exactly one of")
        );
        assert!(message("a: {cron: \"* * * * *\", tables: [nope]}").contains("`nope`"));
        assert!(message("a: {cron: \"* * * * *\", category: large}").contains("large"));
        assert!(
            serde_norway::from_str::<BTreeMap<String, RawSchedule>>(
                "a: {cron: \"* * * * *\", all: true, every: 5}"
            )
            .is_err()
        );
    }
}
