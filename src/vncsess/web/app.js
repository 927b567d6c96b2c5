// The dashboard: one page that draws the wall (/), the form (/new) or a session (/s/ID)
// from its address, and speaks only to the API.

import { mountNew } from "./newsession.js";
import { mountSession } from "./session.js";
import { mountWall } from "./wall.js";

const main = document.getElementById("main");
let unmount = () => {};

function show(mount) {
  unmount();
  unmount = mount();
}

function newForm(values = null) {
  show(() =>
    mountNew(main, {
      values,
      onSubmit: (body) => show(() => mountSession(main, null, { create: body, onBack: (b) => newForm(b) })),
    }),
  );
}

function route() {
  const path = location.pathname;
  const params = new URLSearchParams(location.search);
  const session = path.match(/^\/s\/([^/]+)$/);
  if (session) {
    const fullscreen = params.has("fullscreen");
    show(() => mountSession(main, decodeURIComponent(session[1]), { fullscreen }));
  } else if (path === "/new") {
    newForm();
  } else {
    show(() => mountWall(main));
  }
}

// Streams and timers end with the page (a back/forward cache restore starts them again).
addEventListener("pagehide", () => unmount());
addEventListener("pageshow", (e) => e.persisted && route());
route();
