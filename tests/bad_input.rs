//! The bad-input corpus: broken configs and settings, servers that refuse or
//! never answer, and awkward tables (names full of quotes and SQL, a 16 MiB
//! row, no key, a composite key, no rows). Each either gets a clear error
//! naming the thing and what to do, or is carried exactly.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{TestDb, binary_with, scratch, text};
use etl_pipeline::config::TablesConfig;
use mysql_async::prelude::Queryable;

const PATIENT: &str = "CREATE TABLE `patient` (`PatNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
    `LName` varchar(100) NOT NULL, \
    `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`))";

const GOOD_TABLES: &str = "tables:\n  patient:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
                           primary_incremental_column: DateTStamp\n    primary_key: PatNum\n";

/// Runs the binary with `env` and a table config of `yaml`; says what is
/// wrong unless it exits with `code` within 30 s and its output holds every
/// one of `expect`.
fn check_error(
    dir: &Path,
    env: &Path,
    yaml: &str,
    args: &[&str],
    code: i32,
    expect: &[&str],
) -> Option<String> {
    let tables = dir.join("case.yml");
    std::fs::write(&tables, yaml).unwrap();
    let started = Instant::now();
    let out = binary_with(env, &tables).args(args).output().unwrap();
    let all = text(&out);
    let took = started.elapsed();
    let missing: Vec<&&str> = expect.iter().filter(|n| !all.contains(**n)).collect();
    (out.status.code() != Some(code) || !missing.is_empty() || took > Duration::from_secs(30)).then(
        || {
            format!(
                "{yaml:?} {args:?}: exit {:?} (want {code}), missing {missing:?}, {took:?}:\n{all}",
                out.status.code()
            )
        },
    )
}

/// An env file like `base` with `replace` lines swapped in (by variable
/// name) and `drop` variables removed.
fn env_variant(base: &Path, name: &str, replace: &[&str], drop: &[&str]) -> PathBuf {
    let text = std::fs::read_to_string(base).unwrap();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap();
            !drop.contains(&key) && !replace.iter().any(|r| r.split('=').next().unwrap() == key)
        })
        .map(str::to_string)
        .collect();
    lines.extend(replace.iter().map(|r| r.to_string()));
    let path = base.with_file_name(format!("{name}.env"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_configs_and_settings_get_clear_errors() {
    let db = TestDb::new("bad_config").await;
    db.source_sql(&[
        PATIENT,
        "INSERT INTO `patient` (`LName`) SELECT CONCAT('Lee', seq) FROM seq_1_to_30",
    ])
    .await;
    let dir = scratch("bad_config");
    let env = db.env_file(&dir);
    let mut tried = 0;
    let mut wrong = Vec::new();
    let mut case = |env: &Path, yaml: &str, args: &[&str], code: i32, expect: &[&str]| {
        wrong.extend(check_error(&dir, env, yaml, args, code, expect));
        tried += 1;
    };
    let validate = &["validate"][..];
    let run = &["run", "--table", "patient"][..];

    // The table config.
    case(
        &env,
        "tables:\n  patient:\n    batch_size: [1000\n",
        validate,
        2,
        &["line 3", "column"],
    );
    case(
        &env,
        "tables:\n\tpatient:\n",
        validate,
        2,
        &["line 2", "column", "tab"],
    );
    case(
        &env,
        "tables: {patient: {batch_size: 1}\n",
        validate,
        2,
        &["line", "column"],
    );
    case(&env, "", validate, 2, &["`tables:` map"]);
    case(
        &env,
        "# nothing here yet\n",
        validate,
        2,
        &["`tables:` map"],
    );
    case(&env, "tables:\n", validate, 2, &["`tables:` map"]);
    case(
        &env,
        "- patient\n- procedurelog\n",
        validate,
        2,
        &["tables"],
    );
    case(
        &env,
        "tables:\n  patient:\n    extraction_strategy: full_table\n    batch_size: lots\n",
        validate,
        2,
        &["patient", "batch_size", "lots"],
    );
    case(
        &env,
        "tables:\n  patient:\n    extraction_strategy: full_table\n    batch_size: -5\n",
        validate,
        2,
        &["patient", "batch_size"],
    );
    case(
        &env,
        "tables:\n  patient:\n    extraction_strategy: full_table\n    batch_size: 0\n",
        validate,
        2,
        &["patient", "batch_size"],
    );
    case(
        &env,
        "tables:\n  patient:\n    extraction_strategy: incremental\n    incremental_columns: DateTStamp\n",
        validate,
        2,
        &["patient", "incremental_columns"],
    );
    case(
        &env,
        "tables:\n  patient:\n    extraction_strategy: sometimes\n",
        validate,
        2,
        &["patient", "sometimes", "incremental"],
    );
    case(
        &env,
        "tables:\n  patient:\n    extraction_strategy: full_table\n    batchsize: 10\n",
        validate,
        2,
        &["patient", "batchsize"],
    );
    case(
        &env,
        "tables:\n  patient:\n    extraction_strategy: full_table\n    lookback_seconds: 1e9\n",
        validate,
        2,
        &["patient", "lookback_seconds"],
    );
    case(
        &env,
        "tables:\n  patient:\n    extraction_strategy: incremental\n  patient:\n    extraction_strategy: full_table\n",
        validate,
        2,
        &["patient", "listed twice"],
    );
    case(
        &env,
        GOOD_TABLES,
        &["run", "--table", "nope"],
        2,
        &["`nope`", "not in the table config"],
    );
    // Columns the table does not have fail that table, named, at run time.
    case(
        &env,
        "tables:\n  patient:\n    extraction_strategy: incremental\n    incremental_columns: [NoSuchStamp]\n    \
         primary_incremental_column: NoSuchStamp\n    primary_key: PatNum\n",
        run,
        0,
        &[
            "patient",
            "`NoSuchStamp` is not in the table",
            "refreshed in full",
        ],
    );
    case(
        &env,
        "tables:\n  patient:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    primary_key: PatientId\n",
        run,
        0,
        &["patient", "PatientId", "using the table's"],
    );
    case(
        &env,
        "tables:\n  nosuchtable:\n    extraction_strategy: full_table\n",
        &["run", "--all"],
        1,
        &["nosuchtable"],
    );

    // The environment.
    let missing = env_variant(&env, "missing", &[], &["TEST_POSTGRES_ANALYTICS_HOST"]);
    case(
        &missing,
        GOOD_TABLES,
        validate,
        2,
        &["TEST_POSTGRES_ANALYTICS_HOST is not set"],
    );
    let port = env_variant(&env, "port", &["TEST_MYSQL_REPLICATION_PORT=33o6"], &[]);
    case(
        &port,
        GOOD_TABLES,
        validate,
        2,
        &["TEST_MYSQL_REPLICATION_PORT", "33o6"],
    );
    let environment = env_variant(&env, "environment", &["ETL_ENVIRONMENT=staging"], &[]);
    case(
        &environment,
        GOOD_TABLES,
        validate,
        2,
        &["ETL_ENVIRONMENT", "staging"],
    );
    // Every setting is checked by validate, the source's too once any of
    // its variables is set, and a misspelled variable is named.
    for (name, line, expect) in [
        (
            "ssl_mode",
            "TEST_OPENDENTAL_SOURCE_SSL_MODE=verify-full",
            &["TEST_OPENDENTAL_SOURCE_SSL_MODE", "verify-full"][..],
        ),
        (
            "ssl_ca",
            "TEST_OPENDENTAL_SOURCE_SSL_MODE=verify_ca",
            &["TEST_OPENDENTAL_SOURCE_SSL_CA"][..],
        ),
        (
            "webhook",
            "ETL_ALERT_WEBHOOK_URL=ftp://x",
            &["ETL_ALERT_WEBHOOK_URL", "https://"][..],
        ),
        (
            "retention",
            "ETL_HISTORY_RETENTION_DAYS=abc",
            &["ETL_HISTORY_RETENTION_DAYS", "abc"][..],
        ),
        (
            "lock_wait",
            "TEST_MYSQL_REPLICATION_LOCK_WAIT_SECONDS=-5",
            &["TEST_MYSQL_REPLICATION_LOCK_WAIT_SECONDS", "-5"][..],
        ),
        (
            "pg_ssl_mode",
            "TEST_POSTGRES_ANALYTICS_SSL_MODE=verify_full",
            &["TEST_POSTGRES_ANALYTICS_SSL_MODE", "verify-full"][..],
        ),
        (
            "pg_root_cert",
            "TEST_POSTGRES_ANALYTICS_SSL_ROOT_CERT=/nonexistent/ca.pem",
            &["POSTGRES_ANALYTICS_SSL_ROOT_CERT", "/nonexistent/ca.pem"][..],
        ),
        (
            "pg_client_key",
            "TEST_POSTGRES_ANALYTICS_SSL_CERT=/nonexistent/client.pem",
            &["TEST_POSTGRES_ANALYTICS_SSL_KEY", "set both"][..],
        ),
        (
            "short_mask_key",
            "ETL_MASK_KEY=Short-mask-key",
            &["mask key", "14 bytes", "at least 16"][..],
        ),
        (
            "mask_key_file",
            "ETL_MASK_KEY_FILE=/nonexistent/mask.key",
            &["ETL_MASK_KEY_FILE", "/nonexistent/mask.key"][..],
        ),
    ] {
        case(
            &env_variant(&env, name, &[line], &[]),
            GOOD_TABLES,
            validate,
            2,
            expect,
        );
    }
    // A policy that hashes needs the key before anything runs.
    case(
        &env,
        &format!("defaults:\n  mask_columns: {{LName: hash}}\n{GOOD_TABLES}"),
        validate,
        2,
        &["hashes columns of patient", "ETL_MASK_KEY_FILE"],
    );
    case(
        &env,
        &format!("{GOOD_TABLES}    exclude_columns: [SSN]\n    mask_columns: {{SSN: null}}\n"),
        validate,
        2,
        &["tables.patient", "`SSN` is both excluded and masked"],
    );
    case(
        &env,
        &format!("{GOOD_TABLES}    mask_columns: {{LName: blur}}\n"),
        validate,
        2,
        &["tables.patient.mask_columns", "blur"],
    );
    case(
        &env_variant(
            &env,
            "misspelled",
            &["TEST_OPENDENTAL_SOURCE_SSLMODE=required"],
            &[],
        ),
        GOOD_TABLES,
        validate,
        0,
        &[
            "TEST_OPENDENTAL_SOURCE_SSLMODE",
            "did you mean TEST_OPENDENTAL_SOURCE_SSL_MODE?",
        ],
    );
    let password = env_variant(
        &env,
        "password",
        &["TEST_MYSQL_REPLICATION_PASSWORD=wrong-password"],
        &[],
    );
    case(
        &password,
        GOOD_TABLES,
        &["test-connections"],
        1,
        &["replica", "Access denied", "password"],
    );
    case(
        &password,
        GOOD_TABLES,
        run,
        1,
        &["Access denied", "password"],
    );
    let role = env_variant(
        &env,
        "role",
        &["TEST_POSTGRES_ANALYTICS_USER=nobody_here"],
        &[],
    );
    case(&role, GOOD_TABLES, &["status"], 1, &["nobody_here"]);
    let database = env_variant(
        &env,
        "database",
        &["TEST_OPENDENTAL_SOURCE_DB=no_such_clinic"],
        &[],
    );
    case(
        &database,
        GOOD_TABLES,
        run,
        1,
        &["no database `no_such_clinic`", "CREATE DATABASE"],
    );
    let refused = env_variant(&env, "refused", &["TEST_POSTGRES_ANALYTICS_PORT=1"], &[]);
    case(&refused, GOOD_TABLES, &["status"], 1, &["127.0.0.1:1"]);

    // Servers that accept the connection and then never answer: the
    // command gives up within the connect timeout instead of hanging.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in silent.incoming().take(4) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 64];
            let _ = stream.set_read_timeout(Some(Duration::from_millis(10)));
            let _ = stream.read(&mut buf);
            open.push(stream);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    let mysql_silent = env_variant(
        &env,
        "mysql_silent",
        &[&format!("TEST_MYSQL_REPLICATION_PORT={port}")],
        &[],
    );
    case(
        &mysql_silent,
        &format!("{GOOD_TABLES}    retry_count: 0\n"),
        &["run", "--phase", "load", "--table", "patient"],
        1,
        &["no answer", &port.to_string()],
    );
    let pg_silent = env_variant(
        &env,
        "pg_silent",
        &[&format!("TEST_POSTGRES_ANALYTICS_PORT={port}")],
        &[],
    );
    case(
        &pg_silent,
        GOOD_TABLES,
        &["status"],
        1,
        &["no answer", &port.to_string()],
    );
    drop(held);
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));

    eprintln!("bad-input corpus: {tried} broken configs and settings, each with a clear error");
    // None of them left anything behind that stops a good run.
    let tables = dir.join("good.yml");
    std::fs::write(&tables, GOOD_TABLES).unwrap();
    let out = binary_with(&env, &tables).args(run).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    db.assert_replica_same("patient", &["PatNum"]).await;
    db.assert_source_same("patient", &["PatNum"]).await;
}

/// A name with quotes, a backtick, spaces, unicode and SQL in it.
const ODD_TABLE: &str = "Bob's \"odd\" `x` table; DROP TABLE canary; -- ñ";

fn yaml_name(name: &str) -> String {
    serde_json::to_string(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_tables_are_carried_exactly() {
    let db = TestDb::new("awkward_tables").await;
    let odd = etl_pipeline::schema::ident::mysql(ODD_TABLE);
    let create_odd = format!(
        "CREATE TABLE {odd} (`it's` bigint NOT NULL PRIMARY KEY, `\"quoted\"` varchar(50), `back``tick` text, \
         `with space` int, `ñame 日本` varchar(20), `select` int, `1; DROP TABLE canary; --` varchar(10), \
         `stamp; DELETE` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`stamp; DELETE`))"
    );
    let fill_odd = format!(
        "INSERT INTO {odd} (`it's`, `\"quoted\"`, `back``tick`, `with space`, `ñame 日本`, `select`, `1; DROP TABLE canary; --`, \
         `stamp; DELETE`) SELECT seq, CONCAT('it''s \"', seq, '\"'), CONCAT('`', seq, '`; DROP TABLE canary'), seq, 'ñ日本', -seq, \
         ''';--', '2024-01-01' + INTERVAL seq SECOND FROM seq_1_to_500"
    );
    db.source_sql(&[
        "CREATE TABLE `canary` (`Id` int PRIMARY KEY)",
        "INSERT INTO `canary` VALUES (1)",
        &create_odd,
        &fill_odd,
        "CREATE TABLE `wide` (`Id` int NOT NULL PRIMARY KEY, `Doc` longblob, \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP)",
        "INSERT INTO `wide` (`Id`, `Doc`, `DateTStamp`) VALUES (1, REPEAT('ab', 8000000), '2024-01-01'), \
         (2, 'small', '2024-01-01'), (3, NULL, '2024-01-01')",
        "CREATE TABLE `empty` (`Id` int NOT NULL PRIMARY KEY, `Note` text, \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP)",
        "CREATE TABLE `nokey` (`A` int, `B` varchar(10))",
        "INSERT INTO `nokey` VALUES (1, 'one'), (1, 'one'), (NULL, NULL), (2, 'two')",
        "CREATE TABLE `pair` (`ClinicNum` int NOT NULL, `PatNum` bigint NOT NULL, `Note` varchar(20), \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, PRIMARY KEY (`ClinicNum`, `PatNum`))",
        "INSERT INTO `pair` (`ClinicNum`, `PatNum`, `Note`, `DateTStamp`) SELECT seq % 3, seq, 'pair', '2024-01-01' FROM seq_1_to_300",
    ])
    .await;
    let stamped = |column: &str, key: &str| {
        format!(
            "    extraction_strategy: incremental\n    incremental_columns: [{c}]\n    primary_incremental_column: {c}\n    \
             primary_key: {key}\n    lookback_seconds: 0\n",
            c = yaml_name(column)
        )
    };
    let config = TablesConfig::parse(&format!(
        "tables:\n  {}:\n{}  wide:\n{}  empty:\n{}  nokey:\n    extraction_strategy: full_table\n  pair:\n{}",
        yaml_name(ODD_TABLE),
        stamped("stamp; DELETE", &yaml_name("it's")),
        stamped("DateTStamp", "Id"),
        stamped("DateTStamp", "Id"),
        stamped("DateTStamp", "[ClinicNum, PatNum]"),
    ))
    .unwrap();

    let compare = || async {
        let mut rows = 0;
        for (table, key) in [
            (ODD_TABLE, &["it's"][..]),
            ("wide", &["Id"][..]),
            ("empty", &["Id"][..]),
            ("nokey", &["A", "B"][..]),
            ("pair", &["ClinicNum", "PatNum"][..]),
        ] {
            db.assert_replica_same(table, key).await;
            rows += db.assert_source_same(table, key).await;
        }
        rows
    };
    let first = db.run_two_hop(&config, None).await;
    assert!(first.succeeded(), "{first:?}");
    assert_eq!(compare().await, 500 + 3 + 4 + 300);

    db.source_sql(&[
        &format!("UPDATE {odd} SET `back``tick` = 'changed `again`' WHERE `it's` % 7 = 0"),
        "UPDATE `wide` SET `Doc` = REPEAT('cd', 8000000) WHERE `Id` = 2",
        "INSERT INTO `empty` (`Id`, `Note`) VALUES (1, 'first row')",
        "INSERT INTO `nokey` VALUES (3, 'three')",
        "UPDATE `pair` SET `Note` = 'moved' WHERE `PatNum` < 50",
    ])
    .await;
    let second = db.run_two_hop(&config, None).await;
    assert!(second.succeeded(), "{second:?}");
    assert_eq!(compare().await, 500 + 3 + 1 + 5 + 300);
    for phase in ["extract", "load"] {
        let outcome = second.outcome(ODD_TABLE, phase).unwrap();
        assert!(
            matches!(
                outcome.result.as_ref().unwrap().decision.strategy,
                etl_pipeline::config::Strategy::Incremental { .. }
            ),
            "{phase}: {outcome:?}"
        );
    }

    // Nothing in any name ran as SQL.
    let mut source = etl_pipeline::mysql::connect(&db.source).await.unwrap();
    let canary: Option<i64> = source
        .query_first("SELECT COUNT(*) FROM `canary`")
        .await
        .unwrap();
    assert_eq!(canary, Some(1));
    let blob: i64 = db
        .pg()
        .await
        .query_one(
            "select length(\"Doc\")::bigint from raw.wide where \"Id\" = 2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(blob, 16_000_000);

    // A name PostgreSQL would cut short fails its table, named.
    let long = "ñ".repeat(32);
    db.source_sql(&[
        &format!("CREATE TABLE `longnames` (`Id` int PRIMARY KEY, `{long}` int)"),
        "INSERT INTO `longnames` VALUES (1, 1)",
    ])
    .await;
    let report = db
        .run_two_hop(
            &TablesConfig::parse("tables:\n  longnames:\n    extraction_strategy: full_table\n")
                .unwrap(),
            None,
        )
        .await;
    match &report.outcome("longnames", "load").unwrap().result {
        Err(e) => assert!(
            e.to_string().contains(&long) && e.to_string().contains("63 bytes"),
            "{e}"
        ),
        Ok(r) => panic!("loaded a name PostgreSQL cuts: {r:?}"),
    }
}
