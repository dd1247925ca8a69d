// meeting.js: the entry of the meeting pages, /join/{booking},
// /meeting/adhoc/{id} and /guest/{token}: camera preview, waiting room,
// video call and in-meeting chat over the real-time protocol in
// docs/protocol.md.
//
// - A booked meeting's room is opened through the API before every
//   connection (`POST /api/meetings/{id}/open`); an ad-hoc room (a chat
//   moved to video) is joined directly, and its resident enters without the
//   lobby. An anonymous resident's ad-hoc room uses the one-chat token the
//   chat page keeps in sessionStorage.
// - A guest (/guest/{token}) joins the one room its guest link names, with
//   tickets for that link (data-guest-token), after giving a display name;
//   it waits in the lobby like the resident. The room lets a link in once:
//   a second use is told so.
// - Staff see who is in the meeting, with "send back to the waiting room"
//   for the resident and guests, and make guest links (meeting.invite, then
//   POST /api/meetings/{id}/guests), which they copy or have mailed.
// - protocol.js holds the socket: reconnects with a new ticket, joins again
//   and resumes from the last seq shown; call.js holds the peer connections
//   (relay only); chat.js the in-meeting chat.
// - A dropped socket (offline, a network change) says "reconnecting"; once
//   back in the room, still admitted, the page says "reconnected" and
//   restarts ICE on each connection with the fresh TURN credentials. The
//   others hear of it as participant.away and participant.back. The page
//   sends `leave` when it goes away, so a closed tab leaves at once.
// - #meeting carries data-connection ("connecting", "connected",
//   "reconnecting", "closed") and data-ice-restarts (ICE restarts offered
//   by this page), for tests and for styling.
//
// Exports nothing; it runs on a page with #meeting.

import { Connection, sessionTicket, bearerTicket, postJson } from "./protocol.js";
import { createChat } from "./chat.js";
import { createCall, startCamera, bindToggle, stopStream } from "./call.js";

const root = document.getElementById("meeting");
if (root) start(root);

function start(root) {
  const text = JSON.parse(document.getElementById("meeting-text").textContent);
  const bookingId = root.getAttribute("data-booking");
  const adhocRoom = root.getAttribute("data-room");
  const csrf = root.getAttribute("data-csrf");
  const tokenKey = root.getAttribute("data-token-key");
  const guestToken = root.getAttribute("data-guest-token");
  const token = guestToken || (tokenKey ? sessionStorage.getItem(tokenKey) : null);

  const statusEl = document.getElementById("meeting-status");
  const lobbyList = document.getElementById("lobby-list");
  const lobbyEmpty = document.getElementById("lobby-empty");
  const presentList = document.getElementById("present-list");

  let room = null;
  let local = null;
  let finished = false;
  let participants = {}; // party -> role, of those admitted besides me
  let admitted = false;
  let sentBack = false;
  // Set when the socket drops while admitted: the next `joined` is a
  // return, and the calls restart ICE rather than start again.
  let rejoining = false;
  root.setAttribute("data-connection", "connecting");
  root.setAttribute("data-ice-restarts", "0");

  const say = (message) => {
    statusEl.textContent = message;
  };
  const fill = (template, values) =>
    template.replace(/%\{(\w+)\}/g, (_, name) => (values[name] === undefined ? "" : values[name]));
  const roleName = (role) => text["role_" + role] || role;
  // A role inside a sentence ("You have video with the social worker"):
  // its lower-case form, not the label's capitalised one.
  const roleInSentence = (role) => text["in_sentence_" + role] || roleName(role);
  // Fills a sentence and capitalises its first letter, for the sentences
  // that begin with a role ("The interpreter joined the meeting").
  const sentence = (template, values) => {
    const filled = fill(template, values);
    return filled.charAt(0).toLocaleUpperCase(document.documentElement.lang) + filled.slice(1);
  };

  const ticket = token ? bearerTicket(token) : sessionTicket(csrf);
  const connection = new Connection({
    ticket: () => {
      if (adhocRoom) {
        if (!room) setUp(adhocRoom);
        return ticket();
      }
      return postJson("/api/meetings/" + encodeURIComponent(bookingId) + "/open", undefined, { csrf }).then(
        (meeting) => {
          if (!room) setUp(meeting.room);
          return ticket();
        },
      );
    },
    onState: (state) => {
      if (finished) return;
      if (state === "reconnecting") {
        root.setAttribute("data-connection", "reconnecting");
        say(text.reconnecting);
        if (admitted) rejoining = true;
        if (call) call.credentialsStale();
      } else if (state === "open") {
        root.setAttribute("data-connection", "connected");
      }
    },
    onPageHide: () => {
      if (room && !finished) connection.sendNow({ type: "leave", room: room.id });
    },
    onTicketError: (error) => {
      if (error.status === 404 || error.status === 409) {
        finish(text.not_open);
        return "stop";
      }
      if (error.status === 401) {
        if (guestToken) {
          finish(text.link_invalid);
        } else if (token) {
          finish(text.not_open);
        } else {
          location.reload();
        }
        return "stop";
      }
      return "retry";
    },
  });

  let call = null;
  let chat = null;

  function setAdmitted(value) {
    admitted = value;
    if (chat) chat.setEnabled(value);
    const create = document.getElementById("invite-create");
    if (create) create.disabled = !value;
  }

  function setUp(id) {
    room = connection.room(id);
    call = createCall(room, {
      local,
      remote: document.getElementById("remote-videos"),
      me: () => connection.party,
      label: (party) => roleName(participants[party] || ""),
      onConnected: (party) => say(sentence(text.connected_to, { who: roleInSentence(participants[party] || "") })),
      onFailed: () => say(text.failed),
      onQuality: (level) => showQuality(level),
      onIceRestart: (count) => root.setAttribute("data-ice-restarts", String(count)),
    });
    chat = createChat(room, {
      log: document.getElementById("chat-log"),
      form: document.getElementById("chat-form"),
      input: document.getElementById("chat-text"),
      send: document.getElementById("chat-send"),
      text,
      me: () => connection.party,
      canSend: () => admitted,
    });
    chat.setEnabled(false);
    room.join();

    room.on("joined", (message) => {
      if (message.state !== "admitted") {
        setAdmitted(false);
        say(text.lobby_waiting);
        return;
      }
      setAdmitted(true);
      sentBack = false;
      participants = {};
      if (presentList) presentList.textContent = "";
      (message.participants || []).forEach((p) => {
        if (p.party !== connection.party) {
          participants[p.party] = p.role;
          addPresent(p);
        }
      });
      (message.lobby || []).forEach(addKnock);
      const others = Object.keys(participants);
      if (rejoining) {
        // Back after a drop: the same connections, new relay paths.
        rejoining = false;
        say(text.reconnected);
        others.forEach((party) => call.restart(party));
        return;
      }
      say(others.length ? text.admitted : text.alone);
      others.forEach((party) => {
        if (!call.isConnected(party)) call.connectTo(party);
      });
    });
    room.on("participant.away", (message) => {
      const figure = tileOf(message.party);
      if (figure) figure.setAttribute("data-away", "true");
      say(sentence(text.participant_away, { who: roleInSentence(participants[message.party] || "") }));
    });
    room.on("participant.back", (message) => {
      const figure = tileOf(message.party);
      if (figure) figure.removeAttribute("data-away");
      say(sentence(text.participant_back, { who: roleInSentence(participants[message.party] || "") }));
    });
    room.onEvent("participant_joined", (event) => {
      if (event.participant.party === connection.party) return;
      participants[event.participant.party] = event.participant.role;
      removeKnock(event.participant.party);
      addPresent(event.participant);
      say(sentence(text.joined, { who: roleInSentence(event.participant.role) }));
    });
    room.onEvent("participant_left", (event) => {
      // Recorded after an away grace ran out, or on an explicit leave.
      if (event.party === connection.party) return;
      say(sentence(text.participant_left, { who: roleInSentence(participants[event.party] || "") }));
      delete participants[event.party];
      removePresent(event.party);
      call.close(event.party);
    });
    room.onEvent("knock", (event) => addKnock(event.participant));
    room.onEvent("lobby_left", (event) => removeKnock(event.party));
    // Sent back, the resident keeps being told so rather than the usual
    // waiting-room words, until admitted again.
    room.on("lobby.status", (message) => {
      if (!sentBack) say(message.staff_present ? text.lobby_staff_here : text.lobby_waiting);
    });
    room.on("lobby.knock", (message) => addKnock(message.participant));
    room.on("lobby.admitted", () => say(text.admitted));
    room.on("lobby.declined", () => finish(text.declined));
    room.on("lobby.sent_back", () => {
      sentBack = true;
      call.closeAll();
      setAdmitted(false);
      participants = {};
      say(text.sent_back);
    });
    room.on("meeting.invited", (message) => linkInvitation(message));
    room.on("room.closed", (message) => finish(text["closed_" + message.reason] || text.closed_other));
    room.on("error", (message) => {
      if (message.code === "invitation_invalid") finish(text.link_used);
      else if (message.code === "room_full" && !admitted) finish(text.full);
      else if (message.code === "room_full") say(text.full);
      else if (message.code === "not_found" && guestToken) finish(text.link_invalid);
      else if (message.code === "not_found" || message.code === "forbidden") finish(text.not_open);
    });
  }

  function tileOf(party) {
    const remote = document.getElementById("remote-videos");
    return remote && remote.querySelector('figure[data-party="' + CSS.escape(party) + '"]');
  }

  // --- Waiting room (staff) ---------------------------------------------------

  function beep() {
    try {
      const Context = window.AudioContext || window.webkitAudioContext;
      const context = new Context();
      const tone = context.createOscillator();
      const gain = context.createGain();
      tone.frequency.value = 660;
      gain.gain.value = 0.1;
      tone.connect(gain).connect(context.destination);
      tone.start();
      tone.stop(context.currentTime + 0.25);
      tone.onended = () => context.close();
    } catch (e) {
      // No sound where audio is not allowed; the knock is still listed.
    }
  }

  function lobbyItem(party) {
    return lobbyList && lobbyList.querySelector('li[data-party="' + CSS.escape(party) + '"]');
  }

  function updateLobbyEmpty() {
    if (lobbyEmpty) lobbyEmpty.hidden = lobbyList.children.length > 0;
  }

  function addKnock(participant) {
    if (!lobbyList || lobbyItem(participant.party)) return;
    const item = document.createElement("li");
    item.setAttribute("data-party", participant.party);
    const name = document.createElement("span");
    name.textContent = roleName(participant.role);
    item.appendChild(name);
    [
      ["lobby.admit", text.admit, ""],
      ["lobby.decline", text.decline, "secondary"],
    ].forEach(([type, label, className]) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = className;
      button.textContent = label;
      button.setAttribute("data-action", type);
      button.addEventListener("click", () => room.send({ type, party: participant.party }));
      item.appendChild(button);
    });
    lobbyList.appendChild(item);
    updateLobbyEmpty();
    say(sentence(text.knock, { who: roleInSentence(participant.role) }));
    beep();
  }

  function removeKnock(party) {
    const item = lobbyItem(party);
    if (item) item.remove();
    updateLobbyEmpty();
  }

  // --- Who is in the meeting (staff) ----------------------------------------

  function presentItem(party) {
    return presentList && presentList.querySelector('li[data-party="' + CSS.escape(party) + '"]');
  }

  // Staff can send the resident and guests back to the waiting room; other
  // staff are listed without the button (the room refuses it for them).
  function addPresent(participant) {
    if (!presentList || presentItem(participant.party)) return;
    const item = document.createElement("li");
    item.setAttribute("data-party", participant.party);
    const name = document.createElement("span");
    name.textContent = roleName(participant.role);
    item.appendChild(name);
    if (!participant.party.startsWith("staff:")) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary";
      button.textContent = text.send_back;
      button.setAttribute("data-action", "lobby.send_back");
      button.addEventListener("click", () => room.send({ type: "lobby.send_back", party: participant.party }));
      item.appendChild(button);
    }
    presentList.appendChild(item);
  }

  function removePresent(party) {
    const item = presentItem(party);
    if (item) item.remove();
  }

  // --- Guest links (staff) ------------------------------------------------------

  const inviteForm = document.getElementById("invite-form");
  const inviteStatus = document.getElementById("invite-status");
  const pendingInvites = []; // what staff asked for, in the order asked
  if (inviteForm) {
    const roleSelect = document.getElementById("invite-role");
    const languageField = document.getElementById("invite-language-field");
    const showLanguage = () => {
      languageField.hidden = roleSelect.value !== "interpreter";
    };
    roleSelect.addEventListener("change", showLanguage);
    showLanguage();
    inviteForm.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!room || !admitted) return;
      const role = roleSelect.value;
      const email = document.getElementById("invite-email").value.trim();
      pendingInvites.push({
        role,
        interpreting: role === "interpreter" ? document.getElementById("invite-language").value : undefined,
        email: email || undefined,
      });
      inviteStatus.textContent = "";
      room.send({ type: "meeting.invite", role });
    });
    document.getElementById("invite-copy").addEventListener("click", () => {
      const field = document.getElementById("invite-link");
      const copied = () => {
        inviteStatus.textContent = text.invite_copied;
      };
      const selectIt = () => {
        field.focus();
        field.select();
      };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(field.value).then(copied, selectIt);
      } else {
        selectIt();
      }
    });
  }

  function linkInvitation(message) {
    const asked = pendingInvites.shift();
    if (!asked || !inviteForm) return;
    postJson(
      "/api/meetings/" + encodeURIComponent(bookingId) + "/guests",
      {
        invitation: message.token,
        role: message.role,
        interpreting: asked.interpreting,
        email: asked.email,
        mail_language: document.documentElement.lang,
      },
      { csrf },
    ).then(
      (link) => {
        document.getElementById("invite-link").value = link.url;
        document.getElementById("invite-result").hidden = false;
        inviteStatus.textContent = link.mailed ? text.invite_mailed : text.invite_created;
        if (link.mailed) document.getElementById("invite-email").value = "";
      },
      () => {
        inviteStatus.textContent = text.invite_failed;
      },
    );
  }

  // --- Connection quality ---------------------------------------------------------

  // Told only when it changes, so that a screen reader is not flooded.
  const qualityEl = document.getElementById("call-quality");
  let quality = "good";
  function showQuality(level) {
    if (!qualityEl || level === quality) return;
    quality = level;
    qualityEl.textContent = level === "poor" ? text.quality_poor : text.quality_good;
    qualityEl.setAttribute("data-quality", level);
  }

  // --- Screen sharing (staff) ----------------------------------------------------

  const shareButton = document.getElementById("share-screen");
  let screen = null;
  function stopSharing() {
    if (!screen) return;
    stopStream(screen);
    screen = null;
    if (call) call.replaceVideo(null);
    document.getElementById("self-video").srcObject = local;
    shareButton.setAttribute("aria-pressed", "false");
    say(text.share_stopped);
  }
  if (shareButton) {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getDisplayMedia) shareButton.hidden = true;
    shareButton.addEventListener("click", () => {
      if (screen) {
        stopSharing();
        return;
      }
      navigator.mediaDevices.getDisplayMedia({ video: true, audio: false }).then(
        (stream) => {
          const track = stream.getVideoTracks()[0];
          if (!track || !call || !local || !local.getVideoTracks().length) {
            stopStream(stream);
            say(text.share_failed);
            return;
          }
          screen = stream;
          // The browser's own "stop sharing" ends the track.
          track.addEventListener("ended", stopSharing);
          call.replaceVideo(track);
          document.getElementById("self-video").srcObject = stream;
          shareButton.setAttribute("aria-pressed", "true");
          say(text.share_started);
        },
        () => say(text.share_failed),
      );
    });
  }

  // --- Ending ---------------------------------------------------------------------

  function finish(message) {
    if (finished) return;
    finished = true;
    root.setAttribute("data-connection", "closed");
    setAdmitted(false);
    if (call) call.closeAll();
    stopStream(screen);
    stopStream(local);
    say(message);
    document.querySelectorAll("#meeting .controls button").forEach((b) => {
      b.disabled = true;
    });
    connection.stop();
  }

  document.getElementById("leave-meeting").addEventListener("click", () => {
    if (room) room.send({ type: "leave" });
    finish(text.left);
  });
  const end = document.getElementById("end-meeting");
  if (end) end.addEventListener("click", () => room && room.send({ type: "meeting.end" }));

  // The camera test before the meeting; the call starts once it is decided.
  bindToggle(document.getElementById("toggle-mic"), "audio", () => local);
  bindToggle(document.getElementById("toggle-camera"), "video", () => local);
  updateLobbyEmpty();
  // A guest first gives a display name and checks the camera (the pre-call
  // check, precheck.js, will sit in #precheck); then the call starts.
  const guestForm = document.getElementById("guest-form");
  const camera = startCamera(document.getElementById("self-video"), () => say(text.camera_failed));
  if (guestForm) {
    guestForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const name = document.getElementById("guest-name").value.trim();
      if (!name) return;
      document.getElementById("self-caption").textContent = text.you + " (" + name + ")";
      guestForm.hidden = true;
      say(text.connecting);
      camera.then((stream) => {
        local = stream;
        if (!finished) connection.start();
      });
    });
  } else {
    camera.then((stream) => {
      local = stream;
      if (!finished) connection.start();
    });
  }
}
