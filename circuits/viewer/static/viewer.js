// circuits viewer: draws an attribution graph as the paper does (x = token position, y = layer,
// logits on top, embeddings at the bottom) in plain SVG, and talks only to the server that served it.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const ROW_H = 46, NODE_GAP = 16, LOGIT_GAP = 40, MIN_COL_W = 70, LEFT = 44, TOP = 34, BOTTOM = 56, FOLD_W = 28;

const S = {
  info: null, gid: null, doc: null, nodes: new Map(), inEdges: new Map(), outEdges: new Map(),
  pos: new Map(), pinned: new Set(), supernodes: [], clicked: "", ivs: new Map(),
  view: { k: 1, x: 0, y: 0 }, size: { w: 1, h: 1 }, loadSeq: 0,
};
const $ = (id) => document.getElementById(id);

// ---- helpers ------------------------------------------------------------------------------
// Requests that do work carry this run's token (from the page the server served) and JSON.
const TOKEN = (document.querySelector('meta[name="circuits-token"]') || {}).content || "";

async function api(path, options) {
  options = options || {};
  if (options.method && options.method !== "GET") {
    options.headers = { ...(options.headers || {}), "Content-Type": "application/json", "X-Circuits-Token": TOKEN };
  }
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `the server answered ${response.status}`);
  if (body === null) throw new Error(`the server sent no JSON for ${path}`);
  return body;
}

function showMessage(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = kind === "info" ? "info" : "";
  box.hidden = !text;
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

const fmt = (v, d = 3) => (v === null || v === undefined ? "-" : Number(v).toFixed(d));
const kindOf = (n) => ({ "mlp reconstruction error": "error", embedding: "embedding", logit: "logit", supernode: "supernode" }[n.feature_type] || "feature");

function nodeLabel(n) {
  const kind = kindOf(n);
  if (kind === "embedding") return `token ${JSON.stringify(S.doc.metadata.prompt_tokens[n.ctx_idx] ?? "")}`;
  if (kind === "error") return `error L${n.layer} @${n.ctx_idx}`;
  if (kind === "logit") return n.clerp;
  if (kind === "supernode") return `supernode ${n.clerp} (${n.members.length} nodes)`;
  return n.clerp || `feature ${n.layer}:${featureIndex(n)}`;
}

function featureIndex(n) { return Number(n.node_id.split("_")[1]); }
function supernodeOf(id) { return S.supernodes.find((s) => s.slice(1).includes(id)); }

// ---- loading ------------------------------------------------------------------------------
async function init() {
  try {
    S.info = await api("/api/info");
  } catch (err) { showMessage(`cannot reach the viewer server: ${err.message}`); return; }
  const live = S.info.mode === "serve";
  $("live-controls").hidden = !live;
  $("intervene").hidden = !live;
  fillGraphSelect(S.info.graphs);
  bindControls();
  const hashGraph = new URLSearchParams(location.hash.slice(1)).get("graph");
  const first = S.info.graphs.find((g) => g.id === hashGraph) || S.info.graphs[0];
  if (first) await selectGraph(first.id);
  else showMessage(live ? "Type a prompt and press Trace." : "No graph loaded.", "info");
}

function fillGraphSelect(graphs) {
  const select = $("graph-select");
  select.replaceChildren(...graphs.map((g) => el("option", { value: g.id }, `${g.name} (${g.source})`)));
  select.hidden = graphs.length === 0;
}

async function selectGraph(gid) {
  const summary = S.info.graphs.find((g) => g.id === gid);
  S.gid = gid;
  $("graph-select").value = gid;
  setSlider("node-threshold", summary.node_threshold);
  setSlider("edge-threshold", summary.edge_threshold);
  S.clicked = "";
  await loadGraph(true);
}

function setSlider(id, value) { $(id).value = value; $(`${id}-value`).textContent = fmt(value, 2); }

async function loadGraph(fresh) {
  const seq = ++S.loadSeq;
  const nt = $("node-threshold").value, et = $("edge-threshold").value;
  let doc;
  try {
    doc = await api(`/api/graphs/${encodeURIComponent(S.gid)}?node_threshold=${nt}&edge_threshold=${et}`);
  } catch (err) { showMessage(err.message); return; }
  if (seq !== S.loadSeq) return;  // a newer request was made meanwhile
  S.doc = doc;
  if (fresh) {
    const q = doc.qParams || {};
    S.pinned = new Set(q.pinnedIds || []);
    S.supernodes = (q.supernodes || []).map((s) => s.slice());
    S.clicked = q.clickedId || "";
  }
  indexGraph();
  showMessage("");
  render(fresh);
  renderSubgraph();
  const wanted = new URLSearchParams(location.hash.slice(1)).get("node");
  if (fresh && wanted) S.clicked = wanted;
  if (S.clicked) selectNode(S.clicked, false);
}

function indexGraph() {
  S.nodes = new Map(S.doc.nodes.map((n) => [n.node_id, n]));
  S.inEdges = new Map(); S.outEdges = new Map();
  for (const link of S.doc.links) {
    if (!S.inEdges.has(link.target)) S.inEdges.set(link.target, []);
    if (!S.outEdges.has(link.source)) S.outEdges.set(link.source, []);
    S.inEdges.get(link.target).push(link);
    S.outEdges.get(link.source).push(link);
  }
  const byWeight = (a, b) => Math.abs(b.weight) - Math.abs(a.weight);
  for (const list of [...S.inEdges.values(), ...S.outEdges.values()]) list.sort(byWeight);
}

// ---- layout and drawing -------------------------------------------------------------------
// The drawn graph: everything, or ("show pinned only") the pinned nodes with each supernode drawn
// as one node whose edges are the summed edges of its members.
function visibleGraph() {
  S.synthetic = new Map();
  if (!$("pinned-only").checked || S.pinned.size === 0) return { nodes: S.doc.nodes, links: S.doc.links };
  const rep = new Map();
  const nodes = [];
  S.supernodes.forEach((sn, i) => {
    const members = sn.slice(1).map((id) => S.nodes.get(id)).filter(Boolean);
    if (!members.length) return;
    const id = `supernode:${i}`;
    const rows = members.map((m) => rowOf(m, nLayersOf()));
    const node = { node_id: id, feature_type: "supernode", clerp: sn[0], members: members.map((m) => m.node_id),
      layer: "S", ctx_idx: Math.max(...members.map((m) => m.ctx_idx)), _row: Math.round(rows.reduce((a, b) => a + b, 0) / rows.length),
      activation: null, influence: Math.min(...members.map((m) => m.influence ?? 1)),
      influence_raw: members.reduce((a, m) => a + (m.influence_raw || 0), 0), token_prob: 0 };
    for (const m of members) rep.set(m.node_id, id);
    S.synthetic.set(id, node);
    nodes.push(node);
  });
  for (const n of S.doc.nodes) if (S.pinned.has(n.node_id) && !rep.has(n.node_id)) { rep.set(n.node_id, n.node_id); nodes.push(n); }
  const summed = new Map();
  for (const l of S.doc.links) {
    const a = rep.get(l.source), b = rep.get(l.target);
    if (!a || !b || a === b) continue;
    const key = `${a}\u0000${b}`;
    if (!summed.has(key)) summed.set(key, { source: a, target: b, weight: 0 });
    summed.get(key).weight += l.weight;
  }
  return { nodes, links: [...summed.values()] };
}

function nLayersOf() {
  const logit = S.doc.nodes.find((n) => kindOf(n) === "logit");
  return logit ? Number(logit.layer) - 1 : 0;
}

function rowOf(n, nLayers) {
  if (n._row !== undefined) return n._row;
  if (n.layer === "E") return 0;
  const kind = kindOf(n);
  return kind === "logit" ? nLayers + 1 : Number(n.layer) + 1;
}

function layout(nodes) {
  const tokens = S.doc.metadata.prompt_tokens;
  const nLayers = nLayersOf();
  const cells = new Map();
  for (const n of nodes) {
    const key = `${n.ctx_idx}|${rowOf(n, nLayers)}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(n);
  }
  const nPos = nodes.reduce((m, n) => Math.max(m, n.ctx_idx + 1), tokens.length);
  // positions that carry no drawn node fold into one narrow column per run (long prompts)
  const used = new Array(nPos).fill(false);
  for (const n of nodes) used[n.ctx_idx] = true;
  const colW = used.map((u) => (u ? MIN_COL_W : 0));
  const gapOf = (row) => (row === nLayers + 1 ? LOGIT_GAP : NODE_GAP);  // logits carry their token labels
  for (const [key, list] of cells) {
    const [pos, row] = key.split("|").map(Number);
    colW[pos] = Math.max(colW[pos], list.length * gapOf(row) + 20);
  }
  const colX = [], folds = [];
  let x = LEFT;
  for (let pos = 0; pos < nPos; pos++) {
    if (!used[pos] && (pos === 0 || used[pos - 1])) {  // a run of unused positions starts here
      let end = pos;
      while (end + 1 < nPos && !used[end + 1]) end++;
      folds.push({ x, first: pos, last: end });
      x += FOLD_W;
    }
    colX.push(x);
    x += colW[pos];
  }
  // rows fill the view's height when the graph is wide (the fit then scales both ways alike)
  const box = $("graph").getBoundingClientRect();
  const rowH = Math.max(ROW_H, ((x + 20) * (box.height / Math.max(box.width, 1)) - TOP - BOTTOM) / (nLayers + 1));
  const rowY = (r) => TOP + (nLayers + 1 - r) * Math.min(rowH, 4 * ROW_H);
  S.pos = new Map();
  for (const [key, list] of cells) {
    const [pos, row] = key.split("|").map(Number);
    // most influential first, in the middle of the cell
    list.sort((a, b) => (a.influence ?? 0) - (b.influence ?? 0) || (b.token_prob - a.token_prob));
    const gap = gapOf(row);
    const start = colX[pos] + colW[pos] / 2 - ((list.length - 1) * gap) / 2;
    list.forEach((n, i) => S.pos.set(n.node_id, { x: start + i * gap, y: rowY(row) }));
  }
  return { nLayers, colX, colW, width: x + 20, height: rowY(0) + BOTTOM, rowY, tokens, used, folds };
}

// the prompt as wrapped text, the positions with a drawn node highlighted (hover: the position)
function renderPrompt(used) {
  const line = $("prompt-line");
  const tokens = S.doc.metadata.prompt_tokens || [];
  const prompt = S.doc.metadata.prompt || "";
  const spans = [document.createTextNode("prompt: ")];
  // tokens that spell the prompt are shown as it (a word-level tokenizer's are spaced instead)
  const spells = tokens.join("").endsWith(prompt);
  const sep = spells ? "" : " ";
  let plain = "";
  const flush = () => { if (plain) { spans.push(document.createTextNode(plain)); plain = ""; } };
  tokens.forEach((tok, pos) => {
    const text = (pos ? sep : "") + tok;
    if (!used[pos]) { plain += text; return; }
    plain += text.slice(0, text.length - tok.length);
    flush();
    spans.push(el("span", { class: "kept", title: `position ${pos}` }, tok));
  });
  flush();
  if (!tokens.length) spans.push(document.createTextNode(prompt));
  line.replaceChildren(...spans);
}

function render(fit) {
  const { nodes, links } = visibleGraph();
  S.viewIn = new Map(); S.viewOut = new Map();
  for (const l of links) {
    if (!S.viewIn.has(l.target)) S.viewIn.set(l.target, []);
    if (!S.viewOut.has(l.source)) S.viewOut.set(l.source, []);
    S.viewIn.get(l.target).push(l); S.viewOut.get(l.source).push(l);
  }
  const byWeight = (a, b) => Math.abs(b.weight) - Math.abs(a.weight);
  for (const list of [...S.viewIn.values(), ...S.viewOut.values()]) list.sort(byWeight);
  const L = layout(nodes);
  S.size = { w: L.width, h: L.height };
  const vp = $("viewport");
  vp.replaceChildren();
  const grid = svgEl("g"), edgeG = svgEl("g", { id: "edges" }), nodeG = svgEl("g", { id: "nodes" });
  for (let r = 0; r <= L.nLayers + 1; r++) {
    const y = L.rowY(r);
    grid.append(svgEl("line", { x1: LEFT, x2: L.width, y1: y, y2: y, class: "grid" }));
    const t = svgEl("text", { x: 4, y: y + 3, class: "layer-label" });
    t.textContent = r === 0 ? "emb" : r === L.nLayers + 1 ? "logit" : `L${r - 1}`;
    grid.append(t);
  }
  L.tokens.forEach((tok, pos) => {
    if (!L.used[pos]) return;
    const t = svgEl("text", { x: L.colX[pos] + L.colW[pos] / 2, y: L.rowY(0) + 24, class: "token", "text-anchor": "middle" });
    t.textContent = tok.length > 12 ? tok.slice(0, 11) + "…" : tok;
    grid.append(t);
  });
  for (const f of L.folds) {  // a folded run of positions: a dotted band and how many it hides
    grid.append(svgEl("line", { x1: f.x + FOLD_W / 2, x2: f.x + FOLD_W / 2, y1: L.rowY(L.nLayers + 1), y2: L.rowY(0), class: "fold" }));
    const t = svgEl("text", { x: f.x + FOLD_W / 2, y: L.rowY(0) + 24, class: "fold-label", "text-anchor": "middle" });
    t.textContent = f.last > f.first ? `${f.first}–${f.last}` : `${f.first}`;
    grid.append(t);
  }
  renderPrompt(L.used);
  const maxW = Math.max(1e-12, ...links.map((l) => Math.abs(l.weight)));
  for (const link of links) {
    const a = S.pos.get(link.source), b = S.pos.get(link.target);
    const midY = (a.y + b.y) / 2;
    const path = svgEl("path", {
      d: `M${a.x},${a.y} C${a.x},${midY} ${b.x},${midY} ${b.x},${b.y}`,
      class: `edge ${link.weight >= 0 ? "pos" : "neg"}`,
      "stroke-width": (0.4 + 3.6 * Math.sqrt(Math.abs(link.weight) / maxW)).toFixed(2),
    });
    link._el = path;
    path.setAttribute("data-source", link.source);
    path.setAttribute("data-target", link.target);
    path.addEventListener("click", (e) => { e.stopPropagation(); selectEdge(link); });
    edgeG.append(path);
  }
  for (const n of nodes) nodeG.append(drawNode(n));
  vp.append(grid, edgeG, nodeG);
  $("node-count").textContent = String(nodes.length);
  $("edge-count").textContent = String(links.length);
  renderScores();
  if (fit) fitView(); else applyView();
}

// The scores and where they come from: recomputed from a full graph, or (a graph JSON) the file's
// own metadata, plus what this view keeps of the file's graph when the sliders show less.
function renderScores() {
  const s = S.doc.metadata.scores || {}, v = S.doc.metadata.viewer || {};
  let line = `· replacement ${fmt(s.replacement_pruned)} (full ${fmt(s.replacement)}), ` +
    `completeness ${fmt(s.completeness_pruned)} (full ${fmt(s.completeness)})`;
  if (v.scores_basis === "file") {
    line += " from the file's metadata";
    const w = v.scores_within_file;
    if (w) line += ` · this view within the file: replacement ${fmt(w.replacement)}, completeness ${fmt(w.completeness)}`;
  }
  $("scores").textContent = line;
  $("scores").title = v.scores_note || "";
}

function drawNode(n) {
  const p = S.pos.get(n.node_id), kind = kindOf(n);
  const classes = ["node", kind];
  if (S.pinned.has(n.node_id)) classes.push("pinned");
  if (supernodeOf(n.node_id)) classes.push("in-supernode");
  if (n.node_id === S.clicked) classes.push("selected");
  let shape;
  if (kind === "supernode") shape = svgEl("rect", { x: p.x - 9, y: p.y - 7, width: 18, height: 14, rx: 7 });
  else if (kind === "feature") shape = svgEl("circle", { cx: p.x, cy: p.y, r: 6 });
  else if (kind === "error") shape = svgEl("rect", { x: p.x - 5, y: p.y - 5, width: 10, height: 10 });
  else shape = svgEl("rect", { x: p.x - 7, y: p.y - 6, width: 14, height: 12, rx: 3 });
  shape.setAttribute("class", classes.join(" "));
  shape.setAttribute("data-node-id", n.node_id);
  shape.addEventListener("mouseenter", (e) => hover(n, e));
  shape.addEventListener("mousemove", moveTooltip);
  shape.addEventListener("mouseleave", unhover);
  shape.addEventListener("click", (e) => { e.stopPropagation(); selectNode(n.node_id, true); });
  if (kind !== "logit" && kind !== "supernode") return shape;
  const g = svgEl("g");
  const label = svgEl("text", { x: p.x, y: p.y - 10, class: `${kind}-label`, "text-anchor": "middle" });
  const token = kind === "supernode" ? n.clerp : (n.clerp.match(/^Output "(.*)" \(p=/s) || [null, n.clerp])[1];
  label.textContent = token.length > 7 ? token.slice(0, 6) + "…" : token;
  g.append(shape, label);
  return g;
}

// ---- pan and zoom -------------------------------------------------------------------------
function applyView() {
  const v = S.view;
  $("viewport").setAttribute("transform", `translate(${v.x},${v.y}) scale(${v.k})`);
}

function fitView() {
  const box = $("graph").getBoundingClientRect();
  const k = Math.min(box.width / S.size.w, box.height / S.size.h, 2.5);
  S.view = { k, x: (box.width - S.size.w * k) / 2, y: Math.max(0, (box.height - S.size.h * k) / 2) };
  applyView();
}

function bindPanZoom() {
  const svg = $("graph");
  svg.addEventListener("wheel", (e) => {
    e.preventDefault();
    const box = svg.getBoundingClientRect();
    const mx = e.clientX - box.left, my = e.clientY - box.top, v = S.view;
    const k = Math.min(20, Math.max(0.05, v.k * Math.exp(-e.deltaY * 0.0015)));
    S.view = { k, x: mx - ((mx - v.x) * k) / v.k, y: my - ((my - v.y) * k) / v.k };
    applyView();
  }, { passive: false });
  let drag = null;
  svg.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, v: { ...S.view } }; svg.classList.add("dragging"); });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    S.view = { ...drag.v, x: drag.v.x + e.clientX - drag.x, y: drag.v.y + e.clientY - drag.y };
    applyView();
  });
  window.addEventListener("mouseup", () => { drag = null; svg.classList.remove("dragging"); });
}

// ---- hover --------------------------------------------------------------------------------
function hover(n, e) {
  const strongest = [...(S.viewIn.get(n.node_id) || []).slice(0, 5), ...(S.viewOut.get(n.node_id) || []).slice(0, 5)];
  for (const link of strongest) if (link._el) link._el.classList.add("hl");
  $("graph").classList.add("focus");
  const tip = $("tooltip");
  const sn = supernodeOf(n.node_id);
  tip.replaceChildren(
    el("div", {}, nodeLabel(n)),
    el("div", { class: "kv" }, `${n.node_id} · ${where(n)}` + (sn ? ` · supernode ${sn[0]}` : "")),
    el("div", { class: "kv" }, `activation ${fmt(n.activation)} · influence ${fmt(n.influence_raw)}` +
      (n.influence !== null && n.influence !== undefined ? ` (cumulative ${fmt(n.influence)})` : "")),
  );
  tip.style.color = "#fff";
  tip.hidden = false;
  moveTooltip(e);
}

function moveTooltip(e) {
  const tip = $("tooltip");
  const right = $("graph").getBoundingClientRect().right;  // keep it off the side panel
  const left = e.clientX + 14 + tip.offsetWidth > right ? e.clientX - 14 - tip.offsetWidth : e.clientX + 14;
  tip.style.left = `${Math.max(0, left)}px`;
  tip.style.top = `${e.clientY + 12}px`;
}

function where(n) {
  const kind = kindOf(n);
  const row = { logit: "output", embedding: "embedding", supernode: "supernode" }[kind] || `layer ${n.layer}`;
  return `${row} · position ${n.ctx_idx}`;
}

function unhover() {
  $("tooltip").hidden = true;
  $("graph").classList.remove("focus");
  for (const p of document.querySelectorAll("#edges .hl")) p.classList.remove("hl");
}

// ---- the side panel -----------------------------------------------------------------------
function selectNode(id, userClick) {
  const n = S.nodes.get(id) || (S.synthetic && S.synthetic.get(id));
  if (!n) {
    showMessage(`unknown node id ${id}: it is not in this graph at these thresholds`);
    S.clicked = "";
    return;
  }
  S.clicked = id;
  for (const x of document.querySelectorAll("#nodes .selected")) x.classList.remove("selected");
  const shape = document.querySelector(`#nodes [data-node-id="${CSS.escape(id)}"]`);
  if (shape) shape.classList.add("selected");
  if (userClick) history.replaceState(null, "", `#graph=${S.gid}&node=${encodeURIComponent(id)}`);
  renderPanel(n);
}

function renderPanel(n) {
  const panel = $("panel");
  const kind = kindOf(n);
  const head = el("div", { id: "node-panel", "data-node-id": n.node_id });
  head.append(el("h3", { id: "panel-title" }, nodeLabel(n)));
  head.append(el("div", { class: "kv" }, `${kind} · ${n.node_id} · ${where(n)} ` +
    `(${JSON.stringify(S.doc.metadata.prompt_tokens[n.ctx_idx] ?? "")})`));
  head.append(el("div", { class: "kv" }, `activation ${fmt(n.activation)} · influence ${fmt(n.influence_raw)}` +
    (kind === "logit" ? ` · probability ${fmt(n.token_prob)}` : "")));
  const buttons = el("div");
  const pin = el("button", { id: "pin-btn" }, S.pinned.has(n.node_id) ? "Unpin" : "Pin");
  pin.addEventListener("click", () => togglePin(n.node_id));
  buttons.append(pin);
  if (kind === "feature" && S.info.mode === "serve") {
    const add = el("button", { id: "add-iv-btn" }, "Intervene on this feature");
    add.addEventListener("click", () => addIntervention(n));
    buttons.append(add);
  }
  if (kind === "supernode") {
    const chips = el("div", { class: "chips", id: "supernode-members" });
    for (const id of n.members) {
      const chip = el("span", { "data-node-id": id }, nodeLabel(S.nodes.get(id)) || id);
      chip.addEventListener("click", () => selectNode(id, true));
      chips.append(chip);
    }
    head.append(chips);
    buttons.replaceChildren();
  }
  head.append(buttons);
  const qk = n.qk_tracing_results && n.qk_tracing_results.head;
  if (qk) {
    const link = el("button", { id: "qk-head-btn" }, `Why head L${qk.layer} H${qk.head} looked from @${qk.query} to @${qk.key}`);
    link.addEventListener("click", () => selectHead(headsOf(qk.layer, qk.head).find((h) => h.query === qk.query) || qk));
    head.append(link);
  }
  const synthetic = kind === "supernode";
  head.append(edgeTable("Inputs (strongest first)", (synthetic ? S.viewIn : S.inEdges).get(n.node_id) || [], "source", "inputs"));
  head.append(edgeTable("Outputs (strongest first)", (synthetic ? S.viewOut : S.outEdges).get(n.node_id) || [], "target", "outputs"));
  if (synthetic) { panel.replaceChildren(head); return; }
  const full = el("div", { id: "full-graph-edges" });
  head.append(full);
  const page = el("div", { id: "feature-page" });
  head.append(page);
  panel.replaceChildren(head);
  loadFullEdges(n, full);
  if (kind === "feature" && S.info.features) loadFeaturePage(Number(n.layer), featureIndex(n), page);
}

function edgeTable(title, links, end, id) {
  const box = el("div");
  box.append(el("h3", {}, `${title}: ${links.length}`));
  const table = el("table", { class: "edges", id: `${id}-table` });
  for (const link of links.slice(0, 40)) {
    const other = S.nodes.get(link[end]) || S.synthetic.get(link[end]);
    const row = el("tr", { class: "link", "data-node-id": link[end] });
    row.append(el("td", {}, nodeLabel(other)), el("td", { class: "kv" }, `@${other.ctx_idx}`),
      el("td", { class: `w ${link.weight >= 0 ? "pos" : "neg"}` }, fmt(link.weight)));
    row.addEventListener("click", () => selectNode(link[end], true));
    table.append(row);
  }
  box.append(table);
  return box;
}

// ---- attention: an edge's heads, a head's QK attribution (circuits trace --qk) ----------------
function describeId(id) {
  const n = S.nodes.get(id) || (S.doc.qk_only_nodes || {})[id];
  if (!n) return id;
  if (n.feature_type === "bias") return n.clerp || id;
  return nodeLabel(n);
}

function headsOf(layer, head) {
  return (S.doc.attention_heads || []).filter((h) => h.layer === layer && h.head === head);
}

function selectEdge(link) {
  const panel = $("panel");
  const box = el("div", { id: "edge-panel", "data-source": link.source, "data-target": link.target });
  const a = S.nodes.get(link.source), b = S.nodes.get(link.target);
  box.append(el("h3", {}, `Edge ${describeId(link.source)} → ${describeId(link.target)}`));
  box.append(el("div", { class: "kv" }, `weight ${fmt(link.weight)} · from @${a ? a.ctx_idx : "?"} to @${b ? b.ctx_idx : "?"}`));
  const heads = link.head_loadings || [];
  if (!heads.length) {
    box.append(el("div", { class: "kv" }, S.doc.attention_heads ? "no head carries this edge (a same-position path)"
      : "no head loadings in this graph: trace with --qk"));
  } else {
    box.append(el("h3", {}, "Heads carrying it (a path counts for its last cross-position hop)"));
    const table = el("table", { class: "edges", id: "heads-table" });
    for (const [layer, head, value] of heads) {
      const explained = headsOf(layer, head);
      const row = el("tr", { "data-head": `${layer}:${head}`, class: explained.length ? "link" : "" });
      row.append(el("td", {}, `L${layer} H${head}`), el("td", { class: `w ${value >= 0 ? "pos" : "neg"}` }, fmt(value)),
        el("td", { class: "kv" }, `${(100 * value / link.weight).toFixed(1)}%`),
        el("td", { class: "kv" }, explained.length ? "QK ›" : ""));
      if (explained.length) row.addEventListener("click", () => selectHead(explained[0]));
      table.append(row);
    }
    box.append(table);
  }
  panel.replaceChildren(box);
}

function contributorRow(id, value, other) {
  const row = el("tr", { class: "link", "data-node-id": id });
  row.append(el("td", {}, describeId(id)));
  if (other !== undefined) {
    const cell = el("td", { "data-node-id": other, class: "key-side" }, describeId(other));
    cell.addEventListener("click", (e) => { e.stopPropagation(); openContributor(other); });
    row.append(cell);
  }
  row.append(el("td", { class: `w ${value >= 0 ? "pos" : "neg"}` }, fmt(value)));
  row.addEventListener("click", () => openContributor(id));
  return row;
}

function openContributor(id) {
  if (S.nodes.has(id)) { selectNode(id, true); return; }
  const n = (S.doc.qk_only_nodes || {})[id];
  const page = $("qk-feature-page");
  if (!n || n.feature_type !== "cross layer transcoder" || !page) return;
  loadFeaturePage(Number(n.layer), Number(id.split("_")[1]), page);
}

function selectHead(h) {
  const panel = $("panel");
  const box = el("div", { id: "head-panel", "data-head": `${h.layer}:${h.head}` });
  const tokens = S.doc.metadata.prompt_tokens;
  box.append(el("h3", {}, `Head L${h.layer} H${h.head}: query @${h.query} ${JSON.stringify(tokens[h.query] ?? "")} → key @${h.key} ${JSON.stringify(tokens[h.key] ?? "")}`));
  box.append(el("div", { class: "kv" }, `score ${fmt(h.score)} (model ${fmt(h.model_score)}${h.soft_cap ? `, soft cap ${h.soft_cap} after it` : ""}) · attention ${fmt(h.pattern)} · carries ${fmt(h.carried)} of the edges`));
  const rem = Object.entries(h.remainders).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ");
  box.append(el("div", { class: "kv" }, rem));
  const sections = [["Top query × key pairs", "qk-pairs", h.pairs.map((p) => contributorRow(p[0], p[2], p[1]))],
    ["Query side (against the whole key)", "qk-q", h.q_marginals.map((m) => contributorRow(m[0], m[1]))],
    ["Key side (against the whole query)", "qk-k", h.k_marginals.map((m) => contributorRow(m[0], m[1]))]];
  for (const [title, id, rows] of sections) {
    box.append(el("h3", {}, title));
    const table = el("table", { class: "edges", id: `${id}-table` });
    table.append(...rows);
    box.append(table);
  }
  box.append(el("div", { id: "qk-feature-page" }));
  panel.replaceChildren(box);
}

async function loadFullEdges(n, box) {
  try {
    const d = await api(`/api/graphs/${encodeURIComponent(S.gid)}/nodes/${encodeURIComponent(n.node_id)}`);
    const details = el("details");
    details.append(el("summary", {}, `In the full graph: ${d.n_inputs} inputs, ${d.n_outputs} outputs`));
    for (const [title, list] of [["strongest inputs", d.inputs], ["strongest outputs", d.outputs]]) {
      details.append(el("div", { class: "kv" }, title));
      const table = el("table", { class: "edges" });
      for (const e of list) {
        const row = el("tr", S.nodes.has(e.node_id) ? { class: "link" } : {});
        row.append(el("td", {}, e.label || e.node_id), el("td", { class: `w ${e.weight >= 0 ? "pos" : "neg"}` }, fmt(e.weight)));
        if (S.nodes.has(e.node_id)) row.addEventListener("click", () => selectNode(e.node_id, true));
        table.append(row);
      }
      details.append(table);
    }
    box.replaceChildren(details);
  } catch (err) { box.replaceChildren(el("div", { class: "kv" }, err.message)); }
}

async function loadFeaturePage(layer, feature, box) {
  box.replaceChildren(el("div", { class: "kv" }, "loading the feature page…"));
  let p;
  try { p = await api(`/api/features/${layer}/${feature}`); } catch (err) {
    box.replaceChildren(el("div", { class: "kv" }, err.message)); return;
  }
  const parts = [el("h3", {}, `Feature ${layer}:${feature}`)];
  parts.push(el("div", { class: "kv" }, `fires on ${p.activation_frequency === null ? "?" : (100 * p.activation_frequency).toFixed(3) + "%"} of tokens · max activation ${fmt(p.act_max)}`));
  if (p.histogram.length && p.histogram_edges.length) parts.push(histogram(p), el("div", { class: "kv" }, `histogram over ${p.histogram_source}`));
  parts.push(el("h3", {}, "Top activating contexts"));
  const examples = (p.examples_quantiles[0] || { examples: [] }).examples;
  if (!examples.length) parts.push(el("div", { class: "kv" }, "no contexts (no feature index, or the feature never fired)"));
  for (const ex of examples) parts.push(context(ex, p.act_max));
  if (p.top_logits.length) {
    parts.push(el("h3", {}, "Output: promotes"), logitList(p.top_logits, "up"));
    parts.push(el("h3", {}, "suppresses"), logitList(p.bottom_logits, "down"));
  }
  if (p.neighbours.length) {
    parts.push(el("h3", {}, "Nearest features by decoder cosine"));
    const table = el("table", { class: "edges", id: "neighbours" });
    for (const nb of p.neighbours) {
      const row = el("tr");
      row.append(el("td", {}, `${nb.layer}:${nb.feature}`), el("td", {}, nb.label), el("td", { class: "w" }, fmt(nb.cosine)));
      table.append(row);
    }
    parts.push(table);
  }
  box.replaceChildren(...parts);
}

function histogram(p) {
  const w = 360, h = 60, n = p.histogram.length, max = Math.max(1, ...p.histogram);
  const svg = svgEl("svg", { width: w, height: h + 14, id: "histogram" });
  p.histogram.forEach((c, i) => {
    const bh = (h * Math.log1p(c)) / Math.log1p(max);
    svg.append(svgEl("rect", { x: (i * w) / n + 1, y: h - bh, width: w / n - 2, height: bh, fill: "#f2b233" }));
  });
  const lo = svgEl("text", { x: 0, y: h + 12 }); lo.textContent = "0";
  const hi = svgEl("text", { x: w, y: h + 12, "text-anchor": "end" }); hi.textContent = fmt(p.act_max, 2);
  svg.append(lo, hi);
  return svg;
}

function context(ex, actMax) {
  const line = el("div", { class: "context" });
  ex.tokens.forEach((tok, i) => {
    const a = ex.tokens_acts_list[i] || 0;
    const span = el("span", { class: `tok${i === ex.train_token_ind ? " centre" : ""}`, title: fmt(a) }, tok);
    if (a > 0) span.style.background = `rgba(242,140,40,${Math.min(1, a / (actMax || 1)).toFixed(3)})`;
    line.append(span);
  });
  return line;
}

function logitList(tokens, cls) {
  const box = el("div", { class: `logit-list ${cls}` });
  for (const t of tokens) box.append(el("span", {}, JSON.stringify(t)));
  return box;
}

// ---- subgraph: pins and supernodes (saved as qParams) --------------------------------------
function togglePin(id) {
  if (S.pinned.has(id)) S.pinned.delete(id); else S.pinned.add(id);
  render(false);
  renderSubgraph();
  if (S.clicked) selectNode(S.clicked, false);
}

function renderSubgraph() {
  const list = $("pinned-list");
  list.replaceChildren(...[...S.pinned].map((id) => {
    const chip = el("span", { "data-node-id": id, title: "click to select" }, S.nodes.has(id) ? nodeLabel(S.nodes.get(id)) || id : id);
    chip.addEventListener("click", () => selectNode(id, true));
    return chip;
  }));
  if (!S.pinned.size) list.append(el("span", { class: "hint" }, "no pinned nodes"));
  $("supernode-list").replaceChildren(...S.supernodes.map((s, i) => {
    const row = el("div", { class: "supernode" });
    row.append(el("b", {}, s[0]), document.createTextNode(` (${s.length - 1} nodes) `));
    const x = el("button", {}, "ungroup");
    x.addEventListener("click", () => { S.supernodes.splice(i, 1); render(false); renderSubgraph(); });
    row.append(x);
    return row;
  }));
}

function groupPinned() {
  const name = $("supernode-name").value.trim();
  const members = [...S.pinned].filter((id) => !supernodeOf(id));
  if (!name) { showMessage("give the supernode a name"); return; }
  if (members.length < 1) { showMessage("pin the nodes to group first (nodes already in a supernode are skipped)"); return; }
  S.supernodes.push([name, ...members]);
  $("supernode-name").value = "";
  showMessage("");
  render(false);
  renderSubgraph();
}

function currentQParams() {
  return { pinnedIds: [...S.pinned], supernodes: S.supernodes, clickedId: S.clicked,
           linkType: "both", sg_pos: "" };
}

function exportDoc() {
  const doc = JSON.parse(JSON.stringify(S.doc, (k, v) => (k === "_el" ? undefined : v)));
  doc.qParams = { ...doc.qParams, ...currentQParams() };
  delete doc.metadata.viewer;
  return doc;
}

async function saveState() {
  try {
    await api(`/api/graphs/${encodeURIComponent(S.gid)}/qparams`, {
      method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(currentQParams()),
    });
    showMessage("saved: pins and supernodes stay with this graph while the server runs; Download JSON keeps them in a file", "info");
  } catch (err) { showMessage(err.message); }
}

function downloadDoc() {
  const blob = new Blob([JSON.stringify(exportDoc(), null, 1)], { type: "application/json" });
  const a = el("a", { href: URL.createObjectURL(blob), download: `${S.doc.metadata.slug || "graph"}.json` });
  document.body.append(a);
  a.click();
  a.remove();
}

// ---- serve mode: tracing and interventions -----------------------------------------------
async function tracePrompt() {
  const prompt = $("prompt").value;
  if (!prompt.trim()) { showMessage("type a prompt to trace"); return; }
  $("trace-btn").disabled = true;
  $("progress").hidden = false;
  $("progress-text").textContent = "tracing…";
  showMessage("");
  try {
    let job = await api("/api/trace", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ prompt }) });
    while (job.status === "running") {
      $("progress-text").textContent = `tracing… ${job.elapsed_s.toFixed(1)} s`;
      await new Promise((r) => setTimeout(r, 300));
      job = await api(`/api/jobs/${job.id}`);
    }
    if (job.status === "error") throw new Error(job.error);
    S.info = await api("/api/info");
    fillGraphSelect(S.info.graphs);
    await selectGraph(job.result.id);
    $("progress-text").textContent = `traced in ${job.elapsed_s.toFixed(1)} s`;
  } catch (err) {
    showMessage(err.message);
    $("progress-text").textContent = "";
  } finally {
    $("trace-btn").disabled = false;
    setTimeout(() => { $("progress").hidden = true; }, 1500);
  }
}

function addIntervention(n) {
  S.ivs.set(n.node_id, { layer: Number(n.layer), pos: n.ctx_idx, feature: featureIndex(n), mode: "multiplier", amount: 0, label: nodeLabel(n) });
  renderInterventions();
}

function renderInterventions() {
  const list = $("intervene-list");
  list.replaceChildren();
  if (!S.ivs.size) list.append(el("div", { class: "hint" }, "Click a feature, then \"Intervene on this feature\"."));
  for (const [id, iv] of S.ivs) {
    const row = el("div", { class: "iv-row", "data-node-id": id });
    const select = el("select");
    for (const [value, text] of [["0", "ablate (x0)"], ["-1", "invert (x-1)"], ["2", "double (x2)"], ["value", "set value"]]) select.append(el("option", { value }, text));
    select.value = iv.mode === "value" ? "value" : String(iv.amount);
    const amount = el("input", { type: "number", step: "any", value: String(iv.amount) });
    amount.hidden = iv.mode !== "value";
    select.addEventListener("change", () => {
      if (select.value === "value") { iv.mode = "value"; amount.hidden = false; iv.amount = Number(amount.value); }
      else { iv.mode = "multiplier"; iv.amount = Number(select.value); amount.hidden = true; }
    });
    amount.addEventListener("input", () => { iv.amount = Number(amount.value); });
    const remove = el("button", {}, "x");
    remove.addEventListener("click", () => { S.ivs.delete(id); renderInterventions(); });
    row.append(el("span", {}, `${iv.layer}:${iv.pos}:${iv.feature} ${iv.label.slice(0, 30)} `), select, amount, remove);
    list.append(row);
  }
}

async function runIntervention() {
  const box = $("intervene-result");
  const changes = [...S.ivs.values()].map(({ layer, pos, feature, mode, amount }) => ({ layer, pos, feature, mode, amount }));
  box.replaceChildren(el("span", { class: "spinner" }));
  try {
    const r = await api("/api/intervene", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt: S.doc.metadata.prompt, changes, generate: Number($("generate-n").value) || 0 }),
    });
    const table = el("table", { class: "edges", id: "intervene-table" });
    table.append(el("tr", {}, ""));
    table.lastChild.append(el("td", {}, "before"), el("td", {}, ""), el("td", {}, "after"), el("td", {}, ""));
    r.top_before.forEach((b, i) => {
      const a = r.top_after[i];
      const row = el("tr");
      row.append(el("td", {}, JSON.stringify(b.token)), el("td", { class: "w" }, fmt(b.prob)),
        el("td", {}, JSON.stringify(a.token)), el("td", { class: "w" }, fmt(a.prob)));
      table.append(row);
    });
    const parts = [table, el("div", { class: "kv" }, `KL(before || after) = ${fmt(r.kl, 4)} nats`)];
    if (r.generated_before !== undefined) {
      parts.push(el("div", { id: "generated-before" }, `before: ${JSON.stringify(r.generated_before)}`));
      parts.push(el("div", { id: "generated-after" }, `after: ${JSON.stringify(r.generated_after)}`));
    }
    box.replaceChildren(...parts);
  } catch (err) { box.replaceChildren(); showMessage(err.message); }
}

// ---- controls -----------------------------------------------------------------------------
function bindControls() {
  let timer = null;
  for (const id of ["node-threshold", "edge-threshold"]) {
    $(id).addEventListener("input", () => {
      $(`${id}-value`).textContent = fmt($(id).value, 2);
      clearTimeout(timer);
      timer = setTimeout(() => loadGraph(false), 150);
    });
  }
  $("graph-select").addEventListener("change", () => selectGraph($("graph-select").value));
  $("graph").addEventListener("click", () => {});
  $("fit-btn").addEventListener("click", fitView);
  $("pinned-only").addEventListener("change", () => render(true));
  $("group-btn").addEventListener("click", groupPinned);
  $("clear-btn").addEventListener("click", () => { S.pinned.clear(); render(false); renderSubgraph(); });
  $("save-btn").addEventListener("click", saveState);
  $("download-btn").addEventListener("click", downloadDoc);
  $("trace-btn").addEventListener("click", tracePrompt);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter") tracePrompt(); });
  $("intervene-btn").addEventListener("click", runIntervention);
  window.addEventListener("resize", fitView);
  bindPanZoom();
  renderInterventions();
}

window.circuitsViewer = { state: S, exportDoc, selectNode, selectEdge, selectHead, loadGraph, render };
init();
