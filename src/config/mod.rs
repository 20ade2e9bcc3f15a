//! Settings from the environment, the table config, and strategy resolution.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

mod policy;
mod schedule;
mod settings;
mod strategy;
mod tables;

pub use policy::{Applied, ColumnPolicy, Mask};
pub use schedule::{Schedule, Selection, category_name};
pub use settings::{
    DEFAULT_SCHEMA, DEFAULT_SOURCE_CONNECTIONS, Env, Environment, MIN_SERVE_TOKEN_BYTES, Mode,
    MySqlSettings, PgSettings, PgSslMode, Secret, SslMode, read_secret_file, redact,
};
pub use strategy::{
    Decision, Strategy, TableFacts, UNCHANGED_REASON, UNCHANGED_SKIP_MAX_SECONDS, resolve,
    unchanged, wants_checksum,
};
pub use tables::{
    DEFAULT_BATCH_SIZE, DEFAULT_CLOCK_SKEW_SECONDS, DEFAULT_LOOKBACK_KEYS,
    DEFAULT_LOOKBACK_SECONDS, DEFAULT_MAX_DELETE_SHARE, DeleteDetection, DeletePolicy,
    ExtractionStrategy, MAX_BATCH_SIZE, Monitoring, PerformanceCategory, ProcessingPriority,
    QualityBounds, TableConfig, TablesConfig, override_path,
};

/// Writes a file through a temporary file and a rename, so a reader never
/// sees half a file.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::config(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::config(format!("cannot write {}: {e}", path.display())))
}
