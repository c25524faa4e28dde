//! `flaky`: fails the way it is asked to, for a number of attempts, then succeeds.
//!
//! It is how an operator (or a test) sees retries, timeouts, panics and dead letters
//! happen for real: `{"fail": "retryable", "times": 2}` fails twice and succeeds on the
//! third attempt; `{"fail": "permanent"}` fails at once, without retries; `{"fail":
//! "panic"}` panics inside the handler; `{"fail": "hang"}` never returns (the per-job
//! timeout ends it).

use std::time::Duration;

use jetjobs::processor::{Handler, JobContext, JobError, KindDef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const KIND: &str = "flaky";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// Return a retryable error.
    #[default]
    Retryable,
    /// Return a permanent error: the job fails without further attempts.
    Permanent,
    /// Panic in the handler.
    Panic,
    /// Never finish (until cancelled or timed out).
    Hang,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlakyRequest {
    /// How the failing attempts fail.
    #[serde(default)]
    pub fail: Failure,
    /// Attempts that fail before one succeeds; absent: every attempt fails.
    #[serde(default)]
    #[schemars(range(max = 100))]
    pub times: Option<u32>,
    /// Work time of each attempt before it fails or succeeds, in milliseconds.
    #[serde(default)]
    #[schemars(range(max = 60000))]
    pub ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct FlakyResult {
    /// The attempt that succeeded.
    pub attempt: u32,
}

pub struct Flaky;

/// Longest work time an attempt may ask for, so a flaky job cannot pin a slot for long.
const MAX_MS: u64 = 60_000;
/// Most failing attempts a request may ask for.
const MAX_TIMES: u32 = 100;

impl Handler for Flaky {
    type Payload = FlakyRequest;
    type Output = FlakyResult;

    fn def(&self) -> KindDef {
        KindDef::new(
            KIND,
            "Fails as asked (retryable, permanent, panic or hang) for `times` attempts, \
             then succeeds; for seeing retries, timeouts and dead letters at work.",
        )
    }

    async fn handle(
        &self,
        payload: FlakyRequest,
        ctx: JobContext,
    ) -> Result<FlakyResult, JobError> {
        check(&payload)?;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(payload.ms)) => {}
            () = ctx.cancelled() => return Err(JobError::retryable("cancelled")),
        }
        let attempt = ctx.attempt();
        if payload.times.is_some_and(|times| attempt > times) {
            return Ok(FlakyResult { attempt });
        }
        match payload.fail {
            Failure::Retryable => Err(JobError::retryable(format!(
                "flaky: attempt {attempt} failed as asked"
            ))),
            Failure::Permanent => Err(JobError::permanent(format!(
                "flaky: attempt {attempt} failed permanently as asked"
            ))),
            Failure::Panic => panic!("flaky: attempt {attempt} panicked as asked"),
            Failure::Hang => {
                ctx.cancelled().await;
                Err(JobError::retryable("cancelled"))
            }
        }
    }
}

/// The limits, also in the schema (`#[schemars(range)]` above).
fn check(payload: &FlakyRequest) -> Result<(), JobError> {
    if payload.ms > MAX_MS {
        return Err(JobError::permanent(format!(
            "ms = {} is above the limit of {MAX_MS} ms",
            payload.ms
        )));
    }
    if let Some(times) = payload.times.filter(|&t| t > MAX_TIMES) {
        return Err(JobError::permanent(format!(
            "times = {times} is above the limit of {MAX_TIMES}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_schema_refuses_what_the_handler_refuses() {
        let payloads = [
            json!({}),
            json!({"fail": "hang"}),
            json!({"fail": "sometimes"}),
            json!({"times": 100}),
            json!({"times": 101}),
            json!({"times": null}),
            json!({"times": -1}),
            json!({"ms": 60000}),
            json!({"ms": 60001}),
            json!({"y": 1}),
        ];
        jetjobs::testing::assert_schema_agrees(&Handler::schema(&Flaky), &payloads, |p| {
            serde_json::from_value::<FlakyRequest>(p.clone()).is_ok_and(|r| check(&r).is_ok())
        });
    }

    #[test]
    fn defaults_to_failing_every_attempt_retryably() {
        let request: FlakyRequest = serde_json::from_value(json!({})).expect("valid");
        assert_eq!(request.fail, Failure::Retryable);
        assert_eq!(request.times, None);
        assert!(serde_json::from_value::<FlakyRequest>(json!({"fail": "sometimes"})).is_err());
        assert!(serde_json::from_value::<FlakyRequest>(json!({"x": 1})).is_err());
    }
}
