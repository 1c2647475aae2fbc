//! From `compile()`'s [`Report`] to the `status` a resource should carry. Pure: the clock is an
//! argument, and a status that would not change is reported as such so nothing is written.

use keygate_crds::Report;
use keygate_crds::report::CONDITION_READY;
use keygate_crds::resources::{Condition, Status};

/// The status `report` calls for, keeping the previous transition time when `Ready` keeps its value.
pub fn desired(report: &Report, previous: Option<&Status>, now: &str) -> Status {
    let status = if report.is_ready() { "True" } else { "False" };
    let before = previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_READY));
    let last_transition_time = match before {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(now.to_string()),
    };
    Status {
        conditions: vec![Condition {
            type_: CONDITION_READY.to_string(),
            status: status.to_string(),
            reason: report.reason.to_string(),
            message: report.message.clone(),
            last_transition_time,
            observed_generation: report.generation,
        }],
        observed_generation: report.generation,
    }
}

/// Whether `current` already says what `desired` says (transition times aside).
pub fn up_to_date(current: Option<&Status>, desired: &Status) -> bool {
    let strip = |s: &Status| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = None;
        }
        s
    };
    current.is_some_and(|c| strip(c) == strip(desired))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_crds::report::{Kind, ObjectRef, Problem, reasons};

    fn report(problems: Vec<Problem>) -> Report {
        Report {
            object: ObjectRef {
                kind: Kind::ProxyRoute,
                namespace: "shop".into(),
                name: "pay".into(),
            },
            generation: Some(3),
            reason: if problems.is_empty() {
                reasons::ACCEPTED
            } else {
                reasons::SECRET_NOT_FOUND
            },
            message: if problems.is_empty() {
                "served".into()
            } else {
                "spec.x: Secret shop/keys does not exist".into()
            },
            problems,
        }
    }

    #[test]
    fn ready_and_refused() {
        let ok = desired(&report(vec![]), None, "2026-11-23T10:00:00Z");
        let c = &ok.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Ready", "True", "Accepted")
        );
        assert_eq!(ok.observed_generation, Some(3));
        let bad = desired(
            &report(vec![Problem {
                field: "spec.x".into(),
                message: "m".into(),
            }]),
            Some(&ok),
            "2026-11-23T10:05:00Z",
        );
        let c = &bad.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "SecretNotFound"));
        assert_eq!(
            c.last_transition_time.as_deref(),
            Some("2026-11-23T10:05:00Z"),
            "status changed: new transition time"
        );
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time_and_needs_no_write() {
        let first = desired(&report(vec![]), None, "2026-11-23T10:00:00Z");
        let again = desired(&report(vec![]), Some(&first), "2026-11-23T11:00:00Z");
        assert_eq!(
            again.conditions[0].last_transition_time.as_deref(),
            Some("2026-11-23T10:00:00Z")
        );
        assert!(up_to_date(Some(&first), &again));
        assert!(!up_to_date(None, &again));
        let mut newer = report(vec![]);
        newer.generation = Some(4);
        assert!(
            !up_to_date(Some(&first), &desired(&newer, Some(&first), "t")),
            "a new generation is written"
        );
    }
}
