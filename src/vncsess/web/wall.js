// The wall: every session as a live tile, kept current by the event stream.

import { api, subscribe } from "./api.js";
import { age, agentText, clone, field, label, setText, timeLeft } from "./dom.js";

const ENDED = new Set(["exited", "expired"]);
const THUMB_EVERY_MS = 10000; // each visible tile's picture, at most this often
const THUMBS_AT_ONCE = 2; // a screenshot is a process in the session: few at a time
const RELIST_EVERY_MS = 30000; // a safety net under the event stream

/** Refreshes the pictures of the tiles that can be seen, a few at a time, and only while
 * the page itself is visible. */
class Thumbnails {
  constructor() {
    this.visible = new Set();
    this.due = new Map(); // id -> time of the next refresh
    this.busy = 0;
    this.tiles = new Map(); // id -> {img, session}
    this.observer = new IntersectionObserver((entries) => {
      for (const e of entries) {
        const id = e.target.dataset.id;
        if (e.isIntersecting) this.visible.add(id);
        else this.visible.delete(id);
      }
      this.pump();
    });
    this.timer = setInterval(() => this.pump(), 1000);
  }

  track(tile, session) {
    const known = this.tiles.get(session.session_id);
    this.tiles.set(session.session_id, { tile, session });
    if (!known) this.observer.observe(tile);
  }

  forget(id) {
    const known = this.tiles.get(id);
    if (known) this.observer.unobserve(known.tile);
    this.tiles.delete(id);
    this.visible.delete(id);
    this.due.delete(id);
  }

  pump() {
    if (document.visibilityState !== "visible") return;
    const now = Date.now();
    for (const id of this.visible) {
      if (this.busy >= THUMBS_AT_ONCE) return;
      const entry = this.tiles.get(id);
      if (!entry || entry.session.services?.vnc !== "running") continue;
      if ((this.due.get(id) || 0) > now) continue;
      this.due.set(id, now + THUMB_EVERY_MS);
      this.refresh(id, entry);
    }
  }

  async refresh(id, { tile }) {
    this.busy += 1;
    try {
      const blob = await api.get(`/v1/sessions/${encodeURIComponent(id)}/screenshot.png?keep=false`);
      const img = field(tile, "img");
      const old = img.src;
      img.src = URL.createObjectURL(blob);
      img.decode().catch(() => {}).finally(() => old && URL.revokeObjectURL(old));
      tile.classList.add("has-shot");
    } catch {
      this.due.set(id, Date.now() + THUMB_EVERY_MS * 3); // stopped or busy: later
    } finally {
      this.busy -= 1;
      this.pump(); // the next one due, without waiting for the timer
    }
  }

  close() {
    clearInterval(this.timer);
    this.observer.disconnect();
    for (const { tile } of this.tiles.values()) {
      const src = field(tile, "img").src;
      if (src) URL.revokeObjectURL(src);
    }
  }
}

export function mountWall(main) {
  const view = clone("tpl-wall");
  main.replaceChildren(view);
  document.title = "Sessions · vncsess";
  const grid = field(view, "tiles");
  const filters = field(view, "filters");
  const sessions = new Map(); // id -> session (as the API says, plus live agent news)
  const tiles = new Map(); // id -> <li>
  const gone = new Set(); // stopped while a listing was under way: not to come back
  const thumbs = new Thumbnails();
  let listed = false;
  let relistTimer = null;

  // Filters live in the address (?status=&name=), so a filtered wall can be linked to.
  const params = new URLSearchParams(location.search);
  filters.status.value = params.get("status") || "";
  filters.name.value = params.get("name") || "";
  filters.addEventListener("input", () => {
    const q = new URLSearchParams();
    if (filters.status.value) q.set("status", filters.status.value);
    if (filters.name.value) q.set("name", filters.name.value);
    history.replaceState(null, "", q.size ? `/?${q}` : "/");
    render();
  });
  filters.addEventListener("submit", (e) => e.preventDefault());

  function matches(s) {
    const status = filters.status.value;
    if (status === "live" && ENDED.has(s.status)) return false;
    if (status && status !== "live" && s.status !== status) return false;
    const name = filters.name.value.trim().toLowerCase();
    return !name || s.name.toLowerCase().includes(name) || s.session_id.startsWith(name);
  }

  function fill(tile, s) {
    const href = `/s/${encodeURIComponent(s.session_id)}`;
    field(tile, "shot").href = href;
    const title = setText(tile, "title", label(s));
    title.href = href;
    title.title = s.session_id;
    const status = setText(tile, "status", s.status);
    status.dataset.state = s.status;
    const agent = setText(tile, "agent", agentText(s));
    agent.dataset.state = s.control === "watching" ? s.agent_state : "paused";
    setText(tile, "llm", s.llm || "—");
    setText(tile, "age", age(s.created_at));
    setText(tile, "left", timeLeft(s));
    field(tile, "img").alt = `The desktop of ${label(s)}`;
  }

  let pooled = 0; // unclaimed warm-pool sessions (`serve --pool N`), not shown as tiles
  function render() {
    const order = [...sessions.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
    let shown = 0;
    let previous = null;
    for (const s of order) {
      let tile = tiles.get(s.session_id);
      if (!tile) {
        tile = clone("tpl-tile");
        tile.dataset.id = s.session_id;
        tiles.set(s.session_id, tile);
      }
      fill(tile, s);
      const show = matches(s);
      tile.hidden = !show;
      shown += show ? 1 : 0;
      // Newest first; a tile only moves when its place changes (focus and pictures stay).
      const want = previous ? previous.nextSibling : grid.firstChild;
      if (want !== tile) grid.insertBefore(tile, want);
      previous = tile;
      thumbs.track(tile, s);
    }
    for (const [id, tile] of tiles) {
      if (!sessions.has(id)) {
        tile.remove();
        tiles.delete(id);
        thumbs.forget(id);
      }
    }
    const waiting = pooled ? ` · ${pooled} waiting in the warm pool` : "";
    setText(view, "count", listed ? `${shown === sessions.size ? "" : `${shown} of `}${sessions.size}${waiting}` : "");
    field(view, "empty").hidden = !listed || sessions.size > 0;
    field(view, "none").hidden = sessions.size === 0 || shown > 0;
  }

  async function relist() {
    clearTimeout(relistTimer);
    try {
      const found = await api.get("/v1/sessions");
      const ids = new Set();
      pooled = 0;
      for (const s of found) {
        if (gone.has(s.session_id)) continue;
        // A warm-pool session nobody has claimed is nobody's work yet: counted, not shown.
        if (s.pool === "starting" || s.pool === "idle") {
          pooled += 1;
          continue;
        }
        ids.add(s.session_id);
        const known = sessions.get(s.session_id);
        sessions.set(s.session_id, known ? { ...s, step: known.step } : s);
      }
      for (const id of [...sessions.keys()]) if (!ids.has(id)) sessions.delete(id);
      listed = true;
      field(view, "problem").hidden = true;
      render();
    } catch (err) {
      const problem = setText(view, "problem", `The sessions cannot be listed: ${err.text || err.message}`);
      problem.hidden = false;
    }
    relistTimer = setTimeout(relist, RELIST_EVERY_MS);
  }

  let soon = null;
  function relistSoon() {
    clearTimeout(soon);
    soon = setTimeout(relist, 300);
  }

  function agentNews(e, change) {
    const s = sessions.get(e.session_id);
    if (!s) return;
    sessions.set(e.session_id, { ...s, ...change });
    render();
  }

  // A new session's tile comes from its event at once (the listing then fills it in).
  function created(e) {
    // A warm-pool session is counted by the listing, and becomes a tile once claimed.
    if (!e.pool && !sessions.has(e.session_id) && !gone.has(e.session_id)) {
      sessions.set(e.session_id, {
        session_id: e.session_id,
        name: e.name || "",
        status: "starting",
        created_at: e.time,
        resolution: e.resolution || "",
        llm: e.llm || "",
        expires_at: e.expires_at,
        agent_state: "starting",
        control: "watching",
        services: {},
      });
      render();
    }
    relistSoon();
  }

  const stream = subscribe("/v1/events", {
    "session.created": created,
    "session.ready": relistSoon,
    "session.claimed": relistSoon, // a pool session became someone's: now it is a tile
    "session.expired": relistSoon,
    "session.failed": relistSoon,
    "session.stopped": (e) => {
      gone.add(e.session_id);
      sessions.delete(e.session_id);
      render();
      relistSoon();
    },
    "agent.step": (e) => agentNews(e, { agent_state: "running", step: e.step }),
    "agent.paused": (e) => agentNews(e, { agent_state: "paused" }),
    "agent.resumed": (e) => agentNews(e, { agent_state: "running", control: "watching" }),
    "agent.finished": (e) => agentNews(e, { agent_state: e.result?.success ? "done" : "failed" }),
    "recording.started": relistSoon,
    "recording.ready": relistSoon,
  });
  relist();
  const ticker = setInterval(() => {
    for (const [id, tile] of tiles) {
      const s = sessions.get(id);
      if (s && !tile.hidden) {
        setText(tile, "age", age(s.created_at));
        setText(tile, "left", timeLeft(s));
      }
    }
  }, 1000);

  return () => {
    stream.close();
    thumbs.close();
    clearInterval(ticker);
    clearTimeout(relistTimer);
    clearTimeout(soon);
  };
}
