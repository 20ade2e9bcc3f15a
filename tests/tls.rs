//! TLS to every database: a PostgreSQL and a MariaDB of the test's own
//! that take only TLS connections, with certificates from a CA the test
//! makes.

mod common;

use std::path::Path;

use common::{
    PrivateMariaDb, PrivatePostgres, TestCa, TestDb, binary_with, exec_on, scratch, text,
};
use etl_pipeline::ErrorKind;
use etl_pipeline::config::{MySqlSettings, PgSettings, PgSslMode, Secret, SslMode};
use etl_pipeline::mysql as my;
use etl_pipeline::postgres as pg;

/// What the tests' servers and clients show: a server certificate naming
/// `localhost` and `127.0.0.1` from the clinic's CA, a client certificate
/// for `certuser` from it, and another CA that signed nothing of either.
struct Certificates {
    ca: TestCa,
    other_ca: TestCa,
    server: (std::path::PathBuf, std::path::PathBuf),
    client: (std::path::PathBuf, std::path::PathBuf),
    dir: std::path::PathBuf,
}

fn certificates(name: &str) -> Certificates {
    let dir = scratch(name);
    let ca = TestCa::new(&dir, "clinic_ca");
    Certificates {
        other_ca: TestCa::new(&dir, "other_ca"),
        server: ca.issue("server", "localhost", "DNS:localhost,IP:127.0.0.1"),
        client: ca.issue("certuser", "certuser", ""),
        ca,
        dir,
    }
}

/// A server of the test's own and the certificates it was started with.
struct Setup<S> {
    server: S,
    certs: Certificates,
}

/// A PostgreSQL that also listens on `127.0.0.2`, which its certificate
/// does not name. `certuser` must show a client certificate, `etl` a
/// password; plain connections are refused.
async fn hostssl_only(name: &str) -> Setup<PrivatePostgres> {
    let certs = certificates(name);
    let server = PrivatePostgres::start(
        name,
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'clinic_ca.crt'",
        "local all all trust\n\
         hostssl all certuser 127.0.0.0/8 cert\n\
         hostssl all etl 127.0.0.0/8 scram-sha-256\n\
         hostssl all all 127.0.0.0/8 trust\n",
        &[&certs.server.0, &certs.server.1, &certs.ca.cert()],
    )
    .await;
    server.psql("CREATE USER certuser; CREATE USER etl PASSWORD 'Tls-warehouse-pw-7'");
    Setup { server, certs }
}

fn settings(
    setup: &Setup<PrivatePostgres>,
    host: &str,
    mode: PgSslMode,
    root: Option<&Path>,
) -> PgSettings {
    PgSettings {
        host: host.into(),
        port: setup.server.port,
        database: "postgres".into(),
        schema: "raw".into(),
        user: "postgres".into(),
        password: Secret::default(),
        ssl_mode: mode,
        ssl_root_cert: root.map(Path::to_path_buf),
        ssl_client: None,
    }
}

/// Connects and says whether the session is encrypted.
async fn encrypted(settings: &PgSettings) -> etl_pipeline::Result<bool> {
    let client = pg::connect(settings).await?;
    Ok(client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_does_what_libpq_does_and_a_refusal_says_why() {
    let setup = hostssl_only("tls_modes").await;
    let root = setup.certs.ca.cert();
    let other = setup.certs.other_ca.cert();
    use PgSslMode::*;
    // What passes, encrypted.
    for (host, mode, root) in [
        ("localhost", VerifyFull, Some(&root)),
        ("127.0.0.1", VerifyFull, Some(&root)),
        ("127.0.0.2", VerifyCa, Some(&root)),
        ("localhost", Require, None),
        ("localhost", Prefer, None),
    ] {
        let s = settings(&setup, host, mode, root.map(|p| p.as_path()));
        assert!(
            encrypted(&s)
                .await
                .unwrap_or_else(|e| panic!("{host} {mode:?}: {e}")),
            "{host} {mode:?} is encrypted"
        );
    }
    // What is refused, and why.
    for (host, mode, root, why) in [
        (
            "localhost",
            VerifyFull,
            Some(&other),
            "not signed by a CA in POSTGRES_ANALYTICS_SSL_ROOT_CERT",
        ),
        (
            "localhost",
            VerifyCa,
            Some(&other),
            "not signed by a CA in POSTGRES_ANALYTICS_SSL_ROOT_CERT",
        ),
        // `require` with a root certificate checks the CA, as libpq does.
        (
            "localhost",
            Require,
            Some(&other),
            "not signed by a CA in POSTGRES_ANALYTICS_SSL_ROOT_CERT",
        ),
        (
            "127.0.0.2",
            VerifyFull,
            Some(&root),
            "does not name `127.0.0.2` (it names localhost, 127.0.0.1)",
        ),
        ("localhost", VerifyFull, None, "the Mozilla roots"),
        ("localhost", Disable, None, "accepts only TLS connections"),
    ] {
        let s = settings(&setup, host, mode, root.map(|p| p.as_path()));
        let err = encrypted(&s).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Access, "{host} {mode:?}: {err}");
        assert!(err.to_string().contains(why), "{host} {mode:?}: {err}");
    }
    // A client certificate, for a user the server knows by it.
    let mut s = settings(&setup, "localhost", VerifyFull, Some(&root));
    s.user = "certuser".into();
    assert!(encrypted(&s).await.is_err(), "no certificate, no entry");
    s.ssl_client = Some(setup.certs.client.clone());
    assert!(encrypted(&s).await.unwrap());
    let stray = setup.certs.dir.join("nothing.pem");
    std::fs::write(&stray, "no certificate here\n").unwrap();
    let mut s = settings(&setup, "localhost", VerifyFull, Some(&stray));
    let err = encrypted(&s).await.unwrap_err();
    assert!(err.to_string().contains("holds no certificate"), "{err}");
    s.ssl_root_cert = Some(setup.certs.dir.join("missing.pem"));
    let err = encrypted(&s).await.unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    // The server's certificate runs out: the error says so, in every mode
    // that checks it.
    let (expired, key) =
        setup
            .certs
            .ca
            .issue_expired("expired", "localhost", "DNS:localhost,IP:127.0.0.1");
    setup.server.replace_and_reload(&key, "server.key");
    setup.server.replace_and_reload(&expired, "server.crt");
    for mode in [VerifyFull, VerifyCa] {
        let err = encrypted(&settings(&setup, "localhost", mode, Some(&root)))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("the server's certificate has expired"),
            "{mode:?}: {err}"
        );
    }
    assert!(
        encrypted(&settings(&setup, "localhost", Require, None))
            .await
            .unwrap(),
        "require checks no certificate"
    );
}

/// The whole tool against that server, configured only through the
/// environment: verify-full by the name `localhost`, the CA file, the
/// password and the mask key from files; `tables.yml` excludes a column
/// and hashes the last names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reaches_a_tls_only_warehouse_by_its_environment() {
    let setup = hostssl_only("tls_cli").await;
    setup.server.psql("CREATE DATABASE warehouse OWNER etl");
    let db = TestDb::new("tls_cli").await;
    db.source_sql(&[
        "CREATE TABLE `patient` (`PatNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `LName` varchar(100) NOT NULL, \
         `SSN` varchar(100) NOT NULL, \
         `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`))",
        "INSERT INTO `patient` (`LName`, `SSN`) SELECT CONCAT('Lee', seq), LPAD(seq, 9, '5') FROM seq_1_to_40",
    ])
    .await;
    let mask_key = setup.certs.dir.join("mask.key");
    std::fs::write(&mask_key, "clinic-mask-key-7f3a9c2e5d\n").unwrap();
    let password = setup.certs.dir.join("warehouse_password");
    std::fs::write(&password, "Tls-warehouse-pw-7\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    for file in [&password, &mask_key] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let base = std::fs::read_to_string(db.env_file(&setup.certs.dir)).unwrap();
    let mut env_text: String = base
        .lines()
        .filter(|l| !l.starts_with("TEST_POSTGRES_ANALYTICS_"))
        .map(|l| format!("{l}\n"))
        .collect();
    env_text.push_str(&format!(
        "TEST_POSTGRES_ANALYTICS_HOST=localhost\nTEST_POSTGRES_ANALYTICS_PORT={}\n\
         TEST_POSTGRES_ANALYTICS_DB=warehouse\nTEST_POSTGRES_ANALYTICS_USER=etl\n\
         TEST_POSTGRES_ANALYTICS_PASSWORD_FILE={}\nTEST_POSTGRES_ANALYTICS_SSL_MODE=verify-full\n\
         TEST_POSTGRES_ANALYTICS_SSL_ROOT_CERT={}\nETL_MASK_KEY_FILE={}\n",
        setup.server.port,
        password.display(),
        setup.certs.ca.cert().display(),
        mask_key.display()
    ));
    let env = setup.certs.dir.join("tls.env");
    std::fs::write(&env, &env_text).unwrap();
    let tables = setup.certs.dir.join("tables.yml");
    std::fs::write(
        &tables,
        "tables:\n  patient:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n    exclude_columns: [SSN]\n    mask_columns: {LName: hash}\n",
    )
    .unwrap();
    for args in [&["init"][..], &["run", "--all"], &["status"]] {
        let out = binary_with(&env, &tables).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    // The rows arrived (over TLS: the server takes nothing else from the
    // network) without the SSN, with hashed names.
    let rows = setup.server.query(
        "warehouse",
        "select (select count(*) from raw.patient where \"LName\" ~ '^[0-9a-f]{64}$') || '|' || \
         (select count(*) from information_schema.columns where table_name = 'patient' \
          and column_name = 'SSN')",
    );
    assert_eq!(rows, "40|0");
    // The wrong CA stops the run with the reason.
    let wrong = env_text.replace(
        &setup.certs.ca.cert().display().to_string(),
        &setup.certs.other_ca.cert().display().to_string(),
    );
    std::fs::write(&env, wrong).unwrap();
    let out = binary_with(&env, &tables)
        .args(["run", "--all"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not signed by a CA in POSTGRES_ANALYTICS_SSL_ROOT_CERT"),
        "{}",
        text(&out)
    );
    // The refusal names the file and the check, never the secrets.
    for secret in ["Tls-warehouse-pw-7", "clinic-mask-key-7f3a9c2e5d"] {
        assert!(!text(&out).contains(secret), "{}", text(&out));
    }
}

/// This machine's address on its network (not loopback), as a clinic's
/// server would be reached from elsewhere. No packet is sent: connecting a
/// UDP socket only picks the route.
fn network_address() -> String {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .connect("203.0.113.1:9")
        .expect("this test needs a network route (a default route) on this machine");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "{ip} is loopback");
    ip.to_string()
}

/// A MariaDB with TLS, listening on every address. `clinic` has a
/// password, `certuser` must show a client certificate.
async fn mariadb_with_tls(name: &str) -> Setup<PrivateMariaDb> {
    let certs = certificates(name);
    let server = PrivateMariaDb::start_with(
        name,
        &[
            "--bind-address=0.0.0.0".into(),
            format!("--ssl-ca={}", certs.ca.cert().display()),
            format!("--ssl-cert={}", certs.server.0.display()),
            format!("--ssl-key={}", certs.server.1.display()),
        ],
    )
    .await;
    exec_on(
        &server.admin,
        &[
            "CREATE USER clinic@'%' IDENTIFIED BY 'Clinic-source-pw-3'",
            "GRANT ALL ON *.* TO clinic@'%'",
            "CREATE USER certuser@'%' REQUIRE X509",
            "GRANT ALL ON *.* TO certuser@'%'",
        ],
    )
    .await;
    Setup { server, certs }
}

fn mysql_settings(
    setup: &Setup<PrivateMariaDb>,
    host: &str,
    mode: SslMode,
    ca: Option<&Path>,
) -> MySqlSettings {
    MySqlSettings {
        host: host.into(),
        database: String::new(),
        user: "clinic".into(),
        password: Secret::new("Clinic-source-pw-3"),
        ssl_mode: mode,
        ssl_ca: ca.map(Path::to_path_buf),
        ..setup.server.admin.clone()
    }
}

async fn mysql_encrypted(settings: &MySqlSettings) -> etl_pipeline::Result<bool> {
    let mut conn = my::connect(settings).await?;
    my::encrypted(&mut conn).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mysql_ssl_mode_against_a_server_that_requires_tls() {
    let setup = mariadb_with_tls("my_tls_modes").await;
    exec_on(
        &setup.server.admin,
        &["SET GLOBAL require_secure_transport = ON"],
    )
    .await;
    let root = setup.certs.ca.cert();
    let other = setup.certs.other_ca.cert();
    let network = network_address();
    let network = network.as_str();
    use SslMode::*;
    for (host, mode, ca) in [
        ("localhost", VerifyIdentity, Some(&root)),
        ("127.0.0.1", VerifyIdentity, Some(&root)),
        (network, VerifyCa, Some(&root)),
        (network, Required, None),
        (network, Preferred, None),
    ] {
        let s = mysql_settings(&setup, host, mode, ca.map(|p| p.as_path()));
        assert!(
            mysql_encrypted(&s)
                .await
                .unwrap_or_else(|e| panic!("{host} {mode:?}: {e}")),
            "{host} {mode:?} is encrypted"
        );
    }
    let names = format!("does not name `{network}` (it names localhost, 127.0.0.1)");
    for (host, mode, ca, why) in [
        (
            "localhost",
            VerifyIdentity,
            Some(&other),
            "not signed by a CA in its SSL_CA setting",
        ),
        (
            "localhost",
            VerifyCa,
            Some(&other),
            "not signed by a CA in its SSL_CA setting",
        ),
        (network, VerifyIdentity, Some(&root), names.as_str()),
        ("localhost", Disabled, None, "require_secure_transport"),
    ] {
        let s = mysql_settings(&setup, host, mode, ca.map(|p| p.as_path()));
        let err = mysql_encrypted(&s).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Access, "{host} {mode:?}: {err}");
        assert!(err.to_string().contains(why), "{host} {mode:?}: {err}");
        assert!(
            !err.to_string().contains("Clinic-source-pw-3"),
            "no password in {err}"
        );
    }
    let mut s = mysql_settings(&setup, "localhost", VerifyIdentity, Some(&root));
    s.user = "certuser".into();
    s.password = Secret::new("");
    assert!(
        mysql_encrypted(&s).await.is_err(),
        "no certificate, no entry"
    );
    s.ssl_client = Some(setup.certs.client.clone());
    assert!(mysql_encrypted(&s).await.unwrap());
    // The server's certificate runs out (the same files, read again).
    let (expired, key) =
        setup
            .certs
            .ca
            .issue_expired("expired", "localhost", "DNS:localhost,IP:127.0.0.1");
    std::fs::copy(&expired, &setup.certs.server.0).unwrap();
    std::fs::copy(&key, &setup.certs.server.1).unwrap();
    let admin = MySqlSettings {
        ssl_mode: Required,
        ..setup.server.admin.clone()
    };
    exec_on(&admin, &["FLUSH SSL"]).await;
    let err = mysql_encrypted(&mysql_settings(
        &setup,
        "localhost",
        VerifyIdentity,
        Some(&root),
    ))
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("the server's certificate has expired"),
        "{err}"
    );
}

/// The whole tool, reading a clinic's server by its network address: in
/// clear, every run's summary says so; by default (`preferred`) the
/// session is encrypted and nothing is flagged; on loopback nothing is
/// flagged either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_read_over_the_network_in_clear_is_flagged_in_every_summary() {
    let setup = mariadb_with_tls("my_tls_flag").await;
    let clinic = setup.server.database("clinic").await;
    exec_on(
        &clinic,
        &[
            "CREATE TABLE `patient` (`PatNum` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, `LName` varchar(100) NOT NULL, \
             `DateTStamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, KEY (`DateTStamp`))",
            "INSERT INTO `patient` (`LName`) SELECT CONCAT('Lee', seq) FROM seq_1_to_25",
        ],
    )
    .await;
    let db = TestDb::new("my_tls_flag").await;
    let base: String = std::fs::read_to_string(db.env_file(&setup.certs.dir))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("TEST_OPENDENTAL_SOURCE_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let tables = setup.certs.dir.join("tables.yml");
    std::fs::write(
        &tables,
        "tables:\n  patient:\n    extraction_strategy: incremental\n    incremental_columns: [DateTStamp]\n    \
         primary_incremental_column: DateTStamp\n",
    )
    .unwrap();
    let env = setup.certs.dir.join("source.env");
    let summary = setup.certs.dir.join("summary.json");
    let run = |host: &str, mode: Option<&str>| {
        let mut text_env = format!(
            "{base}TEST_OPENDENTAL_SOURCE_HOST={host}\nTEST_OPENDENTAL_SOURCE_PORT={}\n\
             TEST_OPENDENTAL_SOURCE_DB=clinic\nTEST_OPENDENTAL_SOURCE_USER=clinic\n\
             TEST_OPENDENTAL_SOURCE_PASSWORD=Clinic-source-pw-3\n",
            setup.server.admin.port
        );
        if let Some(mode) = mode {
            text_env.push_str(&format!("TEST_OPENDENTAL_SOURCE_SSL_MODE={mode}\n"));
        }
        std::fs::write(&env, text_env).unwrap();
        let out = binary_with(&env, &tables)
            .args(["run", "--all", "--summary-json", summary.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{host} {mode:?}: {}", text(&out));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        (text(&out), json["warnings"].as_array().unwrap().len())
    };
    let init = binary_with(&db.env_file(&setup.certs.dir.join("init")), &tables)
        .arg("init")
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));
    let network = network_address();
    let (out, warnings) = run(&network, Some("disabled"));
    let flag = format!(
        "WARNING: the source MySQL clinic@{network}:{}/clinic is reached over the network without TLS",
        setup.server.admin.port
    );
    assert!(out.contains(&flag), "{out}");
    assert_eq!(warnings, 1, "{out}");
    assert_eq!(db.pg_count("patient").await, 25);
    for (host, mode) in [(network.as_str(), None), ("127.0.0.1", Some("disabled"))] {
        let (out, warnings) = run(host, mode);
        assert!(!out.contains("WARNING"), "{host} {mode:?}: {out}");
        assert_eq!(warnings, 0, "{host} {mode:?}: {out}");
    }
}
