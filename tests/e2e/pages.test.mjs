// Every page in all four languages through axe-core, right-to-left Arabic
// with Latin names kept in their logical order, the language switcher, a phone-sized viewport, keyboard-only booking, and
// the public legal map.

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
  assertAccessible,
  assertTranslated,
} from "./helpers.mjs";

/** Addresses of every kind of page, filled in by the first test. */
const pages = { resident: [], staff: [], admin: [], anonymous: [] };
let residentState;
let adminState;

useServerAndBrowser();

test("setup: a booked resident and a signed-in admin give every page something to show", async () => {
  const context = await browser.newContext({ locale: "sv-SE" });
  const page = await context.newPage();
  const hrefs = await searchTimes(page, server, { service: "missbruk-beroende", home: "2422" });
  const search = page.url().slice(server.url.length);
  await signInResident(page, server, "aino@example.se");
  await page.goto(new URL(hrefs[0], server.url).href);
  const confirm = page.url().slice(server.url.length);
  await Promise.all([page.waitForURL((u) => u.pathname === "/my"), page.click("#confirm-booking")]);
  const id = new URL(page.url()).searchParams.get("booked");
  const { manage_token: token } = await outboxPayload(server, "booking_confirmed", "aino@example.se");
  // A chat the resident opens, writes in and closes, over the real socket,
  // so that My pages lists it and its transcript has something to show.
  const room = await page.evaluate(async () => {
    const csrf = document.querySelector("input[name=csrf]").value;
    const answer = await fetch("/api/ws/ticket", { method: "POST", headers: { "x-csrf-token": csrf } });
    const { ticket } = await answer.json();
    const socket = new WebSocket(`${location.origin.replace(/^http/, "ws")}/ws?ticket=${ticket}`);
    const send = (frame) => socket.send(JSON.stringify({ v: 1, ...frame }));
    const seen = [];
    const done = new Promise((resolve, reject) => {
      let room;
      socket.onerror = () => reject(new Error("the socket failed"));
      socket.onmessage = ({ data }) => {
        const frame = JSON.parse(data);
        seen.push(frame.type === "event" ? `event ${frame.event.kind}` : frame.type);
        if (frame.type === "welcome") send({ type: "queue.open", service: "ekonomiskt-bistand" });
        else if (frame.type === "joined") {
          room = frame.room;
          send({ type: "chat.send", room, client_id: "e2e-1", text: "Hej, jag undrar över ansökan" });
        } else if (frame.type === "chat.stored") send({ type: "chat.close", room });
        // A chat nobody picked up closes without an `ended` event.
        else if (frame.type === "room.closed" && frame.room === room) resolve(room);
        else if (frame.type === "error") reject(new Error(data));
      };
    });
    const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error(`no answer in 10 s; seen: ${seen.join(", ")}`)), 10_000));
    try {
      return await Promise.race([done, timeout]);
    } finally {
      socket.close();
    }
  });
  await page.goto(`${server.url}/my`);
  const transcript = await page.getAttribute(`a[href="/my/chats/${encodeURIComponent(room)}"]`, "href");
  residentState = await context.storageState();
  await context.close();
  pages.anonymous.push("/", search, "/sign-in", "/legal-map", "/staff/login", `/b/${token}`);
  pages.resident.push(confirm, "/my", `/my?booked=${id}`, `/my/bookings/${id}/reschedule`, transcript, `/join/${id}`);

  const admin = await browser.newContext({ locale: "sv-SE" });
  const adminPage = await admin.newPage();
  await signInStaff(adminPage, server, "admin.lycksele@kontakt.demo");
  adminState = await admin.storageState();
  await admin.close();
  pages.admin.push("/staff", "/scheduler", "/admin/audit");
});

for (const lang of ["sv", "en", "fi", "ar"]) {
  test(`axe-core finds no violations on any page in ${lang}`, async () => {
    const groups = [
      [pages.anonymous, undefined],
      [pages.resident, residentState],
      [pages.admin, adminState],
    ];
    let checked = 0;
    for (const [list, storageState] of groups) {
      const context = await browser.newContext({ storageState, locale: lang === "sv" ? "sv-SE" : lang });
      const page = await context.newPage();
      for (const address of list) {
        const sep = address.includes("?") ? "&" : "?";
        const response = await page.goto(`${server.url}${address}${sep}lang=${lang}`);
        assert.equal(response.status(), 200, `${address} answers 200`);
        assert.equal(await page.getAttribute("html", "lang"), lang);
        assert.equal(await page.getAttribute("html", "dir"), lang === "ar" ? "rtl" : "ltr", `${address} direction`);
        await assertTranslated(page, `${address} in ${lang}`);
        await assertAccessible(page, `${address} in ${lang}`);
        checked += 1;
      }
      await context.close();
    }
    assert.equal(checked, 15);
  });
}

// Names of people and municipalities are Latin script inside Arabic text.
// Each is isolated in a <bdi>, so that "name، municipality" is not reordered
// into one left-to-right run: in a right-to-left line, what comes first in
// the text must stand to the right of what follows it.
test("in Arabic, Latin names and municipalities read in their logical order", async () => {
  for (const [address, storageState, names] of [
    ["/staff", adminState, ["Lycksele"]],
    ["/my", residentState, ["Aino Korhonen"]],
  ]) {
    const context = await browser.newContext({ storageState, locale: "ar" });
    const page = await context.newPage();
    const response = await page.goto(`${server.url}${address}?lang=ar`);
    assert.equal(response.status(), 200);
    const lines = await page.evaluate(() => {
      const blocks = new Set([...document.querySelectorAll("bdi")].map((b) => b.parentElement));
      const out = [];
      for (const block of blocks) {
        // Visually hidden text has no layout to compare.
        if (block.closest(".visually-hidden")) continue;
        const pieces = [];
        for (const node of block.childNodes) {
          const text = node.textContent.trim();
          // Separators alone ("، ", ": ") take the direction around them.
          if (!text || /^[\s،,:;.()–-]+$/.test(text)) continue;
          const range = document.createRange();
          range.selectNodeContents(node);
          const rect = range.getBoundingClientRect();
          pieces.push({ text, left: rect.left, right: rect.right, bdi: node.nodeName === "BDI" });
        }
        out.push({ block: block.outerHTML.slice(0, 300), pieces });
      }
      return out;
    });
    const isolated = lines.flatMap((l) => l.pieces.filter((p) => p.bdi).map((p) => p.text));
    for (const name of names) {
      assert.ok(
        isolated.some((t) => t.includes(name)),
        `${address}: ${name} is isolated in a <bdi>; isolated: ${JSON.stringify(isolated)}`,
      );
    }
    for (const { block, pieces } of lines) {
      for (let i = 1; i < pieces.length; i += 1) {
        assert.ok(
          pieces[i].right <= pieces[i - 1].left + 1,
          `${address}: "${pieces[i].text}" should stand left of "${pieces[i - 1].text}" in ${block}`,
        );
      }
    }
    // The staff member's own line holds two isolated names, in order.
    if (address === "/staff") {
      const who = lines.find((l) => l.pieces.filter((p) => p.bdi).length === 2);
      assert.ok(who, `the staff line "name، municipality" has two isolates: ${JSON.stringify(lines)}`);
      assert.ok(who.pieces[1].text.includes("Lycksele"), JSON.stringify(who));
    }
    await context.close();
  }
});

test("the sign-in sent page and an error page pass axe-core too", async () => {
  const context = await browser.newContext({ locale: "sv-SE" });
  const page = await context.newPage();
  for (const lang of ["sv", "en", "fi", "ar"]) {
    await page.goto(`${server.url}/sign-in?lang=${lang}`);
    await page.fill("#email", "nobody@example.se");
    await page.click("form[action='/sign-in'] button[type=submit]");
    await page.locator("p[role=status]").waitFor();
    await assertAccessible(page, `the sent page in ${lang}`);
    const missing = await page.goto(`${server.url}/b/not-a-token?lang=${lang}`);
    assert.equal(missing.status(), 404);
    assert.equal(await page.getAttribute("html", "dir"), lang === "ar" ? "rtl" : "ltr");
    await assertAccessible(page, `the not-found page in ${lang}`);
  }
  await context.close();
});

test("the language switcher sets a cookie that later pages follow, Arabic right to left", async () => {
  const context = await browser.newContext({ locale: "sv-SE" });
  const page = await context.newPage();
  await page.goto(`${server.url}/legal-map`);
  assert.equal(await page.getAttribute("html", "lang"), "sv");
  await Promise.all([page.waitForURL(`${server.url}/legal-map`), page.click("nav.languages a[hreflang=ar]")]);
  assert.equal(await page.getAttribute("html", "dir"), "rtl");
  assert.equal(await page.locator("h1").innerText(), "الخريطة القانونية");
  const cookies = await context.cookies();
  assert.equal(cookies.find((c) => c.name === "lang")?.value, "ar");
  await page.goto(`${server.url}/`);
  assert.equal(await page.getAttribute("html", "lang"), "ar");
  assert.equal(await page.getAttribute("html", "dir"), "rtl");
  await Promise.all([page.waitForURL(`${server.url}/`), page.click("nav.languages a[hreflang=fi]")]);
  assert.equal(await page.getAttribute("html", "dir"), "ltr");
  assert.equal(await page.locator("h1").innerText(), "Varaa aika sosiaalipalveluihin");
  await context.close();
});

test("the legal map shows each step's rule with its basis and only the agreements in force", async () => {
  const context = await browser.newContext({ locale: "sv-SE" });
  const page = await context.newPage();
  await page.goto(`${server.url}/legal-map`);
  const tables = page.locator("table");
  assert.equal(await tables.count(), 6, "one table per service: the five of the demo and general, \"I don't know\"");
  const money = page.locator("table", { has: page.locator("caption", { hasText: "Ekonomiskt bistånd" }) });
  const rows = await money.locator("tbody tr").allInnerTexts();
  assert.equal(rows.length, 6, "six steps");
  assert.match(rows[0], /Information\s+Öppen\s+.*SoL 3 kap/);
  assert.match(rows[2], /Möte\s+Avtal\s+.*9 kap\. 37 §/);
  assert.match(rows[4], /Beslut\s+Endast hemkommunen/);
  const agreements = await page.locator("section.agreement").allInnerTexts();
  const text = agreements.join("\n");
  assert.match(text, /avtal-lycksele-mala/);
  assert.match(text, /Lycksele → Malå/);
  assert.doesNotMatch(text, /avtal-lycksele-norsjo-2024/, "an expired agreement is not in force");
  await context.close();
});

test("on a 390×844 phone no page scrolls sideways", async () => {
  for (const [list, storageState] of [
    [pages.anonymous, undefined],
    [pages.resident, residentState],
    [pages.admin, adminState],
  ]) {
    for (const lang of ["sv", "ar"]) {
      const context = await browser.newContext({
        storageState,
        locale: "sv-SE",
        viewport: { width: 390, height: 844 },
        isMobile: true,
        hasTouch: true,
        deviceScaleFactor: 2,
      });
      const page = await context.newPage();
      for (const address of list) {
        const sep = address.includes("?") ? "&" : "?";
        await page.goto(`${server.url}${address}${sep}lang=${lang}`);
        const { scroll, width } = await page.evaluate(() => ({
          scroll: document.documentElement.scrollWidth,
          width: document.documentElement.clientWidth,
        }));
        assert.ok(scroll <= width, `${address} in ${lang} is ${scroll}px wide in a ${width}px viewport`);
      }
      await context.close();
    }
  }
});

test("by keyboard alone: skip link, pick a time, confirm the booking", async () => {
  const context = await browser.newContext({ locale: "sv-SE" });
  const page = await context.newPage();
  await signInResident(page, server, "anna@example.se");
  await page.waitForURL((u) => u.pathname === "/my");

  await page.goto(`${server.url}/legal-map`);
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.className), "skip");
  assert.ok(await page.locator("a.skip").isVisible(), "the skip link shows when focused");
  await page.keyboard.press("Enter");
  assert.equal(await page.evaluate(() => document.activeElement.id), "main");

  // The search form, driven by keys: Tab to each select and type to choose.
  await page.goto(`${server.url}/`);
  const focused = () => page.evaluate(() => document.activeElement?.id || document.activeElement?.className);
  async function tabTo(predicate, what, limit = 60) {
    for (let i = 0; i < limit; i += 1) {
      await page.keyboard.press("Tab");
      if (await page.evaluate(predicate)) return;
    }
    throw new Error(`Tab never reached ${what}; focus is on ${await focused()}`);
  }
  await tabTo(() => document.activeElement?.id === "service", "the service select");
  await page.keyboard.type("Stöd");
  await tabTo(() => document.activeElement?.id === "home", "the home select");
  await page.keyboard.type("Malå");
  await tabTo(() => document.activeElement?.matches("form.search button"), "the search button");
  await Promise.all([page.waitForURL(/service=stod-till-anhoriga/), page.keyboard.press("Enter")]);
  assert.match(page.url(), /home=2418/);
  // Focus moved to the list of times; the next Tab reaches the first time.
  assert.equal(await page.evaluate(() => document.activeElement?.id), "times-title");
  await tabTo(() => document.activeElement?.matches("a.slot"), "a free time");
  await Promise.all([page.waitForURL((u) => u.pathname === "/book"), page.keyboard.press("Enter")]);
  await tabTo(() => document.activeElement?.id === "confirm-booking", "the book button");
  await Promise.all([page.waitForURL((u) => u.pathname === "/my"), page.keyboard.press("Enter")]);
  assert.ok(new URL(page.url()).searchParams.get("booked"), "booked by keyboard");
  assert.match(await page.locator(".success").innerText(), /Tiden är bokad/);
  await context.close();
});
