//! Protection that runs itself: schedules, machine groups, protection flows and policies.
//!
//! `cron` is pure: it parses a schedule and says when it fires, and knows nothing of the
//! catalog, HTTP or `Hub`. `flows` holds the flows and their checks, `run` one run of a flow (a
//! job of the `jobs` framework: a backup per VM through `backup::launch`), `scheduler` the clock
//! that starts runs on schedules. It knows nothing of HTTP, NBD or images.

pub mod cron;
pub mod flows;
pub mod run;
mod scheduler;
