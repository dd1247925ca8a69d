// The video meeting in a real browser, end to end: a resident books, opens
// the confirmation mail's join link and waits in the waiting room; the social
// worker who got the meeting opens it from the day view, hears the knock and
// lets the resident in; both see and hear each other through the embedded
// TURN relay (Chromium's fake camera, relay candidates only), chat, and the
// social worker ends the meeting, which completes the booking.
//
// The server runs with its defaults for the relay's peer policy: nothing on
// loopback is allowed, so media crosses only because each peer is one of the
// relay's own allocations.

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  server,
  browser,
  useServerAndBrowser,
  signInResident,
  signInStaff,
  searchTimes,
  outboxPayload,
  sql,
  waitFor,
  assertAccessible,
  assertTranslated,
  relayedPackets,
  remoteVideoPlays,
} from "./helpers.mjs";


useServerAndBrowser();

test("a resident and a social worker meet over video through the relay, chat, and the meeting ends", async () => {
  // Anna books in Arabic, so the meeting page is checked right to left too.
  const resident = await browser.newContext({ locale: "ar" });
  await resident.grantPermissions(["camera", "microphone"], { origin: server.url });
  const annaPage = await resident.newPage();
  const hrefs = await searchTimes(annaPage, server, { service: "ekonomiskt-bistand", home: "2418" });
  await signInResident(annaPage, server, "anna@example.se");
  await annaPage.waitForURL((u) => u.pathname === "/my");
  await annaPage.goto(new URL(hrefs[0], server.url).href);
  await Promise.all([annaPage.waitForURL((u) => u.pathname === "/my"), annaPage.click("#confirm-booking")]);
  const bookingId = new URL(annaPage.url()).searchParams.get("booked");
  assert.ok(
    await annaPage.locator(`li[data-booking="${bookingId}"] a[href="/join/${bookingId}"]`).count(),
    "My pages links to the meeting",
  );

  // The join link of the confirmation mail leads to the meeting page, where
  // Anna waits: the social worker is not there yet.
  const mail = await outboxPayload(server, "booking_confirmed", "anna@example.se");
  assert.equal(mail.booking_id, bookingId);
  await annaPage.goto(`${server.url}/join/${mail.booking_id}`);
  assert.equal(await annaPage.getAttribute("html", "dir"), "rtl");
  const annaStatus = annaPage.locator("#meeting-status");
  await annaStatus.filter({ hasText: "غرفة الانتظار" }).waitFor();
  await assertTranslated(annaPage, "the meeting page in the waiting room");
  await assertAccessible(annaPage, "the meeting page in the waiting room (ar)");
  assert.ok(await annaPage.locator("#chat-text").isDisabled(), "no chat from the waiting room");

  // The social worker who got the meeting opens it from the day view.
  const [meeting] = await sql(
    server,
    `SELECT s.email, b.starts_at FROM bookings b JOIN staff s ON s.id = b.staff_id WHERE b.id = '${bookingId}'`,
  );
  const day = new Date(meeting.starts_at * 1000).toLocaleDateString("sv-SE", { timeZone: "Europe/Stockholm" });
  const staff = await browser.newContext({ locale: "sv-SE" });
  await staff.grantPermissions(["camera", "microphone"], { origin: server.url });
  const staffPage = await staff.newPage();
  await signInStaff(staffPage, server, meeting.email);
  await staffPage.goto(`${server.url}/staff?date=${day}`);
  await Promise.all([
    staffPage.waitForURL((u) => u.pathname === `/join/${bookingId}`),
    staffPage.click(`table.meetings a[href="/join/${bookingId}"]`),
  ]);

  // The knock is listed; Anna hears that staff are here. Let her in.
  const knock = staffPage.locator("#lobby-list li[data-party^='resident:']");
  await knock.waitFor();
  await annaStatus.filter({ hasText: "موجود" }).waitFor();
  await assertAccessible(staffPage, "the meeting page with a knock (sv)");
  const before = await relayedPackets(server, "client_to_peer");
  await knock.locator("button[data-action='lobby.admit']").click();
  await knock.waitFor({ state: "detached" });

  // Both see the other's camera, and the media went through the relay.
  await remoteVideoPlays(annaPage);
  await remoteVideoPlays(staffPage);
  await staffPage.locator("#remote-videos figure[data-state='connected']").waitFor();
  assert.match(await staffPage.locator("#remote-videos figcaption").innerText(), /Invånaren/);
  // The relay publishes its counters once a second.
  await waitFor("media packets counted by the relay", async () => (await relayedPackets(server, "client_to_peer")) - before > 50);

  // The in-meeting chat, both ways.
  await annaPage.fill("#chat-text", "مرحبا، هل تسمعني؟");
  await annaPage.click("#chat-send");
  await staffPage.locator("#chat-log li", { hasText: "مرحبا، هل تسمعني؟" }).waitFor();
  await annaPage.locator("#chat-log li:not([data-pending])", { hasText: "مرحبا" }).waitFor();
  await staffPage.fill("#chat-text", "Ja, jag hör dig bra.");
  await staffPage.keyboard.press("Tab");
  await staffPage.keyboard.press("Enter");
  await annaPage.locator("#chat-log li", { hasText: "Ja, jag hör dig bra." }).waitFor();
  const stored = await sql(
    server,
    `SELECT count(*) AS n FROM signaling_events WHERE room = 'booking:${bookingId}' AND kind = 'chat'`,
  );
  assert.equal(stored[0].n, 2, "the chat is stored with the booking");

  // The social worker shares the screen: it goes out on the camera's
  // sender, so Anna's tile shows another picture (the fake screen has
  // another size than the fake camera) without a new connection.
  const size = (page) =>
    page.evaluate(() => {
      const video = document.querySelector("#remote-videos video");
      return `${video.videoWidth}x${video.videoHeight}`;
    });
  const cameraSize = await size(annaPage);
  await staffPage.click("#share-screen");
  await staffPage.locator("#share-screen[aria-pressed='true']").waitFor();
  await annaPage.waitForFunction(
    (camera) => {
      const video = document.querySelector("#remote-videos video");
      return `${video.videoWidth}x${video.videoHeight}` !== camera;
    },
    cameraSize,
    { timeout: 20_000 },
  );
  assert.equal(await annaPage.locator("#remote-videos video").count(), 1, "the same tile");
  await staffPage.click("#share-screen");
  await staffPage.locator("#share-screen[aria-pressed='false']").waitFor();
  await annaPage.waitForFunction((camera) => {
    const video = document.querySelector("#remote-videos video");
    return `${video.videoWidth}x${video.videoHeight}` === camera;
  }, cameraSize, { timeout: 20_000 });

  // Anna's page reloads mid-meeting: she comes back without the waiting
  // room, sees what was said, and the call is negotiated afresh.
  await annaPage.reload();
  await annaPage.locator("#chat-log li", { hasText: "Ja, jag hör dig bra." }).waitFor();
  assert.deepEqual(
    await annaPage.locator("#chat-log li").allInnerTexts(),
    ["أنت: مرحبا، هل تسمعني؟", "الأخصائي الاجتماعي: Ja, jag hör dig bra."],
    "what was said, once each and in order",
  );
  await remoteVideoPlays(annaPage);
  await staffPage.waitForFunction(
    () => {
      const videos = document.querySelectorAll("#remote-videos video");
      return videos.length === 1 && videos[0].videoWidth > 0 && !videos[0].paused;
    },
    null,
    { timeout: 30_000 },
  );
  await staffPage.locator("#remote-videos figure[data-state='connected']").waitFor();
  assert.equal(await staffPage.locator("#lobby-list li").count(), 0, "no knock: she was already admitted");

  // The social worker ends the meeting: both are told, the booking is completed.
  await staffPage.click("#end-meeting");
  await staffPage.locator("#meeting-status", { hasText: "Mötet är avslutat." }).waitFor();
  await annaStatus.filter({ hasText: "انتهى الاجتماع" }).waitFor();
  const [after] = await sql(server, `SELECT status FROM bookings WHERE id = '${bookingId}'`);
  assert.equal(after.status, "completed");
  await staff.close();
  await resident.close();
});

test("another resident's meeting answers 404 and the attempt is audit-logged", async () => {
  const [other] = await sql(server, "SELECT id FROM bookings ORDER BY starts_at LIMIT 1");
  assert.ok(other, "a booking from the first test");
  const context = await browser.newContext({ locale: "sv-SE" });
  const page = await context.newPage();
  await signInResident(page, server, "leila@example.se");
  await page.waitForURL((u) => u.pathname === "/my");
  const response = await page.goto(`${server.url}/join/${other.id}`);
  assert.equal(response.status(), 404);
  assert.equal(await page.locator("#meeting").count(), 0);
  const denied = await sql(
    server,
    `SELECT count(*) AS n FROM audit_log WHERE outcome = 'denied' AND subject LIKE '%${other.id}%'`,
  );
  assert.ok(denied[0].n >= 1, "the refused read is in the audit log");
  await context.close();
});
