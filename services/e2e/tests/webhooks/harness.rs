//! A jetjobs system for webhook scenarios: a real nats-server, the gateway, processor-io,
//! the status service and (optionally) the notifier, in-process; and receivers, real
//! HTTP servers on 127.0.0.1.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jetjobs::webhook::Secret;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::helpers;

/// The two active secrets every scenario signs with (a rotation in progress).
pub fn secrets() -> [Secret; 2] {
    [
        Secret::from_bytes(b"an-old-secret-of-32-bytes-length".to_vec()),
        Secret::from_bytes(b"the-new-secret-also-32-bytes-ok!".to_vec()),
    ]
}

pub fn secrets_env() -> String {
    secrets()
        .iter()
        .map(Secret::to_whsec)
        .collect::<Vec<_>>()
        .join(",")
}

pub use jetjobs_e2e::Component;

pub struct Options {
    /// Run the notifier in-process (off for scenarios that spawn its binary).
    pub notifier: bool,
    /// `JETJOBS_WEBHOOK_ALLOW` of the notifier.
    pub notifier_allow: &'static str,
    pub notifier_ack_wait: Duration,
    /// `JETJOBS_WEBHOOK_CA_FILE` of the notifier.
    pub notifier_ca_file: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            notifier: true,
            notifier_allow: "127.0.0.0/8",
            notifier_ack_wait: Duration::from_secs(60),
            notifier_ca_file: None,
        }
    }
}

/// The shared in-process system (`it/helpers.rs`), with the notifier set up for webhook
/// scenarios: both secrets, quick retries, loopback receivers allowed.
pub struct System {
    inner: helpers::System,
}

impl std::ops::Deref for System {
    type Target = helpers::System;

    fn deref(&self) -> &helpers::System {
        &self.inner
    }
}

impl System {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let inner = helpers::System::start_with(helpers::Options {
            run_notifier: options.notifier,
            notifier: notifier_options(&options),
            notifier_ack_wait: options.notifier_ack_wait,
            loopback_callbacks: true,
            ..helpers::Options::default()
        })
        .await;
        Self { inner }
    }

    /// Submits a job with a callback and returns its id.
    pub async fn submit_with_callback(&self, kind: &str, payload: Value, callback: &str) -> String {
        let response = self
            .post(&json!({"kind": kind, "payload": payload, "callback_url": callback}))
            .await;
        assert_eq!(response.status(), 202, "submit {kind}");
        let body: Value = response.json().await.expect("snapshot");
        body["id"].as_str().expect("id").to_string()
    }

    pub async fn get_job(&self, id: &str) -> Value {
        self.inner.get_job(id).await.1
    }

    /// Polls the job until its webhook is `state`, and returns the snapshot.
    pub async fn wait_for_webhook(&self, id: &str, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.get_job(id).await;
            if job["webhook"]["state"] == state {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id}'s webhook never became {state}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn notifier_options(options: &Options) -> helpers::NotifierOptions {
    helpers::NotifierOptions {
        secrets: secrets_env(),
        allow: options.notifier_allow.to_string(),
        ca_file: options.notifier_ca_file.clone(),
        quick_retries: true,
    }
}

/// A notifier configured for tests: quick retries, both secrets.
pub fn notifier_config(url: &str) -> jetjobs_notifier::Config {
    helpers::notifier_config(
        url,
        &notifier_options(&Options {
            notifier_allow: "",
            ..Options::default()
        }),
    )
}

pub use jetjobs::testing::eventually;

/// One request a receiver got, and what it answered.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub answered: u16,
    pub at: Instant,
}

impl Delivery {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("delivery without {name}"))
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A scripted answer: status and extra headers.
pub type Answer = (u16, Vec<(&'static str, String)>);

#[derive(Default)]
struct ReceiverState {
    script: VecDeque<Answer>,
    deliveries: Vec<Delivery>,
    delay: Duration,
}

/// A webhook receiver: answers from its script, then `200`, and remembers every request.
#[derive(Clone)]
pub struct Receiver {
    pub base: String,
    state: Arc<Mutex<ReceiverState>>,
    _shutdown: Arc<ShutdownOnDrop>,
}

struct ShutdownOnDrop(CancellationToken);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Receiver {
    pub async fn start(script: Vec<Answer>) -> Self {
        Self::start_slow(script, Duration::ZERO).await
    }

    /// Every answer waits `delay` first.
    pub async fn start_slow(script: Vec<Answer>, delay: Duration) -> Self {
        Self::serve(script, delay, None).await
    }

    /// An https receiver at `https://localhost:<port>`, presenting `cert`.
    pub async fn start_https(script: Vec<Answer>, cert: &TestCert) -> Self {
        Self::serve(script, Duration::ZERO, Some(cert.acceptor())).await
    }

    async fn serve(
        script: Vec<Answer>,
        delay: Duration,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let state = Arc::new(Mutex::new(ReceiverState {
            script: script.into(),
            deliveries: Vec::new(),
            delay,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::clone(&state);
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let state = Arc::clone(&shared);
                async move { answer(state, uri.path().to_string(), headers, body).await }
            },
        );
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let base = if let Some(acceptor) = tls {
            tokio::spawn(serve_tls(listener, acceptor, app, stop));
            format!("https://localhost:{port}")
        } else {
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
                    .expect("receiver serves");
            });
            format!("http://127.0.0.1:{port}")
        };
        Self {
            base,
            state,
            _shutdown: Arc::new(ShutdownOnDrop(shutdown)),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state
            .lock()
            .expect("receiver state")
            .deliveries
            .clone()
    }
}

async fn answer(
    state: Arc<Mutex<ReceiverState>>,
    path: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delay = state.lock().expect("receiver state").delay;
    tokio::time::sleep(delay).await;
    let mut state = state.lock().expect("receiver state");
    let (status, extra) = state.script.pop_front().unwrap_or((200, Vec::new()));
    state.deliveries.push(Delivery {
        path,
        headers,
        body,
        answered: status,
        at: Instant::now(),
    });
    let mut response = StatusCode::from_u16(status)
        .expect("a status")
        .into_response();
    for (name, value) in extra {
        response
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    response
}

/// Accepts TLS connections until `stop`, each served by `app` over HTTP/1.1. A failed
/// handshake (a client that does not trust the certificate) only ends that connection.
async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    stop: CancellationToken,
) {
    loop {
        let (tcp, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted.expect("accept"),
        };
        let acceptor = acceptor.clone();
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::select! {
                () = stop.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

/// A self-signed certificate for `localhost`, and a PEM file holding it (what
/// `JETJOBS_WEBHOOK_CA_FILE` points at to trust it).
pub struct TestCert {
    key: rcgen::CertifiedKey<rcgen::KeyPair>,
    pem_file: tempfile::NamedTempFile,
}

impl TestCert {
    pub fn new() -> Self {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("a self-signed certificate");
        let mut pem_file = tempfile::NamedTempFile::new().expect("a temp file");
        std::io::Write::write_all(&mut pem_file, key.cert.pem().as_bytes()).expect("write PEM");
        Self { key, pem_file }
    }

    pub fn pem_path(&self) -> std::path::PathBuf {
        self.pem_file.path().to_path_buf()
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key =
            rustls_pki_types::PrivateKeyDer::Pkcs8(self.key.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.key.cert.der().clone()], key)
            .expect("a server certificate");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}
