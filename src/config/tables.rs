//! The table configuration (`tables.yml`), in the old system's format.
//!
//! Parsed with `serde_norway`, the maintained fork of the archived
//! `serde_yaml`: same data model, and its errors carry the key path, line and
//! column (`tables.patient.batch_size: invalid type ... at line 12 column 17`).
//! Keys the old system wrote that do not drive behaviour here are accepted and
//! ignored; any other key is refused, so a typo never silently changes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::policy::{ColumnPolicy, Mask, RawPolicy};
use super::schedule::{self, RawSchedule, Schedule};
use crate::error::{Error, Result};
use crate::schema::{DateTimeParts, check_date};

/// Rows per batch when a table does not say: large enough to amortise a
/// round trip and a transaction, small enough that a batch of wide rows stays
/// within a few tens of MB.
pub const DEFAULT_BATCH_SIZE: u32 = 10_000;
/// Upper limit on `batch_size`: memory is bounded by batch size, so a typo of
/// one zero too many must not turn into gigabytes.
pub const MAX_BATCH_SIZE: u32 = 1_000_000;
/// Seconds an incremental run re-reads before a temporal watermark, to catch
/// transactions that committed after the previous run read past their
/// timestamp. Ten minutes covers any OpenDental transaction we have seen and
/// costs only the rows changed in that span.
pub const DEFAULT_LOOKBACK_SECONDS: u64 = 600;
/// Keys an incremental run re-reads below an integer (auto-increment)
/// watermark: InnoDB hands out ids at insert time, so a slow transaction can
/// commit a lower id after a higher one was read.
pub const DEFAULT_LOOKBACK_KEYS: u64 = 1_000;
/// Seconds a date-time watermark may lie past the source server's clock at
/// the start of a run and still count: a workstation writing its own clock
/// into an entry stamp runs a little ahead. Rows stamped further ahead are
/// looked at every run (carried when they change) without moving the watermark. The allowance never
/// exceeds `lookback_seconds`, so a watermark that far ahead is still
/// re-read past by the next run's look-back.
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;

/// Share of a table a key reconciliation may delete before it stops and
/// asks for `--allow-mass-delete`: a broken or emptied source must never
/// wipe the warehouse.
pub const DEFAULT_MAX_DELETE_SHARE: f64 = 0.10;

/// How a copy is reconciled with what it is read from (`reconcile:`, or
/// the older `delete_detection:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteDetection {
    /// Deleted rows stay until a full refresh.
    #[default]
    None,
    /// Compare the primary-key sets of each copy with the one it is read
    /// from (`reconcile: keys`, `delete_detection: key_reconcile`).
    KeyReconcile,
    /// Compare a hash of every column as well (`reconcile: rows`): rows
    /// changed without their watermark moving are copied again, missing
    /// ones copied, extra ones deleted.
    RowReconcile,
}

/// The values of the older `delete_detection:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawDeleteDetection {
    None,
    KeyReconcile,
}

/// The values of `reconcile:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawReconcile {
    None,
    Keys,
    Rows,
}

impl From<RawReconcile> for DeleteDetection {
    fn from(raw: RawReconcile) -> DeleteDetection {
        match raw {
            RawReconcile::None => DeleteDetection::None,
            RawReconcile::Keys => DeleteDetection::KeyReconcile,
            RawReconcile::Rows => DeleteDetection::RowReconcile,
        }
    }
}

/// How rows deleted at the source are found and what happens to them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DeletePolicy {
    pub detection: DeleteDetection,
    /// Reconcile once this many runs (1: every run).
    pub every_runs: Option<u32>,
    /// Reconcile when the last reconciliation is this many hours old.
    pub every_hours: Option<u32>,
    /// Keep deleted rows in the warehouse, stamped in `_deleted_at`.
    pub soft_delete: bool,
    /// Largest share of a table one reconciliation may delete.
    pub max_share: f64,
}

/// How the config says a table is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractionStrategy {
    /// Always a full refresh.
    FullTable,
    /// By watermark.
    Incremental,
    /// By watermark (the old system's name for large tables read in chunks).
    IncrementalChunked,
}

/// The old system's size classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PerformanceCategory {
    Large,
    Medium,
    Small,
    Tiny,
}

/// The old system's processing priorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingPriority {
    High,
    Medium,
    Low,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQualityFilters {
    min_date: Option<String>,
    max_date: Option<String>,
}

/// Bounds on which watermark values count: dates outside them (year 1902,
/// 2099) never move a watermark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QualityBounds {
    pub min: Option<DateTimeParts>,
    pub max: Option<DateTimeParts>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitoring {
    alert_on_failure: Option<bool>,
    alert_on_slow_extraction: Option<bool>,
    performance_threshold_records_per_second: Option<f64>,
    memory_alert_threshold_mb: Option<f64>,
}

/// When a table raises alerts (`monitoring:`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Monitoring {
    /// Alert when a phase of the table ends failed.
    pub alert_on_failure: bool,
    /// Alert when a phase runs below `min_rows_per_second` or above
    /// `max_memory_mb` (whichever are set).
    pub alert_on_performance: bool,
    pub min_rows_per_second: Option<f64>,
    pub max_memory_mb: Option<f64>,
}

impl Default for Monitoring {
    /// Failures alert; speed and memory do not until thresholds are given.
    fn default() -> Monitoring {
        Monitoring {
            alert_on_failure: true,
            alert_on_performance: false,
            min_rows_per_second: None,
            max_memory_mb: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    table_name: Option<String>,
    extraction_strategy: ExtractionStrategy,
    #[serde(default)]
    incremental_columns: Vec<String>,
    #[serde(default)]
    primary_incremental_column: Option<String>,
    #[serde(default)]
    primary_key: Option<OneOrMany>,
    batch_size: Option<u32>,
    data_quality_filters: Option<RawQualityFilters>,
    performance_category: Option<PerformanceCategory>,
    processing_priority: Option<ProcessingPriority>,
    lookback_seconds: Option<u64>,
    lookback_keys: Option<u64>,
    clock_skew_seconds: Option<u64>,
    estimated_rows: Option<u64>,
    delete_detection: Option<RawDeleteDetection>,
    reconcile: Option<RawReconcile>,
    reconcile_every_runs: Option<u32>,
    reconcile_every_hours: Option<u32>,
    soft_delete: Option<bool>,
    max_delete_share: Option<f64>,
    time_gap_threshold_days: Option<u32>,
    timeout_seconds: Option<u64>,
    retry_count: Option<u32>,
    monitoring: Option<RawMonitoring>,
    exclude_columns: Option<Vec<String>>,
    mask_columns: Option<BTreeMap<String, Mask>>,
    // Written by the old system's analyzer; accepted, not used here.
    #[serde(rename = "estimated_size_mb")]
    _estimated_size_mb: Option<IgnoredAny>,
    #[serde(rename = "incremental_strategy")]
    _incremental_strategy: Option<IgnoredAny>,
    #[serde(rename = "sync_profile")]
    _sync_profile: Option<IgnoredAny>,
    #[serde(rename = "replicator_watermark_column")]
    _replicator_watermark_column: Option<IgnoredAny>,
    #[serde(rename = "is_modeled")]
    _is_modeled: Option<IgnoredAny>,
    #[serde(rename = "dbt_model_types")]
    _dbt_model_types: Option<IgnoredAny>,
    #[serde(rename = "column_names")]
    _column_names: Option<IgnoredAny>,
    #[serde(rename = "estimated_processing_time_minutes")]
    _estimated_processing_time_minutes: Option<IgnoredAny>,
    #[serde(rename = "memory_requirements_mb")]
    _memory_requirements_mb: Option<IgnoredAny>,
    #[serde(rename = "schema_hash")]
    _schema_hash: Option<IgnoredAny>,
    #[serde(rename = "last_analyzed")]
    _last_analyzed: Option<IgnoredAny>,
    #[serde(rename = "lookback_resync")]
    _lookback_resync: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map with a `tables:` key")]
struct RawFile {
    #[serde(rename = "metadata")]
    _metadata: Option<IgnoredAny>,
    defaults: Option<RawPolicy>,
    tables: Option<RawTables>,
    schedules: Option<BTreeMap<String, RawSchedule>>,
}

/// The `tables:` map. A table listed twice is refused: YAML parsers keep
/// the last entry, which would silently drop the first one's settings.
#[derive(Debug)]
struct RawTables(BTreeMap<String, RawTable>);

impl<'de> Deserialize<'de> for RawTables {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Tables;
        impl<'de> serde::de::Visitor<'de> for Tables {
            type Value = RawTables;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of table names to their settings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<RawTables, A::Error> {
                let mut tables = BTreeMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    if tables.contains_key(&name) {
                        return Err(serde::de::Error::custom(format!(
                            "table `{name}` is listed twice; keep one entry"
                        )));
                    }
                    let table = map.next_value::<RawTable>()?;
                    tables.insert(name, table);
                }
                Ok(RawTables(tables))
            }
        }
        d.deserialize_map(Tables)
    }
}

/// One table's validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TableConfig {
    pub name: String,
    pub extraction_strategy: ExtractionStrategy,
    pub incremental_columns: Vec<String>,
    /// `None` when the config says `none`/`null`: OR across `incremental_columns`.
    pub primary_incremental_column: Option<String>,
    pub primary_key: Vec<String>,
    pub batch_size: u32,
    pub quality: QualityBounds,
    pub performance_category: Option<PerformanceCategory>,
    pub processing_priority: ProcessingPriority,
    pub lookback_seconds: u64,
    pub lookback_keys: u64,
    /// Seconds past the source clock a date-time watermark may lie.
    pub clock_skew_seconds: u64,
    pub estimated_rows: Option<u64>,
    pub deletes: DeletePolicy,
    /// A table last copied or loaded longer ago than this many days is
    /// refreshed in full instead of read incrementally.
    pub time_gap_days: Option<u32>,
    /// A phase of this table running longer than this is stopped (the batch
    /// in hand rolled back) and retried.
    pub timeout_seconds: Option<u64>,
    /// Tries after the first when a phase fails transiently or times out.
    pub retry_count: Option<u32>,
    pub monitoring: Monitoring,
    /// Columns never read and columns masked on the way out.
    pub columns: ColumnPolicy,
}

impl TableConfig {
    /// A table read in full, with defaults for everything else.
    pub fn full_table(name: &str) -> TableConfig {
        TableConfig {
            name: name.to_string(),
            extraction_strategy: ExtractionStrategy::FullTable,
            incremental_columns: Vec::new(),
            primary_incremental_column: None,
            primary_key: Vec::new(),
            batch_size: DEFAULT_BATCH_SIZE,
            quality: QualityBounds::default(),
            performance_category: None,
            processing_priority: ProcessingPriority::Medium,
            lookback_seconds: DEFAULT_LOOKBACK_SECONDS,
            lookback_keys: DEFAULT_LOOKBACK_KEYS,
            clock_skew_seconds: DEFAULT_CLOCK_SKEW_SECONDS,
            estimated_rows: None,
            deletes: DeletePolicy {
                max_share: DEFAULT_MAX_DELETE_SHARE,
                ..DeletePolicy::default()
            },
            time_gap_days: None,
            timeout_seconds: None,
            retry_count: None,
            monitoring: Monitoring::default(),
            columns: ColumnPolicy::default(),
        }
    }

    /// The watermark columns an incremental read uses: the primary column, or
    /// every incremental column (OR) when there is none.
    pub fn watermark_columns(&self) -> Vec<String> {
        match &self.primary_incremental_column {
            Some(column) => vec![column.clone()],
            None => self.incremental_columns.clone(),
        }
    }

    /// Seconds past the source clock a date-time watermark may lie in this
    /// table: `clock_skew_seconds`, held within `lookback_seconds` so that
    /// a watermark that far ahead cannot hide the edits made meanwhile.
    pub fn skew_allowance(&self) -> u64 {
        self.clock_skew_seconds.min(self.lookback_seconds)
    }

    /// A warning naming the columns this config lists (watermark and
    /// incremental columns) that the table lacks (`has` says which it has),
    /// and what that costs; `None` when all are there.
    pub fn missing_columns_warning(&self, has: impl Fn(&str) -> bool) -> Option<String> {
        let mut named: Vec<&String> = self
            .primary_incremental_column
            .iter()
            .chain(&self.incremental_columns)
            .collect();
        named.dedup();
        let missing: Vec<String> = named
            .into_iter()
            .filter(|c| !has(c))
            .map(|c| format!("`{c}`"))
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "tables.{}: column {} is not in the table; it is refreshed in full every run until the config \
                 names its columns (`etl-pipeline analyze` writes a fresh config)",
                self.name,
                missing.join(", ")
            )
        })
    }
}

/// The whole table configuration, in name order.
#[derive(Debug, Clone, Default)]
pub struct TablesConfig {
    tables: BTreeMap<String, TableConfig>,
    schedules: Vec<Schedule>,
}

/// A YAML error as the parser words it (it names the line and column),
/// with a hint when that line is indented with a tab.
fn yaml_error(text: &str, err: &serde_norway::Error) -> Error {
    let mut message = err.to_string();
    let tabbed = err
        .location()
        .and_then(|at| text.lines().nth(at.line().saturating_sub(1)))
        .is_some_and(|line| {
            line.starts_with(|c: char| c.is_whitespace())
                && line.trim_start_matches(' ').starts_with('\t')
        });
    if tabbed {
        message.push_str(" (YAML indents with spaces; this line starts with a tab)");
    }
    Error::config(message)
}

fn parse_bound(table: &str, key: &str, text: &str) -> Result<DateTimeParts> {
    let bad = || {
        Error::config(format!(
            "tables.{table}.data_quality_filters.{key}: `{text}` is not a date (use YYYY-MM-DD or YYYY-MM-DD HH:MM:SS)"
        ))
    };
    let (date, time) = text
        .trim()
        .split_once([' ', 'T'])
        .unwrap_or((text.trim(), "00:00:00"));
    let mut d = date.split('-').map(|p| p.parse::<u32>());
    let mut t = time.split(':').map(|p| p.parse::<u32>());
    let next = |it: &mut dyn Iterator<Item = std::result::Result<u32, _>>| -> Result<u32> {
        it.next().and_then(|r| r.ok()).ok_or_else(bad)
    };
    let (y, mo, da) = (next(&mut d)?, next(&mut d)?, next(&mut d)?);
    let (h, mi, s) = (next(&mut t)?, next(&mut t)?, next(&mut t)?);
    let narrow = |v: u32| u8::try_from(v).map_err(|_| bad());
    let parts = check_date((
        u16::try_from(y).map_err(|_| bad())?,
        narrow(mo)?,
        narrow(da)?,
        narrow(h)?,
        narrow(mi)?,
        narrow(s)?,
        0,
    ))
    .map_err(|_| bad())?;
    parts.ok_or_else(bad)
}

/// The override file beside a table config: `tables.yml` →
/// `tables.override.yml`. `analyze` never writes it.
pub fn override_path(path: &Path) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.override.yml"))
}

impl TablesConfig {
    /// Reads and validates a `tables.yml` file, merged with its override
    /// file ([`override_path`]) when one exists.
    pub fn load(path: &Path) -> Result<TablesConfig> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| {
                Error::config(format!(
                    "cannot read table config {}: {e}; pass the right file with --tables FILE",
                    p.display()
                ))
            })
        };
        let text = read(path)?;
        fn at(p: &Path) -> impl Fn(Error) -> Error + '_ {
            move |e| Error::config(format!("{}: {}", p.display(), e.message()))
        }
        let base = TablesConfig::parse(&text).map_err(at(path))?;
        let over_path = override_path(path);
        if !over_path.exists() {
            return Ok(base);
        }
        let over = read(&over_path)?;
        TablesConfig::parse_with_override(&text, &over).map_err(at(&over_path))
    }

    /// Parses `tables.yml` text with a person's overrides merged in: each
    /// key an override gives for a table replaces the generated one, and a
    /// table only in the override is added.
    pub fn parse_with_override(text: &str, over: &str) -> Result<TablesConfig> {
        use serde_norway::Value;
        let mut base: Value = serde_norway::from_str(text).map_err(|e| yaml_error(text, &e))?;
        let over: Value = serde_norway::from_str(over).map_err(|e| yaml_error(over, &e))?;
        if let (Some(schedules), Some(base)) = (over.get("schedules"), base.as_mapping_mut()) {
            base.insert(Value::from("schedules"), schedules.clone());
        }
        let over_tables = match over.get("tables") {
            Some(tables) => tables.as_mapping(),
            None if over.get("schedules").is_some() => Some(&serde_norway::Mapping::new()),
            None => None,
        };
        let Some(over_tables) = over_tables else {
            return Err(Error::config(
                "the override file needs a `tables:` map (or a `schedules:` block)",
            ));
        };
        let Some(base_tables) = base.get_mut("tables").and_then(Value::as_mapping_mut) else {
            return Err(Error::config("the table config has no `tables:` map"));
        };
        for (name, keys) in over_tables {
            let Some(keys) = keys.as_mapping() else {
                return Err(Error::config(format!(
                    "tables.{}: expected a map of keys",
                    name.as_str().unwrap_or("?")
                )));
            };
            match base_tables.get_mut(name).and_then(Value::as_mapping_mut) {
                Some(entry) => {
                    for (k, v) in keys {
                        entry.insert(k.clone(), v.clone());
                    }
                }
                None => {
                    base_tables.insert(name.clone(), Value::Mapping(keys.clone()));
                }
            }
        }
        // Through text again, so errors name the key path (`tables.t.batch_size`).
        let merged = serde_norway::to_string(&base).map_err(|e| Error::config(e.to_string()))?;
        TablesConfig::parse(&merged).map_err(|e| {
            Error::config(format!("{} (after merging the override file)", e.message()))
        })
    }

    /// Parses and validates `tables.yml` text.
    pub fn parse(text: &str) -> Result<TablesConfig> {
        if text.trim().is_empty() {
            return Err(Error::config(
                "the table config is empty; it needs a `tables:` map",
            ));
        }
        let raw: RawFile = serde_norway::from_str(text).map_err(|e| yaml_error(text, &e))?;
        TablesConfig::from_raw(raw)
    }

    fn from_raw(raw: RawFile) -> Result<TablesConfig> {
        let raw_tables = raw
            .tables
            .ok_or_else(|| Error::config("the table config has no `tables:` map"))?;
        let defaults = raw.defaults.unwrap_or_default();
        let mut tables = BTreeMap::new();
        for (name, raw) in raw_tables.0 {
            let table = validate(&name, raw, &defaults)?;
            tables.insert(name, table);
        }
        let schedules = schedule::validate(
            raw.schedules.unwrap_or_default(),
            |name| tables.contains_key(name),
            |category| {
                tables
                    .values()
                    .any(|t| t.performance_category == Some(category))
            },
        )?;
        Ok(TablesConfig { tables, schedules })
    }

    /// Builds a config from tables already validated (demo and tests).
    pub fn from_tables(list: impl IntoIterator<Item = TableConfig>) -> TablesConfig {
        TablesConfig {
            tables: list.into_iter().map(|t| (t.name.clone(), t)).collect(),
            schedules: Vec::new(),
        }
    }

    /// The `schedules:` block, in name order ([`Schedule`]).
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// One table, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&TableConfig> {
        self.tables.get(name).ok_or_else(|| {
            Error::config(format!(
                "table `{name}` is not in the table config; add it to tables.yml (or regenerate it with `etl-pipeline analyze`)"
            ))
        })
    }

    /// Every table, in name order.
    pub fn tables(&self) -> impl Iterator<Item = &TableConfig> {
        self.tables.values()
    }

    /// Number of tables.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// Whether no table is configured.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

fn validate(name: &str, raw: RawTable, defaults: &RawPolicy) -> Result<TableConfig> {
    let err = |key: &str, why: String| Error::config(format!("tables.{name}.{key}: {why}"));
    if let Some(table_name) = &raw.table_name
        && table_name != name
    {
        return Err(err(
            "table_name",
            format!("`{table_name}` differs from the key `{name}`"),
        ));
    }
    let primary_incremental_column = raw
        .primary_incremental_column
        .filter(|c| !c.eq_ignore_ascii_case("none") && !c.is_empty());
    if let Some(column) = &primary_incremental_column
        && raw.extraction_strategy != ExtractionStrategy::FullTable
        && !raw.incremental_columns.is_empty()
        && !raw.incremental_columns.contains(column)
    {
        return Err(err(
            "primary_incremental_column",
            format!(
                "`{column}` is not one of incremental_columns {:?}",
                raw.incremental_columns
            ),
        ));
    }
    if raw.extraction_strategy != ExtractionStrategy::FullTable
        && primary_incremental_column.is_none()
        && raw.incremental_columns.is_empty()
    {
        return Err(err(
            "incremental_columns",
            format!(
                "extraction_strategy is {:?} but no incremental column is named; name one or use full_table",
                raw.extraction_strategy
            ),
        ));
    }
    let batch_size = raw.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
    if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
        return Err(err(
            "batch_size",
            format!("{batch_size} is outside 1..={MAX_BATCH_SIZE}"),
        ));
    }
    let filters = raw.data_quality_filters.unwrap_or_default();
    let quality = QualityBounds {
        min: filters
            .min_date
            .as_deref()
            .map(|t| parse_bound(name, "min_date", t))
            .transpose()?,
        max: filters
            .max_date
            .as_deref()
            .map(|t| parse_bound(name, "max_date", t))
            .transpose()?,
    };
    if let (Some(min), Some(max)) = (quality.min, quality.max)
        && min.pg_micros() >= max.pg_micros()
    {
        return Err(err(
            "data_quality_filters",
            "min_date must be before max_date".to_string(),
        ));
    }
    let primary_key = match raw.primary_key {
        None => Vec::new(),
        Some(OneOrMany::One(k)) => vec![k],
        Some(OneOrMany::Many(ks)) => ks,
    };
    let max_share = raw.max_delete_share.unwrap_or(DEFAULT_MAX_DELETE_SHARE);
    if !(0.0..=1.0).contains(&max_share) {
        return Err(err(
            "max_delete_share",
            format!("{max_share} is outside 0..=1 (a share of the table, e.g. 0.1)"),
        ));
    }
    for (key, value) in [
        ("reconcile_every_runs", raw.reconcile_every_runs),
        ("reconcile_every_hours", raw.reconcile_every_hours),
    ] {
        if value == Some(0) {
            return Err(err(
                key,
                "must be at least 1 (leave it out to reconcile every run)".into(),
            ));
        }
    }
    if raw.timeout_seconds == Some(0) {
        return Err(err(
            "timeout_seconds",
            "must be at least 1 (leave it out for no limit)".into(),
        ));
    }
    let monitoring = validate_monitoring(name, raw.monitoring.unwrap_or_default())?;
    let columns = ColumnPolicy::merge(
        name,
        RawPolicy {
            exclude_columns: raw.exclude_columns,
            mask_columns: raw.mask_columns,
        },
        defaults,
    )?;
    // `reconcile` is the newer name and wins: an override file can say
    // `reconcile: rows` for a table `analyze` wrote `delete_detection` for.
    let detection = match (raw.reconcile, raw.delete_detection) {
        (Some(r), _) => r.into(),
        (None, Some(RawDeleteDetection::KeyReconcile)) => DeleteDetection::KeyReconcile,
        (None, Some(RawDeleteDetection::None) | None) => DeleteDetection::None,
    };
    let deletes = DeletePolicy {
        detection,
        every_runs: raw.reconcile_every_runs,
        every_hours: raw.reconcile_every_hours,
        soft_delete: raw.soft_delete.unwrap_or(false),
        max_share,
    };
    Ok(TableConfig {
        name: name.to_string(),
        extraction_strategy: raw.extraction_strategy,
        incremental_columns: raw.incremental_columns,
        primary_incremental_column,
        primary_key,
        batch_size,
        quality,
        performance_category: raw.performance_category,
        processing_priority: raw
            .processing_priority
            .unwrap_or(ProcessingPriority::Medium),
        lookback_seconds: raw.lookback_seconds.unwrap_or(DEFAULT_LOOKBACK_SECONDS),
        lookback_keys: raw.lookback_keys.unwrap_or(DEFAULT_LOOKBACK_KEYS),
        clock_skew_seconds: raw.clock_skew_seconds.unwrap_or(DEFAULT_CLOCK_SKEW_SECONDS),
        estimated_rows: raw.estimated_rows,
        deletes,
        time_gap_days: raw.time_gap_threshold_days,
        timeout_seconds: raw.timeout_seconds,
        retry_count: raw.retry_count,
        monitoring,
        columns,
    })
}

fn validate_monitoring(name: &str, raw: RawMonitoring) -> Result<Monitoring> {
    let positive = |key: &str, value: Option<f64>| match value {
        Some(v) if !(v.is_finite() && v > 0.0) => Err(Error::config(format!(
            "tables.{name}.monitoring.{key}: {v} is not a positive number"
        ))),
        _ => Ok(value),
    };
    let monitoring = Monitoring {
        alert_on_failure: raw.alert_on_failure.unwrap_or(true),
        alert_on_performance: raw.alert_on_slow_extraction.unwrap_or(false),
        min_rows_per_second: positive(
            "performance_threshold_records_per_second",
            raw.performance_threshold_records_per_second,
        )?,
        max_memory_mb: positive("memory_alert_threshold_mb", raw.memory_alert_threshold_mb)?,
    };
    if monitoring.alert_on_performance
        && monitoring.min_rows_per_second.is_none()
        && monitoring.max_memory_mb.is_none()
    {
        return Err(Error::config(format!(
            "tables.{name}.monitoring.alert_on_slow_extraction is true but no threshold is set; \
             add performance_threshold_records_per_second and/or memory_alert_threshold_mb"
        )));
    }
    Ok(monitoring)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../../fixtures/opendental/seed-system-tables.yml");

    #[test]
    fn reconcile_takes_keys_or_rows_and_the_old_name_still_works() {
        let parse = |extra: &str| {
            TablesConfig::parse(&format!(
                "tables:\n  claim:\n    extraction_strategy: incremental\n    incremental_columns: [SecDateTEntry]\n{extra}"
            ))
            .map(|c| c.get("claim").unwrap().deletes.detection)
        };
        assert_eq!(parse("").unwrap(), DeleteDetection::None);
        assert_eq!(
            parse("    reconcile: rows\n").unwrap(),
            DeleteDetection::RowReconcile
        );
        assert_eq!(
            parse("    reconcile: keys\n").unwrap(),
            DeleteDetection::KeyReconcile
        );
        assert_eq!(
            parse("    delete_detection: key_reconcile\n").unwrap(),
            DeleteDetection::KeyReconcile
        );
        assert_eq!(
            parse("    delete_detection: key_reconcile\n    reconcile: keys\n").unwrap(),
            DeleteDetection::KeyReconcile
        );
        assert_eq!(
            parse("    delete_detection: key_reconcile\n    reconcile: rows\n").unwrap(),
            DeleteDetection::RowReconcile,
            "the newer name wins"
        );
        assert!(parse("    reconcile: values\n").is_err());
    }

    #[test]
    fn the_old_systems_file_parses_as_is() {
        let config = TablesConfig::parse(SEED).unwrap();
        assert_eq!(config.len(), 446);
        let procedurelog = config.get("procedurelog").unwrap();
        assert_eq!(
            procedurelog.primary_incremental_column.as_deref(),
            Some("DateTStamp")
        );
        assert_eq!(procedurelog.primary_key, vec!["ProcNum"]);
        assert_eq!(procedurelog.batch_size, 35_000);
        let securitylog = config.get("securitylog").unwrap();
        assert_eq!(
            securitylog.extraction_strategy,
            ExtractionStrategy::IncrementalChunked
        );
        assert_eq!(securitylog.watermark_columns(), vec!["SecurityLogNum"]);
        let no_key = config.get("tmppatient").unwrap();
        assert!(no_key.primary_key.is_empty());
        assert_eq!(no_key.primary_incremental_column, None);
    }

    #[test]
    fn a_wrong_type_names_table_key_line_and_column() {
        let text = "tables:\n  patient:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    batch_size: lots\n";
        let err = TablesConfig::parse(text).unwrap_err().to_string();
        assert!(err.contains("tables.patient.batch_size"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn a_missing_required_key_names_table_and_key() {
        let text = "tables:\n  patient:\n    batch_size: 10\n";
        let err = TablesConfig::parse(text).unwrap_err().to_string();
        assert!(err.contains("tables.patient"), "{err}");
        assert!(err.contains("extraction_strategy"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let text = "tables:\n  patient:\n    extraction_strategy: full_table\n    primary_incremantal_column: DateTStamp\n";
        let err = TablesConfig::parse(text).unwrap_err().to_string();
        assert!(err.contains("primary_incremantal_column"), "{err}");
    }

    #[test]
    fn none_means_or_across_incremental_columns() {
        let text = "tables:\n  claim:\n    extraction_strategy: incremental\n    incremental_columns: [SecDateTEdit, DateReceived]\n    primary_incremental_column: none\n";
        let config = TablesConfig::parse(text).unwrap();
        let claim = config.get("claim").unwrap();
        assert_eq!(
            claim.watermark_columns(),
            vec!["SecDateTEdit", "DateReceived"]
        );
    }

    #[test]
    fn quality_filters_are_parsed_and_checked() {
        let text = "tables:\n  t:\n    extraction_strategy: incremental\n    incremental_columns: [D]\n    data_quality_filters: {min_date: '2000-01-01', max_date: '2030-12-31 23:59:59'}\n";
        let t = TablesConfig::parse(text).unwrap();
        let q = t.get("t").unwrap().quality;
        assert_eq!(q.min.unwrap().to_sql_string(), "2000-01-01 00:00:00");
        assert_eq!(q.max.unwrap().to_sql_string(), "2030-12-31 23:59:59");
        let bad = text.replace("2000-01-01", "2000-13-01");
        let err = TablesConfig::parse(&bad).unwrap_err().to_string();
        assert!(
            err.contains("tables.t.data_quality_filters.min_date"),
            "{err}"
        );
    }

    #[test]
    fn overrides_replace_keys_and_add_tables() {
        let base = "tables:\n  patient:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    batch_size: 5000\n";
        let over = "tables:\n  patient:\n    batch_size: 777\n  extra:\n    extraction_strategy: full_table\n";
        let config = TablesConfig::parse_with_override(base, over).unwrap();
        assert_eq!(config.get("patient").unwrap().batch_size, 777);
        assert_eq!(
            config.get("patient").unwrap().watermark_columns(),
            vec!["DateTStamp"]
        );
        assert!(config.get("extra").is_ok());
        let bad = "tables:\n  patient:\n    batch_size: many\n";
        assert!(
            TablesConfig::parse_with_override(base, bad)
                .unwrap_err()
                .to_string()
                .contains("batch_size")
        );
        assert_eq!(
            override_path(Path::new("config/tables.yml")),
            Path::new("config/tables.override.yml")
        );
    }

    #[test]
    fn an_override_replaces_the_schedules_and_may_hold_nothing_else() {
        let base = "tables:\n  patient: {extraction_strategy: full_table}\n\
                    schedules:\n  nightly: {cron: \"0 0 2 * * *\", all: true}\n";
        let config = TablesConfig::parse(base).unwrap();
        assert_eq!(config.schedules()[0].name, "nightly");
        let over = "schedules:\n  often: {cron: \"*/5 * * * *\", tables: [patient]}\n";
        let merged = TablesConfig::parse_with_override(base, over).unwrap();
        let names: Vec<&str> = merged.schedules().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["often"]);
        assert!(merged.get("patient").is_ok());
        let unknown = "schedules:\n  often: {cron: \"*/5 * * * *\", tables: [nope]}\n";
        let err = TablesConfig::parse_with_override(base, unknown).unwrap_err();
        assert!(err.to_string().contains("schedules.often.tables"), "{err}");
        assert!(TablesConfig::parse_with_override(base, "metadata: {}\n").is_err());
    }

    #[test]
    fn empty_and_unknown_tables_are_clear_errors() {
        assert!(
            TablesConfig::parse("")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        let config =
            TablesConfig::parse("tables:\n  a:\n    extraction_strategy: full_table\n").unwrap();
        assert!(
            config
                .get("b")
                .unwrap_err()
                .to_string()
                .contains("`b` is not in the table config")
        );
    }
}
