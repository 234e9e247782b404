//! The SQLite catalog: repositories, backups with their disks, restores, the inventory, and the
//! protection objects (schedules, machine groups, policies).
//!
//! One connection behind a mutex; every call is a short statement or transaction, so callers use
//! it directly from async code. WAL mode keeps readers from waiting on the writer's fsync.

mod backups;
mod conn;
mod groups;
pub mod inventory;
pub mod model;
mod policies;
pub mod protection_model;
mod repositories;
mod restores;
mod rows;
mod schedules;

pub use conn::{CATALOG_FILE, Catalog, is_disk_full};
pub use inventory::{Credential, CredentialFields, VmContext, VmDisk};
pub use model::*;
pub use protection_model::*;
pub use rows::fmt_time;
