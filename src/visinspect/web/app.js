// The inspection page: classify uploads, browse the history, see statistics, review predictions
// (and label them into a label set), see the accuracy the reviews measure, and teach heads. Talks to the same HTTP API as every other client; no
// framework, no CDN, no inline script (the CSP forbids them).
"use strict";

// History paging is by cursor: `cursors` holds the cursor of each page before the one shown
// ("" for the first), so Newer goes back and Older follows the page's next_cursor.
const state = {
  cursors: [], cursor: "", next: null, limit: 20, classIds: null, current: null, skipped: new Set(),
  labelSets: [], heat: true, goodClasses: new Map(),
};
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
  if (state.cursor) params.set("cursor", state.cursor);
  try {
    const page = await api(`/predictions?${params}`);
    state.next = page.next_cursor;
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
    const first = state.cursors.length * state.limit + 1;
    const total = page.total_exact ? `${page.total}` : `more than ${page.total.toLocaleString("en")}`;
    $("#page-info").textContent = page.items.length
      ? `${first}–${first + page.items.length - 1} of ${total}` : "No predictions match.";
    $("#prev-page").disabled = state.cursors.length === 0;
    $("#next-page").disabled = !page.next_cursor;
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

// --- review and quality -----------------------------------------------------------------------

async function loadClasses() {
  if (state.classIds) return;
  const classes = await api("/classes");
  state.classIds = new Map(classes.map((c) => [c.class_name, c.class_id]));
  $("#class-list").replaceChildren(...classes.map((c) => {
    const option = document.createElement("option");
    option.value = c.class_name;
    return option;
  }));
}

// Thumbnails need the API key, which an <img src> cannot send: each is fetched once and shown
// from a blob: URL, kept while its prediction is in the queue.
const thumbnails = new Map();
const heatMaps = new Map();  // the same, for the detectors' heat maps

function blobOf(cache, id, path) {
  if (!cache.has(id)) {
    const headers = new Headers();
    if (apiKey()) headers.set("Authorization", `Bearer ${apiKey()}`);
    cache.set(id, fetch(path, { headers })
      .then(async (response) => (response.ok ? URL.createObjectURL(await response.blob()) : null))
      .catch(() => null));
  }
  return cache.get(id);
}

function thumbnail(item) {
  if (!item.image_kept) return Promise.resolve(null);
  return blobOf(thumbnails, item.id, `/predictions/${item.id}/image?variant=thumbnail`);
}

function heatMap(item) {
  if (!item.anomaly) return Promise.resolve(null);
  const detector = item.anomaly.detector_id;
  return blobOf(heatMaps, item.id, `/predictions/${item.id}/anomaly-map?detector_id=${detector}`);
}

function forgetThumbnails(keep) {
  for (const cache of [thumbnails, heatMaps]) {
    for (const [id, url] of cache) {
      if (keep.has(id)) continue;
      url.then((blobUrl) => blobUrl && URL.revokeObjectURL(blobUrl));
      cache.delete(id);
    }
  }
}

function showStrip(items) {
  $("#queue-strip").replaceChildren(...items.map((item) => {
    const entry = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.id = item.id;
    const top = item.predictions[0];
    button.setAttribute("aria-label", `#${item.id} ${top.class_name} ${percent(top.confidence)}`);
    button.setAttribute("aria-current", String(item === state.current));
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = `${top.class_name} ${percent(top.confidence)}`;
    if (item.image_kept) {
      const image = document.createElement("img");
      image.alt = "";
      thumbnail(item).then((url) => { if (url) image.src = url; });
      button.append(image);
    }
    button.append(label);
    button.addEventListener("click", () => {
      state.current = item;
      for (const other of $("#queue-strip").querySelectorAll("button")) {
        other.setAttribute("aria-current", String(other === button));
      }
      showItem(item);
    });
    entry.append(button);
    return entry;
  }));
}

// The inspection queue: the chosen set's detector's anomalous answers not labelled yet, most
// anomalous first, each read as the history shows it.
async function anomalousFirst() {
  const chosen = chosenLabelSet();
  if (!chosen) throw { code: "no_label_set", message: "Choose the label set to label into: its detector's anomalous answers come first." };
  const page = await api(`/label-sets/${chosen.name}/anomalies?limit=50`);
  const items = await Promise.all(page.items.map((a) => api(`/predictions/${a.prediction_id}`)));
  return {
    items, total: items.length, what: `anomalous answers of ${chosen.name}'s detector not labelled yet`,
    none: `No anomalous answer of ${chosen.name}'s detector waits for a label.`,
  };
}

async function leastConfidentFirst() {
  const params = new URLSearchParams({ reviewed: "false", limit: "50" });
  const cap = $("#queue-filters").elements.max_confidence.value;
  if (cap) params.set("max_confidence", cap);
  const page = await api(`/predictions?${params}`);
  return { items: page.items, total: page.total, what: "waiting for review", none: "No predictions wait for review." };
}

async function loadQueue() {
  try {
    await loadClasses();
    if (!state.labelSets.length) await loadLabelSets();
    const anomalous = $("#queue-filters").elements.order.value === "anomalous";
    const page = await (anomalous ? anomalousFirst() : leastConfidentFirst());
    const waiting = page.items.filter((item) => !state.skipped.has(item.id));
    const next = waiting[0];
    state.current = next || null;
    $("#queue-info").textContent = page.total
      ? `${page.total} ${page.what}${state.skipped.size ? `, ${state.skipped.size} skipped` : ""}`
      : page.none;
    forgetThumbnails(new Set(waiting.map((item) => item.id)));
    showStrip(waiting);
    $("#review-item").hidden = !next;
    if (next) showItem(next);
  } catch (error) {
    $("#queue-info").textContent = `${error.code}: ${error.message}`;
  }
}

function showItem(item) {
  const top = item.predictions[0];
  const image = $("#review-image");
  image.hidden = true;
  image.removeAttribute("src");
  thumbnail(item).then((url) => {
    if (!url || state.current !== item) return;
    image.src = url;
    image.alt = `The image of prediction #${item.id}`;
    image.hidden = false;
  });
  $("#review-title").textContent = `#${item.id} ${item.filename || "(no file name)"}: ${top.class_name}?`;
  $("#review-meta").textContent = `${item.created_at.replace("T", " ").slice(0, 19)} UTC, `
    + `${item.model_name} (${item.precision}), ${item.image_width}x${item.image_height} ${item.image_format}`;
  bars($("#review-bars"), item.predictions.map((p) => ({
    label: p.class_name, value: p.confidence, text: percent(p.confidence),
  })), 1);
  $("#true-class").value = "";
  $("#review-note").value = "";
  $("#review-status").textContent = "";
  showAnomaly(item);
}

// A detector's answer over the image: its heat map (h toggles it) and the region's box, in
// the image's own pixels scaled to the picture.
function showAnomaly(item) {
  const answer = item.anomaly;
  const heat = $("#review-heat");
  const box = $("#review-region");
  heat.hidden = true;
  heat.removeAttribute("src");
  box.hidden = true;
  $("#review-anomaly").hidden = !answer;
  $("#inspect").hidden = !answer;
  if (!answer) return;
  const line = $("#review-anomaly");
  line.dataset.verdict = answer.verdict;
  line.textContent = `Detector ${answer.detector} v${answer.version}: ${answer.verdict}, score `
    + `${answer.score.toFixed(2)} (1.00 is the threshold)`
    + (answer.region ? `, defect at [${answer.region.join(", ")}]` : "");
  if (answer.region && state.heat) {
    const [x0, y0, x1, y1] = answer.region;
    Object.assign(box.style, {
      left: `${(100 * x0) / item.image_width}%`, top: `${(100 * y0) / item.image_height}%`,
      width: `${(100 * (x1 - x0)) / item.image_width}%`, height: `${(100 * (y1 - y0)) / item.image_height}%`,
    });
    box.hidden = false;
  }
  $("#toggle-heat").setAttribute("aria-pressed", String(state.heat));
  if (!state.heat) return;
  heatMap(item).then((url) => {
    if (!url || state.current !== item || !state.heat) return;
    heat.src = url;
    heat.hidden = false;
  });
}

function toggleHeat() {
  state.heat = !state.heat;
  if (state.current) showAnomaly(state.current);
}

// "Good part" and "defective" are labels in the detector's set: its good class, or the set's
// first other class. Quality counts them as the detector's false rejects and escapes.
async function inspect(good) {
  const item = state.current;
  if (!item || !item.anomaly) return;
  const name = item.anomaly.detector;
  try {
    if (!state.goodClasses.has(name)) {
      const versions = await api(`/label-sets/${name}/detectors?limit=200`);
      const served = versions.find((d) => d.id === item.anomaly.detector_id) || versions[0];
      state.goodClasses.set(name, served ? served.classes[0] : "ok");
    }
    const goodClass = state.goodClasses.get(name);
    const set = state.labelSets.find((s) => s.name === name) || (await api(`/label-sets/${name}`));
    const className = good ? goodClass : set.classes.find((c) => c !== goodClass);
    if (!className) {
      $("#review-status").textContent = `${name} has no class besides ${goodClass}: add one (a defect) in Teach first.`;
      return;
    }
    await api(`/predictions/${item.id}/labels`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ label_set: name, class: className }),
    });
    state.skipped.add(item.id);
    await loadQueue();
    $("#review-status").textContent = `#${item.id} labelled ${className} in ${name} (${good ? "good part" : "defective"}).`;
    $("#queue-info").focus();
  } catch (error) {
    $("#review-status").textContent = `${error.code}: ${error.message}`;
  }
}

async function submitReview(verdict) {
  const item = state.current;
  if (!item) return;
  const body = { verdict };
  const note = $("#review-note").value.trim();
  if (note) body.note = note;
  if (verdict === "wrong") {
    const id = state.classIds.get($("#true-class").value.trim());
    if (id === undefined) {
      $("#review-status").textContent = "Pick the class the image shows from the list first.";
      $("#true-class").focus();
      return;
    }
    body.true_class_id = id;
  }
  try {
    const review = await api(`/predictions/${item.id}/review`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    notice("");
    await loadQueue();
    $("#review-status").textContent = `#${item.id} reviewed: ${review.verdict} (${review.true_class_name}).`;
    $("#queue-info").focus();
  } catch (error) {
    $("#review-status").textContent = `${error.code}: ${error.message}`;
  }
}

function onReviewKey(event) {
  if ($("#view-review").hidden || event.ctrlKey || event.metaKey || event.altKey) return;
  if (["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName)) return;
  const chosen = chosenLabelSet();
  if (chosen && /^[1-9]$/.test(event.key) && chosen.classes[Number(event.key) - 1]) {
    event.preventDefault();
    labelCurrent(chosen.classes[Number(event.key) - 1]);
    return;
  }
  if (event.key === "h") { event.preventDefault(); toggleHeat(); }
  if (event.key === "g") { event.preventDefault(); inspect(true); }
  if (event.key === "d") { event.preventDefault(); inspect(false); }
  if (event.key === "c") { event.preventDefault(); submitReview("correct"); }
  if (event.key === "w") { event.preventDefault(); $("#true-class").focus(); }
  if (event.key === "s" && state.current) {
    event.preventDefault();
    state.skipped.add(state.current.id);
    loadQueue();
  }
}

function accuracyBars(list, rows, label) {
  bars(list, rows.map((row) => ({
    label: label(row),
    value: row.accuracy || 0,
    text: `${row.accuracy === null ? "–" : percent(row.accuracy)} of ${row.reviewed}`,
  })), 1);
}

async function loadQuality() {
  const params = rangeParams($("#quality-filters"));
  try {
    const quality = await api(`/predictions/quality?${params}`);
    const all = quality.overall;
    $("#quality-total").textContent = all.reviewed
      ? `${all.reviewed} reviewed, ${all.correct} correct: accuracy ${percent(all.accuracy)}`
      : "No reviews yet: the Review tab asks for them.";
    accuracyBars($("#chart-accuracy-classes"), quality.by_class, (row) => row.class_name);
    accuracyBars($("#chart-accuracy-days"), quality.by_day, (row) => row.day);
    $("#confusions tbody").replaceChildren(...quality.confusions.map((c) => {
      const row = document.createElement("tr");
      for (const text of [c.predicted_class_name, c.true_class_name, c.count]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    }));
  } catch (error) {
    $("#quality-total").textContent = `${error.code}: ${error.message}`;
  }
}

async function loadDrift() {
  const form = $("#drift-filters");
  const params = new URLSearchParams({
    window: form.elements.window.value.trim() || "24h",
    reference: form.elements.reference.value.trim() || "7d",
  });
  try {
    const drift = await api(`/predictions/drift?${params}`);
    const verdict = { true: "Drifted", false: "No drift", null: "No verdict yet" }[String(drift.drifted)];
    $("#drift-verdict").textContent = `${verdict}: ${drift.reason}.`;
    $("#drift-verdict").dataset.drifted = String(drift.drifted);
    const figure = (value, digits = 3) => (value === null ? "–" : value.toFixed(digits));
    $("#drift-figures").textContent = `${drift.recent_count} recent predictions against `
      + `${drift.reference_count} in the reference; classes: Jensen-Shannon distance `
      + `${figure(drift.class_js_distance)}; confidences: KS statistic ${figure(drift.confidence_ks)}`
      + ` (p ${drift.confidence_p_value === null ? "–" : drift.confidence_p_value.toPrecision(2)}), `
      + `mean ${figure(drift.recent_mean_confidence, 2)} against ${figure(drift.reference_mean_confidence, 2)}.`;
    const most = Math.max(0, ...drift.moved.map((m) => Math.abs(m.change)));
    bars($("#chart-drift"), drift.moved.map((m) => ({
      label: m.class_name,
      value: Math.abs(m.change),
      text: `${m.change >= 0 ? "+" : "−"}${percent(Math.abs(m.change))}`,
    })), most);
  } catch (error) {
    $("#drift-verdict").textContent = `${error.code}: ${error.message}`;
  }
}

// --- teaching: label sets, labelling from the review queue, heads ---------------------------

async function loadLabelSets() {
  state.labelSets = await api("/label-sets?limit=500");  // MAX_LABEL_SETS is 200 by default
  for (const select of [$("#label-set"), $("#teach-set")]) {
    const kept = select.value;
    const first = select.id === "label-set" ? [new Option("(no label set)", "")] : [];
    select.replaceChildren(...first, ...state.labelSets.map((set) => new Option(set.name, set.name)));
    if ([...select.options].some((option) => option.value === kept)) select.value = kept;
  }
  showLabelKeys();
}

function chosenLabelSet() {
  return state.labelSets.find((set) => set.name === $("#label-set").value) || null;
}

function showLabelKeys() {
  const chosen = chosenLabelSet();
  $("#label-keys").replaceChildren(...(chosen ? chosen.classes.slice(0, 9) : []).map((name, i) => {
    const entry = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    const key = document.createElement("kbd");
    key.textContent = String(i + 1);
    button.append(key, ` ${name}`);
    button.addEventListener("click", () => labelCurrent(name));
    entry.append(button);
    return entry;
  }));
}

async function labelCurrent(className) {
  const item = state.current;
  const chosen = chosenLabelSet();
  if (!item || !chosen) return;
  try {
    await api(`/predictions/${item.id}/labels`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ label_set: chosen.name, class: className }),
    });
    state.skipped.add(item.id);  // labelled: the next one
    await loadQueue();
    $("#review-status").textContent = `#${item.id} labelled ${className} in ${chosen.name}.`;
    $("#queue-info").focus();
  } catch (error) {
    $("#review-status").textContent = `${error.code}: ${error.message}`;
  }
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function changeButton(head, action, label) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.setAttribute("aria-label", `${label} version ${head.version}`);
  button.addEventListener("click", async () => {
    try {
      await api(`/heads/${head.id}/${action}`, { method: "POST" });
      $("#teach-info").textContent = `Version ${head.version}: ${label.toLowerCase()} done.`;
    } catch (error) {
      $("#teach-info").textContent = `${error.code}: ${error.message}`;
    }
    loadTeach();
  });
  return button;
}

async function loadTeach() {
  try {
    await loadLabelSets();
    const chosen = state.labelSets.find((set) => set.name === $("#teach-set").value);
    if (!chosen) {
      $("#teach-info").textContent = "No label set yet: create one below, then label predictions into it.";
      bars($("#chart-labels"), [], 0);
      $("#versions tbody").replaceChildren();
      $("#detectors tbody").replaceChildren();
      return;
    }
    const counts = chosen.classes.map((name) => ({ label: name, value: chosen.counts[name], text: String(chosen.counts[name]) }));
    bars($("#chart-labels"), counts, Math.max(1, ...counts.map((c) => c.value)));
    const [heads, quality] = await Promise.all([
      api(`/label-sets/${chosen.name}/heads`), api(`/label-sets/${chosen.name}/quality`),
    ]);
    const measured = new Map(quality.versions.map((v) => [v.head_id, v]));
    $("#versions tbody").replaceChildren(...heads.map((head) => {
      const later = measured.get(head.id);
      const row = document.createElement("tr");
      const actions = document.createElement("td");
      if (head.status !== "active") actions.append(changeButton(head, "promote", "Promote"));
      if (head.status === "candidate" || head.status === "retired") actions.append(changeButton(head, "shadow", "Shadow"));
      if (head.status === "active") actions.append(changeButton(head, "rollback", "Roll back"));
      if (head.status !== "retired") actions.append(changeButton(head, "retire", "Retire"));
      row.append(
        cell(`v${head.version}`), cell(head.status), cell(percent(head.metrics.accuracy)),
        cell(head.metrics.macro_f1.toFixed(3)), cell(percent(head.metrics.decided_share)),
        cell(String(later ? later.labels : 0)),
        cell(later && later.accuracy !== null ? percent(later.accuracy) + (later.beats_active ? " (beats the active one)" : "") : "-"),
        actions,
      );
      return row;
    }));
    await loadDetectors(chosen, quality);
    $("#teach-info").textContent = `${chosen.name}: ${chosen.labelled} labelled predictions, ${heads.length} versions.`;
  } catch (error) {
    $("#teach-info").textContent = `${error.code}: ${error.message}`;
  }
}

async function loadDetectors(chosen, quality) {
  const select = $("#train-detector").elements.good_class;
  const kept = select.value;
  select.replaceChildren(...chosen.classes.map((name) => new Option(name, name)));
  if (chosen.classes.includes(kept)) select.value = kept;
  const detectors = await api(`/label-sets/${chosen.name}/detectors`);
  const measured = new Map(quality.detectors.map((d) => [d.head_id, d]));
  const rate = (n, of, share) => (of ? `${n} of ${of} (${percent(share)})` : "-");
  $("#detectors tbody").replaceChildren(...detectors.map((detector) => {
    const later = measured.get(detector.id);
    const actions = document.createElement("td");
    if (detector.status !== "active") actions.append(changeButton(detector, "promote", "Promote"));
    if (detector.status === "candidate" || detector.status === "retired") actions.append(changeButton(detector, "shadow", "Shadow"));
    if (detector.status === "active") actions.append(changeButton(detector, "rollback", "Roll back"));
    if (detector.status !== "retired") actions.append(changeButton(detector, "retire", "Retire"));
    const row = document.createElement("tr");
    row.append(
      cell(`v${detector.version} (${detector.classes[0]})`), cell(detector.status),
      cell(String(detector.training.good_images)),
      cell(later ? rate(later.false_rejects, later.good, later.false_reject_rate) : "-"),
      cell(later ? rate(later.escapes, later.defective, later.escape_rate) : "-"),
      actions,
    );
    return row;
  }));
}

async function trainDetector(form) {
  const name = $("#teach-set").value;
  if (!name) return;
  const goodClass = form.elements.good_class.value;
  $("#teach-info").textContent = `Training a detector on ${name}'s ${goodClass} images...`;
  try {
    const detector = await api(`/label-sets/${name}/detectors`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ good_class: goodClass }),
    });
    await loadTeach();
    $("#teach-info").textContent = `${name} detector v${detector.version} trained on ${detector.training.good_images} good images: promote it to answer.`;
  } catch (error) {
    $("#teach-info").textContent = `${error.code}: ${error.message}`;
  }
}

async function trainHead() {
  const name = $("#teach-set").value;
  if (!name) return;
  $("#teach-info").textContent = `Training ${name}...`;
  try {
    const head = await api(`/label-sets/${name}/heads`, { method: "POST" });
    await loadTeach();
    $("#teach-info").textContent = `${name} v${head.version} trained: cross-validated accuracy ${percent(head.metrics.accuracy)}.`;
  } catch (error) {
    $("#teach-info").textContent = `${error.code}: ${error.message}`;
  }
}

async function createLabelSet(form) {
  const classes = form.elements.classes.value.split(",").map((c) => c.trim()).filter(Boolean);
  try {
    const made = await api("/label-sets", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: form.elements.name.value.trim(), classes }),
    });
    form.reset();
    await loadLabelSets();
    $("#teach-set").value = made.name;
    await loadTeach();
  } catch (error) {
    $("#teach-info").textContent = `${error.code}: ${error.message}`;
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
  if (tab.id === "tab-review") loadQueue();
  if (tab.id === "tab-teach") loadTeach();
  if (tab.id === "tab-quality") loadQuality();
  if (tab.id === "tab-drift") loadDrift();
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
    state.cursors = [];
    state.cursor = "";
    loadHistory();
  });
  $("#prev-page").addEventListener("click", () => {
    state.cursor = state.cursors.pop() || "";
    loadHistory();
  });
  $("#next-page").addEventListener("click", () => {
    if (!state.next) return;
    state.cursors.push(state.cursor);
    state.cursor = state.next;
    loadHistory();
  });
  $("#stats-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadStats();
  });
  $("#queue-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.skipped.clear();
    loadQueue();
  });
  $("#mark-correct").addEventListener("click", () => submitReview("correct"));
  $("#review-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submitReview("wrong");
  });
  $("#skip").addEventListener("click", () => {
    if (state.current) state.skipped.add(state.current.id);
    loadQueue();
  });
  document.addEventListener("keydown", onReviewKey);
  $("#label-set").addEventListener("change", showLabelKeys);
  $("#teach-set").addEventListener("change", loadTeach);
  $("#train-head").addEventListener("click", trainHead);
  $("#train-detector").addEventListener("submit", (event) => {
    event.preventDefault();
    trainDetector(event.target);
  });
  $("#mark-good").addEventListener("click", () => inspect(true));
  $("#mark-defective").addEventListener("click", () => inspect(false));
  $("#toggle-heat").addEventListener("click", toggleHeat);
  $("#new-label-set").addEventListener("submit", (event) => {
    event.preventDefault();
    createLabelSet(event.target);
  });
  $("#quality-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadQuality();
  });
  $("#drift-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadDrift();
  });
});
