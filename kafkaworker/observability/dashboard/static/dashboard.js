// kafkaworker dashboard: polls the JSON API (at most once a second) and renders it.
// Everything from the API is written with textContent, never as HTML: keys, headers and
// error messages come from records and handlers.
"use strict";

const STATUS_EVERY = 1000;   // ms; the worker refreshes its partition view once a second
const FAILURES_EVERY = 2000; // ms
const expanded = new Set();  // failures whose details are open, kept across refreshes
let control = false;

function chart(history) {
  const svg = document.getElementById("chart");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  if (history.length < 2) return;
  const end = history[history.length - 1][0];
  // The last 15 minutes, or less while the worker is younger than that.
  const start = Math.max(end - 15 * 60, history[0][0]);
  const peak = Math.max(1, ...history.map((p) => p[1]));
  const x = (t) => ((Math.max(t, start) - start) / Math.max(end - start, 1)) * 600;
  const y = (v) => 88 - (v / peak) * 80;
  const points = history.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
  const area = document.createElementNS(ns, "polygon");
  area.setAttribute("class", "area");
  area.setAttribute("points", `${x(history[0][0]).toFixed(1)},88 ${points.join(" ")} 600,88`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("class", "line");
  line.setAttribute("points", points.join(" "));
  const title = document.createElementNS(ns, "title");
  title.textContent = `peak ${num(peak)} msg/s`;
  svg.append(area, line, title);
}

async function act(action, target) {
  const token = document.getElementById("token").value;
  const result = document.getElementById("control-result");
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const operator = document.getElementById("operator").value;
  if (operator) headers["X-Kafkaworker-Operator"] = operator;
  try {
    const response = await fetch(`api/control/${action}`, {
      method: "POST", headers, body: JSON.stringify(target),
    });
    const body = await response.json().catch(() => ({}));
    result.textContent = response.ok
      ? `${action}: accepted (pid ${(body.pids || []).join(", ")})`
      : `${action}: ${response.status} ${body.error || ""}`;
  } catch (error) {
    result.textContent = `${action}: ${error}`;
  }
}

function button(label, action, target) {
  return el("button", { "data-action": action, onclick: () => act(action, target) }, label);
}

function renderStatus(status) {
  document.getElementById("app").textContent = status.app || "kafkaworker";
  const state = document.getElementById("state");
  state.textContent = status.state;
  state.className = `badge ${status.state}`;
  document.getElementById("updated").textContent =
    `updated ${clock(status.time)} · ${status.processes.length} process(es)`;
  document.getElementById("rate").textContent = num(status.throughput.now);
  document.getElementById("errors").textContent = num(status.errors_per_minute);
  chart(status.throughput.history);

  const asyncapi = document.getElementById("asyncapi");
  asyncapi.hidden = !status.asyncapi;
  if (status.asyncapi) asyncapi.href = status.asyncapi.replace(/^\//, "");

  control = status.control;
  document.getElementById("control").hidden = !control;

  fill("processes", status.processes.map((p) => el("tr", { "data-pid": p.pid },
    cell(p.pid), cell(p.state), cell(duration(p.uptime_seconds)), cell(bytes(p.rss_bytes)),
    numCell(p.threads))), 5, "no process reported yet");

  fill("handlers", status.handlers.map((h) => el("tr", { "data-handler": h.name },
    cell(h.name), cell((h.topics || []).join(", ")), cell(h.group), cell(h.mode),
    cell(h.ordering),
    el("td", { "data-field": "guarantee" }, h.guarantee), numCell(h.concurrency), numCell(h.in_flight),
    cell(duration(h.handler_seconds_mean)),
    el("td", { "data-field": "p99" }, duration(h.handler_seconds_p99)),
    el("td", { class: "num", "data-field": "finished" }, num(h.finished)),
    el("td", { class: "num", "data-field": "failed" }, num(h.failed)),
    el("td", { class: "num", "data-field": "dead_lettered" }, num(h.dead_lettered)),
    el("td", { class: "num", "data-field": "retried_later" }, num(h.retried_later)),
    el("td", { class: "num", "data-field": "skipped" }, num(h.skipped)),
    el("td", {}, el("span", { class: `badge ${(h.breaker || "").replace(" ", "-")}`, "data-field": "breaker" }, h.breaker)),
    el("td", { class: "ctl" }, control && h.breaker !== "none"
      ? (h.breaker === "closed"
        ? button("open breaker", "open_breaker", { handler: h.name })
        : button("close breaker", "close_breaker", { handler: h.name }))
      : null),
  )), 17, "no handler reported yet");

  fill("partitions", status.partitions.map((p) => el("tr",
    { "data-partition": `${p.topic}[${p.partition}]`, "data-handler": p.handler },
    cell(p.handler), cell(`${p.topic}[${p.partition}]`), cell(p.pid),
    numCell(p.committed), numCell(p.log_end),
    el("td", { class: "num", "data-field": "lag" }, num(p.lag)),
    cell(duration(p.lag_seconds)), numCell(p.in_flight),
    el("td", { "data-field": "paused" }, p.paused ? `paused: ${p.pause_reason || "?"}` : "no"),
    cell(clock(p.assigned_at)),
    el("td", { class: "ctl" }, control
      ? (p.paused && p.pause_reason === "operator"
        ? button("resume", "resume", { handler: p.handler, topic: p.topic, partition: p.partition })
        : button("pause", "pause", { handler: p.handler, topic: p.topic, partition: p.partition }))
      : null),
  )), 11, "no partition assigned");
}

function failureId(f) {
  return `${f.pid}:${f.topic}:${f.partition}:${f.offset}:${f.attempt}:${f.time}`;
}

function renderFailures(data) {
  document.getElementById("failures-total").textContent = `(${num(data.total)} since start)`;
  const rows = [];
  for (const f of data.failures) {
    const id = failureId(f);
    const record = `${f.topic}[${f.partition}]@${f.offset}`;
    rows.push(el("tr", {
      class: "failure", "data-record": record, "data-decision": f.decision,
      onclick: () => { expanded.has(id) ? expanded.delete(id) : expanded.add(id); poll(false); },
    },
    cell(clock(f.time)), cell(f.handler), cell(record), cell(f.key ?? "null"), numCell(f.attempt),
    el("td", { class: "error" }, el("strong", {}, f.error_type.split(".").pop()), `: ${f.error}`),
    cell(f.decision.replace("_", " "))));
    if (expanded.has(id)) {
      const headers = f.headers.length
        ? el("table", {}, ...f.headers.map(([k, v]) => el("tr", {}, cell(k), cell(v ?? "null"))))
        : el("p", { class: "muted" }, "no headers");
      const inspect = f.dlq && f.decision === "dead_letter"
        ? el("p", {}, "inspect: ", el("code", {}, `kafkaworker dlq inspect ${f.dlq}`))
        : null;
      const trace = f.trace_id
        ? el("p", {}, "trace: ", el("code", { "data-field": "trace_id" }, f.trace_id))
        : null;
      rows.push(el("tr", { class: "detail", "data-detail": record },
        el("td", { colspan: 7 },
          el("div", {}, `${f.error_type} (pid ${f.pid})`), trace,
          el("pre", { "data-field": "traceback" }, f.traceback),
          el("div", {}, "headers"), headers, inspect)));
    }
  }
  fill("failures", rows, 7, "no failures");
}

let lastFailures = 0;
async function poll(withFailures = true) {
  try {
    const status = await (await fetch("api/status", { cache: "no-store" })).json();
    renderStatus(status);
    const now = Date.now();
    if (!withFailures || now - lastFailures >= FAILURES_EVERY - 50 || !poll.failures) {
      if (withFailures) {
        lastFailures = now;
        poll.failures = await (await fetch("api/failures", { cache: "no-store" })).json();
      }
      if (poll.failures) renderFailures(poll.failures);
    }
  } catch (error) {
    document.getElementById("updated").textContent = `cannot reach the worker: ${error}`;
  }
}

poll();
setInterval(poll, STATUS_EVERY);
