//! The one place identifiers from config or catalogs become SQL text.
//!
//! Every table and column name passes through [`pg`] or [`mysql`] before it
//! reaches a statement; values never do (they are bound parameters).

/// Wraps `name` in `quote`, doubling any `quote` inside it.
fn quote(name: &str, quote: char) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push(quote);
    for ch in name.chars() {
        if ch == quote {
            out.push(quote);
        }
        out.push(ch);
    }
    out.push(quote);
    out
}

/// Quotes an identifier for PostgreSQL: `a"b` becomes `"a""b"`.
pub fn pg(name: &str) -> String {
    quote(name, '"')
}

/// PostgreSQL's longest name in bytes (`NAMEDATALEN - 1`); longer names
/// are cut silently, so two MySQL names could become one.
pub const PG_MAX_NAME_BYTES: usize = 63;

/// The names among `names` PostgreSQL would cut short.
pub fn too_long_for_pg<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    names
        .into_iter()
        .filter(|n| n.len() > PG_MAX_NAME_BYTES)
        .collect()
}

/// Quotes a schema-qualified PostgreSQL name: `"schema"."table"`.
pub fn pg_qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", pg(schema), pg(name))
}

/// Quotes an identifier for MySQL/MariaDB: ``a`b`` becomes ```a``b```.
pub fn mysql(name: &str) -> String {
    quote(name, '`')
}

/// Quotes a list of names for PostgreSQL and joins them with `, `.
pub fn pg_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().map(pg).collect::<Vec<_>>().join(", ")
}

/// Quotes a list of names for MySQL and joins them with `, `.
pub fn mysql_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().map(mysql).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_quotes_embedded_double_quotes() {
        assert_eq!(pg("Sec\"Log"), "\"Sec\"\"Log\"");
        assert_eq!(pg_qualified("raw", "a b"), "\"raw\".\"a b\"");
    }

    #[test]
    fn mysql_quotes_embedded_backticks() {
        assert_eq!(mysql("x`; drop table t; --"), "`x``; drop table t; --`");
    }

    #[test]
    fn names_past_63_bytes_are_too_long_for_postgres() {
        let ascii = "a".repeat(63);
        let accented = "ñ".repeat(32);
        let long = "a".repeat(64);
        assert_eq!(
            too_long_for_pg([ascii.as_str(), accented.as_str(), long.as_str()]),
            [accented.as_str(), long.as_str()]
        );
    }

    #[test]
    fn lists_are_joined_in_order() {
        assert_eq!(pg_list(["A", "B"]), "\"A\", \"B\"");
        assert_eq!(mysql_list(["A", "B"]), "`A`, `B`");
    }
}
