// The resident's whole journey through the pages, on the real server: search,
// pick a time, sign in by the mailed link with the choice kept, confirm, see
// the booking on My pages with who performs it and under which rule, cancel
// it; a first-time sign-in; managing a booking by its mail token; and the
// staff day view, scheduler load and admin audit log for the booked meeting.

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
  assertTranslated,
} from "./helpers.mjs";


useServerAndBrowser();

test("a resident searches, signs in by link with the choice kept, books, sees and cancels the booking", async () => {
  const context = await browser.newContext({ locale: "sv-SE" });
  const page = await context.newPage();
  // Anna lives in Malå; Lycksele may hold the meeting under an agreement.
  const hrefs = await searchTimes(page, server, { service: "ekonomiskt-bistand", home: "2418" });
  await assertTranslated(page, "the start page with times");
  const zoneNote = await page.locator(".times .zone").innerText();
  assert.match(zoneNote, /svensk tid/, "the zone in plain words, not its technical id");

  const chosen = new URL(hrefs[0], server.url);
  const startsAt = chosen.searchParams.get("starts_at");
  await page.click("a.slot >> nth=0");
  await page.waitForURL((u) => u.pathname === "/sign-in");
  assert.equal(new URL(page.url()).searchParams.get("next"), chosen.pathname + chosen.search);
  await signInResident(page, server, "anna@example.se");

  // The link brings Anna back to the time she chose.
  await page.waitForURL((u) => u.pathname === "/book");
  assert.equal(new URL(page.url()).searchParams.get("starts_at"), startsAt);
  await assertTranslated(page, "the confirm page");
  assert.match(await page.locator("time").first().getAttribute("datetime"), new RegExp(startsAt.slice(0, 16)));
  await Promise.all([page.waitForURL((u) => u.pathname === "/my"), page.click("#confirm-booking")]);

  const booked = new URL(page.url()).searchParams.get("booked");
  assert.ok(booked, "My pages names the new booking");
  await assertTranslated(page, "My pages");
  const card = page.locator(`li[data-booking="${booked}"]`);
  await card.waitFor();
  assert.equal(await card.locator(".status").innerText(), "Bokad");
  assert.match(await card.innerText(), /Ekonomiskt bistånd: första samtal/);
  assert.match(await card.innerText(), /\(svensk tid\)/);
  // Who performs it and under which rule, as stored by the booking.
  const [row] = await sql(server, `SELECT performed_by, rule, agreement_id FROM bookings WHERE id = '${booked}'`);
  const facts = await card.locator("dl").innerText();
  assert.match(facts, /Malå/, "performed for the home municipality");
  if (row.rule === "agreement") {
    assert.equal(row.performed_by, "2481");
    assert.match(facts, /Lycksele/);
    assert.match(facts, new RegExp(`Avtal mellan kommunerna \\(${row.agreement_id}\\)`));
  } else {
    assert.equal(row.rule, "home");
    assert.match(facts, /Hemkommunen själv/);
  }
  // The focus moved to the confirmation message.
  assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("role")), "status");

  // Move it to another free time from My pages.
  const before = await card.locator("dd time").getAttribute("datetime");
  await Promise.all([
    page.waitForURL((u) => u.pathname === `/my/bookings/${booked}/reschedule`),
    card.locator("a[href$='/reschedule']").click(),
  ]);
  await assertTranslated(page, "the reschedule page");
  await page.locator("form.picker input[type=radio]").nth(1).check();
  await Promise.all([page.waitForURL((u) => u.searchParams.has("moved")), page.click("form.picker button[type=submit]")]);
  const moved = await page.locator(`li[data-booking="${booked}"] dd time`).getAttribute("datetime");
  assert.notEqual(moved, before, "the booking moved");
  const [stored] = await sql(server, `SELECT starts_at FROM bookings WHERE id = '${booked}'`);
  assert.equal(new Date(stored.starts_at * 1000).getTime(), new Date(moved).getTime());

  await Promise.all([
    page.waitForURL((u) => u.searchParams.has("cancelled")),
    card.locator("form[action$='/cancel'] button").click(),
  ]);
  assert.equal(await page.locator(`li[data-booking="${booked}"] .status`).innerText(), "Avbokad");
  const [after] = await sql(server, `SELECT status FROM bookings WHERE id = '${booked}'`);
  assert.equal(after.status, "cancelled");
  await context.close();
});

test("a sign-in link works once, and a form post without the CSRF value is refused", async () => {
  const context = await browser.newContext({ locale: "sv-SE" });
  const page = await context.newPage();
  await signInResident(page, server, "erik@example.se");
  await page.waitForURL((u) => u.pathname === "/my");
  const { token } = await outboxPayload(server, "sign_in_link", "erik@example.se");
  const again = await page.goto(`${server.url}/auth/resident/callback?token=${encodeURIComponent(token)}`);
  assert.equal(again.status(), 401);
  assert.match(await page.locator("h1").innerText(), /Länken fungerar inte/);

  const forged = await context.request.post(`${server.url}/sign-out`, { form: { csrf: "wrong" }, maxRedirects: 0 });
  assert.equal(forged.status(), 403);
  const noField = await context.request.post(`${server.url}/book`, {
    form: { csrf: "", service: "ekonomiskt-bistand", starts_at: "2030-01-07T09:00:00+01:00" },
    maxRedirects: 0,
  });
  assert.equal(noField.status(), 403, "a booking form without the session's CSRF value");
  // Times found for another home municipality are booked for the account's.
  const hrefs = await searchTimes(page, server, { service: "stod-till-anhoriga", home: "2418" });
  await page.goto(new URL(hrefs[0], server.url).href);
  assert.match(await page.locator("main .note").innerText(), /folkbokförd i Helsingborg/);
  assert.match(await page.locator("dl.facts").innerText(), /Helsingborg/);
  // The session still works: the forged posts changed nothing.
  await page.goto(`${server.url}/my`);
  assert.equal(new URL(page.url()).pathname, "/my");
  await context.close();
});

test("a first-time resident registers with name and home municipality and reaches My pages", async () => {
  const context = await browser.newContext({ locale: "sv-SE" });
  const page = await context.newPage();
  await signInResident(page, server, "ny.person@example.se", { name: "Ny Person", home: "2422" });
  await page.waitForURL((u) => u.pathname === "/my");
  assert.match(await page.locator("h1").innerText(), /Ny Person/);
  assert.match(await page.locator("main").innerText(), /Du har inga bokningar/);
  // Sign out with the real button; My pages then asks for sign-in again.
  await Promise.all([page.waitForURL(`${server.url}/`), page.click("form[action='/sign-out'] button")]);
  await page.goto(`${server.url}/my`);
  assert.equal(new URL(page.url()).pathname, "/sign-in");
  await context.close();
});

test("a booking is moved and cancelled from its mail link without signing in; staff, scheduler and admin see it", async () => {
  const resident = await browser.newContext({ locale: "sv-SE" });
  const page = await resident.newPage();
  const hrefs = await searchTimes(page, server, { service: "stod-till-anhoriga", home: "2481" });
  await signInResident(page, server, "leila@example.se");
  await page.waitForURL((u) => u.pathname === "/my");
  await page.goto(new URL(hrefs[0], server.url).href);
  await Promise.all([page.waitForURL((u) => u.pathname === "/my"), page.click("#confirm-booking")]);
  const bookingId = new URL(page.url()).searchParams.get("booked");
  await resident.close();

  // The staff member who got the meeting sees Leila in the day view.
  const [meeting] = await sql(
    server,
    `SELECT s.email, b.starts_at FROM bookings b JOIN staff s ON s.id = b.staff_id WHERE b.id = '${bookingId}'`,
  );
  const day = new Date(meeting.starts_at * 1000).toLocaleDateString("sv-SE", { timeZone: "Europe/Stockholm" });
  const staff = await browser.newContext({ locale: "sv-SE" });
  const staffPage = await staff.newPage();
  await signInStaff(staffPage, server, meeting.email);
  await staffPage.goto(`${server.url}/staff?date=${day}`);
  const table = await staffPage.locator("table.meetings").innerText();
  assert.match(table, /Leila Haddad/);
  assert.match(table, /Stöd till anhöriga/);
  assert.match(table, /Lycksele/, "performed for Leila's home municipality");
  const reads = await sql(
    server,
    `SELECT count(*) AS n FROM audit_log WHERE action = 'booking.read' AND resident_id IS NOT NULL AND subject LIKE '%${bookingId}%'`,
  );
  assert.ok(reads[0].n >= 1, "the staff read was audit-logged");
  // Plain staff have no scheduler view.
  const refused = await staffPage.goto(`${server.url}/scheduler`);
  assert.equal(refused.status(), 403);
  await staff.close();

  const admin = await browser.newContext({ locale: "sv-SE" });
  const adminPage = await admin.newPage();
  await signInStaff(adminPage, server, "admin.lycksele@kontakt.demo");
  await adminPage.goto(`${server.url}/scheduler`);
  const loadTable = await adminPage.locator("table").innerText();
  assert.match(loadTable, /Lycksele/);
  assert.ok((await adminPage.locator(".bars li").count()) >= 9, "a bar per municipality");
  await adminPage.goto(`${server.url}/admin/audit`);
  assert.match(await adminPage.locator("table.audit").innerText(), /booking\.read/);
  await admin.close();

  // The manage link from the confirmation mail.
  const { manage_token: manageToken } = await outboxPayload(server, "booking_confirmed", "leila@example.se");
  const anonymous = await browser.newContext({ locale: "sv-SE" });
  const manage = await anonymous.newPage();
  await manage.goto(`${server.url}/b/${manageToken}`);
  assert.equal(await manage.locator(".status").innerText(), "Bokad");
  const before = await manage.locator("dd time").getAttribute("datetime");
  await manage.locator("form.picker input[type=radio]").nth(1).check();
  await Promise.all([manage.waitForURL((u) => u.searchParams.get("done") === "moved"), manage.click("form.picker button[type=submit]")]);
  const moved = await manage.locator("dd time").getAttribute("datetime");
  assert.notEqual(moved, before, "the booking moved");
  // Cancelling answers with the cancelled booking and spends the link.
  await Promise.all([
    manage.waitForURL((u) => u.pathname.endsWith("/cancel")),
    manage.click("form[action$='/cancel'] button"),
  ]);
  assert.equal(await manage.locator(".status").innerText(), "Avbokad");
  const spent = await manage.goto(`${server.url}/b/${manageToken}`);
  assert.equal(spent.status(), 404);
  assert.match(await manage.locator("h1").innerText(), /Länken fungerar inte längre/);
  await anonymous.close();
});
