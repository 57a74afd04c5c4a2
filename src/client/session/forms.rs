//! Account commands that read their answers from the next typed lines: `/password`
//! (the current password, the new one, and on a terminal the new one again) and
//! `/delete-account` (the password, and on a terminal a confirmation). None of these
//! lines is ever sent as chat.

use super::{Output, Session};
use crate::client::display::printable;
use crate::client::login;
use crate::client::queue::{Outgoing, Secret};

/// An account command waiting for the next typed line, which is never chat.
#[derive(Debug)]
pub(super) enum Form {
    /// `/password`: the current password.
    OldPassword,
    NewPassword {
        old: Secret,
    },
    RepeatPassword {
        old: Secret,
        new: Secret,
    },
    /// `/delete-account`: the password, then (a person) the confirmation.
    DeletePassword,
    ConfirmDelete {
        password: Secret,
    },
}

impl<O: Output> Session<O> {
    /// Asks what `form` needs next; the next line is its answer.
    pub(super) fn ask(&mut self, form: Form) {
        let (label, hidden) = match &form {
            Form::OldPassword => ("Current password (Enter alone cancels): ".to_string(), true),
            Form::NewPassword { .. } => ("New password: ".to_string(), true),
            Form::RepeatPassword { .. } => ("Repeat the new password: ".to_string(), true),
            Form::DeletePassword => (
                "Password to delete your account (Enter alone cancels): ".to_string(),
                true,
            ),
            Form::ConfirmDelete { .. } => (
                format!(
                    "Delete the account '{}' and its saved session for good? Type yes to confirm: ",
                    printable(&self.name)
                ),
                false,
            ),
        };
        self.out.question(&label, hidden);
        self.form = Some(form);
    }

    /// A line answering `form`. An empty one cancels; a password change or a deletion
    /// that is not sent counts as refused (a script fails at the end).
    pub(super) fn on_answer(&mut self, form: Form, line: &str) {
        let cancelled = |what: &str| format!("Cancelled: {what}.");
        if line.is_empty() {
            self.queue.count_refused();
            let what = match form {
                Form::DeletePassword | Form::ConfirmDelete { .. } => "the account was not deleted",
                _ => "your password was not changed",
            };
            self.out.notice(&cancelled(what));
            return;
        }
        let answer = Secret(line.to_string());
        match form {
            Form::OldPassword => self.ask(Form::NewPassword { old: answer }),
            Form::NewPassword { old } => match login::password_problem(line) {
                Some(problem) if self.policy.confirm => {
                    self.out.notice(&problem);
                    self.ask(Form::NewPassword { old });
                }
                Some(problem) => {
                    self.queue.count_refused();
                    self.out
                        .notice(&format!("{problem} Your password was not changed."));
                }
                None if self.policy.confirm => self.ask(Form::RepeatPassword { old, new: answer }),
                None => self
                    .queue
                    .push(Outgoing::ChangePassword { old, new: answer }),
            },
            Form::RepeatPassword { old, new } => {
                if new == answer {
                    self.queue.push(Outgoing::ChangePassword { old, new });
                } else {
                    self.out
                        .notice("The two passwords differ; type the new one again.");
                    self.ask(Form::NewPassword { old });
                }
            }
            Form::DeletePassword if self.policy.confirm => {
                self.ask(Form::ConfirmDelete { password: answer })
            }
            Form::DeletePassword => self.queue.push(Outgoing::DeleteAccount(answer)),
            Form::ConfirmDelete { password } => {
                if matches!(line.trim().to_lowercase().as_str(), "yes" | "y") {
                    self.queue.push(Outgoing::DeleteAccount(password));
                } else {
                    self.queue.count_refused();
                    self.out.notice(&cancelled("the account was not deleted"));
                }
            }
        }
    }
}
