//! When the complement check reads the component's whole `/metrics` page.
//!
//! The families a component serves depend on its release and configuration, not on the
//! hour; reading them is not free (virt-handler's `/metrics` calls every virt-launcher on
//! the node). So the page is read:
//! - at start, and again with backoff until one read succeeds;
//! - when the component comes back after it could not be reached (a restart: possibly
//!   another release), or after a read failed;
//! - when the identity its cheap probe reports changes (KubeVirt's `/healthz` carries the
//!   resourceVersion of the configuration the component loaded: feature gates can add
//!   families), at most once per [`IDENTITY_GAP_INTERVALS`] collection intervals;
//! - after `--component-recheck-interval` in any case.
//!
//! Why no process identity: KubeVirt's components expose their start time and version only
//! inside `/metrics` (`process_start_time_seconds`, `kubevirt_info`), the page we avoid; the
//! cheap endpoints (`/healthz`, `/leader`) carry neither. A restart in place runs the same
//! image, and a new release replaces the pod (and this sidecar with it), so the long period
//! plus "re-check after unreachable" covers what the missing identity would.

use std::time::Duration;

use tokio::time::Instant;

/// First retry after a failed check; doubles per failure. (Extra passes keep the runtime's
/// minimum gap of 2 s anyway.)
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// Retries never wait longer than this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A changed identity triggers a re-check only if the last check is at least this many
/// collection intervals old: a KubeVirt CR written often must not bring back a scrape per
/// pass.
pub const IDENTITY_GAP_INTERVALS: u32 = 10;

/// Why a check is made now (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No check has succeeded yet.
    First,
    /// The component could not be reached, or its page not read, since the last success.
    Retry,
    /// The probe's identity differs from the one seen at the last successful check.
    IdentityChanged,
    /// `--component-recheck-interval` has passed.
    Period,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Retry => "retry",
            Self::IdentityChanged => "identity_changed",
            Self::Period => "period",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CheckSchedule {
    recheck: Duration,
    identity_gap: Duration,
    last_success: Option<Instant>,
    last_attempt: Option<Instant>,
    /// The probe's identity at the last successful check.
    identity: Option<String>,
    /// A check is owed: the component was unreachable or a read failed since the last
    /// success.
    owed: bool,
    /// Consecutive failures (probe or read), for the backoff.
    failures: u32,
}

impl CheckSchedule {
    /// `recheck`: the longest time between two reads; `interval`: the collection interval.
    pub fn new(recheck: Duration, interval: Duration) -> Self {
        Self {
            recheck,
            identity_gap: interval.saturating_mul(IDENTITY_GAP_INTERVALS),
            last_success: None,
            last_attempt: None,
            identity: None,
            owed: false,
            failures: 0,
        }
    }

    /// Whether the page must be read now, given the identity the probe just reported.
    pub fn due(&self, now: Instant, identity: Option<&str>) -> Option<Reason> {
        let Some(last_success) = self.last_success else {
            return Some(Reason::First);
        };
        if self.owed {
            return Some(Reason::Retry);
        }
        if now.saturating_duration_since(last_success) >= self.recheck {
            return Some(Reason::Period);
        }
        let changed = matches!((self.identity.as_deref(), identity), (Some(a), Some(b)) if a != b);
        let spaced = self
            .last_attempt
            .is_none_or(|at| now.saturating_duration_since(at) >= self.identity_gap);
        (changed && spaced).then_some(Reason::IdentityChanged)
    }

    /// The page was read; `identity` is what this pass's probe reported.
    pub fn succeeded(&mut self, now: Instant, identity: Option<String>) {
        self.last_success = Some(now);
        self.last_attempt = Some(now);
        self.identity = identity;
        self.owed = false;
        self.failures = 0;
    }

    /// Reading the page failed, or the component was unreachable: check again once it
    /// answers, and retry with backoff meanwhile.
    pub fn failed(&mut self, now: Instant, attempted: bool) {
        if attempted {
            self.last_attempt = Some(now);
        }
        self.owed = true;
        self.failures = self.failures.saturating_add(1);
    }

    /// Whether a check has ever succeeded.
    pub fn has_succeeded(&self) -> bool {
        self.last_success.is_some()
    }

    /// When to try again ahead of the interval, while a check is owed.
    pub fn retry_after(&self) -> Option<Duration> {
        if self.has_succeeded() && !self.owed {
            return None;
        }
        if self.failures == 0 {
            return None;
        }
        let doublings = self.failures.saturating_sub(1).min(16);
        Some(
            FIRST_BACKOFF
                .saturating_mul(1u32 << doublings)
                .min(MAX_BACKOFF),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const INTERVAL: Duration = Duration::from_secs(30);

    #[test]
    fn checks_first_then_only_after_the_period() {
        let start = Instant::now();
        let mut schedule = CheckSchedule::new(HOUR, INTERVAL);
        assert_eq!(schedule.due(start, Some("1")), Some(Reason::First));
        schedule.succeeded(start, Some("1".into()));
        for minute in 1..60 {
            let now = start + Duration::from_secs(60 * minute);
            assert_eq!(schedule.due(now, Some("1")), None, "minute {minute}");
            assert_eq!(schedule.due(now, None), None, "no identity is no change");
        }
        assert_eq!(schedule.due(start + HOUR, Some("1")), Some(Reason::Period));
    }

    #[test]
    fn retries_with_backoff_until_a_check_succeeds() {
        let start = Instant::now();
        let mut schedule = CheckSchedule::new(HOUR, INTERVAL);
        assert_eq!(schedule.retry_after(), None);
        let waits: Vec<u64> = (0..8)
            .map(|_| {
                schedule.failed(start, true);
                schedule.retry_after().unwrap().as_secs()
            })
            .collect();
        assert_eq!(waits, [2, 4, 8, 16, 30, 30, 30, 30]);
        assert_eq!(schedule.due(start, None), Some(Reason::First));
        schedule.succeeded(start, None);
        assert_eq!(schedule.retry_after(), None);
    }

    #[test]
    fn unreachable_then_back_is_a_recheck() {
        let start = Instant::now();
        let mut schedule = CheckSchedule::new(HOUR, INTERVAL);
        schedule.succeeded(start, Some("1".into()));
        schedule.failed(start + INTERVAL, false);
        assert_eq!(schedule.retry_after(), Some(FIRST_BACKOFF));
        assert_eq!(
            schedule.due(start + INTERVAL * 2, Some("1")),
            Some(Reason::Retry)
        );
        schedule.succeeded(start + INTERVAL * 2, Some("1".into()));
        assert_eq!(schedule.due(start + INTERVAL * 3, Some("1")), None);
    }

    #[test]
    fn a_changed_identity_rechecks_but_not_more_often_than_the_gap() {
        let start = Instant::now();
        let mut schedule = CheckSchedule::new(HOUR, INTERVAL);
        schedule.succeeded(start, Some("1".into()));
        assert_eq!(schedule.due(start + INTERVAL, Some("2")), None, "too soon");
        let later = start + INTERVAL * IDENTITY_GAP_INTERVALS;
        assert_eq!(
            schedule.due(later, Some("2")),
            Some(Reason::IdentityChanged)
        );
        schedule.succeeded(later, Some("2".into()));
        assert_eq!(schedule.due(later + INTERVAL, Some("2")), None);
    }
}
