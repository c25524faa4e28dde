//! `jetjobs watch`: follows a job over SSE (`GET /v1/jobs/{id}/events`) until it ends.
//! Progress drives a bar on stderr; each state change is a line as it happens; the final
//! snapshot (with the result) comes last, and the exit code says how the job ended.

use std::time::Duration;

use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::client::Client;
use crate::error::{Error, Result, exit};
use crate::output::Output;
use crate::{jobs, sse, tables};

/// Reconnections in a row after losing the gateway, a second apart, before giving up.
const MAX_RECONNECTS: u32 = 30;
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// A stream silent this long is taken for dead (the gateway sends a keep-alive comment
/// every `JETJOBS_SSE_KEEPALIVE_SECS`, 15 by default) and reconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// The exit code for a terminal state; `None` while the job is not done.
pub fn exit_code(state: &str) -> Option<u8> {
    match state {
        "succeeded" => Some(exit::OK),
        "failed" => Some(exit::FAILURE),
        "cancelled" => Some(exit::CANCELLED),
        _ => None,
    }
}

/// `jetjobs watch`.
pub async fn watch(client: &Client, out: &Output, id: &str) -> Result<u8> {
    let mut view = View::new(out);
    let mut last_event_id: Option<String> = None;
    let mut connected = false;
    let mut failures = 0;
    loop {
        match client.job_events(id, last_event_id.as_deref()).await {
            Ok(response) => {
                connected = true;
                failures = 0;
                let mut parser = sse::Parser::new();
                let mut body = response.bytes_stream();
                // A stream that breaks off or falls silent (the gateway went away or froze)
                // is reconnected below.
                while let Ok(Some(Ok(chunk))) =
                    tokio::time::timeout(IDLE_TIMEOUT, body.next()).await
                {
                    for event in parser.feed(&chunk)? {
                        if event.event != "snapshot" {
                            continue;
                        }
                        let job: Value = serde_json::from_str(&event.data).map_err(|e| {
                            Error::Protocol(format!("an event that is not a snapshot: {e}"))
                        })?;
                        if let Some(code) = view.show(&job)? {
                            return Ok(code);
                        }
                    }
                }
                if let Some(last) = parser.last_id() {
                    last_event_id = Some(last.to_string());
                }
            }
            Err(e) => give_up_unless_transient(e, connected, &mut failures)?,
        }
        // The stream ended before the job did (the gateway restarted), or the job ended
        // while we were away (a reconnection then closes at once): ask for the snapshot.
        match client.job(id).await {
            Ok(job) => {
                if let Some(code) = view.show(&job)? {
                    return Ok(code);
                }
            }
            Err(e) => give_up_unless_transient(e, connected, &mut failures)?,
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// Once the stream has been open, an unavailable gateway is waited for (it restarts), and
/// so is an exchange cut off midway (a kept-alive connection the stopped gateway closed
/// under the request); anything else, or too long a wait, ends the watch.
fn give_up_unless_transient(error: Error, connected: bool, failures: &mut u32) -> Result<()> {
    let transient = error.exit_code() == exit::UNAVAILABLE || matches!(error, Error::Http(_));
    if connected && transient && *failures < MAX_RECONNECTS {
        *failures += 1;
        Ok(())
    } else {
        Err(error)
    }
}

/// What the watcher has shown so far.
struct View<'a> {
    out: &'a Output,
    bar: Option<ProgressBar>,
    /// The state and attempt last shown.
    shown: Option<(String, u64)>,
}

impl<'a> View<'a> {
    fn new(out: &'a Output) -> Self {
        Self {
            out,
            bar: None,
            shown: None,
        }
    }

    /// Shows what `job` changes; its exit code once it is terminal.
    fn show(&mut self, job: &Value) -> Result<Option<u8>> {
        let state = tables::text(job, "state");
        let attempt = job.get("attempt").and_then(Value::as_u64).unwrap_or(0);
        let done = exit_code(&state);
        let changed = self
            .shown
            .as_ref()
            .is_none_or(|(s, a)| *s != state || *a != attempt);
        if changed {
            if state != "running" {
                self.clear_bar();
            }
            if !self.out.json() {
                self.print(&state_line(job, &state))?;
            }
            self.shown = Some((state.clone(), attempt));
        }
        if state == "running" {
            self.progress(job);
        }
        let Some(code) = done else {
            return Ok(None);
        };
        self.clear_bar();
        if !self.out.json() {
            self.out.line("")?;
        }
        jobs::print_snapshot(self.out, job)?;
        Ok(Some(code))
    }

    /// Moves the bar to the job's `progress` (creating it on the first report).
    fn progress(&mut self, job: &Value) {
        let Some(progress) = job.get("progress").filter(|p| !p.is_null()) else {
            return;
        };
        let current = progress.get("current").and_then(Value::as_u64);
        let total = progress.get("total").and_then(Value::as_u64);
        let (Some(current), Some(total)) = (current, total) else {
            return;
        };
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) =
                ProgressStyle::with_template("{wide_bar} {pos}/{len} {percent}% {eta}")
            {
                bar.set_style(style);
            }
            bar
        });
        bar.set_length(total);
        bar.set_position(current);
    }

    fn clear_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// A line on stdout, above the bar if one is drawn.
    fn print(&self, line: &str) -> Result<()> {
        match &self.bar {
            Some(bar) => bar.suspend(|| self.out.line(line)),
            None => self.out.line(line),
        }
    }
}

/// `12:00:01Z  running    attempt 1/3` and, where there is one, why.
fn state_line(job: &Value, state: &str) -> String {
    let at = tables::time(job, "updated_at");
    let clock = at.split_once('T').map_or(at.as_str(), |(_, clock)| clock);
    let mut line = format!(
        "{clock}  {}{}  attempt {}",
        tables::state(state),
        " ".repeat(9usize.saturating_sub(state.len())),
        tables::attempts(job)
    );
    let error = tables::text(job, "error");
    if !error.is_empty() && matches!(state, "retrying" | "failed" | "cancelled") {
        line.push_str("  ");
        line.push_str(&tables::cut(&error, 120));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_have_their_exit_codes() {
        assert_eq!(exit_code("succeeded"), Some(0));
        assert_eq!(exit_code("failed"), Some(1));
        assert_eq!(exit_code("cancelled"), Some(3));
        assert_eq!(exit_code("running"), None);
        assert_eq!(exit_code("retrying"), None);
    }
}
