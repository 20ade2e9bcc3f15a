//! A dental group: clinics on different schema versions into one
//! warehouse, each in its own schema, with views over all of them.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{TestDb, binary_with, scratch, text};
use etl_pipeline::mysql as my;
use mysql_async::prelude::Queryable;

const PROCEDURELOG: &str = "CREATE TABLE `procedurelog` (`ProcNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, \
     `PatNum` bigint NOT NULL, `ProcFee` double NOT NULL, \
     `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`))";

const TABLES: &str = "tables:\n  procedurelog:\n    extraction_strategy: incremental\n    \
     incremental_columns: [DateTStamp]\n    primary_incremental_column: DateTStamp\n    retry_count: 0\n";

/// A clinic's env file: its source and replica, nothing of the warehouse.
fn clinic_env(db: &TestDb, dir: &Path, name: &str) -> PathBuf {
    let all = std::fs::read_to_string(db.env_file(&dir.join(name))).unwrap();
    let own: String = all
        .lines()
        .filter(|l| {
            l.starts_with("TEST_OPENDENTAL_SOURCE_") || l.starts_with("TEST_MYSQL_REPLICATION_")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let path = dir.join(format!("{name}.env"));
    std::fs::write(&path, own).unwrap();
    path
}

/// Rows in a warehouse table of `db`'s warehouse.
async fn count(db: &TestDb, table: &str) -> i64 {
    db.pg()
        .await
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

fn run(env: &Path, tables: &Path, group: &Path, args: &[&str]) -> (bool, String) {
    let out = binary_with(env, tables)
        .arg("--clinics")
        .arg(group)
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), text(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clinics_load_into_their_own_schemas_and_one_view_joins_them() {
    let dir = scratch("group_clinics");
    // North is on an older schema: no Discount column, and a fee of
    // another type; south is on the newest.
    let north = TestDb::new("group_north").await;
    north
        .source_sql(&[
            &PROCEDURELOG.replace("`ProcFee` double", "`ProcFee` float"),
            "INSERT INTO `procedurelog` (`PatNum`, `ProcFee`) SELECT seq, 10.5 FROM seq_1_to_30",
        ])
        .await;
    let south = TestDb::new("group_south").await;
    south
        .source_sql(&[
            &PROCEDURELOG.replace(
                "`ProcFee` double NOT NULL,",
                "`ProcFee` double NOT NULL, `Discount` double NOT NULL DEFAULT 0,",
            ),
            "INSERT INTO `procedurelog` (`PatNum`, `ProcFee`, `Discount`) SELECT seq, 20, 1.5 FROM seq_1_to_20",
        ])
        .await;
    let east = TestDb::new("group_east").await;
    east.source_sql(&[
        PROCEDURELOG,
        "INSERT INTO `procedurelog` (`PatNum`, `ProcFee`) SELECT seq, 30 FROM seq_1_to_10",
    ])
    .await;
    // The usual environment holds the shared warehouse.
    let env = north.env_file(&dir);
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, TABLES).unwrap();
    for (db, name) in [(&north, "north"), (&south, "south"), (&east, "east")] {
        clinic_env(db, &dir, name);
    }
    let group = dir.join("clinics.yml");
    std::fs::write(
        &group,
        "group_schema: raw_group\nclinics:\n  north: {env_file: north.env, schema: raw_north}\n  \
         south: {env_file: south.env}\n  east: {env_file: east.env}\n",
    )
    .unwrap();
    let (ok, out) = run(&env, &tables, &group, &["dbt-sources"]);
    assert!(!ok && out.contains("holds no group views yet"), "{out}");
    let summary = dir.join("summary.json");
    for args in [
        &["init"][..],
        &["run", "--all", "--summary-json", summary.to_str().unwrap()],
        &["status"],
    ] {
        let (ok, out) = run(&env, &tables, &group, args);
        assert!(ok, "{args:?}: {out}");
        for clinic in ["north", "south", "east"] {
            assert!(out.contains(&format!("clinic {clinic}")), "{args:?}: {out}");
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(json["succeeded"], true);
    assert_eq!(
        json["clinics"]["south"]["tables"][0]["table"],
        "procedurelog"
    );
    // Each clinic in its own schema, with its own tracking.
    let pg = north.pg().await;
    for (schema, rows) in [("raw_north", 30), ("raw_south", 20), ("raw_east", 10)] {
        let n: i64 = pg
            .query_one(&format!("select count(*) from {schema}.procedurelog"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, rows, "{schema}");
        let tracked: i64 = pg
            .query_one(
                &format!(
                    "select count(*) from {schema}.etl_load_status where table_name = 'procedurelog'"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(tracked, 1, "{schema}");
    }
    // One view over all: `clinic` first, columns aligned by name, the
    // missing one NULL of the newest type.
    let columns: Vec<(String, String)> = pg
        .query(
            "select column_name::text, data_type::text from information_schema.columns \
             where table_schema = 'raw_group' and table_name = 'procedurelog' order by ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(columns[0], ("clinic".to_string(), "text".to_string()));
    assert!(
        columns.contains(&("Discount".to_string(), "double precision".to_string())),
        "{columns:?}"
    );
    assert!(
        columns.contains(&("ProcFee".to_string(), "double precision".to_string())),
        "north's float is read as the newest type: {columns:?}"
    );
    let rows: Vec<(String, i64, i64, f64)> = pg
        .query(
            "select clinic, count(*), count(\"Discount\"), sum(\"ProcFee\") from raw_group.procedurelog \
             group by clinic order by clinic",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("east".to_string(), 10, 0, 300.0),
            ("north".to_string(), 30, 0, 315.0),
            ("south".to_string(), 20, 20, 400.0),
        ]
    );

    // The group's dbt source: the views (not a view of the user's beside
    // them), `clinic` described, freshness from the watermark.
    pg.batch_execute("create view raw_group.my_model as select 1 as x")
        .await
        .unwrap();
    let sources = dir.join("group_sources.yml");
    let (ok, out) = run(
        &env,
        &tables,
        &group,
        &["dbt-sources", "--output", sources.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let yaml: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&sources).unwrap()).unwrap();
    let source = &yaml["sources"][0];
    assert_eq!(source["name"].as_str(), Some("opendental"));
    assert_eq!(source["schema"].as_str(), Some("raw_group"));
    let views = source["tables"].as_sequence().unwrap();
    assert_eq!(views.len(), 1, "{yaml:?}");
    assert_eq!(views[0]["name"].as_str(), Some("procedurelog"));
    assert_eq!(
        views[0]["config"]["loaded_at_field"].as_str(),
        Some("\"DateTStamp\"")
    );
    let clinic = &views[0]["columns"][0];
    assert_eq!(clinic["name"].as_str(), Some("clinic"));
    assert!(
        clinic["description"]
            .as_str()
            .unwrap()
            .contains("group file")
    );
    assert_eq!(views[0]["columns"].as_sequence().unwrap().len(), 6);

    // Nothing changed: the view stays as it is. A clinic's schema grows: the
    // view follows.
    let (ok, out) = run(&env, &tables, &group, &["run", "--all"]);
    assert!(ok && out.contains("0 re-created, 1 unchanged"), "{out}");
    east.source_sql(&[
        "ALTER TABLE `procedurelog` ADD COLUMN `Note` varchar(20) NOT NULL DEFAULT 'x'",
    ])
    .await;
    let (ok, out) = run(&env, &tables, &group, &["run", "--all"]);
    assert!(ok && out.contains("1 re-created"), "{out}");
    let notes: i64 = pg
        .query_one(
            "select count(\"Note\") from raw_group.procedurelog where clinic = 'east'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(notes, 10);

    // --clinic picks clinics.
    let (ok, out) = run(
        &env,
        &tables,
        &group,
        &["--clinic", "south", "run", "--all"],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("clinic south") && !out.contains("clinic north"),
        "{out}"
    );
    let (ok, out) = run(&env, &tables, &group, &["--clinic", "west", "status"]);
    assert!(
        !ok && out.contains("its clinics are east, north, south"),
        "{out}"
    );

    // What a scheduler's task runs works as it is.
    let binary = env!("CARGO_BIN_EXE_etl-pipeline");
    let (ok, dag) = run(
        &env,
        &tables,
        &group,
        &["schedule", "airflow", "--binary", binary],
    );
    assert!(ok, "{dag}");
    let task = std::process::Command::new("sh")
        .args(["-c", &task_command(&dag, "north")])
        .output()
        .unwrap();
    assert!(task.status.success(), "{}", text(&task));
    assert!(text(&task).contains("clinic north"), "{}", text(&task));

    // verify and analyze --check go clinic by clinic: the table config,
    // written from north, matches north; south has a column more, east
    // two since.
    let (ok, out) = run(&env, &tables, &group, &["verify", "--deep"]);
    assert!(ok, "{out}");
    assert_eq!(out.matches("procedurelog").count(), 3, "{out}");
    let analyzed = dir.join("analyzed.yml");
    let out = binary_with(&env, &analyzed)
        .arg("analyze")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let (ok, out) = run(&env, &analyzed, &group, &["analyze", "--check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("table `procedurelog`: column `Discount` added")
            && out.contains("table `procedurelog`: column `Note` added")
            && out.contains("clinic(s) failed: east, south"),
        "{out}"
    );
    let (ok, out) = run(&env, &analyzed, &group, &["analyze"]);
    assert!(
        !ok && out.contains("the table config is the group's"),
        "{out}"
    );
}

/// A table config of procedurelog and `more` copies of it
/// (`procedurelog_01` …), made in `db`'s source.
async fn many_tables(db: &TestDb, more: usize) -> String {
    let mut config = TABLES.to_string();
    for n in 1..=more {
        let name = format!("procedurelog_{n:02}");
        db.source_sql(&[&format!("CREATE TABLE `{name}` LIKE `procedurelog`")])
            .await;
        config.push_str(&TABLES["tables:\n".len()..].replace("procedurelog:", &format!("{name}:")));
    }
    config
}

/// A clinic whose env file is broken, or whose server takes the
/// connection and never answers, fails alone and is named; the others
/// finish. The stuck clinic fails once, within the connect timeout, not
/// once per table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_or_stuck_clinic_holds_up_no_other() {
    let dir = scratch("group_isolation");
    let north = TestDb::new("group_iso_north").await;
    north
        .source_sql(&[
            PROCEDURELOG,
            "INSERT INTO `procedurelog` (`PatNum`, `ProcFee`) SELECT seq, 1 FROM seq_1_to_25",
        ])
        .await;
    let config = many_tables(&north, 14).await;
    let env = north.env_file(&dir);
    clinic_env(&north, &dir, "north");
    // A server that accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            held.push(stream);
        }
    });
    let stuck = std::fs::read_to_string(dir.join("north.env"))
        .unwrap()
        .replace(
            &format!("TEST_OPENDENTAL_SOURCE_PORT={}", north.source.port),
            &format!("TEST_OPENDENTAL_SOURCE_PORT={port}"),
        );
    std::fs::write(dir.join("stuck.env"), stuck).unwrap();
    std::fs::write(
        dir.join("broken.env"),
        "TEST_POSTGRES_ANALYTICS_HOST=elsewhere\n",
    )
    .unwrap();
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, config).unwrap();
    let group = dir.join("clinics.yml");
    std::fs::write(
        &group,
        "clinics:\n  north: {env_file: north.env}\n  broken: {env_file: broken.env}\n  \
         stuck: {env_file: stuck.env}\n  missing: {env_file: nowhere.env}\n",
    )
    .unwrap();
    let (ok, out) = run(
        &env,
        &tables,
        &group,
        &["--clinic", "north", "--clinic", "stuck", "init"],
    );
    assert!(ok, "{out}");
    let started = Instant::now();
    let (ok, out) = run(
        &env,
        &tables,
        &group,
        &["run", "--all", "--max-workers", "4"],
    );
    let took = started.elapsed();
    assert!(!ok, "{out}");
    assert!(
        out.contains("clinic(s) failed: broken, missing, stuck"),
        "{out}"
    );
    assert!(
        out.contains("sets TEST_POSTGRES_ANALYTICS_HOST, but the warehouse is the group's"),
        "{out}"
    );
    assert!(out.contains("nowhere.env"), "{out}");
    assert_eq!(out.matches("no answer within 10s").count(), 1, "{out}");
    assert!(took < Duration::from_secs(60), "{took:?}");
    let loaded = count(&north, "raw_north.procedurelog").await;
    assert_eq!(loaded, 25, "north finished: {out}");
}

/// A clinic whose server stops answering in the middle of a query (here:
/// its table is write-locked by someone else, so the read waits) is asked
/// to stop at the group's `timeout_minutes`, abandoned soon after, and
/// named; a clinic waiting for its slot then runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clinic_stuck_in_a_query_is_stopped_at_the_groups_timeout() {
    let dir = scratch("group_deadline");
    let north = TestDb::new("group_deadline_north").await;
    let late = TestDb::new("group_deadline_late").await;
    for db in [&north, &late] {
        db.source_sql(&[
            PROCEDURELOG,
            "INSERT INTO `procedurelog` (`PatNum`, `ProcFee`) SELECT seq, 1 FROM seq_1_to_25",
        ])
        .await;
    }
    let env = north.env_file(&dir);
    clinic_env(&north, &dir, "north");
    clinic_env(&late, &dir, "late");
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, TABLES).unwrap();
    let group = dir.join("clinics.yml");
    std::fs::write(
        &group,
        "clinics:\n  late: {env_file: late.env}\n  north: {env_file: north.env}\n\
         schedule: {timeout_minutes: 1}\n",
    )
    .unwrap();
    let (ok, out) = run(&env, &tables, &group, &["init"]);
    assert!(ok, "{out}");
    let mut holder = my::connect(&late.source).await.unwrap();
    holder
        .query_drop("LOCK TABLES `procedurelog` WRITE")
        .await
        .unwrap();

    let started = Instant::now();
    // One clinic at a time: north waits for late's slot.
    let (ok, out) = run(
        &env,
        &tables,
        &group,
        &[
            "run",
            "--all",
            "--max-workers",
            "1",
            "--summary-json",
            dir.join("summary.json").to_str().unwrap(),
        ],
    );
    let took = started.elapsed();
    holder.query_drop("UNLOCK TABLES").await.unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let late_seconds = summary["clinics"]["late"]["seconds"].as_f64().unwrap();
    assert!((60.0..120.0).contains(&late_seconds), "{summary}");
    assert!(!ok, "{out}");
    assert!(out.contains("clinic(s) failed: late\n"), "{out}");
    assert!(
        out.contains("did not finish within schedule.timeout_minutes (1 min)")
            && out.contains("abandoned 30s after being asked to stop"),
        "{out}"
    );
    assert!(
        took > Duration::from_secs(60) && took < Duration::from_secs(130),
        "{took:?}"
    );
    let loaded = count(&north, "raw_north.procedurelog").await;
    assert_eq!(loaded, 25, "north ran after late was stopped: {out}");
    // What the stopped clinic left behind does not stop its next run.
    let (ok, out) = run(&env, &tables, &group, &["--clinic", "late", "run", "--all"]);
    assert!(ok, "{out}");
    // The group's warehouse is north's.
    let loaded = count(&north, "raw_late.procedurelog").await;
    assert_eq!(loaded, 25, "{out}");
}

/// The command a task of a generated DAG runs, from its line.
fn task_command(dag: &str, task: &str) -> String {
    let line = dag
        .lines()
        .find(|l| l.contains(&format!("task_id=\"{task}\",")))
        .unwrap_or_else(|| panic!("no task {task} in {dag}"));
    let literal = line
        .split_once("bash_command=")
        .unwrap()
        .1
        .trim_end_matches(')');
    serde_json::from_str(literal).unwrap()
}

fn schedule(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = common::binary()
        .current_dir(dir)
        .args([
            "--tables",
            "tables.yml",
            "--clinics",
            "clinics.yml",
            "schedule",
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `schedule` writes what each engine needs, checked by the engine's own
/// parser where this machine has one: Python's for the DAG (Airflow's
/// DagBag in reliability/schedule), systemd's for the units, and the
/// manifests' structure for Kubernetes (kubernetes-validate in
/// reliability/schedule).
#[test]
fn schedule_writes_what_airflow_kubernetes_and_systemd_need() {
    let dir = scratch("group_schedule");
    std::fs::write(
        dir.join("clinics.yml"),
        "clinics:\n  north: {env_file: north.env}\n  south: {env_file: south.env}\n  \
         east_side: {env_file: east.env, schema: raw_east}\n\
         schedule: {every_minutes: 15, retries: 3, timeout_minutes: 14, parallel: 2}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("tables.yml"),
        "tables:\n  patient:\n    extraction_strategy: full_table\n    performance_category: small\n  \
         procedurelog:\n    extraction_strategy: full_table\n    performance_category: large\n",
    )
    .unwrap();
    let (ok, dag, err) = schedule(&dir, &["airflow"]);
    assert!(ok, "{err}");
    let parsed = std::process::Command::new("python3")
        .args(["-c", "import ast, sys; ast.parse(sys.stdin.read())"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(dag.as_bytes())?;
            child.wait_with_output()
        })
        .expect("python3 must be installed for this test");
    assert!(parsed.status.success(), "{}\n{dag}", text(&parsed));
    for clinic in ["north", "south", "east_side"] {
        let command = task_command(&dag, clinic);
        assert!(
            command.ends_with(&format!("--clinic {clinic} run --all")),
            "{command}"
        );
        assert!(command.contains(&dir.join("clinics.yml").display().to_string()));
    }
    for part in [
        "schedule=\"*/15 * * * *\"",
        "\"retries\": 3",
        "datetime.timedelta(minutes=14)",
        "\"pool\": \"etl_pipeline_raw_group\"",
        "airflow pools set etl_pipeline_raw_group 2",
        "max_active_runs=1",
    ] {
        assert!(dag.contains(part), "{part}: {dag}");
    }
    let (ok, dag, err) = schedule(&dir, &["airflow", "--by-category"]);
    assert!(ok, "{err}");
    assert!(task_command(&dag, "south_large").ends_with("--category large"));
    assert!(task_command(&dag, "south_small").ends_with("--category small"));
    assert!(!dag.contains("_medium"), "no table is medium: {dag}");

    let (ok, manifests, err) =
        schedule(&dir, &["kubernetes", "--image", "registry.example/etl:1.2"]);
    assert!(ok, "{err}");
    let jobs: Vec<serde_json::Value> = manifests
        .split("\n---\n")
        .skip(1)
        .map(|doc| serde_norway::from_str(doc).unwrap())
        .collect();
    assert_eq!(jobs.len(), 3, "{manifests}");
    for (job, clinic) in jobs.iter().zip(["east_side", "north", "south"]) {
        assert_eq!(job["kind"], "CronJob");
        assert_eq!(job["apiVersion"], "batch/v1");
        assert_eq!(job["spec"]["concurrencyPolicy"], "Forbid");
        assert_eq!(job["spec"]["schedule"], "*/15 * * * *");
        assert_eq!(job["spec"]["jobTemplate"]["spec"]["backoffLimit"], 3);
        assert_eq!(
            job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"],
            840
        );
        let pod = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(container["image"], "registry.example/etl:1.2");
        assert_eq!(
            container["envFrom"][0]["secretRef"]["name"],
            "etl-pipeline-warehouse"
        );
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(&args[4..], ["--clinic", clinic, "run", "--all"]);
        assert_eq!(
            pod["volumes"][1]["secret"]["secretName"],
            format!("etl-pipeline-{}", clinic.replace('_', "-"))
        );
    }

    let binary = env!("CARGO_BIN_EXE_etl-pipeline");
    let (ok, units, err) = schedule(&dir, &["systemd", "--binary", binary]);
    assert!(ok, "{err}");
    let mut files = Vec::new();
    for section in units.split("# file: ").skip(1) {
        let (name, body) = section.split_once('\n').unwrap();
        std::fs::write(dir.join(name), body).unwrap();
        files.push(dir.join(name));
    }
    assert_eq!(files.len(), 2, "{units}");
    let verified = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&files)
        .output()
        .expect("systemd-analyze must be installed for this test");
    assert!(verified.status.success(), "{}\n{units}", text(&verified));
    assert!(units.contains("OnCalendar=*-*-* *:00/15:00"), "{units}");

    std::fs::write(
        dir.join("tables.yml"),
        "tables:\n  patient:\n    extraction_strategy: full_table\n",
    )
    .unwrap();
    let (ok, _, err) = schedule(&dir, &["airflow", "--by-category"]);
    assert!(
        !ok && err.contains("no performance_category (patient)"),
        "{err}"
    );
    let out = common::binary()
        .args(["schedule", "airflow"])
        .output()
        .unwrap();
    assert!(!out.status.success() && text(&out).contains("--clinics FILE"));
}
