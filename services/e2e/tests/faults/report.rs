//! The results table of `docs/reliability.md`, written by the suite itself.
//!
//! Each scenario stores its row as `target/reliability/<number>.json`. When the run asks
//! for the report (`JETJOBS_RELIABILITY_REPORT=<path>`, relative to the workspace root;
//! `.ci/run` asks for `target/reliability.md`), the table is rendered there again from
//! all rows present after every scenario, so a run of the whole suite rewrites every
//! row, and a run of one scenario updates only its own. A plain local run leaves the
//! tracked `docs/reliability.md` alone; to refresh it:
//! `JETJOBS_RELIABILITY_REPORT=docs/reliability.md cargo test -p jetjobs-e2e --all-features --test faults`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// The scenario's number in the list (1–10), which orders the table.
    pub number: u32,
    pub scenario: String,
    /// Jobs that got a 202 (or, for HTTP scenarios, requests made).
    pub jobs: usize,
    /// Accepted jobs that never reached a terminal state.
    pub lost: usize,
    /// Accepted jobs that ran to success more than once, or have more than one terminal event.
    pub duplicated: usize,
    /// Snapshot updates that moved a job backwards.
    pub regressions: usize,
    /// From the fault (or its repair) to the system completing work again.
    pub recovery: Option<Duration>,
    /// What was injected and anything worth knowing about the outcome.
    pub notes: String,
}

fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR = <root>/services/e2e
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Stores `row` and, if the run asks for the report, renders it again.
pub fn record(row: &Row) {
    let root = workspace_root();
    let rows_dir = root.join("target/reliability");
    std::fs::create_dir_all(&rows_dir).expect("create target/reliability");
    let path = rows_dir.join(format!("{:02}.json", row.number));
    let json = serde_json::to_vec_pretty(row).expect("encode row");
    std::fs::write(&path, json).expect("write row");

    let mut rows: Vec<Row> = std::fs::read_dir(&rows_dir)
        .expect("read target/reliability")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect();
    rows.sort_by_key(|r| r.number);
    let Some(report) = std::env::var_os("JETJOBS_RELIABILITY_REPORT").filter(|p| !p.is_empty())
    else {
        return;
    };
    let report = root.join(report);
    if let Some(dir) = report.parent() {
        std::fs::create_dir_all(dir).expect("create the report's directory");
    }
    std::fs::write(&report, render(&rows))
        .unwrap_or_else(|e| panic!("write {}: {e}", report.display()));
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "# Reliability: fault-injection results\n\n\
         Written by the fault-injection suite (`services/e2e/tests/faults`), which runs in\n\
         `.ci/run` (its report: `target/reliability.md`); do not edit by hand. To refresh\n\
         this page: `JETJOBS_RELIABILITY_REPORT=docs/reliability.md cargo test -p\n\
         jetjobs-e2e --test faults`. Each scenario runs a real workload against a real\n\
         `nats-server`, injects its fault, and then checks every job that got a 202:\n\n\
         - **lost**: it never reached a terminal state;\n\
         - **duplicated**: it ran to success more than once, or has more than one terminal event;\n\
         - **regressions**: a snapshot update that moved it backwards (watched on `job_status`\n\
           during the whole run);\n\
         - **time to recover**: from the fault (or its repair, for faults that need one) until\n\
           the system completed work again.\n\n\
         | # | scenario | jobs | lost | duplicated | regressions | time to recover | notes |\n\
         | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for row in rows {
        let recovery = row
            .recovery
            .map_or_else(|| "—".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.number,
            row.scenario,
            row.jobs,
            row.lost,
            row.duplicated,
            row.regressions,
            recovery,
            row.notes.replace('|', "\\|").replace('\n', " "),
        ));
    }
    let host = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    out.push_str(&format!(
        "\nLast written {} on {cpus} × {host} (debug build, as `.ci/run` builds it).\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
    ));
    out
}
