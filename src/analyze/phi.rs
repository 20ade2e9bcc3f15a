//! Likely protected health information among a table's columns: OpenDental's
//! patient fields by name (a built-in list), and, with its schema
//! documentation, the columns whose descriptions say so.

use std::collections::BTreeMap;

use super::Docs;
use crate::config::Mask;

/// What kind of patient data a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PhiKind {
    Name,
    /// SSN, Medicaid ID, chart number: identifies the patient by itself.
    Identifier,
    Birthdate,
    Address,
    Phone,
    Email,
    /// Free text about the patient.
    Note,
}

impl PhiKind {
    pub fn name(self) -> &'static str {
        match self {
            PhiKind::Name => "name",
            PhiKind::Identifier => "identifier",
            PhiKind::Birthdate => "birthdate",
            PhiKind::Address => "address",
            PhiKind::Phone => "phone",
            PhiKind::Email => "email",
            PhiKind::Note => "free-text note",
        }
    }

    /// The mask `analyze --phi mask` writes: hashes where joining and
    /// counting by the value still serve (names, identifiers, phones,
    /// emails), the year of a birthdate, and nothing of an address or a
    /// note.
    pub fn mask(self) -> Mask {
        match self {
            PhiKind::Name | PhiKind::Identifier | PhiKind::Phone | PhiKind::Email => Mask::Hash,
            PhiKind::Birthdate => Mask::Year,
            PhiKind::Address | PhiKind::Note => Mask::Null,
        }
    }
}

/// OpenDental's patient fields, by column name (matched whatever the case).
const BUILT_IN: &[(&str, PhiKind)] = &[
    ("LName", PhiKind::Name),
    ("FName", PhiKind::Name),
    ("MiddleI", PhiKind::Name),
    ("Preferred", PhiKind::Name),
    ("ICEName", PhiKind::Name),
    ("SSN", PhiKind::Identifier),
    ("MedicaidID", PhiKind::Identifier),
    ("ChartNumber", PhiKind::Identifier),
    ("Birthdate", PhiKind::Birthdate),
    ("DateOfBirth", PhiKind::Birthdate),
    ("Address", PhiKind::Address),
    ("Address2", PhiKind::Address),
    ("City", PhiKind::Address),
    ("Zip", PhiKind::Address),
    ("AddrNote", PhiKind::Address),
    ("Email", PhiKind::Email),
];

/// Tables whose text columns are all notes about the patient.
const NOTE_TABLES: &[&str] = &["patientnote"];

/// What a documented description says a column holds.
const DESCRIBED: &[(&str, PhiKind)] = &[
    ("social security", PhiKind::Identifier),
    ("date of birth", PhiKind::Birthdate),
    ("birthdate", PhiKind::Birthdate),
    ("last name", PhiKind::Name),
    ("first name", PhiKind::Name),
    ("email address", PhiKind::Email),
    ("phone number", PhiKind::Phone),
];

/// What a documented description of a text column says when it holds
/// free text about the patient.
const DESCRIBED_NOTE: &[&str] = &[
    "note",
    "medical",
    "history",
    "comment",
    "text that the user",
];

/// The likely PHI columns of `table` (`columns`: name and `COLUMN_TYPE`),
/// by column order. Only tables about patients are looked at: `patient`,
/// `patientnote`, and those with a `PatNum` column.
pub fn flag(
    table: &str,
    columns: &[(String, String)],
    docs: Option<&Docs>,
) -> Vec<(String, PhiKind)> {
    let about_patients = table.eq_ignore_ascii_case("patient")
        || NOTE_TABLES.iter().any(|t| t.eq_ignore_ascii_case(table))
        || columns
            .iter()
            .any(|(c, _)| c.eq_ignore_ascii_case("PatNum"));
    if !about_patients {
        return Vec::new();
    }
    let mut found: BTreeMap<usize, PhiKind> = BTreeMap::new();
    for (i, (column, column_type)) in columns.iter().enumerate() {
        let text = is_text(column_type);
        let by_name = BUILT_IN
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(column))
            .map(|(_, kind)| *kind)
            .or_else(|| {
                let lower = column.to_ascii_lowercase();
                if lower.ends_with("phone") {
                    Some(PhiKind::Phone)
                } else if text
                    && (lower.contains("note")
                        || NOTE_TABLES.iter().any(|t| t.eq_ignore_ascii_case(table)))
                {
                    Some(PhiKind::Note)
                } else {
                    None
                }
            });
        let by_docs = docs
            .and_then(|d| d.column_summary(table, column))
            .and_then(|summary| {
                let summary = summary.to_ascii_lowercase();
                DESCRIBED
                    .iter()
                    .find(|(words, _)| summary.contains(words))
                    .map(|(_, kind)| *kind)
                    .or_else(|| {
                        (text && DESCRIBED_NOTE.iter().any(|w| summary.contains(w)))
                            .then_some(PhiKind::Note)
                    })
            });
        if let Some(kind) = by_name.or(by_docs) {
            // A birthdate is a date; a "birthdate" flag on another type
            // (a reminder setting) is not one.
            if kind != PhiKind::Birthdate || column_type.to_ascii_lowercase().starts_with("date") {
                found.insert(i, kind);
            }
        }
    }
    found
        .into_iter()
        .map(|(i, kind)| (columns[i].0.clone(), kind))
        .collect()
}

fn is_text(column_type: &str) -> bool {
    let t = column_type.to_ascii_lowercase();
    ["tinytext", "text", "mediumtext", "longtext"]
        .iter()
        .any(|k| t == *k || t.starts_with(&format!("{k} ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn patient_fields_are_flagged_and_other_tables_names_are_not() {
        let patient = cols(&[
            ("PatNum", "bigint(20)"),
            ("LName", "varchar(100)"),
            ("SSN", "varchar(100)"),
            ("Birthdate", "date"),
            ("HmPhone", "varchar(30)"),
            ("Email", "varchar(100)"),
            ("AddrNote", "text"),
            ("EstBalance", "double"),
        ]);
        let flagged = flag("patient", &patient, None);
        let kinds: Vec<(&str, PhiKind)> = flagged.iter().map(|(c, k)| (c.as_str(), *k)).collect();
        assert_eq!(
            kinds,
            vec![
                ("LName", PhiKind::Name),
                ("SSN", PhiKind::Identifier),
                ("Birthdate", PhiKind::Birthdate),
                ("HmPhone", PhiKind::Phone),
                ("Email", PhiKind::Email),
                ("AddrNote", PhiKind::Address),
            ]
        );
        let provider = cols(&[("ProvNum", "bigint(20)"), ("LName", "varchar(100)")]);
        assert!(flag("provider", &provider, None).is_empty());
        let commlog = cols(&[
            ("PatNum", "bigint(20)"),
            ("Note", "text"),
            ("Mode_", "tinyint"),
        ]);
        assert_eq!(
            flag("commlog", &commlog, None),
            vec![("Note".to_string(), PhiKind::Note)]
        );
        let notes = cols(&[
            ("PatNum", "bigint(20)"),
            ("Medical", "text"),
            ("Pronoun", "tinyint"),
        ]);
        assert_eq!(
            flag("patientnote", &notes, None),
            vec![("Medical".to_string(), PhiKind::Note)]
        );
    }

    #[test]
    fn the_documentation_adds_what_names_do_not_say() {
        let xml = include_str!("../../fixtures/opendental/OpenDentalDocumentation24-3.xml");
        let docs = crate::analyze::parse_docs(xml).unwrap();
        let contact = cols(&[("PatNum", "bigint(20)"), ("SecondName", "varchar(255)")]);
        assert!(flag("contact", &contact, Some(&docs)).is_empty());
        let patient = cols(&[
            ("PatNum", "bigint(20)"),
            ("FName", "varchar(100)"),
            ("Ward", "varchar(255)"),
        ]);
        assert_eq!(
            flag("patient", &patient, Some(&docs)),
            vec![("FName".to_string(), PhiKind::Name)]
        );
        // An ortho chart's values are what the user typed: its name does
        // not say so, its description does.
        let orthochart = cols(&[
            ("OrthoChartNum", "bigint(20)"),
            ("PatNum", "bigint(20)"),
            ("FieldName", "varchar(255)"),
            ("FieldValue", "text"),
        ]);
        assert!(flag("orthochart", &orthochart, None).is_empty());
        assert_eq!(
            flag("orthochart", &orthochart, Some(&docs)),
            vec![("FieldValue".to_string(), PhiKind::Note)]
        );
    }
}
