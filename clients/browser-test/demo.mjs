// Opens Courier's demo page in headless Chromium and reports what it shows.
//
//   node demo.mjs <demo page URL>
//
// Prints one JSON object per line on stdout:
//   {"status": "open"}                     the page's subscription status changed
//   {"seqs": [1, 2, ...]}                 the sequences in the page's table, oldest first
// and ends (printing {"done": true, "seqs": [...]}) when "done" is written on stdin.
// crates/server/tests/browser_demo.rs runs it.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";
import { args, executablePath } from "./chromium.mjs";

const url = process.argv[2];
const profile = mkdtempSync(join(tmpdir(), "courier-chromium-"));
const say = (value) => process.stdout.write(JSON.stringify(value) + "\n");

// A fresh profile (playwright passes it as --user-data-dir).
const browser = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  args,
});
let finished = false;
const finish = async (code) => {
  if (finished) return;
  finished = true;
  await browser.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  process.exit(code);
};
process.on("uncaughtException", (e) => { say({ error: String(e) }); finish(1); });
setTimeout(() => { say({ error: "timed out" }); finish(1); }, 120_000).unref();

const page = await browser.newPage();
page.on("console", (m) => m.type() === "error" && say({ console: m.text() }));
page.on("pageerror", (e) => say({ pageerror: String(e) }));
await page.goto(url);

const seqs = () => page.$$eval("#messages tr.message", (rows) => rows.map((r) => Number(r.dataset.seq)).reverse());
let lastStatus = null;
let lastSeqs = "";
let done = false;
createInterface({ input: process.stdin }).on("line", (line) => { if (line.trim() === "done") done = true; });

while (!done) {
  const status = await page.evaluate(() => document.body.dataset.status || null);
  if (status !== lastStatus) { lastStatus = status; say({ status }); }
  const now = await seqs();
  if (JSON.stringify(now) !== lastSeqs) { lastSeqs = JSON.stringify(now); say({ seqs: now }); }
  await new Promise((r) => setTimeout(r, 50));
}
say({ done: true, seqs: await seqs() });
await finish(0);
