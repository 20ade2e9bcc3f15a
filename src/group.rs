//! A dental group: one OpenDental database per clinic, one warehouse. The
//! group file (`--clinics FILE`) names each clinic's env file (its source
//! and replica) and warehouse schema; the warehouse settings are shared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use tokio_postgres::Client;

use crate::config::{Env, PgSettings};
use crate::error::{Error, Result};
use crate::postgres as pg;
use crate::schema::ident;

/// The schema of the group's views when the file names none.
pub const DEFAULT_GROUP_SCHEMA: &str = "raw_group";

/// One clinic of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clinic {
    pub name: String,
    /// Its env file, relative paths taken from the group file's folder.
    pub env_file: PathBuf,
    /// Its warehouse schema (`raw_<name>` unless the file says).
    pub schema: String,
}

impl Clinic {
    /// This clinic's environment over the group's `base` one.
    pub fn env(&self, base: &Env) -> Result<Env> {
        base.for_clinic(&self.name, &self.env_file, &self.schema)
    }
}

/// How `schedule` runs the group (the group file's `schedule:` block).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Schedule {
    /// Minutes between runs: a divisor of an hour, or whole hours that
    /// divide a day.
    pub every_minutes: u32,
    /// Tries a clinic's task gets after the first when it fails.
    pub retries: u32,
    /// Minutes after which a clinic's run (or scheduled task) is stopped.
    pub timeout_minutes: u32,
    /// Clinics loading at once.
    pub parallel: u32,
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule {
            every_minutes: 60,
            retries: 1,
            timeout_minutes: 55,
            parallel: 2,
        }
    }
}

impl Schedule {
    fn check(&self) -> Result<()> {
        let m = self.every_minutes;
        let fits = (1..=60).contains(&m) && 60_u32.is_multiple_of(m)
            || m.is_multiple_of(60) && (60..=1440).contains(&m) && 1440_u32.is_multiple_of(m);
        if !fits {
            return Err(Error::config(format!(
                "schedule.every_minutes is {m}; use a divisor of an hour (1, 5, 15, 30, 60 …) or \
                 whole hours that divide a day (120, 360, 1440 …)"
            )));
        }
        if self.timeout_minutes == 0 || self.parallel == 0 {
            return Err(Error::config(
                "schedule.timeout_minutes and schedule.parallel must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A group file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Where the views over every clinic's tables go.
    pub group_schema: String,
    /// The clinics, by name.
    pub clinics: Vec<Clinic>,
    pub schedule: Schedule,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map with a `clinics:` key")]
struct RawGroup {
    group_schema: Option<String>,
    clinics: BTreeMap<String, RawClinic>,
    #[serde(default)]
    schedule: Schedule,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClinic {
    env_file: PathBuf,
    schema: Option<String>,
}

impl Group {
    /// Reads and checks a group file.
    pub fn load(path: &Path) -> Result<Group> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "cannot read group file {}: {e}; pass the right file with --clinics FILE",
                path.display()
            ))
        })?;
        let folder = path.parent().unwrap_or(Path::new(""));
        Group::parse(&text, folder)
            .map_err(|e| Error::config(format!("group file {}: {}", path.display(), e.message())))
    }

    /// Parses group file text; env files are taken relative to `folder`.
    pub fn parse(text: &str, folder: &Path) -> Result<Group> {
        let raw: RawGroup =
            serde_norway::from_str(text).map_err(|e| Error::config(e.to_string()))?;
        if raw.clinics.is_empty() {
            return Err(Error::config("`clinics:` names no clinic"));
        }
        let group_schema = raw
            .group_schema
            .unwrap_or_else(|| DEFAULT_GROUP_SCHEMA.to_string());
        check_name("group_schema", &group_schema)?;
        let mut clinics = Vec::with_capacity(raw.clinics.len());
        for (name, clinic) in raw.clinics {
            check_name(&format!("clinic `{name}`"), &name)?;
            let schema = clinic.schema.unwrap_or_else(|| format!("raw_{name}"));
            check_name(&format!("clinics.{name}.schema"), &schema)?;
            if schema == group_schema {
                return Err(Error::config(format!(
                    "clinics.{name}.schema is `{schema}`, the group_schema; each clinic needs a schema of its own"
                )));
            }
            if let Some(other) = clinics.iter().find(|c: &&Clinic| c.schema == schema) {
                return Err(Error::config(format!(
                    "clinics {} and {name} both load into schema `{schema}`; give each its own",
                    other.name
                )));
            }
            clinics.push(Clinic {
                env_file: folder.join(&clinic.env_file),
                name,
                schema,
            });
        }
        raw.schedule.check()?;
        Ok(Group {
            group_schema,
            clinics,
            schedule: raw.schedule,
        })
    }

    /// The clinics `names` asks for (`--clinic NAME`, repeatable), all
    /// when none; an unknown name is an error naming the known ones.
    pub fn select(&self, names: &[String]) -> Result<Vec<&Clinic>> {
        if names.is_empty() {
            return Ok(self.clinics.iter().collect());
        }
        names
            .iter()
            .map(|name| {
                self.clinics
                    .iter()
                    .find(|c| &c.name == name)
                    .ok_or_else(|| {
                        Error::config(format!(
                            "clinic `{name}` is not in the group file; its clinics are {}",
                            self.clinics
                                .iter()
                                .map(|c| c.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })
            })
            .collect()
    }
}

/// The column the group's views put first: which clinic a row is from.
pub const CLINIC_COLUMN: &str = "clinic";

/// What [`refresh_views`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ViewReport {
    /// Views created or re-created, by table.
    pub changed: Vec<String>,
    /// Views already as they should be.
    pub unchanged: usize,
    /// Views that could not be made, and why.
    pub warnings: Vec<String>,
}

/// One clinic's columns of a table: name and `format_type`.
type Columns = Vec<(String, String)>;

/// The view over every clinic's `table`: a `clinic` column, then the
/// columns by name across clinics. The clinic with the most columns (the
/// newest schema) gives the order and the types; a column another clinic
/// has besides comes after them, and a column a clinic lacks reads as NULL
/// of that type.
fn view_sql(group_schema: &str, table: &str, clinics: &[(&str, &str, &Columns)]) -> String {
    let newest = clinics
        .iter()
        .enumerate()
        .max_by_key(|(i, (_, _, cols))| (cols.len(), std::cmp::Reverse(*i)))
        .map(|(_, c)| c.2)
        .expect("a view has a clinic");
    let mut columns: Columns = newest.clone();
    for (_, _, cols) in clinics {
        for (name, ty) in cols.iter() {
            if !columns.iter().any(|(n, _)| n == name) {
                columns.push((name.clone(), ty.clone()));
            }
        }
    }
    let selects: Vec<String> = clinics
        .iter()
        .map(|(clinic, schema, cols)| {
            // Clinic names are lowercase letters, digits and `_`.
            let mut items = vec![format!("'{clinic}'::text as {}", ident::pg(CLINIC_COLUMN))];
            for (name, ty) in &columns {
                let column = ident::pg(name);
                items.push(match cols.iter().find(|(n, _)| n == name) {
                    Some((_, own)) if own == ty => column,
                    Some(_) => format!("{column}::{ty} as {column}"),
                    None => format!("null::{ty} as {column}"),
                });
            }
            format!(
                "select {} from {}",
                items.join(", "),
                ident::pg_qualified(schema, table)
            )
        })
        .collect();
    format!(
        "create or replace view {} as\n{}",
        ident::pg_qualified(group_schema, table),
        selects.join("\nunion all\n")
    )
}

/// Makes `group_schema` hold one view per table over every clinic's table
/// that exists in the warehouse; a view already made from the same
/// definition is left alone. The tracking tables have no view.
pub async fn refresh_views(warehouse: &PgSettings, group: &Group) -> Result<ViewReport> {
    let mut client = pg::connect(warehouse).await?;
    let schemas: Vec<String> = group.clinics.iter().map(|c| c.schema.clone()).collect();
    let rows = client
        .query(
            "select n.nspname::text, c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod) \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped \
             where n.nspname = any($1) and c.relkind in ('r', 'p') order by c.relname, a.attnum",
            &[&schemas],
        )
        .await
        .map_err(|e| Error::postgres("reading the clinics' tables", e))?;
    let mut tables: BTreeMap<String, BTreeMap<String, Columns>> = BTreeMap::new();
    for row in rows {
        let (schema, table, column, ty): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if crate::tracking::WAREHOUSE_TABLES.contains(&table.as_str()) {
            continue;
        }
        tables
            .entry(table)
            .or_default()
            .entry(schema)
            .or_default()
            .push((column, ty));
    }
    let target = ident::pg(&group.group_schema);
    // Clinics run by a scheduler finish side by side, each refreshing the
    // views: one at a time (the lock ends with this session).
    client
        .execute(
            "select pg_advisory_lock($1, hashtext($2))",
            &[&crate::pipeline::LOCK_CLASS, &format!("views {target}")],
        )
        .await
        .map_err(|e| Error::postgres(format!("waiting for the views of {target}"), e))?;
    client
        .batch_execute(&format!("create schema if not exists {target}"))
        .await
        .map_err(|e| Error::postgres(format!("creating schema {target}"), e))?;
    let mut report = ViewReport::default();
    for (table, by_schema) in &tables {
        let clinics: Vec<(&str, &str, &Columns)> = group
            .clinics
            .iter()
            .filter_map(|c| {
                by_schema
                    .get(&c.schema)
                    .map(|cols| (c.name.as_str(), c.schema.as_str(), cols))
            })
            .collect();
        if clinics
            .iter()
            .any(|(_, _, cols)| cols.iter().any(|(n, _)| n == CLINIC_COLUMN))
        {
            report.warnings.push(format!(
                "{table}: a clinic's table has a column named `{CLINIC_COLUMN}`, which the group view \
                 puts first; no view made"
            ));
            continue;
        }
        let sql = view_sql(&group.group_schema, table, &clinics);
        let mark = format!("etl-pipeline view {}", crate::schema::fnv([&sql]));
        let view = ident::pg_qualified(&group.group_schema, table);
        let current: Option<String> = client
            .query_one(
                "select obj_description(to_regclass($1), 'pg_class')",
                &[&view],
            )
            .await
            .map_err(|e| Error::postgres(format!("reading view {view}"), e))?
            .get(0);
        if current.as_deref() == Some(mark.as_str()) {
            report.unchanged += 1;
            continue;
        }
        match make_view(&mut client, &view, &sql, &mark).await {
            Ok(()) => report.changed.push(table.clone()),
            Err(e) => report.warnings.push(format!(
                "{view} not re-created: {}; drop what depends on it (a dbt view) or change it to match",
                crate::error::chain(&e)
            )),
        }
    }
    Ok(report)
}

/// Creates or replaces one view in a transaction: in place when only
/// columns are added, else dropped and made again.
async fn make_view(client: &mut Client, view: &str, sql: &str, mark: &str) -> Result<()> {
    let err = |e| Error::postgres(format!("making view {view}"), e);
    let mut tx = client.transaction().await.map_err(err)?;
    let replaced = {
        let attempt = tx.savepoint("replace").await.map_err(err)?;
        match attempt.batch_execute(sql).await {
            Ok(()) => attempt.commit().await.map(|()| true).map_err(err)?,
            Err(_) => {
                attempt.rollback().await.map_err(err)?;
                false
            }
        }
    };
    if !replaced {
        tx.batch_execute(&format!("drop view if exists {view}"))
            .await
            .map_err(err)?;
        tx.batch_execute(sql).await.map_err(err)?;
    }
    // The mark is letters, digits and spaces.
    tx.batch_execute(&format!("comment on view {view} is '{mark}'"))
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)
}

/// Clinic and schema names become PostgreSQL identifiers and the views'
/// `clinic` values: lowercase letters, digits and `_`, starting with a
/// letter, within PostgreSQL's 63 bytes.
fn check_name(what: &str, name: &str) -> Result<()> {
    let fine = name.len() <= ident::PG_MAX_NAME_BYTES
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if fine {
        Ok(())
    } else {
        Err(Error::config(format!(
            "{what}: `{name}` must be lowercase letters, digits and `_`, starting with a letter \
             (at most {} bytes)",
            ident::PG_MAX_NAME_BYTES
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_parses_with_default_schemas_and_relative_env_files() {
        let group = Group::parse(
            "group_schema: raw_group\nclinics:\n  north: {env_file: north.env, schema: raw_north}\n  \
             south: {env_file: south.env}        # schema defaults to raw_<name>\n",
            Path::new("/etc/etl"),
        )
        .unwrap();
        assert_eq!(group.group_schema, "raw_group");
        assert_eq!(
            group.clinics,
            vec![
                Clinic {
                    name: "north".into(),
                    env_file: "/etc/etl/north.env".into(),
                    schema: "raw_north".into()
                },
                Clinic {
                    name: "south".into(),
                    env_file: "/etc/etl/south.env".into(),
                    schema: "raw_south".into()
                },
            ]
        );
        assert_eq!(group.select(&[]).unwrap().len(), 2);
        assert_eq!(group.select(&["south".into()]).unwrap()[0].name, "south");
        let err = group.select(&["east".into()]).unwrap_err();
        assert!(
            err.to_string().contains("its clinics are north, south"),
            "{err}"
        );
    }

    #[test]
    fn bad_group_files_are_refused_by_name() {
        for (text, expect) in [
            ("clinics: {}\n", "names no clinic"),
            ("clinics:\n  North: {env_file: n.env}\n", "clinic `North`"),
            (
                "clinics:\n  a: {env_file: a.env, schema: s}\n  b: {env_file: b.env, schema: s}\n",
                "clinics a and b both load into schema `s`",
            ),
            (
                "group_schema: raw_a\nclinics:\n  a: {env_file: a.env}\n",
                "the group_schema",
            ),
            (
                "clinics:\n  a: {envfile: a.env}\n",
                "unknown field `envfile`",
            ),
            (
                "clinic:\n  a: {env_file: a.env}\n",
                "unknown field `clinic`",
            ),
            (
                "clinics:\n  a: {env_file: a.env}\nschedule: {every_minutes: 7}\n",
                "schedule.every_minutes is 7",
            ),
            (
                "clinics:\n  a: {env_file: a.env}\nschedule: {every: 5}\n",
                "unknown field `every`",
            ),
        ] {
            let err = Group::parse(text, Path::new(".")).unwrap_err();
            assert!(err.to_string().contains(expect), "{text}: {err}");
        }
    }
}
