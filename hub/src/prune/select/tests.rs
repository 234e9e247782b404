//! Table-driven: each case lists backups (local time in the case's zone, `*` for protected) and
//! what the rules keep. Most cases follow the examples of PBS's documentation and its simulator.

use super::*;

struct Case {
    name: &'static str,
    zone: &'static str,
    now: &'static str,
    rules: Rules,
    /// `"2024-01-05 10:00"`, with a trailing `*` when protected.
    backups: &'static [&'static str],
    /// The verdict of each backup, in the same order: `last`, `hourly`, `daily`, `weekly`,
    /// `monthly`, `yearly`, `protected`, `no_rule`, `remove`, `expired`.
    want: &'static [&'static str],
}

fn keep(last: u32, hourly: u32, daily: u32, weekly: u32, monthly: u32, yearly: u32) -> Rules {
    let n = |v: u32| (v > 0).then_some(v);
    Rules {
        retention: Retention {
            keep_last: n(last),
            keep_hourly: n(hourly),
            keep_daily: n(daily),
            keep_weekly: n(weekly),
            keep_monthly: n(monthly),
            keep_yearly: n(yearly),
        },
        retention_days: None,
    }
}

fn label(v: Verdict) -> &'static str {
    match v {
        Verdict::Kept(Rule::KeepLast) => "last",
        Verdict::Kept(Rule::KeepHourly) => "hourly",
        Verdict::Kept(Rule::KeepDaily) => "daily",
        Verdict::Kept(Rule::KeepWeekly) => "weekly",
        Verdict::Kept(Rule::KeepMonthly) => "monthly",
        Verdict::Kept(Rule::KeepYearly) => "yearly",
        Verdict::Protected => "protected",
        Verdict::NoRule => "no_rule",
        Verdict::NotKept => "remove",
        Verdict::Expired => "expired",
    }
}

fn at(zone: &TimeZone, local: &str) -> Timestamp {
    let dt: jiff::civil::DateTime = local.replace(' ', "T").parse().expect("case time");
    dt.to_zoned(zone.clone()).expect("zoned").timestamp()
}

fn run(case: &Case) {
    let tz = TimeZone::get(case.zone).expect("zone");
    let candidates: Vec<Candidate> = case
        .backups
        .iter()
        .enumerate()
        .map(|(i, b)| Candidate {
            id: format!("b{i:02}"),
            time: at(&tz, b.trim_end_matches('*')),
            protected: b.ends_with('*'),
        })
        .collect();
    let got: Vec<&str> = select(&candidates, &case.rules, at(&tz, case.now), &tz)
        .into_iter()
        .map(label)
        .collect();
    assert_eq!(got, case.want, "case {:?}", case.name);
}

const DAYS_7: &[&str] = &[
    "2024-01-07 10:00",
    "2024-01-06 10:00",
    "2024-01-05 10:00",
    "2024-01-04 10:00",
    "2024-01-03 10:00",
    "2024-01-02 10:00",
    "2024-01-01 10:00",
];

#[test]
fn keep_last_keeps_the_newest() {
    run(&Case {
        name: "keep-last 3 of 7",
        zone: "UTC",
        now: "2024-01-08 00:00",
        rules: keep(3, 0, 0, 0, 0, 0),
        backups: DAYS_7,
        want: &[
            "last", "last", "last", "remove", "remove", "remove", "remove",
        ],
    });
}

#[test]
fn input_order_does_not_matter() {
    run(&Case {
        name: "keep-last 2, oldest first",
        zone: "UTC",
        now: "2024-01-08 00:00",
        rules: keep(2, 0, 0, 0, 0, 0),
        backups: &["2024-01-01 10:00", "2024-01-03 10:00", "2024-01-02 10:00"],
        want: &["remove", "last", "last"],
    });
}

#[test]
fn daily_keeps_the_newest_of_each_day() {
    run(&Case {
        name: "keep-daily 2, two a day",
        zone: "UTC",
        now: "2024-01-08 00:00",
        rules: keep(0, 0, 2, 0, 0, 0),
        backups: &[
            "2024-01-03 22:00",
            "2024-01-03 10:00",
            "2024-01-02 22:00",
            "2024-01-02 10:00",
            "2024-01-01 22:00",
        ],
        want: &["daily", "remove", "daily", "remove", "remove"],
    });
}

#[test]
fn a_rule_skips_periods_an_earlier_rule_kept() {
    // keep-last keeps both of the 5th; keep-daily then does not count the 5th again and keeps
    // the newest of the 4th and of the 3rd.
    run(&Case {
        name: "keep-last 2 + keep-daily 2",
        zone: "UTC",
        now: "2024-01-08 00:00",
        rules: keep(2, 0, 2, 0, 0, 0),
        backups: &[
            "2024-01-05 22:00",
            "2024-01-05 10:00",
            "2024-01-04 22:00",
            "2024-01-04 10:00",
            "2024-01-03 10:00",
            "2024-01-02 10:00",
        ],
        want: &["last", "last", "daily", "remove", "daily", "remove"],
    });
}

#[test]
fn periods_without_backups_are_not_counted() {
    // keep-daily 3 over a gap: the last three days that hold a backup, not the last three days.
    run(&Case {
        name: "keep-daily 3 with gaps",
        zone: "UTC",
        now: "2024-01-30 00:00",
        rules: keep(0, 0, 3, 0, 0, 0),
        backups: &[
            "2024-01-20 10:00",
            "2024-01-10 10:00",
            "2024-01-05 10:00",
            "2024-01-01 10:00",
        ],
        want: &["daily", "daily", "daily", "remove"],
    });
}

#[test]
fn weeks_are_iso_weeks_across_the_year() {
    // 2020-12-31 and 2021-01-03 are both in ISO week 2020-W53; 2021-01-04 starts 2021-W01.
    run(&Case {
        name: "keep-weekly 2 over new year",
        zone: "UTC",
        now: "2021-01-05 00:00",
        rules: keep(0, 0, 0, 2, 0, 0),
        backups: &["2021-01-04 10:00", "2021-01-03 10:00", "2020-12-31 10:00"],
        want: &["weekly", "weekly", "remove"],
    });
}

#[test]
fn grandfather_father_son() {
    // A PBS simulator setting: daily 3, weekly 2, monthly 2, yearly 1, one backup a day.
    run(&Case {
        name: "gfs",
        zone: "UTC",
        now: "2024-03-11 00:00",
        rules: keep(0, 0, 3, 2, 2, 1),
        backups: &[
            "2024-03-10 10:00", // Sun, W10
            "2024-03-09 10:00",
            "2024-03-08 10:00",
            "2024-03-07 10:00",
            "2024-03-03 10:00", // Sun, W09
            "2024-03-02 10:00",
            "2024-02-25 10:00", // Sun, W08
            "2024-02-20 10:00",
            "2024-01-31 10:00",
            "2023-12-31 10:00",
            "2023-06-30 10:00",
        ],
        want: &[
            "daily", "daily", "daily",   // the 10th, 9th, 8th: daily's three
            "remove",  // the 7th: its week (W10) was kept by the dailies, so weekly skips it
            "weekly",  // W09's newest
            "remove",  // W09's older: weekly already holds W09
            "weekly",  // W08's newest: weekly's second
            "remove",  // W08's older
            "monthly", // January (March and February were kept by earlier rules)
            "monthly", // December: monthly's second
            "remove",  // 2023 was kept by December, so yearly skips it
        ],
    });
}

#[test]
fn periods_are_in_the_given_zone() {
    // 23:30 and 00:30 UTC are two days in UTC but one (the 2nd) in Tokyo.
    let backups = &["2024-01-02 00:30", "2024-01-01 23:30"];
    run(&Case {
        name: "daily in UTC",
        zone: "UTC",
        now: "2024-01-03 00:00",
        rules: keep(0, 0, 5, 0, 0, 0),
        backups,
        want: &["daily", "daily"],
    });
    run(&Case {
        name: "daily in Tokyo",
        zone: "Asia/Tokyo",
        now: "2024-01-03 09:00",
        rules: keep(0, 0, 5, 0, 0, 0),
        backups: &["2024-01-02 09:30", "2024-01-02 08:30"],
        want: &["daily", "remove"],
    });
    run(&Case {
        name: "hourly",
        zone: "UTC",
        now: "2024-01-03 00:00",
        rules: keep(0, 2, 0, 0, 0, 0),
        backups: &[
            "2024-01-02 10:50",
            "2024-01-02 10:10",
            "2024-01-02 09:10",
            "2024-01-02 08:10",
        ],
        want: &["hourly", "remove", "hourly", "remove"],
    });
}

#[test]
fn protected_is_never_removed_nor_counted() {
    run(&Case {
        name: "keep-last 2, newest protected",
        zone: "UTC",
        now: "2024-01-08 00:00",
        rules: keep(2, 0, 0, 0, 0, 0),
        backups: &[
            "2024-01-04 10:00*",
            "2024-01-03 10:00",
            "2024-01-02 10:00",
            "2024-01-01 10:00*",
        ],
        want: &["protected", "last", "last", "protected"],
    });
}

#[test]
fn retention_days_alone_keeps_the_young() {
    run(&Case {
        name: "retention_days 3",
        zone: "UTC",
        now: "2024-01-08 00:00",
        rules: Rules {
            retention_days: Some(3),
            ..Rules::default()
        },
        backups: &[
            "2024-01-07 10:00",
            "2024-01-05 10:00",
            "2024-01-04 10:00",
            "2024-01-01 10:00*",
        ],
        want: &["no_rule", "no_rule", "expired", "protected"],
    });
}

#[test]
fn rules_keep_what_retention_days_would_remove() {
    let mut rules = keep(1, 0, 0, 0, 1, 0);
    rules.retention_days = Some(3);
    run(&Case {
        name: "keep-last 1 + monthly 1 + 3 days",
        zone: "UTC",
        now: "2024-03-10 00:00",
        rules,
        backups: &["2024-03-09 10:00", "2024-03-08 10:00", "2024-02-10 10:00"],
        // The 8th is young, but no rule keeps it; February is old, but monthly keeps it (March
        // was kept by keep-last, so monthly skips March).
        want: &["last", "remove", "monthly"],
    });
}

#[test]
fn no_rules_keep_everything() {
    run(&Case {
        name: "nothing set",
        zone: "UTC",
        now: "2030-01-01 00:00",
        rules: Rules::default(),
        backups: &["2024-01-02 10:00", "2020-01-01 10:00"],
        want: &["no_rule", "no_rule"],
    });
    run(&Case {
        name: "zeros are unset",
        zone: "UTC",
        now: "2030-01-01 00:00",
        rules: Rules {
            retention: Retention {
                keep_last: Some(0),
                ..Retention::default()
            },
            retention_days: None,
        },
        backups: &["2024-01-02 10:00"],
        want: &["no_rule"],
    });
}

#[test]
fn a_dst_fold_is_one_day() {
    // Europe/Berlin leaves summer time on 2024-10-27: 02:30 happens twice; both are the 27th.
    let tz = TimeZone::get("Europe/Berlin").unwrap();
    let first: Timestamp = "2024-10-27T00:30:00Z".parse().unwrap();
    let second: Timestamp = "2024-10-27T01:30:00Z".parse().unwrap();
    let c = |id: &str, time| Candidate {
        id: id.into(),
        time,
        protected: false,
    };
    let got = select(
        &[c("a", first), c("b", second)],
        &keep(0, 0, 1, 0, 0, 0),
        "2024-10-28T00:00:00Z".parse().unwrap(),
        &tz,
    );
    assert_eq!(got, [Verdict::NotKept, Verdict::Kept(Rule::KeepDaily)]);
}
