// The dashboard page: log in with the management API's credentials, show live stats, and
// start / stop plugins. Everything goes through this server's /api/, passed to the API:
// relative URLs only, so the credentials never go to another origin (the server's
// Content-Security-Policy enforces it too). The Authorization header is kept in memory and
// in sessionStorage (this tab only, gone when it closes; never localStorage or a cookie).
"use strict";

const $ = (id) => document.getElementById(id);
let auth = sessionStorage.getItem("auth");
let timers = [];

async function api(method, path) {
  const response = await fetch("/api/v4" + path, { method, headers: { Authorization: auth }, credentials: "same-origin" });
  let body = {};
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (response.status === 401) { logout("Your session ended: log in again."); }
  if (!response.ok) { throw new Error(body.message || `HTTP ${response.status}`); }
  return body;
}

function show(message) {
  $("message").textContent = message;
  $("message").hidden = !message;
}

// The overview's figures, from EMQX's endpoints (each lists this node first): gauges from
// /stats, counters from /metrics, uptime (in EMQX's words) and node from /brokers, and every
// node of the cluster from /nodes.
async function refreshStats() {
  const [stats, metrics, brokers, nodes] = await Promise.all(
    [api("GET", "/stats"), api("GET", "/metrics"), api("GET", "/brokers"), api("GET", "/nodes")]);
  const gauges = stats.data[0].stats, counters = metrics.data[0].metrics, broker = brokers.data[0];
  $("stat-clients").textContent = gauges["connections.count"];
  $("stat-received").textContent = counters["messages.received"];
  $("stat-sent").textContent = counters["messages.sent"];
  $("stat-uptime").textContent = broker.uptime;
  $("node").textContent = broker.node;
  $("nodes-table").tBodies[0].replaceChildren(...nodes.data.map(nodeRow));
}

// One node of /nodes as a table row (text only: names come from the network).
function nodeRow(node) {
  const row = document.createElement("tr");
  row.dataset.node = node.node;
  const status = node.node_status === "Running" ? "active" : "inactive";
  for (const [text, className] of [[node.node, ""], [node.node_status, `status ${status}`], [node.version, ""],
    [node.uptime, ""], [String(node.connections), ""]]) {
    const cell = document.createElement("td");
    cell.textContent = text;
    if (className) { cell.className = className; }
    row.appendChild(cell);
  }
  return row;
}

// Live chart of messages in / out per second: the deltas of the broker's counters
// (GET /api/v4/metrics) between samples one second apart, drawn on a plain <canvas>. The
// latest rates are also on the canvas as data-rate-in / data-rate-out.
const CHART_POINTS = 120;
let chart = { last: null, points: [] };

async function sampleTraffic() {
  const node = (await api("GET", "/metrics")).data[0];
  const now = performance.now();
  const sample = { at: now, received: node.metrics["messages.received"] || 0, sent: node.metrics["messages.sent"] || 0 };
  const last = chart.last;
  chart.last = sample;
  if (!last) { return; }
  const secs = Math.max((now - last.at) / 1000, 0.001);
  // A counter that went down means the broker restarted: count from zero.
  const rate = (a, b) => (a >= b ? a - b : a) / secs;
  const point = { in: rate(sample.received, last.received), out: rate(sample.sent, last.sent) };
  chart.points.push(point);
  if (chart.points.length > CHART_POINTS) { chart.points.shift(); }
  const canvas = $("traffic-chart");
  canvas.dataset.rateIn = point.in.toFixed(2);
  canvas.dataset.rateOut = point.out.toFixed(2);
  canvas.dataset.received = sample.received;
  canvas.dataset.sent = sample.sent;
  canvas.dataset.samples = chart.points.length;
  $("rate-in").textContent = point.in.toFixed(1);
  $("rate-out").textContent = point.out.toFixed(1);
  drawChart(canvas);
}

function drawChart(canvas) {
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (!width || !height) { return; } // hidden (another page is shown): drawn on the next sample
  const ratio = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(width * ratio)) { canvas.width = Math.round(width * ratio); }
  if (canvas.height !== Math.round(height * ratio)) { canvas.height = Math.round(height * ratio); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const left = 48, top = 8, plotW = width - left - 8, plotH = height - top - 20;
  const peak = Math.max(1, ...chart.points.map((p) => Math.max(p.in, p.out)));
  const step = 10 ** Math.floor(Math.log10(peak));
  const max = Math.ceil(peak / step) * step;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#637381";
  ctx.strokeStyle = "#eef1f4";
  ctx.lineWidth = 1;
  ctx.setLineDash([]);
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - (plotH * i) / 4;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + plotW, y); ctx.stroke();
    ctx.fillText(String(+(max * i / 4).toPrecision(3)), 4, y + 4);
  }
  ctx.fillText("now", left + plotW - 22, height - 4);
  for (const [key, color] of [["in", "#1f9d63"], ["out", "#3b7ddd"]]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.setLineDash(key === "out" ? [6, 4] : []); // both stay visible when in = out
    ctx.beginPath();
    chart.points.forEach((p, i) => {
      const x = left + plotW - ((chart.points.length - 1 - i) * plotW) / (CHART_POINTS - 1);
      const y = top + plotH - (p[key] / max) * plotH;
      if (i === 0) { ctx.moveTo(x, y); } else { ctx.lineTo(x, y); }
    });
    ctx.stroke();
  }
}

function pluginRow(plugin) {
  const row = document.createElement("tr");
  row.dataset.plugin = plugin.name;
  const status = plugin.active ? "active" : "inactive";
  for (const text of [plugin.name, plugin.type, plugin.description]) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.appendChild(cell);
  }
  const statusCell = document.createElement("td");
  statusCell.className = `status ${status}`;
  statusCell.textContent = status;
  row.appendChild(statusCell);
  const actionCell = document.createElement("td");
  const button = document.createElement("button");
  button.type = "button";
  button.className = plugin.active ? "toggle stop" : "toggle start";
  button.textContent = plugin.active ? "Stop" : "Start";
  button.addEventListener("click", () => toggle(plugin, button));
  actionCell.appendChild(button);
  row.appendChild(actionCell);
  return row;
}

async function refreshPlugins() {
  // EMQX's shape: one entry a node, each with its plugins, this node first: the page starts
  // and stops this node's.
  const plugins = (await api("GET", "/plugins")).data[0].plugins;
  $("plugins-table").tBodies[0].replaceChildren(...plugins.map(pluginRow));
}

async function toggle(plugin, button) {
  button.disabled = true;
  try {
    const action = plugin.active ? "unload" : "load";
    const result = await api("PUT", `/plugins/${encodeURIComponent(plugin.name)}/${action}`);
    show(result.message || "");
  } catch (e) {
    show(e.message);
  } finally {
    await refreshPlugins().catch((e) => show(e.message));
  }
}

const PAGES = ["overview", "plugins", "websocket"];

function route() {
  const page = PAGES.find((name) => location.hash === "#" + name) || "overview";
  for (const name of PAGES) {
    $(name).hidden = page !== name;
    $("nav-" + name).classList.toggle("current", page === name);
  }
  if (page === "plugins") { refreshPlugins().catch((e) => show(e.message)); }
}

function startApp() {
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  route();
  api("GET", "/brokers").then((b) => { $("version").textContent = b.data[0].version; }).catch(() => {});
  refreshStats().catch((e) => show(e.message));
  timers.push(setInterval(() => refreshStats().catch(() => {}), 2000));
  sampleTraffic().catch((e) => show(e.message));
  timers.push(setInterval(() => sampleTraffic().catch(() => {}), 1000));
  timers.push(setInterval(() => { if (!$("plugins").hidden) { refreshPlugins().catch(() => {}); } }, 5000));
}

function logout(message) {
  timers.forEach(clearInterval);
  timers = [];
  chart = { last: null, points: [] };
  auth = null;
  sessionStorage.removeItem("auth");
  $("app-view").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
  $("login-error").hidden = !message;
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  auth = "Basic " + btoa(`${$("username").value}:${$("password").value}`);
  const response = await fetch("/api/v4/brokers", { headers: { Authorization: auth }, credentials: "same-origin" }).catch(() => null);
  if (response && response.ok) {
    sessionStorage.setItem("auth", auth);
    $("login-error").hidden = true;
    startApp();
  } else {
    const why = !response ? "The management API is not reachable."
      : response.status === 401 ? "Wrong username or password."
      : response.status === 429 ? `Too many failed logins: try again in ${response.headers.get("Retry-After") || "a few"} seconds.`
      : `The management API answered HTTP ${response.status}.`;
    logout(why);
  }
});
$("logout").addEventListener("click", () => logout(""));
window.addEventListener("hashchange", route);
if (auth) { startApp(); }
