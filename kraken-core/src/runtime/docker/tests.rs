#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn bad_configuration_is_refused_before_any_connection() {
    for config in [
        DockerConfig::default().node_label("two words"),
        DockerConfig::default().node_label(""),
        DockerConfig::default().node_label("a\"b"),
        DockerConfig::default().host_ip("not an ip"),
    ] {
        assert!(matches!(
            DockerRuntime::connect(config),
            Err(RuntimeError::Backend { .. })
        ));
    }
}

#[test]
fn port_conflicts_are_recognised_in_both_wordings() {
    assert!(is_port_conflict(
        "driver failed programming external connectivity on endpoint x: Bind for 0.0.0.0:8080 failed: port is already allocated"
    ));
    assert!(is_port_conflict(
        "Error starting userland proxy: listen tcp4 0.0.0.0:8080: bind: address already in use"
    ));
    assert!(!is_port_conflict("no such image"));
}

#[test]
fn instances_are_read_back_from_labels() {
    let labels = HashMap::from([
        (LABEL_DEPLOYMENT.to_owned(), "dep-1".to_owned()),
        (LABEL_GENERATION.to_owned(), "4".to_owned()),
        (LABEL_NODE.to_owned(), "node-a".to_owned()),
        (LABEL_HOST_PORT.to_owned(), "8081".to_owned()),
        (LABEL_STARTED_AT.to_owned(), "1234".to_owned()),
    ]);
    let info = info_from_labels("abc123", &labels, Some(9999), Some(5)).unwrap();
    assert_eq!(info.port, Some(8081));
    assert_eq!(info.generation, 4);
    assert_eq!(info.started_at, Timestamp(1234));
    let mut bare = labels.clone();
    bare.remove(LABEL_HOST_PORT);
    bare.remove(LABEL_STARTED_AT);
    let info = info_from_labels("abc123", &bare, Some(9999), Some(5)).unwrap();
    assert_eq!(info.port, Some(9999));
    assert_eq!(info.started_at, Timestamp(5000));
    bare.insert(LABEL_DEPLOYMENT.to_owned(), "../x".to_owned());
    assert!(info_from_labels("abc123", &bare, None, None).is_none());
}
