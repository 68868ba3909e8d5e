// kafkaworker fleet page: polls the fleet dashboard's JSON API and renders it (common.js has
// the DOM and formatting helpers). Everything from the API is written as text, never HTML.
"use strict";

const FLEET_EVERY = 2000;  // ms; processes report every 5 s
const SLOW_EVERY = 5000;   // ms: groups (asked of the cluster every 10 s), failures, audit
const expandedFailures = new Set();
const expandedRecords = new Set();
const selected = new Set();  // DLQ records chosen for replay: "partition:offset"
let control = false;
let dlqRecords = [];
let slow = { groups: [], failures: [], audit: [] };
let lastSlow = 0;

const ago = (t, now) => duration(Math.max(0, now - t));

async function post(path, body) {
  const result = document.getElementById("control-result");
  const token = document.getElementById("token").value;
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const operator = document.getElementById("operator").value;
  if (operator) headers["X-Kafkaworker-Operator"] = operator;
  try {
    const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
    const answer = await response.json().catch(() => ({}));
    return { ok: response.ok, status: response.status, body: answer };
  } catch (error) {
    result.textContent = `${path}: ${error}`;
    return { ok: false, status: 0, body: { error: String(error) } };
  }
}

async function command(action, target) {
  const { ok, status, body } = await post(`api/commands/${action}`, target);
  document.getElementById("control-result").textContent = ok
    ? `${action}: sent to the fleet (command ${body.id})`
    : `${action}: ${status} ${body.error || ""}`;
  setTimeout(poll, 300);
}

function button(label, action, target) {
  return el("button", { "data-action": action, onclick: () => command(action, target) }, label);
}

function spark(history) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 260 36");
  svg.setAttribute("preserveAspectRatio", "none");
  if (history.length < 2) return svg;
  const start = history[0][0];
  const end = history[history.length - 1][0];
  const peak = Math.max(1, ...history.map((p) => Math.max(p[1], p[2])));
  const x = (t) => ((t - start) / Math.max(end - start, 1)) * 260;
  const y = (v) => 34 - (v / peak) * 32;
  for (const [column, cls] of [[1, "finished"], [2, "failed"]]) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("class", cls);
    line.setAttribute("points", history.map((p) => `${x(p[0]).toFixed(1)},${y(p[column]).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  const title = document.createElementNS(ns, "title");
  title.textContent = `peak ${num(peak)}/s`;
  svg.append(title);
  return svg;
}

function badge(state, testid) {
  return el("span", { class: `badge ${state.replace(" ", "-")}`, "data-field": testid }, state);
}

function renderApps(fleet) {
  fill("apps", fleet.apps.map((a) => el("tr", { "data-app": a.name },
    cell(a.name),
    cell(Object.entries(a.states).map(([s, n]) => `${n} ${s}`).join(", ")),
    cell(a.handlers.map((h) => h.name).join(", ")),
    el("td", { class: "num", "data-field": "throughput" }, a.throughput.toFixed(1)),
    el("td", { class: "num", "data-field": "errors" }, a.errors_per_second.toFixed(2)),
    numCell(a.lag),
    el("td", {}, spark(a.history)))), 7, "no app reports yet (set fleet.enabled on the workers)");
}

function renderProcesses(fleet) {
  const now = fleet.time;
  fill("processes", fleet.processes.map((p) => {
    const live = !["gone", "stopped"].includes(p.state);
    const shown = p.quiet && live ? `${p.state} (quiet)` : p.state;
    const inFlight = (p.handlers || []).reduce((n, h) => n + (h.in_flight || 0), 0);
    return el("tr", { class: p.state, "data-process": p.id, "data-app": p.app, "data-pid": p.pid },
      cell(p.app), cell(p.host), cell(p.pid),
      el("td", {}, badge(shown, "state")),
      cell(p.version), cell(duration(p.uptime_seconds)),
      el("td", { "data-field": "last_seen" }, `${ago(p.last_seen, now)} ago`),
      numCell((p.partitions || []).length), numCell(inFlight), cell(bytes(p.rss_bytes)),
      el("td", { class: "ctl" }, control && live ? el("span", {},
        p.quiet ? null : button("quiet", "quiet", { process: p.id }), " ",
        button("stop", "stop", { process: p.id })) : null));
  }), 11, "no process reports yet");
}

function renderHandlers(fleet) {
  const rows = [];
  for (const a of fleet.apps) {
    for (const h of a.handlers) {
      const target = { app: a.name, handler: h.name };
      rows.push(el("tr", { "data-app": a.name, "data-handler": h.name },
        cell(a.name), cell(h.name), cell(h.group), cell(h.mode), cell(h.ordering),
        cell((h.guarantee || "").replaceAll("_", "-")), numCell(h.concurrency), numCell(h.processes),
        numCell(h.in_flight),
        el("td", { class: "num", "data-field": "finished_rate" }, h.rates.finished.toFixed(1)),
        el("td", { class: "num", "data-field": "failed_rate" }, h.rates.failed.toFixed(2)),
        el("td", { class: "num", "data-field": "dead_lettered" }, num(h.dead_lettered)),
        el("td", {}, badge(h.breaker, "breaker")),
        el("td", { class: "ctl" }, control && h.breaker !== "none"
          ? (h.breaker === "closed" ? button("open breaker", "open_breaker", target)
            : button("close breaker", "close_breaker", target))
          : null)));
    }
  }
  fill("handlers", rows, 14, "no handler reported yet");
}

function renderTopics(fleet) {
  const topics = new Map();
  for (const p of fleet.partitions) {
    const key = `${p.group}:${p.topic}`;
    const t = topics.get(key) || { app: p.app, group: p.group, topic: p.topic, partitions: new Set(), owners: new Set(), paused: 0, lag: 0 };
    t.partitions.add(p.partition);
    t.owners.add(`${p.host}:${p.pid}`);
    if (p.paused && p.pause_reason === "operator") t.paused += 1;
    t.lag += p.lag || 0;
    topics.set(key, t);
  }
  fill("topics", [...topics.entries()].map(([key, t]) => {
    const target = { group: t.group, topic: t.topic };
    return el("tr", { "data-topic": key },
      cell(t.app), cell(t.group), cell(t.topic), numCell(t.partitions.size),
      cell([...t.owners].sort().join(", ")),
      el("td", { "data-field": "paused" }, `${t.paused} of ${t.partitions.size} by an operator`),
      numCell(t.lag),
      el("td", { class: "ctl" }, control ? el("span", {},
        button("pause topic", "pause", target), " ", button("resume topic", "resume", target)) : null));
  }), 8, "no partition owned by a live process");
  fill("holds", fleet.holds.map((h) => {
    const target = Object.entries(h.target).map(([k, v]) => `${k}=${v}`).join(" ");
    return el("tr", { "data-hold": target }, cell(target), cell(clock(h.issued_at)),
      el("td", { class: "ctl" }, control ? button("resume", "resume", h.target) : null));
  }), 3, "none");
}

function renderPartitions(fleet) {
  fill("partitions", fleet.partitions.map((p) => {
    const target = { group: p.group, topic: p.topic, partition: p.partition };
    return el("tr", { "data-partition": `${p.group}:${p.topic}[${p.partition}]`, "data-process": p.process },
      cell(p.app), cell(p.group), cell(`${p.topic}[${p.partition}]`),
      el("td", { "data-field": "owner" }, `${p.host}:${p.pid}`),
      el("td", { class: "num", "data-field": "committed" }, num(p.committed)),
      numCell(p.log_end),
      el("td", { class: "num", "data-field": "lag" }, num(p.lag)),
      cell(duration(p.lag_seconds)), numCell(p.in_flight),
      el("td", { "data-field": "paused" }, p.paused ? `paused: ${p.pause_reason || "?"}` : "no"),
      cell(clock(p.assigned_at)),
      el("td", { class: "ctl" }, control
        ? (p.paused && p.pause_reason === "operator" ? button("resume", "resume", target)
          : button("pause", "pause", target))
        : null));
  }), 12, "no partition owned by a live process");
}

function renderGroups(groups) {
  const rows = [];
  for (const g of groups) {
    const members = g.members.map((m) => `${m.client_id}@${m.host.replace(/^\//, "")}`).join(", ") || "none";
    if (g.error || !g.partitions.length) {
      rows.push(el("tr", { "data-group": g.group }, cell(g.group), cell(g.state), cell(members),
        el("td", { colspan: 5, class: "muted" }, g.error || "no committed offsets yet")));
    }
    for (const p of g.partitions) {
      rows.push(el("tr", { "data-group": g.group, "data-partition": `${p.topic}[${p.partition}]` },
        cell(g.group), cell(g.state), cell(members), cell(`${p.topic}[${p.partition}]`),
        numCell(p.committed), numCell(p.log_end),
        el("td", { class: "num", "data-field": "lag" }, num(p.lag)),
        cell(duration(p.time_lag))));
    }
  }
  fill("groups", rows, 8, "no consumer group known yet");
}

function renderFailures(failures) {
  const rows = [];
  for (const f of failures.slice(0, 100)) {
    const id = `${f.process}:${f.topic}:${f.partition}:${f.offset}:${f.attempt}:${f.time}`;
    const record = `${f.topic}[${f.partition}]@${f.offset}`;
    rows.push(el("tr", {
      class: "failure", "data-record": record, "data-decision": f.decision,
      onclick: () => { expandedFailures.has(id) ? expandedFailures.delete(id) : expandedFailures.add(id); renderFailures(slow.failures); },
    },
    cell(clock(f.time)), cell(f.app), cell(`${f.host}:${f.pid}`), cell(f.handler), cell(record),
    cell(f.key ?? "null"), numCell(f.attempt),
    el("td", { class: "error" }, el("strong", {}, (f.error_type || "").split(".").pop()), `: ${f.error}`),
    cell((f.decision || "").replace("_", " "))));
    if (expandedFailures.has(id)) {
      const headers = (f.headers || []).length
        ? el("table", {}, ...f.headers.map(([k, v]) => el("tr", {}, cell(k), cell(v ?? "null"))))
        : el("p", { class: "muted" }, "no headers");
      rows.push(el("tr", { class: "detail", "data-detail": record },
        el("td", { colspan: 9 }, el("div", {}, `${f.error_type} (${f.process})`),
          el("pre", { "data-field": "traceback" }, f.traceback), el("div", {}, "headers"), headers)));
    }
  }
  fill("failures", rows, 9, "no failures");
}

function renderAudit(audit) {
  fill("audit", audit.map((a) => el("tr", { "data-command": a.id },
    cell(clock(a.time)), cell(a.operator || "–"), cell(a.client), cell(a.action),
    cell(JSON.stringify(a.target)), cell(a.result))), 6, "no command yet");
}

function value(v) {
  if (v === null || v === undefined) return "null";
  return typeof v === "string" ? v : JSON.stringify(v);
}

function renderDlq() {
  const rows = [];
  for (const r of dlqRecords) {
    const id = `${r.dlq.partition}:${r.dlq.offset}`;
    const record = `${r.dlq.topic}[${r.dlq.partition}]@${r.dlq.offset}`;
    const box = el("input", { type: "checkbox", "data-record": id, checked: selected.has(id) });
    box.addEventListener("click", (event) => {
      event.stopPropagation();
      box.checked ? selected.add(id) : selected.delete(id);
    });
    const shownValue = r.decoded ? value(r.value)
      : `${value(r.value)}${r.schema_id !== null && r.schema_id !== undefined ? ` (schema id ${r.schema_id}, codec ${r.codec})` : ""}`;
    rows.push(el("tr", {
      class: "dlq", "data-dlq-record": record,
      onclick: () => { expandedRecords.has(id) ? expandedRecords.delete(id) : expandedRecords.add(id); renderDlq(); },
    },
    el("td", {}, box), cell(record),
    cell(`${r.original.topic}[${r.original.partition}]@${r.original.offset}`),
    cell(r.failed_at), cell(r.handler),
    el("td", { class: "error" }, el("strong", {}, (r.error.type || "").split(".").pop()), `: ${r.error.message}`),
    cell(value(r.key)), el("td", { class: "value", "data-field": "value" }, shownValue)));
    if (expandedRecords.has(id)) {
      const own = r.headers.length
        ? el("table", {}, ...r.headers.map(([k, v]) => el("tr", {}, cell(k), cell(value(v)))))
        : el("p", { class: "muted" }, "no headers of its own");
      const kw = el("table", { "data-field": "kw" }, ...Object.entries(r.kw).filter(([k]) => k !== "kw.error.traceback")
        .map(([k, v]) => el("tr", {}, cell(k), cell(v))));
      rows.push(el("tr", { class: "detail", "data-detail": record }, el("td", { colspan: 8 },
        el("div", {}, `decoded with ${r.decoded ? r.codec : "nothing (shown as bytes)"}`),
        el("div", {}, "kw.* headers"), kw, el("div", {}, "the record's own headers"), own,
        el("pre", { "data-field": "traceback" }, r.error.traceback || ""))));
    }
  }
  fill("dlq-records", rows, 8, "choose a DLQ and show its records");
}

async function loadDlq() {
  const topic = document.getElementById("dlq-topic").value;
  const result = document.getElementById("dlq-result");
  if (!topic) return;
  result.textContent = `reading ${topic}…`;
  const response = await fetch(`api/dlq/${encodeURIComponent(topic)}`, { cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    result.textContent = `${response.status} ${body.error || ""}`;
    return;
  }
  dlqRecords = body.records;
  selected.clear();
  result.textContent = `${dlqRecords.length} record(s), newest first`;
  renderDlq();
}

async function replay(all) {
  const topic = document.getElementById("dlq-topic").value;
  const body = all ? { topic, all: true }
    : { topic, records: [...selected].map((id) => id.split(":").map(Number)) };
  const result = document.getElementById("dlq-result");
  const answer = await post("api/dlq/replay", body);
  result.textContent = answer.ok
    ? `replayed ${answer.body.replayed} record(s) to their source`
    : `replay: ${answer.status} ${answer.body.error || ""}`;
}

function renderDlqTopics(dlqs) {
  const select = document.getElementById("dlq-topic");
  const current = select.value;
  const names = Object.keys(dlqs).sort();
  if (names.join() === [...select.options].map((o) => o.value).join()) return;
  select.replaceChildren(...names.map((name) => el("option", { value: name },
    `${name} (${dlqs[name].app}: ${dlqs[name].handler})`)));
  if (names.includes(current)) select.value = current;
}

async function json(path) {
  return (await fetch(path, { cache: "no-store" })).json();
}

async function poll() {
  try {
    const fleet = await json("api/fleet");
    control = fleet.control;
    document.getElementById("control").hidden = !control;
    document.getElementById("dlq-actions").hidden = !control;
    const ready = document.getElementById("ready");
    ready.textContent = fleet.ready ? "live" : "reading reports…";
    ready.className = `badge ${fleet.ready ? "ready" : "starting"}`;
    const live = fleet.processes.filter((p) => !["gone", "stopped"].includes(p.state)).length;
    document.getElementById("updated").textContent =
      `updated ${clock(fleet.time)} · ${fleet.apps.length} app(s) · ${live} of ${fleet.processes.length} process(es) live`;
    renderApps(fleet);
    renderProcesses(fleet);
    renderHandlers(fleet);
    renderTopics(fleet);
    renderPartitions(fleet);
    if (Date.now() - lastSlow >= SLOW_EVERY - 50) {
      lastSlow = Date.now();
      const [groups, failures, audit, dlqs] = await Promise.all(
        [json("api/groups"), json("api/failures"), json("api/audit"), json("api/dlq")]);
      slow = { groups: groups.groups, failures: failures.failures, audit: audit.audit };
      renderDlqTopics(dlqs.dlqs);
      renderGroups(slow.groups);
      renderFailures(slow.failures);
      renderAudit(slow.audit);
    }
  } catch (error) {
    document.getElementById("updated").textContent = `cannot reach the dashboard: ${error}`;
  }
}

document.getElementById("dlq-load").addEventListener("click", loadDlq);
document.getElementById("dlq-replay-selected").addEventListener("click", () => replay(false));
document.getElementById("dlq-replay-all").addEventListener("click", () => replay(true));
poll();
setInterval(poll, FLEET_EVERY);
