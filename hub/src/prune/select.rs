//! Which backups a policy's retention rules keep: the pure half of a prune, with Proxmox Backup
//! Server's semantics, so an operator who knows those rules (or its prune simulator) gets what
//! they expect.
//!
//! - Newest first. `keep_last` keeps the N newest; each period rule keeps the newest backup of
//!   each of its last N periods (hour, day, ISO week, month, year, in the given time zone) that
//!   hold a backup. Rules apply in that order, and a rule skips a period that an earlier rule
//!   already kept a backup in, without counting it.
//! - A protected backup is never removed and never counted by any rule.
//! - With at least one rule set, what no rule keeps is removed. `retention_days` removes what is
//!   older than that many days unless a rule keeps it; with no rule set, it keeps what is younger.
//! - With no rule and no `retention_days`, everything is kept: a policy that says nothing about
//!   retention never loses a backup.
//!
//! No I/O, no clock: the caller gives the time and the zone, the tests give fixed ones.

use std::collections::HashSet;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::catalog::Retention;

/// One backup the rules are applied to (completed, of one VM in one repository).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    /// When the backup's point in time was taken.
    pub time: Timestamp,
    pub protected: bool,
}

/// The rules of one prune.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    pub retention: Retention,
    pub retention_days: Option<u32>,
}

impl Rules {
    /// Whether any keep rule is set (a zero counts as unset, as in PBS).
    pub fn any_keep(&self) -> bool {
        Rule::ALL.iter().any(|r| r.count(&self.retention) > 0)
    }
}

/// A keep rule, in the order rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    KeepLast,
    KeepHourly,
    KeepDaily,
    KeepWeekly,
    KeepMonthly,
    KeepYearly,
}

impl Rule {
    pub const ALL: [Rule; 6] = [
        Rule::KeepLast,
        Rule::KeepHourly,
        Rule::KeepDaily,
        Rule::KeepWeekly,
        Rule::KeepMonthly,
        Rule::KeepYearly,
    ];

    fn count(self, r: &Retention) -> usize {
        let n = match self {
            Rule::KeepLast => r.keep_last,
            Rule::KeepHourly => r.keep_hourly,
            Rule::KeepDaily => r.keep_daily,
            Rule::KeepWeekly => r.keep_weekly,
            Rule::KeepMonthly => r.keep_monthly,
            Rule::KeepYearly => r.keep_yearly,
        };
        n.unwrap_or(0) as usize
    }

    /// The period backup `i` falls in for this rule; two backups in one period share the key.
    /// `keep_last`'s periods are the backups themselves.
    fn period(self, i: usize, c: &Candidate, tz: &TimeZone) -> (i16, i16, i8, usize) {
        let z = c.time.to_zoned(tz.clone());
        match self {
            Rule::KeepLast => (0, 0, 0, i),
            Rule::KeepHourly => (z.year(), z.day_of_year(), z.hour(), 0),
            Rule::KeepDaily => (z.year(), z.day_of_year(), 0, 0),
            Rule::KeepWeekly => {
                let w = z.date().iso_week_date();
                (w.year(), i16::from(w.week()), 0, 0)
            }
            Rule::KeepMonthly => (z.year(), i16::from(z.month()), 0, 0),
            Rule::KeepYearly => (z.year(), 0, 0, 0),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::KeepLast => "keep_last",
            Rule::KeepHourly => "keep_hourly",
            Rule::KeepDaily => "keep_daily",
            Rule::KeepWeekly => "keep_weekly",
            Rule::KeepMonthly => "keep_monthly",
            Rule::KeepYearly => "keep_yearly",
        }
    }
}

/// What the rules decided for one backup, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "rule")]
pub enum Verdict {
    /// Kept by this rule.
    Kept(Rule),
    /// Marked protected: never removed, never counted.
    Protected,
    /// No rule is set and `retention_days` does not reach it (or is unset).
    NoRule,
    /// No rule kept it.
    NotKept,
    /// Older than `retention_days` and no rule kept it.
    Expired,
}

impl Verdict {
    pub fn keeps(self) -> bool {
        matches!(
            self,
            Verdict::Kept(_) | Verdict::Protected | Verdict::NoRule
        )
    }
}

/// The verdict for each candidate, in the order given.
pub fn select(
    candidates: &[Candidate],
    rules: &Rules,
    now: Timestamp,
    tz: &TimeZone,
) -> Vec<Verdict> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    // Newest first; a stable sort, so backups of the same instant keep the caller's order
    // (the catalog's: the one made later first).
    order.sort_by(|&a, &b| candidates[b].time.cmp(&candidates[a].time));
    let mut marks: Vec<Option<Verdict>> = vec![None; candidates.len()];
    for &i in &order {
        if candidates[i].protected {
            marks[i] = Some(Verdict::Protected);
        }
    }
    for rule in Rule::ALL {
        apply(rule, rules, candidates, &order, &mut marks, tz);
    }
    let expired = |c: &Candidate| {
        rules.retention_days.is_some_and(|days| {
            let age = now.as_second().saturating_sub(c.time.as_second());
            age > i64::from(days) * 86_400
        })
    };
    let any_keep = rules.any_keep();
    candidates
        .iter()
        .zip(marks)
        .map(|(c, mark)| match mark {
            Some(Verdict::NotKept) | None if expired(c) => Verdict::Expired,
            Some(v) => v,
            None if any_keep => Verdict::NotKept,
            None => Verdict::NoRule,
        })
        .collect()
}

/// One rule over the backups newest first: the newest of each new period is kept until the
/// rule has kept its count; a later backup of a period it kept is removed (and so not offered
/// to the later rules, as in PBS).
fn apply(
    rule: Rule,
    rules: &Rules,
    candidates: &[Candidate],
    order: &[usize],
    marks: &mut [Option<Verdict>],
    tz: &TimeZone,
) {
    let keep = rule.count(&rules.retention);
    if keep == 0 {
        return;
    }
    let period = |i: usize| rule.period(i, &candidates[i], tz);
    let taken: HashSet<_> = order
        .iter()
        .filter(|&&i| matches!(marks[i], Some(Verdict::Kept(_))))
        .map(|&i| period(i))
        .collect();
    let mut kept = HashSet::new();
    for &i in order {
        if marks[i].is_some() {
            continue;
        }
        let p = period(i);
        if taken.contains(&p) {
            continue;
        }
        if kept.contains(&p) {
            marks[i] = Some(Verdict::NotKept);
        } else {
            if kept.len() >= keep {
                break;
            }
            kept.insert(p);
            marks[i] = Some(Verdict::Kept(rule));
        }
    }
}

#[cfg(test)]
mod tests;
