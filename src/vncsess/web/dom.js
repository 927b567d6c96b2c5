// Small helpers: templates, text-only filling, and how times and sizes read.

/** A fresh copy of a <template>'s first element. */
export function clone(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

/** The element marked data-field=`name` inside `root`. */
export function field(root, name) {
  return root.querySelector(`[data-field="${name}"]`);
}

/** Fill a field with text (never markup). */
export function setText(root, name, text) {
  const el = field(root, name);
  if (el && el.textContent !== String(text ?? "")) el.textContent = text ?? "";
  return el;
}

/** A new element: h("a", {href: "/", class: "x"}, "text", child...). Strings are text. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  el.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/** 42 s · 12 min · 3 h 05 min · 2 d 4 h */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function age(createdAt) {
  return duration((Date.now() - Date.parse(createdAt)) / 1000);
}

// Until the session ends by itself: the sooner of its hard limit (--ttl) and its idle timeout
// (if nothing happens from now on), which is then named.
export function timeLeft(s) {
  const ends = [
    [s.expires_at, ""],
    [s.idle_expires_at, " (idle)"],
  ]
    .filter(([at]) => at)
    .map(([at, why]) => [Date.parse(at), why])
    .sort((a, b) => a[0] - b[0]);
  if (!ends.length) return "no limit";
  const [at, why] = ends[0];
  const left = (at - Date.now()) / 1000;
  return left > 0 ? duration(left) + why : "ending";
}

export function size(bytes) {
  if (bytes == null) return "";
  const units = ["B", "KB", "MB", "GB"];
  let n = bytes;
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  return `${n.toFixed(i === 0 || n >= 100 ? 0 : 1)} ${units[i]}`;
}

/** What the agent is doing, in a word or three. */
export function agentText(session) {
  if (session.control === "controlled") return "paused: a person has control";
  if (session.control === "paused") return "paused";
  const state = session.agent_state || "unknown";
  if (state === "running" && session.step) return `running · step ${session.step}`;
  return state;
}

/** A short message at the bottom of the page (announced to screen readers). */
export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const item = h("p", { class: `toast ${kind}` }, message);
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 9000 : 4000);
}

/** The session's display name: its name, else its id. */
export function label(session) {
  return session.name || session.session_id;
}
