// Deployments: the create form (checked before sending, the platform's refusals shown) and
// the list with each deployment's status, updated live.

import { getToken, request } from "../graphql.js";
import { onChange, refresh, state } from "../store.js";
import {
  ago, fmtMiB, fmtPercent, h, heading, replace, setText, shortId, statusBadge, syncList,
  updateBadge,
} from "../ui.js";
import { branchProblem, urlProblem } from "../validate.js";

const CREATE = `mutation Create($url: String!, $branch: String!) {
  createDeployment(deploymentUrl: $url, gitBranch: $branch)
}`;

function field(id, label, input, hint) {
  const error = h("p", { class: "field-error", id: `${id}-error`, hidden: true });
  input.id = id;
  input.setAttribute("aria-describedby", `${id}-hint ${id}-error`);
  const wrapper = h("div", { class: "field" },
    h("label", { for: id }, label),
    input,
    h("p", { class: "hint", id: `${id}-hint` }, hint),
    error);
  const show = (problem) => {
    error.hidden = !problem;
    setText(error, problem || "");
    if (problem) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  };
  return { wrapper, input, show };
}

function createForm() {
  const url = field("deploy-url", "Git URL",
    h("input", { type: "text", name: "url", inputmode: "url", autocomplete: "off", spellcheck: "false", placeholder: "https://git.example.org/me/app.git", required: true }),
    "https://, http://, ssh://, git://, file://, user@host:path or an absolute path. The repository's root holds a shipwreck.toml.");
  const branch = field("deploy-branch", "Branch",
    h("input", { type: "text", name: "branch", autocomplete: "off", spellcheck: "false", value: "main", required: true }),
    "The branch to deploy; a redeploy takes its newest commit.");
  const submit = h("button", { type: "submit", class: "primary", id: "deploy-submit" }, "Deploy");
  const result = h("p", { class: "form-result", id: "create-result", role: "status" });
  const failure = h("div", { class: "form-error", id: "create-error", role: "alert", hidden: true });
  const tokenNote = h("p", { class: "note", id: "create-token-note" },
    "Deploying needs the API token: ", h("a", { href: "#/settings" }, "set it in Settings"), ".");

  const check = (which) => {
    const problem = which === url ? urlProblem(url.input.value.trim()) : branchProblem(branch.input.value.trim());
    which.show(problem);
    return !problem;
  };
  for (const which of [url, branch]) {
    which.input.addEventListener("blur", () => {
      if (which.input.value) check(which);
    });
    which.input.addEventListener("input", () => {
      if (which.input.getAttribute("aria-invalid")) check(which);
    });
  }

  const form = h("form", { class: "card create", id: "create-form", novalidate: true, "aria-labelledby": "create-title" },
    h("h2", { id: "create-title" }, "New deployment"),
    tokenNote,
    h("div", { class: "fields" }, url.wrapper, branch.wrapper),
    h("div", { class: "actions" }, submit),
    result,
    failure);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    failure.hidden = true;
    setText(result, "");
    const okUrl = check(url);
    const okBranch = check(branch);
    if (!okUrl || !okBranch) {
      (okUrl ? branch : url).input.focus();
      return;
    }
    if (!getToken()) {
      failure.hidden = false;
      replace(failure, "No API token is set, so the platform would refuse this. ", h("a", { href: "#/settings" }, "Set the token in Settings"), ".");
      return;
    }
    submit.disabled = true;
    setText(submit, "Deploying…");
    try {
      const data = await request(CREATE, { url: url.input.value.trim(), branch: branch.input.value.trim() });
      const id = data.createDeployment;
      replace(result, "Requested ", h("a", { href: `#/deployments/${encodeURIComponent(id)}` }, id), ". Its status follows below.");
      url.input.value = "";
      url.show(null);
      refresh();
    } catch (err) {
      failure.hidden = false;
      replace(failure, h("strong", {}, "The platform refused the deployment: "), err.message, err.code ? h("span", { class: "code" }, ` (${err.code})`) : null);
    } finally {
      submit.disabled = false;
      setText(submit, "Deploy");
    }
  });
  form.showTokenNote = () => {
    tokenNote.hidden = Boolean(getToken());
  };
  form.showTokenNote();
  return form;
}

const COLUMNS = ["Deployment", "Status", "Source", "Node", "CPU", "Memory", "Changed"];

function createRow(d) {
  const cells = COLUMNS.map((label) => h("td", { "data-label": label }));
  const link = h("a", { href: `#/deployments/${encodeURIComponent(d.id)}`, class: "dep-link" });
  const badge = statusBadge(d.status);
  const reason = h("div", { class: "reason" });
  const source = h("span", { class: "src" });
  const branch = h("span", { class: "branch" });
  replace(cells[0], link);
  // One wrapper per cell: on narrow screens a cell is a two-column grid (label, content).
  replace(cells[1], h("div", {}, badge, reason));
  replace(cells[2], h("div", {}, source, " ", branch));
  const row = h("tr", { "data-id": d.id }, cells);
  row.parts = { cells, link, badge, reason, source, branch };
  return row;
}

function updateRow(row, d, now) {
  const p = row.parts;
  setText(p.link, d.appName ? `${d.appName} · ${shortId(d.id)}` : d.id);
  p.link.setAttribute("aria-label", `${d.appName || "deployment"} ${d.id}`);
  updateBadge(p.badge, d.status);
  setText(p.reason, d.status === "Errored" ? d.errorReason || "" : "");
  setText(p.source, d.srcUrl);
  setText(p.branch, d.gitBranch);
  setText(p.cells[3], d.node || "–");
  setText(p.cells[4], d.status === "Running" ? fmtPercent(d.cpuUsage) : "–");
  setText(p.cells[5], d.status === "Running" ? fmtMiB(d.memMb) : "–");
  const history = d.statusHistory || [];
  setText(p.cells[6], history.length ? ago(history[history.length - 1].timeMs, now) : "–");
}

export function render(main) {
  const form = createForm();
  const hide = h("input", { type: "checkbox", id: "hide-destroyed" });
  const tbody = h("tbody", { id: "deployment-rows" });
  const empty = h("p", { class: "muted", id: "deployments-empty" });
  const table = h("table", { class: "list", id: "deployments" },
    h("caption", { class: "sr-only" }, "Deployments, newest first"),
    h("thead", {}, h("tr", {}, COLUMNS.map((c) => h("th", { scope: "col" }, c)))),
    tbody);
  main.append(
    heading("Deployments"),
    form,
    h("section", { class: "card", "aria-labelledby": "list-title" },
      h("div", { class: "card-head" },
        h("h2", { id: "list-title" }, "All deployments"),
        h("label", { class: "check" }, hide, " Hide destroyed")),
      h("div", { class: "table-wrap" }, table),
      empty));

  const draw = () => {
    const now = Date.now();
    form.showTokenNote();
    const all = [...state.deployments.values()].sort((a, b) => (b.createdAt || "").localeCompare(a.createdAt || "") || b.id.localeCompare(a.id));
    const shown = hide.checked ? all.filter((d) => d.status !== "Destroyed") : all;
    table.hidden = shown.length === 0;
    empty.hidden = shown.length > 0;
    setText(empty, !state.loaded ? "Loading…" : all.length ? "Every deployment is destroyed." : "No deployment yet: create one above.");
    syncList(tbody, shown, (d) => d.id, createRow, (row, d) => updateRow(row, d, now));
  };
  hide.addEventListener("change", draw);
  draw();
  return onChange(draw);
}
