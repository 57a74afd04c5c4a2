//! Start-up and the life of the process: `server::run` parses nothing (the binary
//! does that) and does everything else: recovers the state folder, binds the port,
//! prints `listening on <ip>:<port>` as the first stdout line (then the TLS and HTTP
//! listeners' lines), and wires the actors
//! together — `ChatServer` and `Persistence` on arbiters of their own, sessions spread
//! over one arbiter per core, the admin console on stdin, and SIGINT/SIGTERM to the same
//! graceful shutdown as the console's `shutdown`. Every way start-up can fail is a
//! [`StartError`], printed by the binary as one line.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use actix::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::actors::admin_console::{spawn_stdin_reader, AdminConsole};
use crate::actors::chat_server::{ChatServer, ChatSettings, Recovered, Shutdown};
use crate::actors::persistence::{FileStore, IdAllocator, Persistence, StatePaths, WatchHealth};
use crate::actors::session::SessionSettings;
use crate::endpoint::ask_port;
use crate::server::config::{ConfigError, ServerConfig, DEFAULT_PORT, PORT_ATTEMPTS};
use crate::server::http::{self, HttpSettings};
use crate::server::limits::{self, ConnectionSlots};
use crate::server::listener::{self, accept_loop, bind_with_fallback, BindError, Sessions, Wire};
use crate::server::logging;
use crate::server::store::history_file::{
    load_history, load_reserved_ids, store_reserved_ids, ID_BLOCK, MAX_MESSAGE_ID,
};
use crate::server::store::identity_file::{IdentityFile, LoadError};
use crate::server::store::rooms_file::RoomsFile;
use crate::server::store::state_files;
use crate::server::tls::{self, CertificatePaths, Certificates, TlsError};
use crate::text;

/// Why the server could not start (or ended abnormally).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("state folder {path} unusable: {source}")]
    StateFolder { path: PathBuf, source: io::Error },
    #[error("log file {path} unusable: {source}")]
    LogFile { path: PathBuf, source: io::Error },
    #[error(transparent)]
    StateFile(#[from] LoadError),
    #[error("{path} unusable: {source}")]
    IdFile { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot set up the listening socket: {0}")]
    Socket(io::Error),
    #[error("cannot write to stdout: {0}")]
    Stdout(io::Error),
    #[error("cannot read stdin: {0}")]
    Stdin(io::Error),
    #[error("the server stopped abnormally: {0}")]
    System(io::Error),
}

/// Runs the server until it is shut down: start-up steps that can fail, then the
/// actor system.
pub fn run(config: ServerConfig) -> Result<(), StartError> {
    config.validate()?;
    let paths = StatePaths::new(&config.state_dir);
    let folder_error = |source| StartError::StateFolder {
        path: paths.dir.clone(),
        source,
    };
    state_files::create_private_dir(&paths.dir).map_err(folder_error)?;
    // Held until the process ends: a second server on this folder is refused.
    let _lock = state_files::lock_folder(&paths.dir).map_err(folder_error)?;
    logging::init(&paths.log).map_err(|source| StartError::LogFile {
        path: paths.log.clone(),
        source,
    })?;

    let recovered = IdentityFile::open(&paths.users, &paths.journal)?;
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
    let loaded = load_history(&paths.history, config.history)?;
    if loaded.dropped_torn_line {
        log::warn!(
            "{}: an incomplete last line (interrupted write) was dropped",
            paths.history.display()
        );
    }
    // Ids a crashed run may have sent are skipped, never given again.
    let reserved = load_reserved_ids(&paths.ids)?;
    let next_id = loaded.last_id.max(reserved) + 1;
    let reserved_through = (next_id - 1 + ID_BLOCK).min(MAX_MESSAGE_ID);
    store_reserved_ids(&paths.ids, reserved_through).map_err(|source| StartError::IdFile {
        path: paths.ids.clone(),
        source,
    })?;
    let (rooms_file, rooms) = RoomsFile::open(&paths.rooms)?;
    let ids = IdAllocator::new(next_id, reserved_through);

    let capacity = limits::connection_capacity();
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

    let host = config.bind_address()?;
    if host.to_string() != config.host {
        log::info!("--host {} resolved to {host}", text::quote(&config.host));
    }
    // The certificate serves the TLS listener and, with --http-tls, the web client.
    let certificates = match config.tls_port.is_some() || config.http_tls {
        true => {
            let files = CertificatePaths::new(
                &paths.dir,
                config.tls_cert.as_deref(),
                config.tls_key.as_deref(),
            );
            if tls::ensure_own_certificate(&files, &config.host)? {
                log::info!(
                    "created a self-signed TLS certificate in {}",
                    files.cert.display()
                );
            }
            let loaded = tls::load(&files)?;
            Some(Certificates::new(loaded, files))
        }
        false => None,
    };
    let plain = if config.tls_only {
        None
    } else {
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
        Some(bind_listener(host, port)?)
    };
    let secure = match config.tls_port {
        Some(port) => Some(bind_listener(host, port)?),
        None => None,
    };
    let web = match config.http_port {
        Some(port) => {
            let (listener, address) = bind_listener(host, port)?;
            Some((listener, address, HttpSettings::from_config(&config)?))
        }
        None => None,
    };
    {
        let mut out = std::io::stdout().lock();
        let mut lines = Vec::new();
        if let Some((_, address)) = &plain {
            lines.push(format!("listening on {address}"));
        }
        if let (Some((_, address)), Some(certificates)) = (&secure, &certificates) {
            lines.push(format!(
                "listening on {address} tls {}",
                certificates.fingerprint()
            ));
        }
        if let Some((_, address, settings)) = &web {
            lines.push(format!("listening on {address} {}", settings.scheme));
        }
        for line in &lines {
            writeln!(out, "{line}").map_err(StartError::Stdout)?;
            log::info!("{line}");
        }
        out.flush().map_err(StartError::Stdout)?;
    }
    let address = plain
        .as_ref()
        .or(secure.as_ref())
        .map(|(_, address)| *address)
        .ok_or(StartError::Config(ConfigError::TlsOnlyWithoutPort))?;
    log::info!(
        "state in {}, {} accounts, next message id {next_id}, at most {max_conns} connections",
        paths.dir.display(),
        recovered.identities.users.len(),
    );

    let state = Recovered {
        identities: recovered.identities,
        rooms,
        room_history: loaded.rooms,
        direct_history: loaded.direct,
    };
    let identity_file = recovered.file;
    let (history_len, index) = (loaded.len, loaded.index);
    let config_for_chat = config.clone();
    let system = System::new();
    let started: Result<(), StartError> = system.block_on(async move {
        let stop_accepting = CancellationToken::new();
        let persistence = Persistence::start_in_arbiter(&Arbiter::new().handle(), {
            let paths = paths.clone();
            move |_| Persistence::new(paths, identity_file, rooms_file, history_len, index)
        });
        let server = ChatServer::start_in_arbiter(&Arbiter::new().handle(), {
            let persistence = persistence.clone();
            let stop_accepting = stop_accepting.clone();
            move |_| {
                // Built on its own arbiter: the store's replies arrive on that thread.
                let store = FileStore::new(persistence, ids);
                ChatServer::new(
                    ChatSettings::from_config(&config_for_chat, max_conns),
                    state,
                    Box::new(store),
                    stop_accepting,
                    address,
                )
            }
        });
        persistence.do_send(WatchHealth(server.clone().recipient()));

        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let sessions = Sessions {
            arbiters: (0..cores).map(|_| Arbiter::new().handle()).collect(),
            server: server.clone(),
            settings: Arc::new(SessionSettings::from_config(&config)),
            slots: ConnectionSlots::new(max_conns, config.max_conns_per_ip),
            next_id: Arc::new(AtomicU64::new(0)),
        };
        if let Some((listener, _, settings)) = web {
            let workers = sessions.arbiters.len();
            let tls = match (&certificates, config.http_tls) {
                (Some(certificates), true) => Some(certificates.server_config()?),
                _ => None,
            };
            let gateway = http::Gateway::new(settings, sessions.clone());
            http::start(
                listener,
                tls,
                gateway,
                workers,
                max_conns,
                stop_accepting.clone(),
            )
            .map_err(StartError::Socket)?;
        }
        if let Some((listener, _)) = plain {
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(StartError::Socket)?;
            actix::spawn(accept_loop(
                listener,
                Wire::Plain,
                sessions.clone(),
                stop_accepting.clone(),
            ));
        }
        if let (Some((listener, _)), Some(certificates)) = (secure, &certificates) {
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(StartError::Socket)?;
            let config = certificates.server_config()?;
            actix::spawn(accept_loop(
                listener,
                Wire::Tls(config),
                sessions,
                stop_accepting,
            ));
        }

        let console = AdminConsole::new(
            server.clone(),
            persistence,
            paths.log.clone(),
            certificates.clone(),
        )
        .start();
        spawn_stdin_reader(console).map_err(StartError::Stdin)?;
        actix::spawn(shutdown_on_signals(server));
        if let Some(certificates) = certificates {
            actix::spawn(reload_on_hangup(certificates));
        }
        Ok(())
    });
    started?;
    system.run().map_err(StartError::System)?;
    log::info!("stopped");
    Ok(())
}

/// Binds `host:port` (or the next free port) for listening; logs the ports found busy.
fn bind_listener(
    host: std::net::IpAddr,
    port: u16,
) -> Result<(std::net::TcpListener, std::net::SocketAddr), StartError> {
    let bound = bind_with_fallback(host, port, PORT_ATTEMPTS)?;
    let listener = bound.listener;
    let address = listener.local_addr().map_err(StartError::Socket)?;
    listener.set_nonblocking(true).map_err(StartError::Socket)?;
    if !bound.busy.is_empty() {
        log::warn!(
            "port {} busy, so {} was taken instead",
            listener::describe_ports(&bound.busy),
            address.port()
        );
    }
    Ok((listener, address))
}

/// SIGHUP reads the TLS certificate again (as a renewal tool asks), keeping the old one
/// if the files cannot be used.
async fn reload_on_hangup(certificates: Arc<Certificates>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        log::error!("cannot install the SIGHUP handler; use the console's reload-tls");
        return;
    };
    while hangup.recv().await.is_some() {
        let certificates = certificates.clone();
        match tokio::task::spawn_blocking(move || certificates.reload()).await {
            Ok(Ok(fingerprint)) => log::info!("SIGHUP: TLS certificate reloaded: {fingerprint}"),
            Ok(Err(err)) => {
                log::error!("SIGHUP: TLS certificate not reloaded, the old one stays: {err}")
            }
            Err(err) => log::error!("SIGHUP: TLS certificate not reloaded: {err}"),
        }
    }
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
