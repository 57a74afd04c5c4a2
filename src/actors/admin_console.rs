//! `AdminConsole`: turns the lines typed on the server's stdin into typed messages to
//! `ChatServer` and `Persistence`, and prints their answers on stdout.
//!
//! Stdin is read on a dedicated thread ([`spawn_stdin_reader`]): a blocking read there
//! cannot hold up shutdown, and end of input closes only the console. Commands run one
//! at a time, so answers print in the order the commands were typed. The parser,
//! [`parse_command`], is a plain function with its own tests.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::chat_server::{
    BanAccount, ChatServer, ClearIdentities, Kick, ListBans, ListUsers, PauseGreeting,
    PostAsServer, PostInRoom, ResumeGreeting, RoomsSummary, Shutdown, Status, UnbanAccount,
};
use super::persistence::{ClearLog, Persistence};
use crate::server::logging;
use crate::server::tls::Certificates;
use crate::text::{escape, plural};

mod command;

pub use self::command::{parse_command, Command, ConsoleError, HELP};

/// The actor. See the module documentation.
pub struct AdminConsole {
    server: Addr<ChatServer>,
    persistence: Addr<Persistence>,
    /// The log file, which `logs` reads itself (reading never changes it).
    log: PathBuf,
    /// The TLS certificate, when the server listens with TLS.
    certificates: Option<Arc<Certificates>>,
}

impl AdminConsole {
    /// A console driving `server` and `persistence`, reading the log at `log`.
    pub fn new(
        server: Addr<ChatServer>,
        persistence: Addr<Persistence>,
        log: PathBuf,
        certificates: Option<Arc<Certificates>>,
    ) -> AdminConsole {
        AdminConsole {
            server,
            persistence,
            log,
            certificates,
        }
    }

    fn run(&mut self, command: Command, ctx: &mut Context<Self>) {
        match command {
            Command::Help => print_out(HELP),
            Command::Status => {
                let tls = self
                    .certificates
                    .as_ref()
                    .map(|c| format!("\ntls: {}", c.fingerprint()))
                    .unwrap_or_default();
                self.answer(ctx, self.server.send(Status), move |report| {
                    format!(
                        "address: {}\npaused: {}\nusers online: {}\nconnections: {} ({} waiting)\naccounts: {}\nmessages sent: {}\nuptime: {}{tls}",
                        report.address,
                        if report.paused { "yes" } else { "no" },
                        report.users_online,
                        report.connections,
                        report.waiting,
                        report.accounts,
                        report.last_message_id,
                        format_uptime(report.uptime),
                    )
                })
            }
            Command::ReloadTls => {
                let Some(certificates) = self.certificates.clone() else {
                    print_out("TLS is not on (no --tls-port): nothing to reload");
                    return;
                };
                let reloaded = async move {
                    tokio::task::spawn_blocking(move || {
                        let old = certificates.fingerprint();
                        (certificates.reload(), old)
                    })
                    .await
                    .map_err(|_| MailboxError::Closed)
                };
                self.answer(ctx, reloaded, |(reloaded, old)| match reloaded {
                    Ok(fingerprint) => {
                        log::info!("TLS certificate reloaded by the admin: {fingerprint}");
                        format!("TLS certificate reloaded: {fingerprint}")
                    }
                    Err(err) => {
                        log::error!("TLS certificate not reloaded, the old one stays: {err}");
                        format!("TLS certificate not reloaded: {err}; still serving {old}")
                    }
                })
            }
            Command::Users => self.answer(ctx, self.server.send(ListUsers), |users| {
                if users.is_empty() {
                    "(no users online)".to_string()
                } else {
                    users
                        .iter()
                        .map(|u| escape(u))
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            }),
            Command::Pause => self.answer(ctx, self.server.send(PauseGreeting), |()| {
                "greeting paused".to_string()
            }),
            Command::Resume => self.answer(ctx, self.server.send(ResumeGreeting), |n| {
                format!("greeting resumed ({n} waiting)")
            }),
            Command::Logs(last) => {
                // A log of any size is streamed from a thread of its own: this thread
                // also runs the accept loop.
                let path = self.log.clone();
                let printed = async move {
                    tokio::task::spawn_blocking(move || {
                        let stdout = std::io::stdout();
                        let mut out = std::io::BufWriter::new(stdout.lock());
                        let printed = logging::print_log(&path, last, &mut out);
                        let _ = out.flush();
                        printed
                    })
                    .await
                    .map_err(|_| MailboxError::Closed)
                };
                self.answer(ctx, printed, |printed| match printed {
                    Ok(0) => "(the log is empty)".to_string(),
                    Ok(_) => String::new(),
                    Err(err) => format!("cannot read the log: {err}"),
                })
            }
            Command::ClearLogs => self.answer(ctx, self.persistence.send(ClearLog), |done| {
                // Not logged: an emptied log should be empty.
                match done {
                    Ok(()) => "log cleared".to_string(),
                    Err(err) => format!("cannot clear the log: {err}"),
                }
            }),
            Command::ClearIds => {
                self.answer(ctx, self.server.send(ClearIdentities), |done| match done {
                    Ok(()) => "identities cleared".to_string(),
                    Err(err) => format!("identities cleared in memory but not saved: {err}"),
                })
            }
            Command::Kick(name) => {
                let asked = escape(&name).into_owned();
                self.answer(ctx, self.server.send(Kick { name }), move |n| {
                    if n == 0 {
                        format!("no such user online: {asked}")
                    } else {
                        format!(
                            "kicked {asked} ({})",
                            plural(n, "connection", "connections")
                        )
                    }
                })
            }
            Command::Announce(text) => self.answer(
                ctx,
                self.server.send(PostAsServer { text }),
                |id| match id {
                    Ok(id) => format!("sent message #{id}"),
                    Err(err) => format!("not sent: {err}"),
                },
            ),
            Command::Rooms => self.answer(ctx, self.server.send(RoomsSummary), |rooms| {
                rooms
                    .iter()
                    .map(|room| {
                        let online = if room.online.is_empty() {
                            "nobody online".to_string()
                        } else {
                            let names: Vec<String> =
                                room.online.iter().map(|n| escape(n).into_owned()).collect();
                            format!("online: {}", names.join(", "))
                        };
                        format!(
                            "{} ({}; {online})",
                            escape(&room.name),
                            plural(room.members, "member", "members")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }),
            Command::AnnounceIn { room, text } => self.answer(
                ctx,
                self.server.send(PostInRoom { room, text }),
                |id| match id {
                    Ok(id) => format!("sent message #{id}"),
                    Err(err) => format!("not sent: {err}"),
                },
            ),
            Command::Ban { name, reason } => self.answer(
                ctx,
                self.server.send(BanAccount { name, reason }),
                |done| match done {
                    Ok((name, closed)) => format!(
                        "banned {} ({})",
                        escape(&name),
                        plural(closed, "connection closed", "connections closed")
                    ),
                    Err(err) => format!("not banned: {err}"),
                },
            ),
            Command::Unban(name) => {
                let shown = escape(&name).into_owned();
                self.answer(
                    ctx,
                    self.server.send(UnbanAccount { name }),
                    move |done| match done {
                        Ok(()) => format!("unbanned {shown}"),
                        Err(err) => format!("not unbanned: {err}"),
                    },
                )
            }
            Command::Bans => self.answer(ctx, self.server.send(ListBans), |bans| {
                if bans.is_empty() {
                    return "(no bans)".to_string();
                }
                bans.iter()
                    .map(|ban| {
                        let reason = if ban.reason.is_empty() {
                            "no reason given".to_string()
                        } else {
                            escape(&ban.reason).into_owned()
                        };
                        format!(
                            "{}  since {}  {reason}",
                            escape(&ban.name),
                            utc_time(ban.since_ms)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }),
            Command::Shutdown => {
                print_out("shutting down");
                self.server.do_send(Shutdown);
            }
        }
    }

    /// Waits for a reply (no other command runs meanwhile) and prints it.
    fn answer<T>(
        &self,
        ctx: &mut Context<Self>,
        reply: impl std::future::Future<Output = Result<T, MailboxError>> + 'static,
        render: impl FnOnce(T) -> String + 'static,
    ) {
        fut::wrap_future::<_, Self>(reply)
            .map(|reply, _, _| match reply {
                Ok(value) => {
                    let text = render(value);
                    if !text.is_empty() {
                        print_out(&text);
                    }
                }
                Err(err) => print_out(&format!("the server did not answer: {err}")),
            })
            .wait(ctx);
    }
}

impl Actor for AdminConsole {
    type Context = Context<Self>;
}

/// One line read from stdin (lossily decoded: junk bytes become an unknown command).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConsoleLine(pub String);

impl Handler<ConsoleLine> for AdminConsole {
    type Result = ();

    fn handle(&mut self, msg: ConsoleLine, ctx: &mut Self::Context) {
        match parse_command(&msg.0) {
            Ok(Some(command)) => self.run(command, ctx),
            Ok(None) => {}
            Err(error) => print_out(&error.to_string()),
        }
    }
}

/// Stdin reached its end: the console closes, the server keeps serving.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConsoleClosed;

impl Handler<ConsoleClosed> for AdminConsole {
    type Result = ();

    fn handle(&mut self, _: ConsoleClosed, ctx: &mut Self::Context) {
        log::info!("admin console input closed; the server keeps running");
        print_out("console input ended; the server keeps running (stop it with a signal)");
        ctx.stop();
    }
}

/// Reads stdin lines on a thread of their own and forwards them to the console.
pub fn spawn_stdin_reader(console: Addr<AdminConsole>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("admin-stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut input = stdin.lock();
            let mut line = Vec::new();
            loop {
                line.clear();
                match input.read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).into_owned();
                        console.do_send(ConsoleLine(text));
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        log::warn!("admin console input failed: {err}");
                        break;
                    }
                }
            }
            console.do_send(ConsoleClosed);
        })
        .map(|_| ())
}

fn print_out(text: &str) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // A closed stdout must not take the server down; the log still has everything.
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Unix milliseconds as a UTC time, `2026-11-21 05:10:59 UTC`.
fn utc_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

fn format_uptime(uptime: Duration) -> String {
    let secs = uptime.as_secs();
    format!(
        "{}d {:02}h {:02}m {:02}s",
        secs / 86_400,
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_read_well() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_795_237_859_453), "2026-11-21 05:10:59 UTC");
    }

    #[test]
    fn uptime_reads_well() {
        assert_eq!(format_uptime(Duration::from_secs(90_061)), "1d 01h 01m 01s");
    }
}
