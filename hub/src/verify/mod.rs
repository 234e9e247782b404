//! Verify: whether a backup's chain still holds what its finalise wrote. A verify job reads each
//! layer's files (present, regular, not truncated), the backing file its header names (the
//! catalog parent's image), its digests file (the one the manifest names) and every range it
//! maps re-digested (`repo::digests`), and runs the structural check (`qcow2::check`); the
//! outcome goes on each backup (`verify_state`, `verified_at`, `verify_error`). A backup whose
//! chain failed is never the base of a new incremental (`backup::chain`, `backup::create`).
//! `due`: the repositories that verify every new backup, and re-verify after
//! `verify_outdated_after_days`.
//!
//! It reads the catalog and the files and records verdicts; it changes no image, and knows
//! nothing of HTTP or NBD.

mod due;
pub mod layer;
mod run;

pub use layer::Failure;
pub use run::Scope;
