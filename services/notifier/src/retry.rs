//! When to try a delivery again: exponential backoff with jitter, a receiver's
//! `Retry-After`, and the period after which an event is given up.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use rand::Rng as _;

#[derive(Clone, Debug)]
pub struct Policy {
    pub base: Duration,
    pub max: Duration,
    /// The longest `Retry-After` honoured; a receiver cannot park an event for longer.
    pub retry_after_max: Duration,
    /// Measured from the event's time, so a notifier that was down does not extend it.
    pub period: Duration,
}

impl Policy {
    /// The delay before attempt `attempt + 1`: `base * 2^(attempt-1)`, capped at `max`,
    /// with jitter (between half and all of it) so receivers that failed together are
    /// not all retried at once. A `Retry-After` is honoured instead, up to
    /// `retry_after_max`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(asked) = retry_after {
            return asked.min(self.retry_after_max);
        }
        let exp = self
            .base
            .saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1).min(31)))
            .min(self.max);
        let half = exp / 2;
        half + rand::rng().random_range(Duration::ZERO..=exp - half)
    }

    /// `Some(delay)` to try again, clipped so the last attempt falls at the end of the
    /// period; `None` once the period is over.
    pub fn next(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        event_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<Duration> {
        let end = event_at + chrono::Duration::from_std(self.period).ok()?;
        let left = (end - now).to_std().ok().filter(|left| !left.is_zero())?;
        Some(self.delay(attempt, retry_after).min(left))
    }

    pub fn expired(&self, event_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        chrono::Duration::from_std(self.period).is_ok_and(|period| now >= event_at + period)
    }
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            retry_after_max: Duration::from_secs(60),
            period: Duration::from_secs(3600),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let p = policy();
        for (attempt, full) in [(1, 1), (2, 2), (3, 4), (7, 60), (40, 60)] {
            let d = p.delay(attempt, None);
            let full = Duration::from_secs(full);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(7200))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn retries_stop_at_the_end_of_the_period() {
        let p = policy();
        let at = Utc::now();
        let near_end = at + chrono::Duration::seconds(3599);
        assert!(p.next(30, None, at, near_end).expect("one more") <= Duration::from_secs(1));
        assert_eq!(
            p.next(1, None, at, at + chrono::Duration::seconds(3600)),
            None
        );
        assert!(p.expired(at, at + chrono::Duration::seconds(3600)));
        assert!(!p.expired(at, at));
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
