// localbroker dashboard: live parts of pages (server-sent events) and POST buttons (fetch).
// No framework, nothing loaded from elsewhere.
"use strict";

(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? "";
  const status = document.getElementById("live-status");
  const flash = document.getElementById("flash");

  // An element with data-live="URL" is replaced by each "update" event of that stream.
  for (const element of document.querySelectorAll("[data-live]")) {
    const source = new EventSource(element.dataset.live);
    source.addEventListener("update", (event) => {
      element.innerHTML = event.data;  // HTML rendered (and escaped) by the server
    });
    source.addEventListener("open", () => {
      status.hidden = false;
      status.textContent = "live";
      status.className = "live-status on";
    });
    source.addEventListener("error", () => {
      status.hidden = false;
      status.textContent = "reconnecting…";
      status.className = "live-status off";
    });
  }

  const show = (text, ok) => {
    flash.textContent = text;
    flash.className = ok ? "ok" : "error";
  };

  // Forms marked data-action are sent with fetch; the live stream then shows the result.
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-action")) return;
    event.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    for (const button of form.querySelectorAll("button")) button.disabled = true;
    show("working…", true);
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        headers: { Accept: "application/json", "X-CSRF-Token": csrf },
        credentials: "same-origin",
      });
      const result = await response.json();
      show(result.message, result.ok);
    } catch (error) {
      show(`request failed: ${error}`, false);
    } finally {
      for (const button of form.querySelectorAll("button")) button.disabled = false;
    }
  });
})();
