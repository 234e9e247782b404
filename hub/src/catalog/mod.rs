//! The SQLite catalog: repositories, backups with their disks, restores, the VMware inventory,
//! jobs, and the protection objects (schedules, machine groups, policies, flows).
//!
//! One connection behind a mutex; every call is a short statement or transaction, so callers use
//! it directly from async code. WAL mode keeps readers from waiting on the writer's fsync.

mod backups;
mod carry;
mod conn;
pub mod copies;
pub mod flows;
mod groups;
pub mod inventory;
pub mod jobs;
pub mod model;
mod policies;
pub mod protection_model;
mod repositories;
mod restores;
mod retention;
mod rows;
mod schedules;
mod verify;

pub use carry::CarriedOver;
pub use conn::{CATALOG_FILE, Catalog, is_disk_full};
pub use copies::{BackupCopy, CopiedDisk, CopyStatus, CopyUpdate};
pub use flows::{Flow, FlowExecution};
pub use inventory::{ContextOwner, Credential, CredentialFields, VmContext, VmDisk};
pub use jobs::{Job, JobEnd, JobFilter, JobLogLine, JobStatus};
pub use model::*;
pub use protection_model::*;
pub use retention::MergeIntent;
pub use rows::fmt_time;
pub(crate) use rows::parse_time;
