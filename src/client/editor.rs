//! The line being typed: its text, the cursor, earlier lines to recall, and how it is
//! drawn.
//!
//! The line is drawn on one terminal row and scrolls sideways when it is longer than
//! the row, so the editor never has to know how the terminal wrapped or re-flowed
//! earlier output: redrawing is "go to the start of this row, write, clear the rest",
//! which cannot touch a chat line above it, whatever the window's width did. Plain
//! data, tested without a terminal.

use unicode_width::UnicodeWidthChar;

use super::keys::Key;

/// Lines kept for Up/Down.
const HISTORY_LEN: usize = 500;

/// Narrowest room for the text itself; below it the prompt is not drawn.
const MIN_TEXT_COLUMNS: usize = 8;

/// What a key did to the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// The line changed or the cursor moved: draw it again.
    Changed,
    /// Enter: the finished line.
    Submit(String),
    /// Ctrl-D on an empty line.
    EndOfInput,
    /// Ctrl-C.
    Interrupt,
    /// Ctrl-L: clear the screen and draw again.
    Redraw,
}

/// A line editor.
#[derive(Debug, Default)]
pub struct LineEditor {
    text: Vec<char>,
    cursor: usize,
    /// First character shown, when the line is wider than the row.
    scroll: usize,
    history: Vec<String>,
    /// Position while walking the history with Up/Down, and the draft it left.
    recalled: Option<(usize, Vec<char>)>,
}

impl LineEditor {
    pub fn new() -> Self {
        LineEditor::default()
    }

    /// The text typed so far.
    pub fn text(&self) -> String {
        self.text.iter().collect()
    }

    /// Applies one key.
    pub fn apply(&mut self, key: Key) -> Edit {
        match key {
            Key::Char(c) => {
                if c.width().is_some() {
                    self.text.insert(self.cursor, c);
                    self.cursor += 1;
                }
            }
            Key::Enter => {
                let line = self.text();
                self.clear();
                return Edit::Submit(line);
            }
            Key::Backspace => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    self.text.remove(self.cursor);
                }
            }
            Key::Delete => self.delete_under_cursor(),
            Key::EndOfInput if self.text.is_empty() => return Edit::EndOfInput,
            Key::EndOfInput => self.delete_under_cursor(),
            Key::Interrupt => return Edit::Interrupt,
            Key::Redraw => return Edit::Redraw,
            Key::Left => self.cursor = self.cursor.saturating_sub(1),
            Key::Right => self.cursor = (self.cursor + 1).min(self.text.len()),
            Key::Home => self.cursor = 0,
            Key::End => self.cursor = self.text.len(),
            Key::WordLeft => self.cursor = self.word_start(),
            Key::WordRight => {
                let is_space = |i: usize| self.text[i].is_whitespace();
                let mut at = self.cursor;
                while at < self.text.len() && is_space(at) {
                    at += 1;
                }
                while at < self.text.len() && !is_space(at) {
                    at += 1;
                }
                self.cursor = at;
            }
            Key::DeleteWordBack => {
                let start = self.word_start();
                self.text.drain(start..self.cursor);
                self.cursor = start;
            }
            Key::ClearToStart => {
                self.text.drain(..self.cursor);
                self.cursor = 0;
            }
            Key::ClearToEnd => self.text.truncate(self.cursor),
            Key::Up => self.recall_older(),
            Key::Down => self.recall_newer(),
        }
        Edit::Changed
    }

    /// Adds a sent line to the history (blank lines and repeats are not kept).
    pub fn remember(&mut self, line: &str) {
        if line.trim().is_empty() || self.history.last().is_some_and(|l| l == line) {
            return;
        }
        self.history.push(line.to_string());
        if self.history.len() > HISTORY_LEN {
            self.history.remove(0);
        }
    }

    /// Empties the line (the history stays).
    pub fn clear(&mut self) {
        self.text.clear();
        self.cursor = 0;
        self.scroll = 0;
        self.recalled = None;
    }

    fn delete_under_cursor(&mut self) {
        if self.cursor < self.text.len() {
            self.text.remove(self.cursor);
        }
    }

    /// Where the word before the cursor starts.
    fn word_start(&self) -> usize {
        let mut at = self.cursor;
        while at > 0 && self.text[at - 1].is_whitespace() {
            at -= 1;
        }
        while at > 0 && !self.text[at - 1].is_whitespace() {
            at -= 1;
        }
        at
    }

    fn recall_older(&mut self) {
        let index = match &self.recalled {
            Some((0, _)) => return,
            Some((i, _)) => i - 1,
            None if self.history.is_empty() => return,
            None => {
                self.recalled = Some((self.history.len(), self.text.clone()));
                self.history.len() - 1
            }
        };
        self.show_recalled(index);
    }

    fn recall_newer(&mut self) {
        let Some((index, draft)) = &self.recalled else {
            return;
        };
        if index + 1 >= self.history.len() {
            self.text = draft.clone();
            self.cursor = self.text.len();
            self.recalled = None;
        } else {
            let next = index + 1;
            self.show_recalled(next);
        }
    }

    fn show_recalled(&mut self, index: usize) {
        let draft = match self.recalled.take() {
            Some((_, draft)) => draft,
            None => self.text.clone(),
        };
        self.text = self.history[index].chars().collect();
        self.cursor = self.text.len();
        self.recalled = Some((index, draft));
    }

    /// The bytes that draw `prompt` and the line on the current row of a terminal
    /// `columns` wide, leaving the cursor in place. With `hidden`, the text is not
    /// shown at all (a password).
    pub fn render(&mut self, prompt: &str, hidden: bool, columns: usize) -> String {
        let columns = columns.max(MIN_TEXT_COLUMNS + 2);
        let (prompt, prompt_width) = fit_prompt(prompt, columns - 1 - MIN_TEXT_COLUMNS);
        let mut out = format!("\r{prompt}");
        if hidden {
            out.push_str("\x1b[K");
            return out;
        }
        // Room for text, keeping the last column free for the cursor.
        let room = columns - 1 - prompt_width;
        let width = |c: &char| c.width().unwrap_or(0);
        if self.cursor < self.scroll {
            self.scroll = self.cursor;
        }
        while self.text[self.scroll..self.cursor]
            .iter()
            .map(width)
            .sum::<usize>()
            > room
        {
            self.scroll += 1;
        }
        let mut used = 0;
        let mut cursor_column = prompt_width;
        for (i, c) in self.text.iter().enumerate().skip(self.scroll) {
            if i == self.cursor {
                cursor_column = prompt_width + used;
            }
            if used + width(c) > room {
                break;
            }
            used += width(c);
            out.push(*c);
        }
        if self.cursor >= self.text.len() {
            cursor_column = prompt_width + used;
        }
        out.push_str("\x1b[K\r");
        if cursor_column > 0 {
            out.push_str(&format!("\x1b[{cursor_column}C"));
        }
        out
    }
}

/// `prompt` cut to at most `room` columns: its start, `…`, and its last three
/// characters (`]: `), so a question stays recognisable. Returns it and its width.
fn fit_prompt(prompt: &str, room: usize) -> (String, usize) {
    let width = |c: &char| c.width().unwrap_or(0);
    let full: usize = prompt.chars().map(|c| width(&c)).sum();
    if full <= room {
        return (prompt.to_string(), full);
    }
    let chars: Vec<char> = prompt.chars().collect();
    let tail = &chars[chars.len().saturating_sub(3)..];
    let tail_width: usize = tail.iter().map(width).sum();
    let mut out = String::new();
    let mut used = 0;
    for c in &chars {
        if used + width(c) + 1 + tail_width > room {
            break;
        }
        used += width(c);
        out.push(*c);
    }
    out.push('…');
    out.extend(tail);
    let used = used + 1 + tail_width;
    (out, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(editor: &mut LineEditor, text: &str) {
        for c in text.chars() {
            editor.apply(Key::Char(c));
        }
    }

    #[test]
    fn editing_keys() {
        let mut e = LineEditor::new();
        typed(&mut e, "helo world");
        for key in [Key::WordLeft, Key::Left, Key::Left] {
            e.apply(key);
        }
        typed(&mut e, "l");
        assert_eq!(e.text(), "hello world");
        e.apply(Key::End);
        e.apply(Key::DeleteWordBack);
        assert_eq!(e.text(), "hello ");
        e.apply(Key::Home);
        e.apply(Key::Delete);
        e.apply(Key::EndOfInput);
        assert_eq!(e.text(), "llo ");
        e.apply(Key::Right);
        e.apply(Key::ClearToEnd);
        assert_eq!(e.text(), "l");
        e.apply(Key::Home);
        e.apply(Key::ClearToStart);
        assert_eq!(e.text(), "l");
        e.apply(Key::End);
        e.apply(Key::ClearToStart);
        assert_eq!(e.text(), "");
        assert_eq!(e.apply(Key::EndOfInput), Edit::EndOfInput);
        typed(&mut e, "sent");
        assert_eq!(e.apply(Key::Enter), Edit::Submit("sent".into()));
        assert_eq!(e.text(), "");
    }

    #[test]
    fn history_walks_back_and_returns_to_the_draft() {
        let mut e = LineEditor::new();
        e.remember("one");
        e.remember("two");
        e.remember("two");
        e.remember("  ");
        typed(&mut e, "draft");
        e.apply(Key::Up);
        assert_eq!(e.text(), "two");
        e.apply(Key::Up);
        assert_eq!(e.text(), "one");
        e.apply(Key::Up);
        assert_eq!(e.text(), "one");
        e.apply(Key::Down);
        assert_eq!(e.text(), "two");
        e.apply(Key::Down);
        assert_eq!(e.text(), "draft");
    }

    #[test]
    fn a_long_line_scrolls_within_one_row() {
        let mut e = LineEditor::new();
        typed(&mut e, &"abcdefghij".repeat(10));
        let drawn = e.render("me> ", false, 40);
        assert!(!drawn.contains('\n'));
        let text: String = drawn.chars().filter(|c| c.is_ascii_lowercase()).collect();
        assert!(text.len() < 40 && text.ends_with('j'), "{drawn:?}");
        e.apply(Key::Home);
        let drawn = e.render("me> ", false, 40);
        assert!(drawn.starts_with("\rme> abcdefghij"), "{drawn:?}");
        assert!(drawn.ends_with("\r\x1b[4C"), "{drawn:?}");
    }

    #[test]
    fn a_long_question_is_cut_in_the_middle() {
        let mut e = LineEditor::new();
        let label = format!("Name [{}]: ", "x".repeat(200));
        let drawn = e.render(&label, false, 40);
        assert!(drawn.starts_with("\rName [xx"), "{drawn:?}");
        assert!(drawn.contains("…]: "), "{drawn:?}");
        let shown: String = drawn.chars().filter(|c| !c.is_control()).collect();
        assert!(shown.chars().count() < 40, "{drawn:?}");
    }

    #[test]
    fn a_hidden_line_shows_nothing() {
        let mut e = LineEditor::new();
        typed(&mut e, "secret");
        assert_eq!(e.render("Password: ", true, 80), "\rPassword: \x1b[K");
    }

    #[test]
    fn wide_characters_count_two_columns() {
        let mut e = LineEditor::new();
        typed(&mut e, "名前");
        assert!(e.render("", false, 80).ends_with("\x1b[4C"));
    }
}
