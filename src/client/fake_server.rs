//! For unit tests of the chat loop: the server's end of a real loopback connection,
//! speaking typed protocol messages, and an [`Output`] that records what is shown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

use super::args::ServerAddr;
use super::connection::Connection;
use super::session::Output;
use super::tls::Connector;
use crate::codec::{encode_frame, FrameCodec};
use crate::protocol::{ClientMessage, ServerMessage};

/// Collects what the session shows.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<String>>>);

impl Output for Recorder {
    fn chat(&mut self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
    fn notice(&mut self, line: &str) {
        self.0.lock().unwrap().push(format!("notice: {line}"));
    }
    fn room_changed(&mut self, room: &str) {
        self.0.lock().unwrap().push(format!("room: {room}"));
    }
}

/// The server's end of a connection, speaking raw protocol messages.
pub struct FakeServer(Framed<TcpStream, FrameCodec>);

impl FakeServer {
    pub async fn send(&mut self, message: ServerMessage) {
        self.0.send(encode_frame(&message).unwrap()).await.unwrap();
    }

    /// The next request, or `None` if none comes within `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<ClientMessage> {
        let frame: Bytes = tokio::time::timeout(limit, self.0.next())
            .await
            .ok()??
            .ok()?;
        Some(ClientMessage::parse(&frame).unwrap())
    }

    pub async fn recv(&mut self) -> ClientMessage {
        self.recv_within(Duration::from_secs(10))
            .await
            .expect("a request from the client")
    }
}

/// A client connection and the fake server's end of it.
pub async fn pair() -> (Connection, FakeServer, ServerAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = ServerAddr {
        host: "127.0.0.1".into(),
        port,
        tls: false,
    };
    let conn = Connector::plain().connect(&server).await.unwrap();
    let (socket, _) = listener.accept().await.unwrap();
    let fake = FakeServer(Framed::new(socket, FrameCodec::new(1 << 20)));
    (conn, fake, server)
}
