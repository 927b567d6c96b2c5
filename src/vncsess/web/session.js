// One session: its live desktop, the agent's steps, control, logs, recordings and files.

import { ApiError, api, subscribe } from "./api.js";
import { age, agentText, clone, duration, field, h, label, setText, size, timeLeft, toast } from "./dom.js";
import { liveUrl } from "./live.js";

const MAX_LOG_LINES = 5000;
const IDLE_READ_EVERY_MS = 15000;
const ENDED = new Set(["exited", "expired"]);

/** Mount the page of session `id`. With `create` (a POST /v1/sessions body) there is no
 * session yet: the page shows the start's progress, then becomes the new session's page.
 * `onBack(body)` returns to the form after a failed start. */
export function mountSession(main, id, { fullscreen = false, create = null, onBack = null } = {}) {
  const view = clone("tpl-session");
  main.replaceChildren(view);
  if (fullscreen) document.body.classList.add("fullscreen");
  const iframe = field(view, "iframe");
  const overlay = field(view, "overlay");
  const progress = field(view, "progress");
  const closers = [];
  let session = null; // as GET /v1/sessions/{id} says, with live news from the events
  let shownMode = ""; // what the iframe shows: "view", "control", or nothing yet
  let disposed = false;

  // -- the live view -------------------------------------------------------------------

  function note(text, state = "doing") {
    const item = h("li", { "data-state": state }, text);
    progress.append(item);
    overlay.hidden = false;
    return item;
  }

  function showOverlay(text) {
    progress.replaceChildren();
    field(view, "overlay-actions").replaceChildren();
    note(text, "info");
  }

  async function showDesktop() {
    if (!session || ENDED.has(session.status) || session.services?.vnc !== "running") {
      iframe.hidden = true;
      iframe.removeAttribute("src");
      shownMode = "";
      showOverlay(session && ENDED.has(session.status) ? `The session has ${session.status}.` : "The display is not running.");
      return;
    }
    const mode = session.control === "controlled" ? "control" : "view";
    if (mode === shownMode) return; // a new link would reload the view for nothing
    shownMode = mode;
    let url;
    try {
      url = await liveUrl(session, mode);
    } catch (err) {
      shownMode = "";
      showOverlay(`The live view cannot be opened: ${err.text || err.message}`);
      return;
    }
    const connecting = iframe.hidden ? note("Connecting the viewer…") : null;
    iframe.addEventListener(
      "load",
      () => {
        if (connecting) connecting.dataset.state = "done";
        overlay.hidden = true;
        iframe.hidden = false;
      },
      { once: true },
    );
    iframe.src = url;
    iframe.dataset.mode = mode;
    watchConnection(url);
    const [w, hgt] = (session.resolution || "1280x720").split("x").map(Number);
    field(view, "frame").style.aspectRatio = `${w} / ${hgt}`;
  }

  /** noVNC's page loads some forty files. One lost on the way (a browser that sees the
   * network change, as when a container engine adds a network, aborts what is in flight)
   * leaves it without a connection. The view is on this origin, so look, and load it again. */
  let watchdog = null;
  function watchConnection(url) {
    clearInterval(watchdog);
    let since = Date.now();
    let tries = 0;
    watchdog = setInterval(() => {
      if (iframe.getAttribute("src") !== url || tries >= 5) {
        clearInterval(watchdog);
        return;
      }
      let state = "";
      try {
        state = iframe.contentDocument?.documentElement?.className || "";
      } catch {
        clearInterval(watchdog); // another origin: nothing to see
        return;
      }
      if (/\bnoVNC_connected\b/.test(state)) {
        clearInterval(watchdog);
      } else if (Date.now() - since > 12000 && !/noVNC_(re)?connecting/.test(state)) {
        tries += 1;
        since = Date.now();
        iframe.contentWindow.location.reload();
      }
    }, 1000);
  }
  closers.push(() => clearInterval(watchdog));

  // -- facts and buttons -----------------------------------------------------------------

  function showFacts() {
    if (!session) return;
    document.title = `${label(session)} · vncsess`;
    setText(view, "title", label(session));
    setText(view, "id", session.session_id);
    const status = setText(view, "status", session.status);
    status.dataset.state = session.status;
    setText(view, "agent", agentText(session));
    setText(view, "llm", session.llm || "—");
    setText(view, "resolution", session.resolution);
    ticking();
    const controlled = session.control === "controlled";
    const live = !ENDED.has(session.status) && session.services?.vnc === "running";
    const take = view.querySelector('[data-action="take"]');
    const back = view.querySelector('[data-action="back"]');
    take.setAttribute("aria-pressed", String(controlled));
    back.setAttribute("aria-pressed", String(!controlled));
    take.disabled = !live || controlled;
    back.disabled = !live || !controlled;
    setText(
      view,
      "control-state",
      controlled ? "You have control · the agent waits" : "Watching · the agent has control",
    ).dataset.state = controlled ? "controlled" : "watching";
    view.querySelector('[data-action="shot"]').disabled = !live;
    // An ended session still has its containers until it is stopped.
    view.querySelector('[data-action="stop"]').disabled = Boolean(session.removed);
    const bare = field(view, "bare");
    bare.href = `/s/${encodeURIComponent(session.session_id)}?fullscreen`;
    const recording = Boolean(session.recording);
    view.querySelector('[data-action="rec-start"]').disabled = !live || recording;
    view.querySelector('[data-action="rec-stop"]').disabled = !recording;
    taskForm.querySelector('[data-action="send-task"]').disabled = !live || session.removed;
    showUploadable();
  }

  function ticking() {
    if (!session) return;
    setText(view, "age", age(session.created_at));
    setText(view, "left", timeLeft(session));
  }
  const ticker = setInterval(ticking, 1000);
  closers.push(() => clearInterval(ticker));
  // The idle deadline moves with every sign of life (a step, a viewer: this page's own live
  // view counts), which sends no event: read it again now and then.
  const idleReader = setInterval(() => {
    if (session?.idle_timeout_s && !ENDED.has(session.status)) reload();
  }, IDLE_READ_EVERY_MS);
  closers.push(() => clearInterval(idleReader));

  async function reload() {
    try {
      const fresh = await api.get(`/v1/sessions/${encodeURIComponent(id)}`);
      session = { ...fresh, step: session?.step };
      field(view, "problem").hidden = true;
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        session = session ? { ...session, status: "exited", services: {}, removed: true } : null;
        gone();
      } else {
        problem(`The session cannot be read: ${err.text || err.message}`);
      }
    }
    showFacts();
    await showDesktop();
  }

  function gone() {
    if (!session) {
      setText(view, "title", id);
      problem(`There is no session ${id} running. Its steps and recordings, if it had any, are below.`);
      for (const b of view.querySelectorAll("[data-action]")) b.disabled = true;
    }
    logs?.close();
  }

  function problem(text) {
    setText(view, "problem", text).hidden = false;
  }

  async function act(button, work) {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      await work();
    } catch (err) {
      toast(err.text || err.message, "error");
    } finally {
      button.removeAttribute("aria-busy");
      showFacts();
    }
  }

  view.querySelector('[data-action="take"]').addEventListener("click", (e) =>
    act(e.currentTarget, async () => {
      const taken = await api.post(`/v1/sessions/${encodeURIComponent(session.session_id)}/control`);
      session = { ...session, ...taken };
      showFacts();
      await showDesktop();
      iframe.focus();
      toast("You have control. The agent waits until you hand back.");
    }),
  );
  view.querySelector('[data-action="back"]').addEventListener("click", (e) =>
    act(e.currentTarget, async () => {
      const back = await api.post(`/v1/sessions/${encodeURIComponent(session.session_id)}/resume`);
      session = { ...session, ...back, control_url: null };
      showFacts();
      await showDesktop();
      toast("Handed back: the agent continues.");
    }),
  );
  view.querySelector('[data-action="shot"]').addEventListener("click", (e) =>
    act(e.currentTarget, async () => {
      const blob = await api.get(`/v1/sessions/${encodeURIComponent(session.session_id)}/screenshot.png`);
      const dialog = field(view, "shot-dialog");
      const url = URL.createObjectURL(blob);
      field(view, "shot-img").src = url;
      const link = field(view, "shot-link");
      link.href = url;
      link.download = `${session.session_id}-${new Date().toISOString().replace(/[:.]/g, "")}.png`;
      dialog.addEventListener("close", () => URL.revokeObjectURL(url), { once: true });
      dialog.showModal();
    }),
  );
  view.querySelector('[data-action="stop"]').addEventListener("click", (e) => {
    if (!confirm(`Stop session ${label(session)}? Its containers go; recordings and the result stay.`)) return;
    act(e.currentTarget, async () => {
      await api.delete(`/v1/sessions/${encodeURIComponent(session.session_id)}`);
      toast(`Session ${label(session)} stopped.`);
      session = { ...session, status: "exited", services: {}, removed: true };
      gone();
      await showDesktop();
    });
  });

  // -- the agent's steps ---------------------------------------------------------------

  const steps = field(view, "steps");
  function step(e) {
    field(view, "no-steps").hidden = true;
    const at = new Date(e.time).toLocaleTimeString();
    let item;
    if (e.type === "agent.step") {
      item = h(
        "li",
        { class: "step", "data-step": e.step },
        h("span", { class: "num" }, `Step ${e.step}`),
        h("time", { datetime: e.time }, at),
        e.goal ? h("p", { class: "goal" }, e.goal) : null,
        e.url ? h("p", { class: "url" }, e.url) : null,
      );
    } else {
      const words = {
        "agent.paused": "Paused: a person took control",
        "agent.resumed": "Resumed: handed back",
        "session.ready": "The desktop is up",
        "session.claimed": "Taken from the warm pool: the desktop was ready",
        "session.stopped": "Session stopped",
        "session.expired": "Time limit reached",
        "session.failed": `A container failed (${e.service || "?"}, exit ${e.exit_code ?? "?"})`,
      };
      item = h("li", { class: "mark" }, h("span", {}, words[e.type] || e.type), h("time", { datetime: e.time }, at));
    }
    steps.append(item);
    steps.scrollTop = steps.scrollHeight;
  }

  function finished(e) {
    const r = e.result || {};
    const box = field(view, "result");
    const which = r.task > 1 ? `Task ${r.task} done` : "Done"; // a follow-up task says which
    box.replaceChildren(
      h("h3", {}, `${which}: ${r.success ? "succeeded" : r.status || "failed"}`),
      r.final_text ? h("p", { class: "final" }, r.final_text) : null,
      h("p", { class: "muted" }, `${r.steps ?? 0} step${r.steps === 1 ? "" : "s"}${r.duration_s ? ` in ${duration(r.duration_s)}` : ""} · ${r.llm || ""}`),
      ...(r.errors || []).map((err) => h("p", { class: "error" }, err)),
    );
    box.dataset.success = String(Boolean(r.success));
    box.hidden = false;
  }

  // -- logs ------------------------------------------------------------------------------

  const logBox = field(view, "log");
  const logForm = field(view, "log-form");
  let logs = null;
  let logLines = 0;

  function openLogs() {
    logs?.close();
    logBox.replaceChildren();
    logLines = 0;
    const q = new URLSearchParams({ tail: "300" });
    if (logForm.follow.checked) q.set("follow", "true");
    if (logForm.service.value) q.set("service", logForm.service.value);
    const stream = subscribe(
      `/v1/sessions/${encodeURIComponent(session.session_id)}/logs?${q}`,
      {
        log: (line) => {
          const atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
          logBox.append(`${line}\n`);
          logLines += 1;
          if (logLines > MAX_LOG_LINES) {
            logBox.firstChild.remove();
            logLines -= 1;
          }
          if (logForm.follow.checked && atEnd) logBox.scrollTop = logBox.scrollHeight;
        },
        end: () => stream.close(), // else the browser would start it over
        error: (data) => {
          logBox.append(`[${JSON.parse(data).detail}]\n`);
          stream.close();
        },
      },
      { json: false },
    );
    logs = stream;
  }
  logForm.addEventListener("change", () => session && openLogs());
  logForm.addEventListener("submit", (e) => e.preventDefault());
  closers.push(() => logs?.close());

  // -- recordings ------------------------------------------------------------------------

  const player = field(view, "player");
  async function listRecordings() {
    let found = [];
    try {
      found = await api.get(`/v1/sessions/${encodeURIComponent(id)}/recordings`);
    } catch {
      return;
    }
    const rows = found.map((r) =>
      h(
        "tr",
        {},
        h("td", {}, h("code", {}, r.name)),
        h("td", {}, r.duration_s ? duration(r.duration_s) : "—"),
        h("td", {}, size(r.size_bytes)),
        h("td", {}, r.state),
        h(
          "td",
          { class: "buttons" },
          r.state === "complete"
            ? h("button", { type: "button", onclick: () => play(r) }, "Play")
            : null,
          r.state === "recording" ? null : h("a", { class: "button", href: r.download_url, download: r.name }, "Download"),
        ),
      ),
    );
    field(view, "recs").replaceChildren(...rows);
    field(view, "no-recs").hidden = rows.length > 0;
  }

  function play(r) {
    player.hidden = false;
    if (!player.src.endsWith(r.download_url)) player.src = r.download_url;
    player.dataset.name = r.name;
    player.focus();
    player.play().catch(() => {});
  }

  view.querySelector('[data-action="rec-start"]').addEventListener("click", (e) =>
    act(e.currentTarget, async () => {
      await api.post(`/v1/sessions/${encodeURIComponent(session.session_id)}/record/start`, {});
      session = { ...session, recording: "starting" };
      showFacts(); // the buttons say so before the list does
      toast("Recording.");
      await listRecordings();
    }),
  );
  view.querySelector('[data-action="rec-stop"]').addEventListener("click", (e) =>
    act(e.currentTarget, async () => {
      await api.post(`/v1/sessions/${encodeURIComponent(session.session_id)}/record/stop`);
      session = { ...session, recording: "" };
      showFacts();
      toast("Recording stopped and saved.");
      await listRecordings();
    }),
  );

  // -- files -------------------------------------------------------------------------------
  // Uploads into the session, and what its browser downloaded (also after it stopped).

  const uploadForm = field(view, "upload-form");
  const uploadInput = field(view, "upload-input");
  let transferOff = false;

  function showUploadable() {
    const live = session && !ENDED.has(session.status) && !session.removed;
    uploadInput.disabled = !live || transferOff;
    uploadForm.querySelector('[data-action="upload"]').disabled =
      !live || transferOff || uploadInput.files.length === 0;
  }

  async function listFiles() {
    let found = [];
    try {
      found = await api.get(`/v1/sessions/${encodeURIComponent(id)}/files`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 403) {
        transferOff = true;
        setText(view, "files-hint", "File transfer is off for this session: nothing goes in or out.");
        showUploadable();
      }
      return;
    }
    const rows = found.map((f) =>
      h(
        "tr",
        {},
        h("td", {}, h("code", {}, `${f.area}/${f.name}`)),
        h("td", {}, size(f.size_bytes)),
        h("td", {}, new Date(f.modified_at).toLocaleString()),
        h(
          "td",
          { class: "buttons" },
          h("a", { class: "button", href: f.download_url, download: f.name }, "Download"),
        ),
      ),
    );
    field(view, "file-rows").replaceChildren(...rows);
    field(view, "no-files").hidden = rows.length > 0;
  }

  uploadInput.addEventListener("change", showUploadable);
  uploadForm.addEventListener("submit", (e) => {
    e.preventDefault();
    act(e.submitter || uploadForm.querySelector('[data-action="upload"]'), async () => {
      const body = new FormData();
      for (const file of uploadInput.files) body.append("file", file, file.name);
      const sent = await api.post(`/v1/sessions/${encodeURIComponent(session.session_id)}/files`, body);
      uploadInput.value = "";
      toast(`Sent ${sent.map((f) => f.name).join(", ")} into the session.`);
      await listFiles();
    });
  });
  view.querySelector('[data-action="files-refresh"]').addEventListener("click", () => listFiles());

  // -- follow-up tasks ---------------------------------------------------------------------

  const taskForm = field(view, "task-form");
  let taskShown = 1; // the task whose steps the timeline shows; a new number gets a marker
  function taskMark(n, words) {
    field(view, "no-steps").hidden = true;
    steps.append(h("li", { class: "mark" }, h("span", {}, words)));
    steps.scrollTop = steps.scrollHeight;
    taskShown = Math.max(taskShown, n);
  }
  taskForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = taskForm.task.value.trim();
    if (!text) return;
    act(e.submitter || taskForm.querySelector('[data-action="send-task"]'), async () => {
      const queued = await api.post(`/v1/sessions/${encodeURIComponent(session.session_id)}/tasks`, {
        task: text,
      });
      taskForm.task.value = "";
      toast(`Task ${queued.task} queued: it runs once the current task is done.`);
    });
  });

  // -- events, and the start --------------------------------------------------------------

  function follow() {
    const events = subscribe(`/v1/sessions/${encodeURIComponent(id)}/events?last_event_id=0`, {
      "agent.step": (e) => {
        if (e.task && e.task > taskShown) taskMark(e.task, `Task ${e.task}`);
        step(e);
        if (session && session.control === "watching") {
          session = { ...session, agent_state: "running", step: e.step };
          showFacts();
        }
      },
      // Control may have changed hands elsewhere (another tab, the CLI): read it again,
      // and the view follows.
      "agent.paused": (e) => {
        step(e);
        reload();
      },
      "agent.resumed": (e) => {
        step(e);
        reload();
      },
      "agent.finished": (e) => {
        finished(e);
        listFiles(); // what the agent downloaded
        if (session) session = { ...session, agent_state: e.result?.success ? "done" : "failed" };
        showFacts();
      },
      "session.ready": step,
      "session.claimed": step,
      "session.stopped": (e) => {
        step(e);
        reload();
      },
      "session.expired": (e) => {
        step(e);
        reload();
      },
      "session.failed": (e) => {
        step(e);
        reload();
      },
      "recording.started": () => reload().then(listRecordings),
      "recording.ready": () => reload().then(listRecordings),
    });
    closers.push(() => events.close());
  }

  async function start() {
    await reload();
    if (disposed) return;
    follow();
    if (fullscreen) return; // the bare view: the desktop alone
    listRecordings();
    listFiles();
    if (session && session.services?.vnc === "running") openLogs();
  }

  async function createThenStart() {
    setText(view, "title", create.name || "New session");
    document.title = "Starting · vncsess";
    const t0 = Date.now();
    const asking = note("Starting the containers and the display…");
    const clock = setInterval(() => {
      asking.textContent = `Starting the containers and the display… ${duration((Date.now() - t0) / 1000)}`;
    }, 1000);
    closers.push(() => clearInterval(clock));
    try {
      session = await api.post("/v1/sessions", create);
    } catch (err) {
      clearInterval(clock);
      asking.dataset.state = "failed";
      asking.textContent = `The session did not start: ${err.text || err.message}`;
      field(view, "overlay-actions").replaceChildren(
        h("button", { type: "button", class: "primary", onclick: () => onBack?.(create) }, "Back to the form"),
      );
      return;
    }
    clearInterval(clock);
    asking.dataset.state = "done";
    asking.textContent = `The display answered after ${duration((Date.now() - t0) / 1000)}.`;
    id = session.session_id;
    history.replaceState(null, "", `/s/${encodeURIComponent(id)}`);
    await start();
  }

  if (create) createThenStart();
  else start();

  return () => {
    disposed = true;
    document.body.classList.remove("fullscreen");
    for (const close of closers) close();
  };
}
