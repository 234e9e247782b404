//! Protection that runs itself: schedules, machine groups, protection flows and policies, the
//! objects an operator sets up once so that backups happen without anyone asking.
//!
//! It owns their validation and their rules (who may be deleted while something uses it, a VM
//! in at most one group); it keeps them in the catalog. `cron` is pure: it parses a schedule and
//! says when it fires. `flows` holds the flows and their checks, `run` one run of a flow (a job
//! of the `jobs` framework: a backup per VM through `backup::launch`), `scheduler` the clock that
//! starts runs on schedules. It knows nothing of HTTP, NBD or images.

pub mod cron;
mod fields;
pub mod flows;
pub mod groups;
pub mod policies;
pub mod run;
mod scheduler;
pub mod schedules;
