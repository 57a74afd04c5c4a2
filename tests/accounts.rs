//! Accounts and authentication (SPEC §3.2): register, login, resume with token
//! rotation, logout and quit, every `auth_error` code, name and password rules,
//! identification by IP and the failed-login rate limit.

mod common;

use common::*;
use serde_json::json;

const PW: &str = "correct horse";

fn register_msg(name: &str, password: &str) -> serde_json::Value {
    json!({"type":"register","name":name,"password":password})
}

fn login_msg(name: &str, password: &str) -> serde_json::Value {
    json!({"type":"login","name":name,"password":password})
}

/// Sends `msg` and returns the `auth_error` code it gets.
fn auth_error_for(c: &mut TestClient, msg: serde_json::Value) -> String {
    c.send(&msg);
    c.expect_auth_error()
}

#[test]
fn register_gives_auth_ok_new_user_then_empty_history() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    let name = unique_name("reg");
    c.send(&register_msg(&name, PW));
    let ok = c.recv_type("auth_ok");
    assert_eq!(ok["name"], name.as_str(), "{ok}");
    assert_eq!(ok["new_user"], true, "{ok}");
    assert!(ok["token"].as_str().is_some_and(|t| t.len() >= 16), "{ok}");
    let h = c.recv_type("history");
    assert_eq!(h["messages"], json!([]), "{h}");
    c.ping();
}

#[test]
fn login_with_the_right_password_gives_auth_ok_not_new() {
    let server = TestServer::start();
    let name = unique_name("log");
    let (mut first, t1) = registered(&server, &name, PW);
    first.send(&json!({"type":"quit"}));
    first.expect_closed(RECV_TIMEOUT);
    let mut c = server.connect_greeted();
    let t2 = c.login(&name, PW);
    assert_ne!(t1, t2, "every auth_ok carries a fresh token");
    c.ping();
}

#[test]
fn unknown_user_on_login() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut c, login_msg("nobody-here", PW)),
        "unknown_user"
    );
    // The connection stays open for another try.
    let name = unique_name("then");
    c.register(&name, PW);
}

#[test]
fn bad_password_on_login_then_retry_succeeds() {
    let server = TestServer::start();
    let name = unique_name("bp");
    let (_owner, _) = registered(&server, &name, PW);
    let mut c = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut c, login_msg(&name, "wrong password")),
        "bad_password"
    );
    c.login(&name, PW);
}

#[test]
fn login_does_not_judge_the_form_of_name_or_password() {
    let server = TestServer::start();
    let name = unique_name("form");
    let (_owner, _) = registered(&server, &name, PW);
    let mut c = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut c, login_msg("not a valid name!", PW)),
        "unknown_user"
    );
    assert_eq!(auth_error_for(&mut c, login_msg("", PW)), "unknown_user");
    assert_eq!(
        auth_error_for(&mut c, login_msg(&name, "x")),
        "bad_password"
    );
    assert_eq!(auth_error_for(&mut c, login_msg(&name, "")), "bad_password");
}

#[test]
fn name_taken_for_an_existing_name() {
    let server = TestServer::start();
    let name = unique_name("dup");
    let (_owner, _) = registered(&server, &name, PW);
    let mut c = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut c, register_msg(&name, PW)),
        "name_taken"
    );
    assert_eq!(
        auth_error_for(&mut c, register_msg(&name, "another password")),
        "name_taken"
    );
}

#[test]
fn name_taken_ignores_case() {
    let server = TestServer::start();
    let (_owner, _) = registered(&server, "Alice", PW);
    let mut c = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut c, register_msg("alice", PW)),
        "name_taken"
    );
    assert_eq!(
        auth_error_for(&mut c, register_msg("ALICE", PW)),
        "name_taken"
    );
    assert_eq!(
        auth_error_for(&mut c, register_msg("aLiCe", PW)),
        "name_taken"
    );
    // Unicode case too.
    let (_o2, _) = registered(&server, "Élodie", PW);
    assert_eq!(
        auth_error_for(&mut c, register_msg("élodie", PW)),
        "name_taken"
    );
}

#[test]
fn server_is_a_reserved_name() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    for name in ["server", "Server", "SERVER"] {
        assert_eq!(
            auth_error_for(&mut c, register_msg(name, PW)),
            "name_taken",
            "name {name:?}"
        );
    }
}

#[test]
fn invalid_name_is_refused() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    let too_long = "a".repeat(33);
    for name in [
        "",
        too_long.as_str(),
        "two words",
        "at@sign",
        "tab\there",
        "slash/",
        "emoji😀",
    ] {
        assert_eq!(
            auth_error_for(&mut c, register_msg(name, PW)),
            "invalid_name",
            "name {name:?}"
        );
    }
}

#[test]
fn valid_names_of_every_allowed_kind_are_accepted() {
    let server = TestServer::start();
    let longest = "b".repeat(32);
    let longest_unicode = "é".repeat(32); // 32 characters, 64 bytes
    for name in [
        "x",
        longest.as_str(),
        longest_unicode.as_str(),
        "Zoë",
        "日本語",
        "Дмитрий",
        "a_b-c.d",
        "007",
    ] {
        let mut c = server.connect_greeted();
        c.register(name, PW);
    }
}

#[test]
fn invalid_password_is_refused() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    let too_long = "p".repeat(1025);
    for (i, password) in ["", "abc", too_long.as_str()].iter().enumerate() {
        assert_eq!(
            auth_error_for(&mut c, register_msg(&format!("pwuser{i}"), password)),
            "invalid_password",
            "password of {} bytes",
            password.len()
        );
    }
}

#[test]
fn password_length_is_counted_in_bytes() {
    let server = TestServer::start();
    // 4 bytes in 2 characters: valid.
    let mut c = server.connect_greeted();
    c.register("twochars", "éé");
    // 1024 bytes: valid; and it logs in.
    let long = "q".repeat(1024);
    let mut d = server.connect_greeted();
    d.register("longpw", &long);
    let mut e = server.connect_greeted();
    e.login("longpw", &long);
    // 1026 bytes in 513 characters: too long.
    let mut f = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut f, register_msg("toolong", &"é".repeat(513))),
        "invalid_password"
    );
}

#[test]
fn register_checks_name_then_password_then_taken() {
    let server = TestServer::start();
    let name = unique_name("ord");
    let (_owner, _) = registered(&server, &name, PW);
    let mut c = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut c, register_msg("bad name", "x")),
        "invalid_name"
    );
    assert_eq!(
        auth_error_for(&mut c, register_msg(&name, "x")),
        "invalid_password"
    );
    assert_eq!(
        auth_error_for(&mut c, register_msg("server", "x")),
        "invalid_password"
    );
}

#[test]
fn invalid_token_on_resume() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    for token in ["", "nonsense", &"0".repeat(64)] {
        assert_eq!(
            auth_error_for(&mut c, json!({"type":"resume","token":token})),
            "invalid_token",
            "token {token:?}"
        );
    }
}

#[test]
fn resume_rotates_the_token() {
    let server = TestServer::start();
    let name = unique_name("rot");
    let (mut a, t1) = registered(&server, &name, PW);
    a.send(&json!({"type":"quit"}));
    a.expect_closed(RECV_TIMEOUT);

    let mut b = server.connect_greeted();
    let t2 = b.resume(&name, &t1);
    assert_ne!(t1, t2, "resume must issue a fresh token");

    // The spent token is refused, the fresh one works.
    let mut c = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut c, json!({"type":"resume","token":t1})),
        "invalid_token"
    );
    let t3 = c.resume(&name, &t2);
    assert_ne!(t2, t3);
}

#[test]
fn logout_revokes_the_token_and_closes() {
    let server = TestServer::start();
    let name = unique_name("out");
    let (mut a, token) = registered(&server, &name, PW);
    a.send(&json!({"type":"logout"}));
    let frames = a.expect_closed(RECV_TIMEOUT);
    assert!(
        frames.iter().all(|f| f["type"] != "error"),
        "logout answered with an error: {frames:?}"
    );
    let mut b = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut b, json!({"type":"resume","token":token})),
        "invalid_token"
    );
    // The account itself remains.
    b.login(&name, PW);
}

#[test]
fn logout_revokes_only_this_sessions_token() {
    let server = TestServer::start();
    let name = unique_name("two");
    let (mut a, _ta) = registered(&server, &name, PW);
    let mut b = server.connect_greeted();
    let tb = b.login(&name, PW);
    b.send(&json!({"type":"quit"}));
    b.expect_closed(RECV_TIMEOUT);
    a.send(&json!({"type":"logout"}));
    a.expect_closed(RECV_TIMEOUT);
    let mut c = server.connect_greeted();
    c.resume(&name, &tb);
}

#[test]
fn quit_closes_and_keeps_the_token_valid() {
    let server = TestServer::start();
    let name = unique_name("quit");
    let (mut a, token) = registered(&server, &name, PW);
    a.send(&json!({"type":"quit"}));
    let frames = a.expect_closed(RECV_TIMEOUT);
    assert!(
        frames.iter().all(|f| f["type"] != "error"),
        "quit answered with an error: {frames:?}"
    );
    let mut b = server.connect_greeted();
    b.resume(&name, &token);
}

#[test]
fn requests_before_authentication_are_not_authenticated() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    for msg in [
        json!({"type":"say","text":"hello"}),
        json!({"type":"who"}),
        json!({"type":"logout"}),
        json!({"type":"quit"}),
    ] {
        c.send(&msg);
        assert_eq!(c.expect_error(), "not_authenticated", "request {msg}");
    }
    // Still open, still usable.
    c.ping();
    c.register(&unique_name("late"), PW);
}

#[test]
fn ping_works_before_authentication() {
    let server = TestServer::start();
    let mut c = server.connect_greeted();
    c.send(&json!({"type":"ping"}));
    assert_eq!(c.recv(), json!({"type":"pong"}));
}

#[test]
fn authentication_requests_after_authentication_are_bad_request() {
    let server = TestServer::start();
    let name = unique_name("again");
    let (mut c, token) = registered(&server, &name, PW);
    for msg in [
        login_msg(&name, PW),
        register_msg(&unique_name("other"), PW),
        json!({"type":"resume","token":token}),
    ] {
        c.send(&msg);
        assert_eq!(c.expect_error(), "bad_request", "request {msg}");
    }
    // The session goes on, and the bad_request spent nothing: the token still works.
    c.ping();
    c.say("still here");
    let mut d = server.connect_greeted();
    d.resume(&name, &token);
}

#[test]
fn welcome_known_name_is_null_then_the_last_name_from_this_ip() {
    let server = TestServer::start();
    let mut a = server.connect();
    let w = a.welcome();
    assert_eq!(w["known_name"], serde_json::Value::Null, "{w}");
    let first = unique_name("ip");
    a.register(&first, PW);

    let mut b = server.connect();
    let w = b.welcome();
    assert_eq!(w["known_name"], first.as_str(), "{w}");
    let second = unique_name("ip");
    b.register(&second, PW);

    let mut c = server.connect();
    let w = c.welcome();
    assert_eq!(w["known_name"], second.as_str(), "{w}");
}

#[test]
fn failed_authentication_does_not_set_known_name() {
    let server = TestServer::start();
    let mut a = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut a, login_msg("ghost", PW)),
        "unknown_user"
    );
    let mut b = server.connect();
    let w = b.welcome();
    assert_eq!(w["known_name"], serde_json::Value::Null, "{w}");
}

#[test]
fn login_rate_limit_after_too_many_failures() {
    let server = TestServer::start_with(&["--login-rate", "3"]);
    let name = unique_name("rl");
    let (_owner, _) = registered(&server, &name, PW);
    let mut c = server.connect_greeted();
    for _ in 0..3 {
        assert_eq!(
            auth_error_for(&mut c, login_msg(&name, "wrong password")),
            "bad_password"
        );
    }
    assert_eq!(
        auth_error_for(&mut c, login_msg(&name, "wrong password")),
        "rate_limited"
    );
    // Still connected.
    c.ping();
}

#[test]
fn login_rate_counts_only_guesses_per_ip_across_connections() {
    let server = TestServer::start_with(&["--login-rate", "3"]);
    let name = unique_name("guess");
    let (_owner, _) = registered(&server, &name, PW);
    let mut a = server.connect_greeted();
    // Not guesses: an unknown name says so already, and form errors are typing.
    for _ in 0..5 {
        assert_eq!(
            auth_error_for(&mut a, login_msg("ghost", PW)),
            "unknown_user"
        );
        assert_eq!(
            auth_error_for(&mut a, register_msg("bad name", PW)),
            "invalid_name"
        );
    }
    // Guesses, from two connections of one address.
    assert_eq!(
        auth_error_for(&mut a, json!({"type":"resume","token":"bogus"})),
        "invalid_token"
    );
    let mut b = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut b, login_msg(&name, "wrong password")),
        "bad_password"
    );
    assert_eq!(
        auth_error_for(&mut b, json!({"type":"resume","token":"bogus"})),
        "invalid_token"
    );
    let mut c = server.connect_greeted();
    assert_eq!(auth_error_for(&mut c, login_msg(&name, PW)), "rate_limited");
}

#[test]
fn token_expires_after_token_ttl() {
    let server = TestServer::start_with(&["--token-ttl", "1"]);
    let name = unique_name("ttl");
    let (mut a, token) = registered(&server, &name, PW);
    a.send(&json!({"type":"quit"}));
    a.expect_closed(RECV_TIMEOUT);
    // Waiting out the lifetime is the point of this test.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let mut b = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut b, json!({"type":"resume","token":token})),
        "invalid_token"
    );
    b.login(&name, PW);
}

#[test]
fn concurrent_registrations_of_one_name_give_exactly_one_account() {
    let server = TestServer::start();
    let mut clients: Vec<TestClient> = (0..6).map(|_| server.connect_greeted()).collect();
    // Names differing only in case, all sent before any answer is read.
    for (i, c) in clients.iter_mut().enumerate() {
        let name = if i % 2 == 0 { "Racer" } else { "racer" };
        c.send(&register_msg(name, &format!("password-{i}")));
    }
    let mut winners = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let f = c.recv();
        match f["type"].as_str() {
            Some("auth_ok") => winners.push(i),
            Some("auth_error") => assert_eq!(f["code"], "name_taken", "{f}"),
            _ => panic!("unexpected answer {f}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one registration wins: {winners:?}"
    );
    let i = winners[0];
    let name = if i % 2 == 0 { "Racer" } else { "racer" };
    let mut check = server.connect_greeted();
    check.login(name, &format!("password-{i}"));
}
