//! Columns, type mapping and value conversion: pure code, no I/O.

pub mod ident;
mod types;
mod value;
mod watermark;

pub use types::{
    DataProfile, PgType, SourceType, UnsupportedType, covering, is_widening, map_type,
};
pub use value::{
    DateTimeParts, Encoded, ValueError, check_date, civil_from_pg_days, days_since_pg_epoch,
    encode_field, put_numeric,
};
pub use watermark::{compare_values, step_back, value_from_text, value_to_text};
