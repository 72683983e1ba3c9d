// The node page: draws the ring from /v1/ui/ring and runs key operations through /v1/ui/*.
// The page arrives with this node's own view (#initial-state), drawn before anything is fetched.
"use strict";
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#d9480f", "#1971c2", "#2f9e44", "#9c36b5", "#e67700", "#0c8599", "#c2255c", "#5c940d"];
const self = document.body.dataset.node;
let colours = {};
let keyMark = null;

function el(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function point(fraction, radius) {
  const angle = 2 * Math.PI * fraction - Math.PI / 2;  // position 0 at twelve o'clock
  return [radius * Math.cos(angle), radius * Math.sin(angle)];
}

function fmt(n, digits) { return n === null || n === undefined ? "–" : Number(n).toFixed(digits); }
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function drawRing(state) {
  const svg = document.getElementById("ring");
  svg.replaceChildren(el("circle", {cx: 0, cy: 0, r: 120, fill: "none", stroke: "#c8ccd6", "stroke-width": 2}));
  state.nodes.forEach((node, i) => { colours[node.id] = PALETTE[i % PALETTE.length]; });
  for (const node of state.nodes) {
    const mine = node.id === state.self;
    for (const f of node.positions) {
      const [x, y] = point(f, 120);
      svg.append(el("circle", {cx: x.toFixed(2), cy: y.toFixed(2), r: mine ? 3.6 : 2.2,
        fill: node.up !== false ? colours[node.id] : "#adb5bd", "fill-opacity": mine ? 1 : 0.8,
        class: mine ? "token mine" : "token", "data-node": node.id}));
      if (mine) {  // this node's tokens also get a tick outside the circle
        const [x1, y1] = point(f, 126), [x2, y2] = point(f, 134);
        svg.append(el("line", {x1, y1, x2, y2, stroke: colours[node.id], "stroke-width": 1.5}));
      }
    }
  }
  if (keyMark !== null) {
    const [x1, y1] = point(keyMark, 96), [x2, y2] = point(keyMark, 142);
    svg.append(el("line", {x1, y1, x2, y2, stroke: "#1d2330", "stroke-width": 2, id: "key-mark"}));
  }
  svg.append(el("text", {x: 0, y: -6, "text-anchor": "middle", "font-size": 15, "font-weight": 600},
    state.nodes.length + " nodes"));
  svg.append(el("text", {x: 0, y: 14, "text-anchor": "middle", "font-size": 12, fill: "#677085"},
    "ring epoch " + state.epoch + (state.agree ? "" : " (nodes disagree)")));
  const rows = state.nodes.map(node => {
    const tr = document.createElement("tr");
    if (node.id === state.self) tr.className = "self";
    tr.innerHTML = `<td><span class="swatch"></span></td><td></td><td></td>
      <td class="num"></td><td class="num"></td><td class="num"></td>`;
    tr.querySelector(".swatch").style.background = node.up !== false ? colours[node.id] : "#adb5bd";
    const cells = tr.querySelectorAll("td");
    cells[1].textContent = node.id + (node.id === state.self ? " (this node)" : "");
    cells[2].textContent = node.state;
    cells[3].textContent = (100 * node.share).toFixed(1) + "%";
    cells[4].textContent = node.records ?? "–";
    cells[5].textContent = node.epoch ?? "–";
    return tr;
  });
  document.querySelector("#members tbody").replaceChildren(...rows);
  document.getElementById("summary").textContent = !state.nodes.length
    ? "this node has not joined a ring yet"
    : state.initial ? `${state.nodes.length} members · epoch ${state.epoch} · asking the other members…`
    : `${state.nodes.filter(n => n.up).length} of ${state.nodes.length} nodes up · epoch ${state.epoch}`;
}

function drawHealth(h) {
  const rows = [["node", h.node], ["records", h.records], ["bytes", bytes(h.bytes)],
    ["revision", h.revision], ["ring epoch", h.epoch], ["requests", h.requests],
    ["mean response", fmt(h.mean_response_ms, 2) + " ms"],
    ["error rate", fmt(100 * h.error_rate, 2) + " %"], ["uptime", fmt(h.uptime, 0) + " s"],
    ["heartbeat", new Date(1000 * h.heartbeat).toLocaleTimeString()], ["location", h.location || "–"],
    // replication (issue 15): p99 response, hints kept per target, delivered hints' delay
    ["p99 response", fmt(h.p99_response_ms || 0, 0) + " ms"],
    ["hints kept", Object.entries(h.hints || {}).map(([t, b]) =>
      `${t}: ${b.count} (oldest ${fmt(b.oldest_age, 1)} s)`).join(", ") || "none"],
    ["replication delay", `p50 ${fmt(h.replication_delay_p50_s || 0, 2)} s · p99 ` +
      `${fmt(h.replication_delay_p99_s || 0, 2)} s`]];
  const dl = document.getElementById("health");
  dl.replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = v ?? "–"; return [dt, dd];
  }));
}

function drawLog(events) {
  const items = events.map(e => {
    const li = document.createElement("li");
    li.className = "event " + e.kind;
    const time = document.createElement("time"), kind = document.createElement("span");
    time.textContent = new Date(1000 * e.t).toLocaleTimeString();
    kind.className = "kind"; kind.textContent = e.kind;
    li.append(time, kind, document.createTextNode(" " + e.text));
    return li;
  });
  const log = document.getElementById("log");
  if (items.length) log.replaceChildren(...items);
  else log.replaceChildren(Object.assign(document.createElement("li"), {textContent: "nothing yet"}));
}

async function refresh() {
  try {
    const [ring, health, log] = await Promise.all([
      fetch("/v1/ui/ring").then(r => r.json()), fetch("/v1/health").then(r => r.json()),
      fetch("/v1/ui/log").then(r => r.json())]);
    drawRing(ring); drawHealth(health); drawLog(log.events);
    window.lastRing = ring;
  } catch (err) {
    document.getElementById("summary").textContent = "cannot reach this node: " + err;
  }
}

function showResult(op, answer, ok) {
  const box = document.getElementById("result");
  box.replaceChildren();
  const head = document.createElement("p");
  if (!ok) {
    head.className = "error"; head.textContent = `${op} failed: ${answer.message || answer.error}`;
    box.append(head); box.dataset.state = "error"; return;
  }
  head.textContent = op === "get" ? (answer.found ? `${answer.key} =` : `${answer.key} is not set`)
    : op === "set" ? `stored ${answer.key} =` : `deleted ${answer.key}`;
  box.append(head);
  if (answer.found) {
    const pre = document.createElement("pre"); pre.id = "value-out";
    pre.textContent = JSON.stringify(answer.value, null, 2); box.append(pre);
  }
  const list = document.createElement("ul"); list.id = "replicas";
  for (const r of answer.replicas) {
    const li = document.createElement("li");
    const rank = answer.preference.indexOf(r.node);
    const role = rank >= 0 ? `replica ${rank + 1}` : "joining";
    li.className = r.error ? "down" : r.holds ? "holds" : "missing";
    li.textContent = `${r.node} (${role}): ` + (r.error ? "unreachable"
      : r.holds ? (r.deleted ? "holds a tombstone" : "holds it") : "holds nothing");
    list.append(li);
  }
  box.append(list);
  box.dataset.state = "done";
  keyMark = answer.position;
  if (window.lastRing) drawRing(window.lastRing);
}

document.getElementById("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const op = (event.submitter && event.submitter.value) || "get";
  const body = {key: document.getElementById("key").value};
  if (op === "set") {
    body.value = document.getElementById("value").value;
    body.raw = document.getElementById("raw").checked;
  }
  document.getElementById("result").dataset.state = "busy";
  try {
    const headers = {"Content-Type": "application/json"};
    const token = document.getElementById("page-token");
    if (token && token.value) headers["X-SDHT-Page-Token"] = token.value;
    const resp = await fetch("/v1/ui/" + op, {method: "POST", headers, body: JSON.stringify(body)});
    showResult(op, await resp.json(), resp.ok);
  } catch (err) {
    showResult(op, {message: String(err)}, false);
  }
  refresh();
});

// First paint: what the node sent with the page, drawn now; then the first fetch, at once.
const initial = JSON.parse(document.getElementById("initial-state").textContent);
drawRing(initial.ring); drawHealth(initial.health); drawLog(initial.log);
window.lastRing = initial.ring;
refresh();
setInterval(refresh, 5000);
