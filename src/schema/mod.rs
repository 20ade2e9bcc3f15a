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

/// FNV-1a over text parts (each ended by a NUL), in 16 hex digits: a
/// fingerprint stable across builds and machines, for telling definitions
/// apart (not for security).
pub fn fnv<'a>(parts: impl IntoIterator<Item = &'a String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}
