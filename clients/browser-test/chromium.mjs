// How the browser tests start Debian's Chromium: its path (CHROMIUM, else
// /usr/bin/chromium) and the flags that keep it from calling out of this
// machine's closed network (without them its connections are refused, many
// at a time) and from needing a GPU or a sandbox.

export const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

export const args = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
