//! The terminal while the client runs: raw mode, and one task that owns the screen.
//!
//! Once the host and port are known, [`Ui::start`] puts the terminal in raw mode and
//! spawns the task that alone writes to it. Everything else talks to that task: lines
//! to print go above the line being typed ([`Ui::print`]), a question waits for its
//! answer ([`Ui::ask`], with the typing hidden for a password), and the chat's line
//! editor hands every finished line to the session ([`Ui::chat`]). Keys are decoded
//! as soon as a read returns them, so a burst of keys or a paste is handled at once,
//! and keys typed ahead of a question wait for it. A server message can therefore
//! appear while a question is open, and the question is drawn again below it.

use std::collections::VecDeque;
use std::io::{self, Write};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use super::commands::asks_questions;
use super::editor::{Edit, LineEditor};
use super::keys::{Key, KeyDecoder};

/// Lines the chat's editor may hand over before the session takes them. A paste of
/// more waits in the editor task, it is not lost.
const LINE_BUFFER: usize = 4096;

/// Columns assumed when the terminal does not say.
const DEFAULT_COLUMNS: usize = 80;

/// Turns on bracketed paste, so pasted text arrives marked and is never run as keys.
const BRACKETED_PASTE_ON: &str = "\x1b[?2004h";
const BRACKETED_PASTE_OFF: &str = "\x1b[?2004l";

/// What the person did at a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Line(String),
    /// Ctrl-D on an empty line, or the terminal went away.
    EndOfInput,
    /// Ctrl-C.
    Interrupted,
}

/// A handle on the terminal task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Ui {
    requests: mpsc::UnboundedSender<Request>,
}

enum Request {
    Print(String),
    Ask {
        label: String,
        hidden: bool,
        reply: oneshot::Sender<Answer>,
    },
    Chat {
        prompt: String,
        lines: mpsc::Sender<String>,
        keep_typeahead: bool,
    },
    SetPrompt(String),
    ChatQuestion {
        label: String,
        hidden: bool,
    },
    ChatQuestionsOver,
    EndChat,
    Close(oneshot::Sender<()>),
}

impl Ui {
    /// Puts the terminal in raw mode and starts the task that owns it. Ctrl-C while no
    /// question is open arrives on the returned receiver.
    pub fn start() -> io::Result<(Ui, mpsc::UnboundedReceiver<()>)> {
        let raw = RawMode::enable()?;
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let (interrupts, interrupts_rx) = mpsc::unbounded_channel();
        let input = spawn_reader();
        let winch = signal(SignalKind::window_change()).ok();
        let mut screen = Screen {
            out: io::stdout(),
            columns: columns(),
            mode: Mode::Idle,
            typeahead: VecDeque::new(),
            editor: LineEditor::new(),
            interrupts,
            input_closed: false,
            _raw: raw,
        };
        screen.write(BRACKETED_PASTE_ON);
        tokio::spawn(screen.run(requests_rx, input, winch));
        Ok((Ui { requests }, interrupts_rx))
    }

    /// Prints a line above whatever is being typed. The line must be printable (see
    /// [`super::display::printable`]).
    pub fn print(&self, line: impl Into<String>) {
        let _ = self.requests.send(Request::Print(line.into()));
    }

    /// Asks a question on one line and waits for the answer.
    pub async fn ask(&self, label: impl Into<String>, hidden: bool) -> Answer {
        let (reply, answer) = oneshot::channel();
        let request = Request::Ask {
            label: label.into(),
            hidden,
            reply,
        };
        if self.requests.send(request).is_err() {
            return Answer::EndOfInput;
        }
        answer.await.unwrap_or(Answer::EndOfInput)
    }

    /// Starts the chat's line editor with `prompt`; finished lines come out of the
    /// receiver, which closes on Ctrl-D on an empty line, Ctrl-C, or [`Ui::end_chat`].
    /// Keys typed before it started are kept only with `keep_typeahead`: after a login
    /// that asked nothing, they may be a name and password typed blindly, and must
    /// not become chat.
    pub fn chat(&self, prompt: impl Into<String>, keep_typeahead: bool) -> mpsc::Receiver<String> {
        let (lines, receiver) = mpsc::channel(LINE_BUFFER);
        let _ = self.requests.send(Request::Chat {
            prompt: prompt.into(),
            lines,
            keep_typeahead,
        });
        receiver
    }

    /// Changes the chat's prompt (the current room changed); the line being typed
    /// stays.
    pub fn set_prompt(&self, prompt: impl Into<String>) {
        let _ = self.requests.send(Request::SetPrompt(prompt.into()));
    }

    /// Asks a question in the chat (a password for `/password`): the next line is
    /// typed after `label`, unseen with `hidden`, kept out of the line history, and
    /// handed over like any chat line. Ctrl-C or Ctrl-D hands over an empty line,
    /// which cancels, instead of leaving the chat. Lines stay answers, typed unseen,
    /// until [`Ui::chat_questions_over`]; a line that
    /// [asks questions](super::commands::asks_questions) starts that at once, so keys
    /// typed right behind it are never shown.
    pub fn chat_question(&self, label: impl Into<String>, hidden: bool) {
        let _ = self.requests.send(Request::ChatQuestion {
            label: label.into(),
            hidden,
        });
    }

    /// The questions asked in the chat are over: lines are chat again.
    pub fn chat_questions_over(&self) {
        let _ = self.requests.send(Request::ChatQuestionsOver);
    }

    /// Ends the chat's input as Ctrl-D would (a signal asked to quit).
    pub fn end_chat(&self) {
        let _ = self.requests.send(Request::EndChat);
    }

    /// Clears the line being typed, leaves raw mode and stops the task.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.requests.send(Request::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }
}

/// What the keyboard is feeding.
enum Mode {
    Idle,
    Asking {
        label: String,
        hidden: bool,
        reply: oneshot::Sender<Answer>,
    },
    Chatting {
        prompt: String,
        lines: mpsc::Sender<String>,
        /// Questions asked in the chat: the label and whether the answer is hidden.
        /// Lines are answers until the session says the questions are over.
        question: Option<(String, bool)>,
    },
}

/// The terminal task's state.
struct Screen {
    out: io::Stdout,
    columns: usize,
    mode: Mode,
    /// Keys not yet taken: typed ahead of a question, or while none is open.
    typeahead: VecDeque<Key>,
    editor: LineEditor,
    interrupts: mpsc::UnboundedSender<()>,
    input_closed: bool,
    _raw: RawMode,
}

impl Screen {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<Request>,
        mut input: mpsc::UnboundedReceiver<Vec<u8>>,
        mut winch: Option<tokio::signal::unix::Signal>,
    ) {
        let mut decoder = KeyDecoder::new();
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(Request::Close(done)) => {
                        self.close();
                        let _ = done.send(());
                        return;
                    }
                    Some(request) => self.on_request(request).await,
                    None => {
                        self.close();
                        return;
                    }
                },
                bytes = input.recv(), if !self.input_closed => match bytes {
                    Some(bytes) => {
                        self.typeahead.extend(decoder.feed(&bytes));
                        self.take_keys().await;
                    }
                    None => {
                        self.input_closed = true;
                        self.take_keys().await;
                    }
                },
                Some(()) = async { match &mut winch { Some(w) => w.recv().await, None => None } } => {
                    self.columns = columns();
                    self.draw();
                }
            }
        }
    }

    async fn on_request(&mut self, request: Request) {
        match request {
            Request::Print(line) => {
                self.write(&format!("\r\x1b[K{line}\r\n"));
                self.draw();
            }
            Request::Ask {
                label,
                hidden,
                reply,
            } => {
                self.editor.clear();
                self.mode = Mode::Asking {
                    label,
                    hidden,
                    reply,
                };
                self.draw();
                self.take_keys().await;
            }
            Request::Chat {
                prompt,
                lines,
                keep_typeahead,
            } => {
                if !keep_typeahead && !self.typeahead.is_empty() {
                    self.typeahead.clear();
                    self.write("\r\x1b[KWhat was typed before the chat started was not sent.\r\n");
                }
                self.editor.clear();
                self.mode = Mode::Chatting {
                    prompt,
                    lines,
                    question: None,
                };
                self.draw();
                self.take_keys().await;
            }
            Request::SetPrompt(new) => {
                if let Mode::Chatting { prompt, .. } = &mut self.mode {
                    *prompt = new;
                    self.draw();
                }
            }
            Request::ChatQuestion { label, hidden } => {
                if let Mode::Chatting { question, .. } = &mut self.mode {
                    *question = Some((label, hidden));
                    self.editor.clear();
                    self.draw();
                }
            }
            Request::ChatQuestionsOver => {
                if let Mode::Chatting { question, .. } = &mut self.mode {
                    *question = None;
                    self.draw();
                }
            }
            Request::EndChat => {
                if matches!(self.mode, Mode::Chatting { .. }) {
                    self.leave_chat();
                }
            }
            Request::Close(_) => {}
        }
    }

    /// Feeds waiting keys to the open question or the chat editor.
    async fn take_keys(&mut self) {
        loop {
            if matches!(self.mode, Mode::Idle) {
                // Only Ctrl-C matters with nothing open: the caller may be waiting on
                // the network and the person wants out.
                if self.typeahead.front() == Some(&Key::Interrupt) {
                    self.typeahead.pop_front();
                    let _ = self.interrupts.send(());
                    continue;
                }
                return;
            }
            let Some(key) = self.typeahead.pop_front() else {
                if self.input_closed {
                    self.on_input_closed();
                }
                return;
            };
            let edit = self.editor.apply(key);
            self.on_edit(edit).await;
        }
    }

    async fn on_edit(&mut self, edit: Edit) {
        match (&mut self.mode, edit) {
            (_, Edit::Changed) => self.draw(),
            (_, Edit::Redraw) => {
                self.write("\x1b[2J\x1b[H");
                self.draw();
            }
            (Mode::Asking { .. }, edit) => {
                let answer = match edit {
                    Edit::Submit(line) => Answer::Line(line),
                    Edit::EndOfInput => Answer::EndOfInput,
                    _ => Answer::Interrupted,
                };
                // Leave the question and its visible answer on screen.
                self.write("\r\n");
                if let Mode::Asking { reply, .. } = std::mem::replace(&mut self.mode, Mode::Idle) {
                    let _ = reply.send(answer);
                }
            }
            (
                Mode::Chatting {
                    lines, question, ..
                },
                edit @ (Edit::Submit(_) | Edit::EndOfInput | Edit::Interrupt),
            ) if question.is_some() => {
                // An answer, or a cancel: an empty line. Never kept in the history.
                let answer = match edit {
                    Edit::Submit(line) => line,
                    _ => String::new(),
                };
                // The next question is drawn when the session asks it; until then
                // keys stay unseen.
                if let Some((label, hidden)) = question {
                    label.clear();
                    *hidden = true;
                }
                let lines = lines.clone();
                self.editor.clear();
                self.draw();
                let _ = lines.send(answer).await;
            }
            (
                Mode::Chatting {
                    lines, question, ..
                },
                Edit::Submit(line),
            ) => {
                if asks_questions(&line) {
                    *question = Some((String::new(), true));
                }
                self.editor.remember(&line);
                let lines = lines.clone();
                // The line shows when the server echoes it: no copy stays behind.
                self.draw();
                if let Err(mpsc::error::TrySendError::Full(line)) = lines.try_send(line) {
                    let _ = lines.send(line).await;
                }
            }
            (Mode::Chatting { .. }, _) => self.leave_chat(),
            (Mode::Idle, _) => {}
        }
    }

    /// The terminal closed: an open question is answered with end of input, the chat's
    /// input ends.
    fn on_input_closed(&mut self) {
        match std::mem::replace(&mut self.mode, Mode::Idle) {
            Mode::Asking { reply, .. } => {
                let _ = reply.send(Answer::EndOfInput);
            }
            Mode::Chatting { .. } => self.write("\r\x1b[K"),
            Mode::Idle => {}
        }
    }

    /// Ends the chat's input: the session sees the channel close and quits.
    fn leave_chat(&mut self) {
        self.mode = Mode::Idle;
        self.editor.clear();
        self.write("\r\x1b[K");
    }

    /// Draws the open question or the chat's line on the current row.
    fn draw(&mut self) {
        let drawn = match &self.mode {
            Mode::Idle => return,
            Mode::Asking { label, hidden, .. } => self.editor.render(label, *hidden, self.columns),
            Mode::Chatting {
                question: Some((label, hidden)),
                ..
            } => self.editor.render(label, *hidden, self.columns),
            Mode::Chatting { prompt, .. } => self.editor.render(prompt, false, self.columns),
        };
        self.write(&drawn);
    }

    fn close(&mut self) {
        if let Mode::Asking { reply, .. } = std::mem::replace(&mut self.mode, Mode::Idle) {
            let _ = reply.send(Answer::EndOfInput);
        }
        self.write(&format!("\r\x1b[K{BRACKETED_PASTE_OFF}"));
    }

    fn write(&mut self, text: &str) {
        let mut out = self.out.lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

/// Reads stdin on its own thread (a read blocks) and hands over whatever each read
/// returns, whole; the channel closes at end of input or on an error.
fn spawn_reader() -> mpsc::UnboundedReceiver<Vec<u8>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: read(2) writes at most `buf.len()` bytes into the buffer we own.
            let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 || tx.send(buf[..n as usize].to_vec()).is_err() {
                return;
            }
        }
    });
    rx
}

/// The terminal's width in columns.
fn columns() -> usize {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        // SAFETY: TIOCGWINSZ writes only into the winsize we own.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0 && size.ws_col > 0 {
            return usize::from(size.ws_col);
        }
    }
    DEFAULT_COLUMNS
}

/// The terminal settings at start, put back at the end whatever happened between.
pub struct SavedTerminal(libc::termios);

impl SavedTerminal {
    pub fn capture() -> Option<SavedTerminal> {
        // SAFETY: tcgetattr writes only into the termios we own.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        (unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut termios) } == 0)
            .then_some(SavedTerminal(termios))
    }

    pub fn restore(&self) {
        // SAFETY: tcsetattr only reads the termios we pass.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0) };
    }
}

/// Raw input: keys one by one, no echo, no kernel line editing, no signals from keys
/// (Ctrl-C arrives as a key, so the settings are always restored), no flow control.
/// Output processing stays on. Restored on drop.
struct RawMode(SavedTerminal);

impl RawMode {
    fn enable() -> io::Result<RawMode> {
        let saved = SavedTerminal::capture().ok_or_else(io::Error::last_os_error)?;
        let mut raw = saved.0;
        raw.c_iflag &= !(libc::BRKINT | libc::ICRNL | libc::INPCK | libc::ISTRIP | libc::IXON);
        raw.c_lflag &= !(libc::ECHO | libc::ICANON | libc::ISIG | libc::IEXTEN);
        raw.c_cflag |= libc::CS8;
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: tcsetattr only reads the termios we pass.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.0.restore();
    }
}
