use super::*;
use crate::client::fake_server::{self, FakeServer, Recorder};
use crate::protocol::{ChatMessage, ErrorCode, HistoryEntry};

fn policy(window: usize, ping_interval: Duration) -> Policy {
    Policy {
        window,
        max_reconnects: Some(1),
        ack_timeout: Duration::from_secs(10),
        fail_on_ack_timeout: true,
        ping_interval,
        reconnect_after_shutdown: false,
        fail_on_bad_frame: true,
        confirm: false,
    }
}

/// A session for "me" connected to a fake server, its line sender and what it shows.
async fn session(
    policy: Policy,
) -> (
    Session<Recorder>,
    FakeServer,
    mpsc::Sender<String>,
    mpsc::Receiver<String>,
    Recorder,
) {
    let (conn, fake, server) = fake_server::pair().await;
    let tokens = TokenStore::in_memory(&server.token_key());
    let out = Recorder::default();
    let session = Session::new(
        conn,
        server,
        Connector::plain(),
        tokens,
        "me".into(),
        out.clone(),
        policy,
    );
    let (tx, rx) = mpsc::channel(16);
    (session, fake, tx, rx, out)
}

/// Answers the `ping` that marks the end of the replayed history.
async fn end_replay(server: &mut FakeServer) {
    assert_eq!(server.recv().await, ClientMessage::Ping);
    server.send(ServerMessage::Pong).await;
}

fn echo(id: u64, text: &str) -> ServerMessage {
    ServerMessage::Message(ChatMessage {
        id,
        room: None,
        to: None,
        from: "me".into(),
        text: text.into(),
        ts: 0,
    })
}

#[tokio::test]
async fn says_go_one_at_a_time_and_quit_waits_for_the_last_echo() {
    let (mut session, mut server, tx, mut rx, out) = session(policy(1, PING_INTERVAL)).await;
    let client = tokio::spawn(async move { (session.run(&mut rx).await, session) });
    for line in ["one", "two"] {
        tx.send(line.into()).await.unwrap();
    }
    drop(tx);
    server
        .send(ServerMessage::History {
            room: None,
            direct: None,
            with: None,
            messages: vec![],
        })
        .await;
    end_replay(&mut server).await;
    assert_eq!(
        server.recv().await,
        ClientMessage::Say {
            text: "one".into(),
            room: None,
            to: None
        }
    );
    assert_eq!(
        server.recv_within(Duration::from_millis(300)).await,
        None,
        "the second say waits for the first echo"
    );
    server.send(echo(1, "one")).await;
    assert_eq!(
        server.recv().await,
        ClientMessage::Say {
            text: "two".into(),
            room: None,
            to: None
        }
    );
    assert_eq!(
        server.recv_within(Duration::from_millis(300)).await,
        None,
        "quit waits for the last echo"
    );
    server.send(echo(2, "two")).await;
    assert_eq!(server.recv().await, ClientMessage::Quit);
    drop(server);
    let (outcome, session) = client.await.unwrap();
    assert_eq!(outcome, Outcome::Quit);
    assert_eq!(session.unacknowledged(), 0);
    let shown = out.0.lock().unwrap().clone();
    assert!(shown[0].ends_with("] me: one"), "{shown:?}");
    assert!(shown[1].ends_with("] me: two"), "{shown:?}");
}

#[tokio::test]
async fn a_quiet_session_pings_and_a_silent_server_counts_as_gone() {
    let (mut session, mut server, _tx, mut rx, out) =
        session(policy(4, Duration::from_millis(200))).await;
    let client = tokio::spawn(async move { session.run(&mut rx).await });
    assert_eq!(server.recv().await, ClientMessage::Ping);
    server.send(ServerMessage::Pong).await;
    assert_eq!(
        server.recv().await,
        ClientMessage::Ping,
        "pings go on while quiet"
    );
    // No answer this time: the connection is given up; with no token to resume
    // with, the session fails.
    let outcome = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("session ends")
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::Failed(why) if why.contains("no session token")),
        "{outcome:?}"
    );
    let shown = out.0.lock().unwrap().clone();
    assert!(
        shown.iter().any(|l| l.contains("stopped answering")),
        "{shown:?}"
    );
    drop(server);
}

fn room_message(id: u64, room: &str, from: &str, text: &str) -> ServerMessage {
    ServerMessage::Message(ChatMessage {
        id,
        room: Some(room.into()),
        to: None,
        from: from.into(),
        text: text.into(),
        ts: 0,
    })
}

fn history(room: &str, ids: &[u64]) -> ServerMessage {
    ServerMessage::History {
        room: Some(room.into()),
        direct: None,
        with: None,
        messages: ids
            .iter()
            .map(|&id| {
                HistoryEntry::Message(ChatMessage {
                    id,
                    room: Some(room.into()),
                    to: None,
                    from: "bob".into(),
                    text: format!("old {id}"),
                    ts: 0,
                })
            })
            .collect(),
    }
}

fn say_to(text: &str, room: Option<&str>, to: Option<&str>) -> ClientMessage {
    ClientMessage::Say {
        text: text.into(),
        room: room.map(str::to_string),
        to: to.map(str::to_string),
    }
}

/// The lines shown after the `skip` first.
fn shown_after(out: &Recorder, skip: usize) -> Vec<String> {
    out.0.lock().unwrap().iter().skip(skip).cloned().collect()
}

#[tokio::test]
async fn a_joined_room_takes_the_typed_lines_and_other_rooms_are_marked() {
    let (mut session, mut server, tx, mut rx, out) = session(policy(1, PING_INTERVAL)).await;
    let client = tokio::spawn(async move { (session.run(&mut rx).await, session) });
    server.send(history("lobby", &[1])).await;
    end_replay(&mut server).await;
    tx.send("/join Rust".into()).await.unwrap();
    assert_eq!(
        server.recv().await,
        ClientMessage::Join {
            room: "Rust".into()
        }
    );
    tx.send("in rust".into()).await.unwrap();
    assert_eq!(
        server.recv_within(Duration::from_millis(300)).await,
        None,
        "the line waits for the join's answer"
    );
    server
        .send(ServerMessage::Room {
            room: "rust".into(),
            members: vec!["bob".into(), "me".into()],
        })
        .await;
    server.send(history("rust", &[2, 3])).await;
    assert_eq!(server.recv().await, say_to("in rust", Some("rust"), None));
    server.send(room_message(4, "rust", "me", "in rust")).await;
    server
        .send(room_message(5, "lobby", "bob", "in the lobby"))
        .await;
    tx.send("/msg Bob psst".into()).await.unwrap();
    assert_eq!(server.recv().await, say_to("psst", None, Some("Bob")));
    drop(tx);
    assert_eq!(
        server.recv_within(Duration::from_millis(300)).await,
        None,
        "quit waits for the direct message's echo"
    );
    server
        .send(ServerMessage::Message(ChatMessage {
            id: 6,
            room: None,
            to: Some("bob".into()),
            from: "me".into(),
            text: "psst".into(),
            ts: 0,
        }))
        .await;
    assert_eq!(server.recv().await, ClientMessage::Quit);
    let (outcome, session) = client.await.unwrap();
    assert_eq!(outcome, Outcome::Quit);
    assert_eq!(session.current_room(), "rust");
    let shown = shown_after(&out, 0);
    let tail: Vec<&str> = shown
        .iter()
        .map(|l| &l[l.find("] ").map_or(0, |i| i + 2)..])
        .collect();
    assert_eq!(
        tail,
        [
            "bob: old 1",
            "* you joined #rust (2 members: bob, me); what you type now goes there",
            "room: rust",
            "bob: old 2",
            "bob: old 3",
            "me: in rust",
            "#lobby bob: in the lobby",
            "(direct to bob) me: psst",
        ],
        "{shown:#?}"
    );
}

#[tokio::test]
async fn history_pages_back_from_the_oldest_message_shown() {
    let (mut session, mut server, tx, mut rx, out) = session(policy(1, PING_INTERVAL)).await;
    let client = tokio::spawn(async move { session.run(&mut rx).await });
    server.send(history("lobby", &[40, 41])).await;
    end_replay(&mut server).await;
    while out.0.lock().unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send("/history".into()).await.unwrap();
    let page = |before| ClientMessage::History {
        room: Some("lobby".into()),
        with: None,
        before,
        limit: None,
    };
    assert_eq!(server.recv().await, page(Some(40)));
    tx.send("/history".into()).await.unwrap();
    assert_eq!(
        server.recv_within(Duration::from_millis(300)).await,
        None,
        "the next page waits for this one"
    );
    server.send(history("lobby", &[38, 39])).await;
    assert_eq!(server.recv().await, page(Some(38)));
    server.send(history("lobby", &[])).await;
    drop(tx);
    assert_eq!(server.recv().await, ClientMessage::Quit);
    assert_eq!(client.await.unwrap(), Outcome::Quit);
    let shown = shown_after(&out, 2);
    assert!(
        shown[0].ends_with("* 2 earlier messages in #lobby:"),
        "{shown:#?}"
    );
    assert!(shown[1].ends_with("] bob: old 38"), "{shown:#?}");
    assert!(shown[2].ends_with("] bob: old 39"), "{shown:#?}");
    assert_eq!(shown[3], "* no earlier messages in #lobby", "{shown:#?}");
}

#[tokio::test]
async fn leaving_the_current_room_brings_lines_back_to_the_lobby() {
    let (mut session, mut server, tx, mut rx, out) = session(policy(1, PING_INTERVAL)).await;
    let client = tokio::spawn(async move { (session.run(&mut rx).await, session) });
    server.send(history("lobby", &[])).await;
    end_replay(&mut server).await;
    tx.send("/join go".into()).await.unwrap();
    server.recv().await;
    server
        .send(ServerMessage::Room {
            room: "go".into(),
            members: vec!["me".into()],
        })
        .await;
    server.send(history("go", &[])).await;
    tx.send("/part".into()).await.unwrap();
    assert_eq!(
        server.recv().await,
        ClientMessage::Part { room: "go".into() }
    );
    server
        .send(ServerMessage::Parted { room: "go".into() })
        .await;
    tx.send("/part".into()).await.unwrap();
    tx.send("back".into()).await.unwrap();
    assert_eq!(server.recv().await, say_to("back", None, None));
    server.send(echo(1, "back")).await;
    tx.send("/part nowhere".into()).await.unwrap();
    assert_eq!(
        server.recv().await,
        ClientMessage::Part {
            room: "nowhere".into()
        }
    );
    server
        .send(ServerMessage::error(ErrorCode::UnknownRoom, "no such room"))
        .await;
    drop(tx);
    assert_eq!(server.recv().await, ClientMessage::Quit);
    let (outcome, session) = client.await.unwrap();
    assert_eq!(outcome, Outcome::Quit);
    assert_eq!(session.current_room(), "lobby");
    assert_eq!(session.refused(), 0, "a refused part is no lost message");
    let shown = shown_after(&out, 0).join("\n");
    for expected in [
        "* you left #go",
        "room: lobby",
        "notice: The lobby cannot be left",
        "notice: There is no room #nowhere.",
    ] {
        assert!(shown.contains(expected), "{expected:?} in {shown}");
    }
}

#[tokio::test]
async fn our_echo_acknowledges_even_with_an_id_already_shown() {
    let (mut session, mut server, tx, mut rx, out) = session(policy(1, PING_INTERVAL)).await;
    let client = tokio::spawn(async move { session.run(&mut rx).await });
    server.send(history("lobby", &[1])).await;
    end_replay(&mut server).await;
    tx.send("mine".into()).await.unwrap();
    drop(tx);
    assert_eq!(server.recv().await, say_to("mine", None, None));
    server.send(echo(1, "mine")).await;
    assert_eq!(server.recv().await, ClientMessage::Quit);
    assert_eq!(client.await.unwrap(), Outcome::Quit);
    assert!(shown_after(&out, 1)[0].ends_with("] me: mine"));
}

#[tokio::test]
async fn kicked_ends_the_session() {
    let (mut session, mut server, _tx, mut rx, _out) = session(policy(4, PING_INTERVAL)).await;
    let client = tokio::spawn(async move { session.run(&mut rx).await });
    server
        .send(ServerMessage::Kicked {
            message: "bye".into(),
        })
        .await;
    assert_eq!(
        client.await.unwrap(),
        Outcome::Ended(Ended::Kicked("bye".into()))
    );
}
