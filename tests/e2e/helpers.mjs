// Shared pieces of the browser tests: start the real `kontakt` binary on a
// free port with its own data directory, launch Debian's Chromium through
// playwright-core, sign people in through the real pages, and run axe-core.
//
// The sign-in link is read from the server's SQLite outbox table with the
// `sqlite3` command-line tool: the link only ever travels by mail, the outbox
// row is written in the same transaction as the link, and reading it needs no
// mail worker and no native npm module.

import { spawn, execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { promisify } from "node:util";
import assert from "node:assert/strict";
import { before, after } from "node:test";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "..", "..");
const require = createRequire(import.meta.url);
const run = promisify(execFile);

/** The demo staff password, seeded by `booking::seed`. */
export const DEMO_PASSWORD = "kontakt-demo";

/** The arguments the browser is launched with. */
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--use-fake-ui-for-media-stream",
  "--use-fake-device-for-media-stream",
];

/** A free TCP port on the loopback interface. */
async function freePort() {
  return await new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Polls `check` until it returns true or `ms` pass. */
export async function waitFor(what, check, ms = 20_000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

// The test file's server and browser, which all its tests share: started
// before its first test by `useServerAndBrowser` and stopped after its last.
// Each test file runs in a process of its own, so each has its own.
export let server;
export let browser;

// Registers the file's `before` and `after` hooks for `server` and
// `browser`. `beforeClosing` closes what the file's tests left open (their
// browser contexts) before the browser goes.
export function useServerAndBrowser({ beforeClosing } = {}) {
  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
  });
  after(async () => {
    await beforeClosing?.();
    await browser?.close();
    await server?.stop();
  });
}

/**
 * Starts `target/debug/kontakt` (or $KONTAKT_BIN) with a fresh data
 * directory and SQLite database, and waits until `/healthz` answers.
 * `env` adds or overrides settings (`KONTAKT_...`); a value of `null`
 * leaves a default setting out.
 */
export async function startServer({ env: extra = {} } = {}) {
  const port = await freePort();
  const metricsPort = await freePort();
  const dataDir = await mkdtemp(path.join(tmpdir(), "kontakt-e2e-"));
  const url = `http://127.0.0.1:${port}`;
  const bin =
    process.env.KONTAKT_BIN ??
    path.join(process.env.CARGO_TARGET_DIR ?? path.join(repo, "target"), "debug", "kontakt");
  const env = {
    ...process.env,
    KONTAKT_LISTEN: `127.0.0.1:${port}`,
    KONTAKT_PUBLIC_URL: url,
    KONTAKT_DATA_DIR: dataDir,
    DATABASE_URL: `sqlite://${dataDir}/kontakt.db?mode=rwc`,
    KONTAKT_JWT_SECRET: "e2e-secret-that-is-long-enough-for-hs256-signing",
    KONTAKT_DEMO: "true",
    // Every test signs in several times from 127.0.0.1; the limit itself is
    // covered by the API tests.
    KONTAKT_SIGN_IN_PER_MINUTE: "1000",
    // Metrics are served apart from the public port.
    KONTAKT_METRICS_LISTEN: `127.0.0.1:${metricsPort}`,
    // The embedded TURN relay on ports the kernel picks, so that a server
    // left over on 3478 cannot make this one fail to start.
    KONTAKT_RELAY__LISTEN_UDP: "127.0.0.1:0",
    KONTAKT_RELAY__LISTEN_TCP: "127.0.0.1:0",
    RUST_LOG: process.env.RUST_LOG ?? "warn",
  };
  for (const [key, value] of Object.entries(extra)) {
    if (value === null) delete env[key];
    else env[key] = value;
  }
  // KONTAKT_BIN names the binary for this script; kontakt would read it as
  // a setting called `bin` and refuse to start on an unknown key.
  delete env.KONTAKT_BIN;
  const child = spawn(bin, ["serve"], { cwd: dataDir, env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  let exited = null;
  child.on("exit", (code, signal) => (exited = { code, signal }));
  await waitFor("the server's /healthz", async () => {
    if (exited) {
      throw new Error(`kontakt exited early (${JSON.stringify(exited)}):\n${output}`);
    }
    const res = await fetch(`${url}/healthz`);
    return res.ok;
  }).catch((e) => {
    child.kill("SIGKILL");
    throw new Error(`${e.message}\n--- server output ---\n${output}`);
  });
  return {
    url,
    metricsUrl: `http://127.0.0.1:${metricsPort}/metrics`,
    dataDir,
    db: path.join(dataDir, "kontakt.db"),
    output: () => output,
    async stop() {
      if (!exited) {
        const gone = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
        await gone;
        clearTimeout(timer);
      }
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** Launches Chromium; Playwright gives it a fresh temporary user-data-dir. */
export async function launchBrowser() {
  return await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
  });
}

/** One row of the server's database, through the `sqlite3` tool. */
export async function sql(server, query) {
  const { stdout } = await run("sqlite3", ["-json", server.db, query]);
  return stdout.trim() ? JSON.parse(stdout) : [];
}

/** The newest outbox payload of `kind` for `email`. */
export async function outboxPayload(server, kind, email) {
  const quoted = email.toLowerCase().replaceAll("'", "''");
  const rows = await sql(
    server,
    `SELECT payload FROM outbox WHERE kind = '${kind}' AND lower(recipient) = '${quoted}' ORDER BY created_at DESC, rowid DESC LIMIT 1`,
  );
  assert.equal(rows.length, 1, `a ${kind} mail to ${email} in the outbox`);
  return JSON.parse(rows[0].payload);
}

/**
 * Signs a resident in through the pages: the sign-in form, then the link
 * from the outbox. Fills in name and home municipality when given (a first
 * sign-in). Leaves the page wherever the link leads.
 */
export async function signInResident(page, server, email, { name, home } = {}) {
  if (!new URL(page.url()).pathname.startsWith("/sign-in")) {
    await page.goto(`${server.url}/sign-in`);
  }
  await page.fill("#email", email);
  if (name) await page.fill("#name", name);
  if (home) await page.selectOption("#home", home);
  await Promise.all([page.waitForURL((u) => u.pathname === "/sign-in"), page.click("form[action='/sign-in'] button[type=submit]")]);
  await page.locator("p[role=status]").waitFor();
  // The server answers every sign-in request alike and leaves the link to
  // its mail worker, so the link appears in the outbox a moment later.
  await waitFor(`a sign-in link for ${email}`, async () => {
    const quoted = email.toLowerCase().replaceAll("'", "''");
    const rows = await sql(server, `SELECT 1 FROM outbox WHERE kind = 'sign_in_link' AND lower(recipient) = '${quoted}'`);
    return rows.length > 0;
  });
  const { token } = await outboxPayload(server, "sign_in_link", email);
  await page.goto(`${server.url}/auth/resident/callback?token=${encodeURIComponent(token)}`);
}

/** Signs a staff member in through `/staff/login`. */
export async function signInStaff(page, server, email) {
  await page.goto(`${server.url}/staff/login`);
  await page.fill("#email", email);
  await page.fill("#password", DEMO_PASSWORD);
  await Promise.all([page.waitForURL(`${server.url}/staff`), page.click("form button[type=submit]")]);
}

/** Runs axe-core on the page and fails with a readable list of violations. */
export async function assertAccessible(page, label) {
  // Evaluated rather than added as a <script> tag: the pages' policy
  // refuses inline scripts, and rightly so.
  await page.evaluate(await readFile(require.resolve("axe-core/axe.min.js"), "utf8"));
  const violations = await page.evaluate(async () => {
    const result = await globalThis.axe.run(document, { resultTypes: ["violations"] });
    return result.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ") + " :: " + n.failureSummary),
    }));
  });
  assert.deepEqual(violations, [], `axe violations on ${label}:\n${JSON.stringify(violations, null, 2)}`);
  return violations;
}

/** Asserts that no translation key leaked into the page as text. */
export async function assertTranslated(page, label) {
  const text = await page.locator("body").innerText();
  const leaked = text.match(/\b(page|error|service)\.[a-z_]+(\.[a-z_0-9]+)*/g);
  assert.equal(leaked, null, `untranslated keys on ${label}: ${leaked}`);
}

/**
 * Searches for free times on the start page and returns their links'
 * addresses. Uses the form like a resident would.
 */
export async function searchTimes(page, server, { service, home, language }) {
  await page.goto(`${server.url}/`);
  await page.selectOption("#service", service);
  await page.selectOption("#home", home);
  if (language) await page.selectOption("#language", language);
  await Promise.all([page.waitForURL(/[?&]service=/), page.click("form.search button[type=submit]")]);
  const hrefs = await page.locator("a.slot").evaluateAll((as) => as.map((a) => a.getAttribute("href")));
  assert.ok(hrefs.length > 0, `free times for ${service} in ${home}`);
  return hrefs;
}

/** The relay's packet counter for one direction, from the server's metrics listener. */
export async function relayedPackets(server, direction) {
  const text = await (await fetch(server.metricsUrl)).text();
  const line = text.split("\n").find((l) => l.startsWith(`relay_packets_total{direction="${direction}"}`));
  return line ? Number(line.split(" ").pop()) : 0;
}

/** Waits until the page's first remote video is playing frames. */
export async function remoteVideoPlays(page) {
  await page.waitForFunction(
    () => {
      const video = document.querySelector("#remote-videos video");
      return video && video.videoWidth > 0 && video.currentTime > 0.5;
    },
    null,
    { timeout: 30_000 },
  );
}

/**
 * A booked meeting in progress: `email` (a demo resident) books the first
 * free time of `service` in `home` and opens the meeting page; the booked
 * social worker opens it too and admits her. Returns both contexts and
 * pages once each plays the other's camera through the relay.
 */
export async function meetingInProgress(browser, server, {
  email = "anna@example.se",
  service = "ekonomiskt-bistand",
  home = "2418",
  residentLocale = "sv-SE",
  staffLocale = "sv-SE",
} = {}) {
  const resident = await browser.newContext({ locale: residentLocale });
  await resident.grantPermissions(["camera", "microphone"], { origin: server.url });
  const residentPage = await resident.newPage();
  const hrefs = await searchTimes(residentPage, server, { service, home });
  await signInResident(residentPage, server, email);
  await residentPage.waitForURL((u) => u.pathname === "/my");
  await residentPage.goto(new URL(hrefs[0], server.url).href);
  await Promise.all([residentPage.waitForURL((u) => u.pathname === "/my"), residentPage.click("#confirm-booking")]);
  const bookingId = new URL(residentPage.url()).searchParams.get("booked");
  await residentPage.goto(`${server.url}/join/${bookingId}`);

  const [meeting] = await sql(server, `SELECT s.email FROM bookings b JOIN staff s ON s.id = b.staff_id WHERE b.id = '${bookingId}'`);
  const staff = await browser.newContext({ locale: staffLocale });
  await staff.grantPermissions(["camera", "microphone"], { origin: server.url });
  const staffPage = await staff.newPage();
  await signInStaff(staffPage, server, meeting.email);
  await staffPage.goto(`${server.url}/join/${bookingId}`);
  const knock = staffPage.locator("#lobby-list li[data-party^='resident:']");
  await knock.waitFor();
  await knock.locator("button[data-action='lobby.admit']").click();
  await remoteVideoPlays(residentPage);
  await remoteVideoPlays(staffPage);
  return { bookingId, resident, residentPage, staff, staffPage };
}

/** How many frames the page's first remote video has shown so far. */
export async function remoteFrames(page) {
  return await page.evaluate(() => {
    const video = document.querySelector("#remote-videos video");
    return video && video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality().totalVideoFrames : 0;
  });
}

/** Waits until the first remote video shows `more` frames beyond `from`. */
export async function framesAdvance(page, from, more = 10, ms = 10_000) {
  await page.waitForFunction(
    ([from, more]) => {
      const video = document.querySelector("#remote-videos video");
      return !!video && video.getVideoPlaybackQuality().totalVideoFrames >= from + more && !video.paused;
    },
    [from, more],
    { timeout: ms, polling: 50 },
  );
}
