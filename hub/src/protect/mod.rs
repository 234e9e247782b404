//! Protection that runs itself: schedules, machine groups, protection flows and policies, the
//! objects an operator sets up once so that backups happen without anyone asking.
//!
//! It owns their validation and their rules (who may be deleted while something uses it, a VM
//! in at most one group); it keeps them in the catalog. It knows nothing of HTTP, and does not
//! start backups itself: the flows and the scheduler that fires schedules call the backup room.

mod fields;
pub mod groups;
pub mod policies;
pub mod schedules;
