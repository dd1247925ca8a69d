// chat.js: the chat of one room (a meeting room or a pre-assessment chat)
// on a protocol.js Room: the log in seq order, the send box, the typing
// indicator both ways and read receipts. A page with several chats (the
// staff console) makes one per room, each with its own elements.
//
// Exported API
//
//   createChat(room, options) -> Chat
//     room: a protocol.js Room (connection.room(id)). The chat listens to
//       its "chat" events, "chat.stored", "chat.typing" and "chat.read", and
//       acks every event it is given once the page is visible.
//     options:
//       log          <ol>/<ul> the messages go into (required).
//       form, input  the send box (a <form> and its <textarea>); without
//                    them the chat only shows.
//       send         the send button, disabled with the input.
//       typing       an element (aria-live) where "… is writing" appears;
//                    with it, this side's typing is sent too.
//       receipts     true: own messages show "Sent" and then "Read".
//       text         strings from the page: you, role_<role> (the label of
//                    each role), in_sentence_<role> (inside a sentence),
//                    typing (with %{who}), sent, read.
//       enterSends   true: Enter sends, Shift+Enter starts a new line.
//       me()         this side's party (connection.party).
//       canSend()    false refuses a message (a lobby, a closed chat).
//       onMessage(event, seq, mine)   after a chat message is shown.
//       onUnread(event, seq)          a message from the other side came
//                    while the page was hidden (for an unread count).
//   Chat:
//     .place(item, seq)      puts an <li> into the log in seq order (for a
//                            page's own lines: an offer of times, a note).
//     .note(text, seq?)      a line of the page's own, e.g. "Closed".
//     .setEnabled(on)        the send box on or off.
//     .lines()               [{ seq, who, text, sent_at, mine }] in order.
//     .transcript(header?)   the messages as plain text, one per line.
//     .markAllRead()         ack what is shown (after a hidden page shows).
//     .destroy()             stop listening.

const TYPING_EVERY_MS = 3000;
const TYPING_IDLE_MS = 5000;
const TYPING_SHOWN_MS = 10000;

function fill(template, values) {
  return String(template || "").replace(/%\{(\w+)\}/g, (_, name) => (values[name] === undefined ? "" : values[name]));
}

export function createChat(room, options) {
  const { log, form, input, send: sendButton, typing: typingEl, receipts = false } = options;
  const text = options.text || {};
  const me = options.me || (() => null);
  const canSend = options.canSend || (() => true);
  const messages = new Map(); // seq -> { seq, who, text, sent_at, mine, item }
  const offs = [];
  let enabled = true;
  let lastShownSeq = 0;
  let typingSentAt = 0;
  let typingIdle = null;
  let typingShown = null;
  let readUpTo = 0; // the highest seq the other side has read

  const roleName = (role) => text["role_" + role] || role || "";
  const visible = () => document.visibilityState !== "hidden";

  function place(item, seq) {
    if (seq) item.setAttribute("data-seq", String(seq));
    const later = seq
      ? Array.prototype.find.call(log.children, (other) => Number(other.getAttribute("data-seq")) > seq)
      : null;
    log.insertBefore(item, later || null);
    return item;
  }

  function byClientId(clientId) {
    return clientId && log.querySelector('li[data-client-id="' + CSS.escape(clientId) + '"]');
  }

  function setReceipt(item) {
    if (!receipts || item.getAttribute("data-mine") !== "true") return;
    let receipt = item.querySelector(".receipt");
    if (!receipt) {
      receipt = document.createElement("span");
      receipt.className = "receipt";
      item.appendChild(receipt);
    }
    const seq = Number(item.getAttribute("data-seq"));
    const state = item.hasAttribute("data-pending") ? "" : seq && seq <= readUpTo ? "read" : "sent";
    if (state) item.setAttribute("data-receipt", state);
    else item.removeAttribute("data-receipt");
    receipt.textContent = state ? text[state] || "" : "";
  }

  function fillItem(item, entry, mine) {
    item.textContent = "";
    const who = document.createElement("strong");
    who.textContent = (mine ? text.you : roleName(entry.role)) + ": ";
    item.appendChild(who);
    item.appendChild(document.createTextNode(entry.text));
    item.setAttribute("data-mine", mine ? "true" : "false");
    if (entry.role) item.setAttribute("data-role", entry.role);
  }

  function ackShown() {
    if (lastShownSeq && visible()) room.ack(lastShownSeq);
  }

  function show(event, seq) {
    const mine = event.from === me();
    const existing = byClientId(event.client_id) || log.querySelector('li[data-seq="' + seq + '"]');
    const item = existing || document.createElement("li");
    fillItem(item, event, mine);
    if (event.client_id) item.setAttribute("data-client-id", event.client_id);
    item.removeAttribute("data-pending");
    item.classList.add("message");
    if (existing) {
      existing.remove();
    }
    place(item, seq);
    setReceipt(item);
    messages.set(seq, {
      seq,
      who: mine ? text.you : roleName(event.role),
      text: event.text,
      sent_at: event.sent_at,
      mine,
    });
    if (!mine) clearTyping();
    if (options.onMessage) options.onMessage(event, seq, mine);
    if (!mine && !visible() && options.onUnread) options.onUnread(event, seq);
  }

  function clearTyping() {
    clearTimeout(typingShown);
    if (typingEl) typingEl.textContent = "";
  }

  offs.push(
    room.onEvent("*", (event, seq) => {
      if (event.kind === "chat") show(event, seq);
      lastShownSeq = Math.max(lastShownSeq, seq);
      ackShown();
    }),
    room.on("chat.stored", (message) => {
      const item = byClientId(message.client_id);
      if (!item) return;
      item.removeAttribute("data-pending");
      if (!item.hasAttribute("data-seq")) {
        item.remove();
        place(item, message.seq);
      }
      setReceipt(item);
    }),
    room.on("chat.typing", (message) => {
      if (!typingEl || message.party === me()) return;
      clearTimeout(typingShown);
      if (message.typing) {
        const role = message.party && message.party.startsWith("staff:") ? "social_worker" : "resident";
        const sentence = fill(text.typing, { who: text["in_sentence_" + role] || roleName(role) });
        typingEl.textContent = sentence.charAt(0).toLocaleUpperCase(document.documentElement.lang) + sentence.slice(1);
        typingShown = setTimeout(clearTyping, TYPING_SHOWN_MS);
      } else {
        clearTyping();
      }
    }),
    room.on("chat.read", (message) => {
      if (message.party === me()) return;
      readUpTo = Math.max(readUpTo, message.seq);
      log.querySelectorAll('li[data-mine="true"]').forEach(setReceipt);
    }),
  );

  function onVisible() {
    ackShown();
  }
  document.addEventListener("visibilitychange", onVisible);
  window.addEventListener("focus", onVisible);

  function sendTyping(on) {
    if (!typingEl) return;
    room.send({ type: "chat.typing", typing: on });
  }

  function stopTyping() {
    clearTimeout(typingIdle);
    typingIdle = null;
    if (typingSentAt) {
      typingSentAt = 0;
      sendTyping(false);
    }
  }

  function onInput() {
    if (!enabled) return;
    if (!input.value.trim()) {
      stopTyping();
      return;
    }
    const now = Date.now();
    if (now - typingSentAt > TYPING_EVERY_MS) {
      typingSentAt = now;
      sendTyping(true);
    }
    clearTimeout(typingIdle);
    typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function onSubmit(event) {
    event.preventDefault();
    const message = input.value.trim();
    if (!message || !enabled || !canSend()) return;
    stopTyping();
    const clientId = room.sendChat(message);
    const item = document.createElement("li");
    item.classList.add("message");
    fillItem(item, { text: message }, true);
    item.setAttribute("data-client-id", clientId);
    item.setAttribute("data-pending", "true");
    place(item, 0);
    setReceipt(item);
    input.value = "";
  }

  function onKey(event) {
    // Enter sends, Shift+Enter starts a new line.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && options.enterSends) {
      event.preventDefault();
      form.requestSubmit();
    }
  }

  if (form && input) {
    form.addEventListener("submit", onSubmit);
    input.addEventListener("input", onInput);
    input.addEventListener("blur", stopTyping);
    input.addEventListener("keydown", onKey);
  }

  function setEnabled(on) {
    enabled = on;
    if (input) input.disabled = !on;
    if (sendButton) sendButton.disabled = !on;
    if (!on) stopTyping();
  }

  function lines() {
    return Array.from(messages.values()).sort((a, b) => a.seq - b.seq);
  }

  function transcript(header) {
    const out = header ? [header, ""] : [];
    for (const line of lines()) {
      const at = line.sent_at ? new Date(line.sent_at * 1000).toLocaleString(document.documentElement.lang) + " " : "";
      out.push(at + line.who + ": " + line.text);
    }
    return out.join("\n") + "\n";
  }

  function note(message, seq, className) {
    const item = document.createElement("li");
    item.className = "note" + (className ? " " + className : "");
    item.textContent = message;
    return place(item, seq || 0);
  }

  function destroy() {
    offs.forEach((off) => off());
    document.removeEventListener("visibilitychange", onVisible);
    window.removeEventListener("focus", onVisible);
    if (form && input) {
      form.removeEventListener("submit", onSubmit);
      input.removeEventListener("input", onInput);
      input.removeEventListener("blur", stopTyping);
      input.removeEventListener("keydown", onKey);
    }
    clearTimeout(typingIdle);
    clearTimeout(typingShown);
  }

  return { place, note, setEnabled, lines, transcript, markAllRead: ackShown, destroy };
}
