// The dashboard page: log in with the management API's credentials, show live stats, and
// start / stop plugins. Everything goes through this server's /api/, passed to the API.
"use strict";

const $ = (id) => document.getElementById(id);
let auth = sessionStorage.getItem("auth");
let timers = [];

async function api(method, path) {
  const response = await fetch("/api/v4" + path, { method, headers: { Authorization: auth } });
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

function formatUptime(secs) {
  const d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600);
  const m = Math.floor(secs % 3600 / 60), s = secs % 60;
  return (d ? `${d}d ` : "") + (d || h ? `${h}h ` : "") + `${m}m ${s}s`;
}

async function refreshStats() {
  const stats = (await api("GET", "/stats")).data;
  $("stat-clients").textContent = stats["connections.count"];
  $("stat-received").textContent = stats["messages.received"];
  $("stat-sent").textContent = stats["messages.sent"];
  $("stat-uptime").textContent = formatUptime(stats.uptime);
  $("node").textContent = stats.node;
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
  // EMQX's shape: one entry a node, each with its plugins; this broker is one node.
  const plugins = (await api("GET", "/plugins")).data.flatMap((node) => node.plugins);
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

function route() {
  const page = location.hash === "#plugins" ? "plugins" : "overview";
  $("overview").hidden = page !== "overview";
  $("plugins").hidden = page !== "plugins";
  $("nav-overview").classList.toggle("current", page === "overview");
  $("nav-plugins").classList.toggle("current", page === "plugins");
  if (page === "plugins") { refreshPlugins().catch((e) => show(e.message)); }
}

function startApp() {
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  route();
  api("GET", "/brokers").then((b) => { $("version").textContent = b.data.version; }).catch(() => {});
  refreshStats().catch((e) => show(e.message));
  timers.push(setInterval(() => refreshStats().catch(() => {}), 2000));
  timers.push(setInterval(() => { if (!$("plugins").hidden) { refreshPlugins().catch(() => {}); } }, 5000));
}

function logout(message) {
  timers.forEach(clearInterval);
  timers = [];
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
  const response = await fetch("/api/v4/brokers", { headers: { Authorization: auth } }).catch(() => null);
  if (response && response.ok) {
    sessionStorage.setItem("auth", auth);
    $("login-error").hidden = true;
    startApp();
  } else {
    const why = response && response.status === 401 ? "Wrong username or password." : "The management API is not reachable.";
    logout(why);
  }
});
$("logout").addEventListener("click", () => logout(""));
window.addEventListener("hashchange", route);
if (auth) { startApp(); }
