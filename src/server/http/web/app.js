// echochat web client: the protocol of docs/protocol.md over a WebSocket at /ws, one
// JSON object per text message. Plain JavaScript, no build step, nothing from
// elsewhere. Every string from the server reaches the page as text (textContent or a
// text node), never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  /** An element with a class and children (strings become text nodes). */
  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    for (const child of children) {
      if (child == null) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  const fold = (name) => String(name).toLowerCase();
  const LOBBY = "lobby";
  const PAGE = 50;
  const MAX_TEXT = 4096;
  const PING_AFTER = 30000; // ms of silence before a ping
  const PONG_WAIT = 20000; // ms to wait for the pong before giving the connection up
  const REQUEST_WAIT = 15000; // ms to wait for an answer before giving a request up
  const STORE_KEY = "echochat.session:" + location.host;

  // ---- saved session (the token rotates on every auth_ok) ----

  function loadSaved() {
    try {
      const saved = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
      return saved && typeof saved.token === "string" ? saved : null;
    } catch (_) {
      return null;
    }
  }
  function save(name, token) {
    try { localStorage.setItem(STORE_KEY, JSON.stringify({ name, token })); } catch (_) { /* private mode */ }
  }
  function forget() {
    try { localStorage.removeItem(STORE_KEY); } catch (_) { /* private mode */ }
  }

  // ---- state ----

  let ws = null; // the live socket
  let phase = "connecting"; // connecting | waiting | greeted | authenticating | online | offline | closed
  let me = null; // our name once authenticated
  let usedToken = null; // the token sent in the last resume
  let knownName = null;
  let backoff = 1000;
  let retryAt = 0;
  let retryTimer = 0;
  let countdownTimer = 0;
  let openedAt = 0;
  let lastSent = 0;
  let pingTimer = 0;
  let pongTimer = 0;
  let stayClosed = false; // after kicked: wait for the user
  let reconnectNow = false; // after logout or account deletion: a fresh connection at once
  let loginHistoryPending = false; // from auth_ok until the history frames are all in

  /** Conversations by key: "room:<folded name>" or "dm:<folded name>". */
  const convs = new Map();
  let current = "room:" + LOBBY;
  let people = [];

  /** Requests go one at a time, each waiting for its answer, so that an `error` frame
   * is always the answer to the request in flight. */
  const queue = [];
  let inFlight = null;

  // ---- connection ----

  function setStatus(state, text) {
    phase = state;
    const status = $("status");
    status.dataset.state = state;
    status.textContent = text;
    $("retry").hidden = !(state === "offline" || state === "closed");
  }

  function connect() {
    clearTimeout(retryTimer);
    clearInterval(countdownTimer);
    stayClosed = false;
    if (ws) return;
    setStatus("connecting", "Connecting…");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let sock;
    try {
      sock = new WebSocket(scheme + "//" + location.host + "/ws");
    } catch (_) {
      disconnected(0);
      return;
    }
    ws = sock;
    sock.onopen = () => {
      if (ws !== sock) return;
      openedAt = Date.now();
      lastSent = Date.now();
      setStatus("waiting", "Connected, waiting for the server to let us in…");
      schedulePing();
    };
    sock.onmessage = (event) => {
      if (ws !== sock) return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (_) {
        msg = null;
      }
      if (!msg || typeof msg !== "object" || typeof msg.type !== "string") {
        // Malformed: this connection cannot be trusted further.
        sock.close();
        return;
      }
      clearTimeout(pongTimer);
      handle(msg);
    };
    sock.onclose = () => {
      if (ws !== sock) return;
      ws = null;
      disconnected(openedAt ? Date.now() - openedAt : 0);
    };
  }

  function send(obj) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(obj));
    lastSent = Date.now();
    return true;
  }

  function schedulePing() {
    clearTimeout(pingTimer);
    pingTimer = setTimeout(() => {
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      if (Date.now() - lastSent >= PING_AFTER) {
        send({ type: "ping" });
        clearTimeout(pongTimer);
        const sock = ws;
        // A connection that answers nothing is dead even if the browser has not noticed.
        pongTimer = setTimeout(() => { if (ws === sock) sock.close(); }, PONG_WAIT);
      }
      schedulePing();
    }, 5000);
  }

  function disconnected(upFor) {
    clearTimeout(pingTimer);
    clearTimeout(pongTimer);
    openedAt = 0;
    // What was asked and not answered is lost with the connection; messages are
    // sent again (unless the history shows they arrived), the rest is dropped.
    if (inFlight) {
      clearTimeout(inFlight.timer);
      if (inFlight.kind === "say") queue.unshift(inFlight);
      else fail(inFlight, "the connection was lost");
      inFlight = null;
    }
    for (let i = queue.length - 1; i >= 0; i--) {
      if (queue[i].kind !== "say") fail(queue.splice(i, 1)[0], "the connection was lost");
    }
    if (phase === "authenticating") usedToken = null;
    if (stayClosed) {
      setStatus("closed", "Disconnected.");
      return;
    }
    if (reconnectNow) {
      reconnectNow = false;
      backoff = 1000;
      connect();
      return;
    }
    // A connection that stayed up a while starts the backoff over; one that drops
    // again at once does not.
    if (upFor >= 30000) backoff = 1000;
    const delay = backoff;
    backoff = Math.min(backoff * 2, 30000);
    retryAt = Date.now() + delay;
    const tick = () => {
      const left = Math.max(1, Math.ceil((retryAt - Date.now()) / 1000));
      setStatus("offline", `Offline. Reconnecting in ${left} s…`);
    };
    tick();
    countdownTimer = setInterval(tick, 1000);
    retryTimer = setTimeout(connect, delay);
  }

  // ---- requests ----

  function request(kind, frame, extra) {
    queue.push(Object.assign({ kind, frame }, extra));
    pump();
  }

  function pump() {
    if (inFlight || phase !== "online") return;
    while (queue.length) {
      const next = queue.shift();
      if (next.kind === "say" && alreadyArrived(next)) continue;
      if (next.kind === "say") next.sentAfter = newestId(next.conv);
      if (!send(next.frame)) {
        queue.unshift(next);
        return;
      }
      inFlight = next;
      next.timer = setTimeout(() => {
        if (inFlight !== next) return;
        inFlight = null;
        fail(next, "the server did not answer");
        pump();
      }, REQUEST_WAIT);
      return;
    }
  }

  /** Ends the request in flight if `match` says this frame answers it. */
  function answered(match) {
    if (inFlight && match(inFlight)) {
      clearTimeout(inFlight.timer);
      const done = inFlight;
      inFlight = null;
      pump();
      return done;
    }
    return null;
  }

  function fail(req, reason) {
    if (req.kind === "say") notice(req.conv, `Not sent (${reason}): ${req.frame.text}`, "error");
    else if (req.onError) req.onError(reason);
  }

  // ---- conversations ----

  function conv(kind, name) {
    const key = kind + ":" + fold(name);
    let c = convs.get(key);
    if (!c) {
      c = { key, kind, name, items: [], ids: new Set(), atStart: false, loading: false, unread: 0 };
      convs.set(key, c);
      renderLists();
    }
    return c;
  }
  const roomConv = (name) => conv("room", name || LOBBY);
  const newestId = (key) => {
    const c = convs.get(key);
    if (!c) return 0;
    for (let i = c.items.length - 1; i >= 0; i--) if (c.items[i].id) return c.items[i].id;
    return 0;
  };
  const oldestId = (c) => { const m = c.items.find((item) => item.id); return m ? m.id : 0; };

  /** The conversation a MESSAGE belongs to. */
  function convOf(msg) {
    if (typeof msg.to !== "string") return roomConv(msg.room);
    // The other party, named as the server spells the account.
    const other = fold(msg.from) === fold(me) ? msg.to : msg.from;
    const c = conv("dm", other);
    c.name = other;
    return c;
  }

  function isMessage(m) {
    return m && typeof m === "object" && typeof m.id === "number" && typeof m.from === "string" &&
      typeof m.text === "string";
  }

  /** A message that arrived live. */
  function addLive(msg) {
    const c = convOf(msg);
    if (c.ids.has(msg.id)) return;
    c.ids.add(msg.id);
    c.items.push(msg);
    if (c.key === current) appendItem(msg);
    else if (fold(msg.from) !== fold(me)) {
      c.unread++;
      renderLists();
    }
    if (document.hidden && fold(msg.from) !== fold(me)) {
      unseen++;
      document.title = `(${unseen}) echochat`;
    }
  }
  let unseen = 0;
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) { unseen = 0; document.title = "echochat"; }
  });

  /** The newest messages of a conversation, sent at login or on joining. */
  function mergeRecent(c, messages) {
    const fresh = messages.filter((m) => isMessage(m) && !c.ids.has(m.id));
    const newest = newestId(c.key);
    const overlaps = fresh.length < messages.length || (fresh.length && fresh[0].id <= newest);
    if (fresh.length && newest && !overlaps) {
      // Messages may be missing between what we had and these: start over from these.
      c.items = [];
      c.ids.clear();
      c.atStart = false;
    }
    for (const m of fresh) {
      if (m.id <= newestId(c.key)) continue;
      c.ids.add(m.id);
      c.items.push(m);
    }
    if (!c.items.some((item) => item.id) && messages.length === 0) c.atStart = true;
    if (c.key === current) renderConversation();
  }

  /** An older page, asked for with `before`. */
  function mergeOlder(c, messages) {
    c.loading = false;
    const oldest = oldestId(c);
    const older = messages.filter((m) => isMessage(m) && !c.ids.has(m.id) && (!oldest || m.id < oldest));
    if (!older.length) c.atStart = true;
    for (const m of older) c.ids.add(m.id);
    c.items = older.concat(c.items);
    if (c.key !== current) return;
    const log = $("log");
    const fromBottom = log.scrollHeight - log.scrollTop;
    const list = $("messages");
    const first = list.firstChild;
    for (const m of older) list.insertBefore(itemNode(m), first);
    log.scrollTop = log.scrollHeight - fromBottom;
    renderEdge();
  }

  function notice(key, text, kind) {
    const c = convs.get(key) || roomConv(LOBBY);
    const item = { notice: text, kind: kind || "info", ts: Date.now() };
    c.items.push(item);
    if (c.key === current) appendItem(item);
  }

  // ---- rendering ----

  const pad = (n) => String(n).padStart(2, "0");
  function timeNode(ts) {
    const date = new Date(typeof ts === "number" ? ts : Date.now());
    const node = el("time", "ts");
    node.dateTime = date.toISOString();
    node.title = date.toLocaleString();
    const today = new Date().toDateString() === date.toDateString();
    node.textContent = (today ? "" : `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} `) +
      `${pad(date.getHours())}:${pad(date.getMinutes())}`;
    return node;
  }

  function itemNode(item) {
    if (item.notice) {
      const li = el("li", "note " + item.kind, item.notice);
      return li;
    }
    const mine = fold(item.from) === fold(me);
    const li = el("li", "msg" + (mine ? " mine" : "") + (item.from === "server" ? " server" : ""));
    li.dataset.id = item.id;
    const from = el("bdi", "from", item.from);
    const text = el("span", "text", item.text);
    text.dir = "auto";
    li.append(timeNode(item.ts), " ", from, el("span", "sep", ": "), text);
    return li;
  }

  function nearBottom() {
    const log = $("log");
    return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  }

  function appendItem(item) {
    const stick = nearBottom();
    $("messages").append(itemNode(item));
    if (stick || (item.from && fold(item.from) === fold(me))) $("log").scrollTop = $("log").scrollHeight;
  }

  function renderEdge() {
    const c = convs.get(current);
    const atStart = !c || c.atStart;
    $("older").hidden = atStart;
    $("older").disabled = !!(c && c.loading);
    $("older").textContent = c && c.loading ? "Loading earlier messages…" : "Load earlier messages";
    $("start").hidden = !atStart;
  }

  function renderConversation() {
    const c = convs.get(current) || roomConv(LOBBY);
    current = c.key;
    c.unread = 0;
    const title = c.kind === "room" ? "#" + c.name : c.name;
    $("conversation-title").textContent = c.kind === "room" ? title : "Direct: " + title;
    $("composer-label").textContent = "Message " + title;
    $("composer-text").placeholder = "Message " + title;
    $("leave-room").hidden = !(c.kind === "room" && fold(c.name) !== LOBBY);
    const list = $("messages");
    list.replaceChildren(...c.items.map(itemNode));
    $("log").scrollTop = $("log").scrollHeight;
    renderEdge();
    renderLists();
    // A conversation with nothing loaded yet asks for its latest page.
    if (!loginHistoryPending) loadIfEmpty(c);
  }

  function listItem(c, label, extra) {
    const button = el("button", "conv", label);
    button.type = "button";
    if (c.key === current) button.setAttribute("aria-current", "true");
    if (c.unread) {
      const badge = el("span", "badge", String(c.unread));
      badge.setAttribute("aria-label", `${c.unread} unread`);
      button.append(" ", badge);
    }
    if (extra) button.append(extra);
    button.addEventListener("click", () => open(c.key));
    return el("li", null, button);
  }

  function renderLists() {
    const rooms = [...convs.values()].filter((c) => c.kind === "room")
      .sort((a, b) => (fold(a.name) === LOBBY ? -1 : fold(b.name) === LOBBY ? 1 : fold(a.name).localeCompare(fold(b.name))));
    $("room-list").replaceChildren(...rooms.map((c) => listItem(c, "#" + c.name)));
    const dms = [...convs.values()].filter((c) => c.kind === "dm")
      .sort((a, b) => fold(a.name).localeCompare(fold(b.name)));
    $("dm-list").replaceChildren(...dms.map((c) => listItem(c, c.name)));
    const unread = [...convs.values()].reduce((sum, c) => sum + c.unread, 0);
    $("sidebar-toggle").textContent = unread ? `Rooms and people (${unread} unread)` : "Rooms and people";
  }

  function renderPeople(room, users) {
    people = users.filter((u) => typeof u === "string");
    $("people-heading").textContent = `Online in #${room} (${people.length})`;
    $("people").replaceChildren(...people.map((name) => {
      const li = el("li", "person", el("bdi", null, name));
      if (fold(name) === fold(me)) {
        li.append(" (you)");
      } else {
        const button = el("button", "link", "Message");
        button.type = "button";
        button.setAttribute("aria-label", "Message " + name);
        button.addEventListener("click", () => open(conv("dm", name).key));
        li.append(" ", button);
      }
      return li;
    }));
  }

  /** Switches to a conversation. */
  function open(key) {
    current = key;
    renderConversation();
    refreshWho();
    collapseSidebar();
    $("composer-text").focus();
  }

  function loadIfEmpty(c) {
    if (c.awaitingHistory || c.items.some((item) => item.id) || c.atStart || c.loading) return;
    if (phase === "online") loadOlder(c);
  }

  function loadOlder(c) {
    if (c.loading || c.atStart || phase !== "online") return;
    c.loading = true;
    const frame = { type: "history", limit: PAGE };
    if (c.kind === "room") frame.room = c.name;
    else frame.with = c.name;
    const before = oldestId(c);
    if (before) frame.before = before;
    request("page", frame, {
      conv: c.key,
      onError: (reason) => {
        c.loading = false;
        c.atStart = true;
        notice(c.key, "Could not load earlier messages: " + reason, "error");
        if (c.key === current) renderEdge();
      },
    });
    if (c.key === current) renderEdge();
  }

  let whoTimer = 0;
  function refreshWho() {
    clearTimeout(whoTimer);
    whoTimer = setTimeout(() => {
      if (phase !== "online") return;
      const c = convs.get(current);
      const room = c && c.kind === "room" ? c.name : LOBBY;
      if (queue.some((r) => r.kind === "who")) return;
      request("who", { type: "who", room }, { room });
    }, 200);
  }

  // ---- the protocol ----

  const authMessages = {
    unknown_user: "There is no account with that name. Register it?",
    bad_password: "Wrong password.",
    name_taken: "That name is taken.",
    invalid_name: "A name is 1 to 32 letters, digits, _, - or . characters.",
    invalid_password: "A password is 4 to 1024 bytes long.",
    invalid_token: "Your saved session has expired; please log in.",
    rate_limited: "Too many attempts; wait a little and try again.",
    banned: "This account is banned.",
    unavailable: "The server is temporarily unavailable; try again soon.",
  };

  function handle(msg) {
    switch (msg.type) {
      case "welcome": return onWelcome(msg);
      case "auth_ok": return onAuthOk(msg);
      case "auth_error": return onAuthError(msg);
      case "history": return onHistory(msg);
      case "message":
        if (!isMessage(msg)) return;
        addLive(msg);
        answered((r) => r.kind === "say" && fold(msg.from) === fold(me) && msg.text === r.frame.text &&
          convOf(msg).key === r.conv);
        return;
      case "joined":
        if (typeof msg.name === "string") notice("room:" + LOBBY, `${msg.name} is online.`);
        return refreshWho();
      case "left":
        if (typeof msg.name === "string") notice("room:" + LOBBY, `${msg.name} went offline.`);
        return refreshWho();
      case "who": {
        const req = answered((r) => r.kind === "who");
        if (loginHistoryPending) {
          loginHistoryPending = false;
          loadIfEmpty(convs.get(current) || roomConv(LOBBY));
        }
        const room = typeof msg.room === "string" ? msg.room : (req && req.room) || LOBBY;
        const c = convs.get(current);
        const shown = c && c.kind === "room" ? c.name : LOBBY;
        if (Array.isArray(msg.users) && fold(room) === fold(shown)) renderPeople(room, msg.users);
        return;
      }
      case "room": {
        if (typeof msg.room !== "string") return;
        const c = roomConv(msg.room);
        c.name = msg.room;
        const req = answered((r) => r.kind === "join" && fold(r.frame.room) === fold(msg.room));
        renderLists();
        if (req) {
          // The room's latest messages come next, in a history frame of their own.
          c.awaitingHistory = true;
          open(c.key);
        }
        return;
      }
      case "member_joined":
        if (typeof msg.room === "string" && typeof msg.name === "string") {
          notice(roomConv(msg.room).key, `${msg.name} joined #${msg.room}.`);
          refreshWho();
        }
        return;
      case "member_left":
        if (typeof msg.room === "string" && typeof msg.name === "string") {
          notice(roomConv(msg.room).key, `${msg.name} left #${msg.room}.`);
          refreshWho();
        }
        return;
      case "parted": {
        if (typeof msg.room !== "string") return;
        answered((r) => r.kind === "part" && fold(r.frame.room) === fold(msg.room));
        const key = "room:" + fold(msg.room);
        convs.delete(key);
        if (current === key) open("room:" + LOBBY);
        notice("room:" + LOBBY, `You left #${msg.room}.`);
        renderLists();
        return;
      }
      case "rooms":
        answered((r) => r.kind === "rooms");
        if (Array.isArray(msg.rooms)) renderAllRooms(msg.rooms);
        return;
      case "pong": return;
      case "error": return onError(msg);
      case "password_changed":
        if (typeof msg.token === "string") save(me, msg.token);
        answered((r) => r.kind === "password");
        $("password-form").reset();
        result("password-result", "Password changed. Your other sessions were signed out.", true);
        return;
      case "account_deleted":
        answered((r) => r.kind === "delete");
        forget();
        signedOut("Your account was deleted.");
        return;
      case "kicked":
        stayClosed = true;
        showNotice("You were disconnected by the server: " + text(msg.message));
        return;
      case "shutdown":
        showNotice("The server is shutting down: " + text(msg.message) + " Reconnecting when it is back.");
        return;
      default:
        // A newer server may send frames this client does not know.
        return;
    }
  }

  const text = (value) => (typeof value === "string" ? value : "");

  function onWelcome(msg) {
    knownName = typeof msg.known_name === "string" ? msg.known_name : null;
    const saved = loadSaved();
    if (saved) {
      usedToken = saved.token;
      setStatus("authenticating", "Signing in…");
      send({ type: "resume", token: saved.token });
      return;
    }
    showLogin();
  }

  function showLogin(error) {
    me = null;
    setStatus("greeted", "Connected. Not signed in.");
    $("chat-view").hidden = true;
    $("account-button").hidden = true;
    $("login-view").hidden = false;
    const name = $("login-name");
    if (!name.value && knownName) name.value = knownName;
    $("login-error").textContent = error || "";
    (name.value ? $("login-password") : name).focus();
  }

  function onAuthOk(msg) {
    if (typeof msg.name !== "string" || typeof msg.token !== "string") return;
    const first = !me || fold(me) !== fold(msg.name);
    if (first) {
      convs.clear();
      current = "room:" + LOBBY;
      queue.length = 0;
    }
    me = msg.name;
    usedToken = null;
    save(me, msg.token);
    const wasLogin = !$("login-view").hidden;
    $("login-view").hidden = true;
    $("chat-view").hidden = false;
    $("account-button").hidden = false;
    $("account-name").textContent = me;
    $("login-password").value = "";
    setStatus("online", "Online as " + me);
    $("notice").hidden = true;
    // `who` goes first: its answer comes after every history frame of the login, so
    // messages waiting to be sent again are checked against that history, and empty
    // conversations ask for their messages only once it is in.
    loginHistoryPending = true;
    const shown = convs.get(current);
    const room = shown && shown.kind === "room" ? shown.name : LOBBY;
    queue.unshift({ kind: "who", frame: { type: "who", room }, room });
    pump();
    roomConv(LOBBY);
    renderConversation();
    if (wasLogin || first) $("composer-text").focus();
  }

  function onAuthError(msg) {
    const code = text(msg.code);
    if (usedToken) {
      const tried = usedToken;
      usedToken = null;
      const saved = loadSaved();
      if (code === "invalid_token" && saved && saved.token !== tried) {
        // Another tab of this browser spent the token and saved the next one.
        usedToken = saved.token;
        send({ type: "resume", token: saved.token });
        return;
      }
      if (code === "invalid_token" || code === "banned") forget();
    }
    let reason = authMessages[code] || text(msg.message) || "Signing in failed.";
    if ((code === "banned" || code === "rate_limited") && text(msg.message)) reason += " " + text(msg.message);
    showLogin(reason);
    if (code === "unknown_user") $("register-submit").focus();
  }

  function onHistory(msg) {
    const messages = Array.isArray(msg.messages) ? msg.messages : [];
    let c;
    if (typeof msg.with === "string") c = conv("dm", msg.with);
    else if (msg.direct === true) {
      // The direct messages of the login, sent and received: one conversation each.
      const byConv = new Map();
      for (const m of messages) {
        if (!isMessage(m) || typeof m.to !== "string") continue;
        const dm = convOf(m);
        if (!byConv.has(dm)) byConv.set(dm, []);
        byConv.get(dm).push(m);
      }
      for (const [dm, list] of byConv) mergeRecent(dm, list);
      return;
    } else c = roomConv(typeof msg.room === "string" ? msg.room : LOBBY);
    if (typeof msg.room === "string") c.name = msg.room;
    const page = answered((r) => r.kind === "page" && r.conv === c.key);
    if (page) mergeOlder(c, messages);
    else {
      c.awaitingHistory = false;
      mergeRecent(c, messages);
    }
    renderLists();
  }

  function onError(msg) {
    const reason = text(msg.message) || text(msg.code);
    const req = inFlight;
    if (!req) {
      notice(current, "Error: " + reason, "error");
      return;
    }
    clearTimeout(req.timer);
    inFlight = null;
    if (req.kind === "say" && msg.code === "rate_limited") {
      // Too fast: the same message again, a little later.
      queue.unshift(req);
      inFlight = { kind: "wait", timer: setTimeout(() => { inFlight = null; pump(); }, 1500) };
      return;
    }
    fail(req, reason);
    pump();
  }

  /** Whether a message waiting to be sent again already arrived (its echo is in the
   * history of the conversation, newer than when it was first sent). */
  function alreadyArrived(req) {
    if (req.sentAfter === undefined) return false;
    const c = convs.get(req.conv);
    return !!c && c.items.some((m) => m.id > req.sentAfter && fold(m.from) === fold(me) && m.text === req.frame.text);
  }

  function signedOut(message) {
    me = null;
    convs.clear();
    queue.length = 0;
    $("account-dialog").open && $("account-dialog").close();
    showNotice(message);
    reconnectNow = true;
    if (!ws) {
      connect();
      return;
    }
    // The server closes the connection; one that does not is closed here.
    const sock = ws;
    setTimeout(() => { if (ws === sock) sock.close(); }, 3000);
  }

  function showNotice(message) {
    const box = $("notice");
    box.textContent = message;
    box.hidden = false;
  }

  function result(id, message, ok) {
    const node = $(id);
    node.textContent = message;
    node.classList.toggle("ok", !!ok);
  }

  function renderAllRooms(rooms) {
    const list = $("all-rooms");
    list.hidden = false;
    $("browse-rooms").setAttribute("aria-expanded", "true");
    const items = rooms.filter((r) => r && typeof r.room === "string").map((r) => {
      const count = typeof r.members === "number" ? r.members : 0;
      const label = el("span", null, "#" + r.room, el("span", "muted", ` ${count} member${count === 1 ? "" : "s"}`));
      const button = el("button", "link", r.member ? "Open" : "Join");
      button.type = "button";
      button.setAttribute("aria-label", (r.member ? "Open #" : "Join #") + r.room);
      button.addEventListener("click", () => (r.member ? open(roomConv(r.room).key) : join(r.room)));
      return el("li", null, label, " ", button);
    });
    list.replaceChildren(...(items.length ? items : [el("li", "muted", "No rooms yet.")]));
  }

  // ---- what the user does ----

  const NAME_RULE = /^[\p{L}\p{N}_.-]{1,32}$/u;
  const bytes = (s) => new TextEncoder().encode(s).length;

  function join(room) {
    room = room.trim().replace(/^#/, "");
    if (!NAME_RULE.test(room)) {
      $("join-error").textContent = "A room name is 1 to 32 letters, digits, _, - or . characters.";
      return false;
    }
    $("join-error").textContent = "";
    const existing = convs.get("room:" + fold(room));
    if (existing) {
      open(existing.key);
      return true;
    }
    request("join", { type: "join", room }, {
      onError: (reason) => { $("join-error").textContent = `Could not join #${room}: ${reason}`; },
    });
    return true;
  }

  function part(room) {
    if (fold(room) === LOBBY) {
      notice(current, "Everyone stays in the lobby.", "error");
      return;
    }
    request("part", { type: "part", room }, {
      onError: (reason) => notice(current, `Could not leave #${room}: ${reason}`, "error"),
    });
  }

  function say(key, textToSend) {
    const c = convs.get(key);
    if (!c) return;
    if ([...textToSend].length > MAX_TEXT) {
      notice(key, `Not sent: a message is at most ${MAX_TEXT} characters.`, "error");
      return;
    }
    const frame = { type: "say", text: textToSend };
    if (c.kind === "dm") frame.to = c.name;
    else if (fold(c.name) !== LOBBY) frame.room = c.name;
    request("say", frame, { conv: key });
  }

  const HELP = "Commands: /join ROOM, /part [ROOM], /rooms, /msg NAME TEXT, /who, /logout, /help; //text sends a line starting with /.";

  function command(line) {
    const [word, ...rest] = line.slice(1).split(/\s+/);
    const arg = line.slice(1 + word.length).trim();
    const c = convs.get(current);
    switch (word.toLowerCase()) {
      case "join": return arg ? join(arg) : notice(current, "usage: /join ROOM", "error");
      case "part": return part(arg || (c && c.kind === "room" ? c.name : LOBBY));
      case "rooms": return request("rooms", { type: "rooms" });
      case "msg": {
        const [name] = rest;
        const body = arg.slice((name || "").length).trim();
        if (!name || !body) return notice(current, "usage: /msg NAME TEXT", "error");
        const dm = conv("dm", name);
        open(dm.key);
        return say(dm.key, body);
      }
      case "who": {
        const room = c && c.kind === "room" ? c.name : LOBBY;
        return request("who", { type: "who", room }, {
          room,
          onError: (reason) => notice(current, reason, "error"),
        });
      }
      case "logout": return logout();
      case "help": return notice(current, HELP);
      default: return notice(current, `Unknown command /${word}. ${HELP}`, "error");
    }
  }

  function logout() {
    send({ type: "logout" });
    forget();
    signedOut("You logged out.");
  }

  function collapseSidebar() {
    $("sidebar").classList.remove("open");
    $("sidebar-toggle").setAttribute("aria-expanded", "false");
  }

  // ---- wiring ----

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const kind = event.submitter && event.submitter.value === "register" ? "register" : "login";
    const name = $("login-name").value.trim();
    const password = $("login-password").value;
    if (!name || !password) {
      $("login-error").textContent = "Enter a name and a password.";
      ($("login-name").value ? $("login-password") : $("login-name")).focus();
      return;
    }
    if (kind === "register" && !NAME_RULE.test(name)) {
      $("login-error").textContent = authMessages.invalid_name;
      return;
    }
    if (kind === "register" && (bytes(password) < 4 || bytes(password) > 1024)) {
      $("login-error").textContent = authMessages.invalid_password;
      return;
    }
    if (phase !== "greeted") {
      $("login-error").textContent = "Not connected yet; wait a moment.";
      return;
    }
    $("login-error").textContent = "";
    setStatus("authenticating", kind === "register" ? "Registering…" : "Signing in…");
    send({ type: kind, name, password });
  });

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const box = $("composer-text");
    const line = box.value;
    if (!line.trim()) return;
    box.value = "";
    if (line.startsWith("/") && !line.startsWith("//")) command(line.trim());
    else say(current, line.startsWith("//") ? line.slice(1) : line);
  });

  $("composer-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (join($("join-name").value)) $("join-name").value = "";
  });

  $("dm-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("dm-name").value.trim();
    if (!name) return;
    $("dm-name").value = "";
    open(conv("dm", name).key);
  });

  $("browse-rooms").addEventListener("click", () => {
    const list = $("all-rooms");
    if (!list.hidden) {
      list.hidden = true;
      $("browse-rooms").setAttribute("aria-expanded", "false");
      return;
    }
    request("rooms", { type: "rooms" });
  });

  $("leave-room").addEventListener("click", () => {
    const c = convs.get(current);
    if (c && c.kind === "room") part(c.name);
  });

  $("older").addEventListener("click", () => {
    const c = convs.get(current);
    if (c) loadOlder(c);
  });

  $("log").addEventListener("scroll", () => {
    const c = convs.get(current);
    if (c && $("log").scrollTop < 40 && !c.atStart && !c.loading) loadOlder(c);
  });

  $("sidebar-toggle").addEventListener("click", () => {
    const open = $("sidebar").classList.toggle("open");
    $("sidebar-toggle").setAttribute("aria-expanded", String(open));
  });

  $("retry").addEventListener("click", () => {
    $("notice").hidden = true;
    backoff = 1000;
    connect();
  });

  $("account-button").addEventListener("click", () => {
    result("password-result", "");
    result("delete-result", "");
    $("account-dialog").showModal();
  });
  $("account-close").addEventListener("click", () => $("account-dialog").close());
  $("logout").addEventListener("click", logout);

  $("password-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const old = $("old-password").value;
    const fresh = $("new-password").value;
    if (!old || !fresh) return result("password-result", "Enter the current and the new password.");
    if (fresh !== $("new-password-again").value) return result("password-result", "The new passwords differ.");
    if (bytes(fresh) < 4 || bytes(fresh) > 1024) return result("password-result", authMessages.invalid_password);
    result("password-result", "Changing…", true);
    request("password", { type: "change_password", old, new: fresh }, {
      onError: (reason) => result("password-result", "Not changed: " + reason),
    });
  });

  $("delete-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const password = $("delete-password").value;
    if (!password) return result("delete-result", "Enter your password.");
    request("delete", { type: "delete_account", password }, {
      onError: (reason) => result("delete-result", "Not deleted: " + reason),
    });
    $("delete-form").reset();
  });

  window.addEventListener("online", () => { if (!ws && !stayClosed) { backoff = 1000; connect(); } });

  connect();
})();
