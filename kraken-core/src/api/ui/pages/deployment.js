// One deployment: its facts, the status history as a timeline, the container's CPU and
// memory over time, the live log tail, and redeploy / destroy with confirmation.

import { createChart } from "../charts.js";
import { request, subscribe } from "../graphql.js";
import { DEPLOYMENT_FIELDS, HISTORY_MS, onChange, refresh, state, upsertDeployment } from "../store.js";
import {
  fmtDateTime, fmtDuration, fmtMiB, fmtTime, h, heading, replace, setText, showError,
  statusBadge, updateBadge,
} from "../ui.js";

const FULL = `${DEPLOYMENT_FIELDS}
  statusHistory { status timeMs reason generation }
  manifest { name version author endpoint port lang run build envKeys memoryMb cpus }`;

const GET = `query Deployment($id: String!) { getDeployment(deploymentId: $id) { ${FULL} } }`;
const CHANGED = `subscription Changed($id: String!) { deploymentChanged(deploymentId: $id) { ${FULL} } }`;
const LOGS = `subscription Logs($id: String!) { logLines(deploymentId: $id, tail: 200) { time stream text } }`;
const REDEPLOY = "mutation Redeploy($id: String!) { pollRedeploy(deploymentId: $id) }";
const DESTROY = "mutation Destroy($id: String!) { cancelDeployment(deploymentId: $id) }";

/** Most log lines kept on the page. */
const MAX_LINES = 2000;
const DESTROYING = ["DestructionRequested", "DelegatingDestruction", "DestructionInProgress", "Destroyed"];

function lastChange(d) {
  const history = d.statusHistory || [];
  return history.length ? history[history.length - 1].timeMs : 0;
}

function newer(a, b) {
  return a.generation > b.generation || (a.generation === b.generation && lastChange(a) > lastChange(b));
}

/** A confirmation dialog; resolves true when the user confirms. */
function confirmDialog(title, text, confirmLabel) {
  return new Promise((resolve) => {
    const yes = h("button", { type: "submit", value: "yes", class: "danger", id: "confirm-yes" }, confirmLabel);
    const no = h("button", { type: "submit", value: "no", id: "confirm-no", autofocus: true }, "Cancel");
    const dialog = h("dialog", { class: "confirm", "aria-labelledby": "confirm-title", "aria-describedby": "confirm-text" },
      h("form", { method: "dialog" },
        h("h2", { id: "confirm-title" }, title),
        h("p", { id: "confirm-text" }, text),
        h("div", { class: "actions" }, no, yes)));
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "yes");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A span of time, to the tenth of a second when short. */
function fmtSpan(ms) {
  if (ms < 100) return "< 0.1 s";
  return ms < 10000 ? `${(ms / 1000).toFixed(1)} s` : fmtDuration(ms / 1000);
}

function timeline(d) {
  const history = d.statusHistory || [];
  if (!history.length) return h("p", { class: "muted" }, "No status yet.");
  let generation = null;
  return h("ol", { class: "timeline", id: "timeline" }, history.map((change, i) => {
    const next = history[i + 1];
    const took = next ? fmtSpan(next.timeMs - change.timeMs) : "now";
    const marker = change.generation !== generation && i > 0 ? h("span", { class: "gen" }, `attempt ${change.generation}`) : null;
    generation = change.generation;
    return h("li", { class: next ? "" : "current" },
      h("span", { class: "when" }, h("time", { datetime: new Date(change.timeMs).toISOString() }, fmtTime(change.timeMs))),
      statusBadge(change.status),
      h("span", { class: "took" }, next ? `for ${took}` : "current"),
      marker,
      change.reason ? h("p", { class: "reason" }, change.reason) : null);
  }));
}

function facts(d) {
  const m = d.manifest;
  const pairs = [
    ["Source", h("code", { class: "wrap" }, d.srcUrl)],
    ["Branch", d.gitBranch],
    ["Commit", d.commit ? h("code", { title: d.commit }, d.commit.slice(0, 12)) : null],
    ["Version", d.version],
    ["Node", d.node ? h("a", { href: "#/nodes" }, d.node) : null],
    ["Port", d.port ? String(d.port) : null],
    ["URL", d.resultsUrl ? h("a", { href: d.resultsUrl, target: "_blank", rel: "noopener" }, d.resultsUrl) : null],
    ["Created", d.createdAt ? fmtDateTime(Date.parse(d.createdAt)) : null],
    ["Attempt", String(d.generation)],
  ];
  if (m) {
    pairs.push(
      ["Kind", m.lang],
      ["Run", m.run ? h("code", { class: "wrap" }, m.run) : null],
      ["Build", m.build ? h("code", { class: "wrap" }, m.build) : null],
      ["Environment", m.envKeys.length ? m.envKeys.join(", ") : "none"],
      ["Limits", [m.memoryMb ? `${m.memoryMb} MiB` : null, m.cpus ? `${m.cpus} CPU` : null].filter(Boolean).join(", ") || "none"],
    );
  }
  return h("dl", { class: "facts" }, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "–")]));
}

export function render(main, rawId) {
  const id = rawId;
  let current = null;
  let stopped = false;
  const stops = [];

  const title = heading("Deployment");
  const badge = statusBadge(null);
  badge.id = "detail-status";
  const reason = h("p", { class: "form-error", id: "detail-reason", role: "alert", hidden: true });
  const openApp = h("a", { class: "button", id: "open-app", target: "_blank", rel: "noopener", hidden: true }, "Open the app");
  const redeploy = h("button", { type: "button", id: "redeploy" }, "Redeploy");
  const destroy = h("button", { type: "button", class: "danger", id: "destroy" }, "Destroy");
  const actionResult = h("p", { class: "form-result", id: "action-result", role: "status" });
  const actionError = h("div", { class: "form-error", id: "action-error", role: "alert", hidden: true });
  const factsBox = h("div", { id: "facts" }, h("p", { class: "muted" }, "Loading…"));
  const timelineBox = h("div", { id: "timeline-box" });
  const cpuChart = createChart("CPU, % of one core");
  const memChart = createChart("Memory, MiB");
  const log = h("pre", { class: "log", id: "log", role: "log", tabindex: "0", "aria-label": "Log tail" });
  const logState = h("span", { class: "muted", id: "log-state" }, "connecting…");
  const follow = h("input", { type: "checkbox", id: "log-follow", checked: true });

  main.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/deployments" }, "← Deployments")),
    h("div", { class: "title-row" }, title, badge),
    h("p", { class: "muted id-line" }, h("code", {}, id)),
    reason,
    h("div", { class: "actions" }, openApp, redeploy, destroy),
    actionResult,
    actionError,
    h("div", { class: "grid two" },
      h("section", { class: "card", "aria-labelledby": "facts-title" }, h("h2", { id: "facts-title" }, "Details"), factsBox),
      h("section", { class: "card", "aria-labelledby": "timeline-title" }, h("h2", { id: "timeline-title" }, "Status history"), timelineBox)),
    h("section", { class: "card", "aria-labelledby": "usage-title" },
      h("h2", { id: "usage-title" }, "Container usage"),
      h("div", { class: "charts" }, cpuChart, memChart)),
    h("section", { class: "card", "aria-labelledby": "log-title" },
      h("div", { class: "card-head" },
        h("h2", { id: "log-title" }, "Log"),
        h("span", { class: "tags" }, logState, h("label", { class: "check" }, follow, " Follow"))),
      log));

  const show = (d) => {
    current = d;
    setText(title, d.appName || "Deployment");
    document.title = `${d.appName || d.id} · Kraken`;
    updateBadge(badge, d.status);
    reason.hidden = d.status !== "Errored";
    setText(reason, d.status === "Errored" ? `Failed: ${d.errorReason || "no reason given"}` : "");
    openApp.hidden = !(d.resultsUrl && d.status === "Running");
    if (d.resultsUrl) openApp.href = d.resultsUrl;
    const ending = DESTROYING.includes(d.status);
    redeploy.disabled = ending;
    destroy.disabled = ending;
    replace(factsBox, facts(d));
    replace(timelineBox, timeline(d));
    drawCharts();
  };

  const drawCharts = () => {
    const samples = state.deploymentHistory.get(id) || [];
    const now = Date.now();
    cpuChart.draw({ series: [{ label: "CPU", values: samples.map((s) => ({ t: s.t, v: s.cpu })) }], unit: "%", windowMs: HISTORY_MS, now });
    const max = current && current.maxMemMb ? current.maxMemMb : undefined;
    memChart.draw({
      series: [{ label: "Memory", values: samples.map((s) => ({ t: s.t, v: s.mem })) }],
      unit: "MiB",
      max,
      windowMs: HISTORY_MS,
      now,
      format: (v) => fmtMiB(v),
    });
  };

  let fetching = false;
  const load = async () => {
    if (fetching) return;
    fetching = true;
    try {
      const data = await request(GET, { id });
      if (!stopped) {
        show(data.getDeployment);
        upsertDeployment(data.getDeployment);
      }
    } catch (err) {
      if (!stopped) {
        showError(err, { context: `reading deployment ${id}` });
        if (!current) replace(factsBox, h("p", { class: "form-error" }, err.message));
      }
    } finally {
      fetching = false;
    }
  };
  load();

  // Status changes as they happen.
  stops.push(subscribe(CHANGED, { id }, {
    next: (data) => {
      const d = data.deploymentChanged;
      if (d && !stopped && (!current || !newer(current, d))) show(d);
    },
    error: (err) => showError(err, { context: "live status of this deployment" }),
  }));

  // The log: the newest lines, then each new one.
  let lines = 0;
  const appendLine = (line) => {
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(h("span", { class: `line ${line.stream}` },
      h("span", { class: "ts" }, fmtTime(Date.parse(line.time))), " ",
      h("span", { class: "stream" }, line.stream), " ",
      line.text, "\n"));
    lines += 1;
    while (log.childElementCount > MAX_LINES) log.firstElementChild.remove();
    if (follow.checked && atBottom) log.scrollTop = log.scrollHeight;
    setText(logState, `${lines} line${lines === 1 ? "" : "s"}, live`);
  };
  stops.push(subscribe(LOGS, { id }, {
    start: () => {
      replace(log);
      lines = 0;
      setText(logState, "waiting for lines…");
    },
    next: (data) => {
      if (data.logLines) appendLine(data.logLines);
    },
    error: (err) => {
      setText(logState, "not live");
      showError(err, { context: "the log of this deployment" });
    },
    complete: () => setText(logState, `${lines} line${lines === 1 ? "" : "s"}, ended`),
  }));
  follow.addEventListener("change", () => {
    if (follow.checked) log.scrollTop = log.scrollHeight;
  });

  // Stats come with the platform poll; a newer status seen there is read in full.
  stops.push(onChange(() => {
    const known = state.deployments.get(id);
    if (current && known && newer(known, current)) load();
    else drawCharts();
  }));

  const act = async (mutation, verb, field) => {
    actionError.hidden = true;
    setText(actionResult, `${verb}…`);
    try {
      const data = await request(mutation, { id });
      setText(actionResult, data[field]
        ? `${verb} requested.`
        : `Nothing to do: ${field === "pollRedeploy" ? "a redeploy is already pending" : "it is already being destroyed"}.`);
      refresh();
    } catch (err) {
      setText(actionResult, "");
      actionError.hidden = false;
      replace(actionError, h("strong", {}, `${verb} failed: `), err.message, err.code ? ` (${err.code})` : "");
    }
  };
  redeploy.addEventListener("click", async () => {
    const name = current ? current.appName || id : id;
    if (await confirmDialog(`Redeploy ${name}?`, "Kraken looks up the newest commit of the branch and deploys it again (always, after an error).", "Redeploy")) {
      act(REDEPLOY, "Redeploy", "pollRedeploy");
    } else {
      redeploy.focus();
    }
  });
  destroy.addEventListener("click", async () => {
    const name = current ? current.appName || id : id;
    if (await confirmDialog(`Destroy ${name}?`, "The app is stopped and removed from its node. This cannot be undone.", "Destroy")) {
      act(DESTROY, "Destroy", "cancelDeployment");
    } else {
      destroy.focus();
    }
  });

  const resize = () => drawCharts();
  addEventListener("resize", resize);
  return () => {
    stopped = true;
    stops.forEach((stop) => stop());
    removeEventListener("resize", resize);
    document.querySelectorAll("dialog.confirm").forEach((d) => d.close());
  };
}
