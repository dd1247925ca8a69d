// The resident's chat page in a real browser, against the real server: the
// offline form when nobody is online, a signed-in chat from "Chat with us
// now" with the queue position, the estimated wait, typing and read receipts
// both ways, an offered time booked from the chat, a dropped socket that the
// page survives without a reload, and the move to video; an anonymous chat
// saved as a text file at the end; and axe-core on the chat page in Swedish
// and Arabic at a phone's width.
//
// The social worker's side is a WebSocket opened from a signed-in staff
// page (`staffSocket`), speaking the protocol of docs/protocol.md frame by
// frame; the two-sided tests with the staff console page live with the
// console.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import {
  server,
  browser,
  useServerAndBrowser,
  signInResident,
  signInStaff,
  outboxPayload,
  sql,
  waitFor,
  assertAccessible,
  assertTranslated,
} from "./helpers.mjs";


useServerAndBrowser();

/** The email of a social worker (not a scheduler or admin) of `municipality`. */
async function staffEmail(municipality) {
  const [row] = await sql(
    server,
    `SELECT email FROM staff WHERE municipality_code = '${municipality}' AND role = 'staff' ORDER BY email LIMIT 1`,
  );
  assert.ok(row, `a social worker in ${municipality}`);
  return row.email;
}

/**
 * A social worker's socket: signs `email` in on the staff page, opens /ws
 * with a ticket from that page, and keeps every frame it gets. `until`
 * waits for a frame whose fields (dotted paths) equal `match`.
 */
async function staffSocket(email) {
  const context = await browser.newContext({ locale: "sv-SE" });
  const page = await context.newPage();
  await signInStaff(page, server, email);
  await page.evaluate(async () => {
    const csrf = document.cookie
      .split("; ")
      .find((c) => c.startsWith("kontakt_csrf="))
      .slice("kontakt_csrf=".length);
    const answer = await fetch("/api/ws/ticket", { method: "POST", headers: { "x-csrf-token": csrf } });
    const { ticket } = await answer.json();
    window.frames_ = [];
    await new Promise((resolve, reject) => {
      const socket = new WebSocket(`${location.origin.replace(/^http/, "ws")}/ws?ticket=${ticket}`);
      socket.onmessage = ({ data }) => window.frames_.push(JSON.parse(data));
      socket.onopen = resolve;
      socket.onerror = () => reject(new Error("the staff socket failed"));
      window.socket_ = socket;
    });
  });
  const matches = (frame, match) =>
    Object.entries(match).every(([path, want]) => path.split(".").reduce((v, k) => (v == null ? v : v[k]), frame) === want);
  return {
    page,
    context,
    async send(frame) {
      await page.evaluate((frame) => window.socket_.send(JSON.stringify({ v: 1, ...frame })), frame);
    },
    async until(match, ms = 20_000) {
      let found;
      await waitFor(
        `a frame like ${JSON.stringify(match)}`,
        async () => {
          const frames = await page.evaluate(() => window.frames_);
          found = frames.find((f) => matches(f, match));
          return !!found;
        },
        ms,
      );
      return found;
    },
    async frames() {
      return await page.evaluate(() => window.frames_);
    },
    async close() {
      await context.close();
    },
  };
}

/**
 * A browser context whose pages record their WebSockets, so that a test
 * can drop the chat's connection as a network failure would.
 */
async function residentContext(options = {}) {
  const context = await browser.newContext({ locale: "sv-SE", acceptDownloads: true, ...options });
  await context.addInitScript(() => {
    const Original = window.WebSocket;
    window.sockets_ = [];
    window.WebSocket = class extends Original {
      constructor(...args) {
        super(...args);
        window.sockets_.push(this);
      }
    };
  });
  return context;
}

test("(11) with nobody online, the chat page offers the offline form and confirms the message", async () => {
  const context = await residentContext({ viewport: { width: 375, height: 740 } });
  const page = await context.newPage();
  await signInResident(page, server, "anna@example.se");
  await page.waitForURL((u) => u.pathname === "/my");

  // My pages offers the chat too; nobody is online, so the form comes.
  await page.locator(".chat-start a[href='/chat/ekonomiskt-bistand']").click();
  await page.waitForURL((u) => u.pathname === "/chat/ekonomiskt-bistand");
  await page.click("#chat-open");
  await page.locator("#chat-offline").waitFor();
  await page.locator("#queue-online", { hasText: "Ingen socialsekreterare" }).waitFor();
  await assertTranslated(page, "the chat page with the offline form");
  await assertAccessible(page, "the chat page with the offline form (sv, 375 px)");

  // Nothing written: a clear error, and nothing is sent.
  await page.fill("#offline-email", "");
  await page.click("#offline-send");
  await page.locator("#offline-error", { hasText: "Skriv ett meddelande" }).waitFor();
  await page.fill("#offline-message", "Jag behöver hjälp med hyran den här månaden.");
  await page.click("#offline-send");
  await page.locator("#offline-error", { hasText: "e-postadress eller ett telefonnummer" }).waitFor();
  assert.equal(await page.locator("#offline-message").inputValue(), "Jag behöver hjälp med hyran den här månaden.", "nothing lost");

  await page.fill("#offline-email", "anna.kontakt@example.se");
  await page.fill("#offline-phone", "070-123 45 67");
  await page.click("#offline-send");
  await page.locator("#offline-done", { hasText: "Tack!" }).waitFor();
  assert.ok(await page.locator("#offline-form").isHidden());

  // The message is stored for the staff the policy lets handle it.
  const malmo = await staffSocket(await staffEmail("2418"));
  const messages = await malmo.page.evaluate(async () => (await fetch("/api/staff/offline-messages")).json());
  const mine = messages.find((m) => m.contact_email === "anna.kontakt@example.se");
  assert.ok(mine, JSON.stringify(messages));
  assert.equal(mine.message, "Jag behöver hjälp med hyran den här månaden.");
  assert.equal(mine.contact_phone, "070-123 45 67");
  assert.equal(mine.service, "ekonomiskt-bistand");
  await malmo.close();
  // The confirmation mail names neither the service nor the message.
  await waitFor("the confirmation mail", async () => {
    const rows = await sql(server, "SELECT payload FROM outbox WHERE lower(recipient) = 'anna.kontakt@example.se'");
    return rows.length > 0;
  });
  const [mail] = await sql(server, "SELECT payload FROM outbox WHERE lower(recipient) = 'anna.kontakt@example.se'");
  assert.doesNotMatch(mail.payload, /hyran|ekonomiskt/i);

  // Leaving the queue ends the chat on this page.
  await page.click("#chat-leave");
  await page.locator("#chat-ended").waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("kontakt.chat.ekonomiskt-bistand")), null);
  await context.close();
});

test("(1) a resident opens a chat from the start page, sees position 1 and the wait, and chats with a social worker", async () => {
  const staff = await staffSocket(await staffEmail("2418"));
  await staff.send({ type: "staff.availability", available: true, max_chats: 2 });

  const context = await residentContext();
  const page = await context.newPage();
  await signInResident(page, server, "anna@example.se");
  await page.goto(`${server.url}/`);
  // "Chat with us now" for the services that offer it, and "I don't know".
  assert.ok(await page.locator(".chat-start a[href='/chat/general']").count(), "I don't know");
  await page.locator(".chat-start a[href='/chat/ekonomiskt-bistand']").click();
  await page.waitForURL((u) => u.pathname === "/chat/ekonomiskt-bistand");
  await page.click("#chat-open");

  // Position 1, a wait of one average chat, and someone who can answer.
  await page.locator("#queue-position", { hasText: "Du är nummer 1 i kön." }).waitFor();
  assert.equal(await page.locator("#queue-eta").innerText(), "Beräknad väntetid: cirka 15 minuter.");
  assert.equal(await page.locator("#queue-online").innerText(), "En socialsekreterare som kan hjälpa dig är inloggad.");
  assert.ok(await page.locator("#chat-offline").isHidden(), "no offline form while someone is online");
  const entry = await staff.until({ type: "queue.entry", "entry.service": "ekonomiskt-bistand" });
  const room = entry.entry.room;
  assert.equal(await page.evaluate(() => JSON.parse(sessionStorage.getItem("kontakt.chat.ekonomiskt-bistand")).room), room);

  // The resident writes while waiting; the social worker claims the chat.
  await page.fill("#chat-text", "Hej, jag har en fråga om ekonomiskt bistånd.");
  await page.click("#chat-send");
  await page.locator("#chat-log li[data-mine='true']:not([data-pending])").waitFor();
  await staff.send({ type: "queue.claim", room });
  await staff.until({ type: "queue.assigned", "entry.room": room });
  await page.locator("#chat-state", { hasText: "Du chattar med en socialsekreterare." }).waitFor();
  assert.ok(await page.locator("#queue-status").isHidden());
  assert.ok(await page.locator("#chat-leave").isHidden());
  await staff.send({ type: "resume", room, last_seq: 0 });
  await staff.until({ type: "event", room, "event.kind": "chat", "event.text": "Hej, jag har en fråga om ekonomiskt bistånd." });

  // Typing both ways.
  await staff.send({ type: "chat.typing", room, typing: true });
  await page.locator("#chat-typing", { hasText: "Socialsekreteraren skriver" }).waitFor();
  await page.locator("#chat-text").pressSequentially("Ä");
  await staff.until({ type: "chat.typing", room, typing: true });
  await page.fill("#chat-text", "");

  // A message from the social worker; the page acks it, which is a read
  // receipt for the staff side.
  await staff.send({ type: "chat.send", room, client_id: "s-1", text: "Hej! Jag heter Maria. Berätta mer." });
  await page.locator("#chat-log li", { hasText: "Socialsekreterare: Hej! Jag heter Maria." }).waitFor();
  assert.equal(await page.locator("#chat-typing").innerText(), "", "the indicator goes with the message");
  await staff.until({ type: "chat.read", room });
  // The social worker reads the resident's message: "Read" on the page.
  const [{ seq: residentSeq }] = (await staff.frames()).filter((f) => f.type === "event" && f.event.kind === "chat" && f.event.from.startsWith("resident:")).map((f) => ({ seq: f.seq }));
  await staff.send({ type: "ack", room, seq: residentSeq });
  await page.locator(`#chat-log li[data-mine='true'][data-receipt='read']`).waitFor();
  await assertTranslated(page, "the chat page in a chat");
  await assertAccessible(page, "the chat page in a chat (sv)");

  // The socket drops: the page reconnects by itself, without a reload, and
  // resumes. What the social worker wrote meanwhile arrives once; what the
  // resident wrote meanwhile is sent when the socket is back.
  const before = await page.evaluate(() => window.sockets_.length);
  await page.evaluate(() => window.sockets_.at(-1).close());
  await staff.send({ type: "chat.send", room, client_id: "s-2", text: "Är du kvar?" });
  await page.fill("#chat-text", "Ja, nätet försvann en stund.");
  await page.click("#chat-send");
  await page.locator("#chat-log li", { hasText: "Socialsekreterare: Är du kvar?" }).waitFor();
  await staff.until({ type: "event", room, "event.kind": "chat", "event.text": "Ja, nätet försvann en stund." });
  assert.ok((await page.evaluate(() => window.sockets_.length)) > before, "a new socket, not a reload");
  assert.equal(await page.locator("#chat-log li", { hasText: "Är du kvar?" }).count(), 1, "shown once");
  assert.equal(await page.locator("#chat-log li", { hasText: "nätet försvann" }).count(), 1, "sent once");

  // Offered times appear as buttons; one click books, and the confirmation
  // shows in the chat and the booking on My pages.
  const from = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
  const to = new Date(Date.now() + 14 * 86_400_000).toISOString().slice(0, 10);
  const times = await (
    await fetch(`${server.url}/api/search?service=ekonomiskt-bistand&home=2418&from=${from}&to=${to}`)
  ).json();
  assert.ok(times.length > 0, "free times to offer");
  const offered = times.slice(0, 2).map((t) => ({ slot_id: t.starts_at, starts_at: t.starts_at, ends_at: t.ends_at }));
  await staff.send({ type: "chat.offer_times", room, client_id: "offer-1", times: offered });
  const offer = page.locator("#chat-log li.offer");
  await offer.locator("button").first().waitFor();
  assert.equal(await offer.locator("button").count(), 2);
  await offer.locator("button").first().click();
  await offer.locator(".offer-result.success", { hasText: "Bokat:" }).waitFor();
  const bookingId = await offer.locator("ul[data-booked]").getAttribute("data-booked");
  const [booked] = await sql(server, `SELECT starts_at FROM bookings WHERE id = '${bookingId}'`);
  assert.equal(booked.starts_at, Date.parse(offered[0].starts_at) / 1000, "the offered time was booked");

  // Video: the page goes straight into the ad-hoc room, without the lobby.
  await Promise.all([
    page.waitForURL((u) => u.pathname.startsWith("/meeting/adhoc/")),
    staff.send({ type: "chat.escalate_video", room }),
  ]);
  const opened = await staff.until({ type: "event", room, "event.kind": "video_opened" });
  assert.equal(new URL(page.url()).pathname, `/meeting/adhoc/${opened.event.meeting_room.replace(/^adhoc:/, "")}`);
  await page.locator("#meeting-status", { hasText: /mötesrummet|insläppt/ }).waitFor();
  await assertAccessible(page, "the ad-hoc meeting page (sv)");

  // Back in the chat, it is all there once, and the old video event does
  // not send the page away again.
  await page.click("a[href='/chat/ekonomiskt-bistand']");
  await page.waitForURL((u) => u.pathname === "/chat/ekonomiskt-bistand");
  await page.locator("#chat-log li", { hasText: "Är du kvar?" }).waitFor();
  await page.locator("#chat-log li.video a").waitFor();
  assert.equal(await page.locator("#chat-log li", { hasText: "Hej! Jag heter Maria." }).count(), 1);
  assert.equal(new URL(page.url()).pathname, "/chat/ekonomiskt-bistand");

  // The resident closes the chat; it stays on My pages.
  await page.click("#chat-close");
  await page.locator("#chat-ended").waitFor();
  await staff.until({ type: "room.closed", room });
  await page.goto(`${server.url}/my`);
  await page.locator(`a[href='/my/chats/${encodeURIComponent(room)}']`).waitFor();
  await page.locator(`li[data-booking='${bookingId}']`).waitFor();
  await staff.close();
  await context.close();
});

test("(10) an anonymous chat: no sign-in, a municipality chosen, the transcript saved at the end", async () => {
  const staff = await staffSocket(await staffEmail("2418"));
  await staff.send({ type: "staff.availability", available: true, max_chats: 2 });
  const context = await residentContext();
  const page = await context.newPage();
  await page.goto(`${server.url}/`);
  await page.locator(".chat-start a[href='/chat/stod-till-anhoriga']").click();
  await page.waitForURL((u) => u.pathname === "/chat/stod-till-anhoriga");
  assert.equal(await page.locator("#chat-home").count(), 1, "no sign-in: a municipality to pick");

  // No municipality: nothing starts.
  await page.click("#chat-open");
  assert.equal(await page.locator("#chat-home").getAttribute("aria-invalid"), "true");
  await page.locator("#chat-start-error", { hasText: "Välj din hemkommun." }).waitFor();
  assert.ok(await page.locator("#chat-live").isHidden(), "nothing started");
  await page.selectOption("#chat-home", "2418");
  await page.click("#chat-open");
  await page.locator("#queue-position", { hasText: "Du är nummer 1 i kön." }).waitFor();
  const token = await page.evaluate(() => sessionStorage.getItem("kontakt.chat.stod-till-anhoriga.token"));
  assert.ok(token, "the one-chat token lives in sessionStorage");
  assert.deepEqual(await page.evaluate(() => Object.keys(localStorage)), [], "nothing in localStorage");

  const entry = await staff.until({ type: "queue.entry", "entry.service": "stod-till-anhoriga" });
  assert.equal(entry.entry.anonymous, true);
  assert.equal(entry.entry.home_municipality, "2418");
  const room = entry.entry.room;
  await staff.send({ type: "queue.claim", room });
  await page.locator("#chat-state", { hasText: "Du chattar med en socialsekreterare." }).waitFor();
  await staff.send({ type: "chat.send", room, client_id: "a-1", text: "Hej, vad kan jag hjälpa dig med?" });
  await page.locator("#chat-log li", { hasText: "Hej, vad kan jag hjälpa dig med?" }).waitFor();
  await page.fill("#chat-text", "Min mamma behöver mer stöd hemma.");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  await staff.until({ type: "event", room, "event.kind": "chat", "event.text": "Min mamma behöver mer stöd hemma." });

  // Video: the anonymous resident enters the ad-hoc room with the chat's
  // token, and comes back to the same chat.
  await Promise.all([
    page.waitForURL((u) => u.pathname.startsWith("/meeting/adhoc/")),
    staff.send({ type: "chat.escalate_video", room }),
  ]);
  await page.locator("#meeting-status", { hasText: /mötesrummet|insläppt/ }).waitFor();
  await page.click("a[href='/chat/stod-till-anhoriga']");
  await page.waitForURL((u) => u.pathname === "/chat/stod-till-anhoriga");
  await page.locator("#chat-log li", { hasText: "Min mamma behöver mer stöd hemma." }).waitFor();
  await page.locator("#chat-state", { hasText: "Du chattar med en socialsekreterare." }).waitFor();

  // Offered times cannot be booked anonymously: the page says to sign in.
  await staff.send({
    type: "chat.offer_times",
    room,
    client_id: "offer-a",
    times: [{ slot_id: "x", starts_at: "2030-01-08T10:00:00+01:00", ends_at: "2030-01-08T11:00:00+01:00" }],
  });
  await page.locator("#chat-log li.offer", { hasText: "Logga in för att boka" }).waitFor();
  assert.equal(await page.locator("#chat-log li.offer button").count(), 0);

  // The social worker closes the chat: the page offers the transcript.
  await staff.send({ type: "chat.close", room, outcome: "resolved" });
  await page.locator("#chat-ended").waitFor();
  await page.locator("#chat-save").waitFor();
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#chat-save")]);
  const saved = await readFile(await download.path(), "utf8");
  assert.match(saved, /Chatt med socialtjänsten: Stöd till anhöriga/);
  assert.match(saved, /Socialsekreterare: Hej, vad kan jag hjälpa dig med\?/);
  assert.match(saved, /Du: Min mamma behöver mer stöd hemma\./);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("kontakt.chat.stod-till-anhoriga.token")), null, "the token is gone");

  const [stored] = await sql(server, `SELECT anonymous, resident FROM signaling_queue_entries WHERE room = '${room}'`);
  assert.equal(Number(stored.anonymous), 1);
  assert.match(stored.resident, /^anonymous:/);
  await staff.close();
  await context.close();
});

test("(12) the chat page passes axe in Swedish and Arabic, right to left, at a phone's width", async () => {
  for (const locale of ["sv-SE", "ar"]) {
    const context = await browser.newContext({ locale, viewport: { width: 375, height: 740 } });
    const page = await context.newPage();
    await page.goto(`${server.url}/chat/missbruk-beroende`);
    if (locale === "ar") assert.equal(await page.getAttribute("html", "dir"), "rtl");
    await assertTranslated(page, `the anonymous chat start (${locale})`);
    await assertAccessible(page, `the anonymous chat start (${locale}, 375 px)`);
    await page.selectOption("#chat-home", "2422");
    await page.click("#chat-open");
    await page.locator("#queue-position:not(:empty)").waitFor();
    await page.fill("#chat-text", locale === "ar" ? "مرحبا" : "Hej");
    await page.click("#chat-send");
    await page.locator("#chat-log li[data-receipt='sent']").waitFor();
    await assertTranslated(page, `the chat page waiting (${locale})`);
    await assertAccessible(page, `the chat page waiting (${locale}, 375 px)`);
    const scroll = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(scroll <= 375, `the chat page is ${scroll}px wide in a 375px viewport (${locale})`);
    await page.click("#chat-leave");
    await page.locator("#chat-ended").waitFor();
    await assertAccessible(page, `the chat page ended (${locale}, 375 px)`);
    await context.close();
  }
});
