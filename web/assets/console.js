// The staff console (/staff/console): availability, the live queue,
// claiming, several chats at once, knocks in the waiting rooms of this
// staff member's meetings, and the messages residents left while nobody
// was online. It speaks the protocol in docs/protocol.md over one socket
// and the staff API for what the socket does not carry.
//
// Every string comes from the page (#console-data, #chat-template); the
// script holds none of its own.

import { Connection, sessionTicket, newId } from "./protocol.js";
import { createChat } from "./chat.js";

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

// A short tone through Web Audio; no sound file. Counted on the page
// (data-beeps) when it really played.
let beeps = 0;
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
    beeps += 1;
    root.dataset.beeps = String(beeps);
  } catch (e) {
    // No sound; the alert is still shown.
  }
}

function alertUser(message, { sound = true } = {}) {
  alertEl.textContent = message;
  if (sound) beep();
}

function say(message) {
  statusEl.textContent = message;
}

// --- The connection -------------------------------------------------------------

const connection = new Connection({
  ticket: sessionTicket(csrf),
  onState: (state) => {
    if (state === "open") return; // the welcome says more
    setConnected(false);
    say(state === "reconnecting" ? text.reconnecting : text.connecting);
  },
});

function send(message) {
  return connection.send(message);
}

let connected = false;

function setConnected(value) {
  connected = value;
  takingEl.disabled = !value;
  maxEl.disabled = !value;
  root.dataset.connected = value ? "true" : "false";
  if (!value) root.dataset.settled = "false";
  chats.forEach(setChatEnabled);
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
    // Sent now, or as soon as the connection is back.
    send({ type: "queue.claim", room: entry.room });
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
    // In the queue's order, as it serves them: by ticket, since chats
    // opened in the same second share their time.
    const later = Array.prototype.find.call(
      queueList.children,
      (other) => (entries.get(other.dataset.room) || {}).ticket > entry.ticket,
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
//
// Every chat of this staff member is on screen at once, each in its own
// panel. A message counts as unread until the staff member is in that
// panel (focus inside it, page visible); the resident's read receipts come
// from chat.js, which acks what the visible page shows.

const chats = new Map(); // room -> chat
const canned = new Map(); // service -> responses
let panelCount = 0;

const chatText = {
  you: text.you,
  role_resident: text.role_resident,
  role_social_worker: text.role_social_worker,
  role_interpreter: text.role_interpreter,
  in_sentence_resident: text.in_sentence_resident,
  in_sentence_social_worker: text.in_sentence_social_worker,
  typing: text.typing,
  sent: text.sent,
  read: text.read,
};

function chatLabel(chat) {
  return serviceName(chat.service) + " · " + municipalityName(chat.home);
}

function isAttended(chat) {
  return document.visibilityState === "visible" && chat.panel.contains(document.activeElement);
}

function updateBadge(chat) {
  chat.badge.textContent = chat.unread ? fill(text.unread, { count: chat.unread }) : "";
  chat.switcher.dataset.unread = String(chat.unread);
}

function attend(chat) {
  if (!chat.unread) return;
  chat.unread = 0;
  updateBadge(chat);
}

document.addEventListener("visibilitychange", () => {
  chats.forEach((chat) => {
    if (isAttended(chat)) attend(chat);
  });
});

function createChatPanel(entry) {
  panelCount += 1;
  const n = panelCount;
  const panel = template.content.firstElementChild.cloneNode(true);
  panel.dataset.room = entry.room;
  panel.id = "chat-panel-" + n;
  panel.hidden = false;
  panel.querySelectorAll("[data-id]").forEach((node) => (node.id = "chat-" + n + "-" + node.dataset.id));
  panel.querySelectorAll("[data-for]").forEach((node) => (node.htmlFor = "chat-" + n + "-" + node.dataset.for));
  const chat = {
    id: entry.room,
    room: connection.room(entry.room),
    service: entry.service,
    home: entry.home_municipality,
    anonymous: entry.anonymous,
    panel,
    historyUntil: 0,
    unread: 0,
    closed: false,
    videoRequested: false,
    pending: null,
    times: [],
  };
  chats.set(entry.room, chat);

  const title = panel.querySelector(".chat-title");
  title.textContent = chatLabel(chat);
  panel.setAttribute("aria-labelledby", title.id);
  panel.querySelector(".log").setAttribute("aria-labelledby", title.id);

  // The list of chats: a link to each panel, with its unread count.
  const item = element("li");
  item.dataset.room = entry.room;
  const switcher = element("a", "switch");
  switcher.href = "#" + title.id;
  switcher.appendChild(element("span", "name", chatLabel(chat)));
  switcher.appendChild(document.createTextNode(" "));
  const badge = element("span", "badge");
  switcher.appendChild(badge);
  switcher.addEventListener("click", (event) => {
    event.preventDefault();
    title.focus();
    title.scrollIntoView({ block: "start" });
  });
  item.appendChild(switcher);
  switchList.appendChild(item);
  chat.switcher = switcher;
  chat.badge = badge;
  panel.addEventListener("focusin", () => attend(chat));

  const form = panel.querySelector(".chat-form");
  chat.view = createChat(chat.room, {
    log: panel.querySelector(".transcript"),
    form,
    input: form.querySelector("textarea"),
    send: form.querySelector("button[type=submit]"),
    typing: panel.querySelector(".typing"),
    receipts: true,
    enterSends: true,
    text: chatText,
    me: () => connection.party,
    canSend: () => connected && !chat.closed,
    onMessage: (event, seq, mine) => {
      if (mine) return;
      if (!isAttended(chat)) {
        chat.unread += 1;
        updateBadge(chat);
      }
      if (seq > chat.historyUntil) alertUser(fill(text.new_message, { service: serviceName(chat.service) }));
    },
  });
  chat.room.on("joined", (message) => {
    chat.historyUntil = Math.max(chat.historyUntil, message.last_seq);
  });
  chat.room.onEvent("*", (event, seq) => onRoomEvent(chat, event, seq));

  wireTools(chat);
  panels.appendChild(panel);
  mineEmpty.hidden = true;
  setChatEnabled(chat);
  if (canned.has(chat.service)) fillCanned(chat);
  else send({ type: "canned.list", service: chat.service, language });
  loadColleagues(chat);
  return chat;
}

function setChatEnabled(chat) {
  const usable = connected && !chat.closed;
  chat.view.setEnabled(usable);
  chat.panel.querySelectorAll(".chat-tools select, .chat-tools input, .chat-tools button").forEach((node) => {
    node.disabled = !usable;
  });
}

function chatState(chat, message) {
  chat.panel.querySelector(".chat-state").textContent = message;
}

function removeChat(chat) {
  chats.delete(chat.id);
  chat.view.destroy();
  chat.panel.remove();
  chat.switcher.parentElement.remove();
  mineEmpty.hidden = chats.size > 0;
  document.getElementById("mine-title").focus();
}
document.getElementById("mine-title").tabIndex = -1;

// The chat is no longer this staff member's: the transcript stays readable
// until they dismiss it.
function endChat(chat, message) {
  if (message) chatState(chat, message);
  if (chat.closed) return;
  chat.closed = true;
  chat.panel.dataset.closed = "true";
  chat.room.untrack();
  setChatEnabled(chat);
  chat.panel.querySelector(".typing").textContent = "";
  const dismiss = button(text.dismiss, "secondary dismiss-chat", () => removeChat(chat));
  chat.panel.querySelector(".chat-state").after(dismiss);
}

function note(chat, seq, build) {
  const item = element("li", "note");
  build(item);
  chat.view.place(item, seq);
}

function onRoomEvent(chat, event, seq) {
  const live = seq > chat.historyUntil;
  switch (event.kind) {
    case "times_offered":
      note(chat, seq, (item) => {
        item.appendChild(element("p", "", text.times_offered));
        const list = element("ul");
        event.times.forEach((time) => list.appendChild(element("li", "", when(time.starts_at, time.ends_at))));
        item.appendChild(list);
      });
      break;
    case "assigned":
      note(chat, seq, (item) => {
        item.appendChild(element("p", "", event.staff === connection.party ? text.assigned_you : text.colleague_took));
      });
      break;
    case "video_opened": {
      const href = "/meeting/adhoc/" + encodeURIComponent(event.meeting_room.replace(/^adhoc:/, ""));
      const link = (className) => {
        const a = element("a", className, text.open_video);
        a.href = href;
        a.target = "_blank";
        a.rel = "noopener";
        return a;
      };
      note(chat, seq, (item) => {
        const line = element("p", "", text.video_opened + " ");
        line.appendChild(link("video-room"));
        item.appendChild(line);
      });
      const place = chat.panel.querySelector(".video-link");
      place.textContent = "";
      const main = link("button");
      place.appendChild(main);
      if (chat.videoRequested && live) {
        chat.videoRequested = false;
        // Within the click's user activation, so no popup blocker objects.
        window.open(href, "_blank", "noopener");
        main.focus();
      }
      break;
    }
    case "ended":
      note(chat, seq, (item) => {
        item.appendChild(element("p", "", event.by === connection.party ? text.ended : text.ended_by_resident));
      });
      break;
  }
}

function wireTools(chat) {
  const panel = chat.panel;
  const textarea = panel.querySelector(".chat-form textarea");

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
    chat.room.send({ type: "queue.transfer", to: select.value });
  });

  panel.querySelector(".start-video").addEventListener("click", () => {
    chat.videoRequested = true;
    chat.pending = "video";
    chat.room.send({ type: "chat.escalate_video" });
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
    chat.room.send({ type: "chat.close", outcome: select.value });
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
  return api("GET", "/api/staff/chats/" + encodeURIComponent(chat.id) + "/colleagues")
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
    "/api/staff/chats/" + encodeURIComponent(chat.id) + "/free-times?from=" + encodeURIComponent(from) + "&days=7";
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
        const day = longDate(localParts(new Date(time.starts_at)));
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
  chat.room.send({ type: "chat.offer_times", client_id: newId(), times });
  box.textContent = "";
  chat.panel.querySelector(".send-times").hidden = true;
  chatState(chat, "");
  chat.panel.querySelector(".chat-form textarea").focus();
}

// --- Messages from the hub ------------------------------------------------------


connection.on("queue.assigned", ({ entry }) => {
  removeEntry(entry.room);
  const claimed = claiming.delete(entry.room);
  let chat = chats.get(entry.room);
  if (chat && chat.closed) {
    removeChat(chat);
    chat = null;
  }
  if (!chat) {
    chat = createChatPanel(entry);
    // Joining gives the history up to now; protocol.js joins again and
    // resumes after every reconnect.
    chat.room.join();
    alertUser(fill(text.assigned, { service: serviceName(entry.service) }));
    if (claimed) chat.panel.querySelector(".chat-title").focus();
  }
});

connection.on("queue.unassigned", (message) => {
  const chat = chats.get(message.room);
  if (!chat) return;
  const reason = text["unassigned_" + message.reason] || text.ended;
  endChat(chat, reason);
  alertUser(reason);
});

connection.on("room.closed", (message) => {
  const chat = chats.get(message.room);
  if (chat) endChat(chat, text.ended);
});

connection.on("canned.responses", (message) => {
  canned.set(message.service, message.responses || []);
  chats.forEach((chat) => {
    if (chat.service === message.service) fillCanned(chat);
  });
});

connection.on("lobby.knock", (message) => addKnock(message.room, message.participant));
// A (re)connected console gets the chats already waiting in one snapshot;
// they are not news, so nothing is announced.
connection.on("queue.snapshot", (message) => (message.entries || []).forEach((entry) => addEntry(entry, false)));
connection.on("queue.entry", (message) => addEntry(message.entry, !settling));
connection.on("queue.entry_removed", (message) => removeEntry(message.room));

connection.on("error", (message) => {
  const room = message.room;
  const chat = room && chats.get(room);
  let shown;
  if (room && claiming.has(room)) {
    claiming.delete(room);
    shown = {
      already_taken: text.already_taken,
      forbidden: text.at_limit,
      not_found: text.gone,
    }[message.code] || text.failed;
    if (message.code === "forbidden") {
      const item = queueItem(room);
      if (item) item.querySelector("button").disabled = false;
    } else {
      removeEntry(room);
    }
  } else if (message.code === "already_taken") {
    shown = text.already_taken;
  } else if (chat && !chat.closed) {
    const pending = chat.pending;
    chat.pending = null;
    if (message.code === "not_found" && !pending) {
      // A join after a reconnect: the chat went back to the queue meanwhile.
      endChat(chat, text.unassigned_offline);
      shown = text.unassigned_offline;
    } else {
      shown =
        message.code === "not_eligible"
          ? text.not_eligible
          : pending === "close" && ["invalid", "invalid_state", "malformed"].includes(message.code)
            ? text.outcome_missing
            : message.code === "not_found"
              ? text.gone
              : text.failed;
      if (pending === "transfer") loadColleagues(chat);
      chatState(chat, shown);
    }
  }
  if (shown) alertUser(shown, { sound: false });
});

// After a (re)connect the hub tells again what is still true: the waiting
// chats, this staff member's chats and the knocks. The answer to a `ping`
// comes after all of it.
let settling = false;

connection.on("welcome", () => {
  setConnected(true);
  say(text.connected);
  entries.clear();
  queueList.textContent = "";
  updateQueueEmpty();
  settling = true;
  root.dataset.settled = "false";
  sendAvailability();
  connection.sendNow({ type: "ping" });
});

connection.on("pong", () => {
  if (!settling) return;
  settling = false;
  root.dataset.settled = "true";
});

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
connection.start();
loadOffline();
