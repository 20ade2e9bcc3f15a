//! OpenDental's own unit-test database (379 tables, real seed data) as the
//! source of a two-hop run with the old system's tables.yml, then verified
//! value by value: source = replica = warehouse.

mod common;

use common::TestDb;
use etl_pipeline::config::{TableConfig, TablesConfig};
use etl_pipeline::mysql as my;
use mysql_async::prelude::Queryable;

const DUMP: &str = "fixtures/opendental/opendental-21.1-unittest-dump.sql";
const SEED_TABLES: &str = "fixtures/opendental/seed-system-tables.yml";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opendental_fixture_runs_two_hop_with_the_old_config_and_verifies_clean() {
    let db = TestDb::new("opendental").await;
    let dump =
        std::fs::read_to_string(DUMP).expect("the OpenDental fixture is in fixtures/opendental");
    let mut conn = my::connect(&db.source).await.unwrap();
    conn.query_drop(dump).await.unwrap();
    let names: Vec<String> = conn
        .exec(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?",
            (db.source.database.as_str(),),
        )
        .await
        .unwrap();
    assert!(names.len() >= 379, "{} tables", names.len());

    let seed = TablesConfig::load(std::path::Path::new(SEED_TABLES)).unwrap();
    let tables: Vec<TableConfig> = names
        .iter()
        .map(|n| {
            seed.get(n)
                .cloned()
                .unwrap_or_else(|_| TableConfig::full_table(n))
        })
        .collect();
    let config = TablesConfig::from_tables(tables);
    let report = db.run_two_hop(&config, None).await;
    let failures: Vec<String> = report
        .outcomes
        .iter()
        .filter_map(|o| {
            o.result
                .as_ref()
                .err()
                .map(|e| format!("{} {}: {e}", o.table, o.phase))
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        report.rows_read(),
        2 * 21_551,
        "every row copied once and loaded once"
    );

    let ctx = etl_pipeline::verify::VerifyContext {
        source: Some(db.source.clone()),
        mysql: db.ctx.replica.clone(),
        warehouse: db.ctx.warehouse.clone(),
        mask_key: None,
    };
    let all: Vec<TableConfig> = config.tables().cloned().collect();
    let checks = etl_pipeline::verify::verify(&ctx, &all, true)
        .await
        .unwrap();
    let unclean: Vec<_> = checks.iter().filter(|c| !c.is_clean()).collect();
    assert!(unclean.is_empty(), "{unclean:#?}");
    for name in &names {
        let source = my::describe_table(&mut conn, &db.source.database, name)
            .await
            .unwrap();
        let key: Vec<&str> = if source.primary_key.is_empty() {
            source.columns.iter().map(|c| c.name.as_str()).collect()
        } else {
            source.primary_key.iter().map(String::as_str).collect()
        };
        db.assert_replica_same(name, &key).await;
        db.assert_same(name, &key).await;
    }

    // A second run over unchanged data writes nothing.
    let again = db.run_two_hop(&config, None).await;
    assert!(again.succeeded());
    let changed: u64 = again
        .outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().ok())
        .filter(|r| {
            matches!(
                r.decision.strategy,
                etl_pipeline::config::Strategy::Incremental { .. }
            )
        })
        .map(|r| r.rows_inserted + r.rows_updated)
        .sum();
    assert_eq!(changed, 0);
}
