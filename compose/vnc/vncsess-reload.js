// vncsess: noVNC's page loads some forty files. A browser that sees its network change (as
// when a container engine adds a network or a container on this machine) aborts what is in
// flight, and one lost file leaves the page "loading" for ever, with no connection. Load it
// again, at most five times in a row (counted in sessionStorage, cleared once it loads).
(function () {
  "use strict";
  var KEY = "vncsess-reloads";
  window.addEventListener("load", function () {
    setTimeout(function () {
      var tries = 5;
      try {
        if (!/\bnoVNC_loading\b/.test(document.documentElement.className)) {
          sessionStorage.removeItem(KEY);
          return;
        }
        tries = Number(sessionStorage.getItem(KEY) || 0);
        sessionStorage.setItem(KEY, String(tries + 1));
      } catch (e) {
        // no sessionStorage (a sandboxed frame): no count, so no reload either
      }
      if (tries < 5) location.reload();
    }, 3000);
  });
})();
