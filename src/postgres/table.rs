//! Destination tables: what the catalog says, creating and evolving them,
//! and the merge statement that upserts a staged batch.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient};

use crate::error::{Error, Result};
use crate::schema::{PgType, ident};

/// One destination column as the catalog has it.
#[derive(Debug, Clone, PartialEq)]
pub struct DestColumn {
    pub name: String,
    /// `None` when the type is one this tool does not write (the catalog name is kept).
    pub ty: Option<PgType>,
    pub type_name: String,
    pub not_null: bool,
}

/// A destination table as the catalog has it.
#[derive(Debug, Clone, PartialEq)]
pub struct DestTable {
    pub columns: Vec<DestColumn>,
    /// Column lists of unique indexes without a predicate (the primary key among them).
    pub unique_keys: Vec<Vec<String>>,
}

impl DestTable {
    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&DestColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

async fn execute(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    what: &str,
) -> Result<u64> {
    client
        .execute(sql, params)
        .await
        .map_err(|e| Error::postgres(what.to_string(), e))
}

/// Creates the warehouse schema if it is missing.
pub async fn ensure_schema(client: &Client, schema: &str) -> Result<()> {
    let sql = format!("create schema if not exists {}", ident::pg(schema));
    execute(client, &sql, &[], &format!("creating schema {schema}")).await?;
    Ok(())
}

/// Reads a table's columns and unique keys, or `None` if it does not exist.
pub async fn describe_table(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<DestTable>> {
    let what = || format!("reading the catalog entry of {schema}.{table}");
    let rows = client
        .query(
            "select a.attname::text, t.typname::text, a.atttypmod, a.attnotnull \
             from pg_attribute a \
             join pg_class c on c.oid = a.attrelid \
             join pg_namespace n on n.oid = c.relnamespace \
             join pg_type t on t.oid = a.atttypid \
             where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p') \
               and a.attnum > 0 and not a.attisdropped \
             order by a.attnum",
            &[&schema, &table],
        )
        .await
        .map_err(|e| Error::postgres(what(), e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let columns = rows
        .iter()
        .map(|r| {
            let type_name: String = r.get(1);
            DestColumn {
                name: r.get(0),
                ty: PgType::from_catalog(&type_name, r.get(2)),
                type_name,
                not_null: r.get(3),
            }
        })
        .collect();
    let key_rows = client
        .query(
            "select array(select a.attname::text \
                          from unnest(i.indkey) with ordinality k(attnum, ord) \
                          join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum \
                          order by k.ord) \
             from pg_index i \
             join pg_class c on c.oid = i.indrelid \
             join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2 and i.indisunique and i.indpred is null \
             order by i.indisprimary desc",
            &[&schema, &table],
        )
        .await
        .map_err(|e| Error::postgres(what(), e))?;
    let unique_keys = key_rows
        .iter()
        .map(|r| r.get::<_, Vec<String>>(0))
        .collect();
    Ok(Some(DestTable {
        columns,
        unique_keys,
    }))
}

/// Creates a table with the given columns and primary key.
pub async fn create_table(
    client: &Client,
    schema: &str,
    table: &str,
    columns: &[(String, PgType, bool)],
    key: &[String],
) -> Result<()> {
    let mut parts: Vec<String> = columns
        .iter()
        .map(|(name, ty, nullable)| {
            let null = if *nullable { "" } else { " not null" };
            format!("{} {ty}{null}", ident::pg(name))
        })
        .collect();
    if !key.is_empty() {
        parts.push(format!(
            "primary key ({})",
            ident::pg_list(key.iter().map(String::as_str))
        ));
    }
    let sql = format!(
        "create table if not exists {} ({})",
        ident::pg_qualified(schema, table),
        parts.join(", ")
    );
    execute(
        client,
        &sql,
        &[],
        &format!("creating table {schema}.{table}"),
    )
    .await?;
    Ok(())
}

/// Adds a nullable column (a column the source gained).
pub async fn add_column(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
    name: &str,
    ty: &PgType,
) -> Result<()> {
    let sql = format!(
        "alter table {} add column if not exists {} {ty}",
        ident::pg_qualified(schema, table),
        ident::pg(name)
    );
    execute(
        client,
        &sql,
        &[],
        &format!("adding column {name} to {schema}.{table}"),
    )
    .await?;
    Ok(())
}

/// Changes a column's type in place (a widening the caller checked).
pub async fn alter_column_type(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
    name: &str,
    ty: &PgType,
) -> Result<()> {
    let sql = format!(
        "alter table {} alter column {col} type {ty} using {col}::{ty}",
        ident::pg_qualified(schema, table),
        col = ident::pg(name)
    );
    execute(
        client,
        &sql,
        &[],
        &format!("changing the type of {schema}.{table}.{name} to {ty}"),
    )
    .await?;
    Ok(())
}

/// The upsert of a staged batch: insert new keys, update changed rows (only
/// where a value differs, so re-read rows write nothing), and count both.
/// Returns one row: (inserted, updated). With `revive` (the soft-delete
/// column), a row that comes back is live again: the column is cleared.
pub fn merge_sql(
    schema: &str,
    table: &str,
    stage: &str,
    columns: &[(String, PgType)],
    key: &[String],
    revive: Option<&str>,
) -> String {
    let names = ident::pg_list(columns.iter().map(|(n, _)| n.as_str()));
    let non_key: Vec<&(String, PgType)> =
        columns.iter().filter(|(n, _)| !key.contains(n)).collect();
    let revived = revive.map(|c| {
        (
            format!("{} = null", ident::pg(c)),
            format!("t.{} is not null", ident::pg(c)),
        )
    });
    let conflict = if non_key.is_empty() {
        match &revived {
            Some((set, check)) => format!("do update set {set} where {check}"),
            None => "do nothing".to_string(),
        }
    } else {
        let sets = non_key
            .iter()
            .map(|(n, _)| format!("{0} = excluded.{0}", ident::pg(n)))
            .chain(revived.iter().map(|(set, _)| set.clone()))
            .collect::<Vec<_>>()
            .join(", ");
        let compare = |prefix: &str| {
            non_key
                .iter()
                .map(|(n, ty)| {
                    let cast = if ty.has_equality() { "" } else { "::text" };
                    format!("{prefix}.{}{cast}", ident::pg(n))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "do update set {sets} where {}({}) is distinct from ({})",
            revived
                .as_ref()
                .map(|(_, check)| format!("{check} or "))
                .unwrap_or_default(),
            compare("t"),
            compare("excluded")
        )
    };
    format!(
        "with merged as (insert into {target} as t ({names}) select {names} from {stage} \
         on conflict ({keys}) {conflict} returning (xmax = 0) as inserted) \
         select count(*) filter (where inserted), count(*) filter (where not inserted) from merged",
        target = ident::pg_qualified(schema, table),
        stage = ident::pg(stage),
        keys = ident::pg_list(key.iter().map(String::as_str)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_updates_only_rows_that_changed() {
        let cols = vec![
            ("Id".to_string(), PgType::Int8),
            ("Note".to_string(), PgType::Text),
            ("Doc".to_string(), PgType::Json),
        ];
        let sql = merge_sql("raw", "t", "etl_stage", &cols, &["Id".to_string()], None);
        assert!(
            sql.contains("on conflict (\"Id\") do update set \"Note\" = excluded.\"Note\""),
            "{sql}"
        );
        assert!(sql.contains("where (t.\"Note\", t.\"Doc\"::text) is distinct from (excluded.\"Note\", excluded.\"Doc\"::text)"), "{sql}");
    }

    #[test]
    fn a_key_only_table_merges_with_do_nothing() {
        let cols = vec![
            ("A".to_string(), PgType::Int4),
            ("B".to_string(), PgType::Int4),
        ];
        let key = vec!["A".to_string(), "B".to_string()];
        assert!(
            merge_sql("raw", "t", "s", &cols, &key, None)
                .contains("on conflict (\"A\", \"B\") do nothing")
        );
    }
}
