//! `dbt-sources`: a dbt `sources.yml` for the warehouse schema, with every
//! table and column, descriptions from OpenDental's schema documentation, and
//! freshness from each table's watermark column.

use std::collections::HashMap;

use quick_xml::Reader;
use quick_xml::events::Event;

use crate::config::{PgSettings, TablesConfig};
use crate::error::{Error, Result};
use crate::group;
use crate::postgres as pg;
use crate::tracking;

/// Descriptions by table: the table's summary and its columns' summaries.
#[derive(Debug, Default, Clone)]
pub struct Docs {
    tables: HashMap<String, (String, HashMap<String, String>)>,
}

impl Docs {
    fn table(&self, name: &str) -> Option<&(String, HashMap<String, String>)> {
        self.tables.get(&name.to_ascii_lowercase())
    }

    /// A column's documented description.
    pub(super) fn column_summary(&self, table: &str, column: &str) -> Option<&str> {
        let (_, columns) = self.table(table)?;
        columns
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(column))
            .map(|(_, summary)| summary.as_str())
    }
}

/// Reads OpenDental's schema documentation (`OpenDentalDocumentation*.xml`):
/// `<table name><summary/><column name><summary/></column></table>`.
pub fn parse_docs(xml: &str) -> Result<Docs> {
    let mut reader = Reader::from_str(xml.trim_start_matches('\u{feff}'));
    let mut docs = Docs::default();
    let mut table: Option<String> = None;
    let mut column: Option<String> = None;
    let mut in_summary = false;
    let mut depth_in_enum = 0usize;
    let mut text = String::new();
    let bad = |e: &dyn std::fmt::Display, at: u64| {
        Error::config(format!("schema documentation at byte {at}: {e}"))
    };
    loop {
        let at = reader.buffer_position();
        match reader.read_event().map_err(|e| bad(&e, at))? {
            Event::Start(e) => {
                let name = e.name();
                let attr = |key: &str| {
                    e.attributes()
                        .flatten()
                        .find(|a| AsRef::<str>::as_ref(&a.key) == key)
                        .map(|a| a.value.into_owned())
                };
                match AsRef::<str>::as_ref(&name) {
                    "table" => {
                        let t = attr("name").unwrap_or_default().to_ascii_lowercase();
                        docs.tables.entry(t.clone()).or_default();
                        table = Some(t);
                    }
                    "column" => column = attr("name"),
                    "Enumeration" => depth_in_enum += 1,
                    "summary" if depth_in_enum == 0 => {
                        in_summary = true;
                        text.clear();
                    }
                    _ => {}
                }
            }
            Event::Text(t) if in_summary => {
                text.push_str(&t.xml10_content());
            }
            Event::GeneralRef(r) if in_summary => {
                let name: &str = r.as_ref();
                text.push_str(match name {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                });
            }
            Event::End(e) => match AsRef::<str>::as_ref(&e.name()) {
                "summary" if in_summary => {
                    in_summary = false;
                    let summary = text.split_whitespace().collect::<Vec<_>>().join(" ");
                    if let Some(t) = &table {
                        let entry = docs.tables.entry(t.clone()).or_default();
                        match &column {
                            Some(c) => {
                                entry.1.insert(c.clone(), summary);
                            }
                            None => entry.0 = summary,
                        }
                    }
                }
                "column" => column = None,
                "table" => table = None,
                "Enumeration" => depth_in_enum = depth_in_enum.saturating_sub(1),
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(docs)
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn q(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// How the group source describes its `clinic` column.
const CLINIC_DESCRIPTION: &str =
    "The clinic the row comes from: its name in the group file (--clinics).";

/// Hours after which dbt warns and errors on a table's freshness.
const FRESHNESS_WARN_HOURS: u32 = 24;
const FRESHNESS_ERROR_HOURS: u32 = 72;

/// Which relations a `sources.yml` lists.
#[derive(Debug, Clone, Copy)]
pub enum SourceOf<'a> {
    /// The warehouse schema's tables, the tracking tables excepted.
    Warehouse,
    /// A dental group's views, each with a `clinic` column first.
    Group { schema: &'a str },
}

/// Writes `sources.yml` text for every table of the warehouse schema, or
/// every view of a group's schema. Both are the source `opendental`, so a
/// dbt project's models read one clinic or the whole group alike.
pub async fn dbt_sources(
    warehouse: &PgSettings,
    of: SourceOf<'_>,
    config: Option<&TablesConfig>,
    docs: Option<&Docs>,
    legacy: bool,
) -> Result<String> {
    let (schema, kinds) = match of {
        SourceOf::Warehouse => (warehouse.schema.as_str(), vec!["r", "p"]),
        SourceOf::Group { schema } => (schema, vec!["v"]),
    };
    let client = pg::connect(warehouse).await?;
    let rows = client
        .query(
            "select c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod) \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped \
             where n.nspname = $1 and c.relkind::text = any($2) \
             and (c.relkind <> 'v' or obj_description(c.oid, 'pg_class') like 'etl-pipeline view %') \
             order by c.relname, a.attnum",
            &[&schema, &kinds],
        )
        .await
        .map_err(|e| Error::postgres(format!("listing the relations of schema {schema}"), e))?;
    if rows.is_empty() && matches!(of, SourceOf::Group { .. }) {
        return Err(Error::config(format!(
            "schema {schema} holds no group views yet; `--clinics FILE run --all` makes them"
        )));
    }
    let mut tables: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for r in &rows {
        let (table, column, ty): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        if tracking::WAREHOUSE_TABLES.contains(&table.as_str()) {
            continue;
        }
        match tables.last_mut() {
            Some((t, cols)) if *t == table => cols.push((column, ty)),
            _ => tables.push((table, vec![(column, ty)])),
        }
    }
    let mut out = String::new();
    out.push_str("# Generated by `etl-pipeline dbt-sources`.\nversion: 2\n\nsources:\n");
    out.push_str(&format!(
        "  - name: opendental\n    schema: {}\n    loader: etl-pipeline\n",
        q(schema)
    ));
    out.push_str("    quoting:\n      identifier: true\n      column: true\n    tables:\n");
    for (table, columns) in &tables {
        let doc = docs.and_then(|d| d.table(table));
        out.push_str(&format!("      - name: {}\n", q(table)));
        if let Some((summary, _)) = doc.filter(|(s, _)| !s.is_empty()) {
            out.push_str(&format!("        description: {}\n", q(summary)));
        }
        let watermark = config
            .and_then(|c| c.get(table).ok())
            .and_then(|t| t.primary_incremental_column.clone())
            .filter(|w| {
                columns
                    .iter()
                    .any(|(c, ty)| c == w && (ty.starts_with("timestamp") || ty == "date"))
            });
        if let Some(w) = watermark {
            // dbt 1.10 reads both under `config:` (1.9 moved `freshness`
            // there); earlier versions read them on the table itself.
            let indent = if legacy {
                "        "
            } else {
                out.push_str("        config:\n");
                "          "
            };
            out.push_str(&format!(
                "{indent}loaded_at_field: {}\n",
                q(&format!("\"{w}\""))
            ));
            out.push_str(&format!(
                "{indent}freshness:\n{indent}  warn_after: {{count: {FRESHNESS_WARN_HOURS}, period: hour}}\n\
                 {indent}  error_after: {{count: {FRESHNESS_ERROR_HOURS}, period: hour}}\n"
            ));
        }
        out.push_str("        columns:\n");
        for (column, ty) in columns {
            out.push_str(&format!(
                "          - name: {}\n            data_type: {}\n",
                q(column),
                q(ty)
            ));
            let summary = match of {
                SourceOf::Group { .. } if column == group::CLINIC_COLUMN => {
                    Some(CLINIC_DESCRIPTION)
                }
                _ => doc
                    .and_then(|(_, cols)| cols.get(column))
                    .map(String::as_str)
                    .filter(|s| !s.is_empty()),
            };
            if let Some(summary) = summary {
                out.push_str(&format!("            description: {}\n", q(summary)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documentation_summaries_are_read_per_table_and_column() {
        let xml = "\u{feff}<?xml version=\"1.0\"?><database><table name=\"Account\"><summary>Chart of \
                   accounts &amp; more.</summary><column order=\"0\" name=\"AccountNum\" type=\"bigint\"><summary>Primary key.</summary>\
                   </column><column order=\"1\" name=\"AcctType\"><summary>Enum:AccountType</summary><Enumeration name=\"AccountType\">\
                   <summary>Not this one.</summary><EnumValue name=\"Asset\">0</EnumValue></Enumeration></column></table></database>";
        let docs = parse_docs(xml).unwrap();
        let (summary, columns) = docs.table("account").unwrap();
        assert_eq!(summary, "Chart of accounts & more.");
        assert_eq!(columns["AccountNum"], "Primary key.");
        assert_eq!(columns["AcctType"], "Enum:AccountType");
    }

    #[test]
    fn the_real_documentation_parses() {
        let xml = include_str!("../../fixtures/opendental/OpenDentalDocumentation24-3.xml");
        let docs = parse_docs(xml).unwrap();
        assert_eq!(docs.tables.len(), 408);
        let (summary, columns) = docs.table("procedurelog").unwrap();
        assert!(!summary.is_empty());
        assert!(columns.contains_key("DateTStamp"));
    }
}
