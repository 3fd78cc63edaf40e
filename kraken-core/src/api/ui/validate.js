// Client-side checks of a git URL and branch, the same rules the platform applies, so that
// mistakes are pointed out before anything is sent. The platform checks again.

const MAX_URL_LEN = 2048;
const MAX_BRANCH_LEN = 255;
const SCHEMES = ["https://", "http://", "ssh://", "git://", "file://"];
const NOT_A_URL = "not a URL: use https://, http://, ssh://, git://, file://, user@host:path or an absolute path";

const bytes = (text) => new TextEncoder().encode(text).length;
// Whitespace or control characters, as Rust's `char::is_whitespace` / `is_control` see them.
const BAD_CHAR = /[\s\u0000-\u001f\u007f-\u009f\u0085\u200e\u200f\u2028\u2029]/u;

function checkHost(host, bracketed) {
  if (!host) return "the host must not be empty";
  if (host.startsWith("-")) return "the host must not start with '-'";
  const valid = bracketed ? /^[\p{L}\p{N}:.%]+$/u : /^[\p{L}\p{N}.\-_%~]+$/u;
  return valid.test(host) ? null : `invalid host "${host}"`;
}

function checkHierarchical(scheme, rest) {
  const slash = rest.indexOf("/");
  const authority = slash === -1 ? rest : rest.slice(0, slash);
  const path = slash === -1 ? "" : rest.slice(slash);
  if (scheme === "file://") {
    if (!(authority === "" || authority === "localhost")) {
      return "a file:// URL must name a local path, e.g. file:///srv/app.git";
    }
    return path.length <= 1 ? "must name a repository path" : null;
  }
  let hostPort = authority;
  const at = authority.lastIndexOf("@");
  if (at !== -1) {
    const user = authority.slice(0, at);
    if (!user || user.startsWith("-")) return "the user name must not be empty or start with '-'";
    hostPort = authority.slice(at + 1);
  }
  let host;
  let port = null;
  if (hostPort.startsWith("[")) {
    const close = hostPort.indexOf("]");
    if (close === -1) return "unterminated '[' in the host";
    host = hostPort.slice(1, close);
    const after = hostPort.slice(close + 1);
    const bad = checkHost(host, true);
    if (bad) return bad;
    if (after) {
      if (!after.startsWith(":")) return "unexpected text after ']' in the host";
      port = after.slice(1);
    }
  } else {
    const colon = hostPort.indexOf(":");
    host = colon === -1 ? hostPort : hostPort.slice(0, colon);
    if (colon !== -1) port = hostPort.slice(colon + 1);
    const bad = checkHost(host, false);
    if (bad) return bad;
  }
  if (port !== null && !/^[0-9]{1,5}$/.test(port)) return `invalid port "${port}"`;
  return path.length <= 1 ? "must name a repository path after the host" : null;
}

function checkScpLike(url) {
  const colon = url.indexOf(":");
  if (colon === -1) return NOT_A_URL;
  const bracket = url.indexOf("[");
  const separator = bracket === -1 ? colon : Math.min(colon, bracket);
  if (url.slice(0, separator).includes("/")) return NOT_A_URL;
  const at = url.slice(0, separator).indexOf("@");
  let hostPath = url;
  if (at !== -1) {
    const user = url.slice(0, at);
    if (!user || user.startsWith("-")) return "the user name must not be empty or start with '-'";
    hostPath = url.slice(at + 1);
  }
  let path;
  if (hostPath.startsWith("[")) {
    const close = hostPath.indexOf("]");
    if (close === -1) return "unterminated '[' in the host";
    const bad = checkHost(hostPath.slice(1, close), true);
    if (bad) return bad;
    const after = hostPath.slice(close + 1);
    if (!after.startsWith(":")) return "expected ':' after the bracketed host";
    path = after.slice(1);
  } else {
    const c = hostPath.indexOf(":");
    if (c === -1) return NOT_A_URL;
    const bad = checkHost(hostPath.slice(0, c), false);
    if (bad) return bad;
    path = hostPath.slice(c + 1);
  }
  if (!path) return "must name a repository path after ':'";
  if (path.startsWith("-")) return "the path must not start with '-'";
  return null;
}

/** Why `url` is not an acceptable git URL, or null when it is. */
export function urlProblem(url) {
  if (!url) return "enter the git URL of the app's repository";
  if (bytes(url) > MAX_URL_LEN) return `must be at most ${MAX_URL_LEN} bytes long`;
  if (url.startsWith("-")) return "must not start with '-'";
  if (BAD_CHAR.test(url)) return "must not contain spaces or control characters";
  const helper = /^([A-Za-z][A-Za-z0-9+.-]*)::/.exec(url);
  if (helper) return `the ${helper[1]}:: transport helper is not allowed`;
  for (const scheme of SCHEMES) {
    if (url.startsWith(scheme)) return checkHierarchical(scheme, url.slice(scheme.length));
  }
  if (url.includes("://")) {
    return "unsupported scheme; use https://, http://, ssh://, git://, file://, user@host:path or an absolute path";
  }
  if (url.startsWith("/")) return null;
  return checkScpLike(url);
}

/** Why `branch` is not an acceptable git branch name, or null when it is. */
export function branchProblem(branch) {
  if (!branch) return "enter a branch name, e.g. main";
  if (bytes(branch) > MAX_BRANCH_LEN) return `must be at most ${MAX_BRANCH_LEN} bytes long`;
  if (branch.startsWith("-")) return "must not start with '-'";
  if (branch === "@" || branch === "HEAD") return `"${branch}" is not a branch name`;
  const bad = [...branch].find((c) => /[\u0000-\u001f\u007f-\u009f]/u.test(c) || " ~^:?*[\\".includes(c));
  if (bad !== undefined) return `must not contain ${bad === " " ? "spaces" : JSON.stringify(bad)}`;
  for (const seq of ["..", "@{", "//"]) {
    if (branch.includes(seq)) return `must not contain "${seq}"`;
  }
  if (branch.startsWith("/") || branch.endsWith("/")) return "must not start or end with '/'";
  if (branch.endsWith(".")) return "must not end with '.'";
  for (const part of branch.split("/")) {
    if (part.startsWith(".")) return `the part "${part}" must not start with '.'`;
    if (part.endsWith(".lock")) return `the part "${part}" must not end with ".lock"`;
  }
  return null;
}
