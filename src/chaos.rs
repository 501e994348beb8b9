//! `keelson chaos`: runs fault scenarios against clusters it starts itself,
//! prints what the checkers found, and writes the figures into
//! `docs/reliability.md`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use keelson_chaos::scenario::{self, Options, Outcome, Scenario};
use keelson_chaos::store;

#[derive(Debug, clap::Args)]
pub(crate) struct ChaosArgs {
    /// Scenarios: a name, names separated by commas, `all`, or `smoke` (the
    /// short set CI runs). `--list` shows them.
    #[arg(long, default_value = "smoke")]
    scenario: String,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Seed of every random choice (default: from the clock; printed, with
    /// the command that repeats a failing run).
    #[arg(long)]
    seed: Option<u64>,
    /// How long each scenario injects faults.
    #[arg(long, default_value = "30s", value_parser = crate::server::parse_duration)]
    duration: Duration,
    /// Runs of each scenario, with seeds SEED, SEED+1, …
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Concurrent etcd-API clients in store scenarios.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// An extra flag for every member (repeatable).
    #[arg(long = "server-flag", allow_hyphen_values = true)]
    server_flags: Vec<String>,
    /// Keep each scenario's cluster and logs (`keelson delete -p chaos-NAME`).
    #[arg(long)]
    keep: bool,
    /// Write the results table into this file, between its
    /// `<!-- chaos:begin -->` and `<!-- chaos:end -->` lines.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn selected(which: &str) -> anyhow::Result<Vec<Scenario>> {
    let all = scenario::all();
    match which {
        "all" => Ok(all),
        "smoke" => Ok(all.into_iter().filter(|s| s.smoke).collect()),
        names => names
            .split(',')
            .map(|name| {
                all.iter()
                    .find(|s| s.name == name.trim())
                    .cloned()
                    .with_context(|| {
                        format!("no scenario {name:?}; `keelson chaos --list` shows them")
                    })
            })
            .collect(),
    }
}

/// Nearest-rank percentile of `values` (sorted here), if any.
fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

fn p50_p99(values: &[f64], scale: f64, digits: usize) -> String {
    match (percentile(values, 50.0), percentile(values, 99.0)) {
        (Some(p50), Some(p99)) => format!("{:.digits$} / {:.digits$}", p50 / scale, p99 / scale),
        _ => "—".into(),
    }
}

/// A scenario's runs.
type Row = (Scenario, Vec<Result<Outcome, String>>);

/// One row per scenario (its runs summed), as Markdown.
fn table(rows: &[Row]) -> String {
    let mut text = String::from(
        "| scenario | runs | faults | operations checked | violations | acknowledged writes lost | write unavailable p50 / p99 (ms) | time to heal p50 / p99 (s) | result |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for (scenario, runs) in rows {
        let done: Vec<&Outcome> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
        let sum = |f: &dyn Fn(&Outcome) -> usize| done.iter().map(|o| f(o)).sum::<usize>();
        let all = |f: &dyn Fn(&Outcome) -> &Vec<f64>| -> Vec<f64> {
            done.iter().flat_map(|o| f(o).iter().copied()).collect()
        };
        let errors: Vec<&String> = runs.iter().filter_map(|r| r.as_ref().err()).collect();
        let result = if let Some(error) = errors.first() {
            format!(
                "**ERROR** ({} of {}): {}",
                errors.len(),
                runs.len(),
                error.replace('|', "/").lines().next().unwrap_or("")
            )
        } else if done.iter().any(|o| o.failed()) {
            "**FAILED**".to_owned()
        } else if let Some(reason) = done.iter().find_map(|o| o.skipped.as_ref()) {
            format!("skipped: {}", reason.replace('|', "/"))
        } else {
            "ok".to_owned()
        };
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {result} |\n",
            scenario.name,
            runs.len(),
            sum(&|o| o.windows.len()),
            sum(&|o| o.checked),
            sum(&|o| o.violations.len()),
            sum(&|o| o.lost.len()),
            p50_p99(&all(&|o| &o.unavailable_ms), 1.0, 0),
            p50_p99(&all(&|o| &o.heal_ms), 1000.0, 1),
        ));
    }
    text
}

const BEGIN: &str = "<!-- chaos:begin -->";
const END: &str = "<!-- chaos:end -->";

/// Replaces the text between the markers of `path` (appends them if absent).
fn write_report(path: &PathBuf, section: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(begin), Some(end)) if begin < end => {
            format!("{}{BEGIN}\n{section}{}", &old[..begin], &old[end..])
        }
        _ => format!("{old}\n{BEGIN}\n{section}{END}\n"),
    };
    std::fs::write(path, new).with_context(|| format!("cannot write {}", path.display()))
}

/// One run of `scenario`, its verdict printed as it ends.
async fn run_once(scenario: &Scenario, options: &Options) -> Result<Outcome, String> {
    let mut progress = |line: &str| {
        println!("* {line}");
        let _ = std::io::stdout().flush();
    };
    let outcome = scenario::run(scenario, options, &mut progress)
        .await
        .map_err(|e| keelson_control::runtime::chain(&e));
    match &outcome {
        Ok(o) if o.failed() => {
            println!("* {}: FAILED", scenario.name);
            for violation in o.violations.iter().chain(&o.lost).take(20) {
                println!("    {}", violation.replace('\n', "\n    "));
            }
            println!("  reproduce: {}", o.reproduce);
        }
        Ok(o) => println!(
            "* {}: ok — {} operations checked, {} faults",
            scenario.name,
            o.checked,
            o.windows.len()
        ),
        Err(error) => {
            println!("* {}: ERROR {error}", scenario.name);
            println!("  reproduce: {}", scenario::reproduce(scenario, options));
        }
    }
    outcome
}

pub(crate) async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    if args.list {
        for s in scenario::all() {
            let kind = match s.workload {
                scenario::Workload::Store => "store",
                scenario::Workload::Nodes => "nodes",
            };
            let smoke = if s.smoke { "  (smoke)" } else { "" };
            println!("{:<16} {kind:<6} {}{smoke}", s.name, s.about);
        }
        return Ok(());
    }
    let scenarios = selected(&args.scenario)?;
    let missing = keelson_chaos::local::prereq::check();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|m| format!("  - {m}")).collect();
        bail!(
            "this machine is missing:\n{}\n`keelson up --install-deps` installs them",
            list.join("\n")
        );
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let mut options = Options {
        seed,
        duration: args.duration,
        binary: std::env::current_exe().context("cannot find the keelson binary's own path")?,
        server_flags: args.server_flags,
        keep: args.keep,
        store: store::Config {
            clients: args.clients,
            ..store::Config::default()
        },
    };
    let runs = args.runs.max(1);
    println!(
        "* keelson chaos: {} scenario(s), {runs} run(s) each from seed {seed}, faults for {} s each",
        scenarios.len(),
        args.duration.as_secs()
    );
    let mut rows: Vec<Row> = Vec::new();
    for scenario in scenarios {
        let mut outcomes = Vec::new();
        for run in 0..runs {
            options.seed = seed.wrapping_add(run);
            outcomes.push(run_once(&scenario, &options).await);
        }
        rows.push((scenario, outcomes));
    }
    let table = table(&rows);
    println!("\n{table}");
    if let Some(path) = &args.report {
        let command: Vec<String> = std::env::args().collect();
        let seeds = if runs == 1 {
            format!("seed {seed}")
        } else {
            format!("seeds {seed} to {}", seed.wrapping_add(runs - 1))
        };
        let section = format!(
            "Measured on {} with `keelson {}` ({seeds}):\n\n{table}",
            chrono::Utc::now().format("%Y-%m-%d"),
            command
                .iter()
                .skip(1)
                .cloned()
                .collect::<Vec<_>>()
                .join(" "),
        );
        write_report(path, &section)?;
        println!("* written to {}", path.display());
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|(_, runs)| {
            runs.iter()
                .any(|o| o.as_ref().map_or(true, Outcome::failed))
        })
        .map(|(s, _)| s.name)
        .collect();
    if !failed.is_empty() {
        bail!("{} scenario(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn the_report_replaces_only_its_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reliability.md");
        std::fs::write(&path, format!("# Title\n\n{BEGIN}\nold\n{END}\n\nafter\n")).unwrap();
        write_report(&path, "new\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("# Title\n\n{BEGIN}\nnew\n{END}\n\nafter\n"));
    }

    #[test]
    fn scenarios_are_selected_by_name() {
        assert!(selected("smoke").unwrap().iter().all(|s| s.smoke));
        assert_eq!(selected("kill-leader,minority").unwrap().len(), 2);
        assert!(selected("nope").is_err());
    }
}
