//! Secrets never leave the process: every command, succeeding or failing,
//! verbose and in JSON, is run with a distinctive password, and the password
//! must not appear in any output, log, written file or tracking table.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{TestDb, binary_with, scratch, text};
use mysql_async::prelude::Queryable;

const TABLES: &str = "tables:\n  patient:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
                      primary_incremental_column: DateTStamp\n    primary_key: PatNum\n";

fn run(env: &Path, tables: &Path, args: &[&str]) -> Output {
    binary_with(env, tables)
        .env("ETL_LOG", "trace")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn passwords_never_appear_in_output_even_when_connections_fail() {
    let secret = "Zq9-distinctive-S3cret-pw";
    let dir = scratch("cli_secrets");
    let env = dir.join("secret.env");
    // MariaDB refuses root with this password; nothing listens on port 1.
    std::fs::write(
        &env,
        format!(
            "ETL_ENVIRONMENT=production\nMYSQL_REPLICATION_HOST=127.0.0.1\nMYSQL_REPLICATION_DB=mysql\n\
             MYSQL_REPLICATION_USER=root\nMYSQL_REPLICATION_PASSWORD={secret}\n\
             OPENDENTAL_SOURCE_HOST=127.0.0.1\nOPENDENTAL_SOURCE_PORT=1\nOPENDENTAL_SOURCE_DB=od\n\
             OPENDENTAL_SOURCE_USER=reader\nOPENDENTAL_SOURCE_PASSWORD={secret}\n\
             POSTGRES_ANALYTICS_HOST=127.0.0.1\nPOSTGRES_ANALYTICS_PORT=1\nPOSTGRES_ANALYTICS_DB=analytics\n\
             POSTGRES_ANALYTICS_USER=etl\nPOSTGRES_ANALYTICS_PASSWORD={secret}\n"
        ),
    )
    .unwrap();
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, TABLES).unwrap();
    for args in [
        vec!["validate"],
        vec!["test-connections"],
        vec!["init"],
        vec!["status"],
        vec!["-v", "run", "--phase", "load", "--all"],
        vec!["-v", "run", "--all"],
        vec!["run", "--phase", "extract", "--table", "patient"],
        vec!["-v", "serve", "--listen", "127.0.0.1:0"],
    ] {
        let started = Instant::now();
        let out = run(&env, &tables, &args);
        let all = text(&out);
        assert!(
            !all.contains(secret),
            "{args:?} printed the password: {all}"
        );
        assert!(started.elapsed() < Duration::from_secs(30), "{args:?} hung");
        if args != ["validate"] {
            assert!(!out.status.success(), "{args:?}: {all}");
        }
    }
    // A password file that cannot be read is named, with its variable.
    let missing = dir.join("no_such_password");
    let broken = dir.join("broken.env");
    let with_file = std::fs::read_to_string(&env).unwrap().replace(
        &format!("POSTGRES_ANALYTICS_PASSWORD={secret}"),
        &format!("POSTGRES_ANALYTICS_PASSWORD_FILE={}", missing.display()),
    );
    std::fs::write(&broken, with_file).unwrap();
    let out = run(&broken, &tables, &["run", "--all"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("POSTGRES_ANALYTICS_PASSWORD_FILE names")
            && all.contains(&missing.display().to_string())
            && !all.contains(secret),
        "{all}"
    );
    // A mask key too short to use is refused without being shown.
    let short_key = "Zq9-short-key";
    let short = dir.join("short_key.env");
    let mut with_key = std::fs::read_to_string(&env).unwrap();
    with_key.push_str(&format!("ETL_MASK_KEY={short_key}\n"));
    std::fs::write(&short, with_key).unwrap();
    for args in [&["validate"][..], &["run", "--all"]] {
        let out = run(&short, &tables, args);
        let all = text(&out);
        assert!(!out.status.success(), "{all}");
        assert!(
            all.contains("at least 16") && !all.contains(short_key),
            "{args:?}: {all}"
        );
    }
    let out = run(&env, &tables, &["test-connections"]);
    let all = text(&out);
    assert!(all.contains("replica") && all.contains("FAILED"), "{all}");
    assert!(
        all.contains("127.0.0.1:1"),
        "names the unreachable address: {all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_when_every_command_succeeds() {
    let secret = "Vw4-distinctive-P4ssword-xq";
    let user = "etl_t_secret_user";
    let db = TestDb::new("secrets").await;
    db.source_sql(&[
        "CREATE TABLE `patient` (`PatNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `LName` varchar(100) NOT NULL, \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`))",
        "INSERT INTO `patient` (`LName`) SELECT CONCAT('Lee', seq) FROM seq_1_to_50",
    ])
    .await;
    // A MariaDB user that needs the password, for the replica and the source.
    let mut admin = etl_pipeline::mysql::connect(&db.mysql_admin).await.unwrap();
    for sql in [
        format!("DROP USER IF EXISTS '{user}'@'%'"),
        format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{secret}'"),
        format!(
            "GRANT ALL ON `{}`.* TO '{user}'@'%'",
            db.ctx.replica.database
        ),
        format!("GRANT ALL ON `{}`.* TO '{user}'@'%'", db.source.database),
    ] {
        admin.query_drop(sql).await.unwrap();
    }
    let dir = scratch("secrets");
    // The MySQL passwords come from files, as Docker and Kubernetes hand
    // them over (with a trailing newline); the source's is readable by
    // all, which is warned about.
    use std::os::unix::fs::PermissionsExt;
    let secret_file = |name: &str, mode: u32| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    };
    let (replica_file, source_file) = (
        secret_file("replica_password", 0o600),
        secret_file("source_password", 0o644),
    );
    let base = std::fs::read_to_string(db.env_file(&dir)).unwrap();
    let env_text: String = base
        .lines()
        .map(|line| match line.split_once('=') {
            Some((key, _)) if key.ends_with("MYSQL_REPLICATION_PASSWORD") => {
                format!("{key}_FILE={replica_file}\n")
            }
            Some((key, _)) if key.ends_with("OPENDENTAL_SOURCE_PASSWORD") => {
                format!("{key}_FILE={source_file}\n")
            }
            Some((key, _)) if key.ends_with("_PASSWORD") => format!("{key}={secret}\n"),
            Some((key, _))
                if key.ends_with("MYSQL_REPLICATION_USER")
                    || key.ends_with("OPENDENTAL_SOURCE_USER") =>
            {
                format!("{key}={user}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    // The mask key is a secret too: the same text, so every check below
    // covers it.
    let env = dir.join("secret.env");
    std::fs::write(&env, format!("{env_text}ETL_MASK_KEY={secret}\n")).unwrap();
    let tables = dir.join("tables.yml");
    std::fs::write(
        &tables,
        format!("{TABLES}    mask_columns: {{LName: hash}}\n"),
    )
    .unwrap();
    let (summary, sources, analyzed) = (
        dir.join("summary.json"),
        dir.join("sources.yml"),
        dir.join("analyzed.yml"),
    );
    let commands: Vec<Vec<&str>> = vec![
        vec!["validate"],
        vec!["test-connections"],
        vec!["init"],
        vec!["-v", "analyze", "--tables", analyzed.to_str().unwrap()],
        vec![
            "-v",
            "run",
            "--all",
            "--summary-json",
            summary.to_str().unwrap(),
        ],
        vec![
            "--log-format",
            "json",
            "run",
            "--table",
            "patient",
            "--force-full",
        ],
        vec!["status"],
        vec!["status", "--format", "json"],
        vec!["verify", "--deep"],
        vec!["dbt-sources", "--output", sources.to_str().unwrap()],
        vec![
            "transform",
            "mark",
            "--table",
            "patient",
            "--status",
            "success",
        ],
        vec!["run", "--table", "nope"],
    ];
    for args in &commands {
        let out = run(&env, &tables, args);
        let all = text(&out);
        assert!(
            !all.contains(secret),
            "{args:?} printed the password: {all}"
        );
        if args[..] != ["run", "--table", "nope"] {
            assert!(out.status.success(), "{args:?}: {all}");
        }
        if args[..] == ["validate"] {
            assert!(
                all.contains(&format!("chmod 600 {source_file}")) && !all.contains(&replica_file),
                "only the file others can read is warned about: {all}"
            );
        }
    }
    for file in [
        &summary,
        &sources,
        &analyzed,
        &dir.join("schema_changelog.md"),
    ] {
        let written = std::fs::read_to_string(file).unwrap();
        assert!(
            !written.contains(secret),
            "{} holds the password",
            file.display()
        );
    }
    // Nor in the tracking tables, on either side.
    let client = db.pg().await;
    let hashed: i64 = client
        .query_one(
            "select count(*) from raw.patient where \"LName\" ~ '^[0-9a-f]{64}$'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hashed, 50, "the key was used");
    for table in ["etl_run_history", "etl_load_status", "etl_transform_status"] {
        let found: i64 = client
            .query_one(
                &format!("select count(*) from raw.{table} t where t::text like '%' || $1 || '%'"),
                &[&secret],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(found, 0, "raw.{table} holds the password");
    }
    let mut replica = etl_pipeline::mysql::connect(&db.ctx.replica).await.unwrap();
    let found: Option<i64> = replica
        .exec_first(
            "SELECT COUNT(*) FROM `etl_copy_status` WHERE CONCAT_WS('|', table_name, copy_status, last_primary_value) LIKE ?",
            (format!("%{secret}%"),),
        )
        .await
        .unwrap();
    assert_eq!(found, Some(0));
    admin
        .query_drop(format!("DROP USER '{user}'@'%'"))
        .await
        .unwrap();
}
