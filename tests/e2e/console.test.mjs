// The staff console (/staff/console) in a real browser, with the resident
// on the other side at the same time.
//
// The demo's policy decides who sees what: Anna lives in Malå (2418), and
// the pre-assessment of financial assistance (ekonomiskt-bistand) may be
// done by Malå itself and by Lycksele (2481) under their agreement, but not
// by Helsingborg (1283). Lycksele has two social workers
// (handlaggare.lycksele, handlaggare1.lycksele), Malå one.

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  server,
  browser,
  useServerAndBrowser,
  searchTimes,
  signInResident,
  signInStaff,
  sql,
  waitFor,
  assertAccessible,
  assertTranslated,
  relayedPackets,
  remoteVideoPlays,
} from "./helpers.mjs";

const LYCKSELE_1 = "handlaggare.lycksele@kontakt.demo";
const LYCKSELE_2 = "handlaggare1.lycksele@kontakt.demo";
const MALA = "handlaggare.mala@kontakt.demo";
const HELSINGBORG = "handlaggare.helsingborg@kontakt.demo";
const SERVICE = "ekonomiskt-bistand";

/** What one test leaves for the next: the open chat and its people. */
let shared;

useServerAndBrowser();

/** A signed-in staff member's console, connected and settled. */
async function openConsole(email, { locale = "sv-SE", viewport, available = true, max = 2 } = {}) {
  const context = await browser.newContext({ locale, viewport });
  await context.grantPermissions(["camera", "microphone"], { origin: server.url });
  const page = await context.newPage();
  await signInStaff(page, server, email);
  await page.goto(`${server.url}/staff/console`);
  await consoleReady(page);
  if (available) await setAvailable(page, max);
  return { context, page };
}

/** Waits until the console has connected and heard all the hub had to say. */
async function consoleReady(page) {
  await page.locator("#console[data-connected='true'][data-settled='true']").waitFor();
}

async function setAvailable(page, max) {
  await page.fill("#max-chats", String(max));
  await page.locator("#max-chats").dispatchEvent("change");
  if (!(await page.isChecked("#taking-chats"))) await page.check("#taking-chats");
}

/** The queue entries a console lists, by room. */
async function queueRooms(page) {
  return await page.locator("#queue-list li[data-room]").evaluateAll((items) => items.map((i) => i.dataset.room));
}

/**
 * A signed-in resident on the chat page of `service` (h-chat's
 * /chat/{service}), with the chat opened; `room` is its room id.
 */
async function openResidentChat(email, { locale = "sv-SE", service = SERVICE, name, home, viewport } = {}) {
  const context = await browser.newContext({ locale, viewport });
  await context.grantPermissions(["camera", "microphone"], { origin: server.url });
  const page = await context.newPage();
  await signInResident(page, server, email, { name, home });
  await page.waitForURL((u) => u.pathname === "/my");
  await page.goto(`${server.url}/chat/${service}`);
  await page.click("#chat-open");
  const key = `kontakt.chat.${service}`;
  const handle = await page.waitForFunction((key) => {
    const stored = sessionStorage.getItem(key);
    return stored && JSON.parse(stored).room;
  }, key);
  const room = await handle.jsonValue();
  return { context, page, room, service };
}

async function residentSays(resident, text) {
  await resident.page.fill("#chat-text", text);
  await resident.page.click("#chat-send");
}

/** Waits until the resident's page shows a line of the chat with `text`. */
async function residentSees(resident, text) {
  await resident.page.locator("#chat-log li", { hasText: text }).waitFor();
}

test("only eligible social workers see the chat, and of two who claim at once exactly one gets it", async () => {
  const maria = await openConsole(LYCKSELE_1);
  const johan = await openConsole(LYCKSELE_2);
  const fatima = await openConsole(HELSINGBORG);
  const anna = await openResidentChat("anna@example.se");

  for (const staff of [maria, johan]) {
    await staff.page.locator(`#queue-list li[data-room="${anna.room}"]`).waitFor();
  }
  const entry = await maria.page.locator(`#queue-list li[data-room="${anna.room}"]`).innerText();
  assert.match(entry, /Ekonomiskt bistånd/);
  assert.match(entry, /hemkommun Malå/);
  assert.doesNotMatch(entry, /Anna|Lindqvist|anna@/, "nothing about who the resident is");
  assert.match(await maria.page.locator("#console-alert").innerText(), /Ny chatt i kön/);
  assert.ok(Number(await maria.page.getAttribute("#console", "data-beeps")) >= 1, "a sound was played");

  // Helsingborg may not do this pre-assessment: a fresh console hears every
  // waiting chat it may see, and this one sees none.
  await fatima.page.reload();
  await consoleReady(fatima.page);
  assert.deepEqual(await queueRooms(fatima.page), []);
  assert.ok(await fatima.page.locator("#queue-empty").isVisible());

  // Both click at the same moment.
  const at = Date.now() + 300;
  const click = (page) =>
    page.evaluate(
      ([room, at]) =>
        new Promise((resolve) =>
          setTimeout(() => {
            document.querySelector(`#queue-list li[data-room="${room}"] button`).click();
            resolve();
          }, at - Date.now()),
        ),
      [anna.room, at],
    );
  await Promise.all([click(maria.page), click(johan.page)]);
  const outcome = async (page) => {
    let result = null;
    await waitFor("the claim's outcome", async () => {
      if (await page.locator(`.chat-panel[data-room="${anna.room}"]`).count()) result = "won";
      else if (/redan tagen/.test(await page.locator("#console-alert").innerText())) result = "taken";
      return result !== null;
    });
    return result;
  };
  const results = [await outcome(maria.page), await outcome(johan.page)];
  assert.deepEqual([...results].sort(), ["taken", "won"], `one wins, one is told: ${results}`);
  const [winner, loser] = results[0] === "won" ? [maria, johan] : [johan, maria];
  assert.equal(await loser.page.locator(`#queue-list li[data-room="${anna.room}"]`).count(), 0);
  assert.equal(await winner.page.locator(`#queue-list li[data-room="${anna.room}"]`).count(), 0);

  const [row] = await sql(server, `SELECT state, staff FROM signaling_queue_entries WHERE room = '${anna.room}'`);
  assert.equal(row.state, "assigned");
  await fatima.context.close();
  shared = { anna, winner, loser };
});

test("messages both ways, with the typing indicator, read receipts and unread counts", async () => {
  const { anna, winner } = shared;
  const panel = winner.page.locator(`.chat-panel[data-room="${anna.room}"]`);
  const box = panel.locator("textarea");

  // The social worker types: the resident is told, then gets the message.
  await box.pressSequentially("Hej! Jag heter Maria. ");
  await anna.page.locator("#chat-typing", { hasText: "Socialsekreteraren skriver" }).waitFor();
  await box.pressSequentially("Vad kan jag hjälpa dig med?");
  await box.press("Enter");
  await residentSees(anna, "Socialsekreterare: Hej! Jag heter Maria. Vad kan jag hjälpa dig med?");
  assert.equal(await anna.page.locator("#chat-typing").innerText(), "", "the indicator goes with the message");
  // The resident's page acked it: the console shows it as read.
  await panel.locator('.transcript li[data-mine="true"][data-receipt="read"]', { hasText: "Vad kan jag hjälpa" }).waitFor();

  // The resident types and writes while the social worker is elsewhere on
  // the page: the chat counts it as unread, with a sound and an alert.
  await winner.page.locator("#offline-refresh").focus();
  const beepsBefore = Number(await winner.page.getAttribute("#console", "data-beeps"));
  await anna.page.locator("#chat-text").pressSequentially("Jag undrar");
  await panel.locator(".typing", { hasText: "Invånaren skriver" }).waitFor();
  await residentSays(anna, "Jag undrar hur jag ansöker om ekonomiskt bistånd.");
  await panel.locator('.transcript li[data-mine="false"]', { hasText: "Jag undrar hur" }).waitFor();
  assert.equal(await panel.locator(".typing").innerText(), "", "a message ends the typing indicator");
  const switcher = winner.page.locator(`#chat-switch li[data-room="${anna.room}"] a`);
  assert.match(await switcher.innerText(), /1 oläst/);
  assert.match(await winner.page.locator("#console-alert").innerText(), /Nytt meddelande i chatten om Ekonomiskt bistånd/);
  assert.ok(Number(await winner.page.getAttribute("#console", "data-beeps")) > beepsBefore, "a sound for the message");
  // The page is visible, so the resident learns the message was shown.
  await anna.page.locator("#chat-log li[data-mine='true'][data-receipt='read']", { hasText: "Jag undrar hur" }).waitFor();
  // Going to the chat clears its count.
  await switcher.click();
  assert.equal(await winner.page.evaluate(() => document.activeElement.classList.contains("chat-title")), true);
  await winner.page.locator(`#chat-switch li[data-room="${anna.room}"] a[data-unread="0"]`).waitFor();
});

test("a canned reply of the chat's service goes into the message box and is sent", async () => {
  const { anna, winner } = shared;
  const panel = winner.page.locator(`.chat-panel[data-room="${anna.room}"]`);
  const select = panel.locator(".canned select");
  await waitFor("the canned replies of the service", async () => (await select.locator("option").count()) > 1);
  const [value, title] = await select.locator("option").nth(1).evaluate((o) => [o.value, o.textContent]);
  assert.ok(title.trim(), "a reply has a title");
  await select.selectOption(value);
  await panel.locator("button.insert-canned").click();
  const box = panel.locator("textarea");
  assert.equal(await winner.page.evaluate(() => document.activeElement.tagName), "TEXTAREA", "focus in the box");
  const reply = await box.inputValue();
  assert.ok(reply.length > 10, `the reply's text is in the box: ${reply}`);
  await box.press("Enter");
  await residentSees(anna, reply.split("\n")[0].slice(0, 40));
});

test("the chat is transferred to a colleague who is online, who continues it", async () => {
  const { anna, winner, loser } = shared;
  const panel = winner.page.locator(`.chat-panel[data-room="${anna.room}"]`);
  await panel.locator("button.refresh-colleagues").click();
  const colleague = await loser.page.evaluate(() => document.querySelector(".account .who bdi")?.textContent);
  const option = panel.locator(".transfer select option", { hasText: colleague });
  await option.waitFor({ state: "attached" });
  assert.match(await option.innerText(), /Lycksele/);
  await panel.locator(".transfer select").selectOption(await option.getAttribute("value"));
  await panel.locator("button.do-transfer").click();
  await panel.locator(".chat-state", { hasText: "Chatten är överförd till din kollega." }).waitFor();
  assert.ok(await panel.locator("textarea").isDisabled(), "no more writing in a chat handed on");

  // The colleague has the whole conversation and continues it.
  const taken = loser.page.locator(`.chat-panel[data-room="${anna.room}"]`);
  await taken.locator(".transcript li", { hasText: "Jag undrar hur jag ansöker" }).waitFor();
  assert.match(await loser.page.locator("#console-alert").innerText(), /Chatten om Ekonomiskt bistånd.* är din\./);
  await taken.locator("textarea").fill("Hej Anna, jag tar över från min kollega.");
  await taken.locator("textarea").press("Enter");
  await residentSees(anna, "jag tar över från min kollega");
  const [row] = await sql(server, `SELECT staff FROM signaling_queue_entries WHERE room = '${anna.room}'`);
  assert.notEqual(row.staff, null);
});

test("staff offer times from the picker; the resident books one from the chat and finds it on My pages", async () => {
  const { anna, loser: staff } = shared;
  const panel = staff.page.locator(`.chat-panel[data-room="${anna.room}"]`);
  await panel.locator("button.show-times").click();
  const choices = panel.locator(".times input[type=checkbox]");
  await choices.first().waitFor();
  assert.ok((await choices.count()) >= 2, "free times to offer");
  await choices.nth(0).check();
  await choices.nth(1).check();
  await panel.locator("button.send-times").click();
  await panel.locator(".transcript li.note", { hasText: "Erbjudna tider:" }).waitFor();

  const offer = anna.page.locator("#chat-log li.offer");
  await offer.locator("button").first().waitFor();
  assert.equal(await offer.locator("button").count(), 2);
  await offer.locator("button").first().click();
  await offer.locator(".offer-result.success", { hasText: "Bokat:" }).waitFor();
  const bookingId = await offer.locator("ul[data-booked]").getAttribute("data-booked");
  assert.ok(bookingId, "booked");

  // The staff member closes the chat with its outcome: a time was booked.
  await panel.locator(".close select").selectOption("booked");
  await panel.locator("button.close-chat").click();
  await staff.page.locator(`.chat-panel[data-room="${anna.room}"][data-closed="true"]`).waitFor();
  await anna.page.locator("#chat-ended").waitFor();
  const ended = await sql(
    server,
    `SELECT body FROM signaling_events WHERE room = '${anna.room}' AND kind = 'ended'`,
  );
  assert.equal(ended.length, 1);
  assert.match(ended[0].body, /booked/, "the outcome is stored with the end of the chat");

  await anna.page.goto(`${server.url}/my`);
  await anna.page.locator(`li[data-booking="${bookingId}"]`).waitFor();
  await anna.page.locator(`a[href="/my/chats/${encodeURIComponent(anna.room)}"]`).waitFor();
  await staff.page.locator(`.chat-panel[data-room="${anna.room}"] button.dismiss-chat`).click();
  await anna.context.close();
});

test("staff start video from the chat: both are in the ad-hoc room, with frames through the relay", async () => {
  const { loser: staff } = shared;
  const resident = await openResidentChat("video.invanare@example.se", { name: "Vera Video", home: "2481" });
  await staff.page.locator(`#queue-list li[data-room="${resident.room}"] button`).click();
  const panel = staff.page.locator(`.chat-panel[data-room="${resident.room}"]`);
  await panel.waitFor();
  await resident.page.locator("#chat-state", { hasText: "Du chattar med en socialsekreterare." }).waitFor();

  const before = await relayedPackets(server, "client_to_peer");
  // The room opens in a new tab for the staff member; the resident's chat
  // page goes straight into it, without the waiting room.
  const [room] = await Promise.all([
    staff.context.waitForEvent("page"),
    resident.page.waitForURL((u) => u.pathname.startsWith("/meeting/adhoc/")),
    panel.locator("button.start-video").click(),
  ]);
  await room.waitForURL((u) => u.pathname.startsWith("/meeting/adhoc/"));
  assert.equal(new URL(room.url()).pathname, new URL(resident.page.url()).pathname, "the same room");
  await panel.locator(".transcript li.note a.video-room").waitFor();
  await remoteVideoPlays(room);
  await remoteVideoPlays(resident.page);
  await waitFor("media packets counted by the relay", async () => (await relayedPackets(server, "client_to_peer")) - before > 50);

  // The staff member ends the meeting; the chat stays in the console until
  // it is closed, which takes an outcome.
  await room.click("#end-meeting");
  await room.close();
  await panel.locator("button.close-chat").click();
  await panel.locator(".chat-state", { hasText: "Välj ett utfall innan du avslutar chatten." }).waitFor();
  assert.equal(await panel.locator(".close select").getAttribute("aria-invalid"), "true");
  await panel.locator(".close select").selectOption("resolved");
  await panel.locator("button.close-chat").click();
  await staff.page.locator(`.chat-panel[data-room="${resident.room}"][data-closed="true"]`).waitFor();
  const ended = await sql(server, `SELECT body FROM signaling_events WHERE room = '${resident.room}' AND kind = 'ended'`);
  assert.match(ended[0]?.body ?? "", /resolved/, "the outcome is stored with the end of the chat");
  await resident.page.goto(`${server.url}/chat/${SERVICE}`);
  await resident.page.locator("#chat-ended").waitFor();
  await panel.locator("button.dismiss-chat").click();
  await panel.waitFor({ state: "detached" });
  await resident.context.close();
});

test("when a social worker's tab closes, the chat returns to its place in the queue and a colleague picks it up", async () => {
  const { winner, loser } = shared;
  // Two residents of Lycksele wait; the first one's chat is taken.
  const first = await openResidentChat("ny.invanare@example.se", { name: "Nora Nyberg", home: "2481" });
  const second = await openResidentChat("leila@example.se");
  await winner.page.locator(`#queue-list li[data-room="${second.room}"]`).waitFor();
  assert.deepEqual(await queueRooms(winner.page), [first.room, second.room], "oldest first");
  await loser.page.locator(`#queue-list li[data-room="${first.room}"] button`).click();
  const panel = loser.page.locator(`.chat-panel[data-room="${first.room}"]`);
  await panel.waitFor();
  await panel.locator("textarea").fill("Hej, jag tittar på din fråga.");
  await panel.locator("textarea").press("Enter");
  await panel.locator('.transcript li[data-mine="true"]:not([data-pending])').waitFor();
  await waitFor("the queue without the taken chat", async () => (await queueRooms(winner.page)).length === 1);

  // The tab closes: the chat goes back, ahead of the one that came later.
  await loser.context.close();
  await waitFor("the chat back in the queue, in its place", async () => {
    const rooms = await queueRooms(winner.page);
    return rooms.length === 2 && rooms[0] === first.room && rooms[1] === second.room;
  });
  await first.page.locator("#queue-position", { hasText: "Du är nummer 1 i kön." }).waitFor();

  // A console opened now lists the chats that already wait, oldest first,
  // from the hub's one snapshot, and does not announce them as new.
  const late = await openConsole(LYCKSELE_1, { available: false });
  assert.deepEqual(await queueRooms(late.page), [first.room, second.room], "the snapshot, oldest first");
  assert.equal(Number((await late.page.getAttribute("#console", "data-beeps")) || 0), 0, "no sound for chats that were already waiting");
  await late.context.close();

  // A colleague picks it up and sees what was said.
  await winner.page.locator(`#queue-list li[data-room="${first.room}"] button`).click();
  const taken = winner.page.locator(`.chat-panel[data-room="${first.room}"]`);
  await taken.locator(".transcript li", { hasText: "jag tittar på din fråga" }).waitFor();
  await taken.locator("textarea").fill("Jag tar över. Vad gäller det?");
  await taken.locator("textarea").press("Enter");
  await residentSees(first, "Jag tar över. Vad gäller det?");
  for (const c of [first, second]) await c.context.close();
});

test("the console by keyboard alone, right to left in Arabic on a 375 px phone, and axe-clean in sv and ar", async () => {
  const { winner } = shared;
  await assertTranslated(winner.page, "the console in sv");
  await assertAccessible(winner.page, "the console with chats (sv)");

  const phone = { width: 375, height: 740 };
  const mala = await openConsole(MALA, { locale: "ar", viewport: phone });
  assert.equal(await mala.page.getAttribute("html", "dir"), "rtl");
  const resident = await openResidentChat("ny.mala@example.se", { name: "Malin Mark", home: "2418" });
  const entry = mala.page.locator(`#queue-list li[data-room="${resident.room}"]`);
  await entry.waitFor();
  assert.match(await entry.innerText(), /بلدية السكن Malå/);
  await assertTranslated(mala.page, "the console in ar");
  await assertAccessible(mala.page, "the console with a waiting chat (ar, 375 px)");

  // Tab to the claim button and take the chat with Enter; focus lands on
  // the chat, and the message box is a Tab or a few away.
  const focused = () => mala.page.evaluate(() => document.activeElement?.outerHTML.slice(0, 80));
  async function tabTo(predicate, what, arg, limit = 80) {
    for (let i = 0; i < limit; i += 1) {
      await mala.page.keyboard.press("Tab");
      if (await mala.page.evaluate(predicate, arg)) return;
    }
    throw new Error(`Tab never reached ${what}; focus is on ${await focused()}`);
  }
  await mala.page.locator("#page-title").focus();
  await tabTo((room) => document.activeElement?.closest(`#queue-list li[data-room="${room}"]`) !== null, "the claim button", resident.room);
  await mala.page.keyboard.press("Enter");
  const panel = mala.page.locator(`.chat-panel[data-room="${resident.room}"]`);
  await panel.waitFor();
  await waitFor("focus on the taken chat", async () =>
    mala.page.evaluate(() => document.activeElement?.classList.contains("chat-title")),
  );
  await tabTo(() => document.activeElement?.tagName === "TEXTAREA", "the message box");
  await mala.page.keyboard.type("مرحبا، كيف يمكنني مساعدتك؟");
  await mala.page.keyboard.press("Enter");
  await residentSees(resident, "مرحبا، كيف يمكنني مساعدتك؟");

  const { scroll, width } = await mala.page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    width: document.documentElement.clientWidth,
  }));
  assert.ok(scroll <= width, `the console is ${scroll}px wide in a ${width}px viewport`);
  await assertAccessible(mala.page, "the console with a chat (ar, 375 px)");
  shared.mala = mala;
  shared.malaResident = resident;
});

test("a message left with the offline form is in the console of those who may handle it, until marked handled", async () => {
  // Nobody who may answer Aino (Sorsele; Storuman by agreement) is online,
  // so her chat page offers the form.
  const aino = await openResidentChat("aino@example.se");
  await aino.page.locator("#chat-offline").waitFor();
  await aino.page.fill("#offline-message", "Jag behöver prata med någon om min ekonomi.");
  await aino.page.fill("#offline-phone", "070-765 43 21");
  await aino.page.click("#offline-send");
  await aino.page.locator("#offline-done").waitFor();
  await aino.context.close();

  const storuman = await openConsole("handlaggare.storuman@kontakt.demo", { available: false });
  const item = storuman.page.locator("#offline-list li", { hasText: "Jag behöver prata med någon om min ekonomi." });
  await item.waitFor();
  const shown = await item.innerText();
  assert.match(shown, /Ekonomiskt bistånd/);
  assert.match(shown, /070-765 43 21/);
  assert.match(shown, /Sorsele/);
  await assertAccessible(storuman.page, "the console with a message left (sv)");
  await item.locator("button").click();
  await storuman.page.locator("#offline-list li[data-handled='true']", { hasText: "min ekonomi" }).waitFor();
  // Reading it was audit-logged, and it stays handled.
  const [audit] = await sql(server, "SELECT count(*) AS n FROM audit_log WHERE action LIKE '%offline%'");
  assert.ok(audit.n >= 1, "the read is in the audit log");
  await storuman.page.reload();
  await storuman.page.locator("#offline-list li[data-handled='true']", { hasText: "min ekonomi" }).waitFor();

  // Helsingborg may not handle it and does not see it.
  const helsingborg = await openConsole(HELSINGBORG, { available: false });
  await helsingborg.page.locator("#console[data-offline-loaded='true']").waitFor();
  assert.equal(await helsingborg.page.locator("#offline-list li", { hasText: "min ekonomi" }).count(), 0);
  for (const c of [storuman, helsingborg]) await c.context.close();
});

test("a knock in the waiting room of the staff member's meeting shows in the console, with a link to the meeting", async () => {
  const context = await browser.newContext({ locale: "sv-SE" });
  await context.grantPermissions(["camera", "microphone"], { origin: server.url });
  const page = await context.newPage();
  const hrefs = await searchTimes(page, server, { service: "stod-till-anhoriga", home: "2481" });
  await signInResident(page, server, "leila@example.se");
  await page.waitForURL((u) => u.pathname === "/my");
  await page.goto(new URL(hrefs[0], server.url).href);
  await Promise.all([page.waitForURL((u) => u.pathname === "/my"), page.click("#confirm-booking")]);
  const bookingId = new URL(page.url()).searchParams.get("booked");
  const [{ email }] = await sql(
    server,
    `SELECT s.email FROM bookings b JOIN staff s ON s.id = b.staff_id WHERE b.id = '${bookingId}'`,
  );
  const staff = await openConsole(email, { available: false });
  await page.goto(`${server.url}/join/${bookingId}`);
  const knock = staff.page.locator("#knock-list li", { has: staff.page.locator(`a[href="/join/${bookingId}"]`) });
  await knock.waitFor();
  assert.match(await staff.page.locator("#console-alert").innerText(), /väntar i väntrummet/);
  await knock.locator("button").click();
  await knock.waitFor({ state: "detached" });
  for (const c of [staff.context, context]) await c.close();
});
