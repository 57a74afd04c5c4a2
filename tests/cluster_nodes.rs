//! Cluster mode (SPEC §11), black box: the real server binary started two or three
//! times against one real `nats-server -js`, each node with its own state folder,
//! clients talking to different nodes. Chat and rooms across nodes, a name raced for
//! on two nodes, a token resumed on another node and spent once, identification by IP
//! shared, also behind a proxy (`--trusted-proxies`), history and paging from any node,
//! and the console's commands acting on the whole cluster. (Faults — a node killed, NATS lost — are in `cluster_faults.rs`.)

mod cluster_support;
mod common;
mod nats_support;
mod web_support;

use std::collections::BTreeSet;
use std::time::Duration;

use cluster_support::{eventually, ids, node, page, registered, wait_for};
use common::*;
use nats_support::NatsServer;
use serde_json::{json, Value};
use web_support::WebServer;

/// How long news from another node may take (a presence beat, a bucket change).
const ACROSS: Duration = Duration::from_secs(15);

fn is_message_from(v: &Value, from: &str) -> bool {
    v["type"] == "message" && v["from"] == from
}

#[test]
fn chat_rooms_and_direct_messages_cross_nodes_in_one_order() {
    let nats = NatsServer::start();
    let (n1, n2) = (node(&nats, &[]), node(&nats, &[]));
    let (mut ann, _) = registered(&n1, "ann");
    let (mut bob, _) = registered(&n2, "bob");
    // joined, cluster-wide; who, cluster-wide, on both nodes.
    wait_for(&mut ann, ACROSS, "bob joined", |v| {
        v["type"] == "joined" && v["name"] == "bob"
    });
    assert_eq!(ann.who(), ["ann", "bob"]);
    assert_eq!(bob.who(), ["ann", "bob"]);

    // Both send at once, pipelined: both see every message, in one order, with ids
    // strictly increasing; each sender's own messages in the order it sent them.
    const EACH: usize = 25;
    for i in 0..EACH {
        ann.send(&json!({"type":"say","text":format!("a{i}")}));
        bob.send(&json!({"type":"say","text":format!("b{i}")}));
    }
    let seen = |client: &mut TestClient| -> Vec<(u64, String)> {
        (0..2 * EACH)
            .map(|_| {
                let m = client.recv_matching("a message", |v| v["type"] == "message");
                assert_eq!(m["room"], "lobby", "{m}");
                (
                    m["id"].as_u64().unwrap(),
                    m["text"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (on_n1, on_n2) = (seen(&mut ann), seen(&mut bob));
    assert_eq!(on_n1, on_n2, "one order on both nodes");
    assert!(on_n1.windows(2).all(|w| w[0].0 < w[1].0), "{on_n1:?}");
    for prefix in ["a", "b"] {
        let texts: Vec<&str> = on_n1
            .iter()
            .map(|(_, t)| t.as_str())
            .filter(|t| t.starts_with(prefix))
            .collect();
        let sent: Vec<String> = (0..EACH).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(texts, sent, "{prefix}'s messages in the order sent");
    }

    // A room created on n2, joined from n1 (by another spelling).
    bob.send(&json!({"type":"join","room":"Tea"}));
    let room = bob.recv_matching("room", |v| v["type"] == "room");
    assert_eq!(room["members"], json!(["bob"]));
    bob.recv_matching("history", |v| v["type"] == "history");
    let joined = eventually(ACROSS, "ann joins Tea", || {
        ann.send(&json!({"type":"join","room":"tea"}));
        let v = ann.recv_matching("room", |v| v["type"] == "room" || v["type"] == "error");
        (v["type"] == "room").then_some(v)
    });
    assert_eq!(joined["room"], "Tea", "the name as first created");
    assert_eq!(joined["members"], json!(["ann", "bob"]));
    let history = ann.recv_matching("history", |v| v["type"] == "history");
    assert_eq!(history["room"], "Tea");
    let news = wait_for(&mut bob, ACROSS, "member_joined", |v| {
        v["type"] == "member_joined"
    });
    assert_eq!(
        news,
        json!({"type":"member_joined","room":"Tea","name":"ann"})
    );
    ann.send(&json!({"type":"say","room":"tea","text":"in the room"}));
    let mine = ann.recv_matching("my room message", |v| is_message_from(v, "ann"));
    let theirs = bob.recv_matching("ann's room message", |v| is_message_from(v, "ann"));
    assert_eq!(mine, theirs);
    assert_eq!(mine["room"], "Tea");
    bob.send(&json!({"type":"who","room":"tea"}));
    let who = bob.recv_matching("who", |v| v["type"] == "who");
    assert_eq!(who["users"], json!(["ann", "bob"]));

    // A direct message: to both of them, nobody else.
    let (mut cy, _) = registered(&n2, "cy");
    ann.send(&json!({"type":"say","to":"BOB","text":"psst"}));
    let dm = bob.recv_matching("the direct message", |v| is_message_from(v, "ann"));
    assert_eq!(dm["to"], "bob");
    assert_eq!(dm["text"], "psst");
    ann.recv_matching("my direct message", |v| is_message_from(v, "ann"));
    cy.expect_silence(QUIET);

    // rooms, cluster-wide; part on n1, heard on n2.
    bob.send(&json!({"type":"rooms"}));
    let rooms = bob.recv_matching("rooms", |v| v["type"] == "rooms");
    assert_eq!(
        rooms["rooms"],
        json!([
            {"room":"lobby","members":3,"member":true},
            {"room":"Tea","members":2,"member":true}
        ])
    );
    ann.send(&json!({"type":"part","room":"Tea"}));
    assert_eq!(
        ann.recv_matching("parted", |v| v["type"] == "parted"),
        json!({"type":"parted","room":"Tea"})
    );
    wait_for(&mut bob, ACROSS, "member_left", |v| {
        *v == json!({"type":"member_left","room":"Tea","name":"ann"})
    });

    // left, cluster-wide, when the last connection (here the only one) closes.
    drop(ann);
    wait_for(&mut bob, ACROSS, "ann left", |v| {
        v["type"] == "left" && v["name"] == "ann"
    });
    assert_eq!(bob.who(), ["bob", "cy"]);
}

#[test]
fn a_cluster_name_keeps_chats_on_one_nats_apart() {
    let nats = NatsServer::start();
    let n1 = node(&nats, &[]);
    let other = node(&nats, &["--cluster-name", "other"]);
    let (mut ann, _) = registered(&n1, "ann");
    // The same name is free in the other cluster: nothing is shared.
    let (mut ann2, _) = registered(&other, "ann");
    ann.say("only here");
    ann2.expect_silence(QUIET);
    let other_id = ann2.say("only there")["id"].as_u64().unwrap();
    assert_eq!(other_id, 1, "the other cluster has its own ids");
}

#[test]
fn a_name_raced_for_on_two_nodes_is_registered_once() {
    let nats = NatsServer::start();
    let (n1, n2) = (node(&nats, &[]), node(&nats, &[]));
    for (i, (first, second)) in [("racer", "racer"), ("Alice", "AIice"), ("Zoë", "ZOË")]
        .into_iter()
        .cycle()
        .take(9)
        .enumerate()
    {
        let (first, second) = (format!("{first}{i}"), format!("{second}{i}"));
        let mut x = n1.connect_greeted();
        let mut y = n2.connect_greeted();
        x.send(&json!({"type":"register","name":first,"password":"password"}));
        y.send(&json!({"type":"register","name":second,"password":"password"}));
        let answers = [x.recv(), y.recv()];
        let won: Vec<&Value> = answers.iter().filter(|a| a["type"] == "auth_ok").collect();
        assert_eq!(won.len(), 1, "{first}/{second}: {answers:?}");
        let lost = answers.iter().find(|a| a["type"] != "auth_ok").unwrap();
        assert_eq!(lost["code"], "name_taken", "{lost}");
    }
}

#[test]
fn a_token_resumes_on_any_node_and_is_spent_once() {
    let nats = NatsServer::start();
    let (n1, n2) = (node(&nats, &[]), node(&nats, &[]));
    let (_ann, token) = registered(&n1, "ann");
    // Issued on n1, resumed on n2 at once: visible before its auth_ok was sent.
    let mut on_n2 = n2.connect_greeted();
    let fresh = on_n2.resume("ann", &token);
    for server in [&n1, &n2] {
        let mut again = server.connect_greeted();
        again.send(&json!({"type":"resume","token":token}));
        assert_eq!(again.expect_auth_error(), "invalid_token", "spent for all");
    }
    // Two nodes racing for one token: one wins.
    for _ in 0..5 {
        let mut holder = n1.connect_greeted();
        let token = holder.login("ann", "password");
        drop(holder);
        let (mut x, mut y) = (n1.connect_greeted(), n2.connect_greeted());
        x.send(&json!({"type":"resume","token":token}));
        y.send(&json!({"type":"resume","token":token}));
        let answers = [x.recv(), y.recv()];
        let won = answers.iter().filter(|a| a["type"] == "auth_ok").count();
        assert_eq!(won, 1, "{answers:?}");
        assert!(
            answers
                .iter()
                .any(|a| a["type"] == "auth_error" && a["code"] == "invalid_token"),
            "{answers:?}"
        );
    }
    // The token n2 gave works on n1.
    n1.connect_greeted().resume("ann", &fresh);

    // Identification by IP is shared too: the name last authenticated from this
    // address on n2 is the one n1 knows it by.
    let _dee = registered(&n2, "dee");
    eventually(ACROSS, "n1 knows this address as dee", || {
        let welcome = n1.connect().welcome();
        (welcome["known_name"] == "dee").then_some(())
    });
}

#[test]
fn history_and_paging_are_the_same_from_any_node() {
    let nats = NatsServer::start();
    let (n1, n2) = (
        node(&nats, &["--history", "10"]),
        node(&nats, &["--history", "10"]),
    );
    let (mut ann, _) = registered(&n1, "ann");
    let (mut bob, _) = registered(&n2, "bob");
    let mut lobby = Vec::new();
    for i in 0..30 {
        lobby.push(ann.say(&format!("lobby {i}"))["id"].as_u64().unwrap());
    }
    let mut direct = Vec::new();
    for i in 0..15 {
        ann.send(&json!({"type":"say","to":"bob","text":format!("dm {i}")}));
        let m = ann.recv_matching("my dm", |v| v["type"] == "message" && v["to"] == "bob");
        direct.push(m["id"].as_u64().unwrap());
    }
    wait_for(&mut bob, ACROSS, "the last dm", |v| {
        v["type"] == "message" && v["id"] == json!(direct[14])
    });
    // The login's history: lobby's last 10, then the direct messages' last 10; then
    // pages further back, the same on both nodes.
    for server in [&n1, &n2] {
        let mut c = server.connect_greeted();
        c.send(&json!({"type":"login","name":"bob","password":"password"}));
        c.recv_type("auth_ok");
        let first = c.recv_type("history");
        assert_eq!(first["room"], "lobby");
        assert_eq!(ids(&first), lobby[20..]);
        let dms = c.recv_type("history");
        assert_eq!(dms["direct"], true);
        assert_eq!(ids(&dms), direct[5..]);
        // Paging back through lobby and through the conversation.
        let older = page(
            &mut c,
            json!({"room":"lobby","before":lobby[20],"limit":15}),
        );
        assert_eq!(ids(&older), lobby[5..20]);
        let oldest = page(&mut c, json!({"before":lobby[5]}));
        assert_eq!(ids(&oldest), lobby[..5]);
        let with = page(&mut c, json!({"with":"ANN","before":direct[5],"limit":3}));
        assert_eq!(with["with"], "ann");
        assert_eq!(ids(&with), direct[2..5]);
        assert!(ids(&page(&mut c, json!({"with":"ann","before":direct[0]}))).is_empty());
    }
}

#[test]
fn console_commands_act_on_the_whole_cluster() {
    let nats = NatsServer::start();
    let (mut n1, mut n2) = (node(&nats, &[]), node(&nats, &[]));
    let (mut ann, ann_token) = registered(&n1, "ann");
    let (mut bob, _) = registered(&n2, "bob");
    wait_for(&mut ann, ACROSS, "bob joined", |v| v["type"] == "joined");

    // status lists both nodes; users counts the cluster.
    let status = n1.admin_output("status").join("\n");
    assert!(status.contains("users online: 2"), "{status}");
    assert!(status.contains("nodes alive: 2"), "{status}");
    assert!(status.contains("(this node)"), "{status}");
    assert_eq!(n2.admin_output("users"), ["ann", "bob"]);

    // say and say-in on n2 reach n1.
    assert!(n2.admin_output("say hello all")[0].starts_with("sent message #"));
    let said = wait_for(&mut ann, ACROSS, "the admin's message", |v| {
        is_message_from(v, "server")
    });
    assert_eq!(said["text"], "hello all");
    bob.send(&json!({"type":"join","room":"den"}));
    bob.recv_matching("history of den", |v| v["type"] == "history");
    let out = eventually(ACROSS, "say-in on n1", || {
        let out = n1.admin_output("say-in den news");
        out[0].starts_with("sent message #").then_some(out)
    });
    assert_eq!(out.len(), 1);
    let news = wait_for(&mut bob, ACROSS, "the admin's room message", |v| {
        is_message_from(v, "server") && v["room"] == "den"
    });
    assert_eq!(news["text"], "news");

    // kick on n2 closes ann's connection on n1.
    assert_eq!(n2.admin_output("kick ann"), ["kicked ann (on other nodes)"]);
    let frames = ann.expect_closed(ACROSS);
    assert!(frames.iter().any(|f| f["type"] == "kicked"), "{frames:?}");

    // ban on n1 closes bob on n2; bob is refused everywhere; unban on n2 lifts it.
    assert!(n1.admin_output("ban bob spamming")[0].starts_with("banned bob"));
    let frames = bob.expect_closed(ACROSS);
    let kicked = frames
        .iter()
        .find(|f| f["type"] == "kicked")
        .expect("kicked");
    assert!(kicked["message"].as_str().unwrap().contains("spamming"));
    for server in [&n1, &n2] {
        let mut c = server.connect_greeted();
        c.send(&json!({"type":"login","name":"bob","password":"password"}));
        assert_eq!(c.expect_auth_error(), "banned");
    }
    eventually(ACROSS, "n2 knows the ban", || {
        let bans = n2.admin_output("bans");
        bans[0].starts_with("bob").then_some(())
    });
    assert_eq!(n2.admin_output("unban bob"), ["unbanned bob"]);
    eventually(ACROSS, "bob logs in on n1 again", || {
        let mut c = n1.connect_greeted();
        c.send(&json!({"type":"login","name":"bob","password":"password"}));
        (c.recv()["type"] == "auth_ok").then_some(())
    });

    // clear-ids on n2 forgets everyone everywhere.
    assert_eq!(n2.admin_output("clear-ids"), ["identities cleared"]);
    eventually(ACROSS, "ann unknown on n1", || {
        let mut c = n1.connect_greeted();
        c.send(&json!({"type":"login","name":"ann","password":"password"}));
        (c.recv()["code"] == "unknown_user").then_some(())
    });
    let mut c = n1.connect_greeted();
    c.send(&json!({"type":"resume","token":ann_token}));
    assert_eq!(c.expect_auth_error(), "invalid_token");
    // The name is free again, on either node, and its new owner is online everywhere.
    let _ann = registered(&n2, "ann");
    eventually(ACROSS, "n1 sees the new ann online", || {
        let names: BTreeSet<String> = n1.admin_output("users").into_iter().collect();
        names.contains("ann").then_some(())
    });
}

#[test]
fn behind_a_proxy_identification_by_ip_follows_the_client_to_any_node() {
    let nats = NatsServer::start();
    let url = nats.url();
    let args = [
        "--nats",
        url.as_str(),
        "--msg-rate",
        "0",
        "--trusted-proxies",
        "127.0.0.1",
    ];
    let (w1, w2) = (WebServer::start(&args), WebServer::start(&args));
    let via = |web: &WebServer, ip: &str| {
        let mut ws = web
            .ws(Some(&web.origin()), &[("X-Forwarded-For", ip)])
            .expect("WebSocket upgrade");
        let welcome = ws.welcome();
        (ws, welcome)
    };
    let (mut eve, welcome) = via(&w1, "198.51.100.7");
    assert!(welcome["known_name"].is_null(), "{welcome}");
    eve.register("eve", "password");
    // The proxy sends the same client to the other node: it is known there too.
    eventually(ACROSS, "node 2 knows 198.51.100.7 as eve", || {
        let (_, welcome) = via(&w2, "198.51.100.7");
        (welcome["known_name"] == "eve").then_some(())
    });
    let (_, welcome) = via(&w2, "198.51.100.8");
    assert!(welcome["known_name"].is_null(), "{welcome}");
    // The WebSocket on one node chats with a TCP client on the other.
    let (mut bob, _) = registered(&w2.server, "bob");
    let sent = eve.say("hello from the web");
    let seen = wait_for(&mut bob, ACROSS, "eve's message", |v| {
        is_message_from(v, "eve")
    });
    assert_eq!(seen["id"], sent["id"]);
}

#[test]
fn an_account_online_on_two_nodes_shares_its_message_rate_between_them() {
    // --msg-rate 1: a burst of 2 per account. On two nodes, each takes its share (a
    // message costs 2 there), so the two together still let 2 through at once, not 4.
    let nats = NatsServer::start();
    let url = nats.url();
    let start = || TestServer::start_with(&["--nats", url.as_str(), "--msg-rate", "1"]);
    let (mut n1, mut n2) = (start(), start());
    let (mut on_n1, _) = registered(&n1, "ann");
    let mut on_n2 = eventually(ACROSS, "ann logs in on n2", || {
        let mut client = n2.connect_greeted();
        client.send(&json!({"type":"login","name":"ann","password":"password"}));
        (client.recv()["type"] == "auth_ok").then_some(client)
    });
    // Each node knows that ann is on the other.
    for (here, other) in [(&mut n1, "n2"), (&mut n2, "n1")] {
        eventually(ACROSS, &format!("ann seen on {other}"), || {
            let status = here.admin_output("status").join("\n");
            status
                .lines()
                .any(|l| !l.contains("(this node)") && l.contains("1 user online"))
                .then_some(())
        });
    }
    for (client, prefix) in [(&mut on_n1, "n1"), (&mut on_n2, "n2")] {
        for i in 0..3 {
            client.send(&json!({"type":"say","text":format!("{prefix} burst {i}")}));
        }
    }
    // Each connection's own answers: its echoes (both connections get every message
    // of the account, told apart by the text) or its errors.
    let mut sent = 0;
    for (client, prefix) in [(&mut on_n1, "n1"), (&mut on_n2, "n2")] {
        for _ in 0..3 {
            let answer = client.recv_matching("the say's answer", |v| {
                v["type"] == "error"
                    || (v["type"] == "message"
                        && v["text"].as_str().is_some_and(|t| t.starts_with(prefix)))
            });
            if answer["type"] == "message" {
                sent += 1;
            } else {
                assert_eq!(answer["code"], "rate_limited", "{answer}");
            }
        }
    }
    // 2 at once, and a third if a token came back meanwhile (one a second per node's
    // share); two nodes each allowing the whole burst would let 4 through.
    assert!(
        (1..=3).contains(&sent),
        "{sent} of 6 went through on the two nodes together"
    );
}
