//! The result table: one row per (server, client, connections), medians over runs, ratios to the
//! anchor (qemu-nbd) and to the protocol ceiling (nbdkit null) measured with the same client, and
//! to the storage floor (dd writing the same bytes into a new file on the same filesystem).

use std::fmt::Write as _;

use crate::stats::Summary;

/// Figures of one successful run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// The round (1-based) it was measured in. Every round runs each combination once, back to
    /// back, so ratios are taken between runs of the same round: on a shared machine the speed of
    /// the whole machine drifts between rounds more than between neighbouring runs.
    pub round: usize,
    pub gib_per_s: f64,
    /// Server CPU seconds (user + system) per GiB copied.
    pub server_cpu_per_gib: f64,
    /// Client CPU seconds per GiB copied.
    pub client_cpu_per_gib: f64,
    /// Server peak resident set, MiB.
    pub server_peak_rss_mib: f64,
}

/// All runs of one combination.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub server: String,
    pub client: String,
    pub conns: usize,
    /// Why the combination was not run (peer not installed), if so.
    pub missing: Option<String>,
    pub runs: Vec<Measurement>,
    /// One line per failed run.
    pub failures: Vec<String>,
}

impl Row {
    pub fn throughput(&self) -> Option<Summary> {
        Summary::of(&self.runs.iter().map(|m| m.gib_per_s).collect::<Vec<_>>())
    }
}

/// Median over the rounds both rows ran of `row`'s throughput over `base`'s.
fn paired_ratio(row: &Row, base: &Row) -> Option<f64> {
    let ratios: Vec<f64> = row
        .runs
        .iter()
        .filter_map(|m| {
            let b = base.runs.iter().find(|b| b.round == m.round)?;
            Some(m.gib_per_s / b.gib_per_s)
        })
        .collect();
    Summary::of(&ratios).map(|s| s.median)
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "-".to_string(),
    }
}

/// The servers the ratios are taken against: `anchor` and the first of `ceilings` that ran with
/// the same client and connection count, `storage` (a row whatever its client) for every row.
pub struct Refs<'a> {
    pub anchor: &'a str,
    pub ceilings: &'a [&'a str],
    pub storage: &'a str,
}

/// Ends the name of a server row over TLS; its "vs anchor" column uses the anchor's TLS row.
pub const TLS_SUFFIX: &str = "-tls";

/// Markdown table with a ratio column per reference.
pub fn render(rows: &[Row], refs: &Refs<'_>) -> String {
    let Refs {
        anchor,
        ceilings,
        storage,
    } = *refs;
    let ceiling = ceilings.join(" / ");
    let find = |server: &str, client: &str, conns: usize| {
        rows.iter()
            .find(|r| r.server == server && r.client == client && r.conns == conns)
    };
    let storage_row = rows.iter().find(|r| r.server == storage);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| server | client | conns | GiB/s median | spread (min-max) | vs {anchor} | vs {ceiling} | vs {storage} | server CPU s/GiB | client CPU s/GiB | server peak RSS MiB | runs ok |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for row in rows {
        let total = row.runs.len() + row.failures.len();
        if let Some(why) = &row.missing {
            let _ = writeln!(
                out,
                "| {} | {} | {} | missing | {why} | - | - | - | - | - | - | 0/0 |",
                row.server, row.client, row.conns
            );
            continue;
        }
        let tp = row.throughput();
        let ratio = |other: &str| paired_ratio(row, find(other, &row.client, row.conns)?);
        // A row over TLS is compared with the anchor over TLS, when that ran.
        let tls_anchor = format!("{anchor}{TLS_SUFFIX}");
        let row_anchor = if row.server.ends_with(TLS_SUFFIX)
            && find(&tls_anchor, &row.client, row.conns).is_some()
        {
            tls_anchor.as_str()
        } else {
            anchor
        };
        let ceiling_ratio = ceilings
            .iter()
            .find_map(|c| find(c, &row.client, row.conns))
            .and_then(|c| paired_ratio(row, c));
        let med = |f: fn(&Measurement) -> f64| {
            Summary::of(&row.runs.iter().map(f).collect::<Vec<_>>()).map(|s| s.median)
        };
        let peak_rss = row
            .runs
            .iter()
            .map(|m| m.server_peak_rss_mib)
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        let spread = tp.map_or("-".to_string(), |s| format!("{:.2}-{:.2}", s.min, s.max));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |",
            row.server,
            row.client,
            row.conns,
            fmt_opt(tp.map(|s| s.median), 2),
            spread,
            fmt_opt(ratio(row_anchor), 2),
            fmt_opt(ceiling_ratio, 2),
            fmt_opt(storage_row.and_then(|s| paired_ratio(row, s)), 2),
            fmt_opt(med(|m| m.server_cpu_per_gib), 2),
            fmt_opt(med(|m| m.client_cpu_per_gib), 2),
            fmt_opt(peak_rss, 0),
            row.runs.len(),
            total,
        );
    }
    let failures: Vec<_> = rows
        .iter()
        .flat_map(|r| r.failures.iter().map(move |f| (r, f)))
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "\nFailed runs (not counted above):");
        for (r, f) in failures {
            let _ = writeln!(
                out,
                "- {} / {} / {} conns: {f}",
                r.server, r.client, r.conns
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFS: Refs<'static> = Refs {
        anchor: "qemu-nbd",
        ceilings: &["nbdkit-null", "nbdkit-pattern"],
        storage: "dd",
    };

    fn m(round: usize, gib_per_s: f64) -> Measurement {
        Measurement {
            round,
            gib_per_s,
            server_cpu_per_gib: 0.5,
            client_cpu_per_gib: 0.25,
            server_peak_rss_mib: 40.0,
        }
    }

    fn row(server: &str, runs: &[f64]) -> Row {
        Row {
            server: server.into(),
            client: "nbdcopy".into(),
            conns: 1,
            runs: runs.iter().enumerate().map(|(i, &g)| m(i + 1, g)).collect(),
            ..Row::default()
        }
    }

    #[test]
    fn ratios_against_anchor_and_ceiling() {
        let rows = vec![
            row("ours", &[2.0, 2.2, 1.8]),
            row("qemu-nbd", &[0.8, 0.8, 0.8]),
            row("nbdkit-null", &[2.5]),
            Row {
                client: "dd bs=2M".into(),
                ..row("dd", &[4.0])
            },
        ];
        let t = render(&rows, &REFS);
        let ours = t.lines().find(|l| l.starts_with("| ours")).unwrap();
        assert_eq!(
            ours,
            "| ours | nbdcopy | 1 | 2.00 | 1.80-2.20 | 2.50 | 0.80 | 0.50 | 0.50 | 0.25 | 40 | 3/3 |"
        );
        let header = t.lines().next().unwrap();
        assert!(header.contains("vs qemu-nbd") && header.contains("vs dd"));
    }

    #[test]
    fn tls_rows_are_compared_with_the_anchor_over_tls() {
        let rows = vec![
            row("qemu-nbd", &[1.0, 1.0]),
            row("ours-tls", &[1.2, 1.2]),
            row("qemu-nbd-tls", &[0.4, 0.4]),
        ];
        let t = render(&rows, &REFS);
        let tls = t.lines().find(|l| l.starts_with("| ours-tls")).unwrap();
        assert!(
            tls.starts_with("| ours-tls | nbdcopy | 1 | 1.20 | 1.20-1.20 | 3.00 |"),
            "{tls}"
        );
        // Without the anchor's TLS row, the plain anchor is the reference.
        let t = render(&rows[..2], &REFS);
        let tls = t.lines().find(|l| l.starts_with("| ours-tls")).unwrap();
        assert!(tls.contains("| 1.20 |"), "{tls}");
    }

    #[test]
    fn read_rows_take_the_ceiling_that_ran_with_their_client() {
        let read = |server: &str, runs: &[f64]| Row {
            client: "nbdcopy read".into(),
            ..row(server, runs)
        };
        let rows = vec![
            row("nbdkit-null", &[4.0]),
            read("ours", &[1.0]),
            read("nbdkit-pattern", &[2.0]),
        ];
        let t = render(&rows, &REFS);
        let ours = t.lines().find(|l| l.starts_with("| ours")).unwrap();
        assert!(
            ours.starts_with("| ours | nbdcopy read | 1 | 1.00 | 1.00-1.00 | - | 0.50 |"),
            "{ours}"
        );
        assert!(
            t.lines()
                .next()
                .unwrap()
                .contains("vs nbdkit-null / nbdkit-pattern")
        );
    }

    #[test]
    fn ratios_pair_runs_of_the_same_round() {
        // Round 2 ran while the machine was busy for qemu-nbd, round 3 for ours: the ratio of
        // medians would say 1.0, the runs side by side say 2.
        let ours = row("ours", &[1.0, 2.0, 4.0]);
        let anchor = row("qemu-nbd", &[0.5, 4.0, 2.0]);
        assert_eq!(paired_ratio(&ours, &anchor), Some(2.0));
        // A round that failed for one side is left out, not paired with another round.
        let mut gap = row("ours", &[1.0, 3.0]);
        gap.runs[1].round = 3;
        assert_eq!(paired_ratio(&gap, &anchor), Some(1.75));
        assert_eq!(paired_ratio(&row("ours", &[]), &anchor), None);
    }

    #[test]
    fn missing_and_failed_runs_are_shown_not_faked() {
        let mut failed = row("ours", &[]);
        failed.failures.push("image differs from source".into());
        let missing = Row {
            server: "qemu-nbd".into(),
            client: "nbdcopy".into(),
            conns: 1,
            missing: Some("qemu-nbd not found in PATH".into()),
            ..Row::default()
        };
        let t = render(&[failed, missing], &REFS);
        assert!(t.contains("| ours | nbdcopy | 1 | - | - | - | - | - | - | - | - | 0/1 |"));
        assert!(t.contains("| qemu-nbd | nbdcopy | 1 | missing | qemu-nbd not found in PATH |"));
        assert!(t.contains("- ours / nbdcopy / 1 conns: image differs from source"));
    }
}
