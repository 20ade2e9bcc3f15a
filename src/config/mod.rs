//! Settings from the environment, the table config, and strategy resolution.

mod settings;
mod strategy;
mod tables;

pub use settings::{
    DEFAULT_SCHEMA, DEFAULT_SOURCE_CONNECTIONS, Env, Environment, Mode, MySqlSettings, PgSettings,
    Secret, SslMode,
};
pub use strategy::{Decision, Strategy, TableFacts, resolve};
pub use tables::{
    DEFAULT_BATCH_SIZE, DEFAULT_LOOKBACK_KEYS, DEFAULT_LOOKBACK_SECONDS, ExtractionStrategy,
    MAX_BATCH_SIZE, PerformanceCategory, ProcessingPriority, QualityBounds, TableConfig,
    TablesConfig, override_path,
};
