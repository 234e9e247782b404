//! Cron schedules in a named time zone: when a protection flow fires next, and which one run to
//! make up for after downtime. Pure: no clock (every instant is passed in), no catalog, no I/O
//! beyond the time zone database.
//!
//! Crates. `croner` parses and searches: it takes 5 fields or 6 with seconds first (as the old Go
//! hub's robfig/cron did), the `@` names, and searches backwards as well as forwards, so the last
//! tick before now costs a few steps whatever the interval. It also handles daylight saving time
//! the Vixie way, which is the behaviour we want (below). `cron` (0.17) searches backwards too,
//! but wants the seconds field (6 or 7 fields, so `30 2 * * *` is refused), numbers weekdays 1–7
//! from Sunday where robfig/cron and Vixie say 0–6, and skips a wall-clock time the clock jumps
//! over, so a daily 02:30 would not run on the spring-forward night; `saffron` has no seconds,
//! no time zones and no `@` names. `jiff` resolves the zone: `croner` has a backend for it (so
//! no chrono beside our `time`), its tz lookups refuse unknown names, and it reads the system's
//! zoneinfo with a bundled copy of the tzdb for images that have none. The public API speaks
//! `time::OffsetDateTime` in UTC like the rest of the hub; jiff stays inside this file.
//!
//! DST, in local wall-clock time, decided by the kind of schedule. A *fixed-time* schedule names
//! one second, one minute and one hour (`30 2 * * *`, `@daily`); anything else is an *interval*
//! (`0 * * * *`, `*/5 * * * * *`, `0 */6 * * *`, and also `30 1,13 * * *`).
//! - Clock jumps forward (02:00 → 03:00): a fixed-time run whose time falls in the skipped hour
//!   runs once, at the first real instant after the jump (03:00:00 local), as Vixie cron does.
//!   An interval schedule simply has no ticks at wall-clock times that do not exist.
//! - Clock goes back (01:00–02:00 twice): a fixed-time run fires once, on the first pass. An
//!   interval schedule fires on both passes: they are distinct instants, and an hourly backup
//!   that skipped one real hour would leave a two-hour hole.
//!
//! Either way `next_after` is strictly increasing and never returns an instant twice.

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use time::OffsetDateTime;

/// Longest expression (and time zone name) accepted, in bytes, checked before parsing.
pub const MAX_EXPRESSION_LEN: usize = 256;

/// The `@` names and what they stand for; `croner` knows all of them but `@midnight`.
const NAMES: [(&str, &str); 7] = [
    ("@yearly", "@yearly"),
    ("@annually", "@annually"),
    ("@monthly", "@monthly"),
    ("@weekly", "@weekly"),
    ("@daily", "@daily"),
    ("@midnight", "@daily"),
    ("@hourly", "@hourly"),
];

/// Why an expression or time zone was refused. Display is the reason, for a 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CronError {
    #[error("the cron expression is empty")]
    Empty,
    #[error("the {what} is {len} bytes long; at most {MAX_EXPRESSION_LEN} are allowed")]
    TooLong { what: &'static str, len: usize },
    #[error(
        "the cron expression {expression:?} has {fields} fields; expected 5 (minute hour \
         day-of-month month day-of-week), 6 (seconds first) or an @ name"
    )]
    FieldCount { expression: String, fields: usize },
    #[error(
        "unknown cron name {0:?}: expected one of @yearly, @annually, @monthly, @weekly, \
         @daily, @midnight, @hourly"
    )]
    UnknownName(String),
    #[error("the cron expression {expression:?} is invalid: {reason}")]
    Invalid { expression: String, reason: String },
    #[error("unknown time zone {0:?}: expected an IANA name such as Europe/Berlin or UTC")]
    UnknownTimeZone(String),
    #[error("the cron expression {0:?} never fires")]
    NeverFires(String),
}

impl From<CronError> for crate::error::Error {
    fn from(e: CronError) -> Self {
        crate::error::Error::Invalid(e.to_string())
    }
}

/// A parsed cron expression in its time zone.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    expression: String,
    cron: croner::Cron,
    zone: TimeZone,
    zone_name: String,
}

impl CronSchedule {
    /// Parses `expression` (5 fields, 6 with seconds first, or an `@` name) in the IANA zone
    /// `timezone`. Refuses an expression that can never fire (`0 0 30 2 *`).
    pub fn parse(expression: &str, timezone: &str) -> Result<CronSchedule, CronError> {
        for (what, text) in [("cron expression", expression), ("time zone", timezone)] {
            if text.len() > MAX_EXPRESSION_LEN {
                return Err(CronError::TooLong {
                    what,
                    len: text.len(),
                });
            }
        }
        let trimmed = expression.trim();
        let pattern = pattern_of(trimmed)?;
        let invalid = |e: croner::errors::CronError| CronError::Invalid {
            expression: trimmed.to_owned(),
            reason: e.to_string(),
        };
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(invalid)?;
        let zone =
            TimeZone::get(timezone).map_err(|_| CronError::UnknownTimeZone(timezone.to_owned()))?;
        let schedule = CronSchedule {
            expression: trimmed.to_owned(),
            cron,
            zone_name: zone.iana_name().unwrap_or(timezone).to_owned(),
            zone,
        };
        schedule.check_fires()?;
        Ok(schedule)
    }

    /// The expression as given, trimmed.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone's IANA name, as the database spells it (`Europe/Berlin` for
    /// `europe/berlin`).
    pub fn timezone(&self) -> &str {
        &self.zone_name
    }

    /// The first tick strictly after `t`; `None` only past the year 9999.
    pub fn next_after(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let from = self.zoned(t)?;
        let next = self.cron.find_next_occurrence(&from, false).ok()?;
        to_offset(&next)
    }

    /// At start after downtime: the one tick to run now for the ticks missed in `(last, now]`,
    /// which is the last of them; `None` when no tick fell in that span. Never more than one:
    /// a daily backup down for three days runs once, for the latest day.
    ///
    /// The rule "only when that tick lies within one period of `now`, the period being the gap
    /// from it to the next tick" holds by construction: the next tick after the last missed one
    /// is after `now`, so `now` is always less than one period past it. So a daily schedule down
    /// for three days gets one run; down one hour with no tick in that hour, none.
    pub fn missed(&self, last: OffsetDateTime, now: OffsetDateTime) -> Option<OffsetDateTime> {
        if now <= last {
            return None;
        }
        // A backward search: a few steps per field, not one per tick, so `*/5 * * * * *` after
        // a day of downtime costs what `@daily` does.
        let latest = self
            .cron
            .find_previous_occurrence(&self.zoned(now)?, true)
            .ok()?;
        to_offset(&latest).filter(|&tick| tick > last)
    }

    /// Refuses a schedule without a next tick. An expression has no year field, so it repeats
    /// with the Gregorian calendar's 400-year cycle; `croner` searches far past that (to the year
    /// 5000, or a step limit) before it gives up, which takes tens of milliseconds. The search
    /// starts at a fixed instant, not the clock, so that parsing stays pure.
    fn check_fires(&self) -> Result<(), CronError> {
        let start = Timestamp::from_second(946_684_800) // 2000-01-01T00:00:00Z
            .map(|t| t.to_zoned(self.zone.clone()))
            .ok();
        match start.map(|s| self.cron.find_next_occurrence(&s, false)) {
            Some(Ok(_)) => Ok(()),
            _ => Err(CronError::NeverFires(self.expression.clone())),
        }
    }

    fn zoned(&self, t: OffsetDateTime) -> Option<Zoned> {
        let instant = Timestamp::from_nanosecond(t.unix_timestamp_nanos()).ok()?;
        Some(instant.to_zoned(self.zone.clone()))
    }
}

/// What `croner` should parse for `expression`: an `@` name mapped to one it knows, or the
/// fields as they are once their count is right (croner would also take a 7th, the year).
fn pattern_of(expression: &str) -> Result<&str, CronError> {
    if expression.is_empty() {
        return Err(CronError::Empty);
    }
    if expression.starts_with('@') {
        return NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(expression))
            .map(|&(_, pattern)| pattern)
            .ok_or_else(|| CronError::UnknownName(expression.to_owned()));
    }
    let fields = expression.split_whitespace().count();
    if fields == 5 || fields == 6 {
        Ok(expression)
    } else {
        Err(CronError::FieldCount {
            expression: expression.to_owned(),
            fields,
        })
    }
}

fn to_offset(z: &Zoned) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(z.timestamp().as_nanosecond()).ok()
}

#[cfg(test)]
mod tests;
