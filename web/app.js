// The Paygent approvals inbox: no framework, no build step. Pending requests arrive live over the WebSocket,
// replayed from the last seen sequence number after a reconnect, so a dropped connection misses nothing.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
// An id's last characters: ids are time-ordered, so their first ones are alike.
const short = (id) => `…${id.slice(-8)}`;
const state = { token: null, role: null, items: new Map(), lastSeq: null, socket: null, budgets: new Map(),
  selected: null, retry: 500, sessionLabels: new Map(), actors: new Map(), auditSubject: null,
  auditSearch: 0, timelines: new Set() };

async function call(method, path, body) {
  const resp = await fetch(`/api/v1${path}`, {
    method,
    headers: { "Authorization": `Bearer ${state.token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await resp.json().catch(() => null);
  if (!resp.ok) {
    const err = new Error((data && data.detail) || `${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return { resp, data };
}

async function api(method, path, body) {
  return (await call(method, path, body)).data;
}

// A page of a list and the path of the next one, from its `Link` header (absent on the last page).
async function listPage(path) {
  const { resp, data } = await call("GET", path);
  const link = resp.headers.get("Link")?.match(/<\/api\/v1([^>]*)>/);
  return { items: data, next: link ? link[1] : null };
}

function show(el, visible) { el.hidden = !visible; }

// Dangerous buttons ask twice, in place (no dialog): the first click arms them for five seconds.
function twoStep(button, question, action) {
  const label = button.textContent;
  button.addEventListener("click", async () => {
    if (!button.classList.contains("armed")) {
      button.classList.add("armed");
      button.textContent = question;
      setTimeout(() => { button.classList.remove("armed"); button.textContent = label; }, 5000);
      return;
    }
    button.classList.remove("armed");
    button.textContent = label;
    await action();
  });
}

async function signIn(token) {
  state.token = token;
  const me = await api("GET", "/me");
  if (me.role === "agent") throw new Error("agent keys cannot decide: use an approver or admin key");
  state.role = me.role;
  sessionStorage.setItem("paygent-token", token);
  $("#who-role").textContent = `${me.role} · tenant ${short(me.tenant_id)}`;
  show($("#who"), true);
  show($("#sign-in"), false);
  show($("#views"), true);
  show($("#admin-tools"), me.role === "admin");
  show($("#views [data-view=audit]"), me.role === "admin");
  view("inbox");
  connect();
  await Promise.all([reload(), refreshStop(), loadExecutions(), loadSessions()]);
}

// One view at a time: the inbox, executions with their steps, sessions with budgets, the audit trail. Resolves
// once the view has read what it shows (unless `load` is false, for a view about to be filled by its caller).
function view(name, load = true) {
  for (const button of document.querySelectorAll("#views button")) {
    const on = button.dataset.view === name;
    button.setAttribute("aria-pressed", String(on));
    show($(`#${button.dataset.view}`), on);
  }
  const loads = {
    budgets: loadSessions,
    decided: () => decidedAgents().then(searchDecided),
    executions: loadExecutions,
    audit: searchAudit,
    policies: loadPolicies,
    spend: () => spendScopes().then(loadSpend),
  };
  return load && loads[name] ? loads[name]() : Promise.resolve();
}

// A policy's rules: its view without the record's own fields.
function rulesOf(policy) {
  const { id, name, version, created_at, updated_at, ...rules } = policy;
  return rules;
}

// Policies for people to read; admins edit a policy's rules as JSON, and the server checks them.
async function loadPolicies() {
  const policies = await api("GET", "/policies");
  const admin = state.role === "admin";
  $("#policy-list").replaceChildren(...policies.map((policy) => {
    const li = document.createElement("li");
    li.className = "item policy";
    li.dataset.policyId = policy.id;
    li.dataset.policyName = policy.name;
    const head = document.createElement("p");
    head.className = "what";
    head.textContent = `${policy.name} · version ${policy.version} · people above $${policy.approval_threshold_usd}` +
      (policy.max_per_payment_usd ? ` · at most $${policy.max_per_payment_usd} a payment` : "") +
      (policy.limits.length ? ` · ${policy.limits.length} period limit(s)` : "");
    const rules = document.createElement("textarea");
    rules.className = "rules";
    rules.rows = 8;
    rules.spellcheck = false;
    rules.readOnly = !admin;
    rules.setAttribute("aria-label", `Rules of ${policy.name} (JSON)`);
    rules.value = JSON.stringify(rulesOf(policy), null, 2);
    li.append(head, rules);
    if (admin) li.append(...policyEditor(policy, rules));
    return li;
  }));
  show($("#new-policy"), admin);
}

function policyEditor(policy, rules) {
  const result = document.createElement("p");
  result.className = "policy-result";
  result.setAttribute("role", "status");
  const save = document.createElement("button");
  save.type = "button";
  save.className = "save-policy";
  save.textContent = "Save rules";
  save.addEventListener("click", async () => {
    try {
      const saved = await api("PUT", `/policies/${policy.id}`, JSON.parse(rules.value));
      result.textContent = `Saved: version ${saved.version}`;
      loadPolicies();
    } catch (e) {
      result.textContent = `Not saved: ${e.message}`;
    }
  });
  return [save, result];
}

async function createPolicy(ev) {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const result = $("#new-policy .policy-result");
  try {
    const created = await api("POST", "/policies", { ...JSON.parse(form.get("rules")), name: form.get("name") });
    result.textContent = `Created ${created.name}`;
    loadPolicies();
  } catch (e) {
    result.textContent = `Not created: ${e.message}`;
  }
}

function signOut() {
  sessionStorage.removeItem("paygent-token");
  if (state.socket) state.socket.close();
  location.reload();
}

async function reload() {
  const pending = await api("GET", "/approvals/pending?limit=500");
  for (const a of pending) upsert(a);
}

async function refreshStop() {
  const stop = await api("GET", "/kill-switch");
  banner(stop);
}

function banner(stop) {
  const el = $("#stop-banner");
  el.textContent = stop.engaged ? `Emergency stop engaged${stop.reason ? `: ${stop.reason}` : ""}. No money moves.` : "";
  show(el, !!stop.engaged);
  show($("#engage"), !stop.engaged);
  show($("#release"), !!stop.engaged);
}

function connect() {
  const after = state.lastSeq === null ? "" : `&after_seq=${state.lastSeq}`;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/api/v1/ws?token=${encodeURIComponent(state.token)}${after}`);
  state.socket = ws;
  ws.onopen = () => { $("#live").classList.add("on"); state.retry = 500; };
  ws.onmessage = (m) => onEvent(JSON.parse(m.data));
  ws.onclose = () => {
    $("#live").classList.remove("on");
    if (!state.token) return;
    setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 10000);
  };
}

function onEvent(e) {
  if (typeof e.seq === "number") state.lastSeq = e.seq;
  const data = e.data || {};
  // Anything that moves money or reservations makes the session's budget stale.
  if (e.session_id) state.budgets.delete(e.session_id);
  switch (e.type) {
    case EVENT.APPROVAL_REQUIRED: upsert(data); announce(); break;
    case EVENT.APPROVAL_UPDATED: upsert(data); break;
    case EVENT.APPROVAL_ESCALATED: upsert(data); announce(); break;
    case EVENT.APPROVED: case EVENT.REJECTED: case EVENT.EDITED: case EVENT.EXPIRED:
      remove(data.id, `${e.type} elsewhere`); break;
    case EVENT.CANCELLED:
      if (data.kind === "approval") remove(data.id, "cancelled");
      else if (data.kind === "session") thawed(data.session_id);
      else executionsChanged();
      break;
    case EVENT.KILL_SWITCH: banner(data); break;
    case EVENT.SESSION_FROZEN: frozenAlert(data.session_id, data); announce(); break;
    case EVENT.SESSION_UNFROZEN: thawed(data.session_id); break;
    case EVENT.EXECUTION_STARTED: case EVENT.EXECUTION_PAUSED: case EVENT.EXECUTION_RESUMED:
    case EVENT.EXECUTION_COMPLETED: case EVENT.EXECUTION_FAILED: executionsChanged(); break;
  }
}

// Executions: the latest twenty, refreshed whenever one changes state.
let executionsTimer = null;
function executionsChanged() {
  clearTimeout(executionsTimer);
  executionsTimer = setTimeout(loadExecutions, 100);
}

async function loadExecutions() {
  const list = await api("GET", "/executions?limit=20");
  // Sessions are named from the latest ones, read again only when an execution's session is new to the page.
  const unknown = () => list.filter((e) => !state.sessionLabels.has(e.session_id));
  if (unknown().length) await sessionsAndAgents();
  // One older than the latest sessions keeps its id, and is not looked for again.
  for (const e of unknown()) state.sessionLabels.set(e.session_id, `session ${short(e.session_id)}`);
  const ol = $("#execution-list");
  const items = list.map((e) => executionItem(e, state.sessionLabels.get(e.session_id)));
  ol.replaceChildren(...items);
  // A timeline someone opened stays open, read again.
  for (const li of items) {
    if (state.timelines.has(li.dataset.executionId)) toggleSteps(li, $(".what", li), li.dataset.executionId);
  }
  show($("#no-executions"), list.length === 0);
}

function executionItem(e, where) {
  const li = document.createElement("li");
  li.className = "item execution";
  li.dataset.executionId = e.id;
  const head = document.createElement("button");
  head.type = "button";
  head.className = "what quiet";
  head.setAttribute("aria-expanded", "false");
  head.textContent = `${e.command ?? "plan"} — ${e.status}`;
  head.addEventListener("click", () => toggleSteps(li, head, e.id));
  const meta = document.createElement("p");
  meta.className = "meta";
  meta.textContent = `${where} · step ${e.current_step} · $${e.cost_usd}` +
    (e.error ? ` · ${e.error}` : "");
  li.append(head, meta);
  if (e.status === "running" || e.status === "awaiting_approval") {
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "cancel-execution kill-session";
    cancel.textContent = "Cancel";
    twoStep(cancel, "Really cancel it?", async () => {
      await api("POST", `/executions/${e.id}/cancel`).catch((err) => { meta.textContent = err.message; });
      executionsChanged();
    });
    li.append(cancel);
  }
  return li;
}

// Opens or closes an execution's timeline. The list may be read again while a timeline is read: it goes to the
// execution's item then in the list.
async function toggleSteps(li, head, id) {
  if (state.timelines.has(id) && $(".timeline", li)) {
    state.timelines.delete(id);
    $(".timeline", li).remove();
    head.setAttribute("aria-expanded", "false");
    return;
  }
  state.timelines.add(id);
  const box = await timeline(id);
  const current = $(`#execution-list [data-execution-id="${id}"]`) ?? li;
  if (!state.timelines.has(id) || $(".timeline", current)) return;
  current.append(box);
  $(".what", current).setAttribute("aria-expanded", "true");
}

// An execution's timeline: each step's words, and under them its time on a lane as long as the execution, the
// part it waited on a person hatched.
async function timeline(id) {
  const e = await api("GET", `/executions/${id}`);
  // The request each step waited on, for who decided it and how soon (an execution's steps are few).
  const asked = await Promise.all(e.steps.map((step) => step.approval_id
    ? api("GET", `/approvals/${step.approval_id}`).catch(() => null) : null));
  const start = Date.parse(e.created_at);
  const span = Math.max(1, (e.finished_at ? Date.parse(e.finished_at) : Date.now()) - start);
  const box = document.createElement("div");
  box.className = "timeline";
  const total = document.createElement("p");
  total.className = "meta took";
  const waited = asked.reduce((sum, a) => sum + (a ? waitOf(a)[1] : 0), 0);
  total.textContent = `${e.finished_at ? "Took" : "Running for"} ${seconds(span)}` +
    ` · ${e.steps.length} step${e.steps.length === 1 ? "" : "s"} · $${e.cost_usd}` +
    (waited ? ` · ${seconds(waited)} waiting on people` : "");
  const ol = document.createElement("ol");
  ol.className = "steps";
  ol.start = 0;
  ol.append(...e.steps.map((step, i) => stepItem(step, asked[i], start, span)));
  box.append(total, ol);
  return box;
}

function stepItem(step, asked, start, span) {
  const item = document.createElement("li");
  item.dataset.step = String(step.idx);
  item.className = `step ${step.status}`;
  const outcome = step.error ? `error: ${step.error}` : step.result ? summary(step.result) : "";
  const cost = step.cost_usd ? ` · $${step.cost_usd}` : "";
  const took = step.duration_ms !== null && step.duration_ms !== undefined ? ` · ${step.duration_ms} ms` : "";
  const words = document.createElement("p");
  words.textContent = `${step.tool} ${JSON.stringify(step.args)} — ${step.status}${cost}${took}` +
    (outcome ? ` — ${outcome}` : "") + waitedOn(asked);
  const lane = document.createElement("div");
  lane.className = "lane";
  lane.setAttribute("aria-hidden", "true");
  const part = (cls, from, to) => {
    const bar = document.createElement("span");
    bar.className = cls;
    const left = Math.min(100, Math.max(0, (from - start) / span * 100));
    bar.style.left = `${left}%`;
    bar.style.width = `${Math.max(0.5, Math.min(100 - left, (to - from) / span * 100))}%`;
    lane.append(bar);
  };
  if (step.started_at) {
    part("run", Date.parse(step.started_at), step.finished_at ? Date.parse(step.finished_at) : Date.now());
  }
  if (asked) part("wait", Date.parse(asked.created_at), Date.parse(asked.created_at) + waitOf(asked)[1]);
  item.append(words, lane);
  return item;
}

// How long a request waited on people: until its decision, or until now.
function waitOf(a) {
  const until = a.decision ? Date.parse(a.decision.at) : Date.now();
  return [a.decision, Math.max(0, until - Date.parse(a.created_at))];
}

function seconds(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

// The person a step waited on: who decided its request, and how long after it was filed.
function waitedOn(a) {
  if (!a) return "";
  const [d, waited] = waitOf(a);
  if (!d) return " — waiting on a person";
  return ` — ${a.status}${d.by ? ` by ${d.by_name ?? short(d.by)}` : ""} after ${Math.round(waited / 1000)} s`;
}

// A step's result in one line: a payment's status, or a fetch's status and the start of its body.
function summary(result) {
  if (result.status && result.amount) return `${result.status} ${result.amount} ${result.currency ?? ""}`.trim();
  if (result.body !== undefined) return `HTTP ${result.status}: ${String(result.body).slice(0, 80)}`;
  return JSON.stringify(result).slice(0, 120);
}

// A session the circuit breaker froze: an alert in the inbox until someone unfreezes (or kills) it.
function frozenAlert(sessionId, freeze) {
  const ol = $("#frozen-list");
  const li = ol.querySelector(`[data-session-id="${sessionId}"]`) ?? document.createElement("li");
  li.className = "item frozen";
  li.dataset.sessionId = sessionId;
  li.setAttribute("role", "alert");
  const what = document.createElement("p");
  what.className = "what";
  what.textContent = `Session ${short(sessionId)} is frozen by the circuit breaker (${freeze.rule}): ` +
    `${freeze.detail}. Its payments are denied and its executions wait.`;
  const error = document.createElement("p");
  error.className = "error";
  li.replaceChildren(what, error, unfreezeButton(sessionId, error));
  ol.append(li);
}

function thawed(sessionId) {
  $(`#frozen-list [data-session-id="${sessionId}"]`)?.remove();
  if (!$("#budgets").hidden) loadSessions();
}

// Unfreezes a session after a second click; the server refuses the key whose payment tripped the breaker.
function unfreezeButton(sessionId, error) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "unfreeze";
  button.textContent = "Unfreeze";
  twoStep(button, "Really let it pay again?", async () => {
    try {
      await api("POST", `/sessions/${sessionId}/unfreeze`, { comment: "unfrozen from the inbox" });
      thawed(sessionId);
    } catch (err) {
      error.textContent = err.message;
    }
  });
  return button;
}

async function loadSessions() {
  const sessions = await api("GET", "/sessions?limit=100");
  const ol = $("#session-list");
  ol.replaceChildren(...sessions.map((session) => {
    const li = document.createElement("li");
    li.className = "item session";
    li.dataset.sessionId = session.id;
    const head = document.createElement("p");
    head.className = "what";
    head.textContent = `${session.name ?? "session"} ${short(session.id)} — ${session.state}` +
      ` · by ${session.created_by_name ?? short(session.created_by)}` +
      (session.wallet_address ? ` · wallet ${session.wallet_address}` : "");
    const budget = document.createElement("p");
    budget.className = "budget";
    budget.textContent = budgetLines(session.budget);
    li.append(head, budget);
    if (session.frozen) {
      const why = document.createElement("p");
      why.className = "error";
      why.textContent = `frozen by ${session.frozen.rule}: ${session.frozen.detail}`;
      li.append(why, unfreezeButton(session.id, why));
      frozenAlert(session.id, session.frozen);
    }
    return li;
  }));
  show($("#no-sessions"), sessions.length === 0);
}

// The latest sessions, and the agents that opened them by name: what people pick from.
async function sessionsAndAgents() {
  const sessions = await api("GET", "/sessions?limit=100");
  const agents = new Map(sessions.map((s) => [s.created_by, s.created_by_name ?? short(s.created_by)]));
  for (const s of sessions) {
    state.sessionLabels.set(s.id, `${s.name ?? "session"} ${short(s.id)} · ${agents.get(s.created_by)}`);
  }
  return { sessions, agents };
}

// Fills a select with `first` and then `groups` of [value, text] options, keeping what was chosen if still there.
function choices(select, first, groups) {
  const chosen = select.value;
  select.replaceChildren(first, ...groups.map(([label, options]) => {
    const g = document.createElement("optgroup");
    g.label = label;
    g.append(...options.map(([value, text]) => new Option(text, value)));
    return g;
  }));
  select.value = chosen;
  if (select.value !== chosen) select.value = "";
}

// The spend view of one scope (`session_id=...` or `agent_id=...`), from a link elsewhere.
function openSpend(scope) {
  state.spendScope = scope;
  view("spend");
}

// Whose spend people pick: the tenant, each agent that opened a session (by name), each session.
async function spendScopes() {
  const { sessions, agents } = await sessionsAndAgents();
  choices($("#spend-scope"), new Option("The whole tenant", ""), [
    ["Agents", [...agents].map(([id, name]) => [`agent_id=${id}`, name])],
    ["Sessions", sessions.map((s) => [`session_id=${s.id}`, state.sessionLabels.get(s.id)])],
  ]);
  if (state.spendScope) $("#spend-scope").value = state.spendScope;
  state.spendScope = null;
}

// The decided filter's agents, by name.
async function decidedAgents() {
  const { agents } = await sessionsAndAgents();
  choices($("#decided-agent"), new Option("any", ""), [["Agents", [...agents]]]);
}

// Spend: today against each limit (bars), the last day and month (charts, with their figures), top payees.
async function loadSpend() {
  const scope = $("#spend-scope").value;
  try {
    const s = await api("GET", `/spend${scope ? `?${scope}` : ""}`);
    show($("#spend-error"), false);
    $("#spend-limits").replaceChildren(...limitLines(s).map(([label, line]) => bar(label, line)));
    drawSpend("hours", s.hours, s.hours_total, "Hour (UTC)");
    drawSpend("days", s.days, s.days_total, "Day (UTC)");
    $("#spend-payees").replaceChildren(...s.top_payees.map((p) => {
      const li = document.createElement("li");
      li.dataset.payee = p.payee;
      li.title = p.payee;
      const who = p.label ? `${p.label} (${payeeName(p.payee)})` : payeeName(p.payee);
      li.textContent = `${who}: ${p.usd} USD in ${p.payments} payment${p.payments === 1 ? "" : "s"}`;
      return li;
    }));
    show($("#no-payees"), s.top_payees.length === 0);
  } catch (e) {
    $("#spend-error").textContent = `Cannot read spend: ${e.message}`;
    show($("#spend-error"), true);
  }
}

// The limits a spend picture carries: a session's budget today, an agent's policy limits this period.
function limitLines(s) {
  const lines = [];
  if (s.budget?.usd.limit != null) lines.push(["USD today", s.budget.usd]);
  for (const [c, l] of Object.entries(s.budget?.currencies ?? {})) {
    if (l.limit !== null) lines.push([`${c} today`, l]);
  }
  for (const l of s.limits) lines.push([`${l.currency ?? "USD"} this ${l.period}`, l]);
  return lines;
}

// One limit as words and a bar: spent, then reserved, as shares of the limit (red once past it).
function bar(label, l) {
  const line = document.createElement("div");
  const words = document.createElement("p");
  words.className = "bar-label";
  words.textContent = `${label}: ${l.spent} spent, ${l.reserved} reserved of ${l.limit}`;
  const track = document.createElement("div");
  track.className = "bar";
  track.setAttribute("aria-hidden", "true");
  const limit = Math.max(Number(l.limit), Number.EPSILON);
  track.classList.toggle("over", Number(l.spent) + Number(l.reserved) > Number(l.limit));
  for (const part of ["spent", "reserved"]) {
    const fill = document.createElement("span");
    fill.className = part;
    fill.style.width = `${Math.min(100, (100 * Number(l[part])) / limit)}%`;
    track.append(fill);
  }
  line.append(words, track);
  return line;
}

const charts = {};

// A chart of spend per hour or day (uPlot, bars), and the same figures as a table for reading.
function drawSpend(kind, points, total, heading) {
  $(`#spend-${kind}-total`).textContent = `${total.usd} USD in ${total.payments} payments`;
  const box = $(`#spend-${kind}-chart`);
  charts[kind]?.destroy();
  const data = [points.map((p) => Date.parse(p.start) / 1000), points.map((p) => Number(p.usd))];
  const step = kind === "hours" ? 3600 : 86400;
  charts[kind] = new uPlot({
    width: Math.max(260, box.clientWidth), height: 180, legend: { show: false },
    // Half a step of room on each side, so the first and last bars are whole.
    scales: { x: { time: true, range: (u, min, max) => [min - step / 2, max + step / 2] } },
    axes: [{ stroke: "#4b5563" }, { stroke: "#4b5563" }],
    series: [{}, { label: "USD", stroke: "#0b57d0", fill: "rgba(11, 87, 208, 0.35)", points: { show: false },
      paths: uPlot.paths.bars({ size: [0.7, 40] }) }],
  }, data, box);
  const row = (cells, tag) => {
    const tr = document.createElement("tr");
    tr.append(...cells.map((text) => {
      const cell = document.createElement(tag);
      cell.textContent = text;
      if (tag === "th") cell.scope = "col";
      return cell;
    }));
    return tr;
  };
  const spent = points.filter((p) => p.payments !== 0 || Number(p.usd) !== 0);
  $(`#spend-${kind}`).replaceChildren(row([heading, "USD", "Payments"], "th"), ...spent.map((p) => {
    const when = kind === "hours" ? p.start.slice(0, 16).replace("T", " ") : p.start.slice(0, 10);
    const tr = row([when, p.usd, String(p.payments)], "td");
    tr.dataset.start = p.start;
    return tr;
  }));
}

// A payee as people read it: an address by its ends, an x402 service by its host.
function payeeName(p) {
  return /^0x[0-9a-f]{40}$/.test(p) ? `${p.slice(0, 6)}…${p.slice(-4)}` : p;
}

// The audit trail, newest first, narrowed by what happened, who did it, when, and the object it happened to.
function auditQuery() {
  const query = new URLSearchParams({ limit: "50", before: String(Number.MAX_SAFE_INTEGER) });
  for (const [name, value] of new FormData($("#audit-filter"))) {
    if (value !== "") query.set(name, name === "since" || name === "until" ? new Date(value).toISOString() : value);
  }
  if (state.auditSubject) query.set("subject", state.auditSubject);
  return `/audit?${query}`;
}

async function searchAudit(ev) {
  ev?.preventDefault();
  state.auditSearch += 1;
  $("#audit-list").replaceChildren();
  await moreAudit(auditQuery());
}

// A read looks at 1,000 entries at most: a filter few entries match goes on for up to ten reads before it stops
// with "Older" to go further back. What an earlier search reads after a newer one began is dropped.
async function moreAudit(path) {
  const search = state.auditSearch;
  const error = $("#audit-error");
  show(error, false);
  let next = path;
  try {
    for (let reads = 0; next && reads < 10; reads++) {
      const { items: page, next: after } = await listPage(next);
      if (search !== state.auditSearch) return;
      next = after;
      $("#audit-list").append(...page.entries.map(auditItem));
      if (page.entries.length) break;
    }
  } catch (e) {
    error.textContent = e.message;
    show(error, true);
  }
  $("#audit-more").dataset.next = next ?? "";
  show($("#audit-more"), !!next);
  show($("#no-audit"), error.hidden && !next && $("#audit-list").children.length === 0);
  auditActors();
}

// The people and keys the trail has named so far, to narrow it to one of them.
function auditActors() {
  const paygent = ["Paygent", [["system", "Paygent itself"]]];
  choices($("#audit-actor"), new Option("anyone", ""), [paygent, ["Keys", [...state.actors]]]);
}

// Entries about one object only (an approval request, a payment, ...), until "Every entry".
function aboutSubject(subject) {
  state.auditSubject = subject;
  const [kind, id] = subject.split(":");
  $("#audit-about span").textContent = `Entries about ${kind} ${id ? short(id) : ""}`;
  show($("#audit-about"), !!subject);
  return searchAudit();
}

// Where an entry's object is shown: the button's words and what it opens.
const OPENS = {
  approval: ["The request", openApproval],
  execution: ["The execution", openExecution],
  payment: ["The payment", openPayment],
  policy: ["The policy", openPolicy],
};

function auditItem(entry) {
  const li = document.createElement("li");
  li.className = "item";
  li.dataset.seq = String(entry.seq);
  const key = entry.actor.startsWith("key:") ? entry.actor.slice(4) : null;
  if (key && entry.actor_name) state.actors.set(key, entry.actor_name);
  const words = document.createElement("p");
  words.className = "what";
  words.textContent = entry.words;
  const meta = document.createElement("p");
  meta.className = "meta";
  const [kind, id] = entry.subject.split(":");
  meta.textContent = `#${entry.seq} · ${new Date(entry.at).toLocaleString()} · ${entry.action}` +
    (id ? ` · ${kind} ${short(id)}` : "");
  meta.title = `${entry.actor} · ${entry.subject} · hash ${entry.hash}`;
  const links = document.createElement("div");
  links.className = "actions";
  const link = (cls, text, action) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = `quiet ${cls}`;
    button.textContent = text;
    button.addEventListener("click", action);
    links.append(button);
    return button;
  };
  if (OPENS[kind] && id) link("open-object", OPENS[kind][0], () => OPENS[kind][1](id, li));
  if (entry.session_id) {
    link("open-session", "The session's spend", () => openSpend(`session_id=${entry.session_id}`))
      .dataset.sessionId = entry.session_id;
  }
  if (id && state.auditSubject !== entry.subject) link("history", "Its history", () => aboutSubject(entry.subject));
  li.append(words, meta, links);
  return li;
}

// An object one view shows, brought into sight and focus.
function reveal(el) {
  el.classList.add("target");
  if (!el.hasAttribute("tabindex")) el.tabIndex = -1;
  el.scrollIntoView({ block: "center" });
  el.focus();
}

// A request: its card in the inbox while it waits, else it alone in the Decided view.
async function openApproval(id) {
  const a = await api("GET", `/approvals/${id}`);
  if (a.status === "pending") {
    await view("inbox");
    upsert(a);
    reveal(state.items.get(id));
    return;
  }
  await view("decided", false);
  $("#decided-list").replaceChildren(decidedItem(a));
  show($("#decided-more"), false);
  show($("#no-decided"), false);
  reveal($("#decided-list li"));
}

// An execution with its timeline open, whether or not it is among the latest.
async function openExecution(id) {
  await view("executions");
  let li = $(`#execution-list [data-execution-id="${id}"]`);
  if (!li) {
    const e = await api("GET", `/executions/${id}`);
    li = executionItem(e, state.sessionLabels.get(e.session_id) ?? `session ${short(e.session_id)}`);
    $("#execution-list").prepend(li);
    show($("#no-executions"), false);
  }
  const head = $(".what", li);
  if (!$(".timeline", li)) await toggleSteps(li, head, id);
  reveal(li);
}

// A payment, told under its entry: it has no view of its own.
async function openPayment(id, li) {
  const p = await api("GET", `/payments/${id}`);
  const told = $(".object", li) ?? document.createElement("p");
  told.className = "object meta";
  told.textContent = `Payment ${p.status}: ${p.amount} ${p.currency} ($${p.usd_value}) to ${payeeName(p.recipient)}` +
    (p.tx_hash ? ` · transaction ${p.tx_hash}` : "") + (p.detail ? ` · ${p.detail}` : "");
  li.append(told);
  told.tabIndex = -1;
  told.focus();
}

async function openPolicy(id) {
  await view("policies");
  const li = $(`#policy-list [data-policy-id="${id}"]`);
  if (li) reveal(li);
}

// The decided requests the filter form asks for, newest first; "More" follows the server's cursor.
function decidedQuery() {
  const form = new FormData($("#decided-filter"));
  const query = new URLSearchParams({ limit: "50" });
  for (const [name, value] of form) {
    if (value === "") continue;
    query.set(name, name === "since" || name === "until" ? new Date(value).toISOString() : value.trim());
  }
  return `/approvals/decided?${query}`;
}

async function searchDecided(ev) {
  ev?.preventDefault();
  $("#decided-list").replaceChildren();
  await moreDecided(decidedQuery());
}

async function moreDecided(path) {
  const error = $("#decided-error");
  show(error, false);
  try {
    const { items, next } = await listPage(path);
    $("#decided-list").append(...items.map(decidedItem));
    $("#decided-more").dataset.next = next ?? "";
    show($("#decided-more"), !!next);
  } catch (e) {
    error.textContent = e.message;
    show(error, true);
  }
  show($("#no-decided"), error.hidden && $("#decided-list").children.length === 0 && $("#decided-more").hidden);
}

function decidedItem(a) {
  const li = document.createElement("li");
  li.className = `item decided ${a.status}`;
  li.dataset.approvalId = a.id;
  const args = a.edited_args ?? a.args;
  const c = a.context;
  const name = (n) => n.name ?? short(n.id);
  const d = a.decision;
  const took = d ? Math.max(0, Math.round((Date.parse(d.at) - Date.parse(a.created_at)) / 1000)) : null;
  const lines = [
    `$${a.usd_value} · ${what(args)}`,
    `${a.status}${d?.by ? ` by ${d.by_name ?? short(d.by)}` : ""}${took === null ? "" : ` after ${took} s`}` +
      (d?.note ? ` · “${d.note}”` : ""),
    c ? `${name(c.agent)} in session ${name(c.session)}` : `agent ${short(a.requested_by)}`,
    `filed ${new Date(a.created_at).toLocaleString()}` + (a.payment_id ? ` · payment ${short(a.payment_id)}` : ""),
  ];
  li.replaceChildren(...lines.map((text, i) => {
    const p = document.createElement("p");
    p.className = ["what", "outcome", "meta", "when"][i];
    p.textContent = text;
    // The whole ids, on hover, for copying.
    p.title = [d?.by, c?.agent.id ?? a.requested_by, a.payment_id][i - 1] ?? "";
    return p;
  }));
  return li;
}

async function verifyChain() {
  const result = $("#chain-result");
  result.className = "";
  result.textContent = "Verifying…";
  try {
    const check = await api("GET", "/audit/verify");
    result.className = check.verified ? "ok" : "bad";
    result.textContent = check.verified
      ? `Chain verified: ${check.entries} entries, head ${check.head_hash.slice(0, 16)}…`
      : `Chain broken: ${check.problem}`;
  } catch (e) {
    result.className = "bad";
    result.textContent = e.message;
  }
}

// Alerts for new requests: a browser notification when the tab is hidden, and a short tone. Off until asked.
async function toggleAlerts() {
  const on = localStorage.getItem("paygent-alerts") !== "on";
  if (on && "Notification" in window && Notification.permission === "default") {
    await Notification.requestPermission().catch(() => {});
  }
  localStorage.setItem("paygent-alerts", on ? "on" : "off");
  renderAlerts();
}

function renderAlerts() {
  const on = localStorage.getItem("paygent-alerts") === "on";
  const button = $("#notify");
  button.setAttribute("aria-pressed", String(on));
  button.textContent = on ? "Alerts on" : "Alerts off";
}

function announce() {
  if (localStorage.getItem("paygent-alerts") !== "on") return;
  if (document.hidden && "Notification" in window && Notification.permission === "granted") {
    new Notification("Paygent: a payment waits for you");
  }
  try {
    const audio = new AudioContext();
    const tone = audio.createOscillator();
    tone.frequency.value = 880;
    tone.connect(audio.destination);
    tone.start();
    tone.stop(audio.currentTime + 0.15);
  } catch (e) { /* no audio device: the badge in the title still announces it */ }
}

function money(args) {
  return `${args.amount ?? args.max_amount ?? "?"} ${args.currency ?? ""}`.trim();
}

// What an action does, in words: a payment's amount and payee, or a swap's quote as people approve it.
function what(args) {
  const s = args.swap;
  if (s) {
    const impact = (s.price_impact_bps / 100).toFixed(2);
    return `Swap ${money(args)} for at least ${s.min_out} ${s.to} (quoted ${s.expected_out}) on ${s.dex}` +
      ` · price impact ${impact}% · slippage bound ${(s.max_slippage_bps / 100).toFixed(2)}%`;
  }
  return `${money(args)} → ${args.recipient ?? args.to ?? args.url ?? ""}`;
}

// What a person needs to decide, as it stood when the request was filed: the agent's words, who asked where,
// the policy that sent it, and what this payee was paid before.
function context(li, a) {
  const c = a.context;
  const said = $(".said", li);
  show(said, !!c?.description);
  said.textContent = c?.description ? `“${c.description}”` : "";
  const name = (n) => n.name ?? short(n.id);
  $(".meta", li).textContent = c
    ? `${name(c.agent)} in session ${name(c.session)} · policy ${c.policy.name} v${c.policy.version}`
    : `session ${short(a.session_id)} · agent ${short(a.requested_by)}`;
  const history = $(".payee-history", li);
  const p = c?.payee;
  history.classList.toggle("first", !!p?.first_payment);
  const payee = p?.label ? `${p.label} — ` : "";
  history.textContent = !p ? "" : payee + (p.first_payment ? "First payment to this payee"
    : `Paid $${p.paid_30d_usd} to this payee in 30 days (${p.payments_30d}${p.more ? "+" : ""} payments)`);
}

// What may change on a pending request's card: its action (an edit), and its approvals towards a quorum.
function fill(li, a) {
  const args = a.edited_args ?? a.args;
  $(".usd", li).textContent = `$${a.usd_value}`;
  $(".what", li).textContent = what(args) + (a.edited_args ? " (edited)" : "");
  // A new action needs everyone's approval again, the person's who approved the old one too.
  if ($(".digest", li).dataset.digest !== a.digest) $("button.approve", li).disabled = false;
  $(".digest", li).textContent = `action ${a.digest.slice(0, 19)}…${a.network ? ` on ${a.network}` : ""}`;
  $(".digest", li).dataset.digest = a.digest;
  const quorum = $(".quorum", li);
  const counted = a.approvals_required > 1;
  const step = a.escalated > 0 ? a.escalation[a.escalated - 1] : null;
  show(quorum, counted || a.groups.length > 0 || step !== null);
  const by = a.approvals.map((v) => short(v.by)).join(", ");
  quorum.dataset.approvals = String(a.approvals.length);
  const parts = [];
  if (counted) parts.push(`Approvals ${a.approvals.length} of ${a.approvals_required}` + (by ? ` (${by})` : ""));
  if (a.groups.length) parts.push(`decided by ${a.groups.join(", ")}`);
  if (step) parts.push(`escalated to ${step.group}`);
  quorum.textContent = parts.join(" · ");
}

function upsert(a) {
  if (a.status && a.status !== "pending") return;
  if (state.items.has(a.id)) {
    fill(state.items.get(a.id), a);
    return;
  }
  const li = $("#item-template").content.firstElementChild.cloneNode(true);
  li.dataset.approvalId = a.id;
  li.dataset.deadline = a.deadline;
  $(".tool", li).textContent = a.tool;
  $(".reason", li).textContent = a.reason;
  context(li, a);
  fill(li, a);
  for (const kind of ["approve", "reject", "edit"]) show($(`button.${kind}`, li), a.allowed_decisions.includes(kind));
  $(".edit-form input[name=amount]", li).value = a.args.amount ?? "";
  $(".edit-form input[name=recipient]", li).value = a.args.recipient ?? "";
  $(".edit-form input[name=description]", li).value = a.args.description ?? "";
  $("button.approve", li).addEventListener("click", () => decide(a.id, "approve", {}));
  $("button.reject", li).addEventListener("click", () => toggleForm(li, ".reject-form"));
  $("button.edit", li).addEventListener("click", () => toggleForm(li, ".edit-form"));
  // Only a payment needing one person may stand for later ones.
  show($("button.stand", li), a.allowed_decisions.includes("approve") && !!a.payment_id && a.approvals_required === 1);
  $("button.stand", li).addEventListener("click", () => toggleForm(li, ".stand-form"));
  $(".stand-form", li).addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    decide(a.id, "approve", { standing: { max_usd: f.get("max_usd"), minutes: Number(f.get("minutes")) } });
  });
  $(".reject-form", li).addEventListener("submit", (ev) => {
    ev.preventDefault();
    decide(a.id, "reject", { reason: new FormData(ev.target).get("reason") });
  });
  $(".edit-form", li).addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    // Only what the person changed is sent: the server checks the edit against the rule and the budget.
    const edited = {};
    for (const field of ["amount", "recipient", "description"]) {
      const value = f.get(field);
      if (value !== (a.args[field] ?? "")) edited[field] = field === "description" && value === "" ? null : value;
    }
    decide(a.id, "edit", { edited_args: edited, comment: f.get("comment") || null });
  });
  twoStep($("button.kill-session", li), "Really kill this session?", async () => {
    try {
      await api("POST", `/sessions/${a.session_id}/kill`, { reason: "killed from the inbox" });
    } catch (e) {
      $(".problem", li).textContent = e.message;
      show($(".problem", li), true);
    }
  });
  li.addEventListener("focus", () => select(a.id));
  state.items.set(a.id, li);
  $("#items").appendChild(li);
  loadBudget(a.session_id, li);
  render();
}

function toggleForm(li, sel) {
  const form = $(sel, li);
  show(form, form.hidden);
  if (!form.hidden) $("input", form).focus();
}

async function loadBudget(sessionId, li) {
  try {
    if (!state.budgets.has(sessionId)) state.budgets.set(sessionId, api("GET", `/sessions/${sessionId}/budget`));
    $(".budget", li).textContent = budgetLines(await state.budgets.get(sessionId));
  } catch (e) {
    $(".budget", li).textContent = "";
  }
}

function budgetLines(b) {
  const lines = Object.entries(b.currencies).map(([c, l]) =>
    `${c}: spent ${l.spent}, reserved ${l.reserved}${l.available !== null ? `, available ${l.available}` : ""}`);
  if (b.usd.limit !== null) lines.push(`USD: available ${b.usd.available} of ${b.usd.limit}`);
  return lines.length ? `Budget today — ${lines.join(" · ")}` : "No budget limits";
}

function remove(id, why) {
  const li = state.items.get(id);
  if (!li) return;
  state.items.delete(id);
  li.remove();
  if (state.selected === id) state.selected = null;
  render();
}

async function decide(id, kind, body) {
  const li = state.items.get(id);
  if (!li) return;
  const problem = $(".problem", li);
  show(problem, false);
  try {
    // The decision lands only on the action this card shows.
    const view = await api("POST", `/approvals/${id}/${kind}`, { ...body, digest: $(".digest", li).dataset.digest });
    if (view.status !== "pending") return remove(id, kind);
    // Short of its quorum: the card stays, with this person's approval counted.
    fill(li, view);
    $("button.approve", li).disabled = true;
    for (const form of li.querySelectorAll("form")) show(form, false);
  } catch (e) {
    problem.textContent = e.status === 409 ? `Someone else decided first: ${e.message}` : e.message;
    show(problem, true);
  }
}

function select(id) {
  state.selected = id;
  for (const [key, li] of state.items) li.classList.toggle("selected", key === id);
}

function render() {
  const n = state.items.size;
  $("#count").textContent = String(n);
  show($("#empty"), n === 0);
  document.title = n ? `(${n}) Paygent inbox` : "Paygent inbox";
  if (!state.selected && n) select(state.items.keys().next().value);
}

function tick() {
  const now = Date.now();
  for (const li of state.items.values()) {
    const left = Math.max(0, Math.round((Date.parse(li.dataset.deadline) - now) / 1000));
    const el = $(".countdown", li);
    el.textContent = left > 0 ? `expires in ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}` : "expired";
    el.classList.toggle("soon", left < 60);
  }
}

function onKey(ev) {
  // Shortcuts act on what is on screen: only in the inbox, never while typing.
  if ($("#inbox").hidden || ev.target.closest("input, textarea, form") || !state.selected) return;
  const ids = [...state.items.keys()];
  const at = ids.indexOf(state.selected);
  const li = state.items.get(state.selected);
  if (ev.key === "a") $("button.approve", li).hidden || $("button.approve", li).disabled || decide(state.selected, "approve", {});
  else if (ev.key === "r") toggleForm(li, ".reject-form");
  else if (ev.key === "j" && at < ids.length - 1) state.items.get(ids[at + 1]).focus();
  else if (ev.key === "k" && at > 0) state.items.get(ids[at - 1]).focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await signIn($("#token").value.trim());
    } catch (e) {
      state.token = null;
      $("#sign-in-error").textContent = `Cannot sign in: ${e.message}`;
      show($("#sign-in-error"), true);
    }
  });
  $("#sign-out").addEventListener("click", signOut);
  twoStep($("#engage"), "Really stop all payments?", async () =>
    banner(await api("POST", "/kill-switch", { engaged: true, reason: "engaged from the inbox" })));
  twoStep($("#release"), "Really release the stop?", async () =>
    banner(await api("POST", "/kill-switch", { engaged: false })));
  for (const button of document.querySelectorAll("#views button")) {
    button.addEventListener("click", () => view(button.dataset.view));
  }
  $("#verify-chain").addEventListener("click", verifyChain);
  $("#audit-filter").addEventListener("submit", searchAudit);
  $("#audit-more").addEventListener("click", (ev) => moreAudit(ev.target.dataset.next));
  $("#audit-all").addEventListener("click", () => aboutSubject(""));
  $("#decided-filter").addEventListener("submit", searchDecided);
  $("#spend-scope").addEventListener("input", loadSpend);
  $("#decided-more").addEventListener("click", (ev) => moreDecided(ev.target.dataset.next));
  $("#new-policy").addEventListener("submit", createPolicy);
  $("#notify").addEventListener("click", toggleAlerts);
  renderAlerts();
  document.addEventListener("keydown", onKey);
  setInterval(tick, 1000);
  // Payments the guard allows at once raise no event: an open spend view reads its picture again every 10 s.
  setInterval(() => { if (state.token && !$("#spend").hidden) loadSpend(); }, 10000);
  const saved = sessionStorage.getItem("paygent-token");
  if (saved) signIn(saved).catch(() => sessionStorage.removeItem("paygent-token"));
});
