//! `GET /v1/jobs`: newest first, cursor pages that stay put while jobs arrive, filters,
//! the NDJSON export, and compression on request.

use std::collections::HashSet;
use std::io::Read as _;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, LINK};
use serde_json::{Value, json};

use crate::helpers::{System, assert_problem};

async fn list(system: &System, query: &str) -> (Value, Option<String>) {
    let response = system
        .http
        .get(system.url(&format!("/v1/jobs{query}")))
        .send()
        .await
        .expect("GET /v1/jobs");
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    let link = response
        .headers()
        .get(LINK)
        .map(|v| v.to_str().expect("link").to_string());
    (response.json().await.expect("page"), link)
}

fn ids(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| job["id"].as_str().expect("id").to_string())
        .collect()
}

/// Submits `n` jobs of `kind`, one after the other; returns their ids, oldest first.
async fn submit_many(system: &System, kind: &str, payload: Value, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let job = system.submit(kind, payload.clone()).await;
        ids.push(job["id"].as_str().expect("id").to_string());
    }
    ids
}

#[tokio::test]
async fn pages_walk_every_job_once_newest_first_while_jobs_arrive() {
    let system = System::start().await;
    let mut submitted = submit_many(&system, "noop", json!({}), 23).await;
    submitted.reverse(); // newest first

    let (first, link) = list(&system, "?limit=10").await;
    assert_eq!(ids(&first), submitted[..10]);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let link = link.expect("a Link header");
    assert!(link.ends_with("rel=\"next\""), "{link}");
    assert!(
        link.contains(&format!("cursor={cursor}")) && link.contains("limit=10"),
        "{link}"
    );

    // New jobs arrive while the client pages: they are above the first page, and do not
    // move the pages below it.
    submit_many(&system, "noop", json!({}), 5).await;
    let mut walked = ids(&first);
    let mut next = Some(cursor);
    while let Some(cursor) = next {
        let (page, link) = list(&system, &format!("?limit=10&cursor={cursor}")).await;
        walked.extend(ids(&page));
        next = page["next_cursor"].as_str().map(str::to_string);
        assert_eq!(link.is_some(), next.is_some());
    }
    assert_eq!(walked, submitted, "every job once, newest first");

    // The newest page now starts with the jobs submitted meanwhile.
    let (now, _) = list(&system, "?limit=5").await;
    assert!(ids(&now).iter().all(|id| !submitted.contains(id)));
    // Each listed job is its snapshot, as GET /v1/jobs/{id} shows it.
    let job = &now["jobs"][0];
    let (_, single) = system.get_job(job["id"].as_str().expect("id")).await;
    assert_eq!(job["id"], single["id"]);
    assert_eq!(job["kind"], "noop");
    assert!(job["created_at"].is_string() && job["state"].is_string());
}

#[tokio::test]
async fn filters_by_kind_state_and_creation_time() {
    let system = System::start().await;
    let before_all = chrono::Utc::now();
    let noops = submit_many(&system, "noop", json!({}), 4).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let middle = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sleeps = submit_many(&system, "sleep", json!({"ms": 60_000}), 3).await;
    let bad = submit_many(&system, "flaky", json!({"fail": "permanent"}), 2).await;
    for id in &noops {
        system.wait_terminal(id, Duration::from_secs(20)).await;
    }
    for id in &bad {
        system.wait_terminal(id, Duration::from_secs(20)).await;
    }

    let (page, _) = list(&system, "?kind=sleep").await;
    let mut expected = sleeps.clone();
    expected.reverse();
    assert_eq!(ids(&page), expected);
    assert!(page["next_cursor"].is_null());

    let (page, _) = list(&system, "?state=succeeded").await;
    let got: HashSet<String> = ids(&page).into_iter().collect();
    assert_eq!(got, noops.iter().cloned().collect::<HashSet<_>>());

    let (page, _) = list(&system, "?state=failed,succeeded&limit=1000").await;
    assert_eq!(ids(&page).len(), noops.len() + bad.len());

    let after = middle.to_rfc3339();
    let query = serde_urlencoded::to_string([("created_after", after.as_str())]).expect("query");
    let (page, _) = list(&system, &format!("?{query}")).await;
    let got: HashSet<String> = ids(&page).into_iter().collect();
    let newer: HashSet<String> = sleeps.iter().chain(&bad).cloned().collect();
    assert_eq!(got, newer);

    let query = serde_urlencoded::to_string([
        ("created_before", middle.to_rfc3339()),
        ("created_after", before_all.to_rfc3339()),
    ])
    .expect("query");
    let (page, _) = list(&system, &format!("?{query}&limit=2")).await;
    let mut older = noops.clone();
    older.reverse();
    assert_eq!(ids(&page), older[..2]);
    // The cursor carries on with the same filters, and only with them.
    let cursor = page["next_cursor"].as_str().expect("next");
    let (rest, _) = list(&system, &format!("?{query}&limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&rest), older[2..]);
    let other = system
        .http
        .get(system.url(&format!("/v1/jobs?kind=noop&cursor={cursor}")))
        .send()
        .await
        .expect("GET");
    assert_problem(other, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn bad_listing_parameters_are_400() {
    let system = System::start().await;
    // No job yet: an empty page, and no next one.
    let (empty, link) = list(&system, "").await;
    assert_eq!(empty, json!({"jobs": [], "next_cursor": null}));
    assert!(link.is_none());
    for query in [
        "limit=0",
        "limit=1001",
        "limit=many",
        "state=finished",
        "created_after=last%20week",
        "created_before=2026-02-30T00:00:00Z",
        "cursor=not-a-cursor",
    ] {
        let response = system
            .http
            .get(system.url(&format!("/v1/jobs?{query}")))
            .send()
            .await
            .expect("GET");
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test]
async fn ndjson_exports_every_job_and_pages_compress() {
    let system = System::start().await;
    let mut submitted = submit_many(&system, "noop", json!({}), 30).await;
    submitted.reverse();

    let response = system
        .http
        .get(system.url("/v1/jobs"))
        .header(ACCEPT, "application/x-ndjson")
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/x-ndjson");
    let text = response.text().await.expect("body");
    let exported: Vec<String> = text
        .lines()
        .map(|line| {
            let job: Value = serde_json::from_str(line).expect("one snapshot per line");
            job["id"].as_str().expect("id").to_string()
        })
        .collect();
    assert_eq!(exported, submitted);

    let plain = system
        .http
        .get(system.url("/v1/jobs?limit=1000"))
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body");
    let gzipped = system
        .http
        .get(system.url("/v1/jobs?limit=1000"))
        .header(ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .expect("GET");
    assert_eq!(gzipped.headers()[CONTENT_ENCODING], "gzip");
    let compressed = gzipped.bytes().await.expect("body");
    assert!(
        compressed.len() < plain.len() / 3,
        "{} vs {}",
        compressed.len(),
        plain.len()
    );
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_end(&mut decoded)
        .expect("gunzip");
    let decoded: Value = serde_json::from_slice(&decoded).expect("json");
    assert_eq!(ids(&decoded), submitted);

    // The export too, when asked.
    let response = system
        .http
        .get(system.url("/v1/jobs"))
        .header(ACCEPT, "application/x-ndjson")
        .header(ACCEPT_ENCODING, "zstd")
        .send()
        .await
        .expect("export");
    assert_eq!(response.headers()[CONTENT_ENCODING], "zstd");

    for encoding in ["br", "zstd"] {
        let response = system
            .http
            .get(system.url("/v1/jobs?limit=1000"))
            .header(ACCEPT_ENCODING, encoding)
            .send()
            .await
            .expect("GET");
        assert_eq!(response.headers()[CONTENT_ENCODING], encoding);
    }
}
