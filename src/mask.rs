//! A table's column policy at the first hop: the shape of the table the
//! policy lets out, and the masking of each row read from the source.

use mysql_async::{Row, Value};
use ring::hmac;

use crate::config::{Applied, Mask, Secret, TableConfig};
use crate::error::{Error, Result};
use crate::mysql::SourceTable;
use crate::schema::SourceType;

/// Hex digits of a hashed value (HMAC-SHA-256).
pub const HASH_DIGITS: u32 = 64;
/// Bytes a mask key needs at least: a short key lets anyone who guesses it
/// hash every name in a phone book and read the hashes back.
pub const MIN_KEY_BYTES: usize = 16;

/// The MySQL type a hashed column of type `column_type` takes: a text or
/// a `varchar` that holds [`HASH_DIGITS`] characters stays as it is (the
/// warehouse column with it), anything else becomes `varchar(64)` (a
/// shorter `varchar` in the warehouse widens to it in place).
pub fn hashed_type(column_type: &str) -> String {
    let t = column_type.to_ascii_lowercase();
    let length = match t.split_once('(') {
        Some(("varchar" | "char", length)) => length.trim_end_matches(')').parse::<u32>().ok(),
        _ => None,
    };
    match length {
        Some(n) if n >= HASH_DIGITS => format!("varchar({n})"),
        None if matches!(t.as_str(), "text" | "mediumtext" | "longtext") => t,
        _ => format!("varchar({HASH_DIGITS})"),
    }
}

/// The table as the policy lets it out of the source: excluded columns
/// gone, hashed columns text ([`hashed_type`]), and nulled and hashed
/// columns nullable; with the policy as it applies to it.
pub fn shape(table: SourceTable, cfg: &TableConfig) -> Result<(SourceTable, Applied)> {
    let mut protected: Vec<(&str, &str)> = table
        .primary_key
        .iter()
        .chain(&cfg.primary_key)
        .map(|k| ("primary key", k.as_str()))
        .collect();
    protected.extend(
        cfg.incremental_columns
            .iter()
            .chain(&cfg.primary_incremental_column)
            .map(|c| ("watermark column", c.as_str())),
    );
    let applied = cfg.columns.resolve(
        &cfg.name,
        table.columns.iter().map(|c| c.name.as_str()),
        &protected,
    )?;
    if applied.is_empty() {
        return Ok((table, applied));
    }
    let mut shaped = table;
    shaped.columns.retain(|c| !applied.excludes(&c.name));
    shaped
        .indexed_first_columns
        .retain(|c| !applied.excludes(c));
    for column in &mut shaped.columns {
        match applied.mask_of(&column.name) {
            Some(Mask::Hash) => {
                column.column_type = hashed_type(&column.column_type);
                column.ty = match column.column_type.split_once('(') {
                    Some((_, length)) => SourceType::VarChar {
                        length: length.trim_end_matches(')').parse().unwrap_or(HASH_DIGITS),
                    },
                    None => SourceType::Text,
                };
                column.nullable = true;
            }
            Some(Mask::Year)
                if !matches!(
                    column.ty,
                    SourceType::Date | SourceType::DateTime { .. } | SourceType::Timestamp { .. }
                ) =>
            {
                return Err(Error::config(format!(
                    "tables.{}.mask_columns: `{}` is {}, and `year` masks dates; use hash or null for it",
                    cfg.name, column.name, column.column_type
                )));
            }
            Some(Mask::Null) => column.nullable = true,
            Some(Mask::Year) | None => {}
        }
    }
    Ok((shaped, applied))
}

/// The change from column policy `was` to `now` in words (`exclude: SSN
/// → exclude: SSN; mask: LName=hash`), when a table whose rows were
/// `written` under `was` must be rewritten.
pub fn policy_change(was: &str, now: &str, written: bool) -> Option<String> {
    let show = |p: &str| {
        if p.is_empty() {
            "none".to_string()
        } else {
            p.to_string()
        }
    };
    (written && was != now).then(|| format!("{} → {}", show(was), show(now)))
}

/// Why a phase rewrites a table whose column policy changed.
pub fn policy_reason(change: &str) -> String {
    format!("the column policy changed ({change}): rewritten in full")
}

/// Masks the values of one table's rows, in the order its columns are read.
#[derive(Clone)]
pub struct Masker {
    key: Option<hmac::Key>,
    /// Column positions and their masks.
    columns: Vec<(usize, Mask)>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

impl Masker {
    /// The masker of `applied` for rows of `columns`; `None` when nothing
    /// is masked. A hash needs the key.
    /// The masker of `table`'s rows read in its column order (the shape
    /// [`shape`] gave it), shared by the reader's tasks.
    pub fn for_table(
        table: &SourceTable,
        applied: &Applied,
        key: Option<&Secret>,
    ) -> Result<Option<std::sync::Arc<Masker>>> {
        let columns: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
        Ok(Masker::new(&table.name, &columns, applied, key)?.map(std::sync::Arc::new))
    }

    pub fn new(
        table: &str,
        columns: &[String],
        applied: &Applied,
        key: Option<&Secret>,
    ) -> Result<Option<Masker>> {
        let masked: Vec<(usize, Mask)> = columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| applied.mask_of(c).map(|m| (i, m)))
            .collect();
        if masked.is_empty() {
            return Ok(None);
        }
        let hashes = masked.iter().any(|(_, m)| *m == Mask::Hash);
        let key = match key {
            Some(key) => Some(hmac::Key::new(hmac::HMAC_SHA256, key.expose().as_bytes())),
            None if hashes => {
                return Err(Error::config(format!(
                    "tables.{table}.mask_columns hashes a column, which needs a key: set \
                     ETL_MASK_KEY_FILE (a file holding it) or ETL_MASK_KEY, and keep it: another \
                     key gives other hashes"
                )));
            }
            None => None,
        };
        Ok(Some(Masker {
            key,
            columns: masked,
        }))
    }

    /// Replaces the masked values of `row`.
    pub fn apply(&self, row: &mut Row) {
        for &(i, mask) in &self.columns {
            let Some(value) = row.take::<Value, _>(i) else {
                continue;
            };
            row.place(i, self.masked(value, mask));
        }
    }

    /// Replaces the masked values of a row already taken apart.
    pub fn apply_values(&self, values: &mut [Value]) {
        for &(i, mask) in &self.columns {
            if let Some(value) = values.get_mut(i) {
                *value = self.masked(std::mem::replace(value, Value::NULL), mask);
            }
        }
    }

    fn masked(&self, value: Value, mask: Mask) -> Value {
        match (mask, value) {
            (_, Value::NULL) | (Mask::Null, _) => Value::NULL,
            (Mask::Year, Value::Date(0, ..)) => Value::Date(0, 0, 0, 0, 0, 0, 0),
            (Mask::Year, Value::Date(year, ..)) => Value::Date(year, 1, 1, 0, 0, 0, 0),
            (Mask::Year, Value::Bytes(text)) => Value::Bytes(year_of_text(&text)),
            (Mask::Year, other) => other,
            (Mask::Hash, value) => match &self.key {
                Some(key) => Value::Bytes(hex(hmac::sign(key, &hash_input(&value)).as_ref())),
                None => Value::NULL,
            },
        }
    }
}

/// A date or date-time in text (`2023-04-05 06:07:08`), as the first of
/// January of its year in the same form.
fn year_of_text(text: &[u8]) -> Vec<u8> {
    let year = text.get(..4).unwrap_or(b"0000");
    let rest: &[u8] = if text.len() > 10 {
        b"-01-01 00:00:00"
    } else {
        b"-01-01"
    };
    if year == b"0000" {
        return text.to_vec();
    }
    [year, rest].concat()
}

/// The bytes a value is hashed from: its text, as MySQL writes it, so a
/// value hashes alike whichever protocol read it.
fn hash_input(value: &Value) -> Vec<u8> {
    match value {
        Value::Bytes(b) => b.clone(),
        Value::Int(v) => v.to_string().into_bytes(),
        Value::UInt(v) => v.to_string().into_bytes(),
        Value::Float(v) => v.to_string().into_bytes(),
        Value::Double(v) => v.to_string().into_bytes(),
        // A `date` arrives as a date-time at midnight: a midnight is written
        // as the date alone, whichever type held it.
        Value::Date(y, mo, d, 0, 0, 0, 0) => format!("{y:04}-{mo:02}-{d:02}").into_bytes(),
        Value::Date(y, mo, d, h, mi, s, us) => {
            let mut text = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}");
            if *us > 0 {
                text.push_str(&format!(".{us:06}"));
            }
            text.into_bytes()
        }
        Value::Time(negative, days, h, mi, s, us) => {
            let hours = u64::from(*days) * 24 + u64::from(*h);
            let sign = if *negative { "-" } else { "" };
            let mut text = format!("{sign}{hours:02}:{mi:02}:{s:02}");
            if *us > 0 {
                text.push_str(&format!(".{us:06}"));
            }
            text.into_bytes()
        }
        Value::NULL => Vec::new(),
    }
}

fn hex(bytes: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(mask: &[(&str, Mask)]) -> Applied {
        Applied {
            exclude: Vec::new(),
            mask: mask.iter().map(|(c, m)| (c.to_string(), *m)).collect(),
        }
    }

    #[test]
    fn hashes_are_keyed_hmac_sha256_and_equal_values_stay_equal() {
        let key = Secret::new("key");
        let columns = vec!["LName".to_string(), "Birthdate".to_string()];
        let masker = Masker::new(
            "patient",
            &columns,
            &applied(&[("LName", Mask::Hash), ("Birthdate", Mask::Year)]),
            Some(&key),
        )
        .unwrap()
        .unwrap();
        let mut values = vec![
            Value::Bytes(b"The quick brown fox jumps over the lazy dog".to_vec()),
            Value::Date(1984, 7, 14, 0, 0, 0, 0),
        ];
        masker.apply_values(&mut values);
        // RFC 4231-style known answer (the example of HMAC's Wikipedia page).
        assert_eq!(
            values[0],
            Value::Bytes(
                b"f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8".to_vec()
            )
        );
        assert_eq!(values[1], Value::Date(1984, 1, 1, 0, 0, 0, 0));
        let mut text = vec![Value::NULL, Value::Bytes(b"1984-07-14".to_vec())];
        masker.apply_values(&mut text);
        assert_eq!(
            text,
            vec![Value::NULL, Value::Bytes(b"1984-01-01".to_vec())]
        );
        let other = Masker::new(
            "patient",
            &columns,
            &applied(&[("LName", Mask::Hash)]),
            Some(&Secret::new("another key")),
        )
        .unwrap()
        .unwrap();
        let mut again = vec![Value::Bytes(
            b"The quick brown fox jumps over the lazy dog".to_vec(),
        )];
        other.apply_values(&mut again);
        assert_ne!(again[0], values[0], "another key, another hash");
    }

    #[test]
    fn a_hash_without_a_key_is_refused_and_nothing_masked_needs_no_masker() {
        let columns = vec!["LName".to_string()];
        let err = Masker::new(
            "patient",
            &columns,
            &applied(&[("LName", Mask::Hash)]),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("ETL_MASK_KEY_FILE"), "{err}");
        assert!(
            Masker::new(
                "patient",
                &columns,
                &applied(&[("LName", Mask::Null)]),
                None
            )
            .unwrap()
            .is_some()
        );
        assert!(
            Masker::new("patient", &columns, &applied(&[]), None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_hashed_column_keeps_a_type_that_holds_a_hash() {
        for (from, to) in [
            ("varchar(100)", "varchar(100)"),
            ("char(64)", "varchar(64)"),
            ("varchar(30)", "varchar(64)"),
            ("int(11)", "varchar(64)"),
            ("date", "varchar(64)"),
            ("tinytext", "varchar(64)"),
            ("text", "text"),
            ("MEDIUMTEXT", "mediumtext"),
        ] {
            assert_eq!(hashed_type(from), to, "{from}");
        }
    }
}
