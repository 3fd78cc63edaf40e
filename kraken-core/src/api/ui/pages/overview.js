// Overview: who orchestrates, whether the platform is healthy, and how many nodes and
// deployments there are, by status.

import { countByStatus, onChange, rankName, state } from "../store.js";
import { ago, h, heading, preserveFocus, replace, statusTone } from "../ui.js";

/** A node that has not reported for this long is counted as silent. */
export const SILENT_MS = 15000;

const ORDER = [
  "Running", "Errored", "DeploymentRequested", "ValidatingDeploymentData",
  "RetrievingApplicationData", "DelegatingDeployment", "BuildingDeployment", "Deploying",
  "UpdateRequested", "DestructionRequested", "DelegatingDestruction", "DestructionInProgress",
  "Destroyed",
];

/** The platform's health: `{ tone, label, reasons }`. */
export function health(now = Date.now()) {
  if (!state.loaded) {
    return state.error
      ? { tone: "bad", label: "Unreachable", reasons: [state.error.message] }
      : { tone: "busy", label: "Loading", reasons: [] };
  }
  const reasons = [];
  let tone = "ok";
  if (state.error) {
    tone = "bad";
    reasons.push(`the last update failed: ${state.error.message}`);
  }
  if (!state.platform || !state.platform.orchestrator) {
    tone = "bad";
    reasons.push("no orchestrator is announced");
  }
  if (state.nodes.size === 0) {
    tone = "bad";
    reasons.push("no node has joined");
  }
  const silent = [...state.nodes.values()].filter((n) => now - Date.parse(n.updateTime) > SILENT_MS);
  if (silent.length) {
    if (tone === "ok") tone = "busy";
    reasons.push(`${silent.length} node${silent.length > 1 ? "s" : ""} silent for over ${SILENT_MS / 1000} s: ${silent.map((n) => n.hostname || n.id).join(", ")}`);
  }
  const errored = countByStatus().get("Errored") || 0;
  if (errored) {
    if (tone === "ok") tone = "busy";
    reasons.push(`${errored} deployment${errored > 1 ? "s" : ""} errored`);
  }
  const label = tone === "ok" ? "Healthy" : tone === "busy" ? "Degraded" : "Unhealthy";
  return { tone, label, reasons };
}

function card(title, ...body) {
  return h("section", { class: "card" }, h("h2", {}, title), ...body);
}

function dl(pairs) {
  return h("dl", { class: "facts" }, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "–")]));
}

function draw(body) {
  const now = Date.now();
  const p = state.platform;
  const orchestratorNode = p && p.orchestrator ? state.nodes.get(p.orchestrator) : null;
  const hl = health(now);
  const counts = countByStatus();
  const total = state.deployments.size;
  const nodes = [...state.nodes.values()];
  const reporting = nodes.filter((n) => now - Date.parse(n.updateTime) <= SILENT_MS).length;
  const statuses = ORDER.filter((s) => counts.get(s)).concat([...counts.keys()].filter((s) => !ORDER.includes(s)));

  const bar = h("div", { class: "stack", role: "img", "aria-label": statuses.map((s) => `${s} ${counts.get(s)}`).join(", ") || "no deployments" },
    statuses.map((s) => h("span", {
      class: `stack-part tone-${statusTone(s)}`,
      style: `flex-grow:${counts.get(s)}`,
      title: `${s}: ${counts.get(s)}`,
    })));

  replace(body,
    h("div", { class: "grid cards" },
      card("Health",
        h("p", { class: `health tone-${hl.tone}`, id: "health" }, hl.label),
        hl.reasons.length ? h("ul", { class: "reasons" }, hl.reasons.map((r) => h("li", {}, r))) : h("p", { class: "muted" }, "Every node reports and no deployment has failed.")),
      card("Orchestrator",
        dl([
          ["Node", p && p.orchestrator ? h("a", { href: "#/nodes" }, orchestratorNode ? `${orchestratorNode.hostname} (${p.orchestrator})` : p.orchestrator) : "none announced"],
          ["Epoch", p ? String(p.epoch) : null],
          ["API", p && p.apiAddr ? h("code", {}, p.apiAddr) : null],
          ["Broker", p && p.brokerUrl ? h("code", {}, p.brokerUrl) : "in-process"],
          ["Standbys", p && p.candidates.length ? p.candidates.join(", ") : "none"],
        ])),
      card("Nodes",
        h("p", { class: "big" }, h("span", { id: "node-count" }, String(nodes.length)), h("span", { class: "unit" }, nodes.length === 1 ? " node" : " nodes")),
        dl([
          ["Reporting", `${reporting} of ${nodes.length}`],
          ["Roles", nodes.length ? nodes.map((n) => `${n.hostname || n.id}: ${rankName(n.orchestrationPriority)}`).join(", ") : null],
        ]),
        h("a", { href: "#/nodes" }, "See the nodes")),
      card("Deployments",
        h("p", { class: "big" }, h("span", { id: "deployment-count" }, String(total)), h("span", { class: "unit" }, total === 1 ? " deployment" : " deployments")),
        bar,
        h("ul", { class: "counts", id: "status-counts" },
          statuses.length
            ? statuses.map((s) => h("li", { "data-status": s }, h("span", { class: `dot tone-${statusTone(s)}`, "aria-hidden": "true" }), `${s}: `, h("strong", {}, String(counts.get(s)))))
            : h("li", { class: "muted" }, "none yet")),
        h("a", { href: "#/deployments" }, "See the deployments"))),
    card("Services",
      state.services.length
        ? h("div", { class: "table-wrap" }, h("table", { class: "simple" },
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Service"), h("th", { scope: "col" }, "Kind"), h("th", { scope: "col" }, "Address"))),
          h("tbody", {}, state.services.map((svc) => h("tr", {}, h("td", {}, svc.name), h("td", {}, svc.kind), h("td", {}, svc.address ? h("code", { class: "wrap" }, svc.address) : "–"))))))
        : h("p", { class: "muted" }, state.loaded ? "No services reported." : "Loading…")),
    h("p", { class: "muted small" }, state.updatedAt ? `Updated ${ago(state.updatedAt, now)}.` : ""),
  );
}

export function render(main) {
  const body = h("div", { id: "overview" });
  main.append(heading("Overview"), body);
  const update = () => preserveFocus(body, () => draw(body));
  update();
  return onChange(update);
}
