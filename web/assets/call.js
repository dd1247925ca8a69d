// call.js: the video call of one meeting room (booked or ad hoc) on a
// protocol.js Room: the local camera, one RTCPeerConnection per other
// admitted participant, and the offer/answer/ICE relay through the server.
//
// - Media only ever goes through the TURN relay (iceTransportPolicy
//   "relay") with the credentials the room hands to admitted participants
//   (`turn.credentials`), so neither party learns the other's address.
// - Whoever is admitted offers to everyone already in the room (connectTo);
//   the others answer. An offer from a participant replaces an older
//   connection with them, so a participant who reconnects renegotiates from
//   scratch; when two offers cross, the party whose id sorts first gives
//   way (it rolls its own offer back and answers). A failed connection
//   restarts ICE on the same connection.
// - After this side's socket reconnected, the room hands out fresh TURN
//   credentials; restart(party) puts them on the connection
//   (setConfiguration) and offers with an ICE restart. An offer whose DTLS
//   fingerprint differs from the one the connection was set up with comes
//   from a new page (the other side reloaded): it gets a new connection.
//
// Exported API
//
//   startCamera(video?, onFailed?) -> Promise<MediaStream|null>
//       Camera and microphone (the microphone only, or nothing, when
//       refused), shown in `video` (a muted <video>): the camera test before
//       the meeting. onFailed() when there is neither.
//   bindToggle(button, "audio"|"video", () => stream)
//       A mute button (aria-pressed) for the stream's tracks of that kind.
//   stopStream(stream)    stops the own tracks.
//
//   createCall(room, options) -> Call
//     room: a protocol.js Room. The call listens to its "turn.credentials",
//       "signal.offer", "signal.answer" and "signal.ice".
//     options:
//       local        the MediaStream to send (from startCamera); without
//                    it the call only receives.
//       remote       the element the other parties' tiles (<figure
//                    data-party data-state> with a <video> and a
//                    <figcaption>) go into.
//       me()         this side's party (connection.party).
//       label(party) the caption of a party's tile (their role).
//       onConnected(party)   a peer connection is up.
//       onFailed()           negotiating failed.
//       onQuality(level, figures)  every few seconds while connected:
//                    classifyQuality of the worst figures of any
//                    connection, { loss, rttMs, kbps }.
//       onIceRestart(count)  an ICE restart was offered (count so far).
//   Call:
//     .connectTo(party)     offer to a party (waits for TURN credentials).
//     .credentialsStale()   the socket dropped: wait for fresh credentials
//                           before the next offer.
//     .restart(party)       ICE restart with the fresh credentials (a new
//                           connection when there is none).
//     .hasCredentials()     whether TURN credentials came.
//     .isConnected(party)
//     .close(party)         hang up on one party and drop their tile.
//     .closeAll()           hang up on everyone.
//     .destroy()            closeAll and stop listening.
//     .replaceVideo(track)  sends `track` instead of the camera to everyone
//                           (a shared screen), or the camera again when
//                           null; new connections send it too.
//
//   classifyQuality({ loss, rttMs }) -> "good" | "poor"
//       "poor" when more than 5 % of the packets coming in are lost, or the
//       round trip through the relay is over 400 ms.
//   dtlsFingerprint(sdp) -> string|null   the first a=fingerprint of an SDP.

export const POOR_LOSS = 0.05;
export const POOR_RTT_MS = 400;

export function classifyQuality({ loss = 0, rttMs = 0 } = {}) {
  return loss > POOR_LOSS || rttMs > POOR_RTT_MS ? "poor" : "good";
}

export function dtlsFingerprint(sdp) {
  const match = /^a=fingerprint:(.+)$/m.exec(sdp || "");
  return match ? match[1].trim() : null;
}

export function startCamera(video, onFailed) {
  const cameraFailed = () => {
    if (onFailed) onFailed();
    return null;
  };
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return Promise.resolve(cameraFailed());
  }
  return navigator.mediaDevices
    .getUserMedia({ audio: true, video: true })
    .catch(() => navigator.mediaDevices.getUserMedia({ audio: true }))
    .then((stream) => {
      if (video) video.srcObject = stream;
      return stream;
    })
    .catch(cameraFailed);
}

export function bindToggle(button, kind, stream) {
  button.addEventListener("click", () => {
    const off = button.getAttribute("aria-pressed") !== "true";
    button.setAttribute("aria-pressed", off ? "true" : "false");
    const local = stream();
    if (!local) return;
    local.getTracks().forEach((track) => {
      if (track.kind === kind) track.enabled = !off;
    });
  });
}

export function stopStream(stream) {
  if (stream) stream.getTracks().forEach((track) => track.stop());
}

export function createCall(room, options) {
  const { remote } = options;
  const local = options.local || null;
  const me = options.me || (() => "");
  const label = options.label || (() => "");
  const failed = () => options.onFailed && options.onFailed();
  let iceServers = null;
  // Media goes through the relay only.
  const rtcConfiguration = () => ({ iceServers, iceTransportPolicy: "relay" });
  const peers = new Map(); // party -> { pc, offerer, pendingIce, fingerprint }
  let waiting = []; // parties to offer to once TURN credentials arrive
  let stale = false; // the credentials are from before a reconnect
  const restartWaiting = new Set(); // parties to restart ICE with once fresh ones arrive
  let restarts = 0;
  let videoOverride = null; // a shared screen's track, sent instead of the camera
  const offs = [];

  function tileId(party) {
    return "tile-" + party.replace(/[^A-Za-z0-9_-]/g, "-");
  }

  function tile(party) {
    const id = tileId(party);
    let figure = document.getElementById(id);
    if (!figure) {
      figure = document.createElement("figure");
      figure.className = "tile";
      figure.id = id;
      figure.setAttribute("data-party", party);
      const video = document.createElement("video");
      video.autoplay = true;
      video.setAttribute("playsinline", "");
      const caption = document.createElement("figcaption");
      caption.textContent = label(party);
      figure.appendChild(video);
      figure.appendChild(caption);
      remote.appendChild(figure);
    }
    return figure;
  }

  function close(party) {
    const peer = peers.get(party);
    if (peer) {
      peers.delete(party);
      lastCounts.delete(party);
      peer.pc.close();
    }
    const figure = document.getElementById(tileId(party));
    if (figure) figure.remove();
  }

  function closeAll() {
    Array.from(peers.keys()).forEach(close);
    waiting = [];
    restartWaiting.clear();
  }

  function makePeer(party, offerer) {
    close(party);
    const pc = new RTCPeerConnection(rtcConfiguration());
    const peer = { pc, offerer, pendingIce: [], fingerprint: null };
    peers.set(party, peer);
    if (local) {
      local.getTracks().forEach((track) => {
        pc.addTrack(track.kind === "video" && videoOverride ? videoOverride : track, local);
      });
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" });
      pc.addTransceiver("video", { direction: "recvonly" });
    }
    pc.onicecandidate = (event) => {
      if (!event.candidate || peers.get(party) !== peer) return;
      room.send({
        type: "signal.ice",
        to: party,
        candidate: {
          candidate: event.candidate.candidate,
          sdp_mid: event.candidate.sdpMid,
          sdp_m_line_index: event.candidate.sdpMLineIndex,
        },
      });
    };
    pc.ontrack = (event) => {
      const video = tile(party).querySelector("video");
      const stream = event.streams[0] || new MediaStream([event.track]);
      if (video.srcObject !== stream) {
        video.srcObject = stream;
        const playing = video.play();
        if (playing && playing.catch) playing.catch(() => {});
      }
    };
    pc.onconnectionstatechange = () => {
      if (peers.get(party) !== peer) return;
      const state = pc.connectionState;
      tile(party).setAttribute("data-state", state);
      if (state === "connected") {
        if (options.onConnected) options.onConnected(party);
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
      .then((description) => peer.pc.setLocalDescription(description))
      .then(() => {
        room.send({ type: "signal.offer", to: party, sdp: peer.pc.localDescription.sdp });
      })
      .catch(failed);
  }

  function connectTo(party) {
    if (!iceServers || stale) {
      if (waiting.indexOf(party) < 0) waiting.push(party);
      return;
    }
    makePeer(party, true);
  }

  function restart(party) {
    const peer = peers.get(party);
    if (!peer) {
      connectTo(party);
      return;
    }
    if (!iceServers || stale) {
      restartWaiting.add(party);
      return;
    }
    restartNow(party, peer);
  }

  // The connection already has the fresh servers: they are put on every
  // connection when they arrive, and new connections are made with them.
  function restartNow(party, peer) {
    peer.offerer = true;
    restarts += 1;
    if (options.onIceRestart) options.onIceRestart(restarts);
    offer(party, peer, true);
  }

  function flushIce(peer) {
    const pending = peer.pendingIce;
    peer.pendingIce = [];
    pending.forEach((candidate) => peer.pc.addIceCandidate(candidate).catch(() => {}));
  }

  function onOffer(from, sdp) {
    if (!iceServers) return; // Only admitted participants get offers, after credentials.
    const peer = peers.get(from);
    if (peer && peer.pc.signalingState === "have-local-offer") {
      // Both offered at once: the party whose id sorts first gives way
      // (rolls its own offer back below); the other ignores this offer.
      if (me() > from) return;
    }
    const fingerprint = dtlsFingerprint(sdp);
    // Another page of the same party (a reload) brings a new certificate:
    // the old connection cannot carry on, so a new one answers.
    const renewed = !!(peer && peer.fingerprint && fingerprint && peer.fingerprint !== fingerprint);
    const answer = (target) =>
      (target.pc.signalingState === "have-local-offer"
        ? target.pc.setLocalDescription({ type: "rollback" })
        : Promise.resolve()
      )
        .then(() => target.pc.setRemoteDescription({ type: "offer", sdp }))
        .then(() => {
          target.fingerprint = fingerprint;
          flushIce(target);
          return target.pc.createAnswer();
        })
        .then((description) => target.pc.setLocalDescription(description))
        .then(() => {
          room.send({ type: "signal.answer", to: from, sdp: target.pc.localDescription.sdp });
        });
    const fresh = () => answer(makePeer(from, false));
    const reusable =
      peer && !renewed && (peer.pc.signalingState === "stable" || peer.pc.signalingState === "have-local-offer");
    const attempt = reusable ? answer(peer).catch(fresh) : fresh();
    attempt.catch(failed);
  }

  function onAnswer(from, sdp) {
    const peer = peers.get(from);
    if (!peer || peer.pc.signalingState !== "have-local-offer") return;
    peer.pc
      .setRemoteDescription({ type: "answer", sdp })
      .then(() => {
        peer.fingerprint = dtlsFingerprint(sdp);
        flushIce(peer);
      })
      .catch(failed);
  }

  function onIce(from, candidate) {
    const peer = peers.get(from);
    if (!peer) return;
    const init = {
      candidate: candidate.candidate,
      sdpMid: candidate.sdp_mid === undefined ? null : candidate.sdp_mid,
      sdpMLineIndex: candidate.sdp_m_line_index === undefined ? null : candidate.sdp_m_line_index,
    };
    if (!peer.pc.remoteDescription) {
      peer.pendingIce.push(init);
    } else {
      peer.pc.addIceCandidate(init).catch(() => {});
    }
  }

  // Connection quality from getStats: packet loss of what comes in, the
  // round trip of the relay path in use, and the bitrate sent.
  const QUALITY_EVERY_MS = 4000;
  const lastCounts = new Map(); // party -> { received, lost, sent, at }
  function measure(party, pc) {
    return pc.getStats().then((report) => {
      let received = 0;
      let lost = 0;
      let sent = 0;
      let rtt = 0;
      report.forEach((s) => {
        if (s.type === "inbound-rtp") {
          received += s.packetsReceived || 0;
          lost += Math.max(0, s.packetsLost || 0);
        } else if (s.type === "outbound-rtp") {
          sent += s.bytesSent || 0;
        } else if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime) {
          rtt = Math.max(rtt, s.currentRoundTripTime);
        }
      });
      const now = performance.now();
      const last = lastCounts.get(party);
      lastCounts.set(party, { received, lost, sent, at: now });
      if (!last) return null;
      const packets = received - last.received + (lost - last.lost);
      return {
        loss: packets > 0 ? (lost - last.lost) / packets : 0,
        rttMs: Math.round(rtt * 1000),
        kbps: Math.round(((sent - last.sent) * 8) / Math.max(1, now - last.at)),
      };
    });
  }
  const qualityTimer = options.onQuality
    ? setInterval(() => {
        const connected = Array.from(peers.entries()).filter(([, peer]) => peer.pc.connectionState === "connected");
        if (!connected.length) return;
        Promise.all(connected.map(([party, peer]) => measure(party, peer.pc).catch(() => null))).then((all) => {
          const figures = all.filter(Boolean);
          if (!figures.length) return;
          const worst = {
            loss: Math.max(...figures.map((f) => f.loss)),
            rttMs: Math.max(...figures.map((f) => f.rttMs)),
            kbps: Math.min(...figures.map((f) => f.kbps)),
          };
          options.onQuality(classifyQuality(worst), worst);
        });
      }, QUALITY_EVERY_MS)
    : null;

  offs.push(
    () => clearInterval(qualityTimer),
    room.on("turn.credentials", (message) => {
      iceServers = [
        {
          urls: message.credentials.urls,
          username: message.credentials.username,
          credential: message.credentials.password,
        },
      ];
      stale = false;
      // Later offers on the connections there are (ICE restarts) use the
      // fresh credentials too.
      peers.forEach((peer) => {
        try {
          peer.pc.setConfiguration(rtcConfiguration());
        } catch (e) {
          // A browser that refuses the change keeps the old servers.
        }
      });
      const restarting = Array.from(restartWaiting);
      restartWaiting.clear();
      restarting.forEach((party) => {
        const peer = peers.get(party);
        if (peer) restartNow(party, peer);
        else connectTo(party);
      });
      waiting.splice(0).forEach(connectTo);
    }),
    room.on("signal.offer", (message) => onOffer(message.from, message.sdp)),
    room.on("signal.answer", (message) => onAnswer(message.from, message.sdp)),
    room.on("signal.ice", (message) => onIce(message.from, message.candidate)),
  );

  // The screen goes out on the camera's sender (replaceTrack), so no
  // renegotiation is needed and the others' tiles simply show it.
  function replaceVideo(track) {
    videoOverride = track;
    const camera = local && local.getVideoTracks()[0];
    const next = track || camera || null;
    peers.forEach((peer) => {
      peer.pc.getSenders().forEach((sender) => {
        // Only a camera's sender can carry the screen: without a camera
        // there is no video sender, and nothing is shared.
        if (sender.track && sender.track.kind === "video") sender.replaceTrack(next).catch(() => {});
      });
    });
  }

  return {
    connectTo,
    restart,
    credentialsStale: () => {
      stale = true;
    },
    iceRestarts: () => restarts,
    replaceVideo,
    hasCredentials: () => !!iceServers,
    isConnected: (party) => {
      const peer = peers.get(party);
      return !!peer && peer.pc.connectionState === "connected";
    },
    close,
    closeAll,
    destroy() {
      offs.forEach((off) => off());
      closeAll();
    },
  };
}
