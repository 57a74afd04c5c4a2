//! `echochat`: the terminal client. Parses the command line and hands over to
//! [`echochat::client::run`]; everything else lives in `src/client/`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    echochat::client::run(echochat::client::args::Args::parse())
}
