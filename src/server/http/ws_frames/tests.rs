use super::*;
use futures_util::{stream, StreamExt};
use tokio::io::AsyncWriteExt;

/// A client frame header (masked, as browsers send) for a payload of `len` bytes.
fn client_header(opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(&[1, 2, 3, 4]); // mask key
    out
}

fn guard(max: usize) -> FrameSizeGuard<()> {
    FrameSizeGuard::new((), max, Rc::new(Cell::new(None)))
}

#[test]
fn headers_are_read_whatever_their_size() {
    assert_eq!(parse_frame_header(&client_header(1, 5)), Some((1, 5)));
    assert_eq!(parse_frame_header(&client_header(2, 300)), Some((2, 300)));
    assert_eq!(
        parse_frame_header(&client_header(1, 70_000)),
        Some((1, 70_000))
    );
    let long = client_header(1, 70_000);
    for cut in 0..long.len() {
        assert_eq!(parse_frame_header(&long[..cut]), None, "cut at {cut}");
    }
}

#[test]
fn the_guard_passes_frames_up_to_the_limit() {
    let mut g = guard(100);
    let mut wire = client_header(1, 100);
    wire.extend(vec![b'x'; 100]);
    wire.extend(client_header(9, 4)); // a ping
    wire.extend([0; 4]);
    wire.extend(client_header(1, 0));
    // Byte by byte and all at once alike.
    for byte in &wire {
        assert!(g.inspect(std::slice::from_ref(byte)).is_ok());
    }
    assert!(guard(100).inspect(&wire).is_ok());
}

#[test]
fn the_guard_refuses_a_long_frame_from_its_header() {
    let mut g = guard(100);
    let mut wire = client_header(1, 10);
    wire.extend(vec![b'x'; 10]);
    assert!(g.inspect(&wire).is_ok());
    // Only the header has come: refused already.
    assert_eq!(g.inspect(&client_header(1, 101)), Err(101));
    assert_eq!(guard(100).inspect(&client_header(2, 1 << 40)), Err(1 << 40));
    assert_eq!(guard(100).inspect(&client_header(0, 101)), Err(101));
}

#[tokio::test]
async fn the_guard_ends_the_byte_stream_when_tripped() {
    let refused = Rc::new(Cell::new(None));
    let mut wire = client_header(1, 3);
    wire.extend(b"abc");
    let chunks = vec![
        Ok::<_, actix_web::error::PayloadError>(Bytes::from(wire)),
        Ok(Bytes::from(client_header(1, 1000))),
        Ok(Bytes::from(vec![0; 1000])),
    ];
    let mut guarded = FrameSizeGuard::new(stream::iter(chunks), 100, refused.clone());
    assert!(guarded.next().await.unwrap().is_ok());
    assert!(guarded.next().await.unwrap().is_err());
    assert_eq!(refused.get(), Some(1000));
    assert!(guarded.next().await.is_none());
}

fn payloads(
    messages: Vec<Result<Message, ProtocolError>>,
    max: usize,
) -> WsPayloads<stream::Iter<std::vec::IntoIter<Result<Message, ProtocolError>>>, Vec<Message>> {
    WsPayloads::new(
        stream::iter(messages),
        Vec::new(),
        max,
        Rc::new(Cell::new(None)),
    )
}

#[tokio::test]
async fn text_is_a_payload_binary_is_not() {
    let mut p = payloads(
        vec![
            Ok(Message::Text(r#"{"type":"ping"}"#.into())),
            Ok(Message::Binary(Bytes::from_static(b"{}"))),
            Ok(Message::Text(r#"{"type":"who"}"#.into())),
        ],
        100,
    );
    assert!(matches!(p.next().await, Some(Inbound::Payload(b)) if b == r#"{"type":"ping"}"#));
    assert!(matches!(p.next().await, Some(Inbound::Binary)));
    assert!(matches!(p.next().await, Some(Inbound::Payload(b)) if b == r#"{"type":"who"}"#));
    assert!(p.next().await.is_none());
}

#[tokio::test]
async fn text_that_is_not_utf8_is_refused_and_reading_goes_on() {
    let bad_utf8 = ProtocolError::Io(io::Error::new(io::ErrorKind::InvalidData, "utf-8"));
    let mut p = payloads(
        vec![
            Err(bad_utf8),
            Ok(Message::Text(r#"{"type":"ping"}"#.into())),
        ],
        100,
    );
    assert!(matches!(p.next().await, Some(Inbound::Binary)));
    assert!(matches!(p.next().await, Some(Inbound::Payload(_))));
}

#[tokio::test]
async fn an_overflow_is_too_large_and_ends_the_stream() {
    let mut p = payloads(
        vec![Err(ProtocolError::Overflow), Ok(Message::Text("{}".into()))],
        100,
    );
    assert!(matches!(
        p.next().await,
        Some(Inbound::TooLarge { max: 100, .. })
    ));
    assert!(p.next().await.is_none());
}

#[tokio::test]
async fn a_tripped_guard_reads_as_too_large() {
    let refused = Rc::new(Cell::new(Some(5000)));
    let payload_error = ProtocolError::Io(io::Error::other("payload overflow"));
    let mut p = WsPayloads::new(
        stream::iter(vec![Err(payload_error)]),
        Vec::<Message>::new(),
        100,
        refused,
    );
    assert!(matches!(
        p.next().await,
        Some(Inbound::TooLarge {
            len: 5000,
            max: 100
        })
    ));
}

#[tokio::test]
async fn fragments_are_joined_within_the_limit() {
    let mut p = payloads(
        vec![
            Ok(Message::Continuation(Item::FirstText(Bytes::from_static(
                br#"{"type":"#,
            )))),
            Ok(Message::Ping(Bytes::from_static(b"hi"))),
            Ok(Message::Continuation(Item::Continue(Bytes::from_static(
                br#""pi"#,
            )))),
            Ok(Message::Continuation(Item::Last(Bytes::from_static(
                br#"ng"}"#,
            )))),
            Ok(Message::Continuation(Item::FirstText(Bytes::from(vec![
                b'x';
                60
            ])))),
            Ok(Message::Continuation(Item::Last(Bytes::from(vec![
                b'x';
                60
            ])))),
        ],
        100,
    );
    assert!(matches!(p.next().await, Some(Inbound::Payload(b)) if b == r#"{"type":"ping"}"#));
    assert!(matches!(
        p.next().await,
        Some(Inbound::TooLarge { len: 120, max: 100 })
    ));
    // The ping in between was answered.
    assert!(matches!(p.pongs.as_slice(), [Message::Pong(data)] if data == "hi"));
}

#[tokio::test]
async fn a_close_ends_the_requests() {
    let mut p = payloads(
        vec![Ok(Message::Close(None)), Ok(Message::Text("{}".into()))],
        100,
    );
    assert!(p.next().await.is_none());
}

fn frame(payload: &str) -> Vec<u8> {
    crate::codec::frame_from_payload(payload.as_bytes()).to_vec()
}

fn texts(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| match m {
            Message::Text(text) => text.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn frames_become_text_messages_however_they_are_cut() {
    let mut wire = frame(r#"{"type":"pong"}"#);
    wire.extend(frame(r#"{"type":"who","users":["ann"]}"#));
    wire.extend(frame(""));
    wire.extend(frame("{}"));
    for chunk in [1, 2, 3, 5, 7, wire.len()] {
        let mut writer = WsFrameWriter::new(Vec::<Message>::new());
        for piece in wire.chunks(chunk) {
            writer.write_all(piece).await.unwrap();
        }
        writer.flush().await.unwrap();
        assert_eq!(
            texts(&writer.sink),
            [
                r#"{"type":"pong"}"#,
                r#"{"type":"who","users":["ann"]}"#,
                "",
                "{}"
            ],
            "chunks of {chunk}"
        );
    }
}

#[tokio::test]
async fn shutdown_sends_a_normal_close_once() {
    let mut writer = WsFrameWriter::new(Vec::<Message>::new());
    writer.write_all(&frame("{}")).await.unwrap();
    writer.shutdown().await.unwrap();
    writer.shutdown().await.unwrap();
    assert!(writer.write_all(&frame("{}")).await.is_err());
    assert_eq!(writer.sink.len(), 2);
    assert!(matches!(
        &writer.sink[1],
        Message::Close(Some(reason)) if reason.code == CloseCode::Normal
    ));
}

#[tokio::test]
async fn a_full_queue_holds_the_writer_back() {
    // A queue of one message that nobody takes: the second frame waits.
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Message>(1);
    let mut writer = WsFrameWriter::new(tokio_util::sync::PollSender::new(sender));
    writer.write_all(&frame("{}")).await.unwrap();
    let second = frame(r#"{"a":1}"#);
    let blocked =
        tokio::time::timeout(std::time::Duration::from_millis(50), writer.write(&second)).await;
    assert!(blocked.is_err(), "the writer went on with a full queue");
    assert!(receiver.recv().await.is_some());
    assert_eq!(writer.write(&second).await.unwrap(), second.len());
    assert!(matches!(receiver.recv().await, Some(Message::Text(t)) if t == r#"{"a":1}"#));
}
