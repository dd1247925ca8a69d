// The staff console (/staff/console): availability, the live queue,
// claiming, several chats at once, knocks in the waiting rooms of this
// staff member's meetings, and the messages residents left while nobody
// was online. It speaks the protocol in docs/protocol.md over one socket
// and the staff API for what the socket does not carry.
//
// Every string comes from the page (#console-data, #chat-template); the
// script holds none of its own.

const root = document.getElementById("console");
const data = JSON.parse(document.getElementById("console-data").textContent);
const text = data.text;
const csrf = root.dataset.csrf;
const me = root.dataset.me;
const language = root.dataset.language;

const statusEl = document.getElementById("console-status");
const alertEl = document.getElementById("console-alert");
const takingEl = document.getElementById("taking-chats");
const maxEl = document.getElementById("max-chats");
const availabilityEl = document.getElementById("availability-state");
const queueList = document.getElementById("queue-list");
const queueEmpty = document.getElementById("queue-empty");
const knockList = document.getElementById("knock-list");
const knocksEmpty = document.getElementById("knocks-empty");
const switchList = document.getElementById("chat-switch");
const panels = document.getElementById("chat-panels");
const mineEmpty = document.getElementById("mine-empty");
const template = document.getElementById("chat-template");
const offlineList = document.getElementById("offline-list");
const offlineEmpty = document.getElementById("offline-empty");

// --- Small helpers ----------------------------------------------------------

function fill(template, values) {
  return template.replace(/%\{(\w+)\}/g, (_, name) => (values[name] === undefined ? "" : String(values[name])));
}

function serviceName(code) {
  return data.services[code] || code;
}

function municipalityName(code) {
  return data.municipalities[code] || code;
}

function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
}

function element(tag, className, content) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (content !== undefined) node.textContent = content;
  return node;
}

function button(label, className, onClick) {
  const node = element("button", className, label);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

function api(method, path) {
  return fetch(path, {
    method,
    credentials: "same-origin",
    headers: { "x-csrf-token": csrf, accept: "application/json" },
  }).then((res) => {
    if (res.status === 401) {
      location.reload();
      throw new Error("signed out");
    }
    if (!res.ok) {
      const error = new Error("HTTP " + res.status);
      error.status = res.status;
      throw error;
    }
    return res.status === 204 ? null : res.json();
  });
}

// Times are shown in Swedish time, written the page language's way with
// the same templates the server uses.
const stockholm = new Intl.DateTimeFormat("en-GB", {
  timeZone: "Europe/Stockholm",
  year: "numeric",
  month: "numeric",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  hourCycle: "h23",
});

function localParts(at) {
  const parts = {};
  stockholm.formatToParts(at).forEach((p) => (parts[p.type] = p.value));
  const year = Number(parts.year);
  const month = Number(parts.month);
  const day = Number(parts.day);
  const weekday = new Date(Date.UTC(year, month - 1, day)).getUTCDay();
  return { year, month, day, weekday: weekday === 0 ? 7 : weekday, hour: parts.hour, minute: parts.minute };
}

function clock(parts) {
  return fill(text.time_clock, { hour: parts.hour, minute: parts.minute });
}

function longDate(parts) {
  return fill(text.date_long, {
    weekday: data.weekdays[parts.weekday - 1],
    day: parts.day,
    month: data.months[parts.month - 1],
    year: parts.year,
  });
}

function toDate(value) {
  return typeof value === "number" ? new Date(value * 1000) : new Date(value);
}

function when(start, end) {
  const from = localParts(toDate(start));
  const to = localParts(toDate(end));
  return fill(text.time_when, {
    weekday: data.weekdays[from.weekday - 1],
    day: from.day,
    month: data.months[from.month - 1],
    year: from.year,
    from: clock(from),
    to: clock(to),
  });
}

function moment(value) {
  const parts = localParts(toDate(value));
  return longDate(parts) + " " + clock(parts);
}

function roleName(role) {
  return text["role_" + role] || role;
}

// --- Sound and the visible alert -------------------------------------------

let audio = null;

// Browsers allow sound only after the user did something on the page.
function unlockAudio() {
  if (audio) return;
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!Context) return;
  try {
    audio = new Context();
  } catch (e) {
    audio = null;
  }
}
document.addEventListener("click", unlockAudio);
document.addEventListener("keydown", unlockAudio);

function beep() {
  if (!audio) return;
  try {
    if (audio.state === "suspended") audio.resume();
    const tone = audio.createOscillator();
    const gain = audio.createGain();
    tone.frequency.value = 740;
    gain.gain.value = 0.1;
    tone.connect(gain).connect(audio.destination);
    tone.start();
    tone.stop(audio.currentTime + 0.2);
  } catch (e) {
    // No sound; the alert is still shown.
  }
}

let beeps = 0;
function alertUser(message, { sound = true } = {}) {
  alertEl.textContent = message;
  alertEl.hidden = false;
  if (sound) {
    beep();
    beeps += 1;
    root.dataset.beeps = String(beeps);
  }
}

function say(message) {
  statusEl.textContent = message;
}

// --- The socket ---------------------------------------------------------------

let ws = null;
let retryMs = 500;
let connected = false;

function send(message) {
  message.v = 1;
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify(message));
    return true;
  }
  return false;
}

function connect() {
  api("POST", "/api/ws/ticket")
    .then((ticket) => {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const socket = new WebSocket(scheme + "//" + location.host + "/ws?ticket=" + encodeURIComponent(ticket.ticket));
      ws = socket;
      socket.onopen = () => {
        retryMs = 500;
      };
      socket.onmessage = (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (e) {
          return;
        }
        onMessage(message);
      };
      socket.onclose = () => {
        if (ws !== socket) return;
        ws = null;
        setConnected(false);
        reconnect();
      };
    })
    .catch(() => reconnect());
}

function reconnect() {
  say(text.reconnecting);
  setTimeout(connect, retryMs);
  retryMs = Math.min(retryMs * 2, 10000);
}

window.addEventListener("pagehide", () => {
  if (ws) ws.close(1000);
});

function setConnected(value) {
  connected = value;
  takingEl.disabled = !value;
  maxEl.disabled = !value;
  root.dataset.connected = value ? "true" : "false";
  document.querySelectorAll(".chat-panel").forEach((panel) => {
    const chat = chats.get(panel.dataset.room);
    if (chat) setChatEnabled(chat);
  });
}

// --- Availability -------------------------------------------------------------

const AVAILABILITY_KEY = "kontakt.console.availability";

function storedAvailability() {
  try {
    const stored = JSON.parse(sessionStorage.getItem(AVAILABILITY_KEY) || "null");
    if (stored && typeof stored.available === "boolean" && stored.max_chats > 0) return stored;
  } catch (e) {
    // Nothing stored.
  }
  return { available: false, max_chats: 2 };
}

function maxChats() {
  const value = Math.round(Number(maxEl.value));
  return Number.isFinite(value) && value >= 1 ? Math.min(value, 10) : 1;
}

function sendAvailability() {
  const state = { available: takingEl.checked, max_chats: maxChats() };
  maxEl.value = String(state.max_chats);
  try {
    sessionStorage.setItem(AVAILABILITY_KEY, JSON.stringify(state));
  } catch (e) {
    // Not kept across a reload.
  }
  availabilityEl.textContent = state.available ? fill(text.available_on, { count: state.max_chats }) : text.available_off;
  send({ type: "staff.availability", available: state.available, max_chats: state.max_chats });
}

(function restoreAvailability() {
  const stored = storedAvailability();
  takingEl.checked = stored.available;
  maxEl.value = String(stored.max_chats);
  availabilityEl.textContent = stored.available ? fill(text.available_on, { count: stored.max_chats }) : text.available_off;
})();
takingEl.addEventListener("change", sendAvailability);
maxEl.addEventListener("change", sendAvailability);

// --- The queue ------------------------------------------------------------------

const entries = new Map(); // room -> entry
const claiming = new Set(); // rooms this console asked to claim

function waitedMinutes(entry) {
  return Math.max(0, Math.floor((Date.now() / 1000 - entry.enqueued_at) / 60));
}

function entryFacts(entry) {
  const facts = [fill(text.home, { name: municipalityName(entry.home_municipality) })];
  if (entry.language && data.languages && data.languages[entry.language]) facts.push(data.languages[entry.language]);
  if (entry.anonymous) facts.push(text.anonymous);
  return facts;
}

function renderEntry(entry) {
  const item = element("li", "card");
  item.dataset.room = entry.room;
  const title = element("p", "card-title");
  title.appendChild(element("strong", "", serviceName(entry.service)));
  item.appendChild(title);
  const facts = element("p", "facts-line");
  const factsText = entryFacts(entry);
  factsText.push(fill(text.waited, { minutes: waitedMinutes(entry) }));
  facts.textContent = factsText.join(" · ");
  item.appendChild(facts);
  const claim = button(text.claim, "claim", () => {
    claim.disabled = true;
    claiming.add(entry.room);
    if (!send({ type: "queue.claim", room: entry.room })) {
      claim.disabled = false;
      claiming.delete(entry.room);
      alertUser(text.failed, { sound: false });
    }
  });
  claim.dataset.action = "queue.claim";
  item.appendChild(claim);
  return item;
}

function queueItem(room) {
  return queueList.querySelector('li[data-room="' + CSS.escape(room) + '"]');
}

function updateQueueEmpty() {
  queueEmpty.hidden = queueList.children.length > 0;
}

function addEntry(entry, announce) {
  const known = entries.has(entry.room);
  entries.set(entry.room, entry);
  const item = renderEntry(entry);
  const old = queueItem(entry.room);
  if (old) {
    old.replaceWith(item);
  } else {
    // Oldest first, as the queue serves them.
    const later = Array.prototype.find.call(
      queueList.children,
      (other) => (entries.get(other.dataset.room) || {}).enqueued_at > entry.enqueued_at,
    );
    queueList.insertBefore(item, later || null);
  }
  updateQueueEmpty();
  if (announce && !known) alertUser(fill(text.new_entry, { service: serviceName(entry.service) }));
}

function removeEntry(room) {
  entries.delete(room);
  const item = queueItem(room);
  if (item) {
    const hadFocus = item.contains(document.activeElement);
    item.remove();
    updateQueueEmpty();
    if (hadFocus) (queueList.children.length ? document.getElementById("queue-title") : queueEmpty).focus();
  }
  updateQueueEmpty();
}

// The waiting times move on by themselves.
setInterval(() => {
  queueList.querySelectorAll("li[data-room]").forEach((item) => {
    const entry = entries.get(item.dataset.room);
    if (!entry) return;
    const facts = entryFacts(entry);
    facts.push(fill(text.waited, { minutes: waitedMinutes(entry) }));
    item.querySelector(".facts-line").textContent = facts.join(" · ");
  });
}, 30000);

// --- Knocks in the waiting rooms of this staff member's meetings -------------

function meetingLink(room) {
  if (room.startsWith("booking:")) return "/join/" + encodeURIComponent(room.slice("booking:".length));
  if (room.startsWith("adhoc:")) return "/meeting/adhoc/" + encodeURIComponent(room.slice("adhoc:".length));
  return null;
}

function updateKnocksEmpty() {
  knocksEmpty.hidden = knockList.children.length > 0;
}

function addKnock(room, participant) {
  const key = room + " " + participant.party;
  if (knockList.querySelector('li[data-knock="' + CSS.escape(key) + '"]')) return;
  const item = element("li", "card");
  item.dataset.knock = key;
  item.dataset.room = room;
  item.appendChild(element("p", "", text.knock));
  const actions = element("p", "actions");
  const href = meetingLink(room);
  if (href) {
    const link = element("a", "button", text.open_meeting);
    link.href = href;
    link.target = "_blank";
    link.rel = "noopener";
    actions.appendChild(link);
  }
  actions.appendChild(
    button(text.dismiss, "secondary", () => {
      item.remove();
      updateKnocksEmpty();
      knocksEmpty.focus();
    }),
  );
  item.appendChild(actions);
  knockList.appendChild(item);
  updateKnocksEmpty();
  alertUser(text.knock);
}
knocksEmpty.tabIndex = -1;
queueEmpty.tabIndex = -1;
document.getElementById("queue-title").tabIndex = -1;

// --- Chats ------------------------------------------------------------------------

const chats = new Map(); // room -> chat
const canned = new Map(); // service -> responses
let panelCount = 0;
let active = null;

function chatLabel(chat) {
  return serviceName(chat.service) + " · " + municipalityName(chat.home);
}

function createChat(entry) {
  panelCount += 1;
  const n = panelCount;
  const panel = template.content.firstElementChild.cloneNode(true);
  panel.dataset.room = entry.room;
  panel.id = "chat-panel-" + n;
  panel.querySelectorAll("[data-id]").forEach((node) => (node.id = "chat-" + n + "-" + node.dataset.id));
  panel.querySelectorAll("[data-for]").forEach((node) => (node.htmlFor = "chat-" + n + "-" + node.dataset.for));
  const chat = {
    room: entry.room,
    service: entry.service,
    home: entry.home_municipality,
    anonymous: entry.anonymous,
    panel,
    lastSeq: 0,
    historyUntil: 0,
    seen: new Set(),
    acked: 0,
    unread: 0,
    readSeq: 0,
    closed: false,
    mine: true,
    videoRequested: false,
    typingTimer: null,
    typingSent: false,
    confirmed: true,
  };
  chats.set(entry.room, chat);

  const title = panel.querySelector(".chat-title");
  title.textContent = chatLabel(chat);
  panel.setAttribute("aria-labelledby", title.id);
  panel.querySelector(".transcript").setAttribute("aria-labelledby", title.id);

  const item = element("li");
  const switcher = element("button", "switch");
  switcher.type = "button";
  switcher.setAttribute("aria-controls", panel.id);
  switcher.setAttribute("aria-current", "false");
  switcher.appendChild(element("span", "name", chatLabel(chat)));
  const badge = element("span", "badge");
  badge.hidden = true;
  switcher.appendChild(document.createTextNode(" "));
  switcher.appendChild(badge);
  switcher.addEventListener("click", () => activate(chat, true));
  item.appendChild(switcher);
  item.dataset.room = entry.room;
  switchList.appendChild(item);
  chat.switcher = switcher;
  chat.badge = badge;

  wireChat(chat);
  panels.appendChild(panel);
  mineEmpty.hidden = true;
  setChatEnabled(chat);
  if (!canned.has(chat.service)) {
    send({ type: "canned.list", service: chat.service, language });
  } else {
    fillCanned(chat);
  }
  loadColleagues(chat);
  return chat;
}

function activate(chat, focus) {
  active = chat;
  chats.forEach((other) => {
    other.panel.hidden = other !== chat;
    other.switcher.setAttribute("aria-current", other === chat ? "true" : "false");
  });
  chat.unread = 0;
  updateBadge(chat);
  ackShown(chat);
  if (focus) chat.panel.querySelector(".chat-title").focus();
}

function updateBadge(chat) {
  chat.badge.hidden = chat.unread === 0;
  chat.badge.textContent = chat.unread ? fill(text.unread, { count: chat.unread }) : "";
  chat.switcher.dataset.unread = String(chat.unread);
}

function isShown(chat) {
  return active === chat && document.visibilityState === "visible";
}

// Tells the resident what was shown: an `ack` only for what is on screen.
function ackShown(chat) {
  if (!isShown(chat) || chat.acked >= chat.lastSeq) return;
  if (send({ type: "ack", room: chat.room, seq: chat.lastSeq })) chat.acked = chat.lastSeq;
}

document.addEventListener("visibilitychange", () => {
  if (active) {
    active.unread = 0;
    updateBadge(active);
    ackShown(active);
  }
});

function setChatEnabled(chat) {
  const usable = connected && chat.mine && !chat.closed;
  chat.panel.querySelectorAll("textarea, select, input, button").forEach((node) => {
    if (node.classList.contains("dismiss-chat")) return;
    node.disabled = !usable;
  });
}

function chatState(chat, message) {
  chat.panel.querySelector(".chat-state").textContent = message;
}

function removeChat(chat) {
  chats.delete(chat.room);
  chat.panel.remove();
  chat.switcher.parentElement.remove();
  if (active === chat) {
    active = null;
    const next = chats.values().next().value;
    if (next) activate(next, false);
  }
  mineEmpty.hidden = chats.size > 0;
  document.getElementById("mine-title").focus();
}
document.getElementById("mine-title").tabIndex = -1;

// The chat ended for this staff member: keep the transcript readable until
// they dismiss it.
function endChat(chat, message) {
  if (chat.closed) {
    if (message) chatState(chat, message);
    return;
  }
  chat.closed = true;
  chat.panel.dataset.closed = "true";
  if (message) chatState(chat, message);
  setChatEnabled(chat);
  chat.panel.querySelector(".typing").textContent = "";
  const dismiss = button(text.dismiss, "secondary dismiss-chat", () => removeChat(chat));
  chat.panel.querySelector(".chat-state").after(dismiss);
}

function transcriptItem(chat, clientId) {
  return chat.panel.querySelector('.transcript li[data-client-id="' + CSS.escape(clientId) + '"]');
}

function insertInOrder(chat, item, seq) {
  const log = chat.panel.querySelector(".transcript");
  const later = seq
    ? Array.prototype.find.call(log.children, (other) => Number(other.dataset.seq) > seq)
    : null;
  log.insertBefore(item, later || null);
}

function showMessage(chat, entry, seq) {
  const existing = entry.client_id && transcriptItem(chat, entry.client_id);
  const item = existing || element("li");
  item.textContent = "";
  if (entry.client_id) item.dataset.clientId = entry.client_id;
  if (seq) item.dataset.seq = String(seq);
  const mine = entry.from === me;
  item.dataset.mine = mine ? "true" : "false";
  if (entry.pending) item.dataset.pending = "true";
  else delete item.dataset.pending;
  const who = element("strong", "", (mine ? text.you : roleName(entry.role)) + ": ");
  item.appendChild(who);
  item.appendChild(document.createTextNode(entry.text));
  if (mine && seq && seq <= chat.readSeq) markRead(item);
  if (!existing) insertInOrder(chat, item, seq);
}

function showNote(chat, seq, build) {
  const item = element("li", "note");
  item.dataset.seq = String(seq);
  build(item);
  insertInOrder(chat, item, seq);
}

function markRead(item) {
  if (item.querySelector(".receipt")) return;
  item.appendChild(document.createTextNode(" "));
  item.appendChild(element("span", "receipt", text.read));
}

function onEvent(chat, message) {
  if (chat.seen.has(message.seq)) return;
  chat.seen.add(message.seq);
  chat.lastSeq = Math.max(chat.lastSeq, message.seq);
  const event = message.event;
  const live = message.seq > chat.historyUntil;
  switch (event.kind) {
    case "chat":
      showMessage(chat, event, message.seq);
      if (event.from !== me) {
        chat.panel.querySelector(".typing").textContent = "";
        if (!isShown(chat)) {
          chat.unread += 1;
          updateBadge(chat);
        }
        if (live) alertUser(fill(text.new_message, { service: serviceName(chat.service) }));
      }
      break;
    case "times_offered":
      showNote(chat, message.seq, (item) => {
        item.appendChild(element("p", "", text.times_offered));
        const list = element("ul");
        event.times.forEach((time) => list.appendChild(element("li", "", when(time.starts_at, time.ends_at))));
        item.appendChild(list);
      });
      break;
    case "assigned":
      showNote(chat, message.seq, (item) => {
        item.appendChild(element("p", "", event.staff === me ? text.assigned_you : text.colleague_took));
      });
      break;
    case "video_opened": {
      const href = "/meeting/adhoc/" + encodeURIComponent(event.meeting_room.replace(/^adhoc:/, ""));
      showNote(chat, message.seq, (item) => {
        item.appendChild(element("p", "", text.video_opened + " "));
        const link = element("a", "video-room", text.open_video);
        link.href = href;
        link.target = "_blank";
        link.rel = "noopener";
        item.firstChild.appendChild(link);
      });
      const place = chat.panel.querySelector(".video-link");
      place.textContent = "";
      const link = element("a", "button", text.open_video);
      link.href = href;
      link.target = "_blank";
      link.rel = "noopener";
      place.appendChild(link);
      if (chat.videoRequested && live) {
        chat.videoRequested = false;
        window.open(href, "_blank", "noopener");
        link.focus();
      }
      break;
    }
    case "ended":
      showNote(chat, message.seq, (item) => {
        item.appendChild(element("p", "", event.by === me ? text.ended : text.ended_by_resident));
      });
      break;
  }
  ackShown(chat);
}

function onChatRead(chat, message) {
  if (message.party === me) return;
  chat.readSeq = Math.max(chat.readSeq, message.seq);
  chat.panel.querySelectorAll('.transcript li[data-mine="true"][data-seq]').forEach((item) => {
    if (Number(item.dataset.seq) <= chat.readSeq) markRead(item);
  });
}

function sendTyping(chat, typing) {
  if (chat.typingSent === typing) return;
  if (send({ type: "chat.typing", room: chat.room, typing })) chat.typingSent = typing;
}

function wireChat(chat) {
  const panel = chat.panel;
  const form = panel.querySelector(".chat-form");
  const textarea = form.querySelector("textarea");
  textarea.addEventListener("input", () => {
    sendTyping(chat, textarea.value.trim() !== "");
    clearTimeout(chat.typingTimer);
    chat.typingTimer = setTimeout(() => sendTyping(chat, false), 4000);
  });
  textarea.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter makes a new line.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const message = textarea.value.trim();
    if (!message || chat.closed) return;
    const clientId = newId();
    if (!send({ type: "chat.send", room: chat.room, client_id: clientId, text: message })) {
      chatState(chat, text.not_sent);
      return;
    }
    clearTimeout(chat.typingTimer);
    chat.typingSent = false; // sending ends typing on the other side
    showMessage(chat, { from: me, client_id: clientId, text: message, pending: true });
    textarea.value = "";
  });

  // Canned replies go into the message box, to be read and sent.
  panel.querySelector(".insert-canned").addEventListener("click", () => {
    const select = panel.querySelector(".canned select");
    const reply = (canned.get(chat.service) || []).find((r) => r.id === select.value);
    if (!reply) {
      select.focus();
      return;
    }
    const start = textarea.selectionStart ?? textarea.value.length;
    const end = textarea.selectionEnd ?? textarea.value.length;
    textarea.value = textarea.value.slice(0, start) + reply.text + textarea.value.slice(end);
    textarea.focus();
    const caret = start + reply.text.length;
    textarea.setSelectionRange(caret, caret);
    textarea.dispatchEvent(new Event("input"));
  });

  // Offered times: the free times of the chat's service for the resident's
  // home municipality under the policy.
  const from = panel.querySelector(".offer input[type=date]");
  from.value = root.dataset.today;
  from.min = root.dataset.today;
  panel.querySelector(".show-times").addEventListener("click", () => loadTimes(chat));
  panel.querySelector(".send-times").addEventListener("click", () => offerTimes(chat));

  panel.querySelector(".refresh-colleagues").addEventListener("click", () => loadColleagues(chat));
  panel.querySelector(".do-transfer").addEventListener("click", () => {
    const select = panel.querySelector(".transfer select");
    if (!select.value) {
      select.focus();
      return;
    }
    chat.pending = "transfer";
    if (!send({ type: "queue.transfer", room: chat.room, to: select.value })) chatState(chat, text.failed);
  });

  panel.querySelector(".start-video").addEventListener("click", () => {
    chat.videoRequested = true;
    chat.pending = "video";
    if (!send({ type: "chat.escalate_video", room: chat.room })) chatState(chat, text.failed);
  });

  panel.querySelector(".close-chat").addEventListener("click", () => {
    const select = panel.querySelector(".close select");
    if (!select.value) {
      chatState(chat, text.outcome_missing);
      select.setAttribute("aria-invalid", "true");
      select.focus();
      return;
    }
    select.removeAttribute("aria-invalid");
    chat.pending = "close";
    if (!send({ type: "chat.close", room: chat.room, outcome: select.value })) chatState(chat, text.failed);
  });
}

function fillCanned(chat) {
  const select = chat.panel.querySelector(".canned select");
  while (select.options.length > 1) select.remove(1);
  (canned.get(chat.service) || []).forEach((reply) => {
    const option = element("option", "", reply.title);
    option.value = reply.id;
    select.appendChild(option);
  });
}

function loadColleagues(chat) {
  const select = chat.panel.querySelector(".transfer select");
  const note = chat.panel.querySelector(".colleagues-note");
  return api("GET", "/api/staff/chats/" + encodeURIComponent(chat.room) + "/colleagues")
    .then((colleagues) => {
      select.textContent = "";
      colleagues.forEach((colleague) => {
        const option = element(
          "option",
          "",
          fill(text.colleague, { name: colleague.name, municipality: municipalityName(colleague.municipality) }),
        );
        option.value = colleague.id;
        select.appendChild(option);
      });
      note.textContent = colleagues.length ? "" : text.no_colleagues;
      chat.panel.querySelector(".do-transfer").hidden = colleagues.length === 0;
      select.hidden = colleagues.length === 0;
    })
    .catch(() => {
      note.textContent = text.failed;
    });
}

function loadTimes(chat) {
  const panel = chat.panel;
  const box = panel.querySelector(".times");
  const from = panel.querySelector(".offer input[type=date]").value || root.dataset.today;
  const path =
    "/api/staff/chats/" + encodeURIComponent(chat.room) + "/free-times?from=" + encodeURIComponent(from) + "&days=7";
  return api("GET", path)
    .then((times) => {
      box.textContent = "";
      chat.times = times;
      panel.querySelector(".send-times").hidden = times.length === 0;
      if (!times.length) {
        box.appendChild(element("p", "", text.no_times));
        return;
      }
      const days = new Map();
      times.forEach((time, i) => {
        const parts = localParts(new Date(time.starts_at));
        const day = longDate(parts);
        if (!days.has(day)) days.set(day, []);
        days.get(day).push([time, i]);
      });
      days.forEach((list, day) => {
        const fieldset = element("fieldset");
        fieldset.appendChild(element("legend", "", day));
        const choices = element("div", "choices");
        list.forEach(([time, i]) => {
          const id = panel.id + "-time-" + i;
          const choice = element("div", "choice");
          const input = element("input");
          input.type = "checkbox";
          input.id = id;
          input.value = String(i);
          const label = element("label");
          label.htmlFor = id;
          const start = localParts(new Date(time.starts_at));
          const end = localParts(new Date(time.ends_at));
          label.textContent =
            fill(text.time_range, { from: clock(start), to: clock(end) }) +
            (time.municipality_name ? ", " + time.municipality_name : "");
          choice.appendChild(input);
          choice.appendChild(label);
          choices.appendChild(choice);
        });
        fieldset.appendChild(choices);
        box.appendChild(fieldset);
      });
      const first = box.querySelector("input");
      if (first) first.focus();
    })
    .catch(() => {
      box.textContent = "";
      box.appendChild(element("p", "", text.failed));
    });
}

function offerTimes(chat) {
  const box = chat.panel.querySelector(".times");
  const chosen = Array.prototype.filter
    .call(box.querySelectorAll("input[type=checkbox]"), (input) => input.checked)
    .map((input) => chat.times[Number(input.value)]);
  if (!chosen.length) {
    chatState(chat, text.choose_times);
    const first = box.querySelector("input");
    if (first) first.focus();
    return;
  }
  const times = chosen.map((time) => ({ slot_id: time.starts_at, starts_at: time.starts_at, ends_at: time.ends_at }));
  if (send({ type: "chat.offer_times", room: chat.room, client_id: newId(), times })) {
    box.textContent = "";
    chat.panel.querySelector(".send-times").hidden = true;
    chat.panel.querySelector(".chat-form textarea").focus();
  } else {
    chatState(chat, text.not_sent);
  }
}

function onAssigned(entry) {
  removeEntry(entry.room);
  let chat = chats.get(entry.room);
  const claimed = claiming.delete(entry.room);
  if (!chat || chat.closed) {
    if (chat) removeChat(chat);
    chat = createChat(entry);
    alertUser(fill(text.assigned, { service: serviceName(entry.service) }));
  }
  chat.confirmed = true;
  chat.mine = true;
  setChatEnabled(chat);
  // Join for the history up to now, then resume from what was shown.
  send({ type: "join", room: entry.room });
  if (!active || claimed) activate(chat, claimed);
}

function onJoined(chat, message) {
  chat.historyUntil = Math.max(chat.historyUntil, message.last_seq);
  send({ type: "resume", room: chat.room, last_seq: chat.lastSeq });
}

function onUnassigned(message) {
  const chat = chats.get(message.room);
  if (!chat) return;
  chat.mine = false;
  const reason = text["unassigned_" + message.reason] || text.ended;
  endChat(chat, reason);
  chatState(chat, reason);
  alertUser(reason);
}

// --- Messages from the hub ------------------------------------------------------

function onError(message) {
  const room = message.room;
  const chat = room && chats.get(room);
  let shown;
  if (room && claiming.has(room)) {
    claiming.delete(room);
    shown =
      message.code === "already_taken"
        ? text.already_taken
        : message.code === "forbidden"
          ? text.at_limit
          : message.code === "not_found"
            ? text.gone
            : text.failed;
    if (message.code !== "forbidden") removeEntry(room);
    else {
      const item = queueItem(room);
      if (item) item.querySelector("button").disabled = false;
    }
  } else if (message.code === "already_taken") {
    shown = text.already_taken;
  } else if (chat) {
    const pending = chat.pending;
    chat.pending = null;
    shown =
      message.code === "not_eligible"
        ? text.not_eligible
        : pending === "close" && (message.code === "invalid" || message.code === "malformed")
          ? text.outcome_missing
          : message.code === "not_found"
            ? text.gone
            : text.failed;
    if (pending === "transfer") loadColleagues(chat);
    chatState(chat, shown);
  } else if (message.code === "rate_limited") {
    shown = text.failed;
  }
  if (shown) {
    alertEl.setAttribute("role", "alert");
    alertUser(shown, { sound: false });
  }
}

// After a reconnect the hub sends again what is still true: the waiting
// chats, this staff member's chats and the knocks. What this console showed
// and does not hear of again by the answer to a `ping` is gone.
let settling = false;

function onWelcome() {
  setConnected(true);
  say(text.connected);
  entries.clear();
  queueList.textContent = "";
  updateQueueEmpty();
  chats.forEach((chat) => (chat.confirmed = false));
  settling = true;
  sendAvailability();
  send({ type: "ping" });
}

function onSettled() {
  if (!settling) return;
  settling = false;
  chats.forEach((chat) => {
    if (!chat.confirmed && !chat.closed) {
      chat.mine = false;
      endChat(chat, text.unassigned_offline);
    }
  });
}

function onMessage(message) {
  const chat = message.room ? chats.get(message.room) : null;
  switch (message.type) {
    case "welcome":
      onWelcome();
      break;
    case "pong":
      onSettled();
      break;
    case "queue.entry":
      addEntry(message.entry, !settling);
      break;
    case "queue.entry_removed":
      removeEntry(message.room);
      break;
    case "queue.assigned":
      onAssigned(message.entry);
      break;
    case "queue.unassigned":
      onUnassigned(message);
      break;
    case "joined":
      if (chat) onJoined(chat, message);
      break;
    case "event":
      if (chat) onEvent(chat, message);
      break;
    case "chat.stored":
      if (chat) {
        const item = transcriptItem(chat, message.client_id);
        if (item) {
          delete item.dataset.pending;
          item.dataset.seq = String(message.seq);
          if (message.seq <= chat.readSeq) markRead(item);
        }
        chat.pending = null;
      }
      break;
    case "chat.typing":
      if (chat && message.party !== me) {
        chat.panel.querySelector(".typing").textContent = message.typing ? text.typing : "";
      }
      break;
    case "chat.read":
      if (chat) onChatRead(chat, message);
      break;
    case "canned.responses":
      canned.set(message.service, message.responses || []);
      chats.forEach((c) => {
        if (c.service === message.service) fillCanned(c);
      });
      break;
    case "room.closed":
      if (chat) {
        chat.mine = false;
        endChat(chat, text.ended);
      }
      break;
    case "lobby.knock":
      addKnock(message.room, message.participant);
      break;
    case "error":
      onError(message);
      break;
  }
}

// --- Messages left while nobody was online --------------------------------------

function renderOffline(message) {
  const item = element("li", "card");
  item.dataset.id = message.id;
  const heading = element("h3", "", serviceName(message.service));
  item.appendChild(heading);
  const facts = element("dl", "facts");
  const fact = (label, value) => {
    if (!value) return;
    facts.appendChild(element("dt", "", label));
    facts.appendChild(element("dd", "", value));
  };
  fact(text.offline_received, moment(message.created_at));
  fact(text.home_label, message.municipality ? municipalityName(message.municipality) : "");
  fact(text.offline_name, message.name);
  fact(text.offline_email, message.contact_email);
  fact(text.offline_phone, message.contact_phone);
  item.appendChild(facts);
  const body = element("blockquote", "offline-message", message.message);
  item.appendChild(body);
  const actions = element("p", "actions");
  if (message.handled_at) {
    actions.appendChild(element("span", "status-booked", text.handled));
  } else {
    const mark = button(text.mark_handled, "secondary", () => {
      mark.disabled = true;
      api("POST", "/api/staff/offline-messages/" + encodeURIComponent(message.id) + "/handled")
        .then(() => {
          message.handled_at = Date.now() / 1000;
          const done = element("span", "status-booked", text.handled);
          done.tabIndex = -1;
          mark.replaceWith(done);
          done.focus();
          item.dataset.handled = "true";
        })
        .catch(() => {
          mark.disabled = false;
          alertUser(text.failed, { sound: false });
        });
    });
    actions.appendChild(mark);
  }
  if (message.handled_at) item.dataset.handled = "true";
  item.appendChild(actions);
  return item;
}

function loadOffline() {
  return api("GET", "/api/staff/offline-messages")
    .then((messages) => {
      offlineList.textContent = "";
      messages.forEach((m) => offlineList.appendChild(renderOffline(m)));
      offlineEmpty.hidden = messages.length > 0;
      root.dataset.offlineLoaded = "true";
    })
    .catch(() => {
      offlineEmpty.hidden = false;
      offlineEmpty.textContent = text.failed;
    });
}
document.getElementById("offline-refresh").addEventListener("click", loadOffline);

// --- Start --------------------------------------------------------------------

updateQueueEmpty();
updateKnocksEmpty();
say(text.connecting);
connect();
loadOffline();
