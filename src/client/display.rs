//! How server events read on screen, one line each: `[HH:MM:SS] name: text` for a
//! message, `[HH:MM:SS] * name joined` for presence, and a human sentence for every
//! `auth_error` code.
//!
//! Both modes print these same lines, so a script reading stdout sees what a person
//! sees. Text from other users is made safe first: control characters (a newline, or an
//! escape sequence that would recolour or clear the terminal) are shown escaped, so a
//! message is always exactly one line.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::{AuthErrorCode, ChatMessage};

/// `[HH:MM:SS] name: text`, in local time.
pub fn message_line(message: &ChatMessage) -> String {
    format!(
        "[{}] {}: {}",
        clock(message.ts / 1000),
        printable(&message.from),
        printable(&message.text)
    )
}

/// `[HH:MM:SS] * name joined` (or `left`), stamped now.
pub fn presence_line(name: &str, joined: bool) -> String {
    let what = if joined { "joined" } else { "left" };
    format!("[{}] * {} {what}", clock(now_secs()), printable(name))
}

/// `* online (N): a, b, c`
pub fn who_line(users: &[String]) -> String {
    let names: Vec<String> = users.iter().map(|n| printable(n)).collect();
    format!("* online ({}): {}", names.len(), names.join(", "))
}

/// What `/help` prints.
pub const HELP: &str = "\
Type a line and press Enter to send it to everyone online.
Commands:
  /who     list who is online
  /help    show this help
  /quit    leave; the next start logs you in again without a password
  /logout  leave and forget this session (the next start asks for the password)
A line starting with '//' is sent as a message starting with '/'.";

/// A sentence for an `auth_error`, naming the account when that helps.
pub fn auth_error_sentence(code: AuthErrorCode, name: &str) -> String {
    let name = printable(name);
    match code {
        AuthErrorCode::UnknownUser => format!("There is no account named '{name}' on this server."),
        AuthErrorCode::BadPassword => format!("Wrong password for '{name}'."),
        AuthErrorCode::NameTaken => format!("The name '{name}' is already taken; choose another."),
        AuthErrorCode::InvalidToken => {
            "Your saved session is no longer valid (it expired, was revoked, or the server forgot its accounts); log in with your password.".to_string()
        }
        AuthErrorCode::InvalidName => {
            "A name is 1 to 32 letters, digits, '_', '-' or '.'.".to_string()
        }
        AuthErrorCode::InvalidPassword => "A password is 4 to 1024 bytes long.".to_string(),
        AuthErrorCode::RateLimited => {
            "Too many failed attempts from your address; wait a minute, then try again.".to_string()
        }
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`, ...), so it prints on one
/// line and cannot drive the terminal.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Seconds since the Unix epoch, now.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `HH:MM:SS` of a Unix time in the local time zone (UTC if it cannot be found).
pub fn clock(unix_secs: u64) -> String {
    let (h, m, s) = local_hms(unix_secs).unwrap_or_else(|| {
        let day = unix_secs % 86_400;
        (day / 3600, day / 60 % 60, day % 60)
    });
    format!("{h:02}:{m:02}:{s:02}")
}

/// Hour, minute and second of `unix_secs` in local time, from the C library.
fn local_hms(unix_secs: u64) -> Option<(u64, u64, u64)> {
    let time = libc::time_t::try_from(unix_secs).ok()?;
    // SAFETY: `localtime_r` only writes into the `tm` we own and reads `time`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::localtime_r(&time, &mut tm) };
    if result.is_null() {
        return None;
    }
    Some((tm.tm_hour as u64, tm.tm_min as u64, tm.tm_sec as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_one_timestamped_line() {
        let line = message_line(&ChatMessage {
            id: 1,
            from: "alice".into(),
            text: "hi\nthere\u{1b}[2J".into(),
            ts: 1_700_000_000_123,
        });
        assert!(line.starts_with('['), "{line}");
        assert_eq!(&line[3..4], ":");
        assert_eq!(&line[9..], "] alice: hi\\nthere\\u{1b}[2J");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn clock_is_two_digit_fields() {
        let c = clock(0);
        assert_eq!(c.len(), 8);
        assert!(c.chars().enumerate().all(|(i, ch)| if i == 2 || i == 5 {
            ch == ':'
        } else {
            ch.is_ascii_digit()
        }));
    }

    #[test]
    fn presence_and_who() {
        assert!(presence_line("bob", true).ends_with("] * bob joined"));
        assert!(presence_line("bob", false).ends_with("] * bob left"));
        assert_eq!(who_line(&["a".into(), "b".into()]), "* online (2): a, b");
    }

    #[test]
    fn every_auth_error_has_a_sentence() {
        use AuthErrorCode::*;
        for code in [
            UnknownUser,
            BadPassword,
            NameTaken,
            InvalidToken,
            InvalidName,
            InvalidPassword,
            RateLimited,
        ] {
            let sentence = auth_error_sentence(code, "zed");
            assert!(sentence.ends_with('.'), "{code:?}: {sentence}");
            let raw = serde_json::to_string(&code).unwrap();
            assert!(
                !sentence.contains(raw.trim_matches('"')),
                "no raw codes: {sentence}"
            );
        }
        assert!(auth_error_sentence(UnknownUser, "zed").contains("'zed'"));
    }
}
