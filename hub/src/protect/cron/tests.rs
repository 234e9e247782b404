//! Fixed instants only, no clock. DST nights: America/New_York 2025-03-09 (02:00 EST → 03:00
//! EDT, at 07:00Z) and 2025-11-02 (02:00 EDT → 01:00 EST, at 06:00Z: 01:00–02:00 twice);
//! Europe/Berlin 2025-03-30 (02:00 CET → 03:00 CEST, at 01:00Z).

use super::*;
use time::macros::datetime;

const NEW_YORK: &str = "America/New_York";

fn schedule(expression: &str, zone: &str) -> CronSchedule {
    CronSchedule::parse(expression, zone).unwrap_or_else(|e| panic!("{expression}: {e}"))
}

fn refused(expression: &str, zone: &str) -> CronError {
    CronSchedule::parse(expression, zone).expect_err(expression)
}

/// The ticks strictly after `from` and up to `until`, by `next_after`.
fn ticks(s: &CronSchedule, from: OffsetDateTime, until: OffsetDateTime) -> Vec<OffsetDateTime> {
    let mut out = Vec::new();
    let mut t = from;
    while let Some(next) = s.next_after(t).filter(|&n| n <= until) {
        assert!(next > t, "{}: {next} after {t}", s.expression());
        out.push(next);
        t = next;
    }
    out
}

#[test]
fn accepts_six_fields_five_fields_and_the_names() {
    for expression in [
        "*/5 * * * * *",
        "30 2 * * *",
        "0 0 12 * * MON-FRI",
        "0 0 1 JAN ?",
    ] {
        schedule(expression, "UTC");
    }
    for (name, _) in NAMES {
        schedule(name, "Europe/Berlin");
        schedule(&name.to_uppercase(), "UTC");
    }
    let s = schedule("  30 2 * * *  ", "europe/berlin");
    assert_eq!(s.expression(), "30 2 * * *");
    assert_eq!(s.timezone(), "Europe/Berlin");
}

#[test]
fn refuses_with_the_reason() {
    assert_eq!(refused("", "UTC"), CronError::Empty);
    assert_eq!(refused("   ", "UTC"), CronError::Empty);
    assert!(matches!(
        refused("* * * *", "UTC"),
        CronError::FieldCount { fields: 4, .. }
    ));
    assert!(matches!(
        refused("* * * * * * *", "UTC"),
        CronError::FieldCount { fields: 7, .. }
    ));
    for bad in [
        "61 * * * *",
        "* 24 * * *",
        "a b c d e",
        "*/0 * * * *",
        "1-2-3 * * * *",
    ] {
        assert!(
            matches!(refused(bad, "UTC"), CronError::Invalid { .. }),
            "{bad}"
        );
    }
    for bad in ["@every 5m", "@reboot", "@daily extra"] {
        assert_eq!(refused(bad, "UTC"), CronError::UnknownName(bad.to_owned()));
    }
    for zone in [
        "Mars/Olympus",
        "",
        "../zoneinfo/UTC",
        "EST5EDT,M3.2.0,M11.1.0",
    ] {
        assert_eq!(
            refused("@daily", zone),
            CronError::UnknownTimeZone(zone.to_owned())
        );
    }
    for never in ["0 0 30 2 *", "0 0 31 4 *", "0 0 0 31 11 *"] {
        assert_eq!(
            refused(never, "UTC"),
            CronError::NeverFires(never.to_owned())
        );
    }
    let long = format!("0 0 * * *{}", " ".repeat(MAX_EXPRESSION_LEN));
    assert!(matches!(
        refused(&long, "UTC"),
        CronError::TooLong {
            what: "cron expression",
            ..
        }
    ));
    let zone = "A/".repeat(200);
    assert!(matches!(
        refused("@daily", &zone),
        CronError::TooLong {
            what: "time zone",
            ..
        }
    ));
}

#[test]
fn refusals_read_as_a_400_answer() {
    assert_eq!(
        refused("@daily", "Mars/Olympus").to_string(),
        "unknown time zone \"Mars/Olympus\": expected an IANA name such as Europe/Berlin or UTC"
    );
    assert_eq!(
        refused("0 0 30 2 *", "UTC").to_string(),
        "the cron expression \"0 0 30 2 *\" never fires"
    );
    assert!(
        refused("* * * *", "UTC")
            .to_string()
            .contains("has 4 fields; expected 5")
    );
    let invalid = refused("61 * * * *", "UTC").to_string();
    assert!(
        invalid.starts_with("the cron expression \"61 * * * *\" is invalid: "),
        "{invalid}"
    );
    let error: crate::error::Error = refused("", "UTC").into();
    assert!(
        matches!(error, crate::error::Error::Invalid(m) if m == "the cron expression is empty")
    );
}

#[test]
fn next_after_six_fields_is_strictly_after() {
    let s = schedule("*/5 * * * * *", "UTC");
    assert_eq!(
        s.next_after(datetime!(2025-06-01 10:00:02 UTC)),
        Some(datetime!(2025-06-01 10:00:05 UTC))
    );
    assert_eq!(
        s.next_after(datetime!(2025-06-01 10:00:05 UTC)),
        Some(datetime!(2025-06-01 10:00:10 UTC))
    );
    assert_eq!(
        s.next_after(datetime!(2025-06-01 10:00:04.5 UTC)),
        Some(datetime!(2025-06-01 10:00:05 UTC))
    );
    assert_eq!(
        s.next_after(datetime!(2025-12-31 23:59:58 UTC)),
        Some(datetime!(2026-01-01 00:00:00 UTC))
    );
    // The answer is a UTC instant whatever offset the question carried.
    let next = s.next_after(datetime!(2025-06-01 12:00:02 +02:00)).unwrap();
    assert_eq!(
        (next, next.offset()),
        (datetime!(2025-06-01 10:00:05 UTC), time::UtcOffset::UTC)
    );
}

#[test]
fn next_after_five_fields_and_names_in_utc_and_in_a_zone() {
    let utc = schedule("30 2 * * *", "UTC");
    assert_eq!(
        utc.next_after(datetime!(2025-06-01 03:00 UTC)),
        Some(datetime!(2025-06-02 02:30 UTC))
    );
    // 02:30 in Berlin in summer (UTC+2) and in winter (UTC+1).
    let berlin = schedule("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        berlin.next_after(datetime!(2025-06-01 03:00 UTC)),
        Some(datetime!(2025-06-02 00:30 UTC))
    );
    assert_eq!(
        berlin.next_after(datetime!(2025-01-10 03:00 UTC)),
        Some(datetime!(2025-01-11 01:30 UTC))
    );
    let daily = schedule("@daily", "Europe/Berlin");
    assert_eq!(
        daily.next_after(datetime!(2025-06-01 12:00 UTC)),
        Some(datetime!(2025-06-01 22:00 UTC))
    );
    let midnight = schedule("@midnight", "Europe/Berlin");
    assert_eq!(
        midnight.next_after(datetime!(2025-06-01 12:00 UTC)),
        Some(datetime!(2025-06-01 22:00 UTC))
    );
    let utc_daily = schedule("@daily", "UTC");
    assert_eq!(
        utc_daily.next_after(datetime!(2025-06-01 00:00 UTC)),
        Some(datetime!(2025-06-02 00:00 UTC))
    );
    let hourly = schedule("@hourly", NEW_YORK);
    assert_eq!(
        hourly.next_after(datetime!(2025-06-01 12:00:01 UTC)),
        Some(datetime!(2025-06-01 13:00 UTC))
    );
    let weekly = schedule("@weekly", "UTC"); // Sundays; 2025-06-01 is one.
    assert_eq!(
        weekly.next_after(datetime!(2025-06-01 00:00 UTC)),
        Some(datetime!(2025-06-08 00:00 UTC))
    );
    let six = schedule("15 30 2 * * *", NEW_YORK); // 02:30:15 EDT
    assert_eq!(
        six.next_after(datetime!(2025-06-01 07:00 UTC)),
        Some(datetime!(2025-06-02 06:30:15 UTC))
    );
}

#[test]
fn daily_run_in_the_skipped_hour_runs_once_when_the_clock_jumps() {
    let s = schedule("30 2 * * *", NEW_YORK);
    assert_eq!(
        ticks(
            &s,
            datetime!(2025-03-08 00:00 UTC),
            datetime!(2025-03-10 23:00 UTC)
        ),
        [
            datetime!(2025-03-08 07:30 UTC), // 02:30 EST
            datetime!(2025-03-09 07:00 UTC), // 03:00 EDT, the jump: once, not zero or twice
            datetime!(2025-03-10 06:30 UTC), // 02:30 EDT
        ]
    );
    let berlin = schedule("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        ticks(
            &berlin,
            datetime!(2025-03-29 12:00 UTC),
            datetime!(2025-03-31 12:00 UTC)
        ),
        [
            datetime!(2025-03-30 01:00 UTC),
            datetime!(2025-03-31 00:30 UTC)
        ]
    );
}

#[test]
fn daily_run_in_the_repeated_hour_runs_once_on_the_first_pass() {
    let s = schedule("30 1 * * *", NEW_YORK);
    assert_eq!(
        ticks(
            &s,
            datetime!(2025-11-01 00:00 UTC),
            datetime!(2025-11-03 23:00 UTC)
        ),
        [
            datetime!(2025-11-01 05:30 UTC), // 01:30 EDT
            datetime!(2025-11-02 05:30 UTC), // 01:30 EDT, the first pass; not 06:30Z (EST) too
            datetime!(2025-11-03 06:30 UTC), // 01:30 EST
        ]
    );
    // Asked from between the two passes, too.
    assert_eq!(
        s.next_after(datetime!(2025-11-02 06:10 UTC)),
        Some(datetime!(2025-11-03 06:30 UTC))
    );
}

#[test]
fn hourly_fires_every_real_hour_through_both_transitions() {
    let s = schedule("0 * * * *", NEW_YORK);
    let fall = ticks(
        &s,
        datetime!(2025-11-02 03:30 UTC),
        datetime!(2025-11-02 08:00 UTC),
    );
    // 00:00 EDT, 01:00 EDT, 01:00 EST (distinct instants, both fire), 02:00 EST, 03:00 EST.
    let hours = [4, 5, 6, 7, 8].map(|h| datetime!(2025-11-02 00:00 UTC) + time::Duration::hours(h));
    assert_eq!(fall, hours);
    let spring = ticks(
        &s,
        datetime!(2025-03-09 04:30 UTC),
        datetime!(2025-03-09 09:00 UTC),
    );
    // 00:00 EST, 01:00 EST, 03:00 EDT (02:00 never happens), 04:00 EDT, 05:00 EDT.
    let hours = [5, 6, 7, 8, 9].map(|h| datetime!(2025-03-09 00:00 UTC) + time::Duration::hours(h));
    assert_eq!(spring, hours);
}

#[test]
fn every_five_seconds_has_no_gap_or_duplicate_through_both_transitions() {
    let s = schedule("*/5 * * * * *", NEW_YORK);
    for (from, until) in [
        (
            datetime!(2025-03-09 06:00 UTC),
            datetime!(2025-03-09 08:00 UTC),
        ),
        (
            datetime!(2025-11-02 05:00 UTC),
            datetime!(2025-11-02 07:00 UTC),
        ),
    ] {
        let got = ticks(&s, from, until);
        assert_eq!(got.len(), 2 * 3600 / 5, "{from}");
        assert!(
            got.windows(2)
                .all(|w| w[1] - w[0] == time::Duration::seconds(5))
        );
    }
}

#[test]
fn missed_is_the_last_tick_in_the_downtime() {
    let five = schedule("*/5 * * * *", "UTC");
    // Down 10:00 (its last run) to 10:12: 10:05 and 10:10 were missed; one run, for 10:10.
    assert_eq!(
        five.missed(
            datetime!(2025-06-01 10:00 UTC),
            datetime!(2025-06-01 10:12 UTC)
        ),
        Some(datetime!(2025-06-01 10:10 UTC))
    );
    // A tick at `now` itself counts; one at `last` does not.
    assert_eq!(
        five.missed(
            datetime!(2025-06-01 10:00 UTC),
            datetime!(2025-06-01 10:05 UTC)
        ),
        Some(datetime!(2025-06-01 10:05 UTC))
    );
    assert_eq!(
        five.missed(
            datetime!(2025-06-01 10:00 UTC),
            datetime!(2025-06-01 10:04:59 UTC)
        ),
        None
    );
    let daily = schedule("30 2 * * *", "UTC");
    // Down three days: three ticks missed, one run, for the latest (less than a day ago).
    assert_eq!(
        daily.missed(
            datetime!(2025-06-01 02:30 UTC),
            datetime!(2025-06-04 12:00 UTC)
        ),
        Some(datetime!(2025-06-04 02:30 UTC))
    );
    // Down an hour with no tick in it.
    assert_eq!(
        daily.missed(
            datetime!(2025-06-01 05:00 UTC),
            datetime!(2025-06-01 06:00 UTC)
        ),
        None
    );
    // A clock that went back.
    assert_eq!(
        daily.missed(
            datetime!(2025-06-04 12:00 UTC),
            datetime!(2025-06-01 12:00 UTC)
        ),
        None
    );
}

#[test]
fn missed_after_a_day_of_downtime_on_every_five_seconds() {
    // A backward search, not 17,280 steps.
    let s = schedule("*/5 * * * * *", "Europe/Berlin");
    assert_eq!(
        s.missed(
            datetime!(2025-06-01 00:00 UTC),
            datetime!(2025-06-02 00:00:02.5 UTC)
        ),
        Some(datetime!(2025-06-02 00:00 UTC))
    );
}

#[test]
fn missed_across_dst_sees_the_ticks_next_after_sees() {
    let nights = [
        (
            datetime!(2025-03-08 00:00 UTC),
            datetime!(2025-03-10 12:00 UTC),
        ),
        (
            datetime!(2025-11-01 00:00 UTC),
            datetime!(2025-11-03 12:00 UTC),
        ),
    ];
    for expression in ["30 2 * * *", "30 1 * * *", "0 * * * *", "*/10 * * * *"] {
        let s = schedule(expression, NEW_YORK);
        for (from, until) in nights {
            let got = ticks(&s, from, until);
            for w in got.windows(2) {
                assert_eq!(s.missed(w[0], w[1]), Some(w[1]), "{expression} at {}", w[1]);
                let before = w[1] - time::Duration::SECOND;
                assert_eq!(s.missed(w[0], before), None, "{expression} at {before}");
            }
        }
    }
    // Restarted between the two passes of 01:00–02:00: the daily 01:30 already ran on the first.
    let s = schedule("30 1 * * *", NEW_YORK);
    assert_eq!(
        s.missed(
            datetime!(2025-11-02 05:30 UTC),
            datetime!(2025-11-02 06:45 UTC)
        ),
        None
    );
    // ... the hourly one has a tick on the second pass to make up for.
    let s = schedule("0 * * * *", NEW_YORK);
    assert_eq!(
        s.missed(
            datetime!(2025-11-02 05:00 UTC),
            datetime!(2025-11-02 06:10 UTC)
        ),
        Some(datetime!(2025-11-02 06:00 UTC))
    );
}
