// The form that starts a session; on submit the page becomes the new session's page.

import { api } from "./api.js";
import { clone, field, setText } from "./dom.js";

const OTHER = "__other__";

export function mountNew(main, { values = null, onSubmit }) {
  const view = clone("tpl-new");
  main.replaceChildren(view);
  document.title = "New session · vncsess";
  const form = field(view, "form");
  const llm = form.llm;

  function problem(text) {
    const box = setText(view, "problem", text);
    box.hidden = !text;
    if (text) box.focus?.();
  }

  function hint() {
    const demo = llm.value === "demo";
    field(view, "other").hidden = llm.value !== OTHER;
    setText(
      view,
      "llm-hint",
      demo
        ? "The demo model needs no key and no network, and does only the demo task."
        : llm.value === OTHER
          ? "Any provider's model; its key must be in the env file `serve` reads."
          : "",
    );
    if (demo && !form.task.value.trim()) form.task.value = "demo";
  }

  async function models() {
    let info = { default: "demo", configured: [], providers: [] };
    try {
      info = await api.get("/v1/models");
    } catch (err) {
      problem(`The models cannot be listed: ${err.text || err.message}`);
    }
    const options = [...info.configured.map((m) => [m, m]), ["demo", "demo (offline, the demo task only)"], [OTHER, "other…"]];
    llm.replaceChildren(...options.map(([value, text]) => new Option(text, value)));
    llm.value = info.default;
    if (!info.configured.length) {
      setText(view, "llm-hint", "No model key is configured: the demo is offered.");
    }
    if (values) restore(values);
    hint();
  }

  function restore(v) {
    form.task.value = v.task || "";
    if (v.llm && ![...llm.options].some((o) => o.value === v.llm)) {
      llm.value = OTHER;
      form.other.value = v.llm;
    } else if (v.llm) {
      llm.value = v.llm;
    }
    form.base_url.value = v.base_url || "";
    form.resolution.value = v.resolution || "1280x720";
    form.ttl.value = v.ttl || "";
    form.name.value = v.name || "";
    form.record.checked = Boolean(v.record);
    form.no_internet.checked = Boolean(v.no_internet);
  }

  llm.addEventListener("change", hint);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    problem("");
    const model = llm.value === OTHER ? form.other.value.trim() : llm.value;
    if (llm.value === OTHER && !/^[a-z]+:\S+$/.test(model)) {
      problem("Give the model as PROVIDER:MODEL, for example openai:gpt-4.1-mini.");
      form.other.focus();
      return;
    }
    if (form.name.value && !form.name.checkValidity()) {
      problem("A name has letters, digits, '.', '_' or '-', and starts with a letter or digit.");
      form.name.focus();
      return;
    }
    const body = {
      task: form.task.value.trim(),
      llm: model,
      resolution: form.resolution.value,
      ttl: form.ttl.value,
      record: form.record.checked,
      no_internet: form.no_internet.checked,
    };
    if (form.name.value) body.name = form.name.value;
    if (llm.value === OTHER && form.base_url.value.trim()) body.base_url = form.base_url.value.trim();
    onSubmit(body);
  });
  models();
  form.task.focus();
  return () => {};
}
