// Nodes: each node's CPU, RAM, load and uptime with charts over the last minutes, its rollover
// rank and its deployments.

import { createChart } from "../charts.js";
import { HISTORY_MS, onChange, rankName, state } from "../store.js";
import {
  ago, fmtDuration, fmtMiB, fmtPercent, h, heading, replace, setText, shortId, statusBadge,
  syncList, updateBadge,
} from "../ui.js";

function fact(label) {
  const dd = h("dd");
  return [[h("dt", {}, label), dd], dd];
}

function createCard(node) {
  const title = h("h2");
  const rank = h("span", { class: "badge" });
  const leader = h("span", { class: "badge tone-ok" }, "orchestrator");
  const [cpuRow, cpu] = fact("CPU");
  const [ramRow, ram] = fact("RAM");
  const [loadRow, load] = fact("Load 1 / 5 / 15 min");
  const [uptimeRow, uptime] = fact("Uptime");
  const [addrRow, addr] = fact("Address");
  const [modelRow, model] = fact("Machine");
  const [seenRow, seen] = fact("Last report");
  const usage = createChart("CPU and RAM, %");
  const loadChart = createChart("Load average, 1 min");
  const deployments = h("ul", { class: "deps" });
  const card = h("article", { class: "card node", id: `node-${node.id}`, "aria-labelledby": `node-${node.id}-title` },
    h("header", { class: "card-head" }, title, h("span", { class: "tags" }, rank, leader)),
    h("dl", { class: "facts cols" }, cpuRow, ramRow, loadRow, uptimeRow, addrRow, modelRow, seenRow),
    h("div", { class: "charts" }, usage, loadChart),
    h("h3", {}, "Deployments"),
    deployments);
  title.id = `node-${node.id}-title`;
  Object.assign(card, { parts: { title, rank, leader, cpu, ram, load, uptime, addr, model, seen, usage, loadChart, deployments } });
  return card;
}

function updateCard(card, node, now) {
  const p = card.parts;
  setText(p.title, node.hostname ? `${node.hostname} · ${node.id}` : node.id);
  const rank = node.orchestrationPriority;
  setText(p.rank, rank === null || rank === undefined ? "worker" : `rank ${rank} · ${rankName(rank)}`);
  p.rank.className = `badge ${rank === 0 ? "tone-ok" : rank === 1 ? "tone-busy" : "tone-gone"}`;
  p.leader.hidden = !(state.platform && state.platform.orchestrator === node.id);
  setText(p.cpu, `${fmtPercent(node.cpuPercent)} of ${node.cpus} CPU${node.cpus === 1 ? "" : "s"}`);
  setText(p.ram, `${fmtMiB(node.ramUsed)} of ${fmtMiB(node.ramTotal || node.ramUsed + node.ramFree)} (${fmtPercent(node.currentRamPercent)})`);
  setText(p.load, [node.loadAvg1, node.loadAvg5, node.loadAvg15].map((v) => v.toFixed(2)).join(" / "));
  setText(p.uptime, fmtDuration(node.uptime));
  setText(p.addr, node.addr || "–");
  setText(p.model, node.model || "–");
  setText(p.seen, ago(Date.parse(node.updateTime), now));

  const samples = state.nodeHistory.get(node.id) || [];
  p.usage.draw({
    series: [
      { label: "CPU", values: samples.map((s) => ({ t: s.t, v: s.cpu })) },
      { label: "RAM", values: samples.map((s) => ({ t: s.t, v: s.ram })) },
    ],
    unit: "%",
    max: 100,
    windowMs: HISTORY_MS,
    now,
  });
  p.loadChart.draw({
    series: [{ label: "Load", values: samples.map((s) => ({ t: s.t, v: s.load })) }],
    windowMs: HISTORY_MS,
    now,
  });

  const deps = node.deployments.map((id) => state.deployments.get(id) || { id, status: null });
  if (!deps.length) {
    if (!p.deployments.querySelector(".muted")) replace(p.deployments, h("li", { class: "muted" }, "none"));
    return;
  }
  p.deployments.querySelector(".muted")?.remove();
  syncList(p.deployments, deps, (d) => d.id,
    (d) => {
      const link = h("a", { href: `#/deployments/${encodeURIComponent(d.id)}` });
      const badge = statusBadge(d.status);
      const li = h("li", {}, link, " ", badge);
      li.parts = { link, badge };
      return li;
    },
    (li, d) => {
      setText(li.parts.link, d.appName ? `${d.appName} (${shortId(d.id)})` : d.id);
      updateBadge(li.parts.badge, d.status);
    });
}

export function render(main) {
  const list = h("div", { class: "node-list", id: "nodes" });
  const empty = h("p", { class: "muted" }, "Loading…");
  main.append(
    heading("Nodes"),
    h("p", { class: "lead" }, "Every machine of the platform. The charts reach back up to five minutes, sampled every two seconds while the UI is open."),
    empty,
    list);
  const draw = () => {
    const now = Date.now();
    const nodes = [...state.nodes.values()];
    empty.hidden = nodes.length > 0;
    setText(empty, state.loaded ? "No node has joined yet." : "Loading…");
    syncList(list, nodes, (n) => n.id, createCard, (card, n) => updateCard(card, n, now));
  };
  draw();
  const stop = onChange(draw);
  const resize = () => list.querySelectorAll(".chart").forEach((c) => c.redraw());
  addEventListener("resize", resize);
  return () => {
    stop();
    removeEventListener("resize", resize);
  };
}
