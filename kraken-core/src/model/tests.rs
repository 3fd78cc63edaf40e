#![allow(clippy::unwrap_used)]
use super::*;
use DeploymentStatus as S;

fn dep() -> Deployment {
    Deployment::new(
        DeploymentId::random(),
        "file:///x".into(),
        "main".into(),
        Timestamp(1),
    )
}

#[test]
fn happy_path_is_legal_and_recorded() {
    let mut d = dep();
    let path = [
        S::ValidatingDeploymentData,
        S::RetrievingApplicationData,
        S::DelegatingDeployment,
        S::BuildingDeployment,
        S::Deploying,
        S::Running,
        S::UpdateRequested,
        S::ValidatingDeploymentData,
        S::RetrievingApplicationData,
        S::DelegatingDeployment,
        S::Running,
        S::DestructionRequested,
        S::DelegatingDestruction,
        S::DestructionInProgress,
        S::Destroyed,
    ];
    for (i, s) in path.iter().enumerate() {
        d.transition(s.clone(), Timestamp(10 + i as u64)).unwrap();
    }
    assert_eq!(d.history.len(), path.len() + 1);
    assert_eq!(d.status, S::Destroyed);
    assert_eq!(
        d.history.last().unwrap().at,
        Timestamp(10 + path.len() as u64 - 1)
    );
}

#[test]
fn illegal_transitions_are_errors_and_change_nothing() {
    let mut d = dep();
    let before = d.clone();
    for bad in [
        S::Running,
        S::BuildingDeployment,
        S::Destroyed,
        S::DeploymentRequested,
    ] {
        let err = d.transition(bad.clone(), Timestamp(5)).unwrap_err();
        assert_eq!(err.from, StatusKind::DeploymentRequested);
        assert_eq!(err.to, bad.kind());
    }
    assert_eq!(d, before);
    d.transition(S::DestructionRequested, Timestamp(2)).unwrap();
    d.transition(S::Destroyed, Timestamp(3)).unwrap();
    for any in [
        S::Running,
        S::Errored("x".into()),
        S::DestructionRequested,
        S::UpdateRequested,
    ] {
        assert!(
            d.transition(any, Timestamp(4)).is_err(),
            "Destroyed is terminal"
        );
    }
    let mut r = dep();
    for s in [
        S::ValidatingDeploymentData,
        S::RetrievingApplicationData,
        S::DelegatingDeployment,
        S::Running,
    ] {
        r.transition(s, Timestamp(1)).unwrap();
    }
    assert!(
        r.transition(S::BuildingDeployment, Timestamp(1)).is_err(),
        "no going back without a redeploy"
    );
    assert!(
        r.transition(S::Running, Timestamp(1)).is_err(),
        "same status twice is not a transition"
    );
}

#[test]
fn errored_can_be_retried_or_destroyed() {
    let mut d = dep();
    d.transition(S::Errored("boom".into()), Timestamp(1))
        .unwrap();
    assert_eq!(d.status.error_reason(), Some("boom"));
    assert!(d.status.can_transition_to(&S::UpdateRequested));
    assert!(d.status.can_transition_to(&S::DestructionRequested));
    assert!(!d.status.can_transition_to(&S::Running));
    assert!(!d.status.can_transition_to(&S::Errored("boom".into())));
}

#[test]
fn history_is_bounded_and_keeps_the_first_entry() {
    let mut d = dep();
    d.transition(S::ValidatingDeploymentData, Timestamp(1))
        .unwrap();
    for i in 0..(MAX_HISTORY * 2) {
        d.transition(S::Errored(format!("e{i}")), Timestamp(2))
            .unwrap();
    }
    assert_eq!(d.history.len(), MAX_HISTORY);
    assert_eq!(d.history[0].status, S::DeploymentRequested);
}

#[test]
fn ids_reject_unsafe_text() {
    assert!(NodeId::parse("node-1.local_x").is_ok());
    for bad in [
        "",
        "-x",
        ".x",
        "../etc",
        "a/b",
        "a b",
        "%2e%2e",
        &"a".repeat(129),
    ] {
        assert!(DeploymentId::parse(bad).is_err(), "{bad:?} must be refused");
    }
    let id = DeploymentId::random();
    assert_eq!(DeploymentId::parse(id.as_str()).unwrap(), id);
}

#[test]
fn status_serialises_with_reason() {
    let json = serde_json::to_string(&S::Errored("no port".into())).unwrap();
    assert_eq!(json, r#"{"status":"Errored","reason":"no port"}"#);
    let back: S = serde_json::from_str(&json).unwrap();
    assert_eq!(back, S::Errored("no port".into()));
    assert_eq!(
        serde_json::to_string(&S::Running).unwrap(),
        r#"{"status":"Running"}"#
    );
}
