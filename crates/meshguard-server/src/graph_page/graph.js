// The service graph page: polls /graph.json, draws callers (left) and workloads (right) as SVG,
// shows an edge's recent decisions when clicked, and posts a candidate policy set to
// /graph/what-if. Every value from traffic is put in the page as text, never as markup.
"use strict";
const NS = "http://www.w3.org/2000/svg";
let data = { nodes: [], edges: [] };
let selected = null;
let changed = new Set();
const key = (s, d) => s + "\u0000" + d;

function el(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
}

function draw() {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const callers = data.nodes.filter((n) => n.caller).map((n) => n.id);
  const called = data.nodes.filter((n) => n.called).map((n) => n.id);
  document.getElementById("empty").hidden = data.edges.length > 0;
  const rows = Math.max(callers.length, called.length, 1);
  const h = rows * 70 + 20;
  svg.setAttribute("viewBox", "0 0 900 " + h);
  svg.setAttribute("height", h);
  const pos = {};
  callers.forEach((id, i) => (pos["c" + id] = { x: 20, y: 20 + i * 70 }));
  called.forEach((id, i) => (pos["d" + id] = { x: 640, y: 20 + i * 70 }));
  for (const e of data.edges) {
    const a = pos["c" + e.source], b = pos["d" + e.destination];
    const x1 = a.x + 240, y1 = a.y + 18, x2 = b.x, y2 = b.y + 18;
    let cls = "edge " + (e.denied > 0 ? "denied" : e.would_deny > 0 ? "would" : "ok");
    if (e.mtls === 0) cls += " plain";
    const k = key(e.source, e.destination);
    if (selected === k) cls += " selected";
    if (changed.has(k)) cls += " changed";
    const g = el("g", { class: cls, "data-source": e.source, "data-destination": e.destination });
    const mx = (x1 + x2) / 2;
    g.appendChild(el("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` }));
    g.appendChild(el("text", { x: mx - 70, y: (y1 + y2) / 2 - 6, class: "counts" },
      `${e.allowed} / ${e.denied} / ${e.would_deny}, ${e.mtls} / ${e.plaintext}`));
    g.addEventListener("click", () => { selected = k; draw(); showEdge(e); });
    svg.appendChild(g);
  }
  for (const [prefix, list] of [["c", callers], ["d", called]]) {
    for (const id of list) {
      const p = pos[prefix + id];
      const g = el("g", { class: "node", "data-node": id });
      g.appendChild(el("rect", { x: p.x, y: p.y, width: 240, height: 36, rx: 5 }));
      g.appendChild(el("text", { x: p.x + 8, y: p.y + 22 }, id));
      svg.appendChild(g);
    }
  }
  const t = data.edges.reduce((s, e) => [s[0] + e.allowed, s[1] + e.denied, s[2] + e.would_deny], [0, 0, 0]);
  document.getElementById("totals").textContent =
    `${data.edges.length} edges · ${t[0]} allowed · ${t[1]} denied · ${t[2]} would be denied` +
    (data.dropped ? ` · ${data.dropped} on edges past the limit` : "");
  if (selected) {
    const e = data.edges.find((x) => key(x.source, x.destination) === selected);
    if (e) showEdge(e);
  }
}

function showEdge(e) {
  document.getElementById("edge-title").textContent = `${e.source} \u2192 ${e.destination}`;
  document.getElementById("edge-hint").textContent =
    `${e.allowed} allowed, ${e.denied} denied, ${e.would_deny} would be denied; ${e.mtls} over mTLS, ${e.plaintext} plaintext`;
  const body = document.querySelector("#recent tbody");
  body.replaceChildren();
  for (const r of e.recent) {
    const tr = document.createElement("tr");
    tr.className = "decision";
    cell(tr, (r.time || "").replace("T", " ").replace(/\..*/, ""));
    cell(tr, [r.method, r.host, r.path].filter((x) => x).join(" ") || (r.port ? "port " + r.port : ""));
    cell(tr, (r.allowed ? "ALLOW " : "DENY ") + r.status + (r.would_deny ? " (would deny)" : ""), r.allowed ? "allow" : "deny");
    cell(tr, r.reason + (r.policy ? ` [${r.policy}]` : ""));
    body.appendChild(tr);
  }
}

async function refresh() {
  try {
    const r = await fetch("/graph.json", { cache: "no-store" });
    data = await r.json();
    draw();
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    document.getElementById("updated").textContent = "cannot reach meshguard: " + err;
  }
}

document.getElementById("candidate-file").addEventListener("change", async (ev) => {
  const f = ev.target.files[0];
  if (f) document.getElementById("candidate").value = await f.text();
});

document.getElementById("run-what-if").addEventListener("click", async () => {
  const summary = document.getElementById("what-if-summary");
  const body = document.querySelector("#what-if tbody");
  body.replaceChildren();
  summary.textContent = "replaying...";
  const r = await fetch("/graph/what-if", {
    method: "POST",
    headers: { "x-meshguard-what-if": "1" },
    body: document.getElementById("candidate").value,
  });
  const out = await r.json();
  if (!r.ok) {
    summary.textContent = "refused: " + (out.errors || [out.error]).join("; ");
    return;
  }
  summary.textContent = `${out.replayed} recent decisions replayed: ${out.changed} would change`;
  changed = new Set(out.by_edge.map((g) => key(g.source, g.destination)));
  for (const g of out.by_edge) {
    const tr = document.createElement("tr");
    tr.className = "change";
    cell(tr, `${g.source} \u2192 ${g.destination}`);
    cell(tr, Object.entries(g.counts || {}).map(([c, n]) => `${n} ${c}`).join(", "));
    const ex = (g.examples || [])[0];
    cell(tr, ex ? `${ex.request}: ${ex.before} \u2192 ${ex.after}` : "");
    body.appendChild(tr);
  }
  draw();
});

refresh();
setInterval(refresh, 2000);
