// The fmesh dashboard: plain JS, no framework, no build step.
//
// Everything shown comes from the mesh (event ids, types, names, errors) and is hostile
// input: it is only ever set with textContent or setAttribute, never as HTML.
// The page holds no token: the login turns it into an HttpOnly session cookie, and the
// CSRF token that state-changing calls repeat is kept in memory only.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const MAX_FAILURES = 30;

const state = {
  session: null,        // {principal, scope, csrf, expires}
  live: null,           // the EventSource on /ui/live
  previous: null,       // {at, counts: {key: number}} of the last snapshot, for rates
  rates: {},            // key → events per second
  resources: null,      // {function: [...], subscription: [...], trigger: [...], bridge: [...]}
  names: "",            // the deployed names the resources were fetched for
  deadTotal: -1,        // dead letters counted in the last snapshot
  failures: [],         // newest first: {at, name, text}
};

// -- DOM helpers --------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attrs);
  append(node, children);
  return node;
}

function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  setAttributes(node, attrs);
  append(node, children);
  return node;
}

function setAttributes(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) throw new Error("no handlers as attributes: " + name);
    node.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

const $ = (id) => document.getElementById(id);

function when(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return new Date(seconds * 1000).toLocaleString();
}

function ms(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value * 10) / 10} ms`;
}

function rate(value) {
  if (value === undefined) return "";
  return `${value < 10 ? value.toFixed(1) : Math.round(value)}/s`;
}

// -- talking to the mesh -----------------------------------------------------------------

async function call(method, path, body) {
  const headers = {"Accept": "application/json"};
  if (method !== "GET" && state.session) headers["X-CSRF-Token"] = state.session.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {method, headers, credentials: "same-origin", cache: "no-store",
                                      body: body === undefined ? undefined : JSON.stringify(body)});
  let answer = null;
  try {
    answer = await response.json();
  } catch (_) {
    answer = null;
  }
  if (response.status === 401 && path !== "/ui/login") loggedOut();
  return {ok: response.ok, status: response.status, body: answer};
}

function errorText(result) {
  const said = result.body && typeof result.body.error === "string" ? result.body.error : "";
  return `${result.status}${said ? ": " + said : ""}`;
}

// -- login and logout ---------------------------------------------------------------------

async function start() {
  $("login-form").addEventListener("submit", onLogin);
  $("logout").addEventListener("click", onLogout);
  $("search-form").addEventListener("submit", onSearch);
  const result = await call("GET", "/ui/session");
  if (result.ok) loggedIn(result.body);
  else showLogin();
}

function showLogin() {
  $("dashboard").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  $("token").focus();
}

async function onLogin(submitted) {
  submitted.preventDefault();
  const field = $("token");
  $("login-error").textContent = "";
  const result = await call("POST", "/ui/login", {token: field.value});
  field.value = "";  // the token is not kept anywhere, the form included
  if (result.ok) loggedIn(result.body);
  else $("login-error").textContent = result.status === 401 ? "Wrong token." : `Refused (${errorText(result)})`;
}

function loggedIn(session) {
  state.session = session;
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = `${session.principal} (${session.scope})`;
  buildDeadActions();
  connect();
  refreshDeadLetters();
}

async function onLogout() {
  await call("POST", "/ui/logout");
  loggedOut();
}

function loggedOut() {
  if (state.live) state.live.close();
  state.live = null;
  state.session = null;
  state.previous = null;
  state.resources = null;
  state.names = "";
  state.deadTotal = -1;
  $("live").textContent = "offline";
  $("live").className = "live";
  showLogin();
}

const isAdmin = () => state.session && state.session.scope === "admin";

// -- the live stream -------------------------------------------------------------------

function connect() {
  if (state.live) state.live.close();
  const live = new EventSource("/ui/live");
  state.live = live;
  live.addEventListener("status", (message) => {
    $("live").textContent = "live";
    $("live").className = "live on";
    update(JSON.parse(message.data));
  });
  live.addEventListener("error", async () => {
    $("live").textContent = "reconnecting";
    $("live").className = "live off";
    const session = await call("GET", "/ui/session");  // a 401 shows the login again
    if (!session.ok && state.live === live) live.close();
  });
}

function counts(status) {
  const found = {};
  for (const f of status.functions) {
    found[`function:${f.name}`] = f.delivered + f.failed;
    found[`delivered:${f.name}`] = f.delivered;
  }
  for (const s of status.sinks) found[s.name] = s.delivered + s.failed;
  for (const b of status.bridges) found[`bridge:${b.name}`] = b.delivered + b.failed;
  for (const t of status.triggers) found[`trigger:${t.name}`] = t.events_in;
  // What came in over POST /: every sender but the triggers and the mesh's own replies.
  found.ingress = Object.entries(status.events_in || {})
    .filter(([sender]) => !/^(trigger|function|subscription|reply|deadletter|bridge):/.test(sender))
    .reduce((sum, [, count]) => sum + count, 0);
  return found;
}

function update(status) {
  $("mesh").textContent = `mesh ${status.mesh} · node ${status.node}`;
  const now = performance.now() / 1000;
  const current = counts(status);
  if (state.previous) {
    const seconds = Math.max(0.001, now - state.previous.at);
    state.rates = {};
    for (const [key, value] of Object.entries(current)) {
      const before = state.previous.counts[key];
      if (before !== undefined) state.rates[key] = Math.max(0, value - before) / seconds;
    }
  }
  noteFailures(status);
  state.previous = {at: now, counts: current, failed: failedCounts(status)};
  renderFunctions(status);
  renderFailures();
  refreshResources(status).then(() => renderTopology(status));
  const dead = status.functions.reduce((sum, f) => sum + f.dead_lettered, 0)
    + status.sinks.reduce((sum, s) => sum + s.dead_lettered, 0);
  if (dead !== state.deadTotal) {
    state.deadTotal = dead;
    refreshDeadLetters();
  }
}

// -- functions and failures --------------------------------------------------------------

function renderFunctions(status) {
  const body = $("functions").tBodies[0];
  clear(body);
  for (const f of status.functions) {
    const latency = f.latency_ms ? `${ms(f.latency_ms.p50)} / ${ms(f.latency_ms.p99)}` : "–";
    body.append(el("tr", {"data-function": f.name},
      el("td", {class: "name"}, f.name),
      el("td", {class: "replicas"}, `${f.ready}/${f.desired}`, f.starting ? ` (+${f.starting} starting)` : ""),
      el("td", {class: "cold-start"}, ms(f.cold_start_median_ms)),
      el("td", {class: "latency"}, latency),
      el("td", {class: "delivered num"}, f.delivered),
      el("td", {class: "failed num"}, f.failed),
      el("td", {class: "retried num"}, f.retried),
      el("td", {class: "dead-lettered num"}, f.dead_lettered),
      el("td", {class: "pending num"}, f.pending),
      el("td", {class: "rate num"}, rate(state.rates[`delivered:${f.name}`])),
      el("td", {class: "last-error error"}, f.last_error || "")));
  }
  $("functions-empty").hidden = status.functions.length > 0;
}

function failedCounts(status) {
  const found = {};
  for (const item of [...status.functions, ...status.sinks]) {
    found[item.name] = {failed: item.failed, error: item.last_error};
  }
  return found;
}

function noteFailures(status) {
  const before = state.previous ? state.previous.failed : {};
  for (const [name, now] of Object.entries(failedCounts(status))) {
    const then = before[name] ? before[name].failed : (state.previous ? 0 : null);
    const more = then === null ? now.failed : now.failed - then;
    if (more > 0) {
      const attempts = `${more} failed ${more === 1 ? "attempt" : "attempts"}`;
      const what = then === null ? `${attempts} so far` : attempts;
      state.failures.unshift({at: Date.now() / 1000, name, text: `${what}: ${now.error || "no error given"}`});
    }
  }
  state.failures.length = Math.min(state.failures.length, MAX_FAILURES);
}

function renderFailures() {
  const list = $("failures");
  clear(list);
  for (const failure of state.failures) {
    list.append(el("li", {}, el("time", {}, when(failure.at)), " ", el("strong", {}, failure.name), " ",
                   el("span", {class: "error"}, failure.text)));
  }
  $("failures-empty").hidden = state.failures.length > 0;
}

// -- topology ---------------------------------------------------------------------------

async function refreshResources(status) {
  const names = JSON.stringify([status.functions.map((f) => f.name), status.sinks.map((s) => s.name),
                                status.bridges.map((b) => b.name), status.triggers.map((t) => t.name)]);
  if (names === state.names && state.resources) return;
  state.names = names;
  const resources = {};
  for (const kind of ["function", "subscription", "trigger", "bridge"]) {
    const result = await call("GET", `/v1/${kind}s`);
    resources[kind] = result.ok ? result.body[`${kind}s`] : [];
  }
  state.resources = resources;
}

function outputsOf(resources) {
  // Where functions send what they return (reply_to) and what they give up on (dead_letter).
  const outputs = [];
  for (const f of resources ? resources.function : []) {
    if (f.reply_to) outputs.push({from: `function:${f.name}`, to: f.reply_to, label: "replies"});
    if (f.delivery && f.delivery.dead_letter) {
      outputs.push({from: `function:${f.name}`, to: f.delivery.dead_letter, label: "dead letters"});
    }
  }
  return outputs;
}

function renderTopology(status) {
  const sources = [{key: "ingress", label: "HTTP ingress", detail: "POST /", kind: "source"}];
  for (const t of status.triggers) {
    sources.push({key: `trigger:${t.name}`, label: t.name, detail: `${t.kind} trigger · ${t.state}`,
                  kind: t.state === "connected" ? "source" : "source down"});
  }
  const targets = [];
  for (const f of status.functions) {
    targets.push({key: `function:${f.name}`, label: f.name, kind: "function", "data-function": f.name,
                  detail: `function · ✓${f.delivered} ✗${f.failed} ☠${f.dead_lettered}`});
  }
  for (const s of status.sinks) {
    const [, name] = s.name.split(/:(.*)/s);
    targets.push({key: s.name, label: name || s.name, detail: `${s.name.split(":")[0]} → ${s.url}`, kind: "sink"});
  }
  for (const b of status.bridges) {
    targets.push({key: `bridge:${b.name}`, label: b.name, detail: `bridge · ${b.state} · backlog ${b.backlog}`,
                  kind: b.state === "connected" ? "bridge" : "bridge down"});
  }
  const outputs = outputsOf(state.resources);
  const ends = [...new Set(outputs.map((o) => o.to))].map((to) => ({key: `to:${to}`, label: to, kind: "output",
                                                                     detail: "reply or dead-letter target"}));
  drawTopology(sources, targets, ends, outputs);
}

const BOX = {width: 190, height: 40, gap: 14, top: 28};
const COLUMNS = [10, 300, 470, 760];

function position(items, x) {
  items.forEach((item, index) => {
    item.x = x;
    item.y = BOX.top + index * (BOX.height + BOX.gap);
  });
}

function drawTopology(sources, targets, ends, outputs) {
  const svg = $("topology");
  clear(svg);
  const hub = {key: "broker", label: "broker", detail: "routes by filter", kind: "hub"};
  position(sources, COLUMNS[0]);
  position(targets, COLUMNS[2]);
  position(ends, COLUMNS[3]);
  const rows = Math.max(sources.length, targets.length, ends.length, 1);
  const height = BOX.top + rows * (BOX.height + BOX.gap) + 10;
  hub.x = COLUMNS[1] - 80;
  hub.y = (height - BOX.height) / 2;
  svg.setAttribute("viewBox", `0 0 ${COLUMNS[3] + BOX.width + 10} ${height}`);
  svg.append(svgEl("text", {x: COLUMNS[0], y: 16, class: "heading"}, "sources"),
             svgEl("text", {x: COLUMNS[2], y: 16, class: "heading"}, "functions, subscriptions, bridges"),
             svgEl("text", {x: COLUMNS[3], y: 16, class: "heading"}, ends.length ? "replies and dead letters" : ""));
  const edges = svgEl("g", {class: "edges"});
  svg.append(edges);
  for (const source of sources) edges.append(edge(source, hub, state.rates[source.key], source.key));
  for (const target of targets) edges.append(edge(hub, target, state.rates[target.key], target.key));
  const byKey = Object.fromEntries(targets.map((t) => [t.key, t]));
  for (const output of outputs) {
    const from = byKey[output.from];
    const to = ends.find((e) => e.key === `to:${output.to}`);
    if (from && to) edges.append(edge(from, to, undefined, `${output.from}>${output.to}`, output.label));
  }
  for (const item of [...sources, hub, ...targets, ...ends]) svg.append(box(item));
}

function box(item) {
  const width = item.kind === "hub" ? 160 : BOX.width;
  return svgEl("g", {class: `node ${item.kind}`, "data-key": item.key, "data-function": item["data-function"],
                     transform: `translate(${item.x},${item.y})`},
    svgEl("rect", {width, height: BOX.height, rx: 6}),
    svgEl("text", {x: 8, y: 16, class: "label"}, clip(item.label, 26)),
    svgEl("text", {x: 8, y: 32, class: "detail"}, clip(item.detail, 34)),
    svgEl("title", {}, `${item.label}\n${item.detail}`));
}

function edge(from, to, perSecond, key, label) {
  const fromWidth = from.kind === "hub" ? 160 : BOX.width;
  const x1 = from.x + fromWidth, y1 = from.y + BOX.height / 2;
  const x2 = to.x, y2 = to.y + BOX.height / 2;
  const middle = (x1 + x2) / 2;
  const busy = perSecond !== undefined && perSecond > 0;
  const group = svgEl("g", {class: `edge${busy ? " busy" : ""}${label ? " output" : ""}`, "data-edge": key});
  group.append(svgEl("path", {d: `M${x1},${y1} C${middle},${y1} ${middle},${y2} ${x2},${y2}`}));
  const text = label || (perSecond === undefined ? "" : rate(perSecond));
  if (text) {  // by the end that is not the hub, where no other edge's label is
    const atSource = to.kind === "hub";
    group.append(svgEl("text", {x: atSource ? x1 + 6 : x2 - 6, y: (atSource ? y1 : y2) - 5,
                                class: `rate${atSource ? "" : " end"}`}, text));
  }
  return group;
}

function clip(text, length) {
  const value = String(text);
  return value.length > length ? value.slice(0, length - 1) + "…" : value;
}

// -- event search (the trail, as `fmesh trace` prints it) --------------------------------

async function onSearch(submitted) {
  submitted.preventDefault();
  await trace($("event-id").value.trim());
}

async function trace(id) {
  const out = $("trail");
  clear(out);
  if (!id) return;
  $("event-id").value = id;
  const result = await call("GET", `/v1/trail/${encodeURIComponent(id)}`);
  if (!result.ok) {
    out.append(el("p", {class: "error"}, result.status === 404 && result.body && result.body.error
      ? result.body.error : `Could not look it up (${errorText(result)}).`));
    return;
  }
  for (const entry of result.body.trail) out.append(trailEntry(entry));
}

// The same tree as `fmesh trace` (fmesh/cli_trail.py): the event, then per subscription
// its outcome and steps, then its replies, then steps of subscriptions it was not routed to.
function trailEntry(entry) {
  const node = el("div", {class: "trail-entry", "data-event": entry.id}, headline(entry));
  node.append(el("ul", {class: "tree"}, branches(entry)));
  return node;
}

function headline(entry) {
  if (entry.at === null) {
    const head = el("div", {class: "trail-head"}, el("strong", {class: "event-id"}, entry.id), " from ",
                    el("span", {class: "source"}, entry.source), "  ", unstored(entry));
    if (entry.parent) head.append("  (reply to ", lookup(entry.parent.id), ")");
    return head;
  }
  const head = el("div", {class: "trail-head"},
    el("strong", {class: "event-id"}, entry.id), "  ", el("span", {class: "type"}, entry.type),
    "  from ", el("span", {class: "source"}, entry.source), "  sent by ", el("span", {class: "sender"}, entry.sender),
    "  at ", el("time", {}, clock(entry.at)));
  if (entry.parent) head.append("  (reply to ", lookup(entry.parent.id), ")");
  if (entry.traceparent) {
    const parts = String(entry.traceparent).split("-");
    head.append("  trace ", el("code", {class: "trace-id", title: entry.traceparent}, parts.length > 1 ? parts[1] : ""));
  }
  return head;
}

function branches(entry) {
  const outcome = entry.outcome || {};
  const steps = entry.steps || [];
  if (Object.keys(outcome).length === 0 && entry.at !== null) {
    return [el("li", {class: "unrouted"}, "matched nothing: no subscription's filter passed it, so it was not stored")];
  }
  const items = [];
  for (const [subscription, result] of Object.entries(outcome)) {
    const own = steps.filter((s) => s.subscription === subscription && s.kind !== "reply");
    items.push(el("li", {class: "route", "data-subscription": subscription},
      el("span", {class: "subscription"}, subscription), ": ",
      el("span", {class: `outcome ${result}`}, outcomeText(result, own)),
      own.length ? el("ul", {}, own.map((s) => el("li", {class: "step"}, stepLine(s)))) : null));
  }
  for (const reply of entry.replies || []) {
    items.push(el("li", {class: "reply", "data-event": reply.id}, "reply ", lookup(reply.id), "  ",
                  reply.at === null ? unstored(reply) : el("span", {class: "type"}, reply.type),
                  el("ul", {}, branches(reply))));
  }
  for (const step of steps.filter((s) => !(s.subscription in outcome) && s.kind !== "reply")) {
    items.push(el("li", {class: "step"}, stepLine(step)));
  }
  return items;
}

// An entry without an arrival: a reply the mesh dropped (looped, over the hop limit), or one the trail forgot.
function unstored(entry) {
  return entry.stored === false ? el("span", {class: "unstored"}, "not stored") : "(its arrival is no longer in the trail)";
}

function outcomeText(outcome, steps) {
  const last = steps.length ? steps[steps.length - 1] : null;
  if (outcome === "retrying" && last && last.due) {
    const left = last.due - Date.now() / 1000;
    return `retrying, attempt ${last.attempt + 1} due at ${clock(last.due)} (${left > 0 ? `in ${left.toFixed(1)}s` : "due now"})`;
  }
  if (outcome === "pending") return steps.length ? "pending" : "pending (not attempted yet)";
  return outcome;
}

function stepLine(step) {
  const parts = [`${clock(step.at)}  `, el("span", {class: `kind ${step.kind}`}, step.kind)];
  if (step.attempt) parts.push(`, attempt ${step.attempt}`);
  if (step.duration_ms !== null && step.duration_ms !== undefined) parts.push(`, ${step.duration_ms.toFixed(1)} ms`);
  if (step.status !== null && step.status !== undefined) parts.push(`, status ${step.status}`);
  if (step.detail) parts.push(` → ${step.detail}`);
  if (step.error) parts.push(": ", el("span", {class: "error"}, step.error));
  return parts;
}

function clock(seconds) {
  const at = new Date(seconds * 1000);
  return `${at.toTimeString().slice(0, 8)}.${String(at.getMilliseconds()).padStart(3, "0")}`;
}

function lookup(id) {
  const button = el("button", {type: "button", class: "link"}, id);
  button.addEventListener("click", () => trace(id));
  return button;
}

// -- dead letters -----------------------------------------------------------------------

function buildDeadActions() {
  const actions = $("dead-actions");
  clear(actions);
  if (!isAdmin()) return;  // a read session gets no buttons (and a 403 if it tried)
  const replayAll = el("button", {type: "button", id: "replay-all"}, "Replay all");
  replayAll.addEventListener("click", () => replay(shownLetterIds()));
  const purge = el("button", {type: "button", id: "purge", class: "danger"}, "Purge all");
  let armed = null;
  purge.addEventListener("click", async () => {
    if (!armed) {  // two clicks, no confirm() dialog: the second within 5 s purges
      purge.textContent = "Click again to purge every dead letter";
      armed = setTimeout(() => { armed = null; purge.textContent = "Purge all"; }, 5000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    purge.textContent = "Purge all";
    const result = await call("DELETE", "/v1/dead-letters");
    $("dead-message").textContent = result.ok ? `Purged ${result.body.purged}.` : `Not purged (${errorText(result)}).`;
    refreshDeadLetters();
  });
  actions.append(replayAll, " ", purge);
}

let shownLetters = [];
const shownLetterIds = () => shownLetters.map((letter) => letter.id);

async function refreshDeadLetters() {
  const result = await call("GET", "/v1/dead-letters?limit=1000");
  if (!result.ok) return;
  shownLetters = result.body.dead_letters.slice().sort((a, b) => b.failed_at - a.failed_at);
  const body = $("dead-letters").tBodies[0];
  clear(body);
  for (const letter of shownLetters) body.append(deadLetterRow(letter));
  $("dead-empty").hidden = shownLetters.length > 0;
  const replayAll = $("replay-all");
  if (replayAll) replayAll.disabled = shownLetters.length === 0;
}

function deadLetterRow(letter) {
  const attributes = (letter.event && letter.event.attributes) || {};
  const actions = el("td", {class: "actions"});
  if (isAdmin()) {
    const button = el("button", {type: "button", class: "replay", "data-letter": letter.id}, "Replay");
    button.addEventListener("click", () => replay([letter.id]));
    actions.append(button);
  }
  return el("tr", {"data-letter": letter.id, "data-event": attributes.id},
    el("td", {class: "num"}, letter.id),
    el("td", {}, el("time", {}, when(letter.failed_at))),
    el("td", {}, letter.subscription),
    el("td", {class: "event-id"}, attributes.id ? lookup(String(attributes.id)) : ""),
    el("td", {class: "type"}, attributes.type || ""),
    el("td", {class: "num"}, letter.attempts),
    el("td", {class: "num"}, letter.status === null ? "" : letter.status),
    el("td", {class: "error"}, [letter.reason, letter.error].filter(Boolean).join(": ")),
    actions);
}

async function replay(ids) {
  if (ids.length === 0) return;
  const result = await call("POST", "/v1/dead-letters/replay", {ids});
  const message = $("dead-message");
  if (!result.ok) {
    message.textContent = `Not replayed (${errorText(result)}).`;
    return;
  }
  const notes = [];
  if (result.body.not_found.length) notes.push(`${result.body.not_found.length} already gone`);
  if (result.body.not_routed.length) notes.push(`${result.body.not_routed.length} with nowhere to go`);
  message.textContent = `Replayed ${result.body.replayed}.${notes.length ? " " + notes.join(", ") + "." : ""}`;
  refreshDeadLetters();
}

document.addEventListener("DOMContentLoaded", start);
