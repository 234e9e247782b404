//! The Sendense hub: REST API, catalog and backup lifecycle over the embedded NBD server, and the
//! adapter that serves QCOW2 images as NBD exports.
#![forbid(unsafe_code)]
#![deny(clippy::too_many_lines)]

pub mod api;
pub mod backup;
pub mod catalog;
pub mod config;
pub mod copy;
pub mod error;
pub mod export;
pub mod inventory;
pub mod jobs;
pub mod protect;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod serve;
pub mod startup;
pub mod state;
pub mod sys;
pub mod verify;

pub use config::Config;
pub use error::{Error, Result};
pub use serve::{serve, start};
pub use state::Hub;
