//! The jobs framework: every piece of background work (a protection flow's run; later prune,
//! merge, verify, copy) is a job with a kind, a target, a status, progress, a bounded log and a
//! result, recorded in the catalog so it outlives the process.
//!
//! `Jobs` queues a job behind its kind's concurrency limit, runs the work it is given, and records
//! how it ended; the work reports through its `JobContext` (log lines, progress, whether it was
//! cancelled). It knows nothing of what the work does: the rooms that start jobs (`protect`, and
//! the ones to come) hand it a future. `Hub` holds a `Jobs`, so this room imports no room that
//! uses `Hub`.

mod kind;
mod runner;

pub use kind::JobKind;
pub use runner::{JobContext, Jobs, Outcome};
