//! `sleep`: waits `ms` milliseconds on a timer, holding no thread, and stops early when
//! the job is cancelled. A stand-in for a slow call to another service.

use std::future::Future;
use std::time::Duration;

use jetjobs::kinds::DEFAULT_TIMEOUT_SECS;
use jetjobs::processor::{Handler, JobContext, JobError, KindDef, constrain, schema_of};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub const KIND: &str = "sleep";

/// Sleeps shorter than this report no progress: the job is over before a report
/// could be published.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepRequest {
    /// How long to sleep, in milliseconds.
    pub ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct SleepResult {
    pub slept_ms: u64,
}

pub struct Sleep {
    max_ms: u64,
}

impl Sleep {
    pub fn new(max_ms: u64) -> Self {
        Self { max_ms }
    }
}

impl Handler for Sleep {
    type Payload = SleepRequest;
    type Output = SleepResult;

    fn def(&self) -> KindDef {
        // The longest allowed sleep must fit in one attempt, or it could never succeed.
        let timeout = (self.max_ms.div_ceil(1000) + 30).max(DEFAULT_TIMEOUT_SECS);
        KindDef::new(
            KIND,
            &format!(
                "Sleeps for `ms` milliseconds (at most {}) without holding a thread.",
                self.max_ms
            ),
        )
        .timeout_secs(timeout)
    }

    /// The derived schema plus the configured cap ([`check_cap`]).
    fn schema(&self) -> serde_json::Value {
        let mut schema = schema_of::<SleepRequest>();
        constrain(
            &mut schema,
            "ms",
            serde_json::json!({"maximum": self.max_ms}),
        );
        schema
    }

    async fn handle(
        &self,
        payload: SleepRequest,
        ctx: JobContext,
    ) -> Result<SleepResult, JobError> {
        let duration = check_cap(payload.ms, self.max_ms)?;
        let slept_ms = sleep_for(duration, ctx.cancelled(), |done, total| {
            ctx.progress(done, total)
        })
        .await?;
        Ok(SleepResult { slept_ms })
    }
}

/// A request above the cap fails permanently: retrying would ask for the same.
pub fn check_cap(ms: u64, max_ms: u64) -> Result<Duration, JobError> {
    if ms > max_ms {
        return Err(JobError::Permanent(format!(
            "ms = {ms} is above the limit of {max_ms} ms for a sleep"
        )));
    }
    Ok(Duration::from_millis(ms))
}

/// Sleeps for `duration` unless `cancelled` completes first; reports progress in
/// milliseconds about once a second. Returns the milliseconds slept.
pub async fn sleep_for(
    duration: Duration,
    cancelled: impl Future<Output = ()>,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, JobError> {
    let total_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let start = Instant::now();
    let deadline = start + duration;
    let mut ticks = tokio::time::interval_at(start + PROGRESS_EVERY, PROGRESS_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => return Err(JobError::Retryable("cancelled".to_string())),
            () = tokio::time::sleep_until(deadline) => return Ok(total_ms),
            _ = ticks.tick(), if duration > PROGRESS_EVERY => {
                let done = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                progress(done.min(total_ms), total_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_schema_refuses_what_the_handler_refuses() {
        let payloads = [
            json!({}),
            json!({"ms": -1}),
            json!({"ms": 0}),
            json!({"ms": 1000}),
            json!({"ms": 1001}),
            json!({"ms": 1.5}),
            json!({"ms": 1, "x": 1}),
        ];
        let sleep = Sleep::new(1000);
        jetjobs::testing::assert_schema_agrees(&Handler::schema(&sleep), &payloads, |p| {
            serde_json::from_value::<SleepRequest>(p.clone())
                .is_ok_and(|r| check_cap(r.ms, 1000).is_ok())
        });
    }

    #[test]
    fn payload_is_strict() {
        let ok: SleepRequest = serde_json::from_value(json!({"ms": 50})).expect("valid");
        assert_eq!(ok.ms, 50);
        assert!(serde_json::from_value::<SleepRequest>(json!({"ms": 50, "x": 1})).is_err());
        assert!(serde_json::from_value::<SleepRequest>(json!({"ms": -1})).is_err());
        assert!(serde_json::from_value::<SleepRequest>(json!({})).is_err());
    }

    #[test]
    fn requests_above_the_cap_fail_permanently() {
        assert_eq!(check_cap(1_000, 1_000), Ok(Duration::from_secs(1)));
        assert_eq!(check_cap(0, 1_000), Ok(Duration::ZERO));
        match check_cap(1_001, 1_000) {
            Err(JobError::Permanent(message)) => {
                assert!(
                    message.contains("1001") && message.contains("1000"),
                    "{message}"
                );
            }
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    #[test]
    fn long_sleeps_get_a_timeout_that_fits_them() {
        assert_eq!(Sleep::new(60_000).def().timeout_secs, DEFAULT_TIMEOUT_SECS);
        assert_eq!(Sleep::new(3_600_000).def().timeout_secs, 3_630);
    }

    #[tokio::test(start_paused = true)]
    async fn sleeps_the_whole_time_and_reports_progress() {
        let mut reports = Vec::new();
        let start = Instant::now();
        let slept = sleep_for(
            Duration::from_millis(3_500),
            std::future::pending(),
            |done, total| reports.push((done, total)),
        )
        .await;
        assert_eq!(slept, Ok(3_500));
        assert_eq!(start.elapsed(), Duration::from_millis(3_500));
        assert_eq!(
            reports,
            vec![(1_000, 3_500), (2_000, 3_500), (3_000, 3_500)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn short_sleeps_report_nothing() {
        let mut reports = 0;
        let slept = sleep_for(Duration::from_millis(10), std::future::pending(), |_, _| {
            reports += 1;
        })
        .await;
        assert_eq!(slept, Ok(10));
        assert_eq!(reports, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_it_early() {
        let start = Instant::now();
        let cancelled = tokio::time::sleep(Duration::from_millis(200));
        let outcome = sleep_for(Duration::from_secs(60), cancelled, |_, _| {}).await;
        assert_eq!(outcome, Err(JobError::Retryable("cancelled".to_string())));
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }
}
