//! Terminal mode: a person at the keyboard.
//!
//! Before the chat it asks, on stderr, for what the command line left out (host, port,
//! in the terminal's own line mode), then takes the terminal over ([`Ui`]) and logs in
//! ([`login`]): with the saved token of the account if the server still takes it,
//! otherwise by name and password, the password typed unseen, offering to register a
//! name the server does not know. Every refusal gets a sentence and another try of
//! just the field that was wrong. The chat then runs [`Session`] with the lines the
//! editor hands over; what arrives is printed above the line being typed.

use std::io;
use std::time::Duration;

use super::args::{Args, ServerAddr, DEFAULT_HOST, DEFAULT_PORT};
use super::display::{printable, room_label};
use super::login::{self, Credentials, How, Link, LoggedIn};
use super::prompt;
use super::session::{Outcome, Output, Policy, Session, PING_INTERVAL};
use super::tls::{self, AskTrust, Connector};
use super::tokens::TokenStore;
use super::tty::{Answer, SavedTerminal, Ui};
use super::{Exit, Notify};
use crate::protocol::LOBBY;

/// A person reads the echo of their message; if it does not come, say so after this.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit code after Ctrl-C at a prompt, as shells report a SIGINT death.
const EXIT_INTERRUPTED: u8 = 130;

/// Runs terminal mode to its exit status.
pub async fn run(args: Args) -> Exit {
    let saved = SavedTerminal::capture();
    let exit = run_inner(args).await;
    // Whatever happened, give the terminal back as we found it.
    if let Some(saved) = saved {
        saved.restore();
    }
    exit
}

async fn run_inner(args: Args) -> Exit {
    let server = match ask_server(&args).await {
        Ok(server) => server,
        Err(e) => return Exit::failure(format!("cannot read the terminal: {e}")),
    };
    let (ui, mut interrupts) = match Ui::start() {
        Ok(started) => started,
        Err(e) => return Exit::failure(format!("cannot use the terminal: {e}")),
    };
    let exit = tokio::select! {
        exit = converse(&ui, &args, server) => exit,
        Some(()) = interrupts.recv() => interrupted(),
    };
    ui.close().await;
    exit
}

/// Logs in, then chats.
async fn converse(ui: &Ui, args: &Args, server: ServerAddr) -> Exit {
    let mut tokens =
        TokenStore::for_server(args.token_file.clone(), server.token_key(), notify(ui));
    let connector = match tls::from_args(args, notify(ui), Some(ask_trust(ui))) {
        Ok(connector) => connector,
        Err(why) => return Exit::failure(why),
    };
    let mut link = match Link::open(&server, connector.clone(), notify(ui)).await {
        Ok(link) => link,
        Err(exit) => return exit,
    };
    // A certificate that changes later, at a reconnection, is refused, not asked about.
    connector.stop_asking().await;
    let mut prompts = Prompts { ui: ui.clone() };
    let logged_in =
        match login::log_in(&mut link, &mut tokens, args.name.as_deref(), &mut prompts).await {
            Ok(logged_in) => logged_in,
            Err(exit) => return exit,
        };
    greet(ui, &logged_in, args.name.is_some());
    chat(ui, logged_in, server, connector, tokens).await
}

/// Asks the person whether to trust a server whose certificate nothing vouches for.
fn ask_trust(ui: &Ui) -> AskTrust {
    let ui = ui.clone();
    Box::new(move |intro: Vec<String>| {
        let ui = ui.clone();
        Box::pin(async move {
            for line in intro {
                ui.print(line);
            }
            loop {
                let Answer::Line(answer) = ui.ask("Trust this server? [y/N] ", false).await else {
                    return false;
                };
                match answer.trim().to_lowercase().as_str() {
                    "y" | "yes" => return true,
                    "" | "n" | "no" => return false,
                    _ => ui.print("Please answer y or n."),
                }
            }
        })
    })
}

/// Notices for the login and the token file: printed above the prompt.
fn notify(ui: &Ui) -> Notify {
    let ui = ui.clone();
    Box::new(move |line: &str| ui.print(line))
}

/// The first words after logging in.
fn greet(ui: &Ui, logged_in: &LoggedIn, named: bool) {
    let name = printable(&logged_in.name);
    ui.print(match logged_in.how {
        How::Resumed if named => format!("Welcome back, {name}."),
        How::Resumed => {
            format!("Welcome back, {name}. (Someone else? Start echochat with --name NAME.)")
        }
        How::LoggedIn => format!("Logged in as {name}."),
        How::Registered => format!("Welcome, {name}! Your account is ready."),
    });
}

/// Host and port from the command line, or asked for.
async fn ask_server(args: &Args) -> io::Result<ServerAddr> {
    let host = match &args.host {
        Some(host) => host.clone(),
        None => {
            blocking(|| prompt::ask_host(&mut io::stdin().lock(), &mut io::stderr(), DEFAULT_HOST))
                .await?
        }
    };
    let port = match args.port {
        Some(port) => port,
        None => {
            blocking(|| prompt::ask_port(&mut io::stdin().lock(), &mut io::stderr(), DEFAULT_PORT))
                .await?
        }
    };
    Ok(ServerAddr {
        host,
        port,
        tls: args.wants_tls(),
    })
}

/// Runs a blocking prompt off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

fn interrupted() -> Exit {
    Exit {
        code: EXIT_INTERRUPTED,
        message: None,
    }
}

/// Ctrl-D at a question: the person is leaving, and is told so.
fn left_at_a_question() -> Exit {
    Exit::success_with("leaving without logging in.")
}

/// Credentials asked of a person.
struct Prompts {
    ui: Ui,
}

impl Prompts {
    /// Asks until there is an answer; Ctrl-D and Ctrl-C end the run.
    async fn ask(&self, label: &str, hidden: bool) -> Result<String, Exit> {
        match self.ui.ask(label, hidden).await {
            Answer::Line(line) => Ok(line),
            Answer::EndOfInput => Err(left_at_a_question()),
            Answer::Interrupted => Err(interrupted()),
        }
    }

    async fn yes_no(&self, question: &str, default: bool) -> Result<bool, Exit> {
        let hint = if default { "[Y/n]" } else { "[y/N]" };
        loop {
            let answer = self.ask(&format!("{question} {hint} "), false).await?;
            match answer.trim().to_lowercase().as_str() {
                "" => return Ok(default),
                "y" | "yes" => return Ok(true),
                "n" | "no" => return Ok(false),
                _ => self.ui.print("Please answer y or n."),
            }
        }
    }
}

impl Credentials for Prompts {
    async fn name(&mut self, suggested: Option<&str>) -> Result<String, Exit> {
        loop {
            let label = match suggested {
                Some(name) => format!("Name [{}]: ", printable(name)),
                None => "Name: ".to_string(),
            };
            let typed = self.ask(&label, false).await?;
            let typed = typed.trim();
            if !typed.is_empty() {
                return Ok(typed.to_string());
            }
            if let Some(name) = suggested {
                return Ok(name.to_string());
            }
            self.ui
                .print("A name is needed to log in (Ctrl-D to leave).");
        }
    }

    async fn password(&mut self, _name: &str) -> Result<String, Exit> {
        self.ask("Password: ", true).await
    }

    async fn new_account(&mut self, name: &str, _typed: &str) -> Result<Option<String>, Exit> {
        let question = format!(
            "There is no account named '{}'. Register it?",
            printable(name)
        );
        if !self.yes_no(&question, true).await? {
            return Ok(None);
        }
        loop {
            let first = self.ask("Choose a password: ", true).await?;
            if let Some(problem) = login::password_problem(&first) {
                self.ui.print(problem);
                continue;
            }
            let second = self.ask("Repeat the password: ", true).await?;
            if first == second {
                return Ok(Some(first));
            }
            self.ui.print("The two passwords differ; try again.");
        }
    }

    fn refused(&mut self, sentence: &str) -> Result<(), Exit> {
        self.ui.print(sentence);
        Ok(())
    }
}

/// The chat: the editor hands typed lines to the session, the session prints through
/// the terminal task.
async fn chat(
    ui: &Ui,
    logged_in: LoggedIn,
    server: ServerAddr,
    connector: Connector,
    tokens: TokenStore,
) -> Exit {
    ui.print("Type a message and press Enter; /help lists the commands.");
    // Keys typed while a saved token logged us in, with no question asked, may be
    // a name and password typed blindly: they are dropped, not sent.
    let asked = logged_in.how != How::Resumed;
    let mut lines = ui.chat(chat_prompt(LOBBY, &logged_in.name), asked);
    spawn_signal_watch(ui.clone());
    let policy = Policy {
        window: 1,
        max_reconnects: None,
        ack_timeout: ACK_TIMEOUT,
        fail_on_ack_timeout: false,
        ping_interval: PING_INTERVAL,
        reconnect_after_shutdown: true,
        fail_on_bad_frame: false,
        confirm: true,
    };
    let out = TerminalOutput {
        ui: ui.clone(),
        name: logged_in.name.clone(),
    };
    let name = printable(&logged_in.name);
    let mut session = Session::new(
        logged_in.conn,
        server,
        connector,
        tokens,
        logged_in.name,
        out,
        policy,
    );
    match session.run(&mut lines).await {
        Outcome::Quit => Exit::success(),
        Outcome::LoggedOut => {
            Exit::success_with("Logged out; the next start will ask for your password.")
        }
        Outcome::AccountDeleted => Exit::success_with(format!(
            "The account '{name}' was deleted, and its saved session forgotten. Goodbye."
        )),
        Outcome::Ended(ended) => Exit::success_with(ended.to_string()),
        Outcome::Failed(why) => Exit::failure(why),
    }
}

/// SIGTERM and SIGHUP (the terminal closed) end the chat like `/quit`, so the terminal
/// is restored and the server hears a proper goodbye.
fn spawn_signal_watch(ui: Ui) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        ui.end_chat();
    });
}

/// The chat's prompt: the current room, then our name (`#lobby alice> `).
fn chat_prompt(room: &str, name: &str) -> String {
    format!("{} {}> ", room_label(room), printable(name))
}

/// Prints above the line being edited.
struct TerminalOutput {
    ui: Ui,
    /// Our name, for the prompt.
    name: String,
}

impl Output for TerminalOutput {
    fn chat(&mut self, line: &str) {
        self.ui.print(line);
    }

    fn notice(&mut self, line: &str) {
        self.ui.print(line);
    }

    fn room_changed(&mut self, room: &str) {
        self.ui.set_prompt(chat_prompt(room, &self.name));
    }

    fn question(&mut self, label: &str, hidden: bool) {
        self.ui.chat_question(label, hidden);
    }

    fn questions_over(&mut self) {
        self.ui.chat_questions_over();
    }
}
