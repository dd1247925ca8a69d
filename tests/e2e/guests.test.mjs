// Guests in a meeting, in a real browser: the social worker in a resident's
// meeting makes a guest link for an Arabic interpreter and has it mailed;
// the interpreter opens it without signing in, gives a name, waits in the
// waiting room and is let in; all three see each other through the TURN
// relay (a peer connection per pair). A second use of the link is refused.
// Then the social worker sends the resident back to the waiting room and
// lets her in again.
//
// The two tests share one server and one meeting: the second goes on where
// the first left off.

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
} from "./helpers.mjs";

/** How long a slow machine may take to bring three fake cameras up. */
const MEDIA_WITHIN = 90_000;

/** The meeting of the first test, for the second. */
let meeting = null;

useServerAndBrowser();

/** Waits until the page decodes video from `count` other participants. */
async function remoteVideosPlay(page, count) {
  await page.waitForFunction(
    (count) => {
      const videos = Array.from(document.querySelectorAll("#remote-videos video"));
      return (
        videos.length === count &&
        videos.every((v) => v.videoWidth > 0 && v.currentTime > 0.5 && v.getVideoPlaybackQuality().totalVideoFrames > 0)
      );
    },
    count,
    { timeout: MEDIA_WITHIN },
  );
}

async function mediaContext(locale) {
  const context = await browser.newContext({ locale });
  await context.grantPermissions(["camera", "microphone"], { origin: server.url });
  return context;
}

test("a resident, a social worker and an interpreter invited by link meet through the relay", async () => {
  const resident = await mediaContext("ar");
  const annaPage = await resident.newPage();
  const hrefs = await searchTimes(annaPage, server, { service: "ekonomiskt-bistand", home: "2418" });
  await signInResident(annaPage, server, "anna@example.se");
  await annaPage.waitForURL((u) => u.pathname === "/my");
  await annaPage.goto(new URL(hrefs[0], server.url).href);
  await Promise.all([annaPage.waitForURL((u) => u.pathname === "/my"), annaPage.click("#confirm-booking")]);
  const bookingId = new URL(annaPage.url()).searchParams.get("booked");
  await annaPage.goto(`${server.url}/join/${bookingId}`);
  const annaStatus = annaPage.locator("#meeting-status");
  await annaStatus.filter({ hasText: "غرفة الانتظار" }).waitFor();

  const [booked] = await sql(
    server,
    `SELECT s.email FROM bookings b JOIN staff s ON s.id = b.staff_id WHERE b.id = '${bookingId}'`,
  );
  const staff = await mediaContext("sv-SE");
  const staffPage = await staff.newPage();
  await signInStaff(staffPage, server, booked.email);
  const response = await staffPage.goto(`${server.url}/join/${bookingId}`);
  assert.equal(response.headers()["permissions-policy"], "camera=(self), microphone=(self)");
  const knock = staffPage.locator("#lobby-list li[data-party^='resident:']");
  await knock.locator("button[data-action='lobby.admit']").click({ timeout: MEDIA_WITHIN });
  await knock.waitFor({ state: "detached" });
  await remoteVideosPlay(staffPage, 1);

  // An interpreter for Arabic, with the link mailed too.
  await staffPage.selectOption("#invite-role", "interpreter");
  await staffPage.selectOption("#invite-language", "ar");
  await staffPage.fill("#invite-email", "tolk@example.se");
  await staffPage.click("#invite-create");
  await staffPage.locator("#invite-status", { hasText: "mejlad" }).waitFor({ timeout: MEDIA_WITHIN });
  const link = await staffPage.inputValue("#invite-link");
  assert.match(link, /\/guest\/[\w-]+\.[\w-]+\.[\w-]+$/);
  const mail = await outboxPayload(server, "guest_invitation", "tolk@example.se");
  assert.equal(`${server.url}/guest/${mail.token}`, link, "the mail carries the same link");
  const invited = await sql(
    server,
    `SELECT count(*) AS n FROM audit_log WHERE action = 'meeting.guest_invite' AND subject LIKE '%${bookingId}%'`,
  );
  assert.equal(invited[0].n, 1, "the invitation is audit-logged");
  await staff.grantPermissions(["camera", "microphone", "clipboard-read", "clipboard-write"], { origin: server.url });
  await staffPage.click("#invite-copy");
  await staffPage.locator("#invite-status", { hasText: "kopierad" }).waitFor();
  assert.equal(await staffPage.evaluate(() => navigator.clipboard.readText()), link, "the copy button copies the link");

  // The interpreter: no sign-in, a name, the camera, then the waiting room.
  const interpreter = await mediaContext("sv-SE");
  const guestPage = await interpreter.newPage();
  const opened = await guestPage.goto(link);
  assert.equal(opened.status(), 200);
  await guestPage.locator("#self-video").waitFor();
  await guestPage.waitForFunction(() => document.querySelector("#self-video").videoWidth > 0, null, {
    timeout: MEDIA_WITHIN,
  });
  assert.match(await guestPage.locator("main").innerText(), /tolk \(arabiska\)/);
  assert.doesNotMatch(await guestPage.locator("main").innerText(), /[Ee]konomiskt|Anna/, "nothing of the booking");
  await assertTranslated(guestPage, "the guest page");
  await assertAccessible(guestPage, "the guest page (sv)");
  await guestPage.fill("#guest-name", "Samira Tolk");
  await guestPage.click("#guest-join");
  await guestPage.locator("#meeting-status", { hasText: "väntrummet" }).waitFor({ timeout: MEDIA_WITHIN });
  assert.match(await guestPage.locator("#self-caption").innerText(), /Samira Tolk/);
  assert.equal(await guestPage.locator("#remote-videos video").count(), 0, "nobody seen from the waiting room");

  const guestKnock = staffPage.locator("#lobby-list li[data-party^='guest:']");
  await guestKnock.waitFor({ timeout: MEDIA_WITHIN });
  assert.match(await guestKnock.innerText(), /Tolk/);
  const before = await relayedPackets(server, "client_to_peer");
  await guestKnock.locator("button[data-action='lobby.admit']").click();
  await guestKnock.waitFor({ state: "detached" });

  // Everyone decodes both others' video, through the relay.
  await remoteVideosPlay(guestPage, 2);
  await remoteVideosPlay(staffPage, 2);
  await remoteVideosPlay(annaPage, 2);
  await waitFor(
    "media packets counted by the relay",
    async () => (await relayedPackets(server, "client_to_peer")) - before > 200,
    MEDIA_WITHIN,
  );
  const admitted = await sql(
    server,
    `SELECT count(*) AS n FROM audit_log WHERE action = 'meeting.guest_admit' AND subject LIKE '%${bookingId}%'`,
  );
  assert.equal(admitted[0].n, 1, "the guest's admission is audit-logged");
  assert.deepEqual(
    (await staffPage.locator("#present-list li span").allInnerTexts()).sort(),
    ["Invånaren", "Tolk"],
    "staff see who is in the meeting",
  );
  await assertAccessible(staffPage, "the meeting page with three participants (sv)");
  await assertAccessible(annaPage, "the meeting page with three participants (ar)");

  // The same link again, from another browser: refused in plain words.
  const again = await mediaContext("ar");
  const againPage = await again.newPage();
  await againPage.goto(link);
  assert.equal(await againPage.getAttribute("html", "dir"), "rtl");
  await assertAccessible(againPage, "the guest page (ar)");
  await againPage.fill("#guest-name", "شخص آخر");
  await againPage.click("#guest-join");
  await againPage.locator("#meeting-status", { hasText: "تم استخدام هذا الرابط" }).waitFor({ timeout: MEDIA_WITHIN });
  await again.close();

  meeting = { bookingId, resident, annaPage, staff, staffPage, interpreter, guestPage };
});

test("the social worker sends the resident back to the waiting room and lets her in again", async () => {
  assert.ok(meeting, "the meeting of the first test");
  const { annaPage, staffPage, guestPage } = meeting;
  const present = staffPage.locator("#present-list li[data-party^='resident:']");
  await present.locator("button[data-action='lobby.send_back']").click();

  // Anna is told in plain words and sees nobody; the others lose her video.
  await annaPage
    .locator("#meeting-status", { hasText: "لقد عدت إلى غرفة الانتظار" })
    .waitFor({ timeout: MEDIA_WITHIN });
  assert.equal(await annaPage.locator("#remote-videos video").count(), 0);
  assert.ok(await annaPage.locator("#chat-text").isDisabled(), "no chat from the waiting room");
  await remoteVideosPlay(guestPage, 1);
  await remoteVideosPlay(staffPage, 1);

  const knock = staffPage.locator("#lobby-list li[data-party^='resident:']");
  await knock.locator("button[data-action='lobby.admit']").click({ timeout: MEDIA_WITHIN });
  await knock.waitFor({ state: "detached" });
  await remoteVideosPlay(annaPage, 2);
  await remoteVideosPlay(staffPage, 2);
  await remoteVideosPlay(guestPage, 2);

  await staffPage.click("#end-meeting");
  await guestPage.locator("#meeting-status", { hasText: "Mötet är avslutat." }).waitFor({ timeout: MEDIA_WITHIN });
  await meeting.interpreter.close();
  await meeting.staff.close();
  await meeting.resident.close();
});
