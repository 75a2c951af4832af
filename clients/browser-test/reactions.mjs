// Drives the reactions demo page (examples/reactions) in headless Chromium,
// as two users in two browser contexts.
//
//   node reactions.mjs <page URL>                       the test
//   node reactions.mjs <page URL> --screenshot FILE     a picture for the README
//
// The test, on a freshly seeded system (Alice, Bob, Carol; one post by Alice):
//   1. Alice's page and Bob's page open; each follows its own notifications
//      live (Courier's /js/courier.js over Server-Sent Events).
//   2. Bob likes Alice's post: his button shows it.
//   3. Alice's page shows "Bob reacted 👍" as it arrives (a live entry).
//   4. Bob switches the page to sync delivery and the notification service
//      down, then reacts ❤️: the page shows the 502 notification_failed error,
//      counts one failed call and leaves the reaction unpressed.
// Prints one JSON object per step on stdout ({"step": ..., ...}), ends with
// {"done": true}; any failure prints {"error": ...} and exits 1. Every wait
// has a deadline. examples/reactions/demo/tests/browser.rs runs it.

import { chromium } from "playwright-core";
import { args, executablePath } from "./chromium.mjs";

const url = process.argv[2];
const screenshot = process.argv[3] === "--screenshot" ? process.argv[4] : null;
/** The longest any one condition may take to appear. */
const T = 20_000;
const say = (value) => process.stdout.write(JSON.stringify(value) + "\n");

// Playwright gives the browser a fresh temporary profile and removes it.
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args,
});
let finished = false;
const finish = async (code) => {
  if (finished) return;
  finished = true;
  await browser.close().catch(() => {});
  process.exit(code);
};
process.on("uncaughtException", (e) => { say({ error: String(e) }); finish(1); });
process.on("unhandledRejection", (e) => { say({ error: String(e) }); finish(1); });
setTimeout(() => { say({ error: "timed out" }); finish(1); }, 120_000).unref();

/** A page of its own (a browser context of its own) as user `name`, following live. */
async function openAs(name) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("console", (m) => m.type() === "error" && say({ console: m.text(), user: name }));
  page.on("pageerror", (e) => say({ pageerror: String(e), user: name }));
  await page.goto(url);
  await page.locator("body[data-user]").waitFor({ timeout: T });
  await page.locator(`#users .user[data-name="${name}"]`).click();
  await page.locator(`body[data-user="${name}"]`).waitFor({ timeout: T });
  await page.locator('#live-text[data-status="open"]').waitFor({ timeout: T });
  return page;
}

/** The `kind` button on the first post by `author`. */
const reactButton = (page, author, kind) =>
  page.locator(`#feed article.post[data-author="${author}"] .react[data-kind="${kind}"]`).first();

/** Clicks the button and waits until the call is over (the page re-enables it and records it). */
async function react(page, author, kind) {
  const calls = await page.locator("#bars > div").count();
  await reactButton(page, author, kind).click();
  await page.waitForFunction((n) => document.querySelectorAll("#bars > div").length > n, calls, { timeout: T });
}

const text = (page, selector) => page.locator(selector).first().innerText({ timeout: T });

if (screenshot) {
  // Alice's page, with two live notifications and a few calls of her own.
  const alice = await openAs("Alice");
  const bob = await openAs("Bob");
  const carol = await openAs("Carol");
  await react(bob, "Alice", "like");
  await react(carol, "Alice", "love");
  for (const kind of ["laugh", "like"]) await react(alice, "Bob", kind);
  await react(alice, "Carol", "love");
  await alice.locator("#notifs li.fresh").nth(1).waitFor({ timeout: T });
  await alice.waitForFunction(() => document.querySelectorAll("#feed .react.on").length >= 3, null, { timeout: T });
  // The flash of fresh entries over, the picture is steady.
  await alice.evaluate(() => Promise.all(document.getAnimations().map((a) => a.finished)));
  await alice.screenshot({ path: screenshot });
  say({ step: "screenshot", path: screenshot });
  say({ done: true });
  await finish(0);
}

// 1. Two users, each on a page of their own.
const alice = await openAs("Alice");
const bob = await openAs("Bob");
say({ step: "open", users: ["Alice", "Bob"] });

// 2. Bob likes Alice's post.
await react(bob, "Alice", "like");
await bob.locator('#feed article.post[data-author="Alice"] .react.on[data-kind="like"]').waitFor({ timeout: T });
say({
  step: "reacted",
  kind: "like",
  ms: Number(await text(bob, "#lat-last")),
  errors: Number(await text(bob, "#lat-err")),
});

// 3. Alice's page shows it, live (a fresh entry, not one from the list).
const entry = alice.locator('#notifs li.fresh[data-actor="Bob"][data-kind="like"]');
await entry.waitFor({ timeout: T });
say({
  step: "notified",
  text: (await entry.locator(".msg").innerText()).trim(),
  unread: Number(await text(alice, "#unread")),
  live: await text(alice, "#live-text"),
});

// 4. Sync delivery, notification service down: Bob's click fails, and he sees why.
await bob.locator('#mode button[data-mode="sync"]').click();
await bob.locator('#mode button.on[data-mode="sync"]').waitFor({ timeout: T });
await bob.locator("#down").click();
await bob.locator("#down.on").waitFor({ timeout: T });
say({ step: "sync_and_down" });
await react(bob, "Alice", "love");
const toast = bob.locator("#toast.show");
await toast.waitFor({ timeout: T });
await bob.waitForFunction(
  () => !document.querySelector('#feed article.post[data-author="Alice"] .react[data-kind="love"]').disabled,
  null,
  { timeout: T },
);
say({
  step: "failed",
  code: await toast.getAttribute("data-code"),
  toast: (await toast.innerText()).trim(),
  errors: Number(await text(bob, "#lat-err")),
  pressed: await reactButton(bob, "Alice", "love").evaluate((b) => b.classList.contains("on")),
  alice_entries: await alice.locator("#notifs li[data-event]").count(),
});
say({ done: true });
await finish(0);
