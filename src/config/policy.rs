//! Where a table's patient columns go: `exclude_columns` and
//! `mask_columns`, per table in `tables.yml` or for every table under
//! `defaults:`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};

/// What becomes of a masked column's values before they reach the replica
/// (or, in direct mode, the warehouse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mask {
    /// A keyed HMAC-SHA-256 of the value, in hex: equal values stay equal.
    Hash,
    /// A date's year: the first of January of it.
    Year,
    /// Nothing: the column is kept, empty.
    Null,
}

impl Mask {
    pub fn name(self) -> &'static str {
        match self {
            Mask::Hash => "hash",
            Mask::Year => "year",
            Mask::Null => "null",
        }
    }
}

/// `hash`, `year` or `null`; YAML reads a bare `null` as no value at all,
/// which means the same here.
impl<'de> Deserialize<'de> for Mask {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Mask, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Mask;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("hash, year or null")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Mask, E> {
                match v.to_ascii_lowercase().as_str() {
                    "hash" => Ok(Mask::Hash),
                    "year" => Ok(Mask::Year),
                    "null" => Ok(Mask::Null),
                    _ => Err(E::custom(format!(
                        "`{v}` is not a mask; use hash, year or null"
                    ))),
                }
            }
            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Mask, E> {
                Ok(Mask::Null)
            }
            fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Mask, E> {
                Ok(Mask::Null)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The `exclude_columns` and `mask_columns` of `defaults:` or of a table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub exclude_columns: Option<Vec<String>>,
    pub mask_columns: Option<BTreeMap<String, Mask>>,
}

/// One table's column policy. A table's own `exclude_columns` (or
/// `mask_columns`) replaces the default one; a column a table names must be
/// in it, while the defaults apply to the tables that have the column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnPolicy {
    pub exclude: Vec<String>,
    pub mask: BTreeMap<String, Mask>,
    /// Whether `exclude` is the table's own list (its names must exist).
    pub own_exclude: bool,
    /// Whether `mask` is the table's own map.
    pub own_mask: bool,
}

impl ColumnPolicy {
    /// Whether the policy masks `column` (matched as MySQL matches names).
    pub fn masks(&self, column: &str) -> bool {
        self.mask.keys().any(|m| m.eq_ignore_ascii_case(column))
    }

    /// The policy of table `name` from its own keys and the defaults.
    pub(super) fn merge(name: &str, own: RawPolicy, defaults: &RawPolicy) -> Result<ColumnPolicy> {
        let mut policy = ColumnPolicy {
            own_exclude: own.exclude_columns.is_some(),
            own_mask: own.mask_columns.is_some(),
            exclude: own
                .exclude_columns
                .or_else(|| defaults.exclude_columns.clone())
                .unwrap_or_default(),
            mask: own
                .mask_columns
                .or_else(|| defaults.mask_columns.clone())
                .unwrap_or_default(),
        };
        // What the table says of a column wins over what the defaults say.
        if policy.own_mask && !policy.own_exclude {
            let own_mask = policy.mask.clone();
            policy
                .exclude
                .retain(|c| !own_mask.keys().any(|m| m.eq_ignore_ascii_case(c)));
        }
        if policy.own_exclude && !policy.own_mask {
            let own_exclude = policy.exclude.clone();
            policy
                .mask
                .retain(|m, _| !own_exclude.iter().any(|c| c.eq_ignore_ascii_case(m)));
        }
        if let Some(both) = policy
            .exclude
            .iter()
            .find(|c| policy.mask.keys().any(|m| m.eq_ignore_ascii_case(c)))
        {
            return Err(Error::config(format!(
                "tables.{name}: column `{both}` is both excluded and masked; keep it in one of \
                 exclude_columns and mask_columns"
            )));
        }
        Ok(policy)
    }

    /// The policy as it applies to a table with these columns: excluded
    /// and masked columns under the table's own spelling, in a stable text
    /// (`exclude: A, B; mask: C=hash`) that tells one policy from another.
    /// Errors name a column the table's own setting lists but the table
    /// lacks, and a `protected` column (role, name: a key or watermark
    /// column) the policy would hide.
    pub fn resolve<'a>(
        &self,
        table: &str,
        columns: impl Iterator<Item = &'a str> + Clone,
        protected: &[(&str, &str)],
    ) -> Result<Applied> {
        let find = |name: &str| columns.clone().find(|c| c.eq_ignore_ascii_case(name));
        let mut applied = Applied::default();
        for name in &self.exclude {
            match find(name) {
                Some(column) => applied.exclude.push(column.to_string()),
                None if self.own_exclude => return Err(missing(table, "exclude_columns", name)),
                None => {}
            }
        }
        for (name, mask) in &self.mask {
            match find(name) {
                Some(column) => applied.mask.push((column.to_string(), *mask)),
                None if self.own_mask => return Err(missing(table, "mask_columns", name)),
                None => {}
            }
        }
        for (role, column) in protected {
            let hidden = applied
                .exclude
                .iter()
                .chain(applied.mask.iter().map(|(c, _)| c))
                .find(|c| c.eq_ignore_ascii_case(column));
            if let Some(hidden) = hidden {
                return Err(Error::config(format!(
                    "tables.{table}: column `{hidden}` is the table's {role}, so it cannot be \
                     excluded or masked; take it out of exclude_columns / mask_columns (a \
                     `defaults:` entry applies to every table that has the column)"
                )));
            }
        }
        applied.exclude.sort();
        applied.mask.sort();
        Ok(applied)
    }
}

fn missing(table: &str, key: &str, column: &str) -> Error {
    Error::config(format!(
        "tables.{table}.{key}: `{column}` is not a column of `{table}`; check the spelling \
         (a `defaults:` entry is the place for columns only some tables have)"
    ))
}

/// A policy applied to one table's columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Columns never read, by the table's spelling, sorted.
    pub exclude: Vec<String>,
    /// Columns masked, by the table's spelling, sorted.
    pub mask: Vec<(String, Mask)>,
}

impl Applied {
    /// Whether the table's values pass unchanged.
    pub fn is_empty(&self) -> bool {
        self.exclude.is_empty() && self.mask.is_empty()
    }

    /// A stable text naming the policy; empty when nothing applies.
    pub fn fingerprint(&self) -> String {
        let mut parts = Vec::new();
        if !self.exclude.is_empty() {
            parts.push(format!("exclude: {}", self.exclude.join(", ")));
        }
        if !self.mask.is_empty() {
            let masks: Vec<String> = self
                .mask
                .iter()
                .map(|(c, m)| format!("{c}={}", m.name()))
                .collect();
            parts.push(format!("mask: {}", masks.join(", ")));
        }
        parts.join("; ")
    }

    /// Whether `column` is excluded.
    pub fn excludes(&self, column: &str) -> bool {
        self.exclude.iter().any(|c| c.eq_ignore_ascii_case(column))
    }

    /// How `column` is masked, if it is.
    pub fn mask_of(&self, column: &str) -> Option<Mask> {
        self.mask
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(column))
            .map(|(_, m)| *m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(exclude: Option<&[&str]>, mask: Option<&[(&str, Mask)]>) -> RawPolicy {
        RawPolicy {
            exclude_columns: exclude.map(|e| e.iter().map(|c| c.to_string()).collect()),
            mask_columns: mask.map(|m| m.iter().map(|(c, k)| (c.to_string(), *k)).collect()),
        }
    }

    const COLUMNS: [&str; 5] = ["PatNum", "LName", "SSN", "Birthdate", "DateTStamp"];

    #[test]
    fn a_table_setting_replaces_the_default_and_defaults_skip_absent_columns() {
        let defaults = raw(Some(&["SSN", "Email"]), Some(&[("Birthdate", Mask::Year)]));
        let policy = ColumnPolicy::merge(
            "patient",
            raw(None, Some(&[("lname", Mask::Hash)])),
            &defaults,
        )
        .unwrap();
        let applied = policy
            .resolve("patient", COLUMNS.into_iter(), &[("primary key", "PatNum")])
            .unwrap();
        assert_eq!(applied.exclude, vec!["SSN"]);
        assert_eq!(applied.mask, vec![("LName".to_string(), Mask::Hash)]);
        assert_eq!(applied.fingerprint(), "exclude: SSN; mask: LName=hash");
        let inherited = ColumnPolicy::merge("patient", RawPolicy::default(), &defaults).unwrap();
        let applied = inherited
            .resolve("patient", COLUMNS.into_iter(), &[])
            .unwrap();
        assert_eq!(applied.mask, vec![("Birthdate".to_string(), Mask::Year)]);
        assert!(
            ColumnPolicy::default()
                .resolve("patient", COLUMNS.into_iter(), &[])
                .unwrap()
                .fingerprint()
                .is_empty()
        );
    }

    #[test]
    fn names_a_table_lacks_keys_and_double_listings_are_refused() {
        let own = ColumnPolicy::merge("patient", raw(Some(&["SNN"]), None), &RawPolicy::default())
            .unwrap();
        let err = own
            .resolve("patient", COLUMNS.into_iter(), &[])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("tables.patient.exclude_columns: `SNN`"),
            "{err}"
        );
        let key = ColumnPolicy::merge(
            "patient",
            raw(None, Some(&[("PatNum", Mask::Hash)])),
            &RawPolicy::default(),
        )
        .unwrap();
        let err = key
            .resolve("patient", COLUMNS.into_iter(), &[("primary key", "PatNum")])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("`PatNum` is the table's primary key"),
            "{err}"
        );
        let err = ColumnPolicy::merge(
            "patient",
            raw(Some(&["LName"]), Some(&[("LName", Mask::Null)])),
            &RawPolicy::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("both excluded and masked"),
            "{err}"
        );
        // A table's own word on a column beats the default's.
        let defaults = raw(Some(&["Email"]), Some(&[("SSN", Mask::Hash)]));
        let masked = ColumnPolicy::merge(
            "patient",
            raw(None, Some(&[("email", Mask::Hash)])),
            &defaults,
        )
        .unwrap();
        assert!(masked.exclude.is_empty());
        let excluded =
            ColumnPolicy::merge("patient", raw(Some(&["ssn"]), None), &defaults).unwrap();
        assert!(excluded.mask.is_empty());
    }
}
