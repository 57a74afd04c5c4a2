//! Browser access at the protocol level (SPEC §10), without a browser: the HTTP
//! listener and its line on stdout, the web client's files, and the WebSocket at `/ws`
//! (origin check, text and binary messages, the frame limit, pause, kick, shutdown,
//! identification behind a proxy, a reader that stops reading) against the same chat
//! as TCP clients.

mod common;
mod web_support;

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use common::{registered, run_to_exit, unique_name, QUIET, RECV_TIMEOUT};
use web_support::{http_get, http_request, WebServer, WsEvent};

#[test]
fn the_http_line_follows_the_first_line() {
    let web = WebServer::start(&[]);
    let first = web.server.first_line().to_string();
    assert!(first.starts_with("listening on 127.0.0.1:"), "{first}");
    assert!(!first.ends_with(" http"), "{first}");
    assert_eq!(web.http_line, format!("listening on {} http", web.http));
    assert_ne!(web.http.port(), web.server.port());
}

#[test]
fn a_taken_http_port_moves_to_the_next_free_one() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    if port > u16::MAX - 100 {
        return;
    }
    let mut server = common::TestServer::start_with(&["--http-port", &port.to_string()]);
    let line = server
        .read_stdout_line(RECV_TIMEOUT)
        .expect("the http line");
    let address: std::net::SocketAddr = line
        .strip_prefix("listening on ")
        .and_then(|rest| rest.strip_suffix(" http"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(address.port() > port, "{line}");
}

#[test]
fn web_flags_that_cannot_work_stop_start_up_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (vec!["--http-tls"], "--http-tls needs --http-port"),
        (
            vec!["--http-port", "0", "--allowed-origins", "chat.example.com"],
            "--allowed-origins",
        ),
        (
            vec!["--http-port", "0", "--trusted-proxies", "10.0.0.0/8"],
            "--trusted-proxies",
        ),
    ] {
        let exit = run_to_exit(dir.path(), &args, Duration::from_secs(20));
        let status = exit.status.expect("start-up should end by itself");
        assert!(!status.success(), "{args:?} started");
        assert_eq!(exit.stdout, "", "{args:?} printed a listening line");
        assert_eq!(exit.stderr.lines().count(), 1, "{args:?}: {}", exit.stderr);
        assert!(exit.stderr.contains(expected), "{args:?}: {}", exit.stderr);
    }
}

#[test]
fn the_page_and_its_files_are_served_small_and_cacheable() {
    let web = WebServer::start(&[]);
    let page = http_get(web.http, "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text();
    let mut total = page.body.len();
    // Every file the page names, at its versioned address.
    let urls: Vec<String> = html
        .split('"')
        .filter(|part| part.starts_with('/') && part.contains("?v="))
        .map(str::to_string)
        .collect();
    assert_eq!(urls.len(), 3, "{urls:?}");
    for url in &urls {
        let file = http_get(web.http, url);
        assert_eq!(file.status, 200, "{url}");
        assert!(
            file.header("cache-control").unwrap().contains("immutable"),
            "{url}"
        );
        let expected = if url.starts_with("/app.js") {
            "text/javascript; charset=utf-8"
        } else if url.starts_with("/style.css") {
            "text/css; charset=utf-8"
        } else {
            "image/svg+xml"
        };
        assert_eq!(file.header("content-type"), Some(expected), "{url}");
        total += file.body.len();
    }
    assert!(total < 100 * 1024, "first load is {total} bytes");
    // Nothing from elsewhere: no absolute URL in the page or the script.
    let script = http_get(
        web.http,
        urls.iter().find(|u| u.starts_with("/app.js")).unwrap(),
    );
    for text in [html.as_str(), &script.text()] {
        assert!(!text.contains("https://"), "an outside address");
        assert!(!text.contains("innerHTML"), "HTML built from strings");
    }

    let etag = page.header("etag").expect("an ETag").to_string();
    let again = http_request(web.http, "GET", "/", &[("If-None-Match", &etag)]);
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    let head = http_request(web.http, "HEAD", "/", &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[test]
fn everything_else_is_not_found() {
    let web = WebServer::start(&[]);
    for path in [
        "/index.html",
        "/admin",
        "/ws/",
        "/app.js/x",
        "/%2e%2e/Cargo.toml",
    ] {
        assert_eq!(http_get(web.http, path).status, 404, "{path}");
    }
    assert_eq!(http_request(web.http, "POST", "/", &[]).status, 405);
    // `/ws` without an upgrade is a bad request, not a page.
    assert_eq!(http_get(web.http, "/ws").status, 400);
}

#[test]
fn a_foreign_origin_is_refused_before_the_upgrade() {
    let web = WebServer::start(&[]);
    for origin in [
        "http://evil.example",
        "https://127.0.0.1", // the right host with another scheme and port
        "null",
    ] {
        match web.ws(Some(origin), &[]) {
            Err(err) => match *err {
                tungstenite::Error::Http(response) => {
                    assert_eq!(response.status(), 403, "{origin}")
                }
                other => panic!("{origin}: {other}"),
            },
            Ok(_) => panic!("{origin} was let in"),
        }
    }
    web.server.wait_log_line(RECV_TIMEOUT, |l| {
        l.contains("refused: origin http://evil.example is not allowed")
    });
    // No session was started for them.
    assert!(!web.server.log_text().contains("is a WebSocket"));
}

#[test]
fn the_pages_origin_no_origin_and_listed_origins_are_let_in() {
    let web = WebServer::start(&["--allowed-origins", "https://chat.example.com"]);
    web.ws(Some(&web.origin()), &[]).unwrap().welcome();
    web.ws(None, &[]).unwrap().welcome();
    web.ws(Some("https://chat.example.com"), &[])
        .unwrap()
        .welcome();
    assert!(web.ws(Some("http://chat.example.com"), &[]).is_err());
}

#[test]
fn websocket_and_tcp_users_chat_together() {
    let web = WebServer::start(&[]);
    let mut browser = web.ws_greeted();
    let ann = unique_name("wsann");
    let bob = unique_name("tcpbob");
    browser.register(&ann, "ann's password");
    let (mut terminal, _) = registered(&web.server, &bob, "bob's password");
    browser.recv_matching("bob joined", |v| v["type"] == "joined" && v["name"] == bob);

    let sent = browser.say("hello from a browser");
    let got = terminal.recv_matching("ann's message", |v| v["type"] == "message");
    assert_eq!(got, sent);
    let sent = terminal.say("hello from a terminal <b>");
    let got = browser.recv_matching("bob's message", |v| v["type"] == "message");
    assert_eq!(got, sent);

    browser.send(&json!({"type":"who"}));
    let who = browser.recv_matching("who", |v| v["type"] == "who");
    let mut users: Vec<String> = who["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_lowercase())
        .collect();
    users.sort();
    let mut expected = vec![ann.to_lowercase(), bob.to_lowercase()];
    expected.sort();
    assert_eq!(users, expected);

    // One text message is one JSON object: a ping is answered at once.
    browser.send(&json!({"type":"ping"}));
    browser.recv_type("pong");
    browser.send(&json!({"type":"quit"}));
    browser.expect_closed(RECV_TIMEOUT);
    terminal.recv_matching("ann left", |v| v["type"] == "left" && v["name"] == ann);
}

#[test]
fn binary_and_malformed_messages_get_bad_request_and_the_connection_stays() {
    let web = WebServer::start(&[]);
    let mut ws = web.ws_greeted();
    ws.send_binary(br#"{"type":"ping"}"#);
    let error = ws.recv_type("error");
    assert_eq!(error["code"], "bad_request", "{error}");
    ws.send_text("not json");
    assert_eq!(ws.recv_type("error")["code"], "bad_request");
    ws.send_text(r#"{"type":"ping"} {"type":"ping"}"#);
    assert_eq!(ws.recv_type("error")["code"], "bad_request");
    ws.send(&json!({"type":"ping"}));
    ws.recv_type("pong");
}

#[test]
fn a_message_over_max_frame_gets_frame_too_large_then_close() {
    let web = WebServer::start(&["--max-frame", "1024"]);
    let mut ws = web.ws_greeted();
    // At the limit: a request (a bad one, but read).
    let padding = "x".repeat(1024 - r#"{"type":"ping","p":""}"#.len());
    ws.send_text(&format!(r#"{{"type":"ping","p":"{padding}"}}"#));
    ws.recv_type("pong");
    ws.send_text(&"y".repeat(1025));
    let frames = ws.expect_closed(RECV_TIMEOUT);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "error");
    assert_eq!(frames[0]["code"], "frame_too_large");
    assert!(
        frames[0]["message"].as_str().unwrap().contains("1025"),
        "{frames:?}"
    );
}

#[test]
fn a_huge_frame_is_refused_from_its_header() {
    let web = WebServer::start(&["--max-frame", "1024"]);
    let mut ws = web.ws_greeted();
    // A text frame announcing 1 GiB, then only a little of it: the server must answer
    // from the header, not wait for (or buffer) the body.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    header.extend_from_slice(&[b'x'; 100]);
    ws.stream().write_all(&header).unwrap();
    let frames = ws.expect_closed(RECV_TIMEOUT);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["code"], "frame_too_large", "{frames:?}");
}

#[test]
fn a_websocket_opened_while_paused_is_upgraded_and_greeted_on_resume() {
    let mut web = WebServer::start(&[]);
    web.server.admin_output("pause");
    let mut ws = web
        .ws(Some(&web.origin()), &[])
        .expect("the upgrade completes");
    ws.expect_silence(QUIET);
    web.server.admin_output("resume");
    ws.welcome();
}

#[test]
fn kick_and_shutdown_reach_websockets() {
    let mut web = WebServer::start(&[]);
    let name = unique_name("kicked");
    let mut ws = web.ws_greeted();
    ws.register(&name, "a password");
    web.server.admin_output(&format!("kick {name}"));
    let frames = ws.expect_closed(RECV_TIMEOUT);
    assert_eq!(frames.last().unwrap()["type"], "kicked", "{frames:?}");

    let mut ws = web.ws_greeted();
    ws.login(&name, "a password");
    web.server.admin("shutdown");
    let frames = ws.expect_closed(RECV_TIMEOUT);
    assert_eq!(frames.last().unwrap()["type"], "shutdown", "{frames:?}");
    let status = web.server.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
fn identification_by_ip_follows_a_trusted_proxy() {
    let web = WebServer::start(&["--trusted-proxies", "127.0.0.1"]);
    let name = unique_name("proxied");
    let via = |ip: &str| {
        let mut ws = web
            .ws(Some(&web.origin()), &[("X-Forwarded-For", ip)])
            .unwrap();
        let welcome = ws.welcome();
        (ws, welcome)
    };
    let (mut ws, welcome) = via("6.6.6.6, 198.51.100.7");
    assert!(welcome["known_name"].is_null(), "{welcome}");
    ws.register(&name, "a password");
    let (_, welcome) = via("198.51.100.7");
    assert_eq!(welcome["known_name"], name.as_str());
    let (_, welcome) = via("198.51.100.8");
    assert!(welcome["known_name"].is_null(), "{welcome}");
    // The proxy itself (no header) is another address.
    let (_, welcome) = via("");
    assert!(welcome["known_name"].is_null(), "{welcome}");
    web.server
        .wait_log_line(RECV_TIMEOUT, |l| l.contains("from 198.51.100.7:"));
}

#[test]
fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let web = WebServer::start(&[]);
    let name = unique_name("direct");
    let mut ws = web
        .ws(Some(&web.origin()), &[("X-Forwarded-For", "198.51.100.7")])
        .unwrap();
    ws.welcome();
    ws.register(&name, "a password");
    let mut other = web
        .ws(Some(&web.origin()), &[("X-Forwarded-For", "203.0.113.1")])
        .unwrap();
    // Both came from 127.0.0.1, whatever they said.
    assert_eq!(other.welcome()["known_name"], name.as_str());
}

#[test]
fn a_websocket_reader_that_stops_reading_is_dropped() {
    let web = WebServer::start(&["--send-queue", "65536", "--msg-rate", "0"]);
    let mut idle = web.ws_greeted();
    let reader = unique_name("stalled");
    idle.register(&reader, "a password");
    let (mut sender, _) = registered(&web.server, &unique_name("flood"), "a password");
    // Shrink what the kernel may buffer for the stalled reader, then stop reading.
    let _ = socket2::SockRef::from(&*idle.stream()).set_recv_buffer_size(4096);
    let session = web
        .server
        .wait_log_line(RECV_TIMEOUT, |l| l.contains("is a WebSocket from"));
    let session = session
        .split("session ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("a session id")
        .to_string();
    let dropped = format!("session {session} from ");
    let text = "z".repeat(3000);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    loop {
        sender.say(&text);
        sent += 1;
        if web
            .server
            .log_text()
            .lines()
            .any(|l| l.contains(&dropped) && l.ends_with("dropped"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled reader was not dropped after {sent} messages; log:\n{}",
            web.server.log_text()
        );
    }
    eprintln!("the stalled reader was dropped after {sent} messages of 3000 bytes");
    // The server goes on serving everyone else.
    sender.say("still here");
    // And the stalled connection is gone: reading now ends in a close or a reset.
    let end = loop {
        match idle.next_event(RECV_TIMEOUT) {
            WsEvent::Frame(_) => continue,
            other => break other,
        }
    };
    assert!(matches!(end, WsEvent::Closed), "{end:?}");
}

#[test]
fn with_http_tls_the_web_client_and_its_websocket_are_served_over_https() {
    let web = WebServer::start(&["--http-tls"]);
    assert_eq!(web.http_line, format!("listening on {} https", web.http));
    let ca = web.certificate();
    let (status, body) = web_support::https_get(web.http, &ca, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("app.js?v="), "{body}");
    // Plain HTTP on the HTTPS port gets no page.
    let mut plain = std::net::TcpStream::connect(web.http).unwrap();
    plain.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut answer);
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "a page over plain HTTP"
    );

    let upgrade = |origin: &str| {
        let stream = web_support::tls_connect(web.http, &ca);
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/ws",
            web.http
        ))
        .unwrap();
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
        // A refused upgrade is its HTTP status.
        tungstenite::client(request, stream)
            .map(|(socket, _)| socket)
            .map_err(|err| match err {
                tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response)) => {
                    Some(response.status().as_u16())
                }
                _ => None,
            })
    };
    // The page's own origin is https now; the same host over http is another origin.
    let mut socket = upgrade(&web.origin()).expect("the upgrade from the https page");
    let welcome = socket.read().expect("the welcome");
    let welcome: serde_json::Value = serde_json::from_str(welcome.to_text().unwrap()).unwrap();
    assert_eq!(welcome["type"], "welcome");
    match upgrade(&format!("http://{}", web.http)) {
        Err(status) => assert_eq!(status, Some(403)),
        Ok(_) => panic!("an http origin was let in on https"),
    }
}
