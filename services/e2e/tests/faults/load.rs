//! A client load: jobs submitted over HTTP by concurrent tasks, each with its own
//! `Idempotency-Key`, retried with the same key through connection errors and 503s,
//! the way a careful client would, until it gets a 202.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// What the load did.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// Ids of the jobs that got a 202.
    pub accepted: Vec<String>,
    /// When each 202 came.
    pub accepted_at: Vec<Instant>,
    /// Requests that failed (and were retried).
    pub errors: usize,
    /// Jobs given up on (never accepted before the deadline).
    pub abandoned: usize,
    /// The longest time one job spent between its first failed try and its 202.
    pub longest_outage: Duration,
}

impl Loaded {
    pub fn first_accept_after(&self, since: Instant) -> Option<Duration> {
        self.accepted_at
            .iter()
            .filter(|at| **at >= since)
            .min()
            .map(|at| at.duration_since(since))
    }
}

/// Runs in the background; `finish` waits for it.
pub struct Load {
    handle: tokio::task::JoinHandle<Loaded>,
    pub progress: Arc<Mutex<usize>>,
}

impl Load {
    /// Submits `jobs` bodies made by `body(i)` with `concurrency` tasks, to `base`.
    pub fn start(
        base: String,
        jobs: usize,
        concurrency: usize,
        body: impl Fn(usize) -> Value + Send + Sync + 'static,
    ) -> Self {
        let progress = Arc::new(Mutex::new(0));
        let counter = Arc::clone(&progress);
        let handle = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client");
            let body = Arc::new(body);
            let next = Arc::new(Mutex::new(0usize));
            let results = Arc::new(Mutex::new(Loaded::default()));
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (http, base, body, next, results, counter) = (
                        http.clone(),
                        base.clone(),
                        Arc::clone(&body),
                        Arc::clone(&next),
                        Arc::clone(&results),
                        Arc::clone(&counter),
                    );
                    tokio::spawn(async move {
                        loop {
                            let i = {
                                let mut next = next.lock().expect("counter");
                                if *next >= jobs {
                                    return;
                                }
                                *next += 1;
                                *next - 1
                            };
                            let key = format!("load-{i}-{}", uuid::Uuid::now_v7());
                            let outcome = submit(&http, &base, &key, &body(i)).await;
                            let mut results = results.lock().expect("results");
                            results.errors += outcome.errors;
                            results.longest_outage = results.longest_outage.max(outcome.outage);
                            match outcome.id {
                                Some(id) => {
                                    results.accepted.push(id);
                                    results.accepted_at.push(Instant::now());
                                    *counter.lock().expect("progress") += 1;
                                }
                                None => results.abandoned += 1,
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("load task");
            }
            results.lock().expect("results").clone()
        });
        Self { handle, progress }
    }

    pub fn accepted_so_far(&self) -> usize {
        *self.progress.lock().expect("progress")
    }

    /// Waits until at least `n` jobs were accepted (or a minute passed).
    pub async fn wait_accepted(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.accepted_so_far() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn finish(self) -> Loaded {
        self.handle.await.expect("load")
    }
}

struct Submitted {
    id: Option<String>,
    errors: usize,
    outage: Duration,
}

/// One job, retried with the same key until a 202 (for at most two minutes).
async fn submit(http: &reqwest::Client, base: &str, key: &str, body: &Value) -> Submitted {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut errors = 0;
    let mut first_error: Option<Instant> = None;
    let mut delay = Duration::from_millis(50);
    loop {
        let response = http
            .post(format!("{base}/v1/jobs"))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await;
        match response {
            Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                let id = r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string));
                if let Some(id) = id {
                    return Submitted {
                        id: Some(id),
                        errors,
                        outage: first_error.map(|t| t.elapsed()).unwrap_or_default(),
                    };
                }
            }
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                panic!("the load's request was refused: {status} {text}");
            }
            _ => {}
        }
        errors += 1;
        first_error.get_or_insert_with(Instant::now);
        if Instant::now() >= deadline {
            return Submitted {
                id: None,
                errors,
                outage: first_error.map(|t| t.elapsed()).unwrap_or_default(),
            };
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}
