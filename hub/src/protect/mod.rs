//! Protection that runs itself: schedules, machine groups, protection flows and policies.
//!
//! `cron` is pure: it parses a schedule and says when it fires, and knows nothing of the
//! catalog, HTTP or `Hub`.

pub mod cron;
