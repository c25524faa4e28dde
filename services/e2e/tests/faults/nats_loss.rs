//! Scenario 11: nats-server dies under a running gateway. While it is gone every /v1
//! request is a prompt 503 problem+json with Retry-After (not a wait for a NATS timeout)
//! and /readyz is 503; once it is back the same gateway serves 202s again, and the jobs
//! accepted before the crash all finish.

use std::time::{Duration, Instant};

use jetjobs::testing::NatsServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::report::{self, Row};
use crate::system::{self, problem};

/// Generous: "at once" means no NATS timeout was waited for, not a speed target.
const PROMPT: Duration = Duration::from_secs(5);
/// A request that got past the connection check just before the client noticed the
/// loss waits for its publish to time out; it must still end in a 503.
const RACING: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_503_without_nats_and_recovers_by_itself() {
    let _turn = crate::serial().await;
    let mut nats = NatsServer::start();
    let url = nats.url();
    let system = system::Services::start(
        &url,
        system::Options {
            ack_wait: Duration::from_secs(5),
            run_cpu: false,
            ..system::Options::default()
        },
    )
    .await;
    let (js, base) = (system.js.clone(), system.base.clone());
    let http = system::http_client();

    // Jobs in every stage when NATS dies: finished, running, still queued.
    let mut accepted = Vec::new();
    for i in 0..30_u32 {
        let body = if i.is_multiple_of(3) {
            json!({"kind": "noop"})
        } else {
            json!({"kind": "sleep", "payload": {"ms": 1500}})
        };
        let response = http
            .post(format!("{base}/v1/jobs"))
            .json(&body)
            .send()
            .await
            .expect("POST before the crash");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let snapshot: Value = response.json().await.expect("snapshot");
        accepted.push(snapshot["id"].as_str().expect("id").to_string());
    }
    let known = accepted[0].clone();
    tokio::time::sleep(Duration::from_millis(300)).await;

    nats.kill();
    let killed = Instant::now();

    // Bounded by `limit`: with PROMPT, an answer that needed a NATS timeout fails it.
    let post = |limit: Duration| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let response = tokio::time::timeout(
                limit,
                http.post(format!("{base}/v1/jobs"))
                    .json(&json!({"kind": "noop"}))
                    .send(),
            )
            .await
            .map_err(|_| format!("POST took longer than {limit:?}"))?
            .map_err(|e| format!("POST: {e}"))?;
            problem(response, StatusCode::SERVICE_UNAVAILABLE).await
        }
    };
    // The first request may race the client noticing the loss (see RACING); every one
    // after it must be refused at once.
    let first_503 = post(RACING).await;
    let first_503_after = killed.elapsed();
    let post_503 = post(PROMPT).await;
    let get_503 = async {
        let response =
            tokio::time::timeout(PROMPT, http.get(format!("{base}/v1/jobs/{known}")).send())
                .await
                .map_err(|_| "GET took longer than 5 s".to_string())?
                .map_err(|e| format!("GET: {e}"))?;
        problem(response, StatusCode::SERVICE_UNAVAILABLE).await
    }
    .await;
    let ready_503 = async {
        let response = tokio::time::timeout(PROMPT, http.get(format!("{base}/readyz")).send())
            .await
            .map_err(|_| "/readyz took longer than 5 s".to_string())?
            .map_err(|e| format!("/readyz: {e}"))?;
        problem(response, StatusCode::SERVICE_UNAVAILABLE).await
    }
    .await;
    let healthz = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .map(|r| r.status());

    // NATS stays away a while (clients back off), then comes back on the same port and store.
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.restart();
    let restarted = Instant::now();

    // The same gateway accepts jobs again without a restart, and a new one runs.
    let new_job = system::eventually(Duration::from_secs(30), || async {
        let response = http
            .post(format!("{base}/v1/jobs"))
            .json(&json!({"kind": "noop"}))
            .send()
            .await
            .ok()?;
        if response.status() != StatusCode::ACCEPTED {
            return None;
        }
        let snapshot: Value = response.json().await.ok()?;
        snapshot["id"].as_str().map(str::to_string)
    })
    .await;
    let accepting_after = restarted.elapsed();
    let mut recovery = None;
    if let Some(id) = &new_job {
        let done = system::eventually(Duration::from_secs(30), || async {
            let response = http.get(format!("{base}/v1/jobs/{id}")).send().await.ok()?;
            let snapshot: Value = response.json().await.ok()?;
            (snapshot["state"] == "succeeded").then_some(())
        })
        .await;
        if done.is_some() {
            recovery = Some(restarted.elapsed());
        }
        accepted.push(id.clone());
    }
    let ready_again = system::eventually(Duration::from_secs(10), || async {
        let response = http.get(format!("{base}/readyz")).send().await.ok()?;
        (response.status() == StatusCode::OK).then_some(())
    })
    .await;

    let outcome = system::check_jobs(&js, &accepted, Duration::from_secs(45)).await;

    let verdict = |r: &Result<Value, String>| match r {
        Ok(_) => "503 problem+json with Retry-After".to_string(),
        Err(e) => format!("NOT as expected ({e})"),
    };
    report::record(&Row {
        number: 11,
        scenario: "NATS unreachable: gateway answers 503 and recovers".to_string(),
        jobs: accepted.len(),
        lost: outcome.lost.len(),
        duplicated: outcome.duplicated.len(),
        regressions: outcome.regressions,
        recovery,
        notes: format!(
            "nats-server SIGKILLed under load (30 noop/sleep jobs accepted, some running), \
             restarted 3 s later on the same port and store. While down: POST {} (the first, \
             sent as NATS died, answered after {:.2} s), GET {}, /readyz {}, /healthz {}. After the restart the same \
             gateway answered 202 again after {:.2} s; time to recover = restart until a new job \
             succeeded; jobs = the accepted jobs plus that one.",
            verdict(&post_503),
            first_503_after.as_secs_f64(),
            verdict(&get_503),
            verdict(&ready_503),
            healthz
                .as_ref()
                .map_or_else(|e| format!("failed: {e}"), ToString::to_string),
            accepting_after.as_secs_f64(),
        ),
    });

    first_503.expect("the first POST after the kill");
    post_503.expect("POST while NATS is down");
    get_503.expect("GET while NATS is down");
    ready_503.expect("/readyz while NATS is down");
    assert_eq!(healthz.ok(), Some(StatusCode::OK), "/healthz stays up");
    assert!(new_job.is_some(), "202 again after NATS came back");
    assert!(recovery.is_some(), "a new job ran after NATS came back");
    assert!(ready_again.is_some(), "/readyz 200 again");
    assert!(outcome.lost.is_empty(), "lost: {:?}", outcome.lost);
    assert!(
        outcome.duplicated.is_empty(),
        "duplicated: {:?}",
        outcome.duplicated
    );
    assert_eq!(outcome.regressions, 0, "regressions");
}
