//! The demo clinic: OpenDental's schema grown to a fraction of a real
//! clinic's row counts, and the demo command's whole flow on it.

mod common;

use common::{TestDb, binary, binary_with, scratch};
use etl_pipeline::demo;
use etl_pipeline::mysql as my;
use mysql_async::prelude::Queryable;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_clinic_has_every_opendental_table_at_its_scaled_size() {
    let db = TestDb::new("demo_build").await;
    let fixtures = demo::fixtures_dir(None).unwrap();
    let built = demo::build_source(&db.source, &fixtures, 0.001, None, &[])
        .await
        .unwrap();
    assert_eq!(built.tables.len(), 379);

    let mut conn = my::connect(&db.source).await.unwrap();
    let mut total = 0;
    for table in &built.tables {
        let n: u64 = conn
            .query_first(format!("SELECT COUNT(*) FROM `{table}`"))
            .await
            .unwrap()
            .unwrap();
        total += n;
    }
    assert_eq!(total, built.rows, "the reported size is the real one");
    // Real counts × 0.001, rounded; a table keeps its seed rows when it has more.
    for (table, rows) in [
        ("securitylog", 4738),
        ("sheetfield", 1657),
        ("procedurelog", 818),
        ("patient", 35),
        ("definition", 261),
    ] {
        let n: u64 = conn
            .query_first(format!("SELECT COUNT(*) FROM `{table}`"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, rows, "{table}");
    }
    let (stamps, no_dates, accented): (u64, u64, u64) = conn
        .query_first(
            "SELECT COUNT(DISTINCT `DateTStamp`), SUM(`ProcDate` = '0001-01-01'), SUM(`BillingNote` LIKE '%é%') \
             FROM `procedurelog`",
        )
        .await
        .unwrap()
        .unwrap();
    assert!(
        stamps > 200 && stamps < 818,
        "edit stamps spread, with ties: {stamps}"
    );
    assert!(no_dates > 0, "OpenDental's 0001-01-01 appears");
    assert!(accented > 0, "accented text appears");

    let err = demo::build_source(&db.source, &fixtures, 0.001, None, &["nosuchtable".into()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`nosuchtable`"), "{err}");
}

/// Runs `demo` with `args` on databases of its own (`etl_t_<name>…`),
/// its files in `dir`; fails unless it succeeds; its standard output.
fn demo(name: &str, dir: &std::path::Path, args: &[&str]) -> String {
    let out = binary()
        .arg("demo")
        .args(args)
        .args(["--source-db", &format!("etl_t_{name}_src")])
        .args(["--replica-db", &format!("etl_t_{name}")])
        .args(["--warehouse-db", &format!("etl_t_{name}")])
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn the_demo_runs_full_then_incremental_and_verifies_clean() {
    let dir = scratch("demo_flow");
    let text = demo(
        "demo_flow",
        &dir,
        &[
            "--only",
            "procedurelog,patient,commlog,securitylog,securityloghash,definition",
            "--rows",
            "12000",
        ],
    );
    assert!(
        text.contains("6 tables, 72000 rows") && text.contains("source = replica = warehouse"),
        "{text}"
    );
    // The hint names the program as it can be typed (cargo puts it under
    // target/, which is not on PATH), and runs count tables, not phases.
    let program = std::path::Path::new(env!("CARGO_BIN_EXE_etl-pipeline"));
    let typed = program
        .strip_prefix(std::env::current_dir().unwrap())
        .unwrap_or(program);
    assert!(
        text.contains(&format!("  {} --env-file", typed.display())),
        "{text}"
    );
    assert!(text.contains(": 6 table(s), 0 failed"), "{text}");
    let second = std::fs::read_to_string(dir.join("run-2.txt")).unwrap();
    let line = |table: &str, phase: &str| {
        second
            .lines()
            .find(|l| l.starts_with(&format!("{table} ")) && l.contains(&format!(" {phase} ")))
            .unwrap_or_else(|| panic!("{table} {phase}: {second}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // Fields: table, phase, status, strategy, read, inserted, updated, deleted, ...
    let procedures = line("procedurelog", "load");
    assert_eq!(procedures[3], "incremental", "{second}");
    assert_eq!(
        procedures[5], "300",
        "the new procedures are inserted: {second}"
    );
    assert!(
        procedures[6].parse::<u64>().unwrap() >= 120,
        "the edited fees arrive as updates: {second}"
    );
    assert_eq!(
        procedures[7], "120",
        "the deleted procedures leave the warehouse: {second}"
    );
    let log = line("securitylog", "extract");
    assert_eq!(log[5], "500", "{second}");

    // Another day at the same clinic: the next run reads what it changed.
    let day = demo("demo_flow", &dir, &["--another-day"]);
    assert!(
        day.contains("worked another day") && day.contains("300 procedurelog rows entered"),
        "{day}"
    );
    let summary = dir.join("day.json");
    let out = binary_with(&dir.join("demo.env"), &dir.join("tables.yml"))
        .args(["run", "--all", "--summary-json"])
        .arg(&summary)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let procedures = summary["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "procedurelog" && t["phase"] == "load")
        .unwrap();
    assert_eq!(procedures["rows_inserted"], 300, "{procedures}");
    assert!(
        procedures["rows_updated"].as_u64().unwrap() >= 120,
        "{procedures}"
    );

    let out = binary()
        .args(["demo", "--fixtures", "/nonexistent/fixtures"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fixtures"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `demo --clinics 3`: three clinics, the last on a newer schema, run as
/// a group; the group's view carries the newer columns for that clinic
/// alone, and every clinic verifies clean.
#[test]
fn the_group_demo_runs_three_clinics_one_on_a_newer_schema() {
    let dir = scratch("demo_group");
    let text = demo(
        "demo_group",
        &dir,
        &[
            "--clinics",
            "3",
            "--only",
            "payment,appointment,procedurelog",
            "--rows",
            "400",
        ],
    );
    for line in [
        "north: `etl_t_demo_group_src_north`, 3 tables, 1200 rows",
        "east: `etl_t_demo_group_src_east`, 3 tables, 1200 rows",
        "OpenDental 24.3's payment.MerchantFee, appointment.ItemOrderPlanned",
        "\"raw_group\".\"payment\".MerchantFee set: east 400 of 400, north 0 of 400, south 0 of 400",
        "group views: 3 re-created, 0 unchanged",
        "group views: 0 re-created, 3 unchanged",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    let group = std::fs::read_to_string(dir.join("clinics.yml")).unwrap();
    assert!(group.contains("south: {env_file: south.env}"), "{group}");
    let south = std::fs::read_to_string(dir.join("south.env")).unwrap();
    assert!(
        south.contains("TEST_OPENDENTAL_SOURCE_DB=etl_t_demo_group_src_south")
            && !south.contains("POSTGRES"),
        "{south}"
    );
    let second: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run-2.json")).unwrap()).unwrap();
    assert_eq!(second["succeeded"], true);
    let procedures = second["clinics"]["south"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "procedurelog" && t["phase"] == "load")
        .unwrap()
        .clone();
    // 400, 4 deleted, 300 entered.
    assert_eq!(procedures["rows_read"], 696, "{procedures}");
    // The demo fails unless every clinic verifies clean.
    let verify = std::fs::read_to_string(dir.join("verify.txt")).unwrap();
    assert_eq!(verify.matches("== clinic").count(), 3, "{verify}");

    let text = demo(
        "demo_group",
        &dir,
        &[
            "--clinics",
            "2",
            "--only",
            "payment",
            "--rows",
            "10",
            "--setup-only",
        ],
    );
    assert!(text.contains("demo group ready; run it with: "), "{text}");

    let out = binary()
        .args(["demo", "--clinics", "three"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("takes a number of clinics"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
