// The connection quality hint's rule, in the browser that runs it: the
// meeting page's call module (call.js, as served, under its hashed address)
// exports classifyQuality, which says "poor" above 5 % packet loss or a
// round trip over 400 ms, and "good" up to and including those limits.

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  server,
  browser,
  useServerAndBrowser,
  signInStaff,
} from "./helpers.mjs";


useServerAndBrowser();

test("classifyQuality: poor above 5 % loss or 400 ms round trip", async () => {
  const context = await browser.newContext({ locale: "sv-SE" });
  await context.grantPermissions(["camera", "microphone"], { origin: server.url });
  const page = await context.newPage();
  await signInStaff(page, server, "admin.lycksele@kontakt.demo");
  // Any page that runs the call: an ad-hoc room that does not exist loads
  // meeting.js, which imports call.js, and then says the room is not open.
  await page.goto(`${server.url}/meeting/adhoc/quality-check`);
  await page.waitForFunction(() =>
    performance.getEntriesByType("resource").some((e) => /\/assets\/call\.[0-9a-f]+\.js$/.test(e.name)),
  );
  const cases = [
    [{ loss: 0, rttMs: 0 }, "good"],
    [{}, "good"],
    [{ loss: 0.05, rttMs: 400 }, "good"],
    [{ loss: 0.051, rttMs: 20 }, "poor"],
    [{ loss: 0, rttMs: 401 }, "poor"],
    [{ loss: 0.3, rttMs: 900 }, "poor"],
    [{ loss: 0.01, rttMs: 120, kbps: 300 }, "good"],
  ];
  const got = await page.evaluate(async (cases) => {
    const url = performance
      .getEntriesByType("resource")
      .map((e) => e.name)
      .find((name) => /\/assets\/call\.[0-9a-f]+\.js$/.test(name));
    const call = await import(url);
    return {
      levels: cases.map(([figures]) => call.classifyQuality(figures)),
      limits: [call.POOR_LOSS, call.POOR_RTT_MS],
    };
  }, cases);
  assert.deepEqual(got.levels, cases.map(([, level]) => level));
  assert.deepEqual(got.limits, [0.05, 400]);
  await context.close();
});
