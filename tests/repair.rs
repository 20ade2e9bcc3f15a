//! `verify --deep --repair`: rows that differ are rewritten, the replica
//! from the source and then the warehouse from the replica; rows that match
//! are never written, and without `--repair` nothing changes.

mod common;

use common::{TestDb, binary_with, scratch, text};

const CLAIM: &str = "CREATE TABLE `claim` (
  `ClaimNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
  `PatNum` bigint NOT NULL,
  `ClaimFee` decimal(10,2) NOT NULL,
  `Note` varchar(40) NOT NULL DEFAULT '',
  `SecDateTEntry` datetime NOT NULL,
  KEY `SecDateTEntry` (`SecDateTEntry`)
) ENGINE=InnoDB";

const TABLES: &str = "tables:
  claim:
    extraction_strategy: incremental
    incremental_columns: [SecDateTEntry]
    primary_incremental_column: SecDateTEntry
    batch_size: 1000
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_rewrites_exactly_the_rows_that_differ_replica_first() {
    let db = TestDb::new("repair_deep").await;
    db.source_sql(&[
        CLAIM,
        "INSERT INTO `claim` (`PatNum`, `ClaimFee`, `Note`, `SecDateTEntry`) \
         SELECT seq % 300, seq / 4, CONCAT('claim ', seq), '2024-01-01 00:00:00' + INTERVAL seq MINUTE \
         FROM seq_1_to_3000",
    ])
    .await;
    let dir = scratch("repair_deep");
    let env = db.env_file(&dir);
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, TABLES).unwrap();
    let run = |args: &[&str]| binary_with(&env, &tables).args(args).output().unwrap();
    let out = run(&["run", "--all"]);
    assert!(out.status.success(), "{}", text(&out));

    // Edits no watermark sees (the entry stamp stays), and hand edits on
    // both copies.
    db.source_sql(&["UPDATE `claim` SET `ClaimFee` = 1.5 WHERE `ClaimNum` = 100"])
        .await;
    db.mysql(&[
        "UPDATE `claim` SET `Note` = 'edited in the replica' WHERE `ClaimNum` = 200",
        "DELETE FROM `claim` WHERE `ClaimNum` = 300",
        "INSERT INTO `claim` VALUES (9000, 1, 1, 'only in the replica', '2024-01-01 00:00:00')",
    ])
    .await;
    db.pg()
        .await
        .batch_execute(
            "update raw.claim set \"Note\" = 'edited in the warehouse' where \"ClaimNum\" = 400; \
             delete from raw.claim where \"ClaimNum\" = 500; \
             insert into raw.claim values (8000, 1, 1, 'only in the warehouse', '2024-01-01')",
        )
        .await
        .unwrap();
    let before = db.row_versions("claim", "ClaimNum").await;

    let out = run(&["verify", "--deep"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        db.row_versions("claim", "ClaimNum").await,
        before,
        "verify alone changes nothing"
    );

    let out = run(&["verify", "--deep", "--repair"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    // The replica: 100 and 200 rewritten, 300 copied back, 9000 removed.
    // The warehouse, against the repaired replica: 100 (from the source),
    // 400 and 500 rewritten, 8000 removed.
    assert!(
        shown.contains(
            "replica: 3 row(s) rewritten, 1 removed; warehouse: 3 row(s) rewritten, 1 removed"
        ),
        "{shown}"
    );
    assert!(shown.contains(" ok"), "{shown}");
    db.assert_replica_same("claim", &["ClaimNum"]).await;
    assert_eq!(db.assert_source_same("claim", &["ClaimNum"]).await, 3000);
    let after = db.row_versions("claim", "ClaimNum").await;
    for (key, version) in &before {
        if ![100, 400, 8000].contains(key) {
            assert_eq!(after.get(key), Some(version), "row {key} was rewritten");
        }
    }
    assert!(!after.contains_key(&8000));
    assert_ne!(after[&100], before[&100]);

    // Nothing left to repair: a second repair writes nothing.
    let out = run(&["verify", "--deep", "--repair"]);
    assert!(
        text(&out).contains(
            "replica: 0 row(s) rewritten, 0 removed; warehouse: 0 row(s) rewritten, 0 removed"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(db.row_versions("claim", "ClaimNum").await, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_refuses_to_remove_most_of_a_table_without_allow_mass_delete() {
    let db = TestDb::new("repair_mass").await;
    db.source_sql(&[
        CLAIM,
        "INSERT INTO `claim` (`PatNum`, `ClaimFee`, `SecDateTEntry`) \
         SELECT seq, 1, '2024-01-01' FROM seq_1_to_100",
    ])
    .await;
    let dir = scratch("repair_mass");
    let env = db.env_file(&dir);
    let tables = dir.join("tables.yml");
    std::fs::write(&tables, TABLES).unwrap();
    let run = |args: &[&str]| binary_with(&env, &tables).args(args).output().unwrap();
    assert!(run(&["run", "--all"]).status.success());
    // A source emptied by mistake.
    db.source_sql(&["DELETE FROM `claim` WHERE `ClaimNum` > 10"])
        .await;
    let out = run(&["verify", "--deep", "--repair"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--allow-mass-delete"), "{}", text(&out));
    assert_eq!(db.pg_count("claim").await, 100, "nothing removed");
    let out = run(&["verify", "--deep", "--repair", "--allow-mass-delete"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(db.pg_count("claim").await, 10);
}
