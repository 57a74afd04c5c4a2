use super::*;

fn message(room: Option<&str>, to: Option<&str>, text: &str) -> ChatMessage {
    ChatMessage {
        room: room.map(str::to_string),
        to: to.map(str::to_string),
        id: 1,
        from: "me".into(),
        text: text.into(),
        ts: 0,
    }
}

fn mine(text: &str) -> ChatMessage {
    message(None, None, text)
}

fn say(text: &str) -> Outgoing {
    Outgoing::say_in(LOBBY, text)
}

fn send_next(q: &mut SendQueue, now: Instant) -> Option<Outgoing> {
    q.ready(now)?;
    q.sent(now)
}

/// A queue past its login replay.
fn queue(window: usize) -> SendQueue {
    let mut q = SendQueue::new(window);
    q.replay_over();
    q
}

#[test]
fn a_window_of_one_waits_for_each_echo_and_quit_waits_for_the_last() {
    let now = Instant::now();
    let mut q = queue(1);
    for request in [say("a"), say("b"), Outgoing::Quit] {
        q.push(request);
    }
    assert_eq!(send_next(&mut q, now), Some(say("a")));
    assert_eq!(q.ready(now), None);
    q.on_message(&mine("a"), "me");
    assert_eq!(send_next(&mut q, now), Some(say("b")));
    assert_eq!(q.ready(now), None, "quit waits");
    q.on_message(&mine("someone else's b"), "me");
    assert_eq!(q.ready(now), None);
    q.on_message(&mine("b"), "me");
    assert_eq!(send_next(&mut q, now), Some(Outgoing::Quit));
    assert_eq!(q.unacknowledged(), 0);
}

#[test]
fn the_echo_must_come_from_the_same_room_or_conversation() {
    let now = Instant::now();
    let mut q = queue(1);
    q.push(Outgoing::say_in("Rust", "hi"));
    send_next(&mut q, now);
    q.on_message(&mine("hi"), "me");
    assert_eq!(q.unacknowledged(), 1, "the lobby's copy is not ours");
    q.on_message(&message(Some("rust"), None, "hi"), "ME");
    assert_eq!(
        q.unacknowledged(),
        0,
        "rooms and names compare ignoring case"
    );

    q.push(Outgoing::Say {
        text: "psst".into(),
        target: Target::User("bob".into()),
    });
    send_next(&mut q, now);
    q.on_message(&message(Some("bob"), None, "psst"), "me");
    assert_eq!(q.unacknowledged(), 1);
    q.on_message(&message(None, Some("Bob"), "psst"), "me");
    assert_eq!(
        q.unacknowledged(),
        0,
        "a direct message's echo names the recipient"
    );
}

#[test]
fn the_lobby_is_sent_without_a_room_and_others_with_theirs() {
    let mut here = Outgoing::Say {
        text: "x".into(),
        target: Target::Here,
    };
    here.resolve("go", |_| None);
    assert!(matches!(here.request(), ClientMessage::Say { room: Some(room), .. } if room == "go"));
    let mut who = Outgoing::Who { room: None };
    who.resolve("LOBBY", |_| None);
    assert_eq!(who.request(), ClientMessage::Who { room: None });
    let lobby = say("x").request();
    assert_eq!(
        lobby,
        ClientMessage::Say {
            text: "x".into(),
            room: None,
            to: None
        }
    );
    let dm = Outgoing::Say {
        text: "x".into(),
        target: Target::User("bob".into()),
    };
    assert!(
        matches!(dm.request(), ClientMessage::Say { to: Some(to), room: None, .. } if to == "bob")
    );
    let mut page = Outgoing::Page {
        room: None,
        before: None,
    };
    page.resolve("rust", |room| (room == "rust").then_some(9));
    assert_eq!(
        serde_json::to_value(page.request()).unwrap(),
        serde_json::json!({"type":"history","room":"rust","before":9})
    );
}

#[test]
fn other_requests_go_alone_and_errors_answer_the_oldest() {
    let now = Instant::now();
    let mut q = queue(2);
    q.push(say("a"));
    q.push(Outgoing::Join("rust".into()));
    q.push(say("b"));
    assert_eq!(send_next(&mut q, now), Some(say("a")));
    assert_eq!(q.ready(now), None, "the join waits for the say");
    q.on_message(&mine("a"), "me");
    assert_eq!(send_next(&mut q, now), Some(Outgoing::Join("rust".into())));
    assert_eq!(q.ready(now), None, "the say waits for the join");
    assert_eq!(
        q.on_error(ErrorCode::BadRequest, now),
        Refusal::Refused(Outgoing::Join("rust".into()))
    );
    assert_eq!(q.refused(), 0, "a refused join is no lost message");
    assert_eq!(send_next(&mut q, now), Some(say("b")));
    assert_eq!(
        q.on_error(ErrorCode::NotMember, now),
        Refusal::Refused(say("b"))
    );
    assert_eq!(q.refused(), 1);
    assert_eq!(q.on_error(ErrorCode::Internal, now), Refusal::Other);
}

#[test]
fn rate_limited_is_resent_first_after_a_pause() {
    let now = Instant::now();
    let mut q = queue(1);
    q.push(say("a"));
    q.push(say("b"));
    send_next(&mut q, now);
    assert_eq!(q.on_error(ErrorCode::RateLimited, now), Refusal::WillRetry);
    assert_eq!(q.ready(now), None, "held");
    let later = now + RATE_LIMIT_FIRST_DELAY;
    assert_eq!(send_next(&mut q, later), Some(say("a")));
    assert_eq!(
        q.on_error(ErrorCode::BadRequest, later),
        Refusal::Refused(say("a"))
    );
    assert_eq!(q.refused(), 1);
}

#[test]
fn says_lost_with_the_connection_wait_for_the_history_and_are_not_sent_twice() {
    let now = Instant::now();
    let mut q = queue(2);
    q.push(say("a"));
    q.push(say("b"));
    send_next(&mut q, now);
    send_next(&mut q, now);
    assert_eq!(q.requeue_in_flight(), None);
    q.replay_starts();
    assert_eq!(q.ready(now), None, "held for the replayed history");
    q.on_replayed(&message(Some("rust"), None, "a"), "me");
    q.on_replayed(&mine("a"), "me");
    q.on_replayed(&mine("a"), "me");
    q.replay_over();
    assert_eq!(send_next(&mut q, now), Some(say("b")));
    assert_eq!(q.unacknowledged(), 1);
}

#[test]
fn an_account_change_in_flight_is_not_repeated_after_a_drop() {
    let now = Instant::now();
    let mut q = queue(1);
    let change = Outgoing::ChangePassword {
        old: Secret("old1".into()),
        new: Secret("new1".into()),
    };
    q.push(change.clone());
    q.push(Outgoing::Rooms);
    send_next(&mut q, now);
    assert_eq!(q.requeue_in_flight(), Some(change));
    assert_eq!(send_next(&mut q, now), Some(Outgoing::Rooms));
    assert!(!format!("{:?}", Secret("hunter2".into())).contains("hunter2"));
}

#[test]
fn nothing_goes_before_the_login_replay_is_over() {
    let now = Instant::now();
    let mut q = SendQueue::new(1);
    q.push(say("a"));
    assert!(q.replaying());
    assert_eq!(q.ready(now), None);
    q.replay_over();
    assert_eq!(send_next(&mut q, now), Some(say("a")));
}

#[test]
fn leaving_offline_only_when_nothing_else_waits() {
    let mut q = queue(1);
    q.push(say("a"));
    q.push(Outgoing::Logout);
    assert_eq!(q.leave_offline(), None);
    let mut q = queue(1);
    q.push(Outgoing::Quit);
    assert_eq!(q.leave_offline(), Some(Outgoing::Quit));
}
