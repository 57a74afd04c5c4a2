use super::*;

use std::sync::{Arc, Mutex};

/// A store on `path` and the warnings it reported.
fn watched(path: &Path, server: &str) -> (TokenStore, Arc<Mutex<Vec<String>>>) {
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&warnings);
    let report: Notify = Box::new(move |w: &str| sink.lock().unwrap().push(w.to_string()));
    let store = TokenStore::open(Some(path.to_path_buf()), server.to_string(), report);
    (store, warnings)
}

fn store(path: &Path, server: &str) -> (TokenStore, Option<String>) {
    let (store, warnings) = watched(path, server);
    let first = warnings.lock().unwrap().first().cloned();
    (store, first)
}

fn token_of(path: &Path, server: &str, name: Option<&str>) -> Option<String> {
    store(path, server).0.saved(name).map(|s| s.token)
}

#[test]
fn a_saved_token_is_read_back_and_the_file_is_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/tokens.json");
    let (mut s, warning) = store(&path, "127.0.0.1:9090");
    assert_eq!(warning, None);
    assert_eq!(s.saved(None), None);
    s.save("alice", "tok1", None, false);
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let folder_mode = fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(folder_mode & 0o077, 0, "folder is private too");
    assert_eq!(
        store(&path, "127.0.0.1:9090").0.saved(None),
        Some(Saved {
            name: Some("alice".into()),
            token: "tok1".into()
        })
    );
    assert_eq!(token_of(&path, "127.0.0.1:9091", None), None);
}

#[test]
fn a_name_only_ever_gets_its_own_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let (mut s, _) = store(&path, "a:1");
    s.save("alice", "ta", None, false);
    assert_eq!(token_of(&path, "a:1", Some("bob")), None);
    assert_eq!(token_of(&path, "a:1", Some("ALICE")).as_deref(), Some("ta"));
    s.save("bob", "tb", None, false);
    assert_eq!(
        token_of(&path, "a:1", None).as_deref(),
        Some("tb"),
        "last wins"
    );
    assert_eq!(token_of(&path, "a:1", Some("alice")).as_deref(), Some("ta"));
    s.forget("Bob");
    assert_eq!(token_of(&path, "a:1", Some("bob")), None);
    assert_eq!(token_of(&path, "a:1", None), None, "no last after a forget");
    assert_eq!(token_of(&path, "a:1", Some("alice")).as_deref(), Some("ta"));
}

#[test]
fn servers_keep_their_own_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let (mut a, _) = store(&path, "a:1");
    let (mut b, _) = store(&path, "b:2");
    a.save("x", "ta", None, false);
    b.save("x", "tb", None, false);
    a.save("x", "ta2", None, false);
    assert_eq!(token_of(&path, "a:1", None).as_deref(), Some("ta2"));
    assert_eq!(token_of(&path, "b:2", None).as_deref(), Some("tb"));
    a.forget("x");
    assert_eq!(a.token_for("x"), None);
    assert_eq!(token_of(&path, "a:1", None), None);
    assert_eq!(token_of(&path, "b:2", None).as_deref(), Some("tb"));
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
}

#[test]
fn the_password_check_survives_rotation_and_recognises_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let (mut s, _) = store(&path, "a:1");
    s.save("alice", "t1", Some("correct horse"), false);
    s.save("alice", "t2", None, false);
    let (s, _) = store(&path, "a:1");
    let check = s.password_check("alice").expect("a check");
    assert!(!check.contains("correct horse"));
    assert!(is_password(&check, "correct horse"));
    assert!(!is_password(&check, "hello everyone"));
    assert!(!is_password("not a hash", "correct horse"));
}

#[test]
fn a_file_of_the_earlier_format_is_read_and_converted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    fs::write(&path, r#"{"a:1": "old", "b:2": "other"}"#).unwrap();
    let (mut s, warning) = store(&path, "a:1");
    assert_eq!(warning, None);
    assert_eq!(s.saved(Some("alice")), None, "no name, not for --name");
    assert_eq!(
        s.saved(None),
        Some(Saved {
            name: None,
            token: "old".into()
        })
    );
    s.save("alice", "new", None, true);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"version\": 2"), "{text}");
    assert_eq!(
        token_of(&path, "a:1", Some("alice")).as_deref(),
        Some("new")
    );
    assert_eq!(
        store(&path, "b:2")
            .0
            .saved(None)
            .map(|s| s.token)
            .as_deref(),
        Some("other"),
        "other servers' old tokens are kept"
    );
}

#[test]
fn a_corrupt_file_is_a_warning_and_gets_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    for junk in [
        "{not json",
        "[1,2]",
        "{\"a:1\": 5}",
        "\u{0}",
        "{\"version\": 2, \"servers\": 7}",
    ] {
        fs::write(&path, junk).unwrap();
        let (mut s, warning) = store(&path, "a:1");
        assert_eq!(s.saved(None), None);
        assert!(warning.unwrap().contains("corrupt"), "{junk}");
        s.save("x", "fresh", None, false);
        assert_eq!(token_of(&path, "a:1", None).as_deref(), Some("fresh"));
    }
}

#[test]
fn an_existing_file_with_wide_rights_becomes_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    fs::write(&path, "{}").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let (mut s, _) = store(&path, "a:1");
    s.save("x", "t", None, false);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn an_unwritable_place_is_a_warning_and_the_token_is_kept_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    fs::write(&blocker, "x").unwrap();
    let (mut s, warnings) = watched(&blocker.join("tokens.json"), "a:1");
    s.save("x", "t", None, false);
    let warnings = warnings.lock().unwrap().clone();
    let last = warnings.last().expect("a warning");
    assert!(
        last.starts_with("warning: cannot write the token file"),
        "{warnings:?}"
    );
    assert_eq!(s.token_for("x"), Some("t"));
}

#[test]
fn without_a_file_tokens_live_in_memory() {
    let mut s = TokenStore::in_memory("a:1");
    s.save("x", "t", None, false);
    assert_eq!(s.token_for("x"), Some("t"));
    s.forget("x");
    assert_eq!(s.token_for("x"), None);
}
