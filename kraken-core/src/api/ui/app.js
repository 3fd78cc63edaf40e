// Entry point: hash routing between the pages, the header's live and token indicators.

import { getToken, onSocketState, onTokenChange } from "./graphql.js";
import { start } from "./store.js";
import { h, replace, setText, showError } from "./ui.js";
import * as overview from "./pages/overview.js";
import * as nodes from "./pages/nodes.js";
import * as deployments from "./pages/deployments.js";
import * as detail from "./pages/deployment.js";
import * as info from "./pages/info.js";
import * as settings from "./pages/settings.js";

/** Routes: a pattern over the hash path, the page module, the nav entry it lights up. */
const ROUTES = [
  [/^\/?$/, overview, "overview"],
  [/^\/nodes\/?$/, nodes, "nodes"],
  [/^\/deployments\/?$/, deployments, "deployments"],
  [/^\/deployments\/([^/]+)$/, detail, "deployments"],
  [/^\/info\/?$/, info, "info"],
  [/^\/settings\/?$/, settings, "settings"],
];

const main = document.getElementById("main");
let cleanup = null;

function notFound(container, path) {
  container.append(
    h("h1", { tabindex: "-1", class: "page-title" }, "Not found"),
    h("p", {}, "There is no page at ", h("code", {}, `#${path}`), ". ", h("a", { href: "#/" }, "Back to the overview"), "."),
  );
  return () => {};
}

function route() {
  const path = decodeURIComponent(location.hash.replace(/^#/, "")) || "/";
  if (cleanup) {
    try {
      cleanup();
    } catch (err) {
      showError(err, { context: "leaving the page" });
    }
    cleanup = null;
  }
  replace(main);
  let nav = null;
  let page = null;
  let params = [];
  for (const [pattern, module, name] of ROUTES) {
    const match = pattern.exec(path);
    if (match) {
      page = module;
      nav = name;
      params = match.slice(1);
      break;
    }
  }
  for (const link of document.querySelectorAll("nav a[data-route]")) {
    if (link.dataset.route === nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  try {
    cleanup = page ? page.render(main, ...params) : notFound(main, path);
  } catch (err) {
    showError(err, { context: "showing the page" });
    console.error(err);
  }
  const title = main.querySelector("h1");
  document.title = title ? `${title.textContent} · Kraken` : "Kraken";
  // Moves focus to the new page for keyboard and screen reader users, but not on first load.
  if (title && routed) title.focus({ preventScroll: false });
  routed = true;
}
let routed = false;

function showTokenState() {
  const link = document.getElementById("token-state");
  const set = Boolean(getToken());
  setText(link, set ? "Settings" : "Set token");
  link.classList.toggle("attention", !set);
  link.title = set ? "API token set: changes are enabled" : "No API token: the platform is read-only here";
}

function showSocketState(state, detail) {
  const live = document.getElementById("live");
  const labels = { live: "live", connecting: "connecting…", reconnecting: "reconnecting…", idle: "polling", refused: "not live" };
  setText(live, labels[state] || state);
  live.dataset.state = state;
  live.title = detail || (state === "live" ? "updates arrive as they happen" : "");
}

addEventListener("hashchange", route);
onTokenChange(showTokenState);
onSocketState(showSocketState);
showTokenState();
start();
route();
