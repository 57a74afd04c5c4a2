//! Accounts and moderation (SPEC §8): changing a password, deleting an account, bans.

mod common;

use common::*;
use serde_json::{json, Value};

const PW: &str = "first-password";
const NEW: &str = "second-password";

fn auth_error_for(c: &mut TestClient, msg: Value) -> Value {
    c.send(&msg);
    c.recv_matching("auth_error", |v| v["type"] == "auth_error")
}

fn login(name: &str, password: &str) -> Value {
    json!({"type":"login","name":name,"password":password})
}

/// The next frame of type `ty`, setting aside presence news and the like.
fn got(c: &mut TestClient, ty: &str) -> Value {
    c.recv_matching(ty, |v| v["type"] == ty || v["type"] == "error")
}

#[test]
fn change_password_gives_a_new_token_and_closes_the_other_connections() {
    let server = TestServer::start();
    let (mut a, old_token) = registered(&server, "carol", PW);
    let mut b = server.connect_greeted();
    let b_token = b.login("carol", PW);
    a.send(&json!({"type":"change_password","old":PW,"new":NEW}));
    let changed = got(&mut a, "password_changed");
    assert_eq!(changed["type"], "password_changed", "{changed}");
    let token = changed["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64);
    // The other connection is told and closed.
    let frames = b.expect_closed(RECV_TIMEOUT);
    assert!(
        frames.iter().any(|f| f["type"] == "kicked"),
        "no kicked frame: {frames:?}"
    );
    // This connection goes on.
    a.ping();
    // Every other token is revoked; the new one works; so does the new password only.
    for old in [old_token, b_token] {
        let mut c = server.connect_greeted();
        assert_eq!(
            auth_error_for(&mut c, json!({"type":"resume","token":old}))["code"],
            "invalid_token"
        );
    }
    let mut c = server.connect_greeted();
    c.resume("carol", &token);
    let mut d = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut d, login("carol", PW))["code"],
        "bad_password"
    );
    d.login("carol", NEW);
}

#[test]
fn change_password_refusals_change_nothing() {
    let server = TestServer::start();
    let (mut a, _) = registered(&server, "dave", PW);
    for (request, code) in [
        (
            json!({"type":"change_password","old":"wrong","new":NEW}),
            "bad_password",
        ),
        (
            json!({"type":"change_password","old":PW,"new":"abc"}),
            "invalid_password",
        ),
        (
            json!({"type":"change_password","old":PW,"new":"x".repeat(1025)}),
            "invalid_password",
        ),
        (json!({"type":"change_password","old":PW}), "bad_request"),
        (json!({"type":"change_password","new":NEW}), "bad_request"),
        (json!({"type":"delete_account"}), "bad_request"),
        (
            json!({"type":"delete_account","password":"nope"}),
            "bad_password",
        ),
    ] {
        a.send(&request);
        assert_eq!(a.expect_error(), code, "{request}");
    }
    a.ping();
    server.connect_greeted().login("dave", PW);
}

#[test]
fn wrong_passwords_for_account_changes_count_as_guesses() {
    let server = TestServer::start_with(&["--login-rate", "2"]);
    let (mut a, _) = registered(&server, "erin", PW);
    for _ in 0..2 {
        a.send(&json!({"type":"change_password","old":"guess","new":NEW}));
        assert_eq!(a.expect_error(), "bad_password");
    }
    a.send(&json!({"type":"delete_account","password":"guess"}));
    assert_eq!(a.expect_error(), "rate_limited");
    let mut b = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut b, login("erin", "guess"))["code"],
        "rate_limited"
    );
}

#[test]
fn delete_account_removes_it_frees_the_name_and_keeps_its_messages() {
    let server = TestServer::start();
    let (mut a, token) = registered(&server, "frank", PW);
    a.say("frank was here");
    a.send(&json!({"type":"join","room":"club"}));
    got(&mut a, "room");
    let mut b = server.connect_greeted();
    b.login("frank", PW);
    a.send(&json!({"type":"delete_account","password":PW}));
    let frames = a.expect_closed(RECV_TIMEOUT);
    assert!(
        frames
            .iter()
            .any(|f| f == &json!({"type":"account_deleted"})),
        "{frames:?}"
    );
    let frames = b.expect_closed(RECV_TIMEOUT);
    assert!(frames.iter().any(|f| f["type"] == "kicked"), "{frames:?}");
    let mut c = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut c, login("frank", PW))["code"],
        "unknown_user"
    );
    assert_eq!(
        auth_error_for(&mut c, json!({"type":"resume","token":token}))["code"],
        "invalid_token"
    );
    // The name is free; the messages stay under it; the memberships are gone.
    let ok = c.register_full("frank", NEW);
    assert!(
        ok.messages.iter().any(|m| m["text"] == "frank was here"),
        "{:?}",
        ok.messages
    );
    c.send(&json!({"type":"rooms"}));
    let rooms = got(&mut c, "rooms");
    assert_eq!(
        rooms["rooms"][0],
        json!({"room":"club","members":0,"member":false})
    );
}

#[test]
fn a_crash_right_after_the_answer_keeps_the_new_password_and_the_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path(), &[]);
    let (mut a, _) = registered(&server, "gina", PW);
    let (mut b, _) = registered(&server, "hank", PW);
    a.send(&json!({"type":"change_password","old":PW,"new":NEW}));
    got(&mut a, "password_changed");
    b.send(&json!({"type":"delete_account","password":PW}));
    got(&mut b, "account_deleted");
    server.kill_hard();
    let server = TestServer::start_in(dir.path(), &[]);
    let mut c = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut c, login("gina", PW))["code"],
        "bad_password"
    );
    c.login("gina", NEW);
    let mut d = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut d, login("hank", PW))["code"],
        "unknown_user"
    );
}

#[test]
fn a_ban_keeps_an_account_out_on_every_way_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path(), &[]);
    let (mut mal, token) = registered(&server, "Mallory", PW);
    let said = server.admin_output("ban mallory spamming the lobby");
    assert_eq!(said, ["banned Mallory (1 connection closed)"]);
    let frames = mal.expect_closed(RECV_TIMEOUT);
    let kicked = frames
        .iter()
        .find(|f| f["type"] == "kicked")
        .expect("kicked");
    assert!(
        kicked["message"]
            .as_str()
            .unwrap()
            .contains("spamming the lobby"),
        "{kicked}"
    );
    let mut c = server.connect_greeted();
    let refused = auth_error_for(&mut c, login("mallory", PW));
    assert_eq!(refused["code"], "banned");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("spamming the lobby"),
        "{refused}"
    );
    assert_eq!(
        auth_error_for(&mut c, json!({"type":"resume","token":token}))["code"],
        "banned",
        "a token still in a client"
    );
    assert_eq!(
        auth_error_for(
            &mut c,
            json!({"type":"register","name":"MALLORY","password":PW})
        )["code"],
        "name_taken"
    );
    let bans = server.admin_output("bans");
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert!(
        bans[0].starts_with("Mallory  since ") && bans[0].ends_with("spamming the lobby"),
        "{bans:?}"
    );
    // Bans survive a restart.
    server.stop();
    let mut server = TestServer::start_in(dir.path(), &[]);
    let mut c = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut c, login("mallory", PW))["code"],
        "banned"
    );
    assert_eq!(server.admin_output("unban Mallory"), ["unbanned Mallory"]);
    c.login("Mallory", PW);
    // Revoked stays revoked: the old token does not come back with the unban.
    let mut d = server.connect_greeted();
    assert_eq!(
        auth_error_for(&mut d, json!({"type":"resume","token":token}))["code"],
        "invalid_token"
    );
    assert_eq!(server.admin_output("bans"), ["(no bans)"]);
}

#[test]
fn ban_commands_say_when_they_change_nothing() {
    let mut server = TestServer::start();
    let (_ivy, _) = registered(&server, "ivy", PW);
    assert_eq!(
        server.admin_output("ban nobody"),
        ["not banned: no account is called nobody"]
    );
    assert_eq!(
        server.admin_output("unban ivy"),
        ["not unbanned: ivy is not banned"]
    );
    assert_eq!(
        server.admin_output("ban ivy"),
        ["banned ivy (1 connection closed)"]
    );
    assert_eq!(
        server.admin_output("ban ivy again"),
        ["not banned: ivy is already banned"]
    );
    assert_eq!(
        server.admin_output("ban"),
        ["usage: ban NAME [REASON] (the name is missing)"]
    );
    // clear-ids clears bans with everything else.
    server.admin_output("clear-ids");
    assert_eq!(server.admin_output("bans"), ["(no bans)"]);
}
