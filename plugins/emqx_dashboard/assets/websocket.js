// The WebSocket page (EMQX's "WebSocket" tool): an MQTT 3.1.1 client over WebSocket, written
// here in plain JS (no third-party code). It encodes CONNECT, SUBSCRIBE, PUBLISH (QoS 0),
// PINGREQ and DISCONNECT, decodes CONNACK, SUBACK, PUBLISH and PINGRESP, and lists the
// messages it receives. An MQTT packet may span WebSocket messages and a message may hold
// several packets: bytes are gathered and cut into packets by their fixed header.
"use strict";

const wsPage = (() => {
  const $ = (id) => document.getElementById(id);
  const encoder = new TextEncoder(), decoder = new TextDecoder();
  const KEEP_ALIVE = 60; // seconds; a PINGREQ every half of it
  let socket = null, pending = new Uint8Array(0), pinger = null, nextId = 1;

  // The Remaining Length of MQTT-2.2.3: 7 bits a byte, high bit = more.
  function remainingLength(n) {
    const out = [];
    do {
      let byte = n % 128;
      n = Math.floor(n / 128);
      if (n > 0) { byte |= 0x80; }
      out.push(byte);
    } while (n > 0);
    return out;
  }
  const u16 = (n) => [n >> 8, n & 0xff];
  const str = (s) => { const b = encoder.encode(s); return [...u16(b.length), ...b]; };
  const packet = (first, body) => new Uint8Array([first, ...remainingLength(body.length), ...body]);

  const connect = (clientId) =>
    packet(0x10, [...str("MQTT"), 4, 0x02, ...u16(KEEP_ALIVE), ...str(clientId)]); // clean session
  const subscribe = (id, filter) => packet(0x82, [...u16(id), ...str(filter), 0]);
  const publish = (topic, payload) => packet(0x30, [...str(topic), ...encoder.encode(payload)]);
  const puback = (id) => packet(0x40, u16(id));
  const PINGREQ = new Uint8Array([0xc0, 0]), DISCONNECT = new Uint8Array([0xe0, 0]);

  function status(text, state) {
    $("ws-status").textContent = text;
    $("ws-status").dataset.state = state;
    const connected = state === "connected";
    $("ws-connect").disabled = state !== "disconnected";
    $("ws-disconnect").disabled = state === "disconnected";
    $("ws-subscribe").disabled = !connected;
    $("ws-publish").disabled = !connected;
  }

  function send(bytes) {
    if (socket && socket.readyState === WebSocket.OPEN) { socket.send(bytes); }
  }

  // Cuts the gathered bytes into whole packets; the rest waits for more.
  function receive(data) {
    const joined = new Uint8Array(pending.length + data.length);
    joined.set(pending);
    joined.set(data, pending.length);
    let at = 0;
    for (;;) {
      let length = 0, multiplier = 1, i = at + 1, done = false;
      while (i < joined.length && i < at + 5) {
        const byte = joined[i++];
        length += (byte & 0x7f) * multiplier;
        multiplier *= 128;
        if (!(byte & 0x80)) { done = true; break; }
      }
      if (!done || i + length > joined.length) { break; }
      handle(joined[at], joined.subarray(i, i + length));
      at = i + length;
    }
    pending = joined.slice(at);
  }

  function handle(first, body) {
    switch (first >> 4) {
      case 2: // CONNACK
        if (body[1] === 0) {
          status("Connected", "connected");
          pinger = setInterval(() => send(PINGREQ), (KEEP_ALIVE / 2) * 1000);
        } else {
          status(`Refused (CONNACK return code ${body[1]})`, "refused");
          socket.close();
        }
        break;
      case 9: // SUBACK
        $("ws-subscriptions").textContent += (body[2] === 0x80 ? "refused: " : "") + $("ws-sub-topic").dataset.last + "\n";
        break;
      case 3: { // PUBLISH
        const qos = (first >> 1) & 3;
        const topicLength = (body[0] << 8) | body[1];
        const topic = decoder.decode(body.subarray(2, 2 + topicLength));
        let at = 2 + topicLength;
        if (qos > 0) { send(puback((body[at] << 8) | body[at + 1])); at += 2; }
        addMessage(topic, decoder.decode(body.subarray(at)), qos, (first & 1) === 1);
        break;
      }
      default: // PINGRESP and the rest: nothing to do
    }
  }

  function addMessage(topic, payload, qos, retain) {
    const row = document.createElement("tr");
    for (const text of [new Date().toLocaleTimeString(), topic, payload, String(qos), retain ? "yes" : ""]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    $("ws-messages").tBodies[0].prepend(row);
    $("ws-messages").dataset.count = $("ws-messages").tBodies[0].rows.length;
  }

  function open() {
    const url = `ws://${$("ws-host").value}:${$("ws-port").value}${$("ws-path").value}`;
    status(`Connecting to ${url}`, "connecting");
    pending = new Uint8Array(0);
    try {
      socket = new WebSocket(url, ["mqtt"]);
    } catch (e) {
      status(`Cannot connect: ${e.message}`, "disconnected");
      return;
    }
    socket.binaryType = "arraybuffer";
    socket.onopen = () => send(connect($("ws-clientid").value));
    socket.onmessage = (event) => receive(new Uint8Array(event.data));
    socket.onclose = () => {
      clearInterval(pinger);
      socket = null;
      if ($("ws-status").dataset.state !== "refused") { status("Disconnected", "disconnected"); }
      $("ws-connect").disabled = false;
    };
    socket.onerror = () => status(`Cannot reach ${url}`, "disconnected");
  }

  function init() {
    $("ws-host").value = location.hostname || "127.0.0.1";
    $("ws-clientid").value = "dashboard_" + Math.random().toString(16).slice(2, 10);
    $("ws-connect").addEventListener("click", open);
    $("ws-disconnect").addEventListener("click", () => { send(DISCONNECT); if (socket) { socket.close(); } });
    $("ws-subscribe").addEventListener("click", () => {
      $("ws-sub-topic").dataset.last = $("ws-sub-topic").value;
      send(subscribe(nextId, $("ws-sub-topic").value));
      nextId = nextId % 65535 + 1;
    });
    $("ws-publish").addEventListener("click", () => send(publish($("ws-pub-topic").value, $("ws-pub-payload").value)));
    status("Disconnected", "disconnected");
  }

  return { init };
})();
wsPage.init();
