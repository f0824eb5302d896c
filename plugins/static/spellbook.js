// Spellbook: broken-image placeholders, click-to-reveal blurred tiles, copy and print buttons.
(function () {
  // An image that fails to load (hotlinked sites go away) shows its domain instead.
  document.addEventListener("error", function (event) {
    var img = event.target;
    if (img && img.tagName === "IMG" && img.closest) {
      var tile = img.closest(".sb-tile");
      if (tile) tile.classList.add("sb-broken");
      if (img.classList.contains("sb-cell-thumb")) img.remove();  // a thumbnail in Datasette's table view
    }
  }, true);

  document.addEventListener("click", function (event) {
    var frame = event.target.closest && event.target.closest(".sb-blurred .sb-frame");
    if (frame) {
      event.preventDefault();
      frame.closest(".sb-tile").classList.remove("sb-blurred");
      return;
    }
    if (event.target.closest && event.target.closest(".sb-print")) {
      window.print();
      return;
    }
    var button = event.target.closest && event.target.closest("[data-copy-target]");
    if (button) {
      var source = document.getElementById(button.getAttribute("data-copy-target"));
      if (!source) return;
      var text = source.textContent;
      var done = function () { button.setAttribute("data-copied", "yes"); button.textContent = button.getAttribute("data-done-label") || "Copied"; };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text); done(); });
      } else { fallbackCopy(text); done(); }
    }
  });

  function fallbackCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    document.body.removeChild(area);
  }

  // Datasette puts this script in <head>: look at the page once it is parsed.
  function ready(callback) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", callback);
    else callback();
  }

  ready(function () {
  // Parts of a page that load after it (server-rendered, escaped HTML fragments).
  document.querySelectorAll("[data-fragment-url]").forEach(function (slot) {
    fetch(slot.getAttribute("data-fragment-url"), {credentials: "same-origin"})
      .then(function (response) { if (!response.ok) throw new Error(response.status); return response.text(); })
      .then(function (html) { slot.innerHTML = html; slot.setAttribute("data-loaded", "yes"); })
      .catch(function () { slot.innerHTML = '<p class="sb-note">The domain breakdown could not be loaded.</p>'; });
  });

  // Images that failed before this script was listening.
  document.querySelectorAll(".sb-tile img").forEach(function (img) {
    if (img.complete && img.naturalWidth === 0 && img.getAttribute("src")) {
      img.closest(".sb-tile").classList.add("sb-broken");
    }
  });
  });
})();

// The runner's job page: follow the job until it is done or failed, then show the result.
(function () {
  function follow() {
    var panel = document.querySelector(".sb-regeneration[data-job-url]");
    if (!panel || panel.getAttribute("data-status") === "done" || panel.getAttribute("data-status") === "failed") return;
    var bar = panel.querySelector(".sb-job-progress");
    var message = panel.querySelector(".sb-job-message");
    var poll = function () {
      fetch(panel.getAttribute("data-job-url"), {credentials: "same-origin", cache: "no-store"})
        .then(function (response) { if (!response.ok) throw new Error(response.status); return response.json(); })
        .then(function (data) {
          var job = data.job;
          if (job.status === "done" || job.status === "failed") { window.location.reload(); return; }
          if (bar) bar.value = job.progress || 0;
          if (message) message.textContent = (job.status === "queued" && data.queue_position ? "Queued behind " + data.queue_position + ": " : "") + (job.message || job.status);
          setTimeout(poll, 700);
        })
        .catch(function () { setTimeout(poll, 2000); });
    };
    poll();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", follow);
  else follow();
})();
