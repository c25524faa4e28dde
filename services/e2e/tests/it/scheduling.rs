//! When jobs run: delayed jobs (`run_at`, `delay_secs`), expiry, and recurring schedules
//! (`/v1/schedules`), kept by nats-server's message schedules, not by a process of ours.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, System, assert_problem};

const WAIT: Duration = Duration::from_secs(30);

fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .with_timezone(&Utc)
}

async fn post_job(system: &System, body: Value) -> reqwest::Response {
    system.post(&body).await
}

async fn accepted(system: &System, body: Value) -> Value {
    let response = post_job(system, body.clone()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{body}");
    response.json().await.expect("snapshot")
}

fn id(snapshot: &Value) -> String {
    snapshot["id"].as_str().expect("id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_waits_scheduled_and_starts_after_its_time() {
    let system = System::start().await;
    let job = accepted(
        &system,
        // Long enough to record its `started` (`JETJOBS_STARTED_AFTER_MS`).
        json!({"kind": "sleep", "payload": {"ms": 30}, "delay_secs": 2}),
    )
    .await;
    assert_eq!(job["state"], "scheduled");
    let run_at = time(&job["run_at"]);
    let created_at = time(&job["created_at"]);
    assert_eq!(run_at - created_at, chrono::TimeDelta::seconds(2));
    let id = id(&job);

    // Not in JOBS yet: its request waits in JOBS_SCHEDULES.
    assert_eq!(system.stream_messages("JOBS").await, 0);
    let (_, now) = system.get_job(&id).await;
    assert_eq!(now["state"], "scheduled");

    let done = system.wait_terminal(&id, WAIT).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(
        done["run_at"], job["run_at"],
        "the snapshot keeps its run_at"
    );
    let events = system.event_documents("sleep", &id).await;
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["queued", "started", "succeeded"]);
    let started = time(&events[1]["at"]);
    assert!(
        started >= run_at,
        "started at {started}, before its run_at {run_at}"
    );
    // Not a speed claim (docs/performance.md measures precision): a job that waited
    // for something other than its time would be far later than this.
    assert!(
        started - run_at < chrono::TimeDelta::seconds(5),
        "started {} ms after run_at",
        (started - run_at).num_milliseconds()
    );
    // The schedule removed itself when it fired, and its firing was acked.
    assert_eq!(system.stream_messages("JOBS_SCHEDULES").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_at_in_the_past_runs_now_and_bad_times_are_refused() {
    let system = System::start_with(Options {
        gateway: |config| config.max_delay_secs = 3600,
        ..Options::default()
    })
    .await;
    let past = accepted(
        &system,
        json!({"kind": "noop", "payload": {}, "run_at": "2001-01-01T00:00:00Z"}),
    )
    .await;
    // Not `scheduled`: it runs now. The 202 carries the job's current snapshot, which on a
    // loaded machine may already be a step further than `queued` (see jobs.rs).
    assert!(
        ["queued", "running", "succeeded"].contains(&past["state"].as_str().unwrap_or_default()),
        "{past}"
    );
    assert!(past.get("run_at").is_none(), "{past}");
    system.wait_terminal(&id(&past), WAIT).await;

    let in_an_hour = (Utc::now() + chrono::TimeDelta::seconds(3000)).to_rfc3339();
    for (body, field) in [
        (
            json!({"kind": "noop", "run_at": in_an_hour, "delay_secs": 1}),
            "delay_secs",
        ),
        (json!({"kind": "noop", "delay_secs": 3601}), "delay_secs"),
        (json!({"kind": "noop", "delay_secs": -1}), "delay_secs"),
        (
            json!({"kind": "noop", "delay_secs": 10, "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"kind": "noop", "expires_at": in_an_hour, "expires_in_secs": 5}),
            "expires_in_secs",
        ),
    ] {
        let problem = assert_problem(
            post_job(&system, body.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(problem["field"], field, "{body}: {problem}");
        assert!(!problem["detail"].as_str().unwrap_or("").is_empty());
    }
    let problem = assert_problem(
        post_job(&system, json!({"kind": "noop", "run_at": "tomorrow"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap_or("").contains("run_at"),
        "{problem}"
    );
    // Nothing was left behind by the refusals.
    assert_eq!(system.stream_messages("JOBS_SCHEDULES").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_scheduled_job_never_runs() {
    let system = System::start().await;
    let job = accepted(
        &system,
        json!({"kind": "noop", "payload": {}, "delay_secs": 1.5, "expires_in_secs": 60}),
    )
    .await;
    let id = id(&job);
    let response = system
        .http
        .delete(system.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), StatusCode::OK);
    let cancelled: Value = response.json().await.expect("snapshot");
    assert_eq!(cancelled["state"], "cancelled");
    // Its schedule and its expiry are gone from the stream at once.
    assert_eq!(system.stream_messages("JOBS_SCHEDULES").await, 0);

    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, snapshot) = system.get_job(&id).await;
    assert_eq!(snapshot["state"], "cancelled");
    assert_eq!(snapshot["attempt"], 0);
    assert_eq!(
        system.events_of("noop", &id).await,
        [("cancelled".to_string(), 0)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_the_due_time_wins_or_finds_the_job_started() {
    let system = System::start().await;
    let due = Utc::now() + chrono::TimeDelta::milliseconds(1500);
    let mut ids = Vec::new();
    for _ in 0..40 {
        let job = accepted(
            &system,
            json!({"kind": "sleep", "payload": {"ms": 300}, "run_at": due.to_rfc3339()}),
        )
        .await;
        ids.push(id(&job));
    }
    // Cancel all of them around their due time, spread over ±250 ms.
    let until = (due - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until.saturating_sub(Duration::from_millis(250))).await;
    let mut cancels = Vec::new();
    for id in &ids {
        let http = system.http.clone();
        let url = system.url(&format!("/v1/jobs/{id}"));
        cancels.push(tokio::spawn(async move {
            http.delete(url).send().await.expect("DELETE").status()
        }));
        tokio::time::sleep(Duration::from_millis(12)).await;
    }
    for (id, cancel) in ids.iter().zip(cancels) {
        let status = cancel.await.expect("cancel");
        let snapshot = system.wait_terminal(id, WAIT).await;
        let types: Vec<String> = system
            .events_of("sleep", id)
            .await
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        if status == StatusCode::OK {
            assert_eq!(snapshot["state"], "cancelled", "{id}: {types:?}");
            // Cancelled while scheduled or queued: it never starts. Cancelled while
            // running: it started once, before the cancellation.
            let cancelled_at = types
                .iter()
                .position(|t| t == "cancelled")
                .expect("cancelled");
            assert!(
                !types[cancelled_at..].iter().any(|t| t == "started"),
                "{id} started after it was cancelled: {types:?}"
            );
            assert!(
                types.iter().filter(|t| *t == "started").count() <= 1,
                "{types:?}"
            );
        } else {
            // Only a job that had already finished refuses a cancellation.
            assert_eq!(status, StatusCode::CONFLICT, "{id}");
            assert_eq!(types, ["queued", "started", "succeeded"], "{id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_not_started_by_its_expiry_is_cancelled_and_never_runs() {
    // One slot, held by a long job: the expiring job waits in JOBS past its expiry.
    let system = System::start_with(Options {
        io_concurrency: 1,
        ..Options::default()
    })
    .await;
    let blocker = accepted(&system, json!({"kind": "sleep", "payload": {"ms": 2500}})).await;
    system
        .wait_for(&id(&blocker), WAIT, |s| s["state"] == "running")
        .await;
    let expiring = accepted(
        &system,
        json!({"kind": "noop", "payload": {}, "expires_in_secs": 1}),
    )
    .await;
    assert_eq!(expiring["state"], "queued");
    assert!(expiring["expires_at"].is_string(), "{expiring}");
    let id = id(&expiring);
    let ended = system.wait_terminal(&id, WAIT).await;
    assert_eq!(ended["state"], "cancelled");
    assert!(
        ended["error"].as_str().unwrap_or("").contains("expired"),
        "{ended}"
    );
    // The slot frees; the processor takes the expired job's message and must not run it.
    system.wait_terminal(&self::id(&blocker), WAIT).await;
    let after = accepted(&system, json!({"kind": "noop", "payload": {}})).await;
    system.wait_terminal(&self::id(&after), WAIT).await;
    assert_eq!(
        system.events_of("noop", &id).await,
        [("cancelled".to_string(), 0)]
    );
    assert_eq!(system.stream_messages("JOBS").await, 0);

    // A job that starts in time is not touched by its expiry.
    let quick = accepted(
        &system,
        json!({"kind": "noop", "payload": {}, "expires_in_secs": 1}),
    )
    .await;
    let done = system.wait_terminal(&self::id(&quick), WAIT).await;
    assert_eq!(done["state"], "succeeded");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, later) = system.get_job(&self::id(&quick)).await;
    assert_eq!(later["state"], "succeeded");
}

async fn schedules(
    system: &System,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = system.http.request(method, system.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("schedules request")
}

async fn last_jobs(system: &System, name: &str) -> Vec<String> {
    let response = schedules(
        system,
        reqwest::Method::GET,
        &format!("/v1/schedules/{name}"),
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("schedule");
    body["last_jobs"]
        .as_array()
        .expect("last_jobs")
        .iter()
        .map(|id| id.as_str().expect("id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recurring_schedule_makes_one_job_per_firing_and_can_be_paused() {
    let system = System::start().await;
    let body = json!({"name": "tick", "every": "1s", "job": {"kind": "noop", "payload": {}}});
    let response = schedules(
        &system,
        reqwest::Method::POST,
        "/v1/schedules",
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{:?}",
        response.text().await
    );
    assert_eq!(
        response.headers()["location"].to_str().expect("location"),
        "/v1/schedules/tick"
    );
    let created: Value = response.json().await.expect("schedule");
    assert_eq!(created["name"], "tick");
    assert_eq!(created["every"], "1s");
    assert_eq!(created["paused"], false);
    assert!(created["next_run_at"].is_string(), "{created}");

    // The same name again is a conflict.
    assert_problem(
        schedules(&system, reqwest::Method::POST, "/v1/schedules", Some(body)).await,
        StatusCode::CONFLICT,
    )
    .await;

    tokio::time::sleep(Duration::from_millis(3500)).await;
    let jobs = last_jobs(&system, "tick").await;
    assert!((2..=5).contains(&jobs.len()), "{jobs:?}");
    for job in &jobs {
        let snapshot = system.wait_terminal(job, WAIT).await;
        assert_eq!(snapshot["schedule"], "tick");
        assert_eq!(snapshot["state"], "succeeded");
        assert_eq!(snapshot["kind"], "noop");
    }

    // Paused, it makes nothing.
    let paused = schedules(
        &system,
        reqwest::Method::POST,
        "/v1/schedules/tick/pause",
        None,
    )
    .await;
    assert_eq!(paused.status(), StatusCode::OK);
    let paused: Value = paused.json().await.expect("schedule");
    assert_eq!(paused["paused"], true);
    assert!(paused["next_run_at"].is_null());
    let before = last_jobs(&system, "tick").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(last_jobs(&system, "tick").await, before);

    // Resumed, it goes on.
    let resumed = schedules(
        &system,
        reqwest::Method::POST,
        "/v1/schedules/tick/resume",
        None,
    )
    .await;
    assert_eq!(resumed.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_ne!(last_jobs(&system, "tick").await, before);

    // Listed, then deleted for good.
    let list = schedules(&system, reqwest::Method::GET, "/v1/schedules", None).await;
    let list: Value = list.json().await.expect("list");
    assert_eq!(list["schedules"][0]["name"], "tick");
    let deleted = schedules(&system, reqwest::Method::DELETE, "/v1/schedules/tick", None).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_problem(
        schedules(&system, reqwest::Method::GET, "/v1/schedules/tick", None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    // No schedule is left to fire, and what fired was handled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(system.stream_messages("JOBS_SCHEDULES").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_checked_before_anything_is_stored() {
    let system = System::start().await;
    for (body, field) in [
        (
            json!({"name": "x", "cron": "61 * * * * *", "job": {"kind": "noop"}}),
            "cron",
        ),
        (
            json!({"name": "x", "cron": "*/5 * * * *", "job": {"kind": "noop"}}),
            "cron",
        ),
        (
            json!({"name": "x", "every": "soon", "job": {"kind": "noop"}}),
            "every",
        ),
        (
            json!({"name": "x", "every": "1s", "cron": "0 * * * * *", "job": {"kind": "noop"}}),
            "cron",
        ),
        (
            json!({"name": "x", "cron": "0 * * * * *", "time_zone": "Mars/Olympus", "job": {"kind": "noop"}}),
            "time_zone",
        ),
        (
            json!({"name": "Bad Name", "every": "1s", "job": {"kind": "noop"}}),
            "name",
        ),
        (
            json!({"name": "x", "every": "1s", "job": {"kind": "noop", "delay_secs": 5}}),
            "job",
        ),
    ] {
        let problem = assert_problem(
            schedules(
                &system,
                reqwest::Method::POST,
                "/v1/schedules",
                Some(body.clone()),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let unknown = assert_problem(
        schedules(
            &system,
            reqwest::Method::POST,
            "/v1/schedules",
            Some(json!({"name": "x", "every": "1s", "job": {"kind": "nope"}})),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        unknown["type"]
            .as_str()
            .map(|t| t.ends_with("unknown-kind")),
        Some(true),
        "{unknown}"
    );
    let list: Value = schedules(&system, reqwest::Method::GET, "/v1/schedules", None)
        .await
        .json()
        .await
        .expect("list");
    assert_eq!(list["schedules"], json!([]));
    assert_eq!(system.stream_messages("JOBS_SCHEDULES").await, 0);

    // A cron schedule in a time zone is accepted, and says when it fires next; PUT
    // replaces it.
    let response = schedules(
        &system,
        reqwest::Method::PUT,
        "/v1/schedules/nightly",
        Some(json!({"cron": "0 30 2 * * *", "time_zone": "Europe/Paris", "job": {"kind": "noop"}})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let nightly: Value = response.json().await.expect("schedule");
    let next = time(&nightly["next_run_at"]);
    assert!(
        next > Utc::now() && next - Utc::now() <= chrono::TimeDelta::hours(25),
        "{nightly}"
    );
    let replaced = schedules(
        &system,
        reqwest::Method::PUT,
        "/v1/schedules/nightly",
        Some(json!({"cron": "0 0 * * * *", "job": {"kind": "noop"}})),
    )
    .await;
    assert_eq!(replaced.status(), StatusCode::OK);
    let replaced: Value = replaced.json().await.expect("schedule");
    assert_eq!(replaced["cron"], "0 0 * * * *");
    assert_eq!(replaced["created_at"], nightly["created_at"]);
    assert_eq!(
        system.stream_messages("JOBS_SCHEDULES").await,
        1,
        "one message per schedule"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_make_one_job_per_firing_not_three() {
    let system = System::start().await;
    // Two more gateway replicas: three scheduler consumers' worth of pullers on the one
    // durable consumer.
    let url = system.nats.url();
    let _more: Vec<_> = (0..2)
        .map(|_| jetjobs_e2e::system::start_gateway(jetjobs_gateway::Config::local(&url)))
        .collect();
    let response = schedules(
        &system,
        reqwest::Method::POST,
        "/v1/schedules",
        Some(
            json!({"name": "every-second", "every": "1s", "job": {"kind": "noop", "payload": {}}}),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pause = schedules(
        &system,
        reqwest::Method::POST,
        "/v1/schedules/every-second/pause",
        None,
    )
    .await;
    assert_eq!(pause.status(), StatusCode::OK);
    let elapsed = started.elapsed().as_secs();
    // Whatever fired before the pause has been handled after a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let page: Value = system
        .http
        .get(system.url("/v1/jobs?kind=noop&limit=100"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("page");
    let made: Vec<&Value> = page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|job| job["schedule"] == "every-second")
        .collect();
    // One a second: at most one per second elapsed (plus the one due at the start).
    assert!(
        (elapsed.saturating_sub(2) as usize..=elapsed as usize + 1).contains(&made.len()),
        "{} jobs in {elapsed} s",
        made.len()
    );
    let mut ids: Vec<&str> = made.iter().filter_map(|job| job["id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), made.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_schedule_store_refuses_new_delayed_jobs_and_forgets_none() {
    // JOBS_SCHEDULES drops its oldest schedules when full (the server allows nothing
    // else with schedules): the gateway must stop before that, even within a burst.
    let system = System::start_with(Options {
        layout: |layout| layout.schedules_max_msgs = 20,
        ..Options::default()
    })
    .await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..30 {
        let response = post_job(
            &system,
            json!({"kind": "noop", "payload": {}, "delay_secs": 3600}),
        )
        .await;
        if response.status() == StatusCode::ACCEPTED {
            let body: Value = response.json().await.expect("snapshot");
            accepted.push(id(&body));
        } else {
            let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("JOBS_SCHEDULES"),
                "{problem}"
            );
            refused += 1;
        }
    }
    assert!(refused > 0, "30 schedules fitted in a store of 20");
    assert!(
        accepted.len() <= 18,
        "past the headroom: {}",
        accepted.len()
    );
    // Every accepted job still has its schedule: none was pushed out.
    assert_eq!(
        system.stream_messages("JOBS_SCHEDULES").await,
        accepted.len() as u64
    );
    for job in &accepted {
        let (_, snapshot) = system.get_job(job).await;
        assert_eq!(snapshot["state"], "scheduled");
    }
}
