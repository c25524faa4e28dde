//! Scenario 16: Ctrl-C in the terminal that runs everything. The terminal signals the
//! whole process group at once, nats-server included, so every service shuts down
//! while NATS goes away under it. Each one must still exit within its grace period plus
//! the watchdog's margin, and once everything is started again every accepted job
//! finishes, once. A second signal ends a service at once, whatever it was waiting for.

use std::process::Command;
use std::time::{Duration, Instant};

use jetjobs::shutdown::{EXIT_INTERRUPTED, MARGIN};
use serde_json::json;

use crate::check::{Watcher, verify};
use crate::deployment::{Deployment, Setup};
use crate::load::Load;
use crate::procs::Service;
use crate::report;

const GRACE: Duration = Duration::from_secs(2);
/// Scheduling noise on a loaded 2-core machine, on top of the promised bound.
const SLACK: Duration = Duration::from_secs(3);
const SETTLE: Duration = Duration::from_secs(90);

/// One `kill` for all of them, as close to a process-group signal as a test can get
/// without owning the terminal.
fn signal_all(signal: &str, pids: &[u32]) {
    let mut kill = Command::new("kill");
    kill.arg(signal);
    kill.args(pids.iter().map(u32::to_string));
    let status = kill.status().expect("run kill");
    assert!(status.success(), "kill {signal} {pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s16_ctrl_c_of_everything_with_nats_server_stops_every_service_in_time() {
    let _turn = crate::serial().await;
    let grace = ("JETJOBS_SHUTDOWN_GRACE_SECS", GRACE.as_secs().to_string());
    let mut system = Deployment::start(Setup {
        gateway_env: vec![grace.clone()],
        ..Setup::default()
    })
    .await;
    let url = system.nats.url();
    let logs = tempfile::tempdir().expect("log dir");
    let mut others = vec![
        Service::start(
            "processor-cpu",
            "jetjobs-processor-cpu",
            &[("NATS_URL", url.clone()), grace.clone()],
            logs.path(),
        ),
        Service::start(
            "notifier",
            "jetjobs-notifier",
            &[
                ("NATS_URL", url.clone()),
                grace.clone(),
                (
                    "JETJOBS_WEBHOOK_SECRETS",
                    "whsec_ZGV2ZWxvcG1lbnQtb25seS1zZWNyZXQtMzJieXRlcw==".into(),
                ),
            ],
            logs.path(),
        ),
    ];
    let watcher = Watcher::start(&system.js).await;
    // Jobs longer than the grace period: at the signal, processor-io holds running jobs
    // it cannot finish in time and must hand back to a server that is going away.
    let load = Load::start(
        system.base.clone(),
        300,
        16,
        |_| json!({"kind": "sleep", "payload": {"ms": 3_000}}),
    );
    load.wait_accepted(100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut pids = vec![
        system.gateway.pid(),
        system.status.pid(),
        system.io[0].pid(),
    ];
    pids.extend(others.iter().map(Service::pid));
    pids.push(system.nats.pid().expect("nats-server runs"));
    let interrupted = Instant::now();
    signal_all("-INT", &pids);

    let bound = GRACE + MARGIN + SLACK;
    let mut exits = Vec::new();
    let services = [&mut system.gateway, &mut system.status, &mut system.io[0]]
        .into_iter()
        .chain(others.iter_mut());
    for (name, service) in [
        "gateway",
        "status",
        "processor-io",
        "processor-cpu",
        "notifier",
    ]
    .into_iter()
    .zip(services)
    {
        let left = bound.saturating_sub(interrupted.elapsed());
        match service.wait_exit(left).await {
            Some(status) => exits.push((name, interrupted.elapsed(), status.code())),
            None => panic!(
                "{name} still runs {:.1} s after SIGINT (bound {} s):\n{}",
                interrupted.elapsed().as_secs_f64(),
                bound.as_secs(),
                service.log_tail()
            ),
        }
    }
    let slowest = exits.iter().map(|(_, t, _)| *t).max().unwrap_or_default();

    // Everything again, as the next `run.sh` would: same store, same ports.
    system.nats.restart();
    let restarted = Instant::now();
    system.status.restart();
    system.gateway.restart();
    system.io[0].restart();
    for service in &mut others {
        service.restart();
    }
    let loaded = load.finish().await;
    let verdict = verify(&system.js, &watcher, &loaded.accepted, SETTLE).await;
    let recovery = watcher.first_completion_after(restarted);
    let exits_text: Vec<String> = exits
        .iter()
        .map(|(name, t, code)| {
            let code = code.map_or_else(|| "signal".to_string(), |c| c.to_string());
            format!("{name} {:.1} s (exit {code})", t.as_secs_f64())
        })
        .collect();
    report::record(&verdict.row(
        16,
        "Ctrl-C of every service together with nats-server (one SIGINT to all), start everything again",
        recovery,
        format!(
            "300 × sleep 3 s, 16 clients, grace {} s: {}; all out {:.1} s after the signal (bound: grace + {} s); {} jobs ran again",
            GRACE.as_secs(),
            exits_text.join(", "),
            slowest.as_secs_f64(),
            MARGIN.as_secs(),
            verdict.rerun()
        ),
    ));
    verdict.assert_clean();
    assert_eq!(loaded.abandoned, 0);
    assert_eq!(verdict.count_state("succeeded"), loaded.accepted.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_a_shutdown_that_is_still_waiting() {
    let _turn = crate::serial().await;
    let mut system = Deployment::start(Setup::default()).await;
    // A processor with a long grace and jobs that outlast it: the first SIGINT starts a
    // shutdown that would wait for them.
    let logs = tempfile::tempdir().expect("log dir");
    let mut io = Service::start(
        "patient-io",
        "jetjobs-processor-io",
        &[
            ("NATS_URL", system.nats.url()),
            ("JETJOBS_SHUTDOWN_GRACE_SECS", "120".into()),
        ],
        logs.path(),
    );
    system.io[0].kill();
    let load = Load::start(
        system.base.clone(),
        20,
        4,
        |_| json!({"kind": "sleep", "payload": {"ms": 60_000}}),
    );
    load.wait_accepted(20).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    signal_all("-INT", &[io.pid()]);
    assert!(
        io.wait_exit(Duration::from_secs(2)).await.is_none(),
        "the first signal waits for the running jobs"
    );
    let second = Instant::now();
    signal_all("-INT", &[io.pid()]);
    let status = io
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("the second SIGINT did not end it:\n{}", io.log_tail()));
    assert_eq!(status.code(), Some(EXIT_INTERRUPTED), "{}", io.log_tail());
    assert!(second.elapsed() < Duration::from_secs(5));
}
