//! Terminal mode: a person at the keyboard.
//!
//! Before the chat it asks, on stderr, for what the command line left out (host, port),
//! then logs in: with the saved token if the server still takes it, otherwise by name
//! and password, the password read with echo off, offering to register a name the
//! server does not know. Every refusal gets a sentence and another try. The chat then
//! runs [`Session`] with lines from a rustyline editor on its own thread; what arrives
//! is printed through rustyline's external printer, above the line being typed.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use tokio::sync::{mpsc, oneshot};

use super::args::{Args, ServerAddr, DEFAULT_HOST, DEFAULT_PORT};
use super::connection::{AuthReply, Connection, ConnectionError, Welcome};
use super::display::{auth_error_sentence, printable};
use super::prompt::{self, Secret};
use super::session::{parse_input, Input, Outcome, Output, Policy, Session, PING_INTERVAL};
use super::tokens::{self, TokenStore};
use super::Exit;
use crate::protocol::{AuthErrorCode, ClientMessage};

/// After this long without a greeting, tell the user why nothing happens.
const WELCOME_PATIENCE: Duration = Duration::from_secs(2);

/// A person reads the echo of their message; if it does not come, say so after this.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines typed ahead of the session. Large, so the editor thread never waits on a full
/// channel while the session waits on the editor to print.
const LINE_BUFFER: usize = 4096;

/// Exit code after Ctrl-C at a prompt, as shells report a SIGINT death.
const EXIT_INTERRUPTED: u8 = 130;

/// Runs terminal mode to its exit status.
pub async fn run(args: Args) -> Exit {
    let saved = SavedTerminal::capture();
    let exit = run_inner(args).await;
    // The editor thread may still be blocked in raw mode (the server ended the chat):
    // give the terminal back as we found it.
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
    let token_path = args.token_file.clone().or_else(tokens::default_path);
    if token_path.is_none() {
        say("No data folder found: session tokens will not be remembered (see --token-file).");
    }
    let (mut tokens, warning) = TokenStore::open(token_path, server.token_key());
    if let Some(warning) = warning {
        say(&format!("Warning: {warning}"));
    }
    let (conn, name) = match log_in(&server, &mut tokens, args.name.clone()).await {
        Ok(logged_in) => logged_in,
        Err(exit) => return exit,
    };
    chat(conn, server, tokens, name).await
}

/// A line for the person on stderr, outside the chat (prompts live there too).
fn say(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// Runs a blocking prompt off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
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
    Ok(ServerAddr { host, port })
}

/// Connects and waits for the greeting, explaining a wait (a paused server).
async fn connect(server: &ServerAddr) -> Result<(Connection, Welcome), Exit> {
    let mut conn = Connection::connect(server)
        .await
        .map_err(|e| Exit::failure(e.to_string()))?;
    let welcome = match tokio::time::timeout(WELCOME_PATIENCE, conn.welcome(None)).await {
        Ok(welcome) => welcome,
        Err(_) => {
            say(&format!(
                "Connected to {server}; waiting for the server to let us in (it may be paused)..."
            ));
            conn.welcome(None).await
        }
    };
    match welcome {
        Ok(welcome) => Ok((conn, welcome)),
        Err(ConnectionError::Ended(ended)) => Err(Exit::success_with(ended.to_string())),
        Err(e) => Err(Exit::failure(e.to_string())),
    }
}

/// Sends an authentication request; if the connection dropped meanwhile (the server
/// closes connections that take too long to log in), reconnects and asks again once.
async fn authenticate(
    conn: &mut Connection,
    server: &ServerAddr,
    request: &ClientMessage,
) -> Result<AuthReply, Exit> {
    match conn.authenticate(request).await {
        Ok(reply) => return Ok(reply),
        Err(ConnectionError::Ended(ended)) => return Err(Exit::success_with(ended.to_string())),
        // The server answered, but could not do it (`internal`: a full disk, say).
        Err(e @ ConnectionError::Refused(_)) => return Err(Exit::failure(e.to_string())),
        Err(e) => say(&format!("The connection was lost ({e}); reconnecting...")),
    }
    *conn = connect(server).await?.0;
    match conn.authenticate(request).await {
        Ok(reply) => Ok(reply),
        Err(ConnectionError::Ended(ended)) => Err(Exit::success_with(ended.to_string())),
        Err(e) => Err(Exit::failure(e.to_string())),
    }
}

/// Logs in, asking as much as needed. Returns the connection and our name.
async fn log_in(
    server: &ServerAddr,
    tokens: &mut TokenStore,
    fixed_name: Option<String>,
) -> Result<(Connection, String), Exit> {
    let (mut conn, welcome) = connect(server).await?;

    if let Some(token) = tokens.token().map(str::to_string) {
        match authenticate(&mut conn, server, &ClientMessage::Resume { token }).await? {
            AuthReply::Accepted { name, token, .. } => {
                save(tokens, &token);
                say(&format!("Welcome back, {}.", printable(&name)));
                return Ok((conn, name));
            }
            AuthReply::Refused { code, .. } => {
                if code == AuthErrorCode::InvalidToken {
                    if let Err(e) = tokens.forget() {
                        say(&format!("Warning: {e}"));
                    }
                }
                say(&auth_error_sentence(
                    code,
                    fixed_name.as_deref().unwrap_or(""),
                ));
            }
        }
    }

    let known = welcome.known_name;
    let mut last_name: Option<String> = None;
    loop {
        let name = match (&fixed_name, &known, &last_name) {
            (Some(name), _, _) => name.clone(),
            (None, Some(known), None) => {
                say(&format!("Welcome back, {}.", printable(known)));
                known.clone()
            }
            (None, known, last) => {
                let default = last.clone().or_else(|| known.clone());
                let asked = blocking(move || {
                    prompt::ask_name(
                        &mut io::stdin().lock(),
                        &mut io::stderr(),
                        default.as_deref(),
                    )
                })
                .await;
                match asked {
                    Ok(Some(name)) => name,
                    Ok(None) => return Err(Exit::success()),
                    Err(e) => return Err(Exit::failure(format!("cannot read the terminal: {e}"))),
                }
            }
        };
        last_name = Some(name.clone());

        let password = ask_secret("Password: ").await?;
        let login = ClientMessage::Login {
            name: name.clone(),
            password,
        };
        let code = match authenticate(&mut conn, server, &login).await? {
            AuthReply::Accepted { name, token, .. } => {
                save(tokens, &token);
                say(&format!("Logged in as {}.", printable(&name)));
                return Ok((conn, name));
            }
            AuthReply::Refused {
                code: AuthErrorCode::UnknownUser,
                ..
            } => match register(&mut conn, server, &name).await? {
                Some(AuthReply::Accepted { name, token, .. }) => {
                    save(tokens, &token);
                    say(&format!(
                        "Welcome, {}! Your account is ready.",
                        printable(&name)
                    ));
                    return Ok((conn, name));
                }
                Some(AuthReply::Refused { code, .. }) => code,
                None => continue,
            },
            AuthReply::Refused { code, .. } => code,
        };
        say(&auth_error_sentence(code, &name));
        if fixed_name.is_some()
            && matches!(code, AuthErrorCode::InvalidName | AuthErrorCode::NameTaken)
        {
            return Err(Exit::failure("the name given with --name cannot be used"));
        }
    }
}

/// Offers to register `name`; `None` if the user declines.
async fn register(
    conn: &mut Connection,
    server: &ServerAddr,
    name: &str,
) -> Result<Option<AuthReply>, Exit> {
    let question = format!(
        "There is no account named '{}'. Register it?",
        printable(name)
    );
    let yes = blocking(move || {
        prompt::ask_yes_no(&mut io::stdin().lock(), &mut io::stderr(), &question, true)
    })
    .await
    .map_err(|e| Exit::failure(format!("cannot read the terminal: {e}")))?;
    if !yes {
        return Ok(None);
    }
    let password = loop {
        let first = ask_secret("Choose a password: ").await?;
        let second = ask_secret("Repeat the password: ").await?;
        if first == second {
            break first;
        }
        say("The two passwords differ; try again.");
    };
    let request = ClientMessage::Register {
        name: name.to_string(),
        password,
    };
    authenticate(conn, server, &request).await.map(Some)
}

/// Asks for a password with echo off. Ctrl-D gives up, Ctrl-C interrupts.
async fn ask_secret(label: &'static str) -> Result<String, Exit> {
    let secret = blocking(move || {
        let mut err = io::stderr();
        write!(err, "{label}")?;
        err.flush()?;
        let secret = {
            let _raw = RawInput::enable()?;
            prompt::read_secret(&mut io::stdin().lock())
        };
        writeln!(err)?;
        secret
    })
    .await;
    match secret {
        Ok(Secret::Entered(password)) => Ok(password),
        Ok(Secret::Eof) => Err(Exit::success()),
        Ok(Secret::Interrupted) => Err(Exit {
            code: EXIT_INTERRUPTED,
            message: None,
        }),
        Err(e) => Err(Exit::failure(format!("cannot read the terminal: {e}"))),
    }
}

/// Remembers a fresh token; failing to write the file is worth a warning only.
fn save(tokens: &mut TokenStore, token: &str) {
    if let Err(e) = tokens.save(token) {
        say(&format!("Warning: {e}"));
    }
}

/// The chat: an editor thread feeds typed lines to the session; the session prints
/// through the editor's external printer.
async fn chat(conn: Connection, server: ServerAddr, tokens: TokenStore, name: String) -> Exit {
    let (lines_tx, mut lines) = mpsc::channel(LINE_BUFFER);
    let (printer_tx, printer_rx) = oneshot::channel();
    let prompt = format!("{}> ", printable(&name));
    let signal_tx = lines_tx.clone();
    say("Type a message and press Enter; /help lists the commands.");
    std::thread::spawn(move || read_lines(prompt, lines_tx, printer_tx));
    let printer = printer_rx.await.ok().flatten();
    spawn_signal_watch(signal_tx);

    let out = TerminalOutput { printer };
    let policy = Policy {
        window: None,
        retry_rate_limited: false,
        max_reconnects: None,
        ack_timeout: ACK_TIMEOUT,
        fail_on_ack_timeout: false,
        ping_interval: PING_INTERVAL,
    };
    let mut session = Session::new(conn, server, tokens, name, out, policy);
    match session.run(&mut lines).await {
        Outcome::Quit => Exit::success(),
        Outcome::LoggedOut => {
            Exit::success_with("Logged out; the next start will ask for your password.")
        }
        Outcome::Ended(ended) => Exit::success_with(ended.to_string()),
        Outcome::Failed(why) => Exit::failure(why),
    }
}

/// The editor thread: reads lines with rustyline until `/quit`, `/logout`, Ctrl-D
/// (end of input) or Ctrl-C (quit). Hands its external printer over first.
fn read_lines(
    prompt: String,
    lines: mpsc::Sender<String>,
    printer_tx: oneshot::Sender<Option<Box<dyn ExternalPrinter + Send>>>,
) {
    let mut editor = match DefaultEditor::new() {
        Ok(editor) => editor,
        Err(e) => {
            let _ = printer_tx.send(None);
            say(&format!("Cannot start the line editor: {e}"));
            return;
        }
    };
    let printer = editor
        .create_external_printer()
        .ok()
        .map(|p| Box::new(p) as Box<dyn ExternalPrinter + Send>);
    let _ = printer_tx.send(printer);
    loop {
        match editor.readline(&prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                let last = matches!(parse_input(&line), Input::Quit | Input::Logout);
                if lines.blocking_send(line).is_err() || last {
                    return;
                }
            }
            Err(ReadlineError::Interrupted) => {
                let _ = lines.blocking_send("/quit".to_string());
                return;
            }
            // Ctrl-D, or the terminal went away: dropping the sender is end of input.
            Err(_) => return,
        }
    }
}

/// SIGTERM and SIGHUP (the terminal closed) end the chat like `/quit`, so the terminal
/// is restored and the server hears a proper goodbye.
fn spawn_signal_watch(lines: mpsc::Sender<String>) {
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
        let _ = lines.send("/quit".to_string()).await;
    });
}

/// Prints above the line being edited, or plainly when there is no editor.
struct TerminalOutput {
    printer: Option<Box<dyn ExternalPrinter + Send>>,
}

impl Output for TerminalOutput {
    fn chat(&mut self, line: &str) {
        let printed = match &mut self.printer {
            Some(printer) => printer.print(format!("{line}\n")).is_ok(),
            None => false,
        };
        if !printed {
            let _ = writeln!(io::stdout().lock(), "{line}");
        }
    }

    fn notice(&mut self, line: &str) {
        self.chat(line);
    }
}

/// The terminal settings at start, put back at the end whatever happened between.
struct SavedTerminal(libc::termios);

impl SavedTerminal {
    fn capture() -> Option<SavedTerminal> {
        // SAFETY: tcgetattr writes only into the termios we own.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        (unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut termios) } == 0)
            .then_some(SavedTerminal(termios))
    }

    fn restore(&self) {
        // SAFETY: tcsetattr only reads the termios we pass.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0) };
        if io::stdout().is_terminal() {
            // Bracketed paste is on while rustyline edits; move off its prompt line too.
            let mut stdout = io::stdout().lock();
            let _ = write!(stdout, "\x1b[?2004l\r\x1b[K");
            let _ = stdout.flush();
        }
    }
}

/// Raw input for a password prompt: no echo, no kernel line editing, no signals (Ctrl-C
/// arrives as a byte, so the settings are always restored). Restored on drop.
struct RawInput(SavedTerminal);

impl RawInput {
    fn enable() -> io::Result<RawInput> {
        let saved = SavedTerminal::capture().ok_or_else(io::Error::last_os_error)?;
        let mut raw = saved.0;
        raw.c_lflag &= !(libc::ECHO | libc::ICANON | libc::ISIG | libc::IEXTEN);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: tcsetattr only reads the termios we pass.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawInput(saved))
    }
}

impl Drop for RawInput {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &(self.0).0) };
    }
}
