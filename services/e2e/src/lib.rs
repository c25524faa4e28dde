//! jetjobs' end-to-end suites, one test binary each under `tests/`:
//!
//! - `it`: the scenarios — gateway, processors and status service in-process against a
//!   real nats-server, over real HTTP;
//! - `webhooks`: the notifier's deliveries to real HTTP(S) receivers;
//! - `faults`: the service binaries as processes, killed, frozen and starved in the middle
//!   of real workloads (writes `docs/reliability.md`'s table when asked);
//! - `tracing`: one trace per job across every service;
//! - `permissions`: the services under `deploy/nats/auth.conf`.
//!
//! Its library is what they share: [`system`] starts a system (one `spawn_system`, for
//! every suite), [`Component`] is one service in it. The crate exists so that no service
//! crate depends on the others for its tests.

use std::path::PathBuf;

pub mod system;

/// A service binary built next to the running test (`deploy/local/test.sh` builds them,
/// with the gateway's `failpoints`): `target/<profile>/deps/<test>-<hash>` →
/// `target/<profile>/<name>`.
///
/// # Panics
/// When the binary is missing, saying how to build it.
pub fn service_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --all-targets --all-features` first (deploy/local/test.sh does)",
        path.display()
    );
    path
}

/// One service running in-process (its library's `run`), stopped on drop: what every
/// suite's system is made of.
pub struct Component {
    shutdown: tokio_util::sync::CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Component {
    /// Starts `run` with a shutdown token of its own; a service that fails panics the
    /// test, naming `name`.
    pub fn spawn<F>(
        name: &'static str,
        run: impl FnOnce(tokio_util::sync::CancellationToken) -> F,
    ) -> Self
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let future = run(shutdown.clone());
        let handle = tokio::spawn(async move {
            if let Err(e) = future.await {
                panic!("{name} failed: {e:#}");
            }
        });
        Self {
            shutdown,
            handle: Some(handle),
        }
    }

    /// A clean stop: the service finishes in-flight work first.
    ///
    /// # Panics
    /// When the service's task panicked.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("component task");
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
