//! Graceful shutdown, one path for the console's `shutdown` and for SIGINT/SIGTERM:
//! stop accepting, put the state on disk, tell every connection, let writers deliver
//! (for at most [`SHUTDOWN_GRACE`]), stop the process.

use std::time::Duration;

use actix::prelude::*;

use super::{ChatServer, Lifecycle};
use crate::protocol::ServerMessage;
use crate::text::plural;

/// How long shutdown waits for writers to deliver the `shutdown` frame.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Shut the server down gracefully.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for ChatServer {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        if self.lifecycle != Lifecycle::Serving {
            return;
        }
        self.lifecycle = Lifecycle::ShuttingDown;
        self.stop_accepting.cancel();
        log::info!("shutting down");
        fut::wrap_future::<_, Self>(self.store.sync_for_shutdown())
            .map(|synced, act, ctx| {
                if let Err(err) = synced {
                    log::error!("state not fully saved at shutdown: {err}");
                }
                act.lifecycle = Lifecycle::Drained;
                if let Some(frame) = super::encode(&ServerMessage::Shutdown {
                    message: "the server is shutting down".to_string(),
                }) {
                    for (_, peer) in act.connections.iter() {
                        peer.handle.outbox.send(frame.clone());
                        peer.handle.outbox.close();
                    }
                }
                act.finish_shutdown_if_drained();
                ctx.run_later(SHUTDOWN_GRACE, |act, _| {
                    if !act.connections.is_empty() {
                        log::warn!(
                            "{} still open after the grace period",
                            plural(act.connections.len(), "connection", "connections")
                        );
                    }
                    System::current().stop();
                });
            })
            // Not `wait`: the save this awaits may need this actor to make progress.
            .spawn(ctx);
    }
}
