// A meeting survives a network drop. The resident's browser goes offline
// for five seconds in the middle of a video meeting through the relay: the
// page says it is reconnecting, takes a new ticket when the network comes
// back, is let back in without the waiting room, resumes the chat from the
// last message it saw (a message the social worker wrote meanwhile arrives
// exactly once), and restarts ICE with fresh TURN credentials; the remote
// video decodes frames again within ten seconds. Then the same with the
// social worker's browser offline.
//
// Only the five seconds offline are a timed wait: they are the scenario.
// Everything else waits for its event, with a deadline.

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  server,
  browser,
  useServerAndBrowser,
  meetingInProgress,
  remoteFrames,
  framesAdvance,
  assertAccessible,
  remoteVideoPlays,
  sql,
} from "./helpers.mjs";

let meeting;

useServerAndBrowser({
  beforeClosing: async () => {
    await meeting?.resident.close();
    await meeting?.staff.close();
  },
});

const OFFLINE_MS = 5_000;

/** How many chat lines end with `text`. */
async function shown(page, text) {
  const lines = await page.locator("#chat-log li").allInnerTexts();
  return lines.filter((line) => line.trim().endsWith(text)).length;
}

/**
 * Takes `dropped`'s context offline for five seconds while `other` writes
 * `text` in the chat, then checks that `dropped` comes back: connected,
 * an ICE restart made, video decoding again within 10 s, and the message
 * shown once.
 */
async function dropAndReturn({ dropped, droppedPage, otherPage, text }) {
  const restartsBefore = Number(await droppedPage.getAttribute("#meeting", "data-ice-restarts"));
  await dropped.setOffline(true);
  await droppedPage.locator("#meeting[data-connection='reconnecting']").waitFor({ timeout: 10_000 });
  // The other side hears that the connection dropped, and is told live.
  await otherPage.locator("#remote-videos figure[data-away='true']").waitFor({ timeout: 10_000 });
  await otherPage.fill("#chat-text", text);
  await otherPage.click("#chat-send");
  await otherPage.locator("#chat-log li:not([data-pending])", { hasText: text }).waitFor();
  await new Promise((r) => setTimeout(r, OFFLINE_MS));

  const frames = await remoteFrames(droppedPage);
  const back = Date.now();
  await dropped.setOffline(false);
  await droppedPage.locator("#meeting[data-connection='connected']").waitFor({ timeout: 10_000 });
  await droppedPage.waitForFunction(
    (before) => Number(document.getElementById("meeting").getAttribute("data-ice-restarts")) > before,
    restartsBefore,
    { timeout: 10_000 },
  );
  await framesAdvance(droppedPage, frames, 10, 10_000);
  const framesOther = await remoteFrames(otherPage);
  await framesAdvance(otherPage, framesOther, 10, 10_000);
  const resumedMs = Date.now() - back;
  await droppedPage.locator("#chat-log li", { hasText: text }).waitFor({ timeout: 10_000 });
  await otherPage.locator("#remote-videos figure:not([data-away])").waitFor({ timeout: 10_000 });
  // A message of the dropped side after the return goes through once too,
  // and by the time the other side has it, any duplicate would have come.
  const after = text + " (efter)";
  await droppedPage.fill("#chat-text", after);
  await droppedPage.click("#chat-send");
  await otherPage.locator("#chat-log li", { hasText: after }).waitFor({ timeout: 10_000 });
  await droppedPage.locator("#chat-log li:not([data-pending])", { hasText: after }).waitFor({ timeout: 10_000 });
  assert.equal(await shown(droppedPage, text), 1, "the message written meanwhile, once");
  assert.equal(await shown(droppedPage, after), 1);
  assert.equal(await shown(otherPage, text), 1);
  assert.equal(await shown(otherPage, after), 1);
  assert.equal(await otherPage.locator("#remote-videos video").count(), 1, "one tile, not a second one");
  return resumedMs;
}

test("the resident's browser goes offline for five seconds and the meeting carries on", async () => {
  meeting = await meetingInProgress(browser, server);
  const { resident, residentPage, staffPage } = meeting;
  assert.equal(await residentPage.getAttribute("#meeting", "data-connection"), "connected");
  const ms = await dropAndReturn({
    dropped: resident,
    droppedPage: residentPage,
    otherPage: staffPage,
    text: "Jag skriver medan du är borta",
  });
  console.log(`resident: video decoding again ${ms} ms after the network came back`);
  await assertAccessible(residentPage, "the meeting page after a reconnect");
});

test("the social worker's browser goes offline for five seconds and the meeting carries on", async () => {
  const { staff, staffPage, residentPage } = meeting;
  const ms = await dropAndReturn({
    dropped: staff,
    droppedPage: staffPage,
    otherPage: residentPage,
    text: "Hallå, är du kvar?",
  });
  console.log(`social worker: video decoding again ${ms} ms after the network came back`);
  // Nobody went through the waiting room again.
  assert.equal(await staffPage.locator("#lobby-list li").count(), 0);
});

test("a tab that dies without leaving comes back on a new page, with a new certificate and a new connection", async () => {
  const { resident, residentPage: dying, staffPage } = meeting;
  // The tab dies as when the browser is killed: its `leave` never goes
  // out (the page's sends of it are dropped here). Its socket closes with
  // it, and to the server the resident is simply away.
  await dying.evaluate(() => {
    const send = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data) {
      if (String(data).includes('"type":"leave"')) return;
      return send.call(this, data);
    };
  });
  await dying.close();
  await staffPage.locator("#remote-videos figure[data-away='true']").waitFor({ timeout: 10_000 });
  // Back within the grace on a new page: a new DTLS fingerprint in its
  // offer, which the social worker's page answers on a new connection.
  const residentPage = await resident.newPage();
  meeting.residentPage = residentPage;
  await residentPage.goto(`${server.url}/join/${meeting.bookingId}`);
  await residentPage.locator("#meeting[data-connection='connected']").waitFor({ timeout: 10_000 });
  await remoteVideoPlays(residentPage);
  await staffPage.locator("#remote-videos figure[data-state='connected']:not([data-away])").waitFor({ timeout: 10_000 });
  const frames = await remoteFrames(staffPage);
  await framesAdvance(staffPage, frames, 10, 10_000);
  assert.equal(await staffPage.locator("#remote-videos video").count(), 1, "one tile");
  assert.equal(await staffPage.locator("#lobby-list li").count(), 0, "no waiting room");
  assert.equal(await shown(residentPage, "Hallå, är du kvar?"), 1, "the history resumed once");
  // Nobody's departure was recorded in any of this: each came back within
  // the away grace.
  const [left] = await sql(
    server,
    `SELECT count(*) AS n FROM signaling_events WHERE room = 'booking:${meeting.bookingId}' AND kind = 'participant_left'`,
  );
  assert.equal(left.n, 0);
});
