#![allow(clippy::unwrap_used)]
use super::*;

fn node(id: &str) -> NodeId {
    NodeId::parse(id).unwrap()
}

#[test]
fn the_text_form_round_trips() {
    let secret = JoinSecret::generate().unwrap();
    let text = secret.as_text();
    assert!(text.starts_with("ks1-"));
    assert_eq!(text.len(), 4 + 64);
    assert!(
        text[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(text, secret.to_string());
    assert_eq!(JoinSecret::parse(&text).unwrap(), secret);
    assert_eq!(JoinSecret::parse(&format!("  {text}\n")).unwrap(), secret);
    assert_eq!(text.parse::<JoinSecret>().unwrap(), secret);
    assert_ne!(JoinSecret::generate().unwrap(), secret);
}

#[test]
fn debug_hides_the_secret() {
    let secret = JoinSecret::generate().unwrap();
    let shown = format!("{secret:?}");
    assert_eq!(shown, "JoinSecret(..)");
    assert!(!shown.contains(&secret.as_text()[4..12]));
}

#[test]
fn malformed_secrets_are_refused_with_a_reason() {
    let good = "a".repeat(64);
    let cases = [
        ("", "does not start with `ks1-`"),
        (&*good, "does not start with `ks1-`"),
        (&*format!("ks2-{good}"), "does not start with `ks1-`"),
        ("ks1-", "64 hex digits"),
        (&*format!("ks1-{}", &good[..63]), "64 hex digits"),
        (&*format!("ks1-{good}0"), "64 hex digits"),
        (&*format!("ks1-{}", "A".repeat(64)), "not lowercase"),
        (&*format!("ks1-{}g", &good[..63]), "not hex digits"),
        (&*format!("ks1-{}é", &good[..62]), "not hex digits"),
    ];
    for (text, reason) in cases {
        let err = JoinSecret::parse(text).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(reason),
            "{text:?}: {message:?} should say {reason:?}"
        );
        assert!(message.contains("malformed join secret"), "{message}");
    }
}

#[tokio::test]
async fn the_stored_file_is_private_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    assert!(JoinSecret::load(dir.path()).await.unwrap().is_none());
    let secret = JoinSecret::generate().unwrap();
    secret.store(dir.path()).await.unwrap();
    let path = dir.path().join(SECRET_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{secret}\n")
    );
    assert_eq!(JoinSecret::load(dir.path()).await.unwrap(), Some(secret));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != SECRET_FILE)
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary file left: {leftovers:?}"
    );
}

#[tokio::test]
async fn storing_replaces_the_previous_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (first, created) = JoinSecret::load_or_create(dir.path()).await.unwrap();
    assert!(created);
    let second = JoinSecret::generate().unwrap();
    second.store(dir.path()).await.unwrap();
    let loaded = JoinSecret::load(dir.path()).await.unwrap().unwrap();
    assert_eq!(loaded, second);
    assert_ne!(loaded, first);
}

#[cfg(unix)]
#[tokio::test]
async fn a_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    JoinSecret::generate()
        .unwrap()
        .store(dir.path())
        .await
        .unwrap();
    let path = dir.path().join(SECRET_FILE);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = JoinSecret::load(dir.path()).await.unwrap_err();
    assert!(matches!(
        err,
        MembershipError::InsecureFile { mode: 0o644, .. }
    ));
    let message = err.to_string();
    assert!(message.contains("chmod 600"), "{message}");
    assert!(message.contains(&*path.to_string_lossy()), "{message}");
    assert!(
        JoinSecret::load_or_create(dir.path()).await.is_err(),
        "not replaced either"
    );
}

#[tokio::test]
async fn load_or_create_keeps_the_first_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (first, created) = JoinSecret::load_or_create(dir.path()).await.unwrap();
    assert!(created);
    let (again, created) = JoinSecret::load_or_create(dir.path()).await.unwrap();
    assert!(!created);
    assert_eq!(first, again);
}

#[tokio::test]
async fn a_corrupt_file_is_an_error_that_does_not_show_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SECRET_FILE);
    std::fs::write(&path, "ks1-not-a-secret-but-close\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let err = JoinSecret::load_or_create(dir.path()).await.unwrap_err();
    assert!(matches!(err, MembershipError::CorruptFile { .. }));
    let message = err.to_string();
    assert!(message.contains("64 hex digits"), "{message}");
    assert!(!message.contains("close"), "{message}");
}

#[tokio::test]
async fn a_missing_data_dir_is_a_file_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = JoinSecret::generate()
        .unwrap()
        .store(&missing)
        .await
        .unwrap_err();
    assert!(matches!(err, MembershipError::File { .. }), "{err}");
}

#[test]
fn proofs_verify_only_with_the_right_secret_and_context() {
    let secret = JoinSecret::generate().unwrap();
    let other = JoinSecret::generate().unwrap();
    let proof = secret.prove(b"hello");
    assert_eq!(proof.as_str().len(), 64);
    assert!(
        proof
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(proof, secret.prove(b"hello"), "deterministic");
    assert!(secret.verify(b"hello", &proof));
    assert!(!secret.verify(b"hellO", &proof));
    assert!(!other.verify(b"hello", &proof));
}

#[test]
fn join_proofs_bind_the_node() {
    let secret = JoinSecret::generate().unwrap();
    let other = JoinSecret::generate().unwrap();
    let (a, b) = (node("node-a"), node("node-b"));
    let proof = secret.join_proof(&a);
    assert!(secret.verify_join(&a, &proof));
    assert!(!secret.verify_join(&b, &proof), "wrong node");
    assert!(!other.verify_join(&a, &proof), "wrong secret");
    assert!(
        !secret.verify(b"node-a", &proof),
        "bound to its purpose, not only to the id"
    );
}

#[test]
fn announcement_proofs_bind_the_orchestrator_and_epoch() {
    let secret = JoinSecret::generate().unwrap();
    let other = JoinSecret::generate().unwrap();
    let (a, b) = (node("node-a"), node("node-b"));
    let proof = secret.announcement_proof(&a, 7);
    assert!(secret.verify_announcement(&a, 7, &proof));
    assert!(!secret.verify_announcement(&a, 8, &proof), "wrong epoch");
    assert!(!secret.verify_announcement(&b, 7, &proof), "wrong node");
    assert!(!other.verify_announcement(&a, 7, &proof), "wrong secret");
    assert!(
        !secret.verify_join(&a, &proof),
        "an announcement is not a join proof"
    );
    // The separator keeps id and epoch apart: ("node-1", 23) is not ("node-12", 3).
    let proof = secret.announcement_proof(&node("node-1"), 23);
    assert!(!secret.verify_announcement(&node("node-12"), 3, &proof));
}

#[test]
fn malformed_proofs_fail_without_panicking() {
    let secret = JoinSecret::generate().unwrap();
    let a = node("node-a");
    let good = secret.join_proof(&a).as_str().to_owned();
    let cases = [
        String::new(),
        "00".to_owned(),
        good[..63].to_owned(),
        format!("{good}0"),
        format!("{}zz", &good[..62]),
        format!("{}é", &good[..62]),
        "é".repeat(32),
    ];
    for case in cases {
        assert!(
            !secret.verify_join(&a, &Proof::from(case.clone())),
            "{case:?}"
        );
    }
}

#[test]
fn proofs_are_plain_strings_on_the_wire() {
    let secret = JoinSecret::generate().unwrap();
    let proof = secret.join_proof(&node("node-a"));
    let json = serde_json::to_string(&proof).unwrap();
    assert_eq!(json, format!("\"{}\"", proof.as_str()));
    let back: Proof = serde_json::from_str(&json).unwrap();
    assert_eq!(back, proof);
}

#[test]
fn derived_secrets_are_stable_and_distinct() {
    let secret = JoinSecret::generate().unwrap();
    let password = secret.derive("broker-password");
    assert_eq!(password.len(), 64);
    assert!(
        password
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(password, secret.derive("broker-password"));
    assert_ne!(password, secret.derive("something-else"));
    assert_ne!(
        password,
        JoinSecret::generate().unwrap().derive("broker-password")
    );
    assert!(!password.contains(&secret.as_text()[4..]));
}

#[test]
fn known_answer() {
    // HMAC-SHA256 with key 0x00..0x1f over "kraken-derive\0test" (checked with
    // `openssl dgst -sha256 -mac HMAC -macopt hexkey:...`).
    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    let secret = JoinSecret(key);
    assert_eq!(
        secret.as_text(),
        "ks1-000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    );
    assert_eq!(
        secret.derive("test"),
        "506e11207ea489e01e1f568577bcccd692956c46a27e8404cd1db67d51bbc5f7"
    );
}
