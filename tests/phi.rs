//! Patient columns: `exclude_columns` never reads a column (the source's
//! general query log is the witness), `mask_columns` writes keyed hashes,
//! years and NULLs at the first hop, and a change of policy rewrites the
//! table.

mod common;

use common::{
    PrivateMariaDb, TEST_MASK_KEY, TestDb, binary_with, exec_on, phase_report, scratch,
    table_config, text,
};
use etl_pipeline::config::TablesConfig;
use mysql_async::prelude::Queryable;

const PATIENT: &str = "CREATE TABLE `patient` (
    `PatNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
    `LName` varchar(100) NOT NULL DEFAULT '',
    `FName` varchar(100) NOT NULL DEFAULT '',
    `SSN` varchar(100) NOT NULL DEFAULT '',
    `Email` varchar(100) NOT NULL DEFAULT '',
    `HmPhone` varchar(30) NOT NULL DEFAULT '555-0100',
    `Birthdate` date NOT NULL DEFAULT '0001-01-01',
    `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
    KEY `ssn` (`SSN`),
    KEY `stamp` (`DateTStamp`))";

/// A referral names patients by last name too: a join on the hashed names
/// must find what the clear names find.
const REFERRAL: &str = "CREATE TABLE `referral` (
    `ReferralNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
    `LName` varchar(100) NOT NULL DEFAULT '',
    `SSN` varchar(100) NULL,
    `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP)";

const ROWS: [&str; 4] = [
    "INSERT INTO `patient` (`LName`, `FName`, `SSN`, `Email`, `Birthdate`) \
     SELECT CONCAT('Lee', seq % 40), CONCAT('Ann', seq), LPAD(seq, 9, '7'), CONCAT('p', seq, '@mail.example'), \
            DATE_ADD('1950-03-17', INTERVAL seq * 37 DAY) FROM seq_1_to_300",
    "INSERT INTO `patient` (`LName`, `SSN`, `Birthdate`) VALUES ('O''Brien', '', '0000-00-00')",
    "INSERT INTO `referral` (`LName`, `SSN`) SELECT CONCAT('Lee', seq % 60), LPAD(seq, 9, '3') FROM seq_1_to_90",
    "INSERT INTO `referral` (`LName`, `SSN`) VALUES ('Nobody', NULL)",
];

/// The policy the acceptance check names: `exclude_columns` and
/// `mask_columns: {LName: hash}`, here with a `defaults:` block that every
/// table takes and `patient` overrides.
fn tables_yml(patient_excludes: &str, patient_masks: &str) -> String {
    format!(
        "defaults:\n  exclude_columns: [SSN]\n  mask_columns: {{LName: hash}}\n\
         tables:\n  patient:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    reconcile: rows\n    exclude_columns: {patient_excludes}\n    \
         mask_columns: {patient_masks}\n  referral:\n    extraction_strategy: full_table\n"
    )
}

/// HMAC-SHA-256 of `value` under the tests' key, by the openssl command:
/// what the tool writes must be the standard construction.
fn openssl_hmac(value: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf '%s' \"$VALUE\" | openssl dgst -sha256 -hmac '{TEST_MASK_KEY}' -r"
        ))
        .env("VALUE", value)
        .output()
        .expect("openssl must be installed for this test");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

async fn pg_columns(db: &TestDb, table: &str) -> Vec<String> {
    db.pg()
        .await
        .query(
            "select column_name::text from information_schema.columns \
             where table_schema = 'raw' and table_name = $1 order by ordinal_position",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_columns_are_never_read_and_masked_values_still_join() {
    let dir = scratch("phi_cli");
    let log = dir.join("general.log");
    let server = PrivateMariaDb::start_with(
        "phi_cli",
        &[
            "--bind-address=127.0.0.1".into(),
            "--general-log=1".into(),
            format!("--general-log-file={}", log.display()),
        ],
    )
    .await;
    let clinic = server.database("clinic").await;
    exec_on(&clinic, &[PATIENT, REFERRAL]).await;
    exec_on(&clinic, &ROWS).await;
    // What the server logs from here on is the tool's.
    let setup_logged = std::fs::metadata(&log).unwrap().len();
    let db = TestDb::new("phi_cli").await;
    let key_file = dir.join("mask.key");
    std::fs::write(&key_file, format!("{TEST_MASK_KEY}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let env_text: String = std::fs::read_to_string(db.env_file(&dir))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("TEST_OPENDENTAL_SOURCE_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let env = dir.join("phi.env");
    std::fs::write(
        &env,
        format!(
            "{env_text}TEST_OPENDENTAL_SOURCE_HOST=127.0.0.1\nTEST_OPENDENTAL_SOURCE_PORT={}\n\
             TEST_OPENDENTAL_SOURCE_DB=clinic\nTEST_OPENDENTAL_SOURCE_USER=root\n\
             ETL_MASK_KEY_FILE={}\n",
            clinic.port,
            key_file.display()
        ),
    )
    .unwrap();
    let tables = dir.join("tables.yml");
    std::fs::write(
        &tables,
        tables_yml("[SSN, Email]", "{LName: hash, Birthdate: year}"),
    )
    .unwrap();
    let summary = dir.join("summary.json");
    let run = || {
        let out = binary_with(&env, &tables)
            .args(["run", "--all", "--summary-json", summary.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        (text(&out), json)
    };
    let init = binary_with(&env, &tables).arg("init").output().unwrap();
    assert!(init.status.success(), "{}", text(&init));
    let (out, _) = run();
    assert!(!out.contains("column policy changed"), "{out}");
    assert_eq!(db.pg_count("patient").await, 301, "{out}");

    // Never created in the replica or the warehouse.
    for table in ["patient", "referral"] {
        let columns = pg_columns(&db, table).await;
        assert!(!columns.iter().any(|c| c == "SSN"), "{table}: {columns:?}");
        let replica: u64 = db
            .replica_count(&format!(
                "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
                 AND TABLE_NAME = '{table}' AND COLUMN_NAME IN ('SSN', 'Email')"
            ))
            .await;
        assert_eq!(replica, 0, "{table} in the replica");
    }
    assert!(
        !pg_columns(&db, "patient")
            .await
            .contains(&"Email".to_string())
    );
    // Never read: no statement the source logged names them.
    let logged = std::fs::read(&log).unwrap();
    let logged = String::from_utf8_lossy(&logged[usize::try_from(setup_logged).unwrap()..]);
    assert!(
        logged.contains("`LName`") && logged.contains("`patient`"),
        "the log holds the reads"
    );
    for line in logged.lines() {
        assert!(
            !line.contains("SSN") && !line.contains("Email"),
            "the source was asked for an excluded column: {line}"
        );
    }

    // Hashes are HMAC-SHA-256 under the key, in the replica as in the warehouse.
    let pg = db.pg().await;
    let row = pg
        .query_one(
            "select \"LName\", \"FName\", \"Birthdate\"::text from raw.patient where \"PatNum\" = 7",
            &[],
        )
        .await
        .unwrap();
    let (lname, fname, birth): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(lname, openssl_hmac("Lee7"));
    assert_eq!(fname, "Ann7", "unmasked columns are carried as they are");
    assert_eq!(birth, "1950-01-01", "1950-03-17 + 259 days keeps its year");
    let mut replica = etl_pipeline::mysql::connect(&db.ctx.replica).await.unwrap();
    let in_replica: String = replica
        .query_first("SELECT `LName` FROM `patient` WHERE `PatNum` = 7")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(in_replica, lname, "masked at the first hop");
    let apostrophe: String = pg
        .query_one(
            "select \"LName\" from raw.patient where \"FName\" = ''",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(apostrophe, openssl_hmac("O'Brien"));

    // The masked values join as the clear ones do.
    let mut source = etl_pipeline::mysql::connect(&clinic).await.unwrap();
    let clear: u64 = source
        .query_first("SELECT COUNT(*) FROM `patient` p JOIN `referral` r ON r.`LName` = p.`LName`")
        .await
        .unwrap()
        .unwrap();
    let hashed: i64 = pg
        .query_one(
            "select count(*) from raw.patient p join raw.referral r on r.\"LName\" = p.\"LName\"",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(clear > 0);
    assert_eq!(u64::try_from(hashed).unwrap(), clear);
    let distinct: i64 = pg
        .query_one("select count(distinct \"LName\") from raw.patient", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, 41, "40 Lee names and O'Brien");

    // A second run changes nothing: the masked columns are not differences.
    exec_on(
        &clinic,
        &["UPDATE `patient` SET `FName` = 'Bo' WHERE `PatNum` = 9"],
    )
    .await;
    let (out, json) = run();
    assert!(!out.contains("column policy changed"), "{out}");
    for t in json["tables"].as_array().unwrap() {
        assert_eq!(t["rows_repaired"], 0, "{t}");
    }
    let verify = binary_with(&env, &tables)
        .args(["verify", "--deep"])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));

    // Unmasking the birthdate changes no column's type, yet every row is
    // written again: the policy is part of the schema. A column excluded
    // now is emptied in the warehouse by that rewrite.
    std::fs::write(
        &tables,
        tables_yml("[SSN, Email, FName]", "{LName: hash, HmPhone: hash}"),
    )
    .unwrap();
    let (out, _) = run();
    let change = "exclude: Email, SSN; mask: Birthdate=year, LName=hash → exclude: Email, FName, SSN; mask: HmPhone=hash, LName=hash";
    assert_eq!(
        out.matches(&format!("the column policy changed ({change})"))
            .count(),
        2,
        "the copy and the load say so: {out}"
    );
    let log = std::fs::read_to_string(dir.join("schema_changelog.md")).unwrap();
    assert_eq!(
        log.matches(&format!(
            "table `patient`: column policy changed ({change}), rewritten by run"
        ))
        .count(),
        1,
        "and so does the schema changelog, once: {log}"
    );
    let row = pg
        .query_one(
            "select \"Birthdate\"::text, (select count(\"FName\") from raw.patient) from raw.patient \
             where \"PatNum\" = 7",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "1950-12-01");
    assert_eq!(row.get::<_, i64>(1), 0, "no first name is left");
    // The phone's varchar(30) widened in place to hold its hash.
    let phone: String = pg
        .query_one(
            "select \"HmPhone\" from raw.patient where \"PatNum\" = 7",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(phone, openssl_hmac("555-0100"));
    let (out, _) = run();
    assert!(!out.contains("column policy changed"), "{out}");
}

/// Direct mode: the load is the first hop, so it applies the policy, and
/// its row reconciliation leaves the masked columns alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_masks_on_the_way_into_the_warehouse() {
    let db = TestDb::new("phi_direct").await;
    db.source_sql(&[PATIENT, REFERRAL]).await;
    db.source_sql(&ROWS).await;
    let config = TablesConfig::parse(&tables_yml(
        "[SSN, Email]",
        "{LName: hash, Birthdate: null}",
    ))
    .unwrap();
    for round in 0..2 {
        let report = db.run_direct(&config).await;
        assert!(report.succeeded(), "{report:?}");
        let patient = phase_report(&report, "patient", "load");
        assert_eq!(patient.rows_repaired, 0, "round {round}");
    }
    assert!(
        !pg_columns(&db, "patient")
            .await
            .contains(&"SSN".to_string())
    );
    let pg = db.pg().await;
    let row = pg
        .query_one(
            "select \"LName\", \"Birthdate\" is null from raw.patient where \"PatNum\" = 7",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), openssl_hmac("Lee7"));
    assert!(row.get::<_, bool>(1));
}

/// A key or watermark column cannot be hidden: the table fails, named,
/// before anything is copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_hides_a_key_is_refused_before_anything_is_copied() {
    let db = TestDb::new("phi_key").await;
    db.source_sql(&[PATIENT]).await;
    db.source_sql(&ROWS[..1]).await;
    let config = TablesConfig::from_tables([table_config(
        "tables:\n  patient:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         mask_columns: {DateTStamp: year}\n",
    )]);
    let report = db.run_two_hop(&config, None).await;
    let copy = report
        .outcomes
        .iter()
        .find(|o| o.phase == "extract")
        .unwrap();
    let err = copy.result.as_ref().unwrap_err();
    assert!(
        err.to_string()
            .contains("`DateTStamp` is the table's watermark column"),
        "{err}"
    );
    assert_eq!(
        db.replica_count(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = 'patient'"
        )
        .await,
        0
    );
    let err = TablesConfig::parse(
        "defaults:\n  mask_columns: {LName: scramble}\ntables:\n  patient:\n    extraction_strategy: full_table\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("scramble"), "{err}");
}

/// `analyze` flags the patient columns (the documentation adds what names
/// do not say), `--phi mask` writes a policy for them, the changelog
/// records it, and a later analysis keeps a person's policy, `defaults:`
/// and `schedules:` blocks instead of dropping them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_flags_patient_columns_and_writes_and_keeps_a_policy() {
    let db = TestDb::new("phi_analyze").await;
    db.source_sql(&[
        PATIENT,
        "CREATE TABLE `orthochart` (`OrthoChartNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         `PatNum` bigint NOT NULL, `FieldName` varchar(255) NOT NULL, `FieldValue` text NOT NULL)",
        "CREATE TABLE `provider` (`ProvNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         `LName` varchar(100) NOT NULL, `FName` varchar(100) NOT NULL)",
    ])
    .await;
    db.source_sql(&ROWS[..2]).await;
    let dir = scratch("phi_analyze");
    let env = db.env_file(&dir);
    let tables = dir.join("tables.yml");
    let analyze = |args: &[&str]| {
        let out = binary_with(&env, &tables)
            .arg("analyze")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        (text(&out), std::fs::read_to_string(&tables).unwrap())
    };
    let (out, yaml) = analyze(&[]);
    assert!(out.contains("left in clear"), "{out}");
    assert!(
        yaml.contains("# likely PHI: LName (name, kept in clear), FName (name, kept in clear), SSN (identifier, kept in clear)"),
        "{yaml}"
    );
    assert!(
        !yaml.contains("mask_columns"),
        "keep writes no policy: {yaml}"
    );

    let docs = "fixtures/opendental/OpenDentalDocumentation24-3.xml";
    let (_, yaml) = analyze(&["--phi", "mask", "--docs", docs]);
    let config = TablesConfig::parse(&yaml).unwrap();
    let patient = &config.get("patient").unwrap().columns;
    let masks: Vec<(&str, &str)> = patient
        .mask
        .iter()
        .map(|(c, m)| (c.as_str(), m.name()))
        .collect();
    assert_eq!(
        masks,
        vec![
            ("Birthdate", "year"),
            ("Email", "hash"),
            ("FName", "hash"),
            ("HmPhone", "hash"),
            ("LName", "hash"),
            ("SSN", "hash"),
        ]
    );
    let ortho = &config.get("orthochart").unwrap().columns;
    assert_eq!(
        ortho.mask.get("FieldValue").map(|m| m.name()),
        Some("null"),
        "the documentation calls it text the user entered: {yaml}"
    );
    assert!(config.get("provider").unwrap().columns.mask.is_empty());
    let log = std::fs::read_to_string(dir.join("schema_changelog.md")).unwrap();
    assert!(
        log.contains(
            "table `patient`: column policy changed (none → mask: Birthdate=year, Email=hash, \
             FName=hash, HmPhone=hash, LName=hash, SSN=hash)"
        ),
        "{log}"
    );

    // A person excludes the SSN instead, adds a default and a schedule for
    // `serve`; the next analysis (without --phi) keeps all three.
    let edited = yaml
        .replacen(
            "tables:\n",
            "defaults:\n  exclude_columns: [Email]\nschedules:\n  \
             nightly: {cron: \"0 0 2 * * *\", tables: [patient], active: false}\ntables:\n",
            1,
        )
        .replace(", 'SSN': hash}", "}")
        .replace(
            "    mask_columns: {'Birthdate': year",
            "    exclude_columns: ['SSN']\n    mask_columns: {'Birthdate': year",
        );
    std::fs::write(&tables, &edited).unwrap();
    let before = TablesConfig::parse(&edited).unwrap();
    let (_, yaml) = analyze(&[]);
    let after = TablesConfig::parse(&yaml).unwrap();
    for table in ["patient", "orthochart", "provider"] {
        assert_eq!(
            after.get(table).unwrap().columns,
            before.get(table).unwrap().columns,
            "{table}: {yaml}"
        );
    }
    assert_eq!(after.get("patient").unwrap().columns.exclude, vec!["SSN"]);
    assert!(yaml.contains("defaults:"), "{yaml}");
    let schedules = after.schedules();
    assert_eq!(schedules.len(), 1, "{yaml}");
    assert_eq!(
        (
            schedules[0].name.as_str(),
            schedules[0].pattern.as_str(),
            schedules[0].active
        ),
        ("nightly", "0 0 2 * * *", false)
    );
}
