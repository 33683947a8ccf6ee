// Drives the dashboard in real headless Chromium (Debian's /usr/bin/chromium):
// log in, watch the overview's traffic chart move while the test publishes, open Plugins,
// click Stop on emqx_telemetry, wait until the row says inactive (without reloading the
// page), try to stop the dashboard itself, and take a screenshot.
//
// usage: node dashboard.mjs <dashboard url> <username> <password> <screenshot.png> [overview.png]
// Prints `READY` on a line when the chart has its first rate (the test then publishes),
// then one JSON object with what it saw; exits non-zero on any failure.
import { chromium } from "playwright-core";

const [url, username, password, screenshot, overviewShot] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const seen = {};
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  page.setDefaultTimeout(15000);
  await page.goto(url);

  // A wrong password is refused on the page.
  await page.fill("#username", username);
  await page.fill("#password", "wrong-" + password);
  await page.click("#login");
  await page.waitForSelector("#login-error:not([hidden])");
  seen.wrongPassword = await page.textContent("#login-error");

  await page.fill("#password", password);
  await page.click("#login");
  await page.waitForSelector("#app-view:not([hidden])");
  await page.waitForFunction(() => document.getElementById("stat-uptime").textContent !== "-");
  seen.clients = await page.textContent("#stat-clients");
  seen.uptime = await page.textContent("#stat-uptime");
  seen.node = await page.textContent("#node");
  await page.waitForSelector("#nodes-table tbody tr");
  seen.nodes = await page.$$eval("#nodes-table tbody tr", (rows) => rows.map((row) => ({
    node: row.dataset.node, cells: [...row.cells].map((cell) => cell.textContent),
  })));

  // The traffic chart: a first rate, then figures that move once the test publishes.
  const chartData = () => page.evaluate(() => ({
    ...document.getElementById("traffic-chart").dataset,
    textIn: document.getElementById("rate-in").textContent,
    textOut: document.getElementById("rate-out").textContent,
  }));
  await page.waitForFunction(() => Number(document.getElementById("traffic-chart").dataset.samples) >= 1);
  seen.chartBefore = await chartData();
  console.log("READY");
  await page.waitForFunction(() => Number(document.getElementById("traffic-chart").dataset.rateIn) > 0);
  seen.chartIn = await chartData();
  await page.waitForFunction(() => Number(document.getElementById("traffic-chart").dataset.rateOut) > 0);
  seen.chartOut = await chartData();
  if (overviewShot) { await page.screenshot({ path: overviewShot, fullPage: true }); }

  await page.click("#nav-plugins");
  const row = 'tr[data-plugin="emqx_telemetry"]';
  await page.waitForSelector(`${row} td.status.active`);
  seen.before = await page.textContent(`${row} td.status`);
  let navigations = 0;
  page.on("framenavigated", (frame) => { if (frame === page.mainFrame()) { navigations += 1; } });
  await page.click(`${row} button.toggle`);
  await page.waitForSelector(`${row} td.status.inactive`);
  seen.after = await page.textContent(`${row} td.status`);
  seen.button = await page.textContent(`${row} button.toggle`);
  seen.pageReloads = navigations;

  // Stopping the dashboard from its own page is refused with a message.
  await page.click('tr[data-plugin="emqx_dashboard"] button.toggle');
  await page.waitForFunction(() => document.getElementById("message").textContent.includes("cannot be stopped"));
  seen.selfStop = await page.textContent("#message");
  seen.dashboardStatus = await page.textContent('tr[data-plugin="emqx_dashboard"] td.status');

  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify(seen));
} catch (e) {
  console.error(`browser test failed: ${e.message}\nseen so far: ${JSON.stringify(seen)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
