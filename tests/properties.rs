//! Property tests of the pure parts: value conversion into PostgreSQL's
//! binary forms (decoded again here independently), date arithmetic,
//! watermark text, and config parsing (never a panic; errors name the place).
//!
//! `PROPTEST_CASES` sets the cases per property (default 256; the
//! reliability run uses 20,000). Failing inputs proptest finds are kept in
//! `tests/properties.proptest-regressions` and replayed first; the
//! hand-picked inputs in `tests/corpus/config/` run every time.

use etl_pipeline::config::TablesConfig;
use etl_pipeline::schema::{
    DateTimeParts, PgType, SourceType, check_date, civil_from_pg_days, days_since_pg_epoch,
    encode_field, put_numeric, value_from_text, value_to_text,
};
use mysql_async::Value;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// Decodes PostgreSQL's binary `numeric` (base-10000 digits, weight, sign,
/// display scale) to text with exactly `dscale` fraction digits.
fn decode_numeric(bytes: &[u8]) -> String {
    let word = |i: usize| u16::from_be_bytes([bytes[2 * i], bytes[2 * i + 1]]);
    let (ndigits, weight, sign, dscale) = (
        usize::from(word(0)),
        i32::from(word(1) as i16),
        word(2),
        usize::from(word(3)),
    );
    assert!(sign == 0 || sign == 0x4000, "sign word {sign:#x}");
    assert_eq!(bytes.len(), 8 + 2 * ndigits);
    let digits: Vec<u16> = (0..ndigits).map(|i| word(4 + i)).collect();
    assert!(digits.iter().all(|&d| d < 10_000), "{digits:?}");
    // Decimal digits of every base-10000 position from `weight` down.
    let lowest = (weight - i32::try_from(ndigits).unwrap() + 1).min(0);
    let mut int_part = String::new();
    let mut frac_part = String::new();
    for position in (lowest..=weight.max(0)).rev() {
        let index = weight - position;
        let group = usize::try_from(index)
            .ok()
            .and_then(|i| digits.get(i))
            .copied()
            .unwrap_or(0);
        let text = format!("{group:04}");
        if position >= 0 {
            int_part.push_str(&text);
        } else {
            frac_part.push_str(&text);
        }
    }
    let int_part = int_part.trim_start_matches('0');
    let int_part = if int_part.is_empty() { "0" } else { int_part };
    let mut frac_part: String = frac_part.chars().take(dscale).collect();
    while frac_part.len() < dscale {
        frac_part.push('0');
    }
    let negative = sign == 0x4000 && (int_part != "0" || frac_part.chars().any(|c| c != '0'));
    let mut out = format!("{}{int_part}", if negative { "-" } else { "" });
    if dscale > 0 {
        out.push('.');
        out.push_str(&frac_part);
    }
    out
}

/// A decimal as MySQL sends it, and its canonical text (no leading zeros,
/// no sign on zero).
fn decimal() -> impl Strategy<Value = (String, String)> {
    (
        any::<bool>(),
        proptest::collection::vec(0u8..10, 0..36),
        proptest::collection::vec(0u8..10, 0..31),
        any::<bool>(),
    )
        .prop_map(|(negative, int_digits, frac_digits, padded)| {
            let int: String = int_digits.iter().map(|d| char::from(b'0' + d)).collect();
            let frac: String = frac_digits.iter().map(|d| char::from(b'0' + d)).collect();
            let int = if int.is_empty() { "0".to_string() } else { int };
            let text = |int: &str, sign: &str| {
                if frac.is_empty() {
                    format!("{sign}{int}")
                } else {
                    format!("{sign}{int}.{frac}")
                }
            };
            let canonical_int = int.trim_start_matches('0');
            let canonical_int = if canonical_int.is_empty() {
                "0"
            } else {
                canonical_int
            };
            let zero = canonical_int == "0" && frac.chars().all(|c| c == '0');
            let sent_int = if padded {
                int.clone()
            } else {
                canonical_int.to_string()
            };
            let sign = if negative { "-" } else { "" };
            (
                text(&sent_int, sign),
                text(canonical_int, if negative && !zero { "-" } else { "" }),
            )
        })
}

fn valid_date() -> impl Strategy<Value = (u16, u8, u8)> {
    (1u16..=9999, 1u8..=12, 1u8..=31).prop_filter_map("no such day", |(y, m, d)| {
        check_date((y, m, d, 0, 0, 0, 0))
            .ok()
            .flatten()
            .map(|_| (y, m, d))
    })
}

fn moment() -> impl Strategy<Value = DateTimeParts> {
    (valid_date(), 0u8..24, 0u8..60, 0u8..60, 0u32..1_000_000).prop_map(
        |((year, month, day), hour, minute, second, micros)| DateTimeParts {
            year,
            month,
            day,
            hour,
            minute,
            second,
            micros,
        },
    )
}

fn int_target() -> impl Strategy<Value = (PgType, i128, i128)> {
    prop_oneof![
        Just((PgType::Int2, i128::from(i16::MIN), i128::from(i16::MAX))),
        Just((PgType::Int4, i128::from(i32::MIN), i128::from(i32::MAX))),
        Just((PgType::Int8, i128::from(i64::MIN), i128::from(i64::MAX))),
    ]
}

/// Keys of a table entry in `tables.yml`, with values of every YAML shape.
fn table_entry() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("extraction_strategy"),
        Just("incremental_columns"),
        Just("primary_incremental_column"),
        Just("primary_key"),
        Just("batch_size"),
        Just("lookback_seconds"),
        Just("lookback_keys"),
        Just("delete_detection"),
        Just("max_delete_share"),
        Just("data_quality_filters"),
        Just("timeout_seconds"),
        Just("retry_count"),
        Just("time_gap_threshold_days"),
        Just("monitoring"),
        Just("performance_category"),
        Just("no_such_key"),
    ];
    let value = prop_oneof![
        Just("incremental".to_string()),
        Just("full_table".to_string()),
        Just("incremental_chunked".to_string()),
        Just("key_reconcile".to_string()),
        Just("[DateTStamp, SecDateTEdit]".to_string()),
        Just("DateTStamp".to_string()),
        Just("{min_date: '2000-01-01', max_date: 2030-13-45}".to_string()),
        Just("{alert_on_failure: maybe}".to_string()),
        Just("null".to_string()),
        Just("~".to_string()),
        Just("''".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
    ];
    proptest::collection::vec((key, value), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("    {k}: {v}\n"))
            .collect()
    })
}

proptest! {
    // Beside this file, where proptest would look for it after a warning.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn numeric_encoding_decodes_to_the_same_decimal((sent, canonical) in decimal()) {
        let mut buf = Vec::new();
        put_numeric(&sent, &mut buf).unwrap();
        let length = i32::from_be_bytes(buf[..4].try_into().unwrap());
        prop_assert_eq!(usize::try_from(length).unwrap(), buf.len() - 4);
        prop_assert_eq!(decode_numeric(&buf[4..]), canonical);
    }

    #[test]
    fn numeric_encoding_never_panics_on_any_text(text in "\\PC{0,40}") {
        let mut buf = Vec::new();
        let _ = put_numeric(&text, &mut buf);
    }

    #[test]
    fn integers_are_carried_exactly_or_refused((target, min, max) in int_target(), signed in any::<i64>(), unsigned in any::<u64>()) {
        for (value, n) in [(Value::Int(signed), i128::from(signed)), (Value::UInt(unsigned), i128::from(unsigned))] {
            let mut buf = Vec::new();
            let source = SourceType::Integer { bytes: 8, unsigned: matches!(value, Value::UInt(_)) };
            let result = encode_field(&value, &source, &target, &mut buf);
            if (min..=max).contains(&n) {
                prop_assert!(result.is_ok(), "{n} into {target:?}: {result:?}");
                let body = &buf[4..];
                let decoded = match body.len() {
                    2 => i128::from(i16::from_be_bytes(body.try_into().unwrap())),
                    4 => i128::from(i32::from_be_bytes(body.try_into().unwrap())),
                    8 => i128::from(i64::from_be_bytes(body.try_into().unwrap())),
                    other => panic!("{other} bytes"),
                };
                prop_assert_eq!(decoded, n);
            } else {
                prop_assert!(result.is_err(), "{n} into {target:?} was not refused");
            }
        }
    }

    #[test]
    fn dates_and_day_numbers_round_trip((year, month, day) in valid_date()) {
        let days = days_since_pg_epoch(i64::from(year), u32::from(month), u32::from(day));
        prop_assert_eq!(civil_from_pg_days(days), (i64::from(year), u32::from(month), u32::from(day)));
        let next = civil_from_pg_days(days + 1);
        prop_assert!(next > (i64::from(year), u32::from(month), u32::from(day)));
    }

    #[test]
    fn moments_round_trip_through_pg_micros_and_timestamp_fields(parts in moment()) {
        prop_assert_eq!(DateTimeParts::from_pg_micros(parts.pg_micros()), Some(parts));
        let mut buf = Vec::new();
        encode_field(&parts.to_mysql(), &SourceType::DateTime { fsp: 6 }, &PgType::Timestamp(Some(6)), &mut buf).unwrap();
        prop_assert_eq!(&buf[..4], &8i32.to_be_bytes()[..]);
        let micros = i64::from_be_bytes(buf[4..12].try_into().unwrap());
        prop_assert_eq!(micros, parts.pg_micros());
    }

    #[test]
    fn watermark_text_reads_back_as_the_same_value(parts in moment(), key in any::<i64>(), ukey in any::<u64>()) {
        let cases = [
            (parts.to_mysql(), SourceType::DateTime { fsp: 6 }),
            (Value::Int(key), SourceType::Integer { bytes: 8, unsigned: false }),
            (Value::UInt(ukey), SourceType::Integer { bytes: 8, unsigned: true }),
        ];
        for (value, ty) in cases {
            let text = value_to_text(&value).unwrap();
            prop_assert_eq!(value_from_text(&ty, &text).unwrap(), value);
        }
    }

    #[test]
    fn any_text_as_a_config_is_parsed_or_refused_without_panic(text in "\\PC{0,200}") {
        let _ = TablesConfig::parse(&text);
    }

    #[test]
    fn config_errors_name_the_table_or_the_line(entry in table_entry(), name in "[a-z]{1,10}") {
        let yaml = format!("tables:\n  {name}:\n{entry}");
        if let Err(e) = TablesConfig::parse(&yaml) {
            let message = e.to_string();
            prop_assert!(
                message.contains(&format!("tables.{name}")) || message.contains("line "),
                "{yaml}\n→ {message}"
            );
        }
    }
}

/// The kept corpus: hand-picked configs (and any a fuzzing run found) that
/// must parse or be refused with a message naming the table or the line.
#[test]
fn the_config_corpus_is_parsed_or_refused_clearly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        seen += 1;
        let expect_ok = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ok_");
        match TablesConfig::parse(&text) {
            Ok(_) => assert!(expect_ok, "{} was accepted", path.display()),
            Err(e) => {
                assert!(!expect_ok, "{}: {e}", path.display());
                let message = e.to_string();
                assert!(
                    message.contains("tables") || message.contains("line "),
                    "{}: unclear error: {message}",
                    path.display()
                );
            }
        }
    }
    assert!(seen >= 10, "only {seen} corpus files in {}", dir.display());
}
