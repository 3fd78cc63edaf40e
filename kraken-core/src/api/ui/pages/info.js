// Info: how to write `shipwreck.toml`, its fields and an example for each kind of app.

import { h, heading } from "../ui.js";

const FIELDS = [
  ["[app]", "name", "yes", "1 to 63 characters from a-z, 0-9 and -, not starting or ending with -. It becomes part of container and host names."],
  ["[app]", "version", "no (default \"0.0.0\")", "1 to 64 characters, no whitespace or control characters."],
  ["[app]", "author", "no", "1 to 256 characters, no control characters. Shown in the UI."],
  ["[app]", "endpoint", "no", "The path users open, e.g. \"/\" or \"/app\": starts with /, at most 2048 characters, no whitespace."],
  ["[config]", "port", "yes", "1 to 65535: the port the app listens on. Kraken also passes it as the PORT environment variable."],
  ["[config]", "lang", "yes", "\"node\", \"python\", \"static\" or \"custom\" (custom needs a Dockerfile at the repository root)."],
  ["[config]", "run", "for node and python", "The command that starts the app, run by a shell (so $PORT works). Optional for static and custom."],
  ["[config]", "build", "no", "A command run once after the source is fetched, e.g. to install dependencies."],
  ["[env]", "KEY = \"value\"", "no", "Environment variables. Keys match [A-Za-z_][A-Za-z0-9_]*, values are strings (WORKERS = \"4\", not 4). PORT is reserved."],
  ["[resources]", "memory_mb", "no", "An integer from 4 to 1048576: the memory limit in MiB."],
  ["[resources]", "cpus", "no", "A number above 0 and at most 256: how many CPUs the app may use, e.g. 0.5."],
];

const EXAMPLES = [
  ["node", "Node.js", "A Node.js app: build installs dependencies, run starts the server on $PORT.", `[app]
name = "todo-api"
version = "1.2.0"
author = "Ada"
endpoint = "/"

[config]
port = 3000
lang = "node"
build = "npm ci"
run = "node server.js"

[env]
NODE_ENV = "production"

[resources]
memory_mb = 256
cpus = 0.5`],
  ["python", "Python", "A Python app; the run command must listen on the port, here through $PORT.", `[app]
name = "hello-py"
version = "1.0.0"

[config]
port = 8080
lang = "python"
build = "pip install -r requirements.txt"
run = "python3 app.py --port $PORT"

[env]
GREETING = "hi"
PYTHONUNBUFFERED = "1"`],
  ["static", "Static files", "The repository's files are served as they are; build may generate them first. No run is needed.", `[app]
name = "docs-site"
endpoint = "/index.html"

[config]
port = 8080
lang = "static"`],
  ["custom", "Custom (Dockerfile)", "Anything else: the Dockerfile at the repository root builds the image. Without run, the image's own command starts the app.", `[app]
name = "go-service"
version = "0.3.1"

[config]
port = 9000
lang = "custom"

[resources]
memory_mb = 128`],
];

export function render(main) {
  const tabs = h("div", { class: "tabs", role: "tablist", "aria-label": "Examples by kind of app" });
  const panels = h("div", { class: "panels" });
  const select = (index, focus) => {
    [...tabs.children].forEach((tab, i) => {
      tab.setAttribute("aria-selected", String(i === index));
      tab.tabIndex = i === index ? 0 : -1;
      panels.children[i].hidden = i !== index;
      if (i === index && focus) tab.focus();
    });
  };
  EXAMPLES.forEach(([kind, label, text, toml], i) => {
    tabs.append(h("button", {
      type: "button", role: "tab", id: `tab-${kind}`, "aria-controls": `panel-${kind}`,
      onclick: () => select(i, false),
    }, label));
    panels.append(h("div", { role: "tabpanel", id: `panel-${kind}`, "aria-labelledby": `tab-${kind}`, tabindex: "0" },
      h("p", {}, text),
      h("pre", { class: "code" }, h("code", {}, toml))));
  });
  tabs.addEventListener("keydown", (event) => {
    const current = [...tabs.children].indexOf(document.activeElement);
    if (current < 0) return;
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (step) {
      event.preventDefault();
      select((current + step + EXAMPLES.length) % EXAMPLES.length, true);
    } else if (event.key === "Home" || event.key === "End") {
      event.preventDefault();
      select(event.key === "Home" ? 0 : EXAMPLES.length - 1, true);
    }
  });
  select(1, false);

  main.append(
    heading("Writing shipwreck.toml"),
    h("p", { class: "lead" },
      "Every app Kraken deploys has a ", h("code", {}, "shipwreck.toml"),
      " at the root of its git repository. It names the app, says how to build and start it and on which port it listens. Kraken checks it before placing the app and reports a mistake with its line and column, e.g. ",
      h("code", {}, "shipwreck.toml:4:8: config.port: must be between 1 and 65535, got 70000"), "."),
    h("section", { class: "card", "aria-labelledby": "examples-title" },
      h("h2", { id: "examples-title" }, "An example for each kind"),
      tabs,
      panels),
    h("section", { class: "card", "aria-labelledby": "fields-title" },
      h("h2", { id: "fields-title" }, "Fields"),
      h("div", { class: "table-wrap" },
        h("table", { class: "list fields-table" },
          h("thead", {}, h("tr", {}, ["Table", "Key", "Required", "Rule"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, FIELDS.map(([table, key, required, rule]) => h("tr", {},
            h("td", { "data-label": "Table" }, h("code", {}, table)),
            h("td", { "data-label": "Key" }, h("code", {}, key)),
            h("td", { "data-label": "Required" }, required),
            h("td", { "data-label": "Rule" }, rule)))))),
      h("p", {}, "Keys not listed here are rejected, so a typo such as ", h("code", {}, "prot = 8080"),
        " is caught instead of ignored. Commands may span several lines (TOML multi-line strings). The whole file may be at most 64 KiB.")),
    h("section", { class: "card", "aria-labelledby": "deploy-title" },
      h("h2", { id: "deploy-title" }, "Deploying it"),
      h("ol", {},
        h("li", {}, "Commit ", h("code", {}, "shipwreck.toml"), " at the root of the repository and push the branch."),
        h("li", {}, "On ", h("a", { href: "#/deployments" }, "Deployments"), ", enter the repository's git URL and the branch, or run ",
          h("code", {}, "kraken deploy <git-url> --branch <branch> --wait"), "."),
        h("li", {}, "Follow the status and the build log; once ", h("strong", {}, "Running"), ", the app answers on the URL shown."),
        h("li", {}, "Push new commits and press ", h("strong", {}, "Redeploy"), " to ship them."))),
  );
  return () => {};
}
