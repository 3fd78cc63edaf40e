// The GraphQL client: queries and mutations over `POST /graphql`, subscriptions over one
// shared websocket speaking `graphql-transport-ws`, reconnecting with backoff.

const TOKEN_KEY = "kraken.apiToken";

/** An error from the API: `code` is the GraphQL `extensions.code` or `HTTP_<status>`. */
export class ApiError extends Error {
  constructor(message, code = "ERROR", errors = []) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.errors = errors;
  }
}

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

/** Stores (or, with an empty value, forgets) the token; reconnects the websocket with it. */
export function setToken(token) {
  const value = token.trim();
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
  socket.restart();
  tokenListeners.forEach((fn) => fn(value));
}

const tokenListeners = new Set();
export function onTokenChange(fn) {
  tokenListeners.add(fn);
  return () => tokenListeners.delete(fn);
}

function errorFromResponse(errors) {
  const first = errors[0] || {};
  const code = (first.extensions && first.extensions.code) || "GRAPHQL_ERROR";
  const message = errors.map((e) => e.message).join("; ") || "unknown GraphQL error";
  return new ApiError(message, code, errors);
}

/** Runs a query or mutation; resolves with `data`, rejects with an `ApiError`. */
export async function request(query, variables = {}, { signal } = {}) {
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch("/graphql", {
      method: "POST",
      headers,
      body: JSON.stringify({ query, variables }),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`cannot reach the API: ${err.message}`, "NETWORK");
  }
  let body = null;
  const text = await response.text();
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (body && Array.isArray(body.errors) && body.errors.length) {
    throw errorFromResponse(body.errors);
  }
  if (!response.ok) {
    throw new ApiError(
      `HTTP ${response.status} ${response.statusText}${text ? `: ${text.slice(0, 200)}` : ""}`,
      `HTTP_${response.status}`,
    );
  }
  if (!body || typeof body.data !== "object" || body.data === null) {
    throw new ApiError("the API answered without data", "BAD_RESPONSE");
  }
  return body.data;
}

// ----- subscriptions -----

const PROTOCOL = "graphql-transport-ws";

class Socket {
  constructor() {
    this.ws = null;
    this.acked = false;
    this.nextId = 1;
    this.subs = new Map(); // id -> { payload, handlers }
    this.retry = 0;
    this.timer = null;
    this.stateListeners = new Set();
    this.state = "idle";
  }

  setState(state, detail = "") {
    this.state = state;
    this.stateListeners.forEach((fn) => fn(state, detail));
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/graphql`;
  }

  open() {
    if (this.ws || this.timer) return;
    this.acked = false;
    this.setState("connecting");
    const ws = new WebSocket(this.url(), PROTOCOL);
    this.ws = ws;
    ws.addEventListener("open", () => {
      const token = getToken();
      const payload = token ? { Authorization: `Bearer ${token}` } : {};
      ws.send(JSON.stringify({ type: "connection_init", payload }));
    });
    ws.addEventListener("message", (event) => this.onMessage(ws, event));
    ws.addEventListener("close", (event) => this.onClose(ws, event));
  }

  send(message) {
    if (this.ws && this.acked && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
    }
  }

  onMessage(ws, event) {
    if (ws !== this.ws) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      this.failAll(new ApiError("the subscription server sent a message that is not JSON", "BAD_RESPONSE"));
      return;
    }
    const sub = message.id !== undefined ? this.subs.get(message.id) : undefined;
    switch (message.type) {
      case "connection_ack":
        this.acked = true;
        this.retry = 0;
        this.setState("live");
        for (const [id, s] of this.subs) {
          s.handlers.start?.();
          this.send({ id, type: "subscribe", payload: s.payload });
        }
        break;
      case "ping":
        ws.send(JSON.stringify({ type: "pong" }));
        break;
      case "pong":
        break;
      case "next":
        if (!sub) break;
        if (message.payload && Array.isArray(message.payload.errors) && message.payload.errors.length) {
          sub.handlers.error(errorFromResponse(message.payload.errors));
        } else if (message.payload && message.payload.data) {
          sub.handlers.next(message.payload.data);
        }
        break;
      case "error":
        if (!sub) break;
        this.subs.delete(message.id);
        sub.handlers.error(errorFromResponse(Array.isArray(message.payload) ? message.payload : []));
        break;
      case "complete":
        if (!sub) break;
        this.subs.delete(message.id);
        sub.handlers.complete?.();
        break;
      default:
        break;
    }
    this.closeIfIdle();
  }

  onClose(ws, event) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.acked = false;
    if (event.code === 4401 || event.code === 4403) {
      // The server refused the token: retrying with the same one cannot help.
      this.failAll(new ApiError(`subscriptions refused: ${event.reason || "unauthenticated"}`, "UNAUTHENTICATED"));
      this.setState("refused", event.reason);
      return;
    }
    if (this.subs.size === 0) {
      this.setState("idle");
      return;
    }
    const delay = Math.min(10000, 500 * 2 ** this.retry);
    this.retry += 1;
    this.setState("reconnecting", `${event.reason || `connection closed (${event.code})`}; retrying in ${Math.round(delay / 1000)} s`);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.subs.size) this.open();
    }, delay);
  }

  failAll(error) {
    const subs = [...this.subs.values()];
    this.subs.clear();
    subs.forEach((s) => s.handlers.error(error));
  }

  closeIfIdle() {
    if (this.subs.size === 0 && this.ws) {
      const ws = this.ws;
      this.ws = null;
      this.acked = false;
      ws.close(1000, "no subscriptions");
      this.setState("idle");
    }
  }

  /** Reconnects (with the current token), resubscribing everything. */
  restart() {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000, "token changed");
    }
    this.retry = 0;
    if (this.subs.size) this.open();
  }

  subscribe(payload, handlers) {
    const id = String(this.nextId++);
    this.subs.set(id, { payload, handlers });
    if (this.acked) {
      handlers.start?.();
      this.send({ id, type: "subscribe", payload });
    } else {
      this.open();
    }
    return () => {
      if (!this.subs.delete(id)) return;
      this.send({ id, type: "complete" });
      this.closeIfIdle();
    };
  }
}

const socket = new Socket();

/**
 * Subscribes to a GraphQL subscription. `handlers`: `next(data)`, `error(ApiError)`,
 * optional `complete()` and `start()` (called each time the subscription is (re)started,
 * e.g. after a reconnect, so a view can reset what it accumulated). Returns a function
 * that unsubscribes.
 */
export function subscribe(query, variables, handlers) {
  return socket.subscribe({ query, variables }, handlers);
}

/** Calls `fn(state, detail)` when the websocket's state changes. */
export function onSocketState(fn) {
  socket.stateListeners.add(fn);
  fn(socket.state, "");
  return () => socket.stateListeners.delete(fn);
}
