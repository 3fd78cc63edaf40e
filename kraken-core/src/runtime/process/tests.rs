use super::*;

#[test]
fn env_names_are_checked() {
    let env = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
    assert!(check_env(&env("GOOD_NAME", "x y")).is_ok());
    for (k, v) in [("", "x"), ("A=B", "x"), ("A\0", "x"), ("A", "x\0")] {
        assert!(check_env(&env(k, v)).is_err(), "{k:?}={v:?}");
    }
}

#[test]
fn output_is_quoted_and_cut() {
    assert_eq!(quote_output([].iter()), "");
    let long = "é".repeat(ERROR_LINE_LEN);
    let quoted = quote_output([String::from("a"), long].iter());
    assert!(quoted.starts_with("; last output:\n  a\n  é"));
    assert!(quoted.len() < ERROR_LINE_LEN + 40);
}

#[test]
fn only_own_artifacts_are_recognised() {
    let rt = ProcessRuntime::new("/srv/kraken");
    let artifact = |id: &str| Artifact {
        id: id.into(),
        deployment: crate::model::DeploymentId::random(),
        generation: 1,
    };
    assert!(
        rt.artifact_dir(&artifact("/srv/kraken/artifacts/dep-1-1"))
            .is_some()
    );
    for bad in [
        "/srv/kraken/artifacts/..",
        "/srv/kraken/artifacts",
        "/srv/kraken/instances/x",
        "/etc",
        "relative",
    ] {
        assert!(rt.artifact_dir(&artifact(bad)).is_none(), "{bad}");
    }
}
