// precheck.js: the pre-call check, before a meeting: choose the camera and
// the microphone, see yourself, a microphone level meter, and a test of the
// connection through our TURN relay itself. The page renders the check's
// markup (`pages::precheck::section`) and its sentences as page data
// (`precheck-text`); the credentials come from the server
// (`POST /api/precheck/turn`), scoped to the check: short-lived, and each
// good for one allocation on the relay.
//
// The connection test calls itself: for each transport the server offers,
// in its order (UDP, then TCP, then TLS), two RTCPeerConnections with
// iceTransportPolicy "relay" and only that transport's TURN URLs connect to
// each other through the relay, and a data channel carries a few messages
// there and back. The first transport that works ends the test; the result
// is said in plain words, with what to do when nothing works.
//
// Exported API
//
//   mountPrecheck(root, options?) -> { run(), stop() }
//     root: the check's element (a <details> or any element holding the
//       #precheck-* parts). A <details> starts the camera while open and
//       stops it when closed.
//     options (each defaults to the root's data attributes):
//       credentialsUrl  where to POST for credentials (data-credentials-url)
//       csrf            the cookie session's CSRF value (data-csrf)
//       token           a Bearer token instead (a guest's), or a function
//                       that returns one
//       text            the sentences (the JSON in #precheck-text)
//       timeoutMs       how long one transport may take (10 s)
//     run()   runs the connection test (the button does too).
//     stop()  stops the camera, the microphone and the meter.
//   chosenDevices() -> { camera, microphone }
//       The device ids last chosen here (this browser), for the call.
//
// A root with data-precheck="auto" (a page signed in by cookie) is mounted
// when this module loads; a page with a guest's token mounts it itself.

const STORAGE_KEY = "kontakt.devices";

export function chosenDevices() {
  try {
    return JSON.parse(localStorage.getItem(STORAGE_KEY)) || {};
  } catch (e) {
    return {};
  }
}

function remember(devices) {
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(devices));
  } catch (e) {
    // Private modes may refuse storage; the choice then lasts this page.
  }
}

export function mountPrecheck(root, options = {}) {
  if (root.precheck) return root.precheck;
  const part = (id) => root.querySelector("#precheck-" + id);
  const text =
    options.text || JSON.parse(document.getElementById("precheck-text").textContent);
  const credentialsUrl = options.credentialsUrl || root.getAttribute("data-credentials-url");
  const csrf = options.csrf === undefined ? root.getAttribute("data-csrf") : options.csrf;
  const timeoutMs = options.timeoutMs || 10_000;

  const camera = part("camera");
  const microphone = part("microphone");
  const video = part("video");
  const meter = part("level");
  const levelText = part("level-text");
  const devicesStatus = part("devices-status");
  const button = part("run");
  const result = part("result");
  const summary = part("summary");
  const list = part("transports");

  const fill = (template, values) =>
    template.replace(/%\{(\w+)\}/g, (_, name) => (values[name] === undefined ? "" : values[name]));

  // --- Devices ------------------------------------------------------------------

  let stream = null;
  let audio = null; // { context, timer }
  let starting = null;

  function stopDevices() {
    if (audio) {
      clearInterval(audio.timer);
      audio.context.close().catch(() => {});
      audio = null;
    }
    if (stream) stream.getTracks().forEach((track) => track.stop());
    stream = null;
    video.srcObject = null;
    meter.value = 0;
    levelText.textContent = "";
  }

  function sayDevices(message, state) {
    devicesStatus.textContent = message;
    root.setAttribute("data-devices", state);
  }

  const wanted = (id) => (id ? { deviceId: { exact: id } } : true);

  async function startDevices() {
    stopDevices();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      sayDevices(text.no_webrtc, "unsupported");
      return;
    }
    const chosen = chosenDevices();
    sayDevices(text.devices_starting, "starting");
    let got = null;
    let state = "ok";
    try {
      got = await getUserMedia({ audio: wanted(chosen.microphone), video: wanted(chosen.camera) });
    } catch (error) {
      if (error.name === "NotAllowedError" || error.name === "SecurityError") {
        sayDevices(text.camera_blocked, "blocked");
        return;
      }
      if (error.name === "NotReadableError" || error.name === "AbortError") {
        sayDevices(text.camera_in_use, "in_use");
        return;
      }
      // No camera (NotFoundError), or the one chosen before is gone
      // (OverconstrainedError): the microphone alone still lets one take part.
      try {
        got = await getUserMedia({ audio: wanted(chosen.microphone) }).catch(() =>
          getUserMedia({ audio: true }),
        );
        state = "no_camera";
      } catch (second) {
        if (second.name === "NotAllowedError") {
          sayDevices(text.camera_blocked, "blocked");
        } else if (second.name === "NotFoundError") {
          sayDevices(text.devices_missing, "missing");
        } else {
          sayDevices(text.devices_failed, "failed");
        }
        return;
      }
    }
    stream = got;
    video.srcObject = stream;
    sayDevices(state === "ok" ? text.devices_ok : text.camera_missing, state);
    await listDevices();
    startMeter();
  }

  function getUserMedia(constraints) {
    // Older choices may name a device that is gone; then the default one.
    return navigator.mediaDevices.getUserMedia(constraints).catch((error) => {
      if (error.name !== "OverconstrainedError") throw error;
      return navigator.mediaDevices.getUserMedia({
        audio: !!constraints.audio,
        video: !!constraints.video,
      });
    });
  }

  async function listDevices() {
    const devices = await navigator.mediaDevices.enumerateDevices().catch(() => []);
    const inUse = (kind) => {
      const track = stream && stream.getTracks().find((t) => t.kind === kind);
      return track && track.getSettings ? track.getSettings().deviceId : "";
    };
    const fillSelect = (select, kind, trackKind) => {
      const label = root.querySelector('label[for="' + select.id + '"]').textContent;
      const current = inUse(trackKind);
      select.replaceChildren();
      devices
        .filter((d) => d.kind === kind && d.deviceId)
        .forEach((device, index) => {
          const option = document.createElement("option");
          option.value = device.deviceId;
          option.textContent = device.label || label + " " + (index + 1);
          option.selected = device.deviceId === current;
          select.appendChild(option);
        });
      select.disabled = select.options.length === 0;
    };
    fillSelect(camera, "videoinput", "video");
    fillSelect(microphone, "audioinput", "audio");
  }

  function chooseDevices() {
    remember({ camera: camera.value || undefined, microphone: microphone.value || undefined });
    starting = startDevices();
  }
  camera.addEventListener("change", chooseDevices);
  microphone.addEventListener("change", chooseDevices);

  // The level of the microphone: the root mean square of the waveform, ten
  // times a second, on a <meter>; the sentence beside it changes only when
  // the microphone starts or stops hearing something, so that a screen
  // reader is not flooded.
  function startMeter() {
    const Context = window.AudioContext || window.webkitAudioContext;
    const track = stream.getAudioTracks()[0];
    if (!Context || !track) return;
    const context = new Context();
    const analyser = context.createAnalyser();
    analyser.fftSize = 1024;
    context.createMediaStreamSource(new MediaStream([track])).connect(analyser);
    const samples = new Uint8Array(analyser.fftSize);
    let lastHeard = -Infinity;
    let heard = null;
    const timer = setInterval(() => {
      analyser.getByteTimeDomainData(samples);
      let sum = 0;
      for (const sample of samples) {
        const x = (sample - 128) / 128;
        sum += x * x;
      }
      const level = Math.min(100, Math.round(Math.sqrt(sum / samples.length) * 300));
      meter.value = level;
      const now = performance.now();
      if (level >= 5) lastHeard = now;
      const hearing = now - lastHeard < 2000;
      if (hearing !== heard) {
        heard = hearing;
        levelText.textContent = hearing ? text.level_heard : text.level_quiet;
        root.setAttribute("data-level", hearing ? "heard" : "quiet");
      }
    }, 100);
    audio = { context, timer };
    // Browsers start audio only after the person did something on the page.
    if (context.state === "suspended") {
      const resume = () => {
        if (audio && audio.context === context) context.resume().catch(() => {});
      };
      ["pointerdown", "keydown"].forEach((type) =>
        document.addEventListener(type, resume, { once: true, capture: true }),
      );
    }
  }

  // --- Connection -------------------------------------------------------------

  let running = false;

  function finish(outcome, message) {
    summary.textContent = message;
    result.setAttribute("data-outcome", outcome);
    button.disabled = false;
    running = false;
  }

  function headers() {
    const token = typeof options.token === "function" ? options.token() : options.token;
    if (token) return { Authorization: "Bearer " + token };
    return csrf ? { "x-csrf-token": csrf } : {};
  }

  async function run() {
    if (running) return;
    running = true;
    button.disabled = true;
    list.replaceChildren();
    result.setAttribute("data-outcome", "testing");
    summary.textContent = text.testing;
    if (!window.RTCPeerConnection) return finish("unsupported", text.no_webrtc);
    let offered;
    try {
      const response = await fetch(credentialsUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: headers(),
      });
      if (response.status === 429) return finish("rate_limited", text.rate_limited);
      if (!response.ok) return finish("error", text.check_failed);
      offered = (await response.json()).transports || [];
    } catch (e) {
      return finish("error", text.check_failed);
    }
    if (offered.length === 0) return finish("no_relay", text.no_relay);
    const blocked = [];
    for (const transport of offered) {
      const name = transport.transport.toUpperCase();
      summary.textContent = fill(text.testing_transport, { transport: name });
      const works = await loopback(transport);
      const item = document.createElement("li");
      item.setAttribute("data-transport", transport.transport);
      item.setAttribute("data-works", works ? "true" : "false");
      item.textContent = fill(works ? text.transport_works : text.transport_blocked, { transport: name });
      list.appendChild(item);
      if (works) {
        const message = blocked.length
          ? fill(text.works_fallback, { blocked: blocked.join(", "), transport: name })
          : fill(text.works, { transport: name });
        return finish(transport.transport, message);
      }
      blocked.push(name);
    }
    return finish("blocked", text.nothing_works);
  }

  // Two peer connections through the relay over one transport, each with a
  // credential of its own (one allocation each), and three messages sent
  // from one to the other and echoed back.
  function loopback(transport) {
    const connection = (credential) =>
      new RTCPeerConnection({
        iceServers: [
          { urls: transport.urls, username: credential.username, credential: credential.password },
        ],
        iceTransportPolicy: "relay",
      });
    const caller = connection(transport.credentials[0]);
    const callee = connection(transport.credentials[1]);
    let timer = null;
    const outcome = new Promise((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
      const failed = () => resolve(false);
      // Candidates that come before the other side has its description wait.
      const trickle = (from, to) => {
        const waiting = [];
        from.onicecandidate = (event) => {
          if (!event.candidate) return;
          if (to.remoteDescription) to.addIceCandidate(event.candidate).catch(() => {});
          else waiting.push(event.candidate);
        };
        return () => waiting.splice(0).forEach((c) => to.addIceCandidate(c).catch(() => {}));
      };
      const flushToCallee = trickle(caller, callee);
      const flushToCaller = trickle(callee, caller);
      [caller, callee].forEach((pc) => {
        pc.onconnectionstatechange = () => {
          if (pc.connectionState === "failed") failed();
        };
      });
      callee.ondatachannel = (event) => {
        const echo = event.channel;
        echo.onmessage = (message) => echo.send(message.data);
      };
      const channel = caller.createDataChannel("precheck");
      const messages = ["1", "2", "3"];
      let echoed = 0;
      channel.onopen = () => messages.forEach((m) => channel.send(m));
      channel.onmessage = (message) => {
        if (message.data === messages[echoed]) echoed += 1;
        if (echoed === messages.length) resolve(true);
      };
      caller
        .createOffer()
        .then((offer) => caller.setLocalDescription(offer))
        .then(() => callee.setRemoteDescription(caller.localDescription))
        .then(() => {
          flushToCallee();
          return callee.createAnswer();
        })
        .then((answer) => callee.setLocalDescription(answer))
        .then(() => caller.setRemoteDescription(callee.localDescription))
        .then(flushToCaller)
        .catch(failed);
    });
    return outcome.finally(() => {
      clearTimeout(timer);
      caller.close();
      callee.close();
    });
  }

  button.addEventListener("click", run);

  // --- Mounting -----------------------------------------------------------------

  const isDetails = root.tagName === "DETAILS";
  if (isDetails) {
    root.addEventListener("toggle", () => {
      if (root.open) starting = startDevices();
      else stopDevices();
    });
  }
  if (!isDetails || root.open) starting = startDevices();

  const handle = {
    run,
    stop: stopDevices,
    ready: () => starting,
  };
  root.precheck = handle;
  return handle;
}

document.querySelectorAll('[data-precheck="auto"]').forEach((root) => mountPrecheck(root));
