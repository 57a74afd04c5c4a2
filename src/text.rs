//! Text from outside (the network, the disk, a console) made safe to show.
//!
//! A string a client sent can hold a newline that forges a second log line, a carriage
//! return or an escape sequence that redraws the admin's terminal, or bidi controls that
//! make one name read as another. Everything such a string passes through on its way to
//! a log, a console or a terminal goes through [`escape`] (or [`excerpt`], which also
//! bounds it), so one event is always one line and shows what was really sent.
//!
//! The character classes here are also what name rules are built on (`names`).

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters of Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties,
/// Unicode 15): invisible in normal rendering, so they can hide inside a name or a
/// message. Zero-width spaces and joiners, bidi controls, variation selectors, the
/// Hangul fillers and the tag characters are among them.
const DEFAULT_IGNORABLE: &[(char, char)] = &[
    ('\u{ad}', '\u{ad}'),
    ('\u{34f}', '\u{34f}'),
    ('\u{61c}', '\u{61c}'),
    ('\u{115f}', '\u{1160}'),
    ('\u{17b4}', '\u{17b5}'),
    ('\u{180b}', '\u{180f}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{202a}', '\u{202e}'),
    ('\u{2060}', '\u{206f}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{fe00}', '\u{fe0f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{ffa0}', '\u{ffa0}'),
    ('\u{fff0}', '\u{fff8}'),
    ('\u{1bca0}', '\u{1bca3}'),
    ('\u{1d173}', '\u{1d17a}'),
    ('\u{e0000}', '\u{e0fff}'),
];

/// Whether `c` is default-ignorable (invisible), see [`DEFAULT_IGNORABLE`].
pub fn is_default_ignorable(c: char) -> bool {
    DEFAULT_IGNORABLE
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Whether `c` is a bidirectional formatting character (Bidi_Control): these reorder
/// the text around them, so `alice\u{202e}ecila` can display as something else.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// Whether `c` must not reach a log line or a terminal as it is: control characters
/// (C0, DEL, C1 — U+0085 among them), the line and paragraph separators, and every
/// invisible or bidi character.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}')
        || is_default_ignorable(c)
        || is_bidi_control(c)
}

/// `s` with every [unsafe](is_unsafe) character written as `\u{XXXX}`; borrowed when
/// there is nothing to escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    if is_unsafe(c) {
        let _ = write!(out, "\\u{{{:04x}}}", c as u32);
    } else {
        out.push(c);
    }
}

/// At most `max_chars` characters of `s`, [escaped](escape), with a note of how much
/// was left out: what a log line quotes of a client's string.
pub fn excerpt(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars * 2) + 8);
    let mut chars = s.chars();
    for c in chars.by_ref().take(max_chars) {
        push_escaped(&mut out, c);
    }
    let rest = chars.count();
    if rest > 0 {
        let _ = write!(out, "…(+{rest} chars)");
    }
    out
}

/// How much of a client's string a log line quotes.
pub const LOG_EXCERPT_CHARS: usize = 80;

/// [`excerpt`] with the log's length: for quoting anything a client sent.
pub fn quote(s: &str) -> String {
    excerpt(s, LOG_EXCERPT_CHARS)
}

/// `n` and the noun that goes with it: `1 connection`, `2 connections`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(escape("héllo wörld 名前 ✓"), Cow::Borrowed(_)));
    }

    #[test]
    fn line_breaks_controls_and_invisibles_are_escaped() {
        assert_eq!(escape("a\nb"), "a\\u{000a}b");
        assert_eq!(escape("a\rb"), "a\\u{000d}b");
        assert_eq!(escape("\u{1b}[2J"), "\\u{001b}[2J");
        assert_eq!(escape("x\u{85}y"), "x\\u{0085}y");
        assert_eq!(escape("x\u{2028}y\u{2029}"), "x\\u{2028}y\\u{2029}");
        assert_eq!(escape("al\u{202e}ice"), "al\\u{202e}ice");
        assert_eq!(escape("a\u{200b}b"), "a\\u{200b}b");
        assert_eq!(escape("\u{3164}"), "\\u{3164}");
        assert_eq!(escape("\u{7f}"), "\\u{007f}");
        assert_eq!(escape("tag\u{e0041}"), "tag\\u{e0041}");
    }

    #[test]
    fn excerpt_bounds_and_says_what_it_cut() {
        assert_eq!(excerpt("abc", 5), "abc");
        assert_eq!(excerpt("abcdef", 3), "abc…(+3 chars)");
        assert_eq!(excerpt("a\nbc", 2), "a\\u{000a}…(+2 chars)");
        let long = "x".repeat(100_000);
        assert!(quote(&long).len() < 120);
    }

    #[test]
    fn counts_read_well() {
        assert_eq!(plural(1, "user", "users"), "1 user");
        assert_eq!(plural(0, "user", "users"), "0 users");
        assert_eq!(plural(2, "copy", "copies"), "2 copies");
    }

    #[test]
    fn classes() {
        for c in [
            '\u{ad}',
            '\u{200d}',
            '\u{2066}',
            '\u{feff}',
            '\u{ffa0}',
            '\u{e01ef}',
        ] {
            assert!(is_default_ignorable(c), "{c:?}");
        }
        for c in ['a', 'é', '名', '-', ' ', '\u{2800}'] {
            assert!(!is_default_ignorable(c), "{c:?}");
        }
        assert!(is_bidi_control('\u{200f}'));
        assert!(!is_bidi_control('\u{200b}'));
    }
}
