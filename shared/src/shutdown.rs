//! One shutdown signal for every service: Ctrl-C or SIGTERM cancels a token, a second
//! one exits at once, and a watchdog bounds the whole shutdown.
//!
//! A terminal's Ctrl-C signals the whole process group, nats-server included: a service
//! shutting down may find NATS gone, and whatever it still waits for (a flush, a
//! release, an exporter) must not keep it alive. The graceful path has its own budgets;
//! the watchdog is the backstop for a budget someone forgot.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Past the grace period, what the graceful path may still spend (handing jobs back,
/// flushing, exporting telemetry) before the watchdog ends the process.
pub const MARGIN: Duration = Duration::from_secs(10);

/// Exit code after a second signal: the shell's for a process killed by SIGINT.
pub const EXIT_INTERRUPTED: i32 = 130;
/// Exit code when the watchdog ends a shutdown that outlived its budget.
pub const EXIT_SHUTDOWN_TIMEOUT: i32 = 124;

/// Returns a token cancelled on the first SIGINT or SIGTERM. A second signal exits the
/// process at once; so does the end of `grace` + [`MARGIN`] after the first.
pub fn on_signal_within(grace: Duration) -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            grace_secs = grace.as_secs(),
            "Shutdown signal received; finishing in-flight work (a second signal exits now)."
        );
        cancel.cancel();
        // A thread, not a task: it must fire even if the runtime is wedged.
        let limit = grace.saturating_add(MARGIN);
        let watchdog = std::thread::Builder::new()
            .name("shutdown-watchdog".into())
            .spawn(move || {
                std::thread::sleep(limit);
                eprintln!(
                    "shutdown took longer than {} s; exiting without finishing it",
                    limit.as_secs()
                );
                std::process::exit(EXIT_SHUTDOWN_TIMEOUT);
            });
        if let Err(e) = watchdog {
            tracing::error!(error = %e, "Cannot start the shutdown watchdog.");
        }
        wait_for_signal().await;
        eprintln!("second shutdown signal; exiting now");
        std::process::exit(EXIT_INTERRUPTED);
    });
    token
}

/// [`on_signal_within`] with a 10 s grace, for tools without a configured one.
pub fn on_signal() -> CancellationToken {
    on_signal_within(Duration::from_secs(10))
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "Cannot listen for Ctrl-C.");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
