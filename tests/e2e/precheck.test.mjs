// The pre-call check on the meeting page, in a real browser: the camera and
// microphone (Chromium's fake devices), the level meter, and the connection
// test, which calls itself through the embedded TURN relay over each
// transport the server offers. On the first server the relay listens on UDP
// and TCP, and the check reports UDP; the second server runs with the
// relay's UDP listener turned off (`KONTAKT_RELAY__LISTEN_UDP=off`) while
// still naming a UDP address to clients, as a network that blocks UDP
// looks, and the check reports that UDP does not work but TCP does.
//
// The relay keeps its default peer policy (nothing on loopback allowed): the
// two ends of the check reach each other only as allocations of the relay.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createSocket } from "node:dgram";
import { createServer } from "node:net";
import {
  server,
  browser,
  useServerAndBrowser,
  startServer,
  signInResident,
  searchTimes,
  assertAccessible,
  assertTranslated,
  relayedPackets,
  waitFor,
} from "./helpers.mjs";


useServerAndBrowser();

/** Books the first free time for `email` and returns the booking's id. */
async function book(page, server, email) {
  const hrefs = await searchTimes(page, server, { service: "ekonomiskt-bistand", home: "2418" });
  await signInResident(page, server, email, { name: "Test Person", home: "2418" });
  await page.waitForURL((u) => u.pathname === "/my");
  await page.goto(new URL(hrefs[0], server.url).href);
  await Promise.all([page.waitForURL((u) => u.pathname === "/my"), page.click("#confirm-booking")]);
  return new URL(page.url()).searchParams.get("booked");
}

/** A context whose camera and microphone are Chromium's fake devices. */
async function context(server, options = {}) {
  const ctx = await browser.newContext({ locale: "sv-SE", ...options });
  await ctx.grantPermissions(["camera", "microphone"], { origin: server.url });
  return ctx;
}

/** Runs the connection test by keyboard and waits for its outcome. */
async function runCheck(page) {
  await page.locator("#precheck-run").focus();
  await page.keyboard.press("Enter");
  const result = page.locator("#precheck-result");
  await page.waitForFunction(
    () => {
      const outcome = document.querySelector("#precheck-result").getAttribute("data-outcome");
      return outcome && outcome !== "testing";
    },
    null,
    { timeout: 90_000 },
  );
  return {
    outcome: await result.getAttribute("data-outcome"),
    summary: await page.locator("#precheck-summary").innerText(),
    transports: await page
      .locator("#precheck-transports li")
      .evaluateAll((items) => items.map((li) => [li.dataset.transport, li.dataset.works])),
  };
}

test("the pre-call check shows the camera, hears the microphone and reports the relay reachable over UDP", async () => {
  const ctx = await context(server);
  const page = await ctx.newPage();
  const bookingId = await book(page, server, "precheck@example.se");
  await page.goto(`${server.url}/join/${bookingId}`);

  // Devices: the fake camera plays in the self-view, both lists are filled,
  // and the meter hears the fake microphone's beeps once audio may start.
  const check = page.locator("#precheck");
  await page.waitForFunction(() => document.querySelector("#precheck").getAttribute("data-devices") === "ok");
  await page.waitForFunction(() => {
    const video = document.querySelector("#precheck-video");
    return video.videoWidth > 0 && video.currentTime > 0;
  });
  assert.ok((await page.locator("#precheck-camera option").count()) > 0, "cameras listed");
  assert.ok((await page.locator("#precheck-microphone option").count()) > 0, "microphones listed");
  assert.equal(await page.locator("#precheck-camera").isDisabled(), false);
  await page.locator("#precheck-camera").focus();
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.id), "precheck-microphone", "keyboard order");

  const before = await relayedPackets(server, "client_to_peer");
  const { outcome, summary, transports } = await runCheck(page);
  assert.equal(outcome, "udp", summary);
  assert.deepEqual(transports, [["udp", "true"]], "UDP worked first, so nothing else was tried");
  assert.match(summary, /UDP/);
  assert.equal(summary, "Anslutningen fungerar över UDP. Allt är klart för videomötet.");
  await waitFor("the check's messages counted by the relay", async () => (await relayedPackets(server, "client_to_peer")) > before);

  // The meter: a sound heard after the page was used (the key press above
  // lets audio start).
  await page.waitForFunction(() => document.querySelector("#precheck").getAttribute("data-level") === "heard", null, {
    timeout: 20_000,
  });
  assert.equal(await check.getAttribute("data-devices"), "ok");
  await assertTranslated(page, "the meeting page with the pre-call check (sv)");
  await assertAccessible(page, "the meeting page with the pre-call check (sv)");
  await ctx.close();
});

test("the pre-call check in Arabic at a phone's width is right to left, fits, and passes axe", async () => {
  const ctx = await context(server, { locale: "ar", viewport: { width: 375, height: 740 } });
  const page = await ctx.newPage();
  const bookingId = await book(page, server, "precheck-ar@example.se");
  await page.goto(`${server.url}/join/${bookingId}`);
  assert.equal(await page.getAttribute("html", "dir"), "rtl");
  await page.waitForFunction(() => document.querySelector("#precheck").getAttribute("data-devices") === "ok");
  const { outcome, summary } = await runCheck(page);
  assert.equal(outcome, "udp", summary);
  assert.equal(summary, "الاتصال يعمل عبر UDP. كل شيء جاهز لاجتماع الفيديو.");
  const [scroll, width] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(scroll <= width, `the page is ${scroll}px wide in a ${width}px viewport`);
  await assertTranslated(page, "the meeting page with the pre-call check (ar)");
  await assertAccessible(page, "the meeting page with the pre-call check (ar)");
  await ctx.close();
});

test("a camera the browser blocks is reported in plain words", async () => {
  const ctx = await browser.newContext({ locale: "sv-SE" });
  // What a browser answers when the person (or a policy) refused the camera.
  await ctx.addInitScript(() => {
    navigator.mediaDevices.getUserMedia = () =>
      Promise.reject(new DOMException("Permission denied", "NotAllowedError"));
  });
  const page = await ctx.newPage();
  const bookingId = await book(page, server, "blocked@example.se");
  await page.goto(`${server.url}/join/${bookingId}`);
  await page.waitForFunction(() => document.querySelector("#precheck").getAttribute("data-devices") === "blocked");
  const said = await page.locator("#precheck-devices-status").innerText();
  assert.match(said, /blockerar kameran/);
  await assertAccessible(page, "the pre-call check with a blocked camera");
  await ctx.close();
});

/** A port on loopback that nothing listens on, over TCP and over UDP. */
async function freePort() {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const probe = createServer();
      probe.on("error", reject);
      probe.listen(0, "127.0.0.1", () => {
        const { port } = probe.address();
        probe.close(() => resolve(port));
      });
    });
    const udpFree = await new Promise((resolve) => {
      const socket = createSocket("udp4");
      socket.once("error", () => resolve(false));
      socket.bind(port, "127.0.0.1", () => socket.close(() => resolve(true)));
    });
    if (udpFree) return port;
  }
}

test("with the relay's UDP listener turned off, the pre-call check reports TCP", async () => {
  const port = await freePort();
  const noUdp = await startServer({
    env: {
      KONTAKT_RELAY__LISTEN_UDP: "off",
      KONTAKT_RELAY__LISTEN_TCP: `127.0.0.1:${port}`,
      // Clients are still told of UDP on the same port, where nothing
      // answers: what a network that drops UDP looks like to a browser.
      KONTAKT_TURN_URLS: `["turn:127.0.0.1:${port}?transport=udp", "turn:127.0.0.1:${port}?transport=tcp"]`,
    },
  });
  try {
    const ctx = await context(noUdp);
    const page = await ctx.newPage();
    const bookingId = await book(page, noUdp, "no-udp@example.se");
    await page.goto(`${noUdp.url}/join/${bookingId}`);
    const { outcome, summary, transports } = await runCheck(page);
    assert.equal(outcome, "tcp", summary);
    assert.deepEqual(transports, [
      ["udp", "false"],
      ["tcp", "true"],
    ]);
    assert.equal(
      summary,
      "UDP fungerar inte i ditt nätverk, men anslutningen fungerar över TCP. Videomötet kan hållas, men bild och ljud kan bli något sämre.",
    );
    await ctx.close();
  } finally {
    await noUdp.stop();
  }
});
