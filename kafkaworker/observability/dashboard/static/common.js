// What the worker dashboard (dashboard.js) and the fleet page (fleet.js) share: building DOM
// nodes (text always through textContent: keys, headers and errors come from records) and
// formatting numbers, durations and times.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const num = (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en"));
const cell = (v, cls) => el("td", { class: cls }, v);
const numCell = (v) => el("td", { class: "num" }, num(v));

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return seconds === 0 ? "0 s" : `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function bytes(n) {
  if (!n) return "–";
  return `${(n / 1048576).toFixed(0)} MB`;
}

const clock = (t) => new Date(t * 1000).toLocaleTimeString();

function fill(id, rows, columns, emptyText) {
  const body = document.getElementById(id);
  body.replaceChildren(...(rows.length ? rows : [
    el("tr", { class: "empty" }, el("td", { colspan: columns }, emptyText)),
  ]));
}
