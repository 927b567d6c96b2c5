// The one way the dashboard talks to the server: the public API, as any client would.
// Signed in, the browser sends the HttpOnly session cookie by itself; every change of state
// also carries the CSRF token, read from its own (readable) cookie.

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }

  /** The message for a person: what went wrong, and what to do about it. */
  get text() {
    return this.problem.hint ? `${this.message} (${this.problem.hint})` : this.message;
  }
}

function csrfToken() {
  for (const part of document.cookie.split(";")) {
    const [name, ...value] = part.trim().split("=");
    if (name === "vncsess_csrf") return decodeURIComponent(value.join("="));
  }
  return "";
}

/** Back to the sign-in form, to come back here afterwards. */
export function signIn() {
  const here = location.pathname + location.search;
  location.assign(`/signin?next=${encodeURIComponent(here)}`);
}

async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
  const init = { method, headers, credentials: "same-origin" };
  if (body instanceof FormData) {
    init.body = body; // multipart: the browser writes the Content-Type with its boundary
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, { detail: "the server does not answer", hint: "is `vncsess serve` running?" });
  }
  if (response.status === 401) {
    signIn();
    throw new ApiError(401, { detail: "signed out" });
  }
  if (!response.ok) {
    let problem = {};
    try {
      problem = await response.json();
    } catch {
      problem = { detail: `HTTP ${response.status}` };
    }
    throw new ApiError(response.status, problem);
  }
  const type = response.headers.get("content-type") || "";
  if (type.startsWith("image/")) return response.blob();
  return response.status === 204 ? null : response.json();
}

export const api = {
  get: (path) => request("GET", path),
  post: (path, body) => request("POST", path, body),
  delete: (path) => request("DELETE", path),
};

/** An EventSource that reconnects by itself (the browser resends Last-Event-ID), and, when
 * the server refuses it (signed out, server restarted), checks the sign-in and opens it again
 * from the last event seen. `handlers`: {eventType: (data, messageEvent) => ...}. */
export function subscribe(path, handlers, { json = true } = {}) {
  let source = null;
  let lastId = "";
  let closed = false;
  let retry = null;
  let wait = 2000; // before opening it again; doubles up to a minute while it is refused

  function open() {
    const sep = path.includes("?") ? "&" : "?";
    // Reopened: continue after the last event seen (a fresh EventSource sends no header).
    const url = lastId ? `${path.replace(/[?&]last_event_id=\d+/, "")}${sep}last_event_id=${lastId}` : path;
    source = new EventSource(url);
    source.addEventListener("open", () => {
      wait = 2000;
    });
    for (const [type, handler] of Object.entries(handlers)) {
      source.addEventListener(type, (event) => {
        if (event.lastEventId) lastId = event.lastEventId;
        if (!(event instanceof MessageEvent)) return; // the connection's own `error`
        let data = event.data;
        if (json) {
          try {
            data = JSON.parse(data);
          } catch {
            return;
          }
        }
        handler(data, event);
      });
    }
    source.addEventListener("error", () => {
      if (closed || source.readyState !== EventSource.CLOSED) return;
      retry = setTimeout(async () => {
        try {
          await api.get("/v1/models"); // signed out: this goes to the sign-in form
        } catch {
          /* the server is away: try again later */
        }
        if (!closed) open();
      }, wait);
      wait = Math.min(wait * 2, 60000);
    });
  }

  open();
  return {
    close() {
      closed = true;
      clearTimeout(retry);
      if (source) source.close();
    },
  };
}
