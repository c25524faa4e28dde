//! Idle waiters: clients each long-polling a job of their own that will not change, held
//! open for the whole run. They cost the gateway nothing per job unless its wait machinery
//! scales with waiters × changes — which is what a run with `--waiters` measures.

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long each long-poll asks to wait before it is renewed.
const POLL_SECS: u64 = 20;

/// `count` clients, each long-polling its own finished noop job (`?wait=` with
/// `If-None-Match` = its revision, so the answer comes only when the wait runs out) until
/// `stop`. Returns once every waiter is in place.
pub async fn hold(
    base: &Url,
    count: usize,
    stop: CancellationToken,
) -> anyhow::Result<TaskTracker> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(count)
        .timeout(Duration::from_secs(POLL_SECS + 10))
        .build()
        .context("building the waiters' HTTP client")?;
    let submit = base.join("v1/jobs").context("the submit URL")?;
    // Jobs of their own, finished (`Prefer: wait`), with the revision they ended at.
    let jobs: Vec<(Url, String)> = futures::stream::iter(0..count)
        .map(|_| finished_job(&http, &submit))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let tracker = TaskTracker::new();
    for (url, etag) in jobs {
        let (http, stop) = (http.clone(), stop.clone());
        tracker.spawn(async move {
            let mut poll = url.clone();
            poll.set_query(Some(&format!("wait={POLL_SECS}")));
            while !stop.is_cancelled() {
                let request = http.get(poll.clone()).header(IF_NONE_MATCH, &etag).send();
                tokio::select! {
                    () = stop.cancelled() => return,
                    answer = request => {
                        if let Ok(answer) = answer {
                            let _ = answer.bytes().await;
                        } else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        });
    }
    tracker.close();
    // Give the long-polls time to reach the gateway and subscribe.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(tracker)
}

async fn finished_job(http: &reqwest::Client, submit: &Url) -> anyhow::Result<(Url, String)> {
    let answer = http
        .post(submit.clone())
        .header(CONTENT_TYPE, "application/json")
        .header("prefer", "wait=10")
        .body(r#"{"kind":"noop"}"#)
        .send()
        .await
        .context("submitting a waiter's job")?;
    let location = answer
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("a waiter's job came back without a Location")?
        .to_string();
    let url = submit.join(&location).context("the job's URL")?;
    let current = http
        .get(url.clone())
        .send()
        .await
        .context("reading a waiter's job")?;
    let etag = current
        .headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .context("a job snapshot without an ETag")?
        .to_string();
    Ok((url, etag))
}
