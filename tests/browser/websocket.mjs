// Drives the dashboard's WebSocket page in real headless Chromium (Debian's /usr/bin/chromium):
// log in, open WebSocket, point it at the broker's ws listener, connect, subscribe to
// `browser/#`, publish `browser/echo`, and wait until the page lists its own message; then
// print READY and wait until it lists the message the test publishes from a TCP client
// (`browser/from-tcp`), and take a screenshot.
//
// usage: node websocket.mjs <dashboard url> <username> <password> <ws port> <screenshot.png>
// Prints READY, then one JSON object with what it saw; exits non-zero on any failure.
import { chromium } from "playwright-core";

const [url, username, password, wsPort, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const seen = {};
const rows = (page) => page.evaluate(() => [...document.querySelectorAll("#ws-messages tbody tr")]
  .map((row) => ({ topic: row.cells[1].textContent, payload: row.cells[2].textContent })));
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  page.setDefaultTimeout(15000);
  await page.goto(url);
  await page.fill("#username", username);
  await page.fill("#password", password);
  await page.click("#login");
  await page.waitForSelector("#app-view:not([hidden])");

  await page.click("#nav-websocket");
  await page.waitForSelector("#websocket:not([hidden])");
  seen.prefilled = {
    host: await page.inputValue("#ws-host"),
    port: await page.inputValue("#ws-port"),
    path: await page.inputValue("#ws-path"),
  };
  await page.fill("#ws-host", "127.0.0.1");
  await page.fill("#ws-port", wsPort);
  await page.fill("#ws-clientid", "browser-client");
  await page.click("#ws-connect");
  await page.waitForSelector('#ws-status[data-state="connected"]');
  seen.status = await page.textContent("#ws-status");

  await page.fill("#ws-sub-topic", "browser/#");
  await page.click("#ws-subscribe");
  await page.waitForFunction(() => document.getElementById("ws-subscriptions").textContent.includes("browser/#"));
  await page.fill("#ws-pub-topic", "browser/echo");
  await page.fill("#ws-pub-payload", "hello from the browser");
  await page.click("#ws-publish");
  await page.waitForFunction(() => document.querySelector("#ws-messages tbody tr") !== null);
  seen.own = await rows(page);

  console.log("READY");
  await page.waitForFunction(() => [...document.querySelectorAll("#ws-messages tbody td")]
    .some((cell) => cell.textContent === "browser/from-tcp"));
  seen.all = await rows(page);
  await page.screenshot({ path: screenshot, fullPage: true });
  await page.click("#ws-disconnect");
  await page.waitForSelector('#ws-status[data-state="disconnected"]');
  seen.after = await page.textContent("#ws-status");
  console.log(JSON.stringify(seen));
} catch (e) {
  console.error(`browser test failed: ${e.message}\nseen so far: ${JSON.stringify(seen)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
