//! How server events read on screen, one line each: `[HH:MM:SS] name: text` for a
//! message in the current room (with the date when it is not from today),
//! `[HH:MM:SS] #room name: text` for one in another room, `[HH:MM:SS] (direct) name:
//! text` for a direct message, `[HH:MM:SS] * name joined` for presence, and a human
//! sentence for every `auth_error` code.
//!
//! Both modes print these same lines, so a script reading stdout sees what a person
//! sees. Every string that comes from the server goes through [`printable`] before it
//! reaches a terminal, so a message is always exactly one line and cannot drive the
//! terminal, reorder text or hide characters.

use std::time::{SystemTime, UNIX_EPOCH};

use super::queue::{Outgoing, Target};
use crate::auth::{name_key, MAX_NAME_CHARS, MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES};
use crate::protocol::{AuthErrorCode, ChatMessage, ErrorCode, RoomInfo, LOBBY};

/// `[HH:MM:SS] name: text` in local time, `[YYYY-MM-DD HH:MM:SS] ...` when the message
/// is from another day than today.
pub fn message_line(message: &ChatMessage) -> String {
    format!(
        "[{}] {}: {}",
        stamp(message.ts / 1000, now_secs()),
        printable(&message.from),
        printable(&message.text)
    )
}

/// A message as the user sees it while `current_room` is the room typed lines go to:
/// unmarked in the current room, `#room` in front of the sender's name in another,
/// `(direct)` for a direct message received and `(direct to NAME)` for one we sent.
pub fn chat_line(message: &ChatMessage, me: &str, current_room: &str) -> String {
    let marker = match (&message.to, &message.room) {
        (Some(to), _) if name_key(&message.from) == name_key(me) => {
            format!("(direct to {}) ", printable(to))
        }
        (Some(_), _) => "(direct) ".to_string(),
        (None, room) => {
            let room = room.as_deref().unwrap_or(LOBBY);
            if name_key(room) == name_key(current_room) {
                String::new()
            } else {
                format!("{} ", room_label(room))
            }
        }
    };
    format!(
        "[{}] {marker}{}: {}",
        stamp(message.ts / 1000, now_secs()),
        printable(&message.from),
        printable(&message.text)
    )
}

/// `#room`, escaped.
pub fn room_label(room: &str) -> String {
    format!("#{}", printable(room))
}

/// `[HH:MM:SS] * name joined #room` (or `left`), stamped now: membership of a room.
pub fn member_line(room: &str, name: &str, joined: bool) -> String {
    let what = if joined { "joined" } else { "left" };
    format!(
        "[{}] * {} {what} {}",
        clock(now_secs()),
        printable(name),
        room_label(room)
    )
}

/// The answer to `/rooms`: a line of count, then one per room.
pub fn rooms_lines(rooms: &[RoomInfo], current_room: &str) -> Vec<String> {
    let mut lines = vec![format!("* rooms ({}):", rooms.len())];
    for info in rooms {
        let members = match info.members {
            1 => "1 member".to_string(),
            n => format!("{n} members"),
        };
        let mine = if name_key(&info.room) == name_key(current_room) {
            ", you are in it (current)"
        } else if info.member {
            ", you are in it"
        } else {
            ""
        };
        lines.push(format!("  {}  {members}{mine}", room_label(&info.room)));
    }
    lines
}

/// `[HH:MM:SS] * name joined` (or `left`), stamped now.
pub fn presence_line(name: &str, joined: bool) -> String {
    let what = if joined { "joined" } else { "left" };
    format!("[{}] * {} {what}", clock(now_secs()), printable(name))
}

/// `* online (N): a, b, c`, or `* online in #room (N): ...` for a room other than the
/// lobby.
pub fn who_line(room: Option<&str>, users: &[String]) -> String {
    let names: Vec<String> = users.iter().map(|n| printable(n)).collect();
    let place = match room {
        Some(room) if name_key(room) != name_key(LOBBY) => format!(" in {}", room_label(room)),
        _ => String::new(),
    };
    format!("* online{place} ({}): {}", names.len(), names.join(", "))
}

/// The rule for names, as a sentence.
pub fn name_rule() -> String {
    format!("A name is 1 to {MAX_NAME_CHARS} letters, digits, '_', '-' or '.'.")
}

/// The rule for passwords, as a sentence.
pub fn password_rule() -> String {
    format!("A password is {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes long.")
}

/// A sentence for an `auth_error`, naming the account when that helps; `message` is
/// the server's, shown (escaped) where it carries something the code does not: the
/// reason of a ban.
pub fn auth_error_sentence(code: AuthErrorCode, name: &str, message: &str) -> String {
    let name = printable(name);
    match code {
        AuthErrorCode::UnknownUser => format!("There is no account named '{name}' on this server."),
        AuthErrorCode::BadPassword => format!("Wrong password for '{name}'."),
        AuthErrorCode::NameTaken => format!("The name '{name}' is already taken; choose another."),
        AuthErrorCode::InvalidToken => {
            "The saved session token was refused (it expired, was revoked, or the server forgot its accounts); log in with your password.".to_string()
        }
        AuthErrorCode::InvalidName => name_rule(),
        AuthErrorCode::InvalidPassword => password_rule(),
        AuthErrorCode::RateLimited => {
            "Too many failed attempts from your address; wait a minute, then try again.".to_string()
        }
        AuthErrorCode::Banned if message.trim().is_empty() => {
            format!("The account '{name}' is banned from this server.")
        }
        AuthErrorCode::Banned => format!(
            "The account '{name}' is banned from this server; the reason given: {}",
            printable(message)
        ),
        AuthErrorCode::Unavailable => {
            "The server cannot check accounts right now; try again in a moment.".to_string()
        }
    }
}

/// A sentence for an `error` frame that refused `request`; `message` is the server's
/// own explanation, shown (escaped) where the code alone does not say enough.
pub fn refusal_sentence(request: &Outgoing, code: ErrorCode, message: &str) -> String {
    let server_says = printable(message);
    let unavailable = "the server cannot reach its storage right now; try again in a moment";
    match request {
        Outgoing::Say { text, target } => {
            let why = match (code, target) {
                (ErrorCode::NotMember, Target::Room(room)) => format!(
                    "you are not a member of {} (/join {} first)",
                    room_label(room),
                    printable(room)
                ),
                (ErrorCode::UnknownRoom, Target::Room(room)) => {
                    format!("there is no room {}", room_label(room))
                }
                (ErrorCode::UnknownUser, Target::User(user)) => {
                    format!("there is no account named '{}'", printable(user))
                }
                (_, Target::Here) => server_says,
                (ErrorCode::Unavailable, _) => unavailable.to_string(),
                _ => server_says,
            };
            format!("Not sent ('{}'): {why}.", printable(text))
        }
        Outgoing::Join(room) => format!("Cannot join {}: {server_says}", room_label(room)),
        Outgoing::Part(room) | Outgoing::Who { room } | Outgoing::Page { room, .. } => {
            let label = room_label(room.as_deref().unwrap_or(LOBBY));
            match code {
                ErrorCode::UnknownRoom => format!("There is no room {label}."),
                ErrorCode::NotMember => format!("You are not a member of {label}."),
                ErrorCode::Unavailable => format!("Cannot do that: {unavailable}."),
                _ => format!("The server refused: {server_says}"),
            }
        }
        Outgoing::ChangePassword { .. } => match code {
            ErrorCode::BadPassword => {
                "Wrong current password; your password was not changed.".to_string()
            }
            ErrorCode::InvalidPassword => {
                format!("{} Your password was not changed.", password_rule())
            }
            ErrorCode::RateLimited => {
                "Too many wrong passwords; wait a minute, then try again. Your password was not changed.".to_string()
            }
            ErrorCode::Unavailable => {
                format!("Your password was not changed: {unavailable}.")
            }
            _ => format!("Your password was not changed: {server_says}"),
        },
        Outgoing::DeleteAccount(_) => match code {
            ErrorCode::BadPassword => "Wrong password; the account was not deleted.".to_string(),
            ErrorCode::RateLimited => {
                "Too many wrong passwords; wait a minute, then try again. The account was not deleted.".to_string()
            }
            ErrorCode::Unavailable => format!("The account was not deleted: {unavailable}."),
            _ => format!("The account was not deleted: {server_says}"),
        },
        Outgoing::Rooms | Outgoing::Quit | Outgoing::Logout => {
            match code {
                ErrorCode::Unavailable => format!("Cannot do that: {unavailable}."),
                _ => format!("The server refused: {server_says}"),
            }
        }
    }
}

/// `text` safe for a terminal: control characters (`\n`, `\u{1b}`, ...), bidi
/// controls, line and paragraph separators, and zero-width or otherwise invisible
/// characters are shown escaped, so the text prints on one line, cannot drive the
/// terminal, and reads in the order it was written.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else if is_invisible(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that change how the text around them is shown, or show as nothing:
/// bidi embeddings, overrides, isolates and marks, line and paragraph separators,
/// zero-width spaces and joiners, word joiners and invisible operators, the byte
/// order mark, soft hyphen, Hangul fillers, interlinear annotation and tag characters.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
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
    let t = local_time(unix_secs);
    format!("{:02}:{:02}:{:02}", t.hour, t.minute, t.second)
}

/// [`clock`], with the date in front when `unix_secs` falls on another local day than
/// `now_secs`.
pub fn stamp(unix_secs: u64, now_secs: u64) -> String {
    let t = local_time(unix_secs);
    let today = local_time(now_secs);
    if (t.year, t.month, t.day) == (today.year, today.month, today.day) {
        clock(unix_secs)
    } else {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        )
    }
}

/// A broken-down local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LocalTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

/// `unix_secs` in the local time zone, from the C library; UTC when that fails.
fn local_time(unix_secs: u64) -> LocalTime {
    from_libc(unix_secs).unwrap_or_else(|| utc(unix_secs))
}

fn from_libc(unix_secs: u64) -> Option<LocalTime> {
    let time = libc::time_t::try_from(unix_secs).ok()?;
    // SAFETY: `localtime_r` only writes into the `tm` we own and reads `time`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::localtime_r(&time, &mut tm) };
    if result.is_null() {
        return None;
    }
    let field = |v: libc::c_int| u32::try_from(v).ok();
    Some(LocalTime {
        year: i64::from(tm.tm_year) + 1900,
        month: field(tm.tm_mon)? + 1,
        day: field(tm.tm_mday)?,
        hour: field(tm.tm_hour)?,
        minute: field(tm.tm_min)?,
        second: field(tm.tm_sec)?,
    })
}

/// UTC broken down without the C library (days to civil date, Howard Hinnant's method).
fn utc(unix_secs: u64) -> LocalTime {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    LocalTime {
        year,
        month,
        day,
        hour: (secs / 3600) as u32,
        minute: (secs / 60 % 60) as u32,
        second: (secs % 60) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_one_timestamped_line() {
        let line = message_line(&ChatMessage {
            room: None,
            to: None,
            id: 1,
            from: "alice".into(),
            text: "hi\nthere\u{1b}[2J".into(),
            ts: now_secs() * 1000,
        });
        assert!(line.starts_with('['), "{line}");
        assert_eq!(&line[3..4], ":");
        assert_eq!(&line[9..], "] alice: hi\\nthere\\u{1b}[2J");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn lines_from_elsewhere_are_marked() {
        let at = |room: Option<&str>, to: Option<&str>, from: &str| ChatMessage {
            room: room.map(str::to_string),
            to: to.map(str::to_string),
            id: 1,
            from: from.into(),
            text: "hi".into(),
            ts: now_secs() * 1000,
        };
        let line = |m: &ChatMessage, current: &str| chat_line(m, "me", current)[11..].to_string();
        assert_eq!(line(&at(None, None, "bob"), "lobby"), "bob: hi");
        assert_eq!(line(&at(Some("Lobby"), None, "bob"), "LOBBY"), "bob: hi");
        assert_eq!(line(&at(None, None, "bob"), "rust"), "#lobby bob: hi");
        assert_eq!(line(&at(Some("rust"), None, "bob"), "Rust"), "bob: hi");
        assert_eq!(line(&at(Some("go"), None, "bob"), "rust"), "#go bob: hi");
        assert_eq!(
            line(&at(None, Some("me"), "bob"), "lobby"),
            "(direct) bob: hi"
        );
        assert_eq!(
            line(&at(None, Some("bob"), "me"), "lobby"),
            "(direct to bob) me: hi"
        );
        assert_eq!(
            line(&at(Some("a\u{202e}b"), None, "bob"), "lobby"),
            "#a\\u{202e}b bob: hi"
        );
    }

    #[test]
    fn refusals_read_as_sentences() {
        let say = |target| Outgoing::Say {
            text: "hi".into(),
            target,
        };
        let room = || Target::Room("rust".into());
        assert_eq!(
            refusal_sentence(&say(room()), ErrorCode::NotMember, "x"),
            "Not sent ('hi'): you are not a member of #rust (/join rust first)."
        );
        assert_eq!(
            refusal_sentence(
                &say(Target::User("zed".into())),
                ErrorCode::UnknownUser,
                "x"
            ),
            "Not sent ('hi'): there is no account named 'zed'."
        );
        assert_eq!(
            refusal_sentence(
                &Outgoing::Part(Some("go".into())),
                ErrorCode::UnknownRoom,
                "x"
            ),
            "There is no room #go."
        );
        let hostile = refusal_sentence(
            &Outgoing::Join("r".into()),
            ErrorCode::BadRequest,
            "\u{1b}[2J",
        );
        assert!(!hostile.contains('\u{1b}'), "{hostile}");
        assert!(refusal_sentence(&say(room()), ErrorCode::Unavailable, "x").contains("try again"));
    }

    #[test]
    fn the_rooms_list_says_which_are_yours() {
        let info = |room: &str, members, member| RoomInfo {
            room: room.into(),
            members,
            member,
        };
        let lines = rooms_lines(
            &[
                info("lobby", 3, true),
                info("Rust", 1, true),
                info("go", 2, false),
            ],
            "rust",
        );
        assert_eq!(
            lines,
            [
                "* rooms (3):",
                "  #lobby  3 members, you are in it",
                "  #Rust  1 member, you are in it (current)",
                "  #go  2 members",
            ]
        );
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
        assert_eq!(
            who_line(None, &["a".into(), "b".into()]),
            "* online (2): a, b"
        );
        assert_eq!(who_line(Some("Lobby"), &["a".into()]), "* online (1): a");
        assert_eq!(
            who_line(Some("rust"), &["a".into()]),
            "* online in #rust (1): a"
        );
        assert!(member_line("rust", "bob", true).ends_with("] * bob joined #rust"));
        assert!(member_line("r\u{1b}", "bob", false).ends_with("] * bob left #r\\u{1b}"));
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
            Banned,
            Unavailable,
        ] {
            let sentence = auth_error_sentence(code, "zed", "");
            assert!(sentence.ends_with('.'), "{code:?}: {sentence}");
            // A code that is no plain word ("banned" is one) never shows.
            let raw = serde_json::to_string(&code).unwrap();
            assert!(
                !raw.contains('_') || !sentence.contains(raw.trim_matches('"')),
                "no raw codes: {sentence}"
            );
        }
        assert!(auth_error_sentence(UnknownUser, "zed", "").contains("'zed'"));
        assert!(auth_error_sentence(InvalidName, "", "").contains(&MAX_NAME_CHARS.to_string()));
        let banned = auth_error_sentence(Banned, "zed", "spam\u{1b}[2J");
        assert!(banned.contains("banned"), "{banned}");
        assert!(
            banned.contains("spam\\u{1b}[2J"),
            "the reason, escaped: {banned}"
        );
    }

    #[test]
    fn invisible_and_reordering_characters_are_escaped() {
        let shown =
            printable("a\u{202e}b\u{2028}c\u{200b}d\u{2066}e\u{feff}f\u{1b}]0;x\u{7}\u{85}");
        assert_eq!(
            shown,
            "a\\u{202e}b\\u{2028}c\\u{200b}d\\u{2066}e\\u{feff}f\\u{1b}]0;x\\u{7}\\u{85}"
        );
        assert_eq!(printable("Zoë 名前 🎉"), "Zoë 名前 🎉");
    }

    #[test]
    fn a_stamp_has_the_date_only_for_another_day() {
        let noon = 1_700_000_000;
        assert_eq!(stamp(noon, noon + 60).len(), 8);
        let old = stamp(1_592_222_400, noon);
        assert!(old.starts_with("2020-06-1"), "{old}");
        assert_eq!(old.len(), "2020-06-15 12:00:00".len());
    }

    #[test]
    fn utc_fallback_knows_the_calendar() {
        let t = utc(1_592_222_400);
        assert_eq!((t.year, t.month, t.day, t.hour), (2020, 6, 15, 12));
        let t = utc(951_782_400); // 2000-02-29
        assert_eq!((t.year, t.month, t.day), (2000, 2, 29));
    }
}
