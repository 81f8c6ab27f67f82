//! `twtr bench report`: turns the `results.json` of one or more runs into a Markdown report
//! with the targets checked, a table per run and two SVG plots per run beside it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::plot;
use crate::run::Results;

/// `twtr bench report` options.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ReportArgs {
    /// `<label>.json` files written by `twtr bench run`; the first is checked against the
    /// targets (the embedded default).
    #[arg(long, value_delimiter = ',', required = true)]
    pub results: Vec<PathBuf>,
    /// The Markdown file to write; plots go into a folder of the same name without `.md`.
    #[arg(long)]
    pub out: PathBuf,
    /// Markdown appended as it is (where the time goes, what would close a gap).
    #[arg(long)]
    pub notes: Option<PathBuf>,
    /// A line about the machine and what else ran on it, for the header.
    #[arg(long, default_value = "")]
    pub machine: String,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for path in &args.results {
        let bytes =
            std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
        let results: Results = serde_json::from_slice(&bytes)
            .with_context(|| format!("invalid results in {}", path.display()))?;
        runs.push(results);
    }
    let plots_dir = args.out.with_extension("");
    std::fs::create_dir_all(&plots_dir)
        .with_context(|| format!("failed to create {}", plots_dir.display()))?;
    let folder = plots_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut plots = Vec::new();
    for results in &runs {
        let time = format!("{}-latency-over-time.svg", results.label);
        let dist = format!("{}-latency-distribution.svg", results.label);
        plot::latency_over_time(results, &plots_dir.join(&time))?;
        plot::latency_distribution(results, &plots_dir.join(&dist))?;
        let flames = FLAMES
            .iter()
            .map(|(op, _)| format!("{}-flame-{op}.svg", results.label))
            .filter(|name| plots_dir.join(name).is_file())
            .map(|name| format!("{folder}/{name}"))
            .collect();
        plots.push(Figures {
            time: format!("{folder}/{time}"),
            distribution: format!("{folder}/{dist}"),
            flames,
        });
    }
    let notes = match &args.notes {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("failed to read {}", path.display()))?,
        ),
        None => None,
    };
    let markdown = render(&runs, &plots, &args.machine, notes.as_deref());
    write(&args.out, &markdown)?;
    println!("report in {}", args.out.display());
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))
}

/// One row of the targets table.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub target: String,
    /// The measured value per run, formatted; "n/a" where not measured.
    pub measured: Vec<String>,
    /// Whether the first run meets it (`None`: not measured).
    pub met: Option<bool>,
}

fn phase<'a>(r: &'a Results, phase: &str, op: &str) -> Option<&'a crate::hist::Summary> {
    r.phases
        .iter()
        .find(|p| p.phase == phase && p.op == op)
        .map(|p| &p.summary)
}

fn ceiling(r: &Results) -> Option<f64> {
    phase(r, "ceiling", "feed page").map(|s| s.throughput)
}

/// Throughput as a share of the same run's ceiling.
pub fn share_of_ceiling(r: &Results, throughput: f64) -> Option<f64> {
    ceiling(r).filter(|c| *c > 0.0).map(|c| throughput / c)
}

/// The worst post-to-feed p99 over the authors measured (up to `max_followers`).
/// The `q`th percentile of `s` in milliseconds, or `n/a` without samples.
fn ms_at(s: &crate::hist::Summary, q: f64) -> String {
    s.at(q)
        .map_or_else(|| "n/a".into(), |x: f64| format!("{x:.1} ms"))
}

fn visibility_p99(r: &Results, max_followers: u32) -> Option<f64> {
    r.visibility
        .iter()
        .filter(|v| v.author_followers <= max_followers && v.summary.ok > 0)
        .filter_map(|v| v.summary.at(99.0))
        .reduce(f64::max)
}

/// The targets (issue 22's, and those of issue 10 it kept), checked against `runs[0]` and shown
/// for every run.
pub fn checks(runs: &[Results]) -> Vec<Check> {
    type Measure = Box<dyn Fn(&Results) -> Option<f64>>;
    type Meets = Box<dyn Fn(f64) -> bool>;
    type Show = Box<dyn Fn(&Results, f64) -> String>;
    let rows: Vec<(String, Measure, Meets, Show)> = vec![
        (
            "hydrated feed reads ≥ 15% of the ceiling".into(),
            Box::new(|r| {
                phase(r, "feed-max", "feed").and_then(|s| share_of_ceiling(r, s.throughput))
            }),
            Box::new(|v| v >= 0.15),
            Box::new(|r, v| {
                let reads = phase(r, "feed-max", "feed").map_or(0.0, |s| s.throughput);
                format!("{:.1}% ({reads:.0}/s)", v * 100.0)
            }),
        ),
        (
            "feed p99 ≤ 5 ms at 2,000 reads/s".into(),
            Box::new(|r| phase(r, "feed-rate", "feed").and_then(|s| s.at(99.0))),
            Box::new(|v| v <= 5.0),
            Box::new(|_, v| format!("{v:.2} ms")),
        ),
        (
            "posts ≥ 3,000/s (authors with ~100 followers)".into(),
            Box::new(|r| phase(r, "posts", "post").map(|s| s.throughput)),
            Box::new(|v| v >= 3_000.0),
            Box::new(|_, v| format!("{v:.0}/s")),
        ),
        (
            "fan-out ≥ 100,000 feed entries/s (embedded; CQL ≥ 30,000/s)".into(),
            Box::new(|r| r.fanout.as_ref().map(|f| f.entries_per_sec)),
            Box::new(|v| v >= 100_000.0),
            Box::new(|_, v| format!("{v:.0}/s")),
        ),
        (
            "post-to-feed p99 ≤ 50 ms in-process / ≤ 250 ms RabbitMQ (≤ 10,000 followers)".into(),
            Box::new(|r| visibility_p99(r, 10_000)),
            Box::new(|v| v <= 50.0),
            Box::new(|_, v| format!("{v:.1} ms")),
        ),
        (
            "resident memory ≤ 60 MB idle".into(),
            Box::new(|r| r.rss_idle_mb),
            Box::new(|v| v <= 60.0),
            Box::new(|_, v| format!("{v:.0} MB")),
        ),
        (
            "resident memory ≤ 250 MB under the benchmark".into(),
            Box::new(|r| r.rss_peak_mb),
            Box::new(|v| v <= 250.0),
            Box::new(|_, v| format!("{v:.0} MB")),
        ),
        (
            "feed under 1,000 connections: accepted p99 ≤ 100 ms, excess shed at once".into(),
            Box::new(|r| phase(r, "overload", "feed").and_then(|s| s.at(99.0))),
            Box::new(|v| v <= 100.0),
            Box::new(|r, v| {
                let shed = phase(r, "overload", "feed").map_or(0, |s| s.shed);
                format!("p99 {v:.1} ms, {shed} shed")
            }),
        ),
    ];
    rows.into_iter()
        .map(|(target, measure, meets, show)| Check {
            measured: runs
                .iter()
                .map(|r| measure(r).map_or_else(|| "n/a".to_owned(), |v| show(r, v)))
                .collect(),
            met: runs.first().and_then(&measure).map(&meets),
            target,
        })
        .collect()
}

/// The flame graphs `scripts/bench.sh` may leave beside the plots, as
/// `<label>-flame-<op>.svg`, with what each profiled.
pub const FLAMES: [(&str, &str); 2] = [
    ("feed", "hydrated feed reads (the feed-max phase)"),
    ("post", "posts and their fan-out (the posts phase)"),
];

/// The figures of one run, as paths relative to the report.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub time: String,
    pub distribution: String,
    /// Flame graphs, in the order of [`FLAMES`] (those present).
    pub flames: Vec<String>,
}

/// The whole report.
pub fn render(runs: &[Results], plots: &[Figures], machine: &str, notes: Option<&str>) -> String {
    let mut md = String::new();
    let date = runs
        .first()
        .map_or("", |r| r.started_at.get(..10).unwrap_or(""));
    let _ = writeln!(md, "# twtr benchmark, {date}\n");
    let _ = writeln!(
        md,
        "Generated by `scripts/bench.sh` (`twtr seed`, `twtr bench run`, `twtr bench report`). \
         Every request goes over loopback HTTP to the gateway, which calls the services over \
         real gRPC. The load generator runs on the same machine as the mesh and competes with \
         it for the same cores.\n"
    );
    if !machine.is_empty() {
        let _ = writeln!(md, "Machine: {machine}\n");
    }
    let _ = writeln!(md, "## Targets\n");
    let _ = write!(
        md,
        "| target | met ({}) |",
        runs.first().map_or("", |r| r.label.as_str())
    );
    for r in runs {
        let _ = write!(md, " {} |", r.label);
    }
    let _ = write!(md, "\n|---|---|");
    for _ in runs {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for check in checks(runs) {
        let met = match check.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = write!(md, "| {} | {met} |", check.target);
        for value in &check.measured {
            let _ = write!(md, " {value} |");
        }
        md.push('\n');
    }
    md.push('\n');
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(md, "## {}\n", r.label);
        let _ = writeln!(
            md,
            "{} users, {} follows, {} seeded tweets; {} s per phase, {} connections in the \
             closed loops; load average at the start: {}; started {}.\n",
            r.users,
            r.follows,
            r.seeded_tweets,
            r.duration_secs,
            r.connections,
            r.load_average,
            r.started_at
        );
        let _ = writeln!(
            md,
            "| phase | operation | mode | throughput | share of ceiling | p50 | p90 | p99 | p99.9 | max | errors | shed |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for p in &r.phases {
            let s = &p.summary;
            let share = share_of_ceiling(r, s.throughput)
                .map_or_else(|| "n/a".into(), |v| format!("{:.1}%", v * 100.0));
            let ms = |q| {
                s.at(q)
                    .map_or_else(|| "n/a".into(), |v: f64| format!("{v:.2} ms"))
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0}/s | {share} | {} | {} | {} | {} | {:.2} ms | {} | {} |",
                p.phase,
                p.op,
                p.mode,
                s.throughput,
                ms(50.0),
                ms(90.0),
                ms(99.0),
                ms(99.9),
                s.max_ms,
                s.errors,
                s.shed
            );
        }
        if let Some(f) = &r.fanout {
            let _ = writeln!(
                md,
                "\nFan-out: {} posts by authors with ~100 followers put {} entries into feeds in \
                 {:.1} s (from the first post until the last posts were in their followers' \
                 feeds): **{:.0} entries/s**{}.",
                f.posts,
                f.entries,
                f.seconds,
                f.entries_per_sec,
                if f.drained {
                    ""
                } else {
                    " (the drain timed out: a lower bound)"
                }
            );
        }
        if !r.visibility.is_empty() {
            let _ = writeln!(
                md,
                "\nPost-to-feed visibility (from the post's 201 to its appearance in each \
                 watched follower's feed):\n\n| author's followers | samples | p50 | p90 | p99 | max | missed |\n|---|---|---|---|---|---|---|"
            );
            for v in &r.visibility {
                let s = &v.summary;
                let ms = |q| ms_at(s, q);
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {:.1} ms | {} |",
                    v.author_followers,
                    s.ok,
                    ms(50.0),
                    ms(90.0),
                    ms(99.0),
                    s.max_ms,
                    s.errors
                );
            }
        }
        if let Some(v) = &r.live {
            let s = &v.summary;
            let ms = |q| ms_at(s, q);
            let _ = writeln!(
                md,
                "\nLive feed (`GET /v1/feed/stream`), from sending a post to the `tweet` event on \
                 each open stream ({} of the author's {} followers): {} samples, p50 {}, p90 {}, \
                 p99 {}, max {:.1} ms, missed {}.",
                v.tier,
                v.author_followers,
                s.ok,
                ms(50.0),
                ms(90.0),
                ms(99.0),
                s.max_ms,
                s.errors
            );
        }
        let mem = |v: Option<f64>| v.map_or_else(|| "n/a".into(), |mb| format!("{mb:.0} MB"));
        let _ = writeln!(
            md,
            "\nResident memory of the mesh: {} idle, {} peak under load.\n",
            mem(r.rss_idle_mb),
            mem(r.rss_peak_mb)
        );
        for p in &r.phases {
            if !p.summary.error_samples.is_empty() {
                let _ = writeln!(
                    md,
                    "Errors in {} {}: {}\n",
                    p.phase,
                    p.op,
                    p.summary.error_samples.join("; ")
                );
            }
        }
        if let Some(figures) = plots.get(i) {
            let _ = writeln!(md, "![{} latency over time]({})\n", r.label, figures.time);
            let _ = writeln!(
                md,
                "![{} latency distribution]({})\n",
                r.label, figures.distribution
            );
            for flame in &figures.flames {
                let what = FLAMES
                    .iter()
                    .find(|(op, _)| flame.ends_with(&format!("-flame-{op}.svg")))
                    .map_or("", |(_, what)| what);
                let _ = writeln!(
                    md,
                    "Flame graph of the mesh process, {what} ([interactive]({flame})): \
                     `perf record -g` on `twtr all` during a second, unmeasured run of the \
                     phase.\n\n![{} flame graph: {what}]({flame})\n",
                    r.label
                );
            }
        }
    }
    if let Some(notes) = notes {
        md.push_str(notes.trim_end());
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hist::Recorder;
    use crate::run::{Fanout, Phase};
    use std::time::Duration;

    fn summary(per_second: u64, latency_ms: u64) -> crate::hist::Summary {
        let mut r = Recorder::new();
        for _ in 0..per_second {
            r.record(0, Duration::from_millis(latency_ms));
        }
        r.summary(Duration::from_secs(1))
    }

    fn results(label: &str, feed: u64) -> Results {
        let phase = |phase: &str, op: &str, s| Phase {
            phase: phase.into(),
            op: op.into(),
            mode: "closed".into(),
            summary: s,
        };
        Results {
            label: label.into(),
            url: String::new(),
            started_at: "2026-11-23T16:00:00Z".into(),
            users: 10,
            follows: 20,
            seeded_tweets: 30,
            duration_secs: 1,
            connections: 4,
            phases: vec![
                phase("ceiling", "feed page", summary(40_000, 1)),
                phase("feed-max", "feed", summary(feed, 3)),
                phase("feed-rate", "feed", summary(2_000, 7)),
            ],
            fanout: Some(Fanout {
                posts: 1,
                entries: 200_000,
                seconds: 1.0,
                entries_per_sec: 200_000.0,
                drained: true,
            }),
            visibility: Vec::new(),
            live: None,
            rss_idle_mb: Some(40.0),
            rss_peak_mb: None,
            load_average: String::new(),
        }
    }

    #[test]
    fn targets_are_checked_against_the_first_run_and_shown_for_all() {
        let runs = vec![results("embedded", 12_000), results("cql", 1_000)];
        let checks = checks(&runs);
        let row = |name: &str| {
            checks
                .iter()
                .find(|c| c.target.starts_with(name))
                .unwrap()
                .clone()
        };
        assert_eq!(row("hydrated feed reads").met, Some(true));
        assert_eq!(
            row("hydrated feed reads").measured,
            vec!["30.0% (12000/s)", "2.5% (1000/s)"]
        );
        assert_eq!(row("feed p99").met, Some(false));
        assert_eq!(row("fan-out").met, Some(true));
        assert_eq!(row("posts").met, None, "not measured");
        assert_eq!(row("resident memory ≤ 250").measured, vec!["n/a", "n/a"]);
        assert_eq!(row("feed under 1,000").met, None, "not measured");
    }

    #[test]
    fn the_overload_phase_reports_accepted_latency_and_shed_requests_apart() {
        let mut r = Recorder::new();
        for _ in 0..3_000 {
            r.record(0, Duration::from_millis(40));
        }
        for _ in 0..7_000 {
            r.shed();
        }
        let mut run = results("embedded", 12_000);
        run.phases.push(Phase {
            phase: "overload".into(),
            op: "feed".into(),
            mode: "closed, 1000 connections".into(),
            summary: r.summary(Duration::from_secs(1)),
        });
        let runs = vec![run];
        let check = checks(&runs)
            .into_iter()
            .find(|c| c.target.starts_with("feed under 1,000 connections"))
            .unwrap();
        assert_eq!(check.met, Some(true));
        assert_eq!(check.measured, vec!["p99 40.0 ms, 7000 shed"]);
        let md = render(&runs, &[], "", None);
        assert!(
            md.contains("| overload | feed | closed, 1000 connections | 3000/s |"),
            "{md}"
        );
        assert!(md.contains("| 40.03 ms | 0 | 7000 |"), "{md}");
    }

    #[test]
    fn the_report_has_a_table_per_run_and_links_its_plots() {
        let runs = vec![results("embedded", 12_000)];
        let plots = vec![Figures {
            time: "d/a.svg".to_owned(),
            distribution: "d/b.svg".to_owned(),
            flames: vec!["d/embedded-flame-post.svg".to_owned()],
        }];
        let md = render(&runs, &plots, "2 cores", Some("## Notes\nslow disk"));
        assert!(md.contains("# twtr benchmark, 2026-11-23"));
        assert!(md.contains("| feed-max | feed | closed | 12000/s | 30.0% |"));
        assert!(md.contains("![embedded latency over time](d/a.svg)"));
        assert!(md.contains(
            "![embedded flame graph: posts and their fan-out (the posts phase)]\
             (d/embedded-flame-post.svg)"
        ));
        assert!(md.ends_with("slow disk\n"));
    }
}
