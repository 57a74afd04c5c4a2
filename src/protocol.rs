//! The messages of the echochat conversation, one typed enum per direction.
//!
//! A payload is a UTF-8 JSON object whose string field `type` names the message;
//! unknown fields are ignored. The server parses [`ClientMessage`] with
//! [`ClientMessage::parse`] and builds [`ServerMessage`] frames; the client does the
//! reverse. Error codes are enums so that a misspelt code cannot reach the wire.

use serde::{Deserialize, Serialize};

/// Longest chat text, in characters (not bytes).
pub const MAX_TEXT_CHARS: usize = 4096;

/// Most messages one `history` page may ask for, and how many without `limit`.
pub const MAX_PAGE: u64 = 500;
pub const DEFAULT_PAGE: u64 = 50;

/// The room every account is a member of, and where `say` goes without `room` or `to`.
pub const LOBBY: &str = "lobby";

/// What a client may send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Log in with a token from an earlier `auth_ok` (the token is then spent).
    Resume { token: String },
    /// Log in with name and password.
    Login { name: String, password: String },
    /// Create an account and log in.
    Register { name: String, password: String },
    /// Send a chat message to a room (`lobby` without either field) or to a user.
    Say {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// Ask who is online (in a room, with `room`).
    Who {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
    },
    /// Become a member of a room, creating it if needed.
    Join { room: String },
    /// Stop being a member of a room.
    Part { room: String },
    /// List every room.
    Rooms,
    /// A page of older messages of a room (`room`) or of a conversation (`with`).
    History {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        with: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    /// Change this account's password; the other tokens are revoked.
    ChangePassword { old: String, new: String },
    /// Delete this account.
    DeleteAccount { password: String },
    /// Revoke this session's token and close.
    Logout,
    /// Close, keeping the token valid.
    Quit,
    /// Liveness check, answered with `pong` at any time.
    Ping,
}

/// Why a payload is not a valid [`ClientMessage`]; answered with `error` `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("empty payload")]
    Empty,
    #[error("payload is not valid UTF-8")]
    NotUtf8,
    #[error("payload is not a JSON object")]
    NotAnObject,
    #[error("malformed request: {0}")]
    Malformed(String),
}

impl ClientMessage {
    /// Parses one frame payload.
    pub fn parse(payload: &[u8]) -> Result<ClientMessage, BadRequest> {
        if payload.is_empty() {
            return Err(BadRequest::Empty);
        }
        let text = std::str::from_utf8(payload).map_err(|_| BadRequest::NotUtf8)?;
        // serde reads a JSON array as an internally tagged enum too (`["ping"]`); the
        // protocol only has objects.
        if !text.trim_start().starts_with('{') {
            return Err(BadRequest::NotAnObject);
        }
        serde_json::from_str(text).map_err(|e| BadRequest::Malformed(e.to_string()))
    }
}

/// One chat message as delivered live and replayed in history: to a room (`room`) or
/// to a user (`to`). A message with neither belongs to `lobby` (history written before
/// rooms existed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Server-wide sequence number: rooms and direct messages share it.
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The recipient's name as registered, for a direct message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Sender's name (`server` for the admin).
    pub from: String,
    pub text: String,
    /// Unix time in milliseconds when the server accepted it.
    pub ts: u64,
}

/// One element of a `history` frame's `messages`: a MESSAGE object with its `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HistoryEntry {
    Message(ChatMessage),
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First frame on a connection once it is greeted.
    Welcome {
        server: String,
        version: String,
        /// The name last authenticated from this client's IP address.
        known_name: Option<String>,
    },
    AuthOk {
        name: String,
        token: String,
        new_user: bool,
    },
    AuthError {
        code: AuthErrorCode,
        message: String,
    },
    /// Sent right after `auth_ok` (one per room, then the direct messages), and in
    /// answer to a `history` request; oldest first.
    History {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        direct: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        with: Option<String>,
        messages: Vec<HistoryEntry>,
    },
    Message(ChatMessage),
    Joined {
        name: String,
    },
    Left {
        name: String,
    },
    Who {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        users: Vec<String>,
    },
    /// A room's members, after a `join`.
    Room {
        room: String,
        members: Vec<String>,
    },
    /// This user is no longer a member of the room.
    Parted {
        room: String,
    },
    /// Another user became a member of a room this user is in.
    MemberJoined {
        room: String,
        name: String,
    },
    /// Another user left a room this user is in.
    MemberLeft {
        room: String,
        name: String,
    },
    /// Every room, sorted by lower-cased name.
    Rooms {
        rooms: Vec<RoomInfo>,
    },
    /// The password was changed; this token replaces the session's.
    PasswordChanged {
        token: String,
    },
    /// The account was deleted; the connection closes next.
    AccountDeleted,
    Pong,
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The server is shutting down; the connection closes next.
    Shutdown {
        message: String,
    },
    /// The admin removed this connection; it closes next.
    Kicked {
        message: String,
    },
}

/// One room in a `rooms` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub room: String,
    /// How many accounts are members.
    pub members: usize,
    /// Whether the asking user is one of them.
    pub member: bool,
}

/// Codes of `auth_error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthErrorCode {
    UnknownUser,
    BadPassword,
    NameTaken,
    InvalidToken,
    InvalidName,
    InvalidPassword,
    RateLimited,
    /// The account is banned; the message carries the reason.
    Banned,
    /// The state the request needs cannot be reached right now (cluster mode).
    Unavailable,
}

/// Codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    FrameTooLarge,
    BadRequest,
    NotAuthenticated,
    RateLimited,
    /// The server could not do what was asked (for example the disk is full).
    Internal,
    UnknownRoom,
    NotMember,
    UnknownUser,
    BadPassword,
    InvalidPassword,
    /// The state the request needs cannot be reached right now (cluster mode).
    Unavailable,
}

impl ServerMessage {
    /// An `error` frame's message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }

    /// An `auth_error` frame's message.
    pub fn auth_error(code: AuthErrorCode, message: impl Into<String>) -> ServerMessage {
        ServerMessage::AuthError {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Result<ClientMessage, BadRequest> {
        ClientMessage::parse(s.as_bytes())
    }

    #[test]
    fn parses_every_client_message() {
        assert_eq!(
            parse(r#"{"type":"resume","token":"t"}"#),
            Ok(ClientMessage::Resume { token: "t".into() })
        );
        assert_eq!(
            parse(r#"{"type":"login","name":"a","password":"p"}"#),
            Ok(ClientMessage::Login {
                name: "a".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"register","name":"a","password":"p"}"#),
            Ok(ClientMessage::Register {
                name: "a".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"say","text":"hi"}"#),
            Ok(ClientMessage::Say {
                text: "hi".into(),
                room: None,
                to: None
            })
        );
        assert_eq!(
            parse(r#"{"type":"who"}"#),
            Ok(ClientMessage::Who { room: None })
        );
        assert_eq!(parse(r#"{"type":"logout"}"#), Ok(ClientMessage::Logout));
        assert_eq!(parse(r#"{"type":"quit"}"#), Ok(ClientMessage::Quit));
        assert_eq!(parse(r#" {"type":"ping"}"#), Ok(ClientMessage::Ping));
    }

    #[test]
    fn ignores_unknown_fields() {
        assert_eq!(
            parse(r#"{"type":"ping","extra":[1,2]}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            parse(r#"{"x":{"y":1},"type":"say","text":"hi"}"#),
            Ok(ClientMessage::Say {
                text: "hi".into(),
                room: None,
                to: None
            })
        );
    }

    #[test]
    fn refuses_bad_payloads() {
        assert_eq!(ClientMessage::parse(b""), Err(BadRequest::Empty));
        assert_eq!(
            ClientMessage::parse(b"{\"type\":\"say\",\"text\":\"\xff\"}"),
            Err(BadRequest::NotUtf8)
        );
        assert_eq!(parse(r#"["ping"]"#), Err(BadRequest::NotAnObject));
        assert_eq!(parse("42"), Err(BadRequest::NotAnObject));
        assert!(matches!(parse("{nope"), Err(BadRequest::Malformed(_))));
        assert!(matches!(
            parse(r#"{"type":"dance"}"#),
            Err(BadRequest::Malformed(_))
        ));
        assert!(matches!(
            parse(r#"{"text":"no type"}"#),
            Err(BadRequest::Malformed(_))
        ));
        assert!(matches!(
            parse(r#"{"type":"say","text":5}"#),
            Err(BadRequest::Malformed(_))
        ));
        assert!(matches!(
            parse(r#"{"type":"login","name":"a"}"#),
            Err(BadRequest::Malformed(_))
        ));
        assert!(matches!(
            parse(r#"{"type":7}"#),
            Err(BadRequest::Malformed(_))
        ));
    }

    #[test]
    fn server_messages_have_the_documented_shape() {
        let cases = [
            (
                ServerMessage::Welcome {
                    server: "echochat".into(),
                    version: "1".into(),
                    known_name: None,
                },
                json!({"type":"welcome","server":"echochat","version":"1","known_name":null}),
            ),
            (
                ServerMessage::AuthOk {
                    name: "a".into(),
                    token: "t".into(),
                    new_user: true,
                },
                json!({"type":"auth_ok","name":"a","token":"t","new_user":true}),
            ),
            (
                ServerMessage::auth_error(AuthErrorCode::InvalidToken, "m"),
                json!({"type":"auth_error","code":"invalid_token","message":"m"}),
            ),
            (
                ServerMessage::Message(ChatMessage {
                    id: 7,
                    room: None,
                    to: None,
                    from: "a".into(),
                    text: "hi".into(),
                    ts: 99,
                }),
                json!({"type":"message","id":7,"from":"a","text":"hi","ts":99}),
            ),
            (
                ServerMessage::History {
                    room: None,
                    direct: None,
                    with: None,
                    messages: vec![HistoryEntry::Message(ChatMessage {
                        id: 1,
                        room: None,
                        to: None,
                        from: "b".into(),
                        text: "x".into(),
                        ts: 5,
                    })],
                },
                json!({"type":"history","messages":[{"type":"message","id":1,"from":"b","text":"x","ts":5}]}),
            ),
            (
                ServerMessage::error(ErrorCode::FrameTooLarge, "m"),
                json!({"type":"error","code":"frame_too_large","message":"m"}),
            ),
            (ServerMessage::Pong, json!({"type":"pong"})),
            (
                ServerMessage::Who {
                    room: None,
                    users: vec!["a".into()],
                },
                json!({"type":"who","users":["a"]}),
            ),
            (
                ServerMessage::Kicked {
                    message: "bye".into(),
                },
                json!({"type":"kicked","message":"bye"}),
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(serde_json::to_value(&message).unwrap(), expected);
            assert_eq!(
                serde_json::from_value::<ServerMessage>(expected).unwrap(),
                message
            );
        }
    }
}
