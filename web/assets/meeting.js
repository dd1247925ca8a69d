// The meeting page (/join/{booking}): camera preview, waiting room, video
// call and in-meeting chat over the real-time protocol in docs/protocol.md.
//
// - The room is opened through the API, then /ws is connected with a
//   single-use ticket; after a dropped connection the page reconnects with a
//   new ticket, joins again and resumes the room from the last seq it showed.
// - Media only ever goes through the TURN relay (iceTransportPolicy
//   "relay") with the credentials the room hands to admitted participants.
// - Whoever is admitted offers to everyone already in the room; the others
//   answer. An offer from a participant replaces an older connection with
//   them, so a participant who reconnects renegotiates from scratch; when
//   two offers cross, the party whose id sorts first gives way.
(function () {
  "use strict";

  var root = document.getElementById("meeting");
  if (!root) return;
  var text = JSON.parse(document.getElementById("meeting-text").textContent);
  var bookingId = root.getAttribute("data-booking");
  var csrf = root.getAttribute("data-csrf");

  var statusEl = document.getElementById("meeting-status");
  var selfVideo = document.getElementById("self-video");
  var remoteEl = document.getElementById("remote-videos");
  var chatLog = document.getElementById("chat-log");
  var chatForm = document.getElementById("chat-form");
  var chatText = document.getElementById("chat-text");
  var chatSend = document.getElementById("chat-send");
  var lobbyList = document.getElementById("lobby-list");
  var lobbyEmpty = document.getElementById("lobby-empty");

  var room = null;
  var me = null;
  var ws = null;
  var admitted = false;
  var finished = false;
  var iceServers = null;
  var lastSeq = 0; // the highest seq shown, for resume after a reconnect
  var seen = {}; // every seq shown: live events can overtake a resume's replay
  var resumeFrom = 0; // lastSeq when this connection joined; later events are live
  var retryMs = 500;
  var local = null;
  var participants = {}; // party -> role, of those admitted besides me
  var peers = {}; // party -> { pc, offerer, pendingIce }
  var waiting = []; // parties to offer to once TURN credentials arrive

  function say(message) {
    statusEl.textContent = message;
  }

  function fill(template, values) {
    return template.replace(/%\{(\w+)\}/g, function (_, name) {
      return values[name] === undefined ? "" : values[name];
    });
  }

  function roleName(role) {
    return text["role_" + role] || role;
  }

  // A role inside a sentence ("You have video with the social worker"):
  // its lower-case form, not the label's capitalised one.
  function roleInSentence(role) {
    return text["in_sentence_" + role] || roleName(role);
  }

  // Fills a sentence and capitalises its first letter, for the sentences
  // that begin with a role ("The interpreter joined the meeting").
  function sentence(template, values) {
    var filled = fill(template, values);
    return filled.charAt(0).toLocaleUpperCase(document.documentElement.lang) + filled.slice(1);
  }

  function send(message) {
    message.v = 1;
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  function post(path) {
    return fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "x-csrf-token": csrf, accept: "application/json" },
    }).then(function (res) {
      if (!res.ok) {
        var error = new Error("HTTP " + res.status);
        error.status = res.status;
        throw error;
      }
      return res.json();
    });
  }

  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
  }

  // --- Local media: the camera test before the meeting -------------------

  function startCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      say(text.camera_failed);
      return Promise.resolve(null);
    }
    return navigator.mediaDevices
      .getUserMedia({ audio: true, video: true })
      .catch(function () {
        return navigator.mediaDevices.getUserMedia({ audio: true });
      })
      .then(function (stream) {
        local = stream;
        selfVideo.srcObject = stream;
        return stream;
      })
      .catch(function () {
        say(text.camera_failed);
        return null;
      });
  }

  function toggle(button, kind) {
    button.addEventListener("click", function () {
      var off = button.getAttribute("aria-pressed") !== "true";
      button.setAttribute("aria-pressed", off ? "true" : "false");
      if (!local) return;
      local.getTracks().forEach(function (track) {
        if (track.kind === kind) track.enabled = !off;
      });
    });
  }
  toggle(document.getElementById("toggle-mic"), "audio");
  toggle(document.getElementById("toggle-camera"), "video");

  // --- Peer connections -----------------------------------------------------

  function tileId(party) {
    return "tile-" + party.replace(/[^A-Za-z0-9_-]/g, "-");
  }

  function tile(party) {
    var id = tileId(party);
    var figure = document.getElementById(id);
    if (!figure) {
      figure = document.createElement("figure");
      figure.className = "tile";
      figure.id = id;
      figure.setAttribute("data-party", party);
      var video = document.createElement("video");
      video.autoplay = true;
      video.setAttribute("playsinline", "");
      var caption = document.createElement("figcaption");
      caption.textContent = roleName(participants[party] || "");
      figure.appendChild(video);
      figure.appendChild(caption);
      remoteEl.appendChild(figure);
    }
    return figure;
  }

  function closePeer(party) {
    var peer = peers[party];
    if (peer) {
      delete peers[party];
      peer.pc.close();
    }
    var figure = document.getElementById(tileId(party));
    if (figure) figure.remove();
  }

  function closeAll() {
    Object.keys(peers).forEach(closePeer);
    waiting = [];
  }

  function makePeer(party, offerer) {
    closePeer(party);
    var pc = new RTCPeerConnection({ iceServers: iceServers, iceTransportPolicy: "relay" });
    var peer = { pc: pc, offerer: offerer, pendingIce: [] };
    peers[party] = peer;
    if (local) {
      local.getTracks().forEach(function (track) {
        pc.addTrack(track, local);
      });
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" });
      pc.addTransceiver("video", { direction: "recvonly" });
    }
    pc.onicecandidate = function (event) {
      if (!event.candidate || peers[party] !== peer) return;
      send({
        type: "signal.ice",
        room: room,
        to: party,
        candidate: {
          candidate: event.candidate.candidate,
          sdp_mid: event.candidate.sdpMid,
          sdp_m_line_index: event.candidate.sdpMLineIndex,
        },
      });
    };
    pc.ontrack = function (event) {
      var video = tile(party).querySelector("video");
      var stream = event.streams[0] || new MediaStream([event.track]);
      if (video.srcObject !== stream) {
        video.srcObject = stream;
        var playing = video.play();
        if (playing && playing.catch) playing.catch(function () {});
      }
    };
    pc.onconnectionstatechange = function () {
      if (peers[party] !== peer) return;
      var state = pc.connectionState;
      tile(party).setAttribute("data-state", state);
      if (state === "connected") {
        say(sentence(text.connected_to, { who: roleInSentence(participants[party] || "") }));
      } else if (state === "failed" && peer.offerer) {
        // A network change: the same connection gathers new relay candidates.
        offer(party, peer, true);
      }
    };
    if (offerer) offer(party, peer, false);
    return peer;
  }

  function offer(party, peer, restart) {
    peer.pc
      .createOffer(restart ? { iceRestart: true } : undefined)
      .then(function (description) {
        return peer.pc.setLocalDescription(description);
      })
      .then(function () {
        send({ type: "signal.offer", room: room, to: party, sdp: peer.pc.localDescription.sdp });
      })
      .catch(function () {
        say(text.failed);
      });
  }

  function connectTo(party) {
    if (!iceServers) {
      if (waiting.indexOf(party) < 0) waiting.push(party);
      return;
    }
    makePeer(party, true);
  }

  function flushIce(peer) {
    var pending = peer.pendingIce;
    peer.pendingIce = [];
    pending.forEach(function (candidate) {
      peer.pc.addIceCandidate(candidate).catch(function () {});
    });
  }

  function onOffer(from, sdp) {
    if (!iceServers) return; // Only admitted participants get offers, after credentials.
    var peer = peers[from];
    if (peer && peer.pc.signalingState === "have-local-offer") {
      // Both offered at once: the party whose id sorts first gives way.
      if (me > from) return;
    }
    var answer = function (target) {
      return target.pc
        .setRemoteDescription({ type: "offer", sdp: sdp })
        .then(function () {
          flushIce(target);
          return target.pc.createAnswer();
        })
        .then(function (description) {
          return target.pc.setLocalDescription(description);
        })
        .then(function () {
          send({ type: "signal.answer", room: room, to: from, sdp: target.pc.localDescription.sdp });
        });
    };
    var fresh = function () {
      return answer(makePeer(from, false));
    };
    var attempt = peer && peer.pc.signalingState === "stable" ? answer(peer).catch(fresh) : fresh();
    attempt.catch(function () {
      say(text.failed);
    });
  }

  function onAnswer(from, sdp) {
    var peer = peers[from];
    if (!peer || peer.pc.signalingState !== "have-local-offer") return;
    peer.pc
      .setRemoteDescription({ type: "answer", sdp: sdp })
      .then(function () {
        flushIce(peer);
      })
      .catch(function () {
        say(text.failed);
      });
  }

  function onIce(from, candidate) {
    var peer = peers[from];
    if (!peer) return;
    var init = {
      candidate: candidate.candidate,
      sdpMid: candidate.sdp_mid === undefined ? null : candidate.sdp_mid,
      sdpMLineIndex: candidate.sdp_m_line_index === undefined ? null : candidate.sdp_m_line_index,
    };
    if (!peer.pc.remoteDescription) {
      peer.pendingIce.push(init);
    } else {
      peer.pc.addIceCandidate(init).catch(function () {});
    }
  }

  // --- Waiting room (staff) ---------------------------------------------------

  function beep() {
    try {
      var Context = window.AudioContext || window.webkitAudioContext;
      var context = new Context();
      var tone = context.createOscillator();
      var gain = context.createGain();
      tone.frequency.value = 660;
      gain.gain.value = 0.1;
      tone.connect(gain).connect(context.destination);
      tone.start();
      tone.stop(context.currentTime + 0.25);
      tone.onended = function () {
        context.close();
      };
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
    var item = document.createElement("li");
    item.setAttribute("data-party", participant.party);
    var name = document.createElement("span");
    name.textContent = roleName(participant.role);
    item.appendChild(name);
    [
      ["lobby.admit", text.admit, ""],
      ["lobby.decline", text.decline, "secondary"],
    ].forEach(function (action) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = action[2];
      button.textContent = action[1];
      button.setAttribute("data-action", action[0]);
      button.addEventListener("click", function () {
        send({ type: action[0], room: room, party: participant.party });
      });
      item.appendChild(button);
    });
    lobbyList.appendChild(item);
    updateLobbyEmpty();
    say(sentence(text.knock, { who: roleInSentence(participant.role) }));
    beep();
  }

  function removeKnock(party) {
    var item = lobbyItem(party);
    if (item) item.remove();
    updateLobbyEmpty();
  }

  // --- Chat ---------------------------------------------------------------------

  // Shows a chat message; one with a seq goes in seq order, since a replay
  // can arrive after newer live messages.
  function showChat(entry, seq) {
    var existing = entry.client_id && chatLog.querySelector('li[data-client-id="' + CSS.escape(entry.client_id) + '"]');
    var item = existing || document.createElement("li");
    item.textContent = "";
    if (entry.client_id) item.setAttribute("data-client-id", entry.client_id);
    if (seq) item.setAttribute("data-seq", String(seq));
    if (entry.pending) item.setAttribute("data-pending", "true");
    else item.removeAttribute("data-pending");
    var who = document.createElement("strong");
    who.textContent = (entry.from === me ? text.you : roleName(entry.role)) + ": ";
    item.appendChild(who);
    item.appendChild(document.createTextNode(entry.text));
    if (existing) return;
    var later = seq
      ? Array.prototype.find.call(chatLog.children, function (other) {
          return Number(other.getAttribute("data-seq")) > seq;
        })
      : null;
    chatLog.insertBefore(item, later || null);
  }

  function setAdmitted(value) {
    admitted = value;
    chatText.disabled = !value;
    chatSend.disabled = !value;
  }

  chatForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var message = chatText.value.trim();
    if (!message || !admitted) return;
    var clientId = newId();
    if (!send({ type: "chat.send", room: room, client_id: clientId, text: message })) {
      say(text.chat_not_sent);
      return;
    }
    showChat({ from: me, client_id: clientId, text: message, pending: true });
    chatText.value = "";
  });

  // --- The protocol ---------------------------------------------------------------

  function onEvent(message) {
    if (seen[message.seq]) return;
    seen[message.seq] = true;
    lastSeq = Math.max(lastSeq, message.seq);
    var event = message.event;
    switch (event.kind) {
      case "chat":
        showChat(event, message.seq);
        send({ type: "ack", room: room, seq: message.seq });
        break;
      case "participant_joined":
        if (event.participant.party !== me) {
          participants[event.participant.party] = event.participant.role;
          removeKnock(event.participant.party);
          say(sentence(text.joined, { who: roleInSentence(event.participant.role) }));
        }
        break;
      case "participant_left":
        if (event.party !== me) {
          say(sentence(text.participant_left, { who: roleInSentence(participants[event.party] || "") }));
          delete participants[event.party];
          closePeer(event.party);
        }
        break;
      case "knock":
        addKnock(event.participant);
        break;
      case "lobby_left":
        removeKnock(event.party);
        break;
    }
  }

  function onJoined(message) {
    if (message.state !== "admitted") {
      setAdmitted(false);
      say(text.lobby_waiting);
      return;
    }
    setAdmitted(true);
    participants = {};
    (message.participants || []).forEach(function (p) {
      if (p.party !== me) participants[p.party] = p.role;
    });
    (message.lobby || []).forEach(addKnock);
    send({ type: "resume", room: room, last_seq: resumeFrom });
    var others = Object.keys(participants);
    say(others.length ? text.admitted : text.alone);
    others.forEach(function (party) {
      var peer = peers[party];
      if (!peer || peer.pc.connectionState !== "connected") connectTo(party);
    });
  }

  function finish(message) {
    finished = true;
    setAdmitted(false);
    closeAll();
    say(message);
    document.querySelectorAll("#meeting .controls button").forEach(function (b) {
      b.disabled = true;
    });
    if (ws) ws.close(1000);
    if (local) {
      local.getTracks().forEach(function (track) {
        track.stop();
      });
    }
  }

  function onMessage(message) {
    if (message.room && room && message.room !== room) return;
    switch (message.type) {
      case "welcome":
        me = message.party;
        resumeFrom = lastSeq;
        send({ type: "join", room: room });
        break;
      case "joined":
        onJoined(message);
        break;
      case "turn.credentials":
        iceServers = [
          {
            urls: message.credentials.urls,
            username: message.credentials.username,
            credential: message.credentials.password,
          },
        ];
        waiting.splice(0).forEach(connectTo);
        break;
      case "lobby.status":
        say(message.staff_present ? text.lobby_staff_here : text.lobby_waiting);
        break;
      case "lobby.knock":
        addKnock(message.participant);
        break;
      case "lobby.admitted":
        say(text.admitted);
        break;
      case "lobby.declined":
        finish(text.declined);
        break;
      case "lobby.sent_back":
        closeAll();
        setAdmitted(false);
        say(text.sent_back);
        break;
      case "event":
        onEvent(message);
        break;
      case "chat.stored":
        var item = chatLog.querySelector('li[data-client-id="' + CSS.escape(message.client_id) + '"]');
        if (item) item.removeAttribute("data-pending");
        break;
      case "signal.offer":
        onOffer(message.from, message.sdp);
        break;
      case "signal.answer":
        onAnswer(message.from, message.sdp);
        break;
      case "signal.ice":
        onIce(message.from, message.candidate);
        break;
      case "room.closed":
        finish(text["closed_" + message.reason] || text.closed_other);
        break;
      case "error":
        if (message.code === "not_found" || message.code === "forbidden") finish(text.not_open);
        break;
    }
  }

  function connect() {
    if (finished) return;
    post("/api/meetings/" + encodeURIComponent(bookingId) + "/open")
      .then(function (meeting) {
        room = meeting.room;
        return post("/api/ws/ticket");
      })
      .then(function (ticket) {
        var scheme = location.protocol === "https:" ? "wss:" : "ws:";
        var socket = new WebSocket(scheme + "//" + location.host + "/ws?ticket=" + encodeURIComponent(ticket.ticket));
        ws = socket;
        socket.onopen = function () {
          retryMs = 500;
        };
        socket.onmessage = function (event) {
          var message;
          try {
            message = JSON.parse(event.data);
          } catch (e) {
            return;
          }
          onMessage(message);
        };
        socket.onclose = function () {
          if (ws !== socket) return;
          ws = null;
          if (!finished) reconnect();
        };
      })
      .catch(function (error) {
        if (error.status === 404 || error.status === 409) {
          finish(text.not_open);
        } else if (error.status === 401) {
          location.reload();
        } else {
          reconnect();
        }
      });
  }

  function reconnect() {
    say(text.reconnecting);
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  }

  document.getElementById("leave-meeting").addEventListener("click", function () {
    send({ type: "leave", room: room });
    finish(text.left);
  });
  var end = document.getElementById("end-meeting");
  if (end) {
    end.addEventListener("click", function () {
      send({ type: "meeting.end", room: room });
    });
  }
  window.addEventListener("pagehide", function () {
    if (ws) ws.close(1000);
  });

  setAdmitted(false);
  updateLobbyEmpty();
  startCamera().then(connect);
})();
