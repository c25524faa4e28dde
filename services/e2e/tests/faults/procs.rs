//! The services as real processes, so a scenario can SIGKILL, SIGSTOP and restart them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::check::eventually;

pub use jetjobs_e2e::service_binary as binary;

/// One service process; restartable with the same command line and environment.
pub struct Service {
    name: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    pub fn start(name: &str, binary_name: &str, env: &[(&str, String)], logs: &Path) -> Self {
        let mut service = Self {
            name: name.to_string(),
            binary: binary(binary_name),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
            log: logs.join(format!("{name}.log")),
            child: None,
        };
        service.spawn();
        service
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the service log");
        let err = log.try_clone().expect("clone the log handle");
        let child = Command::new(&self.binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {}", self.name);
    }

    /// SIGKILL, as a crash: nothing is flushed or released.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process freezes, holding its connections and its jobs.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// SIGTERM, and waits for a clean exit.
    pub async fn terminate(&mut self) {
        if self.child.is_some() {
            self.signal("-TERM");
        }
        if let Some(mut child) = self.child.take() {
            let exited = eventually(Duration::from_secs(30), || {
                let done = child.try_wait().ok().flatten().is_some();
                async move { done.then_some(()) }
            })
            .await;
            if exited.is_none() {
                let _ = child.kill();
                panic!("{} did not exit within 30 s of SIGTERM", self.name);
            }
        }
    }

    /// Waits up to `limit` for the process to exit by itself (after a signal sent to
    /// it), and returns how it exited; `None` if it is still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Still running (not exited, not crashed)?
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_none())
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs it again with one more environment variable (or a changed one).
    pub fn restart_with(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_string(), value.to_string()));
        }
        self.restart();
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // SIGKILL ends a stopped process too; thawing first lets it die at once.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// A free TCP port on loopback (the gateway keeps its port across restarts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
