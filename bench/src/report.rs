//! Results as JSON, and `compare OLD NEW`: every benchmark records its figures here as it
//! prints them; `--json FILE` writes them (with the commit and the machine) so that a release
//! can be checked against the last one.

use std::sync::Mutex;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

/// Which way a figure improves.
#[derive(Clone, Copy)]
pub enum Better {
    Higher,
    Lower,
}

static FIGURES: Mutex<Vec<Value>> = Mutex::new(Vec::new());

/// Records one figure of the running benchmark.
pub fn figure(name: impl Into<String>, value: f64, unit: &str, better: Better) {
    let better = match better {
        Better::Higher => "higher",
        Better::Lower => "lower",
    };
    if let Ok(mut figures) = FIGURES.lock() {
        figures.push(json!({"name": name.into(), "value": value, "unit": unit, "better": better}));
    }
}

/// The req/s, p50 and p99 of one load run, as figures named `what req/s` and so on.
pub fn load_figures(what: &str, r: &crate::load::Report) {
    figure(format!("{what} req/s"), r.rps, "req/s", Better::Higher);
    figure(format!("{what} p50"), r.p50_ms, "ms", Better::Lower);
    figure(format!("{what} p99"), r.p99_ms, "ms", Better::Lower);
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The machine, as `bench/RESULTS.md` names it: CPU model and cores.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{model}, {cores} cores")
}

/// Writes the figures recorded so far to `path`.
pub fn write(path: &str, bench: &str, args: &[String]) -> Result<()> {
    let figures = FIGURES.lock().map(|f| f.clone()).unwrap_or_default();
    let report = json!({
        "bench": bench,
        "args": args,
        "commit": command_line("git", &["-C", &crate::repo_root().display().to_string(), "rev-parse", "--short", "HEAD"]),
        "date": command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "machine": machine(),
        "figures": figures,
    });
    std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n").with_context(|| format!("writing {path}"))?;
    eprintln!("results written to {path}");
    Ok(())
}

fn load(path: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    serde_json::from_str(&text).with_context(|| format!("{path} is not a benchmark result"))
}

/// One figure's change from `old` to `new`, in percent, signed so that positive is better.
pub fn gain(old: f64, new: f64, better: &str) -> Option<f64> {
    if old == 0.0 || !old.is_finite() || !new.is_finite() {
        return None;
    }
    let change = (new - old) / old.abs() * 100.0;
    Some(if better == "lower" { -change } else { change })
}

/// Prints each figure of `new` beside `old` and flags those worse by more than
/// `threshold` percent; returns how many were.
pub fn compare(old: &str, new: &str, threshold: f64) -> Result<usize> {
    let (old, new) = (load(old)?, load(new)?);
    let describe = |r: &Value| {
        format!(
            "{} at {} on {} ({})",
            r["bench"].as_str().unwrap_or("?"),
            r["commit"].as_str().unwrap_or("?"),
            r["machine"].as_str().unwrap_or("?"),
            r["date"].as_str().unwrap_or("?")
        )
    };
    println!("old: {}\nnew: {}", describe(&old), describe(&new));
    if old["machine"] != new["machine"] {
        println!("note: the machines differ; only figures from the same machine compare");
    }
    println!("\n  {:<48} {:>14} {:>14} {:>9}", "figure", "old", "new", "change");
    let empty = Vec::new();
    let old_figures = old["figures"].as_array().unwrap_or(&empty);
    let mut regressions = 0;
    for figure in new["figures"].as_array().unwrap_or(&empty) {
        let name = figure["name"].as_str().unwrap_or_default();
        let unit = figure["unit"].as_str().unwrap_or_default();
        let value = figure["value"].as_f64().unwrap_or(f64::NAN);
        let Some(before) = old_figures.iter().find(|f| f["name"] == name).and_then(|f| f["value"].as_f64()) else {
            println!("  {name:<48} {:>14} {:>14} {:>9}", "-", format!("{value:.3} {unit}"), "new");
            continue;
        };
        let better = figure["better"].as_str().unwrap_or("higher");
        let (change, flag) = match gain(before, value, better) {
            Some(g) if g < -threshold => {
                regressions += 1;
                (format!("{:+.1}%", (value - before) / before.abs() * 100.0), "  REGRESSION")
            }
            Some(_) => (format!("{:+.1}%", (value - before) / before.abs() * 100.0), ""),
            None => ("-".to_string(), ""),
        };
        println!(
            "  {name:<48} {:>14} {:>14} {change:>9}{flag}",
            format!("{before:.3} {unit}"),
            format!("{value:.3} {unit}")
        );
    }
    for gone in old_figures
        .iter()
        .filter(|f| !new["figures"].as_array().unwrap_or(&empty).iter().any(|n| n["name"] == f["name"]))
    {
        println!("  {:<48} {:>14} {:>14} {:>9}", gone["name"].as_str().unwrap_or_default(), "", "-", "gone");
    }
    println!(
        "\n{regressions} regression(s) past {threshold}% (each figure's `better` direction; lower is better for times)"
    );
    Ok(regressions)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_gain_is_signed_by_the_figures_direction() {
        assert_eq!(gain(100.0, 110.0, "higher"), Some(10.0));
        assert_eq!(gain(100.0, 110.0, "lower"), Some(-10.0));
        assert_eq!(gain(0.0, 1.0, "higher"), None);
    }

    #[test]
    fn compare_flags_what_got_worse_past_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, rps: f64, p99: f64| {
            let path = dir.path().join(name);
            let report = json!({"bench": "http", "commit": name, "machine": "m", "figures": [
                {"name": "echo req/s", "value": rps, "unit": "req/s", "better": "higher"},
                {"name": "echo p99", "value": p99, "unit": "ms", "better": "lower"},
            ]});
            std::fs::write(&path, report.to_string()).unwrap();
            path.display().to_string()
        };
        let (old, same, worse) = (write("a", 1000.0, 2.0), write("b", 980.0, 2.1), write("c", 800.0, 3.0));
        assert_eq!(compare(&old, &same, 10.0).unwrap(), 0);
        assert_eq!(compare(&old, &worse, 10.0).unwrap(), 2);
    }
}
