//! `echochat-server`: parses the command line, recovers the state folder, binds the
//! port, prints `listening on <ip>:<port>` as its first stdout line, and wires the
//! actors together: `ChatServer` and `Persistence` on arbiters of their own, sessions
//! spread over one arbiter per core, the admin console on stdin, and SIGINT/SIGTERM to
//! the same graceful shutdown as the console's `shutdown`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use actix::prelude::*;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use echochat::actors::admin_console::{spawn_stdin_reader, AdminConsole};
use echochat::actors::chat_server::{ChatServer, ChatSettings, History, Shutdown};
use echochat::actors::persistence::{Persistence, StatePaths};
use echochat::actors::session::SessionSettings;
use echochat::client::prompt::ask_port;
use echochat::server::config::{ServerConfig, DEFAULT_PORT, PORT_ATTEMPTS};
use echochat::server::listener::{self, accept_loop, bind_with_fallback, ConnectionSlots};
use echochat::server::logging;
use echochat::server::store::history_file::{
    load_history, load_reserved_ids, store_reserved_ids, ID_BLOCK, MAX_MESSAGE_ID,
};
use echochat::server::store::identity_file::IdentityFile;
use echochat::server::store::state_files;
use echochat::text;

fn main() -> ExitCode {
    let config = match ServerConfig::try_parse() {
        Ok(config) => config,
        Err(err) => return report_bad_command_line(err),
    };
    match run(config) {
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

/// Start-up steps that can fail with a one-line reason, then the actor system.
fn run(config: ServerConfig) -> Result<(), String> {
    config.validate()?;
    let paths = StatePaths::new(&config.state_dir);
    let folder = paths.dir.display().to_string();
    state_files::create_private_dir(&paths.dir)
        .map_err(|e| format!("state folder {folder} unusable: {e}"))?;
    // Held until the process ends: a second server on this folder is refused.
    let _lock = state_files::lock_folder(&paths.dir)
        .map_err(|e| format!("state folder {folder} unusable: {e}"))?;
    logging::init(&paths.log)
        .map_err(|e| format!("log file {} unusable: {e}", paths.log.display()))?;

    let recovered = IdentityFile::open(&paths.users, &paths.journal).map_err(|e| e.to_string())?;
    if recovered.replayed > 0 {
        log::info!(
            "{} identity changes replayed from {}",
            recovered.replayed,
            paths.journal.display()
        );
    }
    if recovered.dropped_torn_line {
        log::warn!(
            "{}: an incomplete last line (interrupted write) was dropped",
            paths.journal.display()
        );
    }
    for name in &recovered.key_clashes {
        log::warn!("account {name} now compares equal to another account's name; kept apart");
    }
    let loaded = load_history(&paths.history, config.history).map_err(|e| e.to_string())?;
    if loaded.dropped_torn_line {
        log::warn!(
            "{}: an incomplete last line (interrupted write) was dropped",
            paths.history.display()
        );
    }
    // Ids a crashed run may have sent are skipped, never given again.
    let reserved = load_reserved_ids(&paths.ids).map_err(|e| e.to_string())?;
    let next_id = loaded.last_id.max(reserved) + 1;
    let reserved_through = (next_id - 1 + ID_BLOCK).min(MAX_MESSAGE_ID);
    store_reserved_ids(&paths.ids, reserved_through)
        .map_err(|e| format!("{} unusable: {e}", paths.ids.display()))?;
    let history = History::new(config.history, loaded.recent, next_id, reserved_through);

    let capacity = listener::connection_capacity();
    let max_conns = match (config.max_conns, capacity) {
        (0, Some(capacity)) => capacity,
        (configured, Some(capacity)) if capacity < configured => {
            log::warn!(
                "--max-conns lowered from {configured} to {capacity}: that is what the open-file limit leaves"
            );
            capacity
        }
        (configured, _) => configured,
    };

    let port = match config.port {
        Some(port) => port,
        // A console that cannot be read or written still gets the default.
        None if std::io::stdin().is_terminal() => ask_port(
            &mut std::io::stdin().lock(),
            &mut std::io::stderr(),
            DEFAULT_PORT,
        )
        .unwrap_or(DEFAULT_PORT),
        None => DEFAULT_PORT,
    };
    let host = config.bind_address()?;
    if host.to_string() != config.host {
        log::info!("--host {} resolved to {host}", text::quote(&config.host));
    }
    let bound = bind_with_fallback(host, port, PORT_ATTEMPTS)?;
    let listener = bound.listener;
    let address = listener
        .local_addr()
        .map_err(|e| format!("bound socket has no address: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot configure the socket: {e}"))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {address}")
            .and_then(|_| out.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    if !bound.busy.is_empty() {
        log::warn!(
            "port {} busy, so {} was taken instead",
            listener::describe_ports(&bound.busy),
            address.port()
        );
    }
    log::info!(
        "listening on {address} (state in {}, {} accounts, next message id {next_id}, at most {max_conns} connections)",
        paths.dir.display(),
        recovered.identities.users.len(),
    );

    let identities = recovered.identities;
    let identity_file = recovered.file;
    let system = System::new();
    let started: Result<(), String> = system.block_on(async move {
        let stop_accepting = CancellationToken::new();
        let persistence = Persistence::start_in_arbiter(&Arbiter::new().handle(), {
            let paths = paths.clone();
            move |_| Persistence::new(paths, identity_file)
        });
        let chat = ChatServer::new(
            ChatSettings::from_config(&config, max_conns),
            identities,
            history,
            persistence.clone(),
            stop_accepting.clone(),
            address,
        );
        let server = ChatServer::start_in_arbiter(&Arbiter::new().handle(), move |_| chat);

        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let session_arbiters = (0..cores).map(|_| Arbiter::new().handle()).collect();
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| format!("cannot register the socket: {e}"))?;
        actix::spawn(accept_loop(
            listener,
            session_arbiters,
            server.clone(),
            Arc::new(SessionSettings::from_config(&config)),
            ConnectionSlots::new(max_conns),
            stop_accepting,
        ));

        let console = AdminConsole::new(server.clone(), persistence, paths.log.clone()).start();
        spawn_stdin_reader(console).map_err(|e| format!("cannot read stdin: {e}"))?;
        actix::spawn(shutdown_on_signals(server));
        Ok(())
    });
    started?;
    system
        .run()
        .map_err(|e| format!("the server stopped abnormally: {e}"))?;
    log::info!("stopped");
    Ok(())
}

/// SIGINT and SIGTERM shut down gracefully; a second one ends the process at once.
async fn shutdown_on_signals(server: Addr<ChatServer>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        log::error!("cannot install signal handlers; use the console's shutdown");
        return;
    };
    for round in 0.. {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        if round == 0 {
            log::info!("signal received: shutting down");
            server.do_send(Shutdown);
        } else {
            log::warn!("second signal: exiting without waiting");
            std::process::exit(1);
        }
    }
}
