//! The state folder's files: how each is read at start-up and written while serving.

pub mod history_file;
pub mod identity_file;
pub mod state_files;
