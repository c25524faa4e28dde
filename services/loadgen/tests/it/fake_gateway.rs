//! A stand-in for the gateway: enough HTTP/1.1 (keep-alive, Content-Length bodies) to take
//! `POST /v1/jobs`, and `job_status` writes in the orders the real services can produce.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::{self, kv};
use jetjobs::layout::{self, Layout};
use jetjobs::testing::NatsServer;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// By request number: 503s, terminal before the answer, terminal in the answer,
    /// terminal after the answer, some failed.
    Mixed,
    AllSucceed,
    NeverFinish,
}

pub struct FakeGateway {
    port: u16,
}

impl FakeGateway {
    pub async fn start(nats: &NatsServer, behaviour: Behaviour) -> Self {
        let js = jetstream::new(nats.client().await);
        layout::provision(&js, &Layout::default())
            .await
            .expect("provision the layout");
        let bucket = js
            .get_key_value(layout::STATUS_BUCKET)
            .await
            .expect("the status bucket");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local address").port();
        let counter = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(
                    socket,
                    bucket.clone(),
                    Arc::clone(&counter),
                    behaviour,
                ));
            }
        });
        Self { port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

async fn serve(
    socket: TcpStream,
    bucket: kv::Store,
    counter: Arc<AtomicU64>,
    behaviour: Behaviour,
) {
    let mut reader = BufReader::new(socket);
    loop {
        let mut content_length = 0usize;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return; // the client closed the connection
            }
            let header = line.trim_end();
            if header.is_empty() && !first {
                break;
            }
            first = false;
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().expect("a numeric Content-Length");
            }
        }
        let mut body = vec![0; content_length];
        reader
            .read_exact(&mut body)
            .await
            .expect("the request body");
        let request: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
        assert!(request["kind"].is_string() && request["payload"].is_object());

        let n = counter.fetch_add(1, Ordering::SeqCst);
        let (status, answer) = handle(n, &bucket, behaviour).await;
        let answer = answer.to_string();
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if reader
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn handle(
    n: u64,
    bucket: &kv::Store,
    behaviour: Behaviour,
) -> (&'static str, serde_json::Value) {
    let id = Uuid::now_v7();
    let bucket = bucket.clone();
    let put = move |state: &'static str| {
        let bucket = bucket.clone();
        async move {
            let value = json!({"id": id, "kind": "noop", "state": state}).to_string();
            bucket
                .put(id.to_string(), value.into())
                .await
                .expect("write job_status");
        }
    };
    let snapshot = |state: &str| json!({"id": id, "kind": "noop", "state": state});
    match behaviour {
        Behaviour::NeverFinish => {
            put("queued").await;
            ("202 Accepted", snapshot("queued"))
        }
        Behaviour::AllSucceed => {
            put("queued").await;
            tokio::spawn(put("succeeded"));
            ("202 Accepted", snapshot("queued"))
        }
        Behaviour::Mixed => {
            if n % 10 == 9 {
                return (
                    "503 Service Unavailable",
                    json!({"title": "queue full", "status": 503}),
                );
            }
            let end = if n.is_multiple_of(4) {
                "failed"
            } else {
                "succeeded"
            };
            match n % 3 {
                // Finished before the gateway answered.
                0 => {
                    put("queued").await;
                    put(end).await;
                    ("202 Accepted", snapshot("queued"))
                }
                // Finished, and the answer already says so.
                1 => {
                    put(end).await;
                    ("202 Accepted", snapshot(end))
                }
                // Finishes later, with a running step in between.
                _ => {
                    put("queued").await;
                    let later = async move {
                        put("running").await;
                        put(end).await;
                    };
                    tokio::spawn(later);
                    ("202 Accepted", snapshot("queued"))
                }
            }
        }
    }
}
