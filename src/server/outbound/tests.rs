//! The writer against a real loopback socket: what order frames leave in, what a
//! subscription sees, and when a connection that stops reading is cut.

use std::os::unix::io::AsRawFd;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::writer::write_frames;
use super::*;
use crate::codec::frame_from_payload;
use crate::server::transport::WireWriter;

/// A connected pair: the server's side (writer half, its descriptor, its read half
/// kept open) and the client's side.
async fn pair() -> (
    WireWriter,
    std::os::unix::io::RawFd,
    tokio::net::tcp::OwnedReadHalf,
    TcpStream,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
    let server = accepted.unwrap().0;
    let fd = server.as_raw_fd();
    let (read, write) = server.into_split();
    (Box::new(write), fd, read, client.unwrap())
}

fn frame(text: &str) -> Bytes {
    frame_from_payload(text.as_bytes())
}

/// Every payload the client receives until the server closes (or `limit` passes).
async fn payloads(client: &mut TcpStream, limit: Duration) -> Vec<String> {
    let mut received = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        loop {
            let mut header = [0u8; 4];
            if client.read_exact(&mut header).await.is_err() {
                return;
            }
            let mut payload = vec![0u8; u32::from_be_bytes(header) as usize];
            if client.read_exact(&mut payload).await.is_err() {
                return;
            }
            received.push(String::from_utf8(payload).unwrap());
        }
    })
    .await;
    received
}

#[tokio::test]
async fn ring_frames_go_before_direct_replies_and_close_delivers_everything() {
    let (writer, fd, _read, mut client) = pair().await;
    let ring = Broadcaster::new(16);
    let (outbox, queue) = direct_queue();
    outbox.subscribe(ring.subscribe(None));
    // A reply queued after a frame was published must not overtake it.
    ring.publish(frame("echo"), None);
    outbox.send(frame("who"));
    outbox.close();
    let end = write_frames(1, writer, Some(fd), queue, 0).await;
    assert!(matches!(end, WriterEnd::Closed), "{end:?}");
    assert_eq!(
        payloads(&mut client, Duration::from_secs(5)).await,
        ["echo", "who"]
    );
}

#[tokio::test]
async fn a_subscription_takes_only_what_is_published_after_it() {
    let (writer, fd, _read, mut client) = pair().await;
    let ring = Broadcaster::new(16);
    let (outbox, queue) = direct_queue();
    ring.publish(frame("before"), None);
    outbox.send(frame("auth_ok"));
    outbox.send(frame("history"));
    outbox.subscribe(ring.subscribe(None));
    ring.publish(frame("after"), None);
    outbox.send(frame("reply"));
    outbox.close();
    write_frames(1, writer, Some(fd), queue, 0).await;
    assert_eq!(
        payloads(&mut client, Duration::from_secs(5)).await,
        ["auth_ok", "history", "after", "reply"]
    );
}

#[tokio::test]
async fn skipped_sessions_and_users_do_not_get_a_frame() {
    let (writer, fd, _read, mut client) = pair().await;
    let ring = Broadcaster::new(16);
    let (outbox, queue) = direct_queue();
    outbox.subscribe(ring.subscribe(Some("ann".into())));
    ring.publish(frame("not for session 7"), Some(Skip::Session(7)));
    ring.publish(frame("not for ann"), Some(Skip::User("ann".into())));
    ring.publish(frame("not for bob"), Some(Skip::User("bob".into())));
    ring.publish(frame("for everyone"), None);
    outbox.close();
    write_frames(7, writer, Some(fd), queue, 0).await;
    assert_eq!(
        payloads(&mut client, Duration::from_secs(5)).await,
        ["not for bob", "for everyone"]
    );
}

#[tokio::test]
async fn several_rings_and_unsubscribing_one() {
    let (writer, fd, _read, mut client) = pair().await;
    let lobby = Broadcaster::new(16);
    let room = Broadcaster::new(16);
    let (outbox, queue) = direct_queue();
    let writing = tokio::spawn(write_frames(1, writer, Some(fd), queue, 0));
    outbox.subscribe(lobby.subscribe(None));
    outbox.subscribe(room.subscribe(None));
    outbox.send(frame("subscribed"));
    assert_eq!(payloads_n(&mut client, 1).await, ["subscribed"]);
    room.publish(frame("room 1"), None);
    lobby.publish(frame("lobby 1"), None);
    let mut got = payloads_n(&mut client, 2).await;
    got.sort();
    assert_eq!(got, ["lobby 1", "room 1"]);
    outbox.unsubscribe(room.id());
    outbox.send(frame("parted"));
    assert_eq!(payloads_n(&mut client, 1).await, ["parted"]);
    room.publish(frame("room 2"), None);
    lobby.publish(frame("lobby 2"), None);
    outbox.close();
    assert_eq!(
        payloads(&mut client, Duration::from_secs(5)).await,
        ["lobby 2"]
    );
    assert!(matches!(writing.await.unwrap(), WriterEnd::Closed));
}

async fn payloads_n(client: &mut TcpStream, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let mut header = [0u8; 4];
        client.read_exact(&mut header).await.unwrap();
        let mut payload = vec![0u8; u32::from_be_bytes(header) as usize];
        client.read_exact(&mut payload).await.unwrap();
        got.push(String::from_utf8(payload).unwrap());
    }
    got
}

#[tokio::test]
async fn a_writer_a_whole_ring_behind_is_dropped() {
    let (writer, fd, _read, _client) = pair().await;
    let ring = Broadcaster::new(4);
    let (outbox, queue) = direct_queue();
    outbox.subscribe(ring.subscribe(None));
    for i in 0..10 {
        ring.publish(frame(&format!("frame {i}")), None);
    }
    let end = write_frames(1, writer, Some(fd), queue, 0).await;
    assert!(matches!(end, WriterEnd::Lagged), "{end:?}");
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_dropped_past_the_send_queue() {
    let (writer, fd, _read, client) = pair().await;
    let ring = Broadcaster::new(RING_CAPACITY);
    let (outbox, queue) = direct_queue();
    outbox.subscribe(ring.subscribe(None));
    let writing = tokio::spawn(write_frames(1, writer, Some(fd), queue, 256 * 1024));
    // The client never reads: kernel buffers fill, then the writer's own.
    let big = "x".repeat(60_000);
    for _ in 0..200 {
        ring.publish(frame(&big), None);
    }
    let end = tokio::time::timeout(Duration::from_secs(20), writing)
        .await
        .expect("the writer was never dropped")
        .unwrap();
    assert!(
        matches!(end, WriterEnd::SendQueueFull(n) if n > 256 * 1024),
        "{end:?}"
    );
    drop(client);
}

#[tokio::test(start_paused = true)]
async fn a_close_that_cannot_be_delivered_is_cut_at_the_deadline() {
    let (writer, fd, _read, client) = pair().await;
    let (outbox, queue) = direct_queue();
    let big = frame(&"y".repeat(60_000));
    for _ in 0..200 {
        outbox.send(big.clone());
    }
    outbox.close();
    let end = write_frames(1, writer, Some(fd), queue, 0).await;
    assert!(matches!(end, WriterEnd::CloseTimedOut), "{end:?}");
    drop(client);
}

#[tokio::test]
async fn aborting_ends_the_writer_at_once() {
    let (writer, fd, _read, _client) = pair().await;
    let (outbox, queue) = direct_queue();
    let writing = tokio::spawn(write_frames(1, writer, Some(fd), queue, 0));
    outbox.abort();
    let end = tokio::time::timeout(Duration::from_secs(5), writing)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(end, WriterEnd::Aborted), "{end:?}");
}

#[test]
fn a_queue_slot_is_no_larger_than_a_frame_and_its_tag() {
    // Every connection's direct queue allocates its first block of slots at once, so
    // the slot's size is memory per idle connection: a frame (`Bytes`) and the tag.
    assert!(
        std::mem::size_of::<Outbound>() <= std::mem::size_of::<Bytes>() + 8,
        "Outbound is {} bytes",
        std::mem::size_of::<Outbound>()
    );
}
