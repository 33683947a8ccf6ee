// In real headless Chromium: (1) a page from another origin (served here, on another loopback
// port) cannot read the management API's answers, with or without credentials; (2) the
// dashboard's page works under its Content-Security-Policy, which stops its scripts from
// calling another origin over HTTP but lets them open WebSockets (the MQTT page); (3) after
// wrong passwords the login form shows the API's lock-out (429, Retry-After). Run it with
// unsuccessful_login_max_attempts = 2.
//
// usage: node cross_origin.mjs <dashboard url> <management API url> <username> <password>
// Prints one JSON object with what it saw; exits non-zero on any failure.
import http from "node:http";
import { chromium } from "playwright-core";

const [dashboardUrl, apiUrl, username, password] = process.argv.slice(2);
const other = http.createServer((_, response) => {
  response.writeHead(200, { "content-type": "text/html" });
  response.end("<!doctype html><title>another origin</title><p>another origin</p>");
});
await new Promise((resolve) => other.listen(0, "127.0.0.1", resolve));
const otherUrl = `http://127.0.0.1:${other.address().port}/`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const seen = {};

/** Polls `check` every 20 ms until it is true, or fails after 15 s saying `what`. */
async function poll(what, check) {
  const deadline = Date.now() + 15000;
  while (!check()) {
    if (Date.now() > deadline) { throw new Error(`timed out waiting for ${what}`); }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
try {
  // 1. Another origin tries the API with the browser holding the API's credentials.
  const context = await browser.newContext({ httpCredentials: { username, password, origin: new URL(apiUrl).origin } });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const console_ = [];
  page.on("console", (message) => console_.push(message.text()));
  await page.goto(otherUrl);
  const attempt = (init) => page.evaluate(async ([url, init]) => {
    try {
      const response = await fetch(url, init);
      return { read: await response.text() };
    } catch (e) {
      return { error: e.name };
    }
  }, [`${apiUrl}/api/v4/brokers`, init]);
  seen.ownOrigin = await page.evaluate(async (url) => (await fetch(url)).status, otherUrl);
  seen.withCookies = await attempt({ credentials: "include" });
  seen.withHeader = await attempt({ credentials: "include", headers: { Authorization: "Basic " + btoa(`${username}:${password}`) } });
  // Chromium says why on the console: a CORS block, not a network failure.
  await poll("two CORS errors on the console", () => console_.filter((t) => t.includes("blocked by CORS policy")).length >= 2);
  seen.corsBlocked = console_.filter((text) => text.includes("blocked by CORS policy")).length;
  await context.close();

  // 2. The dashboard under its CSP.
  const dashboard = await browser.newPage();
  dashboard.setDefaultTimeout(15000);
  await dashboard.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  const response = await dashboard.goto(dashboardUrl);
  const headers = response.headers();
  seen.headers = Object.fromEntries(
    ["content-security-policy", "x-frame-options", "referrer-policy", "access-control-allow-origin"].map((h) => [h, headers[h] ?? null]),
  );
  await dashboard.fill("#username", username);
  await dashboard.fill("#password", password);
  await dashboard.click("#login");
  await dashboard.waitForSelector("#app-view:not([hidden])");
  await dashboard.waitForFunction(() => Number(document.getElementById("traffic-chart").dataset.samples) >= 1);
  seen.violationsWhileWorking = await dashboard.evaluate(() => window.__violations.slice());
  seen.credentialsIn = await dashboard.evaluate(() => ({
    sessionStorage: sessionStorage.getItem("auth") !== null,
    localStorage: localStorage.length,
    cookies: document.cookie,
  }));
  seen.fetchElsewhere = await dashboard.evaluate(async (url) => {
    try { await fetch(url); return "read"; } catch (e) { return e.name; }
  }, otherUrl);
  await dashboard.waitForFunction(() => window.__violations.some((v) => v.startsWith("connect-src")));
  seen.violationsAfterFetch = await dashboard.evaluate(() => window.__violations.slice());
  seen.webSocket = await dashboard.evaluate(() => {
    try { new WebSocket("ws://127.0.0.1:9/mqtt", "mqtt").close(); return "allowed"; } catch (e) { return e.name; }
  });
  // 3. Wrong passwords until the API locks this IP out: the login form says when to retry.
  await dashboard.click("#logout");
  await dashboard.fill("#password", "wrong-" + password);
  seen.lockout = [];
  for (let i = 0; i < 3; i++) {
    await dashboard.evaluate(() => { document.getElementById("login-error").textContent = ""; });
    await dashboard.click("#login");
    await dashboard.waitForFunction(() => document.getElementById("login-error").textContent !== "");
    seen.lockout.push(await dashboard.textContent("#login-error"));
  }
  console.log(JSON.stringify(seen));
} catch (e) {
  console.error(`browser test failed: ${e.message}\nseen so far: ${JSON.stringify(seen)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  other.close();
}
