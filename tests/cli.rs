//! The binary as a user runs it: exit codes, messages and reports.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{PATIENTS_AND_DEFINITIONS, TestDb, binary_with, scratch, text};

fn run(env: &Path, tables: &Path, args: &[&str]) -> Output {
    binary_with(env, tables).args(args).output().unwrap()
}

/// A table's line of `status --format json`.
fn status_of(env: &Path, tables: &Path, table: &str) -> serde_json::Value {
    let out = run(env, tables, &["status", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["table"] == table)
        .cloned()
        .unwrap_or_else(|| panic!("no status line for {table}: {status}"))
}

const TABLES: &str = "tables:\n  patient:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
                      primary_incremental_column: DateTStamp\n    primary_key: PatNum\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_run_status_and_test_connections_work_end_to_end() {
    let db = TestDb::new("cli_flow").await;
    db.mysql(&[
        "CREATE TABLE `patient` (`PatNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `LName` varchar(100) NOT NULL, \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`))",
        "INSERT INTO `patient` (`LName`) SELECT CONCAT('Lee', seq) FROM seq_1_to_250",
    ])
    .await;
    let dir = scratch("cli_flow");
    let env = db.env_file(&dir);
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, TABLES).unwrap();

    for _ in 0..2 {
        let out = run(&env, &tables, &["init"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = run(&env, &tables, &["run", "--phase", "load", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("first load: destination table created"),
        "{}",
        text(&out)
    );
    let out = run(
        &env,
        &tables,
        &["run", "--phase", "load", "--table", "patient"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("watermark on (DateTStamp, PatNum)"),
        "{}",
        text(&out)
    );
    let out = run(&env, &tables, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let status = text(&out);
    let line = status
        .lines()
        .find(|l| l.starts_with("patient"))
        .unwrap_or_default();
    assert!(
        line.contains("success") && line.contains("incremental") && line.contains("DateTStamp = "),
        "{status}"
    );
    let out = run(&env, &tables, &["test-connections"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("MariaDB") && text(&out).contains("PostgreSQL 1"),
        "{}",
        text(&out)
    );
    let out = run(&env, &tables, &["validate"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 table(s), 0 schedule(s), valid"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_table_makes_the_exit_code_non_zero_and_is_named() {
    let db = TestDb::new("cli_failure").await;
    let dir = scratch("cli_failure");
    let env = db.env_file(&dir);
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, TABLES).unwrap();
    let out = run(&env, &tables, &["run", "--phase", "load", "--all"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("table `patient` does not exist in MySQL database"),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_exit_code_two() {
    let dir = scratch("cli_bad_input");
    let env = dir.join("partial.env");
    std::fs::write(&env, "ETL_ENVIRONMENT=test\nTEST_MYSQL_REPLICATION_HOST=127.0.0.1\nTEST_MYSQL_REPLICATION_DB=x\nTEST_MYSQL_REPLICATION_USER=root\n").unwrap();
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, TABLES).unwrap();

    let out = run(&env, &tables, &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("TEST_POSTGRES_ANALYTICS_HOST is not set"),
        "{}",
        text(&out)
    );

    let out = run(
        &env,
        &tables,
        &["run", "--phase", "load", "--table", "nope"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("table `nope` is not in the table config"),
        "{}",
        text(&out)
    );

    let broken = dir.join("broken.yml");
    std::fs::write(
        &broken,
        "tables:\n  patient:\n    extraction_strategy: [full_table\n",
    )
    .unwrap();
    let out = run(&env, &broken, &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("line 3"), "{}", text(&out));

    let no_env = dir.join("no-environment.env");
    std::fs::write(&no_env, "TEST_MYSQL_REPLICATION_HOST=127.0.0.1\n").unwrap();
    let out = run(&no_env, &tables, &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("ETL_ENVIRONMENT is not set"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_json_status_json_category_filter_and_history_retention() {
    let db = TestDb::new("cli_reporting").await;
    db.source_sql(&PATIENTS_AND_DEFINITIONS).await;
    let dir = scratch("cli_reporting");
    let env = db.env_file(&dir);
    let mut env_text = std::fs::read_to_string(&env).unwrap();
    env_text.push_str("ETL_HISTORY_RETENTION_DAYS=30\n");
    std::fs::write(&env, env_text).unwrap();
    let tables = dir.join("tables.yml");
    std::fs::write(
        &tables,
        format!("{TABLES}    performance_category: medium\n  definition:\n    extraction_strategy: full_table\n    performance_category: tiny\n"),
    )
    .unwrap();
    let client = db.pg().await;
    client
        .batch_execute(
            "insert into raw.etl_run_history (run_id, table_name, phase, started_at, status) \
             values ('old', 'patient', 'load', now() - interval '200 days', 'success')",
        )
        .await
        .unwrap();

    let summary = dir.join("summary.json");
    let out = run(
        &env,
        &tables,
        &[
            "run",
            "--all",
            "--category",
            "tiny",
            "--summary-json",
            summary.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(json["succeeded"], true);
    let entries = json["tables"].as_array().unwrap();
    assert_eq!(
        entries.len(),
        2,
        "only the tiny table, extract and load: {json}"
    );
    assert!(
        entries
            .iter()
            .all(|t| t["table"] == "definition" && t["status"] == "success")
    );
    assert_eq!(entries[1]["rows_inserted"], 12);

    let out = run(&env, &tables, &["run", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    let patient = status_of(&env, &tables, "patient");
    assert_eq!(patient["copy_status"], "success");
    assert_eq!(patient["status"], "success");
    assert_eq!(patient["failures_24h"], 0);
    assert_eq!(patient["rows_behind"], 0, "{patient}");
    assert_eq!(patient["lag_seconds"], 0, "{patient}");
    assert_eq!(patient["rows_in_future"], 0, "{patient}");

    db.source_sql(&[
        "INSERT INTO `patient` (`LName`, `DateTStamp`) SELECT CONCAT('New', seq), NOW() + INTERVAL 2 HOUR FROM seq_1_to_7",
    ])
    .await;
    let patient = status_of(&env, &tables, "patient");
    assert_eq!(
        patient["rows_behind"], 7,
        "rows at the source past the loaded watermark: {patient}"
    );
    let lag = patient["lag_seconds"].as_i64().unwrap();
    assert!((7000..7400).contains(&lag), "two hours behind: {patient}");
    assert_eq!(
        patient["rows_in_future"], 7,
        "stamped two hours past the source's clock: {patient}"
    );
    let out = run(&env, &tables, &["status"]);
    let shown = text(&out);
    let line = shown.lines().find(|l| l.starts_with("patient")).unwrap();
    assert!(line.contains(" 7 ") && line.contains("2h0"), "{line}");
    assert!(shown.contains("7 row(s) stamped in the future"), "{shown}");

    let old: i64 = client
        .query_one(
            "select count(*) from raw.etl_run_history where run_id = 'old'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        old, 0,
        "history older than ETL_HISTORY_RETENTION_DAYS is pruned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbt_sources_lists_every_table_and_column_with_documentation_and_freshness() {
    let db = TestDb::new("cli_dbt_sources").await;
    db.mysql(&[
        "CREATE TABLE `patient` (`PatNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `LName` varchar(100) NOT NULL, \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`))",
        "INSERT INTO `patient` (`LName`) SELECT CONCAT('Lee', seq) FROM seq_1_to_10",
    ])
    .await;
    let dir = scratch("cli_dbt_sources");
    let env = db.env_file(&dir);
    let tables_file = dir.join("tables.yml");
    std::fs::write(&tables_file, TABLES).unwrap();
    assert!(
        run(&env, &tables_file, &["run", "--phase", "load", "--all"])
            .status
            .success()
    );
    let output = dir.join("sources.yml");
    let out = run(
        &env,
        &tables_file,
        &[
            "dbt-sources",
            "--docs",
            "fixtures/opendental/OpenDentalDocumentation24-3.xml",
            "--output",
            output.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let yaml: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    let source = &yaml["sources"][0];
    assert_eq!(source["schema"].as_str(), Some("raw"));
    let tables = source["tables"].as_sequence().unwrap();
    assert_eq!(tables.len(), 1, "tracking tables are left out");
    let patient = &tables[0];
    assert_eq!(patient["name"].as_str(), Some("patient"));
    assert!(patient["description"].as_str().unwrap().len() > 10);
    // dbt 1.10 reads freshness and its field under `config:`.
    let config = &patient["config"];
    assert_eq!(config["loaded_at_field"].as_str(), Some("\"DateTStamp\""));
    assert_eq!(
        config["freshness"]["warn_after"]["count"].as_u64(),
        Some(24)
    );
    assert!(patient.get("loaded_at_field").is_none() && patient.get("freshness").is_none());
    let columns = patient["columns"].as_sequence().unwrap();
    assert_eq!(columns.len(), 3);
    assert_eq!(columns[0]["name"].as_str(), Some("PatNum"));
    assert_eq!(columns[0]["description"].as_str(), Some("Primary key."));

    let legacy = dir.join("legacy.yml");
    let out = run(
        &env,
        &tables_file,
        &[
            "dbt-sources",
            "--legacy-freshness",
            "--output",
            legacy.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let yaml: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&legacy).unwrap()).unwrap();
    let patient = &yaml["sources"][0]["tables"][0];
    assert_eq!(patient["loaded_at_field"].as_str(), Some("\"DateTStamp\""));
    assert_eq!(
        patient["freshness"]["error_after"]["count"].as_u64(),
        Some(72)
    );
    assert!(patient.get("config").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_mark_and_the_dbt_macro_record_what_status_shows() {
    let db = TestDb::new("cli_transform").await;
    db.mysql(&PATIENTS_AND_DEFINITIONS).await;
    let dir = scratch("cli_transform");
    let env = db.env_file(&dir);
    let tables = dir.join("tables.yml");
    std::fs::write(
        &tables,
        format!("{TABLES}  definition:\n    extraction_strategy: full_table\n"),
    )
    .unwrap();
    let out = run(&env, &tables, &["run", "--phase", "load", "--all"]);
    assert!(out.status.success(), "{}", text(&out));

    let mark = |extra: &[&str]| {
        let mut args = vec!["transform", "mark", "--table", "patient"];
        args.extend_from_slice(extra);
        let out = run(&env, &tables, &args);
        assert!(out.status.success(), "{}", text(&out));
    };
    mark(&["--status", "success", "--rows", "40"]);
    let patient = status_of(&env, &tables, "patient");
    assert_eq!(patient["transform_status"], "success", "{patient}");
    assert_eq!(patient["transform_behind_seconds"], 0, "{patient}");
    mark(&["--status", "failed"]);
    let failed = status_of(&env, &tables, "patient");
    assert_eq!(failed["transform_status"], "failed");
    assert_eq!(
        failed["last_transformed"], patient["last_transformed"],
        "a failure keeps the last successful time"
    );

    // The dbt macro, rendered as dbt would for a post-hook, does the same.
    let macro_text = std::fs::read_to_string("macros/etl_transform_status.sql").unwrap();
    let body = macro_text
        .split_once("-%}\ninsert")
        .map(|(_, rest)| format!("insert{rest}"))
        .and_then(|s| s.split_once("{%- endmacro").map(|(sql, _)| sql.to_string()))
        .unwrap();
    let sql = body
        .replace("{{ schema }}", "raw")
        .replace("{{ table_name }}", "definition")
        .replace("{{ status }}", "success")
        .replace("{{ rows }}", "null");
    assert!(!sql.contains("{{"), "{sql}");
    db.pg().await.batch_execute(&sql).await.unwrap();
    let definition = status_of(&env, &tables, "definition");
    assert_eq!(definition["transform_status"], "success", "{definition}");
    let out = run(&env, &tables, &["status"]);
    let line = text(&out);
    let line = line.lines().find(|l| l.starts_with("definition")).unwrap();
    assert!(line.contains(" success   "), "{line}");
}

/// A test's clinic of 40 patients and 12 definitions at the source, its env
/// file and a config of both tables.
async fn clinic(name: &str) -> (TestDb, PathBuf, PathBuf) {
    let db = TestDb::new(name).await;
    db.source_sql(&PATIENTS_AND_DEFINITIONS).await;
    let dir = scratch(name);
    let env = db.env_file(&dir);
    let tables = dir.join("tables.yml");
    std::fs::write(
        &tables,
        format!("{TABLES}  definition:\n    extraction_strategy: full_table\n"),
    )
    .unwrap();
    (db, env, tables)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_in_direct_mode_loads_straight_from_the_source() {
    let (db, env, tables) = clinic("cli_direct").await;
    let mut text_env = std::fs::read_to_string(&env).unwrap();
    text_env.push_str("ETL_MODE=direct\n");
    std::fs::write(&env, text_env).unwrap();
    let out = run(&env, &tables, &["run", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(db.pg_count("patient").await, 40);
    let mut replica = etl_pipeline::mysql::connect(&db.ctx.replica).await.unwrap();
    let copied: Vec<String> =
        mysql_async::prelude::Queryable::query(&mut replica, "SHOW TABLES LIKE 'patient'")
            .await
            .unwrap();
    assert!(copied.is_empty(), "nothing is copied in direct mode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_start_still_writes_its_summary_json() {
    let (_db, env, tables) = clinic("cli_summary_failed").await;
    let summary = env.with_file_name("summary.json");
    let summary_arg = summary.to_str().unwrap().to_string();
    // The warehouse's port closed, then an environment that does not parse.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let original = std::fs::read_to_string(&env).unwrap();
    let unreachable = with_setting(&env, "TEST_POSTGRES_ANALYTICS_PORT", &port.to_string());
    for (env_text, expected) in [
        (unreachable, "cannot connect"),
        (
            original.replace("ETL_ENVIRONMENT=test", "ETL_ENVIRONMENT=staging"),
            "ETL_ENVIRONMENT",
        ),
    ] {
        std::fs::write(&summary, "{\"succeeded\": true, \"stale\": true}").unwrap();
        std::fs::write(&env, env_text).unwrap();
        let out = run(
            &env,
            &tables,
            &["run", "--all", "--summary-json", &summary_arg],
        );
        assert!(!out.status.success(), "{}", text(&out));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        assert_eq!(json["succeeded"], false, "{json}");
        assert!(json.get("stale").is_none(), "{json}");
        assert!(
            json["error"].as_str().unwrap().contains(expected),
            "{expected}: {json}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_suggests_names_and_says_what_run_needs() {
    let (db, env, tables) = clinic("cli_polish").await;
    let err = |args: &[&str]| {
        let out = run(&env, &tables, args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        text(&out)
    };
    assert!(err(&["statu"]).contains("a similar subcommand exists: 'status'"));
    assert!(err(&["run"]).contains("<--table <T>|--all>"));
    assert!(err(&["run", "--table", "patient", "--all"]).contains("cannot be used with"));
    assert!(
        err(&["run", "--table", "patient", "--exclude", "definition"])
            .contains("cannot be used with")
    );
    assert!(err(&["run", "--all", "--exclude", "nosuch"]).contains("`nosuch`"));
    let help = text(&run(&env, &tables, &["--help"]));
    assert!(
        help.contains("Copy tables from the source into the replica, then load them"),
        "{help}"
    );
    let run_help = text(&run(&env, &tables, &["run", "--help"]));
    let workers = run_help
        .split("--max-workers")
        .nth(1)
        .and_then(|rest| rest.split("--category").next())
        .unwrap();
    assert!(
        !workers.contains("[default:"),
        "one default, said once: {workers}"
    );

    let out = run(&env, &tables, &["run", "--all", "--exclude", "patient"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains(": 1 table(s), 0 failed"), "{shown}");
    assert_eq!(db.pg_count("definition").await, 12);
    let client = db.pg().await;
    let patient: Option<String> = client
        .query_one("select to_regclass('raw.patient')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(patient, None, "patient was left out");
}

/// The env file with one variable set to another value.
fn with_setting(env: &Path, name: &str, value: &str) -> String {
    std::fs::read_to_string(env)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{name}=")) {
                format!("{name}={value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_tracking_with_the_source_down_and_max_lag_alerts() {
    let (db, env, tables) = clinic("cli_status_down").await;
    let out = run(&env, &tables, &["run", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&env, &tables, &["status", "--max-lag", "1h"]);
    assert!(out.status.success(), "within an hour: {}", text(&out));
    // Seven patients stamped two hours ahead of the load.
    db.source_sql(&[
        "INSERT INTO `patient` (`LName`, `DateTStamp`) SELECT CONCAT('Late', seq), NOW() + INTERVAL 2 HOUR FROM seq_1_to_7",
    ])
    .await;
    let out = run(&env, &tables, &["status", "--max-lag", "1h"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("patient is 2h"), "{}", text(&out));
    assert!(
        run(&env, &tables, &["status", "--max-lag", "3h"])
            .status
            .success()
    );
    let out = run(&env, &tables, &["status", "--max-lag", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // The source's port closed: the tracking still shows, the lag is unknown.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    std::fs::write(
        &env,
        with_setting(&env, "TEST_OPENDENTAL_SOURCE_PORT", &port.to_string()),
    )
    .unwrap();
    let out = run(&env, &tables, &["status"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("lag unknown: the source cannot be reached"),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("patient") && l.contains("success")),
        "{shown}"
    );
    assert!(shown.contains("lag: unknown: cannot connect"), "{shown}");
    let out = run(&env, &tables, &["status", "--max-lag", "1d"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "not measured is not fresh: {}",
        text(&out)
    );
}
