//! How a processor runs, independent of what it runs.

use std::time::Duration;

use rand::Rng as _;

#[derive(clap::Args, Clone, Debug)]
pub struct RuntimeConfig {
    /// Jobs run at once by this replica; 0 means the processor's own default (64 for
    /// I/O-bound kinds, one per CPU for CPU-bound ones).
    #[arg(long, env = "JETJOBS_CONCURRENCY", default_value_t = 0)]
    pub concurrency: usize,
    /// Jobs held beyond the running ones, ready to start the moment a slot frees, so a
    /// slot does not sit idle while the previous job's outcome is recorded and the next
    /// job is pulled. They stay `queued` until they start. 0 means the processor's own
    /// default (its concurrency, at most 16).
    #[arg(long, env = "JETJOBS_PREFETCH", default_value_t = 0)]
    pub prefetch: usize,
    /// Largest number of jobs asked for in one pull request.
    #[arg(long, env = "JETJOBS_MAX_BATCH", default_value_t = 64)]
    pub max_batch: usize,
    /// How long one pull request waits for jobs before it is renewed.
    #[arg(long, env = "JETJOBS_PULL_EXPIRES_MS", default_value_t = 5_000)]
    pub pull_expires_ms: u64,
    /// A run records `started` only once it has lasted this long: a job that ends sooner goes from `queued` straight to its outcome,
    /// one write and one projection fewer per job. 0 records every start before the
    /// run. A redelivery of a job whose earlier delivery recorded nothing (its processor
    /// died) always records its start first, so such a job still uses up its attempts.
    #[arg(long, env = "JETJOBS_STARTED_AFTER_MS", default_value_t = 5)]
    pub started_after_ms: u64,
    /// Least time between two progress events of one job.
    #[arg(long, env = "JETJOBS_PROGRESS_INTERVAL_MS", default_value_t = 250)]
    pub progress_interval_ms: u64,
    /// First retry delay; doubles with each attempt, with jitter.
    #[arg(long, env = "JETJOBS_RETRY_BASE_MS", default_value_t = 1_000)]
    pub retry_base_ms: u64,
    /// Longest retry delay.
    #[arg(long, env = "JETJOBS_RETRY_MAX_MS", default_value_t = 60_000)]
    pub retry_max_ms: u64,
    /// On shutdown, how long running jobs may take to finish before they are released.
    #[arg(long, env = "JETJOBS_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    /// Group commit: events of jobs that end together are stored as one atomic batch
    /// (one fsync for many with `sync_interval: always`); a lone one goes out at once.
    /// Off by default: on a local disk (fsync ~80 µs) it halved fsyncs per job but cost
    /// JetStream more CPU than it saved (docs/performance.md); turn it on where fsync is
    /// slow (network-attached disks) and the server runs `sync_interval: always`.
    #[arg(long, env = "JETJOBS_GROUP_COMMIT", default_value_t = false, action = clap::ArgAction::Set)]
    pub group_commit: bool,
    /// Fewer waiting events than this are published one by one.
    #[arg(long, env = "JETJOBS_GROUP_COMMIT_MIN", default_value_t = 5)]
    pub group_commit_min: usize,
    /// A result whose JSON is larger than this many bytes is stored in `job_blobs` and
    /// referenced from the job (`result_ref`) instead of travelling in the event.
    #[arg(long, env = "JETJOBS_INLINE_RESULT_MAX_BYTES", default_value_t = 64 * 1024)]
    pub inline_result_max_bytes: usize,
    /// A low-priority job runs only when nothing else waits, unless it has waited this
    /// many seconds: then it is taken next regardless.
    #[arg(
        long,
        env = "JETJOBS_LOW_PRIORITY_MAX_WAIT_SECS",
        default_value_t = 300
    )]
    pub low_priority_max_wait_secs: u64,
    #[command(flatten)]
    pub admin: crate::metrics::AdminArgs,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            concurrency: 0,
            prefetch: 0,
            max_batch: 64,
            pull_expires_ms: 5_000,
            started_after_ms: 5,
            progress_interval_ms: 250,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            shutdown_grace_secs: 20,
            group_commit: false,
            group_commit_min: 5,
            inline_result_max_bytes: 64 * 1024,
            low_priority_max_wait_secs: 300,
            admin: crate::metrics::AdminArgs::default(),
        }
    }
}

impl RuntimeConfig {
    pub fn group_commit(&self) -> crate::batch::GroupConfig {
        crate::batch::GroupConfig {
            enabled: self.group_commit,
            min_batch: self.group_commit_min.clamp(2, crate::batch::MAX_BATCH),
            retries: crate::protocol::Retries::BACKGROUND,
            ..Default::default()
        }
    }

    /// Exponential backoff with "equal jitter": half the delay fixed, half random, so
    /// replicas retrying the same failing dependency spread out.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let exp = self
            .retry_base_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.retry_max_ms).max(1);
        let half = capped / 2;
        Duration::from_millis(half + rand::rng().random_range(0..=capped - half))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_stay_capped() {
        let config = RuntimeConfig {
            retry_base_ms: 100,
            retry_max_ms: 1_000,
            ..Default::default()
        };
        for _ in 0..100 {
            let first = config.retry_delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = config.retry_delay(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(config.retry_delay(30) <= Duration::from_millis(1_000));
        }
    }
}
