//! etl-pipeline: keeps a PostgreSQL analytics warehouse in step with an
//! OpenDental MySQL/MariaDB database.

pub mod alert;
pub mod analyze;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod extract;
pub mod group;
pub mod incremental;
pub mod load;
pub mod mask;
pub mod mysql;
pub mod outcome;
pub mod pipeline;
pub mod postgres;
pub mod progress;
pub mod reconcile;
pub mod schedule;
pub mod schema;
pub mod serve;
pub mod shutdown;
pub mod stamps;
pub mod status;
mod tls;
pub mod tracking;
pub mod verify;

pub use error::{Error, ErrorKind, Result};
