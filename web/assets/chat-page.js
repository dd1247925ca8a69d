// chat-page.js: the entry of the resident's chat page, /chat/{service}.
//
// - A signed-in resident starts the chat with their session; a visitor
//   where the service allows anonymous chat picks their home municipality
//   and gets a token for this one chat (POST /api/chats/anonymous), kept in
//   this tab's sessionStorage only.
// - The chat's room is kept in sessionStorage too, so that a reload or a
//   return from the video room joins the same chat again and resumes it
//   from the start; protocol.js rejoins and resumes after a dropped socket
//   without a reload.
// - Queue position, estimated wait and whether anyone eligible is online
//   (queue.status); typing and read receipts (chat.js); leave the queue or
//   close the chat; offered times as buttons that book through the booking
//   API; the move to video opens /meeting/adhoc/{id} at once; the offline
//   form when nobody is online (queue.offline_form, POST /api/chats/offline).
// - At the end of an anonymous chat the conversation can be saved as a
//   text file made here; nothing else keeps it.
//
// Exports nothing; it runs on a page with #chat-page.

import { Connection, sessionTicket, bearerTicket, postJson } from "./protocol.js";
import { createChat } from "./chat.js";

const root = document.getElementById("chat-page");
if (root) start(root);

function start(root) {
  const text = JSON.parse(document.getElementById("chat-strings").textContent);
  const service = root.getAttribute("data-service");
  const serviceName = root.getAttribute("data-service-name");
  const anonymous = root.getAttribute("data-mode") === "anonymous";
  const csrf = root.getAttribute("data-csrf");
  const lang = document.documentElement.lang;
  const key = "kontakt.chat." + service;
  const tokenKey = key + ".token";
  const $ = (id) => document.getElementById(id);

  const startSection = $("chat-start");
  const startForm = $("chat-start-form");
  const startError = $("chat-start-error");
  const live = $("chat-live");
  const queueBox = $("queue-status");
  const stateEl = $("chat-state");
  const leaveButton = $("chat-leave");
  const closeButton = $("chat-close");
  const ended = $("chat-ended");
  const offline = $("chat-offline");
  const offlineForm = $("offline-form");

  const fill = (template, values) =>
    String(template || "").replace(/%\{(\w+)\}/g, (_, name) => (values[name] === undefined ? "" : values[name]));

  // What this tab remembers of its chat: { room, municipality, videoSeq }.
  const remembered = () => {
    try {
      return JSON.parse(sessionStorage.getItem(key) || "null") || {};
    } catch (e) {
      return {};
    }
  };
  const remember = (values) => sessionStorage.setItem(key, JSON.stringify(Object.assign(remembered(), values)));
  const forget = () => {
    sessionStorage.removeItem(key);
    sessionStorage.removeItem(tokenKey);
  };

  let connection = null;
  let room = null;
  let chat = null;
  let joinedUpTo = 0; // events up to this seq were history when the chat was (re)joined
  let opening = false;
  let finished = false;

  function show(element, on) {
    element.hidden = !on;
  }

  function setState(message) {
    stateEl.textContent = message;
  }

  // --- Waiting or talking ---------------------------------------------------

  function waiting() {
    show(queueBox, true);
    show(leaveButton, true);
    show(closeButton, false);
    setState(text.waiting);
  }

  function talking() {
    show(queueBox, false);
    show(leaveButton, false);
    show(closeButton, true);
    setState(text.in_chat);
  }

  function queueStatus(message) {
    waiting();
    $("queue-position").textContent = fill(text.position, { position: message.position });
    const minutes = Math.max(1, Math.ceil(message.eta_secs / 60));
    $("queue-eta").textContent = minutes === 1 ? text.eta_one : fill(text.eta, { minutes });
    $("queue-online").textContent = message.staff_online ? text.staff_online : text.staff_offline;
    queueBox.setAttribute("data-position", String(message.position));
    queueBox.setAttribute("data-staff-online", message.staff_online ? "true" : "false");
  }

  // --- Times offered in the chat --------------------------------------------

  const dateFormat = new Intl.DateTimeFormat(lang + "-u-nu-latn", {
    weekday: "long",
    day: "numeric",
    month: "long",
    timeZone: "Europe/Stockholm",
  });
  const clockFormat = new Intl.DateTimeFormat(lang + "-u-nu-latn", {
    hour: "2-digit",
    minute: "2-digit",
    hourCycle: "h23",
    timeZone: "Europe/Stockholm",
  });

  function when(time) {
    const from = new Date(time.starts_at);
    const to = new Date(time.ends_at);
    return fill(text.when, { date: dateFormat.format(from), from: clockFormat.format(from), to: clockFormat.format(to) });
  }

  function showTimes(event, seq) {
    const item = document.createElement("li");
    item.className = "offer";
    const intro = document.createElement("p");
    intro.textContent = text.times_offered;
    item.appendChild(intro);
    const list = document.createElement("ul");
    list.className = "offered-times";
    list.setAttribute("role", "list");
    const result = document.createElement("p");
    result.className = "offer-result";
    result.setAttribute("role", "status");
    (event.times || []).forEach((time) => {
      const entry = document.createElement("li");
      if (anonymous) {
        entry.textContent = when(time);
      } else {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "secondary";
        button.textContent = fill(text.book, { time: when(time) });
        button.setAttribute("data-starts-at", time.starts_at);
        button.addEventListener("click", () => book(time, list, result));
        entry.appendChild(button);
      }
      list.appendChild(entry);
    });
    item.appendChild(list);
    if (anonymous) {
      const note = document.createElement("p");
      note.textContent = text.sign_in_to_book + " ";
      const link = document.createElement("a");
      link.href = "/sign-in";
      link.target = "_blank";
      link.rel = "noopener";
      link.textContent = text.sign_in;
      note.appendChild(link);
      item.appendChild(note);
    }
    item.appendChild(result);
    chat.place(item, seq);
  }

  function book(time, list, result) {
    const buttons = list.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    result.className = "offer-result";
    result.textContent = "";
    postJson("/api/bookings", { service, starts_at: time.starts_at }, { csrf })
      .then((booked) => {
        result.className = "offer-result success";
        result.textContent = fill(text.booked, { time: when(booked.booking) }) + " ";
        const link = document.createElement("a");
        link.href = "/my?booked=" + encodeURIComponent(booked.booking.id);
        link.textContent = text.my_pages;
        result.appendChild(link);
        list.setAttribute("data-booked", booked.booking.id);
      })
      .catch((error) => {
        buttons.forEach((b) => (b.disabled = false));
        result.className = "offer-result error";
        if (error.status === 409) {
          result.textContent = text.taken;
        } else if (error.status === 401) {
          result.textContent = text.sign_in_to_book;
        } else {
          result.textContent = text.book_failed;
        }
      });
  }

  // --- Video ------------------------------------------------------------------

  function videoRoom(event, seq) {
    const id = String(event.meeting_room || "").replace(/^adhoc:/, "");
    const href = "/meeting/adhoc/" + encodeURIComponent(id) + "?chat=" + encodeURIComponent(service);
    const item = document.createElement("li");
    item.className = "note video";
    item.appendChild(document.createTextNode(text.video_opened + " "));
    const link = document.createElement("a");
    link.href = href;
    link.textContent = text.join_video;
    item.appendChild(link);
    chat.place(item, seq);
    // Straight in when it happens now; a replay of an old one only links.
    const seen = remembered().videoSeq || 0;
    if (seq > joinedUpTo && seq > seen) {
      remember({ videoSeq: seq });
      location.assign(href);
    } else if (seq > seen) {
      remember({ videoSeq: seq });
    }
  }

  // --- The chat's room -----------------------------------------------------------

  function attach(id, joinNow) {
    remember({ room: id });
    room = connection.room(id);
    chat = createChat(room, {
      log: $("chat-log"),
      form: $("chat-form"),
      input: $("chat-text"),
      send: $("chat-send"),
      typing: $("chat-typing"),
      receipts: true,
      enterSends: false,
      text,
      me: () => connection.party,
      canSend: () => !finished,
    });
    room.on("joined", onJoined);
    room.on("queue.status", queueStatus);
    room.on("queue.offline_form", showOffline);
    room.on("room.closed", () => finish(text.ended));
    room.on("error", (message) => {
      if (message.code === "not_found") {
        finish(text.gone);
      }
    });
    room.onEvent("assigned", (event, seq) => {
      chat.note(text.assigned, seq);
      if (seq > joinedUpTo) talking();
    });
    room.onEvent("times_offered", showTimes);
    room.onEvent("video_opened", videoRoom);
    room.onEvent("ended", (event, seq) => chat.note(text.ended, seq));
    if (joinNow) room.join();
    else room.attach();
  }

  function onJoined(message) {
    joinedUpTo = message.last_seq || 0;
    show(startSection, false);
    show(live, true);
    chat.setEnabled(true);
    const staff = (message.participants || []).some((p) => p.role === "social_worker");
    if (staff) talking();
    else waiting();
  }

  // --- The end --------------------------------------------------------------------

  function finish(message) {
    if (finished) return;
    finished = true;
    if (chat) chat.setEnabled(false);
    show(leaveButton, false);
    show(closeButton, false);
    show(queueBox, false);
    setState(message);
    $("chat-ended-text").textContent = message;
    show(ended, true);
    const saveBox = $("chat-save-box");
    if (saveBox) show(saveBox, !!chat && chat.lines().length > 0);
    if (room) room.untrack();
    // The chat is over: this tab forgets it (and an anonymous chat's token).
    const municipality = remembered().municipality;
    forget();
    if (municipality) remember({ municipality });
    if (connection) connection.stop();
    if (offline.hidden) $("chat-ended-title").focus();
  }

  const save = $("chat-save");
  if (save) {
    save.addEventListener("click", () => {
      const header = fill(text.transcript_header, { service: serviceName });
      const blob = new Blob([chat.transcript(header)], { type: "text/plain;charset=utf-8" });
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = "kontakt-chat-" + new Date().toISOString().slice(0, 10) + ".txt";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    });
  }

  leaveButton.addEventListener("click", () => {
    if (room) room.send({ type: "queue.leave" });
  });
  closeButton.addEventListener("click", () => {
    if (room) room.send({ type: "chat.close" });
  });

  // --- The offline form ----------------------------------------------------------------

  function showOffline() {
    if (!offline.hidden) return;
    show(offline, true);
    $("chat-offline-title").focus();
  }

  offlineForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const error = $("offline-error");
    const message = $("offline-message").value.trim();
    const email = $("offline-email").value.trim();
    const phone = $("offline-phone").value.trim();
    const name = $("offline-name").value.trim();
    const refuse = (why, field) => {
      error.textContent = why;
      show(error, true);
      field.setAttribute("aria-invalid", "true");
      field.focus();
    };
    offlineForm.querySelectorAll("[aria-invalid]").forEach((f) => f.removeAttribute("aria-invalid"));
    if (!message) return refuse(text.offline_needs_message, $("offline-message"));
    if (!email && !phone) return refuse(text.offline_needs_contact, $("offline-email"));
    show(error, false);
    const body = { service, message };
    if (name) body.name = name;
    if (email) body.contact_email = email;
    if (phone) body.contact_phone = phone;
    if (anonymous) body.municipality = remembered().municipality || $("chat-home").value;
    const button = $("offline-send");
    button.disabled = true;
    postJson("/api/chats/offline", body, { csrf })
      .then(() => {
        show(offlineForm, false);
        show($("offline-done"), true);
        $("offline-done").focus();
      })
      .catch(() => {
        button.disabled = false;
        error.textContent = text.offline_failed;
        show(error, true);
      });
  });

  // --- Connecting ---------------------------------------------------------------------

  function connect(ticket) {
    connection = new Connection({
      ticket,
      onState: (state) => {
        if (finished) return;
        if (state === "reconnecting") setState(text.reconnecting);
        else if (state === "connecting") setState(text.connecting);
      },
      onTicketError: (error) => {
        if (error.status === 401 || error.status === 403) {
          // The session or the one-chat token ended.
          finish(text.gone);
          return "stop";
        }
        return "retry";
      },
    });
    connection.on("welcome", () => {
      if (!room && !opening) {
        opening = true;
        connection.send({ type: "queue.open", service });
      }
    });
    connection.on("joined", (message) => {
      if (room || !opening || !String(message.room).startsWith("chat:")) return;
      opening = false;
      attach(message.room, false);
      onJoined(message);
    });
    connection.on("error", (message) => {
      if (opening && !message.room) {
        opening = false;
        startFailed();
      }
    });
    connection.start();
  }

  function startFailed() {
    if (connection) connection.stop();
    connection = null;
    show(startSection, true);
    show(live, false);
    startError.textContent = text.start_failed;
    show(startError, true);
    $("chat-open").disabled = false;
  }

  function ticketFor() {
    if (!anonymous) return sessionTicket(csrf);
    const token = sessionStorage.getItem(tokenKey);
    return token ? bearerTicket(token) : null;
  }

  startForm.addEventListener("submit", (event) => {
    event.preventDefault();
    show(startError, false);
    const button = $("chat-open");
    button.disabled = true;
    let ready = Promise.resolve();
    if (anonymous) {
      const home = $("chat-home");
      if (!home.value) {
        button.disabled = false;
        home.setAttribute("aria-invalid", "true");
        startError.textContent = text.home_missing;
        show(startError, true);
        home.focus();
        return;
      }
      home.removeAttribute("aria-invalid");
      remember({ municipality: home.value });
      ready = postJson("/api/chats/anonymous", { service, municipality: home.value }, { csrf }).then((answer) => {
        sessionStorage.setItem(tokenKey, answer.token);
      });
    }
    ready
      .then(() => {
        show(startSection, false);
        show(live, true);
        setState(text.connecting);
        connect(ticketFor());
      })
      .catch(startFailed);
  });

  // A chat this tab already has: join it again and show all of it.
  const known = remembered();
  const ticket = known.room ? ticketFor() : null;
  if (known.room && ticket) {
    show(startSection, false);
    show(live, true);
    connect(ticket);
    attach(known.room, true);
  }
}
