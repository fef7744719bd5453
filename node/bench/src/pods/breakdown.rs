//! `pods --breakdown`: where evio's ADD and DEL spend their time. The daemon logs each
//! request's steps (`evio_cni::dataplane::timing`, JSON lines under `--breakdown`); this reads
//! them back and prints per-step medians beside the runtime's wall time. What lies outside the
//! daemon (the exec of evio-cni, its socket round trip, reading and writing the JSON) is each
//! request's wall time minus the daemon's total for it.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::setup::Setup;
use crate::stats::Summary;

/// The container id of `pod` under plugin `plugin` (what `pods` passes as `CNI_CONTAINERID`).
pub(super) fn container(plugin: usize, pod: usize) -> String {
    format!("bench-{plugin}-{pod}")
}

/// One request's steps as the daemon logged them.
struct Logged {
    total_ms: f64,
    steps: Vec<(String, f64)>,
}

/// (verb, network, container) → its steps.
type Requests = HashMap<(String, String, String), Logged>;

fn read(log: &Path) -> Result<Requests> {
    let text = std::fs::read_to_string(log).with_context(|| format!("read {}", log.display()))?;
    let mut out = Requests::new();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if event["target"] != evio_cni::dataplane::timing::TARGET {
            continue;
        }
        let fields = &event["fields"];
        let text = |k: &str| fields[k].as_str().unwrap_or_default().to_string();
        let steps = text("steps")
            .split_whitespace()
            .filter_map(|pair| {
                let (name, ms) = pair.split_once('=')?;
                Some((name.to_string(), ms.parse().ok()?))
            })
            .collect();
        out.insert(
            (text("verb"), text("network"), text("container")),
            Logged {
                total_ms: fields["total_ms"].as_f64().unwrap_or_default(),
                steps,
            },
        );
    }
    Ok(out)
}

fn p50(ms: &[f64]) -> f64 {
    let samples: Vec<Duration> = ms
        .iter()
        .map(|m| Duration::from_secs_f64(m.max(0.0) / 1000.0))
        .collect();
    Summary::of(&samples).p50_ms
}

/// Prints, per verb, one column per evio plugin: the runtime's wall time, what lies outside
/// the daemon, the daemon's total and each step (p50, ms). `samples[verb][plugin][pod]` are
/// the wall times `pods` measured.
pub(super) fn report(setup: &Setup, samples: &[(&str, &Vec<Vec<Duration>>)]) -> Result<Value> {
    let logged = read(&setup.daemon_log)?;
    let evio: Vec<usize> = (0..setup.plugins.len())
        .filter(|p| setup.plugins[*p].config["type"] == "evio-cni")
        .collect();
    let mut figures = serde_json::Map::new();
    for (verb, walls) in samples {
        // Per plugin: row name → values, rows in the order first seen.
        let mut rows: Vec<String> = ["runtime (wall)", "outside the daemon", "daemon total"]
            .map(String::from)
            .to_vec();
        let mut columns = Vec::new();
        for &p in &evio {
            let network = setup.plugins[p].config["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mut values: HashMap<String, Vec<f64>> = HashMap::new();
            for (pod, wall) in walls[p].iter().enumerate() {
                let key = (verb.to_string(), network.clone(), container(p, pod));
                let Some(request) = logged.get(&key) else {
                    continue;
                };
                let wall_ms = wall.as_secs_f64() * 1000.0;
                let mut push = |row: &str, ms: f64| {
                    if !rows.iter().any(|r| r == row) {
                        rows.push(row.to_string());
                    }
                    values.entry(row.to_string()).or_default().push(ms);
                };
                push("runtime (wall)", wall_ms);
                push("outside the daemon", wall_ms - request.total_ms);
                push("daemon total", request.total_ms);
                for (step, ms) in &request.steps {
                    push(step, *ms);
                }
            }
            let medians: HashMap<String, f64> = values
                .iter()
                .map(|(row, ms)| (row.clone(), p50(ms)))
                .collect();
            let counted = values.get("daemon total").map_or(0, Vec::len);
            columns.push((setup.plugins[p].label.clone(), medians, counted));
        }
        println!(
            "\n{verb}: where the time goes (p50 per step, ms; indented steps run concurrently, during \"concurrent\")"
        );
        print!("{:<22}", "step");
        for (label, _, _) in &columns {
            print!(" {label:>20}");
        }
        println!();
        for row in &rows {
            // Steps of a concurrent branch are logged as `|name`.
            let shown = match row.strip_prefix('|') {
                Some(step) => format!("  {step}"),
                None => row.clone(),
            };
            print!("{shown:<22}");
            for (_, medians, _) in &columns {
                match medians.get(row) {
                    Some(ms) => print!(" {ms:>20.3}"),
                    None => print!(" {:>20}", "-"),
                }
            }
            println!();
        }
        print!("{:<22}", "requests logged");
        for (_, _, counted) in &columns {
            print!(" {counted:>20}");
        }
        println!();
        let by_plugin: serde_json::Map<String, Value> = columns
            .into_iter()
            .map(|(label, medians, counted)| {
                (label, json!({"requests": counted, "p50Ms": medians}))
            })
            .collect();
        figures.insert(verb.to_string(), Value::Object(by_plugin));
    }
    Ok(Value::Object(figures))
}
