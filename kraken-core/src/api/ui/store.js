// The platform as the UI knows it: polled every two seconds, deployment status changes pushed
// by a subscription, and a bounded history of samples per node and per deployment for the
// charts.

import { request, subscribe } from "./graphql.js";
import { clearError, showError } from "./ui.js";

export const POLL_MS = 2000;
/** How far back the charts reach. */
export const HISTORY_MS = 5 * 60 * 1000;
const MAX_SAMPLES = Math.ceil(HISTORY_MS / POLL_MS) + 30;

export const DEPLOYMENT_FIELDS = `
  id appName srcUrl gitBranch version commit port status node cpuUsage memMb maxMemMb
  resultsUrl errorReason generation createdAt
  statusHistory { status timeMs }
`;

const NODE_FIELDS = `
  id hostname model addr orchestrationPriority uptime ramFree ramUsed ramTotal
  currentRamPercent cpuPercent cpus loadAvg1 loadAvg5 loadAvg15 updateTime joinedAt deployments
`;

const POLL_QUERY = `query Poll {
  getPlatform { orchestrator epoch apiAddr brokerUrl candidates }
  getPlatformServices { name kind address }
  getNodes { ${NODE_FIELDS} }
  getDeployments { ${DEPLOYMENT_FIELDS} }
}`;

const CHANGES = `subscription Changes { deploymentChanged { ${DEPLOYMENT_FIELDS} } }`;

export const state = {
  /** Whether a poll has succeeded yet. */
  loaded: false,
  platform: null,
  services: [],
  /** Node objects by id, in the API's order. */
  nodes: new Map(),
  /** Deployment objects by id, in the API's order. */
  deployments: new Map(),
  /** node id -> [{ t, cpu, ram, load }] */
  nodeHistory: new Map(),
  /** deployment id -> [{ t, cpu, mem }] */
  deploymentHistory: new Map(),
  /** When the last poll answered (client clock). */
  updatedAt: 0,
  /** The last poll's error, cleared by a good poll. */
  error: null,
};

const listeners = new Set();

/** Calls `fn()` after every change; returns a function that stops it. */
export function onChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function notify() {
  for (const fn of [...listeners]) {
    try {
      fn();
    } catch (err) {
      showError(err, { context: "updating the page" });
      console.error(err);
    }
  }
}

function push(map, id, sample) {
  let samples = map.get(id);
  if (!samples) {
    samples = [];
    map.set(id, samples);
  }
  samples.push(sample);
  const oldest = sample.t - HISTORY_MS;
  while (samples.length > MAX_SAMPLES || (samples.length && samples[0].t < oldest)) samples.shift();
}

/** When the deployment last changed status (server clock, ms). */
function lastChange(d) {
  const history = d.statusHistory || [];
  return history.length ? history[history.length - 1].timeMs : 0;
}

/** Keeps the newer of two views of a deployment: a poll may answer with an older one. */
function merge(d) {
  const known = state.deployments.get(d.id);
  if (known && (known.generation > d.generation
      || (known.generation === d.generation && lastChange(known) > lastChange(d)))) {
    return known;
  }
  return d;
}

function applyPoll(data) {
  const now = Date.now();
  state.platform = data.getPlatform;
  state.services = data.getPlatformServices;
  const nodes = new Map();
  for (const n of data.getNodes) {
    nodes.set(n.id, n);
    push(state.nodeHistory, n.id, { t: now, cpu: n.cpuPercent, ram: n.currentRamPercent, load: n.loadAvg1 });
  }
  for (const id of state.nodeHistory.keys()) if (!nodes.has(id)) state.nodeHistory.delete(id);
  state.nodes = nodes;

  const deployments = new Map();
  for (const d of data.getDeployments) {
    const kept = merge(d);
    deployments.set(d.id, kept);
    if (d.status === "Running" && (d.cpuUsage !== null || d.memMb !== null)) {
      push(state.deploymentHistory, d.id, { t: now, cpu: d.cpuUsage, mem: d.memMb });
    }
  }
  for (const id of state.deploymentHistory.keys()) if (!deployments.has(id)) state.deploymentHistory.delete(id);
  state.deployments = deployments;
  state.loaded = true;
  state.updatedAt = now;
  state.error = null;
}

let timer = null;
let inFlight = null;

/** Polls now (and then every `POLL_MS`). */
export async function refresh() {
  if (inFlight) return inFlight;
  if (timer) {
    clearTimeout(timer);
    timer = null;
  }
  inFlight = (async () => {
    try {
      applyPoll(await request(POLL_QUERY));
      clearError("poll");
    } catch (err) {
      state.error = err;
      showError(err, { key: "poll", context: "reading the platform" });
    } finally {
      inFlight = null;
      timer = setTimeout(refresh, POLL_MS);
      notify();
    }
  })();
  return inFlight;
}

/** Applies a deployment seen elsewhere (a mutation's answer, a subscription). */
export function upsertDeployment(d) {
  state.deployments.set(d.id, merge(d));
  notify();
}

let stopChanges = null;

/** Starts polling and the subscription to deployment changes. */
export function start() {
  refresh();
  watchChanges();
}

function watchChanges() {
  if (stopChanges) return;
  stopChanges = subscribe(CHANGES, {}, {
    next: (data) => {
      if (data.deploymentChanged) upsertDeployment(data.deploymentChanged);
    },
    error: (err) => {
      showError(err, { key: "changes", context: "live deployment updates" });
      stopChanges = null;
      // Polling goes on; try the subscription again a little later.
      setTimeout(watchChanges, 5000);
    },
    complete: () => {
      stopChanges = null;
    },
    start: () => clearError("changes"),
  });
}

/** Counts of deployments by status. */
export function countByStatus() {
  const counts = new Map();
  for (const d of state.deployments.values()) counts.set(d.status, (counts.get(d.status) || 0) + 1);
  return counts;
}

/** The node's role by rollover rank. */
export function rankName(rank) {
  if (rank === 0) return "primary";
  if (rank === 1) return "standby";
  if (rank === null || rank === undefined) return "worker";
  return "observer";
}
