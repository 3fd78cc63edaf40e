// Settings: the API token, kept in this browser's storage and sent with every request.

import { getToken, request, setToken } from "../graphql.js";
import { h, heading, replace, setText } from "../ui.js";

// A mutation that needs the token and changes nothing: redeploying an id that cannot exist
// is refused as unauthenticated without the token, and as unknown with it.
const PROBE = `mutation Probe { pollRedeploy(deploymentId: "dep-token-check") }`;

/** Whether the stored token is accepted: resolves to a sentence for the user. */
async function probe() {
  try {
    await request(PROBE);
    return { ok: true, text: "The token is accepted." };
  } catch (err) {
    if (err.code === "UNAUTHENTICATED") return { ok: false, text: `The platform refuses this token: ${err.message}` };
    if (err.code === "NOT_FOUND" || err.code === "BAD_USER_INPUT") return { ok: true, text: "The token is accepted." };
    throw err;
  }
}

export function render(main) {
  const input = h("input", {
    type: "password", id: "token", name: "token", autocomplete: "off", spellcheck: "false",
    "aria-describedby": "token-hint", placeholder: getToken() ? "•••••• (stored)" : "paste the token here",
  });
  const save = h("button", { type: "submit", class: "primary", id: "token-save" }, "Save token");
  const forget = h("button", { type: "button", id: "token-forget" }, "Forget token");
  const status = h("p", { class: "form-result", id: "token-status", role: "status" });
  const failure = h("div", { class: "form-error", id: "token-error", role: "alert", hidden: true });
  const state = h("p", { id: "token-state-text" });

  const showState = () => {
    setText(state, getToken()
      ? "A token is stored in this browser: deploying, redeploying and destroying are enabled."
      : "No token is stored: the platform can be watched but not changed from here.");
    forget.disabled = !getToken();
  };

  const check = async () => {
    failure.hidden = true;
    setText(status, "Checking the token…");
    try {
      const result = await probe();
      setText(status, result.ok ? result.text : "");
      if (!result.ok) {
        failure.hidden = false;
        setText(failure, result.text);
      }
    } catch (err) {
      setText(status, "");
      failure.hidden = false;
      replace(failure, "Could not check the token: ", err.message);
    }
  };

  const form = h("form", { class: "card settings", id: "token-form", "aria-labelledby": "token-title" },
    h("h2", { id: "token-title" }, "API token"),
    state,
    h("div", { class: "field" },
      h("label", { for: "token" }, "Token"),
      input,
      h("p", { class: "hint", id: "token-hint" },
        "Printed by ", h("code", {}, "kraken up"), " and kept in ", h("code", {}, "<data dir>/api-token"),
        ". It is stored in this browser only and sent as ", h("code", {}, "Authorization: Bearer …"), ".")),
    h("div", { class: "actions" }, save, forget),
    status,
    failure);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) {
      failure.hidden = false;
      setText(failure, "Enter the token first.");
      input.focus();
      return;
    }
    setToken(value);
    input.value = "";
    input.placeholder = "•••••• (stored)";
    showState();
    check();
  });
  forget.addEventListener("click", () => {
    setToken("");
    input.placeholder = "paste the token here";
    failure.hidden = true;
    setText(status, "The token is forgotten.");
    showState();
  });

  main.append(heading("Settings"), form);
  showState();
  return () => {};
}
