//! Cluster mode (SPEC §11) when things die, black box: a node killed with `kill -9`
//! (its users leave within 30 s unless still connected elsewhere, nothing it
//! acknowledged is lost, a node started after it neither counts it nor its users and
//! continues the ids), NATS lost and back (`unavailable`, connections kept, service
//! resumes by itself, nothing acknowledged lost), one server of a three-server NATS
//! cluster lost (`--nats-replicas 3`: the chat goes on; ignored by default, its
//! fail-over is not yet reliable), and NATS unreachable at start.

mod cluster_support;
mod common;
mod nats_support;

use std::time::{Duration, Instant};

use cluster_support::{eventually, ids, node, page, registered, wait_for};
use common::*;
use nats_support::{free_port, NatsCluster, NatsServer};
use serde_json::json;

/// How long news from another node may take (a presence beat, a bucket change).
const ACROSS: Duration = Duration::from_secs(15);

/// How long a NATS cluster may take to fail over after losing a server.
const FAIL_OVER: Duration = Duration::from_secs(60);

/// SPEC §11: a dead node's users are `left` within this.
const DEAD_NODE_LEFT: Duration = Duration::from_secs(30);

#[test]
fn a_killed_node_loses_nothing_acknowledged_and_its_users_leave() {
    let nats = NatsServer::start();
    let n1 = node(&nats, &[]);
    // The second node takes its NATS from the environment.
    let url = nats.url();
    let mut n2 = TestServer::launch(Launch {
        args: &["--msg-rate", "0"],
        env: &[("ECHOCHAT_NATS", url.as_str())],
        ..Launch::default()
    });
    let (mut ann, _) = registered(&n1, "ann");
    let (mut bob, _) = registered(&n2, "bob");
    wait_for(&mut ann, ACROSS, "bob joined", |v| {
        v["type"] == "joined" && v["name"] == "bob"
    });
    // ann is on both nodes: losing n2 leaves her online through n1.
    let mut ann_on_n2 = n2.connect_greeted();
    ann_on_n2.login("ann", "password");

    // bob's messages, pipelined, every one acknowledged (echoed) before the kill.
    const SENT: usize = 40;
    for i in 0..SENT {
        bob.send(&json!({"type":"say","text":format!("b{i}")}));
    }
    let acked: Vec<u64> = (0..SENT)
        .map(|_| {
            let m = bob.recv_matching("an echo", |v| v["type"] == "message");
            m["id"].as_u64().unwrap()
        })
        .collect();
    n2.kill_hard();
    let killed = Instant::now();

    let left = wait_for(
        &mut ann,
        DEAD_NODE_LEFT + Duration::from_secs(5),
        "bob left",
        |v| v["type"] == "left",
    );
    assert_eq!(left["name"], "bob", "only bob left: ann is still on n1");
    assert!(
        killed.elapsed() <= DEAD_NODE_LEFT,
        "left {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(ann.who(), ["ann"]);
    let mut n1 = n1;
    eventually(ACROSS, "n1 counts one node", || {
        let status = n1.admin_output("status").join("\n");
        status.contains("nodes alive: 1").then_some(())
    });

    // Everything bob was echoed is in the history, on n1 ...
    let lobby = page(&mut ann, json!({"room":"lobby","limit":SENT}));
    assert_eq!(ids(&lobby), acked);
    // ... and on a node started after the kill, which continues the ids.
    let mut n3 = node(&nats, &[]);
    let mut cy = n3.connect_greeted();
    let history = cy.register_full("cy", "password").messages;
    let replayed: Vec<u64> = history.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(
        replayed, acked,
        "the new node replays what the stream holds"
    );
    let next = cy.say("after")["id"].as_u64().unwrap();
    assert!(next > *acked.last().unwrap(), "{next}");
    let status = n3.admin_output("status").join("\n");
    assert!(status.contains("nodes alive: 2"), "{status}");
    assert!(status.contains("users online: 2"), "ann and cy: {status}");
    assert_eq!(cy.who(), ["ann", "cy"]);
}

#[test]
fn losing_nats_answers_unavailable_keeps_connections_and_recovers() {
    let mut nats = NatsServer::start();
    let (n1, n2) = (node(&nats, &[]), node(&nats, &[]));
    let (mut ann, ann_token) = registered(&n1, "ann");
    let (mut bob, _) = registered(&n2, "bob");
    wait_for(&mut ann, ACROSS, "bob joined", |v| v["type"] == "joined");
    // Messages from both nodes, pipelined, every one echoed (acknowledged) before
    // NATS dies.
    const EACH: usize = 15;
    for i in 0..EACH {
        ann.send(&json!({"type":"say","text":format!("a{i}")}));
        bob.send(&json!({"type":"say","text":format!("b{i}")}));
    }
    let mut acked = Vec::new();
    for (client, from) in [(&mut ann, "ann"), (&mut bob, "bob")] {
        for _ in 0..EACH {
            let m =
                client.recv_matching("an echo", |v| v["type"] == "message" && v["from"] == from);
            acked.push(m["id"].as_u64().unwrap());
        }
    }
    acked.sort_unstable();

    nats.kill();
    // The node notices at once (the connection drops). (A `say` sent in the instant
    // before it noticed is answered `unavailable` when its confirmation does not come,
    // and may still be stored once NATS is back.)
    eventually(ACROSS, "say answered unavailable", || {
        ann.send(&json!({"type":"say","text":"during"}));
        let v = ann.recv_matching("say's answer", |v| {
            v["type"] == "error" || v["type"] == "message"
        });
        (v["code"] == "unavailable").then_some(())
    });
    // Everything that needs NATS is unavailable; ping, who and the connection stay.
    ann.send(&json!({"type":"ping"}));
    ann.recv_matching("pong", |v| v["type"] == "pong");
    assert_eq!(ann.who(), ["ann", "bob"]);
    for request in [
        json!({"type":"rooms"}),
        json!({"type":"join","room":"tea"}),
        json!({"type":"history","room":"lobby"}),
        json!({"type":"say","to":"bob","text":"psst"}),
        json!({"type":"logout"}),
    ] {
        ann.send(&request);
        assert_eq!(ann.expect_error(), "unavailable", "{request}");
    }
    for credentials in [
        json!({"type":"login","name":"bob","password":"password"}),
        json!({"type":"resume","token":ann_token}),
        json!({"type":"register","name":"newcomer","password":"password"}),
    ] {
        let mut c = n2.connect_greeted();
        c.send(&credentials);
        assert_eq!(c.expect_auth_error(), "unavailable", "{credentials}");
        c.ping();
    }

    nats.restart();
    // Back by itself: the same connections chat again, across nodes.
    let mut attempt = 0;
    let back = eventually(Duration::from_secs(30), "say works again", || {
        attempt += 1;
        let text = format!("after the outage {attempt}");
        ann.send(&json!({"type":"say","text":text}));
        let v = ann.recv_matching("say's answer", |v| {
            v["type"] == "error" || (v["type"] == "message" && v["text"] == text.as_str())
        });
        (v["type"] == "message").then_some(v)
    });
    let seen = wait_for(&mut bob, ACROSS, "the message after", |v| {
        v["type"] == "message" && v["text"] == back["text"]
    });
    assert_eq!(seen["id"], back["id"]);
    // Nothing acknowledged was lost, not even by NATS killed with SIGKILL.
    for (client, server) in [(&mut bob, "n2"), (&mut ann, "n1")] {
        let lobby = ids(&page(client, json!({"room":"lobby","limit":100})));
        let missing: Vec<&u64> = acked.iter().filter(|id| !lobby.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "lost on {server}: {missing:?} of {lobby:?}"
        );
    }
    let mut c = n1.connect_greeted();
    c.login("bob", "password");
}

#[test]
#[ignore = "the fail-over stalled in about one run in ten before the delivery watch, and \
            needs a longer record (docs/cluster.md, open points); run it with --ignored"]
fn losing_one_server_of_a_three_server_nats_cluster_keeps_the_chat_going() {
    let mut nats = NatsCluster::start(3);
    // Each node is first sent to a server of its own; both know all three.
    let on = |first: usize| {
        let urls = nats.urls(first);
        TestServer::start_with(&[
            "--nats",
            urls.as_str(),
            "--nats-replicas",
            "3",
            "--msg-rate",
            "0",
        ])
    };
    let (n1, n2) = (on(0), on(1));
    let (mut ann, _) = registered(&n1, "ann");
    let (mut bob, _) = registered(&n2, "bob");
    wait_for(&mut ann, ACROSS, "bob joined", |v| v["type"] == "joined");
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push(ann.say(&format!("a{i}"))["id"].as_u64().unwrap());
        acked.push(bob.say(&format!("b{i}"))["id"].as_u64().unwrap());
    }

    nats.kill(0);
    // The nodes move to the servers left, and NATS elects new leaders for what the
    // lost server led; two of three copies are a majority, so after the fail-over (a
    // consumer on the lost server is noticed by its missing heartbeats, 10 s, and is
    // made again once the stream has a leader: usually 10-15 s in all, and a `say`
    // acknowledged meanwhile is echoed then) everything works again: chat across
    // nodes, new accounts, logins anywhere.
    let mut attempt = 0;
    let back = eventually(FAIL_OVER, "say works after the fail-over", || {
        attempt += 1;
        let text = format!("after {attempt}");
        ann.send(&json!({"type":"say","text":text}));
        let v = wait_for(&mut ann, FAIL_OVER, "say's answer", |v| {
            v["type"] == "error" || (v["type"] == "message" && v["text"] == text.as_str())
        });
        (v["type"] == "message").then_some(v)
    });
    let seen = wait_for(&mut bob, FAIL_OVER / 2, "the message after", |v| {
        v["type"] == "message" && v["text"] == back["text"]
    });
    assert_eq!(seen["id"], back["id"]);
    eventually(FAIL_OVER, "a registration after the fail-over", || {
        let mut c = n2.connect_greeted();
        c.send(&json!({"type":"register","name":"cy","password":"password"}));
        let answer = c.recv();
        // name_taken: an earlier attempt was stored though its answer was lost.
        (answer["type"] == "auth_ok" || answer["code"] == "name_taken").then_some(())
    });
    eventually(FAIL_OVER, "cy logs in on the other node", || {
        let mut c = n1.connect_greeted();
        c.send(&json!({"type":"login","name":"cy","password":"password"}));
        (c.recv()["type"] == "auth_ok").then_some(())
    });
    // Nothing acknowledged before the loss is missing, on either node.
    for (client, node) in [(&mut ann, "n1"), (&mut bob, "n2")] {
        let lobby = ids(&page(client, json!({"room":"lobby","limit":100})));
        let missing: Vec<&u64> = acked.iter().filter(|id| !lobby.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "lost on {node}: {missing:?} of {lobby:?}"
        );
    }
}

#[test]
fn nats_unreachable_at_start_is_one_line_and_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("nats://127.0.0.1:{}", free_port());
    let exit = run_to_exit(dir.path(), &["--nats", &url], Duration::from_secs(30));
    let status = exit.status.expect("the server exits by itself");
    assert!(!status.success(), "{status:?}");
    assert!(exit.stdout.is_empty(), "no listening line: {}", exit.stdout);
    let lines: Vec<&str> = exit.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", exit.stderr);
    assert!(
        lines[0].contains("NATS") && lines[0].contains(&url),
        "{}",
        lines[0]
    );
}
