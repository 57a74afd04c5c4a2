//! `echochat-server`: parses the command line and runs the server (`server::run`).

use std::process::ExitCode;

use clap::Parser;

use echochat::server::config::ServerConfig;

fn main() -> ExitCode {
    let config = match ServerConfig::try_parse() {
        Ok(config) => config,
        Err(err) => return report_bad_command_line(err),
    };
    match echochat::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("echochat-server: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` print as usual; a bad flag gets one line on stderr.
fn report_bad_command_line(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let text = err.to_string();
    let reason = text
        .lines()
        .next()
        .unwrap_or("bad command line")
        .trim_start_matches("error: ");
    eprintln!("echochat-server: {reason} (see --help)");
    ExitCode::from(2)
}
