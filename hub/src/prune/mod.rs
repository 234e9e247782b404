//! Retention: which of a VM's backups a policy keeps (`select`, pure), the plan for one VM in
//! one repository (`plan`), the prune job that carries it out (`run`), and the chain merge by
//! which a backup with a child leaves its chain without copying a disk (`merge`).
//!
//! It decides which backups go and in what order; the image work of a merge is
//! `qcow2::merge`'s, the removal of directories `repo`'s. It knows nothing of HTTP.

mod merge;
pub mod plan;
mod run;
pub mod select;

pub use plan::{Plan, PlanItem, PruneTarget};
pub use select::{Rule, Rules, Verdict};
