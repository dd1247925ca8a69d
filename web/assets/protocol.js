// protocol.js: one WebSocket to /ws, speaking the real-time protocol of
// docs/protocol.md, shared by the meeting page, the resident's chat page and
// the staff console. One connection carries any number of rooms.
//
// What it does for its users:
// - gets a single-use ticket (`POST /api/ws/ticket`) for every connection;
// - reconnects after a drop with a growing wait (0.5 s doubling to 10 s,
//   with jitter; at once when the browser comes back online), and after a
//   second `welcome` (another node took over); when the browser says it
//   went offline, the socket is given up at once rather than left to the
//   ping to find dead, so the server sees the party away and the page can
//   say so;
// - on every reconnect joins each tracked room again and `resume`s it from
//   the last seq its listeners were given, so nothing is shown twice and
//   nothing is missed;
// - keeps what is sent while disconnected in a queue and sends it after the
//   rooms are joined again; a `chat.send` without its `chat.stored` answer is
//   sent again with the same client_id (the server stores it at most once);
//   transient messages (typing, WebRTC signals, ping) are not queued;
// - sends `ack` for a room at most once per seq, again after a reconnect;
// - pings every 25 s and gives a connection up when nothing came back in
//   10 s, because a browser does not notice a silently dead connection.
//
// Exported API
//
//   sessionTicket(csrf) -> () => Promise<string>
//       Tickets for the cookie session (the x-csrf-token header).
//   bearerTicket(token) -> () => Promise<string>
//       Tickets for a bearer token (the one-chat token of an anonymous chat).
//   postJson(path, body?, { csrf?, bearer? }) -> Promise<json|null>
//       POST with JSON; rejects with an Error carrying `status` and `code`
//       (the API's error code) when the answer is not 2xx.
//   newId() -> string               a client_id for chat.send.
//
//   new Connection({ ticket, onState?, onTicketError?, onPageHide? })
//       ticket: () => Promise<string>, called before every connection.
//       onPageHide(): the page goes away (pagehide), just before the socket
//         is closed: the last chance to send (sendNow) a `leave`.
//       onState(state): "connecting" | "open" | "reconnecting" | "closed".
//       onTicketError(error) -> "retry" | "stop": what to do when `ticket`
//         rejects (default: stop on 401/403, else retry).
//     .start()                      connect (again, after stop()).
//     .stop()                       close for good; no reconnect.
//     .party                        this connection's party, from `welcome`.
//     .state                        as given to onState.
//     .on(type, fn) -> off()        every server message of `type`, of any
//                                   room or none ("*": every message).
//     .send(message) -> bool        sends (adds v: 1), or queues while
//                                   disconnected; true when sent now.
//     .room(id) -> Room             the handle of room `id`, made on first use.
//     .rooms() -> Room[]            every tracked room.
//
//   Room (from connection.room(id)):
//     .id, .lastSeq                 the highest seq given to listeners.
//     .join(extra?)                 send `join` (now and after every
//                                   reconnect), then `resume` from lastSeq
//                                   once `joined` says admitted. `extra` is
//                                   merged into the join (an invitation).
//     .attach({ resume? })          the connection is already a member
//                                   (`queue.open`'s or `queue.assigned`'s
//                                   room): rejoin after reconnects; with
//                                   resume: true also resume now.
//     .resume()                     ask for the events after lastSeq now.
//     .on(type, fn) -> off()        server messages of `type` for this room
//                                   ("joined", "chat.stored", "chat.typing",
//                                   "chat.read", "queue.status", "error", ...).
//     .onEvent(kind, fn) -> off()   history events of `kind` ("chat",
//                                   "assigned", "times_offered", ...; "*":
//                                   all), fn(event, seq, message); each seq
//                                   once, even when a live event overtakes
//                                   a resume's replay (so possibly out of
//                                   order: place by seq).
//     .send(message) -> bool        with `room` filled in.
//     .ack(seq)                     say everything up to seq was shown.
//     .sendChat(text) -> client_id  a chat.send, resent until stored.
//     .untrack()                    forget the room (no rejoin), e.g. after
//                                   room.closed; listeners are dropped.

const TRANSIENT = new Set(["ping", "chat.typing", "signal.offer", "signal.answer", "signal.ice"]);
const FIRST_RETRY_MS = 500;
const LAST_RETRY_MS = 10000;
const PING_EVERY_MS = 25000;
const PONG_WITHIN_MS = 10000;

export function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
}

export function postJson(path, body, { csrf, bearer } = {}) {
  const headers = { accept: "application/json" };
  if (csrf) headers["x-csrf-token"] = csrf;
  if (bearer) headers.authorization = "Bearer " + bearer;
  if (body !== undefined) headers["content-type"] = "application/json";
  return fetch(path, {
    method: "POST",
    credentials: bearer ? "omit" : "same-origin",
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  }).then((res) => {
    if (!res.ok) {
      return res
        .json()
        .catch(() => ({}))
        .then((problem) => {
          const error = new Error("HTTP " + res.status);
          error.status = res.status;
          error.code = problem && problem.error;
          throw error;
        });
    }
    return res.status === 204 ? null : res.json().catch(() => null);
  });
}

export function sessionTicket(csrf) {
  return () => postJson("/api/ws/ticket", undefined, { csrf }).then((t) => t.ticket);
}

export function bearerTicket(token) {
  return () => postJson("/api/ws/ticket", undefined, { bearer: token }).then((t) => t.ticket);
}

function listen(map, key, fn) {
  let list = map.get(key);
  if (!list) map.set(key, (list = []));
  list.push(fn);
  return () => {
    const i = list.indexOf(fn);
    if (i >= 0) list.splice(i, 1);
  };
}

function emit(map, key, ...args) {
  const list = map.get(key);
  if (!list) return;
  for (const fn of list.slice()) {
    try {
      fn(...args);
    } catch (e) {
      console.error(e);
    }
  }
}

class Room {
  constructor(connection, id) {
    this.connection = connection;
    this.id = id;
    this.lastSeq = 0;
    this.member = false; // rejoin after a reconnect
    this.joinExtra = null;
    this.resumeFrom = null; // set while a join waits for its `joined`
    this.seen = new Set();
    this.ackSent = 0;
    this.ackWanted = 0;
    this.handlers = new Map();
    this.eventHandlers = new Map();
  }

  join(extra) {
    this.member = true;
    this.joinExtra = extra || null;
    if (this.connection.welcomed) this.sendJoin();
  }

  attach({ resume = false } = {}) {
    this.member = true;
    if (resume) this.resume();
  }

  sendJoin() {
    this.resumeFrom = this.lastSeq;
    this.connection.sendNow(Object.assign({ type: "join", room: this.id }, this.joinExtra || {}));
  }

  resume() {
    this.send({ type: "resume", last_seq: this.lastSeq });
  }

  on(type, fn) {
    return listen(this.handlers, type, fn);
  }

  onEvent(kind, fn) {
    return listen(this.eventHandlers, kind, fn);
  }

  send(message) {
    message.room = this.id;
    return this.connection.send(message);
  }

  ack(seq) {
    if (seq <= this.ackWanted) return;
    this.ackWanted = seq;
    this.flushAck();
  }

  flushAck() {
    if (this.ackWanted > this.ackSent && this.connection.welcomed) {
      this.ackSent = this.ackWanted;
      this.connection.sendNow({ type: "ack", room: this.id, seq: this.ackWanted });
    }
  }

  sendChat(text) {
    const clientId = newId();
    this.connection.send({ type: "chat.send", room: this.id, client_id: clientId, text });
    return clientId;
  }

  untrack() {
    this.member = false;
    this.handlers.clear();
    this.eventHandlers.clear();
    this.connection.rooms_.delete(this.id);
    for (const key of Array.from(this.connection.unstored.keys())) {
      if (key.startsWith(this.id + " ")) this.connection.unstored.delete(key);
    }
  }

  deliver(message) {
    if (message.type === "event") {
      if (this.seen.has(message.seq)) return;
      this.seen.add(message.seq);
      this.lastSeq = Math.max(this.lastSeq, message.seq);
      emit(this.eventHandlers, message.event.kind, message.event, message.seq, message);
      emit(this.eventHandlers, "*", message.event, message.seq, message);
      return;
    }
    if (message.type === "joined") {
      this.member = true;
      if (message.state === "admitted" && this.resumeFrom !== null) {
        const from = this.resumeFrom;
        this.resumeFrom = null;
        this.connection.sendNow({ type: "resume", room: this.id, last_seq: from });
      }
    }
    if (message.type === "chat.stored") {
      this.connection.unstored.delete(this.id + " " + message.client_id);
    }
    emit(this.handlers, message.type, message);
  }
}

export class Connection {
  constructor({ ticket, onState, onTicketError, onPageHide } = {}) {
    this.ticket = ticket;
    this.onPageHide = onPageHide || (() => {});
    this.onState = onState || (() => {});
    this.onTicketError =
      onTicketError || ((error) => (error.status === 401 || error.status === 403 ? "stop" : "retry"));
    this.ws = null;
    this.welcomed = false;
    this.stopped = true;
    this.party = null;
    this.state = "closed";
    this.retryMs = FIRST_RETRY_MS;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.lastHeard = 0;
    this.queue = [];
    this.unstored = new Map(); // "room client_id" -> chat.send without chat.stored
    this.rooms_ = new Map();
    this.handlers = new Map();
    window.addEventListener("online", () => {
      if (!this.stopped && !this.ws && this.retryTimer) {
        clearTimeout(this.retryTimer);
        this.retryTimer = null;
        this.retryMs = FIRST_RETRY_MS;
        this.connect();
      }
    });
    window.addEventListener("offline", () => {
      if (this.stopped || !this.ws) return;
      const ws = this.ws;
      this.ws = null;
      this.welcomed = false;
      this.stopPing();
      ws.close();
      this.retry();
    });
    window.addEventListener("pagehide", () => {
      if (this.ws && this.welcomed) {
        try {
          this.onPageHide();
        } catch (e) {
          console.error(e);
        }
      }
      if (this.ws) this.ws.close(1000);
    });
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.onState(state);
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.stopPing();
    const ws = this.ws;
    this.ws = null;
    this.welcomed = false;
    if (ws) ws.close(1000);
    this.setState("closed");
  }

  on(type, fn) {
    return listen(this.handlers, type, fn);
  }

  room(id) {
    let room = this.rooms_.get(id);
    if (!room) {
      room = new Room(this, id);
      this.rooms_.set(id, room);
    }
    return room;
  }

  rooms() {
    return Array.from(this.rooms_.values());
  }

  // Sends at once if the socket is open; nothing is queued.
  sendNow(message) {
    message.v = 1;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  send(message) {
    if (message.type === "chat.send") {
      // Kept until `chat.stored`, and sent again after a reconnect.
      this.unstored.set(message.room + " " + message.client_id, message);
    }
    if (this.welcomed && this.sendNow(message)) return true;
    if (!TRANSIENT.has(message.type) && message.type !== "chat.send") this.queue.push(message);
    return false;
  }

  connect() {
    if (this.stopped) return;
    this.setState(this.state === "closed" ? "connecting" : "reconnecting");
    Promise.resolve()
      .then(() => this.ticket())
      .then((ticket) => {
        if (this.stopped) return;
        const scheme = location.protocol === "https:" ? "wss:" : "ws:";
        const socket = new WebSocket(scheme + "//" + location.host + "/ws?ticket=" + encodeURIComponent(ticket));
        this.ws = socket;
        socket.onmessage = (event) => {
          if (this.ws !== socket) return;
          this.lastHeard = Date.now();
          let message;
          try {
            message = JSON.parse(event.data);
          } catch (e) {
            return;
          }
          this.dispatch(message);
        };
        socket.onclose = () => {
          if (this.ws !== socket) return;
          this.ws = null;
          this.welcomed = false;
          this.stopPing();
          this.retry();
        };
      })
      .catch((error) => {
        if (this.stopped) return;
        if (this.onTicketError(error) === "stop") {
          this.stop();
        } else {
          this.retry();
        }
      });
  }

  retry() {
    if (this.stopped) return;
    this.setState("reconnecting");
    const wait = this.retryMs * (0.75 + Math.random() / 2);
    this.retryMs = Math.min(this.retryMs * 2, LAST_RETRY_MS);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.connect();
    }, wait);
  }

  startPing() {
    this.stopPing();
    this.pingTimer = setInterval(() => {
      const ws = this.ws;
      if (!ws) return;
      const sentAt = Date.now();
      this.sendNow({ type: "ping" });
      clearTimeout(this.pongTimer);
      this.pongTimer = setTimeout(() => {
        if (this.ws !== ws || this.lastHeard >= sentAt) return;
        // Nothing came back, not even the pong: the connection is dead.
        this.ws = null;
        this.welcomed = false;
        ws.close();
        this.stopPing();
        this.retry();
      }, PONG_WITHIN_MS);
    }, PING_EVERY_MS);
  }

  stopPing() {
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
    this.pingTimer = null;
    this.pongTimer = null;
  }

  onWelcome(message) {
    this.party = message.party;
    this.welcomed = true;
    this.retryMs = FIRST_RETRY_MS;
    this.startPing();
    // Rooms first, then what waited, so that every queued message finds its
    // room joined (the server handles a connection's frames in order).
    for (const room of this.rooms_.values()) {
      if (room.member) room.sendJoin();
      room.ackSent = 0;
    }
    const queued = this.queue.splice(0);
    const resent = new Set();
    for (const message of this.unstored.values()) {
      resent.add(message);
      this.sendNow(message);
    }
    for (const message of queued) {
      if (!resent.has(message)) this.sendNow(message);
    }
    for (const room of this.rooms_.values()) room.flushAck();
    this.setState("open");
  }

  dispatch(message) {
    if (message.type === "welcome") this.onWelcome(message);
    const room = message.room && this.rooms_.get(message.room);
    if (room) room.deliver(message);
    emit(this.handlers, message.type, message);
    emit(this.handlers, "*", message);
  }
}
