//! Bytes from a terminal in raw mode, turned into keys.
//!
//! Whatever one read returns (a single key, a burst from a paste or `tmux send-keys`,
//! or half an escape sequence) is decoded completely: every key in it comes out at
//! once, and an incomplete tail waits for the next read. Text inside a bracketed paste
//! (`ESC [200~ ... ESC [201~`) is taken literally, its line breaks as Enter, so a
//! pasted line never runs a key binding. Plain data with no I/O, so bursts are tested
//! byte by byte.

/// One key, as the line editor understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Backspace,
    Delete,
    Left,
    Right,
    Up,
    Down,
    Home,
    End,
    WordLeft,
    WordRight,
    /// Ctrl-W, Alt-Backspace.
    DeleteWordBack,
    /// Ctrl-U.
    ClearToStart,
    /// Ctrl-K.
    ClearToEnd,
    /// Ctrl-D: end of input on an empty line, else delete under the cursor.
    EndOfInput,
    /// Ctrl-C.
    Interrupt,
    /// Ctrl-L.
    Redraw,
}

const ESC: u8 = 0x1b;
const PASTE_END: &[u8] = b"\x1b[201~";

/// Turns raw bytes into [`Key`]s, keeping incomplete sequences between reads.
#[derive(Debug, Default)]
pub struct KeyDecoder {
    pending: Vec<u8>,
    in_paste: bool,
    /// The last key was a carriage return, so a line feed right after it is the same
    /// Enter (`\r\n`).
    after_cr: bool,
}

impl KeyDecoder {
    pub fn new() -> Self {
        KeyDecoder::default()
    }

    /// Decodes `bytes` (with whatever an earlier read left incomplete) into keys.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Key> {
        self.pending.extend_from_slice(bytes);
        let mut keys = Vec::new();
        let mut at = 0;
        while at < self.pending.len() {
            let step = if self.in_paste {
                self.paste(at, &mut keys)
            } else {
                self.key(at, &mut keys)
            };
            match step {
                Some(used) => at += used,
                None => break,
            }
        }
        self.pending.drain(..at);
        keys
    }

    /// Decodes one key at `at`; how many bytes it took, `None` if they are incomplete.
    fn key(&mut self, at: usize, keys: &mut Vec<Key>) -> Option<usize> {
        let bytes = &self.pending[at..];
        let first = bytes[0];
        let was_after_cr = std::mem::replace(&mut self.after_cr, false);
        let simple = match first {
            b'\r' => {
                self.after_cr = true;
                Some(Key::Enter)
            }
            b'\n' if was_after_cr => None,
            b'\n' => Some(Key::Enter),
            0x7f | 0x08 => Some(Key::Backspace),
            0x01 => Some(Key::Home),
            0x05 => Some(Key::End),
            0x02 => Some(Key::Left),
            0x06 => Some(Key::Right),
            0x10 => Some(Key::Up),
            0x0e => Some(Key::Down),
            0x04 => Some(Key::EndOfInput),
            0x03 => Some(Key::Interrupt),
            0x15 => Some(Key::ClearToStart),
            0x0b => Some(Key::ClearToEnd),
            0x17 => Some(Key::DeleteWordBack),
            0x0c => Some(Key::Redraw),
            ESC => return self.escape(at, keys),
            b if b < 0x20 => None,
            _ => {
                let (c, used) = decode_utf8(bytes)?;
                keys.extend(c.map(Key::Char));
                return Some(used);
            }
        };
        keys.extend(simple);
        Some(1)
    }

    /// An escape sequence at `at`: CSI (`ESC [`), SS3 (`ESC O`) or Alt+key.
    fn escape(&mut self, at: usize, keys: &mut Vec<Key>) -> Option<usize> {
        let bytes = &self.pending[at..];
        let second = *bytes.get(1)?;
        match second {
            b'[' => {
                let body = &bytes[2..];
                let end = body.iter().position(|b| (0x40..=0x7e).contains(b))?;
                let params = &body[..end];
                let key = match (params, body[end]) {
                    (b"", b'A') => Some(Key::Up),
                    (b"", b'B') => Some(Key::Down),
                    (b"", b'C') => Some(Key::Right),
                    (b"", b'D') => Some(Key::Left),
                    (b"", b'H') | (b"1" | b"7", b'~') => Some(Key::Home),
                    (b"", b'F') | (b"4" | b"8", b'~') => Some(Key::End),
                    (b"3", b'~') => Some(Key::Delete),
                    (b"1;5" | b"1;3", b'C') => Some(Key::WordRight),
                    (b"1;5" | b"1;3", b'D') => Some(Key::WordLeft),
                    (b"200", b'~') => {
                        self.in_paste = true;
                        None
                    }
                    _ => None,
                };
                keys.extend(key);
                Some(2 + end + 1)
            }
            b'O' => {
                let third = *bytes.get(2)?;
                let key = match third {
                    b'A' => Some(Key::Up),
                    b'B' => Some(Key::Down),
                    b'C' => Some(Key::Right),
                    b'D' => Some(Key::Left),
                    b'H' => Some(Key::Home),
                    b'F' => Some(Key::End),
                    _ => None,
                };
                keys.extend(key);
                Some(3)
            }
            b'b' | b'B' => {
                keys.push(Key::WordLeft);
                Some(2)
            }
            b'f' | b'F' => {
                keys.push(Key::WordRight);
                Some(2)
            }
            0x7f | 0x08 => {
                keys.push(Key::DeleteWordBack);
                Some(2)
            }
            // A lone Escape before another key: ignore the Escape, keep the key.
            _ => Some(1),
        }
    }

    /// Text inside a bracketed paste, up to its end marker.
    fn paste(&mut self, at: usize, keys: &mut Vec<Key>) -> Option<usize> {
        let bytes = &self.pending[at..];
        if bytes.starts_with(PASTE_END) {
            self.in_paste = false;
            self.after_cr = false;
            return Some(PASTE_END.len());
        }
        if bytes[0] == ESC {
            if PASTE_END.starts_with(bytes) {
                return None; // maybe the end marker, cut by the read
            }
            return Some(1); // an escape inside pasted text is dropped
        }
        let was_after_cr = std::mem::replace(&mut self.after_cr, false);
        match bytes[0] {
            b'\r' => {
                self.after_cr = true;
                keys.push(Key::Enter);
                Some(1)
            }
            b'\n' => {
                if !was_after_cr {
                    keys.push(Key::Enter);
                }
                Some(1)
            }
            b'\t' => {
                keys.push(Key::Char(' '));
                Some(1)
            }
            b if b < 0x20 || b == 0x7f => Some(1),
            _ => {
                let (c, used) = decode_utf8(bytes)?;
                keys.extend(c.map(Key::Char));
                Some(used)
            }
        }
    }
}

/// The UTF-8 character at the start of `bytes`: `None` if incomplete, `(None, 1)` for a
/// byte that cannot start one (dropped), `(Some(c), len)` otherwise.
fn decode_utf8(bytes: &[u8]) -> Option<(Option<char>, usize)> {
    let len = match bytes[0] {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return Some((None, 1)),
    };
    if bytes.len() < len {
        // Incomplete, unless what is there already cannot continue it.
        if bytes[1..].iter().any(|b| b & 0xc0 != 0x80) {
            return Some((None, 1));
        }
        return None;
    }
    match std::str::from_utf8(&bytes[..len]) {
        Ok(s) => Some((s.chars().next(), len)),
        Err(_) => Some((None, 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Key::*;

    fn decode(chunks: &[&[u8]]) -> Vec<Key> {
        let mut decoder = KeyDecoder::new();
        chunks.iter().flat_map(|c| decoder.feed(c)).collect()
    }

    fn chars(text: &str) -> Vec<Key> {
        text.chars().map(Char).collect()
    }

    #[test]
    fn a_burst_gives_every_key_at_once() {
        let mut want = chars("hi");
        want.push(Enter);
        want.extend(chars("yo"));
        want.push(Enter);
        assert_eq!(decode(&[b"hi\ryo\r"]), want);
        assert_eq!(decode(&[b"hi\r\nyo\n"]), want, "\\r\\n is one Enter");
        assert_eq!(decode(&[b"hi\r", b"\nyo\n"]), want, "even across reads");
    }

    #[test]
    fn escape_sequences_even_when_cut_by_a_read() {
        assert_eq!(
            decode(&[b"\x1b[A\x1b[B\x1b[C\x1b[D\x1bOH\x1b[F\x1b[3~"]),
            vec![Up, Down, Right, Left, Home, End, Delete]
        );
        assert_eq!(decode(&[b"\x1b", b"[", b"1;5", b"C"]), vec![WordRight]);
        assert_eq!(
            decode(&[b"\x1b[99Zx"]),
            vec![Char('x')],
            "unknown CSI dropped"
        );
        assert_eq!(decode(&[b"\x1bx"]), vec![Char('x')], "lone escape dropped");
    }

    #[test]
    fn utf8_split_across_reads() {
        let e = "é🎉".as_bytes();
        assert_eq!(decode(&[&e[..1], &e[1..3], &e[3..]]), chars("é🎉"));
        assert_eq!(decode(&[b"\xffa"]), chars("a"), "junk byte dropped");
        assert_eq!(decode(&[b"\xc3a"]), chars("a"), "broken sequence dropped");
    }

    #[test]
    fn control_keys() {
        assert_eq!(
            decode(&[b"\x01\x05\x04\x03\x15\x0b\x17\x0c\x7f\x08\x07"]),
            vec![
                Home,
                End,
                EndOfInput,
                Interrupt,
                ClearToStart,
                ClearToEnd,
                DeleteWordBack,
                Redraw,
                Backspace,
                Backspace
            ]
        );
    }

    #[test]
    fn a_bracketed_paste_is_literal_text_with_lines() {
        let mut want = chars("a");
        want.push(Enter);
        want.extend(chars("b c"));
        want.push(Enter);
        want.extend(chars("d"));
        assert_eq!(decode(&[b"\x1b[200~a\r\nb\tc\n\x03d\x1b[201~"]), want);
        // The end marker cut by a read, and keys after it work again.
        let mut want = chars("xy");
        want.push(Interrupt);
        assert_eq!(decode(&[b"\x1b[200~x", b"y\x1b[2", b"01~\x03"]), want);
    }
}
