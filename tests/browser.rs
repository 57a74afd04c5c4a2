//! The web client in a real browser (SPEC §10): headless Chromium driven over
//! WebDriver (chromedriver), against the real server binary, beside terminal-protocol
//! users. Screenshots are kept in `target/browser-artifacts/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without
//! them these tests fail saying so.

mod common;
mod web_support;

use std::future::Future;
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use common::{registered, unique_name, TestClient};
use web_support::{artifacts_dir, Chromedriver, WebServer};

/// How long the page may take to show what a test waits for.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs a browser test's async body on a runtime of its own.
fn run<F: Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(body)
}

/// A blocking step (the server harness, a TCP client) from inside the async body.
fn blocking<T>(step: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(step)
}

/// One browser window (its own Chromium and profile) on the web client.
struct Page {
    client: Client,
    label: String,
    _profile: tempfile::TempDir,
}

impl Page {
    async fn open(driver: &Chromedriver, url: &str, label: &str, width: u32, height: u32) -> Page {
        let profile = tempfile::tempdir().expect("a browser profile folder");
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(Chromedriver::capabilities(profile.path(), width, height))
            .connect(&driver.url())
            .await
            .unwrap_or_else(|e| panic!("start Chromium through chromedriver: {e}"));
        client.goto(url).await.expect("open the web client");
        Page {
            client,
            label: label.to_string(),
            _profile: profile,
        }
    }

    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{}: script {script:?} failed: {e}", self.label))
    }

    async fn status(&self) -> (String, String) {
        let v = self
            .js("const s = document.getElementById('status'); return [s.dataset.state, s.textContent];")
            .await;
        (
            v[0].as_str().unwrap_or_default().to_string(),
            v[1].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Waits until `script` (an expression) is true in the page.
    async fn wait_for(&self, what: &str, script: &str) {
        let deadline = Instant::now() + PAGE_TIMEOUT;
        let check = format!("return !!({script});");
        loop {
            if self.js(&check).await == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let (state, text) = self.status().await;
                let lines = self.lines().await;
                panic!(
                    "{}: no {what} within {PAGE_TIMEOUT:?}; status {state:?} {text:?}; messages {lines:?}",
                    self.label
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_state(&self, state: &str) {
        self.wait_for(
            &format!("status {state}"),
            &format!("document.getElementById('status').dataset.state === {state:?}"),
        )
        .await;
    }

    /// Every line of the conversation shown: `from: text` for messages, the text of
    /// notices.
    async fn lines(&self) -> Vec<String> {
        let v = self
            .js("return [...document.querySelectorAll('#messages li')].map(li => li.classList.contains('msg') \
                 ? li.querySelector('.from').textContent + ': ' + li.querySelector('.text').textContent \
                 : li.textContent);")
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn wait_line(&self, line: &str) {
        let script = format!(
            "[...document.querySelectorAll('#messages li.msg')].some(li => \
             li.querySelector('.from').textContent + ': ' + li.querySelector('.text').textContent === {})",
            json!(line)
        );
        self.wait_for(&format!("line {line:?}"), &script).await;
    }

    async fn element(&self, id: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("{}: no #{id}: {e}", self.label))
    }

    async fn type_into(&self, id: &str, text: &str) {
        self.element(id)
            .await
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("{}: typing into #{id}: {e}", self.label));
    }

    async fn click(&self, id: &str) {
        self.element(id)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: clicking #{id}: {e}", self.label));
    }

    /// Keys to whatever has the focus, as a keyboard-only user types them.
    async fn keys(&self, keys: &str) {
        self.client
            .active_element()
            .await
            .expect("a focused element")
            .send_keys(keys)
            .await
            .unwrap_or_else(|e| panic!("{}: typing {keys:?}: {e}", self.label));
    }

    async fn focused_id(&self) -> String {
        self.js("return document.activeElement ? document.activeElement.id : '';")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Registers through the form with the mouse.
    async fn register(&self, name: &str, password: &str) {
        self.wait_state("greeted").await;
        // The field may hold the name last used from this address.
        self.element("login-name")
            .await
            .clear()
            .await
            .expect("clear the name field");
        self.type_into("login-name", name).await;
        self.type_into("login-password", password).await;
        self.click("register-submit").await;
        self.wait_online(name).await;
    }

    async fn wait_online(&self, name: &str) {
        self.wait_for(
            &format!("online as {name}"),
            &format!(
                "document.getElementById('status').textContent === {}",
                json!(format!("Online as {name}"))
            ),
        )
        .await;
    }

    /// Sends a line from the message box with the Send button.
    async fn say(&self, text: &str) {
        self.type_into("composer-text", text).await;
        self.client
            .find(Locator::Css("#composer button[type=submit]"))
            .await
            .expect("the Send button")
            .click()
            .await
            .expect("click Send");
    }

    async fn saved_token(&self) -> String {
        self.js("const s = JSON.parse(localStorage.getItem('echochat.session:' + location.host) || 'null'); return s ? s.token : '';")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn screenshot(&self, name: &str) {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("{}: screenshot: {e}", self.label));
        let path = artifacts_dir().join(name);
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

#[test]
fn the_web_client_loads_small_works_narrow_and_shows_its_connection_state() {
    let mut web = WebServer::start(&[]);
    let driver = Chromedriver::start();
    run(async {
        let page = Page::open(&driver, &web.url(), "narrow page", 360, 740).await;
        page.wait_state("greeted").await;
        assert_eq!(
            page.focused_id().await,
            "login-name",
            "the name field has the focus"
        );

        // Everything the first visit fetched came from the server itself, under 100 KB.
        let fetched = page
            .js(
                "const all = [...performance.getEntriesByType('navigation'), \
                 ...performance.getEntriesByType('resource')]; \
                 return all.map(e => [e.name, e.transferSize, e.decodedBodySize]);",
            )
            .await;
        let fetched = fetched.as_array().expect("performance entries");
        let mut total = 0;
        for entry in fetched {
            let name = entry[0].as_str().unwrap_or_default();
            assert!(
                name.starts_with(&web.origin()),
                "fetched from elsewhere: {name}"
            );
            if !name.contains("/ws") {
                total += entry[1]
                    .as_u64()
                    .unwrap_or(0)
                    .max(entry[2].as_u64().unwrap_or(0));
            }
        }
        assert!(fetched.len() >= 3, "{fetched:?}");
        assert!(total < 100 * 1024, "first load {total} bytes: {fetched:?}");

        // Usable at 360 pixels: nothing wider than the screen, every field labelled.
        let layout = page
            .js("return [document.documentElement.scrollWidth, window.innerWidth, \
                 [...document.querySelectorAll('input, textarea')].filter(e => !e.labels || !e.labels.length).map(e => e.id)];")
            .await;
        assert_eq!(layout[1], json!(360), "the page is not 360 pixels wide");
        assert!(
            layout[0].as_u64() <= layout[1].as_u64(),
            "the page is wider than the screen: {layout}"
        );
        assert_eq!(layout[2], json!([]), "fields without a label");
        page.screenshot("login-360px.png").await;

        // The server goes away: the page says so and counts down to its next try.
        blocking(|| web.server.stop());
        page.wait_state("offline").await;
        let (_, text) = page.status().await;
        assert!(text.starts_with("Offline. Reconnecting in "), "{text}");
        page.screenshot("offline-360px.png").await;
        blocking(|| web.start_again());
        page.wait_state("greeted").await;
        page.close().await;
    });
}

#[test]
fn browser_users_chat_with_each_other_and_a_terminal_user_through_a_restart_and_a_kick() {
    let mut web = WebServer::start(&[]);
    let driver = Chromedriver::start();
    let alice = unique_name("alice");
    let bob = unique_name("bob");
    let carol = unique_name("carol");
    run(async {
        let a = Page::open(&driver, &web.url(), "alice's page", 1100, 800).await;
        let b = Page::open(&driver, &web.url(), "bob's page", 360, 740).await;

        // Alice signs up with the keyboard only: name, Tab, password, Tab to "Log in",
        // Tab to "Register", Enter.
        a.wait_state("greeted").await;
        a.keys(&alice).await;
        a.keys(&Key::Tab.to_string()).await;
        a.keys("alice's secret").await;
        a.keys(&format!("{}{}", Key::Tab, Key::Tab)).await;
        assert_eq!(a.focused_id().await, "register-submit");
        a.keys(&Key::Enter.to_string()).await;
        a.wait_online(&alice).await;
        assert_eq!(
            a.focused_id().await,
            "composer-text",
            "the message box has the focus"
        );

        b.register(&bob, "bob's secret").await;
        let (mut c, _) = blocking(|| registered(&web.server, &carol, "carol's secret"));

        // Alice types and presses Enter; everyone gets it.
        a.keys(&format!("hello from alice{}", Key::Enter)).await;
        b.wait_line(&format!("{alice}: hello from alice")).await;
        let got = blocking(|| c.recv_matching("alice's message", |v| v["type"] == "message"));
        assert_eq!(got["text"], "hello from alice");

        // A terminal user's text reaches the pages as text, never as markup.
        let markup = "<img src=x onerror=\"document.title='owned'\"> <b>bold</b>";
        blocking(|| c.say(markup));
        a.wait_line(&format!("{carol}: {markup}")).await;
        b.wait_line(&format!("{carol}: {markup}")).await;
        let injected = a
            .js("return document.querySelectorAll('#messages img, #messages b').length;")
            .await;
        assert_eq!(injected, json!(0));

        b.say("hi alice, bob here").await;
        a.wait_line(&format!("{bob}: hi alice, bob here")).await;
        blocking(|| c.recv_matching("bob's message", |v| v["text"] == "hi alice, bob here"));

        // Who is online, in alice's side panel.
        a.wait_for(
            "three people online",
            "document.getElementById('people').children.length === 3",
        )
        .await;
        a.screenshot("chat.png").await;
        b.screenshot("chat-360px.png").await;

        // The server restarts; both pages come back by themselves, with their tokens.
        let tokens = (a.saved_token().await, b.saved_token().await);
        blocking(|| web.restart());
        a.wait_online(&alice).await;
        b.wait_online(&bob).await;
        assert_ne!(
            a.saved_token().await,
            tokens.0,
            "alice's token was not rotated"
        );
        assert_ne!(
            b.saved_token().await,
            tokens.1,
            "bob's token was not rotated"
        );
        let shown = a
            .js("return document.getElementById('login-view').hidden;")
            .await;
        assert_eq!(shown, json!(true), "alice was asked to log in again");
        a.wait_line(&format!("{bob}: hi alice, bob here")).await;

        let mut c2 = blocking(|| {
            let mut c2: TestClient = web.server.connect_greeted();
            c2.login(&carol, "carol's secret");
            c2
        });
        a.say("back after the restart").await;
        b.wait_line(&format!("{alice}: back after the restart"))
            .await;
        blocking(|| c2.recv_matching("alice's message", |v| v["text"] == "back after the restart"));

        // The admin kicks bob: his page says so and stays disconnected.
        blocking(|| web.server.admin_output(&format!("kick {bob}")));
        b.wait_state("closed").await;
        let notice = b
            .js("return document.getElementById('notice').textContent;")
            .await;
        assert!(
            notice
                .as_str()
                .unwrap_or_default()
                .starts_with("You were disconnected by the server"),
            "{notice}"
        );
        a.wait_for(
            "bob gone",
            &format!(
                "[...document.querySelectorAll('#messages li.note')].some(li => li.textContent === {})",
                json!(format!("{bob} went offline."))
            ),
        )
        .await;
        b.screenshot("kicked-360px.png").await;

        // Alice logs out from the account menu: back to the form, her token forgotten.
        a.click("account-button").await;
        a.click("logout").await;
        a.wait_state("greeted").await;
        assert_eq!(a.saved_token().await, "", "the token outlived the logout");
        let form = a
            .js("return !document.getElementById('login-view').hidden;")
            .await;
        assert_eq!(form, json!(true), "no login form after logging out");
        a.close().await;
        b.close().await;
    });
}

/// The whole scenario of the issue, with rooms, direct messages and paging (SPEC §7).
#[test]
fn browser_users_use_rooms_direct_messages_and_paging() {
    let mut web = WebServer::start(&["--history", "10", "--msg-rate", "0"]);
    let driver = Chromedriver::start();
    let alice = unique_name("alice");
    let bob = unique_name("bob");
    let carol = unique_name("carol");
    let room = unique_name("den");
    // Carol, on the terminal protocol, fills a room with more than one page.
    let (mut c, _) = registered(&web.server, &carol, "carol's secret");
    c.send(&json!({"type":"join","room":room}));
    c.recv_matching("the room", |v| v["type"] == "room");
    for n in 0..70 {
        c.send(&json!({"type":"say","room":room,"text":format!("old {n}")}));
        c.recv_matching("the echo", |v| {
            v["type"] == "message" && v["text"] == format!("old {n}")
        });
    }
    run(async {
        let a = Page::open(&driver, &web.url(), "alice's page", 1100, 800).await;
        let b = Page::open(&driver, &web.url(), "bob's page", 360, 740).await;
        a.register(&alice, "alice's secret").await;
        b.register(&bob, "bob's secret").await;

        // Alice joins from the side panel: the room opens with its last messages.
        a.type_into("join-name", &room).await;
        a.keys(&Key::Enter.to_string()).await;
        a.wait_for(
            "the room's title",
            &format!(
                "document.getElementById('conversation-title').textContent === {}",
                json!(format!("#{room}"))
            ),
        )
        .await;
        a.wait_line(&format!("{carol}: old 69")).await;

        // Scrolling back pages through the whole history, to its beginning.
        for _ in 0..5 {
            if a.js("return !document.getElementById('start').hidden;")
                .await
                == json!(true)
            {
                break;
            }
            a.js("document.getElementById('log').scrollTop = 0; \
                  document.getElementById('older').click(); return 0;")
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        a.wait_for(
            "the beginning of the room",
            "!document.getElementById('start').hidden",
        )
        .await;
        a.wait_line(&format!("{carol}: old 0")).await;
        let count = a
            .js("return document.querySelectorAll('#messages li.msg').length;")
            .await;
        assert_eq!(count, json!(70), "every message of the room, once");

        // Bob finds the room in the list of all rooms and joins it.
        b.click("sidebar-toggle").await;
        b.click("browse-rooms").await;
        b.wait_for(
            "the room list",
            "document.querySelectorAll('#all-rooms button').length > 0",
        )
        .await;
        b.client
            .find(Locator::Css(&format!(
                "#all-rooms button[aria-label='Join #{room}']"
            )))
            .await
            .expect("a Join button for the room")
            .click()
            .await
            .expect("click Join");
        b.wait_line(&format!("{carol}: old 69")).await;

        // Chat in the room reaches the browsers and the terminal user.
        a.say("in the den").await;
        b.wait_line(&format!("{alice}: in the den")).await;
        let got = blocking(|| c.recv_matching("alice's message", |v| v["text"] == "in the den"));
        assert_eq!(got["room"], room.as_str());
        b.say("hello den, bob here").await;
        a.wait_line(&format!("{bob}: hello den, bob here")).await;
        a.screenshot("room.png").await;

        // Bob writes to alice directly; carol sees nothing of it.
        b.click("sidebar-toggle").await;
        b.type_into("dm-name", &alice).await;
        b.keys(&Key::Enter.to_string()).await;
        b.say("psst, alice").await;
        b.wait_line(&format!("{bob}: psst, alice")).await;
        a.wait_for(
            "an unread direct message",
            "document.querySelector('#dm-list .badge') !== null",
        )
        .await;
        a.click_css("#dm-list button").await;
        a.wait_line(&format!("{bob}: psst, alice")).await;
        a.screenshot("direct-message.png").await;
        blocking(|| {
            while let Some(v) = c.try_recv(Duration::from_millis(300)) {
                assert_ne!(
                    v["text"], "psst, alice",
                    "a direct message reached a third user"
                );
            }
        });

        // A restart: both come back in their rooms and conversations.
        blocking(|| web.restart());
        a.wait_online(&alice).await;
        b.wait_online(&bob).await;
        a.wait_for(
            "the room in alice's list",
            &format!(
                "[...document.querySelectorAll('#room-list button')].some(b => b.textContent.startsWith({}))",
                json!(format!("#{room}"))
            ),
        )
        .await;
        a.wait_line(&format!("{bob}: psst, alice")).await;

        blocking(|| web.server.admin_output(&format!("kick {bob}")));
        b.wait_state("closed").await;
        a.close().await;
        b.close().await;
    });
}

impl Page {
    async fn click_css(&self, selector: &str) {
        self.client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("{}: no {selector}: {e}", self.label))
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: clicking {selector}: {e}", self.label));
    }
}

#[test]
fn the_account_menu_changes_the_password_and_deletes_the_account() {
    let web = WebServer::start(&[]);
    let driver = Chromedriver::start();
    let dora = unique_name("dora");
    run(async {
        let page = Page::open(&driver, &web.url(), "dora's page", 1100, 800).await;
        page.register(&dora, "first secret").await;

        page.click("account-button").await;
        page.type_into("old-password", "first secret").await;
        page.type_into("new-password", "second secret").await;
        page.type_into("new-password-again", "second secret").await;
        page.click_css("#password-form button[type=submit]").await;
        page.wait_for(
            "the password changed",
            "document.getElementById('password-result').textContent.startsWith('Password changed.')",
        )
        .await;
        blocking(|| {
            let mut c: TestClient = web.server.connect_greeted();
            c.login(&dora, "second secret");
        });

        // A wrong password deletes nothing; the right one deletes the account.
        page.type_into("delete-password", "first secret").await;
        page.click_css("#delete-form button[type=submit]").await;
        page.wait_for(
            "the refusal",
            "document.getElementById('delete-result').textContent.startsWith('Not deleted')",
        )
        .await;
        page.type_into("delete-password", "second secret").await;
        page.click_css("#delete-form button[type=submit]").await;
        page.wait_for(
            "the notice",
            "document.getElementById('notice').textContent === 'Your account was deleted.'",
        )
        .await;
        page.wait_state("greeted").await;
        assert_eq!(page.saved_token().await, "");
        blocking(|| {
            let mut c: TestClient = web.server.connect_greeted();
            c.send(&json!({"type":"login","name":dora,"password":"second secret"}));
            assert_eq!(c.expect_auth_error(), "unknown_user");
        });
        page.close().await;
    });
}
