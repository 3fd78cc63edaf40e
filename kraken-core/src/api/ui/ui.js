// Small DOM and formatting helpers shared by the pages, and the error list.

/**
 * Creates an element: `h("a", { href: "#/" }, "text", child)`. Attributes starting with
 * `on` become listeners; `class`, `text` and boolean attributes are handled; `null`,
 * `undefined` and `false` children are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "text") {
      el.textContent = value;
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Sets `textContent` only when it changed (keeps selections and avoids layout work). */
export function setText(el, text) {
  const value = text === undefined || text === null ? "" : String(text);
  if (el.textContent !== value) el.textContent = value;
}

/**
 * Keeps `parent`'s children in step with `items`, one element per key, in order: new keys
 * get `create(item)`, every element gets `update(el, item)`, gone keys are removed. Elements
 * are kept across calls, so focus and scroll positions survive live updates.
 */
export function syncList(parent, items, key, create, update) {
  const existing = new Map();
  for (const child of [...parent.children]) {
    if (child.dataset.key !== undefined) existing.set(child.dataset.key, child);
  }
  let cursor = parent.firstElementChild;
  while (cursor && cursor.dataset.key === undefined) cursor = cursor.nextElementSibling;
  const wanted = new Set();
  for (const item of items) {
    const k = String(key(item));
    wanted.add(k);
    let el = existing.get(k);
    if (!el) {
      el = create(item);
      el.dataset.key = k;
    }
    if (el !== cursor) parent.insertBefore(el, cursor);
    else cursor = cursor.nextElementSibling;
    // Updated once in the document, so that sizes (of charts) can be measured.
    update(el, item);
  }
  for (const [k, el] of existing) if (!wanted.has(k)) el.remove();
}

// ----- errors -----

const keyed = new Map();

/**
 * Shows an error at the top of the page until dismissed. With a `key`, a later error of the
 * same key replaces it and `clearError(key)` removes it (for failures that heal, such as
 * polling while the API is unreachable).
 */
export function showError(err, { key, context } = {}) {
  const list = document.getElementById("errors");
  const message = err instanceof Error ? err.message : String(err);
  const code = err && err.code && err.code !== "ERROR" ? err.code : "";
  const text = `${context ? `${context}: ` : ""}${message}`;
  let item = key ? keyed.get(key) : undefined;
  if (!item) {
    item = h("div", { class: "error", role: "alert" });
    if (key) keyed.set(key, item);
    list.append(item);
  }
  const dismiss = h("button", {
    type: "button",
    class: "link",
    "aria-label": "Dismiss this error",
    onclick: () => {
      item.remove();
      if (key) keyed.delete(key);
    },
  }, "Dismiss");
  const unauth = code === "UNAUTHENTICATED"
    ? [" ", h("a", { href: "#/settings" }, "Set the API token")]
    : [];
  replace(item,
    h("span", { class: "error-text" }, code ? h("code", {}, code) : null, code ? " " : null, text, unauth),
    h("span", { class: "error-time" }, new Date().toLocaleTimeString()),
    dismiss);
}

export function clearError(key) {
  const item = keyed.get(key);
  if (item) {
    item.remove();
    keyed.delete(key);
  }
}

// ----- formatting -----

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  let s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const hh = Math.floor(s / 3600);
  s -= hh * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (d) return `${d} d ${hh} h`;
  if (hh) return `${hh} h ${m} min`;
  if (m) return `${m} min ${s} s`;
  return `${s} s`;
}

export function fmtMiB(mib) {
  if (mib === null || mib === undefined) return "–";
  if (mib >= 1024) return `${(mib / 1024).toFixed(1)} GiB`;
  return `${mib.toFixed(mib < 10 ? 1 : 0)} MiB`;
}

export function fmtPercent(value) {
  if (value === null || value === undefined) return "–";
  return `${value.toFixed(value < 10 ? 1 : 0)} %`;
}

export function fmtTime(ms) {
  if (!ms && ms !== 0) return "–";
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

export function fmtDateTime(ms) {
  if (!ms && ms !== 0) return "–";
  const d = new Date(ms);
  return `${d.toLocaleDateString()} ${d.toLocaleTimeString([], { hour12: false })}`;
}

export function ago(ms, now = Date.now()) {
  if (!ms) return "–";
  return `${fmtDuration((now - ms) / 1000)} ago`;
}

export function shortId(id) {
  return id && id.length > 14 ? `${id.slice(0, 12)}…` : id || "–";
}

// ----- statuses -----

/** Where a status sits: `ok`, `busy`, `bad`, `gone`. */
export function statusTone(status) {
  switch (status) {
    case "Running":
      return "ok";
    case "Errored":
      return "bad";
    case "Destroyed":
      return "gone";
    case "DestructionRequested":
    case "DelegatingDestruction":
    case "DestructionInProgress":
      return "ending";
    default:
      return "busy";
  }
}

/** A status badge; `data-status` carries the exact status name. */
export function statusBadge(status) {
  const el = h("span", { class: "badge" });
  updateBadge(el, status);
  return el;
}

export function updateBadge(el, status) {
  const value = status || "Unknown";
  if (el.dataset.status === value) return;
  el.dataset.status = value;
  el.className = `badge tone-${statusTone(value)}`;
  el.textContent = value;
}

/** Page heading that receives focus on navigation. */
export function heading(text, ...extra) {
  return h("h1", { tabindex: "-1", class: "page-title" }, text, ...extra);
}

/**
 * Runs `fn` (which rebuilds `container`'s content) and puts the keyboard focus back on the
 * element at the same place, so pages that redraw on live updates stay keyboard usable.
 */
export function preserveFocus(container, fn) {
  const active = document.activeElement;
  let path = null;
  if (active && active !== container && container.contains(active)) {
    path = [];
    for (let el = active; el !== container; el = el.parentElement) {
      path.unshift([...el.parentElement.children].indexOf(el));
    }
  }
  fn();
  if (path) {
    let el = container;
    for (const i of path) {
      el = el && el.children[i];
    }
    if (el && typeof el.focus === "function") el.focus({ preventScroll: true });
  }
}
