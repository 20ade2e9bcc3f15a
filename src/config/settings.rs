//! Connection settings from the environment and `.env_<environment>` files.
//!
//! `ETL_ENVIRONMENT` (`production` | `test`) picks the variable names: test
//! reads the production names prefixed `TEST_`. Values come from the process
//! environment first, then from the env file (`.env_production`, `.env_test`,
//! or `--env-file`). Each database's settings are read only when a command
//! needs that database, so a missing variable is named exactly when it matters.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Which set of variables to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Production,
    Test,
}

impl Environment {
    fn parse(value: &str) -> Result<Environment> {
        match value.trim() {
            "production" => Ok(Environment::Production),
            "test" => Ok(Environment::Test),
            other => Err(Error::config(format!(
                "ETL_ENVIRONMENT is `{other}`; set it to `production` or `test`"
            ))),
        }
    }

    /// `production` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Test => "test",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Environment::Production => "",
            Environment::Test => "TEST_",
        }
    }

    fn default_env_file(self) -> PathBuf {
        PathBuf::from(format!(".env_{}", self.name()))
    }
}

/// A password: never printed, not even by `Debug`.
#[derive(Clone, Default)]
pub struct Secret(String);

/// Every secret this process has read, so that text which might hold one
/// (a panic message) can be scrubbed before it is printed.
static KNOWN_SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        let value = value.into();
        if !value.is_empty() {
            let mut known = KNOWN_SECRETS.lock().unwrap_or_else(|e| e.into_inner());
            if !known.contains(&value) {
                known.push(value.clone());
            }
        }
        Secret(value)
    }

    /// The secret itself, for handing to a driver.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// `text` with every secret this process has read replaced by `[redacted]`.
pub fn redact(text: &str) -> String {
    let known = KNOWN_SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for secret in known.iter() {
        out = out.replace(secret.as_str(), "[redacted]");
    }
    out
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// TLS to a MySQL server, as MySQL's own `--ssl-mode` names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    #[default]
    Disabled,
    /// TLS when the server offers it, else plain.
    Preferred,
    /// TLS or fail; the certificate is not checked.
    Required,
    /// TLS with the server certificate checked against the CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyIdentity,
}

impl SslMode {
    fn parse(variable: &str, text: &str, default: SslMode) -> Result<SslMode> {
        Ok(match text.trim().to_ascii_lowercase().as_str() {
            "" => default,
            "disabled" => SslMode::Disabled,
            "preferred" => SslMode::Preferred,
            "required" => SslMode::Required,
            "verify_ca" => SslMode::VerifyCa,
            "verify_identity" => SslMode::VerifyIdentity,
            other => {
                return Err(Error::config(format!(
                    "{variable} is `{other}`; use disabled, preferred, required, verify_ca or verify_identity"
                )));
            }
        })
    }

    /// MySQL's name.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disabled => "disabled",
            SslMode::Preferred => "preferred",
            SslMode::Required => "required",
            SslMode::VerifyCa => "verify_ca",
            SslMode::VerifyIdentity => "verify_identity",
        }
    }
}

/// How to reach one MySQL/MariaDB database.
#[derive(Debug, Clone)]
pub struct MySqlSettings {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Secret,
    pub ssl_mode: SslMode,
    /// CA certificate file (PEM) for `verify_ca` / `verify_identity`.
    pub ssl_ca: Option<PathBuf>,
    /// A client certificate (PEM) and its key, for servers that ask for one.
    pub ssl_client: Option<(PathBuf, PathBuf)>,
}

/// Where the load phase reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Source → replica (extract), replica → warehouse (load).
    Replica,
    /// No replica: the load reads the source directly.
    Direct,
}

/// Tables read from the source at once unless `OPENDENTAL_SOURCE_MAX_CONNECTIONS`
/// says otherwise: a clinic's server also serves the front desk, so two
/// connections at most.
pub const DEFAULT_SOURCE_CONNECTIONS: usize = 2;

/// TLS to the warehouse, with libpq's `sslmode` names and meanings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PgSslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, else plain; the certificate is not
    /// checked (unless a root certificate is given, as with `require`).
    #[default]
    Prefer,
    /// TLS or fail; the certificate is checked only when a root
    /// certificate is given (then as `verify-ca`), as libpq does.
    Require,
    /// TLS with the server's certificate checked against the root
    /// certificate.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

impl PgSslMode {
    fn parse(variable: &str, text: &str) -> Result<PgSslMode> {
        Ok(match text.trim().to_ascii_lowercase().as_str() {
            "disable" => PgSslMode::Disable,
            "" | "prefer" => PgSslMode::Prefer,
            "require" => PgSslMode::Require,
            "verify-ca" => PgSslMode::VerifyCa,
            "verify-full" => PgSslMode::VerifyFull,
            other => {
                return Err(Error::config(format!(
                    "{variable} is `{other}`; use disable, prefer, require, verify-ca or verify-full (libpq's sslmode)"
                )));
            }
        })
    }

    /// The libpq name.
    pub fn name(self) -> &'static str {
        match self {
            PgSslMode::Disable => "disable",
            PgSslMode::Prefer => "prefer",
            PgSslMode::Require => "require",
            PgSslMode::VerifyCa => "verify-ca",
            PgSslMode::VerifyFull => "verify-full",
        }
    }
}

/// How to reach the PostgreSQL warehouse.
#[derive(Debug, Clone)]
pub struct PgSettings {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub schema: String,
    pub user: String,
    pub password: Secret,
    pub ssl_mode: PgSslMode,
    /// CA certificates (PEM) the server's certificate must chain to; the
    /// Mozilla roots when not given.
    pub ssl_root_cert: Option<PathBuf>,
    /// A client certificate (PEM) and its key, for servers that ask for one.
    pub ssl_client: Option<(PathBuf, PathBuf)>,
}

/// The default warehouse schema, as the old system used.
pub const DEFAULT_SCHEMA: &str = "raw";

/// The per-environment variables this tool reads (`TEST_` is put before
/// them in the test environment).
const KNOWN_SETTINGS: &[&str] = &[
    "OPENDENTAL_SOURCE_HOST",
    "OPENDENTAL_SOURCE_PORT",
    "OPENDENTAL_SOURCE_DB",
    "OPENDENTAL_SOURCE_USER",
    "OPENDENTAL_SOURCE_PASSWORD",
    "OPENDENTAL_SOURCE_PASSWORD_FILE",
    "OPENDENTAL_SOURCE_SSL_MODE",
    "OPENDENTAL_SOURCE_SSL_CA",
    "OPENDENTAL_SOURCE_SSL_CERT",
    "OPENDENTAL_SOURCE_SSL_KEY",
    "OPENDENTAL_SOURCE_MAX_ROWS_PER_SECOND",
    "OPENDENTAL_SOURCE_MAX_CONNECTIONS",
    "MYSQL_REPLICATION_HOST",
    "MYSQL_REPLICATION_PORT",
    "MYSQL_REPLICATION_DB",
    "MYSQL_REPLICATION_USER",
    "MYSQL_REPLICATION_PASSWORD",
    "MYSQL_REPLICATION_PASSWORD_FILE",
    "MYSQL_REPLICATION_SSL_MODE",
    "MYSQL_REPLICATION_SSL_CA",
    "MYSQL_REPLICATION_SSL_CERT",
    "MYSQL_REPLICATION_SSL_KEY",
    "MYSQL_REPLICATION_LOCK_WAIT_SECONDS",
    "POSTGRES_ANALYTICS_HOST",
    "POSTGRES_ANALYTICS_PORT",
    "POSTGRES_ANALYTICS_DB",
    "POSTGRES_ANALYTICS_SCHEMA",
    "POSTGRES_ANALYTICS_USER",
    "POSTGRES_ANALYTICS_PASSWORD",
    "POSTGRES_ANALYTICS_PASSWORD_FILE",
    "POSTGRES_ANALYTICS_SSL_MODE",
    "POSTGRES_ANALYTICS_SSL_ROOT_CERT",
    "POSTGRES_ANALYTICS_SSL_CERT",
    "POSTGRES_ANALYTICS_SSL_KEY",
];

/// The variables both environments share.
const KNOWN_SHARED: &[&str] = &[
    "ETL_ALERT_COMMAND",
    "ETL_ALERT_WEBHOOK_URL",
    "ETL_ALERT_WEBHOOK_TIMEOUT_SECONDS",
    "ETL_ALERT_WEBHOOK_RETRIES",
    "ETL_MASK_KEY",
    "ETL_MASK_KEY_FILE",
    "ETL_SERVE_TOKEN",
    "ETL_SERVE_TOKEN_FILE",
];

/// The shortest `serve` token taken: 16 bytes, 128 bits when random, so
/// it cannot be guessed over the network.
pub const MIN_SERVE_TOKEN_BYTES: usize = 16;

/// Prefixes under which an unknown variable is surely meant for this tool.
const CHECKED_PREFIXES: &[&str] = &[
    "OPENDENTAL_SOURCE_",
    "MYSQL_REPLICATION_",
    "POSTGRES_ANALYTICS_",
    "ETL_ALERT_",
    "ETL_MASK_",
    "ETL_SERVE_",
];

/// Levenshtein distance, for naming the variable a misspelled one meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

/// The resolved environment: process variables over env-file variables.
#[derive(Clone)]
pub struct Env {
    environment: Environment,
    vars: HashMap<String, String>,
    env_file: PathBuf,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env")
            .field("environment", &self.environment)
            .field("env_file", &self.env_file)
            .finish_non_exhaustive()
    }
}

impl Env {
    /// Reads `ETL_ENVIRONMENT` and the matching env file from the process.
    pub fn load(env_file: Option<&Path>) -> Result<Env> {
        Env::from_sources(std::env::vars().collect(), env_file)
    }

    /// Builds the environment from explicit process variables (for tests and
    /// embedding) and an optional env file.
    pub fn from_sources(process: HashMap<String, String>, env_file: Option<&Path>) -> Result<Env> {
        let explicit_file = env_file.map(|p| (p.to_path_buf(), read_env_file(p)));
        let file_vars = match &explicit_file {
            Some((_, Ok(vars))) => vars.clone(),
            Some((path, Err(e))) => {
                return Err(Error::config(format!(
                    "cannot read env file {}: {e}",
                    path.display()
                )));
            }
            None => HashMap::new(),
        };
        let environment_text = process
            .get("ETL_ENVIRONMENT")
            .or_else(|| file_vars.get("ETL_ENVIRONMENT"))
            .ok_or_else(|| {
                Error::config(
                    "ETL_ENVIRONMENT is not set; set it to `production` or `test` \
                     (for example `export ETL_ENVIRONMENT=test`)",
                )
            })?;
        let environment = Environment::parse(environment_text)?;
        let (env_file, file_vars) = match explicit_file {
            Some((path, _)) => (path, file_vars),
            None => {
                let path = environment.default_env_file();
                let vars = if path.exists() {
                    read_env_file(&path).map_err(|e| {
                        Error::config(format!("cannot read env file {}: {e}", path.display()))
                    })?
                } else {
                    HashMap::new()
                };
                (path, vars)
            }
        };
        let mut vars = file_vars;
        vars.extend(process);
        Ok(Env {
            environment,
            vars,
            env_file,
        })
    }

    /// The environment of one clinic of a group: its own env file's
    /// settings (the source's and the replica's) over this one's, and the
    /// shared warehouse with the clinic's schema. An env file that sets
    /// warehouse settings is refused: the warehouse is the group's.
    pub fn for_clinic(&self, clinic: &str, env_file: &Path, schema: &str) -> Result<Env> {
        let own = read_env_file(env_file).map_err(|e| {
            Error::config(format!(
                "clinic {clinic}: cannot read env file {}: {e}",
                env_file.display()
            ))
        })?;
        let shared = self.name("POSTGRES_ANALYTICS_");
        if let Some(key) = own.keys().filter(|k| k.starts_with(&shared)).min() {
            return Err(Error::config(format!(
                "clinic {clinic}: {} sets {key}, but the warehouse is the group's: set it in the usual \
                 environment, and the clinic's schema in the group file",
                env_file.display()
            )));
        }
        let mut vars = self.vars.clone();
        vars.extend(own);
        vars.insert(self.name("POSTGRES_ANALYTICS_SCHEMA"), schema.to_string());
        Ok(Env {
            environment: self.environment,
            vars,
            env_file: env_file.to_path_buf(),
        })
    }

    /// Which environment was chosen.
    pub fn environment(&self) -> Environment {
        self.environment
    }

    fn name(&self, base: &str) -> String {
        format!("{}{base}", self.environment.prefix())
    }

    fn optional(&self, base: &str) -> Option<String> {
        self.vars.get(&self.name(base)).cloned()
    }

    fn required(&self, base: &str) -> Result<String> {
        self.optional(base)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Error::config(format!(
                    "{} is not set (ETL_ENVIRONMENT={}); set it in the environment or in {}",
                    self.name(base),
                    self.environment.name(),
                    self.env_file.display()
                ))
            })
    }

    /// `{prefix}_PASSWORD`, or the contents of the file
    /// `{prefix}_PASSWORD_FILE` names (the Docker and Kubernetes secrets
    /// convention); empty when neither is set.
    fn password(&self, prefix: &str) -> Result<Secret> {
        let var = format!("{prefix}_PASSWORD");
        let file_var = format!("{var}_FILE");
        let given = self.optional(&var).filter(|v| !v.is_empty());
        let file = self.optional(&file_var).filter(|v| !v.trim().is_empty());
        match (given, file) {
            (Some(_), Some(_)) => Err(Error::config(format!(
                "{} and {} are both set; keep one",
                self.name(&var),
                self.name(&file_var)
            ))),
            (Some(password), None) => Ok(Secret::new(password)),
            (None, Some(path)) => {
                read_secret_file(&self.name(&file_var), Path::new(path.trim())).map(Secret::new)
            }
            (None, None) => Ok(Secret::default()),
        }
    }

    /// `{prefix}_SSL_CERT` and `{prefix}_SSL_KEY`: a client certificate and
    /// its key, both or neither.
    fn client_identity(&self, prefix: &str) -> Result<Option<(PathBuf, PathBuf)>> {
        let (cert, key) = (format!("{prefix}_SSL_CERT"), format!("{prefix}_SSL_KEY"));
        match (self.path(&cert), self.path(&key)) {
            (Some(c), Some(k)) => Ok(Some((c, k))),
            (None, None) => Ok(None),
            _ => Err(Error::config(format!(
                "{} and {} go together: set both (the client certificate and its key) or neither",
                self.name(&cert),
                self.name(&key)
            ))),
        }
    }

    /// A file path setting, when set and not blank.
    fn path(&self, base: &str) -> Option<PathBuf> {
        self.optional(base)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    fn port(&self, base: &str, default: u16) -> Result<u16> {
        match self.optional(base).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(text) => text.trim().parse().map_err(|_| {
                Error::config(format!(
                    "{} is `{text}`, not a port number (1-65535)",
                    self.name(base)
                ))
            }),
        }
    }

    /// MySQL settings under `prefix`; without `{prefix}_SSL_MODE`, TLS is
    /// `default`.
    fn mysql(&self, prefix: &str, default: SslMode) -> Result<MySqlSettings> {
        let ssl_var = format!("{prefix}_SSL_MODE");
        let ssl_mode = SslMode::parse(
            &self.name(&ssl_var),
            &self.optional(&ssl_var).unwrap_or_default(),
            default,
        )?;
        let ssl_ca = self.path(&format!("{prefix}_SSL_CA"));
        if matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyIdentity) && ssl_ca.is_none() {
            return Err(Error::config(format!(
                "{} needs {} (the CA certificate file, PEM)",
                self.name(&ssl_var),
                self.name(&format!("{prefix}_SSL_CA"))
            )));
        }
        Ok(MySqlSettings {
            host: self.required(&format!("{prefix}_HOST"))?,
            port: self.port(&format!("{prefix}_PORT"), 3306)?,
            database: self.required(&format!("{prefix}_DB"))?,
            user: self.required(&format!("{prefix}_USER"))?,
            password: self.password(prefix)?,
            ssl_mode,
            ssl_ca,
            ssl_client: self.client_identity(prefix)?,
        })
    }

    /// Whether any source variable (`OPENDENTAL_SOURCE_*`) is set: a source
    /// set up halfway is an error to report, not a source left out.
    pub fn source_configured(&self) -> bool {
        let prefix = self.name("OPENDENTAL_SOURCE_");
        self.vars.keys().any(|k| k.starts_with(&prefix))
    }

    /// Variables with one of this tool's prefixes that it does not read
    /// (a misspelling does nothing otherwise), each with the nearest name it
    /// does read.
    pub fn unknown_variables(&self) -> Vec<(String, String)> {
        let known = self.known_variables();
        let mut unknown: Vec<(String, String)> = self
            .vars
            .keys()
            .filter(|k| {
                let name = k.strip_prefix("TEST_").unwrap_or(k);
                CHECKED_PREFIXES.iter().any(|p| name.starts_with(p)) && !known.contains(*k)
            })
            .map(|k| {
                let nearest = known
                    .iter()
                    .min_by_key(|n| edit_distance(k, n))
                    .cloned()
                    .unwrap_or_default();
                (k.clone(), nearest)
            })
            .collect();
        unknown.sort();
        unknown
    }

    /// Every variable this tool reads, in either environment's names (a
    /// shell may hold both).
    fn known_variables(&self) -> Vec<String> {
        let mut known: Vec<String> = KNOWN_SETTINGS.iter().map(|b| (*b).to_string()).collect();
        known.extend(KNOWN_SETTINGS.iter().map(|b| format!("TEST_{b}")));
        known.extend(KNOWN_SHARED.iter().map(|s| (*s).to_string()));
        known
    }

    /// The clinic's OpenDental server (`OPENDENTAL_SOURCE_*`).
    pub fn source(&self) -> Result<MySqlSettings> {
        // Reached over a network: TLS whenever the server offers it.
        self.mysql("OPENDENTAL_SOURCE", SslMode::Preferred)
    }

    /// `ETL_MODE`: `replica` (default) or `direct`.
    pub fn mode(&self) -> Result<Mode> {
        match self
            .vars
            .get("ETL_MODE")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") | Some("replica") => Ok(Mode::Replica),
            Some("direct") => Ok(Mode::Direct),
            Some(other) => Err(Error::config(format!(
                "ETL_MODE is `{other}`; use `replica` or `direct`"
            ))),
        }
    }

    fn positive(&self, base: &str) -> Result<Option<u32>> {
        match self.optional(base).filter(|v| !v.trim().is_empty()) {
            None => Ok(None),
            Some(text) => match text.trim().parse::<u32>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(Error::config(format!(
                    "{} is `{text}`, not a positive whole number",
                    self.name(base)
                ))),
            },
        }
    }

    /// `OPENDENTAL_SOURCE_MAX_ROWS_PER_SECOND`: the extract's default rate limit.
    pub fn source_max_rows_per_second(&self) -> Result<Option<u32>> {
        self.positive("OPENDENTAL_SOURCE_MAX_ROWS_PER_SECOND")
    }

    /// `ETL_HISTORY_RETENTION_DAYS`: run history older than this is pruned.
    pub fn history_retention_days(&self) -> Result<Option<u32>> {
        self.whole_number("ETL_HISTORY_RETENTION_DAYS")
    }

    /// A setting shared by both environments (`ETL_…`), when set and not blank.
    pub fn var(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// A whole-number setting shared by both environments.
    pub fn whole_number(&self, name: &str) -> Result<Option<u32>> {
        self.var(name)
            .map(|text| {
                text.parse::<u32>()
                    .map_err(|_| Error::config(format!("{name} is `{text}`, not a whole number")))
            })
            .transpose()
    }

    /// `ETL_MASK_KEY`, or the contents of the file `ETL_MASK_KEY_FILE`
    /// names: the key of `mask_columns: hash`; `None` when neither is set.
    pub fn mask_key(&self) -> Result<Option<Secret>> {
        let Some(key) = self.shared_secret("ETL_MASK_KEY")? else {
            return Ok(None);
        };
        if key.len() < crate::mask::MIN_KEY_BYTES {
            return Err(Error::config(format!(
                "the mask key (ETL_MASK_KEY or ETL_MASK_KEY_FILE) has {} bytes; it needs at least {} \
                 (make one with `openssl rand -hex 32`)",
                key.len(),
                crate::mask::MIN_KEY_BYTES
            )));
        }
        Ok(Some(Secret::new(key)))
    }

    /// A secret both environments share: `name`, or the contents of the
    /// file `{name}_FILE` names; `None` when neither is set.
    fn shared_secret(&self, name: &str) -> Result<Option<String>> {
        let file = format!("{name}_FILE");
        match (self.var(name), self.var(&file)) {
            (Some(_), Some(_)) => Err(Error::config(format!(
                "{name} and {file} are both set; keep one"
            ))),
            (Some(value), None) => Ok(Some(value)),
            (None, Some(path)) => read_secret_file(&file, Path::new(&path)).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// `ETL_SERVE_TOKEN`, or the contents of the file `ETL_SERVE_TOKEN_FILE`
    /// names: the bearer token `serve` asks of every request; `None` when
    /// neither is set.
    pub fn serve_token(&self) -> Result<Option<Secret>> {
        let Some(token) = self.shared_secret("ETL_SERVE_TOKEN")? else {
            return Ok(None);
        };
        if token.len() < MIN_SERVE_TOKEN_BYTES {
            return Err(Error::config(format!(
                "the serve token (ETL_SERVE_TOKEN or ETL_SERVE_TOKEN_FILE) has {} bytes; it needs at least \
                 {MIN_SERVE_TOKEN_BYTES} (make one with `openssl rand -hex 32`)",
                token.len()
            )));
        }
        Ok(Some(Secret::new(token)))
    }

    /// `OPENDENTAL_SOURCE_MAX_CONNECTIONS`: tables read from the source at once.
    pub fn source_max_connections(&self) -> Result<usize> {
        Ok(self
            .positive("OPENDENTAL_SOURCE_MAX_CONNECTIONS")?
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(DEFAULT_SOURCE_CONNECTIONS))
    }

    /// `MYSQL_REPLICATION_LOCK_WAIT_SECONDS`: how long a replica write waits
    /// for a row lock held by another session (a report reading the replica
    /// `FOR UPDATE`, say) before the batch is rolled back and retried.
    pub fn replica_lock_wait(&self) -> Result<Option<u32>> {
        self.positive("MYSQL_REPLICATION_LOCK_WAIT_SECONDS")
    }

    /// The local replication database (`MYSQL_REPLICATION_*`).
    pub fn replica(&self) -> Result<MySqlSettings> {
        // On this machine, as a rule.
        self.mysql("MYSQL_REPLICATION", SslMode::Disabled)
    }

    /// The PostgreSQL warehouse (`POSTGRES_ANALYTICS_*`).
    pub fn warehouse(&self) -> Result<PgSettings> {
        let prefix = "POSTGRES_ANALYTICS";
        Ok(PgSettings {
            host: self.required(&format!("{prefix}_HOST"))?,
            port: self.port(&format!("{prefix}_PORT"), 5432)?,
            database: self.required(&format!("{prefix}_DB"))?,
            schema: self
                .optional(&format!("{prefix}_SCHEMA"))
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| DEFAULT_SCHEMA.to_string()),
            user: self.required(&format!("{prefix}_USER"))?,
            password: self.password(prefix)?,
            ssl_mode: PgSslMode::parse(
                &self.name(&format!("{prefix}_SSL_MODE")),
                &self
                    .optional(&format!("{prefix}_SSL_MODE"))
                    .unwrap_or_default(),
            )?,
            ssl_root_cert: self.path(&format!("{prefix}_SSL_ROOT_CERT")),
            ssl_client: self.client_identity(prefix)?,
        })
    }
}

/// Secret files already warned about, so a file read by several commands
/// of one process is named once.
static WARNED_FILES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Reads a secret from the file a `*_FILE` variable names, without its
/// trailing newline, and warns (once) when others than its owner may read
/// it. Errors name the variable and the file, never the contents.
pub fn read_secret_file(variable: &str, path: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!(
            "{variable} names {}, which cannot be read ({e}); check the path and its permissions",
            path.display()
        ))
    })?;
    let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode() & 0o777);
    if mode & 0o077 != 0 {
        let mut warned = WARNED_FILES.lock().unwrap_or_else(|e| e.into_inner());
        if !warned.iter().any(|p| p == path) {
            warned.push(path.to_path_buf());
            tracing::warn!(
                "{variable}: {} can be read by others than its owner (mode {mode:03o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

/// Parses `KEY=VALUE` lines: `#` comments, blank lines, an optional
/// `export ` prefix, and single or double quotes around the value.
fn read_env_file(path: &Path) -> std::result::Result<HashMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    parse_env_text(&text).map_err(|(line, why)| format!("line {line}: {why}"))
}

fn parse_env_text(text: &str) -> std::result::Result<HashMap<String, String>, (usize, String)> {
    let mut vars = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err((index + 1, "expected KEY=VALUE".to_string()));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((index + 1, format!("`{key}` is not a variable name")));
        }
        let value = value.trim();
        let value = match value.as_bytes() {
            [b'"', .., b'"'] | [b'\'', .., b'\''] if value.len() >= 2 => &value[1..value.len() - 1],
            _ => value.split(" #").next().unwrap_or("").trim_end(),
        };
        vars.insert(key.to_string(), value.to_string());
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelled_variable_is_nearest_to_the_one_meant() {
        assert_eq!(edit_distance("SSLMODE", "SSL_MODE"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let env = Env::from_sources(
            [
                ("ETL_ENVIRONMENT".to_string(), "test".to_string()),
                (
                    "TEST_OPENDENTAL_SOURCE_SSLMODE".to_string(),
                    "required".to_string(),
                ),
                ("OPENDENTAL_SOURCE_HOST".to_string(), "clinic".to_string()),
                ("ETL_TEST_MYSQL_HOST".to_string(), "x".to_string()),
            ]
            .into(),
            None,
        )
        .unwrap();
        assert_eq!(
            env.unknown_variables(),
            vec![(
                "TEST_OPENDENTAL_SOURCE_SSLMODE".to_string(),
                "TEST_OPENDENTAL_SOURCE_SSL_MODE".to_string()
            )]
        );
    }

    #[test]
    fn redact_scrubs_every_secret_read() {
        let _a = Secret::new("Kx7-first-secret");
        let _b = Secret::new("Kx7-second-secret");
        assert_eq!(
            redact("mysql://root:Kx7-first-secret@h, pass Kx7-second-secret"),
            "mysql://root:[redacted]@h, pass [redacted]"
        );
        assert_eq!(format!("{_a:?}"), "Secret(..)");
    }

    fn env(pairs: &[(&str, &str)]) -> Result<Env> {
        let vars = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_sources(vars, None)
    }

    #[test]
    fn a_password_comes_from_its_file_without_the_newline() {
        let dir = std::env::temp_dir().join(format!("etl_pw_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret-from-file\r\n").unwrap();
        let path = file.display().to_string();
        let base = [
            ("ETL_ENVIRONMENT", "production"),
            ("POSTGRES_ANALYTICS_HOST", "h"),
            ("POSTGRES_ANALYTICS_DB", "d"),
            ("POSTGRES_ANALYTICS_USER", "u"),
        ];
        let with = |extra: &[(&str, &str)]| {
            env(&[&base[..], extra].concat())
                .unwrap()
                .warehouse()
                .map(|w| w.password.expose().to_string())
        };
        assert_eq!(
            with(&[("POSTGRES_ANALYTICS_PASSWORD_FILE", &path)]).unwrap(),
            "s3cret-from-file"
        );
        assert_eq!(
            with(&[("POSTGRES_ANALYTICS_PASSWORD", "given")]).unwrap(),
            "given"
        );
        let both = with(&[
            ("POSTGRES_ANALYTICS_PASSWORD", "given"),
            ("POSTGRES_ANALYTICS_PASSWORD_FILE", &path),
        ])
        .unwrap_err();
        assert!(both.to_string().contains("both set"), "{both}");
        std::fs::remove_file(&file).unwrap();
        let gone = with(&[("POSTGRES_ANALYTICS_PASSWORD_FILE", &path)]).unwrap_err();
        assert!(
            gone.to_string()
                .contains(&format!("POSTGRES_ANALYTICS_PASSWORD_FILE names {path}")),
            "{gone}"
        );
    }

    #[test]
    fn a_missing_environment_is_a_clear_error() {
        let err = Env::from_sources(HashMap::new(), None).unwrap_err();
        assert!(
            err.to_string().contains("ETL_ENVIRONMENT is not set"),
            "{err}"
        );
        let err = env(&[("ETL_ENVIRONMENT", "staging")]).unwrap_err();
        assert!(err.to_string().contains("`staging`"), "{err}");
    }

    #[test]
    fn test_environment_reads_prefixed_names_and_names_what_is_missing() {
        let e = env(&[
            ("ETL_ENVIRONMENT", "test"),
            ("TEST_MYSQL_REPLICATION_HOST", "127.0.0.1"),
            ("TEST_MYSQL_REPLICATION_DB", "replica"),
            ("TEST_MYSQL_REPLICATION_USER", "root"),
            ("MYSQL_REPLICATION_PORT", "9999"),
        ])
        .unwrap();
        let replica = e.replica().unwrap();
        assert_eq!(replica.port, 3306, "unprefixed names are not read in test");
        assert_eq!(replica.password.expose(), "");
        let err = e.warehouse().unwrap_err();
        assert!(
            err.to_string()
                .contains("TEST_POSTGRES_ANALYTICS_HOST is not set"),
            "{err}"
        );
    }

    #[test]
    fn the_process_environment_wins_over_the_env_file() {
        let dir = std::env::temp_dir().join(format!("etl-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("custom.env");
        std::fs::write(
            &file,
            "# comment\nETL_ENVIRONMENT=production\nexport POSTGRES_ANALYTICS_HOST='db.local'\nPOSTGRES_ANALYTICS_PORT=6543\nPOSTGRES_ANALYTICS_DB=\"analytics\" \nPOSTGRES_ANALYTICS_USER=etl # inline\n",
        )
        .unwrap();
        let process = HashMap::from([("POSTGRES_ANALYTICS_PORT".to_string(), "5433".to_string())]);
        let e = Env::from_sources(process, Some(&file)).unwrap();
        let pg = e.warehouse().unwrap();
        assert_eq!(pg.host, "db.local");
        assert_eq!(pg.port, 5433);
        assert_eq!(pg.database, "analytics");
        assert_eq!(pg.user, "etl");
        assert_eq!(pg.schema, "raw");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_port_names_the_variable() {
        let e = env(&[
            ("ETL_ENVIRONMENT", "production"),
            ("POSTGRES_ANALYTICS_HOST", "h"),
            ("POSTGRES_ANALYTICS_PORT", "54x"),
        ])
        .unwrap();
        let err = e.warehouse().unwrap_err();
        assert!(
            err.to_string().contains("POSTGRES_ANALYTICS_PORT is `54x`"),
            "{err}"
        );
    }

    #[test]
    fn ssl_mode_and_mode_are_validated() {
        let e = env(&[
            ("ETL_ENVIRONMENT", "production"),
            ("OPENDENTAL_SOURCE_HOST", "clinic"),
            ("OPENDENTAL_SOURCE_DB", "opendental"),
            ("OPENDENTAL_SOURCE_USER", "reader"),
            ("OPENDENTAL_SOURCE_SSL_MODE", "verify_ca"),
            ("ETL_MODE", "sideways"),
        ])
        .unwrap();
        let err = e.source().unwrap_err().to_string();
        assert!(err.contains("OPENDENTAL_SOURCE_SSL_CA"), "{err}");
        assert!(e.mode().unwrap_err().to_string().contains("`sideways`"));
        let e = env(&[
            ("ETL_ENVIRONMENT", "production"),
            ("OPENDENTAL_SOURCE_HOST", "clinic"),
            ("OPENDENTAL_SOURCE_DB", "opendental"),
            ("OPENDENTAL_SOURCE_USER", "reader"),
            ("OPENDENTAL_SOURCE_SSL_MODE", "Required"),
            ("OPENDENTAL_SOURCE_MAX_ROWS_PER_SECOND", "5000"),
        ])
        .unwrap();
        assert_eq!(e.source().unwrap().ssl_mode, SslMode::Required);
        assert_eq!(e.source_max_rows_per_second().unwrap(), Some(5000));
        assert_eq!(
            e.source_max_connections().unwrap(),
            DEFAULT_SOURCE_CONNECTIONS
        );
        assert_eq!(e.mode().unwrap(), Mode::Replica);
    }

    #[test]
    fn malformed_env_lines_name_the_line() {
        assert_eq!(parse_env_text("A=1\nnot a pair\n").unwrap_err().0, 2);
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = Secret::new("hunter2-distinctive");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
