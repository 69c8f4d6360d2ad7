// The search page: plain JavaScript over the service's JSON API, no framework.
// Its state lives in the URL (/?q=...&mode=...&filters=...), so a search can be shared, reloaded
// and linked; an image query is the one thing a URL cannot hold.
"use strict";

const K = 24;
const MODES = ["hybrid", "lexical", "vector"];
// query: {kind: "text"|"image"|"category"|"similar", value}; mode, strict and spell apply to text
// queries (spell: false searches the text as typed, after the shopper turned a correction down)
const state = { query: null, filters: {}, mode: "hybrid", strict: false, spell: true };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);  // strings become text nodes: no HTML injection
  return node;
}

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

function filtersParam() {
  return Object.keys(state.filters).length ? JSON.stringify(state.filters) : "";
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

// --- running a query ---------------------------------------------------------------------------
// --- the URL holds the state ---------------------------------------------------------------------
const URL_KEYS = { text: "q", category: "category", similar: "similar" };

function pageUrl() {
  const params = new URLSearchParams();
  const q = state.query;
  if (q && URL_KEYS[q.kind]) params.set(URL_KEYS[q.kind], q.value);
  if (q && q.kind === "text") {
    params.set("mode", state.mode);
    if (state.strict) params.set("strict", "1");
    if (!state.spell) params.set("spell", "0");
  }
  if (filtersParam()) params.set("filters", filtersParam());
  const search = params.toString();
  return search ? `/?${search}` : "/";
}

function saveUrl() {
  const url = pageUrl();
  if (url !== location.pathname + location.search) history.pushState(null, "", url);
}

function readUrl() {
  const params = new URLSearchParams(location.search);
  const kind = Object.keys(URL_KEYS).find((k) => params.get(URL_KEYS[k]));
  state.query = kind ? { kind, value: params.get(URL_KEYS[kind]) } : null;
  state.mode = MODES.includes(params.get("mode")) ? params.get("mode") : "hybrid";
  state.strict = params.get("strict") === "1";
  state.spell = params.get("spell") !== "0";
  state.filters = {};
  try {
    const filters = JSON.parse(params.get("filters") || "{}");
    // a single value may be written without a list: {"brand": "Puma"}
    for (const [field, spec] of Object.entries(filters)) state.filters[field] = typeof spec === "string" ? [spec] : spec;
  } catch {
    showError("The link's filters are not valid JSON; they were left out.");
  }
  $("q").value = kind === "text" ? state.query.value : "";
  for (const radio of document.querySelectorAll("#mode input")) radio.checked = radio.value === state.mode;
  $("strict").checked = state.strict;
}

async function run() {
  const q = state.query;
  if (!q) return;
  if (q.kind !== "image") saveUrl();
  const params = new URLSearchParams({ k: K });
  if (filtersParam()) params.set("filters", filtersParam());
  $("results").classList.add("loading");
  try {
    let body;
    if (q.kind === "text") {
      params.set("q", q.value);
      params.set("mode", state.mode);
      if (state.strict) params.set("strict", "true");
      if (!state.spell) params.set("spell", "false");
      body = await api(`/search?${params}`);
    } else if (q.kind === "category") {
      params.set("path", q.value);
      body = await api(`/category?${params}`);
    } else if (q.kind === "similar") {
      body = await api(`/products/${encodeURIComponent(q.value)}/similar?${params}`);
    } else {
      const form = new FormData();
      form.append("file", q.value);
      form.append("k", K);
      if (filtersParam()) form.append("filters", filtersParam());
      body = await api("/search/image", { method: "POST", body: form });
    }
    showError("");
    render(body);
  } catch (error) {
    showError(error.message);
  } finally {
    $("results").classList.remove("loading");
  }
}

function describe(q) {
  if (q.kind === "text") return `“${q.value}” · ${state.mode}${state.strict ? ", strict" : ""}${state.spell ? "" : ", as typed"}`;
  if (q.kind === "category") return q.value;
  if (q.kind === "similar") return `products like ${q.value}`;
  return "your image";
}

function render(body) {
  const n = body.results.length;
  $("status").textContent = `${n} result${n === 1 ? "" : "s"} for ${describe(state.query)} · ${body.took_ms} ms`;
  spelling(body);
  const entities = body.entities || [];
  $("entities").hidden = entities.length === 0;
  $("entities").replaceChildren(
    el("span", { class: "label" }, "Understood:"),
    ...entities.map((e) =>
      el("button", {
        class: "chip", type: "button", "data-group": e.group, title: e.filter ? `filter on ${e.group} = ${e.value}` : "no product field holds it",
        onclick: () => e.filter && addFilters(e.filter),
      }, el("small", {}, e.group), ` ${e.value}`)
    )
  );
  $("results").replaceChildren(...body.results.map(card));
  if (n === 0) $("results").append(el("p", { class: "empty" }, "Nothing matches. Try fewer filters."));
}

// "Showing results for sneakers. Search instead for snekers": a correction the shopper can turn down
function spelling(body) {
  const corrected = (body.corrections || []).length > 0;
  $("spelling").hidden = !corrected;
  if (!corrected) return;
  $("spelling").replaceChildren(
    "Showing results for ", el("strong", {}, body.query.searched), ". Search instead for ",
    el("button", { class: "link", type: "button", onclick: () => { state.spell = false; run(); } }, body.query.text),
  );
}

// which side(s) found a product, at which rank: "vector #3", "lexical #1"
function sides(p) {
  return el("div", { class: "sides" }, ...Object.entries(p.sides || {}).map(([side, found]) =>
    el("span", { class: `side ${side}`, "data-side": side, title: `${side} score ${found.score}` }, `${side} #${found.rank}`)));
}

function card(p) {
  const attrs = Object.entries(p.attributes).filter(([k]) => k !== "price").slice(0, 3);
  return el("article", { class: "card", "data-id": p.id },
    el("div", { class: "thumb" }, el("img", { src: p.image_url, alt: p.title, loading: "lazy" })),
    el("div", { class: "body" },
      el("h3", {}, p.title),
      el("p", { class: "path" }, p.category_path.join(" › ")),
      el("p", { class: "attrs" }, attrs.map(([, v]) => v).join(" · ")),
      sides(p),
      el("div", { class: "foot" },
        p.attributes.price ? el("span", { class: "price" }, p.attributes.price) : el("span"),
        el("span", { class: "score", title: "similarity" }, p.score.toFixed(3)),
        el("button", { class: "link", type: "button", onclick: () => search({ kind: "similar", value: p.id }) }, "similar"),
      ),
    ),
  );
}

function search(query) {
  state.query = query;
  $("query-image").hidden = query.kind !== "image";
  if (query.kind !== "text") $("q").value = "";
  if (query.kind !== "image") $("image-input").value = "";
  for (const node of document.querySelectorAll("#tree .node")) node.classList.toggle("active", query.kind === "category" && node.dataset.path === query.value);
  run();
}

// --- filters -----------------------------------------------------------------------------------
function toggleFilter(field, value, on) {
  const values = new Set(state.filters[field] || []);
  if (on) values.add(value); else values.delete(value);
  if (values.size) state.filters[field] = [...values]; else delete state.filters[field];
  syncFacetInputs();
  run();
}

// a recognised entity's filter, e.g. {"category": ["Footwear > Shoes"]}, added to the current ones
function addFilters(filters) {
  for (const [field, values] of Object.entries(filters)) {
    state.filters[field] = [...new Set([...(state.filters[field] || []), ...values])];
  }
  syncFacetInputs();
  run();
}

function setRange(field, bound, text) {
  const range = { ...(state.filters[field] || {}) };
  if (text === "") delete range[bound]; else range[bound] = Number(text);
  if (Object.keys(range).length) state.filters[field] = range; else delete state.filters[field];
  syncFacetInputs();
  run();
}

function syncFacetInputs() {
  for (const box of document.querySelectorAll("#facets input[type=checkbox]")) {
    const values = state.filters[box.dataset.field];
    box.checked = Array.isArray(values) && values.some((v) => String(v).toLowerCase() === box.value.toLowerCase());
  }
  for (const input of document.querySelectorAll("#facets input[type=number]")) {
    const bound = (state.filters[input.dataset.field] || {})[input.dataset.bound];
    input.value = bound === undefined ? "" : bound;
  }
  $("clear-filters").hidden = Object.keys(state.filters).length === 0;
}

function facet(field, info) {
  const box = el("details", { class: "facet", open: "" }, el("summary", {}, field));
  if (info.type === "range") {
    const input = (bound, placeholder) => el("input", {
      type: "number", step: "any", placeholder, "data-field": field, "data-bound": bound,
      onchange: (event) => setRange(field, bound, event.target.value),
    });
    box.append(el("div", { class: "range" }, input("min", `min ${info.min}`), "–", input("max", `max ${info.max}`)));
  } else {
    for (const { value, count } of info.values.slice(0, 12)) {
      box.append(el("label", { class: "option" },
        el("input", { type: "checkbox", value, "data-field": field, onchange: (event) => toggleFilter(field, value, event.target.checked) }),
        el("span", {}, value), el("small", {}, String(count))));
    }
  }
  return box;
}

function treeNodes(nodes) {
  return el("ul", {}, ...nodes.map((node) => el("li", {},
    el("button", { class: "node", type: "button", "data-path": node.path, onclick: () => search({ kind: "category", value: node.path }) },
      node.name, el("small", {}, String(node.count))),
    node.children.length ? treeNodes(node.children) : "",
  )));
}

// --- search as you type: the box's datalist holds the service's completions of what is typed ----
let suggestTimer = null;
let suggestFor = "";

function suggestSoon() {
  clearTimeout(suggestTimer);
  suggestTimer = setTimeout(suggest, 120);  // one request per pause in typing, not per key
}

async function suggest() {
  const typed = $("q").value;
  if (!typed.trim() || typed === suggestFor) return;
  suggestFor = typed;
  try {
    const body = await api(`/suggest?${new URLSearchParams({ q: typed, k: 8 })}`);
    if ($("q").value !== typed) return;  // typing went on: a newer request will fill the list
    $("suggestions").replaceChildren(...body.suggestions.map((s) =>
      el("option", { value: s.text, label: `${s.kind} · ${s.products}` })));
  } catch {
    $("suggestions").replaceChildren();  // suggestions are a help, never an error to show
  }
}

// --- start -------------------------------------------------------------------------------------
async function start() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("q").value.trim();
    state.spell = true;  // a new query is corrected again
    if (value) search({ kind: "text", value }); else showError("Type something to search for.");
  });
  $("q").addEventListener("input", suggestSoon);
  $("image-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (!file) return;
    $("query-image").src = URL.createObjectURL(file);
    search({ kind: "image", value: file });
  });
  for (const radio of document.querySelectorAll("#mode input")) {
    radio.addEventListener("change", () => {
      state.mode = radio.value;
      if (state.query && state.query.kind === "text") run();
    });
  }
  $("strict").addEventListener("change", (event) => {
    state.strict = event.target.checked;
    if (state.query && state.query.kind === "text") run();
  });
  window.addEventListener("popstate", () => {
    readUrl();
    syncFacetInputs();
    run();
  });
  $("clear-filters").addEventListener("click", () => {
    state.filters = {};
    for (const input of document.querySelectorAll("#facets input[type=number]")) input.value = "";
    syncFacetInputs();
    run();
  });
  readUrl();
  try {
    const [{ tree }, { facets }] = await Promise.all([api("/category"), api("/facets")]);
    $("tree").replaceChildren(treeNodes(tree));
    $("facets").replaceChildren(...Object.entries(facets).map(([field, info]) => facet(field, info)));
    syncFacetInputs();
  } catch (error) {
    showError(error.message);
  }
  if (state.query) search(state.query);
}

start();
