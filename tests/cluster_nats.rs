//! The cluster layer (`server::cluster`) against a real `nats-server -js`: every
//! guarantee of SPEC §11 that rests on NATS, with two or more nodes in one process
//! (each a `Cluster` of its own, with its own connection), and one node in a child
//! process for `kill -9`.

mod nats_support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use echochat::names::{confusable_keys, name_key};
use echochat::server::cluster::{
    AccountRecord, AdminCommand, BanRecord, Belongings, Cluster, ClusterConfig, ClusterError,
    ClusterEvent, ConnectError, HistoryOf, Joined, MemberRecord, Outgoing, PresenceChange,
    RoomRecord, Scope, StateChange, StoredBody, TokenEntry,
};
use nats_support::NatsServer;
use tokio::sync::mpsc;

/// How long an event the test expects may take.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

fn config(nats: &NatsServer) -> ClusterConfig {
    ClusterConfig::new(&nats.url(), "test")
}

async fn node(nats: &NatsServer) -> Joined {
    Cluster::connect(config(nats)).await.expect("node connects")
}

/// Waits for the first event `pick` accepts, dropping the others.
async fn expect<T>(
    events: &mut mpsc::Receiver<ClusterEvent>,
    what: &str,
    mut pick: impl FnMut(ClusterEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {EVENT_TIMEOUT:?}"))
            .expect("events still flowing");
        if let Some(found) = pick(event) {
            return found;
        }
    }
}

fn account(name: &str) -> AccountRecord {
    AccountRecord::new(name, "$pbkdf2-sha256$i=1000$x$y", 1)
}

async fn register(node: &Cluster, name: &str) -> Result<AccountRecord, ClusterError> {
    let record = account(name);
    node.register_account(&name_key(name), &confusable_keys(name), &record)
        .await
        .map(|_| record)
}

fn room_message(room: &str, from: &str, text: &str) -> Outgoing {
    Outgoing {
        scope: Scope::Room(room.to_string()),
        body: StoredBody {
            room: Some(room.to_string()),
            to: None,
            from: from.to_string(),
            text: text.to_string(),
            ts: 1,
        },
    }
}

fn direct_message(from: &AccountRecord, to: &AccountRecord, text: &str) -> Outgoing {
    Outgoing {
        scope: Scope::direct(&from.uid, &to.uid),
        body: StoredBody {
            room: None,
            to: Some(to.name.clone()),
            from: from.name.clone(),
            text: text.to_string(),
            ts: 1,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_for_a_name_or_a_look_alike_one_wins() {
    let nats = NatsServer::start();
    let (a, b) = (node(&nats).await.cluster, node(&nats).await.cluster);
    for i in 0..20 {
        let name = format!("racer{i}");
        let (x, y) = tokio::join!(register(&a, &name), register(&b, &name));
        let wins = [x.is_ok(), y.is_ok()];
        assert_eq!(
            wins.iter().filter(|w| **w).count(),
            1,
            "{name}: {x:?} {y:?}"
        );
        for outcome in [x, y] {
            if let Err(err) = outcome {
                assert_eq!(err, ClusterError::Conflict);
            }
        }
    }
    // Different names that look alike (capital I for l): still one winner.
    for i in 0..10 {
        let (plain, lookalike) = (format!("Alice{i}"), format!("AIice{i}"));
        assert_ne!(name_key(&plain), name_key(&lookalike));
        let (x, y) = tokio::join!(register(&a, &plain), register(&b, &lookalike));
        assert_eq!(
            [x.is_ok(), y.is_ok()].iter().filter(|w| **w).count(),
            1,
            "{plain}/{lookalike}: {x:?} {y:?}"
        );
    }
    // The loser's claims were undone: a name that lost nothing is free.
    assert!(register(&b, "Bob").await.is_ok());
    assert_eq!(
        register(&a, "bob").await.unwrap_err(),
        ClusterError::Conflict
    );
    let (bob, _) = a
        .account("bob")
        .await
        .unwrap()
        .expect("bob is visible everywhere");
    assert_eq!(bob.name, "Bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_spent_once_even_when_nodes_race() {
    let nats = NatsServer::start();
    let (a, b) = (node(&nats).await.cluster, node(&nats).await.cluster);
    let ann = register(&a, "ann").await.unwrap();
    let now = 1_000;
    for i in 0..20 {
        let digest = format!("{i:064x}");
        let entry = TokenEntry {
            user: "ann".into(),
            uid: ann.uid.clone(),
            expires_ms: now + 60_000,
        };
        a.issue_token(&digest, &entry).await.unwrap();
        // Issued on a, visible on b before anything else happens.
        assert_eq!(b.token(&digest, now).await.unwrap(), Some(entry.clone()));
        let (x, y) = tokio::join!(a.spend_token(&digest, now), b.spend_token(&digest, now));
        let spent: Vec<_> = [&x, &y].into_iter().filter(|r| r.is_ok()).collect();
        assert_eq!(spent.len(), 1, "{x:?} {y:?}");
        assert_eq!(*spent[0], Ok(entry));
        for loser in [x, y].into_iter().filter_map(Result::err) {
            assert!(
                matches!(loser, ClusterError::Conflict | ClusterError::NotFound),
                "{loser:?}"
            );
        }
        assert_eq!(
            a.spend_token(&digest, now).await,
            Err(ClusterError::NotFound)
        );
    }
    let expired = TokenEntry {
        user: "ann".into(),
        uid: ann.uid.clone(),
        expires_ms: now - 1,
    };
    a.issue_token("old", &expired).await.unwrap();
    assert_eq!(b.spend_token("old", now).await, Err(ClusterError::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_two_nodes_share_one_order_and_one_id_sequence() {
    let nats = NatsServer::start();
    let Joined {
        cluster: a,
        events: mut a_events,
        ..
    } = node(&nats).await;
    let Joined {
        cluster: b,
        events: mut b_events,
        ..
    } = node(&nats).await;
    const EACH: usize = 150;
    let send = |node: Cluster, who: &'static str| async move {
        let mut acked = Vec::new();
        for i in 0..EACH {
            let id = node
                .publish(&room_message("lobby", who, &format!("{who} {i}")))
                .await
                .unwrap();
            acked.push(id);
        }
        acked
    };
    let (from_a, from_b) = tokio::join!(
        tokio::spawn(send(a.clone(), "a")),
        tokio::spawn(send(b.clone(), "b"))
    );
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    assert!(from_a.windows(2).all(|w| w[0] < w[1]));
    let acked: BTreeSet<u64> = from_a.iter().chain(&from_b).copied().collect();
    assert_eq!(acked.len(), 2 * EACH, "no id given twice");

    let mut seen = Vec::new();
    for events in [&mut a_events, &mut b_events] {
        let mut order = Vec::new();
        while order.len() < 2 * EACH {
            let message = expect(events, "message", |e| match e {
                ClusterEvent::Message(m) => Some(m),
                _ => None,
            })
            .await;
            order.push((message.message.id, message.message.text));
        }
        assert!(
            order.windows(2).all(|w| w[0].0 < w[1].0),
            "strictly increasing"
        );
        let ids: BTreeSet<u64> = order.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, acked, "every acknowledged message, and only those");
        seen.push(order);
    }
    assert_eq!(seen[0], seen[1], "both nodes saw one order");
    // Each sender's own messages keep their order inside the shared one.
    let texts_of_a: Vec<&String> = seen[0]
        .iter()
        .filter(|(_, t)| t.starts_with("a "))
        .map(|(_, t)| t)
        .collect();
    let expected: Vec<String> = (0..EACH).map(|i| format!("a {i}")).collect();
    assert_eq!(texts_of_a, expected.iter().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_back_through_rooms_and_conversations() {
    let nats = NatsServer::start();
    let Joined {
        cluster: a,
        events: mut a_events,
        ..
    } = node(&nats).await;
    let ann = register(&a, "ann").await.unwrap();
    let bob = register(&a, "bob").await.unwrap();
    let cy = register(&a, "cy").await.unwrap();
    let mut tea = Vec::new();
    let mut lobby = Vec::new();
    let mut ann_bob = Vec::new();
    let mut ann_all = Vec::new();
    for i in 0..120 {
        let (list, message) = match i % 4 {
            0 => (&mut tea, room_message("tea", "ann", &format!("t{i}"))),
            1 => (&mut lobby, room_message("lobby", "bob", &format!("l{i}"))),
            2 => (&mut ann_bob, direct_message(&ann, &bob, &format!("d{i}"))),
            _ => (&mut ann_all, direct_message(&cy, &ann, &format!("c{i}"))),
        };
        let id = a.publish(&message).await.unwrap();
        list.push(id);
        if i % 4 == 2 {
            ann_all.push(id);
        }
    }
    ann_all.sort_unstable();
    // The index holds what this node has received: wait until it has all.
    let last = *ann_all.iter().chain(&tea).chain(&lobby).max().unwrap();
    expect(&mut a_events, "the last message", |e| match e {
        ClusterEvent::Message(m) if m.message.id == last => Some(()),
        _ => None,
    })
    .await;

    // A node started later reads the stream at start and pages the same.
    let late = node(&nats).await;
    assert_eq!(late.snapshot.last_message_id, last);
    assert_eq!(late.snapshot.accounts.len(), 3);
    for node in [&a, &late.cluster] {
        let page = |of: HistoryOf, before: Option<u64>, limit: usize| {
            let node = node.clone();
            async move {
                node.history(&of, before, limit)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|m| m.id)
                    .collect::<Vec<u64>>()
            }
        };
        // Latest first page, then back to the start, oldest first in each page.
        let room = HistoryOf::Room("tea".into());
        assert_eq!(page(room.clone(), None, 7).await, tea[tea.len() - 7..]);
        let mut before = None;
        let mut collected = Vec::new();
        loop {
            let got = page(room.clone(), before, 7).await;
            if got.is_empty() {
                break;
            }
            before = Some(got[0]);
            collected.splice(0..0, got);
        }
        assert_eq!(collected, tea);
        let conv = HistoryOf::Conversation(bob.uid.clone(), ann.uid.clone());
        assert_eq!(page(conv, Some(ann_bob[10]), 3).await, ann_bob[7..10]);
        let direct = HistoryOf::Direct(ann.uid.clone());
        assert_eq!(page(direct, None, 500).await, ann_all);
        let none = HistoryOf::Direct(bob.uid.clone());
        assert_eq!(page(none, Some(ann_bob[0]), 50).await, Vec::<u64>::new());
    }
    // What comes back is the message itself, id and all.
    let got = late
        .cluster
        .history(&HistoryOf::Conversation(ann.uid, bob.uid), None, 1)
        .await
        .unwrap();
    assert_eq!(got[0].id, *ann_bob.last().unwrap());
    assert_eq!(got[0].to.as_deref(), Some("bob"));
    assert_eq!(got[0].from, "ann");
    assert_eq!(got[0].text, "d118");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_on_one_node_reach_the_others_and_later_snapshots() {
    let nats = NatsServer::start();
    let a = node(&nats).await.cluster;
    let Joined {
        cluster: b,
        events: mut b_events,
        ..
    } = node(&nats).await;
    let zoe = register(&a, "Zoë").await.unwrap();
    let key = name_key("Zoë");
    let got = expect(&mut b_events, "the account", |e| match e {
        ClusterEvent::State(StateChange::Account { key, record }) => Some((key, record)),
        _ => None,
    })
    .await;
    assert_eq!(got, (key.clone(), Some(zoe.clone())));

    a.create_room(
        "tea",
        &RoomRecord {
            name: "Tea".into(),
            created_ms: 1,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        b.create_room(
            "tea",
            &RoomRecord {
                name: "TEA".into(),
                created_ms: 2
            }
        )
        .await,
        Err(ClusterError::Conflict),
        "created first elsewhere"
    );
    let member = MemberRecord {
        name: zoe.name.clone(),
        uid: zoe.uid.clone(),
        since_ms: 1,
    };
    assert!(a.join("tea", &key, &member).await.unwrap());
    assert!(
        !b.join("tea", &key, &member).await.unwrap(),
        "already a member"
    );
    let joined = expect(&mut b_events, "the membership", |e| match e {
        ClusterEvent::State(StateChange::Member { room, user, member }) => {
            Some((room, user, member.is_some()))
        }
        _ => None,
    })
    .await;
    assert_eq!(joined, ("tea".into(), key.clone(), true));
    let ip = "::1".parse().unwrap();
    a.remember_ip(ip, "Zoë").await.unwrap();
    let ban = BanRecord {
        name: "Zoë".into(),
        reason: "spam".into(),
        at_ms: 3,
    };
    b.ban(&key, &ban).await.unwrap();
    let banned = expect(&mut b_events, "the ban", |e| match e {
        ClusterEvent::State(StateChange::Ban { ban, .. }) => Some(ban),
        _ => None,
    })
    .await;
    assert_eq!(banned, Some(ban.clone()));

    let later = node(&nats).await.snapshot;
    assert_eq!(later.accounts[&key], zoe);
    assert_eq!(later.rooms["tea"].name, "Tea");
    assert!(later.members.contains_key(&("tea".into(), key.clone())));
    assert_eq!(later.ips[&ip], "Zoë");
    assert_eq!(later.bans[&key], ban);

    b.unban(&key).await.unwrap();
    assert_eq!(b.unban(&key).await, Err(ClusterError::NotFound));
    assert!(b.part("tea", &key).await.unwrap());
    assert!(!a.part("tea", &key).await.unwrap());

    // A password change is compare-and-set: of two at once, one.
    let (_, revision) = a.account(&key).await.unwrap().unwrap();
    let mut changed = zoe.clone();
    changed.password_hash = "new".into();
    let (x, y) = tokio::join!(
        a.update_account(&key, &changed, revision),
        b.update_account(&key, &changed, revision)
    );
    assert_eq!([x.is_ok(), y.is_ok()].iter().filter(|w| **w).count(), 1);

    // Deleting takes the account's things with it, and frees the name.
    a.issue_token(
        "t1",
        &TokenEntry {
            user: key.clone(),
            uid: zoe.uid.clone(),
            expires_ms: u64::MAX,
        },
    )
    .await
    .unwrap();
    a.join("tea", &key, &member).await.unwrap();
    let belongings = Belongings {
        tokens: vec!["t1".into()],
        ips: vec![ip],
        rooms: vec!["tea".into()],
    };
    a.delete_account(&key, &zoe.uid, &confusable_keys("Zoë"), &belongings)
        .await
        .unwrap();
    let after = node(&nats).await.snapshot;
    assert!(after.accounts.is_empty() && after.tokens.is_empty() && after.ips.is_empty());
    assert!(after.members.is_empty());
    assert_eq!(after.rooms.len(), 1, "rooms stay");
    let again = register(&b, "zoë").await.expect("the name is free again");
    assert_ne!(again.uid, zoe.uid, "a new account");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_ids_empties_every_node_but_keeps_rooms_and_history() {
    let nats = NatsServer::start();
    let a = node(&nats).await.cluster;
    let Joined {
        cluster: b,
        events: mut b_events,
        ..
    } = node(&nats).await;
    let ann = register(&a, "ann").await.unwrap();
    a.create_room(
        "tea",
        &RoomRecord {
            name: "tea".into(),
            created_ms: 1,
        },
    )
    .await
    .unwrap();
    let member = MemberRecord {
        name: "ann".into(),
        uid: ann.uid.clone(),
        since_ms: 1,
    };
    a.join("tea", "ann", &member).await.unwrap();
    let id = a
        .publish(&room_message("tea", "ann", "before"))
        .await
        .unwrap();
    a.clear_identities().await.unwrap();
    expect(&mut b_events, "cleared", |e| {
        matches!(e, ClusterEvent::Cleared).then_some(())
    })
    .await;
    // Written after the clear: it comes after the Cleared event.
    register(&b, "ann").await.expect("the name is free again");
    let readded = expect(&mut b_events, "the new account", |e| match e {
        ClusterEvent::State(StateChange::Account { record, .. }) => record,
        _ => None,
    })
    .await;
    assert_eq!(readded.name, "ann");
    let after = node(&nats).await;
    assert_eq!(after.snapshot.accounts.len(), 1);
    assert!(after.snapshot.members.is_empty());
    assert_eq!(after.snapshot.rooms.len(), 1);
    let history = after
        .cluster
        .history(&HistoryOf::Room("tea".into()), None, 10)
        .await
        .unwrap();
    assert_eq!(history.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_admin_commands_are_cluster_wide() {
    let nats = NatsServer::start();
    let Joined {
        cluster: a,
        events: mut a_events,
        ..
    } = node(&nats).await;
    let Joined {
        cluster: b,
        events: mut b_events,
        ..
    } = node(&nats).await;
    assert!(matches!(
        b.user_connected("bob", "Bob"),
        Some(PresenceChange::Online { .. })
    ));
    assert_eq!(b.user_connected("bob", "Bob"), None, "second connection");
    let online = expect(&mut a_events, "bob online", |e| match e {
        ClusterEvent::Presence(PresenceChange::Online { name, .. }) => Some(name),
        _ => None,
    })
    .await;
    assert_eq!(online, "Bob");
    assert_eq!(a.user_connected("bob", "Bob"), None, "already online on b");
    assert_eq!(a.online(), vec![("bob".to_string(), "Bob".to_string())]);
    assert_eq!(a.nodes().len(), 2);
    // b hears that bob is on a too.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !b.nodes().iter().any(|n| !n.this_node && n.users == 1) {
        assert!(Instant::now() < deadline, "b never heard a's beat");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.user_disconnected("bob").is_none());
    assert!(b.user_disconnected("bob").is_none(), "still on a");
    // Once a has heard that, bob's last connection anywhere is on a.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !a.nodes().iter().any(|n| !n.this_node && n.users == 0) {
        assert!(Instant::now() < deadline, "a never heard b's beat");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        a.user_disconnected("bob"),
        Some(PresenceChange::Offline { .. })
    ));

    a.broadcast(AdminCommand::Kick {
        key: "bob".into(),
        message: "bye".into(),
        except: None,
    })
    .await
    .unwrap();
    let envelope = expect(&mut b_events, "the kick", |e| match e {
        ClusterEvent::Admin(envelope) => Some(envelope),
        _ => None,
    })
    .await;
    assert_eq!(envelope.origin, a.node_id());

    // A node that leaves says so: its users go at once.
    let Joined { cluster: c, .. } = node(&nats).await;
    c.user_connected("cy", "Cy");
    expect(&mut a_events, "cy online", |e| match e {
        ClusterEvent::Presence(PresenceChange::Online { name, .. }) if name == "Cy" => Some(()),
        _ => None,
    })
    .await;
    let started = Instant::now();
    c.close().await;
    expect(&mut a_events, "cy offline", |e| match e {
        ClusterEvent::Presence(PresenceChange::Offline { name, .. }) if name == "Cy" => Some(()),
        _ => None,
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreachable_at_start_is_one_clear_error() {
    let port = nats_support::free_port();
    let started = Instant::now();
    let url = format!("nats://127.0.0.1:{port}");
    let err = match Cluster::connect(ClusterConfig::new(&url, "test")).await {
        Err(err) => err,
        Ok(_) => panic!("connected to nothing"),
    };
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");
    let line = err.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(line.contains(&url), "{line}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let bad = ClusterConfig::new(&url, "a.b");
    assert!(matches!(
        Cluster::connect(bad).await,
        Err(ConnectError::Name(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_nats_fails_operations_as_unavailable_then_service_resumes() {
    let mut nats = NatsServer::start();
    let Joined {
        cluster: a,
        events: mut a_events,
        ..
    } = node(&nats).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(
            a.publish(&room_message("lobby", "a", &format!("m{i}")))
                .await
                .unwrap(),
        );
    }
    register(&a, "ann").await.unwrap();
    let mut received = Vec::new();
    while received.len() < acked.len() {
        received.push(
            expect(&mut a_events, "message", |e| match e {
                ClusterEvent::Message(m) => Some(m.message.id),
                _ => None,
            })
            .await,
        );
    }

    nats.kill();
    expect(&mut a_events, "unavailable", |e| match e {
        ClusterEvent::Available(false) => Some(()),
        _ => None,
    })
    .await;
    assert!(!a.is_available());
    let started = Instant::now();
    assert!(matches!(
        a.publish(&room_message("lobby", "a", "lost")).await,
        Err(ClusterError::Unavailable(_))
    ));
    assert!(matches!(
        register(&a, "bob").await,
        Err(ClusterError::Unavailable(_))
    ));
    assert!(matches!(
        a.spend_token("x", 0).await,
        Err(ClusterError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "unavailable is answered at once"
    );

    nats.restart();
    expect(&mut a_events, "available again", |e| match e {
        ClusterEvent::Available(true) => Some(()),
        _ => None,
    })
    .await;
    for i in 20..30 {
        acked.push(
            a.publish(&room_message("lobby", "a", &format!("m{i}")))
                .await
                .unwrap(),
        );
    }
    assert!(acked.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        register(&a, "ann").await.unwrap_err(),
        ClusterError::Conflict,
        "the account survived the restart"
    );
    register(&a, "bob").await.unwrap();
    // Every acknowledged message arrived, once, in order, across the outage.
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while received.len() < acked.len() {
        match tokio::time::timeout_at(deadline, a_events.recv()).await {
            Ok(Some(ClusterEvent::Message(m))) => received.push(m.message.id),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    assert_eq!(received, acked);
    let history: Vec<u64> = a
        .history(&HistoryOf::Room("lobby".into()), None, 500)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(history, acked);
    // A node that starts now reads it all back from the store.
    let late = node(&nats).await;
    assert_eq!(late.snapshot.last_message_id, *acked.last().unwrap());
}

/// Run by `a_node_killed_with_sigkill_loses_nothing_and_its_users_leave` in a child
/// process of this test binary: joins the cluster, puts a user online, publishes and
/// prints each acknowledged id, then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process, started by another test"]
async fn node_to_be_killed() {
    let Ok(url) = std::env::var("ECHOCHAT_TEST_NATS_URL") else {
        return;
    };
    let joined = Cluster::connect(ClusterConfig::new(&url, "test"))
        .await
        .expect("connects");
    let node = joined.cluster;
    node.user_connected("doomed", "Doomed");
    for i in 0..50 {
        let id = node
            .publish(&room_message("lobby", "doomed", &format!("last words {i}")))
            .await
            .expect("published");
        println!("acked {id}");
    }
    println!("ready");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// Kills the child node on drop, so that a failing test leaves no process.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_loses_nothing_and_its_users_leave() {
    let nats = NatsServer::start();
    let Joined {
        cluster: a,
        events: mut a_events,
        ..
    } = node(&nats).await;
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["node_to_be_killed", "--exact", "--ignored", "--nocapture"])
            .env("ECHOCHAT_TEST_NATS_URL", nats.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let acked = tokio::task::spawn_blocking(move || {
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(id) = line.strip_prefix("acked ") {
                acked.push(id.parse::<u64>().unwrap());
            }
            if line == "ready" {
                break;
            }
        }
        acked
    })
    .await
    .unwrap();
    assert_eq!(acked.len(), 50, "the child published");
    expect(&mut a_events, "the doomed user online", |e| match e {
        ClusterEvent::Presence(PresenceChange::Online { name, .. }) if name == "Doomed" => Some(()),
        _ => None,
    })
    .await;
    // SIGKILL: no goodbye, no flush.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let killed = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(35);
    loop {
        let event = tokio::time::timeout_at(deadline, a_events.recv())
            .await
            .expect("the dead node's user left within 30 s")
            .unwrap();
        if matches!(&event, ClusterEvent::Presence(PresenceChange::Offline { name, .. }) if name == "Doomed")
        {
            break;
        }
    }
    let after = killed.elapsed();
    println!("a killed node's user left after {after:?}");
    assert!(after <= Duration::from_secs(30), "{after:?}");
    assert_eq!(a.nodes().len(), 1, "only this node is alive");
    let history: Vec<u64> = a
        .history(&HistoryOf::Room("lobby".into()), None, 500)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(history, acked, "every acknowledged message is kept");
}
