//! Kubernetes Events on the policy for what a user wants to see in `kubectl describe msp`:
//! sidecars injected or removed, a conflicting policy, waiting for KubeVirt, write failures,
//! a sidecar rolled back because it crash-looped or stayed unready.
//!
//! Transitions only: an event is published when the situation changes (new reason, or a
//! write happened), not on every resync, so the event stream stays readable.

use kube::Resource;
use kube::runtime::events::{Event, EventType};

use super::context::Context;
use crate::api::MetricsSidecarPolicy;

/// Reasons of the Events we publish (also the `reason` users filter on).
pub mod reasons {
    pub const INJECTED: &str = "Injected";
    pub const REMOVED: &str = "Removed";
    pub const CONFLICTING_POLICY: &str = "ConflictingPolicy";
    pub const WAITING_FOR_KUBEVIRT: &str = "WaitingForKubeVirt";
    pub const PAUSED: &str = "Paused";
    pub const CLEANUP_SKIPPED: &str = "CleanupSkipped";
    pub const WRITE_FAILED: &str = "WriteFailed";
    /// A sidecar crash-looped or stayed unready; its component's entry was taken out.
    pub const SIDECAR_ROLLED_BACK: &str = "SidecarRolledBack";
}

/// One event to publish about a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

impl Notice {
    pub fn normal(reason: &'static str, action: &'static str, note: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason,
            action,
            note: note.into(),
        }
    }

    pub fn warning(reason: &'static str, action: &'static str, note: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason,
            action,
            note: note.into(),
        }
    }
}

/// Publishes `notice` on `policy`. A failed publish is logged, never fatal: events are
/// informational and must not block the reconcile.
pub async fn publish(ctx: &Context, policy: &MetricsSidecarPolicy, notice: &Notice) {
    let event = Event {
        type_: if notice.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: notice.reason.to_owned(),
        note: Some(truncate(&notice.note, 1024)),
        action: notice.action.to_owned(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        tracing::warn!(error = %err, reason = notice.reason, "cannot publish event");
    }
}

/// events.k8s.io rejects notes over 1 KiB.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn long_notes_are_cut_on_a_char_boundary() {
        let text = "é".repeat(600);
        let cut = super::truncate(&text, 1024);
        assert!(cut.len() <= 1024);
        assert!(cut.ends_with("..."));
        assert_eq!(super::truncate("short", 1024), "short");
    }
}
