//! `analyze`: writes the table configuration from a live OpenDental database.
//!
//! Sizes come from `information_schema` (no scans); each table's watermark
//! candidates (OpenDental's change-tracking columns and any `timestamp … on
//! update current_timestamp`) are profiled in one query per table (min, max,
//! NULLs, zero dates, values outside 2000-01-01 … tomorrow) and ranked; the
//! profile behind every choice is written beside it as YAML comments.

mod dbt;
mod phi;

pub use dbt::{Docs, SourceOf, dbt_sources, parse_docs};
pub use phi::PhiKind;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};

use std::path::Path;

use crate::config::{Mask, MySqlSettings, TablesConfig, write_atomically};
use crate::error::{Error, Result};
use crate::mysql as my;
use crate::reconcile;
use crate::schema::{SourceType, ident, value_to_text};

/// Name patterns of OpenDental's change-tracking columns, best first: the
/// edit stamps catch updates, the entry stamps only inserts.
const PATTERNS: [(&str, u8); 7] = [
    ("DateTStamp", 1),
    ("SecDateTEdit", 1),
    ("SecDateTEntry", 3),
    ("DateTEntry", 3),
    ("DateTimeEntry", 3),
    ("SecDateEntry", 4),
    ("DateEntry", 4),
];
/// Share of NULL, zero or out-of-bounds values above which a column cannot
/// be a watermark: most of its changes would be invisible to it.
const MAX_BAD_SHARE: f64 = 0.05;
/// Tables below this many rows are refreshed in full: cheaper than tracking.
const FULL_REFRESH_BELOW_ROWS: u64 = 10_000;
/// From this size on, key reconciliation (a pass over the key index on
/// each side) runs every few hours rather than every run.
const RECONCILE_HOURLY_FROM_ROWS: u64 = 1_000_000;
const RECONCILE_EVERY_HOURS: u32 = 6;
/// Row reconciliation (a hash of every row on both sides of each hop) for
/// tables whose watermark is an entry stamp: hourly below this size, as
/// often as an edit may wait; every [`ROW_RECONCILE_LARGE_HOURS`] hours
/// from it, a night's worth of hashing at most once a day.
const ROW_RECONCILE_DAILY_FROM_ROWS: u64 = 1_000_000;
const ROW_RECONCILE_SMALL_HOURS: u32 = 1;
const ROW_RECONCILE_LARGE_HOURS: u32 = 24;
/// Rank of the entry stamps in [`PATTERNS`]: they never move on an edit.
const ENTRY_STAMP_RANK: u8 = 3;
/// Bytes of rows per batch the generated `batch_size` aims at.
const TARGET_BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// The lower quality bound written when a column holds older values.
const DEFAULT_MIN_DATE: &str = "2000-01-01";

/// A profiled watermark candidate.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub column: String,
    pub on_update: bool,
    pub rank: u8,
    pub integer_key: bool,
    pub indexed: bool,
    pub min: Option<String>,
    pub max: Option<String>,
    pub nulls: u64,
    pub zero_dates: u64,
    pub outside: u64,
    pub rows: u64,
    pub rejected: Option<String>,
}

impl Candidate {
    fn bad_share(&self) -> f64 {
        if self.rows == 0 {
            return 0.0;
        }
        (self.nulls + self.zero_dates + self.outside) as f64 / self.rows as f64
    }
}

/// What `analyze` decided for one table.
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub name: String,
    pub estimated_rows: u64,
    pub size_mb: f64,
    pub avg_row_bytes: u64,
    pub primary_key: Vec<String>,
    pub columns: Vec<String>,
    /// `COLUMN_TYPE` of each column, for the table's schema hash.
    pub column_types: Vec<String>,
    pub candidates: Vec<Candidate>,
    pub chosen: Option<String>,
    pub append_only: bool,
    /// Every primary-key column can be compared by key reconciliation.
    pub reconcilable_key: bool,
    pub notes: Vec<String>,
    /// Likely patient data among the columns (never the key or the
    /// watermark), set by [`apply_phi`].
    pub phi: Vec<(String, PhiKind)>,
    /// The column policy written for the table.
    pub exclude: Vec<String>,
    pub mask: BTreeMap<String, Mask>,
}

#[derive(Debug, Default)]
struct RawColumn {
    name: String,
    data_type: String,
    column_type: String,
    extra: String,
}

impl RawColumn {
    /// The column's type, where this tool understands it.
    fn ty(&self) -> Option<SourceType> {
        SourceType::parse(
            &self.data_type,
            &self.column_type,
            None,
            None,
            None,
            None,
            false,
        )
        .ok()
    }
}

fn text(row: &mut Row, i: usize) -> String {
    my::row_text(row, i)
}

fn number(row: &mut Row, i: usize) -> u64 {
    my::row_number(row, i).unwrap_or(0)
}

fn is_tool_table(name: &str) -> bool {
    name.starts_with("etl_copy_")
        || name.ends_with("__etl_shadow")
        || name.ends_with("__etl_retired")
}

/// Profiles every table of the source database.
pub async fn analyze(source: &MySqlSettings) -> Result<Vec<TablePlan>> {
    let mut conn = my::connect(source).await?;
    let db = source.database.as_str();
    let err = |what: &str| {
        let what = what.to_string();
        move |e| Error::mysql(format!("reading {what} of `{db}`"), e)
    };
    let tables: Vec<Row> = conn
        .exec(
            "SELECT TABLE_NAME, TABLE_ROWS, DATA_LENGTH + INDEX_LENGTH, AVG_ROW_LENGTH FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
            (db,),
        )
        .await
        .map_err(err("the tables"))?;
    let columns: Vec<Row> = conn
        .exec(
            "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, EXTRA FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, ORDINAL_POSITION",
            (db,),
        )
        .await
        .map_err(err("the columns"))?;
    let stats: Vec<Row> = conn
        .exec(
            "SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
            (db,),
        )
        .await
        .map_err(err("the indexes"))?;
    let mut by_table: BTreeMap<String, Vec<RawColumn>> = BTreeMap::new();
    for mut r in columns {
        let table = text(&mut r, 0);
        by_table.entry(table).or_default().push(RawColumn {
            name: text(&mut r, 1),
            data_type: text(&mut r, 2),
            column_type: text(&mut r, 3),
            extra: text(&mut r, 4).to_ascii_lowercase(),
        });
    }
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut leading: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for mut r in stats {
        let table = text(&mut r, 0);
        let index = text(&mut r, 1);
        let seq = number(&mut r, 2);
        let column = text(&mut r, 3);
        if index == "PRIMARY" {
            keys.entry(table.clone()).or_default().push(column.clone());
        }
        if seq == 1 {
            leading.entry(table).or_default().push(column);
        }
    }
    let mut plans = Vec::new();
    for mut r in tables {
        let name = text(&mut r, 0);
        if is_tool_table(&name) {
            continue;
        }
        let estimated_rows = number(&mut r, 1);
        let bytes = number(&mut r, 2);
        let avg_row_bytes = number(&mut r, 3);
        let cols = by_table.remove(&name).unwrap_or_default();
        let primary_key = keys.remove(&name).unwrap_or_default();
        let indexed = leading.remove(&name).unwrap_or_default();
        let plan = plan_table(
            &mut conn,
            &name,
            estimated_rows,
            bytes,
            avg_row_bytes,
            &cols,
            primary_key,
            &indexed,
        )
        .await?;
        plans.push(plan);
    }
    Ok(plans)
}

#[allow(clippy::too_many_arguments)]
async fn plan_table(
    conn: &mut Conn,
    name: &str,
    estimated_rows: u64,
    bytes: u64,
    avg_row_bytes: u64,
    cols: &[RawColumn],
    primary_key: Vec<String>,
    indexed: &[String],
) -> Result<TablePlan> {
    let mut candidates = Vec::new();
    for c in cols {
        let temporal = matches!(c.data_type.as_str(), "date" | "datetime" | "timestamp");
        if !temporal {
            continue;
        }
        let on_update = c.data_type == "timestamp" && c.extra.contains("on update");
        let rank = if on_update {
            Some(0)
        } else {
            PATTERNS
                .iter()
                .find(|(p, _)| c.name.eq_ignore_ascii_case(p))
                .map(|(_, r)| *r)
        };
        let Some(rank) = rank else { continue };
        candidates.push(Candidate {
            column: c.name.clone(),
            on_update,
            rank,
            integer_key: false,
            indexed: indexed.contains(&c.name),
            min: None,
            max: None,
            nulls: 0,
            zero_dates: 0,
            outside: 0,
            rows: 0,
            rejected: None,
        });
    }
    let mut notes = Vec::new();
    let checks = type_checks(cols);
    if !candidates.is_empty() || !checks.is_empty() {
        notes.extend(profile(conn, name, &mut candidates, &checks).await?);
    }
    let mut usable: Vec<&Candidate> = candidates
        .iter_mut()
        .map(|c| {
            if c.rows > 0 && c.bad_share() > MAX_BAD_SHARE {
                c.rejected = Some(format!(
                    "{:.0}% of values are NULL, zero or outside {DEFAULT_MIN_DATE}…tomorrow",
                    c.bad_share() * 100.0
                ));
            } else if c.rows > 0 && c.max.is_none() {
                c.rejected = Some("no value".into());
            }
            &*c
        })
        .filter(|c| c.rejected.is_none())
        .collect();
    usable.sort_by(|a, b| {
        a.rank
            .cmp(&b.rank)
            .then(b.indexed.cmp(&a.indexed))
            .then(a.bad_share().total_cmp(&b.bad_share()))
    });
    let mut chosen = usable.first().map(|c| c.column.clone());
    let auto_increment_key = primary_key.len() == 1
        && cols.iter().any(|c| {
            c.name == primary_key[0]
                && c.extra.contains("auto_increment")
                && matches!(c.ty(), Some(SourceType::Integer { .. }))
        });
    let reconcilable_key = !primary_key.is_empty()
        && primary_key.iter().all(|k| {
            cols.iter()
                .any(|c| c.name == *k && c.ty().is_some_and(|t| reconcile::reconcilable_type(&t)))
        });
    let mut append_only = false;
    if chosen.is_none() && auto_increment_key {
        chosen = Some(primary_key[0].clone());
        append_only = true;
        notes.push(
            "no change-tracking column: append-only, watermark on the auto-increment key".into(),
        );
    }
    if primary_key.is_empty() {
        notes.push("no primary key: refreshed in full every run".into());
    }
    Ok(TablePlan {
        name: name.to_string(),
        estimated_rows,
        size_mb: bytes as f64 / 1_048_576.0,
        avg_row_bytes,
        primary_key,
        columns: cols.iter().map(|c| c.name.clone()).collect(),
        column_types: cols.iter().map(|c| c.column_type.clone()).collect(),
        candidates,
        chosen,
        append_only,
        reconcilable_key,
        notes,
        phi: Vec::new(),
        exclude: Vec::new(),
        mask: BTreeMap::new(),
    })
}

/// A column whose MySQL type alone misleads: an expression counting the
/// rows that show it, and what to say when some do.
struct TypeCheck {
    expr: String,
    finding: String,
}

fn type_checks(cols: &[RawColumn]) -> Vec<TypeCheck> {
    let mut checks = Vec::new();
    for c in cols {
        let col = ident::mysql(&c.name);
        let lower = c.column_type.to_ascii_lowercase();
        let (expr, finding) = match c.data_type.as_str() {
            "tinyint" if lower.starts_with("tinyint(1)") => (
                format!("SUM({col} NOT IN (0, 1))"),
                "tinyint(1) holding values other than 0 and 1: loads as smallint, not boolean",
            ),
            "time" => (
                format!("SUM({col} < '00:00:00' OR {col} > '24:00:00')"),
                "time values outside 00:00–24:00: loads as interval",
            ),
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => (
                format!("SUM(LOCATE(CHAR(0), {col}) > 0)"),
                "text holding NUL bytes, which PostgreSQL text cannot store: the load fails on them until the column is mapped to bytea",
            ),
            "date" | "datetime" | "timestamp" => (
                format!("SUM(MONTH({col}) = 0 OR DAYOFMONTH({col}) = 0)"),
                "zero dates (or zero months/days): loaded as NULL and counted in each run's report",
            ),
            _ => continue,
        };
        checks.push(TypeCheck {
            expr,
            finding: format!("column {}: {{n}} row(s) with {finding}", c.name),
        });
    }
    checks
}

/// Profiles candidates and type checks in one scan; returns the findings.
async fn profile(
    conn: &mut Conn,
    table: &str,
    candidates: &mut [Candidate],
    checks: &[TypeCheck],
) -> Result<Vec<String>> {
    let mut exprs = vec!["COUNT(*)".to_string()];
    for c in candidates.iter() {
        let col = ident::mysql(&c.column);
        exprs.push(format!(
            "MIN(CASE WHEN {col} >= '1000-01-01' THEN {col} END)"
        ));
        exprs.push(format!("MAX({col})"));
        exprs.push(format!("SUM({col} IS NULL)"));
        exprs.push(format!("SUM({col} < '1000-01-01')"));
        exprs.push(format!(
            "SUM({col} >= '1000-01-01' AND ({col} < '{DEFAULT_MIN_DATE}' OR {col} > NOW() + INTERVAL 1 DAY))"
        ));
    }
    exprs.extend(checks.iter().map(|c| c.expr.clone()));
    let sql = format!("SELECT {} FROM {}", exprs.join(", "), ident::mysql(table));
    let row: Option<Row> = conn
        .exec_first(sql, ())
        .await
        .map_err(|e| Error::mysql(format!("profiling `{table}`"), e))?;
    let Some(mut row) = row else {
        return Ok(Vec::new());
    };
    let rows = number(&mut row, 0);
    for (i, c) in candidates.iter_mut().enumerate() {
        let at = 1 + i * 5;
        c.rows = rows;
        c.min = row.take::<Value, _>(at).as_ref().and_then(value_to_text);
        c.max = row
            .take::<Value, _>(at + 1)
            .as_ref()
            .and_then(value_to_text);
        c.nulls = number(&mut row, at + 2);
        c.zero_dates = number(&mut row, at + 3);
        c.outside = number(&mut row, at + 4);
    }
    let first_check = 1 + candidates.len() * 5;
    let mut findings = Vec::new();
    for (i, check) in checks.iter().enumerate() {
        let n = number(&mut row, first_check + i);
        if n > 0 {
            findings.push(check.finding.replace("{n}", &n.to_string()));
        }
    }
    Ok(findings)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn category(rows: u64) -> &'static str {
    match rows {
        r if r >= 1_000_000 => "large",
        r if r >= 100_000 => "medium",
        r if r >= 10_000 => "small",
        _ => "tiny",
    }
}

/// Renders `tables.yml`: a metadata block, then one entry per table with
/// the profile behind each choice as comments.
/// The `tables.yml` text for `plans`; `defaults` holds the `defaults:` and
/// `schedules:` blocks (their own YAML text) carried from the previous file.
pub fn render(
    plans: &[TablePlan],
    defaults: Option<&str>,
    environment: &str,
    generated_at: &str,
    schema_hash: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Generated by `etl-pipeline analyze`. Edits belong in an override file; see the README."
    );
    let _ = writeln!(out, "metadata:");
    let _ = writeln!(out, "  generated_at: {}", quote(generated_at));
    let _ = writeln!(
        out,
        "  analyzer_version: {}",
        quote(env!("CARGO_PKG_VERSION"))
    );
    let _ = writeln!(out, "  environment: {}", quote(environment));
    let _ = writeln!(out, "  total_tables: {}", plans.len());
    let _ = writeln!(out, "  schema_hash: {}", quote(schema_hash));
    if let Some(defaults) = defaults {
        out.push_str(defaults);
    }
    let _ = writeln!(out, "tables:");
    for p in plans {
        let cat = category(p.estimated_rows);
        let incremental = p.chosen.is_some()
            && !p.primary_key.is_empty()
            && p.estimated_rows >= FULL_REFRESH_BELOW_ROWS;
        let batch =
            (TARGET_BATCH_BYTES / p.avg_row_bytes.max(1)).clamp(1_000, 100_000) / 1_000 * 1_000;
        let _ = writeln!(out, "  {}:", quote(&p.name));
        let _ = writeln!(out, "    table_name: {}", quote(&p.name));
        for c in &p.candidates {
            let _ = writeln!(
                out,
                "    # candidate {}: rank {}{}{}, {} rows, min {}, max {}, {} NULL, {} zero or 0001-01-01 dates, {} outside bounds{}",
                c.column,
                c.rank,
                if c.on_update {
                    ", on update current_timestamp"
                } else {
                    ""
                },
                if c.indexed { ", indexed" } else { ", no index" },
                c.rows,
                c.min.as_deref().unwrap_or("-"),
                c.max.as_deref().unwrap_or("-"),
                c.nulls,
                c.zero_dates,
                c.outside,
                c.rejected
                    .as_deref()
                    .map(|r| format!(" — rejected: {r}"))
                    .unwrap_or_default()
            );
        }
        for n in &p.notes {
            let _ = writeln!(out, "    # {n}");
        }
        if !incremental && p.chosen.is_some() && p.estimated_rows < FULL_REFRESH_BELOW_ROWS {
            let _ = writeln!(
                out,
                "    # under {FULL_REFRESH_BELOW_ROWS} rows: a full refresh costs less than tracking"
            );
        }
        let _ = writeln!(
            out,
            "    extraction_strategy: {}",
            if incremental {
                "incremental"
            } else {
                "full_table"
            }
        );
        let _ = writeln!(out, "    estimated_rows: {}", p.estimated_rows);
        let _ = writeln!(out, "    estimated_size_mb: {:.2}", p.size_mb);
        let _ = writeln!(out, "    batch_size: {batch}");
        let incremental_columns: Vec<String> = p.chosen.iter().map(|c| quote(c)).collect();
        let _ = writeln!(
            out,
            "    incremental_columns: [{}]",
            incremental_columns.join(", ")
        );
        match &p.chosen {
            Some(c) => {
                let _ = writeln!(out, "    primary_incremental_column: {}", quote(c));
            }
            None => {
                let _ = writeln!(out, "    primary_incremental_column: null");
            }
        }
        let _ = writeln!(
            out,
            "    sync_profile: {}",
            if p.append_only {
                "append_only"
            } else {
                "in_place_updates"
            }
        );
        match p.primary_key.as_slice() {
            [] => {}
            [one] => {
                let _ = writeln!(out, "    primary_key: {}", quote(one));
            }
            many => {
                let keys: Vec<String> = many.iter().map(|k| quote(k)).collect();
                let _ = writeln!(out, "    primary_key: [{}]", keys.join(", "));
            }
        }
        let entry_stamped = p
            .chosen
            .as_ref()
            .and_then(|c| p.candidates.iter().find(|x| &x.column == c))
            .is_some_and(|c| c.rank >= ENTRY_STAMP_RANK && !c.on_update);
        if incremental && p.reconcilable_key && entry_stamped {
            let hours = if p.estimated_rows >= ROW_RECONCILE_DAILY_FROM_ROWS {
                ROW_RECONCILE_LARGE_HOURS
            } else {
                ROW_RECONCILE_SMALL_HOURS
            };
            let _ = writeln!(
                out,
                "    # the watermark is an entry stamp, blind to edits: rows compared every {hours} hour(s)"
            );
            let _ = writeln!(out, "    reconcile: rows");
            let _ = writeln!(out, "    reconcile_every_hours: {hours}");
        } else if incremental && p.reconcilable_key {
            let _ = writeln!(out, "    delete_detection: key_reconcile");
            if p.estimated_rows >= RECONCILE_HOURLY_FROM_ROWS {
                let _ = writeln!(
                    out,
                    "    # {RECONCILE_HOURLY_FROM_ROWS}+ rows: deletes looked for every {RECONCILE_EVERY_HOURS} hours, not every run"
                );
                let _ = writeln!(out, "    reconcile_every_hours: {RECONCILE_EVERY_HOURS}");
            }
        }
        let chosen = p
            .chosen
            .as_ref()
            .and_then(|c| p.candidates.iter().find(|x| &x.column == c));
        if let Some(c) = chosen
            && (c.outside > 0 || c.zero_dates > 0)
        {
            let _ = writeln!(
                out,
                "    data_quality_filters: {{min_date: {}}}",
                quote(DEFAULT_MIN_DATE)
            );
        }
        let _ = writeln!(out, "    performance_category: {cat}");
        let priority = match cat {
            "large" | "medium" => "high",
            "small" => "medium",
            _ => "low",
        };
        let _ = writeln!(out, "    processing_priority: {priority}");
        render_phi(&mut out, p);
        let cols: Vec<String> = p.columns.iter().map(|c| quote(c)).collect();
        let _ = writeln!(out, "    column_names: [{}]", cols.join(", "));
        let _ = writeln!(out, "    schema_hash: {}", quote(&table_hash(p)));
    }
    out
}

/// A table's likely patient columns as a comment, and its column policy.
fn render_phi(out: &mut String, p: &TablePlan) {
    if !p.phi.is_empty() {
        let listed: Vec<String> = p
            .phi
            .iter()
            .map(|(c, k)| {
                let fate = if p.exclude.contains(c) {
                    "excluded".to_string()
                } else {
                    p.mask.get(c).map_or("kept in clear".to_string(), |m| {
                        format!("masked: {}", m.name())
                    })
                };
                format!("{c} ({}, {fate})", k.name())
            })
            .collect();
        let _ = writeln!(out, "    # likely PHI: {}", listed.join(", "));
    }
    if !p.exclude.is_empty() {
        let cols: Vec<String> = p.exclude.iter().map(|c| quote(c)).collect();
        let _ = writeln!(out, "    exclude_columns: [{}]", cols.join(", "));
    }
    if !p.mask.is_empty() {
        let masks: Vec<String> = p
            .mask
            .iter()
            .map(|(c, m)| format!("{}: {}", quote(c), m.name()))
            .collect();
        let _ = writeln!(out, "    mask_columns: {{{}}}", masks.join(", "));
    }
}

/// What `analyze --phi` writes for the columns it flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhiPolicy {
    /// Flag them in comments only.
    Keep,
    Exclude,
    Mask,
}

/// A previous `tables.yml` as far as a person wrote it: its `defaults:`
/// and `schedules:` blocks (as YAML text) and each table's own column
/// policy.
#[derive(Debug, Default)]
pub struct PreviousPolicy {
    pub defaults: Option<String>,
    tables: BTreeMap<String, (Vec<String>, BTreeMap<String, Mask>)>,
}

impl PreviousPolicy {
    /// Reads the policy of a previous `tables.yml` text.
    pub fn read(previous: &str) -> Result<PreviousPolicy> {
        use serde_norway::Value;
        let old: Value =
            serde_norway::from_str(previous).map_err(|e| Error::config(e.to_string()))?;
        // A person's blocks: the policy defaults, and `serve`'s schedules.
        let mut kept = serde_norway::Mapping::new();
        for block in ["defaults", "schedules"] {
            if let Some(value) = old.get(block) {
                kept.insert(Value::from(block), value.clone());
            }
        }
        let defaults = match kept.is_empty() {
            true => None,
            false => {
                Some(serde_norway::to_string(&kept).map_err(|e| Error::config(e.to_string()))?)
            }
        };
        let mut tables = BTreeMap::new();
        for (name, entry) in old
            .get("tables")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
        {
            let Some(name) = name.as_str() else { continue };
            let exclude: Vec<String> = entry
                .get("exclude_columns")
                .map(|v| serde_norway::from_value(v.clone()))
                .transpose()
                .map_err(|e| Error::config(format!("tables.{name}.exclude_columns: {e}")))?
                .unwrap_or_default();
            let mask: BTreeMap<String, Mask> = entry
                .get("mask_columns")
                .map(|v| serde_norway::from_value(v.clone()))
                .transpose()
                .map_err(|e| Error::config(format!("tables.{name}.mask_columns: {e}")))?
                .unwrap_or_default();
            if !exclude.is_empty() || !mask.is_empty() {
                tables.insert(name.to_string(), (exclude, mask));
            }
        }
        Ok(PreviousPolicy { defaults, tables })
    }
}

/// Flags the likely patient columns of every plan (with OpenDental's
/// documentation when given) and sets each table's column policy: the
/// previous file's, which is never weakened, plus, under `policy`, the
/// flagged columns it does not cover yet. A key or watermark column is
/// never flagged.
pub fn apply_phi(
    plans: &mut [TablePlan],
    docs: Option<&Docs>,
    policy: PhiPolicy,
    previous: &PreviousPolicy,
) {
    for p in plans {
        let columns: Vec<(String, String)> = p
            .columns
            .iter()
            .cloned()
            .zip(p.column_types.iter().cloned())
            .collect();
        p.phi = phi::flag(&p.name, &columns, docs)
            .into_iter()
            .filter(|(c, _)| !p.primary_key.contains(c) && p.chosen.as_ref() != Some(c))
            .collect();
        let (exclude, mask) = previous.tables.get(&p.name).cloned().unwrap_or_default();
        p.exclude = exclude;
        p.mask = mask;
        for (column, kind) in &p.phi {
            let covered = p.exclude.contains(column) || p.mask.contains_key(column);
            match policy {
                _ if covered => {}
                PhiPolicy::Keep => {}
                PhiPolicy::Exclude => p.exclude.push(column.clone()),
                PhiPolicy::Mask => {
                    p.mask.insert(column.clone(), kind.mask());
                }
            }
        }
    }
}

/// A hash of a table's columns, types and key (FNV-1a, stable across builds).
fn table_hash(p: &TablePlan) -> String {
    crate::schema::fnv(
        std::iter::once(&p.name)
            .chain(&p.columns)
            .chain(&p.column_types)
            .chain(&p.primary_key),
    )
}

/// A hash over every table's hash, so two analyses tell at a glance
/// whether the schema changed.
pub fn schema_hash(plans: &[TablePlan]) -> String {
    let hashes: Vec<String> = plans.iter().map(table_hash).collect();
    crate::schema::fnv(&hashes)
}

/// The schema changes since the `tables.yml` text `previous` was written:
/// tables added and removed, columns added and removed, and tables whose
/// column definitions changed (by their schema hashes).
pub fn changes_since(previous: &str, plans: &[TablePlan]) -> Result<Vec<String>> {
    use serde_norway::Value;
    let previous_policy = PreviousPolicy::read(previous)?;
    let old: Value = serde_norway::from_str(previous).map_err(|e| Error::config(e.to_string()))?;
    let empty = serde_norway::Mapping::new();
    let old_tables = old
        .get("tables")
        .and_then(Value::as_mapping)
        .unwrap_or(&empty);
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_sequence)
            .map(|s| {
                s.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut changes = Vec::new();
    for p in plans {
        let Some(entry) = old_tables.get(p.name.as_str()) else {
            changes.push(format!("table `{}` added", p.name));
            continue;
        };
        let old_columns = strings(entry.get("column_names"));
        let added: Vec<&String> = p
            .columns
            .iter()
            .filter(|c| !old_columns.contains(c))
            .collect();
        let removed: Vec<&String> = old_columns
            .iter()
            .filter(|c| !p.columns.contains(c))
            .collect();
        for c in &added {
            changes.push(format!("table `{}`: column `{c}` added", p.name));
        }
        for c in &removed {
            changes.push(format!("table `{}`: column `{c}` removed", p.name));
        }
        let old_hash = entry.get("schema_hash").and_then(|h| {
            h.as_str()
                .map(str::to_string)
                .or_else(|| h.as_i64().map(|n| n.to_string()))
        });
        if added.is_empty() && removed.is_empty() && old_hash.is_some_and(|h| h != table_hash(p)) {
            changes.push(format!(
                "table `{}`: column definitions or key changed",
                p.name
            ));
        }
        let (old_exclude, old_mask) = previous_policy
            .tables
            .get(&p.name)
            .cloned()
            .unwrap_or_default();
        let (was, now) = (
            policy_text(&old_exclude, &old_mask),
            policy_text(&p.exclude, &p.mask),
        );
        if was != now {
            changes.push(format!(
                "table `{}`: column policy changed ({was} → {now})",
                p.name
            ));
        }
    }
    for name in old_tables.keys().filter_map(Value::as_str) {
        if !plans.iter().any(|p| p.name == name) {
            changes.push(format!("table `{name}` removed"));
        }
    }
    Ok(changes)
}

/// A table's own column policy in words, for the changelog.
fn policy_text(exclude: &[String], mask: &BTreeMap<String, Mask>) -> String {
    let applied = crate::config::Applied {
        exclude: exclude.to_vec(),
        mask: mask.iter().map(|(c, m)| (c.clone(), *m)).collect(),
    };
    match applied.fingerprint() {
        text if text.is_empty() => "none".to_string(),
        text => text,
    }
}

/// Writes `tables.yml` for `plans` at `path` (checked to parse, written
/// atomically) and appends `changes` to `schema_changelog.md` beside it.
pub fn write_config(
    plans: &[TablePlan],
    defaults: Option<&str>,
    changes: &[String],
    path: &Path,
    environment: &str,
) -> Result<()> {
    let now = crate::outcome::utc_now().to_sql_string().replace(' ', "T") + "Z";
    let text = render(plans, defaults, environment, &now, &schema_hash(plans));
    TablesConfig::parse(&text)?;
    write_atomically(path, &text)?;
    append_changelog(path, &now, changes)
}

/// Appends `changes` (if any), under the heading `when`, to
/// `schema_changelog.md` beside the table config at `tables`.
pub fn append_changelog(tables: &Path, when: &str, changes: &[String]) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let log = tables.with_file_name("schema_changelog.md");
    let mut entry =
        std::fs::read_to_string(&log).unwrap_or_else(|_| "# Schema changelog\n".to_string());
    entry.push_str(&format!("\n## {when}\n\n"));
    for change in changes {
        entry.push_str(&format!("- {change}\n"));
    }
    write_atomically(&log, &entry)
}
