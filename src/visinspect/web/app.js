// The inspection page: classify uploads, browse the history, see statistics. Talks to the same
// HTTP API as every other client; no framework, no CDN, no inline script (the CSP forbids them).
"use strict";

const state = { offset: 0, limit: 20, total: 0 };
const $ = (selector) => document.querySelector(selector);

function apiKey() {
  return sessionStorage.getItem("visinspect-api-key") || "";
}

function notice(text) {
  const box = $("#notice");
  box.textContent = text || "";
  box.hidden = !text;
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("Authorization", `Bearer ${apiKey()}`);
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401 || response.status === 403) {
    notice(response.status === 401
      ? "This server needs an API key: enter it at the top right, then try again."
      : "The API key was refused: check it at the top right.");
    $("#api-key").focus();
  }
  if (!response.ok) {
    const error = body.error || { code: "http_error", message: `HTTP ${response.status}` };
    throw Object.assign(new Error(error.message), { code: error.code, status: response.status });
  }
  return body;
}

function percent(value) {
  return `${(value * 100).toFixed(1)}%`;
}

function bars(list, items, max) {
  list.replaceChildren();
  for (const { label, value, text } of items) {
    const row = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = label;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("role", "img");
    track.setAttribute("aria-label", `${label}: ${text}`);
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${max > 0 ? (100 * value) / max : 0}%`;
    track.append(fill);
    const number = document.createElement("span");
    number.className = "value";
    number.textContent = text;
    row.append(name, track, number);
    list.append(row);
  }
}

// --- classify ---------------------------------------------------------------------------------

async function classify(file) {
  const card = document.createElement("li");
  card.className = "card";
  const image = document.createElement("img");
  image.src = URL.createObjectURL(file);
  image.alt = `Uploaded image ${file.name}`;
  const title = document.createElement("h3");
  title.textContent = file.name;
  const status = document.createElement("p");
  status.className = "meta";
  status.textContent = "Classifying…";
  card.append(image, title, status);
  $("#results").prepend(card);

  const form = new FormData();
  form.append("file", file, file.name);
  const topK = Math.max(1, Math.min(20, Number($("#top-k").value) || 3));
  try {
    const result = await api(`/predict?top_k=${topK}`, { method: "POST", body: form });
    const list = document.createElement("ol");
    list.className = "bars";
    list.setAttribute("aria-label", `Top ${topK} classes for ${file.name}`);
    bars(list, result.predictions.map((p) => ({
      label: p.class_name, value: p.confidence, text: percent(p.confidence),
    })), 1);
    status.textContent = `${result.model_name} (${result.model_version}, ${result.backend}, ${result.precision}), `
      + `${result.latency_ms.toFixed(0)} ms, record #${result.id}`;
    card.insertBefore(list, status);
    card.dataset.topClass = result.predictions[0].class_name;
  } catch (error) {
    status.className = "meta error";
    status.textContent = `${error.code}: ${error.message}`;
  }
}

function classifyAll(files) {
  notice("");
  for (const file of files) classify(file);
}

// --- history and statistics -----------------------------------------------------------------

function rangeParams(form) {
  const params = new URLSearchParams();
  for (const [name, value] of new FormData(form)) {
    if (!value) continue;
    params.set(name, name.startsWith("created_") ? `${value}:00Z` : value);
  }
  return params;
}

async function loadHistory() {
  const params = rangeParams($("#history-filters"));
  params.set("limit", state.limit);
  params.set("offset", state.offset);
  try {
    const page = await api(`/predictions?${params}`);
    state.total = page.total;
    const rows = page.items.map((item) => {
      const row = document.createElement("tr");
      const top = item.predictions[0];
      for (const text of [item.id, item.created_at.replace("T", " ").slice(0, 19), top.class_name,
        percent(top.confidence), item.filename || "", item.model_name]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    });
    $("#history-table tbody").replaceChildren(...rows);
    const last = Math.min(state.offset + state.limit, page.total);
    $("#page-info").textContent = page.total
      ? `${state.offset + 1}–${last} of ${page.total}` : "No predictions match.";
    $("#prev-page").disabled = state.offset === 0;
    $("#next-page").disabled = last >= page.total;
  } catch (error) {
    $("#page-info").textContent = `${error.code}: ${error.message}`;
  }
}

async function loadStats() {
  const params = rangeParams($("#stats-filters"));
  try {
    const stats = await api(`/predictions/stats?${params}`);
    $("#stats-total").textContent = `${stats.total} predictions`;
    const classMax = Math.max(0, ...stats.by_class.map((c) => c.count));
    bars($("#chart-classes"), stats.by_class.map((c) => ({
      label: c.class_name, value: c.count, text: String(c.count),
    })), classMax);
    const dayMax = Math.max(0, ...stats.by_day.map((d) => d.count));
    bars($("#chart-days"), stats.by_day.map((d) => ({
      label: d.day, value: d.count, text: String(d.count),
    })), dayMax);
  } catch (error) {
    $("#stats-total").textContent = `${error.code}: ${error.message}`;
  }
}

// --- wiring ---------------------------------------------------------------------------------

function show(tab) {
  for (const button of document.querySelectorAll("[role=tab]")) {
    const selected = button === tab;
    button.setAttribute("aria-selected", String(selected));
    $(`#${button.getAttribute("aria-controls")}`).hidden = !selected;
  }
  if (tab.id === "tab-history") loadHistory();
  if (tab.id === "tab-stats") loadStats();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => show(tab));
  }
  const key = $("#api-key");
  key.value = apiKey();
  key.addEventListener("change", () => {
    sessionStorage.setItem("visinspect-api-key", key.value.trim());
    notice("");
  });
  $("#key-form").addEventListener("submit", (event) => event.preventDefault());
  $("#file-input").addEventListener("change", (event) => classifyAll(event.target.files));
  const drop = $("#drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classifyAll(event.dataTransfer.files);
  });
  $("#history-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.offset = 0;
    loadHistory();
  });
  $("#prev-page").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - state.limit);
    loadHistory();
  });
  $("#next-page").addEventListener("click", () => {
    state.offset += state.limit;
    loadHistory();
  });
  $("#stats-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadStats();
  });
});
