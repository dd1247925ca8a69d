// Call set-up time, as a resident feels it: from clicking the meeting's
// join link on My pages (already admitted, so no waiting room) to the first
// decoded frame of the social worker's camera, through the embedded TURN
// relay. Five runs; prints the median and the maximum. It measures and
// prints, and asserts nothing about time: `cargo xtask bench callsetup`
// runs it and reports the figures (targets: median under 1.5 s, maximum
// under 3 s; see docs/benchmarks/callsetup.md).

import { test } from "node:test";
import {
  server,
  browser,
  useServerAndBrowser,
  meetingInProgress,
} from "./helpers.mjs";

const RUNS = Number(process.env.CALLSETUP_RUNS ?? 5);

let meeting;

useServerAndBrowser({
  beforeClosing: async () => {
    await meeting?.resident.close();
    await meeting?.staff.close();
  },
});

test(`call set-up over ${RUNS} runs, from the join click to the first remote frame`, async () => {
  meeting = await meetingInProgress(browser, server);
  const { bookingId, residentPage, staffPage } = meeting;
  const link = `a[href="/join/${bookingId}"]`;
  const times = [];
  for (let run = 0; run < RUNS; run++) {
    // From My pages, where the join link is; leaving the meeting page
    // sends `leave`, so the social worker drops the old connection.
    await residentPage.goto(`${server.url}/my`);
    await staffPage.waitForFunction(() => document.querySelectorAll("#remote-videos video").length === 0, null, {
      timeout: 20_000,
    });
    const started = Date.now();
    await residentPage.click(link);
    await residentPage.waitForFunction(
      () => {
        const video = document.querySelector("#remote-videos video");
        return !!video && video.videoWidth > 0;
      },
      null,
      { timeout: 30_000, polling: 10 },
    );
    times.push(Date.now() - started);
  }
  const sorted = [...times].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  const max = sorted[sorted.length - 1];
  console.log(`callsetup runs_ms=${times.join(",")}`);
  console.log(`callsetup median_ms=${median} max_ms=${max}`);
});
