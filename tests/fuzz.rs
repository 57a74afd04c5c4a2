//! Property-based fuzzing of everything that parses untrusted input: the frame decoder,
//! the request parser and the admin console's parser.
//!
//! CI runs a fixed number of cases from a fixed seed, so it is short and deterministic.
//! For a longer hunt: `PROPTEST_CASES=200000 cargo test --release --test fuzz`.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tokio_util::codec::Decoder;

use echochat::actors::admin_console::{parse_command, Command, ConsoleError};
use echochat::codec::{FrameCodec, FrameError};
use echochat::protocol::ClientMessage;

/// A fixed seed: the same cases on every CI run.
const SEED: [u8; 32] = *b"echochat fuzzing, fixed seed 001";

fn runner(default_cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &SEED),
    )
}

/// Feeds `stream` to a decoder in chunks of the given sizes; returns the payloads and
/// whether decoding stopped on an oversize frame.
fn decode_in_chunks(max: usize, stream: &[u8], chunks: &[usize]) -> (Vec<Vec<u8>>, bool) {
    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => out.push(frame.to_vec()),
                Ok(None) => break,
                Err(FrameError::TooLarge { len, max: m }) => {
                    assert!(len > m);
                    return (out, true);
                }
                Err(FrameError::Io(e)) => panic!("decoder invented an i/o error: {e}"),
            }
        }
        assert!(
            buf.capacity() <= max + 4 + 8192,
            "buffer grew past one frame: {}",
            buf.capacity()
        );
    }
    (out, false)
}

#[test]
fn decoder_matches_a_model_whatever_the_read_sizes() {
    let frames = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8);
    let chunks = prop::collection::vec(1usize..64, 1..8);
    runner(2000)
        .run(&(frames, chunks), |(frames, chunks)| {
            let mut stream = Vec::new();
            for f in &frames {
                stream.put_u32(f.len() as u32);
                stream.extend_from_slice(f);
            }
            let (decoded, oversize) = decode_in_chunks(200, &stream, &chunks);
            let fitting: Vec<Vec<u8>> = frames
                .iter()
                .take_while(|f| f.len() <= 200)
                .cloned()
                .collect();
            prop_assert_eq!(&decoded, &fitting);
            prop_assert_eq!(oversize, fitting.len() < frames.len());
            Ok(())
        })
        .unwrap();
}

#[test]
fn decoder_survives_random_bytes() {
    let bytes = prop::collection::vec(any::<u8>(), 0..4096);
    let chunks = prop::collection::vec(1usize..512, 1..8);
    runner(2000)
        .run(&(bytes, chunks), |(bytes, chunks)| {
            let (decoded, _) = decode_in_chunks(1024, &bytes, &chunks);
            prop_assert!(decoded.iter().all(|f| f.len() <= 1024));
            Ok(())
        })
        .unwrap();
}

#[test]
fn request_parser_never_panics_on_bytes() {
    runner(5000)
        .run(&prop::collection::vec(any::<u8>(), 0..256), |bytes| {
            let _ = ClientMessage::parse(&bytes);
            Ok(())
        })
        .unwrap();
}

/// JSON values shaped like requests: right and wrong types, known and unknown fields.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("say"),
            Just("login"),
            Just("register"),
            Just("resume"),
            Just("who"),
            Just("ping"),
            Just("quit"),
            Just("logout"),
            Just("SAY"),
            Just("")
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type".to_string()),
                    Just("text".to_string()),
                    Just("name".to_string()),
                    Just("password".to_string()),
                    Just("token".to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn request_parser_accepts_exactly_the_well_typed_objects() {
    runner(5000)
        .run(&json_value(), |value| {
            let text = value.to_string();
            if let Ok(message) = ClientMessage::parse(text.as_bytes()) {
                // Whatever it accepted was an object whose fields had the right types:
                // serialising what was understood and parsing again gives the same.
                prop_assert!(value.is_object());
                let again = serde_json::to_vec(&message).unwrap();
                prop_assert_eq!(ClientMessage::parse(&again), Ok(message));
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn valid_requests_round_trip() {
    let text = ".{0,40}";
    let request = prop_oneof![
        text.prop_map(|token| ClientMessage::Resume { token }),
        (text, text).prop_map(|(name, password)| ClientMessage::Login { name, password }),
        (text, text).prop_map(|(name, password)| ClientMessage::Register { name, password }),
        text.prop_map(|text| ClientMessage::Say {
            text,
            room: None,
            to: None
        }),
        Just(ClientMessage::Who { room: None }),
        Just(ClientMessage::Ping),
        Just(ClientMessage::Quit),
        Just(ClientMessage::Logout),
    ];
    runner(3000)
        .run(&request, |request| {
            let bytes = serde_json::to_vec(&request).unwrap();
            prop_assert_eq!(ClientMessage::parse(&bytes), Ok(request));
            Ok(())
        })
        .unwrap();
}

#[test]
fn console_parser_never_panics_and_names_the_first_word() {
    runner(5000)
        .run(&".{0,80}", |line| {
            match parse_command(&line) {
                Ok(None) => prop_assert!(line.trim().is_empty()),
                Ok(Some(_)) => {}
                Err(ConsoleError::Unknown(word)) => {
                    let first = line.split_whitespace().next().unwrap_or("");
                    prop_assert_eq!(word, first);
                }
                Err(error @ ConsoleError::Usage { .. }) => {
                    prop_assert!(error.to_string().starts_with("usage: "));
                }
            }
            // Whatever was typed, the answer is one line without control characters.
            if let Err(error) = parse_command(&line) {
                let shown = error.to_string();
                prop_assert!(!shown.chars().any(char::is_control), "{:?}", shown);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn console_say_and_kick_keep_their_argument() {
    runner(2000)
        .run(
            &("[a-zA-Z0-9_.-]{1,32}", "[^\\s][^\\n\\r]{0,60}"),
            |(name, text)| {
                prop_assert_eq!(
                    parse_command(&format!("kick {name}")),
                    Ok(Some(Command::Kick(name.clone())))
                );
                let text = text.trim().to_string();
                if !text.is_empty() {
                    prop_assert_eq!(
                        parse_command(&format!("say {text}\n")),
                        Ok(Some(Command::Announce(text.clone())))
                    );
                }
                Ok(())
            },
        )
        .unwrap();
}
