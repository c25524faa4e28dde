//! Scenario 10: hostile HTTP clients. Hundreds of slowloris connections, silent
//! connections, a slow body, a 10 MB body and JSON nested 10,000 levels deep, while a
//! well-behaved client keeps submitting and reading jobs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jetjobs::testing::NatsServer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::report::{self, Row};
use crate::system::{self, problem};

const SLOW_HEADERS: usize = 300;
const SILENT: usize = 100;
const HEADER_TIMEOUT_SECS: u64 = 1;
const REQUEST_TIMEOUT_SECS: u64 = 3;
/// How long a hostile connection may survive: the timeout plus a generous margin for a
/// loaded machine (this is not a timing assertion).
const CLOSED_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_cut_off_and_normal_requests_are_served() {
    let _turn = crate::serial().await;
    let nats = NatsServer::start();
    let url = nats.url();
    let system = system::Services::start(
        &url,
        system::Options {
            run_cpu: false,
            gateway: |config| {
                config.header_timeout_secs = HEADER_TIMEOUT_SECS;
                config.request_timeout_secs = REQUEST_TIMEOUT_SECS;
            },
            ..system::Options::default()
        },
    )
    .await;
    let base = system.base.clone();
    let addr = base.trim_start_matches("http://").to_string();

    // A well-behaved client, all along: submit a noop job, read it back.
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let traffic = tokio::spawn(normal_traffic(base.clone(), stop.clone(), made.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Slowloris: a request head one byte at a time, never finished.
    let slow: Vec<_> = (0..SLOW_HEADERS)
        .map(|i| tokio::spawn(slow_headers(addr.clone(), i)))
        .collect();
    // Connections that send nothing at all.
    let silent: Vec<_> = (0..SILENT)
        .map(|_| tokio::spawn(silent(addr.clone())))
        .collect();

    let http = system::http_client();
    // A 10 MB body, with a Content-Length, and streamed without one.
    let huge = big_body(10 << 20);
    let response = http
        .post(format!("{base}/v1/jobs"))
        .header("content-type", "application/json")
        .body(huge.clone())
        .send()
        .await;
    let declared = match response {
        Ok(response) => problem(response, StatusCode::PAYLOAD_TOO_LARGE).await,
        Err(e) => Err(format!("the 10 MB request failed without an answer: {e}")),
    };
    let response = http
        .post(format!("{base}/v1/jobs"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap(Chunked::new(&huge)))
        .send()
        .await;
    let streamed = match response {
        Ok(response) => problem(response, StatusCode::PAYLOAD_TOO_LARGE).await,
        Err(e) => Err(format!(
            "the chunked 10 MB request failed without an answer: {e}"
        )),
    };

    // JSON nested 10,000 levels deep, in the payload.
    let depth = 10_000;
    let nested = format!(
        r#"{{"kind":"noop","payload":{{"a":{}{}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let response = http
        .post(format!("{base}/v1/jobs"))
        .header("content-type", "application/json")
        .body(nested)
        .send()
        .await
        .expect("POST nested JSON");
    let deep = problem(response, StatusCode::BAD_REQUEST).await;

    // A body that never arrives: cut off by the request timeout with a 408.
    let slow_body = slow_body(&addr).await;

    let mut slow_closed = 0;
    let mut slow_longest = Duration::ZERO;
    for task in slow {
        if let Some(took) = task.await.expect("slow-headers task") {
            slow_closed += 1;
            slow_longest = slow_longest.max(took);
        }
    }
    let mut silent_closed = 0;
    for task in silent {
        if task.await.expect("silent task").is_some() {
            silent_closed += 1;
        }
    }

    // A little more normal traffic after the storm, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let failures = traffic.await.expect("traffic task");
    let made = made.load(Ordering::Acquire);

    let outcome = |r: &Result<Value, String>| match r {
        Ok(_) => "problem+json".to_string(),
        Err(e) => format!("NOT as expected ({e})"),
    };
    report::record(&Row {
        number: 10,
        scenario: "Hostile HTTP: slowloris, silent connections, slow and huge bodies, deep JSON"
            .to_string(),
        jobs: made,
        lost: failures.len(),
        duplicated: 0,
        regressions: 0,
        recovery: None,
        notes: format!(
            "jobs = normal requests (POST noop + GET it) made during the attack, lost = those that \
             failed. {slow_closed}/{SLOW_HEADERS} slow-header connections (one byte per 100 ms) and \
             {silent_closed}/{SILENT} silent ones closed by the {HEADER_TIMEOUT_SECS} s header \
             timeout (slowest {:.1} s); 10 MB body with Content-Length → 413 {}, chunked → 413 {}; \
             JSON nested {depth} deep → 400 {}; body never finished → {}",
            slow_longest.as_secs_f64(),
            outcome(&declared),
            outcome(&streamed),
            outcome(&deep),
            slow_body
                .clone()
                .unwrap_or_else(|e| format!("NOT as expected ({e})")),
        ),
    });

    assert!(made > 0, "normal traffic ran");
    assert!(failures.is_empty(), "normal requests failed: {failures:?}");
    assert_eq!(slow_closed, SLOW_HEADERS, "slow-header connections closed");
    assert_eq!(silent_closed, SILENT, "silent connections closed");
    declared.expect("10 MB body with Content-Length");
    streamed.expect("chunked 10 MB body");
    deep.expect("deeply nested JSON");
    slow_body.expect("slow body");
}

/// Submits noop jobs and reads each back until `stop`; returns the failures.
async fn normal_traffic(
    base: String,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicUsize>,
) -> Vec<String> {
    let http = system::http_client();
    let mut failures = Vec::new();
    while !stop.load(Ordering::Acquire) {
        made.fetch_add(1, Ordering::AcqRel);
        let submitted = http
            .post(format!("{base}/v1/jobs"))
            .json(&json!({"kind": "noop"}))
            .send()
            .await;
        let id = match submitted {
            Ok(r) if r.status() == StatusCode::ACCEPTED => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string)),
            Ok(r) => {
                failures.push(format!("POST: {}", r.status()));
                continue;
            }
            Err(e) => {
                failures.push(format!("POST: {e}"));
                continue;
            }
        };
        let Some(id) = id else {
            failures.push("POST: 202 without an id".to_string());
            continue;
        };
        match http.get(format!("{base}/v1/jobs/{id}")).send().await {
            Ok(r) if r.status() == StatusCode::OK => {}
            Ok(r) => failures.push(format!("GET {id}: {}", r.status())),
            Err(e) => failures.push(format!("GET {id}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    failures
}

/// Sends a request head one byte per 100 ms, never finishing it; returns how long the
/// server took to close the connection, or `None` if it did not within [`CLOSED_WITHIN`].
async fn slow_headers(addr: String, i: usize) -> Option<Duration> {
    let start = Instant::now();
    let stream = TcpStream::connect(&addr).await.ok()?;
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-Slow-{i}: {}",
        "z".repeat(10_000)
    );
    let trickle = async {
        for byte in head.as_bytes() {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
    };
    let closed = async {
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // hyper may answer 408 before closing
            }
        }
    };
    let cut = tokio::time::timeout(CLOSED_WITHIN, async {
        tokio::select! {
            () = trickle => {}
            () = closed => {}
        }
    })
    .await;
    cut.ok().map(|()| start.elapsed())
}

/// Connects and sends nothing; `Some` once the server has closed the connection.
async fn silent(addr: String) -> Option<()> {
    let mut stream = TcpStream::connect(&addr).await.ok()?;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(CLOSED_WITHIN, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// Sends a complete head announcing 100 bytes of body and only 10 of them: the request
/// timeout must answer 408 problem+json and close the connection.
async fn slow_body(addr: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"kind\":"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(CLOSED_WITHIN, read)
        .await
        .map_err(|_| "the connection stayed open".to_string())?;
    let text = String::from_utf8_lossy(&seen).to_lowercase();
    if !text.starts_with("http/1.1 408") {
        return Err(format!("answer: {text:?}"));
    }
    if !text.contains("content-type: application/problem+json") {
        return Err(format!("not problem+json: {text:?}"));
    }
    Ok(format!(
        "408 problem+json after the {REQUEST_TIMEOUT_SECS} s request timeout, connection closed"
    ))
}

/// A syntactically valid job body of about `size` bytes.
fn big_body(size: usize) -> Vec<u8> {
    let mut body = br#"{"kind":"noop","payload":{"pad":""#.to_vec();
    body.resize(size, b'x');
    body.extend_from_slice(br#""}}"#);
    body
}

/// A body of unknown length, so it goes out with `Transfer-Encoding: chunked`.
struct Chunked(std::collections::VecDeque<bytes::Bytes>);

impl Chunked {
    fn new(data: &[u8]) -> Self {
        Self(
            data.chunks(64 * 1024)
                .map(bytes::Bytes::copy_from_slice)
                .collect(),
        )
    }
}

impl http_body::Body for Chunked {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|c| Ok(http_body::Frame::data(c))),
        )
    }
}
