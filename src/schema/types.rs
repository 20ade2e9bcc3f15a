//! The column model: a MySQL source type beside the PostgreSQL type it maps to.
//!
//! [`SourceType::parse`] reads what `information_schema.COLUMNS` says of a
//! column; [`map_type`] is the one exhaustive mapping to PostgreSQL, with no
//! lossy catch-all. Two MySQL types are decided by their data, because the
//! type alone misleads: `tinyint(1)` is boolean only when every value is 0 or
//! 1, and `time` fits PostgreSQL `time` only when every value lies in
//! 00:00–24:00 (MySQL allows ±838:59:59). [`DataProfile`] carries that finding.

use std::fmt;

/// A MySQL/MariaDB column type, as far as it matters for carrying values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceType {
    /// `tinyint`, `smallint`, `mediumint`, `int`, `bigint`; `bytes` is the storage width.
    Integer { bytes: u8, unsigned: bool },
    /// `tinyint(1)` (MySQL's `bool`): a boolean only if the data agrees.
    TinyIntOne { unsigned: bool },
    /// `decimal(p,s)` / `numeric(p,s)`.
    Decimal { precision: u32, scale: u32 },
    /// `float` (4-byte IEEE 754).
    Float,
    /// `double` / `real` (8-byte IEEE 754).
    Double,
    /// `bit(n)`, 1 ≤ n ≤ 64.
    Bit { width: u32 },
    /// `char(n)` in a character set.
    Char { length: u32 },
    /// `varchar(n)` in a character set.
    VarChar { length: u32 },
    /// `tinytext`, `text`, `mediumtext`, `longtext`.
    Text,
    /// `binary`, `varbinary`, `tinyblob`, `blob`, `mediumblob`, `longblob`.
    Binary,
    /// `enum('a','b')`.
    Enum,
    /// `set('a','b')`.
    Set,
    /// `json` (MySQL), or a MariaDB `longtext` guarded by `json_valid()`.
    Json,
    /// `date`.
    Date,
    /// `datetime(fsp)`.
    DateTime { fsp: u32 },
    /// `timestamp(fsp)`.
    Timestamp { fsp: u32 },
    /// `time(fsp)`, range −838:59:59 to 838:59:59.
    Time { fsp: u32 },
    /// `year`.
    Year,
    /// `geometry`, `point`, ... (MySQL internal format: SRID + WKB).
    Geometry,
}

/// What the columns' data showed, for the types whose mapping depends on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataProfile {
    /// A `tinyint(1)` column holds a value other than 0, 1 or NULL.
    pub non_boolean_values: bool,
    /// A `time` column holds a value below 00:00:00 or above 24:00:00.
    pub time_outside_day: bool,
}

/// Why a MySQL type could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MySQL type `{column_type}` is not supported")]
pub struct UnsupportedType {
    /// The `COLUMN_TYPE` text as the server reported it.
    pub column_type: String,
}

impl SourceType {
    /// Reads a column's type from `information_schema.COLUMNS`:
    /// `DATA_TYPE`, `COLUMN_TYPE`, `NUMERIC_PRECISION`, `NUMERIC_SCALE`,
    /// `DATETIME_PRECISION`, `CHARACTER_MAXIMUM_LENGTH`; `json_checked` says a
    /// `json_valid()` check guards the column (MariaDB's JSON).
    pub fn parse(
        data_type: &str,
        column_type: &str,
        precision: Option<u64>,
        scale: Option<u64>,
        datetime_precision: Option<u64>,
        char_length: Option<u64>,
        json_checked: bool,
    ) -> Result<SourceType, UnsupportedType> {
        let column_type_lc = column_type.to_ascii_lowercase();
        let unsigned = column_type_lc.contains("unsigned");
        let small = |v: Option<u64>| u32::try_from(v.unwrap_or(0)).unwrap_or(u32::MAX);
        let unsupported = || UnsupportedType {
            column_type: column_type.to_string(),
        };
        let ty = match data_type.to_ascii_lowercase().as_str() {
            "tinyint" if column_type_lc.starts_with("tinyint(1)") => {
                SourceType::TinyIntOne { unsigned }
            }
            "tinyint" => SourceType::Integer { bytes: 1, unsigned },
            "smallint" => SourceType::Integer { bytes: 2, unsigned },
            "mediumint" => SourceType::Integer { bytes: 3, unsigned },
            "int" | "integer" => SourceType::Integer { bytes: 4, unsigned },
            "bigint" => SourceType::Integer { bytes: 8, unsigned },
            "decimal" | "numeric" => SourceType::Decimal {
                precision: small(precision),
                scale: small(scale),
            },
            "float" => SourceType::Float,
            "double" | "real" | "double precision" => SourceType::Double,
            "bit" => {
                let width = small(precision);
                if !(1..=64).contains(&width) {
                    return Err(unsupported());
                }
                SourceType::Bit { width }
            }
            "char" => SourceType::Char {
                length: small(char_length),
            },
            "varchar" => SourceType::VarChar {
                length: small(char_length),
            },
            "tinytext" | "text" | "mediumtext" | "longtext" if json_checked => SourceType::Json,
            "tinytext" | "text" | "mediumtext" | "longtext" => SourceType::Text,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                SourceType::Binary
            }
            "enum" => SourceType::Enum,
            "set" => SourceType::Set,
            "json" => SourceType::Json,
            "date" => SourceType::Date,
            "datetime" => SourceType::DateTime {
                fsp: small(datetime_precision),
            },
            "timestamp" => SourceType::Timestamp {
                fsp: small(datetime_precision),
            },
            "time" => SourceType::Time {
                fsp: small(datetime_precision),
            },
            "year" => SourceType::Year,
            "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
            | "multipolygon" | "geometrycollection" => SourceType::Geometry,
            _ => return Err(unsupported()),
        };
        Ok(ty)
    }

    /// Whether rows can be ordered by this column for an incremental read.
    pub fn is_watermark_capable(&self) -> bool {
        matches!(
            self,
            SourceType::Integer { .. }
                | SourceType::Date
                | SourceType::DateTime { .. }
                | SourceType::Timestamp { .. }
        )
    }

    /// Whether the column holds dates and times (data-quality bounds apply).
    pub fn is_temporal(&self) -> bool {
        matches!(
            self,
            SourceType::Date | SourceType::DateTime { .. } | SourceType::Timestamp { .. }
        )
    }

    /// Whether the mapping of this type depends on the data ([`DataProfile`]).
    pub fn needs_profile(&self) -> bool {
        matches!(
            self,
            SourceType::TinyIntOne { .. } | SourceType::Time { .. }
        )
    }
}

/// A PostgreSQL column type this tool reads from the catalog or creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    /// `numeric(p,s)`, or unconstrained `numeric` when `None`.
    Numeric(Option<(u32, u32)>),
    Float4,
    Float8,
    /// `bit(n)`.
    Bit(u32),
    /// `bit varying(n)`.
    VarBit(Option<u32>),
    /// `char(n)` (`bpchar`).
    Char(Option<u32>),
    /// `varchar(n)`.
    VarChar(Option<u32>),
    Text,
    Bytea,
    Json,
    Jsonb,
    Date,
    /// `timestamp(p)` without time zone.
    Timestamp(Option<u32>),
    /// `timestamp(p) with time zone`.
    TimestampTz(Option<u32>),
    /// `time(p)` without time zone.
    Time(Option<u32>),
    Interval,
}

impl PgType {
    /// Reads a type from `pg_type.typname` and `pg_attribute.atttypmod`.
    /// Returns `None` for types this tool does not write.
    pub fn from_catalog(typname: &str, typmod: i32) -> Option<PgType> {
        let modifier = u32::try_from(typmod).ok();
        let char_len = modifier.and_then(|m| m.checked_sub(4));
        let ty = match typname {
            "bool" => PgType::Bool,
            "int2" => PgType::Int2,
            "int4" => PgType::Int4,
            "int8" => PgType::Int8,
            "numeric" => PgType::Numeric(char_len.map(|m| ((m >> 16) & 0xffff, m & 0xffff))),
            "float4" => PgType::Float4,
            "float8" => PgType::Float8,
            "bit" => PgType::Bit(modifier.unwrap_or(1)),
            "varbit" => PgType::VarBit(modifier),
            "bpchar" => PgType::Char(char_len),
            "varchar" => PgType::VarChar(char_len),
            "text" => PgType::Text,
            "bytea" => PgType::Bytea,
            "json" => PgType::Json,
            "jsonb" => PgType::Jsonb,
            "date" => PgType::Date,
            "timestamp" => PgType::Timestamp(modifier),
            "timestamptz" => PgType::TimestampTz(modifier),
            "time" => PgType::Time(modifier),
            "interval" => PgType::Interval,
            _ => return None,
        };
        Some(ty)
    }

    /// Whether values of this type compare with `=` (json does not).
    pub fn has_equality(&self) -> bool {
        !matches!(self, PgType::Json)
    }
}

impl fmt::Display for PgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_len = |f: &mut fmt::Formatter<'_>, name: &str, n: &Option<u32>| match n {
            Some(n) => write!(f, "{name}({n})"),
            None => f.write_str(name),
        };
        match self {
            PgType::Bool => f.write_str("boolean"),
            PgType::Int2 => f.write_str("smallint"),
            PgType::Int4 => f.write_str("integer"),
            PgType::Int8 => f.write_str("bigint"),
            PgType::Numeric(Some((p, s))) => write!(f, "numeric({p},{s})"),
            PgType::Numeric(None) => f.write_str("numeric"),
            PgType::Float4 => f.write_str("real"),
            PgType::Float8 => f.write_str("double precision"),
            PgType::Bit(n) => write!(f, "bit({n})"),
            PgType::VarBit(n) => with_len(f, "bit varying", n),
            PgType::Char(n) => with_len(f, "character", n),
            PgType::VarChar(n) => with_len(f, "character varying", n),
            PgType::Text => f.write_str("text"),
            PgType::Bytea => f.write_str("bytea"),
            PgType::Json => f.write_str("json"),
            PgType::Jsonb => f.write_str("jsonb"),
            PgType::Date => f.write_str("date"),
            PgType::Timestamp(Some(p)) => write!(f, "timestamp({p}) without time zone"),
            PgType::Timestamp(None) => f.write_str("timestamp without time zone"),
            PgType::TimestampTz(Some(p)) => write!(f, "timestamp({p}) with time zone"),
            PgType::TimestampTz(None) => f.write_str("timestamp with time zone"),
            PgType::Time(Some(p)) => write!(f, "time({p}) without time zone"),
            PgType::Time(None) => f.write_str("time without time zone"),
            PgType::Interval => f.write_str("interval"),
        }
    }
}

/// PostgreSQL's widest `numeric` precision that a `(p,s)` modifier allows.
const PG_MAX_NUMERIC_PRECISION: u32 = 1000;
/// PostgreSQL's `varchar(n)`/`char(n)` limit; longer MySQL columns map to `text`.
const PG_MAX_CHAR_LENGTH: u32 = 10_485_760;

/// The PostgreSQL type a MySQL type is created as. Exhaustive: every
/// [`SourceType`] has an arm, and every arm carries every value of its type.
pub fn map_type(source: &SourceType, profile: DataProfile) -> PgType {
    match source {
        SourceType::Integer { bytes: 1, .. } => PgType::Int2,
        SourceType::Integer {
            bytes: 2,
            unsigned: false,
        } => PgType::Int2,
        SourceType::Integer { bytes: 2 | 3, .. } => PgType::Int4,
        SourceType::Integer {
            bytes: 4,
            unsigned: false,
        } => PgType::Int4,
        SourceType::Integer {
            bytes: 4,
            unsigned: true,
        } => PgType::Int8,
        SourceType::Integer {
            unsigned: false, ..
        } => PgType::Int8,
        SourceType::Integer { unsigned: true, .. } => PgType::Numeric(Some((20, 0))),
        SourceType::TinyIntOne { .. } if profile.non_boolean_values => PgType::Int2,
        SourceType::TinyIntOne { .. } => PgType::Bool,
        SourceType::Decimal { precision, scale }
            if *precision >= 1 && *precision <= PG_MAX_NUMERIC_PRECISION && scale <= precision =>
        {
            PgType::Numeric(Some((*precision, *scale)))
        }
        SourceType::Decimal { .. } => PgType::Numeric(None),
        SourceType::Float => PgType::Float4,
        SourceType::Double => PgType::Float8,
        SourceType::Bit { width } => PgType::Bit(*width),
        SourceType::Char { length } if (1..=PG_MAX_CHAR_LENGTH).contains(length) => {
            PgType::Char(Some(*length))
        }
        SourceType::VarChar { length } if (1..=PG_MAX_CHAR_LENGTH).contains(length) => {
            PgType::VarChar(Some(*length))
        }
        SourceType::Char { .. } | SourceType::VarChar { .. } => PgType::Text,
        SourceType::Text | SourceType::Enum | SourceType::Set => PgType::Text,
        SourceType::Binary | SourceType::Geometry => PgType::Bytea,
        SourceType::Json => PgType::Jsonb,
        SourceType::Date => PgType::Date,
        SourceType::DateTime { fsp } | SourceType::Timestamp { fsp } => {
            PgType::Timestamp(Some(*fsp))
        }
        SourceType::Time { .. } if profile.time_outside_day => PgType::Interval,
        SourceType::Time { fsp } => PgType::Time(Some(*fsp)),
        SourceType::Year => PgType::Int2,
    }
}

/// Whether every value of PostgreSQL type `from` converts to `to` without
/// change, so a column can be altered in place when its source type grew.
pub fn is_widening(from: &PgType, to: &PgType) -> bool {
    use PgType::*;
    match (from, to) {
        (Int2, Int4 | Int8 | Numeric(None)) | (Int4, Int8 | Numeric(None)) => true,
        (Int8, Numeric(None)) => true,
        (Int2, Numeric(Some((p, s)))) => p - s >= 5,
        (Int4, Numeric(Some((p, s)))) => p - s >= 10,
        (Int8, Numeric(Some((p, s)))) => p - s >= 19,
        (Numeric(Some(_)), Numeric(None)) => true,
        (Numeric(Some((p1, s1))), Numeric(Some((p2, s2)))) => s2 >= s1 && p2 - s2 >= p1 - s1,
        (Float4, Float8) => true,
        (VarChar(Some(_)), VarChar(None) | Text) => true,
        (VarChar(Some(a)), VarChar(Some(b))) => b > a,
        (Time(_), Interval) => true,
        (Timestamp(Some(a)), Timestamp(Some(b))) => b > a,
        (Timestamp(Some(_)), Timestamp(None)) => true,
        (Time(Some(a)), Time(Some(b))) => b > a,
        _ => false,
    }
}

/// The narrowest type holding every value of both `from` and `to` when
/// neither holds the other's: a source `decimal(10,2)` that became
/// `decimal(10,4)` gains decimal places but loses integer digits, so the
/// warehouse column becomes `numeric(12,4)`.
pub fn covering(from: &PgType, to: &PgType) -> Option<PgType> {
    match (from, to) {
        (PgType::Numeric(Some((p1, s1))), PgType::Numeric(Some((p2, s2)))) => {
            let scale = *s1.max(s2);
            let whole = p1.saturating_sub(*s1).max(p2.saturating_sub(*s2));
            (whole + scale <= NUMERIC_MAX_PRECISION)
                .then_some(PgType::Numeric(Some((whole + scale, scale))))
        }
        _ => None,
    }
}

/// PostgreSQL's largest declared `numeric` precision.
const NUMERIC_MAX_PRECISION: u32 = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decimal_that_gained_places_but_lost_digits_is_covered_by_both() {
        let (was, now) = (
            PgType::Numeric(Some((10, 2))),
            PgType::Numeric(Some((10, 4))),
        );
        assert!(!is_widening(&was, &now));
        let both = covering(&was, &now).unwrap();
        assert_eq!(both, PgType::Numeric(Some((12, 4))));
        assert!(is_widening(&was, &both));
        assert_eq!(covering(&both, &now), Some(both.clone()));
        assert_eq!(covering(&PgType::Int4, &now), None);
    }

    fn parse(data_type: &str, column_type: &str) -> SourceType {
        SourceType::parse(
            data_type,
            column_type,
            Some(10),
            Some(2),
            Some(0),
            Some(255),
            false,
        )
        .unwrap()
    }

    #[test]
    fn unsigned_bigint_maps_to_numeric_never_float() {
        let ty = parse("bigint", "bigint(20) unsigned");
        assert_eq!(
            map_type(&ty, DataProfile::default()),
            PgType::Numeric(Some((20, 0)))
        );
    }

    #[test]
    fn every_integer_width_fits_its_target() {
        let cases = [
            ("tinyint(4)", "tinyint", PgType::Int2),
            ("tinyint(3) unsigned", "tinyint", PgType::Int2),
            ("smallint(6)", "smallint", PgType::Int2),
            ("smallint(5) unsigned", "smallint", PgType::Int4),
            ("mediumint(9)", "mediumint", PgType::Int4),
            ("mediumint(8) unsigned", "mediumint", PgType::Int4),
            ("int(11)", "int", PgType::Int4),
            ("int(10) unsigned", "int", PgType::Int8),
            ("bigint(20)", "bigint", PgType::Int8),
        ];
        for (column_type, data_type, expected) in cases {
            assert_eq!(
                map_type(&parse(data_type, column_type), DataProfile::default()),
                expected,
                "{column_type}"
            );
        }
    }

    #[test]
    fn tinyint_one_is_boolean_only_when_the_data_agrees() {
        let ty = parse("tinyint", "tinyint(1)");
        assert_eq!(map_type(&ty, DataProfile::default()), PgType::Bool);
        let profile = DataProfile {
            non_boolean_values: true,
            ..DataProfile::default()
        };
        assert_eq!(map_type(&ty, profile), PgType::Int2);
    }

    #[test]
    fn time_outside_a_day_maps_to_interval() {
        let ty = parse("time", "time");
        assert_eq!(map_type(&ty, DataProfile::default()), PgType::Time(Some(0)));
        let profile = DataProfile {
            time_outside_day: true,
            ..DataProfile::default()
        };
        assert_eq!(map_type(&ty, profile), PgType::Interval);
    }

    #[test]
    fn mariadb_json_is_recognised_by_its_check() {
        let ty = SourceType::parse("longtext", "longtext", None, None, None, None, true).unwrap();
        assert_eq!(ty, SourceType::Json);
    }

    #[test]
    fn unknown_types_are_refused_not_guessed() {
        let err = SourceType::parse("vector", "vector(3)", None, None, None, None, false);
        assert!(err.is_err());
    }

    #[test]
    fn only_lossless_type_changes_count_as_widening() {
        assert!(is_widening(&PgType::Int4, &PgType::Int8));
        assert!(is_widening(&PgType::Int8, &PgType::Numeric(Some((20, 0)))));
        assert!(!is_widening(&PgType::Int8, &PgType::Numeric(Some((18, 0)))));
        assert!(is_widening(
            &PgType::VarChar(Some(10)),
            &PgType::VarChar(Some(50))
        ));
        assert!(!is_widening(
            &PgType::VarChar(Some(50)),
            &PgType::VarChar(Some(10))
        ));
        assert!(is_widening(
            &PgType::Numeric(Some((10, 2))),
            &PgType::Numeric(Some((12, 4)))
        ));
        assert!(!is_widening(
            &PgType::Numeric(Some((10, 2))),
            &PgType::Numeric(Some((10, 4)))
        ));
        assert!(!is_widening(&PgType::Int8, &PgType::Int4));
        assert!(!is_widening(&PgType::Text, &PgType::Bytea));
        assert!(is_widening(&PgType::Time(Some(0)), &PgType::Interval));
    }

    #[test]
    fn catalog_types_round_trip_through_display() {
        assert_eq!(
            PgType::from_catalog("varchar", 259),
            Some(PgType::VarChar(Some(255)))
        );
        assert_eq!(
            PgType::from_catalog("numeric", (20 << 16) + 4),
            Some(PgType::Numeric(Some((20, 0))))
        );
        assert_eq!(PgType::Numeric(Some((20, 0))).to_string(), "numeric(20,0)");
        assert_eq!(PgType::from_catalog("uuid", -1), None);
    }
}
