//! The backup lifecycle.

pub mod create;
pub mod launch;
mod monitor;
